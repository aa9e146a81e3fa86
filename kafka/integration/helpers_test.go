package integration_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/internal/keyed"
	"github.com/parallafka/parallafka/kafka/kafkatest"
	"github.com/parallafka/parallafka/pipeline"
)

// waitTimeout is the generous deadline of a wait for a condition: a
// condition that does not hold by then is a failure, not slowness.
const waitTimeout = 40 * time.Second

// logEnv sets the level of the pipeline's logs in test output: debug, info,
// warn (the default) or error.
const logEnv = "INTEGRATION_LOG"

// testLogger logs to t at the level named by INTEGRATION_LOG, until the
// test's cleanups are done.
func testLogger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if v := os.Getenv(logEnv); v != "" {
		if err := level.UnmarshalText([]byte(v)); err != nil {
			t.Fatalf("%s=%q: %v", logEnv, v, err)
		}
	}
	w := &testWriter{t: t}
	t.Cleanup(func() { w.done.Store(true) })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

type testWriter struct {
	t    testing.TB
	done atomic.Bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// newTopic creates a topic with a unique name on c.
func newTopic(t testing.TB, c *kafkatest.Cluster, partitions int) string {
	t.Helper()
	topic := kafkatest.UniqueTopic(t.Name())
	require.NoError(t, c.CreateTopic(context.Background(), topic, partitions))
	return topic
}

// waitFor polls cond until it holds, and fails the test if it does not
// within timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// po names one record: partition and offset.
type po struct {
	p int32
	o int64
}

func (x po) String() string { return fmt.Sprintf("%d@%d", x.p, x.o) }

// producer writes keyed records as keyed.Produce does (record i of
// the topic has key keyed.Key(i%keys) and sequence number i/keys within its
// key), but across many calls, so that a test can keep producing while it
// consumes. It is used from one goroutine at a time; records may be read
// concurrently.
type producer struct {
	c     *kafkatest.Cluster
	topic string
	keys  int

	mu      sync.Mutex
	next    int
	records []kafkatest.Record
}

func newProducer(c *kafkatest.Cluster, topic string, keys int) *producer {
	return &producer{c: c, topic: topic, keys: keys}
}

func (p *producer) produce(ctx context.Context, n int) error {
	recs := make([]kafkatest.Record, n)
	for i := range recs {
		j := p.next + i
		recs[i] = kafkatest.Record{
			Key:       keyed.Key(j % p.keys),
			Value:     keyed.Value(j%p.keys, j/p.keys),
			Partition: -1,
		}
	}
	if err := p.c.Produce(ctx, p.topic, recs); err != nil {
		return err
	}
	p.mu.Lock()
	p.next += n
	p.records = append(p.records, recs...)
	p.mu.Unlock()
	return nil
}

// produceFor keeps producing batch records every interval until ctx is
// cancelled; the returned function stops it and returns its error.
func (p *producer) produceFor(ctx context.Context, batch int, interval time.Duration) (stop func() error) {
	ctx, cancel := context.WithCancel(ctx)
	var err error
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if e := p.produce(ctx, batch); e != nil {
				if ctx.Err() == nil {
					err = e
				}
				return
			}
		}
	})
	return func() error { cancel(); wg.Wait(); return err }
}

func (p *producer) produced() []kafkatest.Record {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.records)
}

func (p *producer) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.records)
}

// work is what a test's handler does with a message, after the recorder
// has noted its start.
type work func(ctx context.Context, msg *parallafka.Message[string, []byte]) error

// sleepBetween returns work that sleeps a random time between lo and hi.
func sleepBetween(lo, hi time.Duration) work {
	return func(context.Context, *parallafka.Message[string, []byte]) error {
		time.Sleep(lo + randDuration(hi-lo))
		return nil
	}
}

// member is one Parallafka consuming in the background: a member of a
// consumer group with a consumer of its own.
type member struct {
	name    string
	p       *parallafka.Parallafka[string, []byte]
	cancel  context.CancelFunc
	done    chan struct{}
	err     error
	stopped time.Time
}

type memberSpec struct {
	name     string
	group    string
	topic    string
	config   map[string]any // consumer settings on top of kafkatest's
	work     work
	options  []parallafka.Option
	observer *recorder
}

// startMember builds a consumer with kafka.NewConsumer, wraps its Source so
// that rec observes rebalances, commits and handling, and runs Consume
// until stop. A test cleanup stops it if the test did not.
func startMember(t testing.TB, c *kafkatest.Cluster, s memberSpec) *member {
	t.Helper()
	handler := s.observer.handler(s.name, s.work)
	return runMember(t, c, s, func(ctx context.Context, p *parallafka.Parallafka[string, []byte]) error {
		return p.Consume(ctx, handler)
	})
}

// runMember is startMember with the consume call given: Consume or
// ConsumeBatch.
func runMember(t testing.TB, c *kafkatest.Cluster, s memberSpec,
	consume func(context.Context, *parallafka.Parallafka[string, []byte]) error) *member {
	t.Helper()
	log := testLogger(t).With("member", s.name)
	src, err := newBytesSource(t, c, s.group, s.topic, s.config, log)
	require.NoError(t, err)
	obs := &observedSource{Source: src, member: s.name, rec: s.observer}
	p, err := parallafka.New(obs, append([]parallafka.Option{parallafka.WithLogger(log)}, s.options...)...)
	if err != nil {
		_ = src.Close()
		require.NoError(t, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &member{name: s.name, p: p, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(m.done)
		m.err = consume(ctx, p)
	}()
	t.Cleanup(func() {
		if m.stopped.IsZero() {
			m.stop(t)
		}
	})
	return m
}

// stop cancels the member's context (a graceful stop) and waits for
// Consume to return, and returns its error.
func (m *member) stop(t testing.TB) error {
	t.Helper()
	m.stopped = time.Now()
	m.cancel()
	select {
	case <-m.done:
	case <-time.After(waitTimeout):
		t.Errorf("member %s: Consume did not return within %v of its stop", m.name, waitTimeout)
		<-m.done
	}
	return m.err
}

// stopAll stops the members concurrently and checks that each returned nil.
func stopAll(t testing.TB, ms ...*member) {
	t.Helper()
	for _, m := range ms {
		m.stopped = time.Now()
		m.cancel()
	}
	for _, m := range ms {
		require.NoError(t, m.stop(t), "member %s", m.name)
	}
}

// observedSource is a parallafka.Source that tells a recorder about the
// rebalances its listener receives and the offsets it commits.
type observedSource struct {
	parallafka.Source[string, []byte]
	member string
	rec    *recorder
}

func (s *observedSource) Subscribe(l pipeline.RebalanceListener) error {
	return s.Source.Subscribe(&observedListener{inner: l, s: s})
}

func (s *observedSource) Commit(ctx context.Context, offsets []pipeline.Offset) error {
	err := s.Source.Commit(ctx, offsets)
	done := offsets
	if err != nil {
		done = committedOf(err)
	}
	s.rec.committed(s.member, done)
	return err
}

func (s *observedSource) Pause(parts []pipeline.TopicPartition) error {
	s.rec.paused(s.member, true)
	return s.Source.Pause(parts)
}

func (s *observedSource) Resume(parts []pipeline.TopicPartition) error {
	s.rec.paused(s.member, false)
	return s.Source.Resume(parts)
}

func (s *observedSource) Poll(timeout time.Duration) (*pipeline.Message[string, []byte], error) {
	msg, err := s.Source.Poll(timeout)
	if msg != nil {
		s.rec.polled(s.member, msg.Partition)
	}
	return msg, err
}

// PollBatch records each message as Poll does, over the source's PollBatch
// (both clients' sources have one): the suite runs the path the pipeline
// takes.
func (s *observedSource) PollBatch(timeout time.Duration, dst []*pipeline.Message[string, []byte], max int, maxBytes int64) ([]*pipeline.Message[string, []byte], error) {
	start := len(dst)
	dst, err := s.Source.(pipeline.BatchSource[string, []byte]).PollBatch(timeout, dst, max, maxBytes)
	for _, msg := range dst[start:] {
		s.rec.polled(s.member, msg.Partition)
	}
	return dst, err
}

type observedListener struct {
	inner pipeline.RebalanceListener
	s     *observedSource
}

func (l *observedListener) PartitionsAssigned(committed []pipeline.Offset) {
	parts := make([]pipeline.TopicPartition, len(committed))
	for i, off := range committed {
		parts[i] = off.TopicPartition
	}
	l.s.rec.assigned(l.s.member, parts)
	l.inner.PartitionsAssigned(committed)
}

func (l *observedListener) PartitionsRevoked(parts []pipeline.TopicPartition) {
	start := time.Now()
	l.inner.PartitionsRevoked(parts)
	l.s.rec.revoked(l.s.member, parts, start, time.Now(), false)
}

func (l *observedListener) PartitionsLost(parts []pipeline.TopicPartition) {
	start := time.Now()
	l.inner.PartitionsLost(parts)
	l.s.rec.revoked(l.s.member, parts, start, time.Now(), true)
}
