package franz

import (
	"errors"
	"fmt"
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

// WithStartupTimeout bounds how long Poll waits, after Subscribe, for a
// broker to answer: if none did within d, Poll returns an error matching
// ErrUnreachable (so Consume ends with it) instead of retrying forever. It
// returns within a second of d. Default 30 s; 0 waits forever; NewSource
// refuses a negative d. Outages after a broker answered once never end
// Poll: the client reconnects by itself.
func WithStartupTimeout(d time.Duration) Option {
	return func(o *options) {
		if d < 0 {
			o.err = errors.Join(o.err, fmt.Errorf("franz: WithStartupTimeout: negative timeout %v (0 waits forever)", d))
			return
		}
		o.startupTimeout = d
	}
}

// WithCloseTimeout bounds Close: the group is left, the last revoke is
// handed to the pipeline and the client closed within d, whatever the
// broker does; past d the listener hears nothing more and Close returns an
// error matching ErrCloseTimeout. Default 5 s; d must leave franz-go about
// a second to close its connections, so it is at least 2 s (a smaller d
// counts as 2 s).
func WithCloseTimeout(d time.Duration) Option {
	return func(o *options) { o.closeTimeout = max(d, minCloseTimeout) }
}

// minCloseTimeout is the smallest close timeout: Close keeps closeMargin of
// it for the client's own close.
const minCloseTimeout = 2 * time.Second
