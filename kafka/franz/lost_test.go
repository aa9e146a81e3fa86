package franz_test

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/pipeline"
)

// The coordinator fences the member mid-stream (a heartbeat answered
// UNKNOWN_MEMBER_ID, or FENCED_MEMBER_EPOCH under KIP-848): the pipeline
// hears PartitionsLost (not Revoked: nothing is committed for them), kgo
// rejoins, the member gets its partitions back, and nothing is lost.
func TestLostAssignment(t *testing.T) {
	for _, proto := range protocols {
		t.Run(proto.name, func(t *testing.T) {
			const partitions, n, keys = 3, 3000, 30
			c, topic := newCluster(t, partitions)
			if c.fake == nil {
				t.Skip("needs the embedded broker, to fence the member")
			}
			c.produce(t, topic, n, keys)
			group := "g-" + topic
			led := newLedger()
			var mu sync.Mutex
			var lost, revoked []pipeline.TopicPartition
			hooks := parallafka.WithObserver(pipeline.ObserverFuncs{
				PartitionsLost: func(tps []pipeline.TopicPartition) {
					mu.Lock()
					lost = append(lost, tps...)
					mu.Unlock()
				},
				PartitionsRevoked: func(tps []pipeline.TopicPartition) {
					mu.Lock()
					revoked = append(revoked, tps...)
					mu.Unlock()
				},
			}.Observer())
			m := startMember(t, newSource(t, c, group, topic, proto.opts), led.handler("A", 2*time.Millisecond),
				parallafka.WithMaxConcurrency(4), hooks)
			waitFor(t, waitTimeout, "A to handle 300 records", func() bool { return led.count("A") >= 300 })

			fence := func(req kmsg.Request) (kmsg.Response, error, bool) {
				switch req := req.(type) {
				case *kmsg.HeartbeatRequest:
					resp := req.ResponseKind().(*kmsg.HeartbeatResponse)
					resp.ErrorCode = kerr.UnknownMemberID.Code
					return resp, nil, true
				case *kmsg.ConsumerGroupHeartbeatRequest:
					if req.MemberEpoch <= 0 { // a join or a leave: let it through
						return nil, nil, false
					}
					resp := req.ResponseKind().(*kmsg.ConsumerGroupHeartbeatResponse)
					resp.ErrorCode = kerr.FencedMemberEpoch.Code
					return resp, nil, true
				}
				return nil, nil, false
			}
			c.fake.ControlKey(int16(kmsg.Heartbeat), fence)
			c.fake.ControlKey(int16(kmsg.ConsumerGroupHeartbeat), fence)
			waitFor(t, waitTimeout, "the partitions to be lost", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(lost) > 0
			})
			waitFor(t, waitTimeout, "every record handled", func() bool { return led.distinct() == n })
			require.NoError(t, m.stop())
			mu.Lock()
			t.Logf("%s: lost %v; revoked %v; handled %d records, %d distinct", proto.name, lost, revoked, len(led.handled), led.distinct())
			mu.Unlock()
			led.check(t, n)
			ends := c.endOffsets(t, topic, partitions)
			got := c.committed(t, group, topic)
			for p, end := range ends {
				assert.Equal(t, end, got[p].Offset, "partition %d committed offset", p)
			}
		})
	}
}
