package kafka_test

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka"
	"github.com/parallafka/parallafka/kafka/kafkatest"
	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/stages"
)

var _ stages.DeadLetterTopicChecker = (*kafka.DeadLetterWriter)(nil)

// A dead-letter topic that does not exist stops Consume at its start, with
// an error naming the topic, and nothing is committed; an existing one
// passes the check.
func TestDeadLetterTopicMissingFailsAtStart(t *testing.T) {
	cluster := kafkatest.New(t, kafkatest.WithEmbedded())
	ctx := context.Background()
	topic, missing := kafkatest.UniqueTopic("orders"), kafkatest.UniqueTopic("no-such-dlq")
	require.NoError(t, cluster.CreateTopic(ctx, topic, 1))
	require.NoError(t, cluster.Produce(ctx, topic, []kafkatest.Record{{Partition: 0, Value: []byte("x")}}))
	writer := newWriter(t, cluster.ProducerConfig())

	err := writer.CheckDeadLetterTopic(ctx, missing)
	require.ErrorIs(t, err, kafka.ErrDeadLetterTopicMissing)
	require.ErrorContains(t, err, missing)
	require.NoError(t, writer.CheckDeadLetterTopic(ctx, topic))

	quiet := slog.New(slog.DiscardHandler)
	group := kafkatest.UniqueTopic("group")
	ccfg := cluster.ConsumerConfig(group)
	delete(*ccfg, "go.logs.channel.enable")
	consumer, err := kafka.NewConsumer(ccfg, kafka.WithLogger(quiet))
	require.NoError(t, err)
	src, err := kafka.NewSource(consumer, []string{topic}, kafka.String, kafka.String, kafka.WithLogger(quiet))
	require.NoError(t, err)
	dlq, err := stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{Writer: writer, Topic: missing})
	require.NoError(t, err)
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithAfterHandle("dead-letter", dlq))
	require.NoError(t, err)
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	t0 := time.Now()
	err = p.Consume(cctx, func(context.Context, *pipeline.Message[string, string]) error {
		return errors.New("always fails")
	})
	require.ErrorIs(t, err, kafka.ErrDeadLetterTopicMissing)
	require.ErrorContains(t, err, missing)
	require.Less(t, time.Since(t0), 15*time.Second, "found at the start, not after a write's timeout")
	committed, err := cluster.CommittedOffsets(ctx, group, topic)
	require.NoError(t, err)
	require.LessOrEqual(t, committed[0], int64(0), "the failed message is not committed")
}

// A write that is not acknowledged names the dead-letter topic and the
// message it was for.
func TestDeadLetterWriteTimeoutNamesTopicAndMessage(t *testing.T) {
	cluster := kafkatest.New(t, kafkatest.WithEmbedded())
	topic := kafkatest.UniqueTopic("dlq")
	require.NoError(t, cluster.CreateTopic(context.Background(), topic, 1))
	cfg := cluster.ProducerConfig()
	require.NoError(t, cfg.SetKey("message.timeout.ms", 1500))
	w := newWriter(t, cfg)
	cluster.Close()
	dl := pipeline.DeadLetter{Topic: topic, Value: []byte("x"),
		Original: pipeline.TopicPartition{Topic: "orders", Partition: 3}, Offset: 77}
	err := w.WriteDeadLetter(context.Background(), dl)
	require.Error(t, err)
	require.ErrorContains(t, err, topic)
	require.ErrorContains(t, err, "orders[3]@77")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err = w.WriteDeadLetter(ctx, dl)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorContains(t, err, topic)
	require.ErrorContains(t, err, "orders[3]@77")
	_ = w.Close()
}

// A dead-letter flood stops Consume with the flood error, and nothing past
// the first message not dead-lettered is committed.
func TestDeadLetterFloodStops(t *testing.T) {
	cluster := kafkatest.New(t, kafkatest.WithEmbedded())
	ctx := context.Background()
	f := newFloodSetup(t, cluster, 20)
	topic, dlqTopic, group, writer, src, quiet := f.topic, f.dlqTopic, f.group, f.writer, f.src, f.quiet
	var err error
	dlq, err := stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{Writer: writer, Topic: dlqTopic,
		Flood: &stages.FloodGuard{MaxInARow: 3}})
	require.NoError(t, err)
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(1),
		parallafka.WithAfterHandle("dead-letter", dlq))
	require.NoError(t, err)
	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	err = p.Consume(cctx, func(context.Context, *pipeline.Message[string, string]) error {
		return errors.New("upstream broke")
	})
	require.ErrorIs(t, err, stages.ErrDeadLetterFlood)
	require.ErrorContains(t, err, "@3 ", "stopped before offset 3")
	committed, err := cluster.CommittedOffsets(ctx, group, topic)
	require.NoError(t, err)
	require.EqualValues(t, 3, committed[0], "the 3 dead-lettered, nothing past the first not dead-lettered")
	end, err := cluster.EndOffsets(ctx, dlqTopic)
	require.NoError(t, err)
	require.EqualValues(t, 3, end[0])
}

// A flood guard with Pause holds the pipeline instead of stopping it:
// Consume goes on, Health reports the flood, nothing is dead-lettered or
// committed past the held message; once the cause is fixed, Resume lets the
// held message be dead-lettered and everything else be handled, and the
// commits reach the end. On the embedded broker, and on Apache Kafka in CI.
func TestDeadLetterFloodPauseHoldsThenResumes(t *testing.T) {
	const n = 20
	cluster := kafkatest.New(t)
	ctx := context.Background()
	f := newFloodSetup(t, cluster, n)
	topic, dlqTopic, group, writer, src, quiet := f.topic, f.dlqTopic, f.group, f.writer, f.src, f.quiet
	guard := &stages.FloodGuard{MaxInARow: 3, Pause: true}
	dlq, err := stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{Writer: writer, Topic: dlqTopic, Flood: guard})
	require.NoError(t, err)
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(1),
		parallafka.WithCommitInterval(100*time.Millisecond), parallafka.WithAfterHandle("dead-letter", dlq),
		parallafka.WithHealthCheck(guard.Flooding))
	require.NoError(t, err)

	var fixed atomic.Bool // the upstream cause, fixed while the guard holds
	var handled atomic.Int64
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	ended := make(chan error, 1)
	go func() {
		ended <- p.Consume(cctx, func(context.Context, *pipeline.Message[string, string]) error {
			if !fixed.Load() {
				return errors.New("upstream broke")
			}
			handled.Add(1)
			return nil
		})
	}()
	waitUntil(t, "the guard holds", func() bool { return guard.Flooding(ctx) != nil })
	err = p.Health(ctx)
	require.ErrorIs(t, err, parallafka.ErrUnhealthy)
	require.ErrorIs(t, err, stages.ErrDeadLetterFlood)
	require.ErrorContains(t, err, "@3 ", "held before offset 3")
	// Commits go on meanwhile, up to the held message and no further.
	waitUntil(t, "the 3 dead-lettered committed", func() bool {
		committed, err := cluster.CommittedOffsets(ctx, group, topic)
		return err == nil && committed[0] == 3
	})
	time.Sleep(500 * time.Millisecond) // five commit intervals
	committed, err := cluster.CommittedOffsets(ctx, group, topic)
	require.NoError(t, err)
	require.EqualValues(t, 3, committed[0], "nothing past the held message")
	end, err := cluster.EndOffsets(ctx, dlqTopic)
	require.NoError(t, err)
	require.EqualValues(t, 3, end[0])

	fixed.Store(true)
	guard.Resume()
	waitUntil(t, "everything committed", func() bool {
		// What failed during the hold is dead-lettered without counting:
		// one Resume is enough.
		require.NoError(t, guard.Flooding(ctx), "the guard tripped again")
		committed, err := cluster.CommittedOffsets(ctx, group, topic)
		return err == nil && committed[0] == n
	})
	require.NoError(t, p.Health(ctx))
	cancel()
	require.NoError(t, <-ended)
	end, err = cluster.EndOffsets(ctx, dlqTopic)
	require.NoError(t, err)
	// The held message and those whose handlers failed during the hold
	// went to the dead-letter topic; the rest were handled.
	require.GreaterOrEqual(t, end[0], int64(4))
	require.EqualValues(t, n, end[0]+handled.Load())
}

// floodSetup is what the flood tests start from: a one-partition topic of
// n records, its dead-letter topic and writer, and a quiet Source over the
// topic in a new group.
type floodSetup struct {
	topic, dlqTopic, group string
	writer                 *kafka.DeadLetterWriter
	src                    *kafka.Source[string, string]
	quiet                  *slog.Logger
}

func newFloodSetup(t *testing.T, cluster *kafkatest.Cluster, n int) floodSetup {
	t.Helper()
	ctx := context.Background()
	f := floodSetup{topic: kafkatest.UniqueTopic("orders"), dlqTopic: kafkatest.UniqueTopic("orders-dlq"),
		group: kafkatest.UniqueTopic("group"), quiet: slog.New(slog.DiscardHandler)}
	require.NoError(t, cluster.CreateTopic(ctx, f.topic, 1))
	require.NoError(t, cluster.CreateTopic(ctx, f.dlqTopic, 1))
	recs := make([]kafkatest.Record, n)
	for i := range recs {
		recs[i] = kafkatest.Record{Partition: 0, Value: []byte("x")}
	}
	require.NoError(t, cluster.Produce(ctx, f.topic, recs))
	f.writer = newWriter(t, cluster.ProducerConfig())
	ccfg := cluster.ConsumerConfig(f.group)
	delete(*ccfg, "go.logs.channel.enable")
	consumer, err := kafka.NewConsumer(ccfg, kafka.WithLogger(f.quiet))
	require.NoError(t, err)
	f.src, err = kafka.NewSource(consumer, []string{f.topic}, kafka.String, kafka.String, kafka.WithLogger(f.quiet))
	require.NoError(t, err)
	return f
}
