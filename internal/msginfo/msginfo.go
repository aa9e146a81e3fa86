// Package msginfo makes the pipeline.MessageInfo that observers are given
// from a message: shared by the engine and the stages.
package msginfo

import "github.com/parallafka/parallafka/pipeline"

// Size is what m counts in the in-flight byte window and in a PollBatch's
// byte budget: its key, value and headers as received.
func Size[K, V any](m *pipeline.Message[K, V]) int {
	n := len(m.RawKey) + len(m.RawValue)
	for _, h := range m.Headers {
		n += len(h.Key) + len(h.Value)
	}
	return n
}

// Of returns what observers are told of m.
func Of[K, V any](m *pipeline.Message[K, V]) pipeline.MessageInfo {
	return pipeline.MessageInfo{
		Topic: m.Topic, Partition: m.Partition, Offset: m.Offset, Key: m.RawKey,
		Headers: m.Headers, Timestamp: m.Timestamp, Attempt: m.Attempt,
	}
}
