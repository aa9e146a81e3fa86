package kafka

import (
	"encoding/json"
	"fmt"
)

// Deserializer turns the bytes of a record's key or value into a T. topic is
// the topic the record was read from, for deserializers that depend on it
// (a schema per topic, for example).
//
// A Source never calls a deserializer for a null key or value (RawKey or
// RawValue nil): the Message's Key or Value is then the zero value of its
// type. An empty but non-null key or value is passed as an empty slice.
//
// data is the record's own copy, owned by the Message as RawKey or RawValue:
// a deserializer may keep it (Bytes does) but should not modify it.
//
// An error, or a panic, makes the message a poison pill: the Source returns
// it with Err set to a *DeserializeError, and the pipeline hands it to its
// error policy without calling the handler.
type Deserializer[T any] func(topic string, data []byte) (T, error)

// Bytes returns the record's bytes as they are, without copying: Key or
// Value is then the same slice as RawKey or RawValue.
func Bytes(_ string, data []byte) ([]byte, error) { return data, nil }

// String returns the record's bytes as a string.
func String(_ string, data []byte) (string, error) { return string(data), nil }

// JSON returns a Deserializer that decodes JSON with encoding/json into a T.
func JSON[T any]() Deserializer[T] {
	return func(_ string, data []byte) (T, error) {
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

// Error names the record and the part of it that could not be deserialized.
func (e *DeserializeError) Error() string {
	return fmt.Sprintf("kafka: cannot deserialize the %s of %s[%d]@%d: %v",
		e.Field, e.Topic, e.Partition, e.Offset, e.Err)
}

// Unwrap returns the deserializer's error.
func (e *DeserializeError) Unwrap() error { return e.Err }

// deserialize runs d on data, turning a panic into an error.
func deserialize[T any](d Deserializer[T], topic string, data []byte) (v T, err error) {
	if data == nil {
		return v, nil
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("deserializer panicked: %v", r)
		}
	}()
	return d(topic, data)
}
