package franz

import (
	"github.com/parallafka/parallafka/internal/kafkaclient"
	"github.com/parallafka/parallafka/pipeline"
)

// Deserializer turns the bytes of a record's key or value into a T. topic is
// the topic the record was read from and headers are the record's headers
// (nil if it has none), for deserializers that depend on them: a schema per
// topic, a schema id or a content type carried in a header. Its signature
// is
//
//	func(topic string, headers []pipeline.Header, data []byte) (T, error)
//
// and it is the same type as package kafka's Deserializer: one function
// serves both clients.
//
// A Source never calls a deserializer for a null key or value (RawKey or
// RawValue nil): the Message's Key or Value is then the zero value of its
// type. An empty but non-null key or value is passed as an empty slice.
//
// data is the record's own copy, owned by the Message as RawKey or RawValue,
// and headers is the Message's Headers: a deserializer may keep them (Bytes
// does) but should not modify them.
//
// An error, or a panic, makes the message a poison pill: the Source returns
// it with Err set to a *DeserializeError, and the pipeline hands it to its
// error policy without calling the handler.
type Deserializer[T any] = kafkaclient.Deserializer[T]

// Bytes returns the record's bytes as they are, without copying: Key or
// Value is then the same slice as RawKey or RawValue.
func Bytes(topic string, headers []pipeline.Header, data []byte) ([]byte, error) {
	return kafkaclient.Bytes(topic, headers, data)
}

// String returns the record's bytes as a string.
func String(topic string, headers []pipeline.Header, data []byte) (string, error) {
	return kafkaclient.String(topic, headers, data)
}

// JSON returns a Deserializer that decodes JSON with encoding/json into a T.
func JSON[T any]() Deserializer[T] { return kafkaclient.JSON[T]() }

// DeserializeError reports a record whose key or value could not be
// deserialized. The Source sets it as the Message's Err; errors.Unwrap gives
// the deserializer's error. Its fields:
//
//	Topic     string
//	Partition int32
//	Offset    int64
//	Field     string // "key" or "value": the part that failed (the key when both did)
//	Err       error  // the deserializer's error, or the value it panicked with
//
// Its Error names the field and the cause, not the record's position: the
// pipeline reports a failed message as a *pipeline.MessageError that wraps
// it and names the position already. It is the same type as package
// kafka's DeserializeError, so errors.As finds it whichever client read the
// record.
type DeserializeError = kafkaclient.DeserializeError
