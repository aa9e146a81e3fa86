package stages

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/parallafka/parallafka/pipeline"
)

func TestOldestFirstPopsInPollOrder(t *testing.T) {
	tr := pipeline.NewTracker()
	tp := pipeline.TopicPartition{Topic: "t", Partition: 0}
	tr.Assign([]pipeline.TopicPartition{tp})
	msgs := make([]*pipeline.Message[string, string], 200)
	for i := range msgs {
		msgs[i] = &pipeline.Message[string, string]{Topic: "t", Offset: int64(i)}
		pipeline.Track(tr.Claim(tp), msgs[i]) // Sequence = i+1
	}
	var o oldestFirst[string, string]
	var popped []int64
	for _, i := range rand.Perm(len(msgs)) {
		o.Push(msgs[i])
		if i%5 == 0 { // pops interleaved with pushes
			popped = append(popped, o.PopFront().Offset)
		}
	}
	o.Filter(func(m *pipeline.Message[string, string]) bool { return m.Offset%3 != 0 })
	var rest []int64
	for o.Len() > 0 {
		assert.Same(t, o.Front(), o.Front())
		rest = append(rest, o.PopFront().Offset)
	}
	assert.True(t, slices.IsSorted(rest), "oldest first: %v", rest)
	for _, off := range rest {
		assert.NotZero(t, off%3, "filtered out")
	}
	assert.Len(t, rest, 200-len(popped)-countDivisibleBy3Unpopped(popped))
}

func countDivisibleBy3Unpopped(popped []int64) int {
	n := 0
	for i := int64(0); i < 200; i++ {
		if i%3 == 0 && !slices.Contains(popped, i) {
			n++
		}
	}
	return n
}
