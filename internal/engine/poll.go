package engine

import (
	"context"
	"log/slog"
	"maps"
	"math"
	"slices"
	"time"

	"github.com/parallafka/parallafka/internal/msginfo"
	"github.com/parallafka/parallafka/pipeline"
)

// poller is the poll stage: the only goroutine that calls the source's
// Poll, Pause and Resume, and so the goroutine on which the source delivers
// rebalance notifications (it is the pipeline's RebalanceListener).
//
// Each poll cycle's messages go to the coordinator in one batch. It holds
// a credit of in-flight slots, spent by polled messages and refilled by the
// coordinator's room edge as messages finish, and applies back-pressure:
// once the credit is spent it first waits up to pauseAfter for room without
// polling (the consumer's prefetched messages stay ready, and a short gap
// between polls is harmless to group membership). If there is still none
// then, it pauses every assigned partition and keeps polling, so that the
// consumer stays in its group however long handlers take, and rebalances
// are served; it resumes them once a quarter of the window is free again.
// (Pausing is a last resort: librdkafka drops what it prefetched for a
// paused partition and fetches it again after Resume.)
//
// It also pauses the partitions the coordinator's steering edge names
// (see steer.go): those with more ready work than the handlers need, and,
// while a hot key's chain is short of polled messages, every partition but
// the chain's and those below their share of the window. On a skewed
// workload the hot key's next messages are then polled while its chain
// runs, instead of cold work from every partition filling the window.
type poller[K, V any] struct {
	pollerEdges[K, V]
	source        pipeline.Source[K, V]
	batcher       pipeline.BatchSource[K, V] // the source's PollBatch; nil: it has Poll only
	log           *slog.Logger
	stats         *Stats
	maxInFlight   int
	quickWindow   int           // the window while the handlers are quick (key order only); 0: maxInFlight always
	maxBytes      int64         // bounds the bytes in flight; 0: no bound
	pollTimeout   time.Duration // bounds one Poll, and so how long a stop waits to be noticed
	pauseAfter    time.Duration
	revokeTimeout time.Duration

	credit   int   // in-flight messages the poller may still poll, of maxInFlight
	window   int   // the in-flight limit in force: maxInFlight, or less while the handlers are quick
	bytes    int64 // and bytes: a message is polled while both are positive
	assigned map[pipeline.TopicPartition]bool
	paused   bool                             // by back-pressure
	steered  map[pipeline.TopicPartition]bool // partitions the coordinator's steering pauses
	// over holds the partitions with their share of the window or more,
	// paused while one of the low ones (below a quarter of their share)
	// has messages left to read (hungry): see steer.go.
	over, low  map[pipeline.TopicPartition]bool
	hungry     bool
	starving   bool                              // a key chain is short: the coordinator pauses all but its partitions (logged at Debug)
	watermarks pipeline.WatermarkSource          // nil: the source does not know them, and no partition is hungry
	next       map[pipeline.TopicPartition]int64 // the offset after the last one polled
	// sourcePaused is what the source was told: reconcile brings it to
	// what paused, holding and steered ask for.
	sourcePaused map[pipeline.TopicPartition]bool
	pauseDirty   bool                        // paused, holding, steered or the assignment changed since the last reconcile
	holding      bool                        // by the user (Parallafka.Pause) or while the source's membership is in doubt: dispatching stops too
	inDoubt      bool                        // the source cannot tell whether the group still assigns it its partitions
	membership   pipeline.ConnectivitySource // nil: the source does not know
	obs          observer
	userPaused   bool                      // the user's last wish, from the userPause edge
	batch        []*pipeline.Message[K, V] // this poll cycle's messages
	sizes        []int32                   // and their sizes
	scratch      []*pipeline.Message[K, V] // PollBatch's slice, reused
	held         []*pipeline.Message[K, V] // polled without credit (a consumer's prefetch), in poll order
}

// pollerEdges are the poller's channels.
type pollerEdges[K, V any] struct {
	polled     chan<- pollCycle[K, V]  // to the coordinator
	spent      <-chan pollCycle[K, V]  // from the coordinator: tracked cycles, their slices empty, for reuse
	room       <-chan room             // from the coordinator: slots and bytes freed
	steer      <-chan steering         // from the coordinator: partitions to pause
	rebalances chan<- rebalanceRequest // to the coordinator
	commits    chan<- commitRequest    // to the committer: a revoke's final offsets
	userPause  <-chan bool             // from Parallafka.Pause and Resume: the user's latest wish; nil: none
	// coordDone is closed when the coordinator returned: the final offsets
	// are handed over, so a rebalance from then on (the source's Close
	// delivers one) has nothing to wait for or to commit.
	coordDone  <-chan struct{}
	commitDone <-chan struct{} // closed when the committer returned
	draining   <-chan struct{}
}

// maxBatch bounds one poll cycle: enough to spread a hand-off's cost over
// many messages, few enough that the coordinator starts on them promptly.
const maxBatch = 256

var _ pipeline.RebalanceListener = (*poller[int, int])(nil)

// run polls until the pipeline drains or ctx is done. A Poll error is
// returned: the pipeline stops.
func (p *poller[K, V]) run(ctx context.Context) error {
	defer close(p.polled)
	p.credit, p.bytes, p.window = p.maxInFlight, p.maxBytes, p.maxInFlight
	p.watermarks, _ = p.source.(pipeline.WatermarkSource)
	p.membership, _ = p.source.(pipeline.ConnectivitySource)
	p.batcher, _ = p.source.(pipeline.BatchSource[K, V])
	if p.maxBytes <= 0 {
		p.bytes = math.MaxInt64
	}
	for !p.stopping(ctx) {
		p.takeRoom()
		if !p.hasCredit() && !p.paused && p.awaitRoom(ctx) {
			continue
		}
		if err := p.applyUserPause(); err != nil {
			return err
		}
		p.checkHungry()
		if err := p.applyBackPressure(); err != nil {
			return err
		}
		p.takeHeld()
		timeout := p.pollTimeout
		if p.paused || p.holding || len(p.steered) > 0 || p.hungry || len(p.batch) > 0 {
			// Notice freed room and steering promptly: batch handlers can
			// drain the window within one poll timeout while partitions
			// are paused.
			timeout = min(timeout, 10*time.Millisecond)
		}
		if err := p.pollCycle(timeout); err != nil {
			return err
		}
		if !p.flush() {
			return nil
		}
	}
	return nil
}

func (p *poller[K, V]) stopping(ctx context.Context) bool {
	select {
	case <-p.draining:
		return true
	case <-ctx.Done():
		return true
	default:
		return false
	}
}

// pollCycle polls once with timeout, then takes whatever else the source
// has ready, while there is credit.
func (p *poller[K, V]) pollCycle(timeout time.Duration) error {
	if p.batcher != nil && len(p.held) == 0 && p.hasCredit() && len(p.batch) < maxBatch {
		return p.pollBatch(timeout)
	}
	for len(p.batch) < maxBatch {
		msg, err := p.source.Poll(timeout)
		if err != nil || msg == nil {
			return err
		}
		if p.take(msg) {
			return nil
		}
		timeout = 0
	}
	return nil
}

// pollBatch is pollCycle over a BatchSource: it asks for what the message
// and byte credit allow and one more, as many as pollCycle would poll;
// what the credit does not cover is held, as pollCycle holds it.
func (p *poller[K, V]) pollBatch(timeout time.Duration) error {
	// Into a slice of its own: a rebalance delivered from inside PollBatch
	// filters p.batch.
	var budget int64 // the byte credit left; 0: no byte window
	if p.maxBytes > 0 {
		budget = p.bytes
	}
	polled, err := p.batcher.PollBatch(timeout, p.scratch[:0], min(maxBatch-len(p.batch), p.slack()+1), budget)
	defer func() { clear(polled); p.scratch = polled[:0] }()
	if err != nil {
		return err
	}
	for _, msg := range polled {
		p.take(msg)
	}
	return nil
}

// take notes msg as polled and spends credit on it, or holds it when the
// credit is spent. It reports whether msg was held. A message goes behind
// the held ones even if room freed meanwhile: sent first, it would
// overtake earlier offsets of its partition.
func (p *poller[K, V]) take(msg *pipeline.Message[K, V]) (held bool) {
	p.setNext(msg.TopicPartition(), msg.Offset+1)
	if p.hasCredit() && len(p.held) == 0 {
		p.spend(msg)
		return false
	}
	p.held = append(p.held, msg)
	return true
}

// flush hands the cycle's messages to the coordinator. It reports false
// when the coordinator returned first.
func (p *poller[K, V]) flush() bool {
	if len(p.batch) == 0 {
		return true
	}
	batch := p.batch
	cycle := pollCycle[K, V]{msgs: batch, sizes: p.sizes}
	select {
	case reuse := <-p.spent:
		p.batch, p.sizes = reuse.msgs, reuse.sizes
	default:
		size := min(maxBatch, max(p.credit, 16))
		p.batch, p.sizes = make([]*pipeline.Message[K, V], 0, size), make([]int32, 0, size)
	}
	p.stats.Polled.Add(int64(len(batch)))
	if p.obs.on() {
		for _, msg := range batch {
			p.obs.polled(msginfo.Of(msg))
		}
	}
	select {
	case p.polled <- cycle:
		return true
	case <-p.coordDone:
		return false
	}
}

// takeRoom adds the slots the coordinator freed since the last look, and
// takes its latest set of partitions to pause.
func (p *poller[K, V]) takeRoom() {
	select {
	case r := <-p.room:
		p.credit += r.msgs
		p.bytes += r.bytes
	default:
	}
	select {
	case s := <-p.steer:
		p.steered, p.over, p.low = setOf(s.pause), setOf(s.over), setOf(s.low)
		p.pauseDirty = true
		p.window = p.maxInFlight
		if s.quick && p.quickWindow > 0 {
			p.window = p.quickWindow
		}
		if s.starving != p.starving {
			p.starving = s.starving
			p.log.Debug("parallafka: poll steering", "reading_only_key_chains", s.starving, "paused", s.pause)
		}
	default:
	}
}

func setOf(tps []pipeline.TopicPartition) map[pipeline.TopicPartition]bool {
	set := make(map[pipeline.TopicPartition]bool, len(tps))
	for _, tp := range tps {
		set[tp] = true
	}
	return set
}

// checkHungry decides whether a low partition has messages left to read,
// by the source's watermarks: the partitions over their share then pause,
// so that librdkafka's queue, which may hold thousands of their prefetched
// messages ahead of the low one's, does not keep the low one unread.
func (p *poller[K, V]) checkHungry() {
	hungry := false
	if p.watermarks != nil && len(p.over) > 0 {
		for tp := range p.low {
			if p.hasMore(tp) {
				hungry = true
				break
			}
		}
	}
	if hungry != p.hungry {
		p.hungry, p.pauseDirty = hungry, true
	}

}

func (p *poller[K, V]) setNext(tp pipeline.TopicPartition, next int64) {
	if p.next == nil {
		p.next = make(map[pipeline.TopicPartition]int64)
	}
	p.next[tp] = next
}

// hasMore reports whether tp has messages past the last one polled, as
// far as the source heard.
func (p *poller[K, V]) hasMore(tp pipeline.TopicPartition) bool {
	low, high, ok := p.watermarks.Watermarks(tp)
	if !ok {
		return p.assigned[tp] // not fetched yet: it may have
	}
	next, polled := p.next[tp]
	if !polled {
		next = low
	}
	return high > next
}

// hasCredit reports whether the poller may take another message: the
// window has a free slot and bytes left (the last message may take it past
// its byte bound: a message larger than the bound still gets through).
func (p *poller[K, V]) hasCredit() bool { return p.slack() > 0 && p.bytes > 0 }

// slack is how many more messages the poller may take: its credit, less
// what the window is short of the in-flight limit while the handlers are
// quick.
func (p *poller[K, V]) slack() int { return p.credit - (p.maxInFlight - p.window) }

// In key order, while the handlers are quick (a no-op, an in-memory
// update) and no key chain is critical (steer.go: a hot key needs the
// whole window to run back to back), the window is kept to
// quickWindowPerHandler messages per handler, at least minQuickWindow:
// the handlers drain any backlog at once, so a larger window only
// lengthens the keys' queues and the ready set the coordinator orders by
// backlog, and keeps more messages cold in memory: the CPU per message of a
// no-op pipeline grows with the window. Not much smaller: a window of about
// a thousand made the poller on a real broker wait for room while
// librdkafka held prefetched messages (bench/README.md, "The window for
// quick handlers"). Partition order and unordered gain nothing
// from it (partition order loses: more poller round trips for the same
// few queues). Slow handlers, for which steering needs the whole window,
// get it back after a run of slow calls.
const (
	quickWindowPerHandler = 256
	minQuickWindow        = 4096
)

// spend adds msg to the cycle's batch, paying for it.
func (p *poller[K, V]) spend(msg *pipeline.Message[K, V]) {
	size := messageBytes(msg)
	p.batch, p.sizes = append(p.batch, msg), append(p.sizes, size)
	p.credit--
	p.bytes -= int64(size)
}

// messageBytes is what a message counts in the byte window (msginfo.Size).
func messageBytes[K, V any](msg *pipeline.Message[K, V]) int32 {
	return int32(min(msginfo.Size(msg), math.MaxInt32))
}

// awaitRoom waits up to pauseAfter for a free slot. It reports whether one
// freed.
func (p *poller[K, V]) awaitRoom(ctx context.Context) bool {
	timer := time.NewTimer(p.pauseAfter)
	defer timer.Stop()
	for !p.hasCredit() {
		select {
		case r := <-p.room:
			p.credit += r.msgs
			p.bytes += r.bytes
		case <-timer.C:
			return false
		case <-p.draining:
			return false
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// takeHeld moves held messages into the cycle's batch while there is credit.
func (p *poller[K, V]) takeHeld() {
	n := 0
	for n < len(p.held) && p.hasCredit() && len(p.batch) < maxBatch {
		p.spend(p.held[n])
		n++
	}
	if n > 0 {
		clear(p.held[:n])
		p.held = p.held[n:]
	}
}

func (p *poller[K, V]) heldBytes() int64 {
	var n int64
	for _, msg := range p.held {
		n += int64(messageBytes(msg))
	}
	return n
}

func (p *poller[K, V]) applyBackPressure() error {
	switch {
	case !p.paused && !p.hasCredit():
		p.paused, p.pauseDirty = true, true
		p.stats.Pauses.Add(1)
	case p.paused && p.slack()-len(p.held) >= p.window/4 && p.bytes-p.heldBytes() >= p.maxBytes/4:
		p.paused, p.pauseDirty = false, true
	}
	return p.reconcile()
}

// applyUserPause carries out Parallafka.Pause and Resume: fetching stops
// (or goes on) for every assigned partition, and so does dispatching,
// while polling goes on, so that the member stays in its group. It holds
// the same way while the source's membership is in doubt (a member the
// broker fenced while it was cut off must not start handlers on
// partitions the group may have given to another member).
func (p *poller[K, V]) applyUserPause() error {
	select {
	case p.userPaused = <-p.userPause:
	default:
	}
	user := p.userPaused
	p.stats.UserPaused.Store(user)
	if doubt := p.membership != nil && p.membership.MembershipInDoubt(); doubt != p.inDoubt {
		p.inDoubt = doubt
		if doubt {
			p.log.Warn("parallafka: no handler starts until the group coordinator confirms this member's assignment: the brokers were unreachable, and the group may have given the partitions to another member meanwhile")
		} else {
			p.log.Info("parallafka: the group coordinator confirmed this member's assignment; handlers start again")
		}
	}
	want := user || p.inDoubt
	if want == p.holding {
		return nil
	}
	p.holding, p.pauseDirty = want, true
	kind := rebalanceHold
	if !want {
		kind = rebalanceUnhold
	}
	p.request(rebalanceRequest{kind: kind})
	return p.reconcile()
}

// reconcile pauses and resumes partitions so that the source's state is
// what back-pressure, the user and the coordinator's steering ask for.
func (p *poller[K, V]) reconcile() error {
	if !p.pauseDirty {
		return nil
	}
	p.pauseDirty = false
	if p.sourcePaused == nil {
		p.sourcePaused = make(map[pipeline.TopicPartition]bool)
	}
	var pause, resume, paused []pipeline.TopicPartition
	for tp := range p.assigned {
		want := p.paused || p.holding || p.steered[tp] || p.hungry && p.over[tp]
		if want {
			paused = append(paused, tp)
		}
		if want != p.sourcePaused[tp] {
			if want {
				pause = append(pause, tp)
			} else {
				resume = append(resume, tp)
			}
		}
	}
	p.stats.setPaused(paused)
	if len(pause) > 0 {
		if err := p.source.Pause(pause); err != nil {
			return err
		}
		for _, tp := range pause {
			p.sourcePaused[tp] = true
		}
		p.obs.partitions("PartitionsPaused", pause)
	}
	if len(resume) > 0 {
		if err := p.source.Resume(resume); err != nil {
			return err
		}
		for _, tp := range resume {
			p.sourcePaused[tp] = false
		}
		p.obs.partitions("PartitionsResumed", resume)
	}
	return nil
}

func (p *poller[K, V]) partitions() []pipeline.TopicPartition {
	return slices.Collect(maps.Keys(p.assigned))
}
