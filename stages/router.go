package stages

import (
	"context"

	"github.com/parallafka/parallafka/pipeline"
)

// Ordering says which messages the router keeps in FIFO order.
type Ordering int

const (
	// OrderByKey keeps messages that share a key (within their partition) in
	// offset order: at most one of them is in a handler at a time.
	OrderByKey Ordering = iota
	// OrderByPartition keeps each partition in offset order, as a plain
	// consumer would, while partitions run in parallel.
	OrderByPartition
	// Unordered hands every message to the next free handler.
	Unordered
)

// Router is the key-router stage. It dispatches a message to the handler
// pool when no earlier message with the same key is in flight, and queues it
// behind that message otherwise. The ack collector hands every message back
// (the key-released edge): a finished one releases its key, so the next
// queued message with that key is dispatched; one marked for retry is
// dispatched again, keeping its key. Of the dispatchable messages, the one
// polled first goes first (see oldestFirst).
//
// When a partition is revoked or the pipeline drains, the router drops the
// messages that no handler took yet, except gap fillers: those below the
// highest offset of their partition already handed to a handler. Handling
// them lets the final commit reach past everything that was handled, so that
// the next owner (or the next run) redoes nothing. A key whose message was
// abandoned (it failed and the pipeline stops, or a retry was cut short)
// drops everything queued behind it: none of it may run before Kafka
// delivers the abandoned message again.
//
// The router never blocks on one channel alone: it always accepts released
// keys while it waits to dispatch, which is what keeps the loop
// router → pool → collector → router free of deadlock. Its queues are
// bounded by the pipeline's in-flight limit.
type Router[K, V any] struct {
	*Env[K, V]
	Ordering Ordering
	// OrderNilKeys puts messages without a key in one FIFO per partition;
	// by default they carry no order (Kafka spreads them anyway).
	OrderNilKeys bool

	// Released carries every message back from the ack collector.
	Released chan *pipeline.Message[K, V]
	purges   chan []*pipeline.Claim
	done     chan struct{}

	busy        map[*pipeline.Claim]map[string][]*pipeline.Message[K, V] // key → queued behind the in-flight one
	ready       oldestFirst[K, V]                                        // dispatchable
	outstanding int                                                      // dispatched, not yet released
	flagged     *pipeline.Message[K, V]                                  // the last one given SetKeyWaiting
	queuedSince bool                                                     // a message was queued since
}

// NewRouter returns a router; Run starts it.
func NewRouter[K, V any](env *Env[K, V], ordering Ordering, orderNilKeys bool) *Router[K, V] {
	return &Router[K, V]{
		Env: env, Ordering: ordering, OrderNilKeys: orderNilKeys,
		Released: make(chan *pipeline.Message[K, V], 64),
		purges:   make(chan []*pipeline.Claim, 16),
		done:     make(chan struct{}),
		busy:     make(map[*pipeline.Claim]map[string][]*pipeline.Message[K, V]),
	}
}

// Purge asks the router to drop the queued messages of stopped claims. It
// does not wait for the router; it is a no-op once the router returned.
func (r *Router[K, V]) Purge(claims []*pipeline.Claim) {
	select {
	case r.purges <- claims:
	case <-r.done:
	}
}

// Run routes messages from in to out until in is closed, everything routed
// was dispatched and every dispatched message came back, or until ctx is
// done. Once the pipeline drains, queued and retried messages are abandoned
// uncommitted.
func (r *Router[K, V]) Run(ctx context.Context, in <-chan *pipeline.Message[K, V], out chan<- *pipeline.Message[K, V]) error {
	defer close(r.done)
	draining := r.Draining
	// A message waiting in ready (a key's next one, or a retry) keeps the
	// loop going too: closing in without a drain must not swallow it. Every
	// queued message waits behind one that is ready or outstanding.
	fast := 0 // steps taken by tryStep since the last blocking select
	for in != nil || r.outstanding > 0 || r.ready.Len() > 0 {
		if draining != nil && r.draining() {
			r.dropUnwanted()
			draining = nil // once; later arrivals are abandoned one by one
		}
		var dispatch chan<- *pipeline.Message[K, V]
		var next *pipeline.Message[K, V]
		if r.ready.Len() > 0 {
			dispatch, next = out, r.ready.Front()
			if next != r.flagged || r.queuedSince {
				// Before it leaves; again only if it or the queues changed.
				pipeline.SetKeyWaiting(next, r.keyWaiting(next))
				r.flagged, r.queuedSince = next, false
			}
		}
		if fast < fastSteps && r.tryStep(&in, dispatch, next) {
			fast++
			continue
		}
		fast = 0
		select {
		case msg, ok := <-in:
			if !ok {
				in = nil
				continue
			}
			r.route(msg)
		case msg := <-r.Released:
			r.outstanding--
			r.release(msg)
		case dispatch <- next:
			r.dispatched(next)
		case claims := <-r.purges:
			r.purge(claims)
		case <-draining:
		case <-ctx.Done():
			return nil
		}
	}
	r.abandonBacklog()
	return nil
}

// fastSteps bounds the steps tryStep takes in a row: then one blocking
// select, which picks among everything ready (purges and ctx too), so that
// none of them waits for long under load.
const fastSteps = 32

// tryStep makes one step without blocking, one channel at a time: it
// takes back a released message, routes an arrival or hands next to a
// waiting handler. A blocking select locks every channel it names, ctx's
// done channel (shared by every stage) included; a non-blocking operation
// on one channel locks only that one, and none when it has nothing to do.
// It reports whether it made progress.
func (r *Router[K, V]) tryStep(in *<-chan *pipeline.Message[K, V], dispatch chan<- *pipeline.Message[K, V], next *pipeline.Message[K, V]) bool {
	if r.draining() {
		return false // the blocking select below sees it
	}
	select {
	case msg := <-r.Released:
		r.outstanding--
		r.release(msg)
		return true
	default:
	}
	if dispatch != nil {
		select {
		case dispatch <- next:
			r.dispatched(next)
			return true
		default:
		}
	}
	if *in != nil {
		select {
		case msg, ok := <-*in:
			if !ok {
				*in = nil
			} else {
				r.route(msg)
			}
			return true
		default:
		}
	}
	return false
}

// dispatched records that next, the oldest ready message, went out.
func (r *Router[K, V]) dispatched(next *pipeline.Message[K, V]) {
	pipeline.Dispatched(next)
	r.ready.PopFront()
	r.outstanding++
}

// keyWaiting reports whether a message is queued behind msg's key.
func (r *Router[K, V]) keyWaiting(msg *pipeline.Message[K, V]) bool {
	key, ordered := r.routingKey(msg)
	return ordered && len(r.busy[msg.Claim()][key]) > 0
}

// route dispatches a new message or queues it behind its key.
func (r *Router[K, V]) route(msg *pipeline.Message[K, V]) {
	if r.draining() || msg.Claim().Stopping() {
		pipeline.Abandon(msg)
		return
	}
	key, ordered := r.routingKey(msg)
	if !ordered {
		r.push(msg)
		return
	}
	keys := r.busy[msg.Claim()]
	if keys == nil {
		keys = make(map[string][]*pipeline.Message[K, V])
		r.busy[msg.Claim()] = keys
	}
	if queue, busy := keys[key]; busy {
		keys[key] = append(queue, msg)
		r.queuedSince = true
		r.Counters.Queued.Add(1)
		return
	}
	keys[key] = nil // busy, nothing queued
	r.push(msg)
}

func (r *Router[K, V]) routingKey(msg *pipeline.Message[K, V]) (key string, ordered bool) {
	switch {
	case r.Ordering == Unordered:
		return "", false
	case r.Ordering == OrderByPartition:
		return "", true
	case msg.RawKey == nil:
		// One queue per partition for keyless messages. A real key of
		// these very bytes would share it: harmless, only extra order.
		return "\x00nil", r.OrderNilKeys
	default:
		return string(msg.RawKey), true
	}
}

// wants reports whether msg, not yet dispatched, may still be: while the
// pipeline drains or its partition is revoked, only a gap filler may.
func (r *Router[K, V]) wants(msg *pipeline.Message[K, V]) bool {
	c := msg.Claim()
	return c.Wants(msg.Offset) && (!r.draining() || c.Below(msg.Offset))
}

// push makes msg, which holds its key, dispatchable (oldest first), unless
// the router no longer wants it: then it and its key's queue are abandoned.
func (r *Router[K, V]) push(msg *pipeline.Message[K, V]) {
	if !r.wants(msg) || !pipeline.Start(msg) {
		pipeline.Abandon(msg)
		r.abandonKey(msg)
		return
	}
	r.ready.Push(msg)
}

// release handles a message handed back by the collector: a retry goes out
// again with its key still held; an abandoned message takes its key's queue
// with it; a finished one frees its key.
func (r *Router[K, V]) release(msg *pipeline.Message[K, V]) {
	if msg.Abandoned() {
		r.abandonKey(msg)
		return
	}
	if msg.RetryRequested() {
		if r.draining() || msg.Claim().Stopping() {
			pipeline.Abandon(msg) // never skipped: it will be redelivered
			r.abandonKey(msg)
			return
		}
		msg.ResetFate()
		r.Counters.Retried.Add(1)
		r.ready.Push(msg) // still started, its key still held
		return
	}
	r.releaseKey(msg)
}

// releaseKey frees msg's key and makes the next message queued behind it
// dispatchable; that one is usually older than the others (see
// oldestFirst), so a busy key goes on at once.
func (r *Router[K, V]) releaseKey(msg *pipeline.Message[K, V]) {
	key, ordered := r.routingKey(msg)
	if !ordered {
		return
	}
	keys := r.busy[msg.Claim()]
	queue, busy := keys[key]
	if !busy {
		return // purged meanwhile
	}
	if len(queue) == 0 {
		delete(keys, key)
		if len(keys) == 0 {
			delete(r.busy, msg.Claim())
		}
		return
	}
	next := queue[0]
	queue[0] = nil
	keys[key] = queue[1:]
	r.Counters.Queued.Add(-1)
	r.push(next)
}

// abandonKey drops the messages queued behind msg's key, which msg held,
// and frees the key.
func (r *Router[K, V]) abandonKey(msg *pipeline.Message[K, V]) {
	key, ordered := r.routingKey(msg)
	if !ordered {
		return
	}
	keys := r.busy[msg.Claim()]
	queue, busy := keys[key]
	if !busy {
		return
	}
	r.abandon(queue)
	delete(keys, key)
	if len(keys) == 0 {
		delete(r.busy, msg.Claim())
	}
}

// purge drops what stopped claims no longer want (everything but the gap
// fillers, see wants). The claims are stopped already, so wants tells.
func (r *Router[K, V]) purge([]*pipeline.Claim) { r.dropUnwanted() }

// dropUnwanted abandons every message not yet dispatched that the router no
// longer wants (see wants): dispatchable ones with their keys' queues, and
// the unwanted tail of every key's queue (queues are in offset order, and a
// gap filler lies below an offset).
func (r *Router[K, V]) dropUnwanted() {
	r.ready.Filter(func(msg *pipeline.Message[K, V]) bool {
		if r.wants(msg) {
			return true
		}
		pipeline.Abandon(msg)
		r.abandonKey(msg) // drops from the key queues, not from ready
		return false
	})
	for _, keys := range r.busy {
		for key, queue := range keys {
			n := len(queue)
			for n > 0 && !r.wants(queue[n-1]) {
				n--
			}
			r.abandon(queue[n:])
			clear(queue[n:])
			keys[key] = queue[:n]
		}
	}
}

// abandonBacklog drops everything not yet dispatched.
func (r *Router[K, V]) abandonBacklog() {
	for c, keys := range r.busy {
		for _, queue := range keys {
			r.abandon(queue)
		}
		delete(r.busy, c)
	}
	r.ready.Filter(func(msg *pipeline.Message[K, V]) bool {
		pipeline.Abandon(msg)
		return false
	})
}

func (r *Router[K, V]) abandon(queue []*pipeline.Message[K, V]) {
	for _, msg := range queue {
		pipeline.Abandon(msg)
	}
	r.Counters.Queued.Add(-int64(len(queue)))
}
