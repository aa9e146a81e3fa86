package franz

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/parallafka/parallafka/internal/kafkaclient"
)

// ErrUnreachable is matched by the error of Poll when no broker answered
// within the startup timeout (WithStartupTimeout) after Subscribe: wrong
// seed brokers, a broker that is down, a network or security setting that
// keeps the client out. It is the same value as kafka.ErrUnreachable, so
// either name matches either client's error.
var ErrUnreachable = kafkaclient.ErrUnreachable

// ErrUnknownTopic is matched by the error of Poll when a subscribed topic
// does not exist on the cluster (and the client does not create it:
// kgo.AllowAutoTopicCreation is off by default). It is the same value as
// kafka.ErrUnknownTopic.
var ErrUnknownTopic = kafkaclient.ErrUnknownTopic

// waitingLogEvery spaces the Source's own "waiting for a broker" lines.
const waitingLogEvery = time.Second

// startup tracks whether a broker answered since Subscribe. Owned by the
// goroutine calling Poll, but for missing, set by the topic check.
type startup struct {
	timeout  time.Duration // 0: never give up
	deadline time.Time
	answered bool // a broker answered: a response, a rebalance
	topicErr bool // a poll reported an unknown topic: check again
	logged   time.Time
	missing  atomic.Pointer[error] // the topic check's verdict
}

func (st *startup) begin(now time.Time) {
	st.deadline = now.Add(st.timeout)
	st.logged = now
}

// checkStartup returns the error that ends Poll at startup, if any: a
// subscribed topic that the cluster does not have, or no broker answering
// within the startup timeout. While none answers it logs once a second.
func (s *Source[K, V]) checkStartup(now time.Time) error {
	st := &s.startup
	if err := st.missing.Load(); err != nil {
		return *err
	}
	if st.topicErr {
		st.topicErr = false
		s.startTopicCheck()
	}
	if st.answered {
		return nil
	}
	if s.b.lastOK.Load() != 0 {
		st.answered = true
		return nil
	}
	var cause error = errors.New("no answer yet")
	if e := s.b.failErr.Load(); e != nil {
		cause = *e
	}
	if st.timeout > 0 && !now.Before(st.deadline) {
		return fmt.Errorf("%w: no broker answered within %v: %w", ErrUnreachable, st.timeout, cause)
	}
	if now.Sub(st.logged) >= waitingLogEvery {
		st.logged = now
		s.logger().Warn("franz: waiting for a broker to answer", "error", cause, "since", now.Sub(st.deadline.Add(-st.timeout)).Round(time.Millisecond))
	}
	return nil
}

// startTopicCheck asks the cluster, in the background, whether the
// subscribed topics exist; Poll returns ErrUnknownTopic if one does not.
// It gives up when Close begins. Skipped if the client creates topics.
func (s *Source[K, V]) startTopicCheck() {
	if auto, _ := s.client.OptValue(kgo.AllowAutoTopicCreation).(bool); auto {
		return
	}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		s.checkTopics(s.bgCtx)
	}()
}

// checkTopics sends Metadata requests for the topics until one is answered
// or ctx ends.
func (s *Source[K, V]) checkTopics(ctx context.Context) {
	for ctx.Err() == nil {
		req := kmsg.NewPtrMetadataRequest()
		for _, t := range s.topics {
			rt := kmsg.NewMetadataRequestTopic()
			rt.Topic = kmsg.StringPtr(t)
			req.Topics = append(req.Topics, rt)
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := req.RequestWith(rctx, s.client)
		cancel()
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(250 * time.Millisecond):
			}
			continue
		}
		var missing []string
		for _, t := range resp.Topics {
			if errors.Is(kerr.ErrorForCode(t.ErrorCode), kerr.UnknownTopicOrPartition) && t.Topic != nil {
				missing = append(missing, *t.Topic)
			}
		}
		if len(missing) > 0 {
			err := fmt.Errorf("%w: %s does not exist", ErrUnknownTopic, strings.Join(missing, ", "))
			s.startup.missing.Store(&err)
		}
		return
	}
}
