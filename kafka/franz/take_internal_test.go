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
