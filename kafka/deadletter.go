package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/parallafka/parallafka/internal/kafkaclient"
	"github.com/parallafka/parallafka/pipeline"
)

// Producer settings that NewDeadLetterWriter checks or fills in.
const (
	keyAcks            = "acks"
	keyIdempotence     = "enable.idempotence"
	keyDeliveryReports = "go.delivery.reports"
	keyReportFields    = "go.delivery.report.fields"
)

// deadLetterCloseTimeout bounds how long Close waits for dead letters still
// in the producer's queue (writes whose context was cancelled).
const deadLetterCloseTimeout = 10 * time.Second

// DeadLetterWriter writes dead letters to Kafka with a confluent-kafka-go
// producer: it is the stages.DeadLetterWriter of stages.DeadLetterQueue.
// Each write waits for the broker's acknowledgement (acks=all), so a message
// counts as finished, and its offset can be committed, only once its dead
// letter is stored. It is safe for concurrent use; writes are batched by
// the producer (linger.ms).
//
// Package kafka imports package stages for the DeadLetter type only.
type DeadLetterWriter struct {
	producer   *ckafka.Producer
	logger     *slog.Logger
	eventsDone chan struct{}
	logsDone   chan struct{} // nil if logs are not forwarded
	closeOnce  sync.Once
	closeErr   error
}

// NewDeadLetterWriter creates a producer for dead letters. It checks a copy
// of cfg (cfg itself is never modified):
//
//   - acks must be all (or -1): a dead letter that one broker acknowledged
//     alone is lost with that broker, after its offset was committed. Left
//     unset, it is set to all.
//   - enable.idempotence: left unset, it is set to true, so that the
//     producer's own retries never duplicate a dead letter.
//   - go.delivery.reports must not be false: writes wait for them. Reports
//     carry no copy of the key and value (go.delivery.report.fields=none)
//     unless set otherwise.
//   - go.logs.channel.enable: left unset, librdkafka's logs are forwarded to
//     the WithLogger logger, as NewConsumer does.
//
// Everything else (bootstrap.servers, compression, message.timeout.ms, which
// bounds how long a write may wait for the broker: 300 s by default,
// security) is the caller's. Of the options, only WithLogger applies. Close
// the writer after Consume returned.
func NewDeadLetterWriter(cfg *ckafka.ConfigMap, opts ...Option) (*DeadLetterWriter, error) {
	p, o, forwardLogs, err := newClient("NewDeadLetterWriter", cfg, opts, safeProducerConfig, ckafka.NewProducer)
	if err != nil {
		return nil, err
	}
	w := &DeadLetterWriter{producer: p, logger: o.logger, eventsDone: make(chan struct{})}
	go w.logEvents()
	if forwardLogs {
		w.logsDone = make(chan struct{})
		to := new(atomic.Pointer[slog.Logger])
		to.Store(o.logger)
		go forwardLogEvents(p.Logs(), to, w.logsDone)
	}
	return w, nil
}

// safeProducerConfig returns a checked copy of cfg, and whether
// NewDeadLetterWriter should forward librdkafka's logs.
func safeProducerConfig(cfg ckafka.ConfigMap) (ckafka.ConfigMap, bool, error) {
	return checkedConfig(cfg, checkProducerConfig)
}

// checkProducerConfig sets or refuses the producer settings a dead letter's
// durability depends on.
func checkProducerConfig(conf ckafka.ConfigMap) error {
	switch acks, set := conf[keyAcks]; {
	case !set:
		conf[keyAcks] = "all"
	case acks == "all" || acks == "-1" || acks == -1:
	default:
		return fmt.Errorf("%w: dead-letter producer: %s=%v: a dead letter must be stored by every "+
			"in-sync replica before its message is committed; set it to all or leave it unset", ErrUnsafeConfig, keyAcks, acks)
	}
	if _, set, err := boolSetting(conf, keyIdempotence); err != nil {
		return err
	} else if !set {
		conf[keyIdempotence] = true
	}
	if v, set, err := boolSetting(conf, keyDeliveryReports); err != nil {
		return err
	} else if set && !v {
		return fmt.Errorf("%w: dead-letter producer: %s=false: each write waits for its delivery report",
			ErrUnsafeConfig, keyDeliveryReports)
	}
	if _, set := conf[keyReportFields]; !set {
		conf[keyReportFields] = "none"
	}
	return nil
}

// WriteDeadLetter produces dl to its topic and waits until the broker
// acknowledged it, the produce failed, or ctx is done. It implements
// stages.DeadLetterWriter. After ctx is done the dead letter may still be
// delivered: a message whose write was abandoned stays uncommitted, is
// delivered again and may be dead-lettered twice (at-least-once).
func (w *DeadLetterWriter) WriteDeadLetter(ctx context.Context, dl pipeline.DeadLetter) error {
	topic := dl.Topic
	record := &ckafka.Message{
		TopicPartition: ckafka.TopicPartition{Topic: &topic, Partition: ckafka.PartitionAny},
		Key:            dl.Key,
		Value:          dl.Value,
		Headers:        make([]ckafka.Header, len(dl.Headers)),
	}
	for i, h := range dl.Headers {
		record.Headers[i] = ckafka.Header{Key: h.Key, Value: h.Value}
	}
	delivered := make(chan ckafka.Event, 1) // the producer never blocks on it
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := w.producer.Produce(record, delivered)
		if err == nil {
			break
		}
		var kerr ckafka.Error
		if !errors.As(err, &kerr) || kerr.Code() != ckafka.ErrQueueFull {
			return fmt.Errorf("kafka: producing dead letter of %s@%d to %s: %w", dl.Original, dl.Offset, topic, err)
		}
		select { // the producer's queue is full: wait for room
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
		}
	}
	select {
	case ev := <-delivered:
		m, ok := ev.(*ckafka.Message)
		if !ok {
			return fmt.Errorf("kafka: dead letter of %s@%d to %s: unexpected delivery event %v", dl.Original, dl.Offset, topic, ev)
		}
		if m.TopicPartition.Error != nil {
			return fmt.Errorf("kafka: dead letter of %s@%d to %s not delivered: %w", dl.Original, dl.Offset, topic, m.TopicPartition.Error)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("kafka: dead letter of %s@%d to %s not acknowledged yet: %w", dl.Original, dl.Offset, topic, ctx.Err())
	}
}

// logEvents logs the producer's errors until Close closes its events.
func (w *DeadLetterWriter) logEvents() {
	defer close(w.eventsDone)
	for ev := range w.producer.Events() {
		switch ev := ev.(type) {
		case ckafka.Error:
			level := slog.LevelWarn
			if ev.IsFatal() {
				level = slog.LevelError
			}
			w.logger.Log(context.Background(), level, "parallafka: dead-letter producer error", "error", ev)
		default:
			w.logger.Debug("parallafka: dead-letter producer event", "event", ev.String())
		}
	}
}

// Close waits up to 10 s for dead letters still queued (writes abandoned by
// a cancelled context), then closes the producer. It returns an error if
// some were still queued. Writes after Close fail. Close may be called more
// than once.
func (w *DeadLetterWriter) Close() error {
	w.closeOnce.Do(func() {
		if left := w.producer.Flush(int(deadLetterCloseTimeout / time.Millisecond)); left > 0 {
			w.closeErr = fmt.Errorf("kafka: closing dead-letter writer: %d dead letters or events not delivered", left)
		}
		w.producer.Close()
		<-w.eventsDone
		if w.logsDone != nil {
			<-w.logsDone
		}
	})
	return w.closeErr
}

// deadLetterCheckTimeout bounds CheckDeadLetterTopic's metadata request
// when its context has no earlier deadline.
const deadLetterCheckTimeout = 10 * time.Second

// ErrDeadLetterTopicMissing is returned (wrapped, with the topic's name) by
// CheckDeadLetterTopic for a dead-letter topic the cluster does not have.
// It is the same value as franz.ErrDeadLetterTopicMissing.
var ErrDeadLetterTopicMissing = kafkaclient.ErrDeadLetterTopicMissing

// CheckDeadLetterTopic asks the cluster for topic's metadata and returns an
// error naming the topic if it does not exist or cannot be read. It
// implements stages.DeadLetterTopicChecker: stages.DeadLetterQueue calls it
// as it starts, so that a missing dead-letter topic stops Consume at once
// instead of failing the first dead letter after message.timeout.ms.
func (w *DeadLetterWriter) CheckDeadLetterTopic(ctx context.Context, topic string) error {
	timeout := deadLetterCheckTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(d))
	}
	md, err := w.producer.GetMetadata(&topic, false, int(max(timeout, time.Millisecond)/time.Millisecond))
	if err != nil {
		return fmt.Errorf("kafka: dead-letter topic %s: metadata: %w", topic, err)
	}
	tm, ok := md.Topics[topic]
	if !ok {
		return fmt.Errorf("%w: %s", ErrDeadLetterTopicMissing, topic)
	}
	if tm.Error.Code() == ckafka.ErrUnknownTopicOrPart || tm.Error.Code() == ckafka.ErrUnknownTopic {
		return fmt.Errorf("%w: %s", ErrDeadLetterTopicMissing, topic)
	}
	if tm.Error.Code() != ckafka.ErrNoError {
		return fmt.Errorf("kafka: dead-letter topic %s: %w", topic, tm.Error)
	}
	return nil
}
