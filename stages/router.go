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
// dispatched again, keeping its key.
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
	ready       []*pipeline.Message[K, V]                                // dispatchable, in order
	outstanding int                                                      // dispatched, not yet released
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
	for in != nil || r.outstanding > 0 || len(r.ready) > 0 {
		if draining != nil && r.draining() {
			r.abandonBacklog()
			draining = nil // abandon once; later arrivals are abandoned one by one
		}
		var dispatch chan<- *pipeline.Message[K, V]
		var next *pipeline.Message[K, V]
		if len(r.ready) > 0 {
			dispatch, next = out, r.ready[0]
		}
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
			r.ready[0] = nil
			r.ready = r.ready[1:]
			r.outstanding++
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
		return "\x00nil", r.OrderNilKeys // cannot clash: only nil keys take this branch
	default:
		return string(msg.RawKey), true
	}
}

// push makes msg dispatchable, unless the pipeline is draining or its claim
// stopped meanwhile.
func (r *Router[K, V]) push(msg *pipeline.Message[K, V]) {
	if r.draining() || !pipeline.Start(msg) {
		pipeline.Abandon(msg)
		r.releaseKey(msg)
		return
	}
	r.ready = append(r.ready, msg)
}

// release handles a message handed back by the collector: a retry goes out
// again with its key still held; anything else frees its key.
func (r *Router[K, V]) release(msg *pipeline.Message[K, V]) {
	if msg.RetryRequested() {
		if r.draining() || msg.Claim().Stopping() {
			pipeline.Abandon(msg) // never skipped: it will be redelivered
			r.releaseKey(msg)
			return
		}
		msg.ResetFate()
		r.ready = append(r.ready, msg) // still started, its key still held
		return
	}
	r.releaseKey(msg)
}

// releaseKey frees msg's key and dispatches the next message queued behind it.
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

// purge abandons the queued messages of stopped claims.
func (r *Router[K, V]) purge(claims []*pipeline.Claim) {
	for _, c := range claims {
		for _, queue := range r.busy[c] {
			r.abandon(queue)
		}
		delete(r.busy, c)
	}
	r.ready = r.filterReady(func(msg *pipeline.Message[K, V]) bool { return !msg.Claim().Stopping() })
}

// abandonBacklog drops everything not yet dispatched: on a graceful
// shutdown only what handlers started is finished.
func (r *Router[K, V]) abandonBacklog() {
	for c, keys := range r.busy {
		for _, queue := range keys {
			r.abandon(queue)
		}
		delete(r.busy, c)
	}
	r.ready = r.filterReady(func(*pipeline.Message[K, V]) bool { return false })
}

func (r *Router[K, V]) abandon(queue []*pipeline.Message[K, V]) {
	for _, msg := range queue {
		pipeline.Abandon(msg)
	}
	r.Counters.Queued.Add(-int64(len(queue)))
}

func (r *Router[K, V]) filterReady(keep func(*pipeline.Message[K, V]) bool) []*pipeline.Message[K, V] {
	kept := r.ready[:0]
	for _, msg := range r.ready {
		if keep(msg) {
			kept = append(kept, msg)
		} else {
			pipeline.Abandon(msg)
		}
	}
	clear(r.ready[len(kept):])
	return kept
}
