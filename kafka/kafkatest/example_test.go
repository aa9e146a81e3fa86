package kafkatest_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/parallafka/parallafka/kafka/kafkatest"
)

// Example starts a broker (embedded, unless KAFKA_BROKERS is set), writes
// keyed records and reads them back with a confluent-kafka-go consumer.
func Example() {
	cluster, err := kafkatest.Start()
	if err != nil {
		log.Fatal(err)
	}
	defer cluster.Close()
	ctx := context.Background()

	topic := kafkatest.UniqueTopic("example")
	if err := cluster.CreateTopic(ctx, topic, 3); err != nil {
		log.Fatal(err)
	}
	if _, err := cluster.ProduceKeyed(ctx, topic, 100, 10); err != nil {
		log.Fatal(err)
	}

	consumer, err := kafka.NewConsumer(cluster.ConsumerConfig(kafkatest.UniqueTopic("example-group")))
	if err != nil {
		log.Fatal(err)
	}
	defer consumer.Close()
	if err := consumer.SubscribeTopics([]string{topic}, nil); err != nil {
		log.Fatal(err)
	}
	seqs := make(map[string]int) // key -> records read
	deadline := time.Now().Add(30 * time.Second)
	for read := 0; read < 100; {
		if time.Now().After(deadline) {
			log.Fatalf("read only %d records", read)
		}
		if msg, ok := consumer.Poll(100).(*kafka.Message); ok {
			key, seq, err := kafkatest.ParseKeyedValue(msg.Value)
			if err != nil || seq != seqs[key] {
				log.Fatalf("record %q out of order", msg.Value)
			}
			seqs[key]++
			read++
		}
	}
	fmt.Printf("read %d keys, %d records each, in order\n", len(seqs), seqs["key-00000"])
	// Output: read 10 keys, 10 records each, in order
}
