package stages

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/parallafka/parallafka/pipeline"
)

// RetryConfig configures Retry. A zero field takes its documented default.
type RetryConfig struct {
	// MaxAttempts is how many handling attempts a message gets, the first
	// one included. Once the last one failed, the message goes on with its
	// error (to a dead-letter stage, or to the error policy). 1 turns
	// retries off. Default 5.
	MaxAttempts int
	// InitialBackoff is the wait before the second attempt. Default 100 ms.
	InitialBackoff time.Duration
	// MaxBackoff caps every wait, jitter included. Default 10 s.
	MaxBackoff time.Duration
	// Multiplier grows the wait after each failed attempt: the wait before
	// attempt n+1 is InitialBackoff × Multiplier^(n-1), capped at
	// MaxBackoff. At least 1. Default 2.
	Multiplier float64
	// Jitter spreads each wait uniformly over ±Jitter of it (0.2: ±20 %), so
	// that messages that failed together do not all retry together. In
	// [0, 1]. Zero means no jitter; 0.2 is a good choice.
	Jitter float64
	// Retryable reports whether a failed attempt is worth another one.
	// Default: every error except those marked with NonRetryable.
	Retryable func(err error) bool
}

// validate reports a configuration that Retry refuses.
func (c RetryConfig) validate() error {
	c = c.withDefaults()
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("stages: RetryConfig: "+format, args...))
	}
	if c.MaxAttempts < 1 {
		bad("MaxAttempts must be at least 1, got %d", c.MaxAttempts)
	}
	if c.InitialBackoff < 0 || c.MaxBackoff < 0 {
		bad("backoffs must not be negative, got InitialBackoff %v, MaxBackoff %v", c.InitialBackoff, c.MaxBackoff)
	}
	if c.MaxBackoff < c.InitialBackoff {
		bad("MaxBackoff (%v) is less than InitialBackoff (%v)", c.MaxBackoff, c.InitialBackoff)
	}
	if c.Multiplier < 1 || math.IsInf(c.Multiplier, 0) || math.IsNaN(c.Multiplier) {
		bad("Multiplier must be a number of at least 1, got %v", c.Multiplier)
	}
	if !(c.Jitter >= 0 && c.Jitter <= 1) {
		bad("Jitter must be in [0, 1], got %v", c.Jitter)
	}
	return errors.Join(errs...)
}

func (c RetryConfig) withDefaults() RetryConfig {
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 5
	}
	if c.InitialBackoff == 0 {
		c.InitialBackoff = 100 * time.Millisecond
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = max(10*time.Second, c.InitialBackoff)
	}
	if c.Multiplier == 0 {
		c.Multiplier = 2
	}
	if c.Retryable == nil {
		c.Retryable = func(err error) bool { return !IsNonRetryable(err) }
	}
	return c
}

// backoff returns the wait before attempt+1, after attempt failed attempts,
// jitter included: InitialBackoff × Multiplier^(attempt-1), capped at
// MaxBackoff, spread over ±Jitter of itself, and never above MaxBackoff.
func (c RetryConfig) backoff(attempt int) time.Duration {
	c = c.withDefaults()
	wait := float64(c.InitialBackoff) * math.Pow(c.Multiplier, float64(max(attempt, 1)-1))
	wait = min(wait, float64(c.MaxBackoff))
	wait *= 1 + c.Jitter*(2*rand.Float64()-1)
	return time.Duration(min(wait, float64(c.MaxBackoff)))
}

// Retry returns an AfterHandle stage that gives a failed message more
// attempts, with exponential backoff and jitter, or an error if cfg is
// invalid (a negative MaxAttempts, a Jitter outside [0, 1], a Multiplier
// below 1, negative backoffs or MaxBackoff below InitialBackoff); it never
// panics.
//
// A failed message that may be retried is marked with Message.Retry and held
// for its backoff, then sent on; the router hands it to the handler pool
// again, with Message.Attempt one higher. While it waits it keeps its key:
// later messages with the same key wait behind it, other keys keep flowing,
// and it stays uncommitted, holding back its partition's commits. The stage
// never blocks its loop on a wait: one timer serves every waiting message.
//
// Messages pass through untouched when they succeeded, were dropped, were
// never handled (a record that could not be deserialized arrives with Err
// set and Attempt 0: a poison pill goes straight on, to a dead-letter stage
// or the error policy), used their last attempt, or failed with an error
// that cfg.Retryable refuses. Those leave with Err still set.
//
// When the pipeline drains, or a waiting message's partition is revoked
// (pipeline.Revoked), the message is sent on at once, still marked for
// retry: the pipeline then abandons it uncommitted, so Kafka delivers it
// again; it is never skipped. Each waiting message costs a few dozen bytes;
// there are at most as many as the pipeline's in-flight limit. While
// messages of a partition wait, one goroutine watches for its revoke.
func Retry[K, V any](cfg RetryConfig) (pipeline.Stage[K, V], error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	return func(ctx context.Context, in <-chan *pipeline.Message[K, V], out chan<- *pipeline.Message[K, V]) error {
		r := &retrier[K, V]{
			cfg: cfg, out: out, timer: time.NewTimer(time.Hour),
			watched: make(map[<-chan struct{}]bool), revoked: make(chan (<-chan struct{})), stopWatching: make(chan struct{}),
		}
		r.timer.Stop()
		defer r.timer.Stop()
		defer r.watchers.Wait()
		defer close(r.stopWatching)
		return r.run(ctx, in)
	}, nil
}

type retrier[K, V any] struct {
	cfg      RetryConfig
	out      chan<- *pipeline.Message[K, V]
	waiting  []waitingRetry[K, V]
	timer    *time.Timer
	wakeAt   time.Time // when the timer fires; zero while it is stopped
	draining bool

	// One watcher goroutine per assignment with waiting messages sends its
	// pipeline.Revoked channel on revoked once that closes.
	watched      map[<-chan struct{}]bool
	revoked      chan (<-chan struct{})
	stopWatching chan struct{}
	watchers     sync.WaitGroup
}

type waitingRetry[K, V any] struct {
	msg     *pipeline.Message[K, V]
	due     time.Time
	revoked <-chan struct{} // pipeline.Revoked of msg
}

func (r *retrier[K, V]) run(ctx context.Context, in <-chan *pipeline.Message[K, V]) error {
	drainingCh := pipeline.Draining(ctx)
	for in != nil || len(r.waiting) > 0 {
		var ok bool
		select {
		case msg, open := <-in:
			if !open {
				in = nil
				continue
			}
			ok = r.receive(ctx, msg)
		case <-r.timer.C:
			r.wakeAt = time.Time{}
			now := time.Now()
			ok = r.release(ctx, func(w waitingRetry[K, V]) bool { return !w.due.After(now) })
			r.arm()
		case ch := <-r.revoked:
			delete(r.watched, ch)
			ok = r.release(ctx, func(w waitingRetry[K, V]) bool { return w.revoked == ch })
			r.arm()
		case <-drainingCh:
			drainingCh, r.draining = nil, true
			ok = r.release(ctx, func(waitingRetry[K, V]) bool { return true })
		case <-ctx.Done():
			return nil // a hard stop: waiting messages stay uncommitted
		}
		if !ok {
			return nil
		}
	}
	return nil
}

// receive passes msg on, or marks it for retry and holds it for its backoff.
func (r *retrier[K, V]) receive(ctx context.Context, msg *pipeline.Message[K, V]) bool {
	if !r.shouldRetry(ctx, msg) {
		return r.send(ctx, msg)
	}
	msg.Retry()
	revoked := pipeline.Revoked(ctx, msg)
	if r.draining || isClosed(revoked) {
		return r.send(ctx, msg) // the pipeline abandons it uncommitted
	}
	r.watch(revoked)
	due := time.Now().Add(r.cfg.backoff(msg.Attempt))
	r.waiting = append(r.waiting, waitingRetry[K, V]{msg: msg, due: due, revoked: revoked})
	if r.wakeAt.IsZero() || due.Before(r.wakeAt) {
		r.arm()
	}
	return true
}

func (r *retrier[K, V]) shouldRetry(ctx context.Context, msg *pipeline.Message[K, V]) bool {
	switch {
	case msg.Err == nil, msg.Dropped(), msg.RetryRequested():
		return false
	case msg.Attempt == 0: // never handled: a poison pill
		return false
	case msg.Attempt >= r.cfg.MaxAttempts:
		return false
	case ctx.Err() != nil: // a hard stop cancelled the handler
		return false
	}
	return r.cfg.Retryable(msg.Err)
}

// release sends on the waiting messages that ready selects, in the order
// they arrived. It reports false if the pipeline stopped meanwhile.
func (r *retrier[K, V]) release(ctx context.Context, ready func(waitingRetry[K, V]) bool) bool {
	kept := r.waiting[:0]
	var sendable []*pipeline.Message[K, V]
	for _, w := range r.waiting {
		if ready(w) {
			sendable = append(sendable, w.msg)
		} else {
			kept = append(kept, w)
		}
	}
	clear(r.waiting[len(kept):])
	r.waiting = kept
	for _, msg := range sendable {
		if !r.send(ctx, msg) {
			return false
		}
	}
	return true
}

// watch starts a watcher for revoked, unless one runs already.
func (r *retrier[K, V]) watch(revoked <-chan struct{}) {
	if revoked == nil || r.watched[revoked] {
		return
	}
	r.watched[revoked] = true
	r.watchers.Go(func() {
		select {
		case <-revoked:
			select {
			case r.revoked <- revoked:
			case <-r.stopWatching:
			}
		case <-r.stopWatching:
		}
	})
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// arm sets the timer to the earliest due retry; it stops the timer when
// nothing waits.
func (r *retrier[K, V]) arm() {
	if len(r.waiting) == 0 {
		r.timer.Stop()
		r.wakeAt = time.Time{}
		return
	}
	next := r.waiting[0].due
	for _, w := range r.waiting {
		if w.due.Before(next) {
			next = w.due
		}
	}
	r.timer.Reset(time.Until(next))
	r.wakeAt = next
}

// send passes msg on, unless the pipeline stopped hard: then it reports
// false, also when out has room (a select would pick either at random).
func (r *retrier[K, V]) send(ctx context.Context, msg *pipeline.Message[K, V]) bool {
	if ctx.Err() != nil {
		return false
	}
	select {
	case r.out <- msg:
		return true
	case <-ctx.Done():
		return false
	}
}

// NonRetryable marks err as not worth another attempt: Retry's default
// predicate lets such a failure go on at once, to a dead-letter stage or
// the error policy. errors.Is and errors.As see through the mark. It
// returns nil for a nil err.
func NonRetryable(err error) error {
	if err == nil {
		return nil
	}
	return &nonRetryableError{err}
}

// IsNonRetryable reports whether err, or an error it wraps, was marked with
// NonRetryable.
func IsNonRetryable(err error) bool {
	var nr *nonRetryableError
	return errors.As(err, &nr)
}

type nonRetryableError struct{ err error }

func (e *nonRetryableError) Error() string { return e.err.Error() }
func (e *nonRetryableError) Unwrap() error { return e.err }
