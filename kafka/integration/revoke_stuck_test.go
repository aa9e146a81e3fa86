package integration_test

import (
	"bytes"
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
	"github.com/parallafka/parallafka/kafka/kafkatest"
)

// TestRevokeStuckMessage gives a member, A, a record whose handler never
// returns on its own (it blocks until its context is cancelled) at the
// front of a partition, while the thousands after it finish. Then B joins
// and the stuck partition moves to B: A's revoke waits the revoke timeout
// for the stuck handler, cancels it, and commits the partition at the stuck
// record with the offset map of everything A finished above it. B handles
// only the stuck record and the records of its key queued behind it: no
// record is handled twice. Then C joins: with nothing stuck, the revokes
// take tens of milliseconds. It logs the revoke callbacks' durations.
func TestRevokeStuckMessage(t *testing.T) {
	for _, strategy := range []string{"range", "cooperative-sticky"} {
		t.Run(strategy, func(t *testing.T) { testRevokeStuckMessage(t, strategy) })
	}
}

func testRevokeStuckMessage(t *testing.T, strategy string) {
	const messages, partitions, keys = 12000, 6, 600
	const revokeTimeout = 2 * time.Second
	c := kafkatest.New(t)
	topic := newTopic(t, c, partitions)
	group := groupFor(t)
	produced, err := keyed.Produce(context.Background(), c, topic, messages, keys)
	require.NoError(t, err)

	// The assignors order the members by their member IDs, which begin with
	// their client.id: A, then B, then C. When B joins, the range assignor
	// gives it the upper half of the partitions; librdkafka's
	// cooperative-sticky one moves A's first half to it. The stuck record
	// is at the front of a partition that moves.
	// (kgo's cooperative-sticky balancer moves the upper half, as range does.)
	stuck := po{partitions - 1, 0}
	if strategy == "cooperative-sticky" && client(t) == "confluent" {
		stuck.p = 0
	}
	var stuckKey []byte
	end := int64(0) // of the stuck partition
	for _, r := range produced {
		if r.Partition == stuck.p {
			end = max(end, r.Offset+1)
			if r.Offset == stuck.o {
				stuckKey = r.Key
			}
		}
	}
	require.NotNil(t, stuckKey)
	var redo []po // what B should handle: the stuck record and its key's later ones
	for _, r := range produced {
		if bytes.Equal(r.Key, stuckKey) {
			redo = append(redo, po{r.Partition, r.Offset})
		}
	}

	var mu sync.Mutex
	var stuckEnd time.Time // when the stuck handler's context was cancelled
	stuckWork := func(ctx context.Context, msg *parallafka.Message[string, []byte]) error {
		if msg.Partition != stuck.p || msg.Offset != stuck.o {
			time.Sleep(randDuration(time.Millisecond))
			return nil
		}
		<-ctx.Done()
		mu.Lock()
		stuckEnd = time.Now()
		mu.Unlock()
		return ctx.Err()
	}
	rec := newRecorder()
	spec := func(name string, w work) memberSpec {
		return memberSpec{
			name: name, group: group, topic: topic, observer: rec,
			config: map[string]any{"partition.assignment.strategy": strategy, "client.id": "member-" + name},
			work:   w,
			options: []parallafka.Option{parallafka.WithMaxConcurrency(16),
				parallafka.WithRevokeTimeout(revokeTimeout), parallafka.WithShutdownTimeout(revokeTimeout)},
		}
	}
	a := startMember(t, c, spec("A", stuckWork))
	waitFor(t, waitTimeout, fmt.Sprintf("A to handle all %d records but the %d of the stuck key", messages-len(redo), len(redo)), func() bool {
		return rec.handledBy("A") >= messages-len(redo)
	})
	time.Sleep(200 * time.Millisecond) // nothing else is due: A's count must stay
	require.Equal(t, messages-len(redo), rec.handledBy("A"), "A handled a record of the stuck key")

	bJoined := time.Now()
	b := startMember(t, c, spec("B", sleepBetween(0, time.Millisecond)))
	waitFor(t, waitTimeout, "A and B to own half the partitions each", func() bool {
		return len(rec.owned("A")) == partitions/2 && len(rec.owned("B")) == partitions/2
	})
	if client(t) == "franz" && !slices.Contains(rec.owned("B"), stuck.p) {
		// kgo's member IDs are random (kgo-<uuid>), not prefixed with the
		// client.id as librdkafka's are, so which half moves to B is not
		// known before B joins.
		t.Skipf("franz: B was assigned %v, A %v: the stuck partition stayed with A", rec.owned("B"), rec.owned("A"))
	}
	require.Contains(t, rec.owned("B"), stuck.p, "B was assigned %v, A %v: the stuck partition stayed with A", rec.owned("B"), rec.owned("A"))
	var last string
	t.Cleanup(func() {
		if t.Failed() && last != "" {
			t.Log(last)
		}
	})
	waitFor(t, waitTimeout, "B to handle the stuck record and its key's records and skip the rest of the partition", func() bool {
		st := b.p.Stats()
		last = fmt.Sprintf("B handled %d (want %d), skipped %d (want %d)", rec.handledBy("B"), len(redo), st.FinishedBefore, int(end)-len(redo))
		return rec.distinct() == messages && st.FinishedBefore >= end-int64(len(redo))
	})

	cJoined := time.Now()
	cm := startMember(t, c, spec("C", sleepBetween(0, time.Millisecond)))
	waitFor(t, waitTimeout, "A, B and C to own two partitions each", func() bool {
		return len(rec.owned("A")) == 2 && len(rec.owned("B")) == 2 && len(rec.owned("C")) == 2
	})
	stopping := time.Now()
	stopAll(t, a, b, cm)

	res := rec.check(t, produced)
	assert.Zero(t, res.duplicates, "records handled again after the hand-overs")
	assert.Equal(t, len(redo), rec.handledBy("B"), "B handled the stuck record and its key's records, nothing else")
	assert.Zero(t, rec.handledBy("C"), "C had nothing to handle")
	assert.Equal(t, end-int64(len(redo)), b.p.Stats().FinishedBefore, "B skipped what A finished in the stuck partition")
	var bHandled []po
	counts := rec.counts()
	for _, x := range redo {
		if counts[x] == 1 {
			bHandled = append(bHandled, x)
		}
	}
	assert.Len(t, bHandled, len(redo))

	// The revoke callbacks: one per member and rebalance, for all the
	// partitions it gave up.
	type callback struct {
		member     string
		start      time.Time
		took       time.Duration
		partitions []int32
	}
	var cbs []*callback
	for _, ru := range rec.runsCopy() {
		if ru.revokeStart.IsZero() || !ru.revokeStart.Before(stopping) {
			continue
		}
		i := slices.IndexFunc(cbs, func(cb *callback) bool { return cb.member == ru.member && cb.start.Equal(ru.revokeStart) })
		if i < 0 {
			cbs = append(cbs, &callback{member: ru.member, start: ru.revokeStart, took: ru.revokeEnd.Sub(ru.revokeStart)})
			i = len(cbs) - 1
		}
		cbs[i].partitions = append(cbs[i].partitions, ru.partition)
	}
	slices.SortFunc(cbs, func(x, y *callback) int { return x.start.Compare(y.start) })
	var log []string
	for _, cb := range cbs {
		slices.Sort(cb.partitions)
		phase := "B joins"
		if cb.start.After(cJoined) {
			phase = "C joins"
		}
		log = append(log, fmt.Sprintf("%s: %s revoked %v in %v", phase, cb.member, cb.partitions, cb.took.Round(10*time.Microsecond)))
		switch {
		case cb.start.Before(bJoined):
			t.Errorf("a revoke before B joined: %s %v", cb.member, cb.partitions)
		case slices.Contains(cb.partitions, stuck.p) && cb.start.Before(cJoined):
			assert.Equal(t, "A", cb.member)
			assert.GreaterOrEqual(t, cb.took, revokeTimeout, "the revoke of the stuck partition waits the revoke timeout")
			assert.Less(t, cb.took, revokeTimeout+2*time.Second, "the revoke of the stuck partition: the revoke timeout and a commit")
		default:
			assert.Less(t, cb.took, revokeTimeout/2, "a revoke with no stuck handler")
		}
	}
	var revoked time.Time // A's revoke of the stuck partition began
	for _, cb := range cbs {
		if cb.member == "A" && slices.Contains(cb.partitions, stuck.p) {
			revoked = cb.start
			break
		}
	}
	mu.Lock()
	cancelled := stuckEnd.Sub(revoked)
	mu.Unlock()
	t.Logf("revoke with a stuck message (%s) on the %s: A's handler of %s (key %s) was cancelled %v after A's revoke began (revoke timeout %v); B redid %d records (the stuck one and %d behind its key) and skipped %d (FinishedBefore); without the map it would have redone %d; duplicates %d",
		strategy, brokerKind(c), stuck, stuckKey, cancelled.Round(time.Millisecond), revokeTimeout, rec.handledBy("B"), len(redo)-1, b.p.Stats().FinishedBefore, end, res.duplicates)
	for _, l := range log {
		t.Logf("  %s", l)
	}
}
