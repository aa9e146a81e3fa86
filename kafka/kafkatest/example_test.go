package kafkatest_test

import (
	"context"
	"fmt"
	"log"
	"strconv"
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
	// 100 records over 10 keys; the value is the record's number within its key.
	records := make([]kafkatest.Record, 100)
	for i := range records {
		records[i] = kafkatest.Record{
			Key:       fmt.Appendf(nil, "key-%d", i%10),
			Value:     strconv.AppendInt(nil, int64(i/10), 10),
			Partition: kafkatest.AnyPartition, // Produce picks it from the key
		}
	}
	if err := cluster.Produce(ctx, topic, records); err != nil {
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
			key := string(msg.Key)
			if seq, err := strconv.Atoi(string(msg.Value)); err != nil || seq != seqs[key] {
				log.Fatalf("record %s=%s out of order", msg.Key, msg.Value)
			}
			seqs[key]++
			read++
		}
	}
	fmt.Printf("read %d keys, %d records each, in order\n", len(seqs), seqs["key-0"])
	// Output: read 10 keys, 10 records each, in order
}
