package memsource_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka/internal/memctl"
	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/pipeline/memsource"
)

// offsetsListener records the committed offsets each PartitionsAssigned
// brings, and runs onRevoke inside PartitionsRevoked.
type offsetsListener struct {
	mu       sync.Mutex
	assigned [][]pipeline.Offset
	onRevoke func([]pipeline.TopicPartition)
}

func (l *offsetsListener) PartitionsAssigned(committed []pipeline.Offset) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.assigned = append(l.assigned, append([]pipeline.Offset(nil), committed...))
}

func (l *offsetsListener) PartitionsRevoked(tps []pipeline.TopicPartition) {
	l.mu.Lock()
	hook := l.onRevoke
	l.mu.Unlock()
	if hook != nil {
		hook(tps)
	}
}

func (l *offsetsListener) PartitionsLost([]pipeline.TopicPartition) {}

func (l *offsetsListener) assignments() [][]pipeline.Offset {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([][]pipeline.Offset(nil), l.assigned...)
}

// waitAssignments waits until l received n PartitionsAssigned calls, and
// returns the n-th.
func (l *offsetsListener) waitAssignments(t *testing.T, n int) []pipeline.Offset {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if a := l.assignments(); len(a) >= n {
			require.Len(t, a, n, "more PartitionsAssigned than expected")
			return a[n-1]
		}
		require.True(t, time.Now().Before(deadline), "no PartitionsAssigned number %d", n)
		time.Sleep(time.Millisecond)
	}
}

// TestCommitMetadataRoundTrip: the metadata of a partition's latest commit
// (4096 bytes, none, one committed over another at the same offset, one
// committed inside PartitionsRevoked) comes back with its offset in the
// PartitionsAssigned of the next assignment: after Revoke and Assign, and
// after Close and a new Subscribe. A partition never committed comes with
// Offset -1 and no metadata.
func TestCommitMetadataRoundTrip(t *testing.T) {
	src := memsource.New[string, string]()
	src.AddTopic("t", 3)
	for p := range int32(3) {
		for range 5 {
			src.Produce("t", p, "k", "v")
		}
	}
	p0, p1, p2 := tp("t", 0), tp("t", 1), tp("t", 2)
	l := &offsetsListener{}
	require.NoError(t, src.Subscribe(l))
	loop := startPolling(t, src)
	assert.Equal(t, []pipeline.Offset{
		{TopicPartition: p0, Offset: -1}, {TopicPartition: p1, Offset: -1}, {TopicPartition: p2, Offset: -1},
	}, l.waitAssignments(t, 1), "nothing committed yet")
	for p := range int32(3) {
		assert.Equal(t, int64(-1), src.Committed(tp("t", p)))
		assert.Equal(t, "", memctl.Metadata(src, tp("t", p)))
	}

	ctx := context.Background()
	big := strings.Repeat("0123456789abcdef", 256)
	require.Len(t, big, 4096)
	require.NoError(t, src.Commit(ctx, []pipeline.Offset{
		{TopicPartition: p0, Offset: 2, Metadata: big},
		{TopicPartition: p1, Offset: 1, Metadata: "first"},
	}))
	// The same offset again, without metadata: the latest commit's counts.
	require.NoError(t, src.Commit(ctx, []pipeline.Offset{{TopicPartition: p1, Offset: 1}}))
	assert.Equal(t, int64(2), src.Committed(p0))
	assert.Equal(t, big, memctl.Metadata(src, p0))
	assert.Equal(t, int64(1), src.Committed(p1))
	assert.Equal(t, "", memctl.Metadata(src, p1))
	assert.Equal(t, []pipeline.Offset{
		{TopicPartition: p0, Offset: 2, Metadata: big},
		{TopicPartition: p1, Offset: 1, Metadata: "first"},
		{TopicPartition: p1, Offset: 1},
	}, memctl.Commits(src), "Commits records the metadata")

	// Revoke and assign again: each partition comes with its latest commit.
	src.Revoke(p0, p1, p2)
	src.Assign(p0, p1, p2)
	want := []pipeline.Offset{
		{TopicPartition: p0, Offset: 2, Metadata: big},
		{TopicPartition: p1, Offset: 1},
		{TopicPartition: p2, Offset: -1},
	}
	assert.Equal(t, want, l.waitAssignments(t, 2))

	// A commit from inside PartitionsRevoked, as the pipeline's final one.
	l.mu.Lock()
	l.onRevoke = func(tps []pipeline.TopicPartition) {
		for _, x := range tps {
			if x == p2 {
				assert.NoError(t, src.Commit(ctx, []pipeline.Offset{{TopicPartition: p2, Offset: 3, Metadata: "final"}}))
			}
		}
	}
	l.mu.Unlock()
	src.Revoke(p2)
	assert.Equal(t, "final", memctl.Metadata(src, p2), "committed by the time Revoke returns")
	src.Assign(p2)
	assert.Equal(t, []pipeline.Offset{{TopicPartition: p2, Offset: 3, Metadata: "final"}}, l.waitAssignments(t, 3))

	// Close (a revoke of everything) and subscribe again: a restart.
	loop.halt()
	l.mu.Lock()
	l.onRevoke = nil
	l.mu.Unlock()
	require.NoError(t, src.Close())
	l2 := &offsetsListener{}
	require.NoError(t, src.Subscribe(l2))
	loop = startPolling(t, src)
	want[2] = pipeline.Offset{TopicPartition: p2, Offset: 3, Metadata: "final"}
	assert.Equal(t, want, l2.waitAssignments(t, 1))
	loop.halt()
	require.NoError(t, src.Close())
}
