package kafka

import (
	"errors"
	"fmt"
	"strings"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/parallafka/parallafka/internal/kafkaclient"
)

// ErrUnreachable is matched by the error of Poll when no broker answered
// within the startup timeout (WithStartupTimeout) after Subscribe: a wrong
// bootstrap.servers, a broker that is down, a network or security setting
// that keeps the client out. It is the same value as franz.ErrUnreachable
// (package kafka/franz), so either name matches either client's error.
var ErrUnreachable = kafkaclient.ErrUnreachable

// ErrUnknownTopic is matched by the error of Poll when a subscribed topic
// does not exist on the cluster (and the consumer does not create it:
// allow.auto.create.topics is off by default), and by the errors of
// package kafkatest's topic helpers for a topic that does not exist. It is
// the same value as franz.ErrUnknownTopic.
var ErrUnknownTopic = kafkaclient.ErrUnknownTopic

// metadataTimeout bounds the metadata request that confirms an
// unknown-topic error.
const metadataTimeout = 5 * time.Second

// confirmTimeout is how long before the startup deadline the metadata
// request that confirms no broker answers begins: the request ends by the
// deadline, so Poll gives up within a poll timeout of it, not a metadata
// timeout after it.
const confirmTimeout = time.Second

// lateConfirmTimeout bounds that request when Poll comes back past the
// deadline already.
const lateConfirmTimeout = 100 * time.Millisecond

// startup tracks whether a broker answered since Subscribe. Owned by the
// goroutine calling Poll.
type startup struct {
	timeout  time.Duration // 0: never give up
	deadline time.Time
	answered bool  // a broker answered: a rebalance, a message, metadata
	lastErr  error // the last client error while none had answered
	topicErr bool  // an unknown-topic error arrived: check the metadata
}

func (st *startup) begin(now time.Time) { st.deadline = now.Add(st.timeout) }

// clientError notes a client error event.
func (st *startup) clientError(err error) {
	var kerr ckafka.Error
	if errors.As(err, &kerr) && (kerr.Code() == ckafka.ErrUnknownTopicOrPart || kerr.Code() == ckafka.ErrUnknownTopic) {
		st.topicErr = true
	}
	if !st.answered {
		st.lastErr = err
	}
}

// checkStartup returns the error that ends Poll at startup, if any: an
// unknown-topic error the metadata confirms, or no broker answering within
// the startup timeout.
func (s *Source[K, V]) checkStartup(now time.Time) error {
	st := &s.startup
	if st.topicErr {
		st.topicErr = false
		if md, err := s.consumer.GetMetadata(nil, true, millis(metadataTimeout)); err == nil {
			st.answered = true
			if err := s.missingTopics(md); err != nil {
				return err
			}
		}
	}
	if st.answered || st.timeout == 0 || now.Before(st.deadline.Add(-min(confirmTimeout, st.timeout/2))) {
		return nil
	}
	md, err := s.consumer.GetMetadata(nil, true, millis(max(st.deadline.Sub(now), lateConfirmTimeout)))
	if err != nil {
		if time.Now().Before(st.deadline) {
			return nil // asked again at the next Poll, until the deadline
		}
		cause := st.lastErr
		if cause == nil {
			cause = err
		}
		return fmt.Errorf("%w: no broker answered within %v: %w", ErrUnreachable, st.timeout, cause)
	}
	st.answered = true
	return s.missingTopics(md)
}

// missingTopics returns an error matching ErrUnknownTopic if a subscribed
// topic (not a regular expression) is not in md.
func (s *Source[K, V]) missingTopics(md *ckafka.Metadata) error {
	var missing []string
	for _, t := range s.topics {
		if strings.HasPrefix(t, "^") {
			continue
		}
		tm, ok := md.Topics[t]
		if !ok || tm.Error.Code() == ckafka.ErrUnknownTopicOrPart || tm.Error.Code() == ckafka.ErrUnknownTopic {
			missing = append(missing, t)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s does not exist", ErrUnknownTopic, strings.Join(missing, ", "))
}
