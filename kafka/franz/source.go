package franz

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka/internal/kafkaclient"
	"github.com/parallafka/parallafka/pipeline"
)

// ErrClosed is returned by a Source's methods once Close was called. It is
// the same value as kafka.ErrClosed.
var ErrClosed = kafkaclient.ErrClosed

// ErrCloseTimeout is matched by the error of Close when the client did not
// close within the close timeout (WithCloseTimeout). It is the same value
// as kafka.ErrCloseTimeout.
var ErrCloseTimeout = kafkaclient.ErrCloseTimeout

// pollSlice bounds one wait of Poll for the client, so that the startup
// and membership checks run at least this often.
const pollSlice = 250 * time.Millisecond

// Source is a pipeline.Source over a franz-go client. Create the client
// with NewClient and the Source with NewSource; the pipeline drives it from
// then on (Subscribe, Poll, Commit, Pause, Resume, Close), so the
// application should not call it itself while the pipeline runs.
//
// As pipeline.Source requires, Poll, Pause, Resume, Subscribe and Close must
// be called from one goroutine at a time, while Commit may run concurrently
// with them.
type Source[K, V any] struct {
	client     *kgo.Client
	b          *binding
	topics     []string
	keyDeser   Deserializer[K]
	valueDeser Deserializer[V]

	log       atomic.Pointer[slog.Logger]
	ownLogger bool

	// Owned by the goroutine calling Poll (and Close).
	listener   pipeline.RebalanceListener
	subscribed bool
	failure    error // a rebalance that went wrong, returned by the next Poll
	buf        recordBuffer
	scratch    []*kgo.Record   // takeMessages' slice, reused
	parts      [][]*kgo.Record // take's list of a poll's partitions, reused
	startup    startup
	errLog     kafkaclient.Repeats

	// Membership doubt (membership.go).
	doubt     atomic.Bool
	probing   bool
	probeDone chan struct{}
	nextProbe time.Time

	// Background work (the startup topic check, probes), ended by Close.
	bgCtx    context.Context
	bgCancel context.CancelFunc
	bg       sync.WaitGroup

	wmMu       sync.Mutex
	watermarks map[pipeline.TopicPartition][2]int64

	mu            sync.Mutex
	idle          chan struct{}                               // closed when commits drops to 0, if someone waits
	assigned      map[pipeline.TopicPartition]string          // the member ID each partition was assigned to
	committed     map[pipeline.TopicPartition]pipeline.Offset // last offset committed in the current assignment
	commits       int                                         // Commit calls in progress
	flightCancel  context.CancelFunc                          // cancels the commit in flight, if any
	closing       bool                                        // Close started: Commit is refused ...
	closeCallback bool                                        // ... except from the listener's revoke during Close
	abandoned     bool                                        // Close timed out: the listener hears nothing more
	closed        bool

	commitSlot chan struct{} // held by the commit in flight: one at a time, in call order

	closeTimeout time.Duration
	closeOnce    sync.Once
	closeErr     error
	closedCh     chan struct{}
}

// NewSource returns a Source that consumes topics with client, turning
// record keys and values into K and V with keyDeser and valueDeser.
//
// client must come from NewClient, which installs the rebalance callbacks
// the Source needs and checks the options the pipeline's guarantees depend
// on; another client is refused with an error wrapping ErrUnsafeConfig. A
// client serves one Source only. The Source owns the client from now on: it
// adds the topics to it in Subscribe and closes it in Close.
func NewSource[K, V any](client *kgo.Client, topics []string,
	keyDeser Deserializer[K], valueDeser Deserializer[V], opts ...Option) (*Source[K, V], error) {
	switch {
	case client == nil:
		return nil, errors.New("franz: NewSource: nil client")
	case len(topics) == 0:
		return nil, errors.New("franz: NewSource: no topics")
	case keyDeser == nil || valueDeser == nil:
		return nil, errors.New("franz: NewSource: nil deserializer")
	}
	for _, t := range topics {
		if t == "" {
			return nil, errors.New("franz: NewSource: empty topic name")
		}
	}
	o := applyOptions(opts)
	if o.err != nil {
		return nil, o.err
	}
	b, err := claimClient(client)
	if err != nil {
		return nil, err
	}
	s := &Source[K, V]{
		client:       client,
		b:            b,
		topics:       append([]string(nil), topics...),
		keyDeser:     keyDeser,
		valueDeser:   valueDeser,
		watermarks:   make(map[pipeline.TopicPartition][2]int64),
		assigned:     make(map[pipeline.TopicPartition]string),
		committed:    make(map[pipeline.TopicPartition]pipeline.Offset),
		commitSlot:   make(chan struct{}, 1),
		closedCh:     make(chan struct{}),
		closeTimeout: o.closeTimeout,
		startup:      startup{timeout: o.startupTimeout},
	}
	s.bgCtx, s.bgCancel = context.WithCancel(context.Background())
	// The most specific logger wins: NewSource's, then NewClient's, then
	// the pipeline's (InheritLogger), then slog.Default().
	switch {
	case o.loggerSet:
		s.log.Store(o.logger)
		s.ownLogger = true
		if !b.loggerSet {
			b.logger.Store(o.logger)
			b.loggerSet = true
		}
	case b.loggerSet:
		s.log.Store(b.logger.Load())
		s.ownLogger = true
	default:
		s.log.Store(o.logger)
		b.logger.Store(o.logger)
	}
	return s, nil
}

// InheritLogger makes l the logger of the Source and of its client's logs,
// unless they were given one with WithLogger (to NewSource or NewClient):
// parallafka.New calls it with its own logger. A nil l discards everything.
func (s *Source[K, V]) InheritLogger(l *slog.Logger) {
	l = orDiscard(l)
	if !s.ownLogger {
		s.log.Store(l)
	}
	if !s.b.loggerSet {
		s.b.logger.Store(l)
	}
}

func (s *Source[K, V]) logger() *slog.Logger { return s.log.Load() }

// Client returns the underlying client, for reading metrics or metadata.
// Do not poll, commit, pause, add or remove topics, leave the group or
// close it behind the Source's back.
func (s *Source[K, V]) Client() *kgo.Client { return s.client }

// MaxPollInterval returns the client's rebalance timeout
// (kgo.RebalanceTimeout, 60 s unless set): a revoke holds the rebalance
// until the pipeline committed, and the group waits for it that long at
// most, so the pipeline refuses a revoke timeout that does not fit in it.
func (s *Source[K, V]) MaxPollInterval() time.Duration { return s.b.rebalanceTimeout }

// Subscribe adds the Source's topics to the client, which then joins its
// group; the rebalances reach l from inside Poll (and Close). It may be
// called once.
func (s *Source[K, V]) Subscribe(l pipeline.RebalanceListener) error {
	switch {
	case l == nil:
		return errors.New("franz: Subscribe: nil listener")
	case s.isClosed():
		return ErrClosed
	case s.subscribed:
		return errors.New("franz: Subscribe called twice")
	}
	s.listener = l
	s.subscribed = true
	s.b.attached.Store(true)
	s.client.AddConsumeTopics(s.topics...)
	s.startup.begin(time.Now())
	s.startTopicCheck()
	return nil
}

// Poll returns the next message, or nil when none arrived within timeout.
//
// Rebalances reach the listener from inside Poll (kgo's callbacks wait for
// it), client errors are logged, and only a rebalance that could not be
// carried out, a startup failure (ErrUnreachable, ErrUnknownTopic) or a
// closed client is returned. A record whose key or value fails to
// deserialize is not an error of Poll: it is returned with Err set to a
// *DeserializeError.
func (s *Source[K, V]) Poll(timeout time.Duration) (*pipeline.Message[K, V], error) {
	return kafkaclient.PollOne(s.PollBatch, timeout)
}

// PollBatch implements [pipeline.BatchSource]: as Poll, it waits up to
// timeout for a message, then appends to dst up to max of the records the
// client has fetched already (until they hold maxBytes, if maxBytes > 0),
// without waiting again. The pipeline calls it once per poll cycle.
//
// A poll of kgo's hands over whole fetch responses, a partition after
// another, thousands of records each. The Source hands them over a few
// records of each partition in turn (each partition's in order), so that
// a pipeline with room for fewer reads every partition at once.
func (s *Source[K, V]) PollBatch(timeout time.Duration, dst []*pipeline.Message[K, V], max int, maxBytes int64) ([]*pipeline.Message[K, V], error) {
	if s.isClosed() {
		return dst, ErrClosed
	}
	if !s.subscribed {
		return dst, errors.New("franz: Poll before Subscribe")
	}
	deadline := time.Now().Add(timeout)
	for {
		select {
		case ev := <-s.b.events:
			s.handle(ev)
		default:
		}
		if err := s.failure; err != nil {
			return dst, err
		}
		now := time.Now()
		if s.probing || s.doubt.Load() || s.unreachableSince(now) {
			s.probeEnded(now)
			s.suspectIfDown(now)
			s.maybeProbe(now)
		}
		if err := s.checkStartup(now); err != nil {
			s.logger().Error("franz: cannot start consuming", "error", err)
			return dst, err
		}
		// Rebalances are handled above, before any record is taken: none
		// of the records returned belongs to a partition given up since.
		if s.takeMessages(&dst, max, maxBytes) > 0 {
			return dst, nil
		}
		wait := deadline.Sub(now)
		if wait <= 0 {
			return dst, nil
		}
		s.pollClient(min(wait, pollSlice))
	}
}

// takeMessages appends up to max of the buffered records to dst as
// messages, until they hold maxBytes (if maxBytes > 0), and returns how
// many it appended. The messages are allocated together, and so are their
// headers: two allocations for the batch, none per message.
func (s *Source[K, V]) takeMessages(dst *[]*pipeline.Message[K, V], max int, maxBytes int64) int {
	recs := s.scratch[:0]
	var bytes int64
	headers := 0
	for len(recs) < max && (maxBytes <= 0 || bytes < maxBytes) {
		r := s.buf.next()
		if r == nil {
			break
		}
		recs = append(recs, r)
		headers += len(r.Headers)
		if maxBytes > 0 {
			bytes += int64(len(r.Key) + len(r.Value))
			for _, h := range r.Headers {
				bytes += int64(len(h.Key) + len(h.Value))
			}
		}
	}
	if len(recs) == 0 {
		return 0
	}
	msgs := make([]pipeline.Message[K, V], len(recs))
	var hs []pipeline.Header
	if headers > 0 {
		hs = make([]pipeline.Header, headers)
	}
	out := *dst
	for i, r := range recs {
		msg := &msgs[i]
		if n := len(r.Headers); n > 0 {
			// Capped, so that appending to one message's headers does
			// not overwrite the next message's.
			h := hs[:n:n]
			hs = hs[n:]
			for j := range r.Headers {
				h[j] = pipeline.Header{Key: r.Headers[j].Key, Value: r.Headers[j].Value}
			}
			msg.Headers = h
		}
		s.fill(msg, r)
		out = append(out, msg)
	}
	*dst = out
	clear(recs)
	s.scratch = recs[:0]
	return len(msgs)
}

// pollClient waits up to d for records (or for a rebalance callback, which
// cuts the wait short) and takes them in.
func (s *Source[K, V]) pollClient(d time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	s.b.wakeMu.Lock()
	s.b.wake = cancel
	s.b.wakeMu.Unlock()
	defer func() {
		s.b.wakeMu.Lock()
		s.b.wake = nil
		s.b.wakeMu.Unlock()
	}()
	if len(s.b.events) > 0 {
		return
	}
	fetches := s.client.PollRecords(ctx, 0)
	s.take(fetches)
}

// take buffers a poll's records, notes the partitions' watermarks and logs
// its errors.
func (s *Source[K, V]) take(fetches kgo.Fetches) {
	n := 0
	for i := range fetches {
		for j := range fetches[i].Topics {
			t := &fetches[i].Topics[j]
			for k := range t.Partitions {
				p := &t.Partitions[k]
				if p.Err != nil {
					s.clientError(t.Topic, p.Partition, p.Err)
					continue
				}
				if p.HighWatermark >= 0 {
					s.wmMu.Lock()
					s.watermarks[pipeline.TopicPartition{Topic: t.Topic, Partition: p.Partition}] = [2]int64{max(p.LogStartOffset, 0), p.HighWatermark}
					s.wmMu.Unlock()
				}
				n += len(p.Records)
			}
		}
	}
	if n == 0 {
		return
	}
	s.buf.grow(n)
	parts := s.parts[:0]
	for i := range fetches {
		for j := range fetches[i].Topics {
			for _, p := range fetches[i].Topics[j].Partitions {
				if p.Err == nil && len(p.Records) > 0 {
					parts = append(parts, p.Records)
				}
			}
		}
	}
	s.buf.interleave(parts)
	clear(parts)
	s.parts = parts[:0]
}

// clientError logs an error of a poll, rate-limited, and notes what the
// startup checks need.
func (s *Source[K, V]) clientError(topic string, partition int32, err error) {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return // our own wait ended
	case errors.Is(err, kgo.ErrClientClosed):
		if s.failure == nil {
			s.failure = fmt.Errorf("franz: the client was closed behind the Source's back: %w", err)
		}
		return
	case errors.Is(err, kerr.UnknownTopicOrPartition), errors.Is(err, kerr.UnknownTopicID):
		s.startup.topicErr = true
	}
	ok, repeated := s.errLog.Allow(err.Error(), time.Now())
	if !ok {
		return
	}
	attrs := []any{"error", err}
	if topic != "" {
		attrs = append(attrs, "topic", topic, "partition", partition)
	}
	if repeated > 0 {
		attrs = append(attrs, "repeated", repeated)
	}
	s.logger().Warn("franz: consumer error", attrs...)
}

// fill converts a record into msg, a zero message but for its Headers,
// set already from the record's, deserializing its key and value. The
// message shares the record's key and value: kgo never reuses a record it
// returned (only Record.Recycle, which the Source does not call, would).
func (s *Source[K, V]) fill(msg *pipeline.Message[K, V], r *kgo.Record) {
	msg.Topic, msg.Partition, msg.Offset = r.Topic, r.Partition, r.Offset
	msg.Timestamp = r.Timestamp
	msg.RawKey, msg.RawValue = r.Key, r.Value
	if err := kafkaclient.Decode(msg, s.keyDeser, s.valueDeser); err != nil {
		msg.Err = err
		s.logger().Debug("franz: record cannot be deserialized", "message", msg.String(), "error", err)
	}
}

// Pause stops fetching from the partitions (kgo.PauseFetchPartitions). Poll
// keeps serving rebalances, and returns no message of a paused partition,
// not even one polled before the pause: the Source holds those back until
// Resume. Pausing a partition that is not assigned has no effect.
func (s *Source[K, V]) Pause(partitions []pipeline.TopicPartition) error {
	if len(partitions) == 0 {
		return nil
	}
	if s.isClosed() {
		return ErrClosed
	}
	s.client.PauseFetchPartitions(toKgo(partitions))
	s.buf.pause(partitions)
	return nil
}

// Resume undoes Pause: the messages held back come first, then fetching
// resumes where it stopped.
func (s *Source[K, V]) Resume(partitions []pipeline.TopicPartition) error {
	if len(partitions) == 0 {
		return nil
	}
	if s.isClosed() {
		return ErrClosed
	}
	s.client.ResumeFetchPartitions(toKgo(partitions))
	s.buf.resume(partitions)
	return nil
}

// Watermarks returns the partition's log start offset and high watermark as
// the last fetch response for it said (no request to the broker); ok is
// false before the first fetch response for the partition, or once the
// Source is closed. It is safe to call from any goroutine.
func (s *Source[K, V]) Watermarks(tp pipeline.TopicPartition) (low, high int64, ok bool) {
	if s.isClosed() {
		return 0, 0, false
	}
	s.wmMu.Lock()
	wm, ok := s.watermarks[tp]
	s.wmMu.Unlock()
	return wm[0], wm[1], ok
}

var (
	_ pipeline.Source[string, string] = (*Source[string, string])(nil)
	_ pipeline.WatermarkSource        = (*Source[string, string])(nil)
	_ pipeline.ConnectivitySource     = (*Source[string, string])(nil)
)

func (s *Source[K, V]) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func isDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

var _ pipeline.BatchSource[string, string] = (*Source[string, string])(nil)
