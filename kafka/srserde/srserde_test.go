package srserde_test

import (
	"context"
	"testing"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/confluentinc/confluent-kafka-go/v2/schemaregistry"
	"github.com/confluentinc/confluent-kafka-go/v2/schemaregistry/serde"
	"github.com/confluentinc/confluent-kafka-go/v2/schemaregistry/serde/avrov2"
	"github.com/confluentinc/confluent-kafka-go/v2/schemaregistry/serde/jsonschema"
	"github.com/confluentinc/confluent-kafka-go/v2/schemaregistry/serde/protobuf"
	srtest "github.com/confluentinc/confluent-kafka-go/v2/schemaregistry/test"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/parallafka/parallafka/kafka"
	"github.com/parallafka/parallafka/kafka/kafkatest"
	"github.com/parallafka/parallafka/kafka/srserde"
	"github.com/parallafka/parallafka/pipeline"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Price is the record value of the tests, in Avro and in JSON Schema.
type Price struct {
	Symbol string `avro:"symbol" json:"symbol"`
	Cents  int64  `avro:"cents" json:"cents"`
}

func mockRegistry(t *testing.T) schemaregistry.Client {
	t.Helper()
	client, err := schemaregistry.NewClient(schemaregistry.NewConfig("mock://" + t.Name()))
	require.NoError(t, err)
	return client
}

// headers converts the serializer's headers to the Message's.
func headers(hs []ckafka.Header) []pipeline.Header {
	var out []pipeline.Header
	for _, h := range hs {
		out = append(out, pipeline.Header{Key: h.Key, Value: h.Value})
	}
	return out
}

func TestAvro(t *testing.T) {
	client := mockRegistry(t)
	ser, err := avrov2.NewSerializer(client, serde.ValueSerde, avrov2.NewSerializerConfig())
	require.NoError(t, err)
	deser, err := avrov2.NewDeserializer(client, serde.ValueSerde, avrov2.NewDeserializerConfig())
	require.NoError(t, err)
	want := Price{Symbol: "AAPL", Cents: 18720}

	t.Run("schema id in the payload", func(t *testing.T) {
		data, err := ser.Serialize("prices", &want)
		require.NoError(t, err)
		got, err := srserde.Into[Price](deser)("prices", nil, data)
		require.NoError(t, err)
		assert.Equal(t, want, got)
		ptr, err := srserde.Into[*Price](deser)("prices", nil, data)
		require.NoError(t, err)
		assert.Equal(t, &want, ptr)
		generic, err := srserde.Into[map[string]any](deser)("prices", nil, data)
		require.NoError(t, err)
		assert.Equal(t, map[string]any{"symbol": "AAPL", "cents": int64(18720)}, generic)
	})

	t.Run("schema id in a header", func(t *testing.T) {
		hser, err := avrov2.NewSerializer(client, serde.ValueSerde, avrov2.NewSerializerConfig())
		require.NoError(t, err)
		hser.SchemaIDSerializer = serde.HeaderSchemaIDSerializer
		hs, data, err := hser.SerializeWithHeaders("prices", &want)
		require.NoError(t, err)
		require.NotEmpty(t, hs, "the schema id travels in a header")
		got, err := srserde.Into[Price](deser)("prices", headers(hs), data)
		require.NoError(t, err)
		assert.Equal(t, want, got)
		_, err = srserde.Into[Price](deser)("prices", nil, data)
		assert.Error(t, err, "without the header, the payload has no schema id")
	})

	t.Run("not written by a schema-registry serializer", func(t *testing.T) {
		got, err := srserde.Into[*Price](deser)("prices", nil, []byte(`{"symbol":"AAPL"}`))
		assert.Error(t, err)
		assert.Nil(t, got)
	})
}

func TestJSONSchema(t *testing.T) {
	client := mockRegistry(t)
	ser, err := jsonschema.NewSerializer(client, serde.ValueSerde, jsonschema.NewSerializerConfig())
	require.NoError(t, err)
	deser, err := jsonschema.NewDeserializer(client, serde.ValueSerde, jsonschema.NewDeserializerConfig())
	require.NoError(t, err)
	want := Price{Symbol: "MSFT", Cents: 41000}
	data, err := ser.Serialize("prices", &want)
	require.NoError(t, err)
	got, err := srserde.Into[Price](deser)("prices", nil, data)
	require.NoError(t, err)
	assert.Equal(t, want, got)
	ptr, err := srserde.Into[*Price](deser)("prices", nil, data)
	require.NoError(t, err)
	assert.Equal(t, &want, ptr)
}

func TestProtobuf(t *testing.T) {
	client := mockRegistry(t)
	ser, err := protobuf.NewSerializer(client, serde.ValueSerde, protobuf.NewSerializerConfig())
	require.NoError(t, err)
	deser, err := protobuf.NewDeserializer(client, serde.ValueSerde, protobuf.NewDeserializerConfig())
	require.NoError(t, err)
	want := &srtest.Author{Name: "Kafka", Id: 123, Works: []string{"The Castle", "The Trial"}}
	data, err := ser.Serialize("authors", want)
	require.NoError(t, err)
	de := srserde.Into[*srtest.Author](deser)
	got, err := de("authors", nil, data)
	require.NoError(t, err)
	assert.True(t, proto.Equal(want, got), "got %v", got)
	again, err := de("authors", nil, data)
	require.NoError(t, err)
	assert.NotSame(t, got, again, "a new message per record")
}

func TestIntoNilDeserializer(t *testing.T) {
	assert.Nil(t, srserde.Into[Price](nil), "nil, which NewSource refuses")
}

// Through a Source: Avro values whose schema id travels in a header, one
// record that no serializer wrote (a poison pill), and a tombstone.
func TestSourceDecodesSchemaRegistryValues(t *testing.T) {
	ctx := context.Background()
	cluster := kafkatest.New(t)
	topic := kafkatest.UniqueTopic("srserde")
	require.NoError(t, cluster.CreateTopic(ctx, topic, 1))

	client := mockRegistry(t)
	ser, err := avrov2.NewSerializer(client, serde.ValueSerde, avrov2.NewSerializerConfig())
	require.NoError(t, err)
	ser.SchemaIDSerializer = serde.HeaderSchemaIDSerializer
	var records []kafkatest.Record
	for i, p := range []Price{{"AAPL", 18720}, {"MSFT", 41000}} {
		hs, data, err := ser.SerializeWithHeaders(topic, &p)
		require.NoError(t, err)
		rec := kafkatest.Record{Key: []byte(p.Symbol), Value: data, Partition: 0}
		for _, h := range hs {
			rec.Headers = append(rec.Headers, pipeline.Header{Key: h.Key, Value: h.Value})
		}
		records = append(records, rec)
		if i == 0 {
			records = append(records, kafkatest.Record{Key: []byte("BAD"), Value: []byte("not avro"), Partition: 0})
		}
	}
	records = append(records, kafkatest.Record{Key: []byte("GONE"), Partition: 0})
	require.NoError(t, cluster.Produce(ctx, topic, records))

	deser, err := avrov2.NewDeserializer(client, serde.ValueSerde, avrov2.NewDeserializerConfig())
	require.NoError(t, err)
	defer deser.Close()
	consumer, err := kafka.NewConsumer(cluster.ConsumerConfig(kafkatest.UniqueTopic("srserde-group")), kafka.WithLogger(nil))
	require.NoError(t, err)
	src, err := kafka.NewSource(consumer, []string{topic}, kafka.String, srserde.Into[Price](deser), kafka.WithLogger(nil))
	if err != nil {
		_ = consumer.Close()
		require.NoError(t, err)
	}
	defer func() { require.NoError(t, src.Close()) }()
	require.NoError(t, src.Subscribe(listener{}))

	var msgs []*pipeline.Message[string, Price]
	for deadline := time.Now().Add(30 * time.Second); len(msgs) < len(records) && time.Now().Before(deadline); {
		m, err := src.Poll(100 * time.Millisecond)
		require.NoError(t, err)
		if m != nil {
			msgs = append(msgs, m)
		}
	}
	require.Len(t, msgs, 4)
	require.NoError(t, msgs[0].Err)
	assert.Equal(t, Price{"AAPL", 18720}, msgs[0].Value)
	var de *kafka.DeserializeError
	require.ErrorAs(t, msgs[1].Err, &de, "a poison pill, not a Poll error")
	assert.Equal(t, "value", de.Field)
	require.NoError(t, msgs[2].Err)
	assert.Equal(t, Price{"MSFT", 41000}, msgs[2].Value)
	require.NoError(t, msgs[3].Err, "a tombstone never reaches the deserializer")
	assert.Zero(t, msgs[3].Value)
}

type listener struct{}

func (listener) PartitionsAssigned([]pipeline.Offset)        {}
func (listener) PartitionsRevoked([]pipeline.TopicPartition) {}
func (listener) PartitionsLost([]pipeline.TopicPartition)    {}
