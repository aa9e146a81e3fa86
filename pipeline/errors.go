package pipeline

import "fmt"

// ErrorAction is what the pipeline does with a message whose handling failed.
type ErrorAction int

const (
	// Stop leaves the failed message uncommitted and stops the pipeline
	// gracefully; Consume returns the error. Nothing is lost: the message
	// and everything after it in its partition are delivered again.
	Stop ErrorAction = iota
	// Skip counts the failed message as finished, so its offset is
	// committed, and goes on.
	Skip
	// HoldKey skips the failed message, as Skip, and holds its key in its
	// partition (see Message.HoldKey): the key's later messages are not
	// handled but fail at once with a *KeyHeldError (to the AfterHandle
	// stages, then this policy) until the key is released. Other keys go
	// on.
	HoldKey
)

// ErrorPolicy decides, per failed message, whether to stop, skip, or skip
// and hold the message's key (HoldKey). err is a *MessageError; use
// errors.As / errors.Is on it to look at the cause.
type ErrorPolicy func(err error) ErrorAction

// MessageError is the error of one message that failed: its handler returned
// an error or panicked (a *PanicError), or its record could not be
// deserialized (Attempt 0).
type MessageError struct {
	Topic     string
	Partition int32
	Offset    int64
	Attempt   int // handling attempts made; 0 for a record that could not be deserialized
	Err       error
}

func (e *MessageError) Error() string {
	if e.Attempt == 0 {
		return fmt.Sprintf("parallafka: message %s[%d]@%d not handled: %v", e.Topic, e.Partition, e.Offset, e.Err)
	}
	return fmt.Sprintf("parallafka: message %s[%d]@%d failed on attempt %d: %v", e.Topic, e.Partition, e.Offset, e.Attempt, e.Err)
}

func (e *MessageError) Unwrap() error { return e.Err }

// PanicError is the error of a message whose handler panicked.
type PanicError struct {
	Value any    // what the handler panicked with
	Stack []byte // the panicking goroutine's stack
}

func (e *PanicError) Error() string { return fmt.Sprintf("handler panicked: %v", e.Value) }

// Unwrap returns the panic value if it is an error.
func (e *PanicError) Unwrap() error { err, _ := e.Value.(error); return err }

// KeyHeldError is the error of a message that was not handled because its
// key is held in its partition (Message.HoldKey, the error policy's
// HoldKey): an earlier message of the key, at Offset, failed for good. The
// message goes through the AfterHandle stages with it and Attempt 0 (a
// retry stage lets it through, stages.DeadLetterQueue writes it after the
// one at Offset, with the header parallafka.held-behind), then, if still
// failed, to the error policy.
type KeyHeldError struct {
	Offset int64 // the offset of the message whose failure held the key
}

func (e *KeyHeldError) Error() string {
	return fmt.Sprintf("its key is held behind offset %d, which failed", e.Offset)
}
