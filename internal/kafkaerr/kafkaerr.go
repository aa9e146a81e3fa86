// Package kafkaerr holds the error values that package kafka exports and
// package kafkatest returns too, so that each has one name: kafka's.
package kafkaerr

import "errors"

// ErrUnknownTopic is kafka.ErrUnknownTopic.
var ErrUnknownTopic = errors.New("kafka: unknown topic")
