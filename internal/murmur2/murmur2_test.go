package murmur2_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka/internal/murmur2"
)

func TestPartitionMatchesKafka(t *testing.T) {
	// franz-go's StickyKeyPartitioner(nil) partitions keys exactly as
	// Kafka's Java client does.
	kp := kgo.StickyKeyPartitioner(nil).ForTopic("t")
	for _, n := range []int{1, 2, 3, 6, 7, 10, 64} {
		for i := range 500 {
			key := []byte(strings.Repeat("k", i%9) + fmt.Sprint(i))
			want := kp.Partition(&kgo.Record{Key: key}, n)
			if got := murmur2.Partition(key, n); got != int32(want) {
				t.Fatalf("key %q, %d partitions: %d, want %d", key, n, got, want)
			}
		}
	}
}
