package stages

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/sourcegraph/conc/panics"

	"github.com/parallafka/parallafka/internal/outbox"
	"github.com/parallafka/parallafka/pipeline"
)

// DeadLetterTopicChecker is an optional interface of a DeadLetterWriter:
// CheckDeadLetterTopic returns an error if topic does not exist (or cannot
// be written to). DeadLetterQueue calls it as it starts for its Topic (the
// stage, and so Consume, then fails with the error), and once for each
// default topic (the original topic with ".dlq") before its first write.
// kafka.DeadLetterWriter and franz.DeadLetterWriter implement it.
type DeadLetterTopicChecker interface {
	CheckDeadLetterTopic(ctx context.Context, topic string) error
}

// DeadLetterWriter writes dead letters. WriteDeadLetter must return only once
// the dead letter is durably stored (for Kafka: acknowledged by the broker,
// with acks=all), or with an error; it must honour ctx and be safe for
// concurrent use. Package kafka implements it with confluent-kafka-go's
// producer (kafka.NewDeadLetterWriter), package kafka/franz with franz-go's
// (franz.NewDeadLetterWriter).
type DeadLetterWriter interface {
	WriteDeadLetter(ctx context.Context, dl pipeline.DeadLetter) error
}

// DeadLetterConfig configures DeadLetterQueue. A zero field takes its
// documented default.
type DeadLetterConfig struct {
	// Writer writes the dead letters. Required. In a transactional
	// pipeline (parallafka.WithTransactions) a dead letter is instead an
	// output of its message's transaction (written with the offset that
	// commits the message, or not at all); the Writer then only checks
	// the topic as the stage starts (DeadLetterTopicChecker).
	Writer DeadLetterWriter
	// Topic is the dead-letter topic. Default: the message's topic with
	// ".dlq" appended.
	Topic string
	// Concurrency bounds the writes in flight at a time. Default 16.
	Concurrency int
	// Flood, if set, stops the pipeline instead of draining a topic into
	// the dead-letter topic when too many messages would go there. Default
	// nil: no guard.
	Flood *FloodGuard
	// HoldKey holds the key of each message dead-lettered (Message.HoldKey):
	// the key's later messages in its partition are not handled but come
	// here, failed with a *pipeline.KeyHeldError, and are dead-lettered
	// after it, in order, with the header HeaderHeldBehind, until the key
	// is released (Parallafka.ReleaseKey, WithHeldKeyTTL). So replaying the
	// dead-letter topic restores each key's order. Other keys go on.
	// Default false: a key's later messages are handled as usual.
	HoldKey bool
}

// FloodGuard is DeadLetterQueue's flood guard. When a message would be
// dead-lettered past a limit, the stage fails with ErrDeadLetterFlood
// (Consume returns it): that message is neither written nor handed on, so
// it and everything after it in its partition stay uncommitted. With Pause
// the stage holds instead of failing, until Resume.
//
// A FloodGuard belongs to one DeadLetterQueue; pass it by pointer and keep
// the pointer to call Flooding and Resume.
type FloodGuard struct {
	// MaxShare is the share of messages (0 to 1) that may be dead-lettered
	// over the last Window messages the stage saw. 0: no share limit.
	MaxShare float64
	// Window is the number of messages the share is taken over; the share
	// is checked only once that many were seen. Default 100 (with MaxShare).
	Window int
	// MaxInARow is the number of messages in a row that may be
	// dead-lettered. 0: no limit.
	MaxInARow int
	// Pause, when the guard trips, holds the pipeline rather than stopping
	// it: the message that tripped the guard is neither written nor handed
	// on, and the stage takes no further message, so handlers soon wait,
	// the in-flight limit pauses fetching and nothing past the held message
	// is committed (what finished before it still is). Meanwhile Flooding
	// returns the flood (parallafka.WithHealthCheck(guard.Flooding) makes
	// Health report it). Resume, once the cause is fixed, dead-letters the
	// held message and the messages whose handlers failed during the hold
	// (those waiting for the stage), then goes on with the guard's counts
	// reset; a shutdown ends the hold, leaving the message uncommitted.
	// Default false: stop with ErrDeadLetterFlood.
	Pause bool

	mu      sync.Mutex
	flood   error         // the flood while holding, else nil
	resumed chan struct{} // closed by Resume while holding
}

// Flooding returns nil unless the guard holds the pipeline (Pause), and
// then an error that wraps ErrDeadLetterFlood with the reason and the
// message held. It is safe to call from any goroutine; its signature fits
// parallafka.WithHealthCheck.
func (g *FloodGuard) Flooding(context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.flood
}

// Resume ends a hold (Pause): the held message is dead-lettered and the
// stage goes on, its counts reset. It does nothing if the guard does not
// hold. It is safe to call from any goroutine.
func (g *FloodGuard) Resume() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.flood != nil {
		g.flood = nil
		close(g.resumed)
	}
}

// hold records the flood and returns the channel Resume closes.
func (g *FloodGuard) hold(flood error) <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.flood, g.resumed = flood, make(chan struct{})
	return g.resumed
}

// unhold ends a hold that no Resume ended (the stage stopped).
func (g *FloodGuard) unhold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.flood = nil
}

// ErrDeadLetterFlood is the error of a DeadLetterQueue whose FloodGuard
// stopped it (or, with Pause, of its Flooding while it holds), wrapped with
// the reason, the dead-letter topic and the message it stopped before
// (partition and offset) with its error.
var ErrDeadLetterFlood = errors.New("stages: dead-letter flood")

// flood tracks a FloodGuard's sliding window.
type flood struct {
	g      *FloodGuard
	window []bool // ring of the last messages: dead-lettered or not
	next   int
	seen   int
	bad    int
	inARow int
}

// observe counts a message; it returns the reason to stop if dead
// (dead-lettering it) trips the guard.
func (f *flood) observe(dead bool) string {
	if f.g.MaxShare > 0 {
		if f.seen == len(f.window) && f.window[f.next] {
			f.bad--
		}
		f.window[f.next] = dead
		f.next = (f.next + 1) % len(f.window)
		f.seen = min(f.seen+1, len(f.window))
		if dead {
			f.bad++
		}
	}
	if !dead {
		f.inARow = 0
		return ""
	}
	f.inARow++
	if f.g.MaxInARow > 0 && f.inARow > f.g.MaxInARow {
		return fmt.Sprintf("%d messages in a row failed for good (limit %d)", f.inARow, f.g.MaxInARow)
	}
	if f.g.MaxShare > 0 && f.seen == len(f.window) && float64(f.bad) > f.g.MaxShare*float64(len(f.window)) {
		return fmt.Sprintf("%d of the last %d messages failed for good (limit %.3g%%)", f.bad, len(f.window), f.g.MaxShare*100)
	}
	return ""
}

// reset forgets what the guard saw: after a Resume it counts afresh.
func (f *flood) reset() {
	clear(f.window)
	f.next, f.seen, f.bad, f.inARow = 0, 0, 0, 0
}

// DeadLetterError is the error of a message that failed and could not be
// dead-lettered either. It goes to the error policy; Unwrap returns the
// write's error only, so that a policy that skips some handler errors does
// not skip, and lose, a message that never reached the dead-letter topic.
type DeadLetterError struct {
	Topic string // the dead-letter topic
	Err   error  // why the write failed
	Cause error  // the message's own failure
}

func (e *DeadLetterError) Error() string {
	return fmt.Sprintf("stages: writing dead letter to %s: %v (message failed with: %v)", e.Topic, e.Err, e.Cause)
}

func (e *DeadLetterError) Unwrap() error { return e.Err }

// DeadLetterQueue returns an AfterHandle stage that writes every message
// that failed for good to a dead-letter topic: one whose last attempt
// failed (put it after Retry) or whose record could not be deserialized.
// It returns an error, and never panics, if cfg has no Writer or a
// negative Concurrency.
//
// Only once the writer returned success does the message count as
// finished, so its offset can be committed; it is then marked with
// Message.Drop, and so counts as dropped, not handled, in the pipeline's
// stats. If the write fails the message keeps failing, with a
// *DeadLetterError, and goes to the error policy: with the default policy
// the pipeline stops and the message stays uncommitted, so nothing is lost.
//
// Writes run concurrently, each on its own goroutine, while every other
// message passes through at once: a slow dead-letter topic delays only the
// messages being dead-lettered (and, through their keys, later messages
// with the same key). With cfg.Concurrency writes in flight the stage waits
// for one to end before it reads on. The stage returns only after its
// writes did.
func DeadLetterQueue[K, V any](cfg DeadLetterConfig) (pipeline.Stage[K, V], error) {
	if cfg.Writer == nil {
		return nil, errors.New("stages: DeadLetterQueue: nil Writer")
	}
	if cfg.Concurrency < 0 {
		return nil, fmt.Errorf("stages: DeadLetterQueue: negative Concurrency %d", cfg.Concurrency)
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 16
	}
	if g := cfg.Flood; g != nil {
		if g.MaxShare < 0 || g.MaxShare > 1 || g.Window < 0 || g.MaxInARow < 0 {
			return nil, fmt.Errorf("stages: DeadLetterQueue: invalid FloodGuard {MaxShare:%v Window:%d MaxInARow:%d} (MaxShare in [0, 1], Window and MaxInARow >= 0)",
				g.MaxShare, g.Window, g.MaxInARow)
		}
		if g.MaxShare == 0 && g.MaxInARow == 0 {
			return nil, errors.New("stages: DeadLetterQueue: FloodGuard with neither MaxShare nor MaxInARow")
		}
	}
	checker, _ := cfg.Writer.(DeadLetterTopicChecker)
	var checked sync.Map // dead-letter topics found to exist
	var check func(ctx context.Context, topic string) error
	if checker != nil {
		check = func(ctx context.Context, topic string) error {
			if _, ok := checked.Load(topic); ok {
				return nil
			}
			if err := checker.CheckDeadLetterTopic(ctx, topic); err != nil {
				return err
			}
			checked.Store(topic, true)
			return nil
		}
	}
	return func(ctx context.Context, in <-chan *pipeline.Message[K, V], out chan<- *pipeline.Message[K, V]) error {
		if check != nil && cfg.Topic != "" {
			// A dead-letter topic that does not exist is found at the start.
			if err := check(ctx, cfg.Topic); err != nil {
				return fmt.Errorf("stages: DeadLetterQueue: dead-letter topic %s: %w", cfg.Topic, err)
			}
		}
		var writes sync.WaitGroup
		defer writes.Wait()
		var guard *flood
		if g := cfg.Flood; g != nil {
			guard = &flood{g: g}
			if g.MaxShare > 0 {
				guard.window = make([]bool, cmp.Or(g.Window, 100))
			}
			defer g.unhold()
		}
		slots := make(chan struct{}, cfg.Concurrency)
		send := func(msg *pipeline.Message[K, V]) bool {
			select {
			case out <- msg:
				return true
			case <-ctx.Done():
				return false
			}
		}
		// catchUp, after a Resume: the messages whose handlers ended during
		// the hold (ready at once) are not counted; they failed of the
		// cause the Resume says is fixed.
		catchUp := false
		for {
			var msg *pipeline.Message[K, V]
			var ok bool
			if catchUp {
				select {
				case msg, ok = <-in:
				default:
					catchUp = false
					continue
				}
			} else {
				msg, ok = <-in
			}
			if !ok {
				break
			}
			dead := failedForGood(ctx, msg)
			// A message that follows the one that held its key is no
			// failure of its own, and no sign of a flood.
			if _, follows := heldBehind(msg.Err); guard != nil && !follows && !catchUp {
				if reason := guard.observe(dead); reason != "" {
					if !guard.g.Pause {
						return fmt.Errorf("%w: %s; stopped before dead-lettering %s@%d to %s (message failed with: %v)",
							ErrDeadLetterFlood, reason, msg.TopicPartition(), msg.Offset, newDeadLetter(cfg.Topic, msg).Topic, msg.Err)
					}
					resumed := guard.g.hold(fmt.Errorf("%w: %s; holding before dead-lettering %s@%d to %s (message failed with: %v)",
						ErrDeadLetterFlood, reason, msg.TopicPartition(), msg.Offset, newDeadLetter(cfg.Topic, msg).Topic, msg.Err))
					select {
					case <-resumed:
						guard.reset()
						catchUp = true
					case <-ctx.Done():
						return nil // the message stays uncommitted
					}
				}
			}
			if !dead {
				if !send(msg) {
					return nil
				}
				continue
			}
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return nil
			}
			writes.Go(func() {
				defer func() { <-slots }()
				deadLetter(ctx, cfg, check, msg)
				if cfg.HoldKey && msg.Dropped() {
					msg.HoldKey() // the pipeline ignores it for a message that followed a held key
				}
				send(msg)
			})
		}
		return nil
	}, nil
}

// failedForGood reports whether msg failed with no attempt left. A hard
// stop's cancelled handlers are not failures: the collector abandons them.
func failedForGood[K, V any](ctx context.Context, msg *pipeline.Message[K, V]) bool {
	return msg.Err != nil && !msg.RetryRequested() && !msg.Dropped() && ctx.Err() == nil
}

// deadLetter writes msg to the dead-letter topic and marks it dropped, or
// replaces its error with a *DeadLetterError. A writer's panic is a failed
// write.
func deadLetter[K, V any](ctx context.Context, cfg DeadLetterConfig, check func(context.Context, string) error, msg *pipeline.Message[K, V]) {
	dl := newDeadLetter(cfg.Topic, msg)
	var err error
	if check != nil {
		err = check(ctx, dl.Topic) // a missing default topic fails at once, not after the write's timeout
	}
	if err == nil && outbox.Transactional[K, V](ctx) {
		// An output of the message's transaction: written if and only if
		// the transaction that commits the message commits.
		err = outbox.Produce(ctx, msg, pipeline.Record{Topic: dl.Topic, Key: dl.Key, Value: dl.Value, Headers: dl.Headers})
	} else if err == nil {
		if r := panics.Try(func() { err = cfg.Writer.WriteDeadLetter(ctx, dl) }); r != nil {
			err = r.AsError()
		}
	}
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	if err != nil {
		msg.Err = &DeadLetterError{Topic: dl.Topic, Err: err, Cause: msg.Err}
		return
	}
	msg.Drop()
}

func newDeadLetter[K, V any](topic string, msg *pipeline.Message[K, V]) pipeline.DeadLetter {
	if topic == "" {
		topic = msg.Topic + ".dlq"
	}
	headers := make([]pipeline.Header, 0, len(msg.Headers)+6)
	for _, h := range msg.Headers {
		if !isDeadLetterHeader(h.Key) {
			headers = append(headers, h)
		}
	}
	headers = append(headers,
		pipeline.Header{Key: HeaderOriginalTopic, Value: []byte(msg.Topic)},
		pipeline.Header{Key: HeaderOriginalPartition, Value: strconv.AppendInt(nil, int64(msg.Partition), 10)},
		pipeline.Header{Key: HeaderOriginalOffset, Value: strconv.AppendInt(nil, msg.Offset, 10)},
		pipeline.Header{Key: HeaderError, Value: []byte(msg.Err.Error())},
		pipeline.Header{Key: HeaderAttempts, Value: strconv.AppendInt(nil, int64(msg.Attempt), 10)},
	)
	if offset, ok := heldBehind(msg.Err); ok {
		headers = append(headers, pipeline.Header{Key: HeaderHeldBehind, Value: strconv.AppendInt(nil, offset, 10)})
	}
	return pipeline.DeadLetter{
		Topic: topic, Key: msg.RawKey, Value: msg.RawValue, Headers: headers,
		Original: msg.TopicPartition(), Offset: msg.Offset, Timestamp: msg.Timestamp,
		Attempts: msg.Attempt, Err: msg.Err,
	}
}

// heldBehind returns the offset a message's key is held behind, if it was
// not handled because its key is held.
func heldBehind(err error) (int64, bool) {
	var held *pipeline.KeyHeldError
	if errors.As(err, &held) {
		return held.Offset, true
	}
	return 0, false
}

func isDeadLetterHeader(key string) bool {
	switch key {
	case HeaderOriginalTopic, HeaderOriginalPartition, HeaderOriginalOffset, HeaderError, HeaderAttempts, HeaderHeldBehind:
		return true
	}
	return false
}
