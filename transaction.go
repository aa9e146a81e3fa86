package parallafka

import (
	"context"

	"github.com/parallafka/parallafka/internal/outbox"
	"github.com/parallafka/parallafka/pipeline"
)

// ---- Transactions (exactly-once) ----

// WithTransactions makes the pipeline transactional, for consume,
// transform and produce with exactly-once results: every commit is a
// Kafka transaction that writes the output records of the messages it
// commits as consumed, and their offsets, at once. A read_committed reader
// of the outputs then sees each input's outputs exactly once, whatever
// crashes, rebalances and retries happened.
//
// Handlers produce with Produce. A message's outputs join a transaction
// only once it finishes, and only the one that commits its offset: those
// of a message that fails, is retried, or whose partition is revoked or
// lost before it finished are dropped with its attempt. A transaction
// commits on the commit interval (WithCommitInterval, WithCommitEvery), on
// a revoke before the partitions are handed over, and on a graceful stop.
// One that fails is aborted (nothing of it is visible) and tried again on
// the next interval with the same outputs and newer ones; a fatal error
// (pipeline.ErrTransactionFatal, a producer fenced by a newer one with the
// same transactional id) stops Consume, and a restart goes on from the
// last committed transaction.
//
// t writes the transactions: kafka.NewTransactor or franz.NewTransactor,
// over the same consumer as the source. Outputs of one key appear in each
// output partition in the order of their inputs. Outputs waiting for their
// transaction count in the in-flight byte window (WithMaxInFlightBytes).
// WithAsyncCommits cannot
// be combined with it. If t has a TransactionTimeout() time.Duration method
// (both Kafka transactors do), New refuses a commit interval that is not
// shorter than it.
func WithTransactions(t pipeline.Transactor) Option {
	return optionFunc(func(c *config) { c.transactor = t })
}

// ErrNoTransaction is returned by Produce when it is not called from a
// handler call or an AfterHandle stage of a transactional pipeline
// (WithTransactions), or with a message the call was not given, or after
// the call returned.
var ErrNoTransaction = outbox.ErrNoTransaction

// Produce adds output records to msg, from the handler (or batch handler)
// that ctx and msg were given to, or from an AfterHandle stage (with the
// stage's ctx) for a message it holds, in a transactional pipeline
// (WithTransactions). stages.DeadLetterQueue produces a dead letter so. They are written in the transaction that commits
// msg as consumed, and only if msg finishes in this attempt: if the
// handler returns an error for it (or panics), its outputs are dropped,
// and a retry starts with none. Produce keeps no reference to records'
// byte slices' contents beyond the transaction: do not change them after
// the call. It is safe to call from several goroutines of one handler
// call.
func Produce[K, V any](ctx context.Context, msg *Message[K, V], records ...pipeline.Record) error {
	return outbox.Produce(ctx, msg, records...)
}
