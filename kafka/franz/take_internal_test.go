package franz

import (
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka/pipeline"
)

// BenchmarkTakeMessages measures the conversion of buffered records into
// messages (string keys, []byte values, no headers), in batches of 256 as
// the pipeline asks for them: ns/op is per message.
func BenchmarkTakeMessages(b *testing.B) {
	s := &Source[string, []byte]{keyDeser: String, valueDeser: Bytes}
	const batch = 256
	recs := make([]kgo.Record, batch)
	ptrs := make([]*kgo.Record, batch)
	value := make([]byte, 100)
	for i := range recs {
		recs[i] = kgo.Record{Topic: "t", Partition: int32(i % 12), Offset: int64(i),
			Key: fmt.Appendf(nil, "key-%d", i%1000), Value: value, Timestamp: time.Now()}
	}
	dst := make([]*pipeline.Message[string, []byte], 0, batch)
	b.ReportAllocs()
	for i := 0; i < b.N; i += batch {
		for j := range ptrs {
			ptrs[j] = &recs[j]
		}
		s.buf.add(ptrs)
		dst = dst[:0]
		s.takeMessages(&dst, min(batch, b.N-i), 0)
	}
}

// interleave takes interleaveRun records of each partition in turn, and
// keeps each partition's order.
func TestInterleave(t *testing.T) {
	mk := func(p int32, n int) []*kgo.Record {
		recs := make([]*kgo.Record, n)
		for i := range recs {
			recs[i] = &kgo.Record{Partition: p, Offset: int64(i)}
		}
		return recs
	}
	var b recordBuffer
	b.add(mk(9, 1)) // an earlier poll's record comes first
	b.interleave([][]*kgo.Record{mk(0, 2*interleaveRun+5), mk(1, 3), mk(2, interleaveRun+1)})
	type run struct {
		p    int32
		from int64
		n    int
	}
	want := []run{{9, 0, 1}, {0, 0, interleaveRun}, {1, 0, 3}, {2, 0, interleaveRun},
		{0, interleaveRun, interleaveRun}, {2, interleaveRun, 1}, {0, 2 * interleaveRun, 5}}
	var got []run
	for r := b.next(); r != nil; r = b.next() {
		if l := len(got) - 1; l >= 0 && got[l].p == r.Partition && got[l].from+int64(got[l].n) == r.Offset {
			got[l].n++
			continue
		}
		got = append(got, run{r.Partition, r.Offset, 1})
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("order %v, want %v", got, want)
	}
}
