package kafkaclient

import (
	"fmt"
	"log/slog"
	"sort"
	"strings"

	"github.com/parallafka/parallafka/pipeline"
)

// CommitError is kafka.CommitError and franz.CommitError: the error of a
// Source's Commit when some offsets were not committed. Each offset given
// to Commit is in exactly one of Committed, NotOwned and Failed.
type CommitError struct {
	// Committed are the offsets that are now the group's committed offsets
	// (or were already passed by an earlier commit of this Source).
	Committed []pipeline.Offset
	// NotOwned are the offsets dropped because this member does not own
	// their partitions: do not retry them.
	NotOwned []pipeline.Offset
	// Failed are the offsets not committed for a reason that may pass
	// (coordinator moving, request timed out, ...): retry them.
	Failed []pipeline.Offset
	// Causes holds the error of each offset in NotOwned and Failed.
	Causes map[pipeline.TopicPartition]error
}

// Error lists the partitions that were not committed and why.
func (e *CommitError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "kafka: commit failed for %d of %d partitions", len(e.NotOwned)+len(e.Failed),
		len(e.Committed)+len(e.NotOwned)+len(e.Failed))
	if len(e.Failed) == 0 {
		b.WriteString(" (not owned, not retriable)")
	}
	for i, off := range append(append([]pipeline.Offset(nil), e.Failed...), e.NotOwned...) {
		if i == 3 {
			b.WriteString("; ...")
			break
		}
		fmt.Fprintf(&b, "; %s@%d: %v", off.TopicPartition, off.Offset, e.Causes[off.TopicPartition])
	}
	return b.String()
}

// Is reports whether target is pipeline.ErrNotOwned and nothing is worth
// retrying.
func (e *CommitError) Is(target error) bool {
	return target == pipeline.ErrNotOwned && len(e.Failed) == 0
}

// Unwrap returns the causes of Failed, or of NotOwned when Failed is empty
// (so that errors.Is(err, pipeline.ErrNotOwned) keeps its meaning):
// errors.As finds the client's own error among them.
func (e *CommitError) Unwrap() []error {
	group := e.Failed
	if len(group) == 0 {
		group = e.NotOwned
	}
	errs := make([]error, 0, len(group))
	for _, off := range group {
		if err := e.Causes[off.TopicPartition]; err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// CommitResult returns nil if every offset of res was committed, else res,
// and logs which at debug level, as pkg ("kafka", "franz") logs.
func CommitResult(res *CommitError, log *slog.Logger, pkg string) error {
	if len(res.NotOwned) == 0 && len(res.Failed) == 0 {
		log.Debug(pkg+": offsets committed", "offsets", res.Committed)
		return nil
	}
	log.Debug(pkg+": commit failed", "failed", res.Failed, "not_owned", res.NotOwned, "error", res.Error())
	return res
}

// errNotAssigned is the cause of the NotOwned offsets whose partitions the
// Source does not have in its assignment.
var errNotAssigned = fmt.Errorf("%w: partition not assigned", pipeline.ErrNotOwned)

// Sift sorts out the offsets of a Commit call that need no commit request,
// once deduplicated (the highest offset of each partition, in partition
// order): those of partitions not in assigned go to res.NotOwned, those not
// past the offset committed holds for their partition (lower, or equal with
// the same metadata) to res.Committed. It returns res, which the outcome of
// the request for send then completes.
func Sift[X any](offsets []pipeline.Offset, assigned map[pipeline.TopicPartition]X,
	committed map[pipeline.TopicPartition]pipeline.Offset) (res *CommitError, send []pipeline.Offset) {
	res = &CommitError{Causes: make(map[pipeline.TopicPartition]error)}
	for _, off := range dedupe(offsets) {
		if _, ok := assigned[off.TopicPartition]; !ok {
			res.NotOwned = append(res.NotOwned, off)
			res.Causes[off.TopicPartition] = errNotAssigned
		} else if last, ok := committed[off.TopicPartition]; ok && (off.Offset < last.Offset || off == last) {
			res.Committed = append(res.Committed, off)
		} else {
			send = append(send, off)
		}
	}
	return res, send
}

// Classify files off, whose commit request ended with err, in res:
// Committed if err is nil; NotOwned if notOwned(err), with a cause that
// wraps pipeline.ErrNotOwned and err; else Failed, with a cause that wraps
// pipeline.ErrMetadataTooLarge and err if tooLarge(err), else err.
func Classify(res *CommitError, off pipeline.Offset, err error, notOwned, tooLarge func(error) bool) {
	switch {
	case err == nil:
		res.Committed = append(res.Committed, off)
	case notOwned(err):
		res.NotOwned = append(res.NotOwned, off)
		res.Causes[off.TopicPartition] = fmt.Errorf("%w: %w", pipeline.ErrNotOwned, err)
	case tooLarge(err):
		res.Failed = append(res.Failed, off)
		res.Causes[off.TopicPartition] = fmt.Errorf("%w (%d bytes): %w", pipeline.ErrMetadataTooLarge, len(off.Metadata), err)
	default:
		res.Failed = append(res.Failed, off)
		res.Causes[off.TopicPartition] = err
	}
}

// Merge adds the offsets and causes of from to res.
func Merge(res, from *CommitError) {
	res.Committed = append(res.Committed, from.Committed...)
	res.NotOwned = append(res.NotOwned, from.NotOwned...)
	res.Failed = append(res.Failed, from.Failed...)
	for tp, err := range from.Causes {
		res.Causes[tp] = err
	}
}

// NoteCommitted records each of done in committed, the offsets committed in
// the current assignment, if its partition is still in assigned and no
// higher offset is recorded for it.
func NoteCommitted[X any](done []pipeline.Offset, assigned map[pipeline.TopicPartition]X,
	committed map[pipeline.TopicPartition]pipeline.Offset) {
	for _, off := range done {
		if _, ok := assigned[off.TopicPartition]; ok {
			if last, ok := committed[off.TopicPartition]; !ok || off.Offset >= last.Offset {
				committed[off.TopicPartition] = off
			}
		}
	}
}

// dedupe keeps the highest offset of each partition, with its metadata (the
// last given, if the same offset comes more than once), in partition order.
func dedupe(offsets []pipeline.Offset) []pipeline.Offset {
	best := make(map[pipeline.TopicPartition]pipeline.Offset, len(offsets))
	for _, off := range offsets {
		if cur, ok := best[off.TopicPartition]; !ok || off.Offset >= cur.Offset {
			best[off.TopicPartition] = off
		}
	}
	out := make([]pipeline.Offset, 0, len(best))
	for _, off := range best {
		out = append(out, off)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Topic != out[j].Topic {
			return out[i].Topic < out[j].Topic
		}
		return out[i].Partition < out[j].Partition
	})
	return out
}
