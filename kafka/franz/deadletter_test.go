package franz_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka/franz"
	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/stages"
)

// A handler that fails every tenth record, with DeadLetterQueue over the
// franz writer: each failed record is in the dead-letter topic once, with
// the original's key, value and place in its headers, and the group's
// commits reach the end of every partition.
func TestDeadLetterWriter(t *testing.T) {
	const partitions, n, keys = 3, 300, 15
	c, topic := newCluster(t, partitions)
	dlqTopic := topic + ".dlq"
	c.createTopic(t, dlqTopic, 1)
	c.produce(t, topic, n, keys)
	w, err := franz.NewDeadLetterWriter([]kgo.Opt{kgo.SeedBrokers(c.brokers...)}, franz.WithLogger(testLogger(t)))
	require.NoError(t, err)
	defer func() { assert.NoError(t, w.Close()) }()

	group := "g-" + topic
	led := newLedger()
	inner := led.handler("A", 0)
	failed := 0
	deadLetter, err := stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{Writer: w, Topic: dlqTopic})
	require.NoError(t, err)
	m := startMember(t, newSource(t, c, group, topic, nil), func(ctx context.Context, msg *parallafka.Message[string, string]) error {
		if msg.Offset%10 == 3 {
			return errors.New("cursed")
		}
		return inner(ctx, msg)
	}, parallafka.WithMaxConcurrency(4),
		parallafka.WithAfterHandle("dead-letter", deadLetter))
	ends := c.endOffsets(t, topic, partitions)
	for _, end := range ends {
		for o := int64(0); o < end; o++ {
			if o%10 == 3 {
				failed++
			}
		}
	}
	waitFor(t, waitTimeout, "the group's commits to reach the end", func() bool {
		got := c.committed(t, group, topic)
		for p, end := range ends {
			if got[p].Offset != end {
				return false
			}
		}
		return true
	})
	require.NoError(t, m.stop())
	assert.Equal(t, n-failed, led.distinct())

	// Read the dead-letter topic back.
	rd, err := kgo.NewClient(kgo.SeedBrokers(c.brokers...), kgo.ConsumeTopics(dlqTopic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.DisableClientMetrics())
	require.NoError(t, err)
	defer rd.Close()
	seen := make(map[string]bool)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	for len(seen) < failed && ctx.Err() == nil {
		rd.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			h := make(map[string]string)
			for _, x := range r.Headers {
				h[x.Key] = string(x.Value)
			}
			assert.Equal(t, topic, h[stages.HeaderOriginalTopic])
			off, _ := strconv.ParseInt(h[stages.HeaderOriginalOffset], 10, 64)
			assert.Equal(t, int64(3), off%10, "only failed records are dead-lettered")
			assert.Contains(t, h[stages.HeaderError], "cursed")
			place := h[stages.HeaderOriginalPartition] + "@" + h[stages.HeaderOriginalOffset]
			assert.False(t, seen[place], "dead-lettered twice: %s", place)
			seen[place] = true
			assert.NotEmpty(t, r.Key)
		})
	}
	assert.Len(t, seen, failed)
}

var _ stages.DeadLetterTopicChecker = (*franz.DeadLetterWriter)(nil)

// A dead-letter topic that does not exist stops Consume at its start, with
// an error naming the topic, and nothing is committed; an existing one
// passes the check. Without the check, the writer here (which retries a
// produce to an unknown topic for ever, kgo.UnknownTopicRetries(-1)) would
// hold the first dead letter until Consume's context ended, and fail with
// the context's error, not ErrDeadLetterTopicMissing.
func TestDeadLetterTopicMissingFailsAtStart(t *testing.T) {
	c, topic := newCluster(t, 1)
	missing := topic + ".no-such-dlq"
	c.produce(t, topic, 1, 1)
	w, err := franz.NewDeadLetterWriter([]kgo.Opt{kgo.SeedBrokers(c.brokers...), kgo.UnknownTopicRetries(-1)},
		franz.WithLogger(testLogger(t)))
	require.NoError(t, err)
	defer func() { _ = w.Close() }()
	ctx := context.Background()

	err = w.CheckDeadLetterTopic(ctx, missing)
	require.ErrorIs(t, err, franz.ErrDeadLetterTopicMissing)
	require.ErrorContains(t, err, missing)
	require.NoError(t, w.CheckDeadLetterTopic(ctx, topic))
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, w.CheckDeadLetterTopic(cancelled, topic), context.Canceled, "bounded by its context")

	group := "g-" + topic
	dlq, err := stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{Writer: w, Topic: missing})
	require.NoError(t, err)
	p, err := parallafka.New(newSource(t, c, group, topic, nil), parallafka.WithLogger(testLogger(t)),
		parallafka.WithAfterHandle("dead-letter", dlq))
	require.NoError(t, err)
	cctx, cancelConsume := context.WithTimeout(ctx, waitTimeout) // a guard against a hang, not a time limit
	defer cancelConsume()
	err = p.Consume(cctx, func(context.Context, *parallafka.Message[string, string]) error {
		return errors.New("always fails")
	})
	require.ErrorIs(t, err, franz.ErrDeadLetterTopicMissing)
	require.ErrorContains(t, err, missing)
	require.NoError(t, cctx.Err(), "Consume stopped by itself")
	_, ok := c.committed(t, group, topic)[0]
	require.False(t, ok, "the failed message is not committed")
}

// A write that is not acknowledged names the dead-letter topic and the
// message it was for.
func TestDeadLetterWriteNamesTopicAndMessage(t *testing.T) {
	c, topic := newCluster(t, 1)
	w, err := franz.NewDeadLetterWriter([]kgo.Opt{kgo.SeedBrokers(c.brokers...), kgo.UnknownTopicRetries(-1)},
		franz.WithLogger(testLogger(t)))
	require.NoError(t, err)
	defer func() { _ = w.Close() }()
	missing := topic + ".no-such-dlq" // never acknowledged
	dl := pipeline.DeadLetter{Topic: missing, Value: []byte("x"),
		Original: pipeline.TopicPartition{Topic: "orders", Partition: 3}, Offset: 77}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err = w.WriteDeadLetter(ctx, dl)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorContains(t, err, missing)
	require.ErrorContains(t, err, "orders[3]@77")

	// With kgo's default UnknownTopicRetries, the write fails by itself,
	// naming them too.
	w2, err := franz.NewDeadLetterWriter([]kgo.Opt{kgo.SeedBrokers(c.brokers...)}, franz.WithLogger(testLogger(t)))
	require.NoError(t, err)
	defer func() { _ = w2.Close() }()
	err = w2.WriteDeadLetter(context.Background(), dl)
	require.ErrorContains(t, err, "not delivered")
	require.ErrorContains(t, err, missing)
	require.ErrorContains(t, err, "orders[3]@77")
}
