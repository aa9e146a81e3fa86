package kafkaclient

import (
	"encoding/json"
	"fmt"

	"github.com/parallafka/parallafka/pipeline"
)

// Deserializer is kafka.Deserializer and franz.Deserializer: it turns the
// bytes of a record's key or value into a T, given the record's topic and
// headers. Decode never calls it for a null key or value, and turns its
// panic into an error.
type Deserializer[T any] func(topic string, headers []pipeline.Header, data []byte) (T, error)

// Bytes returns data as it is, without copying.
func Bytes(_ string, _ []pipeline.Header, data []byte) ([]byte, error) { return data, nil }

// String returns data as a string.
func String(_ string, _ []pipeline.Header, data []byte) (string, error) { return string(data), nil }

// JSON returns a Deserializer that decodes JSON with encoding/json into a T.
func JSON[T any]() Deserializer[T] {
	return func(_ string, _ []pipeline.Header, data []byte) (T, error) {
		var v T
		err := json.Unmarshal(data, &v)
		return v, err
	}
}

// DeserializeError is kafka.DeserializeError and franz.DeserializeError: a
// record whose key or value could not be deserialized.
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

// Decode sets msg.Key and msg.Value from msg.RawKey and msg.RawValue with
// key and value, passing them msg.Topic and msg.Headers. It returns nil, or
// a *DeserializeError naming the part that failed (the key, when both did):
// the Source sets it as msg.Err. A null key or value (nil) is not passed to
// its deserializer: Key or Value is then the zero value.
func Decode[K, V any](msg *pipeline.Message[K, V], key Deserializer[K], value Deserializer[V]) error {
	var keyErr, valErr error
	msg.Key, keyErr = deserialize(key, msg.Topic, msg.Headers, msg.RawKey)
	msg.Value, valErr = deserialize(value, msg.Topic, msg.Headers, msg.RawValue)
	field, err := "key", keyErr
	if err == nil {
		field, err = "value", valErr
	}
	if err == nil {
		return nil
	}
	return &DeserializeError{Topic: msg.Topic, Partition: msg.Partition, Offset: msg.Offset, Field: field, Err: err}
}

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
