package kafka_test

import (
	"context"
	"errors"
	"testing"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka/kafka"
	"github.com/parallafka/parallafka/kafka/kafkatest"
	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/stages"
)

// readRecords reads topic from the start until it has n records (failing
// the test after a generous deadline) and returns them.
// The writer is the stages package's DeadLetterWriter.
var _ stages.DeadLetterWriter = (*kafka.DeadLetterWriter)(nil)

func readRecords(t *testing.T, cluster *kafkatest.Cluster, topic string, n int) []*kgo.Record {
	t.Helper()
	cl, err := cluster.NewClient(kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	require.NoError(t, err)
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var records []*kgo.Record
	for len(records) < n {
		fetches := cl.PollFetches(ctx)
		require.NoError(t, ctx.Err(), "read %d of %d records of %s", len(records), n, topic)
		fetches.EachError(func(topic string, p int32, err error) { t.Logf("fetch %s[%d]: %v", topic, p, err) })
		records = append(records, fetches.Records()...)
	}
	return records
}

func headerMap(r *kgo.Record) map[string]string {
	m := map[string]string{}
	for _, h := range r.Headers {
		m[h.Key] = string(h.Value)
	}
	return m
}

func newWriter(t *testing.T, cfg *ckafka.ConfigMap) *kafka.DeadLetterWriter {
	t.Helper()
	delete(*cfg, "go.logs.channel.enable") // librdkafka's logs go to the (discarding) logger
	w, err := kafka.NewDeadLetterWriter(cfg, kafka.WithLogger(nil))
	require.NoError(t, err)
	t.Cleanup(func() { _ = w.Close() })
	return w
}

// A write returns once the broker stored the record, with its key, value
// and headers as given.
func TestDeadLetterWriterWrites(t *testing.T) {
	cluster := kafkatest.New(t)
	ctx := context.Background()
	topic := kafkatest.UniqueTopic("dlq")
	require.NoError(t, cluster.CreateTopic(ctx, topic, 2))
	w := newWriter(t, cluster.ProducerConfig())

	dl := pipeline.DeadLetter{
		Topic: topic, Key: []byte("order-7"), Value: []byte(`{"broken":`),
		Headers: []pipeline.Header{
			{Key: "trace", Value: []byte("abc")},
			{Key: stages.HeaderOriginalTopic, Value: []byte("orders")},
			{Key: stages.HeaderOriginalOffset, Value: []byte("42")},
			{Key: stages.HeaderError, Value: []byte("cannot deserialize")},
		},
	}
	require.NoError(t, w.WriteDeadLetter(ctx, dl))
	end, err := cluster.EndOffsets(ctx, topic)
	require.NoError(t, err)
	assert.EqualValues(t, 1, end[0]+end[1], "stored when the write returned")

	got := readRecords(t, cluster, topic, 1)[0]
	assert.Equal(t, dl.Key, got.Key)
	assert.Equal(t, dl.Value, got.Value)
	assert.Equal(t, map[string]string{
		"trace": "abc", stages.HeaderOriginalTopic: "orders", stages.HeaderOriginalOffset: "42",
		stages.HeaderError: "cannot deserialize",
	}, headerMap(got))

	require.NoError(t, w.Close())
	require.NoError(t, w.Close(), "idempotent")
	require.Error(t, w.WriteDeadLetter(ctx, dl), "a closed writer refuses writes")
}

// A write the broker never acknowledges fails: the message stays failed
// and uncommitted.
func TestDeadLetterWriterFailsWithoutAcknowledgement(t *testing.T) {
	cluster := kafkatest.New(t, kafkatest.WithEmbedded())
	topic := kafkatest.UniqueTopic("dlq")
	require.NoError(t, cluster.CreateTopic(context.Background(), topic, 1))
	cfg := cluster.ProducerConfig()
	require.NoError(t, cfg.SetKey("message.timeout.ms", 1500))
	w := newWriter(t, cfg)
	cluster.Close() // the broker is gone

	err := w.WriteDeadLetter(context.Background(), pipeline.DeadLetter{Topic: topic, Value: []byte("x")})
	require.Error(t, err)
	require.ErrorContains(t, err, "not delivered")

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err = w.WriteDeadLetter(ctx, pipeline.DeadLetter{Topic: topic, Value: []byte("y")})
	require.ErrorIs(t, err, context.DeadlineExceeded, "a write honours its context")
	// The abandoned write times out in the producer; Close does not hang on it.
	_ = w.Close()
}

func TestNewDeadLetterWriterChecksItsConfig(t *testing.T) {
	_, err := kafka.NewDeadLetterWriter(nil)
	require.Error(t, err)
	for name, cfg := range map[string]ckafka.ConfigMap{
		"acks=1":                    {"acks": "1"},
		"acks=0":                    {"acks": 0},
		"no delivery reports":       {"go.delivery.reports": false},
		"not a boolean idempotence": {"enable.idempotence": "maybe"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg["bootstrap.servers"] = "127.0.0.1:1"
			_, err := kafka.NewDeadLetterWriter(&cfg)
			require.Error(t, err)
			if name != "not a boolean idempotence" {
				require.True(t, errors.Is(err, kafka.ErrUnsafeConfig), "%v", err)
			}
		})
	}
	for _, acks := range []ckafka.ConfigValue{"all", "-1", -1} {
		cfg := ckafka.ConfigMap{"bootstrap.servers": "127.0.0.1:1", "acks": acks}
		w, err := kafka.NewDeadLetterWriter(&cfg, kafka.WithLogger(nil))
		require.NoError(t, err, "acks=%v", acks)
		require.NoError(t, w.Close())
		assert.Equal(t, acks, cfg["acks"], "the caller's map is not modified")
		_, set := cfg["enable.idempotence"]
		assert.False(t, set)
	}
}
