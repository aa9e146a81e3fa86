package kafkatest

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka/pipeline"
)

// AnyPartition is the [Record.Partition] that lets Produce choose the
// partition from the key.
const AnyPartition int32 = -1

// Record is a record to produce with [Cluster.Produce].
type Record struct {
	// Key and Value are the record's key and value; either may be nil.
	Key, Value []byte
	// Partition is the partition to write to, or -1 ([AnyPartition]) to
	// choose it from the
	// key as Kafka's default (Java) partitioner does: murmur2 of the key,
	// see [PartitionFor]. A record with neither a key nor a partition goes
	// to partitions round-robin. Produce sets it to the partition written.
	//
	// Note that the zero value is partition 0, not -1.
	Partition int32
	// Headers are the record's headers.
	Headers []pipeline.Header
	// Timestamp is the record's create time; zero means now.
	Timestamp time.Time
	// Offset is set by Produce to the offset the record got.
	Offset int64
}

var roundRobin atomic.Uint32

// Produce writes records to topic and returns once all of them are
// acknowledged by all in-sync replicas (acks=all), or the first error. The
// records are sent in batches by one franz-go client, in order per
// partition, idempotently. On success Produce sets each record's Partition
// and Offset. Produce fails with an error wrapping kafka.ErrUnknownTopic if topic
// does not exist (it never creates topics) and rejects a partition that is
// out of range.
func (c *Cluster) Produce(ctx context.Context, topic string, records []Record) error {
	if len(records) == 0 {
		return nil
	}
	n, err := c.Partitions(ctx, topic)
	if err != nil {
		return err
	}
	cl, err := c.kgoClient()
	if err != nil {
		return err
	}

	krs := make([]kgo.Record, len(records))
	ptrs := make([]*kgo.Record, len(records))
	rr := roundRobin.Add(1)
	for i := range records {
		r := &records[i]
		kr := &krs[i]
		kr.Topic = topic
		kr.Key = r.Key
		kr.Value = r.Value
		kr.Timestamp = r.Timestamp
		switch {
		case r.Partition >= int32(n):
			return fmt.Errorf("kafkatest: producing to %q: record %d: partition %d out of range, the topic has %d", topic, i, r.Partition, n)
		case r.Partition >= 0:
			kr.Partition = r.Partition
		case r.Key != nil:
			kr.Partition = PartitionFor(r.Key, n)
		default:
			kr.Partition = int32(rr % uint32(n))
			rr++
		}
		if len(r.Headers) > 0 {
			kr.Headers = make([]kgo.RecordHeader, len(r.Headers))
			for j, h := range r.Headers {
				kr.Headers[j] = kgo.RecordHeader{Key: h.Key, Value: h.Value}
			}
		}
		ptrs[i] = kr
	}

	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	results := cl.ProduceSync(ctx, ptrs...)
	if err := results.FirstErr(); err != nil {
		return fmt.Errorf("kafkatest: producing to %q: %w", topic, err)
	}
	for i := range records {
		records[i].Partition = krs[i].Partition
		records[i].Offset = krs[i].Offset
	}
	return nil
}

// ProduceKeyed writes n records to topic, spread over keys distinct keys:
// record i has key [KeyedKey](i % keys) and a value that encodes the key and
// the record's sequence number within its key, i / keys (see
// [ParseKeyedValue]). Records are partitioned by key, as [Record] with
// Partition -1, so each key's records land in one partition in sequence
// order, which lets a test check per-key ordering and completeness. The
// produced records, with partitions and offsets, are returned.
func (c *Cluster) ProduceKeyed(ctx context.Context, topic string, n, keys int) ([]Record, error) {
	if keys <= 0 {
		return nil, fmt.Errorf("kafkatest: ProduceKeyed: keys must be positive, got %d", keys)
	}
	records := make([]Record, n)
	for i := range records {
		k, seq := i%keys, i/keys
		records[i] = Record{
			Key:       KeyedKey(k),
			Value:     KeyedValue(k, seq),
			Partition: AnyPartition,
		}
	}
	if err := c.Produce(ctx, topic, records); err != nil {
		return nil, err
	}
	return records, nil
}

// KeyedKey returns the key that [Cluster.ProduceKeyed] uses for key number k:
// "key-" and k in at least five digits, such as "key-00042".
func KeyedKey(k int) []byte {
	return fmt.Appendf(nil, "key-%05d", k)
}

// KeyedValue returns the value that [Cluster.ProduceKeyed] writes for the
// seq-th record (from 0) of key number k: the key, '/' and seq, such as
// "key-00042/17".
func KeyedValue(k, seq int) []byte {
	return fmt.Appendf(KeyedKey(k), "/%d", seq)
}

// ParseKeyedValue parses a value written by [Cluster.ProduceKeyed] into the
// record's key and its sequence number within that key.
func ParseKeyedValue(value []byte) (key string, seq int, err error) {
	i := bytes.LastIndexByte(value, '/')
	if i < 0 {
		return "", 0, fmt.Errorf("kafkatest: %q is not a keyed value", value)
	}
	seq, err = strconv.Atoi(string(value[i+1:]))
	if err != nil || seq < 0 {
		return "", 0, fmt.Errorf("kafkatest: %q is not a keyed value", value)
	}
	return string(value[:i]), seq, nil
}

// PartitionFor returns the partition, of a topic with the given number of
// partitions, that Kafka's default (Java) partitioner picks for a non-nil
// key: the positive murmur2 hash of the key modulo partitions. It is what
// [Cluster.Produce] uses, and what librdkafka does with
// partitioner=murmur2_random (librdkafka's own default, consistent_random,
// hashes with CRC32 instead).
func PartitionFor(key []byte, partitions int) int32 {
	return int32((murmur2(key) & 0x7fffffff) % uint32(partitions))
}

// murmur2 is Kafka's murmur2 hash (org.apache.kafka.common.utils.Utils).
func murmur2(data []byte) uint32 {
	const (
		seed = 0x9747b28c
		m    = 0x5bd1e995
		r    = 24
	)
	length := len(data)
	h := uint32(seed) ^ uint32(length)
	for i := 0; i+4 <= length; i += 4 {
		k := uint32(data[i]) | uint32(data[i+1])<<8 | uint32(data[i+2])<<16 | uint32(data[i+3])<<24
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	tail := data[length&^3:]
	switch len(tail) {
	case 3:
		h ^= uint32(tail[2]) << 16
		fallthrough
	case 2:
		h ^= uint32(tail[1]) << 8
		fallthrough
	case 1:
		h ^= uint32(tail[0])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return h
}
