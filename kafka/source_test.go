package kafka

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/parallafka/parallafka/pipeline"
)

// pollN polls src on the calling goroutine until n messages arrived.
func pollN(t *testing.T, src *Source[string, string], l *recListener, n int, timeout time.Duration) []*pipeline.Message[string, string] {
	t.Helper()
	var msgs []*pipeline.Message[string, string]
	deadline := time.Now().Add(timeout)
	for len(msgs) < n {
		require.True(t, time.Now().Before(deadline), "timed out with %d of %d messages", len(msgs), n)
		msg, err := src.Poll(50 * time.Millisecond)
		require.NoError(t, err)
		if msg != nil {
			msgs = append(msgs, msg)
			if l != nil {
				l.handled(msg)
			}
		}
	}
	return msgs
}

func TestPollDeliversAllFields(t *testing.T) {
	c := newTestCluster(t)
	topic := c.topic(t, 3)
	ts := time.UnixMilli(time.Now().Add(-time.Hour).UnixMilli())
	var recs []*kgo.Record
	for i := range 30 {
		r := record(topic, int32(i%3), fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i))
		r.Timestamp = ts.Add(time.Duration(i) * time.Millisecond)
		r.Headers = []kgo.RecordHeader{{Key: "n", Value: []byte(fmt.Sprint(i))}, {Key: "empty"}}
		recs = append(recs, r)
	}
	// A record without key, one with an empty key, one without value (a tombstone).
	recs = append(recs,
		&kgo.Record{Topic: topic, Partition: 0, Value: []byte("no key")},
		&kgo.Record{Topic: topic, Partition: 1, Key: []byte{}, Value: []byte("empty key")},
		&kgo.Record{Topic: topic, Partition: 2, Key: []byte("tomb")})
	c.produce(t, recs...)

	src := newStringSource(t, c.config(groupName(t), "range"), topic)
	l := newListener(src)
	require.NoError(t, src.Subscribe(l))
	msgs := pollN(t, src, l, len(recs), 30*time.Second)

	assert.Equal(t, set(tps(topic, 0, 1, 2)...), l.ownedSet())
	nextOffset := map[int32]int64{}
	byValue := map[string]*pipeline.Message[string, string]{}
	for _, m := range msgs {
		require.NoError(t, m.Err)
		assert.Equal(t, topic, m.Topic)
		assert.Equal(t, nextOffset[m.Partition], m.Offset, "offsets in order per partition")
		nextOffset[m.Partition] = m.Offset + 1
		byValue[string(m.RawValue)] = m
	}
	for i := range 30 {
		m := byValue[fmt.Sprintf("v%d", i)]
		require.NotNil(t, m, "v%d", i)
		assert.Equal(t, int32(i%3), m.Partition)
		assert.Equal(t, int64(i/3), m.Offset)
		assert.Equal(t, fmt.Sprintf("k%d", i), m.Key)
		assert.Equal(t, []byte(fmt.Sprintf("k%d", i)), m.RawKey)
		assert.Equal(t, fmt.Sprintf("v%d", i), m.Value)
		assert.True(t, ts.Add(time.Duration(i)*time.Millisecond).Equal(m.Timestamp), "timestamp %v", m.Timestamp)
		require.Len(t, m.Headers, 2)
		assert.Equal(t, pipeline.Header{Key: "n", Value: []byte(fmt.Sprint(i))}, m.Headers[0])
		assert.Equal(t, "empty", m.Headers[1].Key)
		assert.Empty(t, m.Headers[1].Value)
	}

	noKey := byValue["no key"]
	require.NotNil(t, noKey)
	assert.Nil(t, noKey.RawKey, "a record without key has RawKey nil")
	assert.Equal(t, "", noKey.Key)

	emptyKey := byValue["empty key"]
	require.NotNil(t, emptyKey)
	assert.NotNil(t, emptyKey.RawKey, "an empty key is not a missing key")
	assert.Empty(t, emptyKey.RawKey)

	var tomb *pipeline.Message[string, string]
	for _, m := range msgs {
		if m.Key == "tomb" {
			tomb = m
		}
	}
	require.NotNil(t, tomb)
	assert.Nil(t, tomb.RawValue)
	assert.Equal(t, "", tomb.Value)

	require.NoError(t, src.Close())
}

func TestDeserializeFailureIsPoisonPillNotPollError(t *testing.T) {
	c := newTestCluster(t)
	topic := c.topic(t, 1)
	c.produce(t,
		record(topic, 0, "a", `{"n":1}`),
		record(topic, 0, "b", `not json`),
		record(topic, 0, "panic", `{"n":3}`),
		record(topic, 0, "d", `{"n":4}`))

	type val struct{ N int }
	cause := errors.New("boom")
	keyDeser := func(_ string, _ []pipeline.Header, b []byte) (string, error) {
		if string(b) == "panic" {
			panic(cause)
		}
		return string(b), nil
	}
	log := testLogger(t)
	consumer, err := NewConsumer(c.config(groupName(t), "range"), WithLogger(log))
	require.NoError(t, err)
	src, err := NewSource(consumer, []string{topic}, keyDeser, JSON[val](), WithLogger(log))
	require.NoError(t, err)
	require.NoError(t, src.Subscribe(newListenerAny()))

	var msgs []*pipeline.Message[string, val]
	deadline := time.Now().Add(30 * time.Second)
	for len(msgs) < 4 && time.Now().Before(deadline) {
		m, err := src.Poll(50 * time.Millisecond)
		require.NoError(t, err, "a bad record must not fail Poll")
		if m != nil {
			msgs = append(msgs, m)
		}
	}
	require.Len(t, msgs, 4)

	assert.NoError(t, msgs[0].Err)
	assert.Equal(t, val{1}, msgs[0].Value)

	var de *DeserializeError
	require.ErrorAs(t, msgs[1].Err, &de)
	assert.Equal(t, topic, de.Topic)
	assert.Equal(t, int32(0), de.Partition)
	assert.Equal(t, int64(1), de.Offset)
	assert.Equal(t, "value", de.Field)
	var syntaxErr interface{ Error() string }
	syntaxErr = errors.Unwrap(msgs[1].Err)
	assert.NotNil(t, syntaxErr)
	assert.Equal(t, []byte("not json"), msgs[1].RawValue, "raw bytes kept for dead-lettering")
	assert.Equal(t, "b", msgs[1].Key)

	require.ErrorAs(t, msgs[2].Err, &de)
	assert.Equal(t, "key", de.Field)
	assert.Equal(t, int64(2), de.Offset)
	assert.Contains(t, de.Error(), "panicked")

	assert.NoError(t, msgs[3].Err)
	assert.Equal(t, val{4}, msgs[3].Value)
	require.NoError(t, src.Close())
}

// A deserializer sees the record's headers: here a header says how the
// value is encoded, as a schema-registry deserializer reads a schema id.
func TestDeserializerSeesHeaders(t *testing.T) {
	c := newTestCluster(t)
	topic := c.topic(t, 1)
	upper := record(topic, 0, "a", "shout")
	upper.Headers = []kgo.RecordHeader{{Key: "encoding", Value: []byte("upper")}}
	c.produce(t, upper, record(topic, 0, "b", "plain"))

	valueDeser := func(_ string, headers []pipeline.Header, b []byte) (string, error) {
		for _, h := range headers {
			if h.Key == "encoding" && string(h.Value) == "upper" {
				return strings.ToUpper(string(b)), nil
			}
		}
		return string(b), nil
	}
	log := testLogger(t)
	consumer, err := NewConsumer(c.config(groupName(t), "range"), WithLogger(log))
	require.NoError(t, err)
	src, err := NewSource(consumer, []string{topic}, String, valueDeser, WithLogger(log))
	require.NoError(t, err)
	require.NoError(t, src.Subscribe(newListenerAny()))
	var values []string
	deadline := time.Now().Add(30 * time.Second)
	for len(values) < 2 && time.Now().Before(deadline) {
		m, err := src.Poll(50 * time.Millisecond)
		require.NoError(t, err)
		if m != nil {
			require.NoError(t, m.Err)
			values = append(values, m.Value)
		}
	}
	assert.Equal(t, []string{"SHOUT", "plain"}, values)
	require.NoError(t, src.Close())
}

// anyListener accepts every notification.
type anyListener struct{}

func newListenerAny() anyListener                               { return anyListener{} }
func (anyListener) PartitionsAssigned([]pipeline.Offset)        {}
func (anyListener) PartitionsRevoked([]pipeline.TopicPartition) {}
func (anyListener) PartitionsLost([]pipeline.TopicPartition)    {}

func TestCommitThenReopenResumesAfterCommittedOffset(t *testing.T) {
	c := newTestCluster(t)
	topic := c.topic(t, 2)
	var recs []*kgo.Record
	for i := range 10 {
		recs = append(recs, record(topic, 0, "k", fmt.Sprint(i)), record(topic, 1, "k", fmt.Sprint(i)))
	}
	c.produce(t, recs...)
	group := groupName(t)

	src := newStringSource(t, c.config(group, "range"), topic)
	l := anyListener{}
	require.NoError(t, src.Subscribe(l))
	pollN(t, src, nil, 20, 30*time.Second)

	ctx := context.Background()
	p0, p1 := pipeline.TopicPartition{Topic: topic, Partition: 0}, pipeline.TopicPartition{Topic: topic, Partition: 1}
	// Offsets are sent as given: 6 means "offsets 0..5 are done, read 6 next".
	require.NoError(t, src.Commit(ctx, []pipeline.Offset{{TopicPartition: p0, Offset: 6}, {TopicPartition: p1, Offset: 3}}))
	assert.Equal(t, map[int32]int64{0: 6, 1: 3}, c.committed(group, topic))

	// A late, lower commit does not move the committed offset back.
	require.NoError(t, src.Commit(ctx, []pipeline.Offset{{TopicPartition: p0, Offset: 2}}))
	assert.Equal(t, int64(6), c.committed(group, topic)[0])

	// A partition this member does not own is dropped, and says so.
	other := pipeline.TopicPartition{Topic: topic, Partition: 7}
	err := src.Commit(ctx, []pipeline.Offset{{TopicPartition: other, Offset: 1}})
	require.ErrorIs(t, err, pipeline.ErrNotOwned)
	var ce *CommitError
	require.ErrorAs(t, err, &ce)
	assert.Empty(t, ce.Failed, "nothing worth retrying")
	assert.Equal(t, []pipeline.Offset{{TopicPartition: other, Offset: 1}}, ce.NotOwned)

	// Mixed: the owned partition is committed, the other reported.
	err = src.Commit(ctx, []pipeline.Offset{{TopicPartition: p1, Offset: 4}, {TopicPartition: other, Offset: 1}})
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, []pipeline.Offset{{TopicPartition: p1, Offset: 4}}, ce.Committed)
	assert.Equal(t, int64(4), c.committed(group, topic)[1])

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, src.Commit(cancelled, []pipeline.Offset{{TopicPartition: p1, Offset: 5}}), context.Canceled)

	require.NoError(t, src.Close())
	require.ErrorIs(t, src.Commit(ctx, []pipeline.Offset{{TopicPartition: p1, Offset: 5}}), ErrClosed)
	_, err = src.Poll(0)
	require.ErrorIs(t, err, ErrClosed)
	require.NoError(t, src.Close(), "Close is idempotent")

	// The same group resumes where the commits left it.
	src2 := newStringSource(t, c.config(group, "range"), topic)
	require.NoError(t, src2.Subscribe(anyListener{}))
	msgs := pollN(t, src2, nil, 4+6, 30*time.Second)
	first := map[int32]int64{}
	for _, m := range msgs {
		if _, ok := first[m.Partition]; !ok {
			first[m.Partition] = m.Offset
		}
	}
	assert.Equal(t, map[int32]int64{0: 6, 1: 4}, first)
	require.NoError(t, src2.Close())
}

func TestRebalance(t *testing.T) {
	for _, strategy := range []string{"range", "roundrobin", "cooperative-sticky", "consumer-protocol"} {
		t.Run(strategy, func(t *testing.T) { testRebalance(t, strategy) })
	}
}

// testRebalance: A consumes everything, B joins, A's revoked partitions are
// committed from inside PartitionsRevoked and B starts exactly after them;
// then B leaves (its revoke runs inside Close) and A takes its partitions
// back, again exactly after B's commits.
func testRebalance(t *testing.T, strategy string) {
	c := newTestCluster(t)
	const parts = 4
	topic := c.topic(t, parts)
	group := groupName(t)
	all := tps(topic, 0, 1, 2, 3)

	produceRound := func(round int) {
		var recs []*kgo.Record
		for p := range int32(parts) {
			for i := range 5 {
				recs = append(recs, record(topic, p, fmt.Sprintf("k%d", i), fmt.Sprintf("r%d-p%d-%d", round, p, i)))
			}
		}
		c.produce(t, recs...)
	}
	produceRound(0)

	a := startMember(t, "A", c.config(group, strategy), topic)
	waitFor(t, 30*time.Second, "A owns all partitions and read round 0", func() bool {
		return len(a.l.ownedSet()) == parts && a.count(nil) == parts*5
	})

	b := startMember(t, "B", c.config(group, strategy), topic)
	waitFor(t, 30*time.Second, "A and B split the partitions", func() bool {
		ao, bo := a.l.ownedSet(), b.l.ownedSet()
		return len(ao)+len(bo) == parts && len(ao) > 0 && len(bo) > 0
	})
	ao, bo := a.l.ownedSet(), b.l.ownedSet()
	for tp := range bo {
		assert.False(t, ao[tp], "%s owned by both", tp)
	}

	// A's revoke committed the partitions B took, from inside the callback.
	committed := c.committed(group, topic)
	for tp := range bo {
		assert.Equal(t, int64(5), committed[tp.Partition], "commit of %s from PartitionsRevoked", tp)
	}
	assert.Empty(t, a.l.errs())
	revokedFromA := map[pipeline.TopicPartition]bool{}
	for _, cl := range a.l.callsCopy() {
		assert.NotEqual(t, "lost", cl.kind)
		if cl.kind == "revoked" {
			for _, tp := range cl.parts {
				revokedFromA[tp] = true
			}
		}
	}
	if strategy == "cooperative-sticky" || strategy == "consumer-protocol" {
		assert.Equal(t, bo, revokedFromA, "cooperative: only the moved partitions are revoked")
	} else {
		assert.Equal(t, set(all...), revokedFromA, "eager: everything is revoked")
	}

	// B starts after A's commits: round 1 is the first thing it reads.
	produceRound(1)
	waitFor(t, 30*time.Second, "round 1 consumed by its owners", func() bool {
		return a.count(ao) == len(ao)*10 && b.count(nil) == len(bo)*5
	})
	for _, m := range b.messages() {
		assert.GreaterOrEqual(t, m.Offset, int64(5), "B re-read %s", m)
	}

	// B leaves: its revoke runs inside Close and commits; A takes over.
	b.close()
	require.NoError(t, b.closeErr)
	require.NoError(t, b.pollErr)
	assert.Empty(t, b.l.errs())
	bCalls := b.l.callsCopy()
	require.NotEmpty(t, bCalls)
	last := bCalls[len(bCalls)-1]
	assert.Equal(t, "revoked", last.kind, "the last notification comes from inside Close")
	assert.Equal(t, bo, set(last.parts...))
	committed = c.committed(group, topic)
	for tp := range bo {
		assert.Equal(t, int64(10), committed[tp.Partition], "commit of %s from PartitionsRevoked inside Close", tp)
	}

	waitFor(t, 30*time.Second, "A owns all partitions again", func() bool { return len(a.l.ownedSet()) == parts })
	produceRound(2)
	waitFor(t, 30*time.Second, "A reads round 2 everywhere", func() bool {
		n := 0
		for _, m := range a.messages() {
			if m.Offset >= 10 {
				n++
			}
		}
		return n == parts*5
	})
	for _, m := range a.messages() {
		if bo[m.TopicPartition()] {
			assert.True(t, m.Offset < 5 || m.Offset >= 10, "A re-read %s that B had committed", m)
		}
	}

	a.close()
	require.NoError(t, a.closeErr)
	require.NoError(t, a.pollErr)
	assert.Empty(t, a.l.errs())
	committed = c.committed(group, topic)
	for p := range int32(parts) {
		assert.Equal(t, int64(15), committed[p], "partition %d", p)
	}
}

func TestPauseStopsDeliveryWhilePollKeepsRunning(t *testing.T) {
	c := newTestCluster(t)
	topic := c.topic(t, 2)
	var recs []*kgo.Record
	for i := range 200 {
		recs = append(recs, record(topic, 0, "k", fmt.Sprint(i)))
	}
	c.produce(t, recs...)

	src := newStringSource(t, c.config(groupName(t), "range"), topic)
	l := newListener(src)
	require.NoError(t, src.Subscribe(l))
	p0, p1 := tps(topic, 0)[0], tps(topic, 1)[0]

	// The first message of p0 arrives with a batch of others behind it.
	first := pollN(t, src, l, 1, 30*time.Second)[0]
	require.Equal(t, p0, first.TopicPartition())
	require.NoError(t, src.Pause([]pipeline.TopicPartition{p0}))

	// p1 keeps flowing while p0 is paused: poll until its records arrive
	// and check that nothing of p0 came meanwhile, not even what was
	// fetched before the pause.
	c.produce(t, record(topic, 1, "x", "a"), record(topic, 1, "x", "b"), record(topic, 1, "x", "c"))
	var got []*pipeline.Message[string, string]
	deadline := time.Now().Add(30 * time.Second)
	p1Count, polls := 0, 0
	for p1Count < 3 {
		require.True(t, time.Now().Before(deadline), "p1 records did not arrive")
		m, err := src.Poll(20 * time.Millisecond)
		polls++
		require.NoError(t, err)
		if m != nil {
			got = append(got, m)
			if m.Partition == 1 {
				p1Count++
			}
		}
	}
	for _, m := range got {
		assert.Equal(t, p1, m.TopicPartition(), "delivered %s while paused", m)
	}
	// Give the fetcher a moment more, measured in polls rather than time.
	for range 10 {
		m, err := src.Poll(20 * time.Millisecond)
		require.NoError(t, err)
		assert.Nil(t, m, "delivered while paused")
	}

	// Resume: p0 continues right after the message delivered before the pause.
	require.NoError(t, src.Resume([]pipeline.TopicPartition{p0}))
	rest := pollN(t, src, l, 199, 30*time.Second)
	for i, m := range rest {
		assert.Equal(t, p0, m.TopicPartition())
		assert.Equal(t, int64(i+1), m.Offset)
	}
	require.NoError(t, src.Close())
}

// librdkafka keeps an application pause through unassign and assign; the
// Source resumes newly assigned partitions so they start unpaused.
func TestNewlyAssignedPartitionsStartUnpaused(t *testing.T) {
	c := newTestCluster(t)
	topic := c.topic(t, 2)
	group := groupName(t)

	// src pauses everything of its first assignment, as a pipeline at its
	// in-flight limit does.
	src := newStringSource(t, c.config(group, "range"), topic)
	l := newListener(src)
	pauseOnAssign := true
	l.onAssign = func(parts []pipeline.TopicPartition) {
		if pauseOnAssign {
			require.NoError(t, src.Pause(parts))
		}
	}
	require.NoError(t, src.Subscribe(l))
	var delivered []*pipeline.Message[string, string]
	pollUntil := func(what string, cond func() bool) {
		waitFor(t, 30*time.Second, what, func() bool {
			m, err := src.Poll(20 * time.Millisecond)
			require.NoError(t, err)
			if m != nil {
				delivered = append(delivered, m)
			}
			return cond()
		})
	}
	pollUntil("first assignment", func() bool { return len(l.ownedSet()) == 2 })
	pauseOnAssign = false

	// B joins: the eager rebalance revokes both partitions and assigns one
	// back to src, which must deliver it although it paused it before.
	b := startMember(t, "B", c.config(group, "range"), topic)
	pollUntil("the rebalance", func() bool { return len(l.ownedSet()) == 1 && len(b.l.ownedSet()) == 1 })
	c.produce(t, record(topic, 0, "k", "0"), record(topic, 1, "k", "0"))
	pollUntil("both new assignments deliver", func() bool { return len(delivered) == 1 && b.count(nil) == 1 })
	got := delivered
	assert.True(t, l.ownedSet()[got[0].TopicPartition()])
	require.NoError(t, src.Close())
	b.close()
	require.NoError(t, b.closeErr)
}

func TestCloseRunsRevokeAndLeavesNoGoroutine(t *testing.T) {
	c := newTestCluster(t)
	topic := c.topic(t, 3)
	group := groupName(t)
	c.produce(t, record(topic, 0, "a", "1"), record(topic, 1, "b", "2"), record(topic, 2, "c", "3"))
	src := newStringSource(t, c.config(group, "cooperative-sticky"), topic)
	l := newListener(src)
	require.NoError(t, src.Subscribe(l))
	pollN(t, src, l, 3, 30*time.Second)

	require.NoError(t, src.Close())
	calls := l.callsCopy()
	require.NotEmpty(t, calls)
	assert.Equal(t, call{kind: "revoked", parts: tps(topic, 0, 1, 2)}, sortedCall(calls[len(calls)-1]))
	assert.Empty(t, l.errs())
	assert.Equal(t, map[int32]int64{0: 1, 1: 1, 2: 1}, c.committed(group, topic))
	assert.True(t, src.Consumer().IsClosed())
	require.NoError(t, src.Close())
	require.ErrorIs(t, src.Pause(tps(topic, 0)), ErrClosed)
	require.ErrorIs(t, src.Subscribe(l), ErrClosed)
	// goleak (TestMain) checks that nothing of the consumer is left running.
}

func sortedCall(c call) call {
	parts := append([]pipeline.TopicPartition(nil), c.parts...)
	sort.Slice(parts, func(i, j int) bool { return parts[i].Partition < parts[j].Partition })
	return call{kind: c.kind, parts: parts}
}

func TestEventHandlerSeesNonMessageEvents(t *testing.T) {
	c := newTestCluster(t)
	topic := c.topic(t, 1)
	c.produce(t, record(topic, 0, "k", "v"))
	events := make(chan ckafka.Event, 100)
	src := newStringSource(t, c.config(groupName(t), "range"), topic, WithEventHandler(func(ev ckafka.Event) {
		select {
		case events <- ev:
		default:
		}
	}))
	require.NoError(t, src.Subscribe(anyListener{}))
	pollN(t, src, nil, 1, 30*time.Second)
	waitFor(t, 30*time.Second, "a partition EOF event", func() bool {
		_, err := src.Poll(20 * time.Millisecond)
		require.NoError(t, err)
		for {
			select {
			case ev := <-events:
				if _, ok := ev.(ckafka.PartitionEOF); ok {
					return true
				}
			default:
				return false
			}
		}
	})
	require.NoError(t, src.Close())
}

// failCommits makes the coordinator answer the next OffsetCommit with code
// for the partitions in codes, success for the others.
func failCommits(c *testCluster, codes map[int32]int16) {
	c.ControlKey(kmsg.OffsetCommit.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		creq := req.(*kmsg.OffsetCommitRequest)
		resp := creq.ResponseKind().(*kmsg.OffsetCommitResponse)
		for _, rt := range creq.Topics {
			st := kmsg.NewOffsetCommitResponseTopic()
			st.Topic, st.TopicID = rt.Topic, rt.TopicID
			for _, rp := range rt.Partitions {
				sp := kmsg.NewOffsetCommitResponseTopicPartition()
				sp.Partition, sp.ErrorCode = rp.Partition, codes[rp.Partition]
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
}

// fakeCommitted makes the coordinator answer the next OffsetFetch with
// offsets, as if the partitions' commits had gone through.
func fakeCommitted(c *testCluster, offsets map[int32]int64) {
	c.ControlKey(kmsg.OffsetFetch.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		freq := req.(*kmsg.OffsetFetchRequest)
		resp := freq.ResponseKind().(*kmsg.OffsetFetchResponse)
		for _, rt := range freq.Topics {
			st := kmsg.NewOffsetFetchResponseTopic()
			st.Topic = rt.Topic
			for _, part := range rt.Partitions {
				sp := kmsg.NewOffsetFetchResponseTopicPartition()
				sp.Partition, sp.Offset = part, offsets[part]
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		for _, rg := range freq.Groups {
			sg := kmsg.NewOffsetFetchResponseGroup()
			sg.Group = rg.Group
			for _, rt := range rg.Topics {
				st := kmsg.NewOffsetFetchResponseGroupTopic()
				st.Topic, st.TopicID = rt.Topic, rt.TopicID
				for _, part := range rt.Partitions {
					sp := kmsg.NewOffsetFetchResponseGroupTopicPartition()
					sp.Partition, sp.Offset = part, offsets[part]
					st.Partitions = append(st.Partitions, sp)
				}
				sg.Topics = append(sg.Topics, st)
			}
			resp.Groups = append(resp.Groups, sg)
		}
		return resp, nil, true
	})
}

func TestCommitReportsPartitionErrors(t *testing.T) {
	c := newTestCluster(t)
	topic := c.topic(t, 3)
	group := groupName(t)
	c.produce(t, record(topic, 0, "a", "1"), record(topic, 1, "b", "2"), record(topic, 2, "c", "3"))
	src := newStringSource(t, c.config(group, "range"), topic)
	l := newListener(src)
	require.NoError(t, src.Subscribe(l))
	pollN(t, src, l, 3, 30*time.Second)
	p := tps(topic, 0, 1, 2)
	ctx := context.Background()
	offs := func(o int64) []pipeline.Offset {
		return []pipeline.Offset{{TopicPartition: p[0], Offset: o}, {TopicPartition: p[1], Offset: o}, {TopicPartition: p[2], Offset: o}}
	}

	// A retriable failure of one partition: the others are committed (the
	// Source learns which from the coordinator) and it is to be retried.
	require.NoError(t, src.Commit(ctx, offs(1)))
	failCommits(c, map[int32]int16{1: kerr.CoordinatorNotAvailable.Code})
	fakeCommitted(c, map[int32]int64{0: 2, 1: 1, 2: 2})
	err := src.Commit(ctx, offs(2))
	var ce *CommitError
	require.ErrorAs(t, err, &ce, "%v", err)
	t.Log(err)
	assert.NotEmpty(t, ce.Failed, "something worth retrying")
	assert.NotErrorIs(t, err, pipeline.ErrNotOwned, "something is worth retrying")
	assert.Equal(t, []pipeline.Offset{{TopicPartition: p[1], Offset: 2}}, ce.Failed)
	assert.ElementsMatch(t, []pipeline.Offset{{TopicPartition: p[0], Offset: 2}, {TopicPartition: p[2], Offset: 2}}, ce.Committed)
	assert.Empty(t, ce.NotOwned)
	var kafkaErr ckafka.Error
	require.ErrorAs(t, err, &kafkaErr)
	assert.Equal(t, ckafka.ErrCoordinatorNotAvailable, kafkaErr.Code())

	// The retry succeeds.
	require.NoError(t, src.Commit(ctx, ce.Failed))
	assert.Equal(t, int64(2), c.committed(group, topic)[1])

	// A generation this member is no longer part of: give up.
	failCommits(c, map[int32]int16{0: kerr.IllegalGeneration.Code, 1: kerr.IllegalGeneration.Code, 2: kerr.IllegalGeneration.Code})
	err = src.Commit(ctx, offs(3))
	require.ErrorIs(t, err, pipeline.ErrNotOwned, "%v", err)
	require.ErrorAs(t, err, &ce)
	assert.Empty(t, ce.Failed, "nothing worth retrying")
	assert.Len(t, ce.NotOwned, 3)
	require.ErrorAs(t, err, &kafkaErr)
	assert.Equal(t, ckafka.ErrIllegalGeneration, kafkaErr.Code())
	require.NoError(t, src.Close())
}

func TestLostAssignmentIsReportedAndNotCommitted(t *testing.T) {
	c := newTestCluster(t, kfake.GroupMinSessionTimeout(100*time.Millisecond))
	topic := c.topic(t, 1)
	group := groupName(t)
	c.produce(t, record(topic, 0, "a", "1"))
	cfg := c.config(group, "range")
	for k, v := range map[string]any{"session.timeout.ms": 1000, "heartbeat.interval.ms": 100, "max.poll.interval.ms": 1000} {
		require.NoError(t, cfg.SetKey(k, v))
	}
	src := newStringSource(t, cfg, topic)
	l := newListener(src)
	var lostCommitErr error
	l.onLost = func(parts []pipeline.TopicPartition) {
		lostCommitErr = src.Commit(context.Background(), []pipeline.Offset{{TopicPartition: parts[0], Offset: 1}})
	}
	require.NoError(t, src.Subscribe(l))
	pollN(t, src, l, 1, 30*time.Second)

	// Stop polling past max.poll.interval.ms: librdkafka leaves the group,
	// and the next Poll reports the assignment lost.
	waitFor(t, 30*time.Second, "the member to leave the group", func() bool {
		info := c.GroupInfo(group)
		return info != nil && len(info.Members) == 0
	})
	waitFor(t, 30*time.Second, "PartitionsLost", func() bool {
		_, err := src.Poll(20 * time.Millisecond)
		require.NoError(t, err, "a lost assignment is not fatal")
		for _, cl := range l.callsCopy() {
			if cl.kind == "lost" {
				return true
			}
		}
		return false
	})
	for _, cl := range l.callsCopy() {
		assert.NotEqual(t, "revoked", cl.kind)
	}
	require.ErrorIs(t, lostCommitErr, pipeline.ErrNotOwned, "a lost partition cannot be committed")
	assert.Empty(t, c.committed(group, topic))

	// The member rejoins on its next polls.
	waitFor(t, 30*time.Second, "reassignment", func() bool {
		_, err := src.Poll(20 * time.Millisecond)
		require.NoError(t, err)
		return len(l.ownedSet()) == 1
	})
	require.NoError(t, src.Close())
}

// TestWatermarksFromFetches: the Source reports a partition's watermarks
// as librdkafka cached them from its fetch responses (no request), after
// the first fetch; not before the consumer heard of the partition.
func TestWatermarksFromFetches(t *testing.T) {
	c := newTestCluster(t)
	topic := c.topic(t, 2)
	var recs []*kgo.Record
	for i := range 30 {
		recs = append(recs, record(topic, 0, "k", fmt.Sprint(i)))
	}
	c.produce(t, recs...)

	src := newStringSource(t, c.config(groupName(t), "range"), topic)
	p0, p1 := tps(topic, 0)[0], tps(topic, 1)[0]
	_, _, ok := src.Watermarks(p0)
	require.False(t, ok, "watermarks before Subscribe")
	l := newListener(src)
	require.NoError(t, src.Subscribe(l))
	pollN(t, src, l, 30, 30*time.Second)
	low, high, ok := src.Watermarks(p0)
	require.True(t, ok)
	assert.Equal(t, int64(0), low)
	assert.Equal(t, int64(30), high)
	// The empty partition, once fetched: low == high.
	deadline := time.Now().Add(30 * time.Second)
	for {
		low, high, ok = src.Watermarks(p1)
		if ok || time.Now().After(deadline) {
			break
		}
		_, err := src.Poll(20 * time.Millisecond)
		require.NoError(t, err)
	}
	require.True(t, ok, "no watermarks for the empty partition")
	assert.Equal(t, low, high)
	require.NoError(t, src.Close())
	_, _, ok = src.Watermarks(p0)
	assert.False(t, ok, "watermarks after Close")
}

// PollBatch hands over what librdkafka has queued in one call: at most max
// messages, each partition's in offset order with no gap, and more than one
// at a time once messages are queued.
func TestPollBatch(t *testing.T) {
	const n, limit = 600, 50
	c := newTestCluster(t)
	topic := c.topic(t, 3)
	var recs []*kgo.Record
	for i := range n {
		recs = append(recs, record(topic, int32(i%3), fmt.Sprint("k", i%30), fmt.Sprint(i)))
	}
	c.produce(t, recs...)
	src := newStringSource(t, c.config(groupName(t), "cooperative-sticky"), topic)
	require.NoError(t, src.Subscribe(newListenerAny()))
	next := map[int32]int64{}
	var got, largest int
	deadline := time.Now().Add(30 * time.Second)
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
			require.Equal(t, next[msg.Partition], msg.Offset, "partition %d", msg.Partition)
			next[msg.Partition]++
			got++
		}
	}
	require.Equal(t, n, got)
	assert.Greater(t, largest, 1, "batches of more than one message")
	require.NoError(t, src.Close())
}

// TestPollBatchSpreadsOverPartitions: librdkafka queues a fetch response a
// partition after another, as much of each as max.partition.fetch.bytes
// allows. With librdkafka's 1 MiB, a backlog of small records puts
// thousands of each other partition's messages ahead of a partition's
// first one, and the pipeline's window fills with them before that
// partition (perhaps a hot key's) is read at all: here the last
// partition's first message came after 9,600 others. NewConsumer's 256 KiB
// brings each partition's first messages within a fetch (3,200 at most).
func TestPollBatchSpreadsOverPartitions(t *testing.T) {
	const partitions, perPartition, chunk = 4, 4000, 200
	c := newTestCluster(t)
	topic := c.topic(t, partitions)
	// Random values, so that compression leaves each partition's backlog
	// over 256 KiB, produced in small batches, as real producers write (a
	// fetch returns whole record batches: one larger than the limit would
	// come whole).
	rnd := rand.New(rand.NewPCG(1, 2))
	value := make([]byte, 150)
	for p := range int32(partitions) {
		for i := 0; i < perPartition; i += chunk {
			recs := make([]*kgo.Record, chunk)
			for j := range recs {
				for k := range value {
					value[k] = byte(rnd.Uint32())
				}
				recs[j] = record(topic, p, fmt.Sprint(i+j), hex.EncodeToString(value))
			}
			c.produce(t, recs...)
		}
	}
	src := newStringSource(t, c.config(groupName(t), "cooperative-sticky"), topic)
	defer func() { require.NoError(t, src.Close()) }()
	require.NoError(t, src.Subscribe(newListenerAny()))
	first := map[int32]int{} // partition -> how many messages came before its first
	next := map[int32]int64{}
	got := 0
	deadline := time.Now().Add(30 * time.Second)
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
	t.Logf("messages before each partition's first: %v", first)
	for p, before := range first {
		assert.Less(t, before, 2*perPartition, "partition %d's first message came after %d others", p, before)
	}
}
