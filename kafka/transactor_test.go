package kafka_test

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka"
	"github.com/parallafka/parallafka/kafka/kafkatest"
	"github.com/parallafka/parallafka/pipeline"
)

// eosSetup is an input topic of n keyed records, an empty output topic,
// and a group, on cluster.
type eosSetup struct {
	cluster       *kafkatest.Cluster
	input, output string
	group         string
	n             int
	quiet         *slog.Logger
}

func newEOSSetup(t *testing.T, cluster *kafkatest.Cluster, partitions, n int) eosSetup {
	t.Helper()
	ctx := context.Background()
	s := eosSetup{cluster: cluster, input: kafkatest.UniqueTopic("orders"), output: kafkatest.UniqueTopic("totals"),
		group: kafkatest.UniqueTopic("group"), n: n, quiet: slog.New(slog.DiscardHandler)}
	require.NoError(t, cluster.CreateTopic(ctx, s.input, partitions))
	require.NoError(t, cluster.CreateTopic(ctx, s.output, partitions))
	recs := make([]kafkatest.Record, n)
	for i := range recs {
		recs[i] = kafkatest.Record{Partition: -1, Key: fmt.Appendf(nil, "k%d", i%40), Value: []byte(strconv.Itoa(i))}
	}
	require.NoError(t, cluster.Produce(ctx, s.input, recs))
	return s
}

// member makes a Source and a Transactor with transactional id txnID.
func (s eosSetup) member(t *testing.T, txnID string) (*kafka.Source[string, string], *kafka.Transactor) {
	t.Helper()
	return s.memberOf(t, txnID, "")
}

// memberOf is member under a group protocol: a classic
// partition.assignment.strategy, or "consumer" (KIP-848); "": the default.
func (s eosSetup) memberOf(t *testing.T, txnID, protocol string) (*kafka.Source[string, string], *kafka.Transactor) {
	t.Helper()
	ccfg := s.cluster.ConsumerConfig(s.group)
	delete(*ccfg, "go.logs.channel.enable")
	switch protocol {
	case "":
	case "consumer":
		delete(*ccfg, "session.timeout.ms") // the broker's, under KIP-848
		delete(*ccfg, "heartbeat.interval.ms")
		require.NoError(t, ccfg.SetKey("group.protocol", "consumer"))
	default:
		require.NoError(t, ccfg.SetKey("partition.assignment.strategy", protocol))
	}
	consumer, err := kafka.NewConsumer(ccfg, kafka.WithLogger(s.quiet))
	require.NoError(t, err)
	src, err := kafka.NewSource(consumer, []string{s.input}, kafka.String, kafka.String, kafka.WithLogger(s.quiet))
	require.NoError(t, err)
	pcfg := s.cluster.ProducerConfig()
	delete(*pcfg, "partitioner") // NewTransactor's default
	require.NoError(t, pcfg.SetKey("transactional.id", txnID))
	tx, err := kafka.NewTransactor(src, pcfg, kafka.WithLogger(s.quiet))
	require.NoError(t, err)
	t.Cleanup(func() {
		tx.Close()
		closeSource(t, src) // if Consume did not
	})
	return src, tx
}

// echo produces one output per input: same key, valued "partition@offset".
func (s eosSetup) echo(ctx context.Context, m *pipeline.Message[string, string]) error {
	return parallafka.Produce(ctx, m, pipeline.Record{Topic: s.output, Key: m.RawKey,
		Value: fmt.Appendf(nil, "%d@%d", m.Partition, m.Offset)})
}

func (s eosSetup) allCommitted(t *testing.T) bool {
	ctx := context.Background()
	end, err := s.cluster.EndOffsets(ctx, s.input)
	require.NoError(t, err)
	committed, err := s.cluster.CommittedOffsets(ctx, s.group, s.input)
	if err != nil {
		return false
	}
	for p, e := range end {
		if committed[p] != e {
			return false
		}
	}
	return true
}

// checkOutputs reads the output topic as a read_committed consumer and
// requires every input's output exactly once, each key's in input order.
func (s eosSetup) checkOutputs(t *testing.T) {
	t.Helper()
	cl, err := s.cluster.NewClient(kgo.ConsumeTopics(s.output), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	require.NoError(t, err)
	defer cl.Close()
	seen := make(map[string]int)
	last := make(map[string]int64)
	total := 0
	quietSince := time.Now()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) && (total < s.n || time.Since(quietSince) < time.Second) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		fetches := cl.PollFetches(ctx)
		cancel()
		fetches.EachRecord(func(r *kgo.Record) {
			total++
			quietSince = time.Now()
			v := string(r.Value)
			seen[v]++
			_, off, _ := strings.Cut(v, "@")
			o, _ := strconv.ParseInt(off, 10, 64)
			if prev, ok := last[string(r.Key)]; ok && prev >= o {
				t.Errorf("key %s: the output of offset %d after that of %d", r.Key, o, prev)
			}
			last[string(r.Key)] = o
		})
	}
	dups := 0
	for _, c := range seen {
		if c > 1 {
			dups++
		}
	}
	assert.Zero(t, dups, "inputs with more than one committed output")
	assert.Equal(t, s.n, len(seen), "inputs with a committed output")
}

// Every input's output is written exactly once, in key order, as a
// read_committed reader sees the output topic, and the group's offsets
// reach the end.
func TestTransactorExactlyOnce(t *testing.T) {
	s := newEOSSetup(t, kafkatest.New(t), 4, 2000)
	src, tx := s.member(t, kafkatest.UniqueTopic("txn"))
	p, err := parallafka.New(src, parallafka.WithLogger(s.quiet), parallafka.WithTransactions(tx),
		parallafka.WithCommitInterval(50*time.Millisecond))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Consume(ctx, s.echo) }()
	require.Eventually(t, func() bool { return s.allCommitted(t) }, 60*time.Second, 100*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	s.checkOutputs(t)
}

// A member that dies with a transaction open (its outputs produced, not
// committed) leaves nothing a read_committed reader sees: the next member
// with the same transactional id fences it, aborting what it left open,
// and goes on from the last committed transaction, so every output is
// still written exactly once.
func TestTransactorCrashWithOpenTransaction(t *testing.T) {
	s := newEOSSetup(t, kafkatest.New(t), 2, 1000)
	txnID := kafkatest.UniqueTopic("txn")
	src, tx := s.member(t, txnID)
	var handled atomic.Int64
	crashed := make(chan struct{})
	crashing := transactFunc(func(ctx context.Context, records []pipeline.Record, offsets []pipeline.Offset) error {
		if handled.Load() < 300 || len(records) == 0 {
			return tx.Transact(ctx, records, offsets)
		}
		// A crash: the outputs are produced in an open transaction, and
		// the process is gone before it commits.
		if err := kafka.BeginAndProduce(tx, records); err != nil {
			return err
		}
		close(crashed)
		return fmt.Errorf("crashed: %w", pipeline.ErrTransactionFatal)
	})
	p, err := parallafka.New(src, parallafka.WithLogger(s.quiet), parallafka.WithTransactions(crashing),
		parallafka.WithCommitInterval(20*time.Millisecond))
	require.NoError(t, err)
	err = p.Consume(context.Background(), func(ctx context.Context, m *pipeline.Message[string, string]) error {
		if handled.Add(1) > 300 {
			select { // the rest waits for the crash
			case <-crashed:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return s.echo(ctx, m)
	})
	require.ErrorIs(t, err, pipeline.ErrTransactionFatal)
	require.False(t, s.allCommitted(t))

	src, tx = s.member(t, txnID) // fences the first, aborting its open transaction
	p, err = parallafka.New(src, parallafka.WithLogger(s.quiet), parallafka.WithTransactions(tx),
		parallafka.WithCommitInterval(50*time.Millisecond))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Consume(ctx, s.echo) }()
	require.Eventually(t, func() bool { return s.allCommitted(t) }, 60*time.Second, 100*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	s.checkOutputs(t)
}

// A producer fenced by a newer one with the same transactional id gets
// pipeline.ErrTransactionFatal: two instances cannot both write.
func TestTransactorFencedByNewerInstance(t *testing.T) {
	s := newEOSSetup(t, kafkatest.New(t), 1, 10)
	txnID := kafkatest.UniqueTopic("txn")
	_, old := s.member(t, txnID)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, old.Transact(ctx, []pipeline.Record{{Topic: s.output, Value: []byte("first")}}, nil))
	s.group = kafkatest.UniqueTopic("group") // another consumer, the same transactional id
	_, _ = s.member(t, txnID)
	err := old.Transact(ctx, []pipeline.Record{{Topic: s.output, Value: []byte("zombie")}}, nil)
	require.ErrorIs(t, err, pipeline.ErrTransactionFatal)
}

// NewTransactor refuses a configuration without a transactional id, or
// one that turns off what transactions need.
func TestNewTransactorRefusesBadConfig(t *testing.T) {
	s := newEOSSetup(t, kafkatest.New(t, kafkatest.WithEmbedded()), 1, 1)
	src, _ := s.member(t, kafkatest.UniqueTopic("txn"))
	_, err := kafka.NewTransactor(src, s.cluster.ProducerConfig())
	require.ErrorContains(t, err, "transactional.id is required")
	cfg := s.cluster.ProducerConfig()
	require.NoError(t, cfg.SetKey("transactional.id", "x"))
	require.NoError(t, cfg.SetKey("acks", "1"))
	_, err = kafka.NewTransactor(src, cfg)
	require.ErrorIs(t, err, kafka.ErrUnsafeConfig)
	// A transaction timeout the pipeline's commit interval would outlast.
	short := s.cluster.ProducerConfig()
	require.NoError(t, short.SetKey("transactional.id", kafkatest.UniqueTopic("txn")))
	require.NoError(t, short.SetKey("transaction.timeout.ms", 1000))
	tx, err := kafka.NewTransactor(src, short)
	require.NoError(t, err)
	defer tx.Close()
	require.Equal(t, time.Second, tx.TransactionTimeout())
	_, err = parallafka.New(src, parallafka.WithTransactions(tx))
	require.ErrorContains(t, err, "transaction timeout (1s) must be longer than the commit interval (1s)")
	_, err = kafka.NewTransactor[string, string](nil, cfg)
	require.Error(t, err)
	_, err = kafka.NewTransactor(src, (*ckafka.ConfigMap)(nil))
	require.Error(t, err)
}

type transactFunc func(ctx context.Context, records []pipeline.Record, offsets []pipeline.Offset) error

func (f transactFunc) Transact(ctx context.Context, records []pipeline.Record, offsets []pipeline.Offset) error {
	return f(ctx, records, offsets)
}

// assignments records what a Source assigned, as a pipeline's listener.
type assignments struct{ n atomic.Int64 }

func (a *assignments) PartitionsAssigned(committed []pipeline.Offset) { a.n.Add(int64(len(committed))) }
func (a *assignments) PartitionsRevoked([]pipeline.TopicPartition)    {}
func (a *assignments) PartitionsLost([]pipeline.TopicPartition)       {}

// A zombie: a member that stopped polling past its max.poll.interval.ms,
// whose partition the group gave to another member meanwhile, cannot
// commit a transaction for it: neither with the group metadata it had
// (the coordinator refuses the stale generation, KIP-447) nor with what
// its consumer says now. Nothing it wrote is visible to read_committed
// readers.
func TestTransactorZombieCannotCommit(t *testing.T) {
	s := newEOSSetup(t, kafkatest.New(t), 1, 10)
	ccfg := s.cluster.ConsumerConfig(s.group)
	delete(*ccfg, "go.logs.channel.enable")
	require.NoError(t, ccfg.SetKey("max.poll.interval.ms", 7000))
	consumer, err := kafka.NewConsumer(ccfg, kafka.WithLogger(s.quiet))
	require.NoError(t, err)
	zombie, err := kafka.NewSource(consumer, []string{s.input}, kafka.String, kafka.String, kafka.WithLogger(s.quiet))
	require.NoError(t, err)
	defer closeSource(t, zombie)
	pcfg := s.cluster.ProducerConfig()
	require.NoError(t, pcfg.SetKey("transactional.id", kafkatest.UniqueTopic("txn")))
	tx, err := kafka.NewTransactor(zombie, pcfg, kafka.WithLogger(s.quiet))
	require.NoError(t, err)
	defer tx.Close()
	var a assignments
	require.NoError(t, zombie.Subscribe(&a))
	for a.n.Load() == 0 {
		_, err := zombie.Poll(100 * time.Millisecond)
		require.NoError(t, err)
	}
	stale, err := consumer.GetConsumerGroupMetadata()
	require.NoError(t, err)

	// The zombie stops polling; another member takes the partition over.
	next, _ := s.member(t, kafkatest.UniqueTopic("txn"))
	var b assignments
	require.NoError(t, next.Subscribe(&b))
	require.Eventually(t, func() bool {
		_, err := next.Poll(100 * time.Millisecond)
		require.NoError(t, err)
		return b.n.Load() > 0
	}, 60*time.Second, time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	part := pipeline.TopicPartition{Topic: s.input, Partition: 0}
	offsets := []pipeline.Offset{{TopicPartition: part, Offset: 5}}
	records := []pipeline.Record{{Topic: s.output, Value: []byte("0@0")}}
	require.Error(t, kafka.TransactAs(tx, stale, records, offsets), "with the generation it had")
	require.Error(t, tx.Transact(ctx, records, offsets), "with what its consumer says now")
	committed, err := s.cluster.CommittedOffsets(ctx, s.group, s.input)
	require.NoError(t, err)
	require.NotEqual(t, int64(5), committed[0])
	s.n = 0
	s.checkOutputs(t)
}

// closeSource closes src and waits until librdkafka finished closing the
// consumer, which may take longer than Close waits (a zombie's consumer
// leaves a group that moved on without it).
func closeSource(t *testing.T, src *kafka.Source[string, string]) {
	t.Helper()
	src.Close()
	select {
	case <-src.Closed():
	case <-time.After(60 * time.Second):
		t.Error("the consumer did not finish closing within 60 s")
	}
}

// Two transactional members share a group under each protocol: A starts
// alone, B joins mid-stream (A's revokes commit their outputs in
// transactions from inside the rebalance callback), then A leaves: each
// output once, in key order.
func TestTransactorAcrossRebalances(t *testing.T) {
	for _, protocol := range []string{"cooperative-sticky", "range", "consumer"} {
		t.Run(protocol, func(t *testing.T) {
			cluster := kafkatest.New(t)
			s := newEOSSetup(t, cluster, 6, 3000)
			var handled, byB atomic.Int64
			handlerOf := func(name string) parallafka.Handler[string, string] {
				return func(ctx context.Context, m *pipeline.Message[string, string]) error {
					time.Sleep(time.Millisecond)
					if name == "b" {
						byB.Add(1)
					}
					// A slows down past a quarter until B got partitions,
					// so that the rebalance happens mid-stream (each call
					// stays short: a revoke waits for the calls in flight).
					if name == "a" && handled.Load() >= int64(s.n/4) && byB.Load() == 0 {
						time.Sleep(20 * time.Millisecond)
					}
					handled.Add(1)
					return s.echo(ctx, m)
				}
			}
			start := func(name string) (stop func() error) {
				src, tx := s.memberOf(t, kafkatest.UniqueTopic("txn-"+name), protocol)
				p, err := parallafka.New(src, parallafka.WithLogger(s.quiet), parallafka.WithTransactions(tx),
					parallafka.WithMaxConcurrency(8), parallafka.WithCommitInterval(50*time.Millisecond))
				require.NoError(t, err)
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				go func() { done <- p.Consume(ctx, handlerOf(name)) }()
				return func() error { cancel(); return <-done }
			}
			stopA := start("a")
			require.Eventually(t, func() bool { return handled.Load() >= int64(s.n/4) }, 60*time.Second, time.Millisecond)
			stopB := start("b")
			require.Eventually(t, func() bool { return byB.Load() > 0 && handled.Load() >= int64(s.n/2) }, 60*time.Second, time.Millisecond)
			require.NoError(t, stopA())
			require.Eventually(t, func() bool { return s.allCommitted(t) }, 60*time.Second, 100*time.Millisecond)
			require.NoError(t, stopB())
			s.checkOutputs(t)
		})
	}
}
