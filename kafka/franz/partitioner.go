package franz

import (
	"context"

	"github.com/twmb/franz-go/pkg/kgo"
)

// outputPartitioner places a Transactor's output records as
// pipeline.Record says: a record with a Partition goes there, as
// kgo.ManualPartitioner places every record; one without goes where kgo's
// default partitioner puts it, which is where Kafka's Java clients put it
// (KIP-794's uniform sticky partitioner): murmur2 of the key, its sign bit
// cleared, modulo the partition count (kgo.KafkaHasher), and a sticky
// partition for a nil key.
type outputPartitioner struct{}

// placedKey marks, in a kgo.Record's Context, a record whose Partition is
// given.
type placedKey struct{}

// placedContext is the Context of the output records whose Partition is
// given (kgo sets a record's Context only when it is nil, and uses it for
// nothing but hooks).
var placedContext = context.WithValue(context.Background(), placedKey{}, true)

func placed(r *kgo.Record) bool { return r.Context != nil && r.Context.Value(placedKey{}) != nil }

// byKey is kgo's default partitioner (kgo's config.go), which hashes keys
// with Kafka's murmur2 (a nil hasher is kgo.KafkaHasher(murmur2)).
func byKey() kgo.Partitioner { return kgo.UniformBytesPartitioner(64<<10, true, true, nil) }

func (outputPartitioner) ForTopic(topic string) kgo.TopicPartitioner {
	return &outputTopicPartitioner{byKey: byKey().ForTopic(topic)}
}

type outputTopicPartitioner struct{ byKey kgo.TopicPartitioner }

// RequiresConsistency is true for a placed record: its partition is
// chosen among all of the topic's, not only those that can be written now.
func (p *outputTopicPartitioner) RequiresConsistency(r *kgo.Record) bool {
	return placed(r) || p.byKey.RequiresConsistency(r)
}

func (p *outputTopicPartitioner) Partition(r *kgo.Record, n int) int {
	if placed(r) {
		return int(r.Partition)
	}
	return p.byKey.Partition(r, n)
}

// PartitionByBackup serves kgo's default partitioner, which partitions by
// backlog (kgo.TopicBackupPartitioner) and never by Partition.
func (p *outputTopicPartitioner) PartitionByBackup(r *kgo.Record, n int, backup kgo.TopicBackupIter) int {
	if placed(r) {
		return int(r.Partition)
	}
	if bp, ok := p.byKey.(kgo.TopicBackupPartitioner); ok {
		return bp.PartitionByBackup(r, n, backup)
	}
	return p.byKey.Partition(r, n)
}

var _ kgo.TopicBackupPartitioner = (*outputTopicPartitioner)(nil)
