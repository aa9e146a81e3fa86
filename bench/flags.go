package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/parallafka/parallafka"
)

// config is one invocation of the harness: a workload description and the
// lists to sweep (every combination of dist × keys is one generated
// workload; every mode × concurrency is one run on it).
type config struct {
	source      string // mem, embedded, kafka
	client      string // confluent, franz: the Kafka client of the broker sources
	brokers     string
	messages    int // messages to handle per run
	backlog     int // messages in the topic (≥ messages); 0: messages
	partitions  int
	keys        []int
	dists       []string
	zipfS       float64
	valueSize   int
	handler     handlerSpec
	modes       []string
	concurrency []concSpec
	change      *capacityChange // -downstream-change
	timeline    string          // CSV of every run's timeline (downstream model)
	timelinePNG string          // chart of it
	debugLog    string          // the pipeline's log at Debug level
	maxInFlight int             // 0: the library's default
	serial      bool
	raw         bool
	json        bool
	plot        string
	progress    bool
	seed        uint64
	stall       time.Duration
	trace       string
	gogc        int
	cpuProfile  string
	retained    bool
	batch       int           // ConsumeBatch with batches of at most this many messages; 0: Consume
	linger      time.Duration // WithBatchLinger, with batch
	props       [][2]string   // -X: client properties, in order
	// rateLimit is -rate-limit (WithRateLimit); the zero RateLimit: none.
	rateLimit parallafka.RateLimit
	// excludeHot is -exclude-hot: the run's target leaves out the messages
	// of this many hottest keys (by message count).
	excludeHot int
	// duration is -duration: a run stops this long after Consume's start
	// (0: at its message target).
	duration time.Duration
	// outputs is -output: the output kinds to sweep (tx, alo), each run
	// writing one output record per input; output is the run's.
	outputs        []string
	output         string
	commitInterval time.Duration // -commit-interval, with -output
	aloLinger      time.Duration // -alo-linger
	keepTopic      string        // -keep-topic
	inputRate      float64       // -input-rate
}

// parseFlags parses the command line into a config. Usage and errors go to
// stderr.
func parseFlags(args []string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		c                                 config
		keys, dists, modes, conc, handler string
		change, rateLimit, outputs        string
	)
	fs.StringVar(&c.source, "source", "mem", "mem (in-memory source), embedded (in-process Kafka broker) or kafka (the broker given by -brokers)")
	fs.StringVar(&c.client, "client", "confluent", "Kafka client of the sources embedded and kafka: confluent (package kafka, confluent-kafka-go) or franz (package kafka/franz, franz-go); the serial and raw baselines use the same client")
	fs.StringVar(&c.brokers, "brokers", os.Getenv("KAFKA_BROKERS"), "bootstrap servers for -source kafka (env KAFKA_BROKERS)")
	fs.IntVar(&c.messages, "messages", 10000, "messages handled per run")
	fs.IntVar(&c.backlog, "backlog", 0, "messages in the topic, if more than -messages: a run stops after -messages (for the memory workload)")
	fs.IntVar(&c.partitions, "partitions", 1, "partitions of the topic")
	fs.StringVar(&keys, "keys", "1000", "distinct keys (a comma-separated list to sweep)")
	fs.StringVar(&dists, "dist", "uniform", "key distribution: uniform or zipf (a list to sweep)")
	fs.Float64Var(&c.zipfS, "zipf-s", 1.1, "exponent of the zipf distribution: key of rank r has weight 1/r^s")
	fs.IntVar(&c.valueSize, "value-size", 100, "bytes per message value")
	fs.StringVar(&handler, "handler", "noop", "handler model: noop, sleep:1ms, sleep:0ms-5ms (uniform random), cpu:N (N rounds of integer hashing), sink:2ms+10us (a fixed round trip per call plus a cost per message), downstream:cap=C,base=D[,fail=F] (one shared service: C calls at a time, D each, the rest queue; with fail=F a call finding more than F×C calls in it fails at once and is retried)")
	fs.IntVar(&c.batch, "batch", 0, "consume with a batch handler (ConsumeBatch), batches of at most N messages; 0: one message per call (Consume)")
	fs.DurationVar(&c.linger, "linger", 5*time.Millisecond, "with -batch: how long a partial batch waits for more (WithBatchLinger; its default, 5 ms)")
	fs.StringVar(&modes, "mode", "key", "ordering: key, partition or unordered (a list to sweep)")
	fs.StringVar(&conc, "concurrency", "16", "handler concurrency (a list to sweep, e.g. 1,16,100); adaptive:MIN-MAX for WithAdaptiveConcurrency(MIN, MAX)")
	fs.StringVar(&change, "downstream-change", "", "T:cap=C: the downstream's capacity becomes C at T into each run (handler downstream)")
	fs.StringVar(&c.debugLog, "debug-log", "", "append the pipeline's log, at Debug level (concurrency limit changes, ...), to this file")
	fs.StringVar(&c.timeline, "timeline", "", "write every run's timeline (every 100 ms: concurrency limit, throughput, handler p99 and p90, failures) as CSV to this file (handler downstream)")
	fs.StringVar(&c.timelinePNG, "timeline-plot", "", "chart the timelines (limit, throughput and handler p99 over time) into this file, .png or .svg (handler downstream)")
	fs.IntVar(&c.maxInFlight, "max-in-flight", 0, "WithMaxInFlight; 0 keeps the library default (max(20000, 2×concurrency))")
	fs.BoolVar(&c.serial, "serial", true, "measure the serial baseline (one classic loop per partition); when false it is estimated from measured handler time")
	fs.BoolVar(&c.raw, "raw", true, "measure the raw consume loop of the -client (confluent-kafka-go Poll or franz-go PollFetches; sources embedded and kafka), or the plain poll loop of the mem source (handler noop)")
	fs.BoolVar(&c.json, "json", false, "print one JSON object per run on stdout instead of a table")
	fs.StringVar(&c.plot, "plot", "", "write a chart of throughput against concurrency to this file (.png or .svg)")
	fs.BoolVar(&c.progress, "progress", isTerminal(os.Stderr), "show a progress bar on stderr for runs longer than a second (default: when stderr is a terminal)")
	fs.Uint64Var(&c.seed, "seed", 1, "seed of the generated workload")
	fs.DurationVar(&c.stall, "stall", time.Minute, "abort a run that makes no progress for this long")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole invocation to `file` (go tool pprof)")
	fs.IntVar(&c.gogc, "gogc", 0, "set the GC percentage for the runs (as GOGC does; 0 leaves it): a low value makes the live-heap samples of the memory workload frequent")
	fs.BoolVar(&c.retained, "retained", false, "halfway through each run, hold every handler until the in-flight limit is reached, force two GCs and record the live heap the pipeline retains (the run's timings are then not meaningful)")
	fs.StringVar(&c.trace, "trace", "", "write a CSV timeline of each run (every 10 ms: handled, in flight, queued behind keys, busy handlers) to this file")
	fs.StringVar(&rateLimit, "rate-limit", "", "WithRateLimit: a comma-separated subset of records=N (records/s of all keys), bytes=N (bytes/s) and per-key=N (records/s of each key), e.g. records=2000,per-key=50")
	fs.IntVar(&c.excludeHot, "exclude-hot", 0, "leave the K hottest keys (by message count) out of a run's target: it ends once every other key's messages are handled, and its messages and msg/s count those only")
	fs.DurationVar(&c.duration, "duration", 0, "stop each run this long (at least 2s) after Consume's start and report the rate from 1s to its end (the topic must hold enough messages: raise -messages or -backlog); 0: stop at the message target")
	fs.StringVar(&outputs, "output", "", "consume, transform, produce (sources embedded and kafka): each handler call also writes one output record per input (same key) to an output topic created per run, read back by a read_committed reader that counts duplicates; a comma-separated list of kinds to sweep, repeats allowed: tx (transactions: WithTransactions over the client's Transactor, parallafka.Produce) or alo (at-least-once: a plain idempotent producer of the same client, the handler waiting for the record's ack)")
	fs.DurationVar(&c.commitInterval, "commit-interval", 100*time.Millisecond, "WithCommitInterval of the -output runs (tx: one transaction per interval)")
	fs.DurationVar(&c.aloLinger, "alo-linger", time.Millisecond, "linger of the at-least-once producer of -output alo (librdkafka linger.ms, kgo.ProducerLinger; the clients default to 5 ms and 10 ms, which a handler waiting for its ack pays in full)")
	fs.StringVar(&c.keepTopic, "keep-topic", "", "load the workload into this topic, or reuse it if it already holds exactly the workload's message count, and keep it afterwards (for bench/pc/run.sh); one -keys and -dist value")
	fs.Float64Var(&c.inputRate, "input-rate", 0, "with -output: produce each run's inputs during the run, at this many messages per second, into a topic of its own (instead of consuming a loaded backlog), so that the input timestamp → visible output latency is not the wait in a backlog; needs -serial=false -raw=false")
	fs.Func("X", "client property `key=value`, repeatable, for the raw loop and Parallafka alike: with -client confluent any librdkafka consumer property (e.g. queued.min.messages=1000000); with -client franz "+strings.Join(franzProps, ", "), func(kv string) error {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return fmt.Errorf("want key=value, got %q", kv)
		}
		c.props = append(c.props, [2]string{k, v})
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	var errs []error
	var err error
	if c.keys, err = parseInts(keys); err != nil {
		errs = append(errs, fmt.Errorf("-keys: %w", err))
	}
	if c.change, err = parseCapacityChange(change); err != nil {
		errs = append(errs, fmt.Errorf("-downstream-change: %w", err))
	}
	if c.concurrency, err = parseConcurrency(conc); err != nil {
		errs = append(errs, fmt.Errorf("-concurrency: %w", err))
	}
	if c.rateLimit, err = parseRateLimit(rateLimit); err != nil {
		errs = append(errs, fmt.Errorf("-rate-limit: %w", err))
	}
	c.dists = parseList(dists)
	c.outputs = parseList(outputs)
	c.modes = parseList(modes)
	if c.handler, err = parseHandler(handler); err != nil {
		errs = append(errs, fmt.Errorf("-handler: %w", err))
	}
	errs = append(errs, c.validate())
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *config) validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	switch c.source {
	case "mem", "embedded":
	case "kafka":
		if strings.TrimSpace(c.brokers) == "" {
			bad("-source kafka needs -brokers (or KAFKA_BROKERS)")
		}
	default:
		bad("-source: want mem, embedded or kafka, got %q", c.source)
	}
	if c.client != "confluent" && c.client != "franz" {
		bad("-client: want confluent or franz, got %q", c.client)
	}
	if c.messages < 1 {
		bad("-messages must be positive")
	}
	if c.backlog == 0 {
		c.backlog = c.messages
	}
	if c.backlog < c.messages {
		bad("-backlog (%d) must be at least -messages (%d)", c.backlog, c.messages)
	}
	if c.partitions < 1 {
		bad("-partitions must be positive")
	}
	for _, k := range c.keys {
		if k < 1 {
			bad("-keys must be positive, got %d", k)
		}
	}
	for _, d := range c.dists {
		if d != "uniform" && d != "zipf" {
			bad("-dist: want uniform or zipf, got %q", d)
		}
	}
	if c.zipfS <= 0 {
		bad("-zipf-s must be positive")
	}
	if c.valueSize < 0 {
		bad("-value-size must not be negative")
	}
	for _, m := range c.modes {
		if _, err := ordering(m); err != nil {
			errs = append(errs, err)
		}
	}
	for _, n := range c.concurrency {
		if n.n < 1 {
			bad("-concurrency must be positive, got %d", n.n)
		}
	}
	if (c.change != nil || c.timeline != "" || c.timelinePNG != "") && c.handler.kind != "downstream" {
		bad("-downstream-change, -timeline and -timeline-plot need -handler downstream:...")
	}
	if c.maxInFlight < 0 {
		bad("-max-in-flight must not be negative")
	}
	if c.batch < 0 {
		bad("-batch must not be negative")
	}
	if c.linger < 0 {
		bad("-linger must not be negative")
	}
	if c.excludeHot < 0 {
		bad("-exclude-hot must not be negative")
	}
	for _, k := range c.keys {
		if c.excludeHot > 0 && c.excludeHot >= k {
			bad("-exclude-hot (%d) must be less than -keys (%d): no message would be left to measure", c.excludeHot, k)
		}
	}
	if c.duration != 0 && c.duration < 2*time.Second {
		bad("-duration must be 0 (off) or at least 2s (its rate window starts at 1s), got %v", c.duration)
	}
	for _, o := range c.outputs {
		if o != outputTx && o != outputALO {
			bad("-output: want tx or alo, got %q", o)
		}
	}
	if len(c.outputs) > 0 {
		if c.source == "mem" {
			bad("-output needs -source embedded or kafka")
		}
		if c.batch > 0 || c.duration > 0 || c.excludeHot > 0 || c.handler.kind == "downstream" || c.retained {
			bad("-output does not go with -batch, -duration, -exclude-hot, -retained or -handler downstream")
		}
		if c.commitInterval <= 0 {
			bad("-commit-interval must be positive")
		}
	}
	if c.inputRate < 0 || (c.inputRate > 0 && (len(c.outputs) == 0 || c.serial || c.raw || c.keepTopic != "" || c.backlog != c.messages)) {
		bad("-input-rate must be positive and needs -output, -serial=false, -raw=false, and no -keep-topic or -backlog")
	}
	if c.keepTopic != "" && (c.source == "mem" || len(c.keys) > 1 || len(c.dists) > 1) {
		bad("-keep-topic needs a broker source and a single -keys and -dist value")
	}
	if len(c.keys) == 0 || len(c.dists) == 0 || len(c.modes) == 0 || len(c.concurrency) == 0 {
		bad("-keys, -dist, -mode and -concurrency need at least one value each")
	}
	return errors.Join(errs...)
}

// inFlightLimit is the in-flight limit a run with concurrency n gets: the
// flag, or the library's default.
func (c *config) inFlightLimit(n int) int {
	if c.maxInFlight > 0 {
		return c.maxInFlight
	}
	return max(20_000, 2*n) // WithMaxInFlight's default
}

func parseList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// parseInts parses a comma-separated list of integers; "_" and "k"/"m"
// suffixes are allowed (10_000, 10k, 1m).
func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range parseList(s) {
		n, err := parseCount(f)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

func parseCount(f string) (int, error) {
	mult := 1
	switch {
	case strings.HasSuffix(f, "k"):
		mult, f = 1000, strings.TrimSuffix(f, "k")
	case strings.HasSuffix(f, "m"):
		mult, f = 1000000, strings.TrimSuffix(f, "m")
	}
	n, err := strconv.Atoi(strings.ReplaceAll(f, "_", ""))
	if err != nil {
		return 0, fmt.Errorf("%q is not a count", f)
	}
	return n * mult, nil
}

// rateField is one field of a -rate-limit spec: its name and the
// RateLimit field it sets.
type rateField struct {
	name  string
	field func(*parallafka.RateLimit) *float64
}

// rateFields are the fields of a -rate-limit spec, in the order
// rateLimitString writes them.
var rateFields = []rateField{
	{"records", func(l *parallafka.RateLimit) *float64 { return &l.Records }},
	{"bytes", func(l *parallafka.RateLimit) *float64 { return &l.Bytes }},
	{"per-key", func(l *parallafka.RateLimit) *float64 { return &l.PerKey }},
}

// parseRateLimit parses a -rate-limit spec: a comma-separated subset of
// records=N, bytes=N and per-key=N, each N a positive finite number, each
// name at most once. The empty spec is no limit.
func parseRateLimit(spec string) (parallafka.RateLimit, error) {
	var l parallafka.RateLimit
	if strings.TrimSpace(spec) == "" {
		return l, nil
	}
	seen := map[string]bool{}
	for _, f := range strings.Split(spec, ",") {
		rf, v, err := parseRateField(strings.TrimSpace(f))
		if err != nil {
			return parallafka.RateLimit{}, err
		}
		if seen[rf.name] {
			return parallafka.RateLimit{}, fmt.Errorf("%s given twice in %q", rf.name, spec)
		}
		seen[rf.name] = true
		*rf.field(&l) = v
	}
	return l, nil
}

// parseRateField parses one name=N of a -rate-limit spec.
func parseRateField(f string) (rateField, float64, error) {
	name, num, ok := strings.Cut(f, "=")
	i := slices.IndexFunc(rateFields, func(rf rateField) bool { return rf.name == strings.TrimSpace(name) })
	if !ok || i < 0 {
		return rateField{}, 0, fmt.Errorf("want records=N, bytes=N or per-key=N, got %q", f)
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if err != nil || !(v > 0) || math.IsInf(v, 0) {
		return rateField{}, 0, fmt.Errorf("%s: want a positive number, got %q", rateFields[i].name, num)
	}
	return rateFields[i], v, nil
}

// rateLimitString writes l as a -rate-limit spec ("" for no limit).
func rateLimitString(l parallafka.RateLimit) string {
	var parts []string
	for _, rf := range rateFields {
		if v := *rf.field(&l); v > 0 {
			parts = append(parts, fmt.Sprintf("%s=%g", rf.name, v))
		}
	}
	return strings.Join(parts, ",")
}

// isTerminal reports whether f is a character device (a terminal).
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// clientName is the Kafka client the runs use: the -client flag for the
// broker sources, "" for the in-memory one.
func (c *config) clientName() string {
	if c.source == "mem" {
		return ""
	}
	return c.client
}
