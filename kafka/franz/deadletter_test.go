package franz_test

import (
	"context"
	"errors"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka/franz"
	"github.com/parallafka/parallafka/stages"
)

// A handler that fails every tenth record, with DeadLetterQueue over the
// franz writer: each failed record is in the dead-letter topic once, with
// the original's key, value and place in its headers, and the group's
// commits reach the end of every partition.
func TestDeadLetterWriter(t *testing.T) {
	const partitions, n, keys = 3, 300, 15
	c, topic := newCluster(t, partitions)
	dlqTopic := topic + ".dlq"
	c.createTopic(t, dlqTopic, 1)
	c.produce(t, topic, n, keys)
	w, err := franz.NewDeadLetterWriter([]kgo.Opt{kgo.SeedBrokers(c.brokers...)}, franz.WithLogger(testLogger(t)))
	require.NoError(t, err)
	defer func() { assert.NoError(t, w.Close()) }()

	group := "g-" + topic
	led := newLedger()
	inner := led.handler("A", 0)
	failed := 0
	deadLetter, err := stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{Writer: w, Topic: dlqTopic})
	require.NoError(t, err)
	m := startMember(t, newSource(t, c, group, topic, nil), func(ctx context.Context, msg *parallafka.Message[string, string]) error {
		if msg.Offset%10 == 3 {
			return errors.New("cursed")
		}
		return inner(ctx, msg)
	}, parallafka.WithMaxConcurrency(4),
		parallafka.WithAfterHandle("dead-letter", deadLetter))
	ends := c.endOffsets(t, topic, partitions)
	for _, end := range ends {
		for o := int64(0); o < end; o++ {
			if o%10 == 3 {
				failed++
			}
		}
	}
	waitFor(t, waitTimeout, "the group's commits to reach the end", func() bool {
		got := c.committed(t, group, topic)
		for p, end := range ends {
			if got[p].Offset != end {
				return false
			}
		}
		return true
	})
	require.NoError(t, m.stop())
	assert.Equal(t, n-failed, led.distinct())

	// Read the dead-letter topic back.
	rd, err := kgo.NewClient(kgo.SeedBrokers(c.brokers...), kgo.ConsumeTopics(dlqTopic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.DisableClientMetrics())
	require.NoError(t, err)
	defer rd.Close()
	seen := make(map[string]bool)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	for len(seen) < failed && ctx.Err() == nil {
		rd.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			h := make(map[string]string)
			for _, x := range r.Headers {
				h[x.Key] = string(x.Value)
			}
			assert.Equal(t, topic, h[stages.HeaderOriginalTopic])
			off, _ := strconv.ParseInt(h[stages.HeaderOriginalOffset], 10, 64)
			assert.Equal(t, int64(3), off%10, "only failed records are dead-lettered")
			assert.Contains(t, h[stages.HeaderError], "cursed")
			place := h[stages.HeaderOriginalPartition] + "@" + h[stages.HeaderOriginalOffset]
			assert.False(t, seen[place], "dead-lettered twice: %s", place)
			seen[place] = true
			assert.NotEmpty(t, r.Key)
		})
	}
	assert.Len(t, seen, failed)
}
