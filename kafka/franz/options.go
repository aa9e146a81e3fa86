package franz

import (
	"log/slog"
	"time"
)

// Option configures NewSource (and, for WithLogger, NewClient and
// NewDeadLetterWriter).
type Option func(*options)

type options struct {
	logger    *slog.Logger
	loggerSet bool // WithLogger was given

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

// WithLogger sets the logger for the Source's events (rebalances, client
// errors) and, given to NewClient, for franz-go's own logs (bridged to slog:
// kgo's error, warn, info and debug levels map to slog's; identical lines
// are logged at most once a second, with a count). A nil logger discards
// everything, as it does for parallafka.WithLogger.
//
// Without WithLogger, a Source logs to the logger its client was given by
// NewClient; without either, both use the logger that parallafka.New
// passes on through [Source.InheritLogger] (its own WithLogger), and else
// slog.Default().
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

// DefaultStartupTimeout is the startup timeout of a Source without
// WithStartupTimeout: 30 s.
const DefaultStartupTimeout = 30 * time.Second

// DefaultCloseTimeout is the close timeout of a Source without
// WithCloseTimeout: 5 s.
const DefaultCloseTimeout = 5 * time.Second

// WithStartupTimeout bounds how long Poll waits, after Subscribe, for a
// broker to answer: if none did within d, Poll returns an error matching
// ErrUnreachable (so Consume ends with it) within a second of d, instead of
// retrying forever. The default is DefaultStartupTimeout (30 s); 0 waits
// forever. Outages after a broker answered once never end Poll: the client
// reconnects by itself.
func WithStartupTimeout(d time.Duration) Option {
	return func(o *options) { o.startupTimeout = max(d, 0) }
}

// WithCloseTimeout bounds Close: the group is left, the last revoke is
// handed to the pipeline and the client closed within d, whatever the
// broker does; past d the listener hears nothing more and Close returns an
// error matching ErrCloseTimeout. The default is DefaultCloseTimeout (5 s);
// it must leave franz-go about a second to close its connections, so d is
// at least 2 s (a smaller d counts as 2 s).
func WithCloseTimeout(d time.Duration) Option {
	return func(o *options) { o.closeTimeout = max(d, minCloseTimeout) }
}

// minCloseTimeout is the smallest close timeout: Close keeps closeMargin of
// it for the client's own close.
const minCloseTimeout = 2 * time.Second
