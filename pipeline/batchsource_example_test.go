package pipeline_test

import (
	"fmt"
	"time"

	"github.com/parallafka/parallafka/pipeline"
)

// queue is the buffering part of a hand-written source: the client fills
// msgs, Poll hands them over one at a time, PollBatch a cycle at once. (A
// whole source also implements Subscribe, Commit, Pause, Resume and Close.)
type queue struct {
	msgs chan *pipeline.Message[string, string]
}

// Poll is the per-message contract every source implements.
func (q *queue) Poll(timeout time.Duration) (*pipeline.Message[string, string], error) {
	select {
	case m := <-q.msgs:
		return m, nil
	case <-time.After(timeout):
		return nil, nil
	}
}

// PollBatch waits up to timeout for the first message only, then appends
// what is ready, up to max messages and maxBytes (if > 0), to dst (which
// has room for it: no allocation).
func (q *queue) PollBatch(timeout time.Duration, dst []*pipeline.Message[string, string], max int, maxBytes int64) ([]*pipeline.Message[string, string], error) {
	m, err := q.Poll(timeout)
	if m == nil || err != nil {
		return dst, err
	}
	dst = append(dst, m)
	bytes := int64(len(m.RawKey) + len(m.RawValue))
	for n := 1; n < max && (maxBytes <= 0 || bytes < maxBytes); n++ {
		select {
		case m := <-q.msgs:
			dst = append(dst, m)
			bytes += int64(len(m.RawKey) + len(m.RawValue))
		default:
			return dst, nil
		}
	}
	return dst, nil
}

var _ pipeline.BatchSource[string, string] = (*queue)(nil)

// A source may add PollBatch to its Poll: the pipeline then takes a poll
// cycle's messages in one call.
func ExampleBatchSource() {
	q := &queue{msgs: make(chan *pipeline.Message[string, string], 8)}
	for i := range 3 {
		q.msgs <- &pipeline.Message[string, string]{Topic: "orders", Offset: int64(i)}
	}
	batch := make([]*pipeline.Message[string, string], 0, 256)
	batch, _ = q.PollBatch(time.Second, batch, 256, 0)
	fmt.Println(batch)
	batch, _ = q.PollBatch(10*time.Millisecond, batch[:0], 256, 0)
	fmt.Println(len(batch))
	// Output:
	// [orders[0]@0 orders[0]@1 orders[0]@2]
	// 0
}
