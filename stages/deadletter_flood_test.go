package stages_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka/stages"
)

// More than MaxInARow messages in a row failed for good stop the stage
// before the next is written, with a *DeadLetterFloodError naming it.
func TestDeadLetterFloodInARow(t *testing.T) {
	dlq := &memDLQ{}
	stage := must(stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{Writer: dlq, Topic: "dlq",
		Flood: &stages.FloodGuard{MaxInARow: 3}}))
	in := make(chan *M, 10)
	out := make(chan *M, 10)
	in <- failedMsg(0, 1, errTransient)
	in <- failedMsg(1, 1, nil) // a success resets the count
	for i := 2; i < 6; i++ {
		in <- failedMsg(int64(i), 1, errTransient)
	}
	close(in)
	err := stage(context.Background(), in, out)
	require.ErrorIs(t, err, stages.ErrDeadLetterFlood)
	var fe *stages.DeadLetterFloodError
	require.ErrorAs(t, err, &fe)
	assert.EqualValues(t, 5, fe.Message.Offset, "the 4th in a row")
	assert.Equal(t, "dlq", fe.Topic)
	assert.ErrorContains(t, err, "4 messages in a row")
	assert.Len(t, dlq.written(), 4, "offsets 0, 2, 3, 4; not 5")
	assert.Len(t, out, 5)
}

// More than MaxShare of the last Window messages failed for good stop the
// stage; fewer pass, and the share is not checked before the window filled.
func TestDeadLetterFloodShare(t *testing.T) {
	dlq := &memDLQ{}
	stage := must(stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{Writer: dlq, Topic: "dlq",
		Flood: &stages.FloodGuard{MaxShare: 0.1, Window: 20}}))
	in := make(chan *M, 100)
	out := make(chan *M, 100)
	// 2 of every 20 fail: exactly 10 %, allowed.
	for i := range 60 {
		var err error
		if i%10 == 0 {
			err = errTransient
		}
		in <- failedMsg(int64(i), 1, err)
	}
	in <- failedMsg(60, 1, errTransient) // 50 and 60 of 41..60: 10 %
	in <- failedMsg(61, 1, errTransient) // 3 of the last 20
	close(in)
	err := stage(context.Background(), in, out)
	require.ErrorIs(t, err, stages.ErrDeadLetterFlood)
	var fe *stages.DeadLetterFloodError
	require.ErrorAs(t, err, &fe)
	assert.EqualValues(t, 61, fe.Message.Offset)
	assert.ErrorContains(t, err, "3 of the last 20")
	assert.Len(t, dlq.written(), 7)
}

func TestDeadLetterFloodGuardInvalid(t *testing.T) {
	for _, g := range []stages.FloodGuard{{}, {MaxShare: 2}, {MaxShare: 0.1, Window: -1}, {MaxInARow: -1}} {
		_, err := stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{Writer: &memDLQ{}, Flood: &g})
		require.Error(t, err, "%+v", g)
	}
}
