package kafkatest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
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

// defaultAdminTimeout bounds every helper whose ctx has no earlier deadline,
// so a broker in a bad state fails a test rather than hanging it.
const defaultAdminTimeout = 30 * time.Second

// retryBackoff is the pause between two tries of a request that failed with
// a retriable error.
const retryBackoff = 50 * time.Millisecond

// errUnknownTopic is returned (wrapped) by the helpers for a topic that
// does not exist: errors.Is(err, kafka.ErrUnknownTopic) matches it.
var errUnknownTopic = kafkaclient.ErrUnknownTopic

var uniqueSeq atomic.Uint64

// uniqueRun tells apart test processes that share a real broker.
var uniqueRun = func() string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return fmt.Sprintf("%08x", time.Now().UnixNano()&0xffffffff)
	}
	return hex.EncodeToString(b[:])
}()

// UniqueTopic returns a topic name that starts with prefix (characters that
// Kafka does not allow in topic names, such as the '/' of a subtest's name,
// become '_') and is unique across goroutines and processes, so parallel
// tests on a shared real broker never collide. The names are valid
// consumer-group ids as well.
func UniqueTopic(prefix string) string {
	var sb strings.Builder
	for _, r := range prefix {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			sb.WriteRune(r)
		default:
			sb.WriteByte('_')
		}
	}
	p := sb.String()
	if p == "" {
		p = "topic"
	}
	suffix := fmt.Sprintf("-%s-%d", uniqueRun, uniqueSeq.Add(1))
	if limit := 249 - len(suffix); len(p) > limit {
		p = p[:limit]
	}
	return p + suffix
}

// CreateTopic creates topic with the given number of partitions (and the
// broker's default replication factor), then waits until every partition
// has a leader and answers offset requests, so that producers and consumers
// can use the topic at once. If the topic already exists with that number of
// partitions, CreateTopic only waits; with another number it fails.
func (c *Cluster) CreateTopic(ctx context.Context, topic string, partitions int) error {
	if partitions <= 0 {
		return fmt.Errorf("kafkatest: creating topic %q: partitions must be positive, got %d", topic, partitions)
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	cl, err := c.kgoClient()
	if err != nil {
		return err
	}

	req := kmsg.NewPtrCreateTopicsRequest()
	req.TimeoutMillis = int32(defaultAdminTimeout / time.Millisecond)
	rt := kmsg.NewCreateTopicsRequestTopic()
	rt.Topic = topic
	rt.NumPartitions = int32(partitions)
	rt.ReplicationFactor = -1 // the broker's default
	req.Topics = append(req.Topics, rt)

	err = retry(ctx, func() error {
		resp, err := req.RequestWith(ctx, cl)
		if err != nil {
			return err
		}
		if len(resp.Topics) != 1 {
			return fmt.Errorf("kafkatest: CreateTopics answered %d topics for one", len(resp.Topics))
		}
		t := resp.Topics[0]
		if err := kerr.ErrorForCode(t.ErrorCode); err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
			if t.ErrorMessage != nil {
				err = fmt.Errorf("%w: %s", err, *t.ErrorMessage)
			}
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("kafkatest: creating topic %q: %w", topic, err)
	}

	// Wait for the topic to be usable: all partitions present with a
	// leader, and every leader answering ListOffsets.
	err = retry(ctx, func() error {
		n, err := c.partitionCount(ctx, cl, topic)
		if errors.Is(err, errUnknownTopic) {
			// A real broker's metadata lags the creation a little.
			return kerr.LeaderNotAvailable
		}
		if err != nil {
			return err
		}
		if n != partitions {
			return fmt.Errorf("%w: topic %q exists with %d partitions, not %d", errPermanent, topic, n, partitions)
		}
		_, err = c.listOffsets(ctx, cl, topic, n, -1)
		return err
	})
	if err != nil {
		return fmt.Errorf("kafkatest: waiting for topic %q: %w", topic, err)
	}
	return nil
}

// DeleteTopic deletes topic. Deleting a topic that does not exist is not an
// error.
func (c *Cluster) DeleteTopic(ctx context.Context, topic string) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	cl, err := c.kgoClient()
	if err != nil {
		return err
	}
	req := kmsg.NewPtrDeleteTopicsRequest()
	req.TimeoutMillis = int32(defaultAdminTimeout / time.Millisecond)
	req.TopicNames = []string{topic}
	rt := kmsg.NewDeleteTopicsRequestTopic()
	rt.Topic = kmsg.StringPtr(topic)
	req.Topics = append(req.Topics, rt)
	err = retry(ctx, func() error {
		resp, err := req.RequestWith(ctx, cl)
		if err != nil {
			return err
		}
		for _, t := range resp.Topics {
			if err := kerr.ErrorForCode(t.ErrorCode); err != nil && !errors.Is(err, kerr.UnknownTopicOrPartition) {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("kafkatest: deleting topic %q: %w", topic, err)
	}
	return nil
}

// Partitions returns the number of partitions of topic, or an error wrapping
// kafka.ErrUnknownTopic if it does not exist.
func (c *Cluster) Partitions(ctx context.Context, topic string) (int, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	cl, err := c.kgoClient()
	if err != nil {
		return 0, err
	}
	var n int
	err = retry(ctx, func() error {
		var err error
		n, err = c.partitionCount(ctx, cl, topic)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("kafkatest: describing topic %q: %w", topic, err)
	}
	return n, nil
}

// EndOffsets returns the end offset (high watermark: the offset the next
// record will get) of every partition of topic.
func (c *Cluster) EndOffsets(ctx context.Context, topic string) (map[int32]int64, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	cl, err := c.kgoClient()
	if err != nil {
		return nil, err
	}
	var offsets map[int32]int64
	err = retry(ctx, func() error {
		n, err := c.partitionCount(ctx, cl, topic)
		if err != nil {
			return err
		}
		offsets, err = c.listOffsets(ctx, cl, topic, n, -1)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("kafkatest: end offsets of %q: %w", topic, err)
	}
	return offsets, nil
}

// CommittedOffsets returns the offsets that group has committed for the
// partitions of topic: the next offset to read, as committed. Partitions
// without a committed offset are absent from the map; a group that never
// committed gives an empty map.
func (c *Cluster) CommittedOffsets(ctx context.Context, group, topic string) (map[int32]int64, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	cl, err := c.kgoClient()
	if err != nil {
		return nil, err
	}
	var offsets map[int32]int64
	err = retry(ctx, func() error {
		n, err := c.partitionCount(ctx, cl, topic)
		if err != nil {
			return err
		}
		offsets, err = offsetFetch(ctx, cl, group, topic, n)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("kafkatest: committed offsets of group %q on %q: %w", group, topic, err)
	}
	return offsets, nil
}

// partitionCount asks the brokers for topic's metadata. A topic whose
// partitions lack a leader gives a retriable error.
func (c *Cluster) partitionCount(ctx context.Context, cl *kgo.Client, topic string) (int, error) {
	req := kmsg.NewPtrMetadataRequest()
	rt := kmsg.NewMetadataRequestTopic()
	rt.Topic = kmsg.StringPtr(topic)
	req.Topics = append(req.Topics, rt)
	req.AllowAutoTopicCreation = false
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return 0, err
	}
	for _, t := range resp.Topics {
		if t.Topic == nil || *t.Topic != topic {
			continue
		}
		if err := kerr.ErrorForCode(t.ErrorCode); err != nil {
			if errors.Is(err, kerr.UnknownTopicOrPartition) {
				return 0, &unknownTopicError{topic: topic}
			}
			return 0, err
		}
		for _, p := range t.Partitions {
			if err := kerr.ErrorForCode(p.ErrorCode); err != nil && !errors.Is(err, kerr.ReplicaNotAvailable) {
				return 0, err
			}
			if p.Leader < 0 {
				return 0, kerr.LeaderNotAvailable
			}
		}
		return len(t.Partitions), nil
	}
	return 0, &unknownTopicError{topic: topic}
}

// listOffsets returns the offsets of topic's n partitions at timestamp (-1
// for the end, -2 for the start).
func (c *Cluster) listOffsets(ctx context.Context, cl *kgo.Client, topic string, n int, timestamp int64) (map[int32]int64, error) {
	req := kmsg.NewPtrListOffsetsRequest()
	req.ReplicaID = -1
	rt := kmsg.NewListOffsetsRequestTopic()
	rt.Topic = topic
	for p := range n {
		rp := kmsg.NewListOffsetsRequestTopicPartition()
		rp.Partition = int32(p)
		rp.CurrentLeaderEpoch = -1
		rp.Timestamp = timestamp
		rt.Partitions = append(rt.Partitions, rp)
	}
	req.Topics = append(req.Topics, rt)

	offsets := make(map[int32]int64, n)
	for _, shard := range cl.RequestSharded(ctx, req) {
		if shard.Err != nil {
			return nil, shard.Err
		}
		resp := shard.Resp.(*kmsg.ListOffsetsResponse)
		for _, t := range resp.Topics {
			if t.Topic != topic {
				continue
			}
			for _, p := range t.Partitions {
				if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
					return nil, fmt.Errorf("partition %d: %w", p.Partition, err)
				}
				offsets[p.Partition] = p.Offset
			}
		}
	}
	if len(offsets) != n {
		return nil, fmt.Errorf("%w: ListOffsets answered %d of %d partitions", kerr.LeaderNotAvailable, len(offsets), n)
	}
	return offsets, nil
}

// offsetFetch returns group's committed offsets for topic's n partitions.
func offsetFetch(ctx context.Context, cl *kgo.Client, group, topic string, n int) (map[int32]int64, error) {
	req := kmsg.NewPtrOffsetFetchRequest()
	rg := kmsg.NewOffsetFetchRequestGroup()
	rg.Group = group
	rt := kmsg.NewOffsetFetchRequestGroupTopic()
	rt.Topic = topic
	for p := range n {
		rt.Partitions = append(rt.Partitions, int32(p))
	}
	rg.Topics = append(rg.Topics, rt)
	req.Groups = append(req.Groups, rg)

	offsets := make(map[int32]int64, n)
	add := func(partition int32, offset int64, code int16) error {
		if err := kerr.ErrorForCode(code); err != nil {
			return fmt.Errorf("partition %d: %w", partition, err)
		}
		if offset >= 0 {
			offsets[partition] = offset
		}
		return nil
	}
	for _, shard := range cl.RequestSharded(ctx, req) {
		if shard.Err != nil {
			return nil, shard.Err
		}
		resp := shard.Resp.(*kmsg.OffsetFetchResponse)
		if err := kerr.ErrorForCode(resp.ErrorCode); err != nil {
			if errors.Is(err, kerr.GroupIDNotFound) {
				continue
			}
			return nil, err
		}
		for _, g := range resp.Groups {
			if g.Group != group {
				continue
			}
			if err := kerr.ErrorForCode(g.ErrorCode); err != nil {
				if errors.Is(err, kerr.GroupIDNotFound) {
					continue // kfake's answer for a group that never committed
				}
				return nil, err
			}
			for _, t := range g.Topics {
				if t.Topic != topic {
					continue
				}
				for _, p := range t.Partitions {
					if err := add(p.Partition, p.Offset, p.ErrorCode); err != nil {
						return nil, err
					}
				}
			}
		}
		for _, t := range resp.Topics { // answers below v8
			if t.Topic != topic {
				continue
			}
			for _, p := range t.Partitions {
				if err := add(p.Partition, p.Offset, p.ErrorCode); err != nil {
					return nil, err
				}
			}
		}
	}
	return offsets, nil
}

type unknownTopicError struct{ topic string }

func (e *unknownTopicError) Error() string { return fmt.Sprintf("%v %q", errUnknownTopic, e.topic) }
func (e *unknownTopicError) Unwrap() error { return errUnknownTopic }

// errPermanent marks an error that retry must not retry.
var errPermanent = errors.New("kafkatest")

// retry runs fn until it succeeds, fails with an error that is not
// retriable, or ctx is done; then it returns fn's last error.
func retry(ctx context.Context, fn func() error) error {
	for {
		err := fn()
		if err == nil || !retriable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %w)", ctx.Err(), err)
		case <-time.After(retryBackoff):
		}
	}
}

func retriable(err error) bool {
	if errors.Is(err, errPermanent) || errors.Is(err, errUnknownTopic) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, errClosed) {
		return false
	}
	switch {
	case kerr.IsRetriable(err),
		errors.Is(err, kerr.LeaderNotAvailable),
		errors.Is(err, kerr.NotLeaderForPartition),
		errors.Is(err, kerr.CoordinatorLoadInProgress),
		errors.Is(err, kerr.CoordinatorNotAvailable),
		errors.Is(err, kerr.NotCoordinator),
		errors.Is(err, kerr.OffsetNotAvailable),
		errors.Is(err, kerr.UnstableOffsetCommit),
		errors.Is(err, kerr.RequestTimedOut):
		return true
	}
	var ke *kerr.Error
	// Errors that are not Kafka error codes (connection refused, EOF)
	// are transient as far as a test helper can tell.
	return !errors.As(err, &ke)
}

// withDefaultTimeout bounds ctx by defaultAdminTimeout.
func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, defaultAdminTimeout)
}
