package integration_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka/internal/keyed"
	"github.com/parallafka/parallafka/kafka/kafkatest"
)

// TestCrashStuckMessage kills (SIGKILL) a consuming process whose first
// record of partition 0 never finishes (its handler blocks) while thousands
// after it do: partition 0's committed offset stays at the stuck record,
// and its offset map marks everything the child finished above it. A new
// member of the group then redoes only the stuck record, the records of its
// key queued behind it (per-key order: they never started) and whatever
// the child finished after its last commit; it skips the rest of partition
// 0 (FinishedBefore). Without the map it would redo all of partition 0.
// The redo is bounded by the records unfinished at the kill plus those the
// child finished within a commit interval (plus a margin) before it.
func TestCrashStuckMessage(t *testing.T) {
	const messages, partitions, keys = 6000, 3, 500
	const margin = 3 * time.Second // commit latency and scheduling, generously
	c := kafkatest.New(t)
	topic := newTopic(t, c, partitions)
	group := groupFor(t)
	ctx := context.Background()
	produced, err := keyed.Produce(ctx, c, topic, messages, keys)
	require.NoError(t, err)

	// The stuck record is partition 0's first; its key's later records (all
	// in partition 0) wait behind it.
	stuck := po{0, 0}
	var stuckKey []byte
	for _, r := range produced {
		if r.Partition == stuck.p && r.Offset == stuck.o {
			stuckKey = r.Key
		}
	}
	require.NotNil(t, stuckKey, "no record at %s", stuck)
	behind := 0
	for _, r := range produced {
		if bytes.Equal(r.Key, stuckKey) && r.Offset != stuck.o {
			require.Equal(t, stuck.p, r.Partition)
			behind++
		}
	}

	// Kill the child once it finished all it can (all but the stuck key's
	// records) and its handled count stood still for two commit intervals:
	// a commit carried the map since.
	ch := startCrashChild(t, c, topic, group, fmt.Sprintf("%s=%d %d", crashStuckEnv, stuck.p, stuck.o))
	want := messages - 1 - behind
	count, since := -1, time.Now()
	waitFor(t, waitTimeout, fmt.Sprintf("the child to handle %d records, then nothing for %v", want, 2*crashCommitInterval), func() bool {
		ch.alive(t)
		if n := ch.handled(); n != count {
			count, since = n, time.Now()
		}
		return count >= want && time.Since(since) >= 2*crashCommitInterval+200*time.Millisecond
	})
	ch.kill(t)

	out := consumeAfterCrash(t, c, group, topic, produced, ch)
	co, ok := out.atKill[stuck.p]
	require.True(t, ok, "partition %d was never committed", stuck.p)
	assert.Equal(t, stuck.o, co.offset, "partition %d's committed offset is its stuck record", stuck.p)
	assert.Equal(t, int(out.end[stuck.p])-1-behind, co.marked(out.end[stuck.p]),
		"the map marks every record of partition %d but the stuck key's", stuck.p)
	for p := range int32(partitions) {
		if p != stuck.p {
			assert.Equal(t, out.end[p], out.atKill[p].offset, "partition %d: committed to its end", p)
		}
	}
	assert.Equal(t, 1+behind, out.unfinished, "unfinished at the kill: the stuck record and the records behind its key")
	recent := 0 // finished by the child within a commit interval (and the margin) of the kill
	for _, h := range out.child {
		if ch.killedAt.Sub(h.at) <= crashCommitInterval+margin {
			recent++
		}
	}
	redo := len(out.rest)
	assert.Equal(t, out.unfinished+len(out.redone), redo, "redo = unfinished at the kill + finished past the last commit")
	assert.LessOrEqual(t, redo, out.unfinished+recent, "redo bound: unfinished at the kill + finished within %v of it", crashCommitInterval+margin)
	assert.Equal(t, redo, out.newMember, "the new member handled the redo, once each")
	t.Logf("stuck message, crash on the %s: partition %d's record %d (key %s) never finished, %d records of its key queued behind it; the child finished %d of %d records; partition %d committed at %d with a map of %d offsets (%d bytes)",
		brokerKind(c), stuck.p, stuck.o, stuckKey, behind, len(out.child), messages, stuck.p, co.offset, co.marked(out.end[stuck.p]), co.metadata)
	t.Logf("  redone by the new member: %d = the stuck record + %d behind its key + %d finished past the last commit (bound: %d unfinished at the kill + %d finished within %v of it); skipped %d (FinishedBefore); without the map: %d (everything at or past the committed offsets)",
		redo, behind, len(out.redone), out.unfinished, recent, crashCommitInterval+margin, out.skipped, out.noMap)
}
