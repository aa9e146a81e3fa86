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

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/parallafka/parallafka"
	"github.com/parallafka/parallafka/kafka"
	"github.com/parallafka/parallafka/kafka/kafkatest"
)

// The crash test re-executes the test binary as its child process, which
// runs TestCrashChild with these variables set.
const (
	crashChildEnv = "PARALLAFKA_CRASH_CHILD" // "1" in the child
	crashTopicEnv = "PARALLAFKA_CRASH_TOPIC"
	crashGroupEnv = "PARALLAFKA_CRASH_GROUP"
	crashOutEnv   = "PARALLAFKA_CRASH_OUT" // file of handled records
)

// crashCommitInterval is the child's commit interval (the default).
const crashCommitInterval = parallafka.DefaultCommitInterval

// TestCrash kills a consuming process hard (SIGKILL) mid-stream, then
// consumes the rest in-process with a new member of the same group. Nothing
// is lost: the child had handled every record below the offsets it
// committed, and the new member starts exactly there. The records handled
// twice are exactly those the child finished past its last commit, and each
// of them was finished within a commit interval (plus a margin) of the kill.
func TestCrash(t *testing.T) {
	const messages, partitions, keys = 8000, 3, 60
	const killAfter = 2000         // records handled by the child
	const margin = 3 * time.Second // commit latency and scheduling, generously
	c := kafkatest.New(t)
	topic := newTopic(t, c, partitions)
	group := groupFor(t)
	ctx := context.Background()
	produced, err := c.ProduceKeyed(ctx, topic, messages, keys)
	require.NoError(t, err)

	out := filepath.Join(t.TempDir(), "handled")
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1", "-test.timeout=5m")
	cmd.Env = append(os.Environ(),
		crashChildEnv+"=1", crashTopicEnv+"="+topic, crashGroupEnv+"="+group, crashOutEnv+"="+out,
		kafkatest.BrokersEnv+"="+c.Bootstrap())
	var childOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &childOut, &childOut
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	reaped := false
	t.Cleanup(func() {
		if !reaped {
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("child output:\n%s", childOut.String())
		}
	})

	// Kill it once it handled killAfter records and committed something.
	var committedBefore map[int32]int64
	waitFor(t, waitTimeout, fmt.Sprintf("the child to handle %d records and commit", killAfter), func() bool {
		select {
		case err := <-exited:
			reaped = true
			t.Fatalf("the child exited early: %v\n%s", err, childOut.String())
		default:
		}
		data, _ := os.ReadFile(out)
		if bytes.Count(data, []byte("\n")) < killAfter {
			return false
		}
		committedBefore, err = c.CommittedOffsets(ctx, group, topic)
		require.NoError(t, err)
		return len(committedBefore) > 0
	})
	killedAt := time.Now()
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	err = <-exited
	reaped = true
	var exitErr *exec.ExitError
	require.ErrorAs(t, err, &exitErr, "the child did not die of the kill")
	status, ok := exitErr.Sys().(syscall.WaitStatus)
	require.True(t, ok && status.Signaled() && status.Signal() == syscall.SIGKILL, "the child ended with %v", err)

	atKill, err := c.CommittedOffsets(ctx, group, topic)
	require.NoError(t, err)
	child := readHandled(t, out)
	require.Less(t, len(child), messages, "the child handled everything before it was killed")

	// The rest, by a new member of the same group.
	rec := newRecorder()
	for p, o := range atKill {
		rec.base[p] = o
	}
	m := startMember(t, c, memberSpec{
		name: "after", group: group, topic: topic, observer: rec,
		work:    sleepBetween(0, time.Millisecond),
		options: []parallafka.Option{parallafka.WithMaxConcurrency(16)},
	})
	end, err := c.EndOffsets(ctx, topic)
	require.NoError(t, err)
	rest := 0
	for p, e := range end {
		rest += int(e - atKill[p])
	}
	waitFor(t, waitTimeout, "the new member to handle the rest", func() bool { return rec.distinct() == rest })
	require.NoError(t, m.stop(t))
	checkCommittedToEnd(t, c, group, topic)

	// The new member handled exactly [committed at the kill, end) of each
	// partition, once: check with the recorder, against those records.
	var rem []kafkatest.Record
	for _, r := range produced {
		if r.Offset >= atKill[r.Partition] {
			rem = append(rem, r)
		}
	}
	res := rec.check(t, rem)
	assert.Zero(t, res.duplicates, "the new member handled a record twice")

	// The child handled every record below its committed offsets (nothing
	// committed unhandled), each once; the records it handled at or past
	// them are the ones redone.
	committedTotal := 0
	for p := range int32(partitions) {
		committedTotal += int(atKill[p])
		for o := range atKill[p] {
			if child[po{p, o}].count == 0 {
				t.Errorf("the child committed %d@%d without handling it", p, o)
			}
		}
	}
	var redone []time.Duration // how long before the kill each was finished
	for x, h := range child {
		if h.count > 1 {
			t.Errorf("the child handled %s %d times", x, h.count)
		}
		if x.o >= atKill[x.p] {
			redone = append(redone, killedAt.Sub(h.at))
		}
	}
	slices.Sort(redone)
	assert.Len(t, redone, len(child)-committedTotal, "redone = handled by the child - committed")
	if len(redone) > 0 {
		assert.LessOrEqual(t, redone[len(redone)-1], crashCommitInterval+margin,
			"a record finished this long before the kill should have been committed")
	}
	for p, o := range committedBefore {
		assert.GreaterOrEqual(t, atKill[p], o, "committed offsets went backwards")
	}
	oldest := time.Duration(0)
	if len(redone) > 0 {
		oldest = redone[len(redone)-1]
	}
	t.Logf("crash on the %s: the child handled %d of %d records and had committed %d (%v) when killed; %d redone after the kill (finished at most %v before it; bound: commit interval %v + %v); the new member handled %d",
		brokerKind(c), len(child), messages, committedTotal, atKill, len(redone), oldest.Round(time.Millisecond),
		crashCommitInterval, margin, rec.handledBy("after"))
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

// TestCrashChild is the child process of TestCrash: it consumes with
// Parallafka and appends each handled record to a file before its handler
// returns, until it is killed.
func TestCrashChild(t *testing.T) {
	if os.Getenv(crashChildEnv) != "1" {
		t.Skip("the child process of TestCrash")
	}
	topic, group, out := os.Getenv(crashTopicEnv), os.Getenv(crashGroupEnv), os.Getenv(crashOutEnv)
	c := kafkatest.New(t) // KAFKA_BROKERS names the parent's broker
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	require.NoError(t, err)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	consumer, err := kafka.NewConsumer(c.ConsumerConfig(group), kafka.WithLogger(log))
	require.NoError(t, err)
	src, err := kafka.NewSource(consumer, []string{topic}, kafka.String, kafka.Bytes, kafka.WithLogger(log))
	require.NoError(t, err)
	p, err := parallafka.New(src, parallafka.WithMaxConcurrency(4),
		parallafka.WithCommitInterval(crashCommitInterval), parallafka.WithLogger(log))
	require.NoError(t, err)
	err = p.Consume(context.Background(), func(ctx context.Context, msg *parallafka.Message[string, []byte]) error {
		time.Sleep(time.Millisecond + randDuration(2*time.Millisecond))
		_, err := f.Write(fmt.Appendf(nil, "%d %d %d\n", msg.Partition, msg.Offset, time.Now().UnixNano()))
		return err
	})
	t.Fatalf("Consume returned before the kill: %v", err)
}
