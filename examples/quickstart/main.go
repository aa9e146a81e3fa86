// Command quickstart is the stock-ticker example of Parallafka: it consumes
// price updates keyed by ticker with 7 concurrent handlers, checks that each
// ticker's prices arrive in order, and prints a summary.
//
//	go run ./examples/quickstart                      # embedded broker, no setup
//	go run ./examples/quickstart -brokers host:9092   # a real cluster (or KAFKA_BROKERS)
//	go run ./examples/quickstart -client franz        # franz-go instead of confluent-kafka-go
//	CGO_ENABLED=0 go run ./examples/quickstart        # no cgo: franz-go only
//
// It exits 0 only if every message was handled, each ticker in order, and
// the group's committed offsets reached the end of every partition.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"time"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka/kafkatest"
)

// StockPrice is one price update; Seq numbers each ticker's updates so the
// handler can check their order.
type StockPrice struct {
	TickerSymbol string  `json:"ticker"`
	Price        float64 `json:"price"`
	Seq          int     `json:"seq"`
}

func main() {
	brokers := flag.String("brokers", os.Getenv("KAFKA_BROKERS"), "bootstrap servers of a Kafka cluster; empty starts an embedded broker (env KAFKA_BROKERS)")
	messages := flag.Int("messages", 5000, "price updates to produce")
	tickers := flag.Int("tickers", 50, "distinct tickers (keys)")
	partitions := flag.Int("partitions", 6, "partitions of the topic")
	concurrency := flag.Int("concurrency", 7, "concurrent handlers")
	maxDelay := flag.Duration("handler-delay", 2*time.Millisecond, "each handler sleeps up to this long, as if it called a service")
	client := flag.String("client", defaultClient, "the Kafka client under the pipeline: confluent (confluent-kafka-go, cgo) or franz (franz-go, pure Go)")
	verbose := flag.Bool("v", false, "log the pipeline's events")
	flag.Parse()
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if err := run(logger, *client, *brokers, *messages, *tickers, *partitions, *concurrency, *maxDelay); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

func run(logger *slog.Logger, client, brokers string, messages, tickers, partitions, concurrency int, maxDelay time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	cluster, err := startCluster(brokers)
	if err != nil {
		return err
	}
	defer cluster.Close()
	topic := kafkatest.UniqueTopic("ultimate-stonks-watchlist")
	if err := cluster.CreateTopic(ctx, topic, partitions); err != nil {
		return err
	}
	fmt.Printf("producing %d price updates for %d tickers to %s on %s (%s); consuming with %s\n",
		messages, tickers, topic, cluster.Bootstrap(), brokerKind(cluster), client)
	if err := producePrices(ctx, cluster, topic, messages, tickers); err != nil {
		return err
	}

	var src parallafka.Source[string, StockPrice]
	switch client {
	case "confluent":
		src, err = confluentSource(cluster.Bootstrap(), "stonks-autotrader-"+topic, topic, logger)
	case "franz":
		src, err = franzSource(cluster.Bootstrap(), "stonks-autotrader-"+topic, topic, logger)
	default:
		err = fmt.Errorf("-client %q: want confluent or franz", client)
	}
	if err != nil {
		return err
	}
	p, err := parallafka.New(src, parallafka.WithMaxConcurrency(concurrency), parallafka.WithLogger(logger))
	if err != nil {
		return err
	}

	checker := newOrderChecker()
	var handled atomic.Int64
	consumeCtx, done := context.WithCancel(ctx)
	defer done()
	start := time.Now()
	progressDone := showProgress(&handled, messages)
	err = p.Consume(consumeCtx, func(ctx context.Context, msg *parallafka.Message[string, StockPrice]) error {
		// This handler code processes up to 7 messages at the same time;
		// one ticker's updates one at a time, in order.
		checker.check(msg.Key, msg.Value.Seq)
		time.Sleep(rand.N(maxDelay + 1))
		if handled.Add(1) == int64(messages) {
			done() // all handled: a graceful stop commits and leaves the group
		}
		return nil
	})
	elapsed := time.Since(start)
	progressDone()
	if err != nil {
		return err
	}

	committedOK, err := committedToEnd(ctx, cluster, "stonks-autotrader-"+topic, topic)
	if err != nil {
		return err
	}
	n := handled.Load()
	fmt.Printf("handled %d of %d messages in %v (%.0f msg/s) with %d concurrent handlers\n",
		n, messages, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), concurrency)
	fmt.Printf("per-ticker order held: %v; committed offsets at the end of every partition: %v\n",
		checker.ok(), committedOK)
	if n != int64(messages) || !checker.ok() || !committedOK {
		return fmt.Errorf("FAILED: %s", checker.firstError())
	}
	fmt.Println("OK")
	return nil
}

func startCluster(brokers string) (*kafkatest.Cluster, error) {
	if brokers != "" {
		return kafkatest.Start(kafkatest.WithBrokers(brokers))
	}
	return kafkatest.Start(kafkatest.WithEmbedded())
}

func brokerKind(c *kafkatest.Cluster) string {
	if c.Embedded() {
		return "embedded broker"
	}
	return "external cluster"
}

func producePrices(ctx context.Context, cluster *kafkatest.Cluster, topic string, messages, tickers int) error {
	seq := make([]int, tickers)
	price := make([]float64, tickers)
	records := make([]kafkatest.Record, messages)
	for i := range records {
		t := rand.N(tickers)
		seq[t]++
		if price[t] == 0 {
			price[t] = 10 + rand.Float64()*490
		}
		price[t] *= 1 + (rand.Float64()-0.5)/50
		ticker := fmt.Sprintf("TCK%03d", t)
		value, err := json.Marshal(StockPrice{TickerSymbol: ticker, Price: price[t], Seq: seq[t]})
		if err != nil {
			return err
		}
		records[i] = kafkatest.Record{Key: []byte(ticker), Value: value, Partition: -1}
	}
	return cluster.Produce(ctx, topic, records)
}

func committedToEnd(ctx context.Context, cluster *kafkatest.Cluster, group, topic string) (bool, error) {
	end, err := cluster.EndOffsets(ctx, topic)
	if err != nil {
		return false, err
	}
	committed, err := cluster.CommittedOffsets(ctx, group, topic)
	if err != nil {
		return false, err
	}
	for p, e := range end {
		if e > 0 && committed[p] != e {
			return false, nil
		}
	}
	return true, nil
}

// orderChecker checks that each ticker's updates arrive as 1, 2, 3, ...
type orderChecker struct {
	mu   sync.Mutex
	last map[string]int
	errs []string
}

func newOrderChecker() *orderChecker { return &orderChecker{last: make(map[string]int)} }

func (c *orderChecker) check(ticker string, seq int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if want := c.last[ticker] + 1; seq != want {
		c.errs = append(c.errs, fmt.Sprintf("%s: update %d arrived when %d was due", ticker, seq, want))
	}
	c.last[ticker] = seq
}

func (c *orderChecker) ok() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.errs) == 0
}

func (c *orderChecker) firstError() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.errs) == 0 {
		return "not every message was handled, or commits fell short"
	}
	return fmt.Sprintf("%d order violations, first: %s", len(c.errs), c.errs[0])
}

// showProgress prints a progress line on stderr every half second; the
// returned function stops it.
func showProgress(handled *atomic.Int64, total int) (stop func()) {
	ticker := time.NewTicker(500 * time.Millisecond)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer ticker.Stop()
		for {
			select {
			case <-ticker.C:
				n := handled.Load()
				fmt.Fprintf(os.Stderr, "\rhandled %d/%d (%.0f%%)", n, total, 100*float64(n)/float64(total))
			case <-done:
				fmt.Fprintln(os.Stderr)
				return
			}
		}
	})
	return func() { close(done); wg.Wait() }
}
