package franz_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka"
)

// End to end on the embedded broker: every record handled once, each key in
// order, and the group's commits reach the end of every partition.
func TestConsumeEndToEnd(t *testing.T) {
	const partitions, n, keys = 4, 2000, 50
	c, topic := newCluster(t, partitions)
	c.produce(t, topic, n, keys)
	group := "g-" + topic
	led := newLedger()
	m := startMember(t, newSource(t, c, group, topic, nil), led.handler("A", 0), parallafka.WithMaxConcurrency(8))
	waitFor(t, waitTimeout, "every record handled", func() bool { return led.distinct() == n })
	require.NoError(t, m.stop())
	assert.Zero(t, led.check(t, n), "duplicates")
	ends := c.endOffsets(t, topic, partitions)
	got := c.committed(t, group, topic)
	for p, end := range ends {
		assert.Equal(t, end, got[p].Offset, "partition %d committed offset", p)
	}
	_ = time.Second
}
