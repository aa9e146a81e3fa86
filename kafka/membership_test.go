package kafka

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/parallafka/parallafka/pipeline"
)

// cutOff makes the cluster close every connection that sends a request
// while down is set, as a broker that is gone would; it counts the
// OffsetCommit requests of group served while down is not set, and answers
// them UNKNOWN_MEMBER_ID while fenced is set, as to a member whose session
// the broker expired.
func cutOff(c *testCluster, group string, down, fenced *atomic.Bool, commits *atomic.Int32) {
	c.Control(func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if down.Load() {
			return nil, errors.New("broker gone"), true
		}
		r, ok := req.(*kmsg.OffsetCommitRequest)
		if !ok || r.Group != group {
			return nil, nil, false
		}
		commits.Add(1)
		if !fenced.Load() {
			return nil, nil, false
		}
		resp := r.ResponseKind().(*kmsg.OffsetCommitResponse)
		for _, rt := range r.Topics {
			st := kmsg.NewOffsetCommitResponseTopic()
			st.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				sp := kmsg.NewOffsetCommitResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = 25 // UNKNOWN_MEMBER_ID
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
}

// committedMember starts a member of a new group on a one-partition topic
// of two records, with a session long enough to outlast the tests' cut-offs,
// and commits offset 1 with metadata.
func committedMember(t *testing.T, metadata string) (c *testCluster, m *member, topic, group string) {
	t.Helper()
	c = newTestCluster(t)
	topic = c.topic(t, 1)
	c.produce(t, record(topic, 0, "k", "v"), record(topic, 0, "k", "w"))
	group = groupName(t)
	cfg := c.config(group, "range")
	_ = cfg.SetKey("session.timeout.ms", 30000)
	_ = cfg.SetKey("reconnect.backoff.max.ms", 200)
	m = startMember(t, "m1", cfg, topic)
	waitFor(t, 30*time.Second, "the messages", func() bool { return m.count(nil) == 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	off := pipeline.Offset{TopicPartition: pipeline.TopicPartition{Topic: topic, Partition: 0}, Offset: 1, Metadata: metadata}
	require.NoError(t, m.src.Commit(ctx, []pipeline.Offset{off}))
	return c, m, topic, group
}

// When librdkafka reports every broker down while partitions are assigned,
// the Source's membership is in doubt; once the brokers are back, its probe
// commits the group's committed offset again, unchanged, and the
// coordinator's accepting it ends the doubt (before the session timed out,
// so no rebalance ends it).
func TestMembershipInDoubtUntilACommitIsAccepted(t *testing.T) {
	c, m, topic, group := committedMember(t, "kept")
	require.False(t, m.src.MembershipInDoubt())

	var down, fenced atomic.Bool
	var commits atomic.Int32
	cutOff(c, group, &down, &fenced, &commits)
	down.Store(true)
	waitFor(t, 60*time.Second, "the membership in doubt", m.src.MembershipInDoubt)
	require.Error(t, m.src.Unreachable())
	time.Sleep(time.Second) // probes fail meanwhile
	require.True(t, m.src.MembershipInDoubt())
	require.Zero(t, commits.Load())

	down.Store(false)
	waitFor(t, 60*time.Second, "the doubt to end", func() bool { return !m.src.MembershipInDoubt() })
	require.NoError(t, m.src.Unreachable())
	require.Positive(t, commits.Load(), "the probe's commit")
	require.Equal(t, map[int32]int64{0: 1}, c.committed(group, topic), "committed again, unchanged")
	info := c.GroupInfo(group)
	require.NotNil(t, info)
	require.Equal(t, "kept", info.Commits[topic][0].Metadata, "the offset map's metadata is kept")
	for _, call := range m.l.callsCopy() {
		require.NotEqual(t, "lost", call.kind, "no rebalance ended the doubt")
	}
}

// A probe the coordinator refuses (the member's session expired while it was
// cut off) does not end the doubt by itself: librdkafka then gives the
// partitions up as lost, and that ends it, with nothing assigned.
func TestMembershipProbeRefusedEndsInALostAssignment(t *testing.T) {
	c, m, topic, group := committedMember(t, "")

	var down, fenced atomic.Bool
	var commits atomic.Int32
	cutOff(c, group, &down, &fenced, &commits)
	var doubtAtLoss atomic.Int32 // 1: in doubt when PartitionsLost came, 2: not
	m.l.mu.Lock()
	m.l.onLost = func([]pipeline.TopicPartition) {
		if m.src.MembershipInDoubt() {
			doubtAtLoss.CompareAndSwap(0, 1)
		} else {
			doubtAtLoss.CompareAndSwap(0, 2)
		}
	}
	m.l.mu.Unlock()
	fenced.Store(true)
	down.Store(true)
	waitFor(t, 60*time.Second, "the membership in doubt", m.src.MembershipInDoubt)
	down.Store(false)
	waitFor(t, 60*time.Second, "the lost assignment", func() bool { return doubtAtLoss.Load() != 0 })
	require.EqualValues(t, 1, doubtAtLoss.Load(), "the doubt lasted until the loss")
	require.Positive(t, commits.Load(), "the probe's commit, refused")
	waitFor(t, 10*time.Second, "the doubt to end", func() bool { return !m.src.MembershipInDoubt() })
	require.Equal(t, map[int32]int64{0: 1}, c.committed(group, topic))
	fenced.Store(false)
}
