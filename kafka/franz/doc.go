// Package franz adapts franz-go's kgo client (pure Go, no cgo) to the
// pipeline, with the guarantees of package kafka's confluent-kafka-go
// source: a Source polls records in order on one goroutine, converts them to
// pipeline messages, hands rebalances to the pipeline synchronously, and
// commits the offsets the pipeline hands it, with the offset map in the
// commit metadata. It does not import confluent-kafka-go, so a program built
// on it builds with CGO_ENABLED=0.
//
// Build the client with NewClient, which refuses the options that would
// break at-least-once delivery (auto-commit, rebalance callbacks of the
// caller's own) and adds those the Source needs; then wrap it with
// NewSource and hand the source to parallafka.New:
//
//	client, err := franz.NewClient([]kgo.Opt{
//		kgo.SeedBrokers("localhost:9092"),
//		kgo.ConsumerGroup("prices"),
//		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
//		// kgo.Balancers(kgo.RangeBalancer()) for eager rebalancing;
//		// kgo.ServerSideBalancer() for the KIP-848 consumer protocol.
//	})
//	if err != nil {
//		return err
//	}
//	src, err := franz.NewSource(client, []string{"prices"}, franz.String, franz.JSON[Price]())
//	if err != nil {
//		client.Close()
//		return err
//	}
//	p, err := parallafka.New(src, parallafka.WithMaxConcurrency(7))
//	if err != nil {
//		src.Close() // closes the client too
//		return err
//	}
//	err = p.Consume(ctx, handle) // Consume closes the source when it returns
//
// # Rebalancing
//
// kgo runs its rebalance callbacks on its own goroutine; the Source's hand
// each one to Poll (waking a poll in progress) and wait until the pipeline
// acted on it: kgo gives revoked partitions up (eager: before it rejoins;
// cooperative-sticky and KIP-848: before it tells the group) only once the
// listener's PartitionsRevoked drained them and committed their offsets.
// Lost partitions (a fenced member, a session that expired) go to
// PartitionsLost: their commits are refused from then on, and the commit in
// flight is cancelled and waited for before kgo may rejoin. Records polled
// but not returned yet are dropped with the partitions they belong to.
// Partitions kgo reports revoked after it rejoined under a new member ID (a
// classic session that expired) are handed over as lost too: the classic
// protocol checks a commit's generation, not who owns the partition.
//
// # Connectivity
//
// The Source learns from kgo's broker hooks whether any broker answers
// (Unreachable). While none does and partitions are assigned, the
// membership is in doubt (MembershipInDoubt: the pipeline starts no
// handler) until the coordinator accepts a commit of this member again.
// Poll fails fast at startup: ErrUnreachable after the startup timeout,
// ErrUnknownTopic when a topic does not exist.
//
// # Commits
//
// Source.Commit sends the offsets with kgo's CommitOffsetsSync, as the
// group member (member ID and generation, or KIP-848 member epoch, so that a
// fenced member's commit is refused), with a kgo.PreCommitFnContext hook
// that writes each offset's own metadata (the pipeline's offset map) in
// place of kgo's member ID. On assignment the Source reads the committed
// offsets with their metadata (OffsetFetch) and hands them to the
// pipeline, so that the new owner skips the offsets already finished.
//
// # Transactions (exactly-once)
//
// NewTransactor makes the pipeline.Transactor of parallafka.WithTransactions
// over a Source: a transactional kgo producer of its own (kgo's
// GroupTransactSession rewinds the consumer as it ends a transaction, which
// cannot be done while the pipeline polls, nor inside a revoke). Each
// Transact is one transaction: the output records written in order and
// flushed, the offsets committed with TxnOffsetCommit as the Source's
// group member (its member ID and generation, or KIP-848 member epoch, so
// that a member the group left behind is refused: KIP-447), EndTxn. A
// failure aborts it; a producer fenced by a newer one with the same
// transactional id is fatal (pipeline.ErrTransactionFatal). Records without
// a Partition are placed by murmur2 of their key, as Java clients place
// them.
//
//	tx, err := franz.NewTransactor(src, []kgo.Opt{
//		kgo.SeedBrokers("localhost:9092"),
//		kgo.TransactionalID("prices-" + hostname), // one per member
//	})
//	if err != nil {
//		src.Close()
//		return err
//	}
//	defer tx.Close() // after Consume returned
//	p, err := parallafka.New(src, parallafka.WithTransactions(tx))
//
// # Shared with package kafka
//
// The sentinel errors (ErrUnreachable, ErrUnknownTopic, ErrClosed,
// ErrCloseTimeout, ErrUnsafeConfig, ErrDeadLetterTopicMissing) are package
// kafka's own values, and Deserializer, DeserializeError and CommitError
// its own types (aliases): errors.Is and errors.As hold whichever client
// returned the error, and one deserializer serves both clients. A refused
// commit matches pipeline.ErrNotOwned.
//
// DeadLetterWriter is stages.DeadLetterQueue's writer over a kgo producer;
// the stage checks with it, as it starts, that the dead-letter topic exists
// (ErrDeadLetterTopicMissing).
//
// # Closing
//
// Close is bounded by WithCloseTimeout whatever the broker does, and once it
// returned without ErrCloseTimeout no goroutine of the Source or of
// franz-go runs.
package franz
