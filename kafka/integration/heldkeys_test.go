package integration_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/internal/keyed"
	"github.com/parallafka/parallafka/kafka"
	"github.com/parallafka/parallafka/kafka/kafkatest"
	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/stages"
)

// letters is an in-memory dead-letter writer shared by a test's members.
type letters struct {
	mu  sync.Mutex
	dls []pipeline.DeadLetter
}

func (l *letters) WriteDeadLetter(ctx context.Context, dl pipeline.DeadLetter) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dls = append(l.dls, dl)
	return nil
}

// of returns the sequence numbers of key's dead letters, in the order
// written, and their held-behind headers.
func (l *letters) of(key string) (seqs []int, behind []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, dl := range l.dls {
		if string(dl.Key) != key {
			continue
		}
		_, seq, _ := keyed.Parse(dl.Value)
		seqs = append(seqs, seq)
		b := ""
		for _, h := range dl.Headers {
			if h.Key == stages.HeaderHeldBehind {
				b = string(h.Value)
			}
		}
		behind = append(behind, b)
	}
	return seqs, behind
}

// holdMember is a member whose dead-letter stage holds keys; its handler
// fails poison (key/seq) and records what it handled.
type holdMember struct {
	p       *parallafka.Parallafka[string, []byte]
	cancel  context.CancelFunc
	done    chan error
	stopped bool

	mu      sync.Mutex
	handled map[string][]int // key → seqs handled
}

func startHoldMember(t *testing.T, c *kafkatest.Cluster, name, group, protocol, topic string, box *letters, poison string) *holdMember {
	t.Helper()
	log := testLogger(t).With("member", name)
	consumer, err := kafka.NewConsumer(consumerConfig(c, group, protocol), kafka.WithLogger(log))
	require.NoError(t, err)
	src, err := kafka.NewSource(consumer, []string{topic}, kafka.String, kafka.Bytes, kafka.WithLogger(log))
	if err != nil {
		_ = consumer.Close()
		require.NoError(t, err)
	}
	dlq, err := stages.DeadLetterQueue[string, []byte](stages.DeadLetterConfig{Writer: box, Topic: "dlq", HoldKey: true})
	require.NoError(t, err)
	p, err := parallafka.New(src, parallafka.WithLogger(log), parallafka.WithMaxConcurrency(8),
		parallafka.WithCommitInterval(50*time.Millisecond), parallafka.WithAfterHandle("dead-letter", dlq))
	if err != nil {
		_ = src.Close()
		require.NoError(t, err)
	}
	m := &holdMember{p: p, done: make(chan error, 1), handled: map[string][]int{}}
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	go func() {
		m.done <- p.Consume(ctx, func(ctx context.Context, msg *parallafka.Message[string, []byte]) error {
			if string(msg.Value) == poison {
				return fmt.Errorf("%s is poison", msg.Value)
			}
			key, seq, err := keyed.Parse(msg.Value)
			if err != nil {
				return err
			}
			m.mu.Lock()
			defer m.mu.Unlock()
			m.handled[key] = append(m.handled[key], seq)
			return nil
		})
	}()
	t.Cleanup(func() {
		if !m.stopped {
			cancel()
			<-m.done
		}
	})
	return m
}

func (m *holdMember) stop(t *testing.T) {
	t.Helper()
	m.stopped = true
	m.cancel()
	require.NoError(t, <-m.done)
}

func (m *holdMember) handledOf(key string) []int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.handled[key])
}

// TestHeldKeySurvivesRebalanceAndRestart: a key held by one member (its
// message dead-lettered with HoldKey) stays held when a second member
// takes its partition over in a rebalance, and when the group restarts:
// each new owner reads the held key from the committed metadata, and
// sends the key's new messages to the dead-letter topic unhandled, in
// order, behind the offset that held it, while the other keys are handled.
// Released, the key is handled again.
func TestHeldKeySurvivesRebalanceAndRestart(t *testing.T) {
	for _, protocol := range []string{"classic", "consumer"} {
		t.Run(protocol, func(t *testing.T) { testHeldKeySurvives(t, protocol) })
	}
}

func testHeldKeySurvives(t *testing.T, protocol string) {
	c := kafkatest.New(t)
	ctx := context.Background()
	topic := newTopic(t, c, 3)
	group := groupFor(t)
	const keys = 6
	heldKey := string(keyed.Key(2))
	poison := string(keyed.Value(2, 3))
	seq := make([]int, keys)
	produce := func(perKey int, only ...int) {
		t.Helper()
		var recs []kafkatest.Record
		for range perKey {
			for k := range keys {
				if len(only) > 0 && !slices.Contains(only, k) {
					continue
				}
				recs = append(recs, kafkatest.Record{Key: keyed.Key(k), Value: keyed.Value(k, seq[k]), Partition: -1})
				seq[k]++
			}
		}
		require.NoError(t, c.Produce(ctx, topic, recs))
	}
	committedToEnd := func() bool {
		end, err := c.EndOffsets(ctx, topic)
		require.NoError(t, err)
		got, err := c.CommittedOffsets(ctx, group, topic)
		require.NoError(t, err)
		for p, e := range end {
			if e > 0 && got[p] != e {
				return false
			}
		}
		return true
	}
	box := &letters{}
	produce(10)

	// A holds the key: its seqs 3.. go to the dead-letter topic.
	a := startHoldMember(t, c, "A", group, protocol, topic, box, poison)
	waitFor(t, waitTimeout, "A to commit everything", committedToEnd)
	assert.Equal(t, []int{0, 1, 2}, a.handledOf(heldKey))
	seqs, behind := box.of(heldKey)
	require.Equal(t, []int{3, 4, 5, 6, 7, 8, 9}, seqs)
	require.Empty(t, behind[0])
	poisonOffset := behind[1]
	require.NotEmpty(t, poisonOffset)
	for _, b := range behind[1:] {
		assert.Equal(t, poisonOffset, b)
	}
	assert.EqualValues(t, 1, a.p.Stats().HeldKeys)

	// B joins and A leaves: B owns every partition, and holds the key,
	// from the metadata A committed on its revoke.
	b := startHoldMember(t, c, "B", group, protocol, topic, box, poison)
	a.stop(t)
	waitFor(t, waitTimeout, "B to own the three partitions", func() bool { return b.p.Stats().Assigned == 3 })
	waitFor(t, waitTimeout, "B to hold the key", func() bool { return b.p.Stats().HeldKeys == 1 })
	produce(3)
	waitFor(t, waitTimeout, "B to commit everything", committedToEnd)
	assert.Empty(t, b.handledOf(heldKey), "B handled none of the held key's messages")
	assert.Equal(t, []int{10, 11, 12}, b.handledOf(string(keyed.Key(0))))
	seqs, behind = box.of(heldKey)
	require.Equal(t, []int{3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, seqs, "in order")
	assert.Equal(t, poisonOffset, behind[9])
	b.stop(t)

	// A restart: C holds the key too, until released.
	cm := startHoldMember(t, c, "C", group, protocol, topic, box, poison)
	waitFor(t, waitTimeout, "C to hold the key", func() bool { return cm.p.Stats().HeldKeys == 1 })
	produce(1, 2)
	waitFor(t, waitTimeout, "C to commit everything", committedToEnd)
	seqs, _ = box.of(heldKey)
	require.Equal(t, 13, seqs[len(seqs)-1])
	assert.Empty(t, cm.handledOf(heldKey))
	require.Equal(t, 1, cm.p.ReleaseKey([]byte(heldKey)))
	produce(1, 2)
	waitFor(t, waitTimeout, "C to handle the released key", func() bool { return slices.Equal(cm.handledOf(heldKey), []int{14}) })
	waitFor(t, waitTimeout, "C to commit everything", committedToEnd)
	cm.stop(t)
	seqs, _ = box.of(heldKey)
	t.Logf("%s (%s): key %s held behind offset %s by A, then B, then C: %d dead letters; released, its next message handled",
		protocol, brokerKind(c), heldKey, poisonOffset, len(seqs))
}
