package integration_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	ckafka "github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/internal/keyed"
	"github.com/parallafka/parallafka/internal/offsetmap"
	"github.com/parallafka/parallafka/kafka/kafkatest"
)

// The crash tests re-execute the test binary as their child process, which
// runs TestCrashChild with these variables set.
const (
	crashChildEnv = "PARALLAFKA_CRASH_CHILD" // "1" in the child
	crashTopicEnv = "PARALLAFKA_CRASH_TOPIC"
	crashGroupEnv = "PARALLAFKA_CRASH_GROUP"
	crashOutEnv   = "PARALLAFKA_CRASH_OUT" // file of handled records
	// crashStuckEnv names a record, "partition offset", whose handler never
	// returns (it blocks until its context is done, which a kill never
	// brings); unset: every record is handled.
	crashStuckEnv = "PARALLAFKA_CRASH_STUCK"
)

// crashCommitInterval is the child's commit interval (the default).
const crashCommitInterval = time.Second // WithCommitInterval's default

// crashChild is a TestCrashChild process consuming a topic.
type crashChild struct {
	cmd      *exec.Cmd
	out      string // its file of handled records
	exited   chan error
	reaped   bool
	killedAt time.Time
	output   bytes.Buffer // its stdout and stderr: read only once it exited
}

// startCrashChild starts TestCrashChild consuming topic in group, with the
// extra environment variables env ("NAME=value"). A cleanup kills it if
// the test did not, and shows its output if the test failed.
func startCrashChild(t *testing.T, c *kafkatest.Cluster, topic, group string, env ...string) *crashChild {
	t.Helper()
	ch := &crashChild{out: filepath.Join(t.TempDir(), "handled"), exited: make(chan error, 1)}
	ch.cmd = exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1", "-test.timeout=5m")
	ch.cmd.Env = append(os.Environ(),
		crashChildEnv+"=1", crashTopicEnv+"="+topic, crashGroupEnv+"="+group, crashOutEnv+"="+ch.out,
		"KAFKA_BROKERS="+c.Bootstrap())
	ch.cmd.Env = append(ch.cmd.Env, env...)
	ch.cmd.Stdout, ch.cmd.Stderr = &ch.output, &ch.output
	require.NoError(t, ch.cmd.Start())
	go func() { ch.exited <- ch.cmd.Wait() }()
	t.Cleanup(func() {
		if !ch.reaped {
			_ = ch.cmd.Process.Kill()
			<-ch.exited
			ch.reaped = true
		}
		if t.Failed() {
			t.Logf("child output:\n%s", ch.output.String())
		}
	})
	return ch
}

// alive fails the test if the child exited.
func (ch *crashChild) alive(t *testing.T) {
	t.Helper()
	select {
	case err := <-ch.exited:
		ch.reaped = true
		t.Fatalf("the child exited early: %v\n%s", err, ch.output.String())
	default:
	}
}

// handled returns how many records the child has written as handled.
func (ch *crashChild) handled() int {
	data, _ := os.ReadFile(ch.out)
	return bytes.Count(data, []byte("\n"))
}

// kill SIGKILLs the child and checks that it died of it.
func (ch *crashChild) kill(t *testing.T) {
	t.Helper()
	ch.killedAt = time.Now()
	require.NoError(t, ch.cmd.Process.Signal(syscall.SIGKILL))
	err := <-ch.exited
	ch.reaped = true
	var exitErr *exec.ExitError
	require.ErrorAs(t, err, &exitErr, "the child did not die of the kill")
	status, ok := exitErr.Sys().(syscall.WaitStatus)
	require.True(t, ok && status.Signaled() && status.Signal() == syscall.SIGKILL, "the child ended with %v", err)
}

// committedOffset is a partition's committed offset with its metadata,
// decoded as an offset map.
type committedOffset struct {
	offset   int64
	runs     []offsetmap.Run // finished offsets above offset
	metadata int             // bytes of metadata
}

// marks reports whether the offset map marks o finished.
func (co committedOffset) marks(o int64) bool {
	for _, r := range co.runs {
		if r.From <= o && o < r.To {
			return true
		}
	}
	return false
}

// covers reports whether the next owner skips o: below the committed
// offset, or marked by its map.
func (co committedOffset) covers(o int64) bool { return o < co.offset || co.marks(o) }

// marked returns how many offsets below end the map marks finished.
func (co committedOffset) marked(end int64) int {
	n := 0
	for _, r := range co.runs {
		if r.From < end {
			n += int(min(r.To, end) - r.From)
		}
	}
	return n
}

// committedMaps reads group's committed offsets of topic's partitions with
// their metadata, as a new owner does on assign (an OffsetFetch, by a
// confluent-kafka-go consumer of the group that never joins it), and
// decodes the offset maps. Partitions without a committed offset are
// absent.
func committedMaps(t *testing.T, c *kafkatest.Cluster, group, topic string) map[int32]committedOffset {
	t.Helper()
	n, err := c.Partitions(context.Background(), topic)
	require.NoError(t, err)
	consumer, err := ckafka.NewConsumer(c.ConsumerConfig(group))
	require.NoError(t, err)
	defer consumer.Close()
	tps := make([]ckafka.TopicPartition, n)
	for p := range tps {
		tps[p] = ckafka.TopicPartition{Topic: &topic, Partition: int32(p)}
	}
	parts, err := consumer.Committed(tps, 10000)
	require.NoError(t, err)
	out := map[int32]committedOffset{}
	for _, tp := range parts {
		require.NoError(t, tp.Error, "partition %d", tp.Partition)
		if tp.Offset < 0 {
			continue // none committed
		}
		co := committedOffset{offset: int64(tp.Offset)}
		if tp.Metadata != nil && *tp.Metadata != "" {
			co.metadata = len(*tp.Metadata)
			co.runs, err = offsetmap.Decode(co.offset, *tp.Metadata)
			require.NoError(t, err, "partition %d: the committed metadata is not an offset map", tp.Partition)
		}
		out[tp.Partition] = co
	}
	return out
}

// crashOutcome is what a crash test finds once the new member consumed the
// rest: the committed offsets and maps at the kill, what the child finished
// and what the new member redid.
type crashOutcome struct {
	atKill     map[int32]committedOffset
	end        map[int32]int64
	child      map[po]childHandled
	committed  int             // records below the committed offsets
	marked     int             // records the maps marked finished (produced ones)
	rest       []po            // produced, not covered: what the new member handles
	redone     []po            // finished by the child, not covered: handled twice
	ages       []time.Duration // sorted: how long before the kill each of redone was finished
	unfinished int             // produced records the child never finished
	noMap      int             // what the new member would handle without the maps: everything at or past the committed offsets
	newMember  int             // records the new member handled
	skipped    int64           // its FinishedBefore
}

// consumeAfterCrash checks the committed state the killed child left, then
// consumes the rest with a new member of the group and checks that it
// handles exactly the records at or past the committed offsets that their
// maps do not mark, once each, skipping (FinishedBefore) those the maps
// mark; that the maps mark only records the child finished; and that the
// records handled twice are exactly those the child finished past its last
// commit and outside its map.
func consumeAfterCrash(t *testing.T, c *kafkatest.Cluster, group, topic string, produced []kafkatest.Record, ch *crashChild) crashOutcome {
	t.Helper()
	ctx := context.Background()
	out := crashOutcome{atKill: committedMaps(t, c, group, topic), child: readHandled(t, ch.out)}
	var err error
	out.end, err = c.EndOffsets(ctx, topic)
	require.NoError(t, err)
	require.Less(t, len(out.child), len(produced), "the child handled everything before it was killed")

	// The child handled every record below its committed offsets and every
	// record its maps mark (nothing committed unfinished), each once.
	for p, e := range out.end {
		co := out.atKill[p]
		out.committed += int(co.offset)
		out.noMap += int(e - co.offset)
		out.marked += co.marked(e)
		for o := range co.offset {
			if out.child[po{p, o}].count == 0 {
				t.Errorf("the child committed %d@%d without handling it", p, o)
			}
		}
		for _, r := range co.runs {
			if r.From < co.offset || r.To > e {
				t.Errorf("partition %d: the offset map of %d marks [%d, %d), past the produced [0, %d)", p, co.offset, r.From, r.To, e)
			}
			for o := r.From; o < min(r.To, e); o++ {
				if out.child[po{p, o}].count == 0 {
					t.Errorf("partition %d: the offset map of %d marks %d finished, which the child never finished", p, co.offset, o)
				}
			}
		}
	}
	for x, h := range out.child {
		if h.count > 1 {
			t.Errorf("the child handled %s %d times", x, h.count)
		}
		if !out.atKill[x.p].covers(x.o) {
			out.redone = append(out.redone, x)
			out.ages = append(out.ages, ch.killedAt.Sub(h.at))
		}
	}
	slices.Sort(out.ages)
	var rem []kafkatest.Record
	for _, r := range produced {
		x := po{r.Partition, r.Offset}
		if out.child[x].count == 0 {
			out.unfinished++
		}
		if !out.atKill[r.Partition].covers(r.Offset) {
			rem = append(rem, r)
			out.rest = append(out.rest, x)
		}
	}
	assert.Len(t, out.redone, len(out.child)-out.committed-out.marked,
		"redone = handled by the child - committed - marked by the maps")

	// The rest, by a new member of the same group, from the committed
	// offsets and maps.
	rec := newRecorder()
	for p, co := range out.atKill {
		rec.base[p] = co.offset
		rec.baseMaps[p] = co.runs
	}
	m := startMember(t, c, memberSpec{
		name: "after", group: group, topic: topic, observer: rec,
		work:    sleepBetween(0, time.Millisecond),
		options: []parallafka.Option{parallafka.WithMaxConcurrency(16)},
	})
	var last string
	t.Cleanup(func() {
		if t.Failed() && last != "" {
			t.Log(last)
		}
	})
	waitFor(t, waitTimeout, fmt.Sprintf("the new member to handle the %d records left and skip the %d the maps mark", len(rem), out.marked), func() bool {
		n, skipped := rec.distinct(), m.p.Stats().FinishedBefore
		last = fmt.Sprintf("the new member handled %d distinct records of %d left, skipped %d of %d marked", n, len(rem), skipped, out.marked)
		return n >= len(rem) && skipped >= int64(out.marked)
	})
	require.NoError(t, m.stop(t))
	checkCommittedToEnd(t, c, group, topic)
	res := rec.check(t, rem) // exactly rem, each once, each key in order
	assert.Zero(t, res.duplicates, "the new member handled a record twice")
	out.newMember = rec.handledBy("after")
	out.skipped = m.p.Stats().FinishedBefore
	assert.Equal(t, int64(out.marked), out.skipped, "FinishedBefore: the records the maps mark, skipped by the new member")

	// Handled twice: exactly the records the child finished past its last
	// commit, outside the map.
	var twice []po
	for x, n := range rec.counts() {
		if n > 0 && out.child[x].count > 0 {
			twice = append(twice, x)
		}
	}
	assert.ElementsMatch(t, out.redone, twice, "records handled by both the child and the new member")
	return out
}

// TestCrash kills a consuming process hard (SIGKILL) mid-stream, then
// consumes the rest in-process with a new member of the same group. Nothing
// is lost: the child had handled every record below the offsets it
// committed and every record their offset maps mark, and the new member
// handles exactly the others at or past the committed offsets, once,
// skipping the marked ones (FinishedBefore). The records handled twice are
// exactly those the child finished past its last commit (not in its map),
// and each of them was finished within a commit interval (plus a margin)
// of the kill.
func TestCrash(t *testing.T) {
	const messages, partitions, keys = 8000, 3, 60
	const killAfter = 2000         // records handled by the child
	const margin = 3 * time.Second // commit latency and scheduling, generously
	c := kafkatest.New(t)
	topic := newTopic(t, c, partitions)
	group := groupFor(t)
	ctx := context.Background()
	produced, err := keyed.Produce(ctx, c, topic, messages, keys)
	require.NoError(t, err)

	// Kill it once it handled killAfter records and committed something.
	ch := startCrashChild(t, c, topic, group)
	var committedBefore map[int32]int64
	waitFor(t, waitTimeout, fmt.Sprintf("the child to handle %d records and commit", killAfter), func() bool {
		ch.alive(t)
		if ch.handled() < killAfter {
			return false
		}
		committedBefore, err = c.CommittedOffsets(ctx, group, topic)
		require.NoError(t, err)
		return len(committedBefore) > 0
	})
	ch.kill(t)

	out := consumeAfterCrash(t, c, group, topic, produced, ch)
	for p, o := range committedBefore {
		assert.GreaterOrEqual(t, out.atKill[p].offset, o, "committed offsets went backwards")
	}
	oldest := time.Duration(0)
	if len(out.ages) > 0 {
		oldest = out.ages[len(out.ages)-1]
		assert.LessOrEqual(t, oldest, crashCommitInterval+margin,
			"a record finished this long before the kill should have been committed")
	}
	offsets, mapBytes := map[int32]int64{}, 0
	for p, co := range out.atKill {
		offsets[p] = co.offset
		mapBytes += co.metadata
	}
	perPartition := map[int32]int{}
	for x := range out.child {
		perPartition[x.p]++
	}
	t.Logf("crash on the %s: the child handled %d of %d records (per partition %v); committed %v when killed: %d records below, %d more marked finished by the offset maps (%d bytes of metadata)",
		brokerKind(c), len(out.child), messages, perPartition, offsets, out.committed, out.marked, mapBytes)
	t.Logf("  the new member handled %d and skipped %d (FinishedBefore); %d redone (finished past the last commit, at most %v before the kill; bound: commit interval %v + %v); without the maps %d would have been handled again",
		out.newMember, out.skipped, len(out.redone), oldest.Round(time.Millisecond), crashCommitInterval, margin, out.noMap-out.unfinished)
}

type childHandled struct {
	count int
	at    time.Time // when the child finished it (its last time)
}

// readHandled reads the child's file: one "partition offset unixnano" line
// per handled record. A last line without its newline is ignored.
func readHandled(t *testing.T, path string) map[po]childHandled {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	if i := bytes.LastIndexByte(data, '\n'); i >= 0 {
		data = data[:i+1]
	} else {
		data = nil
	}
	out := map[po]childHandled{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		require.Len(t, f, 3, "line %q", sc.Text())
		p, err1 := strconv.ParseInt(f[0], 10, 32)
		o, err2 := strconv.ParseInt(f[1], 10, 64)
		ns, err3 := strconv.ParseInt(f[2], 10, 64)
		require.NoError(t, errors.Join(err1, err2, err3), "line %q", sc.Text())
		x := po{int32(p), o}
		h := out[x]
		h.count++
		h.at = time.Unix(0, ns)
		out[x] = h
	}
	require.NoError(t, sc.Err())
	return out
}

// TestCrashChild is the child process of TestCrash and TestCrashStuckMessage:
// it consumes with Parallafka and appends each handled record to a file
// before its handler returns, until it is killed. The record named by
// PARALLAFKA_CRASH_STUCK, if any, is never handled: its handler blocks.
func TestCrashChild(t *testing.T) {
	if os.Getenv(crashChildEnv) != "1" {
		t.Skip("the child process of the crash tests")
	}
	topic, group, out := os.Getenv(crashTopicEnv), os.Getenv(crashGroupEnv), os.Getenv(crashOutEnv)
	c := kafkatest.New(t) // KAFKA_BROKERS names the parent's broker
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	require.NoError(t, err)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	src, err := newBytesSource(t, c, group, topic, nil, log)
	require.NoError(t, err)
	stuck := po{-1, -1}
	if v := os.Getenv(crashStuckEnv); v != "" {
		_, err := fmt.Sscanf(v, "%d %d", &stuck.p, &stuck.o)
		require.NoError(t, err, "%s=%q", crashStuckEnv, v)
	}
	p, err := parallafka.New(src, parallafka.WithMaxConcurrency(4),
		parallafka.WithCommitInterval(crashCommitInterval), parallafka.WithLogger(log))
	require.NoError(t, err)
	err = p.Consume(context.Background(), func(ctx context.Context, msg *parallafka.Message[string, []byte]) error {
		if msg.Partition == stuck.p && msg.Offset == stuck.o {
			<-ctx.Done() // never, short of a revoke timeout: the kill comes first
			return ctx.Err()
		}
		time.Sleep(time.Millisecond + randDuration(2*time.Millisecond))
		_, err := f.Write(fmt.Appendf(nil, "%d %d %d\n", msg.Partition, msg.Offset, time.Now().UnixNano()))
		return err
	})
	t.Fatalf("Consume returned before the kill: %v", err)
}
