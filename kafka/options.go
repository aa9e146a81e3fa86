package kafka

import (
	"errors"
	"fmt"
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

	err error // an invalid option's, returned by NewSource
}

func applyOptions(opts []Option) options {
	o := options{logger: slog.Default(), startupTimeout: 30 * time.Second, closeTimeout: 5 * time.Second}
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

// WithStartupTimeout bounds how long Poll waits, after Subscribe, for a
// broker to answer: if none did within d, Poll returns an error matching
// ErrUnreachable (so Consume ends with it) instead of retrying forever. It
// returns within a second of d. Default 30 s; 0 waits forever; NewSource
// refuses a negative d. Outages after a broker answered once never end
// Poll: the client reconnects by itself.
func WithStartupTimeout(d time.Duration) Option {
	return func(o *options) {
		if d < 0 {
			o.err = errors.Join(o.err, fmt.Errorf("kafka: WithStartupTimeout: negative timeout %v (0 waits forever)", d))
			return
		}
		o.startupTimeout = d
	}
}

// WithCloseTimeout bounds Close: if the consumer has not closed within d
// (librdkafka waits for commits in flight, and for the coordinator to leave
// the group, which an unreachable broker delays up to session.timeout.ms),
// Close returns an error matching ErrCloseTimeout and the consumer finishes
// closing on its own goroutine (Source.Closed tells when). Default 5 s;
// d <= 0 waits as long as librdkafka does.
func WithCloseTimeout(d time.Duration) Option {
	return func(o *options) { o.closeTimeout = d }
}
