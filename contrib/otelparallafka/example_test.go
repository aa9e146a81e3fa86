package otelparallafka_test

import (
	"context"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/contrib/otelparallafka"
	"github.com/parallafka/parallafka/pipeline/memsource"
)

// Traces to an OpenTelemetry tracer provider, metrics to a Prometheus
// registry, and the health check, served over HTTP.
func Example() {
	tp := sdktrace.NewTracerProvider() // add your exporter
	defer func() { _ = tp.Shutdown(context.Background()) }()
	reg := prometheus.NewRegistry()
	mp, err := otelparallafka.PrometheusMeterProvider(reg)
	if err != nil {
		panic(err)
	}
	defer func() { _ = mp.Shutdown(context.Background()) }()
	obs, err := otelparallafka.New(otelparallafka.WithTracerProvider(tp), otelparallafka.WithMeterProvider(mp),
		otelparallafka.WithPropagator(propagation.TraceContext{}), otelparallafka.WithConsumerGroup("prices"))
	if err != nil {
		panic(err)
	}
	src := memsource.New[string, float64]() // a *kafka.Source in production
	p, err := parallafka.New(src, parallafka.WithObserver(obs))
	if err != nil {
		panic(err)
	}
	gauges, err := obs.RegisterGauges(p, src)
	if err != nil {
		panic(err)
	}
	defer func() { _ = gauges.Unregister() }()
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("/healthz", otelparallafka.HealthHandler(p))
	// go http.ListenAndServe("127.0.0.1:9464", mux)
	// p.Consume(ctx, handler)
}
