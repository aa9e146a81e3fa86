// Command franz is Parallafka on franz-go, the pure-Go client: no cgo, so it
// builds with CGO_ENABLED=0 (a static binary, a scratch image):
//
//	CGO_ENABLED=0 go build ./examples/franz
//	go run ./examples/franz                      # embedded broker (kfake), no setup
//	go run ./examples/franz -brokers host:9092   # a real cluster
//
// It writes 1,000 orders keyed by customer, handles them with 8 concurrent
// handlers, a per-call timeout and a dead-letter topic for the orders that
// fail for good, and checks that each customer's orders came in order. It
// exits 0 only if every order was handled or dead-lettered.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka/franz"
	"github.com/parallafka/parallafka/kafka/kafkatest"
	"github.com/parallafka/parallafka/stages"
)

func main() {
	brokers := flag.String("brokers", os.Getenv("KAFKA_BROKERS"), "bootstrap servers; empty: an embedded broker")
	flag.Parse()
	if err := run(*brokers, 1000); err != nil {
		fmt.Fprintln(os.Stderr, "franz:", err)
		os.Exit(1)
	}
}

// run produces n orders and consumes them until each was handled or
// dead-lettered.
func run(brokers string, n int) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// kafkatest runs the embedded broker, or checks that real brokers answer,
	// and creates the topics; the names are unique per run, so that runs on a
	// real cluster do not read each other's orders.
	var cluster *kafkatest.Cluster
	var err error
	if brokers == "" {
		cluster, err = kafkatest.Start(kafkatest.WithEmbedded())
	} else {
		cluster, err = kafkatest.Start(kafkatest.WithBrokers(strings.Split(brokers, ",")...))
	}
	if err != nil {
		return err
	}
	defer cluster.Close()
	topic := kafkatest.UniqueTopic("orders")
	dlq, group := topic+".dlq", topic+"-franz"
	if err := cluster.CreateTopic(ctx, topic, 6); err != nil {
		return err
	}
	if err := cluster.CreateTopic(ctx, dlq, 1); err != nil {
		return err
	}
	seeds := strings.Split(cluster.Bootstrap(), ",")
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	producer, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.WithLogger(kgo.BasicLogger(os.Stderr, kgo.LogLevelWarn, nil)))
	if err != nil {
		return err
	}
	records := make([]*kgo.Record, n)
	for i := range records {
		customer := i % 50
		records[i] = &kgo.Record{Topic: topic, Key: fmt.Appendf(nil, "customer-%d", customer), Value: fmt.Appendf(nil, "%d", i/50)}
	}
	err = producer.ProduceSync(ctx, records...).FirstErr()
	producer.Close()
	if err != nil {
		return err
	}

	client, err := franz.NewClient([]kgo.Opt{
		kgo.SeedBrokers(seeds...),
		kgo.ConsumerGroup(group),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	}, franz.WithLogger(log))
	if err != nil {
		return err
	}
	src, err := franz.NewSource(client, []string{topic}, franz.String, franz.String)
	if err != nil {
		client.Close()
		return err
	}
	dead, err := franz.NewDeadLetterWriter([]kgo.Opt{kgo.SeedBrokers(seeds...)}, franz.WithLogger(log))
	if err != nil {
		_ = src.Close()
		return err
	}
	defer dead.Close()
	timeout, err := stages.Timeout[string, string](time.Second)
	if err != nil {
		_ = src.Close()
		return err
	}
	deadLetter, err := stages.DeadLetterQueue[string, string](stages.DeadLetterConfig{Writer: dead, Topic: dlq})
	if err != nil {
		_ = src.Close()
		return err
	}
	p, err := parallafka.New(src,
		parallafka.WithLogger(log),
		parallafka.WithMaxConcurrency(8),
		parallafka.WithMiddleware(timeout),
		parallafka.WithAfterHandle("dead-letter", deadLetter),
	)
	if err != nil {
		_ = src.Close()
		return err
	}

	var (
		mu       sync.Mutex
		last     = map[string]int{}
		outOfOrd int
		done     atomic.Int64
	)
	err = p.Consume(ctx, func(ctx context.Context, m *parallafka.Message[string, string]) error {
		defer func() {
			if done.Add(1) == int64(n) {
				cancel()
			}
		}()
		seq, _ := strconv.Atoi(m.Value)
		mu.Lock()
		if prev, ok := last[m.Key]; ok && seq <= prev {
			outOfOrd++
		}
		last[m.Key] = seq
		mu.Unlock()
		if m.Offset%97 == 13 {
			return stages.NonRetryable(errors.New("order rejected")) // goes to the dead-letter topic
		}
		return nil
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	if got := done.Load(); got < int64(n) || outOfOrd > 0 {
		return fmt.Errorf("handled %d of %d orders, %d out of order", got, n, outOfOrd)
	}
	fmt.Printf("handled %d orders on franz-go, each customer in order\n", n)
	return nil
}
