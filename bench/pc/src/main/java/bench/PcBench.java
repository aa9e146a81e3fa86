package bench;

import io.confluent.parallelconsumer.ParallelConsumerOptions;
import io.confluent.parallelconsumer.ParallelConsumerOptions.CommitMode;
import io.confluent.parallelconsumer.ParallelConsumerOptions.ProcessingOrder;
import io.confluent.parallelconsumer.ParallelStreamProcessor;
import java.nio.ByteBuffer;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.locks.LockSupport;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * Confluent Parallel Consumer in its transactional mode (PERIODIC_TRANSACTIONAL_PRODUCER) on the
 * bench's workload: it consumes an input topic the Go harness loaded, sleeps a fixed time per
 * record (the 1 ms I/O-like handler), and produces one output per input (same key) with
 * pollAndProduce. A read_committed consumer of the output topic, in this process, notes when each
 * output becomes visible and counts duplicates and missing outputs. It prints one JSON line.
 *
 * <p>The output value has the layout the Go harness writes (big endian): the input's partition
 * (int32), offset (int64), timestamp (int64, Unix ms), the time the handler produced it (int64,
 * Unix ns), then the input value's remaining bytes.
 *
 * <p>Arguments: brokers input-topic output-topic messages concurrency sleep-micros
 * commit-interval-ms
 */
public final class PcBench {
  public static void main(String[] args) throws Exception {
    if (args.length != 7) {
      System.err.println(
          "usage: PcBench brokers input-topic output-topic messages concurrency sleep-micros commit-interval-ms");
      System.exit(2);
    }
    String brokers = args[0], in = args[1], out = args[2];
    int messages = Integer.parseInt(args[3]);
    int concurrency = Integer.parseInt(args[4]);
    long sleepNanos = Long.parseLong(args[5]) * 1000;
    Duration commitInterval = Duration.ofMillis(Long.parseLong(args[6]));
    String run = in + "-pc-" + System.currentTimeMillis();

    Properties cp = new Properties();
    cp.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
    cp.put(ConsumerConfig.GROUP_ID_CONFIG, run);
    cp.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
    cp.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
    cp.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
    cp.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
    Properties pp = new Properties();
    pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
    pp.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, run);
    pp.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
    pp.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);

    // The output topic: as many partitions as the input, created here.
    try (Admin admin = Admin.create(Map.of(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, brokers))) {
      int partitions =
          admin.describeTopics(List.of(in)).allTopicNames().get().get(in).partitions().size();
      admin.createTopics(List.of(new NewTopic(out, partitions, (short) 1))).all().get();
    }

    Reader reader = new Reader(brokers, out, messages);
    Thread readerThread = new Thread(reader, "read_committed-reader");
    readerThread.start();

    var options =
        ParallelConsumerOptions.<byte[], byte[]>builder()
            .ordering(ProcessingOrder.KEY)
            .commitMode(CommitMode.PERIODIC_TRANSACTIONAL_PRODUCER)
            .maxConcurrency(concurrency)
            .commitInterval(commitInterval)
            .consumer(new KafkaConsumer<>(cp))
            .producer(new KafkaProducer<>(pp))
            .build();
    ParallelStreamProcessor<byte[], byte[]> pc =
        ParallelStreamProcessor.createEosStreamProcessor(options);
    AtomicLong firstStart = new AtomicLong();
    AtomicLong handled = new AtomicLong();
    long t0 = System.nanoTime();
    pc.subscribe(Collections.singletonList(in));
    pc.pollAndProduce(
        ctx -> {
          ConsumerRecord<byte[], byte[]> r = ctx.getSingleConsumerRecord();
          firstStart.compareAndSet(0, System.nanoTime());
          if (sleepNanos > 0) {
            LockSupport.parkNanos(sleepNanos);
          }
          handled.incrementAndGet();
          byte[] v = r.value() == null ? new byte[0] : r.value();
          ByteBuffer b = ByteBuffer.allocate(Math.max(28, v.length));
          b.putInt(r.partition()).putLong(r.offset()).putLong(r.timestamp()).putLong(nowNanos());
          if (v.length > 28) {
            b.put(v, 28, v.length - 28);
          }
          return new ProducerRecord<>(out, r.key(), b.array());
        });

    // Wait for every input's output to be visible to the read_committed reader.
    long deadline = System.nanoTime() + Duration.ofMinutes(10).toNanos();
    while (reader.distinct() < messages && System.nanoTime() < deadline) {
      Thread.sleep(20);
    }
    long lastVisible = reader.lastNewNanos();
    boolean complete = reader.distinct() >= messages;
    Thread.sleep(2000); // late duplicates
    pc.close(); // drains and commits
    Thread.sleep(3000); // what the close committed
    reader.stop();
    readerThread.join();

    long start = firstStart.get() != 0 ? firstStart.get() : t0;
    double seconds = (lastVisible - start) / 1e9;
    long[] lat = reader.latencies();
    System.out.printf(
        "{\"system\":\"confluent-parallel-consumer\",\"version\":\"%s\",\"mode\":\"PERIODIC_TRANSACTIONAL_PRODUCER\",\"ordering\":\"KEY\","
            + "\"messages\":%d,\"concurrency\":%d,\"sleep_us\":%d,\"commit_interval_ms\":%d,\"complete\":%b,"
            + "\"handler_calls\":%d,\"seconds\":%.3f,\"msgs_per_sec\":%.0f,\"outputs_read\":%d,\"distinct\":%d,"
            + "\"duplicates\":%d,\"missing\":%d,\"produce_to_visible_p50_ms\":%.1f,\"produce_to_visible_p99_ms\":%.1f,"
            + "\"input_to_visible_p50_ms\":%.1f,\"input_to_visible_p99_ms\":%.1f}%n",
        System.getProperty("pc.version"),
        messages, concurrency, sleepNanos / 1000, commitInterval.toMillis(), complete,
        handled.get(), seconds, complete ? messages / seconds : 0.0, reader.read(), reader.distinct(),
        reader.read() - reader.distinct(), messages - reader.distinct(),
        lat[0] / 1e6, lat[1] / 1e6, lat[2] / 1e6, lat[3] / 1e6);
    System.exit(complete && reader.read() == messages ? 0 : 1);
  }

  static long nowNanos() {
    Instant i = Instant.now();
    return i.getEpochSecond() * 1_000_000_000L + i.getNano();
  }

  /** A read_committed consumer of the output topic. */
  static final class Reader implements Runnable {
    private final KafkaConsumer<byte[], byte[]> consumer;
    private final String topic;
    private final Map<Long, Integer> seen = new HashMap<>();
    private final List<Long> produceToVisible = new ArrayList<>();
    private final List<Long> inputToVisible = new ArrayList<>();
    private volatile boolean stop;
    private volatile long read, distinct, lastNew;

    Reader(String brokers, String topic, int expected) {
      Properties p = new Properties();
      p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
      p.put(ConsumerConfig.GROUP_ID_CONFIG, topic + "-reader-" + System.nanoTime());
      p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
      p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
      p.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
      p.put(ConsumerConfig.FETCH_MAX_WAIT_MS_CONFIG, 50);
      p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
      p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
      this.consumer = new KafkaConsumer<>(p);
      this.topic = topic;
    }

    public void run() {
      consumer.subscribe(Collections.singletonList(topic));
      while (!stop) {
        var records = consumer.poll(Duration.ofMillis(50));
        long now = nowNanos(), mono = System.nanoTime();
        synchronized (this) {
          for (ConsumerRecord<byte[], byte[]> r : records) {
            ByteBuffer b = ByteBuffer.wrap(r.value());
            int p = b.getInt();
            long off = b.getLong(), inTs = b.getLong(), produced = b.getLong();
            read++;
            if (seen.merge(((long) p << 40) | off, 1, Integer::sum) == 1) {
              distinct++;
              lastNew = mono;
              produceToVisible.add(now - produced);
              inputToVisible.add(now - inTs * 1_000_000L);
            }
          }
        }
      }
      consumer.close();
    }

    void stop() { stop = true; }
    long read() { return read; }
    long distinct() { return distinct; }
    long lastNewNanos() { return lastNew; }

    synchronized long[] latencies() {
      return new long[] {q(produceToVisible, 0.5), q(produceToVisible, 0.99), q(inputToVisible, 0.5), q(inputToVisible, 0.99)};
    }

    private static long q(List<Long> l, double f) {
      if (l.isEmpty()) {
        return 0;
      }
      List<Long> s = new ArrayList<>(l);
      Collections.sort(s);
      return s.get(Math.min(s.size() - 1, (int) (f * s.size())));
    }
  }
}
