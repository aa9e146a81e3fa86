package engine

import (
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/parallafka/parallafka/pipeline"
)

// Stats are a pipeline's running totals. Each field has one writer, the
// goroutine named beside it, and is read by Parallafka.Stats from any
// goroutine; the counters outlive a Consume call.
type Stats struct {
	Polled         atomic.Int64 // poller
	Handled        atomic.Int64 // collector: finished successfully
	Failed         atomic.Int64 // collector: failures that reached the error policy
	Skipped        atomic.Int64 // collector: failed messages the error policy skipped
	Dropped        atomic.Int64 // collector: messages a stage dropped
	Retried        atomic.Int64 // coordinator: attempts dispatched again at a stage's request
	InFlight       atomic.Int64 // coordinator: polled, not yet finished or abandoned
	InFlightBytes  atomic.Int64 // coordinator: the bytes of those (key, value and headers as received)
	FinishedBefore atomic.Int64 // coordinator: polled messages skipped as an earlier owner's offset map marked them finished
	MapTruncated   atomic.Int64 // committer: commits whose offset map did not fit the metadata limit and was cut to a prefix
	Queued         atomic.Int64 // coordinator: waiting behind a busy key
	Pauses         atomic.Int64 // poller: times back-pressure paused the partitions
	Commits        atomic.Int64 // committer: successful commit requests
	CommitErrors   atomic.Int64 // committer: failed commit requests
	UserPaused     atomic.Bool  // poller: Parallafka.Pause is in force
	Assigned       atomic.Int64 // poller: partitions assigned now
	Stalled        atomic.Int64 // coordinator: partitions stalled now
	Stalls         atomic.Int64 // coordinator: times a partition was found stalled
	Throttled      atomic.Int64 // coordinator: times a ready message was held back by a rate limit
	Stopping       atomic.Bool  // lifecycle: a shutdown began
	Batches        atomic.Int64 // handler pool (batch mode): batch handler calls
	Batched        atomic.Int64 // handler pool (batch mode): the messages given to those calls
	// ConcurrencyLimit is the number of handlers allowed to run now
	// (coordinator): the fixed concurrency, or the adaptive limit.
	ConcurrencyLimit atomic.Int64

	mu        sync.Mutex
	committed map[pipeline.TopicPartition]int64 // committer
	paused    []pipeline.TopicPartition         // poller
	stalls    []pipeline.Stall                  // coordinator
}

// StalledPartitions returns the partitions stalled now, with what blocks them.
func (s *Stats) StalledPartitions() []pipeline.Stall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.stalls)
}

func (s *Stats) setStalls(stalls []pipeline.Stall) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stalls = stalls
}

// Committed returns the last offset committed for every partition ever
// committed, including partitions since revoked.
func (s *Stats) Committed() map[pipeline.TopicPartition]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.committed == nil {
		return map[pipeline.TopicPartition]int64{}
	}
	return maps.Clone(s.committed)
}

// Paused returns the partitions that back-pressure paused.
func (s *Stats) Paused() []pipeline.TopicPartition {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.paused)
}

func (s *Stats) setCommitted(offsets []pipeline.Offset) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.committed == nil {
		s.committed = make(map[pipeline.TopicPartition]int64)
	}
	for _, off := range offsets {
		s.committed[off.TopicPartition] = off.Offset
	}
}

func (s *Stats) setPaused(tps []pipeline.TopicPartition) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.paused = slices.Clone(tps)
}
