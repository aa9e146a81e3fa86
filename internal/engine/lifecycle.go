package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sourcegraph/conc/panics"

	"github.com/parallafka/parallafka/internal/signal"
)

// onError is a goroutine's stop policy: what its error or panic does to
// the flow.
type onError uint8

const (
	// drainOnError: the source failed; the flow is whole, so it stops
	// gracefully (handlers finish, their offsets are committed).
	drainOnError onError = iota
	// abortOnError: the flow is broken; it stops hard (handlers are
	// cancelled).
	abortOnError
)

// group runs the flow's goroutines. An error or panic never dies
// silently: it stops the flow as the goroutine's policy says, and Wait
// returns them all, in the user's words: a user stage's under its name
// (what), the engine's without the names of its parts (what is "").
type group struct {
	life *lifecycle
	wg   sync.WaitGroup
	mu   sync.Mutex
	errs []error
}

func newGroup(life *lifecycle) *group { return &group{life: life} }

func (g *group) Go(what string, policy onError, run func(context.Context) error) {
	g.wg.Go(func() {
		var err error
		if r := panics.Try(func() { err = run(g.life.ctx) }); r != nil {
			err = r.AsError()
		}
		if err == nil {
			return
		}
		g.mu.Lock()
		if what != "" {
			err = fmt.Errorf("%s: %w", what, err)
		}
		g.errs = append(g.errs, fmt.Errorf("parallafka: %w", err))
		g.mu.Unlock()
		switch policy {
		case drainOnError:
			g.life.stop(nil)
		case abortOnError:
			g.life.abort()
		}
	})
}

func (g *group) Wait() error {
	g.wg.Wait()
	return errors.Join(g.errs...)
}

// lifecycle is one Consume call's shutdown state: draining closes when a
// graceful stop begins; ctx, the stages' and handlers' context, is
// cancelled on a hard stop, when a stage breaks, or when the shutdown
// timeout passes (cause ErrShutdownTimeout).
type lifecycle struct {
	ctx      context.Context
	cancel   context.CancelCauseFunc
	draining chan struct{}
	hardStop bool
	timeout  time.Duration
	revoked  signal.Revoked
	stats    *Stats // its Stopping is set when the shutdown begins

	// interrupt, if set, cuts short a source's blocking calls (kafka.Source's
	// Interrupt) when the shutdown timeout passes.
	interrupt func()

	stopOnce sync.Once
	stopped  func() bool // stops the AfterFunc on the caller's context
	mu       sync.Mutex
	first    error
	timer    *time.Timer
	deadline time.Time // when the shutdown must be over; zero before it began
}

func (l *lifecycle) shutdownDeadline() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deadline
}

var errHardStop = errors.New("parallafka: hard stop")

func newLifecycle(parent context.Context, hardStop bool, timeout time.Duration, stats *Stats) *lifecycle {
	l := &lifecycle{draining: make(chan struct{}), hardStop: hardStop, timeout: timeout, stats: stats}
	// The stages outlive the caller's cancellation (that is what a graceful
	// stop is), so their context keeps its values but not its cancellation.
	base := context.WithValue(context.WithoutCancel(parent), signal.DrainingKey{}, (<-chan struct{})(l.draining))
	base = context.WithValue(base, signal.RevokedKey{}, signal.Revoked(func(topic string, partition int32) <-chan struct{} {
		return l.revoked(topic, partition)
	}))
	l.ctx, l.cancel = context.WithCancelCause(base)
	l.stopped = context.AfterFunc(parent, func() { l.stop(nil) })
	return l
}

// stop begins a shutdown as configured; err (if any) is what Consume
// returns, the first one given.
func (l *lifecycle) stop(err error) {
	l.mu.Lock()
	if l.first == nil {
		l.first = err
	}
	l.mu.Unlock()
	l.stopOnce.Do(func() {
		l.stats.Stopping.Store(true)
		close(l.draining)
		if l.hardStop {
			l.mu.Lock()
			l.deadline = time.Now()
			l.mu.Unlock()
			l.cancel(errHardStop)
			return
		}
		l.mu.Lock()
		l.deadline = time.Now().Add(l.timeout)
		l.timer = time.AfterFunc(l.timeout, func() {
			l.cancel(ErrShutdownTimeout)
			if l.interrupt != nil {
				l.interrupt()
			}
		})
		l.mu.Unlock()
	})
}

// stopOnFailure begins the graceful stop that ends in the error a message
// failed with, when the ack collector asks on failed (the error policy
// stops the pipeline; the first error is kept). It returns once the
// coordinator returned (coordDone): every verdict was given before that.
func (l *lifecycle) stopOnFailure(failed <-chan error, coordDone <-chan struct{}) error {
	for {
		select {
		case err := <-failed:
			l.stop(err)
		case <-coordDone:
			select {
			case err := <-failed:
				l.stop(err)
			default:
			}
			return nil
		}
	}
}

// abort stops at once: handlers are cancelled.
func (l *lifecycle) abort() {
	l.stop(nil)
	l.cancel(errHardStop)
}

func (l *lifecycle) end() {
	l.stopped()
	l.mu.Lock()
	if l.timer != nil {
		l.timer.Stop()
	}
	l.mu.Unlock()
	l.cancel(nil)
}

func (l *lifecycle) err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if errors.Is(context.Cause(l.ctx), ErrShutdownTimeout) {
		return errors.Join(l.first, ErrShutdownTimeout)
	}
	return l.first
}
