// Package chaos is the chaos test of Parallafka on a real Kafka broker:
// several member processes (the program in ./member) consume one topic in
// one consumer group while the test SIGKILLs members, stops them with
// SIGTERM, starts new ones, and crashes and restarts the broker once; then a
// checker reads the members' histories and the committed offsets sampled
// along the way. It runs for the cooperative-sticky and range assignors and
// for the KIP-848 consumer protocol, over each client (confluent-kafka-go
// and franz-go: the member's -client), and prints its figures. The member
// runs take turns at consuming one message per call with a fixed
// concurrency, with an adaptive concurrency, and in batches.
//
// It runs only with KAFKA_BROKERS set and CHAOS=1 (.ci/run sets both), on a
// broker that .ci/kafka.sh manages (for the restart; without it the broker
// is not restarted). With the consumer protocol the broker decides the
// session timeout: start it with group.consumer.min.session.timeout.ms and
// group.consumer.session.timeout.ms lowered (KAFKA_EXTRA_PROPERTIES, as
// .ci/run does), or a SIGKILLed member holds its partitions for 45 s.
//
//	CHAOS=1 KAFKA_BROKERS=127.0.0.1:39092 go test -count=1 -v -timeout 15m ./internal/chaos/
//
// Optional: CHAOS_DURATION (chaos phase per protocol, default 55s),
// CHAOS_MESSAGES (default 30000), CHAOS_PROTOCOLS and CHAOS_CLIENTS
// (comma-separated subsets); CHAOS_BROKER_DOWN (how long the broker stays
// down at its restart, default 2s); CHAOS_ARTIFACTS, a directory that keeps the
// members' histories and logs, and CHAOS_MEMBER_LOG_LEVEL (info, debug; the
// members log warnings and errors only by default).
package chaos

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/parallafka/parallafka/internal/keyed"
	"github.com/parallafka/parallafka/kafka/kafkatest"
	"github.com/parallafka/parallafka/pipeline"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	partitions     = 6
	keys           = 200
	commitInterval = 500 * time.Millisecond
	handlerWork    = 10 * time.Millisecond // each handler sleeps up to this long
	sampleEvery    = 200 * time.Millisecond
	// commitSlack is how much later than the sample's response an end
	// record may be stamped (same machine, same clock: only rounding).
	commitSlack = 5 * time.Millisecond
	// drainTimeout bounds the wait for the members to finish the topic
	// after the chaos phase.
	drainTimeout = 90 * time.Second
	// stopTimeout bounds a member's graceful stop (its shutdown timeout is
	// 15 s).
	stopTimeout = 40 * time.Second
	// totalTimeout bounds the test of one client, failures included.
	totalTimeout = 6 * time.Minute
)

var allProtocols = []string{"cooperative-sticky", "range", "consumer"}

// allClients are the clients the members consume with (the member's
// -client): confluent-kafka-go and franz-go.
var allClients = []string{"confluent", "franz"}

// memberModes are how the member runs consume, in turn: Consume with a
// fixed concurrency, with an adaptive one, and ConsumeBatch (see ./member).
var memberModes = []string{"single", "adaptive", "batch"}

// figures are what one protocol's run printed.
type figures struct {
	client, protocol             string
	messages, handled            int
	dupKill, dupLost, dupGrace   int
	overlapLost                  int // key on two members at once, one of them fenced without knowing it yet
	doubts                       int // member runs whose assignment was in doubt (every broker down), from their logs
	kills, terms, joins, restart int
	maxRedo                      int // most messages redone after one kill
	maxUncommitted               int // most finished-but-uncommitted messages of a killed member
	brokerDown                   time.Duration
	violations                   int
	elapsed                      time.Duration
	// The exactly-once mode's (eos_test.go): outputs read_committed, and
	// inputs with more than one, none, and outputs out of key order.
	eos                                bool
	outputs, outDup, outLost, outOrder int
}

func TestChaos(t *testing.T) {
	brokers := os.Getenv("KAFKA_BROKERS")
	if brokers == "" || os.Getenv("CHAOS") != "1" {
		t.Skip("the chaos test runs on a real broker: set KAFKA_BROKERS and CHAOS=1")
	}
	c, err := kafkatest.Start(kafkatest.WithBrokers(brokers))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	runChaos(t, chaosConfig{
		c:         c,
		duration:  envDuration(t, "CHAOS_DURATION", 55*time.Second),
		messages:  envInt(t, "CHAOS_MESSAGES", 30000),
		perClient: totalTimeout,
	})
}

// chaosConfig is what a chaos test runs: on which broker, how long, in
// which mode.
type chaosConfig struct {
	c         *kafkatest.Cluster
	eos       bool // the members are transactional (-eos): see TestChaosExactlyOnce
	duration  time.Duration
	pace      [2]time.Duration // how far apart the chaos actions come, at random; default 1.5 s to 4 s
	messages  int
	perClient time.Duration // bounds the runs of one client
	// restart crashes the broker and starts it again after down; nil
	// restarts it with .ci/kafka.sh if that runs it, else not at all.
	restart func(ctx context.Context, down time.Duration) error
	// settleKilled: a broker restart waits until this long after the last
	// SIGKILL (see TestChaosExactlyOnce's embedded broker); 0: it does not.
	settleKilled time.Duration
}

// runChaos runs the chaos test over each client and group protocol
// (CHAOS_CLIENTS, CHAOS_PROTOCOLS) and prints the figures.
func runChaos(t *testing.T, cfg chaosConfig) []figures {
	protocols := allProtocols
	if v := os.Getenv("CHAOS_PROTOCOLS"); v != "" {
		protocols = strings.Split(v, ",")
	}
	clients := allClients
	if v := os.Getenv("CHAOS_CLIENTS"); v != "" {
		clients = strings.Split(v, ",")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(len(clients))*cfg.perClient)
	defer cancel()

	dir := t.TempDir()
	if v := os.Getenv("CHAOS_ARTIFACTS"); v != "" {
		// Keep the members' histories and logs (CHAOS_MEMBER_LOG_LEVEL=info
		// or debug makes the logs say more).
		dir = filepath.Join(v, time.Now().Format("20060102-150405"))
		t.Logf("the members' histories and logs go to %s", dir)
	}
	bin := filepath.Join(dir, "member")
	t0 := time.Now()
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./member")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the member: %v\n%s", err, out)
	}
	t.Logf("built the member in %v", time.Since(t0).Round(time.Millisecond))

	if cfg.pace == [2]time.Duration{} {
		cfg.pace = [2]time.Duration{1500 * time.Millisecond, 4 * time.Second}
	}
	brokerDown := envDuration(t, "CHAOS_BROKER_DOWN", 2*time.Second)
	restart := cfg.restart
	if restart == nil {
		restart = kafkaShRestart(ctx, t, cfg.c.Bootstrap())
	}

	var all []figures
	for _, client := range clients {
		for _, proto := range protocols {
			t.Run(client+"/"+proto, func(t *testing.T) {
				if ctx.Err() != nil {
					t.Fatalf("no time left for %s over %s", proto, client)
				}
				runDir := filepath.Join(dir, client, proto)
				for i := 2; ; i++ { // a protocol named twice in CHAOS_PROTOCOLS
					if _, err := os.Stat(runDir); err != nil {
						break
					}
					runDir = filepath.Join(dir, client, proto+"-"+strconv.Itoa(i))
				}
				r := &chaosRun{
					t: t, ctx: ctx, c: cfg.c, bin: bin, restart: restart, client: client, protocol: proto,
					dir: runDir, duration: cfg.duration, pace: cfg.pace, messages: cfg.messages, brokerDown: brokerDown,
					eos: cfg.eos, runs: map[string]*memberRun{}, settleKilled: cfg.settleKilled,
				}
				f := r.run()
				all = append(all, f)
			})
		}
	}
	printFigures(t, all)
	return all
}

// kafkaShRestart returns a restart of the broker with .ci/kafka.sh, if
// that runs the broker at brokers (it passes KAFKA_PORT and
// KAFKA_CONTROLLER_PORT on, from the environment), else nil.
func kafkaShRestart(ctx context.Context, t *testing.T, brokers string) func(context.Context, time.Duration) error {
	kafkaSh, err := filepath.Abs("../../.ci/kafka.sh")
	if err == nil {
		_, err = os.Stat(kafkaSh)
	}
	if err == nil {
		out, serr := exec.CommandContext(ctx, "bash", kafkaSh, "status").Output()
		if serr != nil || !strings.Contains(string(out), "KAFKA_BROKERS="+brokers) {
			err = fmt.Errorf("kafka.sh status: %v (%s)", serr, strings.TrimSpace(string(out)))
		}
	}
	if err != nil {
		t.Logf("the broker is not one .ci/kafka.sh runs (%v): no broker restart", err)
		return nil
	}
	return func(ctx context.Context, down time.Duration) error {
		cmd := exec.CommandContext(ctx, "bash", kafkaSh, "restart", strconv.FormatFloat(down.Seconds(), 'f', -1, 64))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil || !strings.Contains(string(out), "KAFKA_BROKERS=") {
			return fmt.Errorf("kafka.sh restart: %v\n%s%s", err, out, stderr.String())
		}
		return nil
	}
}

func printFigures(t *testing.T, all []figures) {
	var sb strings.Builder
	fmt.Fprintf(&sb, "\nchaos figures (%d partitions, %d keys, commit interval %v)\n", partitions, keys, commitInterval)
	fmt.Fprintf(&sb, "%-9s %-19s %8s %8s %9s %9s %9s %9s %6s %5s %5s %5s %8s %9s %12s %10s %10s %8s\n",
		"client", "protocol", "messages", "handled", "dup:kill", "dup:lost", "dup:grace", "ovl:lost", "doubts", "kills", "terms", "joins", "restarts",
		"max redo", "max uncommit", "broker down", "violations", "elapsed")
	for _, f := range all {
		fmt.Fprintf(&sb, "%-9s %-19s %8d %8d %9d %9d %9d %9d %6d %5d %5d %5d %8d %9d %12d %10v %10d %8v\n",
			f.client, f.protocol, f.messages, f.handled, f.dupKill, f.dupLost, f.dupGrace, f.overlapLost, f.doubts, f.kills, f.terms, f.joins, f.restart,
			f.maxRedo, f.maxUncommitted, f.brokerDown.Round(100*time.Millisecond), f.violations, f.elapsed.Round(time.Second))
	}
	if slices.ContainsFunc(all, func(f figures) bool { return f.eos }) {
		fmt.Fprintf(&sb, "exactly-once (outputs read with isolation read_committed from %d partitions; transaction timeout %v)\n", outPartitions, txnTimeout)
		fmt.Fprintf(&sb, "%-9s %-19s %8s %8s %11s %11s %10s\n", "client", "protocol", "inputs", "outputs", "dup inputs", "lost inputs", "out order")
		for _, f := range all {
			fmt.Fprintf(&sb, "%-9s %-19s %8d %8d %11d %11d %10d\n", f.client, f.protocol, f.messages, f.outputs, f.outDup, f.outLost, f.outOrder)
		}
		sb.WriteString("dup inputs = inputs with more than one committed output; lost inputs = with none (both must be 0)\n")
	}
	sb.WriteString("dup:kill = redone after the member that had handled it was SIGKILLed; dup:lost = after its member lost the partition\n" +
		"(broker restart); dup:grace = after a graceful stop or an orderly rebalance (must be 0); max redo = most messages\n" +
		"redone after one SIGKILL; max uncommit = most messages a killed member had finished past the committed offsets;\n" +
		"ovl:lost = a key in handlers on two members at once, one of them fenced by the broker without knowing it yet;\n" +
		"doubts = member runs that held their handlers while every broker was down, until the coordinator confirmed them\n")
	t.Log(sb.String())
	fmt.Print(sb.String())
}

// chaosRun is one protocol's run.
type chaosRun struct {
	t       *testing.T
	ctx     context.Context
	c       *kafkatest.Cluster
	bin     string
	restart func(ctx context.Context, down time.Duration) error // nil: no broker restart
	// settleKilled: how long after the last SIGKILL a broker restart waits
	// (chaosConfig.settleKilled).
	settleKilled time.Duration
	client       string
	protocol     string
	dir          string
	duration     time.Duration
	pace         [2]time.Duration // the chaos phase's actions come this far apart, at random
	// brokerDown is how long the broker stays down when it is restarted
	// (CHAOS_BROKER_DOWN, default 2s; Apache Kafka takes some 13 s more to
	// start again).
	brokerDown time.Duration
	messages   int
	eos        bool // transactional members, and the outputs checked (eos_test.go)

	topic, group string
	out          string             // the output topic (eos)
	ended        map[po][]*handling // the handlings that ended, by message (check)
	produced     []kafkatest.Record

	mu      sync.Mutex
	runs    map[string]*memberRun
	order   []*memberRun
	nextRun int
	samples []sample
	fig     figures

	violations []string
}

// memberRun is one member process.
type memberRun struct {
	id, member    string
	cmd           *exec.Cmd
	history       string
	stderr        string
	exited        chan struct{}
	err           error  // from Wait, once exited is closed
	mode          string // how it consumes: one of memberModes
	exitAt        time.Time
	killed        bool // SIGKILLed
	killAt        time.Time
	killCommitted map[int32]int64 // committed offsets sampled right before the kill
	termed        bool
}

func (m *memberRun) alive() bool {
	select {
	case <-m.exited:
		return false
	default:
		return true
	}
}

type sample struct {
	at      time.Time // when the answer came
	offsets map[int32]int64
}

func (r *chaosRun) violate(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	r.mu.Lock()
	r.violations = append(r.violations, s)
	r.mu.Unlock()
}

func (r *chaosRun) run() figures {
	t := r.t
	start := time.Now()
	r.fig.client, r.fig.protocol, r.fig.eos = r.client, r.protocol, r.eos
	r.fig.messages = r.messages
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	r.topic = kafkatest.UniqueTopic("chaos-" + r.client + "-" + r.protocol)
	r.group = "group-" + r.topic
	if err := r.c.CreateTopic(r.ctx, r.topic, partitions); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = r.c.DeleteTopic(context.Background(), r.topic) }()
	if r.eos {
		r.out = r.topic + "-out"
		if err := r.c.CreateTopic(r.ctx, r.out, outPartitions); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = r.c.DeleteTopic(context.Background(), r.out) }()
	}
	defer r.killAll()

	// The producer writes the messages over the first 3/4 of the chaos
	// phase; the sampler reads the committed offsets until the end.
	prodDone := make(chan error, 1)
	go func() { prodDone <- r.produce(r.duration * 3 / 4) }()
	sampleCtx, stopSampling := context.WithCancel(r.ctx)
	samplerDone := make(chan struct{})
	go func() { defer close(samplerDone); r.sample(sampleCtx) }()
	defer func() { stopSampling(); <-samplerDone }()

	for range 3 {
		r.start()
	}
	r.chaos()
	if err := <-prodDone; err != nil {
		t.Fatalf("producing: %v", err)
	}
	for r.aliveCount() < 3 {
		r.start()
	}
	t.Logf("%s: chaos over after %v (%d kills, %d terms, %d joins, %d broker restarts); letting the members finish",
		r.protocol, time.Since(start).Round(time.Second), r.fig.kills, r.fig.terms, r.fig.joins, r.fig.restart)
	ends := map[int32]int64{}
	for _, rec := range r.produced {
		ends[rec.Partition] = max(ends[rec.Partition], rec.Offset+1)
	}
	drained := r.waitCommitted(ends, drainTimeout)
	if !drained {
		r.violate("final commit: the group did not commit the end of every partition within %v of the chaos phase: committed %v, ends %v",
			drainTimeout, r.lastSample(), ends)
	}
	// Stop every member gracefully.
	for _, m := range r.aliveMembers() {
		r.term(m, false)
	}
	stopSampling()
	<-samplerDone
	final, err := r.c.CommittedOffsets(r.ctx, r.group, r.topic)
	if err != nil {
		r.violate("final commit: reading the committed offsets: %v", err)
	} else {
		r.samples = append(r.samples, sample{at: time.Now(), offsets: final})
		for p := range int32(partitions) {
			if final[p] != ends[p] {
				r.violate("final commit: partition %d committed at %d, its end is %d", p, final[p], ends[p])
			}
		}
	}
	r.check()
	if r.eos {
		r.checkOutputs()
	}
	for _, m := range r.order {
		if data, err := os.ReadFile(m.stderr); err == nil && bytes.Contains(data, []byte("assignment is in doubt")) {
			r.fig.doubts++
		}
	}
	r.fig.elapsed = time.Since(start)
	r.fig.violations = len(r.violations)
	for i, v := range r.violations {
		if i == 40 {
			t.Errorf("... and %d more violations", len(r.violations)-i)
			break
		}
		t.Errorf("VIOLATION %s: %s", r.protocol, v)
	}
	if len(r.violations) > 0 {
		r.showStderr()
	}
	return r.fig
}

// produce writes r.messages keyed records over about d, in 30 bursts, so
// that the members alternate between a backlog and idling: record i has key
// keyed.Key(i % keys) and sequence number i / keys within its key.
func (r *chaosRun) produce(d time.Duration) error {
	batch := max(200, r.messages/30)
	batches := (r.messages + batch - 1) / batch
	every := d / time.Duration(batches)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for b := range batches {
		var recs []kafkatest.Record
		for i := b * batch; i < min((b+1)*batch, r.messages); i++ {
			recs = append(recs, kafkatest.Record{
				Key: keyed.Key(i % keys), Value: keyed.Value(i%keys, i/keys),
				Partition: kafkatest.AnyPartition,
			})
		}
		// The producer is idempotent and retries through the broker's
		// restart; a batch that fails is not retried (it may be written).
		ctx, cancel := context.WithTimeout(r.ctx, 2*time.Minute)
		err := r.c.Produce(ctx, r.topic, recs)
		cancel()
		if err != nil {
			return err
		}
		r.mu.Lock()
		r.produced = append(r.produced, recs...)
		r.mu.Unlock()
		select {
		case <-tick.C:
		case <-r.ctx.Done():
			return r.ctx.Err()
		}
	}
	return nil
}

func (r *chaosRun) sample(ctx context.Context) {
	tick := time.NewTicker(sampleEvery)
	defer tick.Stop()
	for {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		offs, err := r.c.CommittedOffsets(sctx, r.group, r.topic)
		cancel()
		if err == nil {
			r.mu.Lock()
			r.samples = append(r.samples, sample{at: time.Now(), offsets: offs})
			r.mu.Unlock()
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return
		}
	}
}

func (r *chaosRun) lastSample() map[int32]int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.samples) == 0 {
		return nil
	}
	return r.samples[len(r.samples)-1].offsets
}

func (r *chaosRun) waitCommitted(ends map[int32]int64, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && r.ctx.Err() == nil {
		last := r.lastSample()
		done := last != nil
		for p, e := range ends {
			if last[p] != e {
				done = false
			}
		}
		if done {
			return true
		}
		// A member that exits by itself is reported by the checker; keep
		// enough of them.
		for r.aliveCount() < 3 {
			r.start()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

// start starts a member process.
func (r *chaosRun) start() *memberRun {
	r.mu.Lock()
	r.nextRun++
	id := fmt.Sprintf("r%02d", r.nextRun)
	mode := memberModes[r.nextRun%len(memberModes)]
	member := "m" + id[1:]
	if r.eos {
		member = r.freeSlot()
	}
	r.mu.Unlock()
	m := &memberRun{
		id: id, member: member, mode: mode,
		history: filepath.Join(r.dir, "history-"+id),
		stderr:  filepath.Join(r.dir, "stderr-"+id),
		exited:  make(chan struct{}),
	}
	errf, err := os.Create(m.stderr)
	if err != nil {
		r.t.Fatal(err)
	}
	defer errf.Close()
	m.cmd = exec.Command(r.bin, "-brokers", r.c.Bootstrap(), "-topic", r.topic, "-group", r.group,
		"-protocol", r.protocol, "-run", m.id, "-member", m.member, "-history", m.history,
		"-commit-interval", commitInterval.String(), "-work", handlerWork.String(), "-mode", mode, "-client", r.client)
	if r.eos {
		m.cmd.Args = append(m.cmd.Args, "-eos", "-out", r.out, "-txn-id", r.txnID(member), "-txn-timeout", txnTimeout.String())
	}
	m.cmd.Stdout, m.cmd.Stderr = errf, errf
	if err := m.cmd.Start(); err != nil {
		r.t.Fatalf("starting a member: %v", err)
	}
	go func() {
		err := m.cmd.Wait()
		m.err, m.exitAt = err, time.Now()
		close(m.exited)
	}()
	r.mu.Lock()
	r.runs[id] = m
	r.order = append(r.order, m)
	r.mu.Unlock()
	return m
}

func (r *chaosRun) aliveMembers() []*memberRun {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*memberRun
	for _, m := range r.order {
		if m.alive() {
			out = append(out, m)
		}
	}
	return out
}

func (r *chaosRun) aliveCount() int { return len(r.aliveMembers()) }

// kill SIGKILLs m, after reading the committed offsets.
func (r *chaosRun) kill(m *memberRun) {
	ctx, cancel := context.WithTimeout(r.ctx, 3*time.Second)
	offs, err := r.c.CommittedOffsets(ctx, r.group, r.topic)
	cancel()
	if err != nil {
		offs = r.lastSample()
	}
	m.killed, m.killCommitted = true, offs
	_ = m.cmd.Process.Signal(syscall.SIGKILL)
	<-m.exited
	m.killAt = time.Now()
	r.fig.kills++
	r.t.Logf("%s: SIGKILL %s (%s, member %s)", r.protocol, m.id, m.mode, m.member)
}

// term stops m with SIGTERM and waits for it to exit.
func (r *chaosRun) term(m *memberRun, chaos bool) {
	m.termed = true
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	t0 := time.Now()
	select {
	case <-m.exited:
	case <-time.After(stopTimeout):
		r.violate("graceful stop: %s did not exit within %v of SIGTERM; killed", m.id, stopTimeout)
		_ = m.cmd.Process.Signal(syscall.SIGKILL)
		<-m.exited
	}
	if m.err != nil {
		r.violate("graceful stop: %s exited with %v after SIGTERM (stderr: %s)", m.id, m.err, tail(m.stderr, 5))
	}
	if chaos {
		r.fig.terms++
		r.t.Logf("%s: SIGTERM %s (%s, member %s), exited after %v", r.protocol, m.id, m.mode, m.member, time.Since(t0).Round(time.Millisecond))
	}
}

func (r *chaosRun) killAll() {
	for _, m := range r.aliveMembers() {
		_ = m.cmd.Process.Signal(syscall.SIGKILL)
		<-m.exited
	}
}

// chaos runs random actions for r.duration: SIGKILL, SIGTERM, join, and
// one broker restart.
func (r *chaosRun) chaos() {
	end := time.Now().Add(r.duration)
	restartAt := time.Now().Add(r.duration * time.Duration(30+rand.N(30)) / 100)
	restarted := r.restart == nil
	// The first actions are one of each, so that a short schedule has them
	// all; then at random.
	opening := []string{"join", "kill", "term"}
	for time.Now().Before(end) && r.ctx.Err() == nil {
		time.Sleep(r.pace[0] + rand.N(r.pace[1]-r.pace[0]+1))
		// A member that exited by itself is a failure.
		r.mu.Lock()
		for _, m := range r.order {
			if !m.alive() && !m.killed && !m.termed {
				if stderr := tail(m.stderr, 5); strings.Contains(stderr, pipeline.ErrTransactionFatal.Error()) {
					// A transactional producer that cannot go on stops its
					// member (a broker outage longer than an abort may
					// wait, say): as a crash, which an orchestrator
					// restarts; the schedule's joins take its slot.
					m.killed = true
					r.t.Logf("%s/%s: member %s stopped on a fatal transaction error, as a crash: %s", r.client, r.protocol, m.id, stderr)
					continue
				}
				m.termed = true // report once
				r.mu.Unlock()
				r.violate("member %s exited by itself: %v (stderr: %s)", m.id, m.err, tail(m.stderr, 5))
				r.mu.Lock()
			}
		}
		r.mu.Unlock()
		if !restarted && time.Now().After(restartAt) {
			restarted = true
			r.restartBroker()
			continue
		}
		alive := r.aliveMembers()
		action := []string{"kill", "term", "join"}[rand.N(3)]
		if len(opening) > 0 {
			action, opening = opening[0], opening[1:]
		}
		switch {
		case len(alive) <= 2:
			action = "join"
		case len(alive) >= 4 && action == "join":
			action = []string{"kill", "term"}[rand.N(2)]
		}
		switch action {
		case "join":
			m := r.start()
			r.fig.joins++
			r.t.Logf("%s: join %s (%s, member %s)", r.protocol, m.id, m.mode, m.member)
		case "kill":
			r.kill(alive[rand.N(len(alive))])
		case "term":
			r.term(alive[rand.N(len(alive))], true)
		}
	}
}

func (r *chaosRun) restartBroker() {
	if r.settleKilled > 0 {
		var last time.Time
		r.mu.Lock()
		for _, m := range r.order {
			if m.killed && m.killAt.After(last) {
				last = m.killAt
			}
		}
		r.mu.Unlock()
		if wait := time.Until(last.Add(r.settleKilled)); wait > 0 {
			r.t.Logf("%s: the broker restart waits %v, until %v after the last SIGKILL", r.protocol, wait.Round(100*time.Millisecond), r.settleKilled)
			time.Sleep(wait)
		}
	}
	ctx, cancel := context.WithTimeout(r.ctx, 2*time.Minute)
	defer cancel()
	t0 := time.Now()
	err := r.restart(ctx, r.brokerDown)
	r.fig.brokerDown = time.Since(t0)
	if err != nil {
		r.t.Fatalf("restarting the broker: %v", err)
	}
	r.fig.restart++
	r.t.Logf("%s: broker killed and restarted, down for %v", r.protocol, r.fig.brokerDown.Round(100*time.Millisecond))
	// Let the members reconnect before the next action.
	time.Sleep(3 * time.Second)
}

func (r *chaosRun) showStderr() {
	for _, m := range r.order {
		if s := tail(m.stderr, 8); s != "" {
			r.t.Logf("stderr of %s (killed %v, termed %v, exit %v):\n%s", m.id, m.killed, m.termed, m.err, s)
		}
	}
}

func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ---------------------------------------------------------------------------
// the checker
// ---------------------------------------------------------------------------

// handling is one handling of a message by a member run, from its history.
type handling struct {
	run        *memberRun
	p          int32
	o          int64
	key        string
	seq        int
	start, end int64 // Unix ns; end 0 if it never ended
	// epoch counts the rebalance events of the partition in the run's
	// history before this handling: per-key order holds within one.
	epoch int
}

type po struct {
	p int32
	o int64
}

type rebalanceEvent struct {
	kind string
	p    int32
	at   int64
}

// readHistory parses m's history file into its handlings, in start order,
// and its rebalance events.
func (r *chaosRun) readHistory(m *memberRun) ([]*handling, []rebalanceEvent) {
	data, err := os.ReadFile(m.history)
	if err != nil {
		r.violate("history of %s: %v", m.id, err)
		return nil, nil
	}
	if i := bytes.LastIndexByte(data, '\n'); i >= 0 {
		data = data[:i+1]
	}
	var hs []*handling
	var evs []rebalanceEvent
	open := map[po][]*handling{}
	epoch := map[int32]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		bad := func() { r.violate("history of %s: bad line %q", m.id, sc.Text()) }
		switch f[0] {
		case "S", "E":
			if len(f) != 9 || f[3] != r.topic {
				bad()
				continue
			}
			p, err1 := strconv.ParseInt(f[4], 10, 32)
			o, err2 := strconv.ParseInt(f[5], 10, 64)
			seq, err3 := strconv.Atoi(f[7])
			ns, err4 := strconv.ParseInt(f[8], 10, 64)
			if errors.Join(err1, err2, err3, err4) != nil {
				bad()
				continue
			}
			x := po{int32(p), o}
			if f[0] == "S" {
				h := &handling{run: m, p: x.p, o: o, key: f[6], seq: seq, start: ns, epoch: epoch[x.p]}
				hs = append(hs, h)
				open[x] = append(open[x], h)
				continue
			}
			q := open[x]
			if len(q) == 0 {
				r.violate("history of %s: end of %d@%d without a start", m.id, x.p, x.o)
				continue
			}
			q[0].end = ns
			open[x] = q[1:]
		case "R":
			if len(f) != 7 || f[4] != r.topic {
				bad()
				continue
			}
			p, err1 := strconv.ParseInt(f[5], 10, 32)
			ns, err2 := strconv.ParseInt(f[6], 10, 64)
			if errors.Join(err1, err2) != nil {
				bad()
				continue
			}
			evs = append(evs, rebalanceEvent{kind: f[3], p: int32(p), at: ns})
			epoch[int32(p)]++
		}
	}
	return hs, evs
}

func (r *chaosRun) check() {
	type want struct {
		key string
		seq int
	}
	produced := map[po]want{}
	for _, rec := range r.produced {
		key, seq, err := keyed.Parse(rec.Value)
		if err != nil {
			r.violate("produced value %q: %v", rec.Value, err)
		}
		produced[po{rec.Partition, rec.Offset}] = want{key, seq}
	}

	var all []*handling
	lost := map[*memberRun][]rebalanceEvent{}
	for _, m := range r.order {
		hs, evs := r.readHistory(m)
		all = append(all, hs...)
		for _, ev := range evs {
			if ev.kind == "lost" {
				lost[m] = append(lost[m], ev)
			}
		}

		// Per-key order within the member run: each key's handlings
		// start in increasing sequence numbers, from one rebalance event
		// of its partition to the next (a partition lost and assigned
		// again starts over from the committed offset).
		type keyEpoch struct {
			key   string
			epoch int
		}
		lastSeq := map[keyEpoch]*handling{}
		for _, h := range hs {
			ke := keyEpoch{h.key, h.epoch}
			if prev := lastSeq[ke]; prev != nil && h.seq <= prev.seq {
				r.violate("per-key order: %s handled %s seq %d (%d@%d) after seq %d (%d@%d)",
					m.id, h.key, h.seq, h.p, h.o, prev.seq, prev.p, prev.o)
			}
			lastSeq[ke] = h
		}
	}

	// Nothing lost, and each handling of the message it names.
	ended := map[po][]*handling{}
	for _, h := range all {
		w, ok := produced[po{h.p, h.o}]
		if !ok {
			r.violate("handled %d@%d (%s), which was not produced", h.p, h.o, h.run.id)
			continue
		}
		if w.key != h.key || w.seq != h.seq {
			r.violate("%d@%d handled as %s/%d, produced as %s/%d", h.p, h.o, h.key, h.seq, w.key, w.seq)
		}
		if h.end != 0 {
			ended[po{h.p, h.o}] = append(ended[po{h.p, h.o}], h)
		}
	}
	r.fig.handled = len(ended)
	r.ended = ended
	missing := 0
	for x := range produced {
		if len(ended[x]) == 0 {
			if missing < 10 {
				r.violate("lost: %d@%d was produced and never handled to its end", x.p, x.o)
			}
			missing++
		}
	}
	if missing > 10 {
		r.violate("lost: %d messages in all", missing)
	}

	// No key in handlers on two members (or twice in one) at once.
	byKey := map[string][]*handling{}
	for _, h := range all {
		byKey[h.key] = append(byKey[h.key], h)
	}
	overlaps := 0
	for key, hs := range byKey {
		slices.SortFunc(hs, func(a, b *handling) int { return cmpInt64(a.start, b.start) })
		var holder *handling
		var holderEnd int64
		for _, h := range hs {
			if holder != nil && h.start < holderEnd && holder.run != h.run &&
				(fencedDuring(lost[holder.run], holder, h.start) || fencedDuring(lost[h.run], h, h.start)) {
				// A zombie: the broker had expired one member's session
				// (the broker restart) and given its partition to the
				// other before the first heard of it. Counted, like the
				// duplicates it causes.
				r.fig.overlapLost++
			} else if holder != nil && h.start < holderEnd {
				if overlaps < 10 {
					r.violate("key in two handlers at once: %s %d@%d on %s [%d, %d] and %d@%d on %s from %d (%v before that end)",
						key, holder.p, holder.o, holder.run.id, holder.start, holderEnd, h.p, h.o, h.run.id, h.start,
						time.Duration(holderEnd-h.start))
				}
				overlaps++
			}
			if e := endOf(h); holder == nil || e > holderEnd {
				holder, holderEnd = h, e
			}
		}
	}
	if overlaps > 10 {
		r.violate("key in two handlers at once: %d overlaps in all", overlaps)
	}

	// Commits: never past a message that had not ended by the sample, and
	// never backwards.
	firstEnd := map[int32][]int64{} // partition -> offset -> earliest end (0: none)
	ends := map[int32]int64{}
	for x := range produced {
		ends[x.p] = max(ends[x.p], x.o+1)
	}
	for p, n := range ends {
		fe := make([]int64, n)
		for o := range n {
			for _, h := range ended[po{p, o}] {
				if fe[o] == 0 || h.end < fe[o] {
					fe[o] = h.end
				}
			}
		}
		firstEnd[p] = fe
	}
	// prefix[p][o] = the offset below o whose first end is the latest (-1 if none ended never).
	type worst struct {
		o  int64
		at int64 // 0: never ended
	}
	prefix := map[int32][]worst{}
	for p, fe := range firstEnd {
		pw := make([]worst, len(fe)+1)
		pw[0] = worst{-1, -1}
		for o, at := range fe {
			w := pw[o]
			switch {
			case w.at == 0:
			case at == 0 || at > w.at:
				w = worst{int64(o), at}
			}
			pw[o+1] = w
		}
		prefix[p] = pw
	}
	r.mu.Lock()
	samples := slices.Clone(r.samples)
	r.mu.Unlock()
	pastUnfinished, backwards := 0, 0
	prev := map[int32]int64{}
	prevAt := map[int32]time.Time{}
	for _, s := range samples {
		for _, p := range slices.Sorted(maps.Keys(s.offsets)) {
			o := s.offsets[p]
			if o < prev[p] {
				backwards++
				r.violate("committed offset moved BACKWARDS: partition %d from %d (sampled %s) to %d (sampled %s)",
					p, prev[p], prevAt[p].Format("15:04:05.000"), o, s.at.Format("15:04:05.000"))
			}
			prev[p], prevAt[p] = o, s.at
			pw := prefix[p]
			if o > int64(len(pw)-1) {
				r.violate("commit past the end: partition %d committed at %d (sampled %s), %d produced",
					p, o, s.at.Format("15:04:05.000"), len(pw)-1)
				continue
			}
			if w := pw[o]; w.at == 0 || w.at > s.at.Add(commitSlack).UnixNano() {
				if pastUnfinished < 10 {
					how := "never ended"
					if w.at != 0 {
						how = fmt.Sprintf("ended %v after the sample", time.Duration(w.at-s.at.UnixNano()))
					}
					r.violate("commit past an unfinished message: partition %d committed at %d (sampled %s) but %d@%d %s",
						p, o, s.at.Format("15:04:05.000"), p, w.o, how)
				}
				pastUnfinished++
			}
		}
	}
	if pastUnfinished > 10 {
		r.violate("commit past an unfinished message: %d samples in all", pastUnfinished)
	}

	// Duplicates, by cause, and the redo after each kill bounded by what
	// the killed member had finished past the committed offsets.
	redoneAfterKill := map[*memberRun]int{}
	graceShown := 0
	for x, hs := range ended {
		slices.SortFunc(hs, func(a, b *handling) int { return cmpInt64(a.end, b.end) })
		for i := 1; i < len(hs); i++ {
			before, h := hs[i-1], hs[i]
			switch {
			case before.run.killed && h.run != before.run && h.start >= before.run.killAt.UnixNano():
				r.fig.dupKill++
				redoneAfterKill[before.run]++
				if c, ok := before.run.killCommitted[x.p]; ok && x.o < c {
					r.violate("redone below the committed offset: %d@%d handled by %s, committed %d when it was killed, redone by %s",
						x.p, x.o, before.run.id, c, h.run.id)
				}
			case lostAfter(lost[before.run], x.p, before.start):
				r.fig.dupLost++
			case before.run.killed && h.start < before.run.killAt.UnixNano() && !before.run.termed:
				// Its member lost the partition and was SIGKILLed before its
				// OnLost record reached the history (seen once: the handling
				// ended 2 ms after the loss cancelled it, the kill came next).
				r.fig.dupLost++
			default:
				r.fig.dupGrace++
				// A transactional member commits no offset map: what
				// finished above a gap is handled again by the next owner
				// after a graceful stop or rebalance (its outputs were
				// never written; the read_committed check sees each once).
				if !r.eos && graceShown < 10 {
					graceShown++
					r.violate("duplicate after a graceful stop or rebalance: %d@%d ended on %s at %d (killed %v, termed %v), again on %s at %d",
						x.p, x.o, before.run.id, before.end, before.run.killed, before.run.termed, h.run.id, h.end)
				}
			}
		}
	}
	for _, m := range r.order {
		if !m.killed {
			continue
		}
		uncommitted := 0
		for x, hs := range ended {
			for _, h := range hs {
				if h.run == m && x.o >= m.killCommitted[x.p] {
					uncommitted++
					break
				}
			}
		}
		r.fig.maxRedo = max(r.fig.maxRedo, redoneAfterKill[m])
		r.fig.maxUncommitted = max(r.fig.maxUncommitted, uncommitted)
		r.t.Logf("%s: kill of %s: %d redone, of %d it had finished past the committed offsets %v",
			r.protocol, m.id, redoneAfterKill[m], uncommitted, m.killCommitted)
	}
	r.t.Logf("%s: %d samples of committed offsets; %d handlings; %d backwards moves; %d commits past unfinished",
		r.protocol, len(samples), len(all), backwards, pastUnfinished)
}

// endOf is when h left its handler: its end, else when its process died.
func endOf(h *handling) int64 {
	if h.end != 0 {
		return h.end
	}
	if h.run.killed {
		return h.run.killAt.UnixNano()
	}
	return h.run.exitAt.UnixNano()
}

// fencedSoon is the slack fencedDuring allows between an overlap's start
// and the zombie member's lost event: the time a member cut off from the
// broker takes to hear that it was fenced once the broker is back (its next
// heartbeat, 500 ms apart here) plus its handler's end.
const fencedSoon = 2 * time.Second

// fencedDuring reports whether h's member lost h's partition after h
// started and at most fencedSoon after overlapAt: h ran on a member the
// broker had already fenced (a KIP-848 member learns of it only at its next
// heartbeat; librdkafka keeps no session timer of its own for that
// protocol), while the partition's next owner started on the same key.
func fencedDuring(evs []rebalanceEvent, h *handling, overlapAt int64) bool {
	for _, ev := range evs {
		if ev.p == h.p && ev.at >= h.start && ev.at <= overlapAt+int64(fencedSoon) {
			return true
		}
	}
	return false
}

func lostAfter(evs []rebalanceEvent, p int32, at int64) bool {
	for _, ev := range evs {
		if ev.p == p && ev.at >= at {
			return true
		}
	}
	return false
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return d
}

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return n
}
