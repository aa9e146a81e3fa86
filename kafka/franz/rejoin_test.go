package franz_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/pipeline"
)

// A classic cooperative member whose commit is refused (UNKNOWN_MEMBER_ID)
// rejoins; its join is refused too, so kgo joins as a new member, and the
// group holds its old partitions for the old member ID until that session
// expires. kgo then reports the old partitions it was not given back as
// revoked; the Source hands them over as lost (nothing committed for them
// with the new member's generation), and nothing is lost.
func TestRejoinedAsNewMember(t *testing.T) {
	const partitions, n, keys = 4, 4000, 40
	c, topic := newCluster(t, partitions)
	if c.fake == nil {
		t.Skip("needs the embedded broker, to refuse a commit and a join")
	}
	c.produce(t, topic, n, keys)
	group := "g-" + topic
	led := newLedger()
	var mu sync.Mutex
	var lost []pipeline.TopicPartition
	var revokedEarly atomic.Int32
	var stopping atomic.Bool
	m := startMember(t, newSource(t, c, group, topic, []kgo.Opt{kgo.SessionTimeout(6 * time.Second)}), led.handler("A", 2*time.Millisecond),
		parallafka.WithMaxConcurrency(4), parallafka.WithCommitInterval(50*time.Millisecond),
		parallafka.WithObserver(pipeline.ObserverFuncs{
			PartitionsLost: func(tps []pipeline.TopicPartition) {
				mu.Lock()
				lost = append(lost, tps...)
				mu.Unlock()
			},
			PartitionsRevoked: func([]pipeline.TopicPartition) {
				if !stopping.Load() {
					revokedEarly.Add(1)
				}
			},
		}.Observer()))
	waitFor(t, waitTimeout, "A to handle 300 records", func() bool { return led.count("A") >= 300 })
	var joins atomic.Int32
	c.fake.ControlKey(int16(kmsg.JoinGroup), func(r kmsg.Request) (kmsg.Response, error, bool) {
		req := r.(*kmsg.JoinGroupRequest)
		if req.MemberID == "" {
			return nil, nil, false
		}
		c.fake.KeepControl()
		if joins.Add(1) > 1 {
			return nil, nil, false
		}
		resp := req.ResponseKind().(*kmsg.JoinGroupResponse)
		resp.ErrorCode = kerr.UnknownMemberID.Code
		return resp, nil, true
	})
	c.fake.ControlKey(int16(kmsg.OffsetCommit), func(r kmsg.Request) (kmsg.Response, error, bool) {
		req := r.(*kmsg.OffsetCommitRequest)
		resp := req.ResponseKind().(*kmsg.OffsetCommitResponse)
		for _, rt := range req.Topics {
			st := kmsg.NewOffsetCommitResponseTopic()
			st.Topic, st.TopicID = rt.Topic, rt.TopicID
			for _, rp := range rt.Partitions {
				sp := kmsg.NewOffsetCommitResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = kerr.UnknownMemberID.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	waitFor(t, waitTimeout, "every record handled", func() bool { return led.distinct() == n })
	stopping.Store(true)
	require.NoError(t, m.stop())
	led.check(t, n)
	mu.Lock()
	t.Logf("joins seen %d; lost %v; revoked before the stop %d", joins.Load(), lost, revokedEarly.Load())
	assert.NotEmpty(t, lost, "the partitions held under the old member ID are lost")
	mu.Unlock()
	assert.Zero(t, revokedEarly.Load(), "no revoke (and no commit) under the new member ID for the old member's partitions")
	ends := c.endOffsets(t, topic, partitions)
	got := c.committed(t, group, topic)
	for p, end := range ends {
		assert.Equal(t, end, got[p].Offset, "partition %d committed offset", p)
	}
}
