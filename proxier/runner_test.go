package proxier

import (
	"context"
	"errors"
	"testing"
	"time"

	testclock "k8s.io/utils/clock/testing"
)

// runnerHarness drives a Runner with a fake clock. The work function reports
// each run on ran and returns what the test queues on results (nil by default).
type runnerHarness struct {
	t       *testing.T
	clk     *testclock.FakeClock
	r       *Runner
	ran     chan time.Time
	results chan error
	cancel  context.CancelFunc
	done    chan struct{}
}

func newRunnerHarness(t *testing.T, minInterval, maxInterval time.Duration, setup ...func(*runnerHarness)) *runnerHarness {
	h := &runnerHarness{
		t: t, clk: testclock.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
		ran: make(chan time.Time, 100), results: make(chan error, 100), done: make(chan struct{}),
	}
	h.r = NewRunner(func(context.Context) error {
		h.ran <- h.clk.Now()
		select {
		case err := <-h.results:
			return err
		default:
			return nil
		}
	}, minInterval, maxInterval, h.clk)
	for _, f := range setup { // before Loop starts: no race with it
		f(h)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() {
		defer close(h.done)
		h.r.Loop(ctx)
	}()
	t.Cleanup(h.stop)
	return h
}

func (h *runnerHarness) stop() {
	h.cancel()
	select {
	case <-h.done:
	case <-time.After(5 * time.Second):
		h.t.Errorf("Loop did not stop when its context was cancelled")
	}
}

// expectRun waits for a run and checks it happened at offset from the start.
func (h *runnerHarness) expectRun(start time.Time, offset time.Duration) {
	h.t.Helper()
	select {
	case at := <-h.ran:
		if got := at.Sub(start); got != offset {
			h.t.Fatalf("run at +%s, want +%s", got, offset)
		}
	case <-time.After(5 * time.Second):
		h.t.Fatalf("no run, want one at +%s", offset)
	}
}

// idle waits until the loop blocks on the clock (or a request), then checks
// that no run happened meanwhile.
func (h *runnerHarness) idle() {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !h.clk.HasWaiters() {
		if time.Now().After(deadline) {
			h.t.Fatal("loop never waited on the clock")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case at := <-h.ran:
		h.t.Fatalf("unexpected run at %s", at)
	default:
	}
}

// step advances the fake clock once the loop waits on it.
func (h *runnerHarness) step(d time.Duration) {
	h.t.Helper()
	h.idle()
	h.clk.Step(d)
}

func TestRunnerMergesBurstsAndKeepsMinInterval(t *testing.T) {
	h := newRunnerHarness(t, time.Second, time.Minute)
	start := h.clk.Now()
	h.expectRun(start, 0) // the first run happens at once
	for range 5 {
		h.r.Run()
	}
	h.step(500 * time.Millisecond)
	h.step(499 * time.Millisecond)
	h.step(time.Millisecond)
	h.expectRun(start, time.Second) // five requests, one run, MinInterval after the last
	h.step(10 * time.Second)        // idle: nothing requested
	h.r.Run()
	h.expectRun(start, 11*time.Second) // MinInterval long passed: at once
}

func TestRunnerRunsEveryMaxInterval(t *testing.T) {
	h := newRunnerHarness(t, time.Second, 30*time.Second)
	start := h.clk.Now()
	h.expectRun(start, 0)
	h.step(29 * time.Second)
	h.step(time.Second)
	h.expectRun(start, 30*time.Second)
	h.step(30 * time.Second)
	h.expectRun(start, 60*time.Second)
}

func TestRunnerRetriesWithBackoff(t *testing.T) {
	h := newRunnerHarness(t, 100*time.Millisecond, time.Hour, func(h *runnerHarness) {
		h.r.RetryInitial, h.r.RetryMax = time.Second, 4*time.Second
		for range 4 {
			h.results <- errors.New("kernel said no")
		}
	})
	start := h.clk.Now()
	h.expectRun(start, 0) // fails: retry after 1s
	h.step(time.Second)
	h.expectRun(start, time.Second) // fails: retry after 2s
	h.step(2 * time.Second)
	h.expectRun(start, 3*time.Second) // fails: retry after 4s
	h.step(4 * time.Second)
	h.expectRun(start, 7*time.Second) // fails: retry after 4s (RetryMax)
	h.step(4 * time.Second)
	h.expectRun(start, 11*time.Second) // succeeds: back to MaxInterval
	h.step(time.Minute)
	h.idle()
}

func TestRunnerRequestBeatsBackoff(t *testing.T) {
	h := newRunnerHarness(t, time.Second, time.Hour, func(h *runnerHarness) {
		h.r.RetryInitial = 10 * time.Second
		h.results <- errors.New("fail once")
	})
	start := h.clk.Now()
	h.expectRun(start, 0)
	h.r.Run()
	h.step(time.Second)
	h.expectRun(start, time.Second)
	h.step(10 * time.Second) // the success cancelled the retry
	h.idle()
}
