// Command exactlyonce reads orders, and for each writes the amount it adds
// to its customer's total to an output topic, in Kafka transactions
// (parallafka.WithTransactions): two members share the work, the second
// joining once a quarter is done (the partitions it takes are handed over in the first
// member's transactions), and 5% of the handler calls fail once and are
// retried. A read_committed reader then sums the outputs into per-customer
// totals, which must equal the totals of the orders: each order counted
// exactly once, each customer's outputs in order.
//
//	go run ./examples/exactlyonce                      # embedded broker, no setup
//	go run ./examples/exactlyonce -brokers host:9092   # a real cluster (or KAFKA_BROKERS)
//	go run ./examples/exactlyonce -client franz        # franz-go instead of confluent-kafka-go
//
// It exits 0 only if the totals are exact.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka/kafkatest"
	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/stages"
)

// Order is one input record, keyed by customer; Seq numbers a customer's
// orders.
type Order struct {
	Customer string `json:"customer"`
	Seq      int    `json:"seq"`
	Cents    int64  `json:"cents"`
}

// member is one consumer instance: a Source and the Transactor that
// commits for it.
type member struct {
	src parallafka.Source[string, Order]
	tx  interface {
		pipeline.Transactor
		Close() error
	}
}

func main() {
	brokers := flag.String("brokers", os.Getenv("KAFKA_BROKERS"), "bootstrap servers of a Kafka cluster; empty starts an embedded broker (env KAFKA_BROKERS)")
	orders := flag.Int("orders", 6000, "orders to produce")
	customers := flag.Int("customers", 40, "distinct customers (keys)")
	partitions := flag.Int("partitions", 4, "partitions of the topics")
	client := flag.String("client", defaultClient, "the Kafka client: confluent (confluent-kafka-go, cgo) or franz (franz-go, pure Go)")
	verbose := flag.Bool("v", false, "log the pipeline's events")
	flag.Parse()
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if err := run(logger, *client, *brokers, *orders, *customers, *partitions); err != nil {
		fmt.Fprintln(os.Stderr, "exactlyonce:", err)
		os.Exit(1)
	}
}

func run(logger *slog.Logger, client, brokers string, orders, customers, partitions int) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if client != "confluent" && client != "franz" {
		return fmt.Errorf("-client %q: want confluent or franz", client)
	}
	cluster, err := startCluster(brokers)
	if err != nil {
		return err
	}
	defer cluster.Close()
	in, out := kafkatest.UniqueTopic("orders"), kafkatest.UniqueTopic("customer-totals")
	for _, topic := range []string{in, out} {
		if err := cluster.CreateTopic(ctx, topic, partitions); err != nil {
			return err
		}
	}
	want, err := produceOrders(ctx, cluster, in, orders, customers)
	if err != nil {
		return err
	}
	group := "totals-" + in
	fmt.Printf("%d orders of %d customers in %s on %s; two members (%s) write the amounts to %s in transactions\n",
		orders, customers, in, cluster.Bootstrap(), client, out)

	var handled atomic.Int64
	perMember := map[string]*atomic.Int64{"a": new(atomic.Int64), "b": new(atomic.Int64)}
	handlerOf := func(name string) parallafka.Handler[string, Order] {
		return func(ctx context.Context, m *parallafka.Message[string, Order]) error {
			if m.Attempt == 1 && rand.N(20) == 0 {
				return errors.New("a downstream hiccup") // retried: this attempt's output is dropped
			}
			time.Sleep(rand.N(20 * time.Millisecond)) // as if it called a service
			value, err := json.Marshal(m.Value)
			if err != nil {
				return err
			}
			handled.Add(1)
			perMember[name].Add(1)
			return parallafka.Produce(ctx, m, pipeline.Record{Topic: out, Key: m.RawKey, Value: value})
		}
	}
	// Each member runs until its stop is called; stopping one waits for it.
	var stops []func() error
	stopAll := func() error { // the newest first, one at a time: each leaves a group that is still there
		var errs []error
		for i := len(stops) - 1; i >= 0; i-- {
			errs = append(errs, stops[i]())
		}
		stops = nil
		return errors.Join(errs...)
	}
	defer stopAll()
	start := func(name string) error {
		mb, err := newMember(client, cluster.Bootstrap(), group, in, group+"-"+name, logger)
		if err != nil {
			return err
		}
		retry, err := stages.Retry[string, Order](stages.RetryConfig{MaxAttempts: 3, InitialBackoff: 10 * time.Millisecond})
		if err != nil {
			return err
		}
		p, err := parallafka.New(mb.src, parallafka.WithLogger(logger), parallafka.WithMaxConcurrency(16),
			parallafka.WithTransactions(mb.tx), parallafka.WithCommitInterval(100*time.Millisecond),
			parallafka.WithAfterHandle("retry", retry))
		if err != nil {
			mb.tx.Close()
			return err
		}
		memberCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			defer mb.tx.Close()
			done <- p.Consume(memberCtx, handlerOf(name))
		}()
		stops = append(stops, func() error {
			cancel()
			if err := <-done; err != nil {
				return fmt.Errorf("member %s: %w", name, err)
			}
			return nil
		})
		return nil
	}
	t0 := time.Now()
	if err := start("a"); err != nil {
		return err
	}
	for handled.Load() < int64(orders/4) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	if err := start("b"); err != nil {
		return errors.Join(err, stopAll())
	}
	for {
		ok, err := committedToEnd(ctx, cluster, group, in)
		if err != nil || ok || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := stopAll(); err != nil {
		return err
	}
	fmt.Printf("handled in %v: %d successful handler calls, %d by member a, %d by member b (a message handled again after its partition moved counts twice)\n",
		time.Since(t0).Round(time.Millisecond), handled.Load(), perMember["a"].Load(), perMember["b"].Load())

	got, outputs, orderErr, err := readTotals(ctx, cluster, out, orders)
	if err != nil {
		return err
	}
	exact := len(got) == len(want)
	for c, cents := range want {
		exact = exact && got[c] == cents
	}
	fmt.Printf("read_committed: %d outputs for %d orders; per-customer totals exact: %v; per-customer order kept: %v\n",
		outputs, orders, exact, orderErr == "")
	if !exact || outputs != orders || orderErr != "" {
		return fmt.Errorf("FAILED: %d outputs for %d orders, totals exact %v %s", outputs, orders, exact, orderErr)
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

// produceOrders writes the orders and returns each customer's total.
func produceOrders(ctx context.Context, cluster *kafkatest.Cluster, topic string, orders, customers int) (map[string]int64, error) {
	totals := make(map[string]int64)
	seq := make(map[string]int)
	records := make([]kafkatest.Record, orders)
	for i := range records {
		customer := fmt.Sprintf("customer-%03d", rand.N(customers))
		seq[customer]++
		o := Order{Customer: customer, Seq: seq[customer], Cents: 100 + rand.Int64N(10_000)}
		totals[customer] += o.Cents
		value, err := json.Marshal(o)
		if err != nil {
			return nil, err
		}
		records[i] = kafkatest.Record{Key: []byte(customer), Value: value, Partition: -1}
	}
	return totals, cluster.Produce(ctx, topic, records)
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

// readTotals reads the output topic as a read_committed consumer until it
// has want outputs and a second passes without more, and sums them per
// customer. It reports the first customer whose outputs are out of order.
func readTotals(ctx context.Context, cluster *kafkatest.Cluster, topic string, want int) (map[string]int64, int, string, error) {
	cl, err := cluster.NewClient(kgo.ConsumeTopics(topic), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return nil, 0, "", err
	}
	defer cl.Close()
	totals := make(map[string]int64)
	last := make(map[string]int)
	n, orderErr := 0, ""
	quiet := time.Now()
	deadline := time.Now().Add(time.Minute)
	for (n < want || time.Since(quiet) < time.Second) && time.Now().Before(deadline) {
		pctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		fetches := cl.PollFetches(pctx)
		cancel()
		if ctx.Err() != nil {
			return nil, 0, "", ctx.Err()
		}
		fetches.EachRecord(func(r *kgo.Record) {
			var o Order
			if err := json.Unmarshal(r.Value, &o); err != nil {
				orderErr = err.Error()
				return
			}
			n++
			quiet = time.Now()
			totals[o.Customer] += o.Cents
			if o.Seq <= last[o.Customer] && orderErr == "" {
				orderErr = fmt.Sprintf("%s: order %d written after %d", o.Customer, o.Seq, last[o.Customer])
			}
			last[o.Customer] = o.Seq
		})
	}
	return totals, n, orderErr, nil
}
