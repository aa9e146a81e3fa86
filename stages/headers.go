package stages

// Record headers the stages read and write, in one place.
const (
	// HeaderMessageID is the header whose value is a message's dedupe
	// identity by default (Dedupe, DedupeBatch).
	HeaderMessageID = "message-id"

	// The headers DeadLetterQueue adds to every dead letter, after the
	// original record's headers (without any earlier headers of these
	// names, which a message dead-lettered before and replayed would
	// carry). Values are text: numbers in decimal.
	HeaderOriginalTopic     = "parallafka.original.topic"
	HeaderOriginalPartition = "parallafka.original.partition"
	HeaderOriginalOffset    = "parallafka.original.offset"
	HeaderError             = "parallafka.error"
	HeaderAttempts          = "parallafka.attempts"
)
