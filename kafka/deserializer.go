package kafka

import (
	"encoding/json"
	"fmt"

	"github.com/parallafka/parallafka/pipeline"
)

// Deserializer turns the bytes of a record's key or value into a T. topic is
// the topic the record was read from and headers are the record's headers
// (nil if it has none), for deserializers that depend on them: a schema per
// topic, a schema id or a content type carried in a header (package
// kafka/srserde adapts confluent-kafka-go's schema-registry deserializers).
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
type Deserializer[T any] func(topic string, headers []pipeline.Header, data []byte) (T, error)

// Bytes returns the record's bytes as they are, without copying: Key or
// Value is then the same slice as RawKey or RawValue.
func Bytes(_ string, _ []pipeline.Header, data []byte) ([]byte, error) { return data, nil }

// String returns the record's bytes as a string.
func String(_ string, _ []pipeline.Header, data []byte) (string, error) { return string(data), nil }

// JSON returns a Deserializer that decodes JSON with encoding/json into a T.
func JSON[T any]() Deserializer[T] {
	return func(_ string, _ []pipeline.Header, data []byte) (T, error) {
		var v T
		err := json.Unmarshal(data, &v)
		return v, err
	}
}

// DeserializeError reports a record whose key or value could not be
// deserialized. The Source sets it as the Message's Err; errors.Unwrap gives
// the deserializer's error.
type DeserializeError struct {
	Topic     string
	Partition int32
	Offset    int64
	// Field is "key" or "value": the part of the record that failed (the key
	// when both did).
	Field string
	// Err is the deserializer's error (or the value it panicked with,
	// wrapped in an error).
	Err error
}

// Error names the part of the record that could not be deserialized and
// why. It leaves the record's position out: the pipeline reports a failed
// message as a *pipeline.MessageError that wraps this error and names the
// position already (the fields here hold it too).
func (e *DeserializeError) Error() string {
	return fmt.Sprintf("kafka: cannot deserialize the %s: %v", e.Field, e.Err)
}

// Unwrap returns the deserializer's error.
func (e *DeserializeError) Unwrap() error { return e.Err }

// deserialize runs d on data, turning a panic into an error.
func deserialize[T any](d Deserializer[T], topic string, headers []pipeline.Header, data []byte) (v T, err error) {
	if data == nil {
		return v, nil
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("deserializer panicked: %v", r)
		}
	}()
	return d(topic, headers, data)
}
