package pipeline

import "time"

// DeadLetter is a failed message on its way to a dead-letter topic.
type DeadLetter struct {
	// Topic is the dead-letter topic to write to.
	Topic string
	// Key and Value are the original record's bytes (nil for a null key
	// or value), whatever the pipeline deserialized them into.
	Key, Value []byte
	// Headers are the original record's headers followed by the dead-letter
	// headers (see the stages package's Header* constants).
	Headers []Header
	// The original record's place, the number of handling attempts it got
	// (0 for a record that could not be deserialized) and its last error,
	// for writers that do not read headers.
	Original  TopicPartition
	Offset    int64
	Timestamp time.Time
	Attempts  int
	Err       error
}
