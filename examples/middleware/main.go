// Command middleware shows Parallafka's middleware stages on a payments
// topic: Dedupe drops payments sent twice, Timeout bounds each attempt,
// Retry retries failures with backoff while later payments of the same
// account wait, and DeadLetterQueue writes payments that fail for good to a
// dead-letter topic. A custom stage, written as any user would, counts what
// each attempt came to. The handler is flaky on purpose.
//
//	go run ./examples/middleware                      # embedded broker, no setup
//	go run ./examples/middleware -brokers host:9092   # a real cluster (or KAFKA_BROKERS)
//
// It prints, per kind of payment, what happened to it, and exits 0 only if
// every payment was handled exactly once or dead-lettered (never both),
// duplicates were dropped, and the group's commits reached the end of every
// partition.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"sync"
	"text/tabwriter"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka"
	"github.com/parallafka/parallafka/kafka/kafkatest"
	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/stages"
)

// Payment is one payment. Scenario tells the flaky handler how to behave,
// so that the outcome can be checked.
type Payment struct {
	ID       string `json:"id"`
	Account  string `json:"account"`
	Cents    int    `json:"cents"`
	Scenario string `json:"scenario"`
}

// The kinds of payment, and what should become of each.
const (
	ok        = "ok"        // handled at the first attempt
	flaky     = "flaky"     // fails once (service busy), then handled
	slow      = "slow"      // its first attempt times out, then handled
	invalid   = "invalid"   // fails with a non-retryable error: dead-lettered after 1 attempt
	doomed    = "doomed"    // fails every attempt: dead-lettered after maxAttempts
	poison    = "poison"    // not JSON: never handled, dead-lettered at once
	duplicate = "duplicate" // a copy of an earlier ok payment: dropped by Dedupe
)

var kinds = []string{ok, flaky, slow, invalid, doomed, poison, duplicate}

const (
	maxAttempts    = 3
	attemptTimeout = 200 * time.Millisecond
)

func main() {
	brokers := flag.String("brokers", os.Getenv(kafkatest.BrokersEnv), "bootstrap servers of a Kafka cluster; empty starts an embedded broker (env "+kafkatest.BrokersEnv+")")
	payments := flag.Int("payments", 600, "payments to produce (duplicates come on top)")
	partitions := flag.Int("partitions", 4, "partitions of the topic")
	concurrency := flag.Int("concurrency", 8, "concurrent handlers")
	verbose := flag.Bool("v", false, "log the pipeline's events")
	flag.Parse()
	level := slog.LevelError
	if *verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Stdout, logger, *brokers, *payments, *partitions, *concurrency); err != nil {
		fmt.Fprintln(os.Stderr, "middleware:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, w io.Writer, logger *slog.Logger, brokers string, payments, partitions, concurrency int) error {
	cluster, err := startCluster(brokers)
	if err != nil {
		return err
	}
	defer cluster.Close()
	topic := kafkatest.UniqueTopic("payments")
	dlqTopic := topic + ".dlq"
	for _, t := range []string{topic, dlqTopic} {
		if err := cluster.CreateTopic(ctx, t, partitions); err != nil {
			return err
		}
	}
	records := paymentRecords(payments)
	if err := cluster.Produce(ctx, topic, records); err != nil {
		return err
	}
	fmt.Fprintf(w, "produced %d payments to %s on %s\n", len(records), topic, cluster.Bootstrap())

	group := "payment-processor-" + topic
	consumer, err := kafka.NewConsumer(&ckafka.ConfigMap{
		"bootstrap.servers":             cluster.Bootstrap(),
		"group.id":                      group,
		"auto.offset.reset":             "earliest",
		"partition.assignment.strategy": "cooperative-sticky",
	}, kafka.WithLogger(logger))
	if err != nil {
		return err
	}
	src, err := kafka.NewSource(consumer, []string{topic}, kafka.String, kafka.JSON[Payment](), kafka.WithLogger(logger))
	if err != nil {
		consumer.Close()
		return err
	}
	deadLetters, err := kafka.NewDeadLetterWriter(&ckafka.ConfigMap{
		"bootstrap.servers": cluster.Bootstrap(),
		"linger.ms":         5,
	}, kafka.WithLogger(logger))
	if err != nil {
		src.Close()
		return err
	}
	defer deadLetters.Close()

	// A stage's constructor refuses a bad configuration with an error.
	timeout, errTimeout := stages.Timeout[string, Payment](attemptTimeout)
	retry, errRetry := stages.Retry[string, Payment](stages.RetryConfig{
		MaxAttempts: maxAttempts, InitialBackoff: 50 * time.Millisecond, MaxBackoff: time.Second, Jitter: 0.2,
	})
	deadLetter, errDeadLetter := stages.DeadLetterQueue[string, Payment](stages.DeadLetterConfig{
		Writer: deadLetters, Topic: dlqTopic,
	})
	if err := errors.Join(errTimeout, errRetry, errDeadLetter); err != nil {
		src.Close()
		return err
	}
	report := newReport()
	p, err := parallafka.New(src,
		parallafka.WithMaxConcurrency(concurrency),
		parallafka.WithLogger(logger),
		// Middleware wraps the handler, outermost first: Dedupe checks and
		// records around the whole attempt; Timeout bounds the handler.
		parallafka.WithMiddleware(
			stages.Dedupe(stages.DedupeConfig[string, Payment]{}), // identity: the message-id header
			timeout,
		),
		// Stages after the handler run in this order on every attempt.
		parallafka.WithAfterHandle("retry", retry),
		parallafka.WithAfterHandle("outcomes", report.countOutcomes),
		parallafka.WithAfterHandle("dead-letter", deadLetter),
	)
	if err != nil {
		src.Close()
		return err
	}

	end, err := cluster.EndOffsets(ctx, topic)
	if err != nil {
		src.Close()
		return err
	}
	consumeCtx, done := context.WithCancel(ctx)
	defer done()
	go func() { // stop once every partition is committed to its end
		for consumeCtx.Err() == nil && !committedTo(p.Stats().Committed, topic, end) {
			time.Sleep(20 * time.Millisecond)
		}
		done()
	}()
	start := time.Now()
	if err := p.Consume(consumeCtx, report.handle); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	fmt.Fprintf(w, "consumed in %v\n", time.Since(start).Round(time.Millisecond))

	letters, err := readDeadLetters(ctx, cluster, dlqTopic, report.expectedDeadLetters(records))
	if err != nil {
		return err
	}
	return report.check(w, records, letters, committedTo(p.Stats().Committed, topic, end))
}

// paymentRecords returns n payments keyed by account, with a message-id
// header each, of every kind, and then a duplicate of every eighth ok one.
func paymentRecords(n int) []kafkatest.Record {
	var records, duplicates []kafkatest.Record
	for i := range n {
		kind := kindOf(i)
		pay := Payment{ID: fmt.Sprintf("pay-%05d", i), Account: fmt.Sprintf("acct-%02d", i%30), Cents: 100 + i, Scenario: kind}
		value, _ := json.Marshal(pay)
		if kind == poison {
			value = []byte(`{"id": "` + pay.ID + `", "cents": 12`) // cut short
		}
		r := kafkatest.Record{
			Key: []byte(pay.Account), Value: value, Partition: -1,
			Headers: []pipeline.Header{{Key: stages.HeaderMessageID, Value: []byte(pay.ID)}},
		}
		records = append(records, r)
		if kind == ok && i%8 == 0 {
			pay.Scenario = duplicate // the same payment, sent again: same id, same account
			value, _ := json.Marshal(pay)
			r.Value = value
			duplicates = append(duplicates, r)
		}
	}
	return append(records, duplicates...)
}

func kindOf(i int) string {
	switch {
	case i%50 == 49:
		return poison
	case i%25 == 7:
		return doomed
	case i%20 == 3:
		return invalid
	case i%10 == 5:
		return slow
	case i%6 == 1:
		return flaky
	}
	return ok
}

// kindOfRecord tells a record's kind from its value (poison does not parse).
func kindOfRecord(value []byte) string {
	var pay Payment
	if json.Unmarshal(value, &pay) != nil {
		return poison
	}
	return pay.Scenario
}

// report records what happened to each payment.
type report struct {
	mu       sync.Mutex
	calls    map[string]int            // kind → handler calls
	handled  map[string]int            // payment id → successful handlings
	outcomes map[string]map[string]int // kind → outcome → attempts
}

func newReport() *report {
	return &report{calls: map[string]int{}, handled: map[string]int{}, outcomes: map[string]map[string]int{}}
}

// handle is the flaky payment handler.
func (r *report) handle(ctx context.Context, msg *parallafka.Message[string, Payment]) error {
	pay := msg.Value
	r.mu.Lock()
	r.calls[pay.Scenario]++
	r.mu.Unlock()
	switch pay.Scenario {
	case flaky:
		if msg.Attempt == 1 {
			return errors.New("payment service busy")
		}
	case slow:
		if msg.Attempt == 1 {
			<-ctx.Done() // stuck until Timeout gives up on this attempt
			return ctx.Err()
		}
	case invalid:
		return stages.NonRetryable(fmt.Errorf("payment %s: unknown account %s", pay.ID, pay.Account))
	case doomed:
		return fmt.Errorf("payment %s: ledger rejected it (attempt %d)", pay.ID, msg.Attempt)
	}
	r.mu.Lock()
	r.handled[pay.ID]++
	r.mu.Unlock()
	return nil
}

// countOutcomes is a custom stage, as a user would write one: placed after
// Retry and before the dead-letter stage, it sees every handling attempt
// and counts what it came to. It only observes: every message goes on, at
// once, exactly once, and each send gives way to a hard stop.
func (r *report) countOutcomes(ctx context.Context, in <-chan *parallafka.Message[string, Payment], out chan<- *parallafka.Message[string, Payment]) error {
	for msg := range in {
		kind := msg.Value.Scenario
		if msg.Attempt == 0 && msg.Err != nil {
			kind = poison // it could not be deserialized
		}
		outcome := "handled"
		switch {
		case msg.Dropped():
			outcome = "deduplicated"
		case msg.RetryRequested():
			outcome = "retrying"
		case msg.Err != nil:
			outcome = "failed for good"
		}
		r.mu.Lock()
		if r.outcomes[kind] == nil {
			r.outcomes[kind] = map[string]int{}
		}
		r.outcomes[kind][outcome]++
		r.mu.Unlock()
		select {
		case out <- msg:
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}

func (r *report) expectedDeadLetters(records []kafkatest.Record) int {
	n := 0
	for _, rec := range records {
		switch kindOfRecord(rec.Value) {
		case invalid, doomed, poison:
			n++
		}
	}
	return n
}

// check prints the table of outcomes and compares them with what each kind
// of payment should come to.
func (r *report) check(w io.Writer, records []kafkatest.Record, letters []*kgo.Record, committed bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	byPlace := map[string]kafkatest.Record{}
	count := map[string]int{}
	for _, rec := range records {
		byPlace[fmt.Sprint(rec.Partition, "/", rec.Offset)] = rec
		count[kindOfRecord(rec.Value)]++
	}
	var problems []string
	lettered := map[string]int{}
	attempts := map[string][]string{}
	seen := map[string]bool{}
	for _, l := range letters {
		h := map[string]string{}
		for _, hd := range l.Headers {
			h[hd.Key] = string(hd.Value)
		}
		place := h[stages.HeaderOriginalPartition] + "/" + h[stages.HeaderOriginalOffset]
		rec, found := byPlace[place]
		switch {
		case !found:
			problems = append(problems, "a dead letter for no payment: "+place)
			continue
		case seen[place]:
			problems = append(problems, "dead-lettered twice: "+place)
		}
		seen[place] = true
		kind := kindOfRecord(rec.Value)
		lettered[kind]++
		attempts[kind] = append(attempts[kind], h[stages.HeaderAttempts])
	}

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "kind\tpayments\thandler calls\thandled\tretried\tdeduplicated\tdead-lettered\t")
	for _, kind := range kinds {
		o := r.outcomes[kind]
		handled := 0
		if kind != duplicate {
			handled = o["handled"]
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t\n", kind, count[kind], r.calls[kind], handled, o["retrying"], o["deduplicated"], lettered[kind])
	}
	tw.Flush()

	expect := func(cond bool, format string, args ...any) {
		if !cond {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}
	for _, kind := range []string{ok, flaky, slow} {
		expect(r.outcomes[kind]["handled"] == count[kind] && lettered[kind] == 0, "%s: %d handled, %d dead-lettered, of %d", kind, r.outcomes[kind]["handled"], lettered[kind], count[kind])
	}
	expect(r.outcomes[flaky]["retrying"] == count[flaky], "flaky: %d retries, want %d", r.outcomes[flaky]["retrying"], count[flaky])
	expect(r.outcomes[slow]["retrying"] == count[slow], "slow: %d retries, want %d", r.outcomes[slow]["retrying"], count[slow])
	for kind, want := range map[string]string{invalid: "1", doomed: fmt.Sprint(maxAttempts), poison: "0"} {
		expect(lettered[kind] == count[kind], "%s: %d dead-lettered of %d", kind, lettered[kind], count[kind])
		expect(!slices.ContainsFunc(attempts[kind], func(a string) bool { return a != want }), "%s: attempts %v, want %s each", kind, attempts[kind], want)
	}
	expect(r.calls[poison] == 0, "poison reached the handler")
	expect(r.calls[duplicate] == 0 && r.outcomes[duplicate]["deduplicated"] == count[duplicate],
		"duplicates: %d handler calls, %d deduplicated of %d", r.calls[duplicate], r.outcomes[duplicate]["deduplicated"], count[duplicate])
	for id, n := range r.handled {
		expect(n == 1, "payment %s handled %d times", id, n)
	}
	expect(committed, "the group's commits did not reach the end of every partition")
	if len(problems) > 0 {
		return fmt.Errorf("FAILED: %d problems, first: %s", len(problems), problems[0])
	}
	fmt.Fprintln(w, "every payment handled exactly once or dead-lettered, duplicates dropped, commits at the end: OK")
	return nil
}

// committedTo reports whether the committed offsets reached end in every
// partition of topic.
func committedTo(committed map[pipeline.TopicPartition]int64, topic string, end map[int32]int64) bool {
	for p, e := range end {
		if e > 0 && committed[pipeline.TopicPartition{Topic: topic, Partition: p}] != e {
			return false
		}
	}
	return true
}

// readDeadLetters reads the dead-letter topic from the start until it holds
// n records, for up to a minute.
func readDeadLetters(ctx context.Context, cluster *kafkatest.Cluster, topic string, n int) ([]*kgo.Record, error) {
	cl, err := cluster.NewClient(kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var records []*kgo.Record
	for len(records) < n {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return records, fmt.Errorf("read %d of %d dead letters: %w", len(records), n, ctx.Err())
		}
		records = append(records, fetches.Records()...)
	}
	// Anything beyond n would be a dead letter too many: look briefly.
	more, cancelMore := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelMore()
	records = append(records, cl.PollFetches(more).Records()...)
	return records, nil
}

func startCluster(brokers string) (*kafkatest.Cluster, error) {
	if brokers != "" {
		return kafkatest.Start(kafkatest.WithBrokers(brokers))
	}
	return kafkatest.Start(kafkatest.WithEmbedded())
}
