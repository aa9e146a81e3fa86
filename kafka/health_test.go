package kafka_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/internal/keyed"
	"github.com/parallafka/parallafka/kafka"
	"github.com/parallafka/parallafka/kafka/kafkatest"
	"github.com/parallafka/parallafka/pipeline"
)

// Health is consuming while the broker serves, and broker unreachable once
// librdkafka reported every broker down (the Source's Unreachable).
func TestHealthBrokerUnreachable(t *testing.T) {
	c, err := kafkatest.Start(kafkatest.WithEmbedded())
	require.NoError(t, err)
	closed := false
	defer func() {
		if !closed {
			c.Close()
		}
	}()
	topic := kafkatest.UniqueTopic(t.Name())
	ctx := context.Background()
	require.NoError(t, c.CreateTopic(ctx, topic, 1))
	_, err = keyed.Produce(ctx, c, topic, 10, 2)
	require.NoError(t, err)
	consumer, err := kafka.NewConsumer(c.ConsumerConfig(kafkatest.UniqueTopic("g")))
	require.NoError(t, err)
	src, err := kafka.NewSource(consumer, []string{topic}, kafka.String, kafka.String,
		kafka.WithCloseTimeout(2*time.Second), kafka.WithLogger(slog.New(slog.DiscardHandler)))
	require.NoError(t, err)
	p, err := parallafka.New[string, string](src, parallafka.WithShutdownTimeout(2*time.Second),
		parallafka.WithRevokeTimeout(2*time.Second), parallafka.WithLogger(slog.New(slog.DiscardHandler)))
	require.NoError(t, err)
	run, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- p.Consume(run, func(context.Context, *pipeline.Message[string, string]) error { return nil })
	}()
	require.Eventually(t, func() bool { return p.Stats().Finished == 10 }, time.Minute, 10*time.Millisecond)
	require.NoError(t, p.Health(ctx))
	require.NoError(t, src.Unreachable())

	c.Close()
	closed = true
	require.Eventually(t, func() bool { return errors.Is(p.Health(ctx), parallafka.ErrBrokerUnreachable) },
		time.Minute, 10*time.Millisecond, "the broker's going is noticed")
	require.ErrorContains(t, src.Unreachable(), "no broker reachable")
	require.ErrorIs(t, src.Unreachable(), kafka.ErrUnreachable)
	cancel()
	<-done // the final commit fails: the broker is gone
	require.ErrorIs(t, p.Health(ctx), parallafka.ErrStopped)
	<-src.Closed()
}
