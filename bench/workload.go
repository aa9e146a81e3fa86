package main

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"time"

	"github.com/parallafka/parallafka/internal/keyed"
	"github.com/parallafka/parallafka/internal/murmur2"
)

// workload is one generated sequence of messages: for each message its key,
// its partition (Kafka's default partitioner on the key), its sequence
// number within its key and its nominal handler duration. Every run and
// baseline of a sweep consumes the same workload.
type workload struct {
	dist       string
	zipfS      float64
	keys       int
	partitions int
	n          int // messages in the topic

	keyOf   []int32         // message → key
	partOf  []int32         // message → partition
	seq     []int32         // message → position among its key's messages
	nominal []time.Duration // message → nominal handler duration (sleep models)

	keyNames []string
	keyBytes [][]byte
	value    []byte // every message's value (the bytes are shared)

	// byPart lists each partition's messages in offset order; base is the
	// offset of each partition's first message (0 on the in-memory source
	// and in a fresh topic).
	byPart [][]int32
	base   []int64
}

func newWorkload(c *config, dist string, keys int) *workload {
	w := &workload{
		dist: dist, zipfS: c.zipfS, keys: keys, partitions: c.partitions, n: c.backlog,
		keyOf: make([]int32, c.backlog), partOf: make([]int32, c.backlog), seq: make([]int32, c.backlog),
		keyNames: make([]string, keys), keyBytes: make([][]byte, keys),
		byPart: make([][]int32, c.partitions), base: make([]int64, c.partitions),
		value: make([]byte, c.valueSize),
	}
	keyPart := make([]int32, keys)
	for k := range keys {
		w.keyBytes[k] = keyed.Key(k)
		w.keyNames[k] = string(w.keyBytes[k])
		keyPart[k] = murmur2.Partition(w.keyBytes[k], c.partitions)
	}
	rng := rand.New(rand.NewPCG(c.seed, uint64(keys)<<8|uint64(len(dist))))
	for i := range w.value {
		w.value[i] = byte('a' + rng.IntN(26))
	}
	draw := uniformKeys(rng, keys)
	if dist == "zipf" {
		draw = zipfKeys(rng, keys, c.zipfS)
	}
	count := make([]int32, keys)
	for i := range c.backlog {
		k := draw()
		w.keyOf[i], w.partOf[i], w.seq[i] = int32(k), keyPart[k], count[k]
		count[k]++
		w.byPart[keyPart[k]] = append(w.byPart[keyPart[k]], int32(i))
	}
	w.nominal = c.handler.nominal(c.backlog, rng)
	return w
}

func uniformKeys(rng *rand.Rand, keys int) func() int {
	return func() int { return rng.IntN(keys) }
}

// zipfKeys draws key k (from 0) with probability proportional to
// 1/(k+1)^s, by inverting the cumulative distribution.
func zipfKeys(rng *rand.Rand, keys int, s float64) func() int {
	cdf := make([]float64, keys)
	total := 0.0
	for k := range keys {
		total += math.Pow(float64(k+1), -s)
		cdf[k] = total
	}
	return func() int {
		u := rng.Float64() * total
		return min(sort.SearchFloat64s(cdf, u), keys-1)
	}
}

// index returns the message at offset of partition p, or -1.
func (w *workload) index(p int32, offset int64) int32 {
	if p < 0 || int(p) >= len(w.byPart) {
		return -1
	}
	j := offset - w.base[p]
	if j < 0 || j >= int64(len(w.byPart[p])) {
		return -1
	}
	return w.byPart[p][j]
}

func (w *workload) String() string {
	if w.dist == "zipf" {
		return fmt.Sprintf("zipf(s=%g) over %d keys", w.zipfS, w.keys)
	}
	return fmt.Sprintf("uniform over %d keys", w.keys)
}

// hottestKeyShare returns the fraction of messages of the most frequent key.
func (w *workload) hottestKeyShare() float64 {
	count := make([]int, w.keys)
	top := 0
	for _, k := range w.keyOf {
		count[k]++
		top = max(top, count[k])
	}
	return float64(top) / float64(len(w.keyOf))
}

// hotKeys marks the k keys with the most messages in the workload (ties
// go to the lower key index) and returns how many messages they have.
// Key indexes are not a rank: a zipf draw makes key 0 the likeliest, not
// certainly the most frequent, and a uniform one ranks no key.
func (w *workload) hotKeys(k int) (hot []bool, messages int) {
	count := make([]int, w.keys)
	for _, key := range w.keyOf {
		count[key]++
	}
	rank := make([]int, w.keys)
	for i := range rank {
		rank[i] = i
	}
	slices.SortStableFunc(rank, func(a, b int) int { return count[b] - count[a] })
	hot = make([]bool, w.keys)
	for _, key := range rank[:min(k, w.keys)] {
		hot[key] = true
		messages += count[key]
	}
	return hot, messages
}
