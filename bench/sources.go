package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka/kafka"
	"github.com/parallafka/parallafka/kafka/franz"
	"github.com/parallafka/parallafka/kafka/kafkatest"
	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/pipeline/memsource"
)

const benchTopic = "bench"

var quiet = slog.New(slog.DiscardHandler)

// timedSource records the moment each message is polled: the start of its
// poll → handler-end latency. It adds one recorder call per Poll.
type timedSource[K, V any] struct {
	pipeline.Source[K, V]
	rec *recorder
}

func (s *timedSource[K, V]) Poll(timeout time.Duration) (*pipeline.Message[K, V], error) {
	msg, err := s.Source.Poll(timeout)
	if msg != nil {
		s.rec.polled(msg.Partition, msg.Offset)
	}
	return msg, err
}

// PollBatch records each message as Poll does; it uses the source's
// PollBatch when it has one (see pipeline.BatchSource).
func (s *timedSource[K, V]) PollBatch(timeout time.Duration, dst []*pipeline.Message[K, V], max int, maxBytes int64) ([]*pipeline.Message[K, V], error) {
	start := len(dst)
	var err error
	if b, ok := s.Source.(pipeline.BatchSource[K, V]); ok {
		dst, err = b.PollBatch(timeout, dst, max, maxBytes)
	} else {
		var msg *pipeline.Message[K, V]
		if msg, err = s.Source.Poll(timeout); msg != nil {
			dst = append(dst, msg)
		}
	}
	for _, msg := range dst[start:] {
		s.rec.polled(msg.Partition, msg.Offset)
	}
	return dst, err
}

// Watermarks passes the source's watermarks on: the pipeline's poll
// steering uses them (see pipeline.WatermarkSource).
func (s *timedSource[K, V]) Watermarks(tp pipeline.TopicPartition) (low, high int64, ok bool) {
	if w, is := s.Source.(pipeline.WatermarkSource); is {
		return w.Watermarks(tp)
	}
	return 0, 0, false
}

// memSource returns an in-memory source holding the workload: one topic,
// the workload's partitions, each message's key, and the shared value.
func memSource(w *workload) *memsource.Source[string, []byte] {
	src := memsource.New[string, []byte]()
	src.AddTopic(benchTopic, w.partitions)
	for p, msgs := range w.byPart {
		for _, i := range msgs {
			src.Produce(benchTopic, int32(p), w.keyNames[w.keyOf[i]], w.value)
		}
	}
	return src
}

// broker is the Kafka a sweep runs against: the embedded one or a real one.
type broker struct {
	cluster *kafkatest.Cluster
	seq     int
	props   [][2]string // -X
	client  string
	started int64 // Unix ns: tells this invocation's groups from another's on a kept topic
}

func startBroker(c *config) (*broker, error) {
	var opts []kafkatest.Option
	if c.source == "embedded" {
		opts = append(opts, kafkatest.WithEmbedded())
	} else {
		opts = append(opts, kafkatest.WithBrokers(c.brokers))
	}
	cluster, err := kafkatest.Start(opts...)
	if err != nil {
		return nil, err
	}
	b := &broker{cluster: cluster, props: c.props, client: c.client, started: time.Now().UnixNano()}
	if _, err := b.franzProps(); err != nil && c.client == "franz" {
		cluster.Close()
		return nil, err
	}
	return b, nil
}

func (b *broker) Close() { b.cluster.Close() }

// load creates a fresh topic and produces the workload into it, in order,
// each message to its partition, and records where each partition starts.
//
// With keep (-keep-topic) the topic is that one: reused when it already
// has the workload's partitions each holding exactly its messages from
// offset 0 (a topic this harness loaded with the same flags), else
// created and loaded.
func (b *broker) load(ctx context.Context, w *workload, keep string, log io.Writer) (string, error) {
	topic := kafkatest.UniqueTopic("parallafka-bench")
	if keep != "" {
		topic = keep
		if end, err := b.cluster.EndOffsets(ctx, topic); err == nil {
			same := len(end) == w.partitions
			for p, msgs := range w.byPart {
				same = same && end[int32(p)] == int64(len(msgs))
			}
			if !same {
				return "", fmt.Errorf("-keep-topic %s exists and does not hold this workload (end offsets %v)", topic, end)
			}
			fmt.Fprintf(log, "# reusing %s\n", topic)
			return topic, nil // each partition's base stays 0
		}
	}
	if err := b.cluster.CreateTopic(ctx, topic, w.partitions); err != nil {
		return "", err
	}
	start := time.Now()
	const chunk = 50000
	firstSeen := make([]bool, w.partitions)
	next := make([]int64, w.partitions)
	rng := rand.New(rand.NewPCG(uint64(w.n), uint64(len(w.value))))
	for lo := 0; lo < w.n; lo += chunk {
		hi := min(lo+chunk, w.n)
		records := make([]kafkatest.Record, hi-lo)
		// Every value is distinct random bytes: the broker cannot compress
		// the backlog away, and the client copies each value it delivers.
		values := make([]byte, len(records)*len(w.value))
		for j := 0; j+8 <= len(values); j += 8 {
			binary.LittleEndian.PutUint64(values[j:], rng.Uint64())
		}
		for j := range records {
			i := lo + j
			value := values[j*len(w.value) : (j+1)*len(w.value) : (j+1)*len(w.value)]
			records[j] = kafkatest.Record{Key: w.keyBytes[w.keyOf[i]], Value: value, Partition: w.partOf[i]}
		}
		if err := b.cluster.Produce(ctx, topic, records); err != nil {
			return "", err
		}
		for _, r := range records {
			p := r.Partition
			if !firstSeen[p] {
				firstSeen[p], w.base[p], next[p] = true, r.Offset, r.Offset
			}
			if r.Offset != next[p] {
				return "", fmt.Errorf("partition %d: offset %d where %d was expected: the harness needs contiguous offsets", p, r.Offset, next[p])
			}
			next[p]++
		}
		if time.Since(start) > time.Second {
			fmt.Fprintf(log, "\rproducing %s: %d/%d", topic, hi, w.n)
		}
	}
	if time.Since(start) > time.Second {
		fmt.Fprintf(log, "\rproduced %d messages to %s in %v\n", w.n, topic, time.Since(start).Round(time.Millisecond))
	}
	return topic, nil
}

// group returns a fresh consumer group id, so that every run reads the
// topic from its start (a kept topic too, -keep-topic).
func (b *broker) group(topic, what string) string {
	b.seq++
	return fmt.Sprintf("%s-%s-%d-%x", topic, what, b.seq, b.started)
}

// consumerConfig is the consumer configuration every run and baseline
// uses: kafkatest's (earliest, no auto-commit, short fetch waits) with
// kafka.NewConsumer's fetch defaults and librdkafka's own logging limited
// to errors.
func (b *broker) consumerConfig(group string) *ckafka.ConfigMap {
	cfg := b.cluster.ConsumerConfig(group)
	_ = cfg.SetKey("log_level", 3)
	// kafka.NewConsumer's fetch defaults, so that the raw loops (which use
	// confluent-kafka-go directly) are tuned alike; -X overrides them.
	_ = cfg.SetKey("fetch.queue.backoff.ms", 0)
	_ = cfg.SetKey("queued.min.messages", 1_000_000)
	_ = cfg.SetKey("queued.max.messages.kbytes", 32<<10)
	_ = cfg.SetKey("max.partition.fetch.bytes", 256<<10)
	if b.client != "franz" {
		for _, kv := range b.props {
			_ = cfg.SetKey(kv[0], kv[1])
		}
	}
	return cfg
}

// franzProps are the -X properties that -client franz understands, named
// as the Java client names them.
var franzProps = []string{"fetch.max.bytes", "max.partition.fetch.bytes", "fetch.max.wait.ms", "max.concurrent.fetches"}

// franzProps turns the -X properties into kgo options.
func (b *broker) franzProps() ([]kgo.Opt, error) {
	var opts []kgo.Opt
	for _, kv := range b.props {
		n, err := strconv.Atoi(kv[1])
		if err != nil || n < 0 {
			return nil, fmt.Errorf("-X %s=%s: want a non-negative integer", kv[0], kv[1])
		}
		switch kv[0] {
		case "fetch.max.bytes":
			opts = append(opts, kgo.FetchMaxBytes(int32(n)))
		case "max.partition.fetch.bytes":
			opts = append(opts, kgo.FetchMaxPartitionBytes(int32(n)))
		case "fetch.max.wait.ms":
			opts = append(opts, kgo.FetchMaxWait(time.Duration(n)*time.Millisecond))
		case "max.concurrent.fetches":
			opts = append(opts, kgo.MaxConcurrentFetches(n))
		default:
			return nil, fmt.Errorf("-X %s: -client franz knows %s", kv[0], strings.Join(franzProps, ", "))
		}
	}
	return opts, nil
}

// franzOpts is the franz-go counterpart of consumerConfig, for a client
// of group (none when group is ""): the cluster's brokers, the start of
// the topic when no offset is committed, and the same short fetch wait and
// heartbeat as kafkatest's confluent configuration.
func (b *broker) franzOpts(group string) []kgo.Opt {
	opts := []kgo.Opt{
		kgo.SeedBrokers(strings.Split(b.cluster.Bootstrap(), ",")...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(100 * time.Millisecond),
		kgo.DisableClientMetrics(),
	}
	extra, _ := b.franzProps() // checked by startBroker
	opts = append(opts, extra...)
	if group != "" {
		opts = append(opts,
			kgo.ConsumerGroup(group),
			kgo.SessionTimeout(6*time.Second),
			kgo.HeartbeatInterval(500*time.Millisecond),
		)
	}
	return opts
}

// source returns a Parallafka source over a new consumer of topic, with
// the client named by -client.
func (b *broker) source(topic, client string) (pipeline.Source[string, []byte], error) {
	group := b.group(topic, "parallafka")
	if client == "franz" {
		cl, err := franz.NewClient(b.franzOpts(group), franz.WithLogger(quiet))
		if err != nil {
			return nil, err
		}
		src, err := franz.NewSource(cl, []string{topic}, franz.String, franz.Bytes, franz.WithLogger(quiet))
		if err != nil {
			cl.Close()
			return nil, err
		}
		return src, nil
	}
	consumer, err := kafka.NewConsumer(b.consumerConfig(group), kafka.WithLogger(quiet))
	if err != nil {
		return nil, err
	}
	src, err := kafka.NewSource(consumer, []string{topic}, kafka.String, kafka.Bytes, kafka.WithLogger(quiet))
	if err != nil {
		consumer.Close()
		return nil, err
	}
	return src, nil
}
