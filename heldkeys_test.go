package parallafka_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/internal/memctl"
	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/pipeline/memsource"
	"github.com/parallafka/parallafka/stages"
)

// letterBox is an in-memory stages.DeadLetterWriter.
type letterBox struct {
	mu      sync.Mutex
	letters []pipeline.DeadLetter
}

func (b *letterBox) WriteDeadLetter(ctx context.Context, dl pipeline.DeadLetter) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.letters = append(b.letters, dl)
	return nil
}

// of returns the dead letters of key, in the order written.
func (b *letterBox) of(key string) []pipeline.DeadLetter {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []pipeline.DeadLetter
	for _, dl := range b.letters {
		if string(dl.Key) == key {
			out = append(out, dl)
		}
	}
	return out
}

func letterHeader(dl pipeline.DeadLetter, key string) string {
	for _, h := range dl.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// holdCounter is a pipeline.KeyHoldObserver counting its events.
type holdCounter struct {
	pipeline.Observer
	held, released atomic.Int64
}

func (c *holdCounter) KeyHeld(pipeline.HeldKey)           { c.held.Add(1) }
func (c *holdCounter) KeyReleased(pipeline.HeldKey, bool) { c.released.Add(1) }

// holdPipeline is a Parallafka with a dead-letter stage that holds keys,
// and what its handler saw.
type holdPipeline struct {
	p       *parallafka.Parallafka[string, int]
	box     *letterBox
	obs     *holdCounter
	mu      sync.Mutex
	handled map[string][]int // key → values handled, in order
}

func newHoldPipeline(t *testing.T, src *memsource.Source[string, int], box *letterBox, opts ...parallafka.Option) *holdPipeline {
	t.Helper()
	dlq, err := stages.DeadLetterQueue[string, int](stages.DeadLetterConfig{Writer: box, Topic: "dlq", HoldKey: true})
	require.NoError(t, err)
	hp := &holdPipeline{box: box, obs: &holdCounter{Observer: pipeline.ObserverFuncs{}.Observer()}, handled: map[string][]int{}}
	base := []parallafka.Option{parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(4),
		parallafka.WithCommitInterval(10 * time.Millisecond), parallafka.WithObserver(hp.obs),
		parallafka.WithAfterHandle("dead-letter", dlq)}
	hp.p, err = parallafka.New(src, append(base, opts...)...)
	require.NoError(t, err)
	return hp
}

// handler fails the values in poison, and records the others.
func (hp *holdPipeline) handler(poison ...int) parallafka.Handler[string, int] {
	return func(ctx context.Context, m *parallafka.Message[string, int]) error {
		if slices.Contains(poison, m.Value) {
			return fmt.Errorf("value %d is poison", m.Value)
		}
		hp.mu.Lock()
		defer hp.mu.Unlock()
		hp.handled[m.Key] = append(hp.handled[m.Key], m.Value)
		return nil
	}
}

func (hp *holdPipeline) handledOf(key string) []int {
	hp.mu.Lock()
	defer hp.mu.Unlock()
	return slices.Clone(hp.handled[key])
}

// settle waits (in the bubble's time) until every partition of src is
// committed to its end.
func settle(t *testing.T, src *memsource.Source[string, int]) {
	t.Helper()
	for range 1000 {
		done := true
		for _, part := range memctl.Partitions(src) {
			if n := memctl.Len(src, part); n > 0 && src.Committed(part) != n {
				done = false
			}
		}
		if done {
			synctest.Wait()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the partitions were not committed to their ends")
}

// Once a message of a key is dead-lettered with HoldKey, the key's later
// messages in its partition follow it to the dead-letter topic unhandled,
// in order, marked with the offset that held the key; other keys go on at
// full speed, and commits reach the end. Released, the key is handled
// again.
func TestHeldKeyFollowersDeadLettered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := memsource.New[string, int]()
		produce(src, 2, 200, func(i int) int { return i % 4 }) // k1 and k3 in partition 1
		box := &letterBox{}
		hp := newHoldPipeline(t, src, box)
		stop, _ := start(hp.p, hp.handler(41)) // the 11th message of k1
		settle(t, src)

		for _, key := range []string{"k0", "k2", "k3"} {
			assert.Len(t, hp.handledOf(key), 50, "key %s", key)
		}
		var before []int
		for i := 1; i < 41; i += 4 {
			before = append(before, i)
		}
		assert.Equal(t, before, hp.handledOf("k1"), "k1 handled up to the poison message, in order")
		letters := box.of("k1")
		require.Len(t, letters, 40, "the poison message and the 39 after it")
		poisonOffset := letters[0].Offset
		assert.Empty(t, letterHeader(letters[0], stages.HeaderHeldBehind))
		for i, dl := range letters[1:] {
			assert.Greater(t, dl.Offset, letters[i].Offset, "in order")
			assert.Equal(t, strconv.FormatInt(poisonOffset, 10), letterHeader(dl, stages.HeaderHeldBehind))
			assert.Equal(t, "0", letterHeader(dl, stages.HeaderAttempts), "not handled")
			var held *pipeline.KeyHeldError
			assert.ErrorAs(t, dl.Err, &held)
		}
		st := hp.p.Stats()
		assert.EqualValues(t, 1, st.HeldKeys)
		assert.EqualValues(t, 40, st.Dropped)
		assert.EqualValues(t, 1, hp.obs.held.Load())
		assert.NoError(t, hp.p.Health(context.Background()), "held keys are not unhealthy")

		assert.Zero(t, hp.p.ReleaseKey([]byte("k2")))
		assert.Equal(t, 1, hp.p.ReleaseKey([]byte("k1")))
		synctest.Wait()
		assert.Zero(t, hp.p.Stats().HeldKeys)
		assert.EqualValues(t, 1, hp.obs.released.Load())
		src.Produce(topic, 1, "k1", 1000)
		settle(t, src)
		assert.Equal(t, append(before, 1000), hp.handledOf("k1"), "handled again once released")
		err, _ := stop()
		require.NoError(t, err)
		assert.Zero(t, hp.p.ReleaseKey([]byte("k1")), "not consuming")
	})
}

// The held key survives a rebalance (the revoke's commit carries it, the
// next assignment reads it back) and a restart (a new Parallafka on the
// same group's commits), until it is released; released, it stays
// released after the next restart.
func TestHeldKeySurvivesRebalanceAndRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := memsource.New[string, int]()
		produce(src, 1, 20, func(i int) int { return i % 2 })
		box := &letterBox{}
		hp := newHoldPipeline(t, src, box)
		stop, _ := start(hp.p, hp.handler(5)) // k1's third message, at offset 5
		settle(t, src)
		require.Len(t, box.of("k1"), 8) // offsets 5, 7, ..., 19
		require.EqualValues(t, 1, hp.p.Stats().HeldKeys)

		src.Revoke(tp(0))
		assert.Zero(t, hp.p.Stats().HeldKeys, "revoked: not held here any more")
		src.Assign(tp(0))
		synctest.Wait()
		assert.EqualValues(t, 1, hp.p.Stats().HeldKeys, "held again from the committed metadata")
		src.Produce(topic, 0, "k1", 100)
		src.Produce(topic, 0, "k0", 101)
		settle(t, src)
		letters := box.of("k1")
		require.Len(t, letters, 9)
		assert.Equal(t, "5", letterHeader(letters[8], stages.HeaderHeldBehind))
		assert.Contains(t, hp.handledOf("k0"), 101)
		err, _ := stop()
		require.NoError(t, err)

		// A restart: another Parallafka holds the key, from the metadata.
		hp2 := newHoldPipeline(t, src, box)
		stop, _ = start(hp2.p, hp2.handler())
		src.Produce(topic, 0, "k1", 200)
		settle(t, src)
		assert.Empty(t, hp2.handledOf("k1"))
		letters = box.of("k1")
		require.Len(t, letters, 10)
		assert.EqualValues(t, 22, letters[9].Offset, "the record produced last")
		assert.Equal(t, "5", letterHeader(letters[9], stages.HeaderHeldBehind))
		assert.EqualValues(t, 1, hp2.p.Stats().HeldKeys)
		assert.EqualValues(t, 1, hp2.obs.held.Load(), "told of the key it took over")

		require.Equal(t, 1, hp2.p.ReleaseKey([]byte("k1")))
		src.Produce(topic, 0, "k1", 300)
		settle(t, src)
		assert.Equal(t, []int{300}, hp2.handledOf("k1"))
		err, _ = stop()
		require.NoError(t, err)

		// Released for good: the next run handles the key.
		hp3 := newHoldPipeline(t, src, box)
		stop, _ = start(hp3.p, hp3.handler())
		src.Produce(topic, 0, "k1", 400)
		settle(t, src)
		assert.Equal(t, []int{400}, hp3.handledOf("k1"))
		assert.Zero(t, hp3.p.Stats().HeldKeys)
		err, _ = stop()
		require.NoError(t, err)
	})
}

// A released key whose partition got no message since is committed
// released all the same (the committed offset again, with metadata that
// no longer holds it).
func TestHeldKeyReleaseCommittedWhileIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := memsource.New[string, int]()
		produce(src, 1, 6, func(i int) int { return i % 2 })
		box := &letterBox{}
		hp := newHoldPipeline(t, src, box)
		stop, _ := start(hp.p, hp.handler(5))
		settle(t, src)
		err, _ := stop()
		require.NoError(t, err)

		hp2 := newHoldPipeline(t, src, box)
		stop, _ = start(hp2.p, hp2.handler())
		time.Sleep(time.Second)
		synctest.Wait()
		require.EqualValues(t, 1, hp2.p.Stats().HeldKeys)
		commits := len(memctl.Commits(src))
		require.Equal(t, 1, hp2.p.ReleaseKey([]byte("k1")))
		time.Sleep(time.Second)
		synctest.Wait()
		assert.Greater(t, len(memctl.Commits(src)), commits, "the release was committed")
		err, _ = stop()
		require.NoError(t, err)

		hp3 := newHoldPipeline(t, src, box)
		stop, _ = start(hp3.p, hp3.handler())
		src.Produce(topic, 0, "k1", 7)
		settle(t, src)
		assert.Equal(t, []int{7}, hp3.handledOf("k1"))
		err, _ = stop()
		require.NoError(t, err)
	})
}

// Without a dead-letter stage, the error policy holds a key with
// pipeline.HoldKey: the message is skipped, and the key's later messages
// come to the policy unhandled, with a *pipeline.KeyHeldError.
func TestHeldKeyByErrorPolicy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := memsource.New[string, int]()
		produce(src, 1, 40, func(i int) int { return i % 4 })
		var mu sync.Mutex
		var followers []int64
		policy := func(err error) pipeline.ErrorAction {
			var held *pipeline.KeyHeldError
			if errors.As(err, &held) {
				var me *pipeline.MessageError
				errors.As(err, &me)
				mu.Lock()
				followers = append(followers, me.Offset)
				mu.Unlock()
				return pipeline.Skip
			}
			return pipeline.HoldKey
		}
		var handled sync.Map
		p, err := parallafka.New(src, parallafka.WithLogger(quiet), parallafka.WithMaxConcurrency(4),
			parallafka.WithCommitInterval(10*time.Millisecond), parallafka.WithErrorPolicy(policy))
		require.NoError(t, err)
		stop, _ := start(p, func(ctx context.Context, m *parallafka.Message[string, int]) error {
			if m.Value == 10 { // k2, offset 10
				return errors.New("poison")
			}
			handled.Store(m.Value, true)
			return nil
		})
		settle(t, src)
		err, _ = stop()
		require.NoError(t, err)
		mu.Lock()
		defer mu.Unlock()
		assert.Equal(t, []int64{14, 18, 22, 26, 30, 34, 38}, followers, "k2's later messages, in order")
		for i := range 40 {
			_, ok := handled.Load(i)
			assert.Equal(t, i%4 != 2 || i < 10, ok, "value %d", i)
		}
		assert.EqualValues(t, 8, p.Stats().Skipped)
	})
}

func TestHeldKeyTTLValid(t *testing.T) {
	_, err := parallafka.New(memsource.New[string, int](), parallafka.WithHeldKeyTTL(-time.Second))
	require.ErrorContains(t, err, "held key TTL")
	_, err = parallafka.New(memsource.New[string, int](), parallafka.WithHeldKeyTTL(time.Hour))
	require.NoError(t, err)
}
