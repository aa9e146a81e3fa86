package kafka

import (
	"log/slog"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"
)

// Option configures NewSource (and, for WithLogger, NewConsumer).
type Option func(*options)

type options struct {
	logger    *slog.Logger
	loggerSet bool // WithLogger was given
	unchecked bool
	onEvent   func(ckafka.Event)

	startupTimeout time.Duration
	closeTimeout   time.Duration
}

func applyOptions(opts []Option) options {
	o := options{logger: slog.Default(), startupTimeout: DefaultStartupTimeout, closeTimeout: DefaultCloseTimeout}
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	return o
}

// WithLogger sets the logger for the Source's events (rebalances, consumer
// errors) and, given to NewConsumer, for librdkafka's own logs. A nil logger
// discards everything, as it does for parallafka.WithLogger.
//
// The logger need not be given more than once. Without WithLogger, a Source
// logs to the logger its consumer was given by NewConsumer, and librdkafka's
// logs go to the Source's logger; without either, both use the logger that
// parallafka.New passes on through [Source.InheritLogger] (its own
// WithLogger), and else slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		o.logger = orDiscard(l)
		o.loggerSet = true
	}
}

// orDiscard returns l, or a logger that discards everything if l is nil.
func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
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

// DefaultStartupTimeout is the startup timeout of a Source without
// WithStartupTimeout.
const DefaultStartupTimeout = 30 * time.Second

// DefaultCloseTimeout is the close timeout of a Source without
// WithCloseTimeout.
const DefaultCloseTimeout = 5 * time.Second

// WithStartupTimeout bounds how long Poll waits, after Subscribe, for a
// broker to answer: if none did within d, Poll returns an error matching
// ErrUnreachable (so Consume ends with it) instead of retrying forever. The
// default is DefaultStartupTimeout (30 s); 0 waits forever. Outages after a
// broker answered once never end Poll: the client reconnects by itself.
func WithStartupTimeout(d time.Duration) Option {
	return func(o *options) { o.startupTimeout = max(d, 0) }
}

// WithCloseTimeout bounds Close: if the consumer has not closed within d
// (librdkafka waits for commits in flight, and for the coordinator to leave
// the group, which an unreachable broker delays up to session.timeout.ms),
// Close returns an error matching ErrCloseTimeout and the consumer finishes
// closing on its own goroutine (Source.Closed tells when). The default is
// DefaultCloseTimeout (5 s); d <= 0 waits as long as librdkafka does.
func WithCloseTimeout(d time.Duration) Option {
	return func(o *options) { o.closeTimeout = d }
}
