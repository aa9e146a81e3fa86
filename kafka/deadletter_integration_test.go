package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka"
	"github.com/parallafka/parallafka/kafka/kafkatest"
	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/stages"
)

type order struct {
	ID int `json:"id"`
}

// fate is what the flaky handler does with record i.
func fate(i int) string {
	switch {
	case i%97 == 0:
		return "poison" // not JSON: never reaches the handler
	case i%10 == 3:
		return "cursed" // fails every attempt
	case i%31 == 5:
		return "permanent" // fails once, marked non-retryable
	case i%7 == 1:
		return "flaky" // fails its first attempt only
	}
	return "ok"
}

// A flaky handler with Retry and DeadLetterQueue, on a broker (embedded, or
// the one KAFKA_BROKERS names): every message ends either handled or in the
// dead-letter topic, none in both, none lost, none dead-lettered twice; the
// group's commits reach the end of every partition.
func TestDeadLetterIntegration(t *testing.T) {
	cluster := kafkatest.New(t)
	ctx := context.Background()
	topic, dlqTopic := kafkatest.UniqueTopic("orders"), kafkatest.UniqueTopic("orders-dlq")
	require.NoError(t, cluster.CreateTopic(ctx, topic, 3))
	require.NoError(t, cluster.CreateTopic(ctx, dlqTopic, 1))

	const n = 600
	records := make([]kafkatest.Record, n)
	for i := range records {
		value := fmt.Appendf(nil, `{"id":%d}`, i)
		if fate(i) == "poison" {
			value = fmt.Appendf(nil, `{"id":%d`, i)
		}
		records[i] = kafkatest.Record{Key: fmt.Appendf(nil, "customer-%d", i%40), Value: value, Partition: -1}
	}
	require.NoError(t, cluster.Produce(ctx, topic, records))
	index := map[string]int{} // partition/offset → i
	want := map[string]int{}  // fate → count
	for i, r := range records {
		index[fmt.Sprint(r.Partition, "/", r.Offset)] = i
		want[fate(i)]++
	}

	quiet := slog.New(slog.DiscardHandler)
	group := kafkatest.UniqueTopic("group")
	ccfg := cluster.ConsumerConfig(group)
	delete(*ccfg, "go.logs.channel.enable")
	consumer, err := kafka.NewConsumer(ccfg, kafka.WithLogger(quiet))
	require.NoError(t, err)
	src, err := kafka.NewSource(consumer, []string{topic}, kafka.String, kafka.JSON[order](), kafka.WithLogger(quiet))
	require.NoError(t, err)
	writer := newWriter(t, cluster.ProducerConfig())

	timeout, err := stages.Timeout[string, order](10 * time.Second)
	require.NoError(t, err)
	retry, err := stages.Retry[string, order](stages.RetryConfig{
		MaxAttempts: 3, InitialBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, Jitter: 0.2,
	})
	require.NoError(t, err)
	deadLetter, err := stages.DeadLetterQueue[string, order](stages.DeadLetterConfig{Writer: writer, Topic: dlqTopic})
	require.NoError(t, err)
	p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(16),
		parallafka.WithCommitInterval(20*time.Millisecond),
		parallafka.WithMiddleware(timeout),
		parallafka.WithAfterHandle("retry", retry),
		parallafka.WithAfterHandle("dead-letter", deadLetter))
	require.NoError(t, err)

	var mu sync.Mutex
	handled := map[string]int{} // partition/offset → successful handlings
	errCursed := errors.New("cursed order")
	h := func(ctx context.Context, m *parallafka.Message[string, order]) error {
		switch fate(m.Value.ID) {
		case "cursed":
			return errCursed
		case "permanent":
			return stages.NonRetryable(fmt.Errorf("order %d is invalid", m.Value.ID))
		case "flaky":
			if m.Attempt == 1 {
				return fmt.Errorf("order %d: service busy", m.Value.ID)
			}
		}
		mu.Lock()
		handled[fmt.Sprint(m.Partition, "/", m.Offset)]++
		mu.Unlock()
		return nil
	}

	end, err := cluster.EndOffsets(ctx, topic)
	require.NoError(t, err)
	consumeCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Consume(consumeCtx, h) }()
	deadline := time.After(2 * time.Minute)
	for committed := false; !committed; {
		select {
		case err := <-done:
			stop()
			t.Fatalf("Consume returned early: %v", err)
		case <-deadline:
			stop()
			<-done
			t.Fatalf("commits did not reach the end: %v of %v", p.Stats().Committed, end)
		case <-time.After(10 * time.Millisecond):
		}
		committed = true
		got := p.Stats().Committed
		for part, e := range end {
			if e > 0 && got[pipeline.TopicPartition{Topic: topic, Partition: part}] != e {
				committed = false
			}
		}
	}
	stop()
	require.NoError(t, <-done)
	require.NoError(t, writer.Close())

	dead := want["poison"] + want["cursed"] + want["permanent"]
	letters := readRecords(t, cluster, dlqTopic, dead)
	require.Len(t, letters, dead)
	lettered := map[string]bool{}
	for _, r := range letters {
		hs := headerMap(r)
		id := hs[stages.HeaderOriginalPartition] + "/" + hs[stages.HeaderOriginalOffset]
		i, ok := index[id]
		require.True(t, ok, "a dead letter for no record: %v", hs)
		require.False(t, lettered[id], "dead-lettered twice: record %d", i)
		lettered[id] = true
		assert.Equal(t, topic, hs[stages.HeaderOriginalTopic])
		assert.Equal(t, records[i].Key, r.Key)
		assert.Equal(t, records[i].Value, r.Value, "the original bytes, even when they do not parse")
		assert.NotEmpty(t, hs[stages.HeaderError])
		wantAttempts := map[string]string{"poison": "0", "cursed": "3", "permanent": "1"}[fate(i)]
		assert.Equal(t, wantAttempts, hs[stages.HeaderAttempts], "record %d (%s)", i, fate(i))
	}
	for id, i := range index {
		switch {
		case lettered[id] && handled[id] > 0:
			t.Errorf("record %d (%s) both handled and dead-lettered", i, fate(i))
		case !lettered[id] && handled[id] != 1:
			t.Errorf("record %d (%s) handled %d times and not dead-lettered", i, fate(i), handled[id])
		}
	}
	committed, err := cluster.CommittedOffsets(ctx, group, topic)
	require.NoError(t, err)
	for part, e := range end {
		assert.Equal(t, e, committed[part], "the group's commit of partition %d", part)
	}
	st := p.Stats()
	assert.EqualValues(t, dead, st.Dropped, "dead-lettered messages count as dropped")
	assert.EqualValues(t, want["cursed"]*2+want["flaky"], st.Retried)
	t.Logf("%d records: %s; %d dead letters; %d retries", n, strconv.Quote(fmt.Sprint(want)), dead, st.Retried)
}
