// Command observability shows Parallafka's traces, metrics, stall detection
// and health check: it produces orders with the producer's trace context in
// their headers, consumes them with a handler for which one key ("slow") is
// very slow, serves Prometheus metrics on /metrics and the health check on
// /healthz, and writes the traces to stdout.
//
//	go run ./examples/observability                        # embedded broker, no setup
//	go run ./examples/observability -brokers host:9092     # a real cluster (or KAFKA_BROKERS)
//	curl -s 127.0.0.1:9464/metrics | grep parallafka_      # while it runs
//	curl -si 127.0.0.1:9464/healthz                        # 503 while the slow key stalls its partition
//
// The slow key's first message takes longer than the stall timeout: its
// partition is reported stalled (a Warn log naming the message, the
// parallafka_partition_stalls_total counter, /healthz answering 503) until
// the message finishes. Once every order is handled and committed (the
// consumer lag is 0), it keeps serving until interrupted (-linger).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/contrib/otelparallafka"
	"github.com/parallafka/parallafka/kafka"
	"github.com/parallafka/parallafka/kafka/kafkatest"
)

// config is one run's settings.
type config struct {
	brokers      string
	addr         string // where /metrics and /healthz listen
	messages     int
	slowFor      time.Duration // the slow key's first message takes this long
	stallTimeout time.Duration
	linger       time.Duration // serve this long after everything was committed; <0: until interrupted
	traces       io.Writer     // the traces, as JSON
	logger       *slog.Logger
	listening    func(addr string) // told the address once the server listens
}

func main() {
	c := config{traces: os.Stdout, listening: func(addr string) {
		fmt.Fprintf(os.Stderr, "serving http://%s/metrics and http://%s/healthz\n", addr, addr)
	}}
	flag.StringVar(&c.brokers, "brokers", os.Getenv(kafkatest.BrokersEnv), "bootstrap servers of a Kafka cluster; empty starts an embedded broker (env "+kafkatest.BrokersEnv+")")
	flag.StringVar(&c.addr, "addr", "127.0.0.1:9464", "address of the /metrics and /healthz server")
	flag.IntVar(&c.messages, "messages", 2000, "orders to produce")
	flag.DurationVar(&c.slowFor, "slow", 8*time.Second, "how long the slow key's first order takes")
	flag.DurationVar(&c.stallTimeout, "stall-timeout", 3*time.Second, "WithStallTimeout")
	flag.DurationVar(&c.linger, "linger", -1, "serve this long once all is committed; negative: until interrupted")
	quietTraces := flag.Bool("no-traces", false, "do not print the traces")
	flag.Parse()
	if *quietTraces {
		c.traces = io.Discard
	}
	c.logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, "observability:", err)
		os.Exit(1)
	}
}

// slowKey's first order takes config.slowFor.
const slowKey = "slow"

func run(ctx context.Context, c config) error {
	cluster, err := startCluster(c.brokers)
	if err != nil {
		return err
	}
	defer cluster.Close()
	topic := kafkatest.UniqueTopic("orders")
	if err := cluster.CreateTopic(ctx, topic, 3); err != nil {
		return err
	}

	// Tracing: spans to stdout, W3C trace context in the headers.
	exporter, err := stdouttrace.New(stdouttrace.WithWriter(c.traces))
	if err != nil {
		return err
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	// Metrics: a client_golang registry, served on /metrics.
	reg := prometheus.NewRegistry()
	mp, err := otelparallafka.PrometheusMeterProvider(reg)
	if err != nil {
		return err
	}
	defer func() { _ = mp.Shutdown(context.Background()) }()
	group := "fulfilment-" + topic
	obs, err := otelparallafka.New(otelparallafka.WithTracerProvider(tp), otelparallafka.WithMeterProvider(mp),
		otelparallafka.WithPropagator(propagation.TraceContext{}), otelparallafka.WithConsumerGroup(group))
	if err != nil {
		return err
	}

	if err := produceOrders(ctx, cluster, topic, c.messages, tp.Tracer("orders-producer"), obs); err != nil {
		return err
	}

	consumer, err := kafka.NewConsumer(&ckafka.ConfigMap{
		"bootstrap.servers": cluster.Bootstrap(),
		"group.id":          group,
		"auto.offset.reset": "earliest",
	}, kafka.WithLogger(c.logger))
	if err != nil {
		return err
	}
	src, err := kafka.NewSource(consumer, []string{topic}, kafka.String, kafka.String, kafka.WithLogger(c.logger))
	if err != nil {
		consumer.Close()
		return err
	}
	p, err := parallafka.New(src, parallafka.WithLogger(c.logger), parallafka.WithObserver(obs),
		parallafka.WithStallTimeout(c.stallTimeout), parallafka.WithCommitInterval(200*time.Millisecond))
	if err != nil {
		_ = src.Close()
		return err
	}
	gauges, err := obs.RegisterGauges(p, src)
	if err != nil {
		_ = src.Close()
		return err
	}
	defer func() { _ = gauges.Unregister() }()

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("/healthz", otelparallafka.HealthHandler(p))
	ln, err := net.Listen("tcp", c.addr)
	if err != nil {
		_ = src.Close()
		return err
	}
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- server.Serve(ln) }()
	defer func() {
		_ = server.Close()
		<-served
	}()
	if c.listening != nil {
		c.listening(ln.Addr().String())
	}

	consumeCtx, stopConsuming := context.WithCancel(ctx)
	defer stopConsuming()
	var handled atomic.Int64
	var slowDone atomic.Bool
	go func() {
		watchCommits(consumeCtx, p, &handled, int64(c.messages))
		if consumeCtx.Err() != nil {
			return
		}
		fmt.Fprintf(os.Stderr, "all %d orders handled and committed (consumer lag 0)\n", c.messages)
		if c.linger < 0 {
			return // until interrupted
		}
		select {
		case <-time.After(c.linger):
			stopConsuming()
		case <-consumeCtx.Done():
		}
	}()
	return p.Consume(consumeCtx, func(ctx context.Context, msg *parallafka.Message[string, string]) error {
		// The handler's context carries the message's consumer span, the
		// child of the producer's: a client call made with it would carry
		// the trace on.
		_ = trace.SpanFromContext(ctx)
		if msg.Key == slowKey && slowDone.CompareAndSwap(false, true) {
			select { // the stall: its partition's commits wait for it
			case <-time.After(c.slowFor):
			case <-ctx.Done():
				return ctx.Err()
			}
		} else {
			time.Sleep(time.Millisecond)
		}
		handled.Add(1)
		return nil
	})
}

// watchCommits returns once every message was handled and committed.
func watchCommits(ctx context.Context, p *parallafka.Parallafka[string, string], handled *atomic.Int64, total int64) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		st := p.Stats()
		var committed int64
		for _, off := range st.Committed {
			committed += off
		}
		if handled.Load() >= total && committed >= total {
			return
		}
	}
}

// produceOrders produces the orders, each with its producer span's trace
// context in its headers; every tenth goes to the slow key.
func produceOrders(ctx context.Context, cluster *kafkatest.Cluster, topic string, n int, tracer trace.Tracer, obs *otelparallafka.Observer) error {
	records := make([]kafkatest.Record, n)
	for i := range records {
		key := fmt.Sprintf("customer-%d", i%50)
		if i%10 == 0 {
			key = slowKey
		}
		spanCtx, span := tracer.Start(ctx, "send "+topic, trace.WithSpanKind(trace.SpanKindProducer))
		headers := obs.Inject(spanCtx, nil)
		span.End()
		records[i] = kafkatest.Record{Key: []byte(key), Value: fmt.Appendf(nil, "order %d", i), Partition: -1, Headers: headers}
	}
	return cluster.Produce(ctx, topic, records)
}

func startCluster(brokers string) (*kafkatest.Cluster, error) {
	if brokers != "" {
		return kafkatest.Start(kafkatest.WithBrokers(brokers))
	}
	return kafkatest.Start(kafkatest.WithEmbedded())
}
