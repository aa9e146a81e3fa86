package engine

import (
	"fmt"
	"testing"
	"time"
)

// The per-key buckets stay bounded: idle keys' buckets are evicted.
func TestRatesPerKeyBounded(t *testing.T) {
	r := newRates[string, int](RateLimit{PerKey: 10})
	now := time.Now()
	for i := range 3 * maxIdleKeys {
		now = now.Add(time.Millisecond)
		if d := r.keyDelay(now, fmt.Appendf(nil, "k%d", i)); d != 0 {
			t.Fatalf("a new key waited %v", d)
		}
		if len(r.keys) > maxIdleKeys {
			t.Fatalf("%d per-key buckets kept", len(r.keys))
		}
	}
	if d := r.keyDelay(now, []byte("k0")); d != 0 {
		t.Fatalf("an evicted key's bucket is full again, waited %v", d)
	}
}

// No limit, no rates: nothing to do per message.
func TestRatesUnsetIsNil(t *testing.T) {
	if newRates[string, int](RateLimit{}) != nil {
		t.Fatal("rates made without a limit")
	}
}
