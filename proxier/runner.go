package proxier

import (
	"context"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// Default retry backoff of a Runner whose work failed.
const (
	DefaultRetryInitial = time.Second
	DefaultRetryMax     = 30 * time.Second
)

// Runner runs a work function at bounded frequency, like kube-proxy's
// BoundedFrequencyRunner (pkg/proxy/runner/bounded_frequency_runner.go):
//   - Run requests a run; requests that arrive while one is pending merge into it;
//   - runs start at least MinInterval apart;
//   - a run happens at least every MaxInterval even without requests;
//   - when the work returns an error, it runs again after a backoff (doubling
//     from RetryInitial to RetryMax, never sooner than MinInterval), unless a
//     request or MaxInterval comes first; a success resets the backoff;
//   - the work may ask for its next run at a time (RunAt), e.g. while real
//     servers drain; that run also keeps MinInterval.
type Runner struct {
	work                     func(context.Context) error
	minInterval, maxInterval time.Duration
	clock                    clock.Clock
	// RetryInitial and RetryMax bound the retry backoff; set them before Loop.
	RetryInitial, RetryMax time.Duration

	requests chan struct{}

	mu     sync.Mutex
	wakeAt time.Time // RunAt's time, zero when none
}

// RunAt asks for a run at t (or MinInterval after the previous run, when later);
// an earlier pending RunAt time wins. It is meant to be called by the work
// function, which runs on Loop's goroutine; a call from elsewhere takes effect
// at Loop's next wake-up.
func (r *Runner) RunAt(t time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.wakeAt.IsZero() || t.Before(r.wakeAt) {
		r.wakeAt = t
	}
}

// takeWake returns the RunAt time, and clears it when take is true.
func (r *Runner) takeWake(take bool) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.wakeAt
	if take {
		r.wakeAt = time.Time{}
	}
	return t
}

// NewRunner returns a Runner of work. maxInterval <= 0 disables periodic runs.
func NewRunner(work func(context.Context) error, minInterval, maxInterval time.Duration, clk clock.Clock) *Runner {
	return &Runner{
		work: work, minInterval: minInterval, maxInterval: maxInterval, clock: clk,
		RetryInitial: DefaultRetryInitial, RetryMax: DefaultRetryMax,
		requests: make(chan struct{}, 1),
	}
}

// Run requests a run. It never blocks; requests merge until the run starts.
func (r *Runner) Run() {
	select {
	case r.requests <- struct{}{}:
	default:
	}
}

// Loop runs the work until ctx is cancelled. The first run happens at once.
func (r *Runner) Loop(ctx context.Context) {
	var (
		lastRun time.Time
		ran     bool
		pending = true
		retryAt time.Time
		backoff = r.RetryInitial
	)
	for {
		now := r.clock.Now()
		due, ok := r.nextRun(now, lastRun, ran, pending, retryAt)
		if !ok || due.After(now) {
			if !r.wait(ctx, due, ok, now, &pending) {
				return
			}
			continue
		}
		select {
		case <-r.requests: // merged into this run
		default:
		}
		if w := r.takeWake(false); !w.IsZero() && !w.After(now) {
			r.takeWake(true) // this run serves it
		}
		pending, ran, lastRun = false, true, now
		if err := r.work(ctx); err != nil {
			wait := max(backoff, r.minInterval)
			retryAt = now.Add(wait)
			backoff = min(backoff*2, max(r.RetryMax, r.RetryInitial))
		} else {
			retryAt, backoff = time.Time{}, r.RetryInitial
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// nextRun returns when the next run is due; ok is false when nothing is due
// until a request arrives.
func (r *Runner) nextRun(now, lastRun time.Time, ran, pending bool, retryAt time.Time) (time.Time, bool) {
	if !ran {
		return now, true
	}
	var due time.Time
	ok := false
	consider := func(t time.Time) {
		if !ok || t.Before(due) {
			due, ok = t, true
		}
	}
	if r.maxInterval > 0 {
		consider(lastRun.Add(r.maxInterval))
	}
	if !retryAt.IsZero() {
		consider(retryAt)
	}
	if pending {
		consider(lastRun.Add(r.minInterval))
	}
	if w := r.takeWake(false); !w.IsZero() {
		consider(later(w, lastRun.Add(r.minInterval)))
	}
	return due, ok
}

// later returns the later of a and b.
func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// wait blocks until due (when ok), a request or ctx's end; it reports false when
// ctx ended.
func (r *Runner) wait(ctx context.Context, due time.Time, ok bool, now time.Time, pending *bool) bool {
	var timerC <-chan time.Time
	if ok {
		t := r.clock.NewTimer(due.Sub(now))
		defer t.Stop()
		timerC = t.C()
	}
	select {
	case <-ctx.Done():
		return false
	case <-r.requests:
		*pending = true
	case <-timerC:
	}
	return true
}
