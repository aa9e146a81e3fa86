package engine

import (
	"math/rand/v2"
	"slices"
	"testing"
)

func popAll(r *ready[string, string]) []uint64 {
	var seqs []uint64
	for r.len() > 0 {
		seqs = append(seqs, r.pop(noBacklog).seq)
	}
	return seqs
}

// TestReadyOldestFirst mixes fresh messages (in seq order) with ones that
// became ready later (any age): pop always returns the lowest seq.
func TestReadyOldestFirst(t *testing.T) {
	tests := []struct {
		name  string
		fresh []uint64
		later []uint64
	}{
		{"empty", nil, nil},
		{"fresh only", []uint64{1, 2, 3, 7}, nil},
		{"later only", nil, []uint64{9, 3, 5, 1, 4}},
		{"later older than fresh", []uint64{10, 11, 12}, []uint64{4, 2, 3}},
		{"interleaved", []uint64{2, 4, 6, 8}, []uint64{7, 1, 5, 3}},
		{"later newer than fresh", []uint64{1, 2}, []uint64{20, 10}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var r ready[string, string]
			for _, s := range tc.fresh {
				r.pushFresh(entry[string, string]{seq: s})
			}
			for _, s := range tc.later {
				r.pushLater(entry[string, string]{seq: s})
			}
			if got := r.len(); got != len(tc.fresh)+len(tc.later) {
				t.Fatalf("len() = %d", got)
			}
			want := slices.Sorted(slices.Values(slices.Concat(tc.fresh, tc.later)))
			if got := popAll(&r); !slices.Equal(got, want) {
				t.Fatalf("popped %v; want %v", got, want)
			}
		})
	}
}

// TestReadyRandom drives the set as the coordinator does: every message
// gets the next seq when it is routed and is pushed fresh, or held (queued
// behind its key) and pushed later; a popped one may come back later (a
// retry); now and then a filter drops some. Every pop must return the
// minimum of what is in the set, across the FIFO's compaction (> 1024).
func TestReadyRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	var r ready[string, string]
	in := map[uint64]bool{}
	var held []uint64 // routed, queued behind a key
	next := uint64(0)
	for step := range 30000 {
		switch n := rng.IntN(20); {
		case n < 8:
			next++
			r.pushFresh(entry[string, string]{seq: next})
			in[next] = true
		case n < 10:
			next++
			held = append(held, next)
		case n < 12 && len(held) > 0:
			i := rng.IntN(len(held))
			s := held[i]
			held = slices.Delete(held, i, i+1)
			r.pushLater(entry[string, string]{seq: s})
			in[s] = true
		case n == 12:
			mod := uint64(2 + rng.IntN(5))
			r.filter(func(e entry[string, string]) bool { return e.seq%mod != 0 })
			for s := range in {
				if s%mod == 0 {
					delete(in, s)
				}
			}
		default:
			if r.len() == 0 {
				continue
			}
			want := uint64(0)
			for s := range in {
				if want == 0 || s < want {
					want = s
				}
			}
			if got := r.pop(noBacklog).seq; got != want {
				t.Fatalf("step %d: pop() = %d; want %d", step, got, want)
			}
			delete(in, want)
			if rng.IntN(4) == 0 { // a retry: back with its own seq
				r.pushLater(entry[string, string]{seq: want})
				in[want] = true
			}
		}
		if r.len() != len(in) {
			t.Fatalf("step %d: len() = %d; want %d", step, r.len(), len(in))
		}
	}
}

// TestReadyFilter keeps some messages of both kinds; what stays pops in
// seq order, and the set keeps working afterwards.
func TestReadyFilter(t *testing.T) {
	var r ready[string, string]
	for s := uint64(1); s <= 40; s += 2 {
		r.pushFresh(entry[string, string]{seq: s})
	}
	r.pop(noBacklog) // the FIFO's head moved: filter must start from it
	for _, s := range []uint64{30, 2, 18, 6, 40, 14, 10, 22, 26, 38, 34} {
		r.pushLater(entry[string, string]{seq: s})
	}
	r.filter(func(e entry[string, string]) bool { return e.seq%3 != 0 })
	r.pushFresh(entry[string, string]{seq: 41})
	r.pushLater(entry[string, string]{seq: 4})
	var want []uint64
	for s := uint64(3); s <= 41; s += 2 {
		if s%3 != 0 || s == 41 {
			want = append(want, s)
		}
	}
	for _, s := range []uint64{30, 2, 18, 6, 40, 14, 10, 22, 26, 38, 34, 4} {
		if s%3 != 0 || s == 4 {
			want = append(want, s)
		}
	}
	slices.Sort(want)
	if got := popAll(&r); !slices.Equal(got, want) {
		t.Fatalf("popped %v; want %v", got, want)
	}
}

func noBacklog(*entry[string, string]) int { return 0 }
