package franz_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/goleak"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka/franz"
	"github.com/parallafka/parallafka/pipeline"
)

// TestMain fails the package's tests if any of them leaves a goroutine
// running: a Source, its client and the test's embedded broker must all be
// gone when a test ends. (kfake's connection goroutines end a moment after
// Cluster.Close returns; goleak's retries wait for them.)
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitTimeout bounds every wait of these tests.
const waitTimeout = 60 * time.Second

// brokersEnv names a real Kafka to run against (as package kafka's
// integration tests do); unset, each test starts an embedded kfake broker.
const brokersEnv = "KAFKA_BROKERS"

// cluster is the Kafka a test runs against.
type cluster struct {
	fake    *kfake.Cluster // nil for a real broker
	brokers []string
	admin   *kgo.Client
}

var topicSeq atomic.Int64

// newCluster starts an embedded broker (or points at KAFKA_BROKERS) and
// creates a topic of the given partitions, whose name it returns. A
// cleanup closes everything.
func newCluster(t testing.TB, partitions int, fakeOpts ...kfake.Opt) (*cluster, string) {
	t.Helper()
	c := &cluster{}
	if env := strings.TrimSpace(os.Getenv(brokersEnv)); env != "" && len(fakeOpts) == 0 {
		c.brokers = strings.Split(env, ",")
	} else {
		opts := append([]kfake.Opt{kfake.NumBrokers(1), kfake.Ports(0)}, fakeOpts...)
		fake, err := kfake.NewCluster(opts...)
		require.NoError(t, err)
		c.fake = fake
		c.brokers = fake.ListenAddrs()
		t.Cleanup(fake.Close)
	}
	admin, err := kgo.NewClient(kgo.SeedBrokers(c.brokers...), kgo.DisableClientMetrics())
	require.NoError(t, err)
	c.admin = admin
	t.Cleanup(admin.Close)
	topic := fmt.Sprintf("franz-%s-%d-%d", strings.ReplaceAll(t.Name(), "/", "-"), time.Now().UnixNano()%1e6, topicSeq.Add(1))
	c.createTopic(t, topic, partitions)
	return c, topic
}

func (c *cluster) createTopic(t testing.TB, topic string, partitions int) {
	t.Helper()
	req := kmsg.NewPtrCreateTopicsRequest()
	rt := kmsg.NewCreateTopicsRequestTopic()
	rt.Topic = topic
	rt.NumPartitions = int32(partitions)
	rt.ReplicationFactor = 1
	req.Topics = append(req.Topics, rt)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	resp, err := req.RequestWith(ctx, c.admin)
	require.NoError(t, err)
	for _, t2 := range resp.Topics {
		if err := kerr.ErrorForCode(t2.ErrorCode); err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
			require.NoError(t, err)
		}
	}
}

// produce writes n records to topic: key "k<i mod keys>", value
// "<key>/<seq>" where seq counts the key's records from 0.
func (c *cluster) produce(t testing.TB, topic string, n, keys int) {
	t.Helper()
	recs := make([]*kgo.Record, n)
	for i := range recs {
		key := fmt.Sprintf("k%d", i%keys)
		recs[i] = &kgo.Record{Topic: topic, Key: []byte(key), Value: fmt.Appendf(nil, "%s/%d", key, i/keys)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	require.NoError(t, c.admin.ProduceSync(ctx, recs...).FirstErr())
}

// produceTo writes perPartition records to each of topic's partitions,
// in one request.
func (c *cluster) produceTo(t testing.TB, topic string, partitions, perPartition int) {
	t.Helper()
	p, err := kgo.NewClient(kgo.SeedBrokers(c.brokers...), kgo.DisableClientMetrics(),
		kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.ProducerLinger(50*time.Millisecond))
	require.NoError(t, err)
	defer p.Close()
	recs := make([]*kgo.Record, 0, partitions*perPartition)
	for i := range perPartition {
		for part := range partitions {
			recs = append(recs, &kgo.Record{Topic: topic, Partition: int32(part), Key: fmt.Appendf(nil, "k%d", i), Value: []byte("v")})
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	require.NoError(t, p.ProduceSync(ctx, recs...).FirstErr())
}

// committed reads group's committed offsets and metadata of topic.
func (c *cluster) committed(t testing.TB, group, topic string) map[int32]pipeline.Offset {
	t.Helper()
	req := kmsg.NewPtrOffsetFetchRequest()
	rg := kmsg.NewOffsetFetchRequestGroup()
	rg.Group = group
	rg.Topics = nil // all topics
	req.Groups = append(req.Groups, rg)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	out := make(map[int32]pipeline.Offset)
	for _, shard := range c.admin.RequestSharded(ctx, req) {
		require.NoError(t, shard.Err)
		resp := shard.Resp.(*kmsg.OffsetFetchResponse)
		for _, g := range resp.Groups {
			for _, tp := range g.Topics {
				if tp.Topic != topic {
					continue
				}
				for _, p := range tp.Partitions {
					if p.Offset < 0 {
						continue
					}
					off := pipeline.Offset{TopicPartition: pipeline.TopicPartition{Topic: topic, Partition: p.Partition}, Offset: p.Offset}
					if p.Metadata != nil {
						off.Metadata = *p.Metadata
					}
					out[p.Partition] = off
				}
			}
		}
	}
	return out
}

// endOffsets returns the high watermark of each of topic's partitions.
func (c *cluster) endOffsets(t testing.TB, topic string, partitions int) map[int32]int64 {
	t.Helper()
	req := kmsg.NewPtrListOffsetsRequest()
	rt := kmsg.NewListOffsetsRequestTopic()
	rt.Topic = topic
	for p := range partitions {
		rp := kmsg.NewListOffsetsRequestTopicPartition()
		rp.Partition = int32(p)
		rp.Timestamp = -1
		rt.Partitions = append(rt.Partitions, rp)
	}
	req.Topics = append(req.Topics, rt)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	resp, err := req.RequestWith(ctx, c.admin)
	require.NoError(t, err)
	out := make(map[int32]int64)
	for _, t2 := range resp.Topics {
		for _, p := range t2.Partitions {
			require.NoError(t, kerr.ErrorForCode(p.ErrorCode))
			out[p.Partition] = p.Offset
		}
	}
	return out
}

// testLogger writes to the test's log when -v is given, else nowhere.
func testLogger(t testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(&testWriter{t: t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

var _ io.Writer = (*testWriter)(nil)

// newSource builds a client and a Source over topic for group, with extra
// kgo options (balancers, timeouts).
func newSource(t testing.TB, c *cluster, group, topic string, extra []kgo.Opt, opts ...franz.Option) *franz.Source[string, string] {
	t.Helper()
	kopts := append([]kgo.Opt{
		kgo.SeedBrokers(c.brokers...),
		kgo.ConsumerGroup(group),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(200 * time.Millisecond),
		kgo.HeartbeatInterval(500 * time.Millisecond),
	}, extra...)
	log := testLogger(t)
	cl, err := franz.NewClient(kopts, franz.WithLogger(log))
	require.NoError(t, err)
	src, err := franz.NewSource(cl, []string{topic}, franz.String, franz.String, opts...)
	if err != nil {
		cl.Close()
		require.NoError(t, err)
	}
	return src
}

// record is one handled message.
type record struct {
	member    string
	partition int32
	offset    int64
	key       string
	seq       int
}

// ledger records what members handled, and checks per-key order within a
// member's run of a partition.
type ledger struct {
	mu       sync.Mutex
	handled  []record
	inflight map[string]string // key -> member handling it
	problems []string
}

func newLedger() *ledger { return &ledger{inflight: make(map[string]string)} }

func (l *ledger) handler(member string, work time.Duration) parallafka.Handler[string, string] {
	return func(ctx context.Context, m *parallafka.Message[string, string]) error {
		key, seqs, _ := strings.Cut(m.Value, "/")
		seq, _ := strconv.Atoi(seqs)
		l.mu.Lock()
		if other, busy := l.inflight[key]; busy {
			l.problems = append(l.problems, fmt.Sprintf("key %s in two handlers at once (%s and %s)", key, other, member))
		}
		l.inflight[key] = member
		l.mu.Unlock()
		if work > 0 {
			time.Sleep(work)
		}
		l.mu.Lock()
		delete(l.inflight, key)
		l.handled = append(l.handled, record{member: member, partition: m.Partition, offset: m.Offset, key: key, seq: seq})
		l.mu.Unlock()
		return nil
	}
}

// distinct counts the distinct (partition, offset) pairs handled.
func (l *ledger) distinct() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	seen := make(map[[2]int64]bool)
	for _, r := range l.handled {
		seen[[2]int64{int64(r.partition), r.offset}] = true
	}
	return len(seen)
}

func (l *ledger) count(member string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.handled {
		if r.member == member {
			n++
		}
	}
	return n
}

// check verifies that all n records were handled, and that each member
// handled each key's records in order (a key's sequence never goes back
// within a member, but for a redelivery after a hand-over).
func (l *ledger) check(t testing.TB, n int) (duplicates int) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range l.problems {
		t.Error(p)
	}
	seen := make(map[[2]int64]int)
	last := make(map[[2]string]int) // member, key -> last seq
	for _, r := range l.handled {
		seen[[2]int64{int64(r.partition), r.offset}]++
		k := [2]string{r.member, r.key}
		if prev, ok := last[k]; ok && r.seq <= prev {
			// Allowed only as a redelivery: the record was handled before.
			if seen[[2]int64{int64(r.partition), r.offset}] == 1 {
				t.Errorf("member %s handled key %s seq %d after seq %d", r.member, r.key, r.seq, prev)
			}
		}
		last[k] = r.seq
	}
	if len(seen) != n {
		t.Errorf("handled %d distinct records, want %d", len(seen), n)
	}
	for _, c := range seen {
		duplicates += c - 1
	}
	return duplicates
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// member is one Parallafka consuming in the background.
type member struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error
	src    *franz.Source[string, string]
}

func startMember(t testing.TB, src *franz.Source[string, string], handler parallafka.Handler[string, string], opts ...parallafka.Option) *member {
	t.Helper()
	p, err := parallafka.New(src, append([]parallafka.Option{parallafka.WithLogger(testLogger(t))}, opts...)...)
	if err != nil {
		_ = src.Close()
		require.NoError(t, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &member{cancel: cancel, done: make(chan struct{}), src: src}
	go func() {
		defer close(m.done)
		m.err = p.Consume(ctx, handler)
	}()
	t.Cleanup(func() { m.stop() })
	return m
}

// stop cancels the member (a graceful stop) and returns Consume's error.
func (m *member) stop() error {
	m.cancel()
	<-m.done
	return m.err
}
