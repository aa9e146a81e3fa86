package franz_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/parallafka/parallafka/kafka/franz"
	"github.com/parallafka/parallafka/pipeline"
)

// listener records what the Source tells it.
type listener struct {
	mu       sync.Mutex
	assigned []pipeline.Offset
}

func (l *listener) PartitionsAssigned(c []pipeline.Offset) {
	l.mu.Lock()
	l.assigned = append(l.assigned, c...)
	l.mu.Unlock()
}
func (l *listener) PartitionsRevoked([]pipeline.TopicPartition) {}
func (l *listener) PartitionsLost([]pipeline.TopicPartition)    {}

func (l *listener) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.assigned)
}

// Commit, driven directly: the metadata is stored as given and read back on
// the next assignment; metadata larger than the broker accepts matches
// pipeline.ErrMetadataTooLarge and is retriable; a partition not assigned
// matches pipeline.ErrNotOwned; an offset already committed is not sent again.
func TestCommitMetadata(t *testing.T) {
	c, topic := newCluster(t, 2)
	c.produce(t, topic, 10, 2)
	group := "g-" + topic
	if c.fake != nil {
		// kfake has no offset.metadata.max.bytes: refuse as Kafka does
		// (4096 bytes by default).
		c.fake.ControlKey(int16(kmsg.OffsetCommit), func(r kmsg.Request) (kmsg.Response, error, bool) {
			c.fake.KeepControl()
			req := r.(*kmsg.OffsetCommitRequest)
			resp := req.ResponseKind().(*kmsg.OffsetCommitResponse)
			tooLarge := false
			for _, rt := range req.Topics {
				st := kmsg.NewOffsetCommitResponseTopic()
				st.Topic, st.TopicID = rt.Topic, rt.TopicID
				for _, rp := range rt.Partitions {
					sp := kmsg.NewOffsetCommitResponseTopicPartition()
					sp.Partition = rp.Partition
					if rp.Metadata != nil && len(*rp.Metadata) > 4096 {
						sp.ErrorCode = kerr.OffsetMetadataTooLarge.Code
						tooLarge = true
					}
					st.Partitions = append(st.Partitions, sp)
				}
				resp.Topics = append(resp.Topics, st)
			}
			return resp, nil, tooLarge
		})
	}
	src := newSource(t, c, group, topic, nil)
	l := &listener{}
	require.NoError(t, src.Subscribe(l))
	deadline := time.Now().Add(waitTimeout)
	for l.count() < 2 && time.Now().Before(deadline) {
		_, err := src.Poll(100 * time.Millisecond)
		require.NoError(t, err)
	}
	require.Equal(t, 2, l.count())
	ctx := context.Background()
	p0 := pipeline.TopicPartition{Topic: topic, Partition: 0}
	p1 := pipeline.TopicPartition{Topic: topic, Partition: 1}

	require.NoError(t, src.Commit(ctx, []pipeline.Offset{{TopicPartition: p0, Offset: 2, Metadata: "pk1:map"}, {TopicPartition: p1, Offset: 1}}))
	got := c.committed(t, group, topic)
	assert.Equal(t, pipeline.Offset{TopicPartition: p0, Offset: 2, Metadata: "pk1:map"}, got[0])
	assert.Equal(t, int64(1), got[1].Offset)
	assert.Empty(t, got[1].Metadata, "no metadata is sent as empty, not as kgo's member ID")

	err := src.Commit(ctx, []pipeline.Offset{{TopicPartition: p0, Offset: 3, Metadata: strings.Repeat("x", 5000)}})
	require.ErrorIs(t, err, pipeline.ErrMetadataTooLarge)
	var ce *franz.CommitError
	require.ErrorAs(t, err, &ce)
	assert.NotEmpty(t, ce.Failed, "retriable")
	assert.NotErrorIs(t, err, pipeline.ErrNotOwned)

	err = src.Commit(ctx, []pipeline.Offset{{TopicPartition: pipeline.TopicPartition{Topic: topic, Partition: 7}, Offset: 1}})
	require.ErrorIs(t, err, pipeline.ErrNotOwned)

	require.NoError(t, src.Commit(ctx, []pipeline.Offset{{TopicPartition: p0, Offset: 1}}), "behind a commit already made: counts as committed")
	assert.Equal(t, int64(2), c.committed(t, group, topic)[0].Offset, "not sent: the committed offset never goes back")
	require.NoError(t, src.Close())
	assert.ErrorIs(t, src.Commit(ctx, []pipeline.Offset{{TopicPartition: p0, Offset: 5}}), franz.ErrClosed)

	// The next member reads the offsets back with their metadata.
	src2 := newSource(t, c, group, topic, nil)
	l2 := &listener{}
	require.NoError(t, src2.Subscribe(l2))
	deadline = time.Now().Add(waitTimeout)
	for l2.count() < 2 && time.Now().Before(deadline) {
		_, err := src2.Poll(100 * time.Millisecond)
		require.NoError(t, err)
	}
	require.NoError(t, src2.Close())
	l2.mu.Lock()
	defer l2.mu.Unlock()
	assert.Contains(t, l2.assigned, pipeline.Offset{TopicPartition: p0, Offset: 2, Metadata: "pk1:map"})
	assert.Contains(t, l2.assigned, pipeline.Offset{TopicPartition: p1, Offset: 1})
}
