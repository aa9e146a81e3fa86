package kafka

import (
	"log/slog"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"
)

// Option configures NewSource (and, for WithLogger, NewConsumer).
type Option func(*options)

type options struct {
	logger    *slog.Logger
	unchecked bool
	onEvent   func(ckafka.Event)
}

func applyOptions(opts []Option) options {
	o := options{logger: slog.Default()}
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	return o
}

// WithLogger sets the logger for the Source's events (rebalances, consumer
// errors) and, given to NewConsumer, for librdkafka's own logs. The default
// is slog.Default(). A nil logger discards everything.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l == nil {
			l = slog.New(slog.DiscardHandler)
		}
		o.logger = l
	}
}

// WithUncheckedConsumer lets NewSource wrap a consumer that NewConsumer did
// not create. The caller vouches that it was created with
// enable.auto.commit=false, enable.auto.offset.store=false and without
// go.events.channel.enable: with auto-commit on, librdkafka commits the
// offsets of messages that were polled but not handled yet, and a crash then
// loses them.
func WithUncheckedConsumer() Option { return func(o *options) { o.unchecked = true } }

// WithEventHandler registers fn to see every event Poll receives other than
// a message: errors (also logged), statistics (with statistics.interval.ms
// set), OAuth bearer token refresh requests, partition EOF and so on. fn runs
// on the goroutine calling Poll and must not block for long. Rebalances are
// not events here: they reach the RebalanceListener.
func WithEventHandler(fn func(ckafka.Event)) Option { return func(o *options) { o.onEvent = fn } }
