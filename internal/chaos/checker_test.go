package chaos

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parallafka/parallafka/kafka/kafkatest"
)

// TestChecker feeds the checker made-up histories and samples, with no
// broker: a clean one passes, and each kind of fault is reported.
func TestChecker(t *testing.T) {
	base := time.Now().Add(-time.Hour)
	at := func(ms int) int64 { return base.Add(time.Duration(ms) * time.Millisecond).UnixNano() }
	const topic = "t"
	// Partition 0: key-00000 seq 0, 1, 2 at offsets 0, 1, 2; partition 1:
	// key-00001 seq 0 at offset 0.
	produced := []kafkatest.Record{
		{Partition: 0, Offset: 0, Value: kafkatest.KeyedValue(0, 0)},
		{Partition: 0, Offset: 1, Value: kafkatest.KeyedValue(0, 1)},
		{Partition: 0, Offset: 2, Value: kafkatest.KeyedValue(0, 2)},
		{Partition: 1, Offset: 0, Value: kafkatest.KeyedValue(1, 0)},
	}
	line := func(kind, run string, p, o, k, seq, ms int) string {
		return fmt.Sprintf("%s %s m %s %d %d %s %d %d\n", kind, run, topic, p, o, kafkatest.KeyedKey(k), seq, at(ms))
	}
	lost := func(run string, p, ms int) string {
		return fmt.Sprintf("R %s m lost %s %d %d\n", run, topic, p, at(ms))
	}
	clean := line("S", "r1", 0, 0, 0, 0, 0) + line("E", "r1", 0, 0, 0, 0, 10) +
		line("S", "r1", 0, 1, 0, 1, 10) + line("E", "r1", 0, 1, 0, 1, 20) +
		line("S", "r1", 1, 0, 1, 0, 10) + line("E", "r1", 1, 0, 1, 0, 15) +
		line("S", "r1", 0, 2, 0, 2, 20) + line("E", "r1", 0, 2, 0, 2, 30)
	goodSamples := []sample{
		{at: base.Add(12 * time.Millisecond), offsets: map[int32]int64{0: 1}},
		{at: base.Add(40 * time.Millisecond), offsets: map[int32]int64{0: 3, 1: 1}},
	}
	type runSpec struct {
		id      string
		history string
		killed  bool
	}
	cases := []struct {
		name    string
		runs    []runSpec
		samples []sample
		want    []string // substrings of the violations, none if empty
	}{
		{name: "clean", runs: []runSpec{{"r1", clean, false}}, samples: goodSamples},
		{name: "lost", runs: []runSpec{{"r1", line("S", "r1", 0, 0, 0, 0, 0) + line("E", "r1", 0, 0, 0, 0, 10) +
			line("S", "r1", 0, 1, 0, 1, 10) + line("E", "r1", 0, 1, 0, 1, 20) +
			line("S", "r1", 1, 0, 1, 0, 10) + line("E", "r1", 1, 0, 1, 0, 15), false}},
			samples: goodSamples[:1], want: []string{"lost: 0@2"}},
		{name: "order and overlap", runs: []runSpec{{"r1", line("S", "r1", 0, 1, 0, 1, 0) + line("S", "r1", 0, 0, 0, 0, 5) +
			line("E", "r1", 0, 0, 0, 0, 10) + line("E", "r1", 0, 1, 0, 1, 11) +
			line("S", "r1", 1, 0, 1, 0, 10) + line("E", "r1", 1, 0, 1, 0, 15) +
			line("S", "r1", 0, 2, 0, 2, 20) + line("E", "r1", 0, 2, 0, 2, 30), false}},
			want: []string{"per-key order", "key in two handlers at once"}},
		{name: "two members at once", runs: []runSpec{{"r1", clean, false},
			{"r2", line("S", "r2", 0, 2, 0, 2, 25) + line("E", "r2", 0, 2, 0, 2, 35), false}},
			want: []string{"key in two handlers at once", "duplicate after a graceful stop"}},
		{name: "zombie overlap", runs: []runSpec{{"r1", clean + lost("r1", 0, 28), false},
			{"r2", line("S", "r2", 0, 2, 0, 2, 25) + line("E", "r2", 0, 2, 0, 2, 35), false}}},
		{name: "overlap long before the loss", runs: []runSpec{{"r1", clean + lost("r1", 0, 5000), false},
			{"r2", line("S", "r2", 0, 2, 0, 2, 25) + line("E", "r2", 0, 2, 0, 2, 35), false}},
			want: []string{"key in two handlers at once"}},
		{name: "commit past unfinished", runs: []runSpec{{"r1", clean, false}},
			samples: []sample{{at: base.Add(12 * time.Millisecond), offsets: map[int32]int64{0: 2}}},
			want:    []string{"commit past an unfinished message: partition 0 committed at 2"}},
		{name: "backwards", runs: []runSpec{{"r1", clean, false}},
			samples: []sample{goodSamples[1], {at: base.Add(50 * time.Millisecond), offsets: map[int32]int64{0: 2, 1: 1}}},
			want:    []string{"BACKWARDS: partition 0 from 3"}},
		{name: "redo after a kill", runs: []runSpec{{"r1", clean, true},
			{"r2", line("S", "r2", 0, 2, 0, 2, 1000) + line("E", "r2", 0, 2, 0, 2, 1010), false}},
			samples: goodSamples[:1]},
		{name: "redo below the committed offset", runs: []runSpec{{"r1", clean, true},
			{"r2", line("S", "r2", 0, 0, 0, 0, 1000) + line("E", "r2", 0, 0, 0, 0, 1005) +
				line("S", "r2", 0, 1, 0, 1, 1005) + line("E", "r2", 0, 1, 0, 1, 1010), false}},
			samples: goodSamples[:1], want: []string{"redone below the committed offset: 0@0"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			r := &chaosRun{t: t, topic: topic, produced: produced, samples: tc.samples, runs: map[string]*memberRun{}}
			for _, rs := range tc.runs {
				m := &memberRun{id: rs.id, history: filepath.Join(dir, rs.id), exited: make(chan struct{}), exitAt: base.Add(time.Second)}
				close(m.exited)
				if rs.killed {
					m.killed, m.killAt, m.killCommitted = true, base.Add(500*time.Millisecond), map[int32]int64{0: 1}
				}
				if err := os.WriteFile(m.history, []byte(rs.history), 0o644); err != nil {
					t.Fatal(err)
				}
				r.runs[m.id] = m
				r.order = append(r.order, m)
			}
			r.check()
			got := strings.Join(r.violations, "\n")
			if len(tc.want) == 0 && got != "" {
				t.Errorf("violations reported:\n%s", got)
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("no violation %q among:\n%s", w, got)
				}
			}
			if tc.name == "zombie overlap" && (r.fig.overlapLost != 1 || r.fig.dupLost != 1) {
				t.Errorf("figures %+v, want 1 overlap and 1 duplicate after a loss", r.fig)
			}
			if tc.name == "redo after a kill" && (r.fig.dupKill != 1 || r.fig.maxRedo != 1 || r.fig.maxUncommitted != 3) {
				t.Errorf("figures %+v, want 1 duplicate by kill, max redo 1, max uncommitted 3", r.fig)
			}
		})
	}
}
