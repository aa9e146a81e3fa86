// Package integration_test runs Parallafka end to end over the kafka adapter
// against a Kafka broker: the embedded one of kafkatest by default, or the
// one named by KAFKA_BROKERS (CI sets it to a real Apache Kafka). Every test
// uses its own topics and groups, so runs on a shared broker never collide.
//
// INTEGRATION_LOG=info (or debug) shows the pipeline's and the adapter's
// logs; t.Logf reports the figures (throughput, hand-over times, messages
// redone after a crash) with -v.
package integration_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/internal/keyed"
	"github.com/parallafka/parallafka/kafka"
	"github.com/parallafka/parallafka/kafka/kafkatest"
	"github.com/parallafka/parallafka/pipeline"
)

// TestMain checks that nothing is left running: not the pipelines, not the
// consumers (librdkafka starts no Go goroutines of its own once closed),
// not the embedded brokers or kafkatest's clients.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func brokerKind(c *kafkatest.Cluster) string {
	if c.Embedded() {
		return "embedded broker"
	}
	return "broker " + c.Bootstrap()
}

func groupFor(t testing.TB) string { return kafkatest.UniqueTopic("group-" + t.Name()) }

// checkCommittedToEnd checks that group's committed offsets are the end
// offsets of every non-empty partition of topic.
func checkCommittedToEnd(t testing.TB, c *kafkatest.Cluster, group, topic string) {
	t.Helper()
	ctx := context.Background()
	end, err := c.EndOffsets(ctx, topic)
	require.NoError(t, err)
	committed, err := c.CommittedOffsets(ctx, group, topic)
	require.NoError(t, err)
	for p, e := range end {
		if e > 0 {
			assert.Equal(t, e, committed[p], "committed offset of partition %d", p)
		}
	}
}

// TestEndToEnd consumes tens of thousands of keyed messages with many
// concurrent handlers: each is handled exactly once, each key in order, and
// the committed offsets reach the end of every partition.
func TestEndToEnd(t *testing.T) {
	const messages, partitions, keys, concurrency = 30000, 6, 500, 64
	c := kafkatest.New(t)
	topic := newTopic(t, c, partitions)
	group := groupFor(t)

	start := time.Now()
	produced, err := keyed.Produce(context.Background(), c, topic, messages, keys)
	require.NoError(t, err)
	produceTime := time.Since(start)

	rec := newRecorder()
	consumeStart := time.Now()
	m := startMember(t, c, memberSpec{
		name: "A", group: group, topic: topic, observer: rec,
		work:    sleepBetween(0, time.Millisecond),
		options: []parallafka.Option{parallafka.WithMaxConcurrency(concurrency)},
	})
	waitFor(t, 2*waitTimeout, "every message handled", func() bool { return rec.distinct() == messages })
	handledAt := time.Now()
	require.NoError(t, m.stop(t))

	res := rec.check(t, produced)
	assert.Zero(t, res.duplicates, "duplicates without any failure or rebalance")
	checkCommittedToEnd(t, c, group, topic)
	st := m.p.Stats()
	assert.Equal(t, int64(messages), st.Finished)
	assert.Zero(t, st.Failed)
	assert.Zero(t, st.InFlight)

	busy := res.lastEnd.Sub(res.firstStart)
	t.Logf("end to end on the %s: %d messages, %d keys, %d partitions, concurrency %d, handlers sleep 0-1 ms", brokerKind(c), messages, keys, partitions, concurrency)
	t.Logf("  produced in %v (%.0f msg/s); consumed in %v from Consume to the last message (%.0f msg/s), %v from the first message to the last (%.0f msg/s); %d commits",
		produceTime.Round(time.Millisecond), float64(messages)/produceTime.Seconds(),
		handledAt.Sub(consumeStart).Round(time.Millisecond), float64(messages)/handledAt.Sub(consumeStart).Seconds(),
		busy.Round(time.Millisecond), float64(messages)/busy.Seconds(), st.Commits)
}

// TestRestart stops a member gracefully mid-stream and starts another in
// the same group: it starts exactly where the first committed, nothing is
// lost, and only what the first finished past its last commit (messages of
// other keys that overtook one still queued behind its key when the stop
// dropped the backlog) is handled again.
func TestRestart(t *testing.T) {
	const messages, partitions, keys = 3000, 3, 60
	c := kafkatest.New(t)
	topic := newTopic(t, c, partitions)
	group := groupFor(t)
	produced, err := keyed.Produce(context.Background(), c, topic, messages, keys)
	require.NoError(t, err)

	rec := newRecorder()
	spec := func(name string) memberSpec {
		return memberSpec{
			name: name, group: group, topic: topic, observer: rec,
			work:    sleepBetween(0, 2*time.Millisecond),
			options: []parallafka.Option{parallafka.WithMaxConcurrency(8)},
		}
	}
	first := startMember(t, c, spec("first"))
	waitFor(t, waitTimeout, "the first member to handle 1000 messages", func() bool { return rec.handledBy("first") >= 1000 })
	require.NoError(t, first.stop(t))
	firstHandled := rec.handledBy("first")
	require.Less(t, firstHandled, messages, "the first member finished the topic before it was stopped")
	committed, err := c.CommittedOffsets(context.Background(), group, topic)
	require.NoError(t, err)

	second := startMember(t, c, spec("second"))
	waitFor(t, waitTimeout, "every message handled", func() bool { return rec.distinct() == messages })
	require.NoError(t, second.stop(t))

	res := rec.check(t, produced)
	checkCommittedToEnd(t, c, group, topic)
	assert.Zero(t, res.duplicates, "records handled again after a graceful restart")
	t.Logf("restart on the %s: the first member handled %d of %d messages and committed %v; the second handled %d; redone: %d (all finished past the first member's commit; %d partitions held back by a dispatchable message that was overtaken)",
		brokerKind(c), firstHandled, messages, committed, rec.handledBy("second"), res.duplicates, res.overtaken)
}

// TestBackPressure consumes a large backlog with slow handlers and a small
// in-flight limit: the limit holds, the partitions are paused, and the
// member keeps polling, so it stays in its group although
// max.poll.interval.ms is shorter than the run.
func TestBackPressure(t *testing.T) {
	// Handlers that free a slot every ~1 ms: the poller waits for room and
	// rarely needs to pause (pausing drops librdkafka's prefetch).
	t.Run("steady", func(t *testing.T) { testBackPressure(t, 5000, 50, 4, 5*time.Millisecond, false) })
	// Handlers that hold every slot for longer than the poller waits: the
	// partitions are paused while polling goes on.
	t.Run("stalled", func(t *testing.T) { testBackPressure(t, 100, 8, 4, 300*time.Millisecond, true) })
}

func testBackPressure(t *testing.T, messages, maxInFlight, concurrency int, work time.Duration, mustPause bool) {
	const partitions, keys = 2, 100
	const maxPollInterval = 6 * time.Second // the shortest librdkafka accepts with kafkatest's 6 s session timeout
	c := kafkatest.New(t)
	topic := newTopic(t, c, partitions)
	group := groupFor(t)
	produced, err := keyed.Produce(context.Background(), c, topic, messages, keys)
	require.NoError(t, err)

	rec := newRecorder()
	start := time.Now()
	m := startMember(t, c, memberSpec{
		name: "A", group: group, topic: topic, observer: rec,
		config: map[string]any{"max.poll.interval.ms": int(maxPollInterval / time.Millisecond)},
		work:   sleepBetween(work, work),
		options: []parallafka.Option{
			parallafka.WithMaxConcurrency(concurrency), parallafka.WithMaxInFlight(maxInFlight), parallafka.WithRevokeTimeout(3 * time.Second),
		},
	})

	var peak, samples int64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			peak = max(peak, m.p.Stats().InFlight)
			samples++
		}
	})
	waitFor(t, 2*waitTimeout, "every message handled", func() bool { return rec.distinct() == messages })
	elapsed := time.Since(start)
	close(done)
	wg.Wait()
	require.NoError(t, m.stop(t))

	st := m.p.Stats()
	assert.LessOrEqual(t, peak, int64(maxInFlight), "in flight beyond WithMaxInFlight")
	assert.Positive(t, peak)
	if mustPause {
		assert.Positive(t, st.Pauses, "back-pressure never paused the partitions")
	}
	assert.Greater(t, elapsed, maxPollInterval, "the run must outlast max.poll.interval.ms to show that the member kept polling")
	runs := rec.runsCopy()
	assert.Len(t, runs, partitions, "each partition assigned once: no rebalance")
	for _, ru := range runs {
		assert.False(t, ru.lost, "partition %d lost", ru.partition)
		if !ru.revokeStart.IsZero() {
			assert.False(t, ru.revokeStart.Before(m.stopped), "partition %d revoked before the stop", ru.partition)
		}
	}
	res := rec.check(t, produced)
	assert.Zero(t, res.duplicates)
	checkCommittedToEnd(t, c, group, topic)
	lat := rec.resumeLatencies("A")
	ms := func(i int) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[i].Round(time.Millisecond)
	}
	t.Logf("back-pressure on the %s: %d messages in %v (handling alone needs %v; max.poll.interval.ms %v), peak in flight %d of %d (%d samples), %d pauses, no rebalance; resume → next message min %v, median %v, max %v",
		brokerKind(c), messages, elapsed.Round(time.Millisecond), time.Duration(messages/concurrency)*work,
		maxPollInterval, peak, maxInFlight, samples, st.Pauses, ms(0), ms(len(lat)/2), ms(max(len(lat)-1, 0)))
}

type payload struct {
	N int `json:"n"`
}

var errBoom = errors.New("boom")

// TestFailures: a record that does not deserialize (a poison pill) and a
// handler error stop Consume under the default policy, with the failed
// record uncommitted and nothing lost; a member of the same group with
// SkipOnError then skips it and commits to the end.
func TestFailures(t *testing.T) {
	t.Run("poison-pill", func(t *testing.T) { testFailure(t, true) })
	t.Run("handler-error", func(t *testing.T) { testFailure(t, false) })
}

func testFailure(t *testing.T, poison bool) {
	const perPartition, failAt = 150, 100
	c := kafkatest.New(t)
	topic := newTopic(t, c, 2)
	group := groupFor(t)
	var recs []kafkatest.Record
	for p := range int32(2) {
		for i := range perPartition {
			v := fmt.Appendf(nil, `{"n":%d}`, i)
			if poison && p == 0 && i == failAt {
				v = []byte(`{"n": not json`)
			}
			recs = append(recs, kafkatest.Record{Key: fmt.Appendf(nil, "k%d", i%10), Value: v, Partition: p})
		}
	}
	require.NoError(t, c.Produce(context.Background(), topic, recs))
	bad := po{0, failAt}

	var mu sync.Mutex
	handled := map[po]int{}
	var problems []string
	handler := func(ctx context.Context, msg *parallafka.Message[string, payload]) error {
		x := po{msg.Partition, msg.Offset}
		if x == bad {
			if poison {
				mu.Lock()
				problems = append(problems, "the poison pill reached the handler")
				mu.Unlock()
			}
			return fmt.Errorf("handling %s: %w", msg, errBoom)
		}
		if msg.Value.N != int(msg.Offset) {
			mu.Lock()
			problems = append(problems, fmt.Sprintf("%s: value %+v", msg, msg.Value))
			mu.Unlock()
		}
		time.Sleep(randDuration(time.Millisecond))
		mu.Lock()
		handled[x]++
		mu.Unlock()
		return nil
	}
	newP := func(opts ...parallafka.Option) *parallafka.Parallafka[string, payload] {
		log := testLogger(t)
		src, err := newMemberSource(t, c, group, topic, nil, kafka.JSON[payload](), log)
		require.NoError(t, err)
		p, err := parallafka.New(src, append([]parallafka.Option{parallafka.WithLogger(log), parallafka.WithMaxConcurrency(8)}, opts...)...)
		require.NoError(t, err)
		return p
	}

	// The default policy: Consume stops by itself and returns the error.
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	p := newP()
	err := p.Consume(ctx, handler)
	require.Error(t, err)
	require.NoError(t, ctx.Err(), "Consume did not stop on the failure")
	t.Logf("Consume returned: %v", err)
	var me *pipeline.MessageError
	require.ErrorAs(t, err, &me)
	assert.Equal(t, bad, po{me.Partition, me.Offset})
	if poison {
		var de *kafka.DeserializeError // franz.DeserializeError is the same type
		require.ErrorAs(t, err, &de)
		assert.Equal(t, bad, po{de.Partition, de.Offset})
		assert.Equal(t, "value", de.Field)
		assert.Equal(t, topic, de.Topic)
	} else {
		assert.ErrorIs(t, err, errBoom)
	}
	assert.NotErrorIs(t, err, parallafka.ErrShutdownTimeout)
	assert.Equal(t, int64(1), p.Stats().Failed)
	committed, err := c.CommittedOffsets(context.Background(), group, topic)
	require.NoError(t, err)
	assert.LessOrEqual(t, committed[0], int64(failAt), "the failed record was committed")
	mu.Lock()
	for part, off := range committed {
		for o := range off {
			assert.Positive(t, handled[po{part, o}], "committed %d@%d without handling it", part, off)
		}
	}
	mu.Unlock()
	t.Logf("stopped with committed offsets %v", committed)

	// SkipOnError: the same group goes on past the failed record.
	p = newP(parallafka.WithErrorPolicy(parallafka.SkipOnError))
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	consumed := make(chan error, 1)
	go func() { consumed <- p.Consume(ctx, handler) }()
	waitFor(t, waitTimeout, "the group's commits to reach the end", func() bool {
		committed, err := c.CommittedOffsets(context.Background(), group, topic)
		require.NoError(t, err)
		return committed[0] == perPartition && committed[1] == perPartition
	})
	cancel()
	select {
	case err := <-consumed:
		require.NoError(t, err)
	case <-time.After(waitTimeout):
		t.Fatal("Consume did not return after its context was cancelled")
	}
	st := p.Stats()
	assert.Equal(t, int64(1), st.Skipped)
	assert.Equal(t, int64(1), st.Failed)
	checkCommittedToEnd(t, c, group, topic)
	mu.Lock()
	defer mu.Unlock()
	for _, pr := range problems {
		t.Error(pr)
	}
	for part := range int32(2) {
		for o := range int64(perPartition) {
			if x := (po{part, o}); x != bad {
				assert.Positive(t, handled[x], "record %s lost", x)
			}
		}
	}
	assert.Zero(t, handled[bad])
}
