package parallafka

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/parallafka/parallafka/pipeline"
)

// Health's errors: where a Parallafka that is not consuming stands. Health
// returns one of them, or an error wrapping one with the reason; use
// errors.Is to tell them apart.
var (
	// ErrNotStarted: Consume was not called yet.
	ErrNotStarted = errors.New("parallafka: not started")
	// ErrJoining: consuming, with no partition assigned yet (the group is
	// forming, or this member has none).
	ErrJoining = errors.New("parallafka: joining")
	// ErrStalled: a partition's committed offset has not moved for the
	// stall timeout while it had unfinished work (WithStallTimeout).
	ErrStalled = errors.New("parallafka: stalled")
	// ErrBrokerUnreachable: the source reaches no broker (package kafka's
	// Source says so after librdkafka reported all brokers down, until it
	// hears from one again, and while partitions were assigned, until the
	// group coordinator confirmed them: no handler starts meanwhile).
	ErrBrokerUnreachable = errors.New("parallafka: broker unreachable")
	// ErrStopped: a shutdown began, or Consume returned.
	ErrStopped = errors.New("parallafka: stopped")
	// ErrUnhealthy: a check added with WithHealthCheck failed (Health
	// wraps its error too).
	ErrUnhealthy = errors.New("parallafka: unhealthy")
)

// Health returns nil while the Parallafka consumes (partitions assigned,
// none stalled, brokers reachable), and otherwise ErrNotStarted,
// ErrJoining, ErrStalled (wrapped with the blocking message),
// ErrBrokerUnreachable (wrapped with the source's reason), ErrUnhealthy
// (wrapping a WithHealthCheck check's error; checks run while consuming,
// before the stall and the broker are looked at) or ErrStopped. Held keys (ReleaseKey) are not unhealthy: Stats.HeldKeys
// counts them. It reads counters the pipeline keeps anyway and asks the
// broker nothing, so it suits liveness and readiness probes; it is safe to
// call at any time, from any goroutine. ctx is for sources that may one
// day need to ask.
func (p *Parallafka[K, V]) Health(ctx context.Context) error {
	state, reason := p.health()
	if state != ErrNotStarted && state != ErrStopped {
		// The user's checks say more than a stall they may cause (a flood
		// guard's hold stalls its partition).
		for _, check := range p.cfg.healthChecks {
			if err := check(ctx); err != nil {
				return fmt.Errorf("%w: %w", ErrUnhealthy, err)
			}
		}
	}
	if state == nil || reason == "" {
		return state
	}
	return &healthError{state: state, reason: reason}
}

// healthError is a state of Health's with its reason.
type healthError struct {
	state  error
	reason string
}

func (e *healthError) Error() string { return e.state.Error() + ": " + e.reason }
func (e *healthError) Unwrap() error { return e.state }

// health returns Health's state (nil: consuming) and its reason.
func (p *Parallafka[K, V]) health() (error, string) {
	s := &p.stats
	switch {
	case p.ended.Load():
		return ErrStopped, ""
	case !p.consumed.Load():
		return ErrNotStarted, ""
	case s.Stopping.Load():
		return ErrStopped, "shutting down"
	}
	if cs, ok := p.source.(pipeline.ConnectivitySource); ok {
		if err := cs.Unreachable(); err != nil {
			return ErrBrokerUnreachable, err.Error()
		}
	}
	if s.Stalled.Load() > 0 {
		reason := ""
		if stalls := s.StalledPartitions(); len(stalls) > 0 {
			st := stalls[0]
			reason = fmt.Sprintf("%s offset %d (key %q) %s", st.TopicPartition, st.Offset, st.Key, st.State)
			if st.Running > 0 {
				reason += fmt.Sprintf(" for %v", st.Running.Round(time.Millisecond))
			}
			reason += fmt.Sprintf("; no commit progress for %v", st.Since.Round(time.Millisecond))
			if len(stalls) > 1 {
				reason += fmt.Sprintf(", and %d more partitions", len(stalls)-1)
			}
		}
		return ErrStalled, reason
	}
	if s.Assigned.Load() == 0 {
		return ErrJoining, "no partition assigned"
	}
	return nil, ""
}
