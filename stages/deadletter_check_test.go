package stages_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/stages"
)

var errNoTopic = errors.New("no such topic")

// checkingDLQ is a memDLQ whose topics exist only if listed.
type checkingDLQ struct {
	memDLQ
	exists map[string]bool
	checks atomic.Int64
}

func (w *checkingDLQ) CheckDeadLetterTopic(_ context.Context, topic string) error {
	w.checks.Add(1)
	if !w.exists[topic] {
		return fmt.Errorf("%w: %s", errNoTopic, topic)
	}
	return nil
}

func (w *checkingDLQ) WriteDeadLetter(ctx context.Context, dl pipeline.DeadLetter) error {
	return w.memDLQ.WriteDeadLetter(ctx, dl)
}

// A configured dead-letter topic is checked as the stage starts: missing,
// the stage fails at once with an error naming it.
func TestDeadLetterTopicCheckedAtStart(t *testing.T) {
	dlq := &checkingDLQ{exists: map[string]bool{}}
	stage := must(stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{Writer: dlq, Topic: "orders.bad"}))
	in := make(chan *M)
	out := make(chan *M, 1)
	err := stage(context.Background(), in, out)
	require.ErrorIs(t, err, errNoTopic)
	assert.ErrorContains(t, err, "orders.bad")
}

// A default dead-letter topic is checked once before its first write; a
// missing one fails the message at once, without a write.
func TestDeadLetterDefaultTopicChecked(t *testing.T) {
	dlq := &checkingDLQ{exists: map[string]bool{}}
	in, out, stop := runStage(t, context.Background(),
		must(stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{Writer: dlq})))
	m := failedMsg(0, 1, errTransient)
	send(t, in, m)
	require.Same(t, m, recv(t, out))
	var dle *stages.DeadLetterError
	require.ErrorAs(t, m.Err, &dle)
	require.ErrorIs(t, m.Err, errNoTopic)
	assert.False(t, m.Dropped())
	assert.Empty(t, dlq.written())

	dlq.exists[m.Topic+".dlq"] = true
	for i := range 3 {
		m := failedMsg(int64(i+1), 1, errTransient)
		send(t, in, m)
		require.Same(t, m, recv(t, out))
		assert.True(t, m.Dropped())
	}
	require.NoError(t, stop())
	assert.Len(t, dlq.written(), 3)
	assert.EqualValues(t, 2, dlq.checks.Load(), "checked until found, then once")
}
