package stages

import (
	"container/list"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/parallafka/parallafka/pipeline"
)

// The in-memory store that Dedupe uses when given none: 100,000
// identities kept for an hour.
const (
	defaultDedupeMaxIDs = 100_000
	defaultDedupeTTL    = time.Hour
)

// DedupeStore remembers the identities of handled messages for a window.
// Implementations must be safe for concurrent use.
type DedupeStore interface {
	// Seen reports whether id was recorded within the window.
	Seen(ctx context.Context, id string) (bool, error)
	// Record records that a message with this id was handled.
	Record(ctx context.Context, id string) error
}

// DedupeConfig configures Dedupe. A zero field takes its documented default.
type DedupeConfig[K, V any] struct {
	// ID returns a message's dedupe identity, and false for a message that
	// is not to be deduplicated. Default: the value of the HeaderMessageID
	// header, if the message has one that is not empty.
	ID func(msg *pipeline.Message[K, V]) (id string, ok bool)
	// Store remembers the identities. Default: NewMemoryDedupeStore's, of
	// 100,000 identities kept for an hour.
	Store DedupeStore
	// OnRecordError is called when the store fails to record a handled
	// message's identity. The message still succeeds (it was handled);
	// at worst a later duplicate is handled again. Default: ignored.
	OnRecordError func(msg *pipeline.Message[K, V], err error)
}

// Dedupe returns a middleware that drops a message whose identity was
// already handled within the store's window. A duplicate is marked with
// Message.Drop instead of being handled, so it counts as finished (and as
// dropped in the pipeline's stats) and its partition's commits advance.
//
// An identity is recorded only after the handler succeeded: a message that
// failed, or was abandoned on shutdown or revoke, is never taken for handled,
// so its redelivery or retry is handled again. If the store fails to answer
// Seen, the attempt fails with the store's error (retry stages and the error
// policy apply).
//
// Dedupe is a middleware rather than a stage because it must see both sides
// of an attempt: the check before the handler and the record after its
// success. It runs while the message holds its key, so duplicates that share
// a key (producer retries, replays) are recognized exactly; duplicates with
// different keys may run concurrently and both be handled.
func Dedupe[K, V any](cfg DedupeConfig[K, V]) pipeline.Middleware[K, V] {
	if cfg.ID == nil {
		cfg.ID = headerID[K, V]
	}
	if cfg.Store == nil {
		cfg.Store = newMemoryDedupeStore(defaultDedupeMaxIDs, defaultDedupeTTL)
	}
	return func(next pipeline.Handler[K, V]) pipeline.Handler[K, V] {
		return func(ctx context.Context, msg *pipeline.Message[K, V]) error {
			id, ok := cfg.ID(msg)
			if !ok {
				return next(ctx, msg)
			}
			seen, err := cfg.Store.Seen(ctx, id)
			if err != nil {
				return fmt.Errorf("stages: dedupe store: %w", err)
			}
			if seen {
				msg.Drop()
				return nil
			}
			if err := next(ctx, msg); err != nil {
				return err
			}
			// Recording is bookkeeping of work already done: a hard stop
			// must not make it fail.
			if err := cfg.Store.Record(context.WithoutCancel(ctx), id); err != nil && cfg.OnRecordError != nil {
				cfg.OnRecordError(msg, err)
			}
			return nil
		}
	}
}

func headerID[K, V any](msg *pipeline.Message[K, V]) (string, bool) {
	for _, h := range msg.Headers {
		if h.Key == HeaderMessageID && len(h.Value) > 0 {
			return string(h.Value), true
		}
	}
	return "", false
}

// memoryDedupeStore is NewMemoryDedupeStore's store.
type memoryDedupeStore struct {
	maxIDs int
	ttl    time.Duration

	mu     sync.Mutex
	ids    map[string]*list.Element // of *recordedID
	oldest *list.List               // by time recorded, oldest first
}

type recordedID struct {
	id      string
	expires time.Time
}

// NewMemoryDedupeStore returns an empty in-memory DedupeStore: it keeps at
// most maxIDs identities, each for ttl after it was last recorded,
// forgetting the oldest first when full. Memory stays bounded at about
// maxIDs × (len(id) + 150) bytes. It is safe for concurrent use. It returns
// an error, and never panics, unless both maxIDs and ttl are positive.
func NewMemoryDedupeStore(maxIDs int, ttl time.Duration) (DedupeStore, error) {
	if maxIDs <= 0 || ttl <= 0 {
		return nil, fmt.Errorf("stages: NewMemoryDedupeStore: maxIDs and ttl must be positive, got %d and %v", maxIDs, ttl)
	}
	return newMemoryDedupeStore(maxIDs, ttl), nil
}

func newMemoryDedupeStore(maxIDs int, ttl time.Duration) *memoryDedupeStore {
	return &memoryDedupeStore{maxIDs: maxIDs, ttl: ttl, ids: make(map[string]*list.Element), oldest: list.New()}
}

// Seen implements DedupeStore.
func (s *memoryDedupeStore) Seen(_ context.Context, id string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.ids[id]
	if !ok {
		return false, nil
	}
	if time.Now().After(e.Value.(*recordedID).expires) {
		s.forget(e)
		return false, nil
	}
	return true, nil
}

// Record implements DedupeStore. Recording an identity again restarts its
// window.
func (s *memoryDedupeStore) Record(_ context.Context, id string) error {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.ids[id]; ok {
		e.Value.(*recordedID).expires = now.Add(s.ttl)
		s.oldest.MoveToBack(e)
	} else {
		s.ids[id] = s.oldest.PushBack(&recordedID{id: id, expires: now.Add(s.ttl)})
	}
	// Every identity lives for the same ttl, so the oldest expire first.
	for e := s.oldest.Front(); e != nil && (len(s.ids) > s.maxIDs || now.After(e.Value.(*recordedID).expires)); e = s.oldest.Front() {
		s.forget(e)
	}
	return nil
}

// Len returns the number of identities held, expired ones not yet pruned
// included (for tests, through an interface assertion).
func (s *memoryDedupeStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ids)
}

func (s *memoryDedupeStore) forget(e *list.Element) {
	delete(s.ids, e.Value.(*recordedID).id)
	s.oldest.Remove(e)
}

var _ DedupeStore = (*memoryDedupeStore)(nil)
