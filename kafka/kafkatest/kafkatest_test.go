package kafkatest_test

import (
	"context"
	"errors"
	"fmt"
	"github.com/parallafka/parallafka/pipeline"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	pkafka "github.com/parallafka/parallafka/kafka"
	"github.com/parallafka/parallafka/kafka/kafkatest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout is the generous deadline of every wait for a condition.
const waitTimeout = 25 * time.Second

// eventually polls cond until it returns nil or waitTimeout passes, and then
// fails the test with cond's last complaint.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %v", waitTimeout, what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestStartEmbedded(t *testing.T) {
	c, err := kafkatest.Start(kafkatest.WithEmbedded(), kafkatest.WithTopic("seeded", 4))
	must.NoError(t, err)
	defer c.Close()

	check.True(t, c.Embedded())
	check.NotNil(t, c.Fake())
	check.True(t, strings.HasPrefix(c.Bootstrap(), "127.0.0.1:"), c.Bootstrap())
	check.NotEqual(t, "127.0.0.1:0", c.Bootstrap())
	check.Equal(t, []string{c.Bootstrap()}, strings.Split(c.Bootstrap(), ","))

	n, err := c.Partitions(testCtx(t), "seeded")
	must.NoError(t, err)
	check.Equal(t, 4, n)

	c.Close()
	c.Close() // idempotent
	_, err = c.Partitions(testCtx(t), "seeded")
	check.Error(t, err)
}

// TestBrokersEnv points a second Cluster, through KAFKA_BROKERS, at an
// embedded one, which stands for a real broker here.
func TestBrokersEnv(t *testing.T) {
	ctx := testCtx(t)
	broker := kafkatest.New(t, kafkatest.WithEmbedded())

	t.Setenv(kafkatest.BrokersEnv, " "+broker.Bootstrap()+" , ")
	remote := kafkatest.New(t)
	check.False(t, remote.Embedded())
	check.Nil(t, remote.Fake())
	check.Equal(t, broker.Bootstrap(), remote.Bootstrap())

	topic := kafkatest.UniqueTopic(t.Name())
	must.NoError(t, remote.CreateTopic(ctx, topic, 2))
	_, err := remote.ProduceKeyed(ctx, topic, 10, 3)
	must.NoError(t, err)

	// Closing the remote Cluster leaves the broker running.
	remote.Close()
	ends, err := broker.EndOffsets(ctx, topic)
	must.NoError(t, err)
	check.Equal(t, int64(10), ends[0]+ends[1])

	embedded := kafkatest.New(t, kafkatest.WithEmbedded())
	check.True(t, embedded.Embedded())
	check.NotEqual(t, broker.Bootstrap(), embedded.Bootstrap())

	explicit := kafkatest.New(t, kafkatest.WithBrokers(embedded.Bootstrap()))
	check.False(t, explicit.Embedded())
	check.Equal(t, embedded.Bootstrap(), explicit.Bootstrap())

	list := kafkatest.New(t, kafkatest.WithBrokers(" ,"+embedded.Bootstrap()+","+broker.Bootstrap(), ""))
	check.Equal(t, embedded.Bootstrap()+","+broker.Bootstrap(), list.Bootstrap())
	check.Equal(t, embedded.Bootstrap()+","+broker.Bootstrap(), list.Bootstrap())
}

func TestKfakeOptions(t *testing.T) {
	c := kafkatest.New(t, kafkatest.WithEmbedded(), kafkatest.WithKfakeOptions(kfake.NumBrokers(3)))
	check.Len(t, strings.Split(c.Bootstrap(), ","), 3)
	ctx := testCtx(t)
	topic := kafkatest.UniqueTopic(t.Name())
	must.NoError(t, c.CreateTopic(ctx, topic, 9))
	recs, err := c.ProduceKeyed(ctx, topic, 90, 9)
	must.NoError(t, err)
	ends, err := c.EndOffsets(ctx, topic)
	must.NoError(t, err)
	check.Equal(t, endsOf(recs), fill(ends, 9))
}

func TestUniqueTopic(t *testing.T) {
	seen := make(map[string]bool)
	for range 1000 {
		name := kafkatest.UniqueTopic("TestX/sub test:1")
		must.False(t, seen[name], name)
		seen[name] = true
		must.True(t, strings.HasPrefix(name, "TestX_sub_test_1-"), name)
		for _, r := range name {
			must.True(t, r == '-' || r == '_' || r == '.' ||
				(r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9'), name)
		}
	}
	check.LessOrEqual(t, len(kafkatest.UniqueTopic(strings.Repeat("x", 400))), 249)
	check.NotEmpty(t, strings.TrimLeft(kafkatest.UniqueTopic(""), "-"))
}

func TestPartitionForMatchesKafka(t *testing.T) {
	// franz-go's StickyKeyPartitioner(nil) partitions keys exactly as
	// Kafka's Java client does.
	kp := kgo.StickyKeyPartitioner(nil).ForTopic("t")
	for _, n := range []int{1, 2, 3, 6, 7, 10, 64} {
		for i := range 500 {
			key := []byte(strings.Repeat("k", i%9) + fmt.Sprint(i))
			want := kp.Partition(&kgo.Record{Key: key}, n)
			must.Equal(t, int32(want), kafkatest.PartitionFor(key, n), "key %q, %d partitions", key, n)
		}
	}
}

func TestKeyedValues(t *testing.T) {
	key, seq, err := kafkatest.ParseKeyedValue(kafkatest.KeyedValue(42, 17))
	must.NoError(t, err)
	check.Equal(t, "key-00042", key)
	check.Equal(t, string(kafkatest.KeyedKey(42)), key)
	check.Equal(t, 17, seq)
	for _, bad := range []string{"", "key-1", "key-1/", "key-1/x", "key-1/-3"} {
		_, _, err := kafkatest.ParseKeyedValue([]byte(bad))
		check.Error(t, err, bad)
	}
}

func TestTopicErrors(t *testing.T) {
	ctx := testCtx(t)
	c := kafkatest.New(t)
	topic := kafkatest.UniqueTopic(t.Name())

	_, err := c.EndOffsets(ctx, topic)
	check.ErrorIs(t, err, pkafka.ErrUnknownTopic)
	err = c.Produce(ctx, topic, []kafkatest.Record{{Value: []byte("x")}})
	check.ErrorIs(t, err, pkafka.ErrUnknownTopic)
	_, err = c.CommittedOffsets(ctx, "g", topic)
	check.ErrorIs(t, err, pkafka.ErrUnknownTopic)

	must.NoError(t, c.CreateTopic(ctx, topic, 3))
	must.NoError(t, c.CreateTopic(ctx, topic, 3), "existing topic, same partitions")
	check.Error(t, c.CreateTopic(ctx, topic, 4), "existing topic, other partitions")
	check.Error(t, c.CreateTopic(ctx, kafkatest.UniqueTopic(t.Name()), 0))

	err = c.Produce(ctx, topic, []kafkatest.Record{{Value: []byte("x"), Partition: 3}})
	check.Error(t, err)

	committed, err := c.CommittedOffsets(ctx, kafkatest.UniqueTopic("nogroup"), topic)
	must.NoError(t, err)
	check.Empty(t, committed)

	must.NoError(t, c.DeleteTopic(ctx, topic))
	eventually(t, "topic deletion", func() error {
		_, err := c.Partitions(ctx, topic)
		if errors.Is(err, pkafka.ErrUnknownTopic) {
			return nil
		}
		return fmt.Errorf("still there: %v", err)
	})
	must.NoError(t, c.DeleteTopic(ctx, topic), "deleting a missing topic")
}

func TestProduce(t *testing.T) {
	ctx := testCtx(t)
	c := kafkatest.New(t)
	topic := kafkatest.UniqueTopic(t.Name())
	must.NoError(t, c.CreateTopic(ctx, topic, 4))

	recs := []kafkatest.Record{
		{Key: []byte("a"), Value: []byte("1"), Partition: -1},
		{Value: []byte("2"), Partition: 2, Headers: []pipeline.Header{{Key: "h", Value: []byte("v")}}},
		{Key: []byte("a"), Value: []byte("3"), Partition: -1},
		{Value: []byte("4"), Partition: -1},
		{Value: []byte("5"), Partition: -1},
	}
	must.NoError(t, c.Produce(ctx, topic, recs))
	pa := kafkatest.PartitionFor([]byte("a"), 4)
	check.Equal(t, pa, recs[0].Partition)
	check.Equal(t, pa, recs[2].Partition)
	check.Equal(t, recs[0].Offset+1, recs[2].Offset)
	check.Equal(t, int32(2), recs[1].Partition)
	check.NotEqual(t, recs[3].Partition, recs[4].Partition, "unkeyed records go round-robin")
	ends, err := c.EndOffsets(ctx, topic)
	must.NoError(t, err)
	check.Equal(t, endsOf(recs), fill(ends, 4))
}

// TestProducerConfig checks that a confluent-kafka-go producer made from
// ProducerConfig partitions keys as PartitionFor (and Produce) do.
func TestProducerConfig(t *testing.T) {
	ctx := testCtx(t)
	c := kafkatest.New(t)
	topic := kafkatest.UniqueTopic(t.Name())
	const partitions = 5
	must.NoError(t, c.CreateTopic(ctx, topic, partitions))

	producer, err := kafka.NewProducer(c.ProducerConfig())
	must.NoError(t, err)
	defer producer.Close()
	deliveries := make(chan kafka.Event, 50)
	for i := range 50 {
		must.NoError(t, producer.Produce(&kafka.Message{
			TopicPartition: kafka.TopicPartition{Topic: &topic, Partition: kafka.PartitionAny},
			Key:            kafkatest.KeyedKey(i),
			Value:          []byte("v"),
		}, deliveries))
	}
	for range 50 {
		select {
		case ev := <-deliveries:
			m := ev.(*kafka.Message)
			must.NoError(t, m.TopicPartition.Error)
			check.Equal(t, kafkatest.PartitionFor(m.Key, partitions), m.TopicPartition.Partition, "key %s", m.Key)
		case <-time.After(waitTimeout):
			t.Fatal("no delivery report")
		}
	}
}

// endsOf returns the end offsets that producing recs into empty partitions
// gives.
func endsOf(recs []kafkatest.Record) map[int32]int64 {
	ends := make(map[int32]int64)
	for _, r := range recs {
		ends[r.Partition] = max(ends[r.Partition], r.Offset+1)
	}
	return ends
}

// fill drops the zero entries of ends, for comparison with endsOf.
func fill(ends map[int32]int64, n int) map[int32]int64 {
	out := make(map[int32]int64)
	for p := range int32(n) {
		if ends[p] != 0 {
			out[p] = ends[p]
		}
	}
	return out
}

// TestProduceConsumeCommit writes keyed records, reads them back through a
// confluent-kafka-go consumer, commits, and checks the commits both through
// the broker and through a second consumer of the group.
func TestProduceConsumeCommit(t *testing.T) {
	ctx := testCtx(t)
	c := kafkatest.New(t)
	topic := kafkatest.UniqueTopic(t.Name())
	group := kafkatest.UniqueTopic(t.Name() + "-group")
	const partitions, n, keys = 3, 300, 10
	must.NoError(t, c.CreateTopic(ctx, topic, partitions))

	recs, err := c.ProduceKeyed(ctx, topic, n, keys)
	must.NoError(t, err)
	// A record with headers, too.
	hdr := []kafkatest.Record{{Key: []byte("h"), Value: []byte("with headers"), Partition: -1,
		Headers: []pipeline.Header{{Key: "one", Value: []byte("1")}, {Key: "two", Value: []byte("2")}}}}
	must.NoError(t, c.Produce(ctx, topic, hdr))

	ends, err := c.EndOffsets(ctx, topic)
	must.NoError(t, err)
	must.Len(t, ends, partitions)
	var total int64
	for _, e := range ends {
		total += e
	}
	must.Equal(t, int64(n+1), total)

	byPos := make(map[position]kafkatest.Record)
	for _, r := range append(recs, hdr...) {
		byPos[position{r.Partition, r.Offset}] = r
	}

	consumer, err := kafka.NewConsumer(c.ConsumerConfig(group))
	must.NoError(t, err)
	consumerClosed := false
	defer func() {
		if !consumerClosed {
			consumer.Close()
		}
	}()
	must.NoError(t, consumer.SubscribeTopics([]string{topic}, nil))

	next := make(map[int]int)           // key -> next expected sequence
	nextOffset := make(map[int32]int64) // partition -> next offset to read
	var sawHeaders bool
	got := 0
	eventually(t, "consuming all records", func() error {
		for got < n+1 {
			switch ev := consumer.Poll(100).(type) {
			case nil:
				return fmt.Errorf("%d of %d records consumed", got, n+1)
			case *kafka.Message:
				must.NoError(t, ev.TopicPartition.Error)
				want, ok := byPos[positionOf(ev)]
				must.True(t, ok, "unexpected record at %v", ev.TopicPartition)
				must.Equal(t, want.Key, ev.Key)
				must.Equal(t, want.Value, ev.Value)
				nextOffset[ev.TopicPartition.Partition] = int64(ev.TopicPartition.Offset) + 1
				got++
				if string(ev.Key) == "h" {
					sawHeaders = true
					must.Equal(t, []kafka.Header{{Key: "one", Value: []byte("1")}, {Key: "two", Value: []byte("2")}}, ev.Headers)
					continue
				}
				key, seq, err := kafkatest.ParseKeyedValue(ev.Value)
				must.NoError(t, err)
				var k int
				_, err = fmt.Sscanf(key, "key-%d", &k)
				must.NoError(t, err)
				must.Equal(t, next[k], seq, "key %s out of order", key)
				next[k]++
			case kafka.Error:
				must.False(t, ev.IsFatal(), "fatal consumer error: %v", ev)
				t.Logf("consumer error: %v", ev)
			}
		}
		return nil
	})
	check.True(t, sawHeaders)
	for k := range keys {
		check.Equal(t, n/keys, next[k], "key %d", k)
	}
	check.Equal(t, ends, nextOffset)

	// Commit the next offset to read of every partition, then read the
	// commits back from the broker and through the consumer.
	var commit []kafka.TopicPartition
	for p, o := range nextOffset {
		commit = append(commit, kafka.TopicPartition{Topic: &topic, Partition: p, Offset: kafka.Offset(o)})
	}
	committedTPs, err := consumer.CommitOffsets(commit)
	must.NoError(t, err)
	must.Len(t, committedTPs, partitions)

	committed, err := c.CommittedOffsets(ctx, group, topic)
	must.NoError(t, err)
	check.Equal(t, ends, committed)

	var query []kafka.TopicPartition
	for p := range int32(partitions) {
		query = append(query, kafka.TopicPartition{Topic: &topic, Partition: p})
	}
	fromConsumer, err := consumer.Committed(query, 10000)
	must.NoError(t, err)
	for _, tp := range fromConsumer {
		check.Equal(t, ends[tp.Partition], int64(tp.Offset), "partition %d", tp.Partition)
	}

	consumerClosed = true
	must.NoError(t, consumer.Close())

	// A new member of the group resumes from the commits: it reads only
	// what is produced now.
	more, err := c.ProduceKeyed(ctx, topic, 30, keys)
	must.NoError(t, err)
	moreAt := make(map[position]bool)
	for _, r := range more {
		moreAt[position{r.Partition, r.Offset}] = true
	}
	second, err := kafka.NewConsumer(c.ConsumerConfig(group))
	must.NoError(t, err)
	defer second.Close()
	must.NoError(t, second.SubscribeTopics([]string{topic}, nil))
	got = 0
	eventually(t, "consuming the new records", func() error {
		for got < len(more) {
			switch ev := second.Poll(100).(type) {
			case nil:
				return fmt.Errorf("%d of %d new records consumed", got, len(more))
			case *kafka.Message:
				must.True(t, moreAt[positionOf(ev)], "record %v was consumed before the commit", ev.TopicPartition)
				got++
			case kafka.Error:
				must.False(t, ev.IsFatal(), "fatal consumer error: %v", ev)
			}
		}
		return nil
	})
}

// position is a record's place in the topic.
type position struct {
	partition int32
	offset    int64
}

func positionOf(m *kafka.Message) position {
	return position{m.TopicPartition.Partition, int64(m.TopicPartition.Offset)}
}

func TestGroupRebalance(t *testing.T) {
	for _, strategy := range []string{"range", "cooperative-sticky"} {
		t.Run(strategy, func(t *testing.T) {
			testGroupRebalance(t, strategy)
		})
	}
}

// tracker is the test's view of which group member owns which partition,
// kept by the members' rebalance callbacks under one lock, so that it is
// always a consistent snapshot: a partition revoked from one member is
// removed before the broker can hand it to another.
type tracker struct {
	topic      string
	partitions int

	mu         sync.Mutex
	owner      map[int32]string          // partition -> member
	owned      map[string]map[int32]bool // member -> partitions
	consumed   map[position]int          // record -> times consumed
	violations []string
	log        []string
}

func newTracker(topic string, partitions int) *tracker {
	return &tracker{
		topic:      topic,
		partitions: partitions,
		owner:      make(map[int32]string),
		owned:      make(map[string]map[int32]bool),
		consumed:   make(map[position]int),
	}
}

func (tr *tracker) violatef(format string, args ...any) {
	tr.violations = append(tr.violations, fmt.Sprintf(format, args...))
}

func (tr *tracker) logf(format string, args ...any) {
	tr.log = append(tr.log, time.Now().Format("15:04:05.000 ")+fmt.Sprintf(format, args...))
}

func partitionsOf(tps []kafka.TopicPartition) []int32 {
	var ps []int32
	for _, tp := range tps {
		ps = append(ps, tp.Partition)
	}
	slices.Sort(ps)
	return ps
}

func (tr *tracker) assigned(member string, parts []int32, incremental bool) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.logf("%s assigned %v", member, parts)
	if tr.owned[member] == nil {
		tr.owned[member] = make(map[int32]bool)
	}
	if !incremental && len(tr.owned[member]) > 0 {
		tr.violatef("%s got an eager assignment %v while owning %v", member, parts, slices.Sorted(maps.Keys(tr.owned[member])))
	}
	for _, p := range parts {
		if o, ok := tr.owner[p]; ok {
			tr.violatef("partition %d assigned to %s while owned by %s", p, member, o)
		}
		tr.owner[p] = member
		tr.owned[member][p] = true
	}
}

func (tr *tracker) revoked(member string, parts []int32, incremental bool) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.logf("%s revoked %v", member, parts)
	if !incremental && len(parts) != len(tr.owned[member]) {
		tr.violatef("%s: eager revocation of %v while owning %v", member, parts, slices.Sorted(maps.Keys(tr.owned[member])))
	}
	for _, p := range parts {
		if tr.owner[p] != member {
			tr.violatef("partition %d revoked from %s, but owned by %q", p, member, tr.owner[p])
		}
		delete(tr.owner, p)
		delete(tr.owned[member], p)
	}
}

// check compares a member's assignment, as its consumer reports it, with
// the tracker's.
func (tr *tracker) check(member string, c *kafka.Consumer) {
	tps, err := c.Assignment()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if err != nil {
		tr.violatef("%s: Assignment: %v", member, err)
		return
	}
	got := partitionsOf(tps)
	want := slices.Sorted(maps.Keys(tr.owned[member]))
	if !slices.Equal(got, want) {
		tr.violatef("%s: consumer assignment %v, tracked %v", member, got, want)
	}
}

func (tr *tracker) consume(member string, m *kafka.Message) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	p := m.TopicPartition.Partition
	if tr.owner[p] != member {
		tr.violatef("%s consumed partition %d offset %d, owned by %q", member, p, m.TopicPartition.Offset, tr.owner[p])
	}
	tr.consumed[positionOf(m)]++
}

// balanced returns nil if the active members (and only they) own the topic's
// partitions, evenly.
func (tr *tracker) balanced(active []string) error {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if len(tr.owner) != tr.partitions {
		return fmt.Errorf("%d of %d partitions owned: %v", len(tr.owner), tr.partitions, tr.owner)
	}
	for member, ps := range tr.owned {
		if !slices.Contains(active, member) && len(ps) > 0 {
			return fmt.Errorf("inactive %s owns %v", member, slices.Sorted(maps.Keys(ps)))
		}
	}
	for _, member := range active {
		if n := len(tr.owned[member]); n != tr.partitions/len(active) {
			return fmt.Errorf("%s owns %d partitions: %v", member, n, tr.owner)
		}
	}
	return nil
}

func (tr *tracker) assignment() map[string][]int32 {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	out := make(map[string][]int32)
	for m, ps := range tr.owned {
		if len(ps) > 0 {
			out[m] = slices.Sorted(maps.Keys(ps))
		}
	}
	return out
}

func (tr *tracker) consumedCount() (distinct, total int) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, n := range tr.consumed {
		total += n
	}
	return len(tr.consumed), total
}

// member is one consumer of the group, polling on its own goroutine.
type member struct {
	name   string
	stop   chan struct{}
	done   chan struct{}
	closed error // Close's result, set before done is closed
}

func startMember(t *testing.T, c *kafkatest.Cluster, tr *tracker, group, strategy, name string) *member {
	t.Helper()
	cfg := c.ConsumerConfig(group)
	must.NoError(t, cfg.SetKey("partition.assignment.strategy", strategy))
	must.NoError(t, cfg.SetKey("client.id", name))
	consumer, err := kafka.NewConsumer(cfg)
	must.NoError(t, err)

	cooperative := strategy == "cooperative-sticky"
	wantProtocol := "EAGER"
	if cooperative {
		wantProtocol = "COOPERATIVE"
	}
	// next is the next offset to read of each partition this member
	// consumed from; touched only on the member's goroutine (the
	// rebalance callback runs inside Poll and Close).
	next := make(map[int32]kafka.Offset)
	// closing is set, on the member's goroutine, before Close: inside
	// Close the last revocation runs while librdkafka is terminating, and
	// Assignment() then fails with "Broker handle destroyed for
	// termination", so the cross-check is skipped.
	closing := false
	commit := func(parts []kafka.TopicPartition) {
		var offsets []kafka.TopicPartition
		for _, tp := range parts {
			if o, ok := next[tp.Partition]; ok {
				offsets = append(offsets, kafka.TopicPartition{Topic: tp.Topic, Partition: tp.Partition, Offset: o})
				delete(next, tp.Partition)
			}
		}
		if len(offsets) == 0 {
			return
		}
		if _, err := consumer.CommitOffsets(offsets); err != nil {
			tr.mu.Lock()
			tr.violatef("%s: committing %v: %v", name, offsets, err)
			tr.mu.Unlock()
		}
	}
	rebalance := func(c *kafka.Consumer, ev kafka.Event) error {
		if p := c.GetRebalanceProtocol(); p != wantProtocol {
			tr.mu.Lock()
			tr.violatef("%s: rebalance protocol %q, want %q", name, p, wantProtocol)
			tr.mu.Unlock()
		}
		switch e := ev.(type) {
		case kafka.AssignedPartitions:
			var err error
			if cooperative {
				err = c.IncrementalAssign(e.Partitions)
			} else {
				err = c.Assign(e.Partitions)
			}
			if err != nil {
				tr.mu.Lock()
				tr.violatef("%s: assigning %v: %v", name, e.Partitions, err)
				tr.mu.Unlock()
			}
			tr.assigned(name, partitionsOf(e.Partitions), cooperative)
		case kafka.RevokedPartitions:
			if c.AssignmentLost() {
				tr.mu.Lock()
				tr.violatef("%s: assignment lost", name)
				tr.mu.Unlock()
			} else {
				commit(e.Partitions)
			}
			tr.revoked(name, partitionsOf(e.Partitions), cooperative)
			var err error
			if cooperative {
				err = c.IncrementalUnassign(e.Partitions)
			} else {
				err = c.Unassign()
			}
			if err != nil {
				tr.mu.Lock()
				tr.violatef("%s: unassigning %v: %v", name, e.Partitions, err)
				tr.mu.Unlock()
			}
		}
		if !closing {
			tr.check(name, c)
		}
		return nil
	}
	must.NoError(t, consumer.SubscribeTopics([]string{tr.topic}, rebalance))

	m := &member{name: name, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		for {
			select {
			case <-m.stop:
				closing = true
				m.closed = consumer.Close()
				return
			default:
			}
			switch ev := consumer.Poll(100).(type) {
			case *kafka.Message:
				if ev.TopicPartition.Error != nil {
					tr.mu.Lock()
					tr.violatef("%s: message error: %v", name, ev.TopicPartition.Error)
					tr.mu.Unlock()
					continue
				}
				tr.consume(name, ev)
				next[ev.TopicPartition.Partition] = ev.TopicPartition.Offset + 1
			case kafka.Error:
				tr.mu.Lock()
				if ev.IsFatal() {
					tr.violatef("%s: fatal error: %v", name, ev)
				} else {
					tr.logf("%s: error: %v", name, ev)
				}
				tr.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { m.leave(t) })
	return m
}

// leave stops the member's poll loop and closes its consumer, which revokes
// its partitions (committing them) and leaves the group.
func (m *member) leave(t *testing.T) {
	select {
	case <-m.stop:
	default:
		close(m.stop)
	}
	select {
	case <-m.done:
	case <-time.After(waitTimeout):
		t.Errorf("%s did not close within %v", m.name, waitTimeout)
		return
	}
	if m.closed != nil {
		t.Errorf("closing %s: %v", m.name, m.closed)
	}
}

// testGroupRebalance has three members join a group on a six-partition topic
// one by one, and then one leave, and checks at every stable point that the
// members own all partitions evenly, that no partition was ever owned by two
// members at once, and that every record was consumed exactly once by the
// owner of its partition with commits on revocation.
func testGroupRebalance(t *testing.T, strategy string) {
	start := time.Now()
	ctx := testCtx(t)
	c := kafkatest.New(t)
	const partitions = 6
	topic := kafkatest.UniqueTopic(t.Name())
	group := kafkatest.UniqueTopic(t.Name() + "-group")
	must.NoError(t, c.CreateTopic(ctx, topic, partitions))
	tr := newTracker(topic, partitions)
	defer func() {
		if t.Failed() {
			tr.mu.Lock()
			t.Logf("rebalance log:\n%s", strings.Join(tr.log, "\n"))
			tr.mu.Unlock()
		}
	}()

	produced := 0
	batch := 0
	produce := func() {
		t.Helper()
		recs, err := c.ProduceKeyed(ctx, topic, 120, 24)
		must.NoError(t, err)
		produced += len(recs)
		batch++
	}
	waitConsumed := func() {
		t.Helper()
		eventually(t, "consuming all records", func() error {
			if distinct, _ := tr.consumedCount(); distinct != produced {
				return fmt.Errorf("%d of %d records consumed", distinct, produced)
			}
			return nil
		})
	}
	var previous map[string][]int32
	waitBalanced := func(active []string) {
		t.Helper()
		eventually(t, fmt.Sprintf("a balanced assignment over %v", active), func() error {
			return tr.balanced(active)
		})
		now := tr.assignment()
		t.Logf("%5.1fs balanced: %v", time.Since(start).Seconds(), now)
		if strategy == "cooperative-sticky" {
			// Sticky: members that stay keep a subset of what they had.
			for m, ps := range now {
				if prev, ok := previous[m]; ok && len(ps) <= len(prev) {
					for _, p := range ps {
						check.Contains(t, prev, p, "%s gained partition %d while shrinking", m, p)
					}
				}
			}
		}
		previous = now
		if fake := c.Fake(); fake != nil {
			// The broker's view agrees once the group is stable.
			eventually(t, "the broker's view to agree", func() error {
				info := fake.GroupInfo(group)
				if info == nil || info.State != "Stable" || len(info.Members) != len(active) {
					return fmt.Errorf("group %+v", info)
				}
				for _, gm := range info.Members {
					got := slices.Sorted(slices.Values(gm.Assignment[topic]))
					if want := now[gm.ClientID]; !slices.Equal(got, want) {
						return fmt.Errorf("broker assigns %s %v, member owns %v", gm.ClientID, got, want)
					}
				}
				return nil
			})
		}
		produce()
		waitConsumed()
	}

	produce()
	var members []*member
	var active []string
	for i := range 3 {
		name := fmt.Sprintf("member-%d", i)
		members = append(members, startMember(t, c, tr, group, strategy, name))
		active = append(active, name)
		waitBalanced(active)
	}

	// The first member leaves; the other two take over its partitions.
	members[0].leave(t)
	check.Empty(t, tr.assignment()[members[0].name], "a closed member owns nothing")
	active = active[1:]
	waitBalanced(active)

	for _, m := range members[1:] {
		m.leave(t)
	}
	check.Empty(t, tr.assignment(), "closed members own nothing")

	tr.mu.Lock()
	violations := slices.Clone(tr.violations)
	tr.mu.Unlock()
	check.Empty(t, violations)

	// Commits on revocation mean nothing was consumed twice, and the
	// group's commits are the end offsets.
	distinct, total := tr.consumedCount()
	check.Equal(t, produced, distinct)
	check.Equal(t, produced, total, "records consumed more than once")
	ends, err := c.EndOffsets(ctx, topic)
	must.NoError(t, err)
	committed, err := c.CommittedOffsets(ctx, group, topic)
	must.NoError(t, err)
	check.Equal(t, ends, committed)
	t.Logf("%s: %d batches, %.1fs", strategy, batch, time.Since(start).Seconds())
}

// checker holds small assertion helpers: check reports a failure and goes
// on, must stops the test. (They stand in for testify, whose dependencies
// are not all in go.sum yet.)
type checker struct{ fatal bool }

var (
	check = checker{fatal: false}
	must  = checker{fatal: true}
)

func (c checker) fail(t testing.TB, msgAndArgs []any, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if len(msgAndArgs) > 0 {
		if f, ok := msgAndArgs[0].(string); ok {
			msg += ": " + fmt.Sprintf(f, msgAndArgs[1:]...)
		} else {
			msg += ": " + fmt.Sprint(msgAndArgs...)
		}
	}
	if c.fatal {
		t.Fatal(msg)
	}
	t.Error(msg)
}

func (c checker) NoError(t testing.TB, err error, msgAndArgs ...any) {
	t.Helper()
	if err != nil {
		c.fail(t, msgAndArgs, "unexpected error: %v", err)
	}
}

func (c checker) Error(t testing.TB, err error, msgAndArgs ...any) {
	t.Helper()
	if err == nil {
		c.fail(t, msgAndArgs, "expected an error")
	}
}

func (c checker) ErrorIs(t testing.TB, err, target error, msgAndArgs ...any) {
	t.Helper()
	if !errors.Is(err, target) {
		c.fail(t, msgAndArgs, "error %v is not %v", err, target)
	}
}

func (c checker) True(t testing.TB, v bool, msgAndArgs ...any) {
	t.Helper()
	if !v {
		c.fail(t, msgAndArgs, "expected true")
	}
}

func (c checker) False(t testing.TB, v bool, msgAndArgs ...any) {
	t.Helper()
	if v {
		c.fail(t, msgAndArgs, "expected false")
	}
}

func (c checker) Equal(t testing.TB, want, got any, msgAndArgs ...any) {
	t.Helper()
	if !reflect.DeepEqual(want, got) {
		c.fail(t, msgAndArgs, "not equal:\nwant %#v\n got %#v", want, got)
	}
}

func (c checker) NotEqual(t testing.TB, a, b any, msgAndArgs ...any) {
	t.Helper()
	if reflect.DeepEqual(a, b) {
		c.fail(t, msgAndArgs, "both are %#v", a)
	}
}

func (c checker) Nil(t testing.TB, v any, msgAndArgs ...any) {
	t.Helper()
	if !isNil(v) {
		c.fail(t, msgAndArgs, "expected nil, got %#v", v)
	}
}

func (c checker) NotNil(t testing.TB, v any, msgAndArgs ...any) {
	t.Helper()
	if isNil(v) {
		c.fail(t, msgAndArgs, "expected non-nil")
	}
}

func isNil(v any) bool {
	if v == nil {
		return true
	}
	switch rv := reflect.ValueOf(v); rv.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Interface, reflect.Chan, reflect.Func:
		return rv.IsNil()
	}
	return false
}

func (c checker) Len(t testing.TB, v any, n int, msgAndArgs ...any) {
	t.Helper()
	if l := reflect.ValueOf(v).Len(); l != n {
		c.fail(t, msgAndArgs, "length %d, want %d: %v", l, n, v)
	}
}

func (c checker) Empty(t testing.TB, v any, msgAndArgs ...any) {
	t.Helper()
	if !isNil(v) && reflect.ValueOf(v).Len() != 0 {
		c.fail(t, msgAndArgs, "expected empty, got %v", v)
	}
}

func (c checker) NotEmpty(t testing.TB, s string, msgAndArgs ...any) {
	t.Helper()
	if s == "" {
		c.fail(t, msgAndArgs, "expected a non-empty string")
	}
}

func (c checker) LessOrEqual(t testing.TB, a, b int, msgAndArgs ...any) {
	t.Helper()
	if a > b {
		c.fail(t, msgAndArgs, "%d > %d", a, b)
	}
}

func (c checker) Contains(t testing.TB, s []int32, v int32, msgAndArgs ...any) {
	t.Helper()
	if !slices.Contains(s, v) {
		c.fail(t, msgAndArgs, "%v does not contain %v", s, v)
	}
}

// BenchmarkProduceKeyed measures Produce: 10,000 records of about 16 bytes a
// call.
func BenchmarkProduceKeyed(b *testing.B) {
	c := kafkatest.New(b)
	ctx := context.Background()
	topic := kafkatest.UniqueTopic(b.Name())
	if err := c.CreateTopic(ctx, topic, 6); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := c.ProduceKeyed(ctx, topic, 10_000, 100); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*10_000)/b.Elapsed().Seconds(), "records/s")
}
