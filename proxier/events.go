package proxier

import (
	"cmp"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/kipvs/kipvs/endpoints"
)

// Event reasons kipvs reports on objects it cannot program.
const (
	// ReasonRejected: the API side left an object, or part of it, out
	// (endpoints.Rejection).
	ReasonRejected = "KipvsRejected"
	// ReasonServiceError: the model could not program a Service (unknown
	// scheduler, virtual server claimed by another Service, ...).
	ReasonServiceError = "KipvsServiceError"
)

// DefaultEventInterval is how often the same problem of the same object is
// reported again while it lasts.
const DefaultEventInterval = 5 * time.Minute

// EventReporter turns rejections and Service errors into Warning Events on the
// objects, and a log line naming each, after every sync. It is rate-limited:
// one Event per object and reason, repeated at most every Interval while the
// problem lasts, and again at once if it goes away and comes back.
//
// EventReporter implements SyncObserver: give it to Proxier.AddObserver.
type EventReporter struct {
	recorder events.EventRecorder
	rejected func() []endpoints.Rejection
	clock    clock.Clock
	logger   klog.Logger
	// Interval is the minimum time between two reports of the same problem.
	Interval time.Duration

	// last holds when each current problem was last reported; only the sync goroutine uses it.
	last map[endpoints.Rejection]time.Time
}

// NewEventReporter returns a reporter emitting through recorder; rejected
// returns the API side's rejections (endpoints.State.Rejected) and may be nil.
func NewEventReporter(recorder events.EventRecorder, rejected func() []endpoints.Rejection, clk clock.Clock, logger klog.Logger) *EventReporter {
	return &EventReporter{recorder: recorder, rejected: rejected, clock: clk, logger: logger,
		Interval: DefaultEventInterval, last: map[endpoints.Rejection]time.Time{}}
}

// SyncQueued does nothing (SyncObserver).
func (r *EventReporter) SyncQueued(time.Time) {}

// Synced reports the current problems (SyncObserver).
func (r *EventReporter) Synced(res SyncResult, _ *StatusSnapshot) {
	var problems []endpoints.Rejection
	if r.rejected != nil {
		problems = r.rejected()
	}
	for name, err := range res.ServiceErrors {
		problems = append(problems, endpoints.Rejection{Kind: "Service", Namespace: name.Namespace, Name: name.Name, Reason: err.Error()})
	}
	r.Report(problems)
}

// Report emits an Event for each problem not reported within Interval and
// forgets problems that are gone. A problem of Kind "Service" whose Reason came
// from a Service error gets ReasonServiceError, the others ReasonRejected.
func (r *EventReporter) Report(problems []endpoints.Rejection) {
	now := r.clock.Now()
	current := make(map[endpoints.Rejection]bool, len(problems))
	slices.SortFunc(problems, compareRejections)
	for _, p := range problems {
		if current[p] {
			continue
		}
		current[p] = true
		if last, ok := r.last[p]; ok && now.Sub(last) < r.Interval {
			continue
		}
		r.last[p] = now
		reason := ReasonRejected
		if p.Kind == "Service" && isServiceError(p.Reason) {
			reason = ReasonServiceError
		}
		r.logger.Info("Cannot program object", "kind", p.Kind, "object", klog.KRef(p.Namespace, p.Name), "reason", p.Reason)
		ref := &v1.ObjectReference{Kind: p.Kind, Namespace: p.Namespace, Name: p.Name}
		if p.Kind == "EndpointSlice" {
			ref.APIVersion = "discovery.k8s.io/v1"
		} else {
			ref.APIVersion = "v1"
		}
		r.recorder.Eventf(ref, nil, v1.EventTypeWarning, reason, "Program", "%s", p.Reason)
	}
	for p := range r.last {
		if !current[p] {
			delete(r.last, p)
		}
	}
}

// isServiceError reports whether a reason is a model Service error, which
// always starts with "service <ns>/<name>:".
func isServiceError(reason string) bool {
	return strings.HasPrefix(reason, "service ")
}

// compareRejections orders problems by kind, namespace, name and reason.
func compareRejections(a, b endpoints.Rejection) int {
	return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Namespace, b.Namespace),
		cmp.Compare(a.Name, b.Name), cmp.Compare(a.Reason, b.Reason))
}
