package franz_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/pipeline"
)

// protocols are the rebalance protocols a group can use with kgo.
var protocols = []struct {
	name string
	opts []kgo.Opt
}{
	{"cooperative-sticky", nil}, // kgo's default balancer
	{"range", []kgo.Opt{kgo.Balancers(kgo.RangeBalancer())}},
	{"consumer-848", []kgo.Opt{kgo.ServerSideBalancer()}},
}

// Two members share a group under each protocol: A starts alone, B joins
// mid-stream, A leaves gracefully, B goes on to the end. Nothing is lost,
// no key is in two handlers at once, each member keeps each key in order,
// and A's revokes commit with the offset map, so B redoes nothing.
func TestRebalanceTwoMembers(t *testing.T) {
	for _, proto := range protocols {
		t.Run(proto.name, func(t *testing.T) {
			const partitions, n, keys = 6, 4000, 60
			c, topic := newCluster(t, partitions)
			c.produce(t, topic, n, keys)
			group := "g-" + topic
			led := newLedger()
			var mu sync.Mutex
			owned := map[string]map[pipeline.TopicPartition]bool{"A": {}, "B": {}}
			hooks := func(name string) parallafka.Option {
				return parallafka.WithObserver(pipeline.ObserverFuncs{
					PartitionsAssigned: func(tps []pipeline.TopicPartition) {
						mu.Lock()
						defer mu.Unlock()
						for _, tp := range tps {
							owned[name][tp] = true
						}
					},
					PartitionsRevoked: func(tps []pipeline.TopicPartition) {
						mu.Lock()
						defer mu.Unlock()
						for _, tp := range tps {
							delete(owned[name], tp)
						}
					},
					PartitionsLost: func(tps []pipeline.TopicPartition) { t.Errorf("member %s lost %v", name, tps) },
				}.Observer())
			}
			ownedBy := func(name string) int {
				mu.Lock()
				defer mu.Unlock()
				return len(owned[name])
			}
			work := 5 * time.Millisecond
			a := startMember(t, newSource(t, c, group, topic, proto.opts), led.handler("A", work),
				parallafka.WithMaxConcurrency(4), hooks("A"))
			waitFor(t, waitTimeout, "A to handle 300 records", func() bool { return led.count("A") >= 300 })
			b := startMember(t, newSource(t, c, group, topic, proto.opts), led.handler("B", work),
				parallafka.WithMaxConcurrency(4), hooks("B"))
			waitFor(t, waitTimeout, "A and B to own 3 partitions each and B to handle 50 records", func() bool {
				return ownedBy("A") == 3 && ownedBy("B") == 3 && led.count("B") >= 50
			})
			require.NoError(t, a.stop())
			waitFor(t, waitTimeout, "B to own every partition", func() bool { return ownedBy("B") == partitions })
			waitFor(t, waitTimeout, "every record handled", func() bool { return led.distinct() == n })
			require.NoError(t, b.stop())
			dups := led.check(t, n)
			assert.Zero(t, dups, "records handled twice: a revoke commits the offset map, so the next owner redoes nothing")
			ends := c.endOffsets(t, topic, partitions)
			got := c.committed(t, group, topic)
			for p, end := range ends {
				assert.Equal(t, end, got[p].Offset, "partition %d committed offset", p)
			}
			t.Logf("%s: A handled %d, B %d, duplicates %d", proto.name, led.count("A"), led.count("B"), dups)
		})
	}
}

// A member stopped while one record is stuck commits the offset before it
// with the offset map of what finished past it; the next member reads the
// map back on assignment and handles only the stuck record.
func TestOffsetMapReadBack(t *testing.T) {
	for _, proto := range protocols {
		t.Run(proto.name, func(t *testing.T) {
			const n, keys = 200, 20
			c, topic := newCluster(t, 1)
			c.produce(t, topic, n, keys)
			group := "g-" + topic
			led := newLedger()
			inner := led.handler("A", 0)
			stuck := func(ctx context.Context, m *parallafka.Message[string, string]) error {
				if m.Offset == 5 {
					<-ctx.Done() // never finishes: the stop gives up on it
					return ctx.Err()
				}
				return inner(ctx, m)
			}
			a := startMember(t, newSource(t, c, group, topic, proto.opts), stuck,
				parallafka.WithMaxConcurrency(4), parallafka.WithShutdownTimeout(500*time.Millisecond))
			waitFor(t, waitTimeout, "every record but the stuck one and its key's later ones handled", func() bool {
				return led.distinct() == n-n/keys
			})
			_ = a.stop()
			got := c.committed(t, group, topic)[0]
			assert.Equal(t, int64(5), got.Offset, "the committed offset stops at the stuck record")
			assert.NotEmpty(t, got.Metadata, "the commit carries the offset map")
			t.Logf("committed %d with metadata %q", got.Offset, got.Metadata)

			ledB := newLedger()
			b := startMember(t, newSource(t, c, group, topic, proto.opts), ledB.handler("B", 0), parallafka.WithMaxConcurrency(4))
			waitFor(t, waitTimeout, "B to handle the stuck key's records", func() bool { return ledB.distinct() == n/keys })
			time.Sleep(300 * time.Millisecond) // anything more would show now
			require.NoError(t, b.stop())
			assert.Equal(t, n/keys, ledB.distinct(), "B handles only what A left unfinished")
			assert.Equal(t, int64(n), c.committed(t, group, topic)[0].Offset)
		})
	}
}
