package kafkaclient

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka/pipeline"
)

func TestDeserializers(t *testing.T) {
	b, err := Bytes("t", nil, []byte("x"))
	require.NoError(t, err)
	assert.Equal(t, []byte("x"), b)
	s, err := String("t", nil, []byte("x"))
	require.NoError(t, err)
	assert.Equal(t, "x", s)
	type point struct{ X, Y int }
	p, err := JSON[point]()("t", nil, []byte(`{"X":1,"Y":2}`))
	require.NoError(t, err)
	assert.Equal(t, point{1, 2}, p)
	_, err = JSON[point]()("t", nil, []byte(`{`))
	require.Error(t, err)

	cause := errors.New("cause")
	de := &DeserializeError{Topic: "t", Partition: 1, Offset: 2, Field: "value", Err: cause}
	assert.ErrorIs(t, de, cause)
	assert.Equal(t, "kafka: cannot deserialize the value: cause", de.Error(),
		"the position is the wrapping MessageError's to tell")
}

// Decode passes the topic and headers, never calls a deserializer for a
// null key or value, turns a panic into an error, and names the key when
// both parts fail.
func TestDecode(t *testing.T) {
	hdrs := []pipeline.Header{{Key: "content-type", Value: []byte("text/plain")}}
	called := false
	var gotTopic string
	var gotHeaders []pipeline.Header
	msg := &pipeline.Message[int, string]{Topic: "t", Partition: 1, Offset: 2, Headers: hdrs, RawValue: []byte("v")}
	err := Decode(msg,
		func(string, []pipeline.Header, []byte) (int, error) { called = true; return 1, nil },
		func(topic string, h []pipeline.Header, data []byte) (string, error) {
			gotTopic, gotHeaders = topic, h
			return string(data), nil
		})
	require.NoError(t, err)
	assert.False(t, called, "a null key is not deserialized")
	assert.Zero(t, msg.Key)
	assert.Equal(t, "v", msg.Value)
	assert.Equal(t, "t", gotTopic)
	assert.Equal(t, hdrs, gotHeaders)

	msg = &pipeline.Message[int, string]{Topic: "t", Partition: 1, Offset: 2, RawKey: []byte{}, RawValue: []byte{}}
	err = Decode(msg,
		func(string, []pipeline.Header, []byte) (int, error) { panic("no") },
		func(string, []pipeline.Header, []byte) (string, error) { return "", errors.New("bad value") })
	var de *DeserializeError
	require.ErrorAs(t, err, &de)
	assert.Equal(t, DeserializeError{Topic: "t", Partition: 1, Offset: 2, Field: "key", Err: de.Err}, *de)
	assert.ErrorContains(t, de, "panicked: no")

	msg = &pipeline.Message[int, string]{Topic: "t", RawValue: []byte("x")}
	err = Decode(msg, func(string, []pipeline.Header, []byte) (int, error) { return 0, nil },
		func(string, []pipeline.Header, []byte) (string, error) { return "", errors.New("bad value") })
	require.ErrorAs(t, err, &de)
	assert.Equal(t, "value", de.Field)
}
