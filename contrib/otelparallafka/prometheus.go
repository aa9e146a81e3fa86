package otelparallafka

import (
	"github.com/prometheus/client_golang/prometheus"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// PrometheusMeterProvider returns a meter provider whose metrics are
// collected by reg, a client_golang registry (prometheus.DefaultRegisterer
// if nil): for users who scrape Prometheus rather than export OTLP. Pass it
// to New with WithMeterProvider, and serve reg with promhttp as usual.
// Names become Prometheus's: parallafka.handler.duration (s) is
// parallafka_handler_duration_seconds, counters get _total. Shut the
// provider down when done.
func PrometheusMeterProvider(reg prometheus.Registerer) (*sdkmetric.MeterProvider, error) {
	if reg == nil {
		reg = prometheus.DefaultRegisterer
	}
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo(), otelprom.WithoutTargetInfo())
	if err != nil {
		return nil, err
	}
	return sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter)), nil
}
