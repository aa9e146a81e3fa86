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

// TestRebalance runs a three-member group while messages keep coming: A
// starts alone, B and C join mid-stream, B leaves gracefully, A and C go on
// to the end. Nothing is lost, no key is ever in two handlers at once (in
// any member), each run keeps each key in order, every partition's next
// owner starts exactly at the offset its previous owner committed on revoke,
// and the only messages handled twice are those a member finished past that
// offset. It logs the hand-over times: from a revoke's start to the next
// owner's first message in the partition.
func TestRebalance(t *testing.T) {
	for _, strategy := range []string{"range", "cooperative-sticky"} {
		t.Run(strategy, func(t *testing.T) { testRebalance(t, strategy) })
	}
}

func testRebalance(t *testing.T, strategy string) {
	const partitions, keys, backlog = 6, 120, 2000
	const batch, every = 6, 20 * time.Millisecond // 300 msg/s meanwhile
	c := kafkatest.New(t)
	topic := newTopic(t, c, partitions)
	group := groupFor(t)
	ctx := context.Background()

	prod := newProducer(c, topic, keys)
	require.NoError(t, prod.produce(ctx, backlog))
	stopProducing := sync.OnceValue(prod.produceFor(ctx, batch, every))
	t.Cleanup(func() { _ = stopProducing() })

	rec := newRecorder()
	spec := func(name string) memberSpec {
		return memberSpec{
			name: name, group: group, topic: topic, observer: rec,
			config:  map[string]any{"partition.assignment.strategy": strategy},
			work:    sleepBetween(time.Millisecond, 4*time.Millisecond),
			options: []parallafka.Option{parallafka.WithMaxConcurrency(4)},
		}
	}
	start := time.Now()
	a := startMember(t, c, spec("A"))
	waitFor(t, waitTimeout, "A to handle 500 messages", func() bool { return rec.handledBy("A") >= 500 })

	joined := time.Now()
	b := startMember(t, c, spec("B"))
	cm := startMember(t, c, spec("C"))
	waitFor(t, waitTimeout, "B and C to take two partitions each and handle 200 messages each", func() bool {
		return len(rec.owned("A")) == 2 && len(rec.owned("B")) == 2 && len(rec.owned("C")) == 2 &&
			rec.handledBy("B") >= 200 && rec.handledBy("C") >= 200
	})

	fromB := rec.owned("B")
	require.NoError(t, b.stop(t))
	left := b.stopped
	waitFor(t, waitTimeout, "A and C to take over B's partitions and handle messages there", func() bool {
		runs := rec.runsCopy()
		for _, p := range fromB {
			taken := false
			for _, ru := range runs {
				if ru.partition == p && ru.member != "B" && ru.assigned.After(left) && !ru.firstStart.IsZero() {
					taken = true
				}
			}
			if !taken {
				return false
			}
		}
		return true
	})

	require.NoError(t, stopProducing())
	total := prod.count()
	waitFor(t, waitTimeout, "every message handled", func() bool { return rec.distinct() == total })
	stopAll(t, a, cm)
	elapsed := time.Since(start)

	res := rec.check(t, prod.produced())
	checkCommittedToEnd(t, c, group, topic)
	var joins, leaves []handover
	for _, h := range res.handovers {
		switch {
		case h.at.Before(joined):
			t.Errorf("hand-over of partition %d before anyone joined", h.partition)
		case h.at.Before(left):
			joins = append(joins, h)
		default:
			leaves = append(leaves, h)
		}
	}
	// Handlers finish well within the revoke timeout, and a revoke commits
	// the offset with its offset map: the next owner skips everything the
	// last one finished.
	assert.Zero(t, res.duplicates, "records handled again after a hand-over")
	t.Logf("rebalance (%s) on the %s: %d messages in %v; handled by A %d, B %d, C %d; redone: %d (finished past the owner's commit on revoke; %d hand-overs held back by a dispatchable message that was overtaken)",
		strategy, brokerKind(c), total, elapsed.Round(time.Millisecond),
		rec.handledBy("A"), rec.handledBy("B"), rec.handledBy("C"), res.duplicates, res.overtaken)
	t.Logf("  B and C join: %s%s", describe(joins), detail(joins))
	t.Logf("  B leaves: %s%s", describe(leaves), detail(leaves))
}
