package franz_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka/franz"
	"github.com/parallafka/parallafka/pipeline"
)

// The broker drops every connection for a while (shorter than the session
// timeout): the Source reports its membership in doubt and Unreachable
// while no broker answers, probes the coordinator once it answers again,
// and confirms the membership with a commit the coordinator accepts. No
// partition is lost and nothing is lost.
func TestMembershipDoubt(t *testing.T) {
	const partitions, n, keys = 3, 3000, 30
	c, topic := newCluster(t, partitions)
	if c.fake == nil {
		t.Skip("needs the embedded broker, to cut it off")
	}
	c.produce(t, topic, n, keys)
	group := "g-" + topic
	led := newLedger()
	var lost atomic.Int32
	src := newSource(t, c, group, topic, []kgo.Opt{kgo.RequestTimeoutOverhead(time.Second)})
	m := startMember(t, src, led.handler("A", 2*time.Millisecond), parallafka.WithMaxConcurrency(4),
		parallafka.WithObserver(pipeline.ObserverFuncs{PartitionsLost: func([]pipeline.TopicPartition) { lost.Add(1) }}.Observer()))
	waitFor(t, waitTimeout, "A to handle 300 records", func() bool { return led.count("A") >= 300 })

	var down atomic.Bool
	c.fake.Control(func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.fake.KeepControl()
		// Requests go unanswered (a network partition): they time out,
		// which kgo retries; a closed connection it would take for a
		// misconfiguration and drop the assignment at once.
		if down.Load() && req.Key() != int16(kmsg.ApiVersions) {
			return nil, nil, true
		}
		return nil, nil, false
	})
	down.Store(true)
	waitFor(t, 10*time.Second, "the membership in doubt", src.MembershipInDoubt)
	require.ErrorIs(t, src.Unreachable(), franz.ErrUnreachable)
	before := led.distinct()
	time.Sleep(time.Second)
	assert.LessOrEqual(t, led.distinct()-before, 8, "no handler starts while the membership is in doubt (but those already started)")
	down.Store(false)
	waitFor(t, 20*time.Second, "the membership confirmed", func() bool { return !src.MembershipInDoubt() })
	waitFor(t, waitTimeout, "the brokers reachable again", func() bool { return src.Unreachable() == nil })
	waitFor(t, waitTimeout, "every record handled", func() bool { return led.distinct() == n })
	require.NoError(t, m.stop())
	led.check(t, n)
	assert.Zero(t, lost.Load(), "partitions lost")
}
