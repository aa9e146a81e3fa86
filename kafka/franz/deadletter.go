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
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/parallafka/parallafka/internal/kafkaclient"
	"github.com/parallafka/parallafka/pipeline"
)

// deadLetterCloseTimeout bounds how long Close waits for dead letters still
// buffered (writes whose context was cancelled).
const deadLetterCloseTimeout = 10 * time.Second

// DeadLetterWriter writes dead letters to Kafka with a franz-go producer:
// it is the stages.DeadLetterWriter of stages.DeadLetterQueue, as package
// kafka's DeadLetterWriter is for confluent-kafka-go. Each write waits for
// the broker's acknowledgement from every in-sync replica, so a message
// counts as finished, and its offset can be committed, only once its dead
// letter is stored. It is safe for concurrent use; writes are batched by
// the client (kgo.ProducerLinger).
type DeadLetterWriter struct {
	client    *kgo.Client
	closeOnce sync.Once
	closeErr  error
}

// NewDeadLetterWriter creates a producer client for dead letters from opts
// (kgo.SeedBrokers, TLS, SASL, compression, kgo.RecordDeliveryTimeout,
// which bounds how long a write may wait for the broker: unbounded by
// default, the write's ctx bounds it too). It checks:
//
//   - acks must be all (kgo's default, kgo.AllISRAcks): a dead letter that
//     one broker acknowledged alone is lost with that broker, after its
//     offset was committed. kgo.RequiredAcks with another value is refused.
//   - idempotent writes stay on (kgo's default), so that the producer's own
//     retries never duplicate a dead letter: kgo.DisableIdempotentWrite is
//     refused.
//   - consumer options (kgo.ConsumerGroup, kgo.ConsumeTopics) are refused:
//     the writer's client only produces.
//
// kgo's logs go to the WithLogger logger (slog.Default() without it). Of the
// options, only WithLogger applies. Close the writer after Consume
// returned.
func NewDeadLetterWriter(opts []kgo.Opt, options ...Option) (*DeadLetterWriter, error) {
	o := applyOptions(options)
	to := new(atomic.Pointer[slog.Logger])
	to.Store(o.logger)
	all := append([]kgo.Opt{kgo.WithLogger(&slogLogger{to: to}), kgo.DisableClientMetrics()}, opts...)
	cl, err := kgo.NewClient(all...)
	if err != nil {
		return nil, fmt.Errorf("franz: NewDeadLetterWriter: %w", err)
	}
	refuse := func(what, why string) (*DeadLetterWriter, error) {
		cl.Close()
		return nil, fmt.Errorf("%w: dead-letter producer: %s: %s", ErrUnsafeConfig, what, why)
	}
	if acks, ok := cl.OptValue(kgo.RequiredAcks).(kgo.Acks); ok && acks != kgo.AllISRAcks() {
		return refuse("kgo.RequiredAcks", "a dead letter must be stored by every in-sync replica before its message is committed; leave acks at all")
	}
	if v, _ := cl.OptValue(kgo.DisableIdempotentWrite).(bool); v {
		return refuse("kgo.DisableIdempotentWrite", "the producer's retries would duplicate dead letters")
	}
	if g, _ := cl.OptValue(kgo.ConsumerGroup).(string); g != "" {
		return refuse("kgo.ConsumerGroup", "the dead-letter client only produces")
	}
	if ts, _ := cl.OptValue(kgo.ConsumeTopics).([]string); len(ts) > 0 {
		return refuse("kgo.ConsumeTopics", "the dead-letter client only produces")
	}
	return &DeadLetterWriter{client: cl}, nil
}

// WriteDeadLetter produces dl to its topic and waits until every in-sync
// replica acknowledged it, the produce failed, or ctx is done. It implements
// stages.DeadLetterWriter. After ctx is done the dead letter may still be
// delivered: a message whose write was abandoned stays uncommitted, is
// delivered again and may be dead-lettered twice (at-least-once).
func (w *DeadLetterWriter) WriteDeadLetter(ctx context.Context, dl pipeline.DeadLetter) error {
	r := &kgo.Record{Topic: dl.Topic, Key: dl.Key, Value: dl.Value}
	if len(dl.Headers) > 0 {
		r.Headers = make([]kgo.RecordHeader, len(dl.Headers))
		for i, h := range dl.Headers {
			r.Headers[i] = kgo.RecordHeader{Key: h.Key, Value: h.Value}
		}
	}
	done := make(chan error, 1)
	w.client.Produce(ctx, r, func(_ *kgo.Record, err error) { done <- err })
	select {
	case err := <-done:
		if err != nil {
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("franz: dead letter of %s@%d to %s not acknowledged: %w", dl.Original, dl.Offset, dl.Topic, err)
			}
			return fmt.Errorf("franz: dead letter of %s@%d to %s not delivered: %w", dl.Original, dl.Offset, dl.Topic, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("franz: dead letter of %s@%d to %s not acknowledged yet: %w", dl.Original, dl.Offset, dl.Topic, ctx.Err())
	}
}

// deadLetterCheckTimeout bounds CheckDeadLetterTopic's metadata request
// when its context has no earlier deadline.
const deadLetterCheckTimeout = 10 * time.Second

// ErrDeadLetterTopicMissing is returned (wrapped, with the topic's name) by
// CheckDeadLetterTopic for a dead-letter topic the cluster does not have.
// It is the same value as kafka.ErrDeadLetterTopicMissing.
var ErrDeadLetterTopicMissing = kafkaclient.ErrDeadLetterTopicMissing

// CheckDeadLetterTopic asks the cluster for topic's metadata (a Metadata
// request, within ctx and at most 10 s) and returns an error naming the
// topic if it does not exist (wrapping ErrDeadLetterTopicMissing) or cannot
// be read. It implements stages.DeadLetterTopicChecker:
// stages.DeadLetterQueue calls it as it starts, so that a missing
// dead-letter topic stops Consume at once, with an error that says so,
// rather than at the first dead letter: kgo fails a write to a topic that
// does not exist only after kgo.UnknownTopicRetries metadata loads (4 by
// default; with -1, never: the write then waits for its context, or for
// kgo.RecordDeliveryTimeout, unbounded by default).
//
// With kgo.AllowAutoTopicCreation, the request lets the broker create the
// topic (if its auto.create.topics.enable allows). A retriable error of the
// topic (a leader being elected, a topic being created) passes the check:
// the writes wait for it.
func (w *DeadLetterWriter) CheckDeadLetterTopic(ctx context.Context, topic string) error {
	ctx, cancel := context.WithTimeout(ctx, deadLetterCheckTimeout)
	defer cancel()
	req := kmsg.NewPtrMetadataRequest()
	rt := kmsg.NewMetadataRequestTopic()
	rt.Topic = kmsg.StringPtr(topic)
	req.Topics = append(req.Topics, rt)
	req.AllowAutoTopicCreation, _ = w.client.OptValue(kgo.AllowAutoTopicCreation).(bool)
	resp, err := req.RequestWith(ctx, w.client)
	if err != nil {
		return fmt.Errorf("franz: dead-letter topic %s: metadata: %w", topic, err)
	}
	for _, t := range resp.Topics {
		if t.Topic == nil || *t.Topic != topic {
			continue
		}
		switch err := kerr.ErrorForCode(t.ErrorCode); {
		case errors.Is(err, kerr.UnknownTopicOrPartition):
			return fmt.Errorf("%w: %s", ErrDeadLetterTopicMissing, topic)
		case err == nil || kerr.IsRetriable(err):
			return nil
		default:
			return fmt.Errorf("franz: dead-letter topic %s: %w", topic, err)
		}
	}
	return fmt.Errorf("%w: %s", ErrDeadLetterTopicMissing, topic)
}

// Client returns the producer client, for metrics.
func (w *DeadLetterWriter) Client() *kgo.Client { return w.client }

// Close waits up to 10 s for dead letters still buffered (writes abandoned
// by a cancelled context), then closes the client. It returns an error if
// some were not delivered by then. Writes after Close fail. Close may be
// called more than once.
func (w *DeadLetterWriter) Close() error {
	w.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), deadLetterCloseTimeout)
		defer cancel()
		if err := w.client.Flush(ctx); err != nil {
			w.closeErr = fmt.Errorf("franz: closing dead-letter writer: %d dead letters not delivered: %w", w.client.BufferedProduceRecords(), err)
		}
		w.client.Close()
	})
	return w.closeErr
}
