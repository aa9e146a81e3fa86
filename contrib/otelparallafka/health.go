package otelparallafka

import (
	"context"
	"fmt"
	"net/http"
)

// Healther is what HealthHandler serves: a *parallafka.Parallafka.
type Healther interface {
	Health(ctx context.Context) error
}

// HealthHandler serves h's health for liveness and readiness probes: 200
// and "ok" while it consumes, 503 and the reason otherwise (not started,
// joining, stalled with the blocking message, broker unreachable,
// stopping, stopped). Held keys (parallafka.Parallafka.ReleaseKey) are not
// unhealthy, but shown: "ok: 2 keys held ..." when h is a StatsReader too
// (a *parallafka.Parallafka is).
func HealthHandler(h Healther) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if err := h.Health(r.Context()); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(err.Error() + "\n"))
			return
		}
		if s, ok := h.(StatsReader); ok {
			if n := s.Stats().HeldKeys; n > 0 {
				_, _ = fmt.Fprintf(w, "ok: %d keys held (their messages go to the dead-letter topic unhandled until released)\n", n)
				return
			}
		}
		_, _ = w.Write([]byte("ok\n"))
	})
}
