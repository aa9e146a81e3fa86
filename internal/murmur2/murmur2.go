// Package murmur2 is how Kafka's default (Java) partitioner picks a key's
// partition, which package kafkatest's Produce follows and this module's
// tests and benchmarks predict.
package murmur2

// Partition returns the partition, of a topic with the given number of
// partitions, that Kafka's default (Java) partitioner picks for a non-nil
// key: the positive murmur2 hash of the key modulo partitions. librdkafka
// does the same with partitioner=murmur2_random (its own default,
// consistent_random, hashes with CRC32 instead).
func Partition(key []byte, partitions int) int32 {
	return int32((Hash(key) & 0x7fffffff) % uint32(partitions))
}

// Hash is Kafka's murmur2 hash (org.apache.kafka.common.utils.Utils).
func Hash(data []byte) uint32 {
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
