package franz

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka/internal/kafkaclient"
)

// ErrUnsafeConfig is wrapped by the errors of NewClient and NewSource that
// refuse a client option which would break the pipeline's guarantees
// (at-least-once, commits only of finished messages, a revoke that drains
// and commits before the partitions are given up), and by
// NewDeadLetterWriter's for a producer option that would lose or duplicate
// dead letters. It is the same value as kafka.ErrUnsafeConfig.
var ErrUnsafeConfig = kafkaclient.ErrUnsafeConfig

// NewClient creates a franz-go client configured for a Source, and is the
// way to build the client handed to NewSource.
//
// opts are the caller's: kgo.SeedBrokers, kgo.ConsumerGroup (required), the
// balancers (kgo.Balancers: kgo's default is cooperative-sticky;
// kgo.RangeBalancer() for eager rebalancing; kgo.ServerSideBalancer() for
// the KIP-848 consumer protocol), kgo.ConsumeResetOffset, session and
// rebalance timeouts, TLS and SASL, fetch sizes (kgo's defaults were the
// fastest under the pipeline: bench/README.md, "Client settings"; kgo
// buffers at most one fetch response per broker, kgo.FetchMaxBytes each).
// NewClient adds:
//
//   - before opts, so opts may override them: a logger bridging kgo's logs
//     to the slog logger of WithLogger (kgo.WithLogger in opts replaces it),
//     and kgo.DisableClientMetrics (KIP-714 metrics push; it would delay
//     Close by up to a second with the broker gone).
//   - after opts, so nothing in opts can undo them: kgo.DisableAutoCommit
//     (the pipeline commits each partition's offset itself, once every
//     message before it finished), the rebalance callbacks
//     (kgo.OnPartitionsAssigned, kgo.OnPartitionsRevoked,
//     kgo.OnPartitionsLost: they hand each rebalance to the Source's Poll
//     and block the client until the pipeline has drained and committed),
//     and hooks that tell the Source whether a broker answers. Rebalance
//     callbacks in opts are replaced by the Source's (kgo has one of each,
//     and cannot tell whether opts set one): watch rebalances with
//     parallafka.WithRebalanceHooks or an Observer instead.
//
// It refuses, with an error wrapping ErrUnsafeConfig: a client without
// kgo.ConsumerGroup; auto-commit asked for (kgo.AutoCommitMarks,
// kgo.GreedyAutoCommit, kgo.AutoCommitInterval);
// kgo.BlockRebalanceOnPoll (the Source hands rebalances over inside Poll
// itself); and topics given to the client (kgo.ConsumeTopics,
// kgo.ConsumeRegex, kgo.ConsumePartitions): NewSource names the topics,
// and Subscribe adds them, so that the client joins the group only then.
//
// A client the caller built with kgo.NewClient is refused by NewSource:
// kgo installs the rebalance callbacks only when the client is built, so
// such a client would give partitions up without the pipeline draining and
// committing them first.
//
// Of the options, NewClient uses only WithLogger.
func NewClient(opts []kgo.Opt, options ...Option) (*kgo.Client, error) {
	o := applyOptions(options)
	b := newBinding(o)
	all := make([]kgo.Opt, 0, len(opts)+8)
	all = append(all, kgo.WithLogger(&slogLogger{to: &b.logger}), kgo.DisableClientMetrics())
	all = append(all, opts...)
	all = append(all,
		kgo.DisableAutoCommit(),
		kgo.WithHooks(b),
		kgo.OnPartitionsAssigned(b.onAssigned),
		kgo.OnPartitionsRevoked(b.onRevoked),
		kgo.OnPartitionsLost(b.onLost),
	)
	cl, err := kgo.NewClient(all...)
	if err != nil {
		if strings.Contains(err.Error(), "autocommit") {
			// kgo refuses greedy or marked auto-commit next to ours.
			return nil, fmt.Errorf("%w: %v: the pipeline commits each partition's offset itself; leave auto-commit options out", ErrUnsafeConfig, err)
		}
		return nil, fmt.Errorf("franz: NewClient: %w", err)
	}
	if err := checkClient(cl); err != nil {
		cl.Close()
		return nil, err
	}
	b.rebalanceTimeout, _ = cl.OptValue(kgo.RebalanceTimeout).(time.Duration)
	b.client = cl
	b.group, _ = cl.OptValue(kgo.ConsumerGroup).(string)
	register(cl, b)
	return cl, nil
}

// checkClient refuses the options of a built client that NewClient cannot
// override.
func checkClient(cl *kgo.Client) error {
	refuse := func(what, why string) error {
		return fmt.Errorf("%w: %s: %s", ErrUnsafeConfig, what, why)
	}
	if g, _ := cl.OptValue(kgo.ConsumerGroup).(string); g == "" {
		return refuse("no kgo.ConsumerGroup", "the pipeline commits offsets as a member of a consumer group")
	}
	const autoCommit = "the pipeline commits each partition's offset itself, once every message before it finished; leave auto-commit options out"
	if v, _ := cl.OptValue(kgo.AutoCommitMarks).(bool); v {
		return refuse("kgo.AutoCommitMarks", autoCommit)
	}
	if v, _ := cl.OptValue(kgo.GreedyAutoCommit).(bool); v {
		return refuse("kgo.GreedyAutoCommit", autoCommit)
	}
	if d, _ := cl.OptValue(kgo.AutoCommitInterval).(time.Duration); d != defaultAutoCommitInterval {
		return refuse("kgo.AutoCommitInterval", autoCommit)
	}
	if v, _ := cl.OptValue(kgo.BlockRebalanceOnPoll).(bool); v {
		return refuse("kgo.BlockRebalanceOnPoll", "the Source hands each rebalance to the pipeline inside Poll itself")
	}
	const topics = "name the topics in NewSource: Subscribe adds them, so that the client joins the group only then"
	if ts, _ := cl.OptValue(kgo.ConsumeTopics).([]string); len(ts) > 0 {
		return refuse("kgo.ConsumeTopics", topics)
	}
	if v, _ := cl.OptValue(kgo.ConsumeRegex).(bool); v {
		return refuse("kgo.ConsumeRegex", topics)
	}
	if ps := cl.OptValue(kgo.ConsumePartitions); ps != nil && reflect.ValueOf(ps).Len() > 0 {
		return refuse("kgo.ConsumePartitions", topics)
	}
	return nil
}

// defaultAutoCommitInterval is kgo's default kgo.AutoCommitInterval: any
// other value was set by the caller.
const defaultAutoCommitInterval = 5 * time.Second

// binding is what the package knows of a client NewClient built: the
// rebalance callbacks' channel to the Source's Poll, the broker hooks' news,
// the logger. It is the Source's once NewSource claimed the client.
type binding struct {
	inUse            bool // claimed by a Source (under registryMu)
	rebalanceTimeout time.Duration

	// logger receives kgo's logs; loggerSet: given with WithLogger (to
	// NewClient), so Source.InheritLogger leaves it.
	logger    atomic.Pointer[slog.Logger]
	loggerSet bool

	// events carries each rebalance callback to Poll (or Close); the
	// callback waits for the event's done. gone is closed when no Poll or
	// Close will serve events any more: callbacks then return at once.
	events   chan *rebalanceEvent
	attached atomic.Bool
	gone     chan struct{}
	goneOnce sync.Once

	// wake cancels the PollRecords in progress, if any, so that Poll
	// serves an event at once.
	wakeMu sync.Mutex
	wake   context.CancelFunc

	// The client this binding belongs to, and its group.
	client *kgo.Client
	group  string

	// Broker news, from the hooks: the last time any broker answered a
	// request, and the last connection failure and when.
	lastOK   atomic.Int64 // unix nanoseconds
	lastFail atomic.Int64
	failErr  atomic.Pointer[error]
}

func newBinding(o options) *binding {
	b := &binding{events: make(chan *rebalanceEvent, 1), gone: make(chan struct{}), loggerSet: o.loggerSet}
	b.logger.Store(o.logger)
	return b
}

// leave makes the callbacks return at once from now on.
func (b *binding) leave() { b.goneOnce.Do(func() { close(b.gone) }) }

// OnBrokerConnect notes a failed connection (kgo.HookBrokerConnect).
func (b *binding) OnBrokerConnect(_ kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	if err != nil {
		b.failErr.Store(&err)
		b.lastFail.Store(time.Now().UnixNano())
	}
}

// OnBrokerRead notes a broker's answer, or a connection that broke while
// waiting for one (kgo.HookBrokerRead).
func (b *binding) OnBrokerRead(_ kgo.BrokerMetadata, _ int16, _ int, _, _ time.Duration, err error) {
	switch {
	case err == nil:
		b.lastOK.Store(time.Now().UnixNano())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		// a request given up on by its caller says nothing of the broker
	default:
		b.failErr.Store(&err)
		b.lastFail.Store(time.Now().UnixNano())
	}
}

var (
	_ kgo.HookBrokerConnect = (*binding)(nil)
	_ kgo.HookBrokerRead    = (*binding)(nil)
)

var (
	registryMu sync.Mutex
	registry   = map[weak.Pointer[kgo.Client]]*binding{}
)

// register remembers b for cl until cl is garbage collected.
func register(cl *kgo.Client, b *binding) {
	wp := weak.Make(cl)
	registryMu.Lock()
	registry[wp] = b
	registryMu.Unlock()
	runtime.AddCleanup(cl, func(wp weak.Pointer[kgo.Client]) {
		registryMu.Lock()
		delete(registry, wp)
		registryMu.Unlock()
	}, wp)
}

// claimClient marks cl as used by a Source and returns its binding.
func claimClient(cl *kgo.Client) (*binding, error) {
	registryMu.Lock()
	defer registryMu.Unlock()
	b, ok := registry[weak.Make(cl)]
	switch {
	case !ok:
		return nil, fmt.Errorf("%w: the client was not created by franz.NewClient: kgo installs rebalance callbacks only when a client is built, "+
			"and without the Source's a revoke gives partitions up before the pipeline drained and committed them", ErrUnsafeConfig)
	case b.inUse:
		return nil, errors.New("franz: NewSource: the client is already used by another Source")
	}
	b.inUse = true
	return b, nil
}
