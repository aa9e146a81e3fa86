package kafka

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// recordingHandler keeps the messages of the records it handles.
type recordingHandler struct {
	mu   sync.Mutex
	msgs []string
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.msgs = append(h.msgs, r.Message)
	h.mu.Unlock()
	return nil
}
func (h *recordingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordingHandler) WithGroup(string) slog.Handler      { return h }

func (h *recordingHandler) messages() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.msgs...)
}

// offlineConfig is a consumer configuration that needs no broker until
// Subscribe: NewConsumer and NewSource never connect.
func offlineConfig() *ckafka.ConfigMap {
	return &ckafka.ConfigMap{"bootstrap.servers": "127.0.0.1:1", "group.id": "g"}
}

// The most specific logger wins: NewSource's, NewConsumer's, then the one
// inherited from the pipeline, then slog.Default().
func TestInheritLoggerPrecedence(t *testing.T) {
	own := slog.New(slog.NewTextHandler(io.Discard, nil))
	inherited := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tc := range []struct {
		name                   string
		consumerOpts, srcOpts  []Option
		wantSource, wantLibrdk *slog.Logger
	}{
		{"none given: the inherited one everywhere", nil, nil, inherited, inherited},
		{"NewSource's wins, for librdkafka too", nil, []Option{WithLogger(own)}, own, own},
		{"NewConsumer's wins, for the Source too", []Option{WithLogger(own)}, nil, own, own},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewConsumer(offlineConfig(), tc.consumerOpts...)
			require.NoError(t, err)
			src, err := NewSource(c, []string{"t"}, String, String, tc.srcOpts...)
			require.NoError(t, err)
			defer func() { require.NoError(t, src.Close()) }()
			src.InheritLogger(inherited)
			assert.Same(t, tc.wantSource, src.logger(), "the Source's logger")
			assert.Same(t, tc.wantLibrdk, src.info.logger.Load(), "librdkafka's logger")
		})
	}
}

func TestSourceLoggerDefaultIsSlogDefault(t *testing.T) {
	c, err := NewConsumer(offlineConfig())
	require.NoError(t, err)
	src, err := NewSource(c, []string{"t"}, String, String)
	require.NoError(t, err)
	defer func() { require.NoError(t, src.Close()) }()
	assert.Same(t, slog.Default(), src.logger())
	assert.Same(t, slog.Default(), src.info.logger.Load())
}

// nil means discard, given to WithLogger or to InheritLogger.
func TestNilLoggerDiscards(t *testing.T) {
	c, err := NewConsumer(offlineConfig())
	require.NoError(t, err)
	src, err := NewSource(c, []string{"t"}, String, String)
	require.NoError(t, err)
	defer func() { require.NoError(t, src.Close()) }()
	src.InheritLogger(nil)
	require.NotNil(t, src.logger())
	assert.Equal(t, slog.DiscardHandler, src.logger().Handler())
	assert.Equal(t, slog.DiscardHandler, src.info.logger.Load().Handler())

	var o options
	WithLogger(nil)(&o)
	assert.Equal(t, slog.DiscardHandler, o.logger.Handler())
	assert.True(t, o.loggerSet, "a nil logger is a choice: InheritLogger leaves it")
}

// A logger inherited after NewConsumer receives librdkafka's logs from then on.
func TestInheritedLoggerReceivesLibrdkafkaLogs(t *testing.T) {
	cfg := offlineConfig()
	c, err := NewConsumer(cfg, WithLogger(nil)) // NewConsumer's logger discards ...
	require.NoError(t, err)
	rec := &recordingHandler{}
	src, err := NewSource(c, []string{"t"}, String, String)
	require.NoError(t, err)
	src.InheritLogger(slog.New(rec)) // ... and is kept
	require.NoError(t, src.Subscribe(newListenerAny()))
	for range 5 {
		_, err := src.Poll(50 * time.Millisecond)
		require.NoError(t, err)
	}
	require.NoError(t, src.Close())
	assert.Empty(t, rec.messages())

	c, err = NewConsumer(cfg) // no logger: the inherited one gets librdkafka's logs
	require.NoError(t, err)
	src, err = NewSource(c, []string{"t"}, String, String)
	require.NoError(t, err)
	src.InheritLogger(slog.New(rec))
	require.NoError(t, src.Subscribe(newListenerAny()))
	// Nothing listens on the port: librdkafka logs the failed connections.
	deadline := time.Now().Add(10 * time.Second)
	for !hasPrefix(rec.messages(), "librdkafka: ") && time.Now().Before(deadline) {
		_, err := src.Poll(50 * time.Millisecond)
		require.NoError(t, err)
	}
	require.NoError(t, src.Close())
	var librdkafka, source int
	for _, m := range rec.messages() {
		switch {
		case strings.HasPrefix(m, "librdkafka: "):
			librdkafka++
		case strings.HasPrefix(m, "kafka: "):
			source++
		}
	}
	assert.Positive(t, librdkafka, "librdkafka's logs reach the inherited logger")
	assert.Positive(t, source, "the Source's own log lines too")
}

func hasPrefix(msgs []string, prefix string) bool {
	for _, m := range msgs {
		if strings.HasPrefix(m, prefix) {
			return true
		}
	}
	return false
}
