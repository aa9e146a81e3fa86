// Package memsource is an in-memory pipeline.Source for tests, in the spirit
// of net/http/httptest: topics with partitions, keyed records, offsets,
// committed offsets, pausing, and simulated rebalances (assign, revoke, lost),
// delivered from inside Poll exactly as a Kafka consumer delivers them.
//
//	src := memsource.New[string, string]()
//	src.AddTopic("prices", 3)
//	src.Produce("prices", 0, "AAPL", "187.20")
//	p, _ := parallafka.New(src)
//	go p.Consume(ctx, handler)
//	...
//	src.Revoke(pipeline.TopicPartition{Topic: "prices", Partition: 0}) // returns once the pipeline committed
//	fmt.Println(src.Committed(pipeline.TopicPartition{Topic: "prices", Partition: 0}))
//
// A Source may be consumed again after Close (a restart): the next Poll
// assigns every partition again, from its committed offset.
package memsource

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/parallafka/parallafka/internal/memctl"
	"github.com/parallafka/parallafka/internal/msginfo"
	"github.com/parallafka/parallafka/pipeline"
)

// Record is one record to produce.
type Record[K, V any] struct {
	Topic     string
	Partition int32
	Key       K
	// NoKey produces a record without a key (Kafka's null key).
	NoKey   bool
	Value   V
	Headers []pipeline.Header
	// Err, if set, makes the record a poison pill: it is delivered with
	// Message.Err set, as a source does for a record it cannot deserialize.
	Err error
	// RawValue is the value as a broker would store it, delivered as
	// Message.RawValue (what the in-flight byte bound counts). Left nil, it
	// is the value itself when V is []byte.
	RawValue []byte

	rawKey []byte // the encoded key, made once when produced
}

// Source is an in-memory pipeline.Source. It is safe for concurrent use.
type Source[K, V any] struct {
	encodeKey func(K) []byte

	mu         sync.Mutex
	parts      map[pipeline.TopicPartition]*partition[K, V]
	order      []*partition[K, V] // the values of parts, sorted by partition
	committed  map[pipeline.TopicPartition]int64
	metadata   map[pipeline.TopicPartition]string // the latest commit's, as Kafka stores it with the offset
	commits    []pipeline.Offset
	commitHook func([]pipeline.Offset) error
	produced   []pipeline.Record // what committed transactions wrote
	txnHook    func([]pipeline.Record, []pipeline.Offset) error
	paused     map[pipeline.TopicPartition]bool // mirrored by partition.paused, for the partitions that exist
	listener   pipeline.RebalanceListener
	needAssign bool // assign everything on the next Poll
	pending    []notification
	next       int // round-robin cursor over partitions
	wake       chan struct{}
	// spare is what is left of the latest chunk of messages PollBatch
	// allocated: it hands out pointers into a chunk rather than one
	// allocation per message.
	spare []pipeline.Message[K, V]
}

// partition is one partition's log and what the consumer does with it, kept
// together so that delivering a message looks nothing up in a map.
type partition[K, V any] struct {
	tp       pipeline.TopicPartition
	log      []Record[K, V]
	assigned bool  // the listener was given it, and it was not taken back since
	pos      int64 // while assigned: the next offset to deliver
	paused   bool  // Source.paused[tp]
}

// ready reports whether p has a message to deliver now.
func (p *partition[K, V]) ready() bool {
	return p.assigned && !p.paused && p.pos < int64(len(p.log))
}

type notification struct {
	kind       string // "assign", "revoke", "lost"
	partitions []pipeline.TopicPartition
	done       chan struct{}
}

// Option configures a Source.
type Option[K any] func(*options[K])

type options[K any] struct{ encodeKey func(K) []byte }

// WithKeyEncoder sets how a key becomes its raw bytes (Message.RawKey, which
// per-key ordering compares). By default string and []byte keys are used as
// they are, and any other key is formatted with %v.
func WithKeyEncoder[K any](encode func(K) []byte) Option[K] {
	return func(o *options[K]) { o.encodeKey = encode }
}

// New returns an empty Source.
func New[K, V any](opts ...Option[K]) *Source[K, V] {
	o := options[K]{encodeKey: defaultKeyEncoder[K]}
	for _, opt := range opts {
		opt(&o)
	}
	return &Source[K, V]{
		encodeKey: o.encodeKey,
		parts:     make(map[pipeline.TopicPartition]*partition[K, V]),
		committed: make(map[pipeline.TopicPartition]int64),
		metadata:  make(map[pipeline.TopicPartition]string),
		paused:    make(map[pipeline.TopicPartition]bool),
		wake:      make(chan struct{}, 1),
	}
}

func defaultKeyEncoder[K any](k K) []byte {
	switch k := any(k).(type) {
	case string:
		return []byte(k)
	case []byte:
		return k
	default:
		return fmt.Appendf(nil, "%v", k)
	}
}

// AddTopic creates a topic with the given number of partitions.
func (s *Source[K, V]) AddTopic(topic string, partitions int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p := range int32(partitions) {
		tp := pipeline.TopicPartition{Topic: topic, Partition: p}
		if _, ok := s.parts[tp]; !ok {
			p := &partition[K, V]{tp: tp, paused: s.paused[tp]}
			s.parts[tp] = p
			s.order = append(s.order, p)
		}
	}
	slices.SortFunc(s.order, func(a, b *partition[K, V]) int { return comparePartitions(a.tp, b.tp) })
}

// Produce appends a keyed record and returns its offset.
func (s *Source[K, V]) Produce(topic string, partition int32, key K, value V) int64 {
	return s.ProduceRecord(Record[K, V]{Topic: topic, Partition: partition, Key: key, Value: value})
}

// ProduceRecord appends a record and returns its offset. It panics if the
// partition does not exist: that is a mistake in the test.
func (s *Source[K, V]) ProduceRecord(r Record[K, V]) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	tp := pipeline.TopicPartition{Topic: r.Topic, Partition: r.Partition}
	p, ok := s.parts[tp]
	if !ok {
		panic(fmt.Sprintf("memsource: produce to unknown partition %v", tp))
	}
	if !r.NoKey {
		r.rawKey = s.encodeKey(r.Key)
	}
	if b, ok := any(r.Value).([]byte); ok && r.RawValue == nil {
		r.RawValue = b
	}
	p.log = append(p.log, r)
	s.signal()
	return int64(len(p.log) - 1)
}

// Subscribe implements pipeline.Source. The next Poll assigns every
// partition, each from its committed offset (or the start).
func (s *Source[K, V]) Subscribe(l pipeline.RebalanceListener) error {
	if l == nil {
		return errors.New("memsource: nil rebalance listener")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.listener != nil {
		return errors.New("memsource: already subscribed")
	}
	s.listener, s.needAssign = l, true
	return nil
}

// Poll implements pipeline.Source: it delivers pending rebalance
// notifications first, then the next message of an assigned, unpaused
// partition (round robin), waiting up to timeout for one.
func (s *Source[K, V]) Poll(timeout time.Duration) (*pipeline.Message[K, V], error) {
	var one [1]*pipeline.Message[K, V]
	got, err := s.PollBatch(timeout, one[:0], 1, 0)
	if len(got) == 0 || err != nil {
		return nil, err
	}
	return got[0], nil
}

// PollBatch implements pipeline.BatchSource: as Poll, then up to max-1
// more messages that are ready, under the same lock, until they hold
// maxBytes (if maxBytes > 0).
func (s *Source[K, V]) PollBatch(timeout time.Duration, dst []*pipeline.Message[K, V], max int, maxBytes int64) ([]*pipeline.Message[K, V], error) {
	// now is the timestamp of the messages delivered (one reading for a
	// batch), and the start of the timeout.
	now := time.Now()
	deadline := now.Add(timeout)
	for {
		s.mu.Lock()
		if s.needAssign || len(s.pending) > 0 {
			s.mu.Unlock()
			s.deliverNotifications()
			s.mu.Lock()
			now = time.Now() // the listener may have taken a while
		}
		if s.listener == nil {
			s.mu.Unlock()
			return dst, errors.New("memsource: Poll before Subscribe")
		}
		n := len(dst)
		var bytes int64
		for i := range max {
			p := s.nextPartition()
			if p == nil {
				break
			}
			msg := s.message(max - i)
			s.fill(msg, p, now)
			dst = append(dst, msg)
			if maxBytes > 0 {
				if bytes += int64(msginfo.Size(msg)); bytes >= maxBytes {
					break
				}
			}
		}
		s.mu.Unlock()
		if len(dst) > n {
			return dst, nil
		}
		wait := time.Until(deadline)
		if wait <= 0 {
			return dst, nil
		}
		timer := time.NewTimer(wait)
		select {
		case <-s.wake:
		case <-timer.C:
		}
		timer.Stop()
		now = time.Now()
	}
}

// nextPartition returns the next partition in round-robin order that has a
// message to deliver, and moves the cursor past it; nil if none has.
func (s *Source[K, V]) nextPartition() *partition[K, V] {
	parts := s.order
	i := s.next
	for range parts {
		p := parts[i]
		if i++; i == len(parts) {
			i = 0
		}
		if p.ready() {
			s.next = i
			return p
		}
	}
	return nil
}

// message returns a zeroed message to fill, out of the current chunk, or a
// new chunk as large as the messages ready now (at most want): one
// allocation for a batch rather than one per message.
func (s *Source[K, V]) message(want int) *pipeline.Message[K, V] {
	if len(s.spare) == 0 {
		n := 1
		if want > 1 {
			n = 0
			for _, p := range s.order {
				if p.ready() {
					if n += int(min(int64(len(p.log))-p.pos, int64(want))); n >= want {
						n = want
						break
					}
				}
			}
		}
		s.spare = make([]pipeline.Message[K, V], max(n, 1))
	}
	msg := &s.spare[0]
	s.spare = s.spare[1:]
	return msg
}

// fill makes msg p's next message, and moves p past it.
func (s *Source[K, V]) fill(msg *pipeline.Message[K, V], p *partition[K, V], now time.Time) {
	r := &p.log[p.pos]
	msg.Topic, msg.Partition, msg.Offset = p.tp.Topic, p.tp.Partition, p.pos
	msg.Key, msg.Value, msg.Headers, msg.Timestamp = r.Key, r.Value, r.Headers, now
	msg.RawKey, msg.RawValue, msg.Err = r.rawKey, r.RawValue, r.Err
	p.pos++
}

func (s *Source[K, V]) sortedPartitions() []pipeline.TopicPartition {
	tps := make([]pipeline.TopicPartition, len(s.order))
	for i, p := range s.order {
		tps[i] = p.tp
	}
	return tps
}

func comparePartitions(a, b pipeline.TopicPartition) int {
	if a.Topic != b.Topic {
		if a.Topic < b.Topic {
			return -1
		}
		return 1
	}
	return int(a.Partition - b.Partition)
}

// deliverNotifications calls the listener for every pending notification,
// on the polling goroutine, as a Kafka consumer does from inside Poll.
func (s *Source[K, V]) deliverNotifications() {
	s.mu.Lock()
	if s.needAssign {
		s.needAssign = false
		s.pending = append([]notification{{kind: "assign", partitions: s.sortedPartitions()}}, s.pending...)
	}
	pending := s.pending
	s.pending = nil
	s.mu.Unlock()
	for _, n := range pending {
		s.apply(n)
	}
}

func (s *Source[K, V]) apply(n notification) {
	s.mu.Lock()
	listener := s.listener
	var partitions []pipeline.TopicPartition
	var assigned []pipeline.Offset
	for _, tp := range n.partitions {
		if p, exists := s.parts[tp]; exists && (n.kind == "assign") != p.assigned {
			partitions = append(partitions, tp)
		}
	}
	if n.kind == "assign" {
		for _, tp := range partitions {
			p := s.parts[tp]
			p.assigned, p.pos = true, s.committed[tp] // 0 if never committed: "earliest"
			committed, ok := s.committed[tp]
			if !ok {
				committed = -1
			}
			assigned = append(assigned, pipeline.Offset{TopicPartition: tp, Offset: committed, Metadata: s.metadata[tp]})
		}
	}
	s.mu.Unlock()

	if listener != nil && len(partitions) > 0 {
		switch n.kind {
		case "assign":
			listener.PartitionsAssigned(assigned)
		case "revoke":
			listener.PartitionsRevoked(partitions)
		case "lost":
			listener.PartitionsLost(partitions)
		}
	}
	if n.kind != "assign" {
		s.mu.Lock()
		for _, tp := range partitions {
			p := s.parts[tp]
			p.assigned, p.pos, p.paused = false, 0, false
			delete(s.paused, tp)
		}
		s.mu.Unlock()
	}
	if n.done != nil {
		close(n.done)
	}
}

// Assign assigns partitions (incrementally, from their committed offsets) and
// returns once the listener has seen them, from inside a Poll.
func (s *Source[K, V]) Assign(partitions ...pipeline.TopicPartition) {
	s.notify("assign", partitions)
}

// Revoke revokes partitions in an orderly rebalance and returns once the
// listener returned, from inside a Poll: by then the pipeline committed the
// partitions' final offsets.
func (s *Source[K, V]) Revoke(partitions ...pipeline.TopicPartition) {
	s.notify("revoke", partitions)
}

// Lose takes partitions away as a lost assignment (no commit expected) and
// returns once the listener returned.
func (s *Source[K, V]) Lose(partitions ...pipeline.TopicPartition) {
	s.notify("lost", partitions)
}

func (s *Source[K, V]) notify(kind string, partitions []pipeline.TopicPartition) {
	done := make(chan struct{})
	s.mu.Lock()
	s.pending = append(s.pending, notification{kind: kind, partitions: partitions, done: done})
	s.signal()
	s.mu.Unlock()
	<-done
}

// Commit implements pipeline.Source and records the commit.
func (s *Source[K, V]) Commit(ctx context.Context, offsets []pipeline.Offset) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	hook := s.commitHook
	s.mu.Unlock()
	if hook != nil {
		if err := hook(offsets); err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.commit(offsets)
	return nil
}

func (s *Source[K, V]) commit(offsets []pipeline.Offset) {
	for _, o := range offsets {
		s.committed[o.TopicPartition] = o.Offset
		s.metadata[o.TopicPartition] = o.Metadata
		s.commits = append(s.commits, o)
	}
}

// Transact implements pipeline.Transactor as a Kafka transaction does:
// the records (see Produced) and the offsets are recorded together, or
// neither is. So a pipeline over a Source can be transactional
// (parallafka.WithTransactions) in tests.
func (s *Source[K, V]) Transact(ctx context.Context, records []pipeline.Record, offsets []pipeline.Offset) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	hook := s.txnHook
	s.mu.Unlock()
	if hook != nil {
		if err := hook(records, offsets); err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range records {
		r.Key, r.Value = slices.Clone(r.Key), slices.Clone(r.Value)
		r.Headers = slices.Clone(r.Headers)
		s.produced = append(s.produced, r)
	}
	s.commit(offsets)
	return nil
}

// Produced returns the records that Transact committed, in order.
func (s *Source[K, V]) Produced() []pipeline.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.produced)
}

// Pause implements pipeline.Source.
func (s *Source[K, V]) Pause(partitions []pipeline.TopicPartition) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, tp := range partitions {
		s.paused[tp] = true
		if p := s.parts[tp]; p != nil {
			p.paused = true
		}
	}
	return nil
}

// Resume implements pipeline.Source.
func (s *Source[K, V]) Resume(partitions []pipeline.TopicPartition) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, tp := range partitions {
		delete(s.paused, tp)
		if p := s.parts[tp]; p != nil {
			p.paused = false
		}
	}
	s.signal()
	return nil
}

// Close implements pipeline.Source: it revokes every assigned partition, on
// the calling goroutine as confluent-kafka-go does from inside Close, and
// unsubscribes. Notifications still pending are released unapplied.
func (s *Source[K, V]) Close() error {
	s.mu.Lock()
	var assigned []pipeline.TopicPartition
	for _, p := range s.order { // sorted
		if p.assigned {
			assigned = append(assigned, p.tp)
		}
	}
	pending := s.pending
	s.pending = nil
	s.mu.Unlock()
	s.apply(notification{kind: "revoke", partitions: assigned})
	for _, n := range pending {
		close(n.done)
	}
	s.mu.Lock()
	s.listener, s.needAssign = nil, false
	clear(s.paused)
	for _, p := range s.order {
		p.paused = false
	}
	s.mu.Unlock()
	return nil
}

func (s *Source[K, V]) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Committed returns a partition's committed offset (the next to read), or
// -1 if it was never committed.
func (s *Source[K, V]) Committed(tp pipeline.TopicPartition) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if off, ok := s.committed[tp]; ok {
		return off
	}
	return -1
}

// Watermarks returns 0 and the partition's end offset, as Kafka's low and
// high watermarks; ok is false for a partition that does not exist.
func (s *Source[K, V]) Watermarks(tp pipeline.TopicPartition) (low, high int64, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.parts[tp]
	if !ok {
		return 0, 0, false
	}
	return 0, int64(len(p.log)), true
}

var (
	_ pipeline.Source[string, string] = (*Source[string, string])(nil)
	_ pipeline.WatermarkSource        = (*Source[string, string])(nil)
)

// The introspection this module's own tests use, through package memctl:
// not part of the API, so that the tests of a user's code depend only on
// what a Kafka source would also show (Committed, Watermarks).

func init() {
	memctl.Register(func(src any) (memctl.Control, bool) {
		s, ok := src.(interface{ introspect() memctl.Control })
		if !ok {
			return nil, false
		}
		return s.introspect(), true
	})
}

func (s *Source[K, V]) introspect() memctl.Control { return introspection[K, V]{s} }

// introspection implements memctl.Control for a Source.
type introspection[K, V any] struct{ s *Source[K, V] }

func (c introspection[K, V]) Commits() []pipeline.Offset {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	return slices.Clone(c.s.commits)
}

func (c introspection[K, V]) Metadata(tp pipeline.TopicPartition) string {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	return c.s.metadata[tp]
}

func (c introspection[K, V]) SetCommitHook(hook func([]pipeline.Offset) error) {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	c.s.commitHook = hook
}

func (c introspection[K, V]) SetTransactHook(hook func([]pipeline.Record, []pipeline.Offset) error) {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	c.s.txnHook = hook
}

func (c introspection[K, V]) Paused(tp pipeline.TopicPartition) bool {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	return c.s.paused[tp]
}

func (c introspection[K, V]) Partitions() []pipeline.TopicPartition {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	return c.s.sortedPartitions()
}

func (c introspection[K, V]) Len(tp pipeline.TopicPartition) int64 {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	if p := c.s.parts[tp]; p != nil {
		return int64(len(p.log))
	}
	return 0
}
