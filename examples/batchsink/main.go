// Command batchsink is the batch handler example of Parallafka: it
// consumes order events keyed by order id and upserts them into SQLite
// (modernc.org/sqlite, pure Go: no setup), one transaction per batch, with
// ConsumeBatch. A flaky mode fails some rows on their first attempt: only
// those rows fail (a *parallafka.BatchError), the retry stage handles them
// again while the later events of their orders wait, and the rest of each
// batch commits. It then consumes the same events again with one-message
// batches, into a fresh table, and compares the throughput.
//
//	go run .                      # embedded broker, no setup
//	go run . -brokers host:9092   # a real cluster (or KAFKA_BROKERS)
//
// It exits 0 only if, in both runs, the table holds every order's latest
// version and every order's events were applied in order.
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"
	_ "modernc.org/sqlite"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka"
	"github.com/parallafka/parallafka/kafka/kafkatest"
	"github.com/parallafka/parallafka/stages"
)

// OrderEvent is one change of an order: Version numbers each order's
// events 1, 2, 3, ...
type OrderEvent struct {
	Order   string `json:"order"`
	Version int    `json:"version"`
	Status  string `json:"status"`
	Amount  int64  `json:"amount_cents"`
}

type options struct {
	brokers     string
	events      int
	orders      int
	partitions  int
	concurrency int
	batch       int
	flaky       float64
	compare     bool
	durable     bool
	dir         string
}

func main() {
	var o options
	flag.StringVar(&o.brokers, "brokers", os.Getenv(kafkatest.BrokersEnv), "bootstrap servers of a Kafka cluster; empty starts an embedded broker (env "+kafkatest.BrokersEnv+")")
	flag.IntVar(&o.events, "events", 20000, "order events to produce")
	flag.IntVar(&o.orders, "orders", 2000, "distinct orders (keys)")
	flag.IntVar(&o.partitions, "partitions", 6, "partitions of the topic")
	flag.IntVar(&o.concurrency, "concurrency", 4, "batches in flight (SQLite has one writer: they queue for it)")
	flag.IntVar(&o.batch, "batch", 500, "largest batch")
	flag.Float64Var(&o.flaky, "flaky", 0.01, "fraction of rows that fail on their first attempt (retried)")
	flag.BoolVar(&o.compare, "compare", true, "consume the events again with one-message batches and compare")
	flag.BoolVar(&o.durable, "durable", false, "fsync every transaction's commit (SQLite synchronous=FULL), as a database server does: each round trip costs more, and batches gain more")
	flag.StringVar(&o.dir, "dir", "", "directory for the SQLite files (default: a temporary one, removed)")
	verbose := flag.Bool("v", false, "log the pipeline's events")
	flag.Parse()
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if err := run(logger, o); err != nil {
		fmt.Fprintln(os.Stderr, "batchsink:", err)
		os.Exit(1)
	}
}

func run(logger *slog.Logger, o options) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if o.dir == "" {
		dir, err := os.MkdirTemp("", "batchsink")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		o.dir = dir
	}

	cluster, err := startCluster(o.brokers)
	if err != nil {
		return err
	}
	defer cluster.Close()
	topic := kafkatest.UniqueTopic("order-events")
	if err := cluster.CreateTopic(ctx, topic, o.partitions); err != nil {
		return err
	}
	fmt.Printf("producing %d events of %d orders to %s on %s (%s)\n", o.events, o.orders, topic, cluster.Bootstrap(), brokerKind(cluster))
	latest, err := produceEvents(ctx, cluster, topic, o.events, o.orders)
	if err != nil {
		return err
	}

	batched, err := sinkRun(ctx, logger, cluster, topic, o, o.batch, latest)
	if err != nil {
		return err
	}
	if !o.compare {
		return batched.verdict()
	}
	single, err := sinkRun(ctx, logger, cluster, topic, o, 1, latest)
	if err != nil {
		return err
	}
	fmt.Printf("batches of up to %d: %.0f rows/s, %.1f× the one-message batches' %.0f rows/s\n",
		o.batch, batched.rate(), batched.rate()/single.rate(), single.rate())
	return errors.Join(batched.verdict(), single.verdict())
}

// outcome is one run's result.
type outcome struct {
	label      string
	events     int
	elapsed    time.Duration
	stats      parallafka.Stats
	violations []string
	mismatches []string
	committed  bool
}

func (r *outcome) rate() float64 { return float64(r.events) / r.elapsed.Seconds() }

func (r *outcome) verdict() error {
	switch {
	case len(r.violations) > 0:
		return fmt.Errorf("%s: FAILED: %d order violations, first: %s", r.label, len(r.violations), r.violations[0])
	case len(r.mismatches) > 0:
		return fmt.Errorf("%s: FAILED: the table does not match what was produced: %d mismatches, first: %s", r.label, len(r.mismatches), r.mismatches[0])
	case !r.committed:
		return fmt.Errorf("%s: FAILED: committed offsets short of the end", r.label)
	}
	return nil
}

// sinkRun consumes every event of topic into a fresh SQLite table with
// batches of at most batch events, then checks the table.
func sinkRun(ctx context.Context, logger *slog.Logger, cluster *kafkatest.Cluster, topic string, o options, batch int, latest map[string]OrderEvent) (*outcome, error) {
	label := fmt.Sprintf("batches of up to %d", batch)
	db, err := openDB(filepath.Join(o.dir, fmt.Sprintf("orders-%d.db", batch)), o.durable)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	group := "order-sink-" + topic + fmt.Sprint(batch)
	// A row that failed is handled again after a backoff; the later events
	// of its order wait for it.
	retry, err := stages.Retry[string, OrderEvent](stages.RetryConfig{
		MaxAttempts: 5, InitialBackoff: 5 * time.Millisecond, Jitter: 0.2,
	})
	if err != nil {
		return nil, err
	}
	src, err := consumerForTopic(cluster.Bootstrap(), group, topic, logger)
	if err != nil {
		return nil, err
	}
	p, err := parallafka.New(src,
		parallafka.WithMaxConcurrency(o.concurrency), parallafka.WithLogger(logger),
		parallafka.WithMaxBatchMessages(batch),
		parallafka.WithAfterHandle("retry", retry),
	)
	if err != nil {
		return nil, err
	}
	s := &sink{db: db, flaky: o.flaky, applied: make(map[string]int)}
	var written atomic.Int64
	consumeCtx, done := context.WithCancel(ctx)
	defer done()
	var first, last time.Time // the first batch's start, the last row's write: group joins left out
	var once sync.Once
	err = p.ConsumeBatch(consumeCtx, func(ctx context.Context, events []*parallafka.Message[string, OrderEvent]) error {
		once.Do(func() { first = time.Now() })
		n, err := s.upsert(ctx, events)
		if written.Add(int64(n)) == int64(o.events) {
			last = time.Now()
			done() // every event written: a graceful stop commits and leaves the group
		}
		return err
	})
	elapsed := last.Sub(first)
	if err != nil {
		return nil, err
	}
	r := &outcome{label: label, events: int(written.Load()), elapsed: elapsed, stats: p.Stats(), violations: s.violations}
	if r.mismatches, err = compareTable(ctx, db, latest); err != nil {
		return nil, err
	}
	if r.committed, err = committedToEnd(ctx, cluster, group, topic); err != nil {
		return nil, err
	}
	fmt.Printf("%s: %d rows written in %v (%.0f rows/s), %d batches of %.1f events on average, %d rows failed and retried; table matches: %v\n",
		label, r.events, elapsed.Round(time.Millisecond), r.rate(), r.stats.Batches, r.stats.MeanBatchSize,
		r.stats.Retried, len(r.mismatches) == 0 && len(r.violations) == 0)
	return r, nil
}

// sink writes batches of events into the orders table.
type sink struct {
	db    *sql.DB
	flaky float64

	mu         sync.Mutex
	applied    map[string]int // order → the last version committed
	violations []string
}

// upsert writes a batch in one transaction. A row the flaky mode refuses
// is named in the BatchError and the later events of its order in the
// batch are left out (the pipeline hands them back after it); an error of
// the database fails the whole batch (rolled back, every event retried).
// It returns the rows committed.
func (s *sink) upsert(ctx context.Context, events []*parallafka.Message[string, OrderEvent]) (int, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it does nothing
	stmt, err := tx.PrepareContext(ctx, `INSERT INTO orders (id, version, status, amount_cents) VALUES (?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET version = excluded.version, status = excluded.status, amount_cents = excluded.amount_cents`)
	if err != nil {
		return 0, err
	}
	defer stmt.Close()
	var failed parallafka.BatchError[string, OrderEvent]
	blocked := map[string]bool{} // orders with a failed row in this batch
	var rows []*parallafka.Message[string, OrderEvent]
	for _, msg := range events {
		ev := msg.Value
		switch {
		case blocked[ev.Order]:
			continue // handled again after the failed one
		case s.refuses(msg):
			failed.Fail(msg, errors.New("simulated row failure"))
			blocked[ev.Order] = true
			continue
		}
		if _, err := stmt.ExecContext(ctx, ev.Order, ev.Version, ev.Status, ev.Amount); err != nil {
			return 0, err
		}
		rows = append(rows, msg)
	}
	if err := tx.Commit(); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, msg := range rows {
		ev := msg.Value
		if want := s.applied[ev.Order] + 1; ev.Version != want {
			s.violations = append(s.violations, fmt.Sprintf("order %s: version %d applied when %d was due", ev.Order, ev.Version, want))
		}
		s.applied[ev.Order] = ev.Version
	}
	return len(rows), failed.Err()
}

// refuses reports whether flaky mode fails msg: some rows on their first
// attempt, as a lock timeout or a failed check would.
func (s *sink) refuses(msg *parallafka.Message[string, OrderEvent]) bool {
	return msg.Attempt == 1 && s.flaky > 0 && unit(msg.Topic, msg.Partition, msg.Offset) < s.flaky
}

// unit maps a message to [0, 1), the same on every attempt.
func unit(topic string, partition int32, offset int64) float64 {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s/%d/%d", topic, partition, offset)
	return float64(h.Sum64()>>11) / (1 << 53)
}

func openDB(path string, durable bool) (*sql.DB, error) {
	sync := "NORMAL" // in WAL mode: no fsync per commit
	if durable {
		sync = "FULL"
	}
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=synchronous("+sync+")&_pragma=busy_timeout(10000)")
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1) // SQLite has one writer: transactions queue for the connection
	if _, err := db.Exec(`CREATE TABLE IF NOT EXISTS orders (
		id TEXT PRIMARY KEY, version INTEGER NOT NULL, status TEXT NOT NULL, amount_cents INTEGER NOT NULL)`); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// compareTable checks that the table holds exactly every order's latest
// event.
func compareTable(ctx context.Context, db *sql.DB, latest map[string]OrderEvent) ([]string, error) {
	rows, err := db.QueryContext(ctx, "SELECT id, version, status, amount_cents FROM orders")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var mismatches []string
	seen := 0
	for rows.Next() {
		var ev OrderEvent
		if err := rows.Scan(&ev.Order, &ev.Version, &ev.Status, &ev.Amount); err != nil {
			return nil, err
		}
		seen++
		if want, ok := latest[ev.Order]; !ok || want != ev {
			mismatches = append(mismatches, fmt.Sprintf("row %+v, want %+v", ev, want))
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if seen != len(latest) {
		mismatches = append(mismatches, fmt.Sprintf("%d rows, want %d orders", seen, len(latest)))
	}
	return mismatches, nil
}

func produceEvents(ctx context.Context, cluster *kafkatest.Cluster, topic string, events, orders int) (map[string]OrderEvent, error) {
	statuses := []string{"created", "paid", "packed", "shipped", "delivered"}
	latest := make(map[string]OrderEvent, orders)
	records := make([]kafkatest.Record, events)
	for i := range records {
		// Skewed: a few orders get many events.
		id := fmt.Sprintf("order-%05d", int(float64(orders)*rand.Float64()*rand.Float64()))
		ev := latest[id]
		ev.Order, ev.Version = id, ev.Version+1
		ev.Status = statuses[min(ev.Version-1, len(statuses)-1)]
		ev.Amount = rand.Int64N(100_000)
		latest[id] = ev
		value, err := json.Marshal(ev)
		if err != nil {
			return nil, err
		}
		records[i] = kafkatest.Record{Key: []byte(id), Value: value, Partition: -1}
	}
	return latest, cluster.Produce(ctx, topic, records)
}

// consumerForTopic builds the consumer as an application would, and wraps
// it in the Source that Parallafka drives.
func consumerForTopic(brokers, group, topic string, logger *slog.Logger) (*kafka.Source[string, OrderEvent], error) {
	consumer, err := kafka.NewConsumer(&ckafka.ConfigMap{
		"bootstrap.servers":             brokers,
		"group.id":                      group,
		"auto.offset.reset":             "earliest",
		"partition.assignment.strategy": "cooperative-sticky",
	}, kafka.WithLogger(logger))
	if err != nil {
		return nil, err
	}
	src, err := kafka.NewSource(consumer, []string{topic}, kafka.String, kafka.JSON[OrderEvent](), kafka.WithLogger(logger))
	if err != nil {
		consumer.Close()
		return nil, err
	}
	return src, nil
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
