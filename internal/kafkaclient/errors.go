package kafkaclient

import "errors"

// The sentinel errors that package kafka and package kafka/franz both
// export (kafka.ErrUnreachable and franz.ErrUnreachable are this
// ErrUnreachable, and so on), so that errors.Is holds whichever client
// returned the error and whichever package's name the caller tests with.
// Each package documents when its own functions return them.
var (
	// ErrUnreachable: no broker answered within the startup timeout.
	ErrUnreachable = errors.New("kafka: no broker reachable")
	// ErrUnknownTopic: a subscribed topic does not exist on the cluster.
	ErrUnknownTopic = errors.New("kafka: unknown topic")
	// ErrClosed: a Source's method was called after Close.
	ErrClosed = errors.New("kafka: source closed")
	// ErrCloseTimeout: Close gave up waiting for the client.
	ErrCloseTimeout = errors.New("kafka: close timed out")
	// ErrUnsafeConfig: a client setting would break the pipeline's
	// guarantees.
	ErrUnsafeConfig = errors.New("kafka: unsafe client configuration")
	// ErrDeadLetterTopicMissing: the dead-letter topic does not exist.
	ErrDeadLetterTopicMissing = errors.New("kafka: dead-letter topic does not exist")
)
