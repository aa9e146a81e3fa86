// Command member is one member process of the chaos test (package chaos): it
// consumes a topic with Parallafka in a consumer group and appends to its
// own history file a line when each handling starts and ends, and one per
// rebalance event. Every line is one write(2) on a file opened with
// O_APPEND, made before the handler returns, so the history survives a
// SIGKILL. SIGTERM or SIGINT stops it gracefully.
//
// -mode picks how it consumes: single (Consume, a fixed concurrency),
// adaptive (Consume with WithAdaptiveConcurrency(1, 2 × concurrency)) or
// batch (ConsumeBatch, batches of up to 16 messages whose messages are
// handled one after the other, each with its own start and end line).
// -client picks the Kafka client: confluent (package kafka) or franz
// (package kafka/franz).
//
// -eos makes the member transactional (parallafka.WithTransactions over
// kafka.NewTransactor or franz.NewTransactor, with -txn-id as its
// transactional id: a member restarted with the same id fences its
// predecessor and aborts what that one left open): each handling produces
// one output to the -out topic through parallafka.Produce, keyed as its
// input, with the value
//
//	partition@offset key seq run
//
// of the input (its partition, offset, key and per-key sequence number)
// and the member run that produced it.
//
// History lines, space-separated:
//
//	B run member pid ns                                   the process started
//	S run member topic partition offset key seq ns        a handling started
//	E run member topic partition offset key seq ns        it ended (handled)
//	R run member event topic partition ns                 assigned, revoked or lost
//	X run member ns error                                 Consume returned
//
// ns is the wall clock in Unix nanoseconds.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/internal/keyed"
	"github.com/parallafka/parallafka/kafka"
	"github.com/parallafka/parallafka/kafka/franz"
	"github.com/parallafka/parallafka/pipeline"
)

func main() {
	brokers := flag.String("brokers", os.Getenv("KAFKA_BROKERS"), "bootstrap servers")
	topic := flag.String("topic", "", "topic to consume")
	group := flag.String("group", "", "consumer group")
	protocol := flag.String("protocol", "cooperative-sticky", "cooperative-sticky, range, or consumer (KIP-848 group.protocol=consumer)")
	run := flag.String("run", "", "id of this member run (one process)")
	member := flag.String("member", "", "id of the member")
	history := flag.String("history", "", "history file to append to")
	concurrency := flag.Int("concurrency", 8, "concurrent handlers")
	maxWork := flag.Duration("work", 4*time.Millisecond, "each handler sleeps up to this long")
	commitInterval := flag.Duration("commit-interval", 500*time.Millisecond, "commit interval")
	mode := flag.String("mode", "single", "single, adaptive or batch")
	client := flag.String("client", "confluent", "confluent (package kafka, confluent-kafka-go) or franz (package kafka/franz, franz-go)")
	eos := flag.Bool("eos", false, "transactional: produce one output per input to -out, in Kafka transactions")
	out := flag.String("out", "", "output topic (-eos)")
	txnID := flag.String("txn-id", "", "transactional id (-eos); default chaos-<group>-<member>")
	txnTimeout := flag.Duration("txn-timeout", 20*time.Second, "transaction timeout (-eos)")
	flag.Parse()
	if *topic == "" || *group == "" || *run == "" || *history == "" || *brokers == "" {
		fmt.Fprintln(os.Stderr, "member: -brokers, -topic, -group, -run and -history are required")
		os.Exit(2)
	}
	var tx *txnConfig
	if *eos {
		if *out == "" || *member == "" && *txnID == "" {
			fmt.Fprintln(os.Stderr, "member: -eos needs -out, and -member or -txn-id")
			os.Exit(2)
		}
		tx = &txnConfig{out: *out, id: *txnID, timeout: *txnTimeout}
		if tx.id == "" {
			tx.id = "chaos-" + *group + "-" + *member
		}
	}
	if err := consume(*client, *brokers, *topic, *group, *protocol, *mode, *run, *member, *history, *concurrency, *maxWork, *commitInterval, tx); err != nil {
		fmt.Fprintf(os.Stderr, "member %s: %v\n", *run, err)
		os.Exit(1)
	}
}

// txnConfig is the transactional mode's (-eos).
type txnConfig struct {
	out     string        // output topic
	id      string        // transactional id
	timeout time.Duration // transaction timeout
}

// transactor is a Transactor to close after Consume.
type transactor interface {
	pipeline.Transactor
	Close() error
}

func consume(client, brokers, topic, group, protocol, mode, run, member, history string, concurrency int, maxWork, commitInterval time.Duration, txn *txnConfig) error {
	handlers := parallafka.WithMaxConcurrency(concurrency)
	switch mode {
	case "single", "batch":
	case "adaptive":
		handlers = parallafka.WithAdaptiveConcurrency(1, 2*concurrency)
	default:
		return fmt.Errorf("unknown mode %q", mode)
	}
	// SIGTERM stops it gracefully from the start: one that comes while the
	// clients start (a transactional producer's initialization can take
	// seconds after a broker restart) makes Consume return at once.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	f, err := os.OpenFile(history, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	// write appends one line with one write(2): with O_APPEND, lines of
	// concurrent handlers never interleave, and a line written is in the
	// file even if the process is killed right after.
	write := func(format string, args ...any) {
		if _, err := f.Write(fmt.Appendf(nil, format, args...)); err != nil {
			fmt.Fprintf(os.Stderr, "member %s: history: %v\n", run, err)
			os.Exit(3)
		}
	}
	write("B %s %s %d %d\n", run, member, os.Getpid(), time.Now().UnixNano())

	level := slog.LevelWarn
	if v := os.Getenv("CHAOS_MEMBER_LOG_LEVEL"); v != "" { // debug, info: to find a violation's cause
		if err := level.UnmarshalText([]byte(v)); err != nil {
			return fmt.Errorf("CHAOS_MEMBER_LOG_LEVEL: %w", err)
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("run", run)
	var src parallafka.Source[string, string]
	var tx transactor
	switch client {
	case "confluent":
		src, tx, err = confluentSource(brokers, topic, group, protocol, run, log, txn)
	case "franz":
		src, tx, err = franzSource(brokers, topic, group, protocol, run, log, txn)
	default:
		err = fmt.Errorf("unknown client %q", client)
	}
	if err != nil {
		return err
	}
	if tx != nil {
		defer func() {
			if err := tx.Close(); err != nil {
				fmt.Fprintf(os.Stderr, "member %s: closing the transactor: %v\n", run, err)
			}
		}()
	}
	event := func(kind string) func([]pipeline.TopicPartition) {
		return func(tps []pipeline.TopicPartition) {
			now := time.Now().UnixNano()
			var sb strings.Builder
			for _, tp := range tps {
				fmt.Fprintf(&sb, "R %s %s %s %s %d %d\n", run, member, kind, tp.Topic, tp.Partition, now)
			}
			if sb.Len() > 0 {
				write("%s", sb.String())
			}
		}
	}
	options := []parallafka.Option{
		handlers,
		parallafka.WithMaxBatch(16, 4<<20),
		parallafka.WithCommitInterval(commitInterval),
		parallafka.WithRevokeTimeout(10 * time.Second),
		parallafka.WithShutdownTimeout(15 * time.Second),
		parallafka.WithLogger(log),
		parallafka.WithObserver(pipeline.ObserverFuncs{
			PartitionsAssigned: event("assigned"), PartitionsRevoked: event("revoked"), PartitionsLost: event("lost"),
		}.Observer()),
	}
	if tx != nil {
		options = append(options, parallafka.WithTransactions(tx))
	}
	p, err := parallafka.New(src, options...)
	if err != nil {
		_ = src.Close()
		return err
	}

	handle := func(ctx context.Context, msg *parallafka.Message[string, string], work time.Duration) error {
		key, seq, err := keyed.Parse([]byte(msg.Value))
		if err != nil {
			return err
		}
		write("S %s %s %s %d %d %s %d %d\n", run, member, msg.Topic, msg.Partition, msg.Offset, key, seq, time.Now().UnixNano())
		// A few milliseconds of work; short enough to finish whatever the
		// context says, so a handling that started also ends.
		time.Sleep(rand.N(work + 1))
		if tx != nil {
			// The output: it joins the transaction that commits msg, once
			// msg finished (after the end line below).
			out := pipeline.Record{Topic: txn.out, Key: msg.RawKey,
				Value: fmt.Appendf(nil, "%d@%d %s %d %s", msg.Partition, msg.Offset, key, seq, run)}
			if err := parallafka.Produce(ctx, msg, out); err != nil {
				return fmt.Errorf("producing the output of %d@%d: %w", msg.Partition, msg.Offset, err)
			}
		}
		write("E %s %s %s %d %d %s %d %d\n", run, member, msg.Topic, msg.Partition, msg.Offset, key, seq, time.Now().UnixNano())
		return nil
	}
	if mode == "batch" {
		err = p.ConsumeBatch(ctx, func(ctx context.Context, batch []*parallafka.Message[string, string]) error {
			for _, msg := range batch {
				if err := handle(ctx, msg, maxWork/4); err != nil {
					return err
				}
			}
			return nil
		})
	} else {
		err = p.Consume(ctx, func(ctx context.Context, msg *parallafka.Message[string, string]) error {
			return handle(ctx, msg, maxWork)
		})
	}
	st := p.Stats()
	write("X %s %s %d %q\n", run, member, time.Now().UnixNano(), fmt.Sprint(err))
	fmt.Fprintf(os.Stderr, "member %s (%s): Consume returned %v; stats %+v\n", run, mode, err, st)
	if closeTimeoutOnly(err) {
		// The final commit was made; librdkafka went on leaving the group
		// in the background past kafka.WithCloseTimeout (seen when a member
		// stops in the middle of a cooperative rebalance): a clean stop.
		return nil
	}
	return err
}

// confluentSource is a Source over confluent-kafka-go, with short fetch
// waits, metadata refreshes and backoffs, so that the member notices a
// broker's return fast.
// With txn, it returns the transactor too.
func confluentSource(brokers, topic, group, protocol, run string, log *slog.Logger, txn *txnConfig) (parallafka.Source[string, string], transactor, error) {
	cfg := ckafka.ConfigMap{
		"bootstrap.servers":                       brokers,
		"client.id":                               "chaos-" + run,
		"group.id":                                group,
		"auto.offset.reset":                       "earliest",
		"enable.auto.commit":                      false,
		"fetch.wait.max.ms":                       100,
		"fetch.error.backoff.ms":                  50,
		"coordinator.query.interval.ms":           1000,
		"topic.metadata.refresh.interval.ms":      1000,
		"topic.metadata.refresh.fast.interval.ms": 100,
		"metadata.max.age.ms":                     3000,
		"reconnect.backoff.ms":                    10,
		"reconnect.backoff.max.ms":                500,
		"retry.backoff.ms":                        20,
		"retry.backoff.max.ms":                    200,
		"log.connection.close":                    false,
		"enable.metrics.push":                     false,
	}
	switch protocol {
	case "consumer":
		// KIP-848: the broker assigns and sets the session and heartbeat
		// timeouts; the client may not set them.
		cfg["group.protocol"] = "consumer"
	case "cooperative-sticky", "range", "roundrobin":
		cfg["partition.assignment.strategy"] = protocol
		cfg["session.timeout.ms"] = 6000
		cfg["heartbeat.interval.ms"] = 500
	default:
		return nil, nil, fmt.Errorf("unknown protocol %q", protocol)
	}
	consumer, err := kafka.NewConsumer(&cfg, kafka.WithLogger(log))
	if err != nil {
		return nil, nil, err
	}
	src, err := kafka.NewSource(consumer, []string{topic}, kafka.String, kafka.String, kafka.WithLogger(log))
	if err != nil {
		_ = consumer.Close()
		return nil, nil, err
	}
	if txn == nil {
		return src, nil, nil
	}
	tx, err := kafka.NewTransactor(src, &ckafka.ConfigMap{
		"bootstrap.servers":        brokers,
		"client.id":                "chaos-" + run + "-tx",
		"transactional.id":         txn.id,
		"transaction.timeout.ms":   int(txn.timeout.Milliseconds()),
		"reconnect.backoff.ms":     10,
		"reconnect.backoff.max.ms": 500,
		"retry.backoff.ms":         20,
		"retry.backoff.max.ms":     200,
		"log.connection.close":     false,
		"enable.metrics.push":      false,
	}, kafka.WithLogger(log))
	if err != nil {
		_ = src.Close()
		return nil, nil, err
	}
	return src, tx, nil
}

// franzSource is the same over franz-go.
func franzSource(brokers, topic, group, protocol, run string, log *slog.Logger, txn *txnConfig) (parallafka.Source[string, string], transactor, error) {
	opts := []kgo.Opt{
		kgo.SeedBrokers(strings.Split(brokers, ",")...),
		kgo.ClientID("chaos-" + run),
		kgo.ConsumerGroup(group),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(100 * time.Millisecond),
		kgo.MetadataMaxAge(3 * time.Second),
		kgo.MetadataMinAge(100 * time.Millisecond),
		kgo.RetryBackoffFn(func(tries int) time.Duration { return min(20*time.Millisecond<<min(tries, 4), 200*time.Millisecond) }),
		kgo.DisableClientMetrics(),
	}
	switch protocol {
	case "consumer":
		opts = append(opts, kgo.ServerSideBalancer())
	case "cooperative-sticky":
		opts = append(opts, kgo.Balancers(kgo.CooperativeStickyBalancer()))
	case "range":
		opts = append(opts, kgo.Balancers(kgo.RangeBalancer()))
	case "roundrobin":
		opts = append(opts, kgo.Balancers(kgo.RoundRobinBalancer()))
	default:
		return nil, nil, fmt.Errorf("unknown protocol %q", protocol)
	}
	if protocol != "consumer" {
		opts = append(opts, kgo.SessionTimeout(6*time.Second), kgo.HeartbeatInterval(500*time.Millisecond))
	}
	cl, err := franz.NewClient(opts, franz.WithLogger(log))
	if err != nil {
		return nil, nil, err
	}
	src, err := franz.NewSource(cl, []string{topic}, franz.String, franz.String, franz.WithLogger(log))
	if err != nil {
		cl.Close()
		return nil, nil, err
	}
	if txn == nil {
		return src, nil, nil
	}
	tx, err := franz.NewTransactor(src, []kgo.Opt{
		kgo.SeedBrokers(strings.Split(brokers, ",")...),
		kgo.ClientID("chaos-" + run + "-tx"),
		kgo.TransactionalID(txn.id),
		kgo.TransactionTimeout(txn.timeout),
		kgo.MetadataMaxAge(3 * time.Second),
		kgo.MetadataMinAge(100 * time.Millisecond),
		kgo.RetryBackoffFn(func(tries int) time.Duration { return min(20*time.Millisecond<<min(tries, 4), 200*time.Millisecond) }),
	}, franz.WithLogger(log))
	if err != nil {
		_ = src.Close()
		return nil, nil, err
	}
	return src, tx, nil
}

// closeTimeoutOnly reports whether err is nothing but the source's close
// timeout.
func closeTimeoutOnly(err error) bool {
	return errors.Is(err, kafka.ErrCloseTimeout) && !strings.Contains(err.Error(), "\n") &&
		strings.HasPrefix(err.Error(), "parallafka: closing source:")
}
