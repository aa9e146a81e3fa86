// Package parallafka handles Kafka messages concurrently, far beyond one
// consumer per partition, while it keeps FIFO order for messages that share
// a key and commits offsets so that nothing is ever lost.
//
// It polls a topic in order on one goroutine and spreads the messages over
// many concurrent handlers:
//
//	poll ──▶ coordinator ──▶ handler pool
//	           │    ▲               │
//	           │    └─ handler end ─┘
//	           ▼
//	       committer
//
// The coordinator owns every partition's state and picks the next message
// for a handler; a handler's end comes back to it, which releases the key
// and advances the committable offset; the committer commits that offset.
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
// ConsumeBatch hands a handler many messages per call instead (a sink's
// transaction per batch), with per-key order kept inside and across
// batches and an outcome per message (BatchError).
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
	"log/slog"
	"reflect"
	"sync/atomic"
	"time"

	"github.com/parallafka/parallafka/internal/engine"
	"github.com/parallafka/parallafka/pipeline"
)

// Types re-exported from package pipeline, so that a handler's author
// imports one package. Package pipeline holds the rest: the Observer and
// what it is told, error types (MessageError, PanicError), the ErrorPolicy
// type, stages and sources; `go doc pipeline.Message` (and so on) shows
// the fields and methods of these aliases.
type (
	// Message is one Kafka record as it travels through the pipeline: topic,
	// partition, offset, key and value (deserialized, and raw), headers,
	// timestamp, the latest attempt's error and the attempt count. Stages
	// mark it with Drop or Retry. See pipeline.Message for its methods.
	Message[K, V any] = pipeline.Message[K, V]
	// Handler handles one message; an error or a panic fails it.
	Handler[K, V any] = pipeline.Handler[K, V]
	// Source is a one-message-at-a-time consumer: package kafka's, or
	// package memsource's for tests.
	Source[K, V any] = pipeline.Source[K, V]
	// BatchHandler handles a batch of messages in one call (ConsumeBatch).
	BatchHandler[K, V any] = pipeline.BatchHandler[K, V]
	// BatchError fails the messages of a batch it names; the others
	// finish: `var failed BatchError[K, V]`, failed.Fail(msg, err) for each
	// message that failed, then `return failed.Err()`. Its methods are
	// pipeline.BatchError's (`go doc pipeline.BatchError`).
	BatchError[K, V any] = pipeline.BatchError[K, V]
)

var (
	// ErrConsumed is returned by a second call of Consume: a Parallafka
	// consumes once (its source is closed when Consume returns).
	ErrConsumed = errors.New("parallafka: Consume was already called")
	// ErrShutdownTimeout is returned (joined with any other error) when a
	// graceful shutdown had to cancel handlers that outlived its timeout.
	ErrShutdownTimeout = engine.ErrShutdownTimeout
)

// errNilHandler is returned by Consume and ConsumeBatch when the handler is
// nil (the source is closed all the same).
var errNilHandler = errors.New("parallafka: nil handler")

// errBatchMiddleware is returned by Consume when WithBatchMiddleware was
// given: batch middleware wraps a batch handler (ConsumeBatch).
var errBatchMiddleware = errors.New("parallafka: WithBatchMiddleware wraps a batch handler: use ConsumeBatch, or WithMiddleware with Consume")

// errMessageMiddleware is returned by ConsumeBatch when WithMiddleware was
// given: it wraps a single-message handler.
var errMessageMiddleware = errors.New("parallafka: WithMiddleware wraps a single-message handler: use WithBatchMiddleware with ConsumeBatch (stages.TimeoutBatch, stages.DedupeBatch)")

// Parallafka consumes a Source with many concurrent handlers. Make one with
// New; it consumes once.
type Parallafka[K, V any] struct {
	source   Source[K, V]
	cfg      config
	mw       []pipeline.Middleware[K, V]
	batchMW  []pipeline.BatchMiddleware[K, V]
	before   []engine.NamedStage[K, V]
	after    []engine.NamedStage[K, V]
	stats    engine.Stats
	consumed atomic.Bool
	paused   engine.UserPause      // Pause and Resume; the poll stage acts on it
	rates    engine.RateControl    // SetRateLimit; the coordinator acts on it
	held     engine.HeldKeyControl // ReleaseKey; the coordinator answers it
	ended    atomic.Bool           // Consume returned
}

// New returns a Parallafka that will consume source. It returns an error if
// source is nil or an option is invalid; nothing is started before Consume.
//
// Middleware and stages are given as options, typed by their own type
// parameters; New checks that they match the source's K and V (Go cannot
// check a list of options against New's type parameters at compile time
// without type arguments on every option).
func New[K, V any](source Source[K, V], opts ...Option) (*Parallafka[K, V], error) {
	cfg := defaultConfig()
	for _, o := range opts {
		if o == nil {
			return nil, errors.New("parallafka: nil option")
		}
		o.apply(&cfg)
	}
	var errs []error
	if isNil(source) {
		errs = append(errs, errors.New("parallafka: nil source"))
	}
	errs = append(errs, cfg.validate())
	if mp, ok := source.(maxPollIntervaler); ok && !isNil(source) {
		// A revoke that may outlast max.poll.interval.ms gets the member
		// thrown out of the group while it waits, over and over.
		if limit := mp.MaxPollInterval(); limit > 0 && cfg.revokeTimeout+revokeMargin > limit {
			errs = append(errs, fmt.Errorf("parallafka: revoke timeout %v (plus %v for its commit) does not fit in the consumer's max.poll.interval.ms (%v): lower WithRevokeTimeout or raise max.poll.interval.ms",
				cfg.revokeTimeout, revokeMargin, limit))
		}
	}
	mw, batchMW, before, after, err := typed[K, V](&cfg)
	if err := errors.Join(append(errs, err)...); err != nil {
		return nil, err
	}
	if s, ok := source.(logInheritor); ok && cfg.loggerSet {
		s.InheritLogger(cfg.logger)
	}
	return &Parallafka[K, V]{source: source, cfg: cfg, mw: mw, batchMW: batchMW, before: before, after: after}, nil
}

// maxPollIntervaler is implemented by sources whose consumer leaves its
// group when it does not poll for a while (kafka.Source).
type maxPollIntervaler interface{ MaxPollInterval() time.Duration }

// revokeMargin is the time a revoke needs beyond its wait for handlers: the
// final commit and the rest of the rebalance callback.
const revokeMargin = 2 * time.Second

// logInheritor is implemented by sources that log (kafka.Source): they use
// the pipeline's logger unless they were given their own.
type logInheritor interface{ InheritLogger(*slog.Logger) }

// isNil reports whether source is nil, or a nil pointer in the interface
// (a typed nil, such as a *kafka.Source that was never made).
func isNil(source any) bool {
	if source == nil {
		return true
	}
	v := reflect.ValueOf(source)
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface, reflect.Map, reflect.Slice, reflect.Func, reflect.Chan:
		return v.IsNil()
	}
	return false
}

// Consume handles messages with handler until ctx is cancelled or a message
// fails under the error policy (or the source fails), then shuts down as
// configured, closes the source and returns: nil after a requested stop
// (ctx cancelled, even before Consume was called), otherwise the error.
// No goroutine it started outlives it. Handlers must honour their
// context: it is cancelled on a hard stop or a shutdown timeout, and
// Consume waits for them to return.
//
// Consume closes the source whenever it returns, an early return too (a
// nil handler, the wrong middleware), except when it returns ErrConsumed:
// a Parallafka consumes once, and any call after the first returns that.
func (p *Parallafka[K, V]) Consume(ctx context.Context, handler Handler[K, V]) error {
	return p.start(ctx, handler == nil, len(p.batchMW) > 0, errBatchMiddleware, func() *engine.Config[K, V] {
		for i := len(p.mw) - 1; i >= 0; i-- {
			handler = p.mw[i](handler)
		}
		return p.engineConfig(handler, nil)
	})
}

// ConsumeBatch is Consume with a handler of batches: it handles messages
// with handler, many per call, until ctx is cancelled or a message fails
// under the error policy, then shuts down as configured, closes the source
// and returns, as Consume does. WithMaxConcurrency bounds the batches in
// flight; WithMaxBatch and WithBatchLinger shape
// them; WithBatchMiddleware wraps handler.
//
// In key mode a batch holds the messages of free keys: several of one key
// in offset order, and a key in at most one batch in flight; a batch never
// waits for a key that is busy elsewhere. In partition mode a partition is
// in at most one batch in flight; unordered, anything goes together.
//
// Returning nil finishes every message; an error, or a panic, fails every
// message; a *BatchError (see BatchError.Fail and Err) fails only the
// messages it names. A failed message goes through the AfterHandle stages
// (retry, dead-letter) and the error policy like a failed message of
// Consume, and the later messages of its key in the batch are handled
// again after it, so per-key order holds.
// Commits, revokes and shutdowns behave as with Consume: a revoke waits for
// the running batches (within the revoke timeout, then cancels them).
//
// Per-message middleware (WithMiddleware) wraps a single-message handler:
// ConsumeBatch refuses it; package stages has batch versions of its
// middleware.
func (p *Parallafka[K, V]) ConsumeBatch(ctx context.Context, handler BatchHandler[K, V]) error {
	return p.start(ctx, handler == nil, len(p.mw) > 0, errMessageMiddleware, func() *engine.Config[K, V] {
		for i := len(p.batchMW) - 1; i >= 0; i-- {
			handler = p.batchMW[i](handler)
		}
		return p.engineConfig(nil, handler)
	})
}

// start is the one path of Consume and ConsumeBatch: it marks the
// Parallafka consumed, closes the source on every early return, and runs
// the engine with the configuration config wraps the handler into.
func (p *Parallafka[K, V]) start(ctx context.Context, nilHandler, wrongMiddleware bool, errWrongMiddleware error, config func() *engine.Config[K, V]) error {
	if !p.consumed.CompareAndSwap(false, true) {
		return ErrConsumed
	}
	defer p.ended.Store(true)
	switch {
	case nilHandler:
		return errors.Join(errNilHandler, p.closeSource())
	case wrongMiddleware:
		return errors.Join(errWrongMiddleware, p.closeSource())
	case ctx.Err() != nil:
		// A stop requested before the start: nil, as for a context
		// cancelled a moment after Consume began.
		return p.closeSource()
	}
	return p.run(ctx, config())
}

func (p *Parallafka[K, V]) run(ctx context.Context, cfg *engine.Config[K, V]) error {
	return engine.Run(ctx, cfg, &p.stats)
}

func (p *Parallafka[K, V]) engineConfig(handler Handler[K, V], batchHandler BatchHandler[K, V]) *engine.Config[K, V] {
	c := p.cfg
	return &engine.Config[K, V]{
		Source: p.source, Handler: handler, BatchHandler: batchHandler,
		Batch:     engine.BatchLimits{MaxMessages: c.maxBatchMessages, MaxBytes: c.maxBatchBytes, Linger: c.batchLinger},
		AfterPoll: p.before, AfterHandle: p.after,
		Concurrency: c.maxConcurrency, MinConcurrency: c.adaptiveMin(), MaxInFlight: c.maxInFlight, MaxInFlightBytes: c.maxInFlightBytes,
		Ordering: engine.Ordering(c.ordering), OrderNilKeys: c.orderNilKeys,
		CommitInterval: c.commitInterval, CommitEvery: c.commitEvery, AsyncCommits: c.asyncCommits,
		Transactor:  c.transactor,
		MapMaxBytes: c.mapMaxBytes, HardStop: c.shutdownMode == HardStop,
		DrainBacklog:    c.shutdownMode == Drain,
		ShutdownTimeout: c.shutdownTimeout, RevokeTimeout: c.revokeTimeout,
		Logger: c.logger, ErrorPolicy: c.errorPolicy, Pause: &p.paused,
		Observer: c.observer, StallTimeout: c.stallTimeout,
		RateLimit: engine.RateLimit(c.rateLimit), Rates: &p.rates,
		HeldKeyTTL: c.heldKeyTTL, Releases: &p.held,
	}
}

// Pause stops consumption without leaving the group: nothing more is
// dispatched to handlers, and every assigned partition stops fetching,
// while the poll loop goes on (so rebalances are served and
// max.poll.interval.ms is never exceeded, however long the pause). Handlers
// already running finish, and their offsets are committed. Use it as a
// circuit breaker while a downstream is down. It takes effect within one
// poll cycle (about 100 ms); calling it before Consume pauses from the start.
func (p *Parallafka[K, V]) Pause() { p.paused.Set(true) }

// Resume undoes Pause: dispatching and fetching go on.
func (p *Parallafka[K, V]) Resume() { p.paused.Set(false) }

func (p *Parallafka[K, V]) closeSource() error {
	if err := p.source.Close(); err != nil {
		return fmt.Errorf("parallafka: closing source: %w", err)
	}
	return nil
}
