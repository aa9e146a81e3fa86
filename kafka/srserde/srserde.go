// Package srserde adapts confluent-kafka-go's schema-registry deserializers
// (the packages under schemaregistry/serde: avrov2, avro, jsonschema,
// protobuf) to [kafka.Deserializer], so that a [kafka.Source] decodes values
// (or keys) written by Confluent's serializers: a schema id in the payload's
// prefix, or carried in a record header.
//
//	client, err := schemaregistry.NewClient(schemaregistry.NewConfig("http://registry:8081"))
//	if err != nil { ... }
//	prices, err := avrov2.NewDeserializer(client, serde.ValueSerde, avrov2.NewDeserializerConfig())
//	if err != nil { ... }
//	defer prices.Close() // after the Source is closed
//	src, err := kafka.NewSource(consumer, []string{"prices"}, kafka.String, srserde.Into[Price](prices))
//
// # Why a package of its own
//
// The adapter needs only schemaregistry/serde, but building a deserializer
// needs a format package, and those are heavy: avrov2 pulls in
// github.com/hamba/avro, protobuf pulls in protobuf, protoreflect and the
// well-known types, jsonschema a JSON Schema validator. Package kafka itself
// imports none of them, so an application that does not use a schema
// registry compiles none of them; one that does imports this package and the
// format package it uses, and compiles that one only. (They are all in
// confluent-kafka-go's module already, so this package adds no module to a
// build's module graph.)
package srserde

import (
	"reflect"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/confluentinc/confluent-kafka-go/v2/schemaregistry/serde"

	"github.com/parallafka/parallafka/kafka"
	"github.com/parallafka/parallafka/pipeline"
)

// Into returns a kafka.Deserializer that decodes a record's bytes with d into
// a new T, passing d the record's topic and headers, so that a schema id
// carried in a header (Confluent's serializers with
// serde.HeaderSchemaIDSerializer) is found as well as one in the payload's
// prefix. d's errors are returned as they are: the Source wraps them in a
// *kafka.DeserializeError.
//
// T is what d's DeserializeInto accepts a pointer to, or a pointer type:
//   - Avro (avrov2) and JSON Schema (jsonschema): a struct, a map[string]any,
//     or a pointer to a struct;
//   - Protobuf (protobuf): a pointer to a generated message, such as
//     *pb.Price (a new message is allocated for each record).
//
// d must have been created for the part of the record it decodes
// (serde.ValueSerde for values, serde.KeySerde for keys). Into does not
// close d: close it after the Source. The Source calls deserializers from
// the goroutine that polls, one record at a time. Into returns nil, which
// kafka.NewSource refuses, if d is nil.
func Into[T any](d serde.Deserializer) kafka.Deserializer[T] {
	if d == nil {
		return nil
	}
	if t := reflect.TypeFor[T](); t.Kind() == reflect.Pointer {
		// d decodes into what the pointer points to: a new one per record.
		elem := t.Elem()
		return func(topic string, headers []pipeline.Header, data []byte) (T, error) {
			v := reflect.New(elem).Interface().(T)
			if err := d.DeserializeWithHeadersInto(topic, toKafka(headers), data, v); err != nil {
				var zero T
				return zero, err
			}
			return v, nil
		}
	}
	return func(topic string, headers []pipeline.Header, data []byte) (T, error) {
		var v T
		err := d.DeserializeWithHeadersInto(topic, toKafka(headers), data, &v)
		return v, err
	}
}

// toKafka converts the Message's headers to confluent-kafka-go's, which the
// deserializers take.
func toKafka(headers []pipeline.Header) []ckafka.Header {
	if len(headers) == 0 {
		return nil
	}
	out := make([]ckafka.Header, len(headers))
	for i, h := range headers {
		out[i] = ckafka.Header{Key: h.Key, Value: h.Value}
	}
	return out
}
