package integration_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/internal/keyed"
	"github.com/parallafka/parallafka/kafka/kafkatest"
)

// batchHandler is handler for batches: at a batch's start it checks that
// none of its keys is in a handler elsewhere (any member), holds them for
// the batch, waits delay (lo to hi), then records every message as
// handled, in batch order (a key's messages come in offset order).
func (r *recorder) batchHandler(member string, lo, hi time.Duration) parallafka.BatchHandler[string, []byte] {
	return func(ctx context.Context, batch []*parallafka.Message[string, []byte]) error {
		start := time.Now()
		evs := make([]event, 0, len(batch))
		r.mu.Lock()
		mine := map[string]bool{}
		for _, msg := range batch {
			key, seq, perr := keyed.Parse(msg.Value)
			if perr != nil || key != msg.Key {
				r.problem("%s: message %s: key %q, value %q", member, msg, msg.Key, msg.Value)
			}
			ru := r.current[member][msg.Partition]
			switch {
			case ru == nil:
				r.problem("%s: handling %s of a partition never assigned", member, msg)
			case !ru.revokeEnd.IsZero():
				r.problem("%s: handling %s after its partition was revoked", member, msg)
			case ru.firstStart.IsZero():
				ru.firstStart = start
			}
			if ru != nil && (ru.lowest < 0 || msg.Offset < ru.lowest) {
				ru.lowest = msg.Offset
			}
			if other, ok := r.busy[key]; ok && !mine[key] {
				r.problem("%s: key %s in a batch of %s and one of %s at once (%s)", member, key, other, member, msg)
			}
			r.busy[key], mine[key] = member, true
			evs = append(evs, event{member: member, po: po{msg.Partition, msg.Offset}, key: key, seq: seq, start: start, run: ru})
		}
		r.mu.Unlock()

		time.Sleep(lo + randDuration(hi-lo))

		r.mu.Lock()
		defer r.mu.Unlock()
		end := time.Now()
		for key := range mine {
			delete(r.busy, key)
		}
		for _, ev := range evs {
			r.stamp++
			ev.stamp, ev.end = r.stamp, end
			r.events = append(r.events, ev)
			r.count[ev.po]++
			r.handled[member]++
			if ev.run != nil {
				ev.run.handled = append(ev.run.handled, ev.po.o)
			}
		}
		return nil
	}
}

// startBatchMember is startMember with ConsumeBatch: batches take lo to hi.
func startBatchMember(t testing.TB, c *kafkatest.Cluster, s memberSpec, lo, hi time.Duration) *member {
	t.Helper()
	handler := s.observer.batchHandler(s.name, lo, hi)
	return runMember(t, c, s, func(ctx context.Context, p *parallafka.Parallafka[string, []byte]) error {
		return p.ConsumeBatch(ctx, handler)
	})
}

// TestBatchRebalance runs ConsumeBatch members of one group while messages
// keep coming: A starts alone, B joins, B leaves gracefully, A goes on to
// the end. Batches (2 to 6 ms) finish well within the revoke timeout, so
// nothing is handled twice; nothing is lost, no key is in two batches at
// once (in any member), keys keep their order, and every partition's next
// owner starts at the offset its previous owner committed.
func TestBatchRebalance(t *testing.T) {
	for _, strategy := range []string{"range", "cooperative-sticky"} {
		t.Run(strategy, func(t *testing.T) { testBatchRebalance(t, strategy) })
	}
}

func testBatchRebalance(t *testing.T, strategy string) {
	h := handOver(t, strategy, []parallafka.Option{parallafka.WithMaxConcurrency(3), parallafka.WithMaxBatch(40, 4<<20),
		parallafka.WithMaxInFlight(500)}, func(c *kafkatest.Cluster, s memberSpec) *member {
		return startBatchMember(t, c, s, 2*time.Millisecond, 6*time.Millisecond)
	})
	st := h.a.p.Stats()
	assert.Greater(t, st.MeanBatchSize, 1.0)
	t.Logf("batch rebalance (%s) on the %s: %d messages; A %d (%d batches, mean %.1f), B %d; redone %d",
		strategy, h.broker, h.total, h.rec.handledBy("A"), st.Batches, st.MeanBatchSize, h.rec.handledBy("B"), h.redone)
}

// handOver is the hand-over scenario of the batch and adaptive rebalance
// tests: a topic of 6 partitions and 60 keys with a backlog of 3,000 and
// 1,000 msg/s more while it runs; member A starts alone, B joins and
// handles 300 messages, B leaves gracefully, A goes on to the end. It
// checks that nothing was lost or handled twice, keys kept their order and
// every partition was committed to its end, and returns the run.
func handOver(t *testing.T, strategy string, options []parallafka.Option,
	start func(*kafkatest.Cluster, memberSpec) *member) handOverRun {
	t.Helper()
	const partitions, keys, backlog = 6, 60, 3000
	c := kafkatest.New(t)
	topic := newTopic(t, c, partitions)
	group := groupFor(t)
	ctx := context.Background()

	prod := newProducer(c, topic, keys)
	require.NoError(t, prod.produce(ctx, backlog))
	stopProducing := sync.OnceValue(prod.produceFor(ctx, 20, 20*time.Millisecond)) // 1,000 msg/s meanwhile
	t.Cleanup(func() { _ = stopProducing() })

	h := handOverRun{rec: newRecorder(), broker: brokerKind(c)}
	spec := func(name string) memberSpec {
		return memberSpec{
			name: name, group: group, topic: topic, observer: h.rec,
			config:  map[string]any{"partition.assignment.strategy": strategy},
			work:    sleepBetween(time.Millisecond, 3*time.Millisecond),
			options: options,
		}
	}
	h.a = start(c, spec("A"))
	waitFor(t, waitTimeout, "A to handle 1,000 messages", func() bool { return h.rec.handledBy("A") >= 1000 })
	h.b = start(c, spec("B"))
	waitFor(t, waitTimeout, "B to take partitions and handle 300 messages", func() bool {
		return len(h.rec.owned("B")) > 0 && h.rec.handledBy("B") >= 300
	})
	h.bStats = h.b.p.Stats()
	require.NoError(t, h.b.stop(t))
	require.NoError(t, stopProducing())
	h.total = prod.count()
	waitFor(t, waitTimeout, "every message handled", func() bool { return h.rec.distinct() == h.total })
	h.aStats = h.a.p.Stats()
	stopAll(t, h.a)

	res := h.rec.check(t, prod.produced())
	checkCommittedToEnd(t, c, group, topic)
	assert.Zero(t, res.duplicates, "records handled again after a hand-over")
	h.redone = res.duplicates
	return h
}

// handOverRun is what handOver ran: its members, their Stats as they
// stopped, and the counts.
type handOverRun struct {
	rec            *recorder
	a, b           *member
	aStats, bStats parallafka.Stats
	broker         string
	total, redone  int
}
