package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka/pipeline"
	"github.com/parallafka/parallafka/pipeline/memsource"
)

// baseline is the measurement of a loop that is not our pipeline.
type baseline struct {
	seconds    float64 // first poll (or handler start) → last handler end
	msgsPerSec float64
	cpuPerMsg  time.Duration
}

func measured(rec *recorder, cpu time.Duration) baseline {
	n := rec.handled.Load()
	span := rec.span()
	b := baseline{seconds: span.Seconds()}
	if n > 0 && span > 0 {
		b.msgsPerSec = float64(n) / span.Seconds()
		b.cpuPerMsg = cpu / time.Duration(n)
	}
	return b
}

// serialMem is the classic loop on the in-memory source: one consumer per
// partition (its own single-partition source), each polling and handling
// one message at a time, all partitions at once.
func serialMem(rec *recorder, stall time.Duration) (baseline, error) {
	w := rec.w
	cpu0 := cpuTime()
	var wg sync.WaitGroup
	errs := make([]error, w.partitions)
	for p, msgs := range w.byPart {
		if len(msgs) == 0 {
			continue
		}
		src := memsource.New[string, []byte]()
		src.AddTopic(benchTopic, 1)
		for _, i := range msgs {
			src.Produce(benchTopic, 0, w.keyNames[w.keyOf[i]], w.value)
		}
		if err := src.Subscribe(nopListener{}); err != nil {
			return baseline{}, err
		}
		wg.Go(func() {
			defer src.Close()
			last := time.Now()
			for handled := 0; handled < len(msgs); {
				msg, err := src.Poll(100 * time.Millisecond)
				if err != nil {
					errs[p] = err
					return
				}
				if msg == nil {
					if time.Since(last) > stall {
						errs[p] = fmt.Errorf("serial loop of partition %d stalled", p)
						return
					}
					continue
				}
				rec.handle(int32(p), msg.Offset)
				handled++
				last = time.Now()
			}
		})
	}
	wg.Wait()
	return measured(rec, cpuTime()-cpu0), errors.Join(errs...)
}

// rawMem is the plain loop on the in-memory source: one goroutine polling
// every partition and calling the no-op handler, with the same per-message
// bookkeeping as the pipeline's runs: what the source and the measuring
// cost, so that cpu_us_per_msg minus raw_cpu_us_per_msg is the engine's.
func rawMem(w *workload, rec *recorder, n int, stall time.Duration) (baseline, error) {
	src := memSource(w)
	if err := src.Subscribe(nopListener{}); err != nil {
		return baseline{}, err
	}
	defer src.Close()
	cpu0 := cpuTime()
	last := time.Now()
	for handled := 0; handled < n; {
		msg, err := src.Poll(100 * time.Millisecond)
		if err != nil {
			return baseline{}, err
		}
		if msg == nil {
			if time.Since(last) > stall {
				return baseline{}, errors.New("raw loop stalled")
			}
			continue
		}
		rec.polled(msg.Partition, msg.Offset)
		rec.handle(msg.Partition, msg.Offset)
		handled++
		last = time.Now()
	}
	return measured(rec, cpuTime()-cpu0), nil
}

type nopListener struct{}

func (nopListener) PartitionsAssigned([]pipeline.Offset)        {}
func (nopListener) PartitionsRevoked([]pipeline.TopicPartition) {}
func (nopListener) PartitionsLost([]pipeline.TopicPartition)    {}

// serialKafka is the classic loop on Kafka: one confluent-kafka-go consumer
// per partition (assigned that partition), each polling and handling one
// message at a time, all partitions at once.
func serialKafka(b *broker, topic string, rec *recorder, stall time.Duration) (baseline, error) {
	w := rec.w
	cpu0 := cpuTime()
	var wg sync.WaitGroup
	errs := make([]error, w.partitions)
	for p, msgs := range w.byPart {
		if len(msgs) == 0 {
			continue
		}
		c, err := ckafka.NewConsumer(b.consumerConfig(b.group(topic, fmt.Sprintf("serial-p%d", p))))
		if err != nil {
			return baseline{}, err
		}
		t := topic
		err = c.Assign([]ckafka.TopicPartition{{Topic: &t, Partition: int32(p), Offset: ckafka.Offset(w.base[p])}})
		if err != nil {
			c.Close()
			return baseline{}, err
		}
		wg.Go(func() {
			defer c.Close()
			errs[p] = pollLoop(c, len(msgs), stall, func(m *ckafka.Message) {
				rec.polled(m.TopicPartition.Partition, int64(m.TopicPartition.Offset))
				rec.handle(m.TopicPartition.Partition, int64(m.TopicPartition.Offset))
			})
		})
	}
	wg.Wait()
	return measured(rec, cpuTime()-cpu0), errors.Join(errs...)
}

// rawKafka is the plain confluent-kafka-go consume loop with a no-op
// handler: one consumer subscribed to the topic, Poll until n messages
// were read. It keeps the same per-message records as a run (poll and end
// timestamps), so that the comparison is of the loops alone.
func rawKafka(b *broker, topic string, rec *recorder, stall time.Duration) (baseline, error) {
	n := int(rec.target)
	c, err := ckafka.NewConsumer(b.consumerConfig(b.group(topic, "raw")))
	if err != nil {
		return baseline{}, err
	}
	defer c.Close()
	if err := c.SubscribeTopics([]string{topic}, nil); err != nil {
		return baseline{}, err
	}
	cpu0 := cpuTime()
	err = pollLoop(c, n, stall, func(m *ckafka.Message) {
		rec.polled(m.TopicPartition.Partition, int64(m.TopicPartition.Offset))
		rec.handle(m.TopicPartition.Partition, int64(m.TopicPartition.Offset))
	})
	return measured(rec, cpuTime()-cpu0), err
}

// pollLoop polls c until n messages were handled, or nothing arrived for
// stall.
func pollLoop(c *ckafka.Consumer, n int, stall time.Duration, handle func(*ckafka.Message)) error {
	last := time.Now()
	for handled := 0; handled < n; {
		switch e := c.Poll(100).(type) {
		case *ckafka.Message:
			if e.TopicPartition.Error != nil {
				continue
			}
			handle(e)
			handled++
			last = time.Now()
			continue
		case ckafka.Error:
			if e.IsFatal() {
				return e
			}
		}
		if time.Since(last) > stall {
			return fmt.Errorf("consume loop stalled after %d of %d messages", handled, n)
		}
	}
	return nil
}

// serialFranz is serialKafka with franz-go: one client per partition,
// consuming that partition directly (no group) from the workload's first
// offset, handling one record at a time, all partitions at once.
func serialFranz(b *broker, topic string, rec *recorder, stall time.Duration) (baseline, error) {
	w := rec.w
	cpu0 := cpuTime()
	var wg sync.WaitGroup
	errs := make([]error, w.partitions)
	for p, msgs := range w.byPart {
		if len(msgs) == 0 {
			continue
		}
		offsets := map[string]map[int32]kgo.Offset{topic: {int32(p): kgo.NewOffset().At(w.base[p])}}
		cl, err := kgo.NewClient(append(b.franzOpts(""), kgo.ConsumePartitions(offsets))...)
		if err != nil {
			return baseline{}, err
		}
		wg.Go(func() {
			defer cl.Close()
			errs[p] = franzPollLoop(cl, len(msgs), stall, func(r *kgo.Record) {
				rec.polled(r.Partition, r.Offset)
				rec.handle(r.Partition, r.Offset)
			})
		})
	}
	wg.Wait()
	return measured(rec, cpuTime()-cpu0), errors.Join(errs...)
}

// rawFranz is the bare franz-go consumer-group loop with a no-op handler:
// one client in a fresh group subscribed to the topic, PollFetches until n
// records were read, with the same per-message records as rawKafka. No
// pipeline, no franz.Source.
func rawFranz(b *broker, topic string, rec *recorder, stall time.Duration) (baseline, error) {
	n := int(rec.target)
	cl, err := kgo.NewClient(append(b.franzOpts(b.group(topic, "raw")), kgo.ConsumeTopics(topic), kgo.DisableAutoCommit())...)
	if err != nil {
		return baseline{}, err
	}
	defer cl.Close()
	cpu0 := cpuTime()
	err = franzPollLoop(cl, n, stall, func(r *kgo.Record) {
		rec.polled(r.Partition, r.Offset)
		rec.handle(r.Partition, r.Offset)
	})
	return measured(rec, cpuTime()-cpu0), err
}

// franzPollLoop polls cl until n records were handled, or nothing arrived
// for stall. Each PollFetches waits at most 100 ms, as pollLoop's Poll.
func franzPollLoop(cl *kgo.Client, n int, stall time.Duration, handle func(*kgo.Record)) error {
	last := time.Now()
	for handled := 0; handled < n; {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		fetches := cl.PollFetches(ctx)
		cancel()
		if fetches.IsClientClosed() {
			return errors.New("client closed")
		}
		for it := fetches.RecordIter(); !it.Done() && handled < n; {
			handle(it.Next())
			handled++
			last = time.Now()
		}
		var fatal error
		fetches.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) && fatal == nil {
				fatal = fmt.Errorf("fetch %s/%d: %w", t, p, err)
			}
		})
		if fatal != nil {
			return fatal
		}
		if handled < n && time.Since(last) > stall {
			return fmt.Errorf("consume loop stalled after %d of %d records", handled, n)
		}
	}
	return nil
}
