package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/parallafka/parallafka/pipeline"
)

// Producer settings that NewTransactor checks or fills in.
const (
	keyTransactionalID = "transactional.id"
	keyPartitioner     = "partitioner"
	keyTxnTimeout      = "transaction.timeout.ms"
)

// transactorInitTimeout bounds NewTransactor's InitTransactions.
const transactorInitTimeout = 30 * time.Second

// Transactor writes a transactional pipeline's transactions
// (parallafka.WithTransactions) with a confluent-kafka-go transactional
// producer: it implements pipeline.Transactor. Each transaction produces
// the outputs of the messages it commits, then commits their offsets (with
// the pipeline's offset map as metadata) with the consumer group metadata
// of the Source's consumer (SendOffsetsToTransaction, KIP-447), so that
// the group coordinator refuses the offsets of a member it fenced, and the
// whole transaction aborts.
//
// Create it with the Source it commits for, before Consume; Close it after
// Consume returned.
//
// A transaction's offsets go as the Source's commit in flight: when the
// Source's assignment is lost, librdkafka rejoins the group only after
// they were answered (see Source.Commit), so that they are never sent with
// the generation or member epoch of the member's next assignment.
type Transactor struct {
	producer *ckafka.Producer
	consumer *ckafka.Consumer
	owned    func([]pipeline.Offset) error // the Source's: are offsets' partitions still its own?
	// sendOffsets is the Source's (offsetsInFlight): it sends a
	// transaction's offsets as the Source's commit in flight.
	sendOffsets func(context.Context, []pipeline.Offset, func() error) error
	txnTimeout  time.Duration // transaction.timeout.ms
	logger      *slog.Logger
	eventsDone  chan struct{}
	logsDone    chan struct{} // nil if logs are not forwarded
	closeOnce   sync.Once
	closeErr    error
}

var _ pipeline.Transactor = (*Transactor)(nil)

// NewTransactor creates a transactional producer for src's pipeline and
// initializes its transactions (InitTransactions, which fences an older
// producer with the same transactional.id: that one's next transaction
// fails with pipeline.ErrTransactionFatal). It checks a copy of cfg (cfg
// itself is never modified):
//
//   - transactional.id is required: it identifies this producer across
//     restarts, so that a restarted instance fences its predecessor. Give
//     each consumer instance its own, stable one (its host name, a
//     StatefulSet ordinal).
//   - partitioner: left unset, murmur2_random, so that a keyed output
//     lands in the partition Kafka's Java clients (and franz-go) choose;
//     librdkafka's own default hashes keys differently.
//   - transaction.timeout.ms (librdkafka's default 60 s) must exceed the
//     pipeline's commit interval: the broker aborts a transaction open
//     longer than that.
//   - go.logs.channel.enable: left unset, librdkafka's logs are forwarded
//     to the WithLogger logger.
//
// Everything else (bootstrap.servers, compression, security) is the
// caller's; acks=all and idempotence come with transactions. Of the
// options, only WithLogger applies. It returns an error if the brokers do
// not support transactions or cannot be reached within 30 s (the
// transactional.id's coordinator is found then).
func NewTransactor[K, V any](src *Source[K, V], cfg *ckafka.ConfigMap, opts ...Option) (*Transactor, error) {
	if src == nil {
		return nil, errors.New("kafka: NewTransactor: nil Source")
	}
	p, o, forwardLogs, err := newClient("NewTransactor", cfg, opts, safeTransactorConfig, ckafka.NewProducer)
	if err != nil {
		return nil, err
	}
	t := &Transactor{producer: p, consumer: src.Consumer(), owned: src.owned, sendOffsets: src.offsetsInFlight, logger: o.logger, eventsDone: make(chan struct{}),
		txnTimeout: transactionTimeout(*cfg)}
	go t.logEvents()
	if forwardLogs {
		t.logsDone = make(chan struct{})
		to := new(atomic.Pointer[slog.Logger])
		to.Store(o.logger)
		go forwardLogEvents(p.Logs(), to, t.logsDone)
	}
	ctx, cancel := context.WithTimeout(context.Background(), transactorInitTimeout)
	defer cancel()
	if err := p.InitTransactions(ctx); err != nil {
		t.Close()
		return nil, fmt.Errorf("kafka: NewTransactor: initializing transactions (are transactions enabled on the brokers, and reachable?): %w", err)
	}
	return t, nil
}

// safeTransactorConfig returns a checked copy of cfg, and whether
// NewTransactor should forward librdkafka's logs.
func safeTransactorConfig(cfg ckafka.ConfigMap) (ckafka.ConfigMap, bool, error) {
	return checkedConfig(cfg, func(conf ckafka.ConfigMap) error {
		if id, _ := conf[keyTransactionalID].(string); id == "" {
			return fmt.Errorf("kafka: NewTransactor: %s is required (a stable id per consumer instance)", keyTransactionalID)
		}
		if v, set, err := boolSetting(conf, keyIdempotence); err != nil {
			return err
		} else if set && !v {
			return fmt.Errorf("%w: transactional producer: %s=false: transactions need an idempotent producer", ErrUnsafeConfig, keyIdempotence)
		}
		if acks, set := conf[keyAcks]; set && acks != "all" && acks != "-1" && acks != -1 {
			return fmt.Errorf("%w: transactional producer: %s=%v: transactions need acks=all", ErrUnsafeConfig, keyAcks, acks)
		}
		if _, set := conf[keyPartitioner]; !set {
			conf[keyPartitioner] = "murmur2_random"
		}
		if _, set := conf[keyReportFields]; !set {
			conf[keyReportFields] = "none"
		}
		return nil
	})
}

// Transact produces records in order and commits offsets in one
// transaction, as src's consumer group member. It implements
// pipeline.Transactor: nil once the transaction committed; an error after
// it was aborted; an error wrapping pipeline.ErrTransactionFatal when the
// producer cannot go on (fenced by a newer one with the same
// transactional.id, a fatal librdkafka error, or a transaction whose
// outcome it could not learn).
func (t *Transactor) Transact(ctx context.Context, records []pipeline.Record, offsets []pipeline.Offset) error {
	// The group coordinator refuses the offsets of a member whose
	// generation passed; this catches too the member that learned it was
	// fenced (librdkafka then sends no generation, which the coordinator
	// does not check) before its Source heard of the loss.
	if err := t.owned(offsets); err != nil {
		return fmt.Errorf("kafka: no transaction: %w", err)
	}
	if err := t.producer.BeginTransaction(); err != nil {
		return t.failed(ctx, "beginning a transaction", err)
	}
	for _, r := range records {
		if err := t.produce(ctx, r); err != nil {
			return t.failed(ctx, "producing to "+r.Topic, err)
		}
	}
	if len(offsets) > 0 {
		// As the Source's commit in flight: a lost assignment waits for
		// it before librdkafka may rejoin. Read after a rejoin, the group
		// metadata would carry the new generation or member epoch, which
		// the coordinator accepts for any partition: the offsets of a
		// partition given to another member meanwhile would land over
		// that member's, moving them backwards.
		what := "reading the consumer's group metadata"
		err := t.sendOffsets(ctx, offsets, func() error {
			group, err := t.consumer.GetConsumerGroupMetadata()
			if err != nil {
				return err
			}
			what = "sending the consumed offsets"
			return t.producer.SendOffsetsToTransaction(ctx, toKafkaOffsets(offsets), group)
		})
		if errors.Is(err, pipeline.ErrNotOwned) {
			what = "checking that the partitions are still this member's"
		}
		if err != nil {
			return t.failed(ctx, what, err)
		}
	}
	for {
		err := t.producer.CommitTransaction(ctx)
		if err == nil {
			return nil
		}
		var kerr ckafka.Error
		if errors.As(err, &kerr) && kerr.IsRetriable() && !kerr.TxnRequiresAbort() && ctx.Err() == nil {
			continue // the outcome is not known yet: committing again learns it
		}
		return t.failed(ctx, "committing the transaction", err)
	}
}

// produce queues r in the open transaction, waiting while the producer's
// queue is full. Its delivery report goes to the events channel: a record
// not delivered makes CommitTransaction fail.
func (t *Transactor) produce(ctx context.Context, r pipeline.Record) error {
	topic := r.Topic
	msg := &ckafka.Message{
		TopicPartition: ckafka.TopicPartition{Topic: &topic, Partition: ckafka.PartitionAny},
		Key:            r.Key,
		Value:          r.Value,
	}
	if r.Partition != nil {
		msg.TopicPartition.Partition = *r.Partition
	}
	if len(r.Headers) > 0 {
		msg.Headers = make([]ckafka.Header, len(r.Headers))
		for i, h := range r.Headers {
			msg.Headers[i] = ckafka.Header{Key: h.Key, Value: h.Value}
		}
	}
	for {
		err := t.producer.Produce(msg, nil)
		var kerr ckafka.Error
		if err == nil || !errors.As(err, &kerr) || kerr.Code() != ckafka.ErrQueueFull {
			return err
		}
		select { // the producer's queue is full: wait for room
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// failed aborts the open transaction after err, and returns the error to
// report: fatal (pipeline.ErrTransactionFatal) if the producer cannot go
// on or the abort failed.
func (t *Transactor) failed(ctx context.Context, what string, err error) error {
	var kerr ckafka.Error
	if errors.As(err, &kerr) && kerr.IsFatal() {
		return fmt.Errorf("kafka: transaction failed %s: %w: %w", what, pipeline.ErrTransactionFatal, err)
	}
	// Abort with a context of its own: ctx may be what ended.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if aerr := t.producer.AbortTransaction(actx); aerr != nil {
		var akerr ckafka.Error
		if errors.As(aerr, &akerr) && akerr.Code() == ckafka.ErrState {
			// No transaction was open (BeginTransaction failed).
			return fmt.Errorf("kafka: transaction failed %s: %w", what, err)
		}
		return fmt.Errorf("kafka: transaction failed %s (%w), and aborting it failed: %w: %w", what, err, pipeline.ErrTransactionFatal, aerr)
	}
	return fmt.Errorf("kafka: transaction aborted: failed %s: %w", what, err)
}

// logEvents logs the producer's errors and failed deliveries until Close
// closes its events.
func (t *Transactor) logEvents() {
	defer close(t.eventsDone)
	for ev := range t.producer.Events() {
		switch ev := ev.(type) {
		case *ckafka.Message:
			if ev.TopicPartition.Error != nil {
				t.logger.Warn("parallafka: output record not delivered; its transaction aborts", "topic", *ev.TopicPartition.Topic, "error", ev.TopicPartition.Error)
			}
		case ckafka.Error:
			level := slog.LevelWarn
			if ev.IsFatal() {
				level = slog.LevelError
			}
			t.logger.Log(context.Background(), level, "parallafka: transactional producer error", "error", ev)
		default:
			t.logger.Debug("parallafka: transactional producer event", "event", ev.String())
		}
	}
}

// Close closes the producer (a transaction still open is aborted by the
// broker). Call it after Consume returned; it may be called more than
// once.
func (t *Transactor) Close() error {
	t.closeOnce.Do(func() {
		t.producer.Close()
		<-t.eventsDone
		if t.logsDone != nil {
			<-t.logsDone
		}
	})
	return t.closeErr
}

// TransactionTimeout returns transaction.timeout.ms (librdkafka's default
// 60 s), how long the broker keeps a transaction open: parallafka.New
// refuses a commit interval that is not shorter.
func (t *Transactor) TransactionTimeout() time.Duration { return t.txnTimeout }

func transactionTimeout(cfg ckafka.ConfigMap) time.Duration {
	ms := 60_000
	switch v := cfg[keyTxnTimeout].(type) {
	case int:
		ms = v
	case string:
		if n, err := strconv.Atoi(v); err == nil {
			ms = n
		}
	}
	return time.Duration(ms) * time.Millisecond
}
