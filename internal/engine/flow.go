// Package engine is Parallafka's engine: the poll stage, the coordinator
// (key-router and owner of every partition's state), the handler pool, the
// ack collector and the committer, and the wiring between them. Users
// cannot import it; package parallafka configures and runs it.
package engine

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sourcegraph/conc/panics"

	"github.com/parallafka/parallafka/internal/offsetmap"

	"github.com/parallafka/parallafka/internal/signal"
	"github.com/parallafka/parallafka/pipeline"
)

// Ordering says which messages keep FIFO order.
type Ordering int

const (
	OrderByKey Ordering = iota
	OrderByPartition
	Unordered
)

// NamedStage is a user's stage with the name it is logged under.
type NamedStage[K, V any] struct {
	Name string
	Run  pipeline.Stage[K, V]
}

// Config is one Consume call's engine configuration, validated by New.
type Config[K, V any] struct {
	Source           pipeline.Source[K, V]
	Handler          pipeline.Handler[K, V] // middleware applied
	AfterPoll        []NamedStage[K, V]
	AfterHandle      []NamedStage[K, V]
	Concurrency      int // handlers; with MinConcurrency, the most the adaptive limit may allow
	MinConcurrency   int // adaptive concurrency: the limit's floor and start; 0: Concurrency handlers, fixed
	OnLimit          func(limit int)
	MaxInFlight      int
	MaxInFlightBytes int64 // 0: no bound
	Ordering         Ordering
	OrderNilKeys     bool
	CommitInterval   time.Duration
	CommitEvery      int  // also commit after this many offsets finished; 0: the interval alone
	AsyncCommits     bool // periodic commits do not wait for the last one's result
	OnCommit         OnCommit
	MapMaxBytes      int  // the offset map's limit in the commit metadata; 0: no map
	HardStop         bool // the shutdown mode
	ShutdownTimeout  time.Duration
	RevokeTimeout    time.Duration
	Logger           *slog.Logger
	ErrorPolicy      pipeline.ErrorPolicy
	Hooks            Hooks
	Pause            *atomic.Bool      // set by Parallafka.Pause, cleared by Resume
	Observer         pipeline.Observer // nil: none
	StallTimeout     time.Duration     // 0: no stall detection

	// BatchHandler, if set, replaces Handler: the pool hands it batches
	// (middleware applied) that the coordinator assembles as Batch says.
	BatchHandler pipeline.BatchHandler[K, V]
	Batch        BatchLimits
}

// BatchLimits bound the batches of a batch handler.
type BatchLimits struct {
	MaxMessages int           // at least 1
	MaxBytes    int64         // at least 1; the first message of a batch may be larger
	Linger      time.Duration // how long a partial batch waits for more; 0: whatever is ready goes
}

// ErrShutdownTimeout is the cause of the handlers' cancellation when a
// graceful shutdown outlived its timeout.
var ErrShutdownTimeout = errors.New("parallafka: shutdown timeout: what had not finished (handlers, the final commit) was cancelled")

// Timing of the poll stage.
const (
	pollTimeout = 100 * time.Millisecond
	// pauseAfter is how long the poller waits for room before it pauses
	// the partitions: long enough for handlers of ordinary speed to free a
	// slot (so a consumer at its limit does not pause and refetch all the
	// time), short enough that rebalances are served promptly.
	pauseAfter = 200 * time.Millisecond
	// channelSize is the buffer between two user stages: enough to smooth
	// hand-offs, small enough that little sits between stages on a revoke.
	channelSize = 16
)

// Run consumes cfg.Source until ctx is cancelled or a message fails under
// the error policy (or the source or a stage fails), shuts down as
// configured, closes the source and returns: nil after a requested stop,
// otherwise the error. Every goroutine it starts has returned when it
// returns.
func Run[K, V any](ctx context.Context, cfg *Config[K, V], stats *Stats) error {
	life := newLifecycle(ctx, cfg.HardStop, cfg.ShutdownTimeout, stats)
	if in, ok := cfg.Source.(interface{ Interrupt() }); ok {
		life.interrupt = in.Interrupt
	}
	f := newFlow(cfg, stats, life)
	var runErr error
	if err := cfg.Source.Subscribe(f.poller); err != nil {
		runErr = fmt.Errorf("parallafka: subscribing: %w", err)
	} else {
		runErr = f.run()
	}
	life.end()
	// The final offsets are committed: a revoke the source delivers while
	// it closes has nothing left to wait for or to commit.
	f.poller.ended = true
	closeErr := cfg.Source.Close()
	if closeErr != nil {
		closeErr = fmt.Errorf("parallafka: closing source: %w", closeErr)
	}
	return errors.Join(life.err(), runErr, closeErr)
}

// flow is one Consume call's stages and the channels between them.
type flow[K, V any] struct {
	cfg         *Config[K, V]
	life        *lifecycle
	poller      *poller[K, V]
	coordinator *coordinator[K, V]
	pool        *handlerPool[K, V]
	collector   *collector[K, V]
	committer   *committer[K, V]

	coordDoneCh, commitDoneCh chan struct{} // closed when the coordinator, the committer returned
}

// newFlow makes the stages and wires them, every edge a channel, in the
// order of the flow:
//
//	poll ─polled─▶ coordinator ─dispatch─▶ handler pool ─▶ ack collector ─released─▶ coordinator
//	  │  ◀─room, spent─┘ ▲ offsets/final/commitNow (with user stages: poll ─▶ AfterPoll ─routable─▶ coordinator,
//	  └─rebalances────┘  └────────── committer     handler pool ─▶ AfterHandle ─▶ ack collector, handlerEnd)
//
// In batch mode (cfg.BatchHandler) the coordinator dispatches batches to
// the batch pool, which always tells it on handlerEnd that a batch ended,
// with the messages that skip the stages (without stages, all of them):
//
//	coordinator ─dispatch (batches)─▶ batch pool ─handlerEnd─▶ coordinator
//	                                      └─▶ AfterHandle ─▶ ack collector ─released─▶ coordinator
func newFlow[K, V any](cfg *Config[K, V], stats *Stats, life *lifecycle) *flow[K, V] {
	var (
		polled     = make(chan pollCycle[K, V], 4)
		spent      = make(chan pollCycle[K, V], 4)
		room       = make(chan room, 1)
		dispatch   = make(chan job[K, V], 2*cfg.Concurrency)
		rebalances = make(chan rebalanceRequest)
		offsets    = make(chan chan<- []claimOffset)
		final      = make(chan []claimOffset, 1)
		commits    = make(chan commitRequest)
		commitNow  = make(chan struct{}, 1)
		steer      = make(chan steering, 1)
		queries    = make(chan revokedQuery)
		coordDone  = make(chan struct{})
		commitDone = make(chan struct{})
	)
	f := &flow[K, V]{cfg: cfg, life: life}
	obs := observer{o: cfg.Observer, log: cfg.Logger}
	f.poller = &poller[K, V]{
		pollerEdges: pollerEdges[K, V]{
			polled: polled, spent: spent, room: room, steer: steer, rebalances: rebalances, commits: commits,
			coordDone: coordDone, commitDone: commitDone, draining: life.draining,
		},
		source: cfg.Source, log: cfg.Logger, stats: stats, maxInFlight: cfg.MaxInFlight, maxBytes: cfg.MaxInFlightBytes,
		pollTimeout: pollTimeout, pauseAfter: pauseAfter, revokeTimeout: cfg.RevokeTimeout,
		hooks: cfg.Hooks, userPause: cfg.Pause, obs: obs,
	}
	f.coordinator = &coordinator[K, V]{
		coordinatorEdges: coordinatorEdges[K, V]{
			polled: polled, spent: spent, dispatch: dispatch, room: room,
			rebalances: rebalances, offsets: offsets, final: final, queries: queries,
			commitNow: commitNow, steer: steer, drainingCh: life.draining,
		},
		maxInFlight: cfg.MaxInFlight,
		commitEvery: cfg.CommitEvery, batch: cfg.Batch,
		ordering: cfg.Ordering, orderNilKeys: cfg.OrderNilKeys, concurrency: cfg.Concurrency,
		onLimit: cfg.OnLimit, obs: obs, stallTimeout: cfg.StallTimeout,
		stats: stats, log: cfg.Logger, claims: make(map[pipeline.TopicPartition]*claim[K, V]), seed: maphash.MakeSeed(),
	}
	if cfg.MinConcurrency > 0 {
		f.coordinator.limiter = newLimiter(cfg.MinConcurrency, cfg.Concurrency)
	}
	f.collector = &collector[K, V]{policy: cfg.ErrorPolicy, stop: life.stop, stats: stats, log: cfg.Logger, obs: obs}
	handlerEnd := make(chan handlerEnded[K, V], 2*cfg.Concurrency)
	f.coordinator.handlerEnd = handlerEnd
	f.pool = &handlerPool[K, V]{
		concurrency: cfg.Concurrency, handler: cfg.Handler, batchHandler: cfg.BatchHandler, log: cfg.Logger,
		collector: f.collector, stats: stats, obs: obs, dispatch: dispatch, handlerEnd: handlerEnd,
	}
	if cfg.BatchHandler == nil {
		f.coordinator.batch = BatchLimits{}
	}
	if cfg.Ordering == OrderByKey && !f.coordinator.batching() {
		f.poller.quickWindow = min(cfg.MaxInFlight, max(minQuickWindow, quickWindowPerHandler*cfg.Concurrency))
	}
	f.committer = &committer[K, V]{
		source: cfg.Source, log: cfg.Logger, stats: stats,
		interval: cfg.CommitInterval, timeout: cfg.RevokeTimeout,
		async: cfg.AsyncCommits, mapMaxBytes: cfg.MapMaxBytes, onCommit: cfg.OnCommit,
		offsets: offsets, final: final, commits: commits, commitNow: commitNow, coordDone: coordDone,
		shutdownDeadline: life.shutdownDeadline, obs: obs,
	}
	life.revoked = func(topic string, partition int32) <-chan struct{} {
		q := revokedQuery{tp: pipeline.TopicPartition{Topic: topic, Partition: partition}, reply: make(chan (<-chan struct{}), 1)}
		select {
		case queries <- q:
			return <-q.reply
		case <-coordDone:
			return closedChannel
		}
	}
	f.coordDoneCh, f.commitDoneCh = coordDone, commitDone
	return f
}

// run starts every stage on its own goroutine and waits for all of them.
func (f *flow[K, V]) run() error {
	g := newGroup(f.life)
	if len(f.cfg.AfterPoll) > 0 {
		staged := make(chan *pipeline.Message[K, V], channelSize)
		f.poller.staged = staged
		f.coordinator.routable = chain(g, f.cfg.AfterPoll, staged)
	}
	if len(f.cfg.AfterHandle) > 0 {
		// handler pool ─handled─▶ AfterHandle ─▶ ack collector ─released─▶ coordinator
		handled := make(chan *pipeline.Message[K, V], channelSize)
		released := make(chan completion[K, V], 2*f.cfg.Concurrency)
		f.pool.handled, f.coordinator.released = handled, released
		collectable := chain(g, f.cfg.AfterHandle, handled)
		g.Go("", abortOnError, func(ctx context.Context) error {
			return f.collector.run(ctx, collectable, released, f.coordDoneCh)
		})
	}
	g.Go("", drainOnError, f.poller.run)
	g.Go("", abortOnError, func(ctx context.Context) error {
		defer close(f.coordDoneCh)
		return f.coordinator.run(ctx)
	})
	g.Go("", abortOnError, f.pool.run)
	g.Go("", abortOnError, func(ctx context.Context) error {
		defer close(f.commitDoneCh)
		return f.committer.run(ctx)
	})
	return g.Wait()
}

// chain starts the user's stages one after another behind in and returns
// the last one's output. Each stage's output is closed when it returns.
func chain[K, V any](g *group, stages []NamedStage[K, V], in <-chan *pipeline.Message[K, V]) <-chan *pipeline.Message[K, V] {
	for _, s := range stages {
		from, out := in, make(chan *pipeline.Message[K, V], channelSize)
		g.Go("stage "+s.Name, abortOnError, func(ctx context.Context) error {
			defer close(out)
			return s.Run(ctx, from, out)
		})
		in = out
	}
	return in
}

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

// The messages on the coordinator's edges.
type (
	// completion is a message back from a handling attempt, with the
	// ack collector's verdict.
	completion[K, V any] struct {
		msg     *pipeline.Message[K, V]
		verdict verdict
	}
	// job is a dispatched message and its handler's context (its
	// claim's), with how long it waited (with an observer only).
	job[K, V any] struct {
		msg    *pipeline.Message[K, V]
		ctx    context.Context
		batch  *batch[K, V]  // in batch mode, instead of msg (ctx is the batch's)
		waited pipeline.Wait // with an observer (not in batch mode)
	}
	// handlerEnded tells the coordinator that a handler is free again,
	// with the messages it settled: those that skip the AfterHandle
	// stages (all of them without stages), with their verdicts. The
	// coordinator takes them before any completion the stages send on
	// (a batch's requeued messages must be back before the verdict of
	// the message that failed ahead of them).
	handlerEnded[K, V any] struct {
		quick   bool // the handler took less than quickHandler (see dispatchLimit)
		call    handlerCall
		done    completion[K, V]   // single-message mode: the message, if it skips the stages (done.msg != nil)
		settled []completion[K, V] // batch mode
	}
	// handlerCall is what a handler call showed, for the adaptive limit:
	// how long it took and whether it failed. One call, one sample,
	// whatever it handled.
	handlerCall struct {
		ended  time.Time
		took   time.Duration
		failed bool
		ran    bool // the handler was called and its context not cancelled: a sample
	}
	// rebalanceRequest asks the coordinator to act on a rebalance; it
	// replies on reply (final offsets, for a revoke).
	rebalanceRequest struct {
		kind       rebalanceKind
		partitions []pipeline.TopicPartition
		committed  []pipeline.Offset // assign: the committed offsets and metadata, as the source read them
		reply      chan []claimOffset
	}
	// pollCycle is one poll cycle's messages, with their sizes as the
	// poller counted them against the byte window.
	pollCycle[K, V any] struct {
		msgs  []*pipeline.Message[K, V]
		sizes []int32
	}
	// steering tells the poller which partitions to pause (see steer.go).
	steering struct {
		pause    []pipeline.TopicPartition // pause these
		over     []pipeline.TopicPartition // pause these while a low one has messages to read
		low      []pipeline.TopicPartition // below a quarter of their share of the window
		starving bool                      // the pause is for a key chain short of messages
		quick    bool                      // the handlers are quick: the poller keeps the window to quickWindow
	}
	// room is what the coordinator freed of the in-flight window since it
	// last told the poller.
	room struct {
		msgs  int
		bytes int64
	}
	// claimOffset is a committable offset and the claim it belongs to.
	claimOffset struct {
		pipeline.Offset
		claim uint64
		runs  []offsetmap.Run // the offset map: finished offsets above Offset, which the committer encodes into Metadata
	}
	// commitRequest asks the committer to commit a revoke's final offsets.
	commitRequest struct {
		offsets []claimOffset
		reply   chan error
	}
	// revokedQuery asks for the channel pipeline.Revoked returns.
	revokedQuery struct {
		tp    pipeline.TopicPartition
		reply chan (<-chan struct{})
	}
)

type verdict uint8

const (
	verdictFinish  verdict = iota // finished: committable; the key is free
	verdictRetry                  // handle again, keeping the key
	verdictAbandon                // never committed in this assignment; its key's queue goes too
	verdictRequeue                // batch mode: not handled after all (an earlier message of its key failed, or another partition's end cancelled its batch): it waits again, in order
)

type rebalanceKind uint8

const (
	rebalanceAssign rebalanceKind = iota
	rebalanceRevoke
	rebalanceGiveUp // the revoke timed out: answer now
	rebalanceLost
	rebalanceHold   // Parallafka.Pause: dispatch nothing
	rebalanceUnhold // Parallafka.Resume
)
