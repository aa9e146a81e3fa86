package franz_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"
	"go.uber.org/goleak"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka/franz"
	"github.com/parallafka/parallafka/pipeline"
)

// The transactional pipeline over franz: what read_committed readers of
// the outputs see, whatever happens to the members.

// verifyNoLeaks returns the check, deferred at a test's start, that no
// goroutine of the test's clients is left: those of the embedded broker
// serving connections of the cluster's admin client, which lives on
// until the test's cleanup, are not the clients'.
func verifyNoLeaks(t *testing.T) func() {
	current := goleak.IgnoreCurrent()
	return func() {
		goleak.VerifyNone(t, current,
			goleak.IgnoreAnyFunction("github.com/twmb/franz-go/pkg/kfake.(*clientConn).read"),
			goleak.IgnoreAnyFunction("github.com/twmb/franz-go/pkg/kfake.(*clientConn).read.func1"),
			goleak.IgnoreAnyFunction("github.com/twmb/franz-go/pkg/kfake.(*clientConn).write"))
	}
}

// javaMurmur2 is Kafka's Utils.murmur2, as Java clients hash keys.
func javaMurmur2(data []byte) int32 {
	const seed, m, r = uint32(0x9747b28c), uint32(0x5bd1e995), 24
	length := len(data)
	h := seed ^ uint32(length)
	for i := 0; i+4 <= length; i += 4 {
		k := uint32(data[i]) | uint32(data[i+1])<<8 | uint32(data[i+2])<<16 | uint32(data[i+3])<<24
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	rest := length &^ 3
	switch length % 4 {
	case 3:
		h ^= uint32(data[rest+2]) << 16
		fallthrough
	case 2:
		h ^= uint32(data[rest+1]) << 8
		fallthrough
	case 1:
		h ^= uint32(data[rest])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return int32(h)
}

// javaPartition is the partition a Java client's default partitioner
// gives a keyed record among n.
func javaPartition(key []byte, n int) int32 { return (javaMurmur2(key) & 0x7fffffff) % int32(n) }

// The test's murmur2 is Kafka's (vectors of Kafka's UtilsTest.testMurmur2).
func TestJavaMurmur2(t *testing.T) {
	for key, want := range map[string]int32{
		"21": -973932308, "foobar": -790332482, "a-little-bit-long-string": -985981536,
		"a-little-bit-longer-string": -1486304829, "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971, "abc": 479470107,
	} {
		assert.Equal(t, want, javaMurmur2([]byte(key)), "murmur2(%q)", key)
	}
}

// placedKeys are the input keys whose outputs a handler sends to an
// explicit partition (pipeline.Record.Partition); the others' go where
// Java clients would put them.
func placedPartition(key string) *int32 {
	if n, _ := strconv.Atoi(strings.TrimPrefix(key, "k")); n%5 == 0 {
		p := int32(n % 2)
		return &p
	}
	return nil
}

// echoTo returns a transactional handler that produces one output per
// input to topic: the input's key and value.
func echoTo(topic string) parallafka.Handler[string, string] {
	return func(ctx context.Context, m *parallafka.Message[string, string]) error {
		return parallafka.Produce(ctx, m, pipeline.Record{Topic: topic, Key: m.RawKey, Value: []byte(m.Value), Partition: placedPartition(m.Key)})
	}
}

// newTransactor builds a Transactor over src with transactional id id.
func newTransactor(t testing.TB, c *cluster, src *franz.Source[string, string], id string, extra ...kgo.Opt) *franz.Transactor {
	t.Helper()
	opts := append([]kgo.Opt{kgo.SeedBrokers(c.brokers...), kgo.TransactionalID(id)}, extra...)
	tx, err := franz.NewTransactor(src, opts, franz.WithLogger(testLogger(t)))
	require.NoError(t, err)
	return tx
}

// readCommitted reads topic with isolation.level=read_committed until it
// holds want records and then nothing more came for quiet.
func readCommitted(t testing.TB, c *cluster, topic string, want int, quiet time.Duration) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.brokers...), kgo.DisableClientMetrics(), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.FetchMaxWait(200*time.Millisecond))
	require.NoError(t, err)
	defer cl.Close()
	var out []*kgo.Record
	deadline := time.Now().Add(waitTimeout)
	last := time.Now()
	for time.Now().Before(deadline) {
		if len(out) >= want && time.Since(last) >= quiet {
			return out
		}
		ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
		fs := cl.PollFetches(ctx)
		cancel()
		fs.EachRecord(func(r *kgo.Record) {
			out = append(out, r)
			last = time.Now()
		})
	}
	t.Errorf("read_committed: %d records of %s after %v, want %d", len(out), topic, waitTimeout, want)
	return out
}

// checkExactlyOnce requires in outs (a read_committed read) the output of
// each of the n inputs ("k<i mod keys>" / "<key>/<seq>") exactly once,
// each key's in the order of their inputs, in the partition Java clients
// choose for the key (or the one the handler named).
func checkExactlyOnce(t *testing.T, outs []*kgo.Record, n, keys, outPartitions int) {
	t.Helper()
	seen := make(map[string]int)
	next := make(map[string]int) // key → next seq expected
	wrongPlace, outOfOrder := 0, 0
	for _, r := range outs {
		key := string(r.Key)
		seen[string(r.Value)]++
		want := javaPartition(r.Key, outPartitions)
		if p := placedPartition(key); p != nil {
			want = *p
		}
		if r.Partition != want {
			wrongPlace++
		}
		_, s, _ := strings.Cut(string(r.Value), "/")
		seq, _ := strconv.Atoi(s)
		if seen[string(r.Value)] == 1 {
			if seq != next[key] && outOfOrder < 5 {
				t.Errorf("key %s: output of seq %d where %d was due", key, seq, next[key])
				outOfOrder++
			}
			next[key] = seq + 1
		}
	}
	dups := 0
	for v, c := range seen {
		if c > 1 {
			if dups < 5 {
				t.Errorf("output %s seen %d times", v, c)
			}
			dups++
		}
	}
	assert.Zero(t, dups, "inputs with more than one output")
	assert.Equal(t, n, len(seen), "inputs with an output")
	assert.Zero(t, wrongPlace, "outputs not in the partition Java clients (or the handler) chose")
	for k := range keys {
		key := fmt.Sprintf("k%d", k)
		assert.Equal(t, n/keys, next[key], "key %s: outputs", key)
	}
}

// committedToEnd reports whether group committed every partition of topic
// to its end.
func committedToEnd(t testing.TB, c *cluster, group, topic string, partitions int) bool {
	ends := c.endOffsets(t, topic, partitions)
	got := groupOffsets(c, group, topic)
	for p, end := range ends {
		if got[p] != end {
			return false
		}
	}
	return true
}

// groupOffsets returns group's committed offsets of topic, none while
// they cannot be read (a fresh broker's group coordinator loading).
func groupOffsets(c *cluster, group, topic string) map[int32]int64 {
	req := kmsg.NewPtrOffsetFetchRequest()
	rg := kmsg.NewOffsetFetchRequestGroup()
	rg.Group = group
	req.Groups = append(req.Groups, rg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out := make(map[int32]int64)
	resp, err := req.RequestWith(ctx, c.admin)
	if err != nil {
		return out
	}
	for _, g := range resp.Groups {
		for _, rt := range g.Topics {
			for _, rp := range rt.Partitions {
				if rt.Topic == topic && rp.ErrorCode == 0 && rp.Offset >= 0 {
					out[rp.Partition] = rp.Offset
				}
			}
		}
	}
	return out
}

// A pipeline over a franz Source with a Transactor writes every input's
// output exactly once, as read_committed readers see them, in key order,
// where Java clients put them; the group's offsets reach the end. On the
// embedded broker it runs with KIP-890 part 2 (transaction.version 2:
// TxnOffsetCommit v5+ adds the group, v6 names topics by ID) and without
// (transaction.version 0: AddOffsetsToTxn, TxnOffsetCommit v4 at most),
// and checks what went on the wire.
func TestTransactionsExactlyOnce(t *testing.T) {
	for _, tv := range []int16{2, 0} {
		t.Run(fmt.Sprintf("tv%d", tv), func(t *testing.T) { testExactlyOnce(t, tv) }) // transaction.version
	}
}

func testExactlyOnce(t *testing.T, tv int16) {
	const partitions, outPartitions, n, keys = 4, 3, 3000, 60
	c, topic := newCluster(t, partitions)
	var addOffsets, txnCommits atomic.Int32
	var txnCommitVersions sync.Map
	if c.fake != nil {
		if tv != 2 {
			c.setTransactionVersion(t, tv)
		}
		c.fake.ControlKey(int16(kmsg.AddOffsetsToTxn), func(kmsg.Request) (kmsg.Response, error, bool) {
			c.fake.KeepControl()
			addOffsets.Add(1)
			return nil, nil, false
		})
		c.fake.ControlKey(int16(kmsg.TxnOffsetCommit), func(r kmsg.Request) (kmsg.Response, error, bool) {
			c.fake.KeepControl()
			txnCommits.Add(1)
			txnCommitVersions.Store(r.GetVersion(), true)
			return nil, nil, false
		})
	} else if tv != 2 {
		t.Skip("needs the embedded broker, to set transaction.version")
	}
	defer verifyNoLeaks(t)()
	out := topic + "-out"
	c.createTopic(t, out, outPartitions)
	c.produce(t, topic, n, keys)
	group := "g-" + topic
	src := newSource(t, c, group, topic, nil)
	tx := newTransactor(t, c, src, "tx-"+topic)
	defer func() { assert.NoError(t, tx.Close()) }()
	echo := echoTo(out)
	m := startMember(t, src, func(ctx context.Context, m *parallafka.Message[string, string]) error {
		time.Sleep(time.Millisecond) // many transactions, not one
		return echo(ctx, m)
	}, parallafka.WithTransactions(tx), parallafka.WithMaxConcurrency(8), parallafka.WithCommitInterval(50*time.Millisecond))
	waitFor(t, waitTimeout, "the group's offsets at the end", func() bool { return committedToEnd(t, c, group, topic, partitions) })
	require.NoError(t, m.stop())
	checkExactlyOnce(t, readCommitted(t, c, out, n, time.Second), n, keys, outPartitions)
	if c.fake == nil {
		return
	}
	var versions []int16
	txnCommitVersions.Range(func(v, _ any) bool { versions = append(versions, v.(int16)); return true })
	t.Logf("%d TxnOffsetCommit requests (versions %v), %d AddOffsetsToTxn", txnCommits.Load(), versions, addOffsets.Load())
	require.GreaterOrEqual(t, txnCommits.Load(), int32(3))
	if tv >= 2 {
		assert.Zero(t, addOffsets.Load(), "KIP-890 part 2: no AddOffsetsToTxn")
		assert.Equal(t, []int16{6}, versions, "TxnOffsetCommit v6, with topic IDs")
	} else {
		assert.Equal(t, txnCommits.Load(), addOffsets.Load(), "an AddOffsetsToTxn before each TxnOffsetCommit")
		for _, v := range versions {
			assert.LessOrEqual(t, v, int16(4), "TxnOffsetCommit below KIP-890 part 2")
		}
	}
}

// setTransactionVersion sets the embedded cluster's transaction.version.
func (c *cluster) setTransactionVersion(t testing.TB, level int16) {
	t.Helper()
	req := kmsg.NewPtrUpdateFeaturesRequest()
	fu := kmsg.NewUpdateFeaturesRequestFeatureUpdate()
	fu.Feature = "transaction.version"
	fu.MaxVersionLevel = level
	fu.UpgradeType = 2 // safe downgrade
	req.FeatureUpdates = append(req.FeatureUpdates, fu)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	resp, err := req.RequestWith(ctx, c.admin)
	require.NoError(t, err)
	require.NoError(t, kerr.ErrorForCode(resp.ErrorCode))
	for _, res := range resp.Results {
		require.NoError(t, kerr.ErrorForCode(res.ErrorCode), res.Feature)
	}
}

// A member killed mid-run (its producer gone, at a moment when a
// transaction it wrote to is still open on the embedded broker) leaves
// nothing of its unfinished transaction visible; a second member goes on
// from its last committed transaction: each output once.
func TestTransactionsMemberKilled(t *testing.T) {
	const partitions, outPartitions, n, keys = 4, 3, 3000, 60
	c, topic := newCluster(t, partitions)
	defer verifyNoLeaks(t)()
	out := topic + "-out"
	c.createTopic(t, out, outPartitions)
	c.produce(t, topic, n, keys)
	group := "g-" + topic
	txnA := "tx-A-" + topic
	handled := new(atomic.Int64)
	echo := echoTo(out)
	handler := func(ctx context.Context, m *parallafka.Message[string, string]) error {
		time.Sleep(time.Millisecond)
		handled.Add(1)
		return echo(ctx, m)
	}
	srcA := newSource(t, c, group, topic, nil)
	txA := newTransactor(t, c, srcA, txnA, kgo.TransactionTimeout(3*time.Second))
	a := startMember(t, srcA, handler, parallafka.WithTransactions(txA),
		parallafka.WithMaxConcurrency(8), parallafka.WithCommitInterval(50*time.Millisecond))
	waitFor(t, waitTimeout, "A to commit some transactions", func() bool {
		committed := 0
		for _, off := range groupOffsets(c, group, topic) {
			committed += int(off)
		}
		return committed >= n/4
	})
	if c.fake != nil {
		// Hold A's next commit unanswered: its transaction stays open.
		held := make(chan struct{})
		var once sync.Once
		c.fake.ControlKey(int16(kmsg.EndTxn), func(r kmsg.Request) (kmsg.Response, error, bool) {
			req := r.(*kmsg.EndTxnRequest)
			if req.TransactionalID != txnA || !req.Commit {
				c.fake.KeepControl()
				return nil, nil, false
			}
			once.Do(func() { close(held) })
			return nil, nil, true // no answer, nothing done
		})
		select {
		case <-held:
		case <-time.After(waitTimeout):
			t.Fatal("A's commit did not come")
		}
	}
	// The kill: A's producer is gone; A stops with a fatal error and
	// commits nothing more.
	txA.Client().Close()
	select {
	case <-a.done:
	case <-time.After(waitTimeout):
		t.Fatal("A did not stop")
	}
	t.Logf("A stopped after %d handled: %v", handled.Load(), a.err)
	require.ErrorIs(t, a.err, pipeline.ErrTransactionFatal)
	require.NoError(t, txA.Close())

	srcB := newSource(t, c, group, topic, nil)
	txB := newTransactor(t, c, srcB, "tx-B-"+topic)
	defer func() { assert.NoError(t, txB.Close()) }()
	b := startMember(t, srcB, handler, parallafka.WithTransactions(txB),
		parallafka.WithMaxConcurrency(8), parallafka.WithCommitInterval(50*time.Millisecond))
	waitFor(t, waitTimeout, "the group's offsets at the end", func() bool { return committedToEnd(t, c, group, topic, partitions) })
	require.NoError(t, b.stop())
	checkExactlyOnce(t, readCommitted(t, c, out, n, time.Second), n, keys, outPartitions)
}

// txnListener is a pipeline.RebalanceListener that records assignments.
type txnListener struct {
	mu       sync.Mutex
	assigned map[pipeline.TopicPartition]bool
}

func (l *txnListener) PartitionsAssigned(offs []pipeline.Offset) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, off := range offs {
		l.assigned[off.TopicPartition] = true
	}
}

func (l *txnListener) PartitionsRevoked(tps []pipeline.TopicPartition) { l.drop(tps) }
func (l *txnListener) PartitionsLost(tps []pipeline.TopicPartition)    { l.drop(tps) }

func (l *txnListener) drop(tps []pipeline.TopicPartition) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, tp := range tps {
		delete(l.assigned, tp)
	}
}

func (l *txnListener) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.assigned)
}

// A zombie: a member that owned the partitions, whose group moved on
// without it (it did not answer the rebalance within its rebalance
// timeout) while it still believes it owns them, cannot commit a
// transaction: the group refuses its generation, the transaction is
// aborted, and nothing of it is visible.
func TestTransactionsZombieFenced(t *testing.T) {
	const partitions = 2
	c, topic := newCluster(t, partitions)
	defer verifyNoLeaks(t)()
	out := topic + "-out"
	c.createTopic(t, out, 1)
	c.produce(t, topic, 100, 10)
	group := "g-" + topic
	eager := []kgo.Opt{kgo.Balancers(kgo.RangeBalancer()), kgo.RebalanceTimeout(3 * time.Second), kgo.SessionTimeout(10 * time.Second)}
	srcA := newSource(t, c, group, topic, eager)
	tx := newTransactor(t, c, srcA, "tx-zombie-"+topic)
	defer func() { assert.NoError(t, tx.Close()) }()
	l := &txnListener{assigned: make(map[pipeline.TopicPartition]bool)}
	require.NoError(t, srcA.Subscribe(l))
	var polling atomic.Bool
	polling.Store(true)
	stopPoll := make(chan struct{})
	pollDone := make(chan struct{})
	go func() { // the member's poll loop, paused while polling is false
		defer close(pollDone)
		for {
			select {
			case <-stopPoll:
				return
			default:
			}
			if !polling.Load() {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			_, _ = srcA.Poll(50 * time.Millisecond)
		}
	}()
	defer func() {
		polling.Store(true)
		close(stopPoll)
		<-pollDone
		assert.NoError(t, srcA.Close())
	}()
	waitFor(t, waitTimeout, "A to own every partition", func() bool { return l.count() == partitions })
	generation := func() int32 { _, g := srcA.Client().GroupMetadata(); return g }
	genA := generation()

	// A stops polling: it cannot answer a rebalance (its revoke waits for
	// a Poll). B joins; the group waits for A up to the rebalance timeout,
	// then goes on without it, and B owns every partition.
	polling.Store(false)
	var bOwns atomic.Int32
	b, err := kgo.NewClient(kgo.SeedBrokers(c.brokers...), kgo.DisableClientMetrics(), kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(topic), kgo.Balancers(kgo.RangeBalancer()), kgo.DisableAutoCommit(),
		kgo.RebalanceTimeout(3*time.Second), // the group waits for its members up to the longest
		kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			t.Logf("B assigned %v; A's generation %d", m, generation())
			bOwns.Add(int32(len(m[topic])))
		}))
	require.NoError(t, err)
	defer b.Close()
	waitFor(t, waitTimeout, "B to own every partition", func() bool { return bOwns.Load() == partitions })
	require.Equal(t, genA, generation(), "A has not learnt of the new generation")

	offsets := []pipeline.Offset{{TopicPartition: pipeline.TopicPartition{Topic: topic, Partition: 0}, Offset: 50, Metadata: "zombie"}}
	records := []pipeline.Record{{Topic: out, Key: []byte("k"), Value: []byte("from the zombie")}}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	err = tx.Transact(ctx, records, offsets)
	t.Logf("the zombie's transaction: %v", err)
	require.Error(t, err)
	assert.ErrorIs(t, err, pipeline.ErrNotOwned)
	assert.NotErrorIs(t, err, pipeline.ErrTransactionFatal, "the producer can go on")

	assert.Empty(t, readCommitted(t, c, out, 0, time.Second), "nothing of the zombie's transaction is visible")
	_, ok := c.committed(t, group, topic)[0]
	assert.False(t, ok, "no offset committed for partition 0")
}

// Two Transactors with the same transactional id: the newer fences the
// older, whose pipeline stops with ErrTransactionFatal.
func TestTransactionsFencedByNewerProducer(t *testing.T) {
	const partitions, n, keys = 2, 2000, 20
	c, topic := newCluster(t, partitions)
	defer verifyNoLeaks(t)()
	out := topic + "-out"
	c.createTopic(t, out, 2)
	c.produce(t, topic, n, keys)
	group := "g-" + topic
	id := "tx-same-" + topic
	srcA := newSource(t, c, group, topic, nil)
	txA := newTransactor(t, c, srcA, id)
	defer func() { assert.NoError(t, txA.Close()) }()
	slow := echoTo(out)
	a := startMember(t, srcA, func(ctx context.Context, m *parallafka.Message[string, string]) error {
		time.Sleep(2 * time.Millisecond)
		return slow(ctx, m)
	}, parallafka.WithTransactions(txA), parallafka.WithCommitInterval(50*time.Millisecond))
	waitFor(t, waitTimeout, "A to commit a transaction", func() bool { return len(groupOffsets(c, group, topic)) > 0 })

	srcB := newSource(t, c, "g-other-"+topic, topic, nil)
	defer func() { assert.NoError(t, srcB.Close()) }()
	txB := newTransactor(t, c, srcB, id) // initializes the id: fences A
	defer func() { assert.NoError(t, txB.Close()) }()

	select {
	case <-a.done:
	case <-time.After(waitTimeout):
		t.Fatal("A did not stop")
	}
	t.Logf("A stopped: %v", a.err)
	require.ErrorIs(t, a.err, pipeline.ErrTransactionFatal)
	err := txA.Transact(context.Background(), []pipeline.Record{{Topic: out, Value: []byte("x")}}, nil)
	assert.ErrorIs(t, err, pipeline.ErrTransactionFatal, "fatal stays fatal")
	assert.True(t, errors.Is(a.err, pipeline.ErrTransactionFatal))
}

// A commit whose answer never comes (UNKNOWN_SERVER_ERROR, the EndTxn
// not carried out) leaves the outcome unknown: the Transactor settles it
// (reloading the producer id aborts the transaction) and reports it
// aborted; the pipeline tries again, and each output is still written
// once.
func TestTransactionsCommitWithoutAnswer(t *testing.T) {
	const partitions, outPartitions, n, keys = 3, 2, 1500, 30
	c, topic := newCluster(t, partitions)
	if c.fake == nil {
		t.Skip("needs the embedded broker, to lose an answer")
	}
	defer verifyNoLeaks(t)()
	out := topic + "-out"
	c.createTopic(t, out, outPartitions)
	c.produce(t, topic, n, keys)
	group := "g-" + topic
	id := "tx-" + topic
	var commits, lost atomic.Int32
	c.fake.ControlKey(int16(kmsg.EndTxn), func(r kmsg.Request) (kmsg.Response, error, bool) {
		req := r.(*kmsg.EndTxnRequest)
		if req.TransactionalID != id || !req.Commit || commits.Add(1)%3 != 2 {
			c.fake.KeepControl()
			return nil, nil, false
		}
		c.fake.KeepControl()
		lost.Add(1)
		resp := req.ResponseKind().(*kmsg.EndTxnResponse)
		resp.ErrorCode = kerr.UnknownServerError.Code
		return resp, nil, true
	})
	src := newSource(t, c, group, topic, nil)
	tx := newTransactor(t, c, src, id)
	defer func() { assert.NoError(t, tx.Close()) }()
	echo := echoTo(out)
	m := startMember(t, src, func(ctx context.Context, m *parallafka.Message[string, string]) error {
		time.Sleep(time.Millisecond)
		return echo(ctx, m)
	}, parallafka.WithTransactions(tx), parallafka.WithMaxConcurrency(8), parallafka.WithCommitInterval(50*time.Millisecond))
	waitFor(t, waitTimeout, "the group's offsets at the end", func() bool { return committedToEnd(t, c, group, topic, partitions) })
	require.NoError(t, m.stop())
	t.Logf("%d commits, %d without an answer", commits.Load(), lost.Load())
	require.Positive(t, lost.Load())
	checkExactlyOnce(t, readCommitted(t, c, out, n, time.Second), n, keys, outPartitions)
}

// NewTransactor refuses the options that break transactions, and a
// cluster it cannot reach within the startup timeout.
func TestNewTransactorRefuses(t *testing.T) {
	c, topic := newCluster(t, 1)
	defer verifyNoLeaks(t)()
	src := newSource(t, c, "g-"+topic, topic, nil)
	defer func() { assert.NoError(t, src.Close()) }()
	seed := kgo.SeedBrokers(c.brokers...)
	for name, opts := range map[string][]kgo.Opt{
		"no transactional id": {seed},
		"consumer group":      {seed, kgo.TransactionalID("x"), kgo.ConsumerGroup("g")},
		"manual flushing":     {seed, kgo.TransactionalID("x"), kgo.ManualFlushing()},
	} {
		_, err := franz.NewTransactor(src, opts, franz.WithLogger(testLogger(t)))
		assert.ErrorIs(t, err, franz.ErrUnsafeConfig, name)
	}
	_, err := franz.NewTransactor[string, string](nil, []kgo.Opt{seed, kgo.TransactionalID("x")})
	assert.Error(t, err)
	_, err = franz.NewTransactor(src, []kgo.Opt{kgo.SeedBrokers("127.0.0.1:1"), kgo.TransactionalID("x")},
		franz.WithLogger(testLogger(t)), franz.WithStartupTimeout(time.Second))
	assert.Error(t, err, "no broker")

	// A transaction timeout the pipeline's commit interval would outlast.
	tx, err := franz.NewTransactor(src, []kgo.Opt{seed, kgo.TransactionalID("short"), kgo.TransactionTimeout(time.Second)},
		franz.WithLogger(testLogger(t)))
	require.NoError(t, err)
	defer tx.Close()
	assert.Equal(t, time.Second, tx.TransactionTimeout())
	_, err = parallafka.New(src, parallafka.WithTransactions(tx))
	assert.ErrorContains(t, err, "transaction timeout (1s) must be longer than the commit interval (1s)")
}

// Two transactional members share a group under each protocol: A starts
// alone, B joins mid-stream (A's revokes commit their outputs in
// transactions from inside the rebalance callback, cooperative and
// KIP-848 alike), then A leaves: each output once, in key order.
func TestTransactionsAcrossRebalances(t *testing.T) {
	for _, proto := range protocols {
		t.Run(proto.name, func(t *testing.T) {
			const partitions, outPartitions, n, keys = 6, 3, 3600, 60 // n a multiple of keys
			c, topic := newCluster(t, partitions)
			defer verifyNoLeaks(t)()
			out := topic + "-out"
			c.createTopic(t, out, outPartitions)
			c.produce(t, topic, n, keys)
			group := "g-" + topic
			var handled, byB atomic.Int64
			echo := echoTo(out)
			handlerOf := func(name string) parallafka.Handler[string, string] {
				return func(ctx context.Context, m *parallafka.Message[string, string]) error {
					time.Sleep(time.Millisecond)
					if name == "b" {
						byB.Add(1)
					}
					// A slows down past a quarter until B got partitions,
					// so that the rebalance happens mid-stream.
					if name == "a" && handled.Load() >= n/4 && byB.Load() == 0 {
						time.Sleep(20 * time.Millisecond)
					}
					handled.Add(1)
					return echo(ctx, m)
				}
			}
			opts := []parallafka.Option{parallafka.WithMaxConcurrency(8), parallafka.WithCommitInterval(50 * time.Millisecond)}
			srcA := newSource(t, c, group, topic, proto.opts)
			txA := newTransactor(t, c, srcA, "tx-a-"+topic)
			defer func() { assert.NoError(t, txA.Close()) }()
			a := startMember(t, srcA, handlerOf("a"), append(opts, parallafka.WithTransactions(txA))...)
			waitFor(t, waitTimeout, "a quarter handled", func() bool { return handled.Load() >= n/4 })
			srcB := newSource(t, c, group, topic, proto.opts)
			txB := newTransactor(t, c, srcB, "tx-b-"+topic)
			defer func() { assert.NoError(t, txB.Close()) }()
			b := startMember(t, srcB, handlerOf("b"), append(opts, parallafka.WithTransactions(txB))...)
			waitFor(t, waitTimeout, "B handling, half handled", func() bool { return byB.Load() > 0 && handled.Load() >= n/2 })
			require.NoError(t, a.stop())
			waitFor(t, waitTimeout, "the group's offsets at the end", func() bool { return committedToEnd(t, c, group, topic, partitions) })
			require.NoError(t, b.stop())
			checkExactlyOnce(t, readCommitted(t, c, out, n, time.Second), n, keys, outPartitions)
		})
	}
}

// A cluster without transactions: NewTransactor says so at once, with
// ErrTransactionsUnsupported, and with a cluster whose TxnOffsetCommit
// predates KIP-447 (it cannot commit as a group member) too.
func TestNewTransactorWithoutTransactions(t *testing.T) {
	for name, set := range map[string]func(*kversion.Versions){
		"no transactions": func(vs *kversion.Versions) {
			for _, k := range []kmsg.Key{kmsg.InitProducerID, kmsg.AddPartitionsToTxn, kmsg.AddOffsetsToTxn, kmsg.EndTxn, kmsg.TxnOffsetCommit} {
				vs.SetMaxKeyVersion(k.Int16(), -1)
			}
		},
		"before KIP-447": func(vs *kversion.Versions) { vs.SetMaxKeyVersion(kmsg.TxnOffsetCommit.Int16(), 2) },
	} {
		t.Run(name, func(t *testing.T) {
			vs := kversion.Stable()
			set(vs)
			c, topic := newCluster(t, 1, kfake.MaxVersions(vs))
			defer verifyNoLeaks(t)()
			src := newSource(t, c, "g-"+topic, topic, nil)
			defer func() { assert.NoError(t, src.Close()) }()
			start := time.Now()
			tx, err := franz.NewTransactor(src, []kgo.Opt{kgo.SeedBrokers(c.brokers...), kgo.TransactionalID("x")},
				franz.WithLogger(testLogger(t)))
			if err == nil {
				tx.Close()
			}
			require.ErrorIs(t, err, franz.ErrTransactionsUnsupported)
			t.Logf("after %v: %v", time.Since(start).Round(time.Millisecond), err)
		})
	}
}
