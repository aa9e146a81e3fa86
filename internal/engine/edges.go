package engine

import (
	"context"
	"time"

	"github.com/parallafka/parallafka/internal/offsetmap"
	"github.com/parallafka/parallafka/internal/outbox"
	"github.com/parallafka/parallafka/pipeline"
)

// The messages on the coordinator's edges.
type (
	// completion is a message back from a handling attempt, with the
	// ack collector's verdict.
	completion[K, V any] struct {
		msg     *pipeline.Message[K, V]
		origin  origin[K, V] // from the job, when the pool settles it; zero past the AfterHandle stages
		verdict verdict
		hold    bool // with verdictFinish: hold the message's key (Message.HoldKey, the policy's HoldKey)
		// staged are the outputs the AfterHandle stages produced for msg,
		// in a transactional pipeline (a dead letter, say: outbox.go).
		staged []pipeline.Record
	}
	// origin is where a dispatched message stands in the coordinator's
	// state: its claim and its offset. The pool hands it back with the
	// message's completion and never reads it: the coordinator then finds
	// the message's slot without a lookup by partition and without
	// reading the message, which the handler's processor holds.
	origin[K, V any] struct {
		claim  *claim[K, V]
		offset int64
	}
	// job is a dispatched message and its handler's context (its
	// claim's), with how long it waited (with an observer only).
	job[K, V any] struct {
		msg    *pipeline.Message[K, V]
		origin origin[K, V] // single-message mode
		ctx    context.Context
		batch  *batch[K, V]  // in batch mode, instead of msg (ctx is the batch's)
		waited pipeline.Wait // with an observer (not in batch mode)
		// run, instead of msg, is a run of quick messages that one handler
		// takes in a row (see runLength), each with its origin, context
		// and wait; their completions go back in one handler end, in ends
		// (empty, with room for all of them).
		run  []job[K, V]
		ends []completion[K, V]
	}
	// handlerEnded tells the coordinator that a handler is free again,
	// with the messages it settled: those that skip the AfterHandle
	// stages (all of them without stages), with their verdicts. The
	// coordinator takes them before any completion the stages send on
	// (a batch's requeued messages must be back before the verdict of
	// the message that failed ahead of them).
	handlerEnded[K, V any] struct {
		quick   bool // the handler took less than quickHandler (see dispatchLimit)
		call    handlerCall
		done    completion[K, V]   // single-message mode: the message, if it skips the stages (done.msg != nil)
		settled []completion[K, V] // batch mode, and a run's messages, in the run's order
		run     []job[K, V]        // a run's jobs, handed back for the next run
		// produced are the outputs of the call's messages that succeeded,
		// in a transactional pipeline (outbox.go).
		produced []outbox.Produced[K, V]
	}
	// handlerCall is what a handler call showed, for the adaptive limit:
	// how long it took and whether it failed. One call, one sample,
	// whatever it handled.
	handlerCall struct {
		ended  time.Time
		took   time.Duration
		failed bool
		ran    bool // the handler was called and its context not cancelled: a sample
	}
	// rebalanceRequest asks the coordinator to act on a rebalance; it
	// replies on reply (final offsets, for a revoke).
	rebalanceRequest struct {
		kind       rebalanceKind
		partitions []pipeline.TopicPartition
		committed  []pipeline.Offset // assign: the committed offsets and metadata, as the source read them
		reply      chan []claimOffset
	}
	// pollCycle is one poll cycle's messages, with their sizes as the
	// poller counted them against the byte window.
	pollCycle[K, V any] struct {
		msgs  []*pipeline.Message[K, V]
		sizes []int32
	}
	// steering tells the poller which partitions to pause (see steer.go).
	steering struct {
		pause    []pipeline.TopicPartition // pause these
		over     []pipeline.TopicPartition // pause these while a low one has messages to read
		low      []pipeline.TopicPartition // below a quarter of their share of the window
		starving bool                      // the pause is for a key chain short of messages
		quick    bool                      // the handlers are quick: the poller keeps the window to quickWindow
	}
	// room is what the coordinator freed of the in-flight window since it
	// last told the poller.
	room struct {
		msgs  int
		bytes int64
	}
	// offsetsQuery asks the coordinator what is committable now. In a
	// transactional pipeline it tells too which outputs the transactions
	// since the last query carried (their claims drop them).
	offsetsQuery struct {
		reply     chan<- []claimOffset
		committed []outputsDone
	}
	// claimOffset is a committable offset and the claim it belongs to.
	claimOffset struct {
		pipeline.Offset
		claim   uint64
		outputs []finishedOutputs // a transactional pipeline's: the outputs of the finished messages below Offset that no committed transaction carried yet (outbox.go)
		runs    []offsetmap.Run   // the offset map: finished offsets above Offset, which the committer encodes into Metadata
		held    []offsetmap.Held  // the claim's held keys, oldest first, encoded with it
	}
	// commitRequest asks the committer to commit a revoke's final offsets.
	commitRequest struct {
		offsets []claimOffset
		reply   chan error
	}
	// revokedQuery asks for the channel pipeline.Revoked returns.
	revokedQuery struct {
		tp    pipeline.TopicPartition
		reply chan (<-chan struct{})
	}
)

type verdict uint8

const (
	verdictFinish  verdict = iota // finished: committable; the key is free
	verdictRetry                  // handle again, keeping the key
	verdictAbandon                // never committed in this assignment; its key's queue goes too
	verdictRequeue                // batch mode: not handled after all (an earlier message of its key failed, or another partition's end cancelled its batch): it waits again, in order
)

type rebalanceKind uint8

const (
	rebalanceAssign rebalanceKind = iota
	rebalanceRevoke
	rebalanceGiveUp // the revoke timed out: answer now
	rebalanceLost
	rebalanceHold   // Parallafka.Pause: dispatch nothing
	rebalanceUnhold // Parallafka.Resume
)
