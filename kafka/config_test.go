package kafka

import (
	"errors"
	"testing"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSafeConfigFillsInAndRefuses(t *testing.T) {
	base := func(extra ckafka.ConfigMap) ckafka.ConfigMap {
		m := ckafka.ConfigMap{"bootstrap.servers": "127.0.0.1:9092", "group.id": "g"}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}

	in := base(nil)
	out, forward, err := safeConfig(in)
	require.NoError(t, err)
	assert.Equal(t, false, out["enable.auto.commit"])
	assert.Equal(t, false, out["enable.auto.offset.store"])
	assert.Equal(t, true, out["go.logs.channel.enable"])
	assert.True(t, forward)
	assert.NotContains(t, in, "enable.auto.commit", "the caller's map is not modified")
	// The fetch defaults are filled in; a caller's own value is kept.
	assert.Equal(t, 0, out["fetch.queue.backoff.ms"])
	assert.Equal(t, 1_000_000, out["queued.min.messages"])
	assert.Equal(t, 32768, out["queued.max.messages.kbytes"])
	assert.Equal(t, 262144, out["max.partition.fetch.bytes"])
	out, _, err = safeConfig(base(ckafka.ConfigMap{"fetch.queue.backoff.ms": 500, "queued.max.messages.kbytes": "4096"}))
	require.NoError(t, err)
	assert.Equal(t, 500, out["fetch.queue.backoff.ms"])
	assert.Equal(t, "4096", out["queued.max.messages.kbytes"])
	assert.Equal(t, 1_000_000, out["queued.min.messages"])

	for _, ok := range []ckafka.ConfigMap{
		{"enable.auto.commit": false, "enable.auto.offset.store": "false"},
		{"enable.auto.commit": "False", "enable.auto.offset.store": 0},
		{"go.events.channel.enable": false, "go.application.rebalance.enable": true},
	} {
		_, _, err := safeConfig(base(ok))
		assert.NoError(t, err, "%v", ok)
	}

	for _, bad := range []ckafka.ConfigMap{
		{"enable.auto.commit": true},
		{"enable.auto.commit": "true"},
		{"enable.auto.commit": 1},
		{"enable.auto.offset.store": true},
		{"go.events.channel.enable": true},
	} {
		_, _, err := safeConfig(base(bad))
		assert.ErrorIs(t, err, ErrUnsafeConfig, "%v", bad)
	}
	for _, odd := range []ckafka.ConfigMap{
		{"enable.auto.commit": "maybe"},
		{"enable.auto.offset.store": 1.5},
	} {
		_, _, err := safeConfig(base(odd))
		assert.Error(t, err, "%v", odd)
		assert.NotErrorIs(t, err, ErrUnsafeConfig)
	}

	// The caller keeps librdkafka's logging by setting it either way.
	out, forward, err = safeConfig(base(ckafka.ConfigMap{"go.logs.channel.enable": false}))
	require.NoError(t, err)
	assert.False(t, forward)
	assert.Equal(t, false, out["go.logs.channel.enable"])
}

func TestNewConsumerAndNewSourceChecks(t *testing.T) {
	c := newTestCluster(t)
	cfg := c.config(groupName(t), "range")

	_, err := NewConsumer(nil)
	require.Error(t, err)
	bad := ckafka.ConfigMap{}
	for k, v := range *cfg {
		bad[k] = v
	}
	bad["enable.auto.commit"] = true
	_, err = NewConsumer(&bad)
	require.ErrorIs(t, err, ErrUnsafeConfig)
	assert.Contains(t, err.Error(), "enable.auto.commit")
	assert.NotContains(t, *cfg, "enable.auto.commit")

	// A consumer that NewConsumer did not check is refused unless vouched for.
	raw, err := ckafka.NewConsumer(cfg)
	require.NoError(t, err)
	_, err = NewSource(raw, []string{"t"}, String, String)
	require.ErrorIs(t, err, ErrUnsafeConfig)
	src, err := NewSource(raw, []string{"t"}, String, String, WithUncheckedConsumer(), WithLogger(nil))
	require.NoError(t, err)
	_, err = NewSource(raw, []string{"t"}, String, String, WithUncheckedConsumer())
	require.Error(t, err, "one Source per consumer")
	require.NoError(t, src.Close(), "closing a never subscribed source")
	assert.True(t, raw.IsClosed())

	checked, err := NewConsumer(cfg, WithLogger(testLogger(t)))
	require.NoError(t, err)
	for name, fn := range map[string]func() error{
		"nil consumer": func() error { _, err := NewSource[string, string](nil, []string{"t"}, String, String); return err },
		"no topics":    func() error { _, err := NewSource(checked, nil, String, String); return err },
		"empty topic":  func() error { _, err := NewSource(checked, []string{""}, String, String); return err },
		"nil key":      func() error { _, err := NewSource[string, string](checked, []string{"t"}, nil, String); return err },
	} {
		assert.Error(t, fn(), name)
	}
	src2, err := NewSource(checked, []string{"t"}, Bytes, JSON[map[string]int]())
	require.NoError(t, err)
	_, err = src2.Poll(0)
	require.Error(t, err, "Poll before Subscribe")
	require.Error(t, src2.Subscribe(nil))
	require.NoError(t, src2.Close())
	_, err = NewSource(checked, []string{"t"}, String, String)
	require.Error(t, err, "closed consumer")
}

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

func TestMillis(t *testing.T) {
	assert.Equal(t, 0, millis(-1))
	assert.Equal(t, 0, millis(0))
	assert.Equal(t, 1, millis(1))
	assert.Equal(t, 1000, millis(1e9))
	assert.Equal(t, 1<<31-1, millis(1<<62))
}
