package otelparallafka

import (
	"context"
	"net/http"
)

// Healther is what HealthHandler serves: a *parallafka.Parallafka.
type Healther interface {
	Health(ctx context.Context) error
}

// HealthHandler serves h's health for liveness and readiness probes: 200
// and "ok" while it consumes, 503 and the reason otherwise (not started,
// joining, stalled with the blocking message, broker unreachable,
// stopping, stopped).
func HealthHandler(h Healther) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if err := h.Health(r.Context()); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(err.Error() + "\n"))
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
}
