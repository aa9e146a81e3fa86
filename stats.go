package parallafka

// Stats is a snapshot of a Parallafka's progress.
type Stats struct {
	Polled       int64 // messages polled
	Handled      int64 // finished successfully (including dropped and skipped)
	Failed       int64 // handling attempts that failed (error or panic)
	Skipped      int64 // failed messages skipped by the error policy
	Dropped      int64 // messages a stage dropped
	Retried      int64 // attempts handed to the handler pool again at a stage's request (a retry cut short by a revoke or a stop is abandoned, not counted)
	InFlight     int64 // polled and not yet finished: bounded by WithMaxInFlight; after a hard stop, those left unfinished (Kafka delivers them again)
	Queued       int64 // waiting behind an earlier message with the same key
	Pauses       int64 // times back-pressure paused the partitions
	Commits      int64 // successful commit requests
	CommitErrors int64 // failed commit requests (retried, unless the partitions are no longer owned)
	// Committed is the last offset committed (the next to read) for each
	// partition this Parallafka committed, including partitions since
	// revoked.
	Committed map[TopicPartition]int64
	// Paused lists the partitions paused by back-pressure.
	Paused []TopicPartition
}

// Stats returns a snapshot of the counters. It is safe to call at any time,
// from any goroutine.
func (p *Parallafka[K, V]) Stats() Stats {
	c := p.counters
	s := Stats{
		Polled: p.tracker.Polled(), Handled: c.Handled.Load() + c.Dropped.Load() + c.Skipped.Load(),
		Failed: c.Failed.Load(), Skipped: c.Skipped.Load(), Dropped: c.Dropped.Load(), Retried: c.Retried.Load(),
		InFlight: p.tracker.InFlight(), Queued: c.Queued.Load(),
		Pauses: c.Pauses.Load(), Commits: c.Commits.Load(), CommitErrors: c.CommitErrors.Load(),
		Committed: p.tracker.Committed(),
		Paused:    p.tracker.Paused(),
	}
	return s
}
