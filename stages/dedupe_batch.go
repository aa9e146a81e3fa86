package stages

import (
	"context"
	"fmt"

	"github.com/parallafka/parallafka/pipeline"
)

// DedupeBatch is Dedupe for batch handlers (ConsumeBatch, with
// WithBatchMiddleware): the messages of a batch whose identity was already
// handled within the store's window are marked with Message.Drop and left
// out of the call (they finish, and count as dropped); the identities of
// the messages the call finished are recorded after it, except those that
// follow a failed message of their partition in the batch (the pipeline
// may handle them again after it, to keep per-key order). A message whose
// identity the store fails to look up fails with the store's error (the
// others are handled). If every message is a duplicate the handler is not
// called.
//
// Within a batch a key's messages come in offset order, and a key is in
// one batch at a time, so duplicates that share a key are recognized
// exactly, as with Dedupe; two messages with the same identity in one
// batch are both handled.
func DedupeBatch[K, V any](cfg DedupeConfig[K, V]) pipeline.BatchMiddleware[K, V] {
	if cfg.ID == nil {
		cfg.ID = headerID[K, V]
	}
	if cfg.Store == nil {
		cfg.Store = newMemoryDedupeStore(defaultDedupeMaxIDs, defaultDedupeTTL)
	}
	return func(next pipeline.BatchHandler[K, V]) pipeline.BatchHandler[K, V] {
		return func(ctx context.Context, batch []*pipeline.Message[K, V]) error {
			var failed pipeline.BatchError[K, V]
			ids := make(map[*pipeline.Message[K, V]]string, len(batch))
			call := make([]*pipeline.Message[K, V], 0, len(batch))
			for _, msg := range batch {
				id, ok := cfg.ID(msg)
				if !ok {
					call = append(call, msg)
					continue
				}
				seen, err := cfg.Store.Seen(ctx, id)
				switch {
				case err != nil:
					failed.Fail(msg, fmt.Errorf("stages: dedupe store: %w", err))
				case seen:
					msg.Drop()
				default:
					ids[msg] = id
					call = append(call, msg)
				}
			}
			var err error
			if len(call) > 0 {
				err = next(ctx, call)
			}
			// The pipeline handles again the messages that follow a failed
			// one of their key (or partition, in partition mode) in the
			// batch: they must not be taken for duplicates then, so nothing
			// after a partition's first failure in the batch is recorded.
			var failedIn map[pipeline.TopicPartition]bool
			for _, msg := range batch {
				msgErr := failed.Errors[msg]
				if msgErr == nil && !msg.Dropped() {
					msgErr = pipeline.BatchOutcome(err, msg)
				}
				if msgErr != nil {
					failed.Fail(msg, msgErr)
					if failedIn == nil {
						failedIn = make(map[pipeline.TopicPartition]bool)
					}
					failedIn[msg.TopicPartition()] = true
					continue
				}
				id, ok := ids[msg]
				if !ok || failedIn[msg.TopicPartition()] {
					continue
				}
				// Recording is bookkeeping of work already done: a hard
				// stop must not make it fail.
				if err := cfg.Store.Record(context.WithoutCancel(ctx), id); err != nil && cfg.OnRecordError != nil {
					cfg.OnRecordError(msg, err)
				}
			}
			if len(failed.Errors) == len(batch) && len(call) == len(batch) && err != nil {
				return err // the whole batch failed: its error as it was
			}
			return failed.Err()
		}
	}
}
