package integration_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka/kafkatest"
)

// TestAdaptiveRebalance runs members with WithAdaptiveConcurrency through
// the same hand-overs as TestBatchRebalance: A starts alone, B joins, B
// leaves gracefully, A goes on to the end, while messages keep coming.
// The limit changes while partitions move (it starts at 1 and grows); a
// revoke waits for the running handlers as with a fixed concurrency, so
// nothing is lost or handled twice, keys keep their order, and every
// partition's next owner starts where the last one committed.
func TestAdaptiveRebalance(t *testing.T) {
	for _, strategy := range []string{"range", "cooperative-sticky"} {
		t.Run(strategy, func(t *testing.T) { testAdaptiveRebalance(t, strategy) })
	}
}

func testAdaptiveRebalance(t *testing.T, strategy string) {
	const partitions, keys, backlog, max = 6, 60, 3000, 16
	c := kafkatest.New(t)
	topic := newTopic(t, c, partitions)
	group := groupFor(t)
	ctx := context.Background()

	prod := newProducer(c, topic, keys)
	require.NoError(t, prod.produce(ctx, backlog))
	stopProducing := sync.OnceValue(prod.produceFor(ctx, 20, 20*time.Millisecond)) // 1,000 msg/s meanwhile
	t.Cleanup(func() { _ = stopProducing() })

	rec := newRecorder()
	spec := func(name string) memberSpec {
		return memberSpec{
			name: name, group: group, topic: topic, observer: rec,
			config:  map[string]any{"partition.assignment.strategy": strategy},
			work:    sleepBetween(time.Millisecond, 3*time.Millisecond),
			options: []parallafka.Option{parallafka.WithAdaptiveConcurrency(1, max), parallafka.WithMaxInFlight(500)},
		}
	}
	a := startMember(t, c, spec("A"))
	waitFor(t, waitTimeout, "A to handle 1,000 messages", func() bool { return rec.handledBy("A") >= 1000 })
	b := startMember(t, c, spec("B"))
	waitFor(t, waitTimeout, "B to take partitions and handle 300 messages", func() bool {
		return len(rec.owned("B")) > 0 && rec.handledBy("B") >= 300
	})
	bLimit := b.p.Stats().ConcurrencyLimit
	require.NoError(t, b.stop(t))
	require.NoError(t, stopProducing())
	total := prod.count()
	waitFor(t, waitTimeout, "every message handled", func() bool { return rec.distinct() == total })
	aLimit := a.p.Stats().ConcurrencyLimit
	stopAll(t, a)

	res := rec.check(t, prod.produced())
	checkCommittedToEnd(t, c, group, topic)
	assert.Zero(t, res.duplicates, "records handled again after a hand-over")
	for _, limit := range []int{aLimit, bLimit} {
		assert.GreaterOrEqual(t, limit, 1)
		assert.LessOrEqual(t, limit, max)
	}
	t.Logf("adaptive rebalance (%s) on the %s: %d messages; A %d (limit %d at the end), B %d (limit %d when it left); redone %d",
		strategy, brokerKind(c), total, rec.handledBy("A"), aLimit, rec.handledBy("B"), bLimit, res.duplicates)
}
