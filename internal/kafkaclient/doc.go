// Package kafkaclient holds what package kafka (over confluent-kafka-go)
// and package kafka/franz (over franz-go) share, so that it exists once and
// both packages export the same values and types: the sentinel errors, the
// deserializers and their error, the commit result, and the rate limiter of
// repeated log lines. Package kafkatest uses its errors too.
//
// It imports neither client library: what it holds does not depend on one.
package kafkaclient
