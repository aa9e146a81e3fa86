package kafka_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka"
)

// The Source under the real pipeline: two pipelines share a group, the
// second joins halfway, both stop; every record is handled at least once
// and the group's committed offsets end at the end of each partition.
func TestPipelineOverSource(t *testing.T) {
	for _, strategy := range []string{"range", "cooperative-sticky"} {
		t.Run(strategy, func(t *testing.T) { testPipelineOverSource(t, strategy) })
	}
}

func testPipelineOverSource(t *testing.T, strategy string) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(0))
	require.NoError(t, err)
	t.Cleanup(cluster.Close)
	addrs := cluster.ListenAddrs()
	topic := "prices-" + strategy
	const partitions, perPartition = 4, 250
	require.NoError(t, cluster.CreateTopic(topic, partitions, nil))
	group := fmt.Sprintf("g-%s-%d", strategy, time.Now().UnixNano())

	produce := func(from, to int) {
		cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
		require.NoError(t, err)
		defer cl.Close()
		var recs []*kgo.Record
		for p := range int32(partitions) {
			for i := from; i < to; i++ {
				recs = append(recs, &kgo.Record{Topic: topic, Partition: p,
					Key: []byte(fmt.Sprintf("k%d", i%7)), Value: []byte(fmt.Sprintf("%d/%d", p, i))})
			}
		}
		require.NoError(t, cl.ProduceSync(context.Background(), recs...).FirstErr())
	}

	var mu sync.Mutex
	seen := map[string]int{}
	handler := func(_ context.Context, m *parallafka.Message[string, string]) error {
		mu.Lock()
		seen[m.Value]++
		mu.Unlock()
		return nil
	}
	distinct := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(seen)
	}

	w := &testWriter{t: t}
	t.Cleanup(func() { w.done.Store(true) }) // runs last: after the pipelines stopped
	logger := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
	start := func(name string) (stop func() error) {
		consumer, err := kafka.NewConsumer(&ckafka.ConfigMap{
			"bootstrap.servers":             strings.Join(addrs, ","),
			"group.id":                      group,
			"auto.offset.reset":             "earliest",
			"partition.assignment.strategy": strategy,
			"session.timeout.ms":            6000,
			"heartbeat.interval.ms":         250,
			"broker.address.family":         "v4",
		}, kafka.WithLogger(logger.With("member", name)))
		require.NoError(t, err)
		// A generous close timeout: A closes while the group rebalances
		// after B left, which took over 5 s (the default) on a loaded
		// 2-core machine; what is tested here is the handover, not speed.
		src, err := kafka.NewSource(consumer, []string{topic}, kafka.String, kafka.String,
			kafka.WithLogger(logger.With("member", name)), kafka.WithCloseTimeout(30*time.Second))
		require.NoError(t, err)
		p, err := parallafka.New(src, parallafka.WithMaxConcurrency(8), parallafka.WithMaxInFlight(64),
			parallafka.WithCommitInterval(50*time.Millisecond), parallafka.WithLogger(logger.With("member", name)))
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Consume(ctx, handler) }()
		var once sync.Once
		var stopErr error
		stop = func() error {
			once.Do(func() { cancel(); stopErr = <-done })
			return stopErr
		}
		t.Cleanup(func() { _ = stop() })
		return stop
	}

	produce(0, perPartition/2)
	stopA := start("A")
	waitUntil(t, "A handles something", func() bool { return distinct() > 0 })
	stopB := start("B")
	produce(perPartition/2, perPartition)
	waitUntil(t, "all records handled", func() bool { return distinct() == partitions*perPartition })
	waitUntil(t, "all offsets committed", func() bool {
		info := cluster.GroupInfo(group)
		if info == nil {
			return false
		}
		for p := range int32(partitions) {
			if info.Commits[topic][p].Offset != perPartition {
				return false
			}
		}
		return true
	})
	require.NoError(t, stopB())
	require.NoError(t, stopA())
	mu.Lock()
	defer mu.Unlock()
	assert.Len(t, seen, partitions*perPartition)
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testWriter logs to t until done.
type testWriter struct {
	t    *testing.T
	done atomic.Bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}
