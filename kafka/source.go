package kafka

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/parallafka/parallafka/internal/kafkaclient"
	"github.com/parallafka/parallafka/internal/msginfo"
	"github.com/parallafka/parallafka/pipeline"
)

// ErrClosed is returned by a Source's methods once Close was called. It is
// the same value as franz.ErrClosed.
var ErrClosed = kafkaclient.ErrClosed

// Source is a pipeline.Source over a confluent-kafka-go consumer. Create it
// with NewSource; the pipeline drives it from then on (Subscribe, Poll,
// Commit, Pause, Resume, Close), so the application should not call it
// itself while the pipeline runs.
//
// As pipeline.Source requires, Poll, Pause, Resume, Subscribe and Close must
// be called from one goroutine at a time, while Commit may run concurrently
// with them.
type Source[K, V any] struct {
	consumer   *ckafka.Consumer
	info       *consumerInfo
	topics     []string
	keyDeser   Deserializer[K]
	valueDeser Deserializer[V]
	onEvent    func(ckafka.Event)

	// log is the Source's logger; InheritLogger replaces it unless it was
	// given (ownLogger), and may run while the Source is in use.
	log       atomic.Pointer[slog.Logger]
	ownLogger bool

	// Owned by the goroutine calling Poll (and Close, which polls too).
	listener   pipeline.RebalanceListener
	subscribed bool
	failure    error                     // a rebalance that went wrong, returned by the next Poll
	givenUp    []pipeline.TopicPartition // revoked or lost during the PollBatch under way
	rebalances int                       // rebalance callbacks served; PollBatch ends its batch at one

	startup startup // fail-fast detection until a broker answered
	// down is librdkafka's "all brokers down" error, until a message or an
	// assignment shows a broker reachable again, or the doubt it started
	// ends (Unreachable).
	down atomic.Pointer[error]
	// doubt: this member's assignment is in doubt since every broker was
	// down (see membership.go); probing, probeDone and nextProbe are
	// owned by Poll's goroutine.
	doubt     atomic.Bool
	probing   bool
	probeDone chan struct{}
	nextProbe time.Time
	errLog    kafkaclient.Repeats // rate limit of repeated client errors

	mu            sync.Mutex
	idle          chan struct{} // closed when commits drops to 0, if someone waits
	assigned      map[pipeline.TopicPartition]struct{}
	committed     map[pipeline.TopicPartition]pipeline.Offset // last offset committed in the current assignment
	commits       int                                         // Commit calls in progress
	flight        *commitFlight                               // the commit librdkafka is carrying out, if any
	closing       bool                                        // Close started: Commit is refused ...
	closeCallback bool                                        // ... except from the listener's revoke during Close
	abandoned     bool                                        // Close timed out: the listener hears nothing more
	closed        bool

	commitSlot chan struct{}  // held by the commit in flight: one at a time, in call order
	flights    sync.WaitGroup // runCommit goroutines

	interrupt     chan struct{}
	interruptOnce sync.Once

	closeTimeout time.Duration
	closeOnce    sync.Once
	closeErr     error
	closedCh     chan struct{} // closed once the consumer is closed and every goroutine ended
}

// NewSource returns a Source that consumes topics with consumer, turning
// record keys and values into K and V with keyDeser and valueDeser.
//
// consumer must come from NewConsumer, which checks the settings the
// pipeline's guarantees depend on (auto-commit off); another consumer is
// refused with an error wrapping ErrUnsafeConfig unless WithUncheckedConsumer
// is given. A consumer serves one Source only. The Source owns the consumer
// from now on: it subscribes it in Subscribe and closes it in Close.
func NewSource[K, V any](consumer *ckafka.Consumer, topics []string,
	keyDeser Deserializer[K], valueDeser Deserializer[V], opts ...Option) (*Source[K, V], error) {
	switch {
	case consumer == nil:
		return nil, errors.New("kafka: NewSource: nil consumer")
	case consumer.IsClosed():
		return nil, errors.New("kafka: NewSource: the consumer is closed")
	case len(topics) == 0:
		return nil, errors.New("kafka: NewSource: no topics")
	case keyDeser == nil || valueDeser == nil:
		return nil, errors.New("kafka: NewSource: nil deserializer")
	}
	for _, t := range topics {
		if t == "" {
			return nil, errors.New("kafka: NewSource: empty topic name")
		}
	}
	o := applyOptions(opts)
	if o.err != nil {
		return nil, o.err
	}
	info, err := claimConsumer(consumer, o.unchecked)
	if err != nil {
		return nil, err
	}
	s := &Source[K, V]{
		consumer:   consumer,
		info:       info,
		topics:     append([]string(nil), topics...),
		keyDeser:   keyDeser,
		valueDeser: valueDeser,
		onEvent:    o.onEvent,
		assigned:   make(map[pipeline.TopicPartition]struct{}),
		committed:  make(map[pipeline.TopicPartition]pipeline.Offset),
		commitSlot: make(chan struct{}, 1),
		interrupt:  make(chan struct{}),
		closedCh:   make(chan struct{}),

		closeTimeout: o.closeTimeout,
		startup:      startup{timeout: o.startupTimeout},
	}
	// The most specific logger wins: NewSource's, then NewConsumer's, then
	// the pipeline's (InheritLogger), then slog.Default().
	switch {
	case o.loggerSet:
		s.log.Store(o.logger)
		s.ownLogger = true
		if !info.loggerSet {
			info.logger.Store(o.logger)
			info.loggerSet = true
		}
	case info.loggerSet:
		s.log.Store(info.logger.Load())
		s.ownLogger = true
	default:
		s.log.Store(o.logger)
	}
	return s, nil
}

// InheritLogger makes l the logger of the Source and of its consumer's
// librdkafka logs, unless they were given one with WithLogger (to NewSource
// or NewConsumer): parallafka.New calls it with its own logger, so that a
// logger passed to New alone reaches the Source. A nil l discards
// everything, as with WithLogger. It may be called at any time; the
// Source's log lines from then on use l.
func (s *Source[K, V]) InheritLogger(l *slog.Logger) {
	l = orDiscard(l)
	if !s.ownLogger {
		s.log.Store(l)
	}
	if !s.info.loggerSet {
		s.info.logger.Store(l)
	}
}

// logger returns the Source's current logger.
func (s *Source[K, V]) logger() *slog.Logger { return s.log.Load() }

// Consumer returns the underlying consumer, for reading metrics or metadata
// (Assignment, Position, GetMetadata, ...). Do not subscribe, assign, commit,
// pause, poll or close it behind the Source's back.
func (s *Source[K, V]) Consumer() *ckafka.Consumer { return s.consumer }

// Subscribe subscribes the consumer to the Source's topics, with a rebalance
// callback that forwards assignments and revocations to l from inside Poll
// and Close. It may be called once.
func (s *Source[K, V]) Subscribe(l pipeline.RebalanceListener) error {
	switch {
	case l == nil:
		return errors.New("kafka: Subscribe: nil listener")
	case s.isClosed():
		return ErrClosed
	case s.subscribed:
		return errors.New("kafka: Subscribe called twice")
	}
	s.listener = l
	if err := s.consumer.SubscribeTopics(s.topics, s.rebalance); err != nil {
		return fmt.Errorf("kafka: subscribe to %v: %w", s.topics, err)
	}
	s.subscribed = true
	s.startup.begin(time.Now())
	return nil
}

// MaxPollInterval returns the consumer's max.poll.interval.ms (librdkafka's
// default, 5 minutes, if unset), or 0 if unknown (a consumer that
// NewConsumer did not create). A rebalance listener that blocks Poll longer
// than this (a revoke waiting for handlers) makes librdkafka leave the
// group, so the pipeline refuses a revoke timeout that does not fit in it.
func (s *Source[K, V]) MaxPollInterval() time.Duration { return s.info.timeouts.maxPollInterval }

// Interrupt cuts short a wait of Poll (or Close) that only librdkafka can
// end: a lost assignment waiting for the commit in flight (see Commit). The
// pipeline calls it when its shutdown deadline passed; the Source is to be
// closed next. It may be called from any goroutine, more than once.
func (s *Source[K, V]) Interrupt() { s.interruptOnce.Do(func() { close(s.interrupt) }) }

// Closed is closed once the consumer is closed for good and the Source's
// goroutines ended: when Close returns nil, or later if Close timed out
// (ErrCloseTimeout).
func (s *Source[K, V]) Closed() <-chan struct{} { return s.closedCh }

// Poll returns the next message, or nil when none arrived within timeout.
//
// It serves the consumer's other events meanwhile: rebalances reach the
// listener (before Poll returns), errors are logged, and only a fatal
// librdkafka error (or a rebalance that could not be carried out) is
// returned. A record whose key or value fails to deserialize is not an
// error of Poll: it is returned with Err set to a *DeserializeError.
func (s *Source[K, V]) Poll(timeout time.Duration) (*pipeline.Message[K, V], error) {
	return kafkaclient.PollOne(s.PollBatch, timeout)
}

// PollBatch implements [pipeline.BatchSource]: as Poll, it waits up to
// timeout for a message, then appends to dst up to max of the messages
// librdkafka has queued already (until they hold maxBytes, if maxBytes >
// 0: the rest stay in librdkafka's buffer), without waiting again. The
// pipeline calls it once per poll cycle. A rebalance served meanwhile takes
// the messages of the partitions it revoked back out of the batch.
func (s *Source[K, V]) PollBatch(timeout time.Duration, dst []*pipeline.Message[K, V], max int, maxBytes int64) ([]*pipeline.Message[K, V], error) {
	if s.isClosed() {
		return dst, ErrClosed
	}
	if !s.subscribed {
		return dst, errors.New("kafka: Poll before Subscribe")
	}
	start := len(dst)
	var bytes int64
	s.givenUp = s.givenUp[:0]
	defer func() { clear(s.givenUp); s.givenUp = s.givenUp[:0] }()
	deadline := time.Now().Add(timeout)
	for {
		if s.probing || s.doubt.Load() {
			now := time.Now()
			s.probeEnded(now)
			s.maybeProbe(now)
		}
		wait := 0 // once a message is in, take only what is queued
		if len(dst) == start {
			wait = millis(time.Until(deadline))
		}
		rebalances := s.rebalances
		msg, err := s.serve(s.consumer.Poll(wait))
		if err != nil {
			return dst, err
		}
		if s.rebalances != rebalances {
			if len(dst) > start {
				// The batch ends at a rebalance (a consumer poll serves
				// one event): what it took before it stays, minus what
				// the rebalance gave up.
				return s.withoutGivenUp(dst, start), nil
			}
			// Nothing taken yet: what comes next is of the new assignment
			// (an eager rebalance may give a partition back at once).
			clear(s.givenUp)
			s.givenUp = s.givenUp[:0]
		}
		if msg != nil {
			dst = append(dst, msg)
			bytes += int64(msginfo.Size(msg))
			if len(dst)-start < max && (maxBytes <= 0 || bytes < maxBytes) {
				continue
			}
		}
		if len(dst) > start {
			return dst, nil
		}
		now := time.Now()
		if err := s.checkStartup(now); err != nil {
			s.logger().Error("kafka: cannot start consuming", "error", err)
			return dst, err
		}
		if !now.Before(deadline) {
			return dst, nil
		}
	}
}

// withoutGivenUp takes the messages of partitions revoked or lost during
// this PollBatch out of dst[start:]: the listener has let them go already.
func (s *Source[K, V]) withoutGivenUp(dst []*pipeline.Message[K, V], start int) []*pipeline.Message[K, V] {
	if len(s.givenUp) == 0 {
		return dst
	}
	kept := dst[:start]
	for _, msg := range dst[start:] {
		if !slices.Contains(s.givenUp, msg.TopicPartition()) {
			kept = append(kept, msg)
		}
	}
	clear(dst[len(kept):])
	return kept
}

// serve handles one event of the consumer's poll: it returns the message it
// carried, if any, or the fatal error it reported (a failed rebalance
// included).
func (s *Source[K, V]) serve(ev ckafka.Event) (*pipeline.Message[K, V], error) {
	if err := s.failure; err != nil {
		return nil, err
	}
	switch e := ev.(type) {
	case nil:
	case *ckafka.Message:
		if e.TopicPartition.Error == nil {
			s.startup.answered = true
			if s.down.Load() != nil && !s.doubt.Load() {
				s.down.Store(nil) // else confirm clears it
			}
			return s.message(e), nil
		}
		if err := s.consumerError(e.TopicPartition.Error, e.TopicPartition); err != nil {
			return nil, err
		}
		s.notify(ev)
	case ckafka.Error:
		if err := s.consumerError(e, ckafka.TopicPartition{}); err != nil {
			return nil, err
		}
		s.notify(ev)
	case ckafka.AssignedPartitions, ckafka.RevokedPartitions:
		// Not expected: with a rebalance callback, confluent-kafka-go
		// hands rebalances to it rather than returning them.
		_ = s.rebalance(s.consumer, ev)
		if err := s.failure; err != nil {
			return nil, err
		}
	default: // PartitionEOF, OffsetsCommitted, *Stats, OAuthBearerTokenRefresh, ...
		s.logger().Debug("kafka: consumer event", "event", ev.String())
		s.notify(ev)
	}
	return nil, nil
}

// millis converts a poll timeout to librdkafka's milliseconds, rounding up.
func millis(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	ms := (d + time.Millisecond - 1) / time.Millisecond
	if ms > math.MaxInt32 {
		return math.MaxInt32
	}
	return int(ms)
}

func (s *Source[K, V]) notify(ev ckafka.Event) {
	if s.onEvent != nil {
		s.onEvent(ev)
	}
}

// consumerError logs a consumer error and returns it if it is fatal.
func (s *Source[K, V]) consumerError(err error, tp ckafka.TopicPartition) error {
	s.startup.clientError(err)
	attrs := []any{"error", err}
	if tp.Topic != nil {
		attrs = append(attrs, "topic", *tp.Topic, "partition", tp.Partition)
	}
	var kerr ckafka.Error
	if errors.As(err, &kerr) {
		if kerr.Code() == ckafka.ErrAllBrokersDown {
			s.down.Store(&err)
			s.suspect()
		}
		attrs = append(attrs, "code", kerr.Code().String())
		if kerr.IsFatal() {
			s.logger().Error("kafka: fatal consumer error", attrs...)
			return fmt.Errorf("kafka: fatal consumer error: %w", err)
		}
	}
	ok, repeated := s.errLog.Allow(err.Error(), time.Now())
	if !ok {
		return nil
	}
	if repeated > 0 {
		attrs = append(attrs, "repeated", repeated)
	}
	s.logger().Warn("kafka: consumer error", attrs...)
	return nil
}

// message converts a record, deserializing its key and value.
func (s *Source[K, V]) message(m *ckafka.Message) *pipeline.Message[K, V] {
	var topic string
	if m.TopicPartition.Topic != nil {
		topic = *m.TopicPartition.Topic
	}
	msg := &pipeline.Message[K, V]{
		Topic:     topic,
		Partition: m.TopicPartition.Partition,
		Offset:    int64(m.TopicPartition.Offset),
		Timestamp: m.Timestamp,
		RawKey:    m.Key,
		RawValue:  m.Value,
	}
	if len(m.Headers) > 0 {
		msg.Headers = make([]pipeline.Header, len(m.Headers))
		for i, h := range m.Headers {
			msg.Headers[i] = pipeline.Header{Key: h.Key, Value: h.Value}
		}
	}
	if err := kafkaclient.Decode(msg, s.keyDeser, s.valueDeser); err != nil {
		msg.Err = err
		s.logger().Debug("kafka: record cannot be deserialized", "message", msg.String(), "error", err)
	}
	return msg
}

// rebalance is the rebalance callback. confluent-kafka-go runs it inside
// Consumer.Poll (so inside Source.Poll, or Consumer.Close during Close). It
// performs the assign or unassign that librdkafka waits for itself, so
// that confluent-kafka-go's fallback never runs (that fallback reports a
// failed assign on the events channel, which a Poll consumer has not got).
func (s *Source[K, V]) rebalance(c *ckafka.Consumer, ev ckafka.Event) error {
	s.rebalances++
	switch e := ev.(type) {
	case ckafka.AssignedPartitions:
		s.assign(c, e.Partitions)
	case ckafka.RevokedPartitions:
		s.revoke(c, e.Partitions)
	}
	return nil
}

func (s *Source[K, V]) cooperative(c *ckafka.Consumer) bool {
	return c.GetRebalanceProtocol() == "COOPERATIVE"
}

// assign takes on the partitions: Assign (eager: the whole new assignment)
// or IncrementalAssign (cooperative: the partitions added), then tells the
// listener.
func (s *Source[K, V]) assign(c *ckafka.Consumer, parts []ckafka.TopicPartition) {
	coop := s.cooperative(c)
	var err error
	if coop {
		err = c.IncrementalAssign(parts)
	} else {
		err = c.Assign(parts)
	}
	tps := toPipeline(parts)
	s.startup.answered = true
	s.down.Store(nil)
	s.confirm("a rebalance (partitions assigned)")
	if err != nil {
		s.fail(fmt.Errorf("kafka: assign %v: %w", tps, err))
		return
	}
	s.mu.Lock()
	if !coop {
		// An eager assignment replaces the previous one.
		clear(s.assigned)
		clear(s.committed)
	}
	for _, tp := range tps {
		s.assigned[tp] = struct{}{}
		delete(s.committed, tp)
	}
	s.mu.Unlock()
	if len(parts) > 0 {
		// librdkafka keeps a partition paused by the application paused
		// through unassign and assign, so a partition the pipeline paused
		// before a rebalance would come back paused. New partitions start
		// unpaused.
		if err := c.Resume(parts); err != nil {
			s.logger().Warn("kafka: cannot resume newly assigned partitions", "partitions", tps, "error", err)
		}
	}
	s.logger().Info("kafka: partitions assigned", "partitions", tps, "cooperative", coop)
	if len(tps) > 0 {
		committed := s.readCommitted(c, tps)
		s.callListener("PartitionsAssigned", func() { s.listener.PartitionsAssigned(committed) })
	}
}

// readCommitted reads the group's committed offsets and their metadata for
// newly assigned partitions (one OffsetFetch, bounded by committedTimeout).
// A partition it cannot read comes back with Offset -1: the pipeline then
// knows of no finished work past the committed offset, and redoes it.
func (s *Source[K, V]) readCommitted(c *ckafka.Consumer, tps []pipeline.TopicPartition) []pipeline.Offset {
	out := make([]pipeline.Offset, len(tps))
	for i, tp := range tps {
		out[i] = pipeline.Offset{TopicPartition: tp, Offset: -1}
	}
	parts, err := c.Committed(toKafka(tps), millis(committedTimeout))
	if err != nil {
		s.logger().Warn("kafka: cannot read the committed offsets of newly assigned partitions; work finished past them by the previous owner is redone",
			"partitions", tps, "error", err)
		return out
	}
	byTP := make(map[pipeline.TopicPartition]ckafka.TopicPartition, len(parts))
	for _, p := range parts {
		if p.Topic != nil {
			byTP[pipeline.TopicPartition{Topic: *p.Topic, Partition: p.Partition}] = p
		}
	}
	for i, tp := range tps {
		if p, ok := byTP[tp]; ok && p.Error == nil && p.Offset >= 0 {
			out[i].Offset, out[i].Metadata = int64(p.Offset), metadataOf(p)
		}
	}
	return out
}

// revoke gives the partitions up. If the assignment was lost, the listener
// learns it first and nothing may be committed; otherwise the listener
// commits the partitions' final offsets while they are still ours. Then
// Unassign (eager: everything) or IncrementalUnassign (cooperative: the
// partitions revoked).
func (s *Source[K, V]) revoke(c *ckafka.Consumer, parts []ckafka.TopicPartition) {
	coop := s.cooperative(c)
	tps := toPipeline(parts)
	lost := c.AssignmentLost()
	s.logger().Info("kafka: partitions revoked", "partitions", tps, "lost", lost, "cooperative", coop)
	s.mu.Lock()
	abandoned := s.abandoned
	s.mu.Unlock()
	switch {
	case lost:
		s.disown(tps)
		// librdkafka rejoins the group only once these are unassigned;
		// a commit still in flight must end first, while it can only be
		// sent with the old generation (see Commit).
		if !s.awaitFlight(s.info.timeouts.commitLifetime() + 5*time.Second) {
			s.mu.Lock()
			interrupted := s.closing || isDone(s.interrupt)
			s.mu.Unlock()
			if !interrupted {
				s.fail(fmt.Errorf("%w after the assignment of %v was lost: the consumer must close rather than rejoin", ErrCommitInFlight, tps))
			}
		}
		if len(tps) > 0 && !abandoned {
			s.callListener("PartitionsLost", func() { s.listener.PartitionsLost(tps) })
		}
	case len(tps) > 0 && !abandoned:
		s.mu.Lock()
		inClose := s.closing
		s.closeCallback = inClose
		s.mu.Unlock()
		s.callListener("PartitionsRevoked", func() { s.listener.PartitionsRevoked(tps) })
		if inClose {
			// Close waits for commits before closing the consumer; let
			// those the listener started finish before Close goes on.
			s.mu.Lock()
			s.closeCallback = false
			s.mu.Unlock()
			s.awaitCommits(time.Time{})
		}
		s.disown(tps)
	default:
		s.disown(tps)
	}
	var err error
	if coop {
		err = c.IncrementalUnassign(parts)
	} else {
		err = c.Unassign()
	}
	if err != nil {
		s.fail(fmt.Errorf("kafka: unassign %v: %w", tps, err))
	}
	s.mu.Lock()
	left := len(s.assigned)
	s.mu.Unlock()
	if !lost || left == 0 {
		s.confirm("a rebalance (partitions revoked or lost)")
	}
}

// disown forgets partitions: Commit refuses them from now on, and the
// PollBatch under way drops the messages of theirs it took.
func (s *Source[K, V]) disown(tps []pipeline.TopicPartition) {
	s.givenUp = append(s.givenUp, tps...)
	s.mu.Lock()
	for _, tp := range tps {
		delete(s.assigned, tp)
		delete(s.committed, tp)
	}
	s.mu.Unlock()
}

// callListener runs a listener method, turning a panic into a Poll error so
// that the consumer's assignment stays consistent.
func (s *Source[K, V]) callListener(name string, fn func()) {
	defer func() {
		if r := recover(); r != nil {
			s.fail(fmt.Errorf("kafka: RebalanceListener.%s panicked: %v", name, r))
		}
	}()
	fn()
}

func (s *Source[K, V]) fail(err error) {
	s.logger().Error("kafka: rebalance failed", "error", err)
	if s.failure == nil {
		s.failure = err
	}
}

// Pause stops fetching from the partitions. Poll keeps serving rebalances
// and errors, and returns no message of a paused partition, not even one
// that was fetched before the pause: librdkafka discards those and fetches
// them again after Resume. Pausing a partition that is not assigned has no
// effect.
func (s *Source[K, V]) Pause(partitions []pipeline.TopicPartition) error {
	if len(partitions) == 0 {
		return nil
	}
	if s.isClosed() {
		return ErrClosed
	}
	if err := s.consumer.Pause(toKafka(partitions)); err != nil {
		return fmt.Errorf("kafka: pause %v: %w", partitions, err)
	}
	return nil
}

// Resume undoes Pause: fetching resumes at the partitions' next offset.
func (s *Source[K, V]) Resume(partitions []pipeline.TopicPartition) error {
	if len(partitions) == 0 {
		return nil
	}
	if s.isClosed() {
		return ErrClosed
	}
	if err := s.consumer.Resume(toKafka(partitions)); err != nil {
		return fmt.Errorf("kafka: resume %v: %w", partitions, err)
	}
	return nil
}

// Unreachable returns librdkafka's "all brokers down" error from the time
// the consumer reported it until a message arrives or a rebalance assigns
// partitions (a broker answered), or, if partitions were assigned, until
// the group coordinator confirmed the assignment (see MembershipInDoubt);
// nil otherwise. The error wraps ErrUnreachable and librdkafka's. It is
// safe to call from any goroutine (Parallafka's Health does).
func (s *Source[K, V]) Unreachable() error {
	if err := s.down.Load(); err != nil {
		return fmt.Errorf("%w: %w", ErrUnreachable, *err)
	}
	return nil
}

var _ pipeline.ConnectivitySource = (*Source[int, int])(nil)

// Watermarks returns the partition's low and high watermarks as the
// consumer last heard them in a fetch response (librdkafka's cached
// watermarks: no request to the broker); ok is false before the first
// fetch response for the partition, or once the Source is closed.
func (s *Source[K, V]) Watermarks(tp pipeline.TopicPartition) (low, high int64, ok bool) {
	if s.isClosed() {
		return 0, 0, false
	}
	low, high, err := s.consumer.GetWatermarkOffsets(tp.Topic, tp.Partition)
	if err != nil || high < 0 || low < 0 {
		return 0, 0, false
	}
	return low, high, true
}

// Close leaves the consumer group and closes the consumer. If partitions
// are assigned, the rebalance callback runs once more inside Close, so the
// listener receives PartitionsRevoked (and may Commit) before Close returns.
// Close first waits for Commit calls in progress; Commit calls from other
// goroutines that start after Close began return ErrClosed. Calling Close
// again returns the first call's result.
//
// Close returns within the close timeout (WithCloseTimeout, 5 s by default)
// whatever the broker does. If the consumer has not closed by then (a commit
// in flight towards an unreachable coordinator, a group leave that waits for
// it), Close returns an error matching ErrCloseTimeout, the listener hears
// nothing more, and the consumer finishes closing on a goroutine of the
// Source within librdkafka's own limits (see Commit); Closed tells when.
func (s *Source[K, V]) Close() error {
	s.closeOnce.Do(func() {
		var deadline time.Time
		if s.closeTimeout > 0 {
			deadline = time.Now().Add(s.closeTimeout)
		}
		s.mu.Lock()
		s.closing = true
		s.mu.Unlock()
		before := s.failure
		done := make(chan error, 1)
		go func() {
			defer close(s.closedCh)
			// A commit in flight must end before the consumer is
			// destroyed under it; Commit calls return by their ctx.
			s.awaitCommits(time.Time{})
			s.flights.Wait()
			err := s.consumer.Close()
			s.mu.Lock()
			s.closed = true
			clear(s.assigned)
			s.mu.Unlock()
			if s.info.logsDone != nil {
				<-s.info.logsDone
			}
			done <- err
		}()
		timeout, stop := deadlineTimer(deadline)
		defer stop()
		select {
		case err := <-done:
			switch {
			case err != nil:
				s.closeErr = fmt.Errorf("kafka: close consumer: %w", err)
			case s.failure != before:
				// The revoke inside Close went wrong (an earlier failure was
				// returned by Poll already).
				s.closeErr = s.failure
			}
		case <-timeout:
			s.mu.Lock()
			s.abandoned = true
			s.closed = true // refuse every method from now on
			s.mu.Unlock()
			s.Interrupt()
			s.closeErr = fmt.Errorf("%w after %v: the consumer goes on closing in the background", ErrCloseTimeout, s.closeTimeout)
		}
		s.logger().Debug("kafka: source closed", "error", s.closeErr)
	})
	return s.closeErr
}

// ErrCloseTimeout is matched by the error of Close when the consumer did not
// close within the close timeout (WithCloseTimeout). It is the same value
// as franz.ErrCloseTimeout.
var ErrCloseTimeout = kafkaclient.ErrCloseTimeout

func isDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func (s *Source[K, V]) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func toPipeline(parts []ckafka.TopicPartition) []pipeline.TopicPartition {
	tps := make([]pipeline.TopicPartition, 0, len(parts))
	for _, p := range parts {
		var topic string
		if p.Topic != nil {
			topic = *p.Topic
		}
		tps = append(tps, pipeline.TopicPartition{Topic: topic, Partition: p.Partition})
	}
	return tps
}

func toKafka(tps []pipeline.TopicPartition) []ckafka.TopicPartition {
	parts := make([]ckafka.TopicPartition, len(tps))
	for i, tp := range tps {
		topic := tp.Topic
		parts[i] = ckafka.TopicPartition{Topic: &topic, Partition: tp.Partition}
	}
	return parts
}

var _ pipeline.WatermarkSource = (*Source[string, string])(nil)

var _ pipeline.BatchSource[string, string] = (*Source[string, string])(nil)
