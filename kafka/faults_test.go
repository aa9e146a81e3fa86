package kafka_test

import (
	"context"
	"testing"

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
	t.Skip("engine: #11 item 5")
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
	require.Error(t, err)
	require.True(t, consumer.IsClosed(), "Consume returned but left the consumer open")
	<-src.Closed()
}

// Item 6: a nil *kafka.Source is refused by New (a typed nil in the
// interface), instead of a nil dereference in Consume.
func TestNewRefusesNilKafkaSource(t *testing.T) {
	t.Skip("engine: #11 item 6")
	var src *kafka.Source[string, string]
	_, err := parallafka.New[string, string](src)
	require.Error(t, err)
}

var _ = ckafka.ErrAllBrokersDown
