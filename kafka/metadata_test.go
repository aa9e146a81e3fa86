package kafka

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/parallafka/parallafka/pipeline"
)

// asciiMetadata returns n printable ASCII bytes starting with tag, so that
// two metadata strings of the same size still differ.
func asciiMetadata(tag string, n int) string {
	var b strings.Builder
	b.Grow(n)
	b.WriteString(tag)
	for i := 0; b.Len() < n; i++ {
		b.WriteByte(byte('!' + i%94))
	}
	return b.String()[:n]
}

// metaListener records the committed offsets every PartitionsAssigned
// brings, and runs onRevoke inside PartitionsRevoked (where the pipeline
// commits a partition's final offset).
type metaListener struct {
	mu       sync.Mutex
	assigned []pipeline.Offset // every entry of every PartitionsAssigned, in order
	owned    map[pipeline.TopicPartition]bool
	revokes  int
	onRevoke func([]pipeline.TopicPartition)
}

func newMetaListener() *metaListener {
	return &metaListener{owned: map[pipeline.TopicPartition]bool{}}
}

func (l *metaListener) PartitionsAssigned(committed []pipeline.Offset) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, off := range committed {
		l.assigned = append(l.assigned, off)
		l.owned[off.TopicPartition] = true
	}
}

func (l *metaListener) PartitionsRevoked(parts []pipeline.TopicPartition) {
	l.mu.Lock()
	hook := l.onRevoke
	l.mu.Unlock()
	if hook != nil {
		hook(parts)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.revokes++
	for _, tp := range parts {
		delete(l.owned, tp)
	}
}

func (l *metaListener) PartitionsLost(parts []pipeline.TopicPartition) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, tp := range parts {
		delete(l.owned, tp)
	}
}

func (l *metaListener) ownedSet() map[pipeline.TopicPartition]bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[pipeline.TopicPartition]bool, len(l.owned))
	for tp := range l.owned {
		out[tp] = true
	}
	return out
}

// assignedSince returns the entries PartitionsAssigned brought from the
// i-th on.
func (l *metaListener) assignedSince(i int) []pipeline.Offset {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]pipeline.Offset(nil), l.assigned[min(i, len(l.assigned)):]...)
}

func (l *metaListener) revokeCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.revokes
}

// startMetaMember runs a Source with l as its listener on a poll loop of
// its own (the member helper, whose recListener only sees the messages).
func startMetaMember(t *testing.T, name string, cfg *ckafka.ConfigMap, topic string, l *metaListener) *member {
	t.Helper()
	src := newStringSource(t, cfg, topic, WithLogger(testLogger(t).With("member", name)))
	m := &member{name: name, src: src, l: newListener(src), stop: make(chan struct{}), done: make(chan struct{})}
	require.NoError(t, src.Subscribe(l))
	go m.run()
	t.Cleanup(m.close)
	return m
}

// checkAssigned checks that got has one entry per partition, each equal to
// want[tp] or, for a partition missing from want, {tp, -1, ""}.
func checkAssigned(t *testing.T, who string, want map[pipeline.TopicPartition]pipeline.Offset, got []pipeline.Offset) {
	t.Helper()
	seen := map[pipeline.TopicPartition]bool{}
	for _, off := range got {
		assert.False(t, seen[off.TopicPartition], "%s: %s twice in PartitionsAssigned", who, off.TopicPartition)
		seen[off.TopicPartition] = true
		w, ok := want[off.TopicPartition]
		if !ok {
			w = pipeline.Offset{TopicPartition: off.TopicPartition, Offset: -1}
		}
		// Compared field by field: a 4096-byte mismatch is unreadable.
		assert.Equal(t, w.Offset, off.Offset, "%s: committed offset of %s", who, off.TopicPartition)
		assert.Equal(t, len(w.Metadata), len(off.Metadata), "%s: metadata length of %s", who, off.TopicPartition)
		assert.True(t, w.Metadata == off.Metadata, "%s: metadata of %s differs from the one committed", who, off.TopicPartition)
	}
}

// TestCommittedMetadataReachesNextOwner: offsets committed with metadata
// (4096 ASCII bytes, a short string, none) come back, exactly, in the
// PartitionsAssigned of the partitions' next owner in the group, and a
// partition never committed comes with Offset -1 and no metadata. The next
// owner takes over after the first closed, or in a rebalance whose revoke
// commits new offsets and metadata from inside PartitionsRevoked.
func TestCommittedMetadataReachesNextOwner(t *testing.T) {
	t.Run("close", func(t *testing.T) { testMetadataAfterClose(t) })
	for _, strategy := range []string{"range", "cooperative-sticky", "consumer-protocol"} {
		t.Run("rebalance-"+strategy, func(t *testing.T) { testMetadataAfterRebalance(t, strategy) })
	}
}

// metadataSetup creates a topic of 4 partitions with 10 records each, starts
// A alone in the group, and commits p0 with 4096 bytes of metadata, p1
// without metadata and p2 with a short one; p3 is never committed.
func metadataSetup(t *testing.T, strategy string) (c *testCluster, topic, group string, a *member, al *metaListener, want map[pipeline.TopicPartition]pipeline.Offset) {
	c = newTestCluster(t)
	topic = c.topic(t, 4)
	group = groupName(t)
	var recs []*kgo.Record
	for p := range int32(4) {
		for i := range 10 {
			recs = append(recs, record(topic, p, "k", fmt.Sprint(i)))
		}
	}
	c.produce(t, recs...)
	all := tps(topic, 0, 1, 2, 3)

	al = newMetaListener()
	a = startMetaMember(t, "A", c.config(group, strategy), topic, al)
	waitFor(t, 30*time.Second, "A owns every partition", func() bool { return len(al.ownedSet()) == 4 })
	checkAssigned(t, "A, first assignment", nil, al.assignedSince(0))

	commits := []pipeline.Offset{
		{TopicPartition: all[0], Offset: 7, Metadata: asciiMetadata("p0:", 4096)},
		{TopicPartition: all[1], Offset: 3},
		{TopicPartition: all[2], Offset: 5, Metadata: "p2: short"},
	}
	require.Len(t, commits[0].Metadata, 4096)
	require.NoError(t, a.src.Commit(context.Background(), commits))
	want = map[pipeline.TopicPartition]pipeline.Offset{}
	for _, off := range commits {
		want[off.TopicPartition] = off
	}
	// What the broker holds, as the group's committed offsets.
	info := c.GroupInfo(group)
	require.NotNil(t, info)
	for _, off := range commits {
		gc, ok := info.Commits[topic][off.Partition]
		require.True(t, ok, "commit of %s", off.TopicPartition)
		assert.Equal(t, off.Offset, gc.Offset, "broker's offset of %s", off.TopicPartition)
		assert.True(t, off.Metadata == gc.Metadata, "broker's metadata of %s (%d bytes, want %d)", off.TopicPartition, len(gc.Metadata), len(off.Metadata))
	}
	_, ok := info.Commits[topic][3]
	require.False(t, ok, "p3 is never committed")
	return c, topic, group, a, al, want
}

func testMetadataAfterClose(t *testing.T) {
	c, topic, group, a, _, want := metadataSetup(t, "range")
	a.close()
	require.NoError(t, a.closeErr)
	require.NoError(t, a.pollErr)

	bl := newMetaListener()
	b := startMetaMember(t, "B", c.config(group, "range"), topic, bl)
	waitFor(t, 30*time.Second, "B owns every partition", func() bool { return len(bl.ownedSet()) == 4 })
	got := bl.assignedSince(0)
	require.Len(t, got, 4)
	checkAssigned(t, "B", want, got)
	b.close()
	require.NoError(t, b.closeErr)
	require.NoError(t, b.pollErr)
}

func testMetadataAfterRebalance(t *testing.T, strategy string) {
	c, topic, group, a, al, want := metadataSetup(t, strategy)
	all := tps(topic, 0, 1, 2, 3)
	// A's revoke commits each revoked partition's final offset with new
	// metadata, as the pipeline does (p3 stays uncommitted).
	final := map[pipeline.TopicPartition]pipeline.Offset{
		all[0]: {TopicPartition: all[0], Offset: 8, Metadata: asciiMetadata("p0 final:", 4096)},
		all[1]: {TopicPartition: all[1], Offset: 3, Metadata: "p1 final"}, // same offset, new metadata
		all[2]: {TopicPartition: all[2], Offset: 6},                       // metadata cleared
	}
	var mu sync.Mutex
	var revokeErrs []error
	al.mu.Lock()
	al.onRevoke = func(parts []pipeline.TopicPartition) {
		var offs []pipeline.Offset
		for _, tp := range parts {
			if off, ok := final[tp]; ok {
				offs = append(offs, off)
			}
		}
		err := a.src.Commit(context.Background(), offs)
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
	firstA := len(al.assigned)
	al.mu.Unlock()

	bl := newMetaListener()
	b := startMetaMember(t, "B", c.config(group, strategy), topic, bl)
	waitFor(t, 30*time.Second, "A and B split the partitions", func() bool {
		ao, bo := al.ownedSet(), bl.ownedSet()
		return len(ao)+len(bo) == 4 && len(ao) > 0 && len(bo) > 0
	})
	require.Positive(t, al.revokeCount())
	mu.Lock()
	require.Empty(t, revokeErrs)
	mu.Unlock()

	// B's partitions come with what A committed, before or inside its
	// revoke; so do those A got back (eager: A is revoked everything).
	gotB := bl.assignedSince(0)
	require.Len(t, gotB, len(bl.ownedSet()))
	checkAssigned(t, "B", want, gotB)
	checkAssigned(t, "A, after the rebalance", want, al.assignedSince(firstA))
	if strategy == "range" {
		assert.Len(t, al.assignedSince(firstA), len(al.ownedSet()), "eager: A is assigned its share again")
	}
	for tp := range bl.ownedSet() {
		_, moved := final[tp]
		if moved {
			assert.Equal(t, final[tp], want[tp], "%s moved to B: A committed its final offset", tp)
		}
	}
	b.close()
	a.close()
	require.NoError(t, b.closeErr)
	require.NoError(t, a.closeErr)
}

// countCommits counts the OffsetCommit requests the broker receives, and
// records the metadata each sent per partition (without intercepting them).
type commitCounter struct {
	mu   sync.Mutex
	sent []map[int32]*string
}

func countCommits(c *testCluster) *commitCounter {
	cc := &commitCounter{}
	c.ControlKey(kmsg.OffsetCommit.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		creq := req.(*kmsg.OffsetCommitRequest)
		parts := map[int32]*string{}
		for _, rt := range creq.Topics {
			for _, rp := range rt.Partitions {
				parts[rp.Partition] = rp.Metadata
			}
		}
		cc.mu.Lock()
		cc.sent = append(cc.sent, parts)
		cc.mu.Unlock()
		return nil, nil, false
	})
	return cc
}

func (cc *commitCounter) requests() []map[int32]*string {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return append([]map[int32]*string(nil), cc.sent...)
}

// TestCommitSameOffsetNewMetadata: committing the offset already committed
// with other metadata sends it (the broker's metadata changes, as
// Consumer().Committed reads it back); with the same metadata, or a lower
// offset, nothing is sent. Of several offsets of one partition in a commit,
// the highest is sent with its metadata.
func TestCommitSameOffsetNewMetadata(t *testing.T) {
	c := newTestCluster(t)
	topic := c.topic(t, 2)
	group := groupName(t)
	c.produce(t, record(topic, 0, "a", "1"), record(topic, 1, "b", "2"))
	src := newStringSource(t, c.config(group, "range"), topic)
	require.NoError(t, src.Subscribe(anyListener{}))
	pollN(t, src, nil, 2, 30*time.Second)
	p := tps(topic, 0, 1)
	cc := countCommits(c)
	ctx := context.Background()

	readBack := func(tp pipeline.TopicPartition) (int64, *string) {
		t.Helper()
		parts, err := src.Consumer().Committed(toKafka([]pipeline.TopicPartition{tp}), 10000)
		require.NoError(t, err)
		require.Len(t, parts, 1)
		require.NoError(t, parts[0].Error)
		return int64(parts[0].Offset), parts[0].Metadata
	}
	step := func(what string, offs []pipeline.Offset, sent bool, wantOff int64, wantMeta string) {
		t.Helper()
		before := len(cc.requests())
		require.NoError(t, src.Commit(ctx, offs), what)
		reqs := cc.requests()
		if sent {
			require.Len(t, reqs, before+1, "%s: one OffsetCommit", what)
		} else {
			require.Len(t, reqs, before, "%s: no OffsetCommit", what)
		}
		off, meta := readBack(p[0])
		assert.Equal(t, wantOff, off, "%s: committed offset", what)
		assert.Equal(t, wantMeta, metadataOf(ckafka.TopicPartition{Metadata: meta}), "%s: committed metadata", what)
		assert.Equal(t, wantMeta, c.GroupInfo(group).Commits[topic][0].Metadata, "%s: broker's metadata", what)
	}
	at := func(o int64, md string) []pipeline.Offset {
		return []pipeline.Offset{{TopicPartition: p[0], Offset: o, Metadata: md}}
	}

	step("first commit", at(5, "m1"), true, 5, "m1")
	assert.Equal(t, "m1", *cc.requests()[0][0], "the metadata is sent")
	step("same offset, new metadata", at(5, "m2"), true, 5, "m2")
	step("same offset, same metadata", at(5, "m2"), false, 5, "m2")
	step("same offset, metadata cleared", at(5, ""), true, 5, "")
	step("same offset, still none", at(5, ""), false, 5, "")
	step("lower offset, other metadata", at(4, "m3"), false, 5, "")
	step("higher offset, same metadata as before", at(6, ""), true, 6, "")

	// Duplicates of one partition in one commit: the highest offset, with
	// the metadata last given for it.
	step("duplicates", []pipeline.Offset{
		{TopicPartition: p[0], Offset: 7, Metadata: "first at 7"},
		{TopicPartition: p[0], Offset: 7, Metadata: "last at 7"},
		{TopicPartition: p[0], Offset: 6, Metadata: "lower"},
	}, true, 7, "last at 7")
	reqs := cc.requests()
	last := reqs[len(reqs)-1]
	require.Len(t, last, 1)
	require.NotNil(t, last[0])
	assert.Equal(t, "last at 7", *last[0])

	// Two partitions in one request, one with metadata and one without.
	require.NoError(t, src.Commit(ctx, []pipeline.Offset{{TopicPartition: p[0], Offset: 8, Metadata: "x"}, {TopicPartition: p[1], Offset: 1}}))
	off, md := readBack(p[1])
	assert.Equal(t, int64(1), off)
	assert.Equal(t, "", metadataOf(ckafka.TopicPartition{Metadata: md}))
	off, md = readBack(p[0])
	assert.Equal(t, int64(8), off)
	require.NotNil(t, md)
	assert.Equal(t, "x", *md)
	require.NoError(t, src.Close())
}

// fakeCommittedWithMetadata makes the coordinator answer the next
// OffsetFetch with offsets and their metadata, as if the commit had gone
// through for some partitions only.
func fakeCommittedWithMetadata(c *testCluster, offsets map[int32]pipeline.Offset) {
	c.ControlKey(kmsg.OffsetFetch.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		freq := req.(*kmsg.OffsetFetchRequest)
		resp := freq.ResponseKind().(*kmsg.OffsetFetchResponse)
		for _, rt := range freq.Topics {
			st := kmsg.NewOffsetFetchResponseTopic()
			st.Topic = rt.Topic
			for _, part := range rt.Partitions {
				sp := kmsg.NewOffsetFetchResponseTopicPartition()
				md := offsets[part].Metadata
				sp.Partition, sp.Offset, sp.Metadata = part, offsets[part].Offset, &md
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
					md := offsets[part].Metadata
					sp.Partition, sp.Offset, sp.Metadata = part, offsets[part].Offset, &md
					st.Partitions = append(st.Partitions, sp)
				}
				sg.Topics = append(sg.Topics, st)
			}
			resp.Groups = append(resp.Groups, sg)
		}
		return resp, nil, true
	})
}

// TestFailedCommitReadBackComparesMetadata: when a commit of several
// partitions fails for some, the Source reads the committed offsets back;
// a partition whose committed offset is the one sent but whose metadata is
// the old one was not committed (Failed), one with the offset and metadata
// sent was, and so was one whose committed offset is past the one sent.
func TestFailedCommitReadBackComparesMetadata(t *testing.T) {
	c := newTestCluster(t)
	topic := c.topic(t, 3)
	group := groupName(t)
	c.produce(t, record(topic, 0, "a", "1"), record(topic, 1, "b", "2"), record(topic, 2, "c", "3"))
	src := newStringSource(t, c.config(group, "range"), topic)
	require.NoError(t, src.Subscribe(anyListener{}))
	pollN(t, src, nil, 3, 30*time.Second)
	p := tps(topic, 0, 1, 2)
	ctx := context.Background()
	old := []pipeline.Offset{
		{TopicPartition: p[0], Offset: 1, Metadata: "old 0"},
		{TopicPartition: p[1], Offset: 1, Metadata: "old 1"},
		{TopicPartition: p[2], Offset: 1, Metadata: "old 2"},
	}
	require.NoError(t, src.Commit(ctx, old))

	// Same offsets, new metadata; the broker answers with a per-partition
	// error (OFFSET_METADATA_TOO_LARGE, as a real broker does past
	// offset.metadata.max.bytes) for p0, and the read-back shows p0 with
	// its old metadata, p1 with the new one, p2 moved past.
	sent := []pipeline.Offset{
		{TopicPartition: p[0], Offset: 1, Metadata: "new 0"},
		{TopicPartition: p[1], Offset: 1, Metadata: "new 1"},
		{TopicPartition: p[2], Offset: 1, Metadata: "new 2"},
	}
	failCommits(c, map[int32]int16{0: kerr.OffsetMetadataTooLarge.Code})
	fakeCommittedWithMetadata(c, map[int32]pipeline.Offset{0: old[0], 1: sent[1], 2: {Offset: 2, Metadata: "later"}})
	err := src.Commit(ctx, sent)
	var ce *CommitError
	require.ErrorAs(t, err, &ce, "%v", err)
	t.Log(err)
	assert.Equal(t, []pipeline.Offset{sent[0]}, ce.Failed)
	assert.Equal(t, []pipeline.Offset{sent[1], sent[2]}, ce.Committed)
	assert.Empty(t, ce.NotOwned)
	var kafkaErr ckafka.Error
	require.ErrorAs(t, err, &kafkaErr)
	assert.Equal(t, ckafka.ErrOffsetMetadataTooLarge, kafkaErr.Code())

	// p1 counts as committed with its new metadata: the same again is not
	// sent; p0 is sent again.
	cc := countCommits(c)
	require.NoError(t, src.Commit(ctx, []pipeline.Offset{sent[1]}))
	assert.Empty(t, cc.requests(), "p1 with the metadata committed is not sent again")
	require.NoError(t, src.Commit(ctx, []pipeline.Offset{sent[0]}))
	require.Len(t, cc.requests(), 1, "p0 is sent again")
	assert.Equal(t, "new 0", c.GroupInfo(group).Commits[topic][0].Metadata)
	require.NoError(t, src.Close())
}
