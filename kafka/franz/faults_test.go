package franz_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka/franz"
)

// consumeFor runs Consume on src until it returns or timeout passes, and
// returns its error and how long it took.
func consumeFor(t *testing.T, src *franz.Source[string, string], timeout time.Duration, opts ...parallafka.Option) (error, time.Duration) {
	t.Helper()
	p, err := parallafka.New(src, append([]parallafka.Option{parallafka.WithLogger(testLogger(t))}, opts...)...)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	err = p.Consume(ctx, func(context.Context, *parallafka.Message[string, string]) error { return nil })
	return err, time.Since(start)
}

// A topic that does not exist ends Consume with ErrUnknownTopic at once.
func TestUnknownTopic(t *testing.T) {
	c, _ := newCluster(t, 1)
	src := newSource(t, c, "g-unknown", "no-such-topic", nil)
	err, took := consumeFor(t, src, 20*time.Second)
	require.ErrorIs(t, err, franz.ErrUnknownTopic)
	assert.Less(t, took, 5*time.Second)
}

// No broker at the seed address: Consume ends with ErrUnreachable within a
// second of the startup timeout, and no goroutine is left behind.
func TestUnreachable(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close()) // nothing listens there now
	cl, err := franz.NewClient([]kgo.Opt{kgo.SeedBrokers(addr), kgo.ConsumerGroup("g")}, franz.WithLogger(testLogger(t)))
	require.NoError(t, err)
	src, err := franz.NewSource(cl, []string{"t"}, franz.String, franz.String, franz.WithStartupTimeout(2*time.Second))
	require.NoError(t, err)
	err, took := consumeFor(t, src, 20*time.Second)
	require.ErrorIs(t, err, franz.ErrUnreachable)
	assert.GreaterOrEqual(t, took, 2*time.Second)
	assert.Less(t, took, 3*time.Second, "the startup timeout is honoured within a second")
	t.Logf("ErrUnreachable after %v: %v", took, err)
}

// With the broker gone mid-stream, Consume returns within its shutdown
// timeout plus the Source's close timeout, and no goroutine of the Source or
// of franz-go runs after it returned.
func TestBoundedCloseBrokerGone(t *testing.T) {
	const n = 500
	c, topic := newCluster(t, 3)
	if c.fake == nil {
		t.Skip("needs the embedded broker, to stop it")
	}
	// After the skip: a skipped test's cluster client closes in t.Cleanup,
	// after the deferred check would run.
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	c.produce(t, topic, n, 10)
	c.admin.Close()
	led := newLedger()
	const shutdown, closeTimeout = 2 * time.Second, 3 * time.Second
	src := newSource(t, c, "g-"+topic, topic, nil, franz.WithCloseTimeout(closeTimeout))
	p, err := parallafka.New(src, parallafka.WithLogger(testLogger(t)), parallafka.WithShutdownTimeout(shutdown))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	handler := led.handler("A", 0)
	block := make(chan struct{})
	go func() {
		done <- p.Consume(ctx, func(ctx context.Context, m *parallafka.Message[string, string]) error {
			if m.Offset >= 100 {
				select { // in flight when the broker goes
				case <-block:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return handler(ctx, m)
		})
	}()
	waitFor(t, waitTimeout, "records handled", func() bool { return led.distinct() >= 100 })
	c.fake.Close()
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	cancel()
	var cerr error
	select {
	case cerr = <-done:
	case <-time.After(shutdown + closeTimeout + 5*time.Second):
		t.Fatal("Consume did not return")
	}
	took := time.Since(start)
	close(block)
	t.Logf("Consume returned after %v: %v", took, cerr)
	assert.Less(t, took, shutdown+closeTimeout+500*time.Millisecond, "Consume returns within shutdown + close timeout")
	select {
	case <-src.Closed():
	default:
		t.Error("the Source's Closed channel is not closed after Consume returned")
	}
	if cerr != nil && !errors.Is(cerr, context.Canceled) {
		t.Logf("Consume's error (expected with the broker gone): %v", cerr)
	}
}
