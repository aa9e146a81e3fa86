package engine

import (
	"bytes"
	"cmp"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/parallafka/parallafka/internal/offsetmap"
	"github.com/parallafka/parallafka/pipeline"
)

// Held keys: a key whose message finished with Message.HoldKey (a
// dead-letter stage's HoldKey) or that the error policy held
// (pipeline.HoldKey) is held in its partition. Its later messages there go
// through the key's queue as always, one at a time and in order, but when
// their turn comes they are not handled: they are dispatched failed, with
// a *pipeline.KeyHeldError, so that the pool sends them straight into the
// AfterHandle stages (a dead-letter stage writes them after the message
// that held the key). Other keys of the partition go on; its commits go
// on. The key is released by Parallafka.ReleaseKey, or once the TTL
// (WithHeldKeyTTL) passed.
//
// The held set is each claim's (claim.heldKeys), keyed by the raw key's
// bytes: it goes with the partition into the commit's metadata next to the
// offset map (offsetmap.EncodeHeld), and the next owner, in this process
// or another, restores it from there on assignment.

// heldKey is a key held in a claim.
type heldKey struct {
	key    []byte
	offset int64     // the message whose failure held it
	since  time.Time // when
}

func (h *heldKey) info(tp pipeline.TopicPartition) pipeline.HeldKey {
	return pipeline.HeldKey{TopicPartition: tp, Key: bytes.Clone(h.key), Offset: h.offset, Since: h.since}
}

// holdKey holds msg's key in cl, at msg's offset (a key held already keeps
// its first hold).
func (c *coordinator[K, V]) holdKey(cl *claim[K, V], msg *pipeline.Message[K, V]) {
	if msg.RawKey == nil {
		c.log.Debug("parallafka: a keyless message asked for its key held: nothing held", "message", msg.String())
		return
	}
	if cl.heldKeys[string(msg.RawKey)] != nil {
		return
	}
	h := &heldKey{key: bytes.Clone(msg.RawKey), offset: msg.Offset, since: time.Now()}
	c.addHeld(cl, h)
	c.log.Warn("parallafka: key held: its later messages in the partition are not handled but go to the dead-letter stage, in order, until it is released (ReleaseKey, or the held-key TTL)",
		"partition", cl.tp, "key", string(h.key), "offset", h.offset)
}

func (c *coordinator[K, V]) addHeld(cl *claim[K, V], h *heldKey) {
	if cl.heldKeys == nil {
		cl.heldKeys = make(map[string]*heldKey)
	}
	cl.heldKeys[string(h.key)] = h
	cl.heldChanged = true
	c.heldN++
	if c.obs.holds != nil {
		c.obs.keyHeld(h.info(cl.tp))
	}
}

// unhold releases h in cl.
func (c *coordinator[K, V]) unhold(cl *claim[K, V], h *heldKey, expired bool) {
	delete(cl.heldKeys, string(h.key))
	if len(cl.heldKeys) == 0 {
		cl.heldKeys = nil
	}
	cl.heldChanged = true
	c.heldN--
	how := "released"
	if expired {
		how = "expired"
	}
	c.log.Info("parallafka: held key "+how+": its messages are handled again", "partition", cl.tp, "key", string(h.key), "held_since", h.since)
	if c.obs.holds != nil {
		c.obs.keyReleased(h.info(cl.tp), expired)
	}
}

// expired reports whether h's TTL passed.
func (c *coordinator[K, V]) expired(h *heldKey, now time.Time) bool {
	return c.heldTTL > 0 && now.Sub(h.since) >= c.heldTTL
}

// heldBack reports whether e's key is held: then its message is marked
// failed with a *pipeline.KeyHeldError (Attempt 0), so that the pool
// sends it to the stages without calling its handler. A message failed
// already (not deserialized) keeps its own error, a dropped one its fate,
// and one handled before (a retry, in unordered mode) goes on.
func (c *coordinator[K, V]) heldBack(e entry[K, V]) bool {
	msg := e.msg
	if msg.RawKey == nil || msg.Err != nil || msg.Dropped() || msg.Attempt > 0 {
		return false
	}
	h := e.claim.heldKeys[string(msg.RawKey)]
	if h == nil {
		return false
	}
	if c.expired(h, time.Now()) {
		c.unhold(e.claim, h, true)
		return false
	}
	if s := e.slot(); s != nil {
		s.heldBack = true
	}
	msg.Err = &pipeline.KeyHeldError{Offset: h.offset}
	return true
}

// releaseHeld releases key in every claim that holds it, and returns how
// many did.
func (c *coordinator[K, V]) releaseHeld(key []byte) int {
	n := 0
	for _, cl := range c.claims {
		if h := cl.heldKeys[string(key)]; h != nil {
			c.unhold(cl, h, false)
			n++
		}
	}
	return n
}

// expireHeld releases the held keys whose TTL passed.
func (c *coordinator[K, V]) expireHeld(now time.Time) {
	if c.heldN == 0 || c.heldTTL <= 0 {
		return
	}
	for _, cl := range c.claims {
		for _, h := range cl.heldKeys {
			if c.expired(h, now) {
				c.unhold(cl, h, true)
			}
		}
	}
}

// restoreHeld holds in cl the keys its committed metadata held (those
// whose TTL passed meanwhile excepted).
func (c *coordinator[K, V]) restoreHeld(cl *claim[K, V], held []offsetmap.Held) {
	now := time.Now()
	dropped := false
	for _, r := range held {
		h := &heldKey{key: r.Key, offset: r.Offset, since: time.Unix(r.Since, 0)}
		if c.expired(h, now) {
			c.log.Info("parallafka: held key read from the committed metadata has expired: not held", "partition", cl.tp, "key", string(h.key), "held_since", h.since)
			dropped = true
			continue
		}
		c.addHeld(cl, h)
		c.log.Info("parallafka: key held, as the committed metadata says: its messages go to the dead-letter stage until it is released",
			"partition", cl.tp, "key", string(h.key), "offset", h.offset, "held_since", h.since)
	}
	cl.heldChanged = dropped // the metadata is to be written again without them
}

// heldList returns cl's held keys for its commit metadata, oldest first
// (the metadata's limit drops the oldest).
func (cl *claim[K, V]) heldList() []offsetmap.Held {
	if len(cl.heldKeys) == 0 {
		return nil
	}
	hs := slices.SortedFunc(maps.Values(cl.heldKeys), func(a, b *heldKey) int {
		return cmp.Or(a.since.Compare(b.since), cmp.Compare(a.offset, b.offset), bytes.Compare(a.key, b.key))
	})
	out := make([]offsetmap.Held, len(hs))
	for i, h := range hs {
		out[i] = offsetmap.Held{Key: h.key, Offset: h.offset, Since: max(0, h.since.Unix())}
	}
	return out
}

// HeldKeyControl carries Parallafka.ReleaseKey to the running coordinator:
// a request and its answer, while a coordinator runs. The zero value is
// ready to use; it must not be copied after first use.
type HeldKeyControl struct {
	mu   sync.Mutex
	reqs chan keyRelease // while a coordinator runs
	done chan struct{}   // closed when it stops taking requests
}

type keyRelease struct {
	key   []byte
	reply chan int
}

// Release releases key in every partition the running coordinator holds
// it in, and returns how many; 0 while no coordinator runs.
func (k *HeldKeyControl) Release(key []byte) int {
	k.mu.Lock()
	reqs, done := k.reqs, k.done
	k.mu.Unlock()
	if reqs == nil {
		return 0
	}
	r := keyRelease{key: key, reply: make(chan int, 1)}
	select {
	case reqs <- r:
		return <-r.reply // answered in the same turn
	case <-done:
		return 0
	}
}

// attach makes the control's requests come to the caller (a coordinator
// as it begins) until detach.
func (k *HeldKeyControl) attach() (reqs <-chan keyRelease, detach func()) {
	if k == nil {
		return nil, func() {}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	ch, done := make(chan keyRelease), make(chan struct{})
	k.reqs, k.done = ch, done
	return ch, func() {
		k.mu.Lock()
		if k.done == done {
			k.reqs, k.done = nil, nil
		}
		k.mu.Unlock()
		close(done)
	}
}
