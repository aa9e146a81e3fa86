// Package msginfo makes the pipeline.MessageInfo that observers are given
// from a message: shared by the engine and the stages.
package msginfo

import "github.com/parallafka/parallafka/pipeline"

// Of returns what observers are told of m.
func Of[K, V any](m *pipeline.Message[K, V]) pipeline.MessageInfo {
	return pipeline.MessageInfo{
		Topic: m.Topic, Partition: m.Partition, Offset: m.Offset, Key: m.RawKey,
		Headers: m.Headers, Timestamp: m.Timestamp, Attempt: m.Attempt,
	}
}
