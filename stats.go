package parallafka

// Stats is a snapshot of a Parallafka's progress.
type Stats struct {
	Polled int64 // messages polled
	// Handled counts messages finished: handled successfully, dropped by a
	// stage, or failed and skipped by the error policy.
	Handled int64
	// Failed counts handling attempts that failed (error or panic): a
	// message retried three times that failed each time counts 3.
	Failed       int64
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
	// Paused lists the partitions paused by back-pressure or by Pause.
	Paused []TopicPartition
	// UserPaused reports that Pause is in force (Resume ends it).
	UserPaused bool
}

// Stats returns a snapshot of the counters. It is safe to call at any time,
// from any goroutine.
func (p *Parallafka[K, V]) Stats() Stats {
	s := &p.stats
	handled, dropped, skipped := s.Handled.Load(), s.Dropped.Load(), s.Skipped.Load()
	return Stats{
		Polled: s.Polled.Load(), Handled: handled + dropped + skipped,
		Failed: s.Failed.Load(), Skipped: skipped, Dropped: dropped, Retried: s.Retried.Load(),
		InFlight: s.InFlight.Load(), Queued: s.Queued.Load(),
		Pauses: s.Pauses.Load(), Commits: s.Commits.Load(), CommitErrors: s.CommitErrors.Load(),
		Committed: s.Committed(), Paused: s.Paused(), UserPaused: s.UserPaused.Load(),
	}
}
