// Package kafkatest gives tests, examples and benchmarks a Kafka broker with
// no setup.
//
// By default [Start] and [New] run franz-go's kfake, an in-process fake Kafka
// broker, listening on a free port of 127.0.0.1. If the environment variable
// KAFKA_BROKERS holds a comma-separated list of bootstrap servers, they
// return a [Cluster] that points at that broker instead (for example a real
// Apache Kafka that CI started), so the same tests run against both.
//
// The helpers on [Cluster] work on both kinds: [Cluster.CreateTopic] creates a
// topic and waits until it is usable, [UniqueTopic] names topics (and groups)
// so that parallel tests sharing a real broker never collide,
// [Cluster.Produce] writes records synchronously with acks=all (a keyed
// record to the partition Kafka's default partitioner picks),
// [Cluster.EndOffsets] and [Cluster.CommittedOffsets] read offsets back, and
// [Cluster.ConsumerConfig] returns a confluent-kafka-go configuration tuned
// for fast tests.
//
// Built without cgo (CGO_ENABLED=0), the package leaves out ConsumerConfig and
// ProducerConfig and imports nothing that needs cgo, so that programs on the
// pure-Go source (package kafka/franz) test with it too: give franz.NewClient
// kgo.SeedBrokers(strings.Split(cluster.Bootstrap(), ",")...).
//
// A short example:
//
//	func TestSomething(t *testing.T) {
//		cluster := kafkatest.New(t) // closed by t.Cleanup
//		ctx := context.Background()
//
//		topic := kafkatest.UniqueTopic(t.Name())
//		if err := cluster.CreateTopic(ctx, topic, 3); err != nil {
//			t.Fatal(err)
//		}
//		records := []kafkatest.Record{
//			{Key: []byte("AAPL"), Value: []byte("187.20"), Partition: kafkatest.AnyPartition},
//			{Key: []byte("AAPL"), Value: []byte("187.25"), Partition: kafkatest.AnyPartition},
//		}
//		if err := cluster.Produce(ctx, topic, records); err != nil {
//			t.Fatal(err)
//		}
//
//		consumer, err := kafka.NewConsumer(cluster.ConsumerConfig(kafkatest.UniqueTopic("group")))
//		if err != nil {
//			t.Fatal(err)
//		}
//		defer consumer.Close()
//		// consumer.SubscribeTopics([]string{topic}, nil), then loop on consumer.Poll(100).
//	}
//
// Tests that need kfake-only features (fault injection, group inspection)
// pass [WithEmbedded] and reach the fake cluster through [Cluster.Fake].
package kafkatest
