package integration_test

import (
	"testing"

	"github.com/stretchr/testify/assert"

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
	const max = 16
	h := handOver(t, strategy, []parallafka.Option{parallafka.WithAdaptiveConcurrency(1, max), parallafka.WithMaxInFlight(500)},
		func(c *kafkatest.Cluster, s memberSpec) *member { return startMember(t, c, s) })
	for _, limit := range []int{h.aStats.ConcurrencyLimit, h.bStats.ConcurrencyLimit} {
		assert.GreaterOrEqual(t, limit, 1)
		assert.LessOrEqual(t, limit, max)
	}
	t.Logf("adaptive rebalance (%s) on the %s: %d messages; A %d (limit %d at the end), B %d (limit %d when it left); redone %d",
		strategy, h.broker, h.total, h.rec.handledBy("A"), h.aStats.ConcurrencyLimit, h.rec.handledBy("B"), h.bStats.ConcurrencyLimit, h.redone)
}
