// Package keyed is the keyed test corpus of this module's Kafka tests:
// records spread over numbered keys, each value carrying its key and its
// sequence number within the key, so that a consumer can check per-key
// order and completeness.
package keyed

import (
	"bytes"
	"context"
	"fmt"
	"strconv"

	"github.com/parallafka/parallafka/kafka/kafkatest"
)

// Produce writes n records to topic on c, spread over keys distinct keys:
// record i has key [Key](i % keys) and value [Value](i % keys, i / keys).
// Records are partitioned by key (Partition [kafkatest.AnyPartition]), so
// each key's records land in one partition in sequence order. The produced
// records, with partitions and offsets, are returned.
func Produce(ctx context.Context, c *kafkatest.Cluster, topic string, n, keys int) ([]kafkatest.Record, error) {
	if keys <= 0 {
		return nil, fmt.Errorf("keyed.Produce: keys must be positive, got %d", keys)
	}
	records := make([]kafkatest.Record, n)
	for i := range records {
		k, seq := i%keys, i/keys
		records[i] = kafkatest.Record{
			Key:       Key(k),
			Value:     Value(k, seq),
			Partition: kafkatest.AnyPartition,
		}
	}
	if err := c.Produce(ctx, topic, records); err != nil {
		return nil, err
	}
	return records, nil
}

// Key returns the key that [Produce] uses for key number k: "key-" and k in
// at least five digits, such as "key-00042".
func Key(k int) []byte {
	return fmt.Appendf(nil, "key-%05d", k)
}

// Value returns the value that [Produce] writes for the seq-th record (from
// 0) of key number k: the key, '/' and seq, such as "key-00042/17".
func Value(k, seq int) []byte {
	return fmt.Appendf(Key(k), "/%d", seq)
}

// Parse parses a value written by [Produce] into the record's key and its
// sequence number within that key.
func Parse(value []byte) (key string, seq int, err error) {
	i := bytes.LastIndexByte(value, '/')
	if i < 0 {
		return "", 0, fmt.Errorf("keyed: %q is not a keyed value", value)
	}
	seq, err = strconv.Atoi(string(value[i+1:]))
	if err != nil || seq < 0 {
		return "", 0, fmt.Errorf("keyed: %q is not a keyed value", value)
	}
	return string(value[:i]), seq, nil
}
