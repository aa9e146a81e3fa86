package franz_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/pipeline"
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
}

// A small in-flight window makes the pipeline pause and resume partitions
// over and over: nothing is lost or handled twice, keys stay in order, and
// the watermarks from the fetch responses reach the partitions' ends.
func TestPauseResumeAndWatermarks(t *testing.T) {
	const partitions, n, keys = 3, 2000, 40
	c, topic := newCluster(t, partitions)
	c.produce(t, topic, n, keys)
	group := "g-" + topic
	led := newLedger()
	src := newSource(t, c, group, topic, nil)
	obs := &pauseCounter{Observer: pipeline.ObserverFuncs{}.Observer()}
	m := startMember(t, src, led.handler("A", 100*time.Microsecond),
		parallafka.WithMaxConcurrency(4), parallafka.WithMaxInFlight(16), parallafka.WithObserver(obs))
	waitFor(t, waitTimeout, "every record handled", func() bool { return led.distinct() == n })
	ends := c.endOffsets(t, topic, partitions)
	for p, end := range ends {
		low, high, ok := src.Watermarks(pipeline.TopicPartition{Topic: topic, Partition: p})
		assert.True(t, ok, "partition %d has watermarks", p)
		assert.Equal(t, end, high, "partition %d high watermark", p)
		assert.Zero(t, low, "partition %d low watermark", p)
	}
	require.NoError(t, m.stop())
	assert.Zero(t, led.check(t, n), "duplicates")
	assert.Positive(t, obs.paused.Load(), "the pipeline paused partitions")
	t.Logf("paused %d times, resumed %d times", obs.paused.Load(), obs.resumed.Load())
}

type pauseCounter struct {
	pipeline.Observer
	paused, resumed atomic.Int64
}

func (o *pauseCounter) PartitionsPaused([]pipeline.TopicPartition)  { o.paused.Add(1) }
func (o *pauseCounter) PartitionsResumed([]pipeline.TopicPartition) { o.resumed.Add(1) }

// PollBatch hands over what the client fetched in one call: at most max
// messages, each partition's in offset order with no gap, and more than one
// at a time once records are buffered.
func TestPollBatch(t *testing.T) {
	const partitions, n, limit = 3, 600, 50
	c, topic := newCluster(t, partitions)
	c.produce(t, topic, n, 30)
	src := newSource(t, c, "g-"+topic, topic, nil)
	t.Cleanup(func() { _ = src.Close() })
	require.NoError(t, src.Subscribe(&listener{}))
	next := map[int32]int64{}
	var got, largest int
	deadline := time.Now().Add(waitTimeout)
	for got < n && time.Now().Before(deadline) {
		// Every other call with a byte budget of one byte: the first
		// message reaches it, and the batch ends there.
		budget := int64(got % 2)
		batch, err := src.PollBatch(100*time.Millisecond, nil, limit, budget)
		require.NoError(t, err)
		require.LessOrEqual(t, len(batch), limit)
		if budget > 0 {
			require.LessOrEqual(t, len(batch), 1, "a byte budget ends the batch")
		}
		largest = max(largest, len(batch))
		for _, msg := range batch {
			require.NoError(t, msg.Err)
			require.Equal(t, next[msg.Partition], msg.Offset, "partition %d", msg.Partition)
			next[msg.Partition]++
			got++
		}
	}
	require.Equal(t, n, got)
	assert.Greater(t, largest, 1, "batches of more than one message")
	require.NoError(t, src.Close())
}

// PollBatch hands over each record's headers, in order, and one message's
// headers do not share room with the next's: appending to them leaves the
// other messages of the batch as they were.
func TestPollBatchHeaders(t *testing.T) {
	const n = 30
	c, topic := newCluster(t, 1)
	recs := make([]*kgo.Record, n)
	for i := range recs {
		recs[i] = &kgo.Record{Topic: topic, Key: fmt.Appendf(nil, "k%d", i), Value: []byte("v")}
		for j := range i % 3 {
			recs[i].Headers = append(recs[i].Headers, kgo.RecordHeader{Key: fmt.Sprintf("h%d", j), Value: fmt.Appendf(nil, "%d/%d", i, j)})
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	require.NoError(t, c.admin.ProduceSync(ctx, recs...).FirstErr())

	src := newSource(t, c, "g-"+topic, topic, nil)
	defer src.Close()
	require.NoError(t, src.Subscribe(&listener{}))
	var msgs []*pipeline.Message[string, string]
	deadline := time.Now().Add(waitTimeout)
	for len(msgs) < n && time.Now().Before(deadline) {
		got, err := src.PollBatch(100*time.Millisecond, nil, n, 0)
		require.NoError(t, err)
		msgs = append(msgs, got...)
	}
	require.Len(t, msgs, n)
	for _, m := range msgs {
		m.Headers = append(m.Headers, pipeline.Header{Key: "added"})
	}
	for i, m := range msgs {
		require.Equal(t, int64(i), m.Offset)
		want := []pipeline.Header{}
		for j := range i % 3 {
			want = append(want, pipeline.Header{Key: fmt.Sprintf("h%d", j), Value: fmt.Appendf(nil, "%d/%d", i, j)})
		}
		want = append(want, pipeline.Header{Key: "added"})
		assert.Equal(t, want, m.Headers, "message %d", i)
	}
}

// A poll's records are handed over a few of each partition in turn, not
// partition after partition: a pipeline whose window has room for fewer
// than a fetch holds reads every partition at once, and a hot key in the
// fetch's last partition is not left waiting for the others to drain.
func TestPollBatchSpreadsOverPartitions(t *testing.T) {
	const partitions, perPartition = 4, 2000
	c, topic := newCluster(t, partitions)
	c.produceTo(t, topic, partitions, perPartition)
	src := newSource(t, c, "g-"+topic, topic, nil)
	t.Cleanup(func() { _ = src.Close() })
	require.NoError(t, src.Subscribe(&listener{}))
	first := map[int32]int{} // partition -> how many messages came before its first
	next := map[int32]int64{}
	got := 0
	deadline := time.Now().Add(waitTimeout)
	for got < partitions*perPartition && time.Now().Before(deadline) {
		batch, err := src.PollBatch(100*time.Millisecond, nil, 100, 0)
		require.NoError(t, err)
		for _, msg := range batch {
			require.Equal(t, next[msg.Partition], msg.Offset, "partition %d", msg.Partition)
			next[msg.Partition]++
			if _, ok := first[msg.Partition]; !ok {
				first[msg.Partition] = got
			}
			got++
		}
	}
	require.Equal(t, partitions*perPartition, got)
	for p, before := range first {
		assert.Less(t, before, perPartition/2, "partition %d's first message came after %d others", p, before)
	}
	require.NoError(t, src.Close())
}
