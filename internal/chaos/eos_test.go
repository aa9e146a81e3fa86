package chaos

import (
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/parallafka/parallafka/internal/keyed"
	"github.com/parallafka/parallafka/internal/murmur2"
	"github.com/parallafka/parallafka/kafka/kafkatest"
)

// The chaos test in the exactly-once mode: the same schedule (members
// SIGKILLed, SIGTERMed, joining and leaving, one broker crash) with
// transactional members (the member's -eos): each handling produces one
// output through parallafka.Produce, in the transaction that commits its
// input. Each member slot (m1, m2, ...) has a stable transactional id: a
// member started in the slot of a SIGKILLed one fences it and aborts what it
// left open. After the at-least-once checks of the members' histories (which
// still hold: handlers may run twice, commits stay behind what finished),
// a read_committed reader reads every output partition and the checker
// requires every input's output exactly once, nothing lost, each key's
// outputs in input order (in the partition murmur2 gives the key), each
// output written by a member run that handled its input to its end, and the
// group's committed offsets at the end of the input.

const (
	// outPartitions is the output topic's partition count: not the input's,
	// so that one output partition gathers the outputs of several input
	// partitions, owned by different members, in their interleaved
	// transactions.
	outPartitions = 4
	// txnTimeout is the members' transaction timeout: the broker aborts
	// a SIGKILLed member's open transaction after it, unless a member with
	// its transactional id starts first. Longer than the revoke timeout
	// (10 s) and the commit interval.
	txnTimeout = 20 * time.Second
	// eosEmbeddedPerClient bounds the embedded-broker run of one client.
	eosEmbeddedPerClient = 4 * time.Minute
)

// TestChaosExactlyOnce runs the chaos test with transactional members over
// each client and group protocol (CHAOS_CLIENTS, CHAOS_PROTOCOLS). With
// KAFKA_BROKERS set and CHAOS=1 it runs on that broker, as TestChaos does
// (CHAOS_DURATION, default 55s; CHAOS_MESSAGES, default 30000; the broker
// restarted with .ci/kafka.sh if that runs it). Otherwise it runs a short
// schedule on an embedded kfake broker, which it restarts once on its data
// directory (CHAOS_DURATION default 10s, an action every 1 s to 2 s, CHAOS_MESSAGES default 6000); -short
// skips it.
func TestChaosExactlyOnce(t *testing.T) {
	cfg := chaosConfig{eos: true}
	if brokers := os.Getenv("KAFKA_BROKERS"); brokers != "" && os.Getenv("CHAOS") == "1" {
		c, err := kafkatest.Start(kafkatest.WithBrokers(brokers))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		cfg.c = c
		cfg.duration = envDuration(t, "CHAOS_DURATION", 55*time.Second)
		cfg.messages = envInt(t, "CHAOS_MESSAGES", 30000)
		cfg.perClient = totalTimeout
	} else {
		if testing.Short() {
			t.Skip("-short: the chaos test's exactly-once mode takes a minute or two on the embedded broker")
		}
		b := startEmbedded(t)
		defer b.close()
		c, err := kafkatest.Start(kafkatest.WithBrokers(b.addr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		cfg.c, cfg.restart = c, b.restart
		// kfake restores a KIP-848 group's partition owners from its data
		// directory, but drops the members whose session expired while it
		// was down and leaves their partitions owned: nobody is assigned
		// them again (restoreConsumerMembers, kfake v0.0.0-20260918054303:
		// 3 runs in 25 lost a SIGKILLed member's partitions for good, with
		// and without the engine changes of 2026-12-06 evening).
		// Until kfake prunes them, a restart waits until a SIGKILLed
		// member's session (6 s) has expired and the group has moved its
		// partitions. Apache Kafka gets the restart at any time (.ci/run).
		cfg.settleKilled = 7 * time.Second
		cfg.duration = envDuration(t, "CHAOS_DURATION", 10*time.Second)
		cfg.pace = [2]time.Duration{time.Second, 2 * time.Second}
		cfg.messages = envInt(t, "CHAOS_MESSAGES", 6000)
		cfg.perClient = eosEmbeddedPerClient
	}
	runChaos(t, cfg)
}

// freeSlot returns the member slot of the next member run: the first not
// held by a live member run. A slot's transactional id outlives its runs,
// so a run started in the slot of a SIGKILLed one fences it. r.mu is held.
func (r *chaosRun) freeSlot() string {
	held := map[string]bool{}
	for _, m := range r.order {
		if m.alive() {
			held[m.member] = true
		}
	}
	for i := 1; ; i++ {
		if s := "m" + strconv.Itoa(i); !held[s] {
			return s
		}
	}
}

// txnID is the transactional id of a member slot.
func (r *chaosRun) txnID(member string) string { return "chaos-" + r.group + "-" + member }

// output is one output record that the read_committed reader read.
type output struct {
	p      int32 // output partition
	o      int64 // output offset
	recKey string
	at     time.Time // the record's timestamp
	pid    int64     // the producer id and epoch that wrote it
	epoch  int16
	in     po // its input
	key    string
	seq    int
	run    string // the member run that produced it
}

func (x output) String() string {
	return fmt.Sprintf("out %d@%d (input %d@%d %s/%d, by %s, producer %d/%d, %s)",
		x.p, x.o, x.in.p, x.in.o, x.key, x.seq, x.run, x.pid, x.epoch, x.at.Format("15:04:05.000"))
}

// parseOutput parses a member's output value, "partition@offset key seq
// run".
func parseOutput(value []byte) (in po, key string, seq int, run string, err error) {
	f := strings.Fields(string(value))
	bad := fmt.Errorf("output value %q: not partition@offset key seq run", value)
	if len(f) != 4 {
		return in, "", 0, "", bad
	}
	ps, offs, ok := strings.Cut(f[0], "@")
	p, err1 := strconv.ParseInt(ps, 10, 32)
	o, err2 := strconv.ParseInt(offs, 10, 64)
	seq, err3 := strconv.Atoi(f[2])
	if !ok || err1 != nil || err2 != nil || err3 != nil {
		return in, "", 0, "", bad
	}
	return po{int32(p), o}, f[1], seq, f[3], nil
}

// outputsSettleTimeout bounds the wait for the output partitions' open
// transactions to end (the broker aborts a dead member's after
// txnTimeout), and then the read.
const outputsSettleTimeout = txnTimeout + 40*time.Second

// readOutputs reads the output topic with isolation read_committed, once
// no transaction is open on it (its last stable offsets are its high
// watermarks), until 3 s pass without a record.
func (r *chaosRun) readOutputs() ([]output, error) {
	ctx, cancel := context.WithTimeout(r.ctx, outputsSettleTimeout+time.Minute)
	defer cancel()
	cl, err := r.c.NewClient(kgo.ConsumeTopics(r.out), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(200*time.Millisecond))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	t0 := time.Now()
	deadline := t0.Add(outputsSettleTimeout)
	for {
		hw, lso, err := outputEnds(ctx, cl, r.out)
		if err == nil && maps.Equal(hw, lso) {
			r.t.Logf("%s: the output partitions' transactions all ended %v after the members stopped; high watermarks %v",
				r.protocol, time.Since(t0).Round(time.Millisecond), hw)
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("transactions still open on the output topic %v after the members stopped: high watermarks %v, last stable offsets %v (%v)",
				outputsSettleTimeout, hw, lso, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	var outs []output
	quiet := time.Now()
	for time.Since(quiet) < 3*time.Second {
		if time.Now().After(deadline.Add(time.Minute)) {
			return nil, fmt.Errorf("reading the outputs: still reading a minute after they settled (%d read)", len(outs))
		}
		pctx, pcancel := context.WithTimeout(ctx, 500*time.Millisecond)
		fetches := cl.PollFetches(pctx)
		pcancel()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		fetches.EachError(func(topic string, p int32, err error) {
			if !errorsIsContext(err) {
				r.t.Logf("%s: reading the outputs: %s[%d]: %v", r.protocol, topic, p, err)
			}
		})
		fetches.EachRecord(func(rec *kgo.Record) {
			quiet = time.Now()
			x := output{p: rec.Partition, o: rec.Offset, recKey: string(rec.Key), at: rec.Timestamp,
				pid: rec.ProducerID, epoch: rec.ProducerEpoch}
			var err error
			if x.in, x.key, x.seq, x.run, err = parseOutput(rec.Value); err != nil {
				r.violate("output %d@%d: %v", rec.Partition, rec.Offset, err)
				return
			}
			outs = append(outs, x)
		})
	}
	return outs, nil
}

func errorsIsContext(err error) bool {
	return err == context.DeadlineExceeded || err == context.Canceled ||
		strings.Contains(err.Error(), "context deadline exceeded") || strings.Contains(err.Error(), "context canceled")
}

// outputEnds returns the output topic's high watermarks and last stable
// offsets.
func outputEnds(ctx context.Context, cl *kgo.Client, topic string) (hw, lso map[int32]int64, err error) {
	list := func(isolation int8) (map[int32]int64, error) {
		req := kmsg.NewPtrListOffsetsRequest()
		req.ReplicaID = -1
		req.IsolationLevel = isolation
		rt := kmsg.NewListOffsetsRequestTopic()
		rt.Topic = topic
		for p := range int32(outPartitions) {
			rp := kmsg.NewListOffsetsRequestTopicPartition()
			rp.Partition = p
			rp.CurrentLeaderEpoch = -1
			rp.Timestamp = -1
			rt.Partitions = append(rt.Partitions, rp)
		}
		req.Topics = append(req.Topics, rt)
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		offs := map[int32]int64{}
		for _, shard := range cl.RequestSharded(rctx, req) {
			if shard.Err != nil {
				return nil, shard.Err
			}
			for _, t := range shard.Resp.(*kmsg.ListOffsetsResponse).Topics {
				for _, p := range t.Partitions {
					if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
						return nil, fmt.Errorf("partition %d: %w", p.Partition, err)
					}
					offs[p.Partition] = p.Offset
				}
			}
		}
		if len(offs) != outPartitions {
			return nil, fmt.Errorf("ListOffsets answered %d of %d partitions", len(offs), outPartitions)
		}
		return offs, nil
	}
	if hw, err = list(0); err != nil {
		return nil, nil, err
	}
	lso, err = list(1)
	return hw, lso, err
}

// checkOutputs reads the outputs and checks them against the input and the
// histories (check runs first: it sets r.ended).
func (r *chaosRun) checkOutputs() {
	outs, err := r.readOutputs()
	if err != nil {
		r.violate("outputs: %v", err)
		return
	}
	r.fig.outputs = len(outs)
	type want struct {
		key string
		seq int
	}
	produced := map[po]want{}
	for _, rec := range r.produced {
		key, seq, _ := keyed.Parse(rec.Value)
		produced[po{rec.Partition, rec.Offset}] = want{key, seq}
	}
	endedBy := func(in po, run string) bool {
		for _, h := range r.ended[in] {
			if h.run.id == run {
				return true
			}
		}
		return false
	}
	shown := map[string]int{}
	report := func(kind, format string, args ...any) {
		shown[kind]++
		if shown[kind] <= 10 {
			r.violate(format, args...)
		}
	}
	byInput := map[po][]output{}
	byKey := map[string][]output{}
	for _, x := range outs {
		w, ok := produced[x.in]
		switch {
		case !ok:
			report("unknown", "output of an input never produced: %v", x)
			continue
		case w.key != x.key || w.seq != x.seq:
			report("mismatch", "output names its input %s/%d, which was produced as %s/%d: %v", x.key, x.seq, w.key, w.seq, x)
		case x.recKey != x.key:
			report("mismatch", "output keyed %q, its input %q: %v", x.recKey, x.key, x)
		}
		if want := murmur2.Partition([]byte(x.key), outPartitions); x.p != want {
			report("partition", "output in partition %d, where murmur2 (Kafka's Java clients) puts key %s: %d: %v", x.p, x.key, want, x)
		}
		if !endedBy(x.in, x.run) {
			report("unhandled", "output by a member run whose history has no end of handling its input: %v", x)
		}
		byInput[x.in] = append(byInput[x.in], x)
		byKey[x.key] = append(byKey[x.key], x)
	}

	// Exactly once: no input with two outputs, none without.
	for _, in := range slices.SortedFunc(maps.Keys(byInput), cmpPO) {
		xs := byInput[in]
		if len(xs) < 2 {
			continue
		}
		r.fig.outDup++
		var sb strings.Builder
		for _, x := range xs {
			fmt.Fprintf(&sb, "\n\t%v; %s", x, r.runState(x.run))
		}
		for _, h := range r.ended[in] {
			fmt.Fprintf(&sb, "\n\thandled by %s (member %s) %s - %s", h.run.id, h.run.member,
				time.Unix(0, h.start).Format("15:04:05.000"), time.Unix(0, h.end).Format("15:04:05.000"))
		}
		report("dup", "DUPLICATE output: input %d@%d has %d committed outputs:%s", in.p, in.o, len(xs), sb.String())
	}
	if n := shown["dup"]; n > 10 {
		r.violate("DUPLICATE outputs: %d inputs in all have more than one committed output", n)
	}
	for _, in := range slices.SortedFunc(maps.Keys(produced), cmpPO) {
		if len(byInput[in]) > 0 {
			continue
		}
		r.fig.outLost++
		var runs []string
		for _, h := range r.ended[in] {
			runs = append(runs, h.run.id+" ("+r.runState(h.run.id)+")")
		}
		report("lost", "LOST output: input %d@%d (%s/%d) has no committed output; handled to its end by %v",
			in.p, in.o, produced[in].key, produced[in].seq, runs)
	}
	if n := shown["lost"]; n > 10 {
		r.violate("LOST outputs: %d inputs in all have no committed output", n)
	}

	// Each key's outputs in input order, in one partition.
	for _, key := range slices.Sorted(maps.Keys(byKey)) {
		xs := byKey[key]
		slices.SortFunc(xs, func(a, b output) int {
			if a.p != b.p {
				return int(a.p - b.p)
			}
			return cmpInt64(a.o, b.o)
		})
		for i := 1; i < len(xs); i++ {
			prev, x := xs[i-1], xs[i]
			switch {
			case prev.p != x.p:
				report("split", "key %s has outputs in partitions %d and %d: %v, %v", key, prev.p, x.p, prev, x)
			case x.seq <= prev.seq:
				r.fig.outOrder++
				report("order", "output ORDER: key %s seq %d after seq %d in output partition %d: %v after %v", key, x.seq, prev.seq, x.p, x, prev)
			}
		}
	}
	for _, kind := range []string{"unknown", "mismatch", "partition", "unhandled", "split", "order"} {
		if n := shown[kind]; n > 10 {
			r.violate("%s: %d outputs in all", kind, n)
		}
	}
	r.t.Logf("%s: read_committed: %d outputs of %d inputs; %d inputs with duplicate outputs, %d without any, %d out of key order",
		r.protocol, len(outs), len(produced), r.fig.outDup, r.fig.outLost, r.fig.outOrder)
}

// runState says how a member run ended, for reports.
func (r *chaosRun) runState(id string) string {
	m := r.runs[id]
	switch {
	case m == nil:
		return "unknown run"
	case m.killed:
		return fmt.Sprintf("member %s, SIGKILLed %s", m.member, m.killAt.Format("15:04:05.000"))
	case m.termed:
		return fmt.Sprintf("member %s, SIGTERMed, exited %s", m.member, m.exitAt.Format("15:04:05.000"))
	}
	return "member " + m.member + ", stopped at the end"
}

func cmpPO(a, b po) int {
	if a.p != b.p {
		return int(a.p - b.p)
	}
	return cmpInt64(a.o, b.o)
}

// embeddedBroker is a kfake broker on a data directory, which restart
// stops and starts again on the same port (its topics, groups, committed
// offsets and transactions kept).
type embeddedBroker struct {
	mu   sync.Mutex
	fake *kfake.Cluster
	opts []kfake.Opt
	addr string
}

func startEmbedded(t *testing.T) *embeddedBroker {
	b := &embeddedBroker{opts: []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.DataDir(t.TempDir()),
		// KIP-848 sessions as short as the classic protocols' here (and as
		// .ci/run gives Apache Kafka), or a SIGKILLed member holds its
		// partitions for 45 s.
		kfake.BrokerConfigs(map[string]string{
			"group.consumer.session.timeout.ms":    "6000",
			"group.consumer.heartbeat.interval.ms": "500",
		}),
	}}
	fake, err := kfake.NewCluster(b.opts...)
	if err != nil {
		t.Fatal(err)
	}
	b.fake, b.addr = fake, fake.ListenAddrs()[0]
	_, port, err := net.SplitHostPort(b.addr)
	if err != nil {
		fake.Close()
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(port)
	b.opts = append(b.opts, kfake.Ports(n))
	return b
}

// restart stops the broker, waits down, and starts it again on the same
// port and data directory.
func (b *embeddedBroker) restart(ctx context.Context, down time.Duration) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.fake.Close()
	b.fake = nil
	select {
	case <-time.After(down):
	case <-ctx.Done():
		return ctx.Err()
	}
	for {
		fake, err := kfake.NewCluster(b.opts...)
		if err == nil {
			b.fake = fake
			return nil
		}
		select { // the port may not be free yet
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return fmt.Errorf("starting the embedded broker again: %w", err)
		}
	}
}

func (b *embeddedBroker) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fake != nil {
		b.fake.Close()
		b.fake = nil
	}
}
