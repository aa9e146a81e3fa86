package otelparallafka

import (
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// The messaging semantic conventions' attributes, as this package sets
// them.
var (
	attrSystemKafka          = semconv.MessagingSystemKafka
	attrOperationProcess     = semconv.MessagingOperationTypeProcess
	attrOperationNameProcess = semconv.MessagingOperationName("process")
	attrOperationSend        = semconv.MessagingOperationTypeSend
	attrOperationNameSend    = semconv.MessagingOperationName("send")
	codesError               = codes.Error
)

func attrGroup(g string) attribute.KeyValue       { return semconv.MessagingConsumerGroupName(g) }
func attrDestination(t string) attribute.KeyValue { return semconv.MessagingDestinationName(t) }
func attrPartition(p int32) attribute.KeyValue {
	return semconv.MessagingDestinationPartitionID(partitionID(p))
}
func attrOffset(o int64) attribute.KeyValue { return semconv.MessagingKafkaOffset(int(o)) }
func attrKey(k []byte) attribute.KeyValue   { return semconv.MessagingKafkaMessageKey(string(k)) }

// errorType is the error.type attribute's value: the error's Go type.
func errorType(err error) string { return fmt.Sprintf("%T", err) }
