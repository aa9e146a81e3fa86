package parallafka

import "time"

// WithHeldKeyTTL releases a held key d after it was held (see ReleaseKey):
// its messages are handled again. Default 0: a held key stays held until
// ReleaseKey, across rebalances and restarts. The time a key was held is
// recorded with it in the commit's metadata, so the TTL runs across them
// too (to the second).
func WithHeldKeyTTL(d time.Duration) Option {
	return optionFunc(func(c *config) { c.heldKeyTTL = d })
}

// ReleaseKey releases key (the raw key, as Message.RawKey and the
// dead-letter record carry it) in every partition of this member that
// holds it, and returns how many did; 0 when Consume is not running.
//
// A key is held in its partition once a message of it is dead-lettered by
// a stages.DeadLetterQueue with HoldKey set (or a stage called
// Message.HoldKey, or the error policy returned pipeline.HoldKey): from
// then on the key's later messages in the partition are not handled but go
// straight to the dead-letter stage, in order, failed with a
// *pipeline.KeyHeldError (the dead letter's header parallafka.held-behind
// names the offset that held the key), while other keys go on. So the
// dead-letter topic holds the key's messages from the one that failed on,
// in order, and replaying it restores the key's order. The held keys are
// committed with each partition's offset (in the metadata next to the
// offset map, WithOffsetMapMaxBytes): the next owner of the partition, in
// a rebalance or after a restart, holds them too. Stats.HeldKeys counts
// them; an Observer that implements pipeline.KeyHoldObserver is told.
//
// A partition is held by one member at a time: call ReleaseKey on every
// member of the group (or on the one that owns the key's partition). A
// message of the key on its way to the dead-letter stage as it is
// released still goes there. To replay the dead-letter topic into the
// original topic, release the key first: a held key would send the
// replayed messages back to the dead-letter topic.
func (p *Parallafka[K, V]) ReleaseKey(key []byte) int { return p.held.Release(key) }
