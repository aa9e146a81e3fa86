// Package engine is Parallafka's engine: the poll stage, the coordinator
// (key-router and owner of every partition's state), the handler pool, the
// ack collector and the committer, and the wiring between them. Users
// cannot import it; package parallafka configures and runs it.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/parallafka/parallafka/internal/outbox"
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
	MaxInFlight      int
	MaxInFlightBytes int64 // 0: no bound
	Ordering         Ordering
	OrderNilKeys     bool
	CommitInterval   time.Duration
	CommitEvery      int             // also commit after this many offsets finished; 0: the interval alone
	AsyncCommits     bool            // periodic commits do not wait for the last one's result
	MapMaxBytes      int             // the offset map's limit in the commit metadata; 0: no map
	HardStop         bool            // the shutdown mode
	DrainBacklog     bool            // a graceful stop handles the polled backlog first (ShutdownMode Drain)
	RateLimit        RateLimit       // the dispatch rate limit at the start; zero: none
	Rates            *RateControl    // Parallafka.SetRateLimit; nil: never changed
	HeldKeyTTL       time.Duration   // a held key is released this long after it was held; 0: only by ReleaseKey
	Releases         *HeldKeyControl // Parallafka.ReleaseKey; nil: never released
	ShutdownTimeout  time.Duration
	RevokeTimeout    time.Duration
	Logger           *slog.Logger
	ErrorPolicy      pipeline.ErrorPolicy
	Pause            *UserPause        // Parallafka.Pause and Resume; nil: never paused
	Observer         pipeline.Observer // nil: none
	StallTimeout     time.Duration     // 0: no stall detection
	// Transactor, if set, makes the pipeline transactional: commits are
	// transactions that carry the outputs handlers produce (outbox.go).
	Transactor pipeline.Transactor

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

// UserPause carries Parallafka.Pause and Resume to the poller as messages
// on a control edge: a channel of one slot that holds the user's latest
// wish until the poller reads it (a wish it has not read yet is replaced).
// Set never blocks, before, during or after a flow runs. The zero value is
// ready to use; it must not be copied after first use.
type UserPause struct {
	once sync.Once
	wish chan bool
}

func (u *UserPause) edge() chan bool {
	if u == nil {
		return nil // never paused
	}
	u.once.Do(func() { u.wish = make(chan bool, 1) })
	return u.wish
}

// Set asks for the pipeline paused (true) or running (false).
func (u *UserPause) Set(paused bool) {
	wish := u.edge()
	for {
		select {
		case wish <- paused:
			return
		default:
			select {
			case <-wish: // a wish the poller has not read yet: replaced
			default:
			}
		}
	}
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
	// A rebalance the source delivers while it closes finds the
	// coordinator returned (the poller's coordDone): nothing is left to
	// wait for or to commit.
	closeErr := cfg.Source.Close()
	if closeErr != nil {
		closeErr = fmt.Errorf("parallafka: closing source: %w", closeErr)
	}
	return errors.Join(life.err(), runErr, closeErr)
}

// flow is one Consume call's goroutines, wired: run only starts them.
type flow[K, V any] struct {
	life       *lifecycle
	poller     *poller[K, V] // the source's rebalance listener too
	goroutines []goroutine
}

// goroutine is one goroutine of the flow: what runs, and what its error
// does (its stop policy). what names it in its error, for a user's stage
// only: the user knows its name, not the engine's parts.
type goroutine struct {
	what    string
	onError onError
	run     func(context.Context) error
}

// newFlow makes every goroutine of the flow and every channel between
// them, and returns them wired; nothing is patched later. The edges (a
// reply channel travels inside the request where one is marked "reply"):
//
//	Pause/Resume ─userPause──────────▶ poll
//	SetRateLimit ─rateLimits─────────▶ coordinator
//	ReleaseKey ───releases (reply)───▶ coordinator
//	poll ────────polled──────────────▶ coordinator ─dispatch──▶ handler pool
//	poll ◀───────room, steer, spent─── coordinator ◀─handlerEnd─ handler pool
//	poll ────────rebalances (reply)──▶ coordinator
//	poll ────────commits (reply)─────▶ committer
//	committer ───offsets (reply)─────▶ coordinator
//	committer ◀──final, commitNow───── coordinator
//	coordinator ─staged──▶ AfterPoll stages ─routable──▶ coordinator
//	handler pool ─handled─▶ AfterHandle stages ─▶ ack collector ─released─▶ coordinator
//	user stages ─queries (pipeline.Revoked, reply)─▶ coordinator
//	handler pool, ack collector ─failed─▶ lifecycle (stopOnFailure)
//
// The AfterPoll edges exist with AfterPoll stages only; without them the
// coordinator routes what it tracks at once. The AfterHandle edges exist
// with AfterHandle stages only; without them the pool's workers apply the
// ack collector's verdict and send it with the handler's end. Every
// handler's end, in every topology, reaches the coordinator on handlerEnd
// alone. In batch mode (cfg.BatchHandler) dispatch carries batches; the
// edges are the same. draining (closed when a graceful stop begins) and
// coordDone, commitDone (closed as the coordinator, the committer return)
// are broadcast to whoever selects on them. releases alone is made by the
// coordinator as it begins, and let go as it ends (HeldKeyControl.attach):
// a ReleaseKey outside that time returns at once.
func newFlow[K, V any](cfg *Config[K, V], stats *Stats, life *lifecycle) *flow[K, V] {
	var (
		// poller ⇄ coordinator
		polled     = make(chan pollCycle[K, V], 4)
		spent      = make(chan pollCycle[K, V], 4)
		room       = make(chan room, 1)
		steer      = make(chan steering, 1)
		rebalances = make(chan rebalanceRequest)
		// coordinator ⇄ handler pool
		dispatch   = make(chan job[K, V], 2*cfg.Concurrency)
		handlerEnd = make(chan handlerEnded[K, V], 2*cfg.Concurrency)
		// coordinator, poller ⇄ committer
		offsets   = make(chan offsetsQuery)
		final     = make(chan []claimOffset, 1)
		commitNow = make(chan struct{}, 1)
		commits   = make(chan commitRequest)
		// user stages ⇄ coordinator
		queries = make(chan revokedQuery)
		// handler pool, ack collector → lifecycle
		failed = make(chan error, 1)
		// closed as the coordinator and the committer return
		coordDone  = make(chan struct{})
		commitDone = make(chan struct{})
	)
	f := &flow[K, V]{life: life}
	// coordinator ─staged─▶ AfterPoll stages ─routable─▶ coordinator
	var staged chan *pipeline.Message[K, V]
	var routable <-chan *pipeline.Message[K, V]
	if len(cfg.AfterPoll) > 0 {
		staged = make(chan *pipeline.Message[K, V], channelSize)
		routable = f.chain(cfg.AfterPoll, staged, nil)
	}
	// handler pool ─handled─▶ AfterHandle stages ─▶ ack collector ─released─▶ coordinator
	var handled chan *pipeline.Message[K, V]
	var collectable <-chan *pipeline.Message[K, V]
	var released chan completion[K, V]
	var stageOutputs *outbox.Stage[K, V] // what the AfterHandle stages produce, in a transactional pipeline
	if len(cfg.AfterHandle) > 0 {
		if cfg.Transactor != nil {
			stageOutputs = new(outbox.Stage[K, V])
		}
		handled = make(chan *pipeline.Message[K, V], channelSize)
		collectable = f.chain(cfg.AfterHandle, handled, stageOutputs)
		released = make(chan completion[K, V], 2*cfg.Concurrency)
	}

	obs := observer{o: cfg.Observer, log: cfg.Logger}
	obs.throttle, _ = cfg.Observer.(pipeline.ThrottleObserver)
	obs.holds, _ = cfg.Observer.(pipeline.KeyHoldObserver)
	batch := cfg.Batch
	if cfg.BatchHandler == nil {
		batch = BatchLimits{}
	}
	f.poller = &poller[K, V]{
		pollerEdges: pollerEdges[K, V]{
			polled: polled, spent: spent, room: room, steer: steer, rebalances: rebalances, commits: commits,
			userPause: cfg.Pause.edge(), coordDone: coordDone, commitDone: commitDone, draining: life.draining,
		},
		source: cfg.Source, log: cfg.Logger, stats: stats, maxInFlight: cfg.MaxInFlight, maxBytes: cfg.MaxInFlightBytes,
		quickWindow: cfg.quickWindow(), pollTimeout: pollTimeout, pauseAfter: pauseAfter, revokeTimeout: cfg.RevokeTimeout,
		obs: obs,
	}
	coord := newCoordinator(coordinatorConfig{
		concurrency: cfg.Concurrency, minConcurrency: cfg.MinConcurrency,
		maxInFlight: cfg.MaxInFlight, commitEvery: cfg.CommitEvery,
		ordering: cfg.Ordering, orderNilKeys: cfg.OrderNilKeys, batch: batch,
		stallTimeout: cfg.StallTimeout, stats: stats, log: cfg.Logger, obs: obs,
		drainBacklog: cfg.DrainBacklog, rateLimit: cfg.RateLimit,
		heldTTL: cfg.HeldKeyTTL, releases: cfg.Releases,
	}, coordinatorEdges[K, V]{
		polled: polled, spent: spent, staged: staged, routable: routable, dispatch: dispatch,
		handlerEnd: handlerEnd, released: released, room: room, commitNow: commitNow, steer: steer,
		rebalances: rebalances, offsets: offsets, final: final, queries: queries, drainingCh: life.draining,
		rateLimits: cfg.Rates.edge(),
	})
	collector := &collector[K, V]{policy: cfg.ErrorPolicy, failed: failed, stats: stats, log: cfg.Logger, obs: obs, staged: stageOutputs}
	pool := &handlerPool[K, V]{
		concurrency: cfg.Concurrency, handler: cfg.Handler, batchHandler: cfg.BatchHandler, log: cfg.Logger,
		collector: collector, stats: stats, obs: obs, dispatch: dispatch, handlerEnd: handlerEnd, handled: handled,
		transactional: cfg.Transactor != nil,
	}
	committer := &committer[K, V]{
		source: cfg.Source, log: cfg.Logger, stats: stats,
		interval: cfg.CommitInterval, timeout: cfg.RevokeTimeout,
		async: cfg.AsyncCommits, mapMaxBytes: cfg.MapMaxBytes,
		offsets: offsets, final: final, commits: commits, commitNow: commitNow, coordDone: coordDone,
		shutdownDeadline: life.shutdownDeadline, obs: obs, transactor: cfg.Transactor,
	}
	life.revoked = askRevoked(queries, coordDone)

	// A failing source stops the flow gracefully; anything else failing
	// breaks it, and stops it hard.
	f.goroutines = append(f.goroutines,
		goroutine{onError: drainOnError, run: f.poller.run},
		goroutine{onError: abortOnError, run: func(ctx context.Context) error {
			defer close(coordDone)
			return coord.run(ctx)
		}},
		goroutine{onError: abortOnError, run: pool.run},
		goroutine{onError: abortOnError, run: func(ctx context.Context) error {
			defer close(commitDone)
			return committer.run(ctx)
		}},
		goroutine{onError: abortOnError, run: func(context.Context) error {
			return life.stopOnFailure(failed, coordDone)
		}},
	)
	if collectable != nil {
		f.goroutines = append(f.goroutines, goroutine{onError: abortOnError, run: func(ctx context.Context) error {
			return collector.run(ctx, collectable, released, coordDone)
		}})
	}
	return f
}

// quickWindow is the poller's window while the handlers are quick, in key
// order only (see quickWindowPerHandler); 0: the window never shrinks.
func (cfg *Config[K, V]) quickWindow() int {
	if cfg.Ordering != OrderByKey || cfg.BatchHandler != nil {
		return 0
	}
	return min(cfg.MaxInFlight, max(minQuickWindow, quickWindowPerHandler*cfg.Concurrency))
}

// askRevoked answers pipeline.Revoked by asking the coordinator on
// queries.
func askRevoked(queries chan<- revokedQuery, coordDone <-chan struct{}) signal.Revoked {
	return func(topic string, partition int32) <-chan struct{} {
		q := revokedQuery{tp: pipeline.TopicPartition{Topic: topic, Partition: partition}, reply: make(chan (<-chan struct{}), 1)}
		select {
		case queries <- q:
			return <-q.reply
		case <-coordDone:
			return closedChannel
		}
	}
}

// run starts every goroutine of the flow and waits for all of them.
func (f *flow[K, V]) run() error {
	g := newGroup(f.life)
	for _, r := range f.goroutines {
		g.Go(r.what, r.onError, r.run)
	}
	return g.Wait()
}

// chain adds the user's stages, one after another behind in, to the
// flow's goroutines, and returns the last one's output. Each stage's
// output is closed when it returns. With outputs (AfterHandle stages of a
// transactional pipeline), the stages' context lets them Produce for the
// messages they hold.
func (f *flow[K, V]) chain(stages []NamedStage[K, V], in <-chan *pipeline.Message[K, V], outputs *outbox.Stage[K, V]) <-chan *pipeline.Message[K, V] {
	for _, s := range stages {
		from, out := in, make(chan *pipeline.Message[K, V], channelSize)
		f.goroutines = append(f.goroutines, goroutine{what: "stage " + s.Name, onError: abortOnError, run: func(ctx context.Context) error {
			defer close(out)
			if outputs != nil {
				ctx = outbox.WithStage(ctx, outputs)
			}
			return s.Run(ctx, from, out)
		}})
		in = out
	}
	return in
}
