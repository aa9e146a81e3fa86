// Package parallafka handles Kafka messages concurrently, far beyond one
// consumer per partition, while it keeps FIFO order for messages that share
// a key and commits offsets so that nothing is ever lost.
//
// It polls a topic in order on one goroutine and spreads the messages over
// many concurrent handlers:
//
//	poll ──▶ key-router ──▶ handler pool ──▶ ack collector ──▶ committer
//	           ▲                                  │
//	           └──────── key released ────────────┘
//
// A Source is a one-message-at-a-time consumer: package kafka adapts
// confluent-kafka-go's, package pipeline/memsource is an in-memory one for
// tests.
//
//	p, err := parallafka.New(source, parallafka.WithMaxConcurrency(7))
//	if err != nil { ... }
//	err = p.Consume(ctx, func(ctx context.Context, msg *parallafka.Message[string, Price]) error {
//		fmt.Printf("%s is $%.2f\n", msg.Key, msg.Value.Price)
//		return nil
//	})
//
// Guarantees: at-least-once delivery (a message is committed only after it
// and every message before it in its partition finished); per-key FIFO (at
// most one message per partition and key in a handler at a time, in offset
// order); bounded memory (WithMaxInFlight); rebalance-safe commits (a revoke
// commits what finished before it returns).
package parallafka

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sourcegraph/conc/panics"
	"github.com/sourcegraph/conc/pool"

	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/stages"
)

// Types re-exported so that a user imports one package.
type (
	Message[K, V any]    = pipeline.Message[K, V]
	Handler[K, V any]    = pipeline.Handler[K, V]
	Middleware[K, V any] = pipeline.Middleware[K, V]
	Stage[K, V any]      = pipeline.Stage[K, V]
	Source[K, V any]     = pipeline.Source[K, V]
	TopicPartition       = pipeline.TopicPartition
	Offset               = pipeline.Offset
	Header               = pipeline.Header
	ErrorPolicy          = stages.ErrorPolicy
	ErrorAction          = stages.ErrorAction
	MessageError         = stages.MessageError
	PanicError           = stages.PanicError
)

// Error actions, re-exported from package stages.
const (
	Stop = stages.Stop
	Skip = stages.Skip
)

// Draining returns a channel, closed when a graceful shutdown begins, for a
// stage that holds messages back; see pipeline.Draining.
func Draining(ctx context.Context) <-chan struct{} { return pipeline.Draining(ctx) }

var (
	// ErrNilHandler is returned by Consume when the handler is nil.
	ErrNilHandler = errors.New("parallafka: nil handler")
	// ErrConsumed is returned by a second call of Consume: a Parallafka
	// consumes once (its source is closed when Consume returns).
	ErrConsumed = errors.New("parallafka: Consume was already called")
	// ErrShutdownTimeout is returned (joined with any other error) when a
	// graceful shutdown had to cancel handlers that outlived its timeout.
	ErrShutdownTimeout = errors.New("parallafka: shutdown timeout: in-flight handlers were cancelled")
)

// Parallafka consumes a Source with many concurrent handlers. Make one with
// New; it consumes once.
type Parallafka[K, V any] struct {
	source   Source[K, V]
	cfg      config
	mw       []Middleware[K, V]
	before   []namedStage[K, V]
	after    []namedStage[K, V]
	tracker  *pipeline.Tracker
	counters *pipeline.Counters
	consumed atomic.Bool
}

// New returns a Parallafka that will consume source. It returns an error if
// source is nil or an option is invalid; nothing is started before Consume.
func New[K, V any](source Source[K, V], opts ...Option) (*Parallafka[K, V], error) {
	cfg := defaultConfig()
	for _, o := range opts {
		if o == nil {
			return nil, errors.New("parallafka: nil option")
		}
		o.apply(&cfg)
	}
	var errs []error
	if source == nil {
		errs = append(errs, errors.New("parallafka: nil source"))
	}
	errs = append(errs, cfg.validate())
	mw, before, after, err := typed[K, V](&cfg)
	if err := errors.Join(append(errs, err)...); err != nil {
		return nil, err
	}
	return &Parallafka[K, V]{
		source: source, cfg: cfg, mw: mw, before: before, after: after,
		tracker: pipeline.NewTracker(), counters: &pipeline.Counters{},
	}, nil
}

// Consume handles messages with handler until ctx is cancelled or a message
// fails under the error policy (or the source fails), then shuts down as
// configured, closes the source and returns: nil after a requested stop,
// otherwise the error. No goroutine it started outlives it. Handlers must
// honour their context: it is cancelled on a hard stop or a shutdown
// timeout, and Consume waits for them to return.
func (p *Parallafka[K, V]) Consume(ctx context.Context, handler Handler[K, V]) error {
	if handler == nil {
		return ErrNilHandler
	}
	if !p.consumed.CompareAndSwap(false, true) {
		return ErrConsumed
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("parallafka: Consume: %w", err)
	}
	for i := len(p.mw) - 1; i >= 0; i-- {
		handler = p.mw[i](handler)
	}
	life := newLifecycle(ctx, p.cfg.shutdownMode, p.cfg.shutdownTimeout)
	env := &stages.Env[K, V]{
		Source: p.source, Tracker: p.tracker, Counters: p.counters,
		Logger: p.cfg.logger, Draining: life.draining,
	}
	flowErr := p.flow(life, env, handler)
	life.end()

	// Consume owns the claims from here: whatever revoke the source delivers
	// while it closes has nothing left to wait for or to commit.
	for _, c := range p.tracker.Stop(partitionsOf(p.tracker.Claims())) {
		c.Freeze()
	}
	closeErr := p.source.Close()
	if closeErr != nil {
		closeErr = fmt.Errorf("parallafka: closing source: %w", closeErr)
	}
	return errors.Join(life.err(), flowErr, closeErr)
}

// flow wires the stages in the order messages take, each on its own
// goroutine, and waits for all of them:
//
//	poll → [AfterPoll stages] → key-router → handler pool → [AfterHandle stages] → ack collector → committer
func (p *Parallafka[K, V]) flow(life *lifecycle, env *stages.Env[K, V], handler Handler[K, V]) error {
	poller := &stages.Poller[K, V]{Env: env, MaxInFlight: p.cfg.maxInFlight, PollTimeout: 100 * time.Millisecond, PauseAfter: pauseAfter}
	router := stages.NewRouter(env, p.cfg.ordering, p.cfg.orderNilKeys)
	handlers := &stages.HandlerPool[K, V]{Env: env, Concurrency: p.cfg.maxConcurrency, Handler: handler}
	collector := &stages.Collector[K, V]{Env: env, Router: router, Policy: p.cfg.errorPolicy, Stop: life.stop}
	committer := &stages.Committer[K, V]{Env: env, Interval: p.cfg.commitInterval, FinalTimeout: p.cfg.revokeTimeout}
	err := p.source.Subscribe(&stages.Rebalancer[K, V]{
		Poller: poller, Router: router, Committer: committer, RevokeTimeout: p.cfg.revokeTimeout,
	})
	if err != nil {
		return fmt.Errorf("parallafka: subscribing: %w", err)
	}

	g := newGroup(life)
	polled := source(g, "poll", channelSize, poller.Run)
	routable := p.insert(g, p.before, polled)
	dispatched := connectSized(g, "key-router", p.dispatchBuffer(), routable, router.Run)
	handled := connect(g, "handler pool", dispatched, handlers.Run)
	collectable := p.insert(g, p.after, handled)
	collected := make(chan struct{})
	g.Go("ack collector", func(ctx context.Context) error {
		defer close(collected)
		return collector.Run(ctx, collectable)
	})
	g.Go("committer", func(ctx context.Context) error { return committer.Run(ctx, collected) })
	return g.Wait()
}

// dispatchBuffer is the size of the router's hand-off to the handler pool.
// With an order to keep it is unbuffered: the router picks the oldest
// dispatchable message when a handler is free, so a busy key's next message
// (see stages.Router) is not queued behind messages handed out earlier.
// That costs about 0.4 µs of CPU per message (bench/README.md); unordered,
// no key waits for another, and a buffer saves it.
func (p *Parallafka[K, V]) dispatchBuffer() int {
	if p.cfg.ordering == stages.Unordered {
		return channelSize
	}
	return 0
}

// insert chains the user's stages after in and returns the last one's output.
func (p *Parallafka[K, V]) insert(g *group, stages []namedStage[K, V], in <-chan *Message[K, V]) <-chan *Message[K, V] {
	for _, s := range stages {
		in = connect(g, s.name, in, s.run)
	}
	return in
}

// pauseAfter is how long the poller waits for room before it pauses the
// partitions: long enough for handlers of ordinary speed to free a slot (so
// a consumer at its limit does not pause and refetch all the time), short
// enough that rebalances are served promptly.
const pauseAfter = 200 * time.Millisecond

// channelSize is the buffer between two stages: enough to smooth hand-offs,
// small enough that little sits between stages on a revoke.
const channelSize = 16

// source starts the first stage and returns its output, a channel of size
// buffered elements.
func source[T any](g *group, name string, size int, run func(context.Context, chan<- T) error) <-chan T {
	out := make(chan T, size)
	g.Go(name, func(ctx context.Context) error {
		defer close(out)
		return run(ctx, out)
	})
	return out
}

// connect starts a stage that reads in and returns its output, which is
// closed when the stage returns.
func connect[T any](g *group, name string, in <-chan T, run func(context.Context, <-chan T, chan<- T) error) <-chan T {
	return connectSized(g, name, channelSize, in, run)
}

// connectSized is connect with an output channel of size buffered elements.
func connectSized[T any](g *group, name string, size int, in <-chan T, run func(context.Context, <-chan T, chan<- T) error) <-chan T {
	return source(g, name, size, func(ctx context.Context, out chan<- T) error { return run(ctx, in, out) })
}

// group runs the stages. A stage's error or panic never dies silently: the
// poll stage's error stops the pipeline gracefully (handlers finish); any
// other stage's stops it hard, since the flow is broken.
type group struct {
	life *lifecycle
	pool *pool.ContextPool
}

func newGroup(life *lifecycle) *group {
	return &group{life: life, pool: pool.New().WithContext(life.ctx)}
}

func (g *group) Go(name string, run func(context.Context) error) {
	g.pool.Go(func(ctx context.Context) (err error) {
		if r := panics.Try(func() { err = run(ctx) }); r != nil {
			err = r.AsError()
		}
		if err == nil {
			return nil
		}
		err = fmt.Errorf("parallafka: stage %s: %w", name, err)
		if name == "poll" {
			g.life.stop(err)
		} else {
			g.life.abort(err)
		}
		return err
	})
}

func (g *group) Wait() error {
	g.pool.Wait() // errors are recorded by the lifecycle, first one first
	return nil
}

// lifecycle is one Consume call's shutdown state: draining closes when a
// graceful stop begins; ctx (the stages' and handlers' context) is cancelled
// on a hard stop or when the shutdown timeout passes.
type lifecycle struct {
	ctx      context.Context
	cancel   context.CancelFunc
	draining chan struct{}
	mode     ShutdownMode
	timeout  time.Duration

	once     sync.Once
	mu       sync.Mutex
	first    error
	timer    *time.Timer
	timedOut atomic.Bool
	watcher  sync.WaitGroup
	ended    chan struct{}
}

func newLifecycle(parent context.Context, mode ShutdownMode, timeout time.Duration) *lifecycle {
	draining := make(chan struct{})
	// The stages outlive the caller's cancellation (that is what a graceful
	// stop is), so their context keeps its values but not its cancellation.
	ctx, cancel := context.WithCancel(pipeline.WithDraining(context.WithoutCancel(parent), draining))
	l := &lifecycle{ctx: ctx, cancel: cancel, draining: draining, mode: mode, timeout: timeout, ended: make(chan struct{})}
	l.watcher.Go(func() {
		select {
		case <-parent.Done():
			l.stop(nil)
		case <-l.ended:
		}
	})
	return l
}

// stop begins a shutdown as configured; err (if any) is what Consume returns.
func (l *lifecycle) stop(err error) {
	l.mu.Lock()
	if l.first == nil {
		l.first = err
	}
	l.mu.Unlock()
	l.once.Do(func() {
		close(l.draining)
		if l.mode == HardStop {
			l.cancel()
			return
		}
		l.mu.Lock()
		l.timer = time.AfterFunc(l.timeout, func() {
			l.timedOut.Store(true)
			l.cancel()
		})
		l.mu.Unlock()
	})
}

// abort stops at once: handlers are cancelled.
func (l *lifecycle) abort(err error) {
	l.stop(err)
	l.cancel()
}

func (l *lifecycle) end() {
	close(l.ended)
	l.watcher.Wait()
	l.mu.Lock()
	if l.timer != nil {
		l.timer.Stop()
	}
	l.mu.Unlock()
	l.cancel()
}

func (l *lifecycle) err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.timedOut.Load() {
		return errors.Join(l.first, ErrShutdownTimeout)
	}
	return l.first
}

func partitionsOf(claims []*pipeline.Claim) []TopicPartition {
	tps := make([]TopicPartition, len(claims))
	for i, c := range claims {
		tps[i] = c.TopicPartition()
	}
	return tps
}
