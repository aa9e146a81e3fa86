package stages_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka/stages"
)

// More than MaxInARow messages in a row failed for good stop the stage
// before the next is written, with an error naming it.
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
	assert.ErrorContains(t, err, "@5 to dlq", "the 4th in a row")
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
	assert.ErrorContains(t, err, "@61 ")
	assert.ErrorContains(t, err, "3 of the last 20")
	assert.Len(t, dlq.written(), 7)
}

func TestDeadLetterFloodGuardInvalid(t *testing.T) {
	for _, g := range []*stages.FloodGuard{{}, {MaxShare: 2}, {MaxShare: 0.1, Window: -1}, {MaxInARow: -1}} {
		_, err := stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{Writer: &memDLQ{}, Flood: g})
		require.Error(t, err, "%v %v %v", g.MaxShare, g.Window, g.MaxInARow)
	}
}

// With Pause the guard holds instead of stopping: the message that tripped
// it is neither written nor handed on, nothing after it is taken, and
// Flooding says why. Resume writes it and the messages that failed during
// the hold (waiting for the stage), uncounted, then counts afresh.
func TestDeadLetterFloodPauseHoldsUntilResume(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dlq := &memDLQ{}
		guard := &stages.FloodGuard{MaxInARow: 2, Pause: true}
		stage := must(stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{Writer: dlq, Topic: "dlq", Flood: guard}))
		in := make(chan *M, 10)
		out := make(chan *M, 10)
		for i := range 6 {
			in <- failedMsg(int64(i), 1, errTransient)
		}
		ended := make(chan error, 1)
		go func() { ended <- stage(t.Context(), in, out) }()
		synctest.Wait()
		err := guard.Flooding(t.Context())
		require.ErrorIs(t, err, stages.ErrDeadLetterFlood)
		assert.ErrorContains(t, err, "holding before dead-lettering")
		assert.ErrorContains(t, err, "@2 to dlq")
		assert.Len(t, dlq.written(), 2, "offsets 0 and 1")
		assert.Len(t, out, 2)
		assert.Len(t, in, 3, "nothing taken past the held message")
		time.Sleep(time.Hour) // a hold lasts until Resume, however long
		synctest.Wait()
		assert.Len(t, in, 3)

		guard.Resume()
		synctest.Wait()
		assert.NoError(t, guard.Flooding(t.Context()), "what failed during the hold does not trip it again")
		assert.Len(t, dlq.written(), 6)
		// Counts start afresh: 6 and 7 are two in a row, 8 trips it.
		for i := 6; i < 9; i++ {
			in <- failedMsg(int64(i), 1, errTransient)
			synctest.Wait()
		}
		require.ErrorContains(t, guard.Flooding(t.Context()), "@8 ")
		assert.Len(t, dlq.written(), 8)
		guard.Resume()
		close(in)
		require.NoError(t, <-ended)
		assert.Len(t, dlq.written(), 9)
		assert.Len(t, out, 9)
	})
}

// A shutdown ends a hold: the stage returns, the held message unwritten and
// not handed on (so uncommitted), and Flooding is nil again.
func TestDeadLetterFloodPauseEndsOnShutdown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dlq := &memDLQ{}
		guard := &stages.FloodGuard{MaxInARow: 1, Pause: true}
		stage := must(stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{Writer: dlq, Topic: "dlq", Flood: guard}))
		in := make(chan *M, 10)
		out := make(chan *M, 10)
		in <- failedMsg(0, 1, errTransient)
		in <- failedMsg(1, 1, errTransient)
		ctx, cancel := context.WithCancel(t.Context())
		ended := make(chan error, 1)
		go func() { ended <- stage(ctx, in, out) }()
		synctest.Wait()
		require.Error(t, guard.Flooding(ctx))
		cancel()
		require.NoError(t, <-ended)
		assert.NoError(t, guard.Flooding(t.Context()))
		assert.Len(t, dlq.written(), 1)
		assert.Len(t, out, 1)
		guard.Resume() // no hold: nothing happens
	})
}
