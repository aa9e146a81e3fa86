package franz

import (
	"context"
	"fmt"
	"time"
)

// closeMargin is the part of the close timeout kept for the client's own
// close once the group is left (or given up on): stopping its fetch
// sessions takes up to a second with the broker gone.
const closeMargin = 1500 * time.Millisecond

// Interrupt cancels the commit in flight, if any. The pipeline calls it when
// its shutdown deadline passed; the Source is to be closed next. It may be
// called from any goroutine, more than once.
func (s *Source[K, V]) Interrupt() { s.cancelFlight() }

// Closed is closed once the client is closed and the Source's goroutines
// ended: when Close returns, or later if Close timed out
// (ErrCloseTimeout).
func (s *Source[K, V]) Closed() <-chan struct{} { return s.closedCh }

// Close leaves the consumer group and closes the client. If partitions are
// assigned, the listener receives PartitionsRevoked (and may Commit) from
// inside Close, before the group is left. Commit calls from other
// goroutines that start after Close began return ErrClosed. Calling Close
// again returns the first call's result.
//
// Close returns within the close timeout (WithCloseTimeout, 5 s by
// default) whatever the broker does: it keeps about 1.5 s of it for the
// client's own close, and once the rest has passed the listener hears
// nothing more and the leave is given up. With the client closed no
// goroutine of the Source or of franz-go is left running; if the client
// still has not closed at the deadline, Close returns an error matching
// ErrCloseTimeout and the client finishes closing in the background
// (Closed tells when).
func (s *Source[K, V]) Close() error {
	s.closeOnce.Do(func() {
		start := time.Now()
		deadline := start.Add(s.closeTimeout)
		leaveBy := deadline.Add(-min(closeMargin, s.closeTimeout/2))
		s.mu.Lock()
		s.closing = true
		s.mu.Unlock()
		before := s.failure
		s.bgCancel()

		done := make(chan struct{})
		go func() {
			defer close(s.closedCh)
			defer s.bg.Wait()
			leaveCtx, cancel := context.WithDeadline(context.Background(), leaveBy)
			err := s.client.LeaveGroupContext(leaveCtx)
			cancel()
			if err != nil {
				s.logger().Debug("franz: leaving the group", "error", err)
			}
			s.abandon() // the listener hears nothing past the leave
			s.client.Close()
			close(done)
		}()

		leave := time.NewTimer(time.Until(leaveBy))
		defer leave.Stop()
		end := time.NewTimer(time.Until(deadline))
		defer end.Stop()
	serve:
		for {
			select {
			case ev := <-s.b.events:
				s.handle(ev) // the last revoke, from the leave
			case <-leave.C:
				s.abandon()
			case <-done:
				break serve
			case <-end.C:
				s.closeErr = fmt.Errorf("%w after %v: the client goes on closing in the background", ErrCloseTimeout, s.closeTimeout)
				break serve
			}
		}
		s.mu.Lock()
		s.closed = true
		clear(s.assigned)
		s.mu.Unlock()
		if s.closeErr == nil && s.failure != before {
			s.closeErr = s.failure // the revoke inside Close went wrong
		}
		if s.closeErr == nil {
			<-s.closedCh // the background work ended with the client
		}
		s.logger().Debug("franz: source closed", "error", s.closeErr, "took", time.Since(start))
	})
	return s.closeErr
}

// abandon stops serving rebalance callbacks (they return at once) and
// cancels the commit in flight.
func (s *Source[K, V]) abandon() {
	s.mu.Lock()
	s.abandoned = true
	s.mu.Unlock()
	s.b.leave()
	s.cancelFlight()
}
