package kafka_test

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka"
	"github.com/parallafka/parallafka/kafka/kafkatest"
	"github.com/parallafka/parallafka/pipeline"
)

// Pause holds consumption longer than max.poll.interval.ms without the
// member leaving its group: no revoke, no loss, and Resume goes on with the
// same assignment (issue 15).
func TestPauseLongerThanMaxPollInterval(t *testing.T) {
	c := kafkatest.New(t)
	topic := kafkatest.UniqueTopic(t.Name())
	ctx := context.Background()
	require.NoError(t, c.CreateTopic(ctx, topic, 2))
	_, err := c.ProduceKeyed(ctx, topic, 400, 20)
	require.NoError(t, err)
	const maxPollInterval = 6 * time.Second
	cfg := c.ConsumerConfig(kafkatest.UniqueTopic("g"))
	require.NoError(t, cfg.SetKey("max.poll.interval.ms", int(maxPollInterval/time.Millisecond)))
	consumer, err := kafka.NewConsumer(cfg)
	require.NoError(t, err)
	src, err := kafka.NewSource(consumer, []string{topic}, kafka.String, kafka.String)
	require.NoError(t, err)
	var assigned, revoked, lost atomic.Int32
	p, err := parallafka.New[string, string](src, parallafka.WithRevokeTimeout(3*time.Second), parallafka.WithMaxConcurrency(2),
		parallafka.WithLogger(slog.New(slog.DiscardHandler)),
		parallafka.WithObserver(pipeline.ObserverFuncs{
			PartitionsAssigned: func(tps []pipeline.TopicPartition) { assigned.Add(int32(len(tps))) },
			PartitionsRevoked:  func(tps []pipeline.TopicPartition) { revoked.Add(int32(len(tps))) },
			PartitionsLost:     func(tps []pipeline.TopicPartition) { lost.Add(int32(len(tps))) },
		}.Observer()))
	require.NoError(t, err)
	var handled atomic.Int64
	run, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- p.Consume(run, func(ctx context.Context, m *pipeline.Message[string, string]) error {
			time.Sleep(5 * time.Millisecond)
			if handled.Add(1) == 100 {
				p.Pause()
			}
			return nil
		})
	}()
	waitFor(t, func() bool { return p.Stats().UserPaused })
	time.Sleep(time.Second) // what was dispatched before the pause finishes
	atPause := handled.Load()
	time.Sleep(maxPollInterval + 3*time.Second) // a pause longer than max.poll.interval.ms
	assert.Equal(t, atPause, handled.Load(), "nothing is dispatched while paused")
	assert.Less(t, atPause, int64(400))
	assert.Len(t, p.Stats().Paused, 2)
	p.Resume()
	waitFor(t, func() bool { return handled.Load() == 400 })
	cancel()
	require.NoError(t, <-done)
	assert.EqualValues(t, 2, assigned.Load())
	assert.Zero(t, lost.Load(), "the member stayed in its group")
	assert.EqualValues(t, 2, revoked.Load(), "revoked once, at the close, not during the pause")
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		require.True(t, time.Now().Before(deadline), "condition not met in time")
		time.Sleep(10 * time.Millisecond)
	}
}
