package kafka_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka"
	"github.com/parallafka/parallafka/kafka/kafkatest"
	"github.com/parallafka/parallafka/pipeline"
)

// Engine tests of issue 11, for the root package to make pass.

// Item 5: Consume with an already-cancelled context closes the source like
// every other return of Consume.
func TestConsumeCancelledContextClosesSource(t *testing.T) {
	c := kafkatest.New(t, kafkatest.WithEmbedded())
	topic := kafkatest.UniqueTopic(t.Name())
	require.NoError(t, c.CreateTopic(context.Background(), topic, 1))
	consumer, err := kafka.NewConsumer(c.ConsumerConfig(kafkatest.UniqueTopic("g")))
	require.NoError(t, err)
	src, err := kafka.NewSource(consumer, []string{topic}, kafka.String, kafka.String)
	require.NoError(t, err)
	p, err := parallafka.New[string, string](src)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = p.Consume(ctx, func(context.Context, *pipeline.Message[string, string]) error { return nil })
	require.NoError(t, err, "a stop requested before the start (issue 26: one answer)")
	require.True(t, consumer.IsClosed(), "Consume returned but left the consumer open")
	<-src.Closed()
}

// Item 6: a nil *kafka.Source is refused by New (a typed nil in the
// interface), instead of a nil dereference in Consume.
func TestNewRefusesNilKafkaSource(t *testing.T) {
	var src *kafka.Source[string, string]
	_, err := parallafka.New[string, string](src)
	require.Error(t, err)
}

var _ = ckafka.ErrAllBrokersDown

// Item 2: with the broker gone, a graceful shutdown returns within the
// shutdown timeout plus the final commit's margin (2 s) and the source's
// close timeout, and the error names the partitions not committed.
func TestShutdownBoundedWithBrokerGone(t *testing.T) {
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
	require.NoError(t, c.CreateTopic(ctx, topic, 2))
	_, err = c.ProduceKeyed(ctx, topic, 200, 20)
	require.NoError(t, err)
	consumer, err := kafka.NewConsumer(c.ConsumerConfig(kafkatest.UniqueTopic("g")))
	require.NoError(t, err)
	src, err := kafka.NewSource(consumer, []string{topic}, kafka.String, kafka.String,
		kafka.WithCloseTimeout(2*time.Second))
	require.NoError(t, err)
	const shutdownTimeout = 3 * time.Second
	p, err := parallafka.New[string, string](src, parallafka.WithShutdownTimeout(shutdownTimeout),
		parallafka.WithRevokeTimeout(3*time.Second), parallafka.WithCommitInterval(time.Hour),
		parallafka.WithLogger(slog.New(slog.DiscardHandler)))
	require.NoError(t, err)
	run, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- p.Consume(run, func(context.Context, *pipeline.Message[string, string]) error { return nil })
	}()
	deadline := time.Now().Add(60 * time.Second)
	for p.Stats().Finished < 200 {
		require.True(t, time.Now().Before(deadline), "not all handled")
		time.Sleep(10 * time.Millisecond)
	}
	c.Close() // the broker goes away with every offset still uncommitted
	closed = true
	began := time.Now()
	cancel()
	select {
	case err = <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("Consume did not return")
	}
	took := time.Since(began)
	t.Logf("Consume returned %v after the stop, with the broker gone: %v", took, err)
	require.Error(t, err, "the final offsets could not be committed")
	require.ErrorContains(t, err, "not committed")
	// shutdown timeout + final commit margin + close timeout, and slack for a
	// slow machine.
	require.Less(t, took, shutdownTimeout+2*time.Second+2*time.Second+10*time.Second)
	<-src.Closed()
}
