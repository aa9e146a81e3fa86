package integration_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka/kafka"
	"github.com/parallafka/parallafka/kafka/kafkatest"
	"github.com/parallafka/parallafka/pipeline"
)

// kafkaMetadataMax is Kafka's default offset.metadata.max.bytes: the
// longest commit metadata a broker accepts (Kafka compares the metadata's
// String.length(), so for ASCII it is a number of bytes).
const kafkaMetadataMax = 4096

// asciiMetadata returns n printable ASCII bytes starting with tag.
func asciiMetadata(tag string, n int) string {
	var b strings.Builder
	b.Grow(n)
	b.WriteString(tag)
	for i := 0; b.Len() < n; i++ {
		b.WriteByte(byte('!' + i%94))
	}
	return b.String()[:n]
}

// metaSource is a kafka.Source polled on a goroutine of its own, with a
// listener that records the committed offsets each PartitionsAssigned
// brings and runs onRevoke inside PartitionsRevoked.
type metaSource struct {
	src *kafka.Source[string, []byte]

	mu       sync.Mutex
	assigned []pipeline.Offset
	owned    map[pipeline.TopicPartition]bool
	onRevoke func([]pipeline.TopicPartition)

	stop     chan struct{}
	done     chan struct{}
	pollErr  error
	closeErr error
}

func (m *metaSource) PartitionsAssigned(committed []pipeline.Offset) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, off := range committed {
		m.assigned = append(m.assigned, off)
		m.owned[off.TopicPartition] = true
	}
}

func (m *metaSource) PartitionsRevoked(parts []pipeline.TopicPartition) {
	m.mu.Lock()
	hook := m.onRevoke
	m.mu.Unlock()
	if hook != nil {
		hook(parts)
	}
	m.disown(parts)
}

func (m *metaSource) PartitionsLost(parts []pipeline.TopicPartition) { m.disown(parts) }

func (m *metaSource) disown(parts []pipeline.TopicPartition) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, tp := range parts {
		delete(m.owned, tp)
	}
}

func (m *metaSource) ownedCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.owned)
}

func (m *metaSource) assignedOffsets() []pipeline.Offset {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]pipeline.Offset(nil), m.assigned...)
}

// consumerConfig is kafkatest's configuration for group, with KIP-848's
// consumer group protocol if protocol is "consumer" (the broker then sets
// the session and heartbeat timeouts).
func consumerConfig(c *kafkatest.Cluster, group, protocol string) *ckafka.ConfigMap {
	cfg := c.ConsumerConfig(group)
	if protocol == "consumer" {
		delete(*cfg, "session.timeout.ms")
		delete(*cfg, "heartbeat.interval.ms")
		_ = cfg.SetKey("group.protocol", "consumer")
	}
	return cfg
}

func startMetaSource(t *testing.T, c *kafkatest.Cluster, name, group, protocol, topic string) *metaSource {
	t.Helper()
	log := testLogger(t).With("member", name)
	consumer, err := kafka.NewConsumer(consumerConfig(c, group, protocol), kafka.WithLogger(log))
	require.NoError(t, err)
	src, err := kafka.NewSource(consumer, []string{topic}, kafka.String, kafka.Bytes, kafka.WithLogger(log))
	if err != nil {
		_ = consumer.Close()
		require.NoError(t, err)
	}
	m := &metaSource{src: src, owned: map[pipeline.TopicPartition]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	require.NoError(t, src.Subscribe(m))
	go func() {
		defer close(m.done)
		defer func() { m.closeErr = src.Close() }()
		for {
			select {
			case <-m.stop:
				return
			default:
			}
			if _, err := src.Poll(50 * time.Millisecond); err != nil {
				m.pollErr = err
				return
			}
		}
	}()
	t.Cleanup(m.close)
	return m
}

// close stops the poll loop and closes the Source (its revoke runs inside
// Close, on the poll goroutine), once.
func (m *metaSource) close() {
	select {
	case <-m.stop:
	default:
		close(m.stop)
	}
	<-m.done
	<-m.src.Closed()
}

// readCommitted reads the group's committed offset and metadata of tp with
// the Source's consumer.
func readCommitted(t *testing.T, m *metaSource, tp pipeline.TopicPartition) (int64, string) {
	t.Helper()
	topic := tp.Topic
	parts, err := m.src.Consumer().Committed([]ckafka.TopicPartition{{Topic: &topic, Partition: tp.Partition}}, 10000)
	require.NoError(t, err)
	require.Len(t, parts, 1)
	require.NoError(t, parts[0].Error)
	var md string
	if parts[0].Metadata != nil {
		md = *parts[0].Metadata
	}
	return int64(parts[0].Offset), md
}

// checkAssignedOffsets checks that got has one entry per partition, each
// equal to want[tp] or, for a partition missing from want, {tp, -1, ""}.
func checkAssignedOffsets(t *testing.T, who string, want map[pipeline.TopicPartition]pipeline.Offset, got []pipeline.Offset) {
	t.Helper()
	seen := map[pipeline.TopicPartition]bool{}
	for _, off := range got {
		assert.False(t, seen[off.TopicPartition], "%s: %s twice", who, off.TopicPartition)
		seen[off.TopicPartition] = true
		w, ok := want[off.TopicPartition]
		if !ok {
			w = pipeline.Offset{TopicPartition: off.TopicPartition, Offset: -1}
		}
		assert.Equal(t, w.Offset, off.Offset, "%s: committed offset of %s", who, off.TopicPartition)
		assert.Equal(t, len(w.Metadata), len(off.Metadata), "%s: metadata length of %s", who, off.TopicPartition)
		assert.True(t, w.Metadata == off.Metadata, "%s: metadata of %s differs from the one committed", who, off.TopicPartition)
	}
}

// TestCommitMetadataRoundTrip commits offsets with metadata (4096 ASCII
// bytes, Kafka's default limit; a short string; none) through a Source,
// hands the partitions to a second Source of the group (the first closes),
// then to a third in a rebalance whose revoke commits new metadata: each new
// owner's PartitionsAssigned brings exactly what was committed, and -1 and
// "" for a partition never committed. On a real broker, metadata one byte
// over the limit is refused by Commit with the broker's error (alone, or
// next to a partition that is committed) and not reported committed.
func TestCommitMetadataRoundTrip(t *testing.T) {
	for _, protocol := range []string{"classic", "consumer"} {
		t.Run(protocol, func(t *testing.T) { testCommitMetadataRoundTrip(t, protocol) })
	}
}

func testCommitMetadataRoundTrip(t *testing.T, protocol string) {
	c := kafkatest.New(t)
	topic := newTopic(t, c, 4)
	group := groupFor(t)
	var recs []kafkatest.Record
	for p := range int32(4) {
		for i := range 10 {
			recs = append(recs, kafkatest.Record{Key: []byte("k"), Value: fmt.Appendf(nil, "%d", i), Partition: p})
		}
	}
	require.NoError(t, c.Produce(context.Background(), topic, recs))
	tp := func(p int32) pipeline.TopicPartition { return pipeline.TopicPartition{Topic: topic, Partition: p} }
	ctx := context.Background()

	a := startMetaSource(t, c, "A", group, protocol, topic)
	waitFor(t, waitTimeout, "A owns every partition", func() bool { return a.ownedCount() == 4 })
	checkAssignedOffsets(t, "A", nil, a.assignedOffsets())

	commits := []pipeline.Offset{
		{TopicPartition: tp(0), Offset: 7, Metadata: asciiMetadata("p0:", kafkaMetadataMax)},
		{TopicPartition: tp(1), Offset: 3},
		{TopicPartition: tp(2), Offset: 5, Metadata: "p2: short"},
	}
	require.NoError(t, a.src.Commit(ctx, commits))
	want := map[pipeline.TopicPartition]pipeline.Offset{}
	for _, off := range commits {
		want[off.TopicPartition] = off
		o, md := readCommitted(t, a, off.TopicPartition)
		assert.Equal(t, off.Offset, o, "committed offset of %s", off.TopicPartition)
		assert.True(t, off.Metadata == md, "committed metadata of %s: %d bytes, want %d", off.TopicPartition, len(md), len(off.Metadata))
	}
	committed, err := c.CommittedOffsets(ctx, group, topic)
	require.NoError(t, err)
	assert.Equal(t, map[int32]int64{0: 7, 1: 3, 2: 5}, committed)

	// One byte over the limit.
	tooLong := asciiMetadata("p1 too long:", kafkaMetadataMax+1)
	if c.Embedded() {
		t.Logf("embedded broker (kfake): no offset.metadata.max.bytes limit to check; %d bytes not committed here", len(tooLong))
	} else {
		// Alone in its commit.
		err := a.src.Commit(ctx, []pipeline.Offset{{TopicPartition: tp(1), Offset: 4, Metadata: tooLong}})
		require.Error(t, err, "metadata of %d bytes", len(tooLong))
		t.Logf("commit of %d bytes of metadata alone: %v", len(tooLong), err)
		var ce *kafka.CommitError
		require.ErrorAs(t, err, &ce)
		assert.Empty(t, ce.Committed)
		assert.Equal(t, []pipeline.Offset{{TopicPartition: tp(1), Offset: 4, Metadata: tooLong}}, ce.Failed)
		var kerr ckafka.Error
		require.True(t, errors.As(err, &kerr), "a confluent-kafka-go Error among the causes: %v", err)
		assert.Equal(t, ckafka.ErrOffsetMetadataTooLarge, kerr.Code())
		assert.Contains(t, err.Error(), "too large")
		// The Source reports it as Failed, that is retriable, although the
		// same metadata will never fit: see the report of this test.
		t.Logf("CommitError: %d offsets worth retrying", len(ce.Failed))
		o, md := readCommitted(t, a, tp(1))
		assert.Equal(t, int64(3), o, "p1 keeps its committed offset")
		assert.Equal(t, "", md)

		// Next to a partition whose commit goes through: only that one is
		// reported committed (the Source reads the offsets back; p1 is at
		// the offset already committed, so only its metadata tells).
		p0 := pipeline.Offset{TopicPartition: tp(0), Offset: 8, Metadata: asciiMetadata("p0 again:", kafkaMetadataMax)}
		p1 := pipeline.Offset{TopicPartition: tp(1), Offset: 3, Metadata: tooLong}
		err = a.src.Commit(ctx, []pipeline.Offset{p0, p1})
		require.Error(t, err)
		t.Logf("commit of %d bytes next to %d: %v", len(tooLong), len(p0.Metadata), err)
		require.ErrorAs(t, err, &ce)
		assert.Equal(t, []pipeline.Offset{p0}, ce.Committed)
		assert.Equal(t, []pipeline.Offset{p1}, ce.Failed)
		require.True(t, errors.As(err, &kerr))
		assert.Equal(t, ckafka.ErrOffsetMetadataTooLarge, kerr.Code())
		o, md = readCommitted(t, a, tp(0))
		assert.Equal(t, int64(8), o)
		assert.True(t, p0.Metadata == md, "p0's new metadata is committed")
		o, md = readCommitted(t, a, tp(1))
		assert.Equal(t, int64(3), o)
		assert.Equal(t, "", md)
		want[tp(0)] = p0
	}

	// A closes; B takes every partition over.
	a.close()
	require.NoError(t, a.pollErr)
	require.NoError(t, a.closeErr)
	b := startMetaSource(t, c, "B", group, protocol, topic)
	waitFor(t, waitTimeout, "B owns every partition", func() bool { return b.ownedCount() == 4 })
	gotB := b.assignedOffsets()
	require.Len(t, gotB, 4)
	checkAssignedOffsets(t, "B", want, gotB)

	// C joins; B's revoke commits the partitions' final offsets with new
	// metadata (p3 stays uncommitted), as the pipeline does.
	final := map[pipeline.TopicPartition]pipeline.Offset{
		tp(0): {TopicPartition: tp(0), Offset: 9, Metadata: asciiMetadata("p0 final:", kafkaMetadataMax)},
		tp(1): {TopicPartition: tp(1), Offset: 3, Metadata: "p1 final"}, // same offset, new metadata
		tp(2): {TopicPartition: tp(2), Offset: 6},                       // metadata cleared
	}
	var mu sync.Mutex
	var revokeErrs []error
	b.mu.Lock()
	b.onRevoke = func(parts []pipeline.TopicPartition) {
		var offs []pipeline.Offset
		for _, p := range parts {
			if off, ok := final[p]; ok {
				offs = append(offs, off)
			}
		}
		err := b.src.Commit(ctx, offs)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			revokeErrs = append(revokeErrs, err)
			return
		}
		for _, off := range offs {
			want[off.TopicPartition] = off
		}
	}
	b.mu.Unlock()
	cm := startMetaSource(t, c, "C", group, protocol, topic)
	waitFor(t, waitTimeout, "B and C split the partitions", func() bool {
		nb, nc := b.ownedCount(), cm.ownedCount()
		return nb+nc == 4 && nb > 0 && nc > 0
	})
	mu.Lock()
	require.Empty(t, revokeErrs)
	checkAssignedOffsets(t, "C", want, cm.assignedOffsets())
	checkAssignedOffsets(t, "B, after the rebalance", want, b.assignedOffsets()[4:])
	mu.Unlock()
	t.Logf("%s protocol on the %s: C was assigned %v", protocol, brokerKind(c), partitionsOf(cm.assignedOffsets()))

	cm.close()
	b.close()
	require.NoError(t, cm.closeErr)
	require.NoError(t, b.closeErr)
}

func partitionsOf(offs []pipeline.Offset) []int32 {
	out := make([]int32, len(offs))
	for i, off := range offs {
		out[i] = off.Partition
	}
	return out
}
