// Package stages holds the built-in stages of the Parallafka pipeline, each
// one goroutine (the handler pool: N) between typed channels:
//
//	poll ──▶ key-router ──▶ handler pool ──▶ ack collector ──▶ committer
//	           ▲                                  │
//	           └──────── key released ────────────┘
//
// Package parallafka wires them; users normally need nothing from here but
// the middleware stages (Retry, DeadLetter, Dedupe, Timeout).
package stages

import (
	"log/slog"

	"github.com/parallafka/parallafka/pipeline"
)

// Env is what the built-in stages of one Consume call share.
type Env[K, V any] struct {
	Source   pipeline.Source[K, V]
	Tracker  *pipeline.Tracker
	Counters *pipeline.Counters
	Logger   *slog.Logger
	// Draining is closed when a graceful shutdown begins.
	Draining <-chan struct{}
}

func (e *Env[K, V]) draining() bool {
	select {
	case <-e.Draining:
		return true
	default:
		return false
	}
}
