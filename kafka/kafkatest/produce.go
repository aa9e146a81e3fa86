package kafkatest

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka/internal/murmur2"
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
	// choose it from the key as Kafka's default (Java) partitioner does: the
	// positive murmur2 hash of the key modulo the number of partitions. A
	// record with neither a key nor a partition goes to partitions
	// round-robin. Produce sets it to the partition written.
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
			kr.Partition = murmur2.Partition(r.Key, n)
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
