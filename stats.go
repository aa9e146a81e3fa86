package parallafka

import "github.com/parallafka/parallafka/pipeline"

// Stats is a snapshot of a Parallafka's progress.
type Stats struct {
	Polled int64 // messages polled
	// Finished counts messages done with for good, whatever became of
	// them: handled successfully, dropped by a stage (Dropped: a
	// dead-lettered message included), or failed and skipped by the error
	// policy (Skipped). Finished - Dropped - Skipped were handled
	// successfully.
	Finished int64
	// Failed counts messages whose failure (error or panic) reached the
	// error policy: skipped, or stopping the pipeline. A failed attempt that
	// a stage retries counts in Retried instead (stages.Retry), and one
	// that a dead-letter stage takes over is not a failure here.
	Failed   int64
	Skipped  int64 // failed messages skipped by the error policy
	Dropped  int64 // messages a stage dropped
	Retried  int64 // attempts handed to the handler pool again at a stage's request (a retry cut short by a revoke or a stop is abandoned, not counted)
	InFlight int64 // polled and not yet finished: bounded by WithMaxInFlight; after a hard stop, those left unfinished (Kafka delivers them again)
	// InFlightBytes is the size of the in-flight messages (key, value and
	// headers as received): bounded by WithMaxInFlightBytes.
	InFlightBytes int64
	Queued        int64 // waiting behind an earlier message with the same key
	// FinishedBefore counts polled messages that were not handled because
	// the committed offset's offset map recorded them as finished by an
	// earlier owner of their partition (they count as finished at once).
	FinishedBefore int64
	// MapTruncated counts commits whose offset map did not fit in the
	// metadata limit (WithOffsetMapMaxBytes) and was cut to a prefix: after
	// a crash, the next owner redoes the finished offsets left out.
	MapTruncated int64
	Pauses       int64 // times back-pressure paused the partitions
	Commits      int64 // successful commit requests
	CommitErrors int64 // failed commit requests (retried, unless the partitions are no longer owned)
	// Committed is the last offset committed (the next to read) for each
	// partition this Parallafka committed, including partitions since
	// revoked.
	Committed map[pipeline.TopicPartition]int64
	// Paused lists the partitions paused now: by back-pressure, by Pause,
	// or by poll steering (surplus ready work, or the window's last quarter
	// kept for the partition with the longest key chains).
	Paused []pipeline.TopicPartition
	// UserPaused reports that Pause is in force (Resume ends it).
	UserPaused bool
	// Assigned is the number of partitions assigned now.
	Assigned int64
	// Stalled is the number of partitions stalled now (WithStallTimeout);
	// StalledPartitions says what blocks each.
	Stalled           int64
	StalledPartitions []pipeline.Stall
	// Stalls counts the times a partition was found stalled.
	Stalls int64
	// Throttled counts the times a ready message was held back by a rate
	// limit (WithRateLimit): it waited for a token, holding no handler.
	Throttled int64
	// Batches counts batch handler calls (ConsumeBatch), and MeanBatchSize
	// is the mean number of messages they were given (0 before the first).
	Batches       int64
	MeanBatchSize float64
	// ConcurrencyLimit is the number of handlers allowed to run now: the
	// fixed concurrency (WithMaxConcurrency), or the adaptive limit
	// (WithAdaptiveConcurrency); 0 before Consume starts.
	ConcurrencyLimit int
}

// Stats returns a snapshot of the counters. It is safe to call at any time,
// from any goroutine.
func (p *Parallafka[K, V]) Stats() Stats {
	s := &p.stats
	handled, dropped, skipped := s.Handled.Load(), s.Dropped.Load(), s.Skipped.Load()
	batches, batched := s.Batches.Load(), s.Batched.Load()
	mean := 0.0
	if batches > 0 {
		mean = float64(batched) / float64(batches)
	}
	return Stats{
		Batches: batches, MeanBatchSize: mean,
		Polled: s.Polled.Load(), Finished: handled + dropped + skipped,
		Failed: s.Failed.Load(), Skipped: skipped, Dropped: dropped, Retried: s.Retried.Load(),
		InFlight: s.InFlight.Load(), InFlightBytes: s.InFlightBytes.Load(), Queued: s.Queued.Load(),
		FinishedBefore: s.FinishedBefore.Load(), MapTruncated: s.MapTruncated.Load(),
		Pauses: s.Pauses.Load(), Commits: s.Commits.Load(), CommitErrors: s.CommitErrors.Load(),
		Committed: s.Committed(), Paused: s.Paused(), UserPaused: s.UserPaused.Load(),
		Assigned: s.Assigned.Load(), Stalled: s.Stalled.Load(), StalledPartitions: s.StalledPartitions(),
		Stalls:           s.Stalls.Load(),
		Throttled:        s.Throttled.Load(),
		ConcurrencyLimit: int(s.ConcurrencyLimit.Load()),
	}
}
