package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/parallafka/parallafka/internal/kafkaclient"
)

// ErrUnsafeConfig is wrapped by the errors of NewConsumer and NewSource that
// refuse a consumer setting which would break the pipeline's guarantees
// (at-least-once, commits only of finished messages, synchronous revoke),
// and by NewDeadLetterWriter's for a producer setting that would lose
// dead letters. It is the same value as franz.ErrUnsafeConfig.
var ErrUnsafeConfig = kafkaclient.ErrUnsafeConfig

// Consumer settings that NewConsumer checks or fills in.
const (
	keyAutoCommit       = "enable.auto.commit"
	keyAutoOffsetStore  = "enable.auto.offset.store"
	keyEventsChannel    = "go.events.channel.enable"
	keyLogsChannel      = "go.logs.channel.enable"
	keyLogsChannelValue = "go.logs.channel"
)

// NewConsumer creates a confluent-kafka-go consumer configured for a Source,
// and is the way to build the consumer handed to NewSource.
//
// confluent-kafka-go offers no way to read back the configuration of an
// existing consumer, so the Source cannot check a consumer it is given. The
// settings are checked here instead, on a copy of cfg (cfg itself is never
// modified):
//
//   - enable.auto.commit must be false: the pipeline commits each partition's
//     offset itself once every message before it finished. Left unset, it is
//     set to false; true is refused.
//   - enable.auto.offset.store must be false: librdkafka would otherwise store
//     the offset of every message as Poll returns it, ready for any offset-less
//     commit. Left unset, it is set to false; true is refused.
//   - go.events.channel.enable must be false: the channel consumer runs the
//     rebalance callback on a goroutine of its own and disables Poll.
//     Refused if true.
//   - go.logs.channel.enable: left unset, NewConsumer enables it and forwards
//     librdkafka's logs to the slog logger given by WithLogger (syslog levels
//     0-3 as Error, 4 Warn, 5-6 Info, 7 Debug) until the consumer is closed.
//     Set it (either way) to keep librdkafka's own logging or to read
//     Consumer.Logs yourself.
//
// Left unset, four fetch settings are filled in, for throughput with a
// bounded client buffer and every partition read from the start (measured
// in bench/README.md, "Client settings"):
//
//   - fetch.queue.backoff.ms=0 (librdkafka: 1000): librdkafka otherwise
//     pauses a partition's fetching for up to a second whenever its queue
//     is over a threshold below; the pipeline drains the queue at once, so
//     the pause only idles. On a topic of small producer batches this alone
//     took the pipeline from 148k to 443k msg/s on one Apache Kafka broker.
//   - queued.min.messages=1000000 (librdkafka: 100000): the per-partition
//     count librdkafka fetches ahead to; the byte cap below is what binds.
//   - queued.max.messages.kbytes=32768 (librdkafka: 65536): the client's
//     prefetch buffer, in KiB, for all partitions together. It comes on
//     top of the pipeline's in-flight bytes (parallafka.WithMaxInFlightBytes):
//     the process holds at most about both. Lower it to save memory at
//     some throughput; a larger one bought none in the measurements.
//   - max.partition.fetch.bytes=262144 (librdkafka: 1048576): how much of
//     each partition one fetch response holds. librdkafka queues a response
//     a partition after another, so with 1 MiB a backlog of small records
//     puts thousands of each other partition's messages ahead of a
//     partition's first ones: the in-flight window fills before a hot
//     key's partition is read at all (on the embedded broker, workload 2
//     of bench/ lost 5-7 % of its efficiency in 5 runs of 19). The
//     limit is soft: a record batch larger than it still comes whole. It
//     bounds what one fetch round trip brings of a partition: a single
//     partition over a slow link may want more.
//
// Everything else (bootstrap.servers, group.id, partition.assignment.strategy,
// auto.offset.reset, session and poll timeouts, security) is the caller's.
// Rebalancing needs no setting: Source.Subscribe installs a rebalance callback,
// which confluent-kafka-go runs inside Poll and Close whatever
// go.application.rebalance.enable says.
//
// Of the options, NewConsumer uses only WithLogger. NewSource accepts only
// consumers made here, unless given WithUncheckedConsumer.
func NewConsumer(cfg *ckafka.ConfigMap, opts ...Option) (*ckafka.Consumer, error) {
	c, o, forwardLogs, err := newClient("NewConsumer", cfg, opts, safeConfig, ckafka.NewConsumer)
	if err != nil {
		return nil, err
	}
	// The timeouts are the caller's: the checks change none of them.
	info := &consumerInfo{checked: true, loggerSet: o.loggerSet, timeouts: readTimeouts(*cfg)}
	info.logger.Store(o.logger)
	if forwardLogs {
		info.logsDone = make(chan struct{})
		go forwardLogEvents(c.Logs(), &info.logger, info.logsDone)
	}
	register(c, info)
	return c, nil
}

// newClient is the start NewConsumer and NewDeadLetterWriter share: the
// options, a checked copy of cfg (safe), and the librdkafka client made
// with it (open); forwardLogs tells whether librdkafka's logs are to be
// forwarded to the options' logger.
func newClient[C any](name string, cfg *ckafka.ConfigMap, opts []Option,
	safe func(ckafka.ConfigMap) (ckafka.ConfigMap, bool, error),
	open func(*ckafka.ConfigMap) (C, error)) (c C, o options, forwardLogs bool, err error) {
	if cfg == nil {
		return c, o, false, fmt.Errorf("kafka: %s: nil ConfigMap", name)
	}
	o = applyOptions(opts)
	conf, forwardLogs, err := safe(*cfg)
	if err != nil {
		return c, o, false, err
	}
	if c, err = open(&conf); err != nil {
		return c, o, false, fmt.Errorf("kafka: %s: %w", name, err)
	}
	return c, o, forwardLogs, nil
}

// checkedConfig returns a copy of cfg that check may change or refuse,
// with librdkafka's logs on a channel (go.logs.channel.enable) unless the
// caller set that either way, and whether they are: the client then
// forwards them to the WithLogger logger.
func checkedConfig(cfg ckafka.ConfigMap, check func(ckafka.ConfigMap) error) (ckafka.ConfigMap, bool, error) {
	conf := make(ckafka.ConfigMap, len(cfg)+5)
	for k, v := range cfg {
		conf[k] = v
	}
	if err := check(conf); err != nil {
		return nil, false, err
	}
	forwardLogs := false
	if _, set := conf[keyLogsChannel]; !set {
		if _, set := conf[keyLogsChannelValue]; !set {
			conf[keyLogsChannel] = true
			forwardLogs = true
		}
	}
	return conf, forwardLogs, nil
}

// safeConfig returns a checked copy of cfg, and whether NewConsumer should
// forward librdkafka's logs.
func safeConfig(cfg ckafka.ConfigMap) (ckafka.ConfigMap, bool, error) {
	return checkedConfig(cfg, checkConsumerConfig)
}

// fetchDefaults are the fetch settings NewConsumer fills in when the
// caller left them unset (see NewConsumer).
var fetchDefaults = ckafka.ConfigMap{
	"fetch.queue.backoff.ms":     0,
	"queued.min.messages":        1_000_000,
	"queued.max.messages.kbytes": 32 << 10,
	"max.partition.fetch.bytes":  256 << 10,
}

// checkConsumerConfig sets or refuses the consumer settings the pipeline
// depends on, and fills in the fetch defaults.
func checkConsumerConfig(conf ckafka.ConfigMap) error {
	for k, v := range fetchDefaults {
		if _, set := conf[k]; !set {
			conf[k] = v
		}
	}
	for _, key := range []string{keyAutoCommit, keyAutoOffsetStore} {
		v, set, err := boolSetting(conf, key)
		switch {
		case err != nil:
			return err
		case set && v:
			return fmt.Errorf("%w: %s=true: the pipeline commits each partition's "+
				"offset itself, once every message before it finished; set it to false or leave it unset", ErrUnsafeConfig, key)
		case !set:
			conf[key] = false
		}
	}
	if v, _, err := boolSetting(conf, keyEventsChannel); err != nil {
		return err
	} else if v {
		return fmt.Errorf("%w: %s=true: the Source drives the consumer with Poll, "+
			"which the events channel disables", ErrUnsafeConfig, keyEventsChannel)
	}
	return nil
}

// boolSetting reads a boolean property the way librdkafka would parse it.
func boolSetting(conf ckafka.ConfigMap, key string) (value, set bool, err error) {
	v, ok := conf[key]
	if !ok {
		return false, false, nil
	}
	switch x := v.(type) {
	case bool:
		return x, true, nil
	case int:
		return x != 0, true, nil
	case string:
		b, perr := strconv.ParseBool(x)
		if perr != nil {
			return false, true, fmt.Errorf("kafka: %s=%q is not a boolean", key, x)
		}
		return b, true, nil
	default:
		return false, true, fmt.Errorf("kafka: %s has type %T, want bool", key, v)
	}
}

// forwardLogEvents copies librdkafka's log events to the logger until the
// consumer closes the channel (in Consumer.Close). The logger may change
// meanwhile (Source.InheritLogger).
func forwardLogEvents(events <-chan ckafka.LogEvent, to *atomic.Pointer[slog.Logger], done chan<- struct{}) {
	defer close(done)
	var limit kafkaclient.Repeats
	for ev := range events {
		logger := to.Load()
		// An unreachable broker repeats the same lines several times a
		// second: log each at most once a second, with a count.
		ok, repeated := limit.Allow(ev.Tag+"\x00"+ev.Message, time.Now())
		if !ok {
			continue
		}
		level := slog.LevelDebug
		switch {
		case ev.Level <= 3:
			level = slog.LevelError
		case ev.Level == 4:
			level = slog.LevelWarn
		case ev.Level <= 6:
			level = slog.LevelInfo
		}
		attrs := []slog.Attr{slog.String("client", ev.Name), slog.String("tag", ev.Tag), slog.Int("syslog_level", ev.Level)}
		if repeated > 0 {
			attrs = append(attrs, slog.Int("repeated", repeated))
		}
		logger.LogAttrs(context.Background(), level, "librdkafka: "+ev.Message, attrs...)
	}
}

// consumerInfo is what the package knows of a consumer it created or wraps.
type consumerInfo struct {
	checked  bool          // created by NewConsumer
	logsDone chan struct{} // closed when log forwarding ended; nil if none
	inUse    bool          // wrapped by a Source
	// logger receives librdkafka's logs (if logsDone is not nil). loggerSet:
	// it was given with WithLogger (to NewConsumer, or else to NewSource), so
	// Source.InheritLogger leaves it. Both are the Source's once it claimed
	// the consumer.
	logger    atomic.Pointer[slog.Logger]
	loggerSet bool
	timeouts  timeouts // zero for a consumer NewConsumer did not create
}

// timeouts are the consumer's librdkafka timeouts the Source plans with.
type timeouts struct {
	maxPollInterval time.Duration // max.poll.interval.ms
	session         time.Duration // session.timeout.ms (classic protocol)
	socket          time.Duration // socket.timeout.ms: one request's timeout
}

// librdkafka's defaults, for settings left unset.
const (
	defaultMaxPollInterval = 300 * time.Second
	defaultSessionTimeout  = 45 * time.Second
	defaultSocketTimeout   = 60 * time.Second
)

// readTimeouts reads the timeouts from a checked configuration; an unset or
// unreadable value is librdkafka's default (librdkafka itself refuses a
// malformed one when the consumer is created).
func readTimeouts(conf ckafka.ConfigMap) timeouts {
	ms := func(key string, def time.Duration) time.Duration {
		var n int64
		switch v := conf[key].(type) {
		case int:
			n = int64(v)
		case int32:
			n = int64(v)
		case int64:
			n = v
		case string:
			x, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return def
			}
			n = x
		default:
			return def
		}
		if n <= 0 {
			return def
		}
		return time.Duration(n) * time.Millisecond
	}
	return timeouts{
		maxPollInterval: ms("max.poll.interval.ms", defaultMaxPollInterval),
		session:         ms("session.timeout.ms", defaultSessionTimeout),
		socket:          ms("socket.timeout.ms", defaultSocketTimeout),
	}
}

// commitLifetime is the longest librdkafka keeps a commit going: sent and
// timed out (socket.timeout.ms), kept waiting for a coordinator
// (session.timeout.ms), sent again and timed out again. An unknown
// configuration counts as librdkafka's defaults.
func (t timeouts) commitLifetime() time.Duration {
	session, socket := t.session, t.socket
	if session == 0 {
		session = defaultSessionTimeout
	}
	if socket == 0 {
		socket = defaultSocketTimeout
	}
	return 2*socket + session
}

var (
	registryMu sync.Mutex
	registry   = map[weak.Pointer[ckafka.Consumer]]*consumerInfo{}
)

// register remembers info for c until c is garbage collected.
func register(c *ckafka.Consumer, info *consumerInfo) {
	wp := weak.Make(c)
	registryMu.Lock()
	registry[wp] = info
	registryMu.Unlock()
	runtime.AddCleanup(c, func(wp weak.Pointer[ckafka.Consumer]) {
		registryMu.Lock()
		delete(registry, wp)
		registryMu.Unlock()
	}, wp)
}

// claimConsumer marks c as used by a Source and returns what is known of it.
func claimConsumer(c *ckafka.Consumer, allowUnchecked bool) (*consumerInfo, error) {
	wp := weak.Make(c)
	registryMu.Lock()
	info, known := registry[wp]
	if known && info.inUse {
		registryMu.Unlock()
		return nil, errors.New("kafka: NewSource: the consumer is already used by another Source")
	}
	if !known && !allowUnchecked {
		registryMu.Unlock()
		return nil, fmt.Errorf("%w: the consumer was not created by kafka.NewConsumer, so its settings "+
			"cannot be checked; create it with NewConsumer, or pass WithUncheckedConsumer if it has "+
			"enable.auto.commit=false, enable.auto.offset.store=false and go.events.channel.enable=false", ErrUnsafeConfig)
	}
	if known {
		info.inUse = true
		registryMu.Unlock()
		return info, nil
	}
	registryMu.Unlock()
	info = &consumerInfo{inUse: true}
	register(c, info)
	return info, nil
}
