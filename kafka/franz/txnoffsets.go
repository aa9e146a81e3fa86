package franz

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"

	"github.com/parallafka/parallafka/pipeline"
)

// The offsets of a transaction, committed as the Source's group member:
// kgo sends TxnOffsetCommit only from a GroupTransactSession, so the
// Transactor builds the requests itself, as kgo's commitTransactionOffsets
// does, with the member ID and generation the Source's client has now.

// txnVersions is what the Transactor knows of the cluster's transaction
// protocol.
type txnVersions struct {
	// kip890p2: the cluster runs transactions as KIP-890 part 2 has them
	// (transaction.version 2): TxnOffsetCommit v5+ adds the group to the
	// transaction itself, and lower versions are not for it. Decided as
	// kgo decides it for its producer (supportsKIP890p2), and kept once
	// true, as kgo keeps it.
	kip890p2 bool
	// txnCommitMax is the highest TxnOffsetCommit version the brokers
	// offer; addOffsets, transactions, what they lack.
	txnCommitMax int16
	noTxns       bool
	checked      time.Time
	userMax      *kversion.Versions // kgo.MaxVersions of the producer, if set
}

// recheckEvery is how often a cluster without KIP-890 part 2 is asked
// again: kgo opts in as soon as the cluster does.
const recheckEvery = 30 * time.Second

// load asks a broker for its API versions and the cluster's finalized
// features.
func (v *txnVersions) load(ctx context.Context, cl *kgo.Client) error {
	v.userMax, _ = cl.OptValue(kgo.MaxVersions).(*kversion.Versions)
	req := kmsg.NewPtrApiVersionsRequest()
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return err
	}
	if err := kerr.ErrorForCode(resp.ErrorCode); err != nil {
		return err
	}
	maxOf := func(key kmsg.Key) int16 {
		for _, k := range resp.ApiKeys {
			if k.ApiKey == int16(key) {
				return k.MaxVersion
			}
		}
		return -1
	}
	var tv int16
	for _, f := range resp.FinalizedFeatures {
		if f.Name == "transaction.version" {
			tv = f.MaxVersionLevel
		}
	}
	v.txnCommitMax = maxOf(kmsg.TxnOffsetCommit)
	v.noTxns = maxOf(kmsg.InitProducerID) < 0 || maxOf(kmsg.EndTxn) < 0 || maxOf(kmsg.AddPartitionsToTxn) < 0
	v.kip890p2 = v.kip890p2 || (tv >= 2 && v.userAllows890p2())
	v.checked = time.Now()
	return nil
}

// userAllows890p2 mirrors kgo: a kgo.MaxVersions below the versions of
// KIP-890 part 2 keeps the client on the old protocol.
func (v *txnVersions) userAllows890p2() bool {
	if v.userMax == nil {
		return true
	}
	for key, least := range map[kmsg.Key]int16{kmsg.Produce: 12, kmsg.EndTxn: 5, kmsg.TxnOffsetCommit: 5} {
		if got, ok := v.userMax.LookupMaxKeyVersion(int16(key)); !ok || got < least {
			return false
		}
	}
	return true
}

// refresh asks again, at most every recheckEvery, while the cluster does
// not run KIP-890 part 2; a failure keeps what was known.
func (v *txnVersions) refresh(ctx context.Context, cl *kgo.Client) {
	if v.kip890p2 || time.Since(v.checked) < recheckEvery {
		return
	}
	_ = v.load(ctx, cl)
}

// supported returns an error wrapping ErrTransactionsUnsupported if the
// cluster cannot run a transactional pipeline.
func (v *txnVersions) supported() error {
	switch {
	case v.noTxns:
		return fmt.Errorf("%w: the brokers offer no transaction requests", ErrTransactionsUnsupported)
	case v.txnCommitMax < 3:
		return fmt.Errorf("%w: the brokers offer TxnOffsetCommit up to v%d; v3 (KIP-447) commits as a group member", ErrTransactionsUnsupported, v.txnCommitMax)
	}
	return nil
}

// addOffsets tells whether the group must be added to the transaction
// with AddOffsetsToTxn: not with KIP-890 part 2 and TxnOffsetCommit v5+.
func (v *txnVersions) addOffsets() bool { return !v.kip890p2 || v.txnCommitMax < 5 }

// commitOffsets commits offsets in the open transaction as the Source's
// group member.
func (t *Transactor) commitOffsets(ctx context.Context, offsets []pipeline.Offset) error {
	if len(offsets) == 0 {
		return nil
	}
	member, generation := t.src.groupClient().GroupMetadata()
	if member == "" || generation <= 0 {
		return fmt.Errorf("%w: not a member of group %s now (member %q, generation %d)", pipeline.ErrNotOwned, t.src.groupName(), member, generation)
	}
	id, epoch, err := t.client.ProducerID(ctx)
	if err != nil {
		return fmt.Errorf("producer id: %w", err)
	}
	if t.versions.addOffsets() {
		if err := t.addOffsetsToTxn(ctx, id, epoch); err != nil {
			return fmt.Errorf("AddOffsetsToTxn: %w", err)
		}
	}
	req := kmsg.NewPtrTxnOffsetCommitRequest()
	req.TransactionalID = t.txnID
	req.Group = t.src.groupName()
	req.ProducerID, req.ProducerEpoch = id, epoch
	req.MemberID, req.Generation = member, generation
	if inst, _ := t.src.groupClient().OptValue(kgo.InstanceID).(string); inst != "" {
		req.InstanceID = &inst
	}
	byTopic := make(map[string]int)
	for _, off := range offsets {
		i, ok := byTopic[off.Topic]
		if !ok {
			i = len(req.Topics)
			byTopic[off.Topic] = i
			rt := kmsg.NewTxnOffsetCommitRequestTopic()
			rt.Topic = off.Topic
			req.Topics = append(req.Topics, rt)
		}
		rp := kmsg.NewTxnOffsetCommitRequestTopicPartition()
		rp.Partition = off.Partition
		rp.Offset = off.Offset
		rp.LeaderEpoch = -1
		md := off.Metadata
		rp.Metadata = &md
		req.Topics[i].Partitions = append(req.Topics[i].Partitions, rp)
	}
	// v6 names topics by ID only (KIP-1319): a v6 request without IDs
	// commits to no topic, so it goes as v5 if an ID is missing, as kgo
	// pins it; below KIP-890 part 2, v5+ is not for this transaction.
	maxVersion := req.MaxVersion()
	switch {
	case !t.versions.kip890p2:
		maxVersion = min(maxVersion, 4)
	case t.versions.txnCommitMax >= 6:
		if !t.fillTopicIDs(ctx, req) {
			maxVersion = min(maxVersion, 5)
		}
	}
	resp, err := t.sendTxnOffsetCommit(ctx, req, maxVersion)
	if err != nil {
		return fmt.Errorf("TxnOffsetCommit: %w", err)
	}
	return t.txnCommitResult(req, resp)
}

// txnCommitResult returns the error of a TxnOffsetCommit answer, if any
// partition has one.
func (t *Transactor) txnCommitResult(req *kmsg.TxnOffsetCommitRequest, resp *kmsg.TxnOffsetCommitResponse) error {
	names := make(map[[16]byte]string, len(req.Topics))
	for _, rt := range req.Topics {
		names[rt.TopicID] = rt.Topic
	}
	answered := 0
	for _, rt := range resp.Topics {
		topic := rt.Topic
		if topic == "" {
			topic = names[rt.TopicID]
		}
		for _, rp := range rt.Partitions {
			answered++
			err := kerr.ErrorForCode(rp.ErrorCode)
			if err == nil {
				continue
			}
			tp := pipeline.TopicPartition{Topic: topic, Partition: rp.Partition}
			if errors.Is(err, kerr.UnknownTopicID) {
				delete(t.topicIDs, topic) // recreated: ask again next time
			}
			switch {
			case notOwned(err):
				return fmt.Errorf("TxnOffsetCommit %s: %w: %w", tp, pipeline.ErrNotOwned, err)
			case metadataTooLarge(err):
				return fmt.Errorf("TxnOffsetCommit %s: %w: %w", tp, pipeline.ErrMetadataTooLarge, err)
			default:
				return fmt.Errorf("TxnOffsetCommit %s: %w", tp, err)
			}
		}
	}
	sent := 0
	for _, rt := range req.Topics {
		sent += len(rt.Partitions)
	}
	if answered < sent {
		return fmt.Errorf("TxnOffsetCommit: %d of %d partitions missing from the answer", sent-answered, sent)
	}
	return nil
}

// fillTopicIDs sets the topic IDs of req's topics, asking the cluster for
// those not known yet; it reports whether every topic has one.
func (t *Transactor) fillTopicIDs(ctx context.Context, req *kmsg.TxnOffsetCommitRequest) bool {
	if t.topicIDs == nil {
		t.topicIDs = make(map[string][16]byte)
	}
	meta := kmsg.NewPtrMetadataRequest()
	for _, rt := range req.Topics {
		if _, ok := t.topicIDs[rt.Topic]; !ok {
			mt := kmsg.NewMetadataRequestTopic()
			mt.Topic = kmsg.StringPtr(rt.Topic)
			meta.Topics = append(meta.Topics, mt)
		}
	}
	if len(meta.Topics) > 0 {
		if resp, err := meta.RequestWith(ctx, t.client); err == nil {
			for _, mt := range resp.Topics {
				if mt.Topic != nil && mt.ErrorCode == 0 && mt.TopicID != ([16]byte{}) {
					t.topicIDs[*mt.Topic] = mt.TopicID
				}
			}
		}
	}
	all := true
	for i := range req.Topics {
		id, ok := t.topicIDs[req.Topics[i].Topic]
		req.Topics[i].TopicID = id
		all = all && ok
	}
	return all
}

// pinnedTxnOffsetCommit is a TxnOffsetCommit request whose version kgo
// negotiates no higher than max: kgo pins versions only for its own
// requests, and takes a request's highest version from MaxVersion.
type pinnedTxnOffsetCommit struct {
	*kmsg.TxnOffsetCommitRequest
	max int16
}

func (r pinnedTxnOffsetCommit) MaxVersion() int16 { return r.max }

// sendTxnOffsetCommit sends req to the group coordinator, at most in
// version maxVersion, retrying while the coordinator moves or is loading.
func (t *Transactor) sendTxnOffsetCommit(ctx context.Context, req *kmsg.TxnOffsetCommitRequest, maxVersion int16) (*kmsg.TxnOffsetCommitResponse, error) {
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		resp, err := t.tryTxnOffsetCommit(ctx, req, maxVersion)
		if err == nil {
			return resp, nil
		}
		t.coord = -1
		retriable := kgo.IsRetryableBrokerErr(err)
		var ke *kerr.Error
		if errors.As(err, &ke) {
			retriable = ke.Retriable
		}
		if attempt == 5 || !retriable {
			return nil, err
		}
		select {
		case <-time.After(backoff):
			backoff *= 2
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (last: %w)", ctx.Err(), err)
		}
	}
}

// tryTxnOffsetCommit sends req once; an answer that the coordinator moved,
// is loading, or is busy with the transaction is an error.
func (t *Transactor) tryTxnOffsetCommit(ctx context.Context, req *kmsg.TxnOffsetCommitRequest, maxVersion int16) (*kmsg.TxnOffsetCommitResponse, error) {
	node, err := t.groupCoordinator(ctx)
	if err != nil {
		return nil, err
	}
	kresp, err := t.client.Broker(int(node)).RetriableRequest(ctx, pinnedTxnOffsetCommit{req, maxVersion})
	if err != nil {
		return nil, err
	}
	resp := kresp.(*kmsg.TxnOffsetCommitResponse)
	for _, rt := range resp.Topics {
		for _, rp := range rt.Partitions {
			switch err := kerr.ErrorForCode(rp.ErrorCode); {
			case errors.Is(err, kerr.NotCoordinator), errors.Is(err, kerr.CoordinatorNotAvailable),
				errors.Is(err, kerr.CoordinatorLoadInProgress), errors.Is(err, kerr.ConcurrentTransactions):
				return nil, err
			}
		}
	}
	return resp, nil
}

// groupCoordinator returns the node ID of the group's coordinator.
func (t *Transactor) groupCoordinator(ctx context.Context) (int32, error) {
	if t.coord >= 0 {
		return t.coord, nil
	}
	req := kmsg.NewPtrFindCoordinatorRequest()
	req.CoordinatorKey = t.src.groupName()
	req.CoordinatorKeys = []string{t.src.groupName()}
	resp, err := req.RequestWith(ctx, t.client)
	if err != nil {
		return -1, fmt.Errorf("finding the group coordinator: %w", err)
	}
	if err := kerr.ErrorForCode(resp.ErrorCode); err != nil {
		return -1, fmt.Errorf("finding the group coordinator: %w", err)
	}
	t.coord = resp.NodeID
	return t.coord, nil
}

// addOffsetsToTxn adds the group to the open transaction, waiting out
// CONCURRENT_TRANSACTIONS (the previous transaction still completing).
func (t *Transactor) addOffsetsToTxn(ctx context.Context, id int64, epoch int16) error {
	backoff := 20 * time.Millisecond
	for {
		req := kmsg.NewPtrAddOffsetsToTxnRequest()
		req.TransactionalID = t.txnID
		req.ProducerID, req.ProducerEpoch = id, epoch
		req.Group = t.src.groupName()
		resp, err := req.RequestWith(ctx, t.client)
		if err == nil {
			err = kerr.ErrorForCode(resp.ErrorCode)
		}
		if !errors.Is(err, kerr.ConcurrentTransactions) {
			return err
		}
		select {
		case <-time.After(backoff):
			backoff = min(2*backoff, time.Second)
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %w)", ctx.Err(), err)
		}
	}
}

// settleWait bounds how long settle may take.
const settleWait = 30 * time.Second

// settle learns the outcome of a commit whose answer never came (endErr),
// and returns Transact's error: nil if it committed. kgo's documented
// retry, EndTransaction with TryAbort, reloads the producer id; the
// transaction coordinator answers that only once the transaction is
// complete, committed if its commit was recorded, else aborted. The
// group's committed offsets (read with require_stable, so that none is
// pending) then say which: the transaction's own, or the ones before.
func (t *Transactor) settle(ctx context.Context, offsets []pipeline.Offset, endErr error) error {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleWait)
	defer cancel()
	unknown := func(why string, err error) error {
		return t.fail(fmt.Errorf("franz: the commit of a transaction has no answer (%w), and its outcome is unknown: %s: %w", endErr, why, err))
	}
	if err := t.client.EndTransaction(sctx, kgo.TryAbort); err != nil {
		t.unended = true
		return unknown("reloading the producer id", err)
	}
	t.unended = false
	if _, _, err := t.client.ProducerID(sctx); err != nil {
		return unknown("reloading the producer id", err)
	}
	if len(offsets) == 0 {
		return unknown("no offsets to tell", errors.New("the transaction committed none"))
	}
	got, err := t.fetchCommitted(sctx, offsets)
	if err != nil {
		return unknown("reading the group's committed offsets", err)
	}
	matched := 0
	for _, off := range offsets {
		if c, ok := got[off.TopicPartition]; ok && c.Offset == off.Offset && c.Metadata == off.Metadata {
			if last, ok := t.src.lastCommitted(off.TopicPartition); ok && last.Offset == off.Offset && last.Metadata == off.Metadata {
				return unknown("telling", fmt.Errorf("%s was committed at %d before", off.TopicPartition, off.Offset))
			}
			matched++
		}
	}
	switch matched {
	case len(offsets):
		t.log.Info("franz: a transaction whose commit had no answer did commit", "error", endErr)
		t.src.noteCommitted(offsets)
		return nil
	case 0:
		t.log.Info("franz: a transaction whose commit had no answer was aborted", "error", endErr)
		return fmt.Errorf("%w: committing had no answer (%w); the transaction was aborted", errAborted, endErr)
	default:
		return unknown("telling", fmt.Errorf("%d of %d offsets are the transaction's", matched, len(offsets)))
	}
}

// fetchCommitted reads the group's committed offsets of offsets'
// partitions, waiting while a transaction's are pending
// (UNSTABLE_OFFSET_COMMIT).
func (t *Transactor) fetchCommitted(ctx context.Context, offsets []pipeline.Offset) (map[pipeline.TopicPartition]pipeline.Offset, error) {
	backoff := 50 * time.Millisecond
	for {
		got, err := t.tryFetchCommitted(ctx, offsets)
		if !errors.Is(err, kerr.UnstableOffsetCommit) {
			return got, err
		}
		select {
		case <-time.After(backoff):
			backoff = min(2*backoff, time.Second)
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (last: %w)", ctx.Err(), err)
		}
	}
}

func (t *Transactor) tryFetchCommitted(ctx context.Context, offsets []pipeline.Offset) (map[pipeline.TopicPartition]pipeline.Offset, error) {
	req := kmsg.NewPtrOffsetFetchRequest()
	req.RequireStable = true
	rg := kmsg.NewOffsetFetchRequestGroup()
	rg.Group = t.src.groupName()
	byTopic := make(map[string]int)
	for _, off := range offsets {
		i, ok := byTopic[off.Topic]
		if !ok {
			i = len(rg.Topics)
			byTopic[off.Topic] = i
			rt := kmsg.NewOffsetFetchRequestGroupTopic()
			rt.Topic = off.Topic
			rg.Topics = append(rg.Topics, rt)
		}
		rg.Topics[i].Partitions = append(rg.Topics[i].Partitions, off.Partition)
	}
	req.Groups = append(req.Groups, rg)
	resp, err := req.RequestWith(ctx, t.client)
	if err != nil {
		return nil, err
	}
	got := make(map[pipeline.TopicPartition]pipeline.Offset)
	for _, g := range resp.Groups {
		if err := kerr.ErrorForCode(g.ErrorCode); err != nil {
			return nil, err
		}
		for _, rt := range g.Topics {
			for _, rp := range rt.Partitions {
				if err := kerr.ErrorForCode(rp.ErrorCode); err != nil {
					return nil, err
				}
				off := pipeline.Offset{TopicPartition: pipeline.TopicPartition{Topic: rt.Topic, Partition: rp.Partition}, Offset: rp.Offset}
				if rp.Metadata != nil {
					off.Metadata = *rp.Metadata
				}
				got[off.TopicPartition] = off
			}
		}
	}
	return got, nil
}
