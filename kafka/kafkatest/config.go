//go:build cgo

package kafkatest

import (
	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
)

// ConsumerConfig returns a confluent-kafka-go consumer configuration for
// group on this Cluster: the bootstrap servers, group.id,
// auto.offset.reset=earliest, enable.auto.commit=false, and settings that
// make tests fast: a 6 s session timeout (the shortest a broker accepts by
// default) with 500 ms heartbeats, so that rebalances and departures are
// noticed quickly; frequent metadata refreshes; short fetch waits and
// reconnect backoffs. Logs are not forwarded to a Go channel
// (go.logs.channel.enable=false) and connection-close chatter is off.
//
// The partition assignment strategy is librdkafka's default; set
// partition.assignment.strategy on the returned map to choose one (for
// example "cooperative-sticky"). The map is a fresh copy for the caller to
// change.
func (c *Cluster) ConsumerConfig(group string) *kafka.ConfigMap {
	cfg := c.commonConfig()
	for k, v := range map[string]kafka.ConfigValue{
		"group.id":                                group,
		"auto.offset.reset":                       "earliest",
		"enable.auto.commit":                      false,
		"session.timeout.ms":                      6000,
		"heartbeat.interval.ms":                   500,
		"fetch.wait.max.ms":                       100,
		"fetch.error.backoff.ms":                  50,
		"coordinator.query.interval.ms":           1000,
		"enable.partition.eof":                    false,
		"go.application.rebalance.enable":         false,
		"go.events.channel.enable":                false,
		"topic.metadata.refresh.fast.interval.ms": 100,
	} {
		_ = cfg.SetKey(k, v)
	}
	return cfg
}

// ProducerConfig returns a confluent-kafka-go producer configuration for
// this Cluster: the bootstrap servers, acks=all, idempotence, a 5 ms linger,
// and partitioner=murmur2_random so that keys land on the same partitions as
// with [Cluster.Produce] and Kafka's Java clients.
func (c *Cluster) ProducerConfig() *kafka.ConfigMap {
	cfg := c.commonConfig()
	for k, v := range map[string]kafka.ConfigValue{
		"acks":               "all",
		"enable.idempotence": true,
		"linger.ms":          5,
		"partitioner":        "murmur2_random",
	} {
		_ = cfg.SetKey(k, v)
	}
	return cfg
}

// commonConfig holds the settings shared by consumers and producers.
func (c *Cluster) commonConfig() *kafka.ConfigMap {
	cfg := &kafka.ConfigMap{
		"bootstrap.servers":                  c.Bootstrap(),
		"client.id":                          "kafkatest",
		"topic.metadata.refresh.interval.ms": 1000,
		"metadata.max.age.ms":                3000,
		"reconnect.backoff.ms":               10,
		"reconnect.backoff.max.ms":           500,
		"retry.backoff.ms":                   20,
		"retry.backoff.max.ms":               200,
		"go.logs.channel.enable":             false,
		"log.connection.close":               false,
		// No KIP-714 client telemetry: it only adds requests and logs.
		"enable.metrics.push": false,
	}
	if c.Embedded() {
		// kfake listens on 127.0.0.1 only.
		_ = cfg.SetKey("broker.address.family", "v4")
	}
	return cfg
}
