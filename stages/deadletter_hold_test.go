package stages_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/stages"
)

// With HoldKey a dead-lettered message asks for its key held; a message
// that followed a held key is written with the header naming the offset
// that held it, and is no sign of a flood.
func TestDeadLetterHoldKey(t *testing.T) {
	for _, hold := range []bool{true, false} {
		dlq := &memDLQ{}
		stage := must(stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{Writer: dlq, Topic: "dlq",
			Concurrency: 1, HoldKey: hold, Flood: &stages.FloodGuard{MaxInARow: 1}}))
		in := make(chan *M, 10)
		out := make(chan *M, 10)
		poison := failedMsg(3, 1, errTransient)
		in <- poison
		var followers []*M
		for i := int64(4); i < 8; i++ {
			m := failedMsg(i, 0, &pipeline.KeyHeldError{Offset: 3})
			followers = append(followers, m)
			in <- m
		}
		ok := failedMsg(8, 1, nil)
		in <- ok
		close(in)
		require.NoError(t, stage(context.Background(), in, out), "followers of a held key do not trip the guard")
		require.Len(t, out, 6)
		assert.True(t, poison.Dropped())
		assert.Equal(t, hold, poison.KeyHoldRequested())
		assert.False(t, ok.KeyHoldRequested())
		letters := dlq.written()
		require.Len(t, letters, 5)
		assert.Equal(t, "<missing>", header(letters[0], stages.HeaderHeldBehind))
		for i, dl := range letters[1:] {
			assert.True(t, followers[i].Dropped())
			assert.EqualValues(t, 4+i, dl.Offset)
			assert.Equal(t, "3", header(dl, stages.HeaderHeldBehind))
			assert.Equal(t, "0", header(dl, stages.HeaderAttempts))
			assert.Contains(t, header(dl, stages.HeaderError), "held behind offset 3")
		}
	}
}

// A replayed dead letter's old held-behind header is not carried over.
func TestDeadLetterHeldBehindHeaderReplaced(t *testing.T) {
	dlq := &memDLQ{}
	stage := must(stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{Writer: dlq, Topic: "dlq"}))
	in := make(chan *M, 1)
	out := make(chan *M, 1)
	m := failedMsg(9, 1, errTransient)
	m.Headers = []pipeline.Header{{Key: stages.HeaderHeldBehind, Value: []byte("2")}}
	in <- m
	close(in)
	require.NoError(t, stage(context.Background(), in, out))
	require.Len(t, dlq.written(), 1)
	assert.Equal(t, "<missing>", header(dlq.written()[0], stages.HeaderHeldBehind))
}
