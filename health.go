package parallafka

import (
	"context"
	"fmt"
	"time"

	"github.com/parallafka/parallafka/pipeline"
)

// HealthState is where a Parallafka stands, as Health reports it.
type HealthState int

const (
	// HealthNotStarted: Consume was not called yet.
	HealthNotStarted HealthState = iota
	// HealthJoining: consuming, with no partition assigned yet (the
	// group is forming, or this member has none).
	HealthJoining
	// HealthConsuming: partitions assigned, nothing stalled: healthy.
	HealthConsuming
	// HealthStalled: a partition's committed offset has not moved for the
	// stall timeout while it had unfinished work (WithStallTimeout).
	HealthStalled
	// HealthBrokerUnreachable: the source reaches no broker (package
	// kafka's Source says so after librdkafka reported all brokers down,
	// until it hears from one again, and while partitions were assigned,
	// until the group coordinator confirmed them: no handler starts
	// meanwhile).
	HealthBrokerUnreachable
	// HealthStopping: a shutdown began.
	HealthStopping
	// HealthStopped: Consume returned.
	HealthStopped
)

func (s HealthState) String() string {
	switch s {
	case HealthNotStarted:
		return "not started"
	case HealthJoining:
		return "joining"
	case HealthConsuming:
		return "consuming"
	case HealthStalled:
		return "stalled"
	case HealthBrokerUnreachable:
		return "broker unreachable"
	case HealthStopping:
		return "stopping"
	case HealthStopped:
		return "stopped"
	}
	return fmt.Sprintf("HealthState(%d)", int(s))
}

// HealthError is Health's error: the state, and what makes it unhealthy.
type HealthError struct {
	State  HealthState
	Reason string
}

func (e *HealthError) Error() string {
	if e.Reason == "" {
		return "parallafka: " + e.State.String()
	}
	return "parallafka: " + e.State.String() + ": " + e.Reason
}

// Health returns nil while the Parallafka consumes (partitions assigned,
// none stalled, brokers reachable), and a *HealthError naming its state
// otherwise: not started, joining, stalled (with the blocking message),
// broker unreachable, stopping, stopped. It reads counters the pipeline
// keeps anyway and asks the broker nothing, so it suits liveness and
// readiness probes; it is safe to call at any time, from any goroutine.
// ctx is for sources that may one day need to ask.
func (p *Parallafka[K, V]) Health(ctx context.Context) error {
	state, reason := p.health()
	if state == HealthConsuming {
		return nil
	}
	return &HealthError{State: state, Reason: reason}
}

// HealthState returns the state Health reports.
func (p *Parallafka[K, V]) HealthState() HealthState {
	state, _ := p.health()
	return state
}

func (p *Parallafka[K, V]) health() (HealthState, string) {
	s := &p.stats
	switch {
	case p.ended.Load():
		return HealthStopped, ""
	case !p.consumed.Load():
		return HealthNotStarted, ""
	case s.Stopping.Load():
		return HealthStopping, ""
	}
	if cs, ok := p.source.(pipeline.ConnectivitySource); ok {
		if err := cs.Unreachable(); err != nil {
			return HealthBrokerUnreachable, err.Error()
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
		return HealthStalled, reason
	}
	if s.Assigned.Load() == 0 {
		return HealthJoining, "no partition assigned"
	}
	return HealthConsuming, ""
}
