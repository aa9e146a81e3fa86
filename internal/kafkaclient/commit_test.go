package kafkaclient

import (
	"errors"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka/pipeline"
)

// Sift keeps the highest offset of each partition, drops the partitions
// not assigned as NotOwned, counts offsets not past the last commit as
// Committed, and sends the rest in partition order.
func TestSift(t *testing.T) {
	tp := func(topic string, p int32) pipeline.TopicPartition {
		return pipeline.TopicPartition{Topic: topic, Partition: p}
	}
	off := func(tp pipeline.TopicPartition, o int64, md string) pipeline.Offset {
		return pipeline.Offset{TopicPartition: tp, Offset: o, Metadata: md}
	}
	assigned := map[pipeline.TopicPartition]struct{}{tp("a", 0): {}, tp("a", 1): {}, tp("b", 0): {}, tp("b", 1): {}}
	committed := map[pipeline.TopicPartition]pipeline.Offset{
		tp("a", 1): off(tp("a", 1), 5, "m"),
		tp("b", 1): off(tp("b", 1), 5, "m"),
	}
	res, send := Sift([]pipeline.Offset{
		off(tp("b", 0), 3, "x"), off(tp("b", 0), 7, "first"), off(tp("b", 0), 7, "last"), off(tp("b", 0), 4, ""),
		off(tp("a", 1), 5, "m"), // the same as committed
		off(tp("b", 1), 5, "other"),
		off(tp("c", 0), 1, ""), // not assigned
		off(tp("a", 0), 2, ""),
	}, assigned, committed)
	assert.Equal(t, []pipeline.Offset{off(tp("a", 0), 2, ""), off(tp("b", 0), 7, "last"), off(tp("b", 1), 5, "other")}, send)
	assert.Equal(t, []pipeline.Offset{off(tp("a", 1), 5, "m")}, res.Committed)
	assert.Equal(t, []pipeline.Offset{off(tp("c", 0), 1, "")}, res.NotOwned)
	assert.ErrorIs(t, res.Causes[tp("c", 0)], pipeline.ErrNotOwned)
	assert.Empty(t, res.Failed)

	// The sent offsets' outcomes complete the result.
	notOwned := func(err error) bool { return err.Error() == "fenced" }
	tooLarge := func(err error) bool { return err.Error() == "too large" }
	sent := &CommitError{Causes: make(map[pipeline.TopicPartition]error)}
	Classify(sent, send[0], nil, notOwned, tooLarge)
	Classify(sent, send[1], errors.New("fenced"), notOwned, tooLarge)
	Classify(sent, send[2], errors.New("too large"), notOwned, tooLarge)
	Merge(res, sent)
	assert.Len(t, res.Committed, 2)
	assert.Len(t, res.NotOwned, 2)
	assert.Equal(t, []pipeline.Offset{send[2]}, res.Failed)
	assert.ErrorIs(t, res.Causes[send[1].TopicPartition], pipeline.ErrNotOwned)
	assert.ErrorIs(t, res.Causes[send[2].TopicPartition], pipeline.ErrMetadataTooLarge)
	assert.NotErrorIs(t, res, pipeline.ErrNotOwned, "Failed is worth retrying")
	assert.ErrorIs(t, res, pipeline.ErrMetadataTooLarge, "Unwrap gives the causes of Failed")
	assert.ErrorContains(t, res, "kafka: commit failed for 3 of 5 partitions")

	NoteCommitted(res.Committed, assigned, committed)
	assert.Equal(t, send[0], committed[tp("a", 0)])
	assert.NotContains(t, committed, tp("c", 0), "not assigned")
}

// A CommitError with nothing Failed matches pipeline.ErrNotOwned, and
// CommitResult returns nil only when every offset was committed.
func TestCommitErrorNotOwned(t *testing.T) {
	tp := pipeline.TopicPartition{Topic: "t", Partition: 0}
	cause := errors.New("fenced")
	res := &CommitError{NotOwned: []pipeline.Offset{{TopicPartition: tp, Offset: 1}},
		Causes: map[pipeline.TopicPartition]error{tp: cause}}
	require.ErrorIs(t, res, pipeline.ErrNotOwned)
	require.ErrorIs(t, res, cause)
	assert.Equal(t, "kafka: commit failed for 1 of 1 partitions (not owned, not retriable); t[0]@1: fenced", res.Error())
	quiet := slog.New(slog.DiscardHandler)
	assert.Same(t, res, CommitResult(res, quiet, "kafka"))
	assert.NoError(t, CommitResult(&CommitError{Committed: res.NotOwned}, quiet, "kafka"))
}
