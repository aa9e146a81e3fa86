package kafka_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka"
	"github.com/parallafka/parallafka/kafka/kafkatest"
	"github.com/parallafka/parallafka/pipeline"
)

// A draining shutdown handles the backlog behind busy keys and commits to
// the end of what was polled.
func TestDrainShutdownCommitsEverythingPolled(t *testing.T) {
	c := kafkatest.New(t, kafkatest.WithEmbedded())
	topic := kafkatest.UniqueTopic(t.Name())
	ctx := context.Background()
	require.NoError(t, c.CreateTopic(ctx, topic, 1))
	recs := make([]kafkatest.Record, 200)
	for i := range recs {
		recs[i] = kafkatest.Record{Partition: 0, Key: []byte(fmt.Sprint("k", i%2)), Value: []byte("v")}
	}
	require.NoError(t, c.Produce(ctx, topic, recs))
	group := kafkatest.UniqueTopic("g")
	consumer, err := kafka.NewConsumer(c.ConsumerConfig(group))
	require.NoError(t, err)
	src, err := kafka.NewSource(consumer, []string{topic}, kafka.String, kafka.String)
	require.NoError(t, err)
	p, err := parallafka.New[string, string](src, parallafka.WithMaxConcurrency(2),
		parallafka.WithShutdownMode(parallafka.Drain), parallafka.WithShutdownTimeout(time.Minute))
	require.NoError(t, err)
	var handled atomic.Int64
	started := make(chan struct{}, 1)
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- p.Consume(cctx, func(context.Context, *pipeline.Message[string, string]) error {
			select {
			case started <- struct{}{}:
			default:
			}
			time.Sleep(5 * time.Millisecond) // 2 keys, one at a time each: a backlog builds
			handled.Add(1)
			return nil
		})
	}()
	<-started
	deadline := time.Now().Add(30 * time.Second)
	for p.Stats().Queued == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	require.NotZero(t, p.Stats().Queued, "a backlog behind busy keys when the stop begins")
	cancel()
	require.NoError(t, <-done)
	polled := p.Stats().Polled
	require.Greater(t, polled, handled.Load()-1)
	require.Equal(t, polled, handled.Load(), "everything polled was handled")
	committed, err := c.CommittedOffsets(ctx, group, topic)
	require.NoError(t, err)
	require.Equal(t, polled, committed[0], "committed to the end of what was polled")
}
