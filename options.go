package parallafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/parallafka/parallafka/internal/engine"
	"github.com/parallafka/parallafka/pipeline"
)

// Option configures a Parallafka. Each option's constructor documents its
// default; New validates the result and returns a clear error for a bad one.
//
// The options, by section: concurrency (WithMaxConcurrency,
// WithAdaptiveConcurrency, and for ConsumeBatch WithMaxBatch,
// WithBatchLinger); ordering (WithOrdering,
// WithOrderedNilKeys); windows (WithMaxInFlight, WithMaxInFlightBytes);
// commits (WithCommitInterval, WithCommitEvery, WithAsyncCommits,
// WithOffsetMapMaxBytes); shutdown (WithShutdownMode, WithShutdownTimeout,
// WithRevokeTimeout); stages (WithMiddleware, WithBatchMiddleware,
// WithAfterPoll, WithAfterHandle, WithErrorPolicy, WithHeldKeyTTL);
// dispatch (WithRateLimit); observability (WithLogger, WithObserver,
// WithStallTimeout); exactly-once (WithTransactions).
type Option interface {
	apply(*config)
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

type config struct {
	// concurrency
	maxConcurrency   int
	concurrencySet   bool // WithMaxConcurrency was given
	adaptive         bool // WithAdaptiveConcurrency was given: maxConcurrency is its max
	minConcurrency   int
	adaptiveMax      int
	maxBatchMessages int
	maxBatchBytes    int64
	batchLinger      time.Duration
	// ordering
	ordering     Ordering
	orderNilKeys bool
	// windows
	maxInFlight      int // 0: the default, max(defaultMaxInFlight, 2*maxConcurrency)
	maxInFlightBytes int64
	// commits
	commitInterval time.Duration
	commitEvery    int
	asyncCommits   bool
	mapMaxBytes    int
	// shutdown
	shutdownMode    ShutdownMode
	shutdownTimeout time.Duration
	revokeTimeout   time.Duration
	// stages
	middleware      []any // pipeline.Middleware[K, V], checked against K and V by New
	batchMiddleware []any // pipeline.BatchMiddleware[K, V], checked likewise
	stages          []stageSpec
	errorPolicy     pipeline.ErrorPolicy
	// observability
	logger       *slog.Logger
	loggerSet    bool // WithLogger was given: the logger reaches the source too
	observer     pipeline.Observer
	stallTimeout time.Duration
	healthChecks []func(context.Context) error
	rateLimit    RateLimit
	heldKeyTTL   time.Duration
	// transactions
	transactor pipeline.Transactor

	errs []error
}

type stageSpec struct {
	afterPoll bool // WithAfterPoll; otherwise WithAfterHandle
	name      string
	stage     any // pipeline.Stage[K, V]
}

// defaultMaxInFlight is WithMaxInFlight's default (or twice the concurrency
// if that is more).
const defaultMaxInFlight = 20_000

// defaultConfig holds every default, each stated once more in its option's
// doc.
func defaultConfig() config {
	return config{
		maxConcurrency:   16,
		maxBatchMessages: 500,
		maxBatchBytes:    4 << 20,
		batchLinger:      5 * time.Millisecond,
		ordering:         OrderByKey,
		maxInFlightBytes: 64 << 20,
		commitInterval:   time.Second,
		mapMaxBytes:      4096,
		shutdownMode:     Graceful,
		shutdownTimeout:  30 * time.Second,
		revokeTimeout:    10 * time.Second,
		errorPolicy:      stopOnError,
		logger:           slog.Default(),
		stallTimeout:     time.Minute,
	}
}

// ---- Concurrency ----

// WithMaxConcurrency sets how many handlers run at the same time. Default
// 16. It cannot be combined with WithAdaptiveConcurrency.
func WithMaxConcurrency(n int) Option {
	return optionFunc(func(c *config) { c.maxConcurrency, c.concurrencySet = n, true })
}

// WithAdaptiveConcurrency makes the number of handlers allowed to run at
// the same time adapt, between min and max, to what the handlers show, for
// handlers that call a shared downstream (a database, a service) whose
// capacity is unknown or changes. It starts at min. Every window of 100 ms
// (and at least 10 handler calls) it compares the window's 90th percentile
// handler latency with the latency without a queue, and keeps the limit
// within a call or two of what the downstream takes:
//
//   - up to 2 % above it, no queue: the limit grows (doubling until the
//     first sign of a queue, then by one a window, faster after several
//     windows in a row that grew);
//   - 2-3 % above: a queue of a call or two, or none: it holds;
//   - more than 3 % above: calls queue downstream, and the limit shrinks in
//     proportion (one call for a single slow window, which may be a
//     hiccup of the machine; at most a quarter a window);
//   - a failed call (an error or a panic: a timeout returned as an error, a
//     downstream shedding load) counts as overload: the limit is cut by
//     10 %, or by the share of the window's calls that failed, up to half.
//
// The limit does not grow while fewer than half of the allowed handlers
// are busy (key order or the backlog, not the limit, is the bound then).
// Every 2.5 s two 100 ms windows run at 0.9 of the limit to measure the
// latency without a queue afresh, and how much it varies by itself: the
// 2 % and 3 % widen with that noise (up to 25 %). A retried attempt is a
// call like any other; a call cut short by a hard stop or a revoke timeout
// is no sample. Errors that do not come from load (a message the handler
// refuses) lower the limit too, and so does latency the handler has for
// reasons of its own. The algorithm is Netflix concurrency-limits'
// gradient and Vegas limits (see the README); Stats().ConcurrencyLimit
// reports the limit, the logger logs its changes at Debug level, and an
// Observer's ConcurrencyLimitChanged exports it (WithObserver).
//
// min must be at least 1 and max at least min; the in-flight window
// (WithMaxInFlight) must hold max messages; the pool keeps max handler
// goroutines. It cannot be combined with WithMaxConcurrency. Off by
// default: WithMaxConcurrency's fixed count.
func WithAdaptiveConcurrency(min, max int) Option {
	return optionFunc(func(c *config) { c.adaptive, c.minConcurrency, c.adaptiveMax = true, min, max })
}

// WithMaxBatch bounds one batch of ConsumeBatch: at most messages
// messages, and at most bytes bytes (key, value and headers as received; a
// message that would take the batch past bytes waits for the next batch,
// unless it is the batch's first). Both must be positive. Default 500
// messages and 4 MiB.
func WithMaxBatch(messages int, bytes int64) Option {
	return optionFunc(func(c *config) { c.maxBatchMessages, c.maxBatchBytes = messages, bytes })
}

// WithBatchLinger sets how long a partial batch waits for more messages
// before a free handler takes it (ConsumeBatch): a little latency for
// fuller batches when messages trickle in. A full batch goes at once. 0
// hands a free handler whatever is ready. Default 5 ms.
func WithBatchLinger(d time.Duration) Option {
	return optionFunc(func(c *config) { c.batchLinger = d })
}

// ---- Ordering ----

// Ordering says which messages keep FIFO order.
type Ordering int

const (
	// OrderByKey keeps messages that share a key (within their partition) in
	// offset order: at most one of them is in a handler at a time.
	OrderByKey Ordering = iota
	// OrderByPartition keeps each partition in offset order, as a plain
	// consumer would, while partitions run in parallel.
	OrderByPartition
	// Unordered hands every message to the next free handler.
	Unordered
)

func (o Ordering) String() string {
	switch o {
	case OrderByKey:
		return "OrderByKey"
	case OrderByPartition:
		return "OrderByPartition"
	case Unordered:
		return "Unordered"
	}
	return fmt.Sprintf("Ordering(%d)", int(o))
}

// WithOrdering sets which messages keep FIFO order: OrderByKey (the
// default), OrderByPartition or Unordered.
func WithOrdering(o Ordering) Option {
	return optionFunc(func(c *config) { c.ordering = o })
}

// WithOrderedNilKeys makes messages without a key keep FIFO order among
// themselves within their partition, in OrderByKey mode. By default they
// carry no order: Kafka's producers spread them over partitions anyway.
func WithOrderedNilKeys() Option {
	return optionFunc(func(c *config) { c.orderNilKeys = true })
}

// ---- Windows ----

// WithMaxInFlight bounds the messages polled and not yet finished: the
// window a hot key's backlog and the cold keys around it share. At the
// limit (or WithMaxInFlightBytes's) the source's partitions are paused
// while polling goes on (the consumer stays in its group). It must be at
// least the concurrency. Default 20,000 (or twice the concurrency if that
// is more): enough for a skewed workload's hottest key to keep its handler
// busy while cold keys flow past it. A large window costs nothing on a
// revoke or a stop (only running handlers are waited for) and little after
// a crash (the offset map records what finished past the committed offset).
// In key order, while the handlers are quick (a no-op, an in-memory update:
// under 20 µs) and no hot key's backlog needs the whole window, the poller
// keeps at most 256 per handler (at least 4,096) of it in flight: such
// handlers drain a backlog at once, and more would only keep messages
// waiting, cold in the CPU's cache.
func WithMaxInFlight(n int) Option {
	return optionFunc(func(c *config) { c.maxInFlight = n })
}

// WithMaxInFlightBytes bounds the bytes of the messages polled and not yet
// finished (key, value and headers as received), and so the memory the
// pipeline holds whatever the message sizes; the last message polled may
// take it past the bound, so a message larger than the bound still gets
// through. Default 64 MiB.
func WithMaxInFlightBytes(n int64) Option {
	return optionFunc(func(c *config) { c.maxInFlightBytes = n })
}

// ---- Commits ----

// WithCommitInterval sets how often finished offsets are committed. Default
// 1 s: at most about a second of work is redone after a crash, for one
// commit request per second. Commits also happen on revoke and at shutdown.
func WithCommitInterval(d time.Duration) Option {
	return optionFunc(func(c *config) { c.commitInterval = d })
}

// WithCommitEvery also commits as soon as n offsets finished since the
// last commit (all partitions together), between intervals: less redo
// after a crash for busy pipelines, at one commit request per n messages
// (commits never overlap: a commit due while one is in flight waits for
// it). Default 0: the interval alone.
func WithCommitEvery(n int) Option {
	return optionFunc(func(c *config) { c.commitEvery = n })
}

// WithAsyncCommits makes periodic commits asynchronous, as Kafka clients'
// commitAsync: the committer sends one and goes on without waiting for its
// result, and a failed one is not retried (the next carries newer
// offsets), so a slow or failing group coordinator never delays the next
// commit's schedule. The commits of a revoke and of a shutdown stay
// synchronous, retried within their timeouts, after the one in flight
// ended. By default periodic commits are synchronous and a failed one is
// retried with backoff: commits never block polling or handlers either
// way, since the committer is a goroutine of its own.
func WithAsyncCommits() Option {
	return optionFunc(func(c *config) { c.asyncCommits = true })
}

// WithOffsetMapMaxBytes bounds the offset map, the commit metadata that
// records which offsets above the committed one already finished, so that
// a new owner of the partition (after a crash, a lost assignment or a
// rebalance) skips them instead of handling them again. A map that does not
// fit is cut to the offsets just above the committed one: the rest is
// redone, nothing stalls. Keep it within the brokers'
// offset.metadata.max.bytes. Default 4096, Kafka's default limit; 0 turns
// the map off (a new owner then redoes everything past the committed
// offset).
func WithOffsetMapMaxBytes(n int) Option {
	return optionFunc(func(c *config) { c.mapMaxBytes = n })
}

// ---- Shutdown ----

// ShutdownMode says how Consume stops once its context is cancelled.
type ShutdownMode int

const (
	// Graceful stops polling, drops the backlog that no handler started
	// (it was never committed, so it is delivered again), lets in-flight
	// handlers finish within the shutdown timeout, commits, and returns.
	// Past the timeout it behaves like HardStop.
	Graceful ShutdownMode = iota
	// HardStop cancels the handlers' contexts at once, waits for them to
	// return, and commits only what finished.
	HardStop
	// Drain stops polling, then handles everything already polled (the
	// backlog behind busy keys too) within the shutdown timeout, commits,
	// and returns. Past the timeout it behaves like Graceful past its
	// timeout: handlers are cancelled and only what finished is committed.
	Drain
)

// WithShutdownMode sets how Consume stops: Graceful (the default),
// HardStop, or Drain.
func WithShutdownMode(m ShutdownMode) Option {
	return optionFunc(func(c *config) { c.shutdownMode = m })
}

// WithShutdownTimeout bounds a graceful shutdown's wait for in-flight
// handlers; past it their contexts are cancelled. Default 30 s.
func WithShutdownTimeout(d time.Duration) Option {
	return optionFunc(func(c *config) { c.shutdownTimeout = d })
}

// WithRevokeTimeout bounds how long a revoke waits for the revoked
// partitions' in-flight handlers before it commits what finished and gives
// the partitions up (unfinished messages are then redone by the next owner).
// Keep it well under the group's rebalance timeout (max.poll.interval.ms).
// Default 10 s.
func WithRevokeTimeout(d time.Duration) Option {
	return optionFunc(func(c *config) { c.revokeTimeout = d })
}

// ---- Stages: middleware, inserted stages, the error policy ----

// WithMiddleware wraps the handler in the given middleware; the first one
// given is the outermost. It wraps Consume's handler of one message:
// ConsumeBatch refuses it (use WithBatchMiddleware).
func WithMiddleware[K, V any](mw ...pipeline.Middleware[K, V]) Option {
	return optionFunc(func(c *config) {
		for _, m := range mw {
			if m == nil {
				c.errs = append(c.errs, errors.New("parallafka: WithMiddleware: nil middleware"))
				continue
			}
			c.middleware = append(c.middleware, m)
		}
	})
}

// WithBatchMiddleware wraps the batch handler of ConsumeBatch in the given
// middleware; the first one given is the outermost. Consume refuses it.
func WithBatchMiddleware[K, V any](mw ...pipeline.BatchMiddleware[K, V]) Option {
	return optionFunc(func(c *config) {
		for _, m := range mw {
			if m == nil {
				c.errs = append(c.errs, errors.New("parallafka: WithBatchMiddleware: nil middleware"))
				continue
			}
			c.batchMiddleware = append(c.batchMiddleware, m)
		}
	})
}

// WithAfterPoll inserts a stage between the poll stage and the
// coordinator that routes messages to handlers. A stage here sees every
// message in poll order, before any handling: the place for filters,
// dedupe and enrichment. Messages it drops are finished at once, in order
// with their key. Stages inserted at the same point run in the order
// given; name identifies the stage in logs and errors. See pipeline.Stage
// for what a stage may and must do.
func WithAfterPoll[K, V any](name string, stage pipeline.Stage[K, V]) Option {
	return withStage(true, name, stage)
}

// WithAfterHandle inserts a stage between the handlers and the commit
// bookkeeping. A stage here sees every message after each handling
// attempt, with the outcome in Message.Err, while the message still holds
// its key: the place for retry, dead-lettering and metrics. Stages inserted
// at the same point run in the order given; name identifies the stage in
// logs and errors. See pipeline.Stage for what a stage may and must do.
func WithAfterHandle[K, V any](name string, stage pipeline.Stage[K, V]) Option {
	return withStage(false, name, stage)
}

func withStage[K, V any](afterPoll bool, name string, stage pipeline.Stage[K, V]) Option {
	return optionFunc(func(c *config) {
		if stage == nil {
			c.errs = append(c.errs, fmt.Errorf("parallafka: stage %q: nil stage", name))
			return
		}
		c.stages = append(c.stages, stageSpec{afterPoll: afterPoll, name: name, stage: stage})
	})
}

// WithErrorPolicy decides, per failed message, whether the pipeline stops
// (the message stays uncommitted and Consume returns its error) or skips it
// (commits it and goes on): SkipOnError, or a policy of your own
// returning pipeline.Stop, pipeline.Skip or pipeline.HoldKey (skip it and
// hold its key: see Parallafka.ReleaseKey). The default stops on every
// failure: nothing is lost.
func WithErrorPolicy(p pipeline.ErrorPolicy) Option {
	return optionFunc(func(c *config) { c.errorPolicy = p })
}

// stopOnError is the default error policy: every failure stops the pipeline.
func stopOnError(error) pipeline.ErrorAction { return pipeline.Stop }

// SkipOnError is an error policy that logs and skips every failure.
func SkipOnError(error) pipeline.ErrorAction { return pipeline.Skip }

// ---- Observability ----

// WithLogger sets the logger for the pipeline's events, and for the
// source's too if the source takes one (package kafka's does) and was not
// given its own. nil discards everything, as in package kafka. Default
// slog.Default().
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(c *config) {
		if l == nil {
			l = slog.New(slog.DiscardHandler)
		}
		c.logger, c.loggerSet = l, true
	})
}

// WithObserver has the pipeline tell o of its events: messages polled,
// each handling attempt's start (with its wait behind its key) and end,
// what became of each message, commits, pauses, rebalances, concurrency
// limit changes and stalls. It is the hook tracing and metrics build on
// (the contrib/otelparallafka module implements it for OpenTelemetry);
// see pipeline.Observer for its contract, and pipeline.ObserverFuncs to
// be told of a few events with plain functions (a commit, a rebalance, a
// concurrency limit change). Default: none, at no cost.
func WithObserver(o pipeline.Observer) Option {
	return optionFunc(func(c *config) { c.observer = o })
}

// WithStallTimeout sets when a partition counts as stalled: it has
// unfinished work and its committable offset has not moved for d (a
// handler that hangs, a message retried over and over). A stall is logged
// (Warn, naming the blocking message: topic, partition, offset, key, and
// how long its handler has run or why it waits), counted in
// Stats.Stalls, listed in Stats.StalledPartitions, told to the observer
// and reported by Health, until the offset moves. It is found within d
// plus a quarter of d (at most 5 s more). Default 1 minute; 0 turns stall
// detection off.
func WithStallTimeout(d time.Duration) Option {
	return optionFunc(func(c *config) { c.stallTimeout = d })
}

// WithHealthCheck adds a check to Health: while Parallafka consumes and
// its own checks pass, Health returns the first error a check returns,
// wrapped with ErrUnhealthy (errors.Is finds both). A check must be quick
// and safe to call from any goroutine; ctx is Health's. For example
// WithHealthCheck(guard.Flooding) reports a stages.FloodGuard that holds
// the pipeline. A nil check is refused by New.
func WithHealthCheck(check func(ctx context.Context) error) Option {
	return optionFunc(func(c *config) {
		if check == nil {
			c.errs = append(c.errs, errors.New("parallafka: WithHealthCheck: nil check"))
			return
		}
		c.healthChecks = append(c.healthChecks, check)
	})
}

// adaptiveMin is the adaptive limit's floor, 0 for a fixed concurrency.
func (c *config) adaptiveMin() int {
	if c.adaptive {
		return c.minConcurrency
	}
	return 0
}

func (c *config) validate() error {
	errs := append([]error(nil), c.errs...)
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("parallafka: "+format, args...))
	}
	if c.adaptive {
		switch {
		case c.concurrencySet:
			bad("WithAdaptiveConcurrency and WithMaxConcurrency cannot be combined: the adaptive limit's max is the handlers' count")
		case c.minConcurrency < 1:
			bad("adaptive concurrency: min must be at least 1, got %d", c.minConcurrency)
		case c.adaptiveMax < c.minConcurrency:
			bad("adaptive concurrency: max (%d) must be at least min (%d)", c.adaptiveMax, c.minConcurrency)
		default:
			c.maxConcurrency = c.adaptiveMax
		}
	} else if c.maxConcurrency < 1 {
		bad("max concurrency must be at least 1, got %d", c.maxConcurrency)
	}
	if c.maxInFlight == 0 {
		c.maxInFlight = max(defaultMaxInFlight, 2*c.maxConcurrency)
	}
	if c.maxInFlight < max(c.maxConcurrency, 1) {
		bad("max in-flight (%d) must be at least the max concurrency (%d)", c.maxInFlight, c.maxConcurrency)
	}
	if c.maxInFlightBytes < 1 {
		bad("max in-flight bytes must be positive, got %d", c.maxInFlightBytes)
	}
	if c.commitEvery < 0 {
		bad("commit every must not be negative, got %d", c.commitEvery)
	}
	if c.mapMaxBytes < 0 {
		bad("offset map max bytes must not be negative, got %d", c.mapMaxBytes)
	}
	if c.ordering < OrderByKey || c.ordering > Unordered {
		bad("unknown ordering %d", c.ordering)
	}
	if c.commitInterval <= 0 {
		bad("commit interval must be positive, got %v", c.commitInterval)
	}
	if c.transactor != nil && c.asyncCommits {
		bad("WithTransactions and WithAsyncCommits cannot be combined: each commit is a transaction, committed before the next one begins")
	}
	if t, ok := c.transactor.(interface{ TransactionTimeout() time.Duration }); ok {
		if limit := t.TransactionTimeout(); limit > 0 && c.commitInterval >= limit {
			bad("the transaction timeout (%v) must be longer than the commit interval (%v): the broker would abort transactions before they commit", limit, c.commitInterval)
		}
	}
	if c.shutdownMode != Graceful && c.shutdownMode != HardStop && c.shutdownMode != Drain {
		bad("unknown shutdown mode %d", c.shutdownMode)
	}
	if c.shutdownTimeout <= 0 {
		bad("shutdown timeout must be positive, got %v", c.shutdownTimeout)
	}
	if c.revokeTimeout <= 0 {
		bad("revoke timeout must be positive, got %v", c.revokeTimeout)
	}
	if c.errorPolicy == nil {
		bad("nil error policy")
	}
	if err := c.rateLimit.validate(); err != nil {
		bad("%v", err)
	}
	if c.heldKeyTTL < 0 {
		bad("held key TTL must not be negative, got %v", c.heldKeyTTL)
	}
	if c.stallTimeout < 0 {
		bad("stall timeout must not be negative, got %v", c.stallTimeout)
	}
	if c.maxBatchMessages < 1 {
		bad("max batch messages must be at least 1, got %d", c.maxBatchMessages)
	}
	if c.maxBatchBytes < 1 {
		bad("max batch bytes must be positive, got %d", c.maxBatchBytes)
	}
	if c.batchLinger < 0 {
		bad("batch linger must not be negative, got %v", c.batchLinger)
	}
	return errors.Join(errs...)
}

// typed checks that the middleware and stages match the message type.
func typed[K, V any](c *config) (mw []pipeline.Middleware[K, V], batchMW []pipeline.BatchMiddleware[K, V], before, after []engine.NamedStage[K, V], err error) {
	var errs []error
	for _, m := range c.batchMiddleware {
		typed, ok := m.(pipeline.BatchMiddleware[K, V])
		if !ok {
			errs = append(errs, fmt.Errorf("parallafka: batch middleware of type %T does not match messages of type %T", m, (*Message[K, V])(nil)))
			continue
		}
		batchMW = append(batchMW, typed)
	}
	for _, m := range c.middleware {
		typed, ok := m.(pipeline.Middleware[K, V])
		if !ok {
			errs = append(errs, fmt.Errorf("parallafka: middleware of type %T does not match messages of type %T", m, (*Message[K, V])(nil)))
			continue
		}
		mw = append(mw, typed)
	}
	for _, s := range c.stages {
		typed, ok := s.stage.(pipeline.Stage[K, V])
		if !ok {
			errs = append(errs, fmt.Errorf("parallafka: stage %q of type %T does not match messages of type %T", s.name, s.stage, (*Message[K, V])(nil)))
			continue
		}
		if s.afterPoll {
			before = append(before, engine.NamedStage[K, V]{Name: s.name, Run: typed})
		} else {
			after = append(after, engine.NamedStage[K, V]{Name: s.name, Run: typed})
		}
	}
	return mw, batchMW, before, after, errors.Join(errs...)
}
