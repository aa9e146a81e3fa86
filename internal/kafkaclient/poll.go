package kafkaclient

import (
	"time"

	"github.com/parallafka/parallafka/pipeline"
)

// PollOne is a source's Poll made of its PollBatch: a batch of at most one
// message, without allocating.
func PollOne[K, V any](pollBatch func(time.Duration, []*pipeline.Message[K, V], int, int64) ([]*pipeline.Message[K, V], error),
	timeout time.Duration) (*pipeline.Message[K, V], error) {
	var one [1]*pipeline.Message[K, V]
	got, err := pollBatch(timeout, one[:0], 1, 0)
	if err != nil || len(got) == 0 {
		return nil, err
	}
	return got[0], nil
}
