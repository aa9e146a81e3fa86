// Package kafka adapts confluent-kafka-go's consumer (librdkafka) to the
// pipeline: a Source polls records in order on one goroutine, converts them
// to pipeline messages, forwards rebalances to the pipeline synchronously,
// and commits the offsets the pipeline hands it.
//
// Build the consumer with NewConsumer, which refuses the settings that would
// break at-least-once delivery (auto-commit) and fills in the safe ones;
// then wrap it with NewSource and hand the source to parallafka.New:
//
//	consumer, err := kafka.NewConsumer(&ckafka.ConfigMap{
//		"bootstrap.servers":             "localhost:9092",
//		"group.id":                      "prices",
//		"auto.offset.reset":             "earliest",
//		"partition.assignment.strategy": "cooperative-sticky",
//	})
//	if err != nil {
//		return err
//	}
//	src, err := kafka.NewSource(consumer, []string{"prices"}, kafka.String, kafka.JSON[Price]())
//	if err != nil {
//		consumer.Close()
//		return err
//	}
//	p, err := parallafka.New(src, parallafka.WithMaxConcurrency(7), parallafka.WithLogger(logger))
//	if err != nil {
//		src.Close() // closes the consumer too
//		return err
//	}
//	err = p.Consume(ctx, func(ctx context.Context, m *parallafka.Message[string, Price]) error {
//		return store(ctx, m.Key, m.Value)
//	}) // Consume closes the source when it returns
//
// The logger given to parallafka.New reaches the Source and librdkafka's
// logs (through [Source.InheritLogger]), unless WithLogger gave NewSource or
// NewConsumer one of their own. A nil logger discards, here as there.
//
// # Deserializers
//
// A [Deserializer] turns a record's key or value into a Go value; it gets
// the record's topic and headers too. Bytes, String and JSON cover plain
// records; package kafka/srserde adapts confluent-kafka-go's schema-registry
// deserializers (Avro, JSON Schema, Protobuf). A record that fails to
// deserialize is a poison pill: it reaches the pipeline's error policy as a
// *DeserializeError, never the handler.
//
// # Rebalancing
//
// Source.Subscribe installs a rebalance callback; confluent-kafka-go runs it
// inside Poll, and inside Close when the member leaves the group. For eager
// protocols (range, roundrobin) the callback calls Assign / Unassign, for
// cooperative-sticky (and the KIP-848 consumer protocol)
// IncrementalAssign / IncrementalUnassign, as librdkafka requires. On a
// revoke the listener's PartitionsRevoked runs before the partitions are
// unassigned, so the final offsets it commits are still this member's to
// commit; if librdkafka reports the assignment lost, PartitionsLost runs
// instead and commits of those partitions are refused.
//
// # Commits
//
// Source.Commit sends the offsets as given (the next offset to read) with a
// synchronous CommitOffsets. An error is a *CommitError that tells offsets
// worth retrying (Failed) from those of partitions this member does not own
// (NotOwned, pipeline.ErrNotOwned), which must be dropped.
package kafka
