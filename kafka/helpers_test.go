package kafka

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/parallafka/parallafka/pipeline"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testLogger logs to t until the test's cleanups run.
func testLogger(t *testing.T) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() { w.done.Store(true) })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct {
	t    *testing.T
	done atomic.Bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// testCluster is an in-process Kafka broker on 127.0.0.1.
type testCluster struct {
	*kfake.Cluster
	addrs string
}

func newTestCluster(t *testing.T, opts ...kfake.Opt) *testCluster {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.Ports(0),
		// KIP-848 groups: heartbeat often, so that rebalances are quick.
		kfake.BrokerConfigs(map[string]string{"group.consumer.heartbeat.interval.ms": "250"})}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(c.Close)
	return &testCluster{Cluster: c, addrs: strings.Join(c.ListenAddrs(), ",")}
}

func (c *testCluster) topic(t *testing.T, partitions int32) string {
	t.Helper()
	name := strings.NewReplacer("/", "-", " ", "-").Replace(t.Name())
	require.NoError(t, c.CreateTopic(name, partitions, nil))
	return name
}

// produce writes records synchronously, each to the partition it names.
func (c *testCluster) produce(t *testing.T, records ...*kgo.Record) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(c.addrs, ",")...),
		kgo.RecordPartitioner(kgo.ManualPartitioner()))
	require.NoError(t, err)
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, cl.ProduceSync(ctx, records...).FirstErr())
}

// committed returns the group's committed offsets of topic, by partition.
func (c *testCluster) committed(group, topic string) map[int32]int64 {
	out := map[int32]int64{}
	if info := c.GroupInfo(group); info != nil {
		for p, gc := range info.Commits[topic] {
			out[p] = gc.Offset
		}
	}
	return out
}

func record(topic string, partition int32, key, value string) *kgo.Record {
	return &kgo.Record{Topic: topic, Partition: partition, Key: []byte(key), Value: []byte(value)}
}

// config returns a consumer configuration for the group. strategy is a
// partition.assignment.strategy of the classic protocol, or
// "consumer-protocol" for KIP-848's consumer group protocol.
func (c *testCluster) config(group, strategy string) *ckafka.ConfigMap {
	if strategy == "consumer-protocol" {
		return &ckafka.ConfigMap{
			"bootstrap.servers":     c.addrs,
			"group.id":              group,
			"group.protocol":        "consumer",
			"auto.offset.reset":     "earliest",
			"broker.address.family": "v4",
			"enable.partition.eof":  true,
		}
	}
	return &ckafka.ConfigMap{
		"bootstrap.servers":             c.addrs,
		"group.id":                      group,
		"auto.offset.reset":             "earliest",
		"partition.assignment.strategy": strategy,
		"session.timeout.ms":            6000,
		"heartbeat.interval.ms":         250,
		"broker.address.family":         "v4",
		"enable.partition.eof":          true, // exercises the event path
	}
}

func newStringSource(t *testing.T, cfg *ckafka.ConfigMap, topic string, opts ...Option) *Source[string, string] {
	t.Helper()
	log := testLogger(t)
	c, err := NewConsumer(cfg, WithLogger(log.With("src", "librdkafka")))
	require.NoError(t, err)
	src, err := NewSource(c, []string{topic}, String, String, append([]Option{WithLogger(log)}, opts...)...)
	if err != nil {
		_ = c.Close()
		require.NoError(t, err)
	}
	return src
}

// call is one RebalanceListener notification.
type call struct {
	kind  string // assigned, revoked, lost
	parts []pipeline.TopicPartition
}

// recListener records notifications, and on PartitionsRevoked commits the
// next offset to read of each revoked partition it saw messages of, through
// the source, as the pipeline does.
type recListener struct {
	src *Source[string, string]

	mu         sync.Mutex
	calls      []call
	owned      map[pipeline.TopicPartition]bool
	next       map[pipeline.TopicPartition]int64
	commitErrs []error
	onAssign   func([]pipeline.TopicPartition)
	onLost     func([]pipeline.TopicPartition)
}

func newListener(src *Source[string, string]) *recListener {
	return &recListener{src: src, owned: map[pipeline.TopicPartition]bool{}, next: map[pipeline.TopicPartition]int64{}}
}

func (l *recListener) record(kind string, parts []pipeline.TopicPartition) {
	l.calls = append(l.calls, call{kind: kind, parts: append([]pipeline.TopicPartition(nil), parts...)})
	for _, tp := range parts {
		if kind == "assigned" {
			l.owned[tp] = true
		} else {
			delete(l.owned, tp)
		}
	}
}

func (l *recListener) PartitionsAssigned(committed []pipeline.Offset) {
	parts := offsetPartitions(committed)
	l.mu.Lock()
	l.record("assigned", parts)
	hook := l.onAssign
	l.mu.Unlock()
	if hook != nil {
		hook(parts)
	}
}

func (l *recListener) PartitionsRevoked(parts []pipeline.TopicPartition) {
	l.mu.Lock()
	var offs []pipeline.Offset
	for _, tp := range parts {
		if n, ok := l.next[tp]; ok {
			offs = append(offs, pipeline.Offset{TopicPartition: tp, Offset: n})
		}
	}
	l.mu.Unlock()
	// Commit outside the lock, synchronously, as the pipeline does.
	var err error
	if len(offs) > 0 {
		err = l.src.Commit(context.Background(), offs)
	}
	l.mu.Lock()
	if err != nil {
		l.commitErrs = append(l.commitErrs, err)
	}
	l.record("revoked", parts)
	for _, tp := range parts {
		delete(l.next, tp)
	}
	l.mu.Unlock()
}

func (l *recListener) PartitionsLost(parts []pipeline.TopicPartition) {
	l.mu.Lock()
	l.record("lost", parts)
	hook := l.onLost
	l.mu.Unlock()
	if hook != nil {
		hook(parts)
	}
}

// handled records that msg finished: its partition's next offset moves on.
// A message of a partition the listener does not own (revoked or lost while
// a PollBatch had it in hand) is an error.
func (l *recListener) handled(msg *pipeline.Message[string, string]) {
	l.mu.Lock()
	if !l.owned[msg.TopicPartition()] {
		l.commitErrs = append(l.commitErrs, fmt.Errorf("polled %s of a partition not owned", msg))
	}
	l.next[msg.TopicPartition()] = msg.Offset + 1
	l.mu.Unlock()
}

func (l *recListener) ownedSet() map[pipeline.TopicPartition]bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[pipeline.TopicPartition]bool, len(l.owned))
	for tp := range l.owned {
		out[tp] = true
	}
	return out
}

func (l *recListener) callsCopy() []call {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]call(nil), l.calls...)
}

func (l *recListener) errs() []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]error(nil), l.commitErrs...)
}

// member runs a Source's poll loop on its own goroutine, as the pipeline's
// poll stage does, and closes the source on that goroutine when stopped.
type member struct {
	name string
	src  *Source[string, string]
	l    *recListener

	mu   sync.Mutex
	msgs []*pipeline.Message[string, string]

	stop     chan struct{}
	done     chan struct{}
	pollErr  error
	closeErr error
}

func startMember(t *testing.T, name string, cfg *ckafka.ConfigMap, topic string) *member {
	t.Helper()
	src := newStringSource(t, cfg, topic, WithLogger(testLogger(t).With("member", name)))
	m := &member{name: name, src: src, l: newListener(src), stop: make(chan struct{}), done: make(chan struct{})}
	require.NoError(t, src.Subscribe(m.l))
	go m.run()
	t.Cleanup(m.close)
	return m
}

func (m *member) run() {
	defer close(m.done)
	defer func() { m.closeErr = m.src.Close() }()
	for {
		select {
		case <-m.stop:
			return
		default:
		}
		// PollBatch, as the pipeline's poll stage calls it: a rebalance
		// served in the middle of a batch must take the given-up
		// partitions' messages out.
		batch, err := m.src.PollBatch(20*time.Millisecond, nil, 64, 0)
		if err != nil {
			m.pollErr = err
			return
		}
		for _, msg := range batch {
			m.mu.Lock()
			m.msgs = append(m.msgs, msg)
			m.mu.Unlock()
			m.l.handled(msg)
		}
	}
}

// close stops the poll loop and closes the source (once).
func (m *member) close() {
	select {
	case <-m.stop:
	default:
		close(m.stop)
	}
	<-m.done
	// Close may time out and leave the consumer closing in the background:
	// wait for it, so that no goroutine outlives the test.
	<-m.src.Closed()
}

func (m *member) messages() []*pipeline.Message[string, string] {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]*pipeline.Message[string, string](nil), m.msgs...)
}

// count returns the number of messages received from partitions in tps (all if nil).
func (m *member) count(tps map[pipeline.TopicPartition]bool) int {
	n := 0
	for _, msg := range m.messages() {
		if tps == nil || tps[msg.TopicPartition()] {
			n++
		}
	}
	return n
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func tps(topic string, partitions ...int32) []pipeline.TopicPartition {
	out := make([]pipeline.TopicPartition, len(partitions))
	for i, p := range partitions {
		out[i] = pipeline.TopicPartition{Topic: topic, Partition: p}
	}
	return out
}

func set(parts ...pipeline.TopicPartition) map[pipeline.TopicPartition]bool {
	out := map[pipeline.TopicPartition]bool{}
	for _, p := range parts {
		out[p] = true
	}
	return out
}

func groupName(t *testing.T) string { return fmt.Sprintf("g-%s-%d", t.Name(), time.Now().UnixNano()) }
