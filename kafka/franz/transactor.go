package franz

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka/pipeline"
)

// ErrTransactionsUnsupported is wrapped by NewTransactor's error when the
// cluster lacks what a transactional pipeline needs: transactions
// (InitProducerID with a transactional id, EndTxn), and TxnOffsetCommit
// v3 or later, which commits offsets in a transaction as a group member
// (KIP-447, Kafka 2.5).
var ErrTransactionsUnsupported = errors.New("franz: the cluster does not support transactions with consumer group fencing (KIP-447, Kafka 2.5+)")

// errAborted is wrapped by the error of a Transact whose transaction was
// aborted (or never begun): none of it is visible.
var errAborted = errors.New("franz: transaction aborted")

// Transactor is the pipeline.Transactor of a franz Source: each Transact
// is one Kafka transaction of a transactional kgo producer that writes the
// output records and commits the consumed offsets as the Source's group
// member (KIP-447), so that a read_committed reader sees all of it or
// none of it. Hand it to parallafka.WithTransactions next to the Source.
//
// kgo's GroupTransactSession is not used: its End rewinds the consumer,
// so it must not run while the pipeline polls, nor from inside a revoke;
// the pipeline polls on while it commits, and commits a revoke's offsets
// inside the revoke. The Transactor keeps the producer on a client of its
// own and sends the offsets itself.
//
// A transaction lasts one Transact: begun, written (records in order,
// flushed), offsets committed (TxnOffsetCommit with the producer's id and
// epoch, the group member's ID and generation or KIP-848 member epoch, and
// each offset's metadata, the pipeline's offset map), ended (EndTxn).
// Outputs wait in the pipeline between commits, not in an open
// transaction.
type Transactor struct {
	client       *kgo.Client // the transactional producer
	src          txnSource
	txnID        string
	log          *slog.Logger
	closeTimeout time.Duration

	// Owned by the goroutine in Transact (one at a time).
	versions txnVersions
	topicIDs map[string][16]byte // of the consumed topics, for TxnOffsetCommit v6
	coord    int32               // the group coordinator's node ID, -1 unknown
	unended  bool                // an abort failed: end the transaction before the next

	mu        sync.Mutex
	fatal     error         // once set, every Transact returns it
	closed    bool          // Close was called
	cancel    func()        // cancels the Transact in progress
	inFlight  chan struct{} // closed when the Transact in progress returned
	closeOnce sync.Once
	closeErr  error
}

var _ pipeline.Transactor = (*Transactor)(nil)

// txnSource is what a Transactor uses of its Source.
type txnSource interface {
	Commit(ctx context.Context, offsets []pipeline.Offset) error
	groupClient() *kgo.Client
	groupName() string
	beginTxnCommit(ctx context.Context) (context.Context, func(), error)
	notOwned(offsets []pipeline.Offset) []pipeline.TopicPartition
	noteCommitted(offsets []pipeline.Offset)
	lastCommitted(tp pipeline.TopicPartition) (pipeline.Offset, bool)
}

// NewTransactor creates the transactional producer of src's pipeline
// from opts: kgo.SeedBrokers, TLS, SASL, compression, and
// kgo.TransactionalID, which is required. Each member (each process, and
// each pipeline in a process) needs a transactional id of its own; a
// restarted member may reuse its id, and then fences its older
// incarnation at once (KIP-447 fences zombies by group generation
// whatever the ids).
//
// kgo.TransactionTimeout (kgo's default 40 s) bounds how long the broker
// keeps a transaction open when its producer vanishes: a read_committed
// reader waits at most that long behind one. A transaction lasts one
// Transact (produce, flush, commit), which the pipeline bounds by its
// revoke timeout; the Transactor cannot know the pipeline's settings, so
// choose a TransactionTimeout longer than both the revoke timeout and the
// commit interval (parallafka.WithRevokeTimeout, WithCommitInterval).
//
// Output records are placed as pipeline.Record says: with a Partition,
// there; without, where Kafka's Java clients put them (kgo's default
// partitioner: murmur2 of the key modulo the partition count, with the
// sign bit cleared; a sticky partition for a nil key). A
// kgo.RecordPartitioner in opts is replaced. NewTransactor refuses, with
// an error wrapping ErrUnsafeConfig: no kgo.TransactionalID; consumer
// options (kgo.ConsumerGroup, kgo.ConsumeTopics: the Transactor's client
// only produces; offsets go in as src's member); kgo.ManualFlushing (a
// transaction larger than the buffer could never be written);
// kgo.RequiredAcks other than all, and kgo.DisableIdempotentWrite.
//
// NewTransactor checks that the cluster supports transactions (else an
// error wrapping ErrTransactionsUnsupported) and initializes the producer
// id, within the startup timeout (WithStartupTimeout, 30 s by default).
// Of the options, WithLogger, WithStartupTimeout and WithCloseTimeout
// apply. Close the Transactor after Consume returned.
func NewTransactor[K, V any](src *Source[K, V], opts []kgo.Opt, options ...Option) (*Transactor, error) {
	if src == nil {
		return nil, errors.New("franz: NewTransactor: nil source")
	}
	o := applyOptions(options)
	if o.err != nil {
		return nil, o.err
	}
	to := new(atomic.Pointer[slog.Logger])
	to.Store(o.logger)
	all := make([]kgo.Opt, 0, len(opts)+3)
	all = append(all, kgo.WithLogger(&slogLogger{to: to}), kgo.DisableClientMetrics())
	all = append(all, opts...)
	all = append(all, kgo.RecordPartitioner(outputPartitioner{}))
	cl, err := kgo.NewClient(all...)
	if err != nil {
		return nil, fmt.Errorf("franz: NewTransactor: %w", err)
	}
	if err := checkTransactional(cl); err != nil {
		cl.Close()
		return nil, err
	}
	t := &Transactor{
		client:       cl,
		src:          src,
		log:          o.logger,
		closeTimeout: o.closeTimeout,
		coord:        -1,
	}
	t.txnID, _ = cl.OptValue(kgo.TransactionalID).(string)
	startup := o.startupTimeout
	if startup == 0 {
		startup = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), startup)
	defer cancel()
	if err := t.start(ctx); err != nil {
		cl.Close()
		return nil, err
	}
	return t, nil
}

// checkTransactional refuses the producer options that break transactions.
func checkTransactional(cl *kgo.Client) error {
	refuse := func(what, why string) error {
		return fmt.Errorf("%w: transactional producer: %s: %s", ErrUnsafeConfig, what, why)
	}
	if id, _ := cl.OptValue(kgo.TransactionalID).(string); id == "" {
		return refuse("no kgo.TransactionalID", "each member needs a transactional id of its own")
	}
	if g, _ := cl.OptValue(kgo.ConsumerGroup).(string); g != "" {
		return refuse("kgo.ConsumerGroup", "the transactional client only produces; offsets are committed as the Source's group member")
	}
	if ts, _ := cl.OptValue(kgo.ConsumeTopics).([]string); len(ts) > 0 {
		return refuse("kgo.ConsumeTopics", "the transactional client only produces")
	}
	if v, _ := cl.OptValue(kgo.ManualFlushing).(bool); v {
		return refuse("kgo.ManualFlushing", "a transaction larger than the produce buffer could never be written; the Transactor flushes each transaction itself")
	}
	if acks, ok := cl.OptValue(kgo.RequiredAcks).(kgo.Acks); ok && acks != kgo.AllISRAcks() {
		return refuse("kgo.RequiredAcks", "transactions need acks from every in-sync replica")
	}
	if v, _ := cl.OptValue(kgo.DisableIdempotentWrite).(bool); v {
		return refuse("kgo.DisableIdempotentWrite", "transactions need the idempotent producer")
	}
	return nil
}

// start checks that the cluster supports transactions and initializes the
// producer id, which fences an older producer with the same transactional
// id.
func (t *Transactor) start(ctx context.Context) error {
	if err := t.versions.load(ctx, t.client); err != nil {
		return fmt.Errorf("franz: NewTransactor: asking the cluster's API versions: %w", err)
	}
	if err := t.versions.supported(); err != nil {
		return err
	}
	if _, _, err := t.client.ProducerID(ctx); err != nil {
		if errors.Is(err, kerr.TransactionalIDAuthorizationFailed) || errors.Is(err, kerr.ClusterAuthorizationFailed) {
			return fmt.Errorf("franz: NewTransactor: transactional id %q: %w", t.txnID, err)
		}
		return fmt.Errorf("franz: NewTransactor: initializing the transactional producer %q: %w", t.txnID, err)
	}
	return nil
}

// Client returns the producer client, for metrics.
func (t *Transactor) Client() *kgo.Client { return t.client }

// Transact writes records and commits offsets in one transaction, as
// pipeline.Transactor says. It returns nil once the transaction committed.
//
// With no records it is an ordinary commit of the Source (Source.Commit):
// the pipeline hands every transaction all the outputs not yet committed,
// so none means none is pending, and the offsets alone need no
// transaction.
//
// Otherwise it refuses to begin if any offset's partition is not assigned
// to the Source (an error matching pipeline.ErrNotOwned). A transaction
// that fails is aborted (its buffered records failed, EndTxn with abort):
// the error says so; the group refusing the offsets (ILLEGAL_GENERATION,
// UNKNOWN_MEMBER_ID, STALE_MEMBER_EPOCH, REBALANCE_IN_PROGRESS, and the
// like: a member the group fenced) matches pipeline.ErrNotOwned, an
// offset map the broker finds too large pipeline.ErrMetadataTooLarge.
// Errors wrap pipeline.ErrTransactionFatal when the producer cannot go on:
// fenced by a newer producer with the same transactional id
// (PRODUCER_FENCED, INVALID_PRODUCER_EPOCH), not authorized
// (TRANSACTIONAL_ID_AUTHORIZATION_FAILED), its client closed, or a
// commit whose outcome could not be learnt. Once fatal, every later call
// returns the same error.
//
// ctx bounds the transaction up to its EndTxn; once the commit is sent,
// its answer is waited for up to 10 s more (or ctx's deadline if later),
// since the outcome must be known. A commit whose answer never came (a
// broker gone, a timeout) is settled: the producer id is reloaded, which
// makes the transaction coordinator finish the transaction either way,
// and the group's committed offsets tell which way it went.
//
// Transact shares the Source's commit slot: it runs one at a time with
// the Source's commits, and the Source's lost partitions cancel it (up to
// its EndTxn) as they cancel a commit.
func (t *Transactor) Transact(ctx context.Context, records []pipeline.Record, offsets []pipeline.Offset) error {
	ctx, leave, err := t.enter(ctx)
	if err != nil {
		return err
	}
	defer leave()
	if len(records) == 0 {
		return t.src.Commit(ctx, offsets)
	}
	for _, r := range records {
		if r.Topic == "" || (r.Partition != nil && *r.Partition < 0) {
			return t.fail(fmt.Errorf("franz: an output record that can never be written: topic %q, partition %v", r.Topic, r.Partition))
		}
	}
	for _, off := range offsets {
		if off.Offset < 0 {
			return t.fail(fmt.Errorf("franz: transaction: %s: invalid offset %d", off.TopicPartition, off.Offset))
		}
	}
	ctx, release, err := t.src.beginTxnCommit(ctx)
	if err != nil {
		return err
	}
	defer release()
	if tps := t.src.notOwned(offsets); len(tps) > 0 {
		return fmt.Errorf("%w (not begun): %w: %v not assigned to this member", errAborted, pipeline.ErrNotOwned, tps)
	}
	return t.transact(ctx, records, offsets)
}

// transact runs one transaction.
func (t *Transactor) transact(ctx context.Context, records []pipeline.Record, offsets []pipeline.Offset) error {
	start := time.Now()
	if t.unended {
		if err := t.abort(ctx, errors.New("the previous transaction's abort did not end")); err != nil {
			return err
		}
	}
	// BeginTransaction reloads a producer id that a failure left to
	// reload (KIP-360), and fails only if it cannot be recovered.
	if err := t.client.BeginTransaction(); err != nil {
		return t.fail(fmt.Errorf("franz: beginning a transaction: %w", err))
	}
	t.versions.refresh(ctx, t.client)
	if err := t.produce(ctx, records); err != nil {
		return t.abort(ctx, fmt.Errorf("producing %d records: %w", len(records), err))
	}
	if err := t.commitOffsets(ctx, offsets); err != nil {
		return t.abort(ctx, err)
	}
	if err := t.end(ctx, offsets); err != nil {
		return err
	}
	t.log.Debug("franz: transaction committed", "records", len(records), "offsets", offsets, "took", time.Since(start))
	return nil
}

// produce writes records in the open transaction, in order, and waits
// until the brokers acknowledged every one.
func (t *Transactor) produce(ctx context.Context, records []pipeline.Record) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	promise := func(_ *kgo.Record, err error) {
		if err != nil {
			mu.Lock()
			if first == nil {
				first = err
			}
			mu.Unlock()
		}
		wg.Done()
	}
	for _, r := range records {
		wg.Add(1)
		t.client.Produce(ctx, toKgoRecord(r), promise)
	}
	if err := t.client.Flush(ctx); err != nil {
		return err
	}
	wg.Wait() // kgo calls each promise before Flush counts its record out
	return first
}

// toKgoRecord converts an output record.
func toKgoRecord(r pipeline.Record) *kgo.Record {
	kr := &kgo.Record{Topic: r.Topic, Key: r.Key, Value: r.Value}
	if len(r.Headers) > 0 {
		kr.Headers = make([]kgo.RecordHeader, len(r.Headers))
		for i, h := range r.Headers {
			kr.Headers[i] = kgo.RecordHeader{Key: h.Key, Value: h.Value}
		}
	}
	if r.Partition != nil {
		kr.Partition = *r.Partition
		kr.Context = placedContext
	}
	return kr
}

// endWait is how long an EndTxn (or an abort) is waited for past the end
// of Transact's ctx: its outcome must be known.
const endWait = 10 * time.Second

// endContext returns the context of an EndTxn: not cancelled with ctx,
// and ending endWait from now or at ctx's deadline if that is later.
func endContext(ctx context.Context) (context.Context, context.CancelFunc) {
	deadline := time.Now().Add(endWait)
	if d, ok := ctx.Deadline(); ok && d.After(deadline) {
		deadline = d
	}
	return context.WithDeadline(context.WithoutCancel(ctx), deadline)
}

// end commits the transaction.
func (t *Transactor) end(ctx context.Context, offsets []pipeline.Offset) error {
	endCtx, cancel := endContext(ctx)
	defer cancel()
	err := t.client.EndTransaction(endCtx, kgo.TryCommit)
	if err == nil {
		t.src.noteCommitted(offsets)
		return nil
	}
	if outcomeKnown(err) {
		return t.abort(ctx, fmt.Errorf("committing: %w", err))
	}
	return t.settle(ctx, offsets, err)
}

// outcomeKnown tells an EndTxn error that says the transaction did not
// commit from one that leaves its outcome unknown (a broker gone, a
// request timed out, UNKNOWN_SERVER_ERROR), as kgo's EndTransaction does:
// a non-retriable broker error is an answer.
func outcomeKnown(err error) bool {
	if errors.Is(err, kerr.OperationNotAttempted) {
		return true
	}
	var ke *kerr.Error
	return errors.As(err, &ke) && !ke.Retriable && ke != kerr.UnknownServerError
}

// abort aborts the open transaction after cause, and returns the error of
// Transact: cause, marked aborted, or fatal if the producer cannot go on.
func (t *Transactor) abort(ctx context.Context, cause error) error {
	actx, cancel := endContext(ctx)
	defer cancel()
	var errs []error
	if err := t.client.AbortBufferedRecords(actx); err != nil {
		// Records of this transaction may still sit in kgo's buffer (the
		// brokers unreachable): once they come back, kgo would send them
		// under a reloaded producer id, and the next transaction on this
		// client would commit them with its own: duplicates. So no next
		// transaction: the pipeline stops, and a restart's new producer
		// fences whatever is left (the broker aborts it).
		return t.fail(fmt.Errorf("franz: transaction aborted (%w), but its buffered records could not be failed (%w): they could be written by a later transaction of this producer", cause, err))
	}
	// kgo recovers the producer id while it aborts where Kafka allows
	// (KIP-360, KIP-588).
	if err := t.client.EndTransaction(actx, kgo.TryAbort); err != nil {
		t.unended = true
		errs = append(errs, fmt.Errorf("ending the transaction: %w", err))
	} else {
		t.unended = false
	}
	abortErr := errors.Join(errs...)
	if errors.Is(cause, kgo.ErrClientClosed) || errors.Is(abortErr, kgo.ErrClientClosed) {
		return t.fail(fmt.Errorf("franz: transaction aborted, the producer client is closed: %w", cause))
	}
	if fenced(cause) || fenced(abortErr) {
		return t.fail(fmt.Errorf("franz: transaction aborted, the producer %q was fenced: %w", t.txnID, errors.Join(cause, abortErr)))
	}
	if _, _, err := t.client.ProducerID(actx); err != nil && unrecoverable(err) {
		return t.fail(fmt.Errorf("franz: transaction aborted (%w), and the producer %q cannot go on: %w", cause, t.txnID, err))
	}
	if abortErr != nil {
		t.log.Warn("franz: aborting a transaction failed; the next transaction ends it first", "error", abortErr)
		return fmt.Errorf("%w: %w (and the abort: %w)", errAborted, cause, abortErr)
	}
	t.log.Debug("franz: transaction aborted", "cause", cause)
	return fmt.Errorf("%w: %w", errAborted, cause)
}

// fenced tells the errors that say another producer with the same
// transactional id took over, or that this one may not write.
func fenced(err error) bool {
	return err != nil && (errors.Is(err, kerr.ProducerFenced) || errors.Is(err, kerr.InvalidProducerEpoch) ||
		errors.Is(err, kerr.TransactionalIDAuthorizationFailed))
}

// unrecoverable tells a producer id error kgo could not recover from: a
// broker's definite answer.
func unrecoverable(err error) bool {
	var ke *kerr.Error
	return errors.As(err, &ke) && !ke.Retriable && ke != kerr.UnknownServerError
}

// fail makes err the Transactor's fatal error.
func (t *Transactor) fail(err error) error {
	err = fmt.Errorf("%w: %w", pipeline.ErrTransactionFatal, err)
	t.mu.Lock()
	if t.fatal == nil {
		t.fatal = err
	}
	err = t.fatal
	t.mu.Unlock()
	t.log.Error("franz: the transactional producer cannot go on", "transactional_id", t.txnID, "error", err)
	return err
}

// enter starts a Transact, unless the Transactor is closed or failed.
func (t *Transactor) enter(ctx context.Context) (context.Context, func(), error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case t.closed:
		return nil, nil, ErrClosed
	case t.fatal != nil:
		return nil, nil, t.fatal
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	t.cancel, t.inFlight = cancel, done
	return ctx, func() {
		cancel()
		t.mu.Lock()
		t.cancel, t.inFlight = nil, nil
		t.mu.Unlock()
		close(done)
	}, nil
}

// Close cancels the Transact in progress (one in its EndTxn ends when the
// client closes: its outcome is then unknown, and the error fatal), and
// closes the producer client, within the close timeout (WithCloseTimeout,
// 5 s by default); past it Close returns an error matching
// ErrCloseTimeout and the client goes on closing in the background.
// Transact after Close returns ErrClosed. Close may be called more than
// once.
func (t *Transactor) Close() error {
	t.closeOnce.Do(func() {
		deadline := time.Now().Add(t.closeTimeout)
		t.mu.Lock()
		t.closed = true
		cancel, inFlight := t.cancel, t.inFlight
		t.mu.Unlock()
		if cancel != nil {
			cancel()
			wait := time.NewTimer(time.Until(deadline) / 2)
			select {
			case <-inFlight:
			case <-wait.C:
			}
			wait.Stop()
		}
		closed := make(chan struct{})
		go func() {
			t.client.Close()
			close(closed)
		}()
		end := time.NewTimer(time.Until(deadline))
		defer end.Stop()
		select {
		case <-closed:
		case <-end.C:
			t.closeErr = fmt.Errorf("%w after %v: the transactional producer goes on closing in the background", ErrCloseTimeout, t.closeTimeout)
		}
	})
	return t.closeErr
}

// TransactionTimeout returns kgo.TransactionTimeout, how long the broker
// keeps a transaction open: parallafka.New refuses a commit interval that
// is not shorter.
func (t *Transactor) TransactionTimeout() time.Duration {
	d, _ := t.client.OptValue(kgo.TransactionTimeout).(time.Duration)
	return d
}
