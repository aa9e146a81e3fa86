package memctl_test

import (
	"testing"

	"github.com/parallafka/parallafka/internal/memctl"
	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/pipeline/memsource"
)

// TestReachesASourceAndWhatEmbedsOne checks that memctl works on a
// *memsource.Source, on a type that embeds one, and panics on anything else.
func TestReachesASourceAndWhatEmbedsOne(t *testing.T) {
	src := memsource.New[string, int]()
	src.AddTopic("t", 2)
	src.Produce("t", 1, "k", 1)
	tp := pipeline.TopicPartition{Topic: "t", Partition: 1}
	if n := memctl.Len(src, tp); n != 1 {
		t.Fatalf("Len = %d, want 1", n)
	}
	wrapped := struct{ *memsource.Source[string, int] }{src}
	if got := memctl.Partitions(wrapped); len(got) != 2 || got[1] != tp {
		t.Fatalf("Partitions = %v", got)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("no panic on a value that is not a memsource.Source")
		}
	}()
	memctl.Commits(42)
}
