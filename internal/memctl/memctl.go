// Package memctl gives this module's own tests what a memsource.Source
// records but does not publish: every commit in order, a partition's commit
// metadata, length and paused state, the list of partitions, and hooks that
// fail commits and transactions.
//
// Package memsource registers itself here from its init, so memctl need not
// import it. Each function takes the *memsource.Source[K, V] as an any and
// panics if given anything else: a mistake in the test.
package memctl

import (
	"fmt"

	"github.com/parallafka/parallafka/pipeline"
)

// Control is the introspection a memsource.Source gives this module's tests.
type Control interface {
	Commits() []pipeline.Offset
	Metadata(tp pipeline.TopicPartition) string
	SetCommitHook(hook func([]pipeline.Offset) error)
	SetTransactHook(hook func([]pipeline.Record, []pipeline.Offset) error)
	Paused(tp pipeline.TopicPartition) bool
	Partitions() []pipeline.TopicPartition
	Len(tp pipeline.TopicPartition) int64
}

var lookup func(src any) (Control, bool)

// Register is called by package memsource's init with the function that
// finds the Control of one of its sources. Nothing else calls it.
func Register(f func(src any) (Control, bool)) { lookup = f }

func of(src any) Control {
	if lookup != nil {
		if c, ok := lookup(src); ok {
			return c
		}
	}
	panic(fmt.Sprintf("memctl: %T is not a *memsource.Source", src))
}

// Commits returns every offset src committed so far, in order.
func Commits(src any) []pipeline.Offset { return of(src).Commits() }

// Metadata returns the metadata of a partition's latest commit ("" if it was
// never committed).
func Metadata(src any, tp pipeline.TopicPartition) string { return of(src).Metadata(tp) }

// SetCommitHook installs a function called before each of src's commits; a
// non-nil error fails the commit (to simulate a broker that refuses
// commits). A nil hook removes it.
func SetCommitHook(src any, hook func([]pipeline.Offset) error) { of(src).SetCommitHook(hook) }

// SetTransactHook installs a function called before each of src's
// transactions (Transact); a non-nil error fails the transaction, which
// then records nothing. A nil hook removes it.
func SetTransactHook(src any, hook func([]pipeline.Record, []pipeline.Offset) error) {
	of(src).SetTransactHook(hook)
}

// Paused reports whether a partition of src is paused now.
func Paused(src any, tp pipeline.TopicPartition) bool { return of(src).Paused(tp) }

// Partitions returns every partition of src, ordered by topic and partition.
func Partitions(src any) []pipeline.TopicPartition { return of(src).Partitions() }

// Len returns the number of records in a partition of src (its end offset).
func Len(src any, tp pipeline.TopicPartition) int64 { return of(src).Len(tp) }
