package franz

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka/internal/kafkaclient"
)

// slogLogger is a kgo.Logger that writes to the slog logger it points to
// (which Source.InheritLogger may change while the client runs).
type slogLogger struct {
	to    *atomic.Pointer[slog.Logger]
	limit kafkaclient.Repeats
}

var _ kgo.Logger = (*slogLogger)(nil)

// Level asks for what the slog logger would print: kgo builds debug lines
// only if the handler wants them.
func (l *slogLogger) Level() kgo.LogLevel {
	h := l.to.Load().Handler()
	ctx := context.Background()
	switch {
	case h.Enabled(ctx, slog.LevelDebug):
		return kgo.LogLevelDebug
	case h.Enabled(ctx, slog.LevelInfo):
		return kgo.LogLevelInfo
	case h.Enabled(ctx, slog.LevelWarn):
		return kgo.LogLevelWarn
	case h.Enabled(ctx, slog.LevelError):
		return kgo.LogLevelError
	}
	return kgo.LogLevelNone
}

// Log writes one kgo line. Warnings and errors that repeat (an unreachable
// broker's dial errors, several a second) are logged at most once a second
// each, with the number suppressed meanwhile.
func (l *slogLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	var lvl slog.Level
	switch level {
	case kgo.LogLevelError:
		lvl = slog.LevelError
	case kgo.LogLevelWarn:
		lvl = slog.LevelWarn
	case kgo.LogLevelInfo:
		lvl = slog.LevelInfo
	default:
		lvl = slog.LevelDebug
	}
	args := keyvals
	if lvl >= slog.LevelWarn {
		key := msg
		for i := 0; i+1 < len(keyvals); i += 2 {
			if k, _ := keyvals[i].(string); k == "err" || k == "broker" || k == "addr" {
				key += fmt.Sprintf("\x00%v", keyvals[i+1])
			}
		}
		ok, repeated := l.limit.Allow(key, time.Now())
		if !ok {
			return
		}
		if repeated > 0 {
			args = append(append([]any(nil), keyvals...), "repeated", repeated)
		}
	}
	l.to.Load().Log(context.Background(), lvl, "kgo: "+msg, args...)
}
