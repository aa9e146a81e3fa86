package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka"
	"github.com/parallafka/parallafka/kafka/franz"
	"github.com/parallafka/parallafka/kafka/kafkatest"
	"github.com/parallafka/parallafka/pipeline"
)

// Consume-transform-produce (-output): each handler call writes one output
// record per input (same key) to an output topic the run creates, either
// in the pipeline's transactions (tx: WithTransactions over the client's
// Transactor, parallafka.Produce) or with a plain idempotent producer of
// the same client, waiting for the record's ack inside the handler (alo:
// at-least-once). A read_committed reader of the output topic, in this
// process, notes when each output becomes visible, and counts duplicates
// and missing outputs.

// Output kinds of -output.
const (
	outputTx  = "tx"
	outputALO = "alo"
)

// outputHeader is the size of the header each output value starts with
// (big endian): the input's partition (int32) and offset (int64), the
// input's timestamp (int64, Unix ms) and the time the handler produced the
// output (int64, Unix ns). bench/pc writes the same.
const outputHeader = 28

// outputStats is a run's output side (-output), in its JSON row.
type outputStats struct {
	Kind string `json:"kind"` // tx or alo
	// InputRate is -input-rate: the inputs were produced during the run at
	// this many per second (0: the run consumed a loaded backlog).
	InputRate        float64 `json:"input_rate,omitempty"`
	Topic            string  `json:"topic"`
	CommitIntervalMs float64 `json:"commit_interval_ms"`
	// ALOLingerMs is the at-least-once producer's linger (alo).
	ALOLingerMs float64 `json:"alo_linger_ms,omitempty"`
	// Read, Distinct, Duplicates and Missing are what the read_committed
	// reader found: outputs read, inputs with an output, outputs beyond
	// each input's first, and inputs of the run's target without one.
	Read       int64 `json:"read"`
	Distinct   int64 `json:"distinct"`
	Duplicates int64 `json:"duplicates"`
	Missing    int64 `json:"missing"`
	// VisibleSeconds runs from the first poll to the moment the last
	// input's output became visible to the reader; MsgsPerSec is the
	// run's inputs over it (the run's msgs_per_sec ends at the last
	// handler end instead).
	VisibleSeconds float64 `json:"visible_seconds"`
	MsgsPerSec     float64 `json:"msgs_per_sec"`
	// Latencies of each input's first output: from the handler's produce
	// call (the end of its work) to visible; from the input record's
	// timestamp to visible (in a run on a loaded backlog this is mostly
	// the wait in the backlog).
	ProduceToVisibleP50Ms float64 `json:"produce_to_visible_p50_ms"`
	ProduceToVisibleP99Ms float64 `json:"produce_to_visible_p99_ms"`
	InputToVisibleP50Ms   float64 `json:"input_to_visible_p50_ms"`
	InputToVisibleP99Ms   float64 `json:"input_to_visible_p99_ms"`
	// The transactions (tx): those committed and failed, records per
	// committed transaction (mean, largest), Transact's duration (p50,
	// p99, max) and the share of the run spent inside Transact.
	Transactions   int64   `json:"transactions,omitempty"`
	TxFailed       int64   `json:"tx_failed,omitempty"`
	RecordsPerTxn  float64 `json:"records_per_txn,omitempty"`
	MaxRecordsTxn  int     `json:"max_records_txn,omitempty"`
	TxnP50Ms       float64 `json:"txn_p50_ms,omitempty"`
	TxnP99Ms       float64 `json:"txn_p99_ms,omitempty"`
	TxnMaxMs       float64 `json:"txn_max_ms,omitempty"`
	TxnBusyPercent float64 `json:"txn_busy_percent,omitempty"`
}

// outputRun is one run's output side.
type outputRun struct {
	kind  string
	topic string
	rec   *recorder

	// alo: the producer the handler waits on.
	ck  *ckafka.Producer
	kgo *kgo.Client
	// tx: the Transactor, timed.
	tx      *timedTransactor
	txClose func() error

	reader    *outputReader
	stats     outputStats
	closeOnce sync.Once
}

// startOutput creates the run's output topic, its read_committed reader,
// and the producer (alo) or Transactor (tx) over src; it returns the
// pipeline options the run adds.
func startOutput(ctx context.Context, c *config, b *broker, src pipeline.Source[string, []byte], inTopic string, rec *recorder) (*outputRun, []parallafka.Option, error) {
	o := &outputRun{kind: c.output, topic: fmt.Sprintf("%s-out-%d", inTopic, time.Now().UnixNano()), rec: rec}
	o.stats = outputStats{Kind: c.output, Topic: o.topic, CommitIntervalMs: ms(c.commitInterval), InputRate: c.inputRate}
	if err := b.cluster.CreateTopic(ctx, o.topic, rec.w.partitions); err != nil {
		return nil, nil, err
	}
	opts := []parallafka.Option{parallafka.WithCommitInterval(c.commitInterval)}
	txnID := o.topic + "-txn"
	switch {
	case c.output == outputTx && c.client == "franz":
		s, ok := src.(*franz.Source[string, []byte])
		if !ok {
			return nil, nil, fmt.Errorf("-output tx: the source is a %T", src)
		}
		t, err := franz.NewTransactor(s, []kgo.Opt{
			kgo.SeedBrokers(strings.Split(b.cluster.Bootstrap(), ",")...),
			kgo.TransactionalID(txnID), kgo.DisableClientMetrics(),
		}, franz.WithLogger(quiet))
		if err != nil {
			return nil, nil, err
		}
		o.tx, o.txClose = &timedTransactor{t: t}, t.Close
	case c.output == outputTx:
		s, ok := src.(*kafka.Source[string, []byte])
		if !ok {
			return nil, nil, fmt.Errorf("-output tx: the source is a %T", src)
		}
		cfg := b.cluster.ProducerConfig()
		_ = cfg.SetKey("transactional.id", txnID)
		_ = cfg.SetKey("log_level", 3)
		t, err := kafka.NewTransactor(s, cfg, kafka.WithLogger(quiet))
		if err != nil {
			return nil, nil, err
		}
		o.tx, o.txClose = &timedTransactor{t: t}, t.Close
	case c.client == "franz":
		o.stats.ALOLingerMs = ms(c.aloLinger)
		cl, err := b.cluster.NewClient(kgo.ProducerLinger(c.aloLinger), kgo.RequiredAcks(kgo.AllISRAcks()), kgo.DisableClientMetrics())
		if err != nil {
			return nil, nil, err
		}
		o.kgo = cl
	default:
		o.stats.ALOLingerMs = ms(c.aloLinger)
		cfg := b.cluster.ProducerConfig() // acks=all, idempotence, murmur2_random
		_ = cfg.SetKey("linger.ms", strconv.FormatFloat(float64(c.aloLinger)/1e6, 'g', -1, 64))
		_ = cfg.SetKey("log_level", 3)
		p, err := ckafka.NewProducer(cfg)
		if err != nil {
			return nil, nil, err
		}
		o.ck = p
	}
	if o.tx != nil {
		opts = append(opts, parallafka.WithTransactions(o.tx))
	}
	r, err := startOutputReader(b.cluster, o.topic, rec)
	if err != nil {
		o.close()
		return nil, nil, err
	}
	o.reader = r
	return o, opts, nil
}

// handler is the run's handler: the handler model's work, then the
// output, then the message counts as handled.
func (o *outputRun) handler(ctx context.Context, msg *pipeline.Message[string, []byte]) error {
	r := o.rec
	i := r.w.index(msg.Partition, msg.Offset)
	if i < 0 {
		r.unknown.Add(1)
		return nil
	}
	t0 := r.now()
	r.busy.Add(1)
	r.spec.run(r.w, i)
	value := make([]byte, max(outputHeader, len(msg.Value)))
	if len(msg.Value) > outputHeader {
		copy(value[outputHeader:], msg.Value[outputHeader:])
	}
	binary.BigEndian.PutUint32(value[0:], uint32(msg.Partition))
	binary.BigEndian.PutUint64(value[4:], uint64(msg.Offset))
	binary.BigEndian.PutUint64(value[12:], uint64(msg.Timestamp.UnixMilli()))
	binary.BigEndian.PutUint64(value[20:], uint64(time.Now().UnixNano()))
	var err error
	switch {
	case o.tx != nil:
		err = parallafka.Produce(ctx, msg, pipeline.Record{Topic: o.topic, Key: msg.RawKey, Value: value})
	case o.kgo != nil:
		err = o.kgo.ProduceSync(ctx, &kgo.Record{Topic: o.topic, Key: msg.RawKey, Value: value}).FirstErr()
	default:
		err = o.produceConfluent(ctx, msg.RawKey, value)
	}
	r.busy.Add(-1)
	if err != nil {
		return err
	}
	r.finish(i, t0, r.now())
	return nil
}

// produceConfluent produces one record and waits for its delivery report.
func (o *outputRun) produceConfluent(ctx context.Context, key, value []byte) error {
	done := make(chan ckafka.Event, 1)
	m := &ckafka.Message{TopicPartition: ckafka.TopicPartition{Topic: &o.topic, Partition: ckafka.PartitionAny}, Key: key, Value: value}
	for {
		err := o.ck.Produce(m, done)
		var kerr ckafka.Error
		if err == nil {
			break
		}
		if !errors.As(err, &kerr) || kerr.Code() != ckafka.ErrQueueFull {
			return err
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case ev := <-done:
		if dm, ok := ev.(*ckafka.Message); ok && dm.TopicPartition.Error != nil {
			return dm.TopicPartition.Error
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// finish waits (after Consume returned) until every input of the run's
// target has an output visible to the reader, or 30 s passed, then 1 s
// more for late duplicates; it stops the reader and the producers and
// fills in the stats.
func (o *outputRun) finish(firstPoll int64) *outputStats {
	want := int64(0)
	for _, end := range o.rec.endAt {
		if end != 0 {
			want++
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for o.reader.distinct.Load() < want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(time.Second)
	o.reader.stop()
	o.close()
	s := &o.stats
	rd := o.reader
	s.Read, s.Distinct = rd.read.Load(), rd.distinct.Load()
	s.Duplicates = s.Read - s.Distinct
	s.Missing = max(0, o.rec.target-s.Distinct)
	if last := rd.lastNew.Load(); last > firstPoll && firstPoll > 0 {
		s.VisibleSeconds = float64(last-firstPoll) / 1e9
		s.MsgsPerSec = float64(s.Distinct) / s.VisibleSeconds
	}
	s.ProduceToVisibleP50Ms, s.ProduceToVisibleP99Ms = quantilesMs(rd.produceToVisible)
	s.InputToVisibleP50Ms, s.InputToVisibleP99Ms = quantilesMs(rd.inputToVisible)
	if t := o.tx; t != nil {
		t.mu.Lock()
		defer t.mu.Unlock()
		s.Transactions, s.TxFailed = t.committed, t.failed
		if t.committed > 0 {
			s.RecordsPerTxn = float64(t.records) / float64(t.committed)
		}
		s.MaxRecordsTxn = t.maxRecords
		s.TxnP50Ms, s.TxnP99Ms = quantilesMs(t.durations)
		if len(t.durations) > 0 {
			s.TxnMaxMs = float64(slices.Max(t.durations)) / 1e6
		}
		if s.VisibleSeconds > 0 {
			s.TxnBusyPercent = 100 * t.busy.Seconds() / s.VisibleSeconds
		}
	}
	return s
}

// close closes the producers (after Consume returned) and the reader.
func (o *outputRun) close() { o.closeOnce.Do(o.closeNow) }

func (o *outputRun) closeNow() {
	if o.txClose != nil {
		_ = o.txClose()
	}
	if o.ck != nil {
		o.ck.Flush(5000)
		o.ck.Close()
	}
	if o.kgo != nil {
		o.kgo.Close()
	}
	if o.reader != nil {
		o.reader.stop()
	}
}

// timedTransactor times each transaction of the Transactor it wraps.
type timedTransactor struct {
	t pipeline.Transactor

	mu         sync.Mutex
	committed  int64
	failed     int64
	records    int64
	maxRecords int
	durations  []int64 // ns
	busy       time.Duration
}

func (t *timedTransactor) Transact(ctx context.Context, records []pipeline.Record, offsets []pipeline.Offset) error {
	start := time.Now()
	err := t.t.Transact(ctx, records, offsets)
	d := time.Since(start)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.busy += d
	t.durations = append(t.durations, int64(d))
	if err != nil {
		t.failed++
		return err
	}
	t.committed++
	t.records += int64(len(records))
	t.maxRecords = max(t.maxRecords, len(records))
	return nil
}

// outputReader is a read_committed consumer of a run's output topic (a
// franz-go client of the harness's own, whatever -client is).
type outputReader struct {
	cl       *kgo.Client
	rec      *recorder
	count    []int32 // outputs per input message
	read     atomic.Int64
	distinct atomic.Int64
	lastNew  atomic.Int64 // recorder clock: the last input's first output
	// Per input's first output, in ns (owned by the reader's goroutine
	// until done is closed).
	produceToVisible []int64
	inputToVisible   []int64
	quit, done       chan struct{}
	stopOnce         sync.Once
}

func startOutputReader(cluster *kafkatest.Cluster, topic string, rec *recorder) (*outputReader, error) {
	cl, err := cluster.NewClient(kgo.ConsumeTopics(topic), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(50*time.Millisecond), kgo.DisableClientMetrics())
	if err != nil {
		return nil, err
	}
	r := &outputReader{cl: cl, rec: rec, count: make([]int32, rec.w.n), quit: make(chan struct{}), done: make(chan struct{})}
	go r.run()
	return r, nil
}

func (r *outputReader) run() {
	defer close(r.done)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-r.quit; cancel() }()
	for ctx.Err() == nil {
		fetches := r.cl.PollFetches(ctx)
		now, clock := time.Now().UnixNano(), r.rec.now()
		fetches.EachRecord(func(kr *kgo.Record) {
			r.read.Add(1)
			if len(kr.Value) < outputHeader {
				return
			}
			p := int32(binary.BigEndian.Uint32(kr.Value[0:]))
			off := int64(binary.BigEndian.Uint64(kr.Value[4:]))
			inTs := int64(binary.BigEndian.Uint64(kr.Value[12:]))
			produced := int64(binary.BigEndian.Uint64(kr.Value[20:]))
			i := r.rec.w.index(p, off)
			if i < 0 {
				return
			}
			r.count[i]++
			if r.count[i] == 1 {
				r.produceToVisible = append(r.produceToVisible, now-produced)
				r.inputToVisible = append(r.inputToVisible, now-inTs*1e6)
				r.lastNew.Store(clock)
				r.distinct.Add(1)
			}
		})
	}
}

// stop stops the reader and waits for it.
func (r *outputReader) stop() {
	r.stopOnce.Do(func() {
		close(r.quit)
		<-r.done
		r.cl.Close()
	})
}

// quantilesMs returns the 50th and 99th percentiles of ns, in ms.
func quantilesMs(ns []int64) (p50, p99 float64) {
	if len(ns) == 0 {
		return 0, 0
	}
	s := slices.Clone(ns)
	slices.Sort(s)
	q := func(f float64) float64 { return float64(s[min(len(s)-1, int(f*float64(len(s))))]) / 1e6 }
	return q(0.50), q(0.99)
}

// feed produces the workload into topic (new and empty: each partition
// starts at offset 0) at rate messages per second, in order, in chunks
// every 5 ms, until all are written or ctx ends. Each record's timestamp
// is the moment it was produced.
func (b *broker) feed(ctx context.Context, w *workload, topic string, rate float64) error {
	next := make([]int64, w.partitions)
	value := make([]byte, len(w.value))
	copy(value, w.value)
	start := time.Now()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for done := 0; done < w.n; {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		upTo := min(w.n, int(rate*time.Since(start).Seconds()))
		if upTo <= done {
			continue
		}
		records := make([]kafkatest.Record, upTo-done)
		for j := range records {
			i := done + j
			records[j] = kafkatest.Record{Key: w.keyBytes[w.keyOf[i]], Value: value, Partition: w.partOf[i]}
		}
		if err := b.cluster.Produce(ctx, topic, records); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		for _, r := range records {
			if r.Offset != next[r.Partition] {
				return fmt.Errorf("-input-rate: partition %d: offset %d where %d was expected", r.Partition, r.Offset, next[r.Partition])
			}
			next[r.Partition]++
		}
		done = upTo
	}
	return nil
}
