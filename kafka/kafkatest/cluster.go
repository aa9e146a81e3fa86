package kafkatest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// BrokersEnv is the name of the environment variable that points Start and
// New at a real Kafka: a comma-separated list of bootstrap servers, such as
// "127.0.0.1:9092". When it is unset or blank, an embedded kfake broker is
// started instead.
const BrokersEnv = "KAFKA_BROKERS"

// pingTimeout bounds how long Start waits for a real broker to answer.
const pingTimeout = 15 * time.Second

// Cluster is a Kafka to test against: either an embedded kfake broker that
// this package started, or a real broker named by [BrokersEnv] (or
// [WithBrokers]). Its methods are safe for concurrent use.
type Cluster struct {
	fake    *kfake.Cluster // nil when pointing at a real broker
	brokers []string

	mu     sync.Mutex
	client *kgo.Client // lazily created admin/producer client
	closed bool

	closeOnce sync.Once
}

// Option configures Start and New.
type Option func(*options)

type options struct {
	embedded bool     // ignore BrokersEnv
	brokers  []string // explicit brokers, overriding BrokersEnv
	fakeOpts []kfake.Opt
	topics   []seedTopic
}

type seedTopic struct {
	name       string
	partitions int
}

// WithEmbedded always starts an embedded kfake broker, even when
// [BrokersEnv] is set. Use it for tests that need [Cluster.Fake].
func WithEmbedded() Option {
	return func(o *options) { o.embedded = true; o.brokers = nil }
}

// WithBrokers points the Cluster at the given bootstrap servers instead of
// consulting [BrokersEnv] or starting kfake. Each argument may itself be a
// comma-separated list. If they name no server at all, WithBrokers is
// ignored.
func WithBrokers(brokers ...string) Option {
	return func(o *options) {
		var all []string
		for _, b := range brokers {
			all = append(all, strings.Split(b, ",")...)
		}
		if all = cleanBrokers(all); len(all) > 0 {
			o.brokers = all
			o.embedded = false
		}
	}
}

// WithKfakeOptions passes options to kfake.NewCluster when an embedded broker
// is started (they are ignored for a real broker). They are applied after
// this package's defaults (one broker on a free port of 127.0.0.1), so they
// can override them, for example with kfake.NumBrokers(3).
func WithKfakeOptions(opts ...kfake.Opt) Option {
	return func(o *options) { o.fakeOpts = append(o.fakeOpts, opts...) }
}

// WithTopic creates topic with the given number of partitions when the
// Cluster starts, as [Cluster.CreateTopic] does.
func WithTopic(topic string, partitions int) Option {
	return func(o *options) { o.topics = append(o.topics, seedTopic{topic, partitions}) }
}

// Start returns a Cluster to test against. If [BrokersEnv] is set (and
// neither [WithEmbedded] nor [WithBrokers] is given), the Cluster points at
// those brokers, and Start checks that they answer; otherwise Start runs an
// embedded kfake broker on a free port of 127.0.0.1. The caller must Close
// the Cluster.
func Start(opts ...Option) (*Cluster, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if !o.embedded && o.brokers == nil {
		o.brokers = cleanBrokers(strings.Split(os.Getenv(BrokersEnv), ","))
	}

	c := new(Cluster)
	if len(o.brokers) > 0 {
		c.brokers = o.brokers
		ctx, cancel := context.WithTimeout(context.Background(), pingTimeout)
		defer cancel()
		cl, err := c.kgoClient()
		if err == nil {
			err = cl.Ping(ctx)
		}
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("kafkatest: brokers %s do not answer: %w", strings.Join(c.brokers, ","), err)
		}
	} else {
		fakeOpts := append([]kfake.Opt{kfake.NumBrokers(1)}, o.fakeOpts...)
		fake, err := kfake.NewCluster(fakeOpts...)
		if err != nil {
			return nil, fmt.Errorf("kafkatest: starting kfake: %w", err)
		}
		c.fake = fake
		c.brokers = fake.ListenAddrs()
	}

	if len(o.topics) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), defaultAdminTimeout)
		defer cancel()
		for _, t := range o.topics {
			if err := c.CreateTopic(ctx, t.name, t.partitions); err != nil {
				c.Close()
				return nil, err
			}
		}
	}
	return c, nil
}

// New is Start for tests and benchmarks: it fails tb if the Cluster cannot
// be started and registers Close with tb.Cleanup.
func New(tb testing.TB, opts ...Option) *Cluster {
	tb.Helper()
	c, err := Start(opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Close)
	return c
}

// Bootstrap returns the bootstrap servers, comma-separated, as
// bootstrap.servers expects them.
func (c *Cluster) Bootstrap() string { return strings.Join(c.brokers, ",") }

// Embedded reports whether the Cluster is an embedded kfake broker (true) or
// points at a real broker (false).
func (c *Cluster) Embedded() bool { return c.fake != nil }

// Fake returns the embedded kfake cluster, for fault injection and group
// inspection, or nil when the Cluster points at a real broker.
func (c *Cluster) Fake() *kfake.Cluster { return c.fake }

// Close closes the Cluster's clients and, if it is embedded, stops the
// broker. Against a real broker it only closes the clients. Close may be
// called more than once.
func (c *Cluster) Close() {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		cl := c.client
		c.client = nil
		c.closed = true
		c.mu.Unlock()
		if cl != nil {
			cl.Close()
		}
		if c.fake != nil {
			c.fake.Close()
		}
	})
}

// NewClient returns a new franz-go client seeded with the Cluster's brokers,
// with opts applied after the seeds. The caller must close it.
func (c *Cluster) NewClient(opts ...kgo.Opt) (*kgo.Client, error) {
	all := append([]kgo.Opt{kgo.SeedBrokers(c.brokers...)}, opts...)
	return kgo.NewClient(all...)
}

var errClosed = errors.New("kafkatest: cluster is closed")

// kgoClient returns the shared client that the helpers use for admin
// requests and producing, creating it on first use.
func (c *Cluster) kgoClient() (*kgo.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errClosed
	}
	if c.client != nil {
		return c.client, nil
	}
	cl, err := c.NewClient(
		kgo.ClientID("kafkatest"),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerLinger(0),
		kgo.MaxBufferedRecords(1<<16),
		// Freshly created topics must be seen quickly.
		kgo.MetadataMinAge(50*time.Millisecond),
		kgo.RetryBackoffFn(func(int) time.Duration { return 50 * time.Millisecond }),
	)
	if err != nil {
		return nil, fmt.Errorf("kafkatest: creating client: %w", err)
	}
	c.client = cl
	return cl, nil
}

func cleanBrokers(in []string) []string {
	var out []string
	for _, b := range in {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	return out
}
