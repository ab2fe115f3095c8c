package proxier

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	testclock "k8s.io/utils/clock/testing"

	"github.com/kipvs/kipvs/endpoints"
)

// eventLog is an events.EventRecorder that keeps "Kind ns/name type reason: note" lines.
type eventLog struct{ lines []string }

func (l *eventLog) Eventf(regarding, _ runtime.Object, eventtype, reason, _, note string, args ...any) {
	ref := regarding.(*v1.ObjectReference)
	l.lines = append(l.lines, fmt.Sprintf("%s %s/%s %s %s: %s", ref.Kind, ref.Namespace, ref.Name, eventtype, reason, fmt.Sprintf(note, args...)))
}

// take returns the lines recorded since the previous take.
func (l *eventLog) take() []string {
	out := l.lines
	l.lines = nil
	return out
}

func TestEventReporter(t *testing.T) {
	clk := testclock.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	log := &eventLog{}
	rejected := []endpoints.Rejection{{Kind: "EndpointSlice", Namespace: "ns", Name: "orphan", Reason: "no kubernetes.io/service-name label"}}
	r := NewEventReporter(log, func() []endpoints.Rejection { return rejected }, clk, klog.Background())
	badSched := SyncResult{ServiceErrors: map[types.NamespacedName]error{
		{Namespace: "ns", Name: "bad"}: errors.New(`service ns/bad: unknown IPVS scheduler "fastest"`),
	}}
	steps := []struct {
		name    string
		advance time.Duration
		res     SyncResult
		rej     []endpoints.Rejection
		want    []string
	}{
		{name: "first sync reports both", res: badSched, rej: rejected, want: []string{
			"EndpointSlice ns/orphan Warning KipvsRejected: no kubernetes.io/service-name label",
			`Service ns/bad Warning KipvsServiceError: service ns/bad: unknown IPVS scheduler "fastest"`,
		}},
		{name: "same problems a minute later: nothing", advance: time.Minute, res: badSched, rej: rejected},
		{name: "after the interval: again", advance: DefaultEventInterval, res: badSched, rej: rejected, want: []string{
			"EndpointSlice ns/orphan Warning KipvsRejected: no kubernetes.io/service-name label",
			`Service ns/bad Warning KipvsServiceError: service ns/bad: unknown IPVS scheduler "fastest"`,
		}},
		{name: "the slice is fixed", advance: time.Second, res: badSched},
		{name: "and broken again: reported at once", advance: time.Second, res: badSched, rej: rejected, want: []string{
			"EndpointSlice ns/orphan Warning KipvsRejected: no kubernetes.io/service-name label",
		}},
		{name: "a part of a Service rejected", advance: time.Second, rej: []endpoints.Rejection{
			{Kind: "Service", Namespace: "ns", Name: "web", Reason: `externalIPs: "x" is not an IP address`},
			{Kind: "Service", Namespace: "ns", Name: "web", Reason: `externalIPs: "x" is not an IP address`},
		}, want: []string{`Service ns/web Warning KipvsRejected: externalIPs: "x" is not an IP address`}},
	}
	for _, s := range steps {
		clk.Step(s.advance)
		rejected = s.rej
		r.Synced(s.res, nil)
		if diff := cmp.Diff(s.want, log.take()); diff != "" {
			t.Errorf("%s: events (-want +got):\n%s", s.name, diff)
		}
	}
}
