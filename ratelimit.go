package parallafka

import (
	"fmt"
	"math"

	"github.com/parallafka/parallafka/internal/engine"
)

// RateLimit limits how fast messages are handed to handlers. Zero fields
// are unlimited. The limits are enforced where messages are dispatched: a
// message held back waits for its token without holding a handler, and a
// key over its per-key limit does not slow the other keys. A batch handler
// counts records (a batch of n takes n tokens).
type RateLimit struct {
	// Records is the records per second of all keys together.
	Records float64
	// Bytes is the bytes per second (key and value) of all keys together.
	Bytes float64
	// PerKey is the records per second of each routing key (the message
	// key, also with unordered dispatch). Not applied to batch handlers.
	PerKey float64
}

func (r RateLimit) validate() error {
	for _, v := range []struct {
		name string
		v    float64
	}{{"Records", r.Records}, {"Bytes", r.Bytes}, {"PerKey", r.PerKey}} {
		if v.v < 0 || math.IsNaN(v.v) || math.IsInf(v.v, 0) {
			return fmt.Errorf("rate limit %s must be a finite number >= 0, got %v", v.name, v.v)
		}
	}
	return nil
}

// WithRateLimit sets the dispatch rate limit (see RateLimit). Default: none
// (the zero RateLimit), which costs nothing per message. Change it while
// consuming with Parallafka.SetRateLimit.
func WithRateLimit(l RateLimit) Option {
	return optionFunc(func(c *config) { c.rateLimit = l })
}

// SetRateLimit changes the rate limit while Consume runs (or before it
// starts: it then applies from the start); the zero RateLimit removes it.
// Messages waiting for a token are admitted again under the new limit.
func (p *Parallafka[K, V]) SetRateLimit(l RateLimit) error {
	if err := l.validate(); err != nil {
		return fmt.Errorf("parallafka: %w", err)
	}
	p.rates.Set(engine.RateLimit(l))
	return nil
}
