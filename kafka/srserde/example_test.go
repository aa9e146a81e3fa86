package srserde_test

import (
	"fmt"
	"log"

	"github.com/confluentinc/confluent-kafka-go/v2/schemaregistry"
	"github.com/confluentinc/confluent-kafka-go/v2/schemaregistry/serde"
	"github.com/confluentinc/confluent-kafka-go/v2/schemaregistry/serde/avrov2"

	"github.com/parallafka/parallafka/kafka/srserde"
	"github.com/parallafka/parallafka/pipeline"
)

// A value written by Confluent's Avro serializer, with its schema id in a
// header, decoded by the Deserializer a kafka.Source would be given. The
// registry is confluent-kafka-go's in-memory mock; a real one has an http
// URL.
func Example() {
	type Price struct {
		Symbol string `avro:"symbol"`
		Cents  int64  `avro:"cents"`
	}
	client, err := schemaregistry.NewClient(schemaregistry.NewConfig("mock://example"))
	if err != nil {
		log.Fatal(err)
	}

	// The producer's side: register the schema, write the id in a header.
	ser, err := avrov2.NewSerializer(client, serde.ValueSerde, avrov2.NewSerializerConfig())
	if err != nil {
		log.Fatal(err)
	}
	ser.SchemaIDSerializer = serde.HeaderSchemaIDSerializer
	hs, value, err := ser.SerializeWithHeaders("prices", &Price{Symbol: "AAPL", Cents: 18720})
	if err != nil {
		log.Fatal(err)
	}
	var headers []pipeline.Header // as the Source hands them to a Deserializer
	for _, h := range hs {
		headers = append(headers, pipeline.Header{Key: h.Key, Value: h.Value})
	}

	// The consumer's side: what kafka.NewSource would be given.
	avro, err := avrov2.NewDeserializer(client, serde.ValueSerde, avrov2.NewDeserializerConfig())
	if err != nil {
		log.Fatal(err)
	}
	defer avro.Close()
	deserialize := srserde.Into[Price](avro)
	// src, err := kafka.NewSource(consumer, []string{"prices"}, kafka.String, deserialize)

	price, err := deserialize("prices", headers, value)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s is $%d.%02d (schema id in header %q)\n", price.Symbol, price.Cents/100, price.Cents%100, headers[0].Key)
	// Output: AAPL is $187.20 (schema id in header "__value_schema_id")
}
