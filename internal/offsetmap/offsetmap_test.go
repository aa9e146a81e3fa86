package offsetmap

import (
	"bytes"
	"compress/flate"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// runsOf returns the runs of finished offsets above base, where finished[i]
// tells whether offset base+1+i finished.
func runsOf(base int64, finished []bool) []Run {
	var runs []Run
	open := false
	for i, f := range finished {
		off := base + 1 + int64(i)
		switch {
		case f && !open:
			runs = append(runs, Run{From: off})
			open = true
		case !f && open:
			runs[len(runs)-1].To = off
			open = false
		}
	}
	if open {
		runs[len(runs)-1].To = base + 1 + int64(len(finished))
	}
	return runs
}

// validRuns reports why runs are not what Encode accepts and Decode
// returns for base: sorted, disjoint, non-empty, not adjacent and above
// base; "" when they are.
func validRuns(base int64, runs []Run) string {
	if base < 0 && len(runs) > 0 {
		return "negative base"
	}
	prev := base
	for i, r := range runs {
		switch {
		case r.From >= r.To:
			return fmt.Sprintf("run %d %v is empty", i, r)
		case r.From <= prev:
			return fmt.Sprintf("run %d %v starts at or below %d", i, r, prev)
		}
		prev = r.To
	}
	return ""
}

func count(runs []Run) (n int64) {
	for _, r := range runs {
		n += r.To - r.From
	}
	return n
}

// roundTrip encodes runs in maxBytes and checks what Encode promises:
// the text fits, decodes to runs[:kept], and kept is the end of the prefix
// Encode's search settled on (runs[:kept+1] does not fit).
func roundTrip(t testing.TB, base int64, runs []Run, maxBytes int) (string, int) {
	t.Helper()
	text, kept := Encode(base, runs, maxBytes)
	if len(text) > maxBytes {
		t.Fatalf("len(text) = %d > maxBytes %d", len(text), maxBytes)
	}
	if kept < 0 || kept > len(runs) {
		t.Fatalf("kept = %d of %d runs", kept, len(runs))
	}
	if (text == "") != (kept == 0) {
		t.Fatalf("text %q with kept = %d", text, kept)
	}
	got, err := Decode(base, text)
	if err != nil {
		t.Fatalf("Decode(%d, %q): %v", base, text, err)
	}
	if !equalRuns(got, runs[:kept]) {
		t.Fatalf("Decode = %v; want runs[:%d] = %v", got, kept, runs[:kept])
	}
	if kept < len(runs) {
		if _, k := Encode(base, runs[:kept+1], maxBytes); k > kept {
			t.Fatalf("kept %d runs in %d bytes, but runs[:%d] fit", kept, maxBytes, k)
		}
	}
	return text, kept
}

// equalRuns: runs compare as sets of offsets too, since both sides are
// merged (not adjacent); equal to a prefix of the input means a subset.
func equalRuns(a, b []Run) bool { return slices.Equal(a, b) }

func randomRuns(rng *rand.Rand, base int64, n int, maxGap, maxLen int64) []Run {
	runs := make([]Run, 0, n)
	prev := base
	for range n {
		from := prev + 1 + rng.Int64N(maxGap)
		to := from + 1 + rng.Int64N(maxLen)
		runs = append(runs, Run{from, to})
		prev = to
	}
	return runs
}

func compressed(t testing.TB, text string) bool {
	t.Helper()
	p, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(text, prefix))
	require.NoError(t, err)
	return p[0]&flagDeflate != 0
}

func TestRoundTrip(t *testing.T) {
	const max = math.MaxInt64
	rng := rand.New(rand.NewPCG(1, 2))
	tests := []struct {
		name string
		base int64
		runs []Run
	}{
		{"one run", 10, []Run{{11, 12}}},
		{"base 0", 0, []Run{{1, 2}}},
		{"base 0 gap", 0, []Run{{5, 9}, {100, 1000}}},
		{"two runs", 100, []Run{{102, 105}, {107, 108}}},
		{"long run", 0, []Run{{1, max}}},
		{"huge gap", 0, []Run{{1, 2}, {max - 1, max}}},
		{"near max", max - 10, []Run{{max - 8, max - 6}, {max - 3, max}}},
		{"last offset", max - 2, []Run{{max - 1, max}}},
		{"varint boundaries", 127, []Run{{128, 256}, {256 + 128, 256 + 128 + 1<<14}}},
		{"many runs", 1_000_000, randomRuns(rng, 1_000_000, 1000, 50, 50)},
		{"many big runs", 1 << 40, randomRuns(rng, 1<<40, 300, 1<<30, 1<<30)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Empty(t, validRuns(tt.base, tt.runs))
			text, kept := roundTrip(t, tt.base, tt.runs, 1<<20)
			require.Equal(t, len(tt.runs), kept)
			require.True(t, strings.HasPrefix(text, prefix))
			require.False(t, compressed(t, text), "the raw text fits: no compression")
			for _, c := range text {
				require.True(t, c < 0x80 && (c == ':' || c == '-' || c == '_' ||
					'0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'), "character %q", c)
			}
		})
	}
	t.Run("empty", func(t *testing.T) {
		text, kept := Encode(5, nil, 4096)
		require.Equal(t, "", text)
		require.Equal(t, 0, kept)
		runs, err := Decode(5, "")
		require.NoError(t, err)
		require.Nil(t, runs)
	})
	t.Run("no runs in the body", func(t *testing.T) {
		runs, err := Decode(7, pack(flagRaw, binary.AppendUvarint(nil, 7)))
		require.NoError(t, err)
		require.Empty(t, runs)
	})
	t.Run("compressed", func(t *testing.T) {
		runs := runsOf(0, every(20_000, 7))
		text, kept := roundTrip(t, 0, runs, 4096)
		require.Equal(t, len(runs), kept)
		require.True(t, compressed(t, text))
	})
}

// every returns n offsets of which every k-th did not finish.
func every(n, k int) []bool {
	f := make([]bool, n)
	for i := range f {
		f[i] = (i+1)%k != 0
	}
	return f
}

func randomFinished(rng *rand.Rand, n int, unfinished float64) []bool {
	f := make([]bool, n)
	for i := range f {
		f[i] = rng.Float64() >= unfinished
	}
	return f
}

func TestEncodeInvalid(t *testing.T) {
	tests := []struct {
		name string
		base int64
		runs []Run
	}{
		{"negative base", -1, []Run{{1, 2}}},
		{"at base", 10, []Run{{10, 12}}},
		{"below base", 10, []Run{{5, 12}}},
		{"empty run", 10, []Run{{11, 11}}},
		{"reversed run", 10, []Run{{13, 11}}},
		{"adjacent", 10, []Run{{11, 13}, {13, 15}}},
		{"overlapping", 10, []Run{{11, 14}, {13, 15}}},
		{"unsorted", 10, []Run{{20, 22}, {11, 13}}},
		{"bad late run", 10, []Run{{11, 12}, {14, 15}, {17, 16}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.NotEmpty(t, validRuns(tt.base, tt.runs))
			text, kept := Encode(tt.base, tt.runs, 4096)
			require.Equal(t, "", text)
			require.Equal(t, 0, kept)
		})
	}
}

func TestTruncation(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	t.Run("raw", func(t *testing.T) {
		runs := randomRuns(rng, 1000, 50, 300, 300)
		full, _ := Encode(1000, runs, 1<<20)
		last := -1
		for maxBytes := 0; maxBytes <= len(full); maxBytes++ {
			_, kept := roundTrip(t, 1000, runs, maxBytes)
			last = kept
			if maxBytes < minText {
				require.Zero(t, kept)
			}
		}
		require.Equal(t, len(runs), last)
	})
	t.Run("compressed", func(t *testing.T) {
		// Repetitive runs compress well: the cut comes far beyond what raw
		// text would hold.
		runs := runsOf(0, every(200_000, 7))
		for _, maxBytes := range []int{15, 20, 30, 40, 60, 100, 200, 500} {
			text, kept := roundTrip(t, 0, runs, maxBytes)
			t.Logf("maxBytes %d: kept %d of %d runs in %d bytes, compressed %v", maxBytes, kept, len(runs), len(text), kept > 0 && compressed(t, text))
		}
	})
	t.Run("random compressed", func(t *testing.T) {
		runs := runsOf(0, randomFinished(rng, 100_000, 0.13))
		for _, maxBytes := range []int{500, 1000, 4096, 10_000} {
			text, kept := roundTrip(t, 0, runs, maxBytes)
			require.Less(t, kept, len(runs))
			t.Logf("maxBytes %d: kept %d of %d runs in %d bytes", maxBytes, kept, len(runs), len(text))
		}
	})
	t.Run("huge base", func(t *testing.T) {
		// The base alone takes 9 bytes: no raw text fits in 18 bytes, not
		// even one without runs (found by FuzzRoundTrip).
		const base = math.MaxInt64 - 100
		runs := []Run{{base + 1, base + 2}}
		for maxBytes := 0; maxBytes <= 40; maxBytes++ {
			roundTrip(t, base, runs, maxBytes)
		}
		text, kept := Encode(base, runs, 18)
		require.Equal(t, "", text)
		require.Zero(t, kept)
	})
	t.Run("body limit", func(t *testing.T) {
		// 600,000 one-offset runs a gap of one apart: a body of 1.2 MB,
		// which compresses into a few hundred bytes, but Decode accepts at
		// most maxBody, so Encode writes no more.
		runs := make([]Run, 600_000)
		for i := range runs {
			runs[i] = Run{int64(2*i + 2), int64(2*i + 3)}
		}
		text, kept := roundTrip(t, 0, runs, 4096)
		require.Equal(t, (maxBody-1)/2, kept)
		t.Logf("kept %d of %d runs in %d bytes", kept, len(runs), len(text))
	})
}

// TestRealistic: 20,000 offsets polled above the committed one, of which
// every 7th, or a random 13%, did not finish yet, in Kafka's default
// metadata limit.
func TestRealistic(t *testing.T) {
	const base, n, maxBytes = 5_000_000, 20_000, 4096
	rng := rand.New(rand.NewPCG(5, 6))
	for _, tt := range []struct {
		name     string
		finished []bool
	}{
		{"every 7th unfinished", every(n, 7)},
		{"random 13% unfinished", randomFinished(rng, n, 0.13)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			runs := runsOf(base, tt.finished)
			rawText, _ := Encode(base, runs, math.MaxInt32)
			text, kept := roundTrip(t, base, runs, maxBytes)
			t.Logf("%d runs, %d finished offsets (raw text %d bytes): kept %d runs, %d offsets, in %d bytes (compressed %v)",
				len(runs), count(runs), len(rawText), kept, count(runs[:kept]), len(text), compressed(t, text))
			require.Equal(t, len(runs), kept, "the whole map fits")
		})
	}
}

// TestConcurrent: Encode and Decode share pooled buffers and compressors
// safely (run with -race).
func TestConcurrent(t *testing.T) {
	maps := [][]Run{
		{{11, 12}},
		randomRuns(rand.New(rand.NewPCG(13, 14)), 10, 200, 20, 20),
		runsOf(10, every(20_000, 7)),
		runsOf(10, randomFinished(rand.New(rand.NewPCG(15, 16)), 30_000, 0.13)),
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := range 4 {
		wg.Go(func() {
			for i := range 40 {
				runs := maps[(g+i)%len(maps)]
				maxBytes := []int{4096, 300, 1000}[i%3]
				text, kept := Encode(10, runs, maxBytes)
				got, err := Decode(10, text)
				if err != nil || len(text) > maxBytes || !equalRuns(got, runs[:kept]) {
					errs <- fmt.Errorf("map %d in %d bytes: kept %d, %d bytes, decoded %d runs, %v", (g+i)%len(maps), maxBytes, kept, len(text), len(got), err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// pack returns the text of a payload with the given flags and body, the
// body compressed when flags is flagDeflate.
func pack(flags byte, body []byte) string {
	data := body
	if flags&flagDeflate != 0 {
		var buf bytes.Buffer
		w, _ := flate.NewWriter(&buf, flate.BestSpeed)
		w.Write(body)
		w.Close()
		data = buf.Bytes()
	}
	return packData(flags, data, crc32.ChecksumIEEE(body))
}

func packData(flags byte, data []byte, sum uint32) string {
	p := append([]byte{flags}, data...)
	p = binary.BigEndian.AppendUint32(p, sum)
	return prefix + base64.RawURLEncoding.EncodeToString(p)
}

func body(base uint64, pairs ...uint64) []byte {
	b := binary.AppendUvarint(nil, base)
	for _, v := range pairs {
		b = binary.AppendUvarint(b, v)
	}
	return b
}

func TestDecodeErrors(t *testing.T) {
	const base = 1000
	runs := []Run{{1002, 1010}, {1020, 1021}, {1500, 1600}}
	raw, kept := Encode(base, runs, 4096)
	require.Equal(t, 3, kept)
	big := runsOf(base, every(20_000, 7))
	comp, kept := Encode(base, big, 300)
	require.Positive(t, kept)
	require.True(t, compressed(t, comp))

	t.Run("foreign", func(t *testing.T) {
		for _, text := range []string{
			"hello",
			// Confluent's Parallel Consumer: base64 of its own binary map.
			"bAIAAAAAAAAAAQAAAAAAAAAAAAAAPHKAaMmuKnp4",
			"eJxjYGBgYGQAAAAjAAQ=",
			`{"offsets":[1002,1003],"base":1000}`,
			"pk1",
			"PK1:AAAA",
			"pk2:" + strings.TrimPrefix(raw, prefix),
			" " + raw,
		} {
			_, err := Decode(base, text)
			require.ErrorIs(t, err, ErrForeign, "%q", text)
		}
	})
	t.Run("flipped character", func(t *testing.T) {
		harmless := 0
		for _, text := range []string{raw, comp} {
			want, err := Decode(base, text)
			require.NoError(t, err)
			for i := len(prefix); i < len(text); i++ {
				for _, c := range []byte{'A', 'B', 'z', '-', '_', '0', '=', '\n', '.', 0x80} {
					if text[i] == c {
						continue
					}
					bad := text[:i] + string([]byte{c}) + text[i+1:]
					got, err := Decode(base, bad)
					if err == nil && text == comp && equalRuns(got, want) {
						// DEFLATE ignores some bits (those that pad a stored
						// block's header to a byte, those after the final
						// block): flipping them changes nothing.
						harmless++
						continue
					}
					require.ErrorIs(t, err, ErrCorrupt, "%q at %d of %q", c, i, text)
				}
			}
		}
		t.Logf("%d flips of ignored DEFLATE bits", harmless)
	})
	t.Run("truncated and extended", func(t *testing.T) {
		for _, text := range []string{raw, comp} {
			for i := len(prefix); i < len(text); i++ {
				_, err := Decode(base, text[:i])
				require.ErrorIs(t, err, ErrCorrupt, "text[:%d] of %q", i, text)
			}
			for _, tail := range []string{"A", "AA", "AAAA", "\n", "\r\n", "="} {
				_, err := Decode(base, text+tail)
				require.ErrorIs(t, err, ErrCorrupt, "%q + %q", text, tail)
			}
		}
	})
	t.Run("stale", func(t *testing.T) {
		for _, text := range []string{raw, comp} {
			for _, b := range []int64{0, base - 1, base + 1, 1010, -1, math.MaxInt64} {
				_, err := Decode(b, text)
				require.ErrorIs(t, err, ErrStale, "base %d", b)
			}
		}
	})
	t.Run("crafted", func(t *testing.T) {
		const max = math.MaxInt64
		bomb := make([]byte, maxBody+1)
		for _, tt := range []struct {
			name string
			text string
		}{
			{"too short", packData(flagRaw, nil, 0)},
			{"unknown flags", pack(2, body(base, 0, 0))},
			{"bad checksum", packData(flagRaw, body(base, 0, 0), 1)},
			{"base overflow", pack(flagRaw, body(max+1))},
			{"truncated varint", pack(flagRaw, append(body(base, 0), 0x80))},
			{"half a run", pack(flagRaw, body(base, 0))},
			{"from overflow", pack(flagRaw, body(base, max-base-1, 0))},
			{"to overflow", pack(flagRaw, body(base, 0, max-base-1))},
			{"later overflow", pack(flagRaw, body(base, 0, 0, max/2, 0, max/2, 0))},
			{"huge gap", pack(flagRaw, body(base, math.MaxUint64, 0))},
			{"huge length", pack(flagRaw, body(base, 0, math.MaxUint64))},
			{"raw body too large", pack(flagRaw, append(body(base), bomb...))},
			{"bomb", pack(flagDeflate, append(body(base), bomb...))},
			{"not deflate", packData(flagDeflate, body(base, 0, 0), crc32.ChecksumIEEE(body(base, 0, 0)))},
			{"after the stream", func() string {
				b := body(base, 0, 0)
				var buf bytes.Buffer
				w, _ := flate.NewWriter(&buf, flate.BestSpeed)
				w.Write(b)
				w.Close()
				return packData(flagDeflate, append(buf.Bytes(), 0), crc32.ChecksumIEEE(b))
			}()},
			{"bad base64", prefix + "!!!!!!!!!!!"},
			{"too long", prefix + strings.Repeat("A", base64.RawURLEncoding.EncodedLen(maxPayload)+1)},
		} {
			t.Run(tt.name, func(t *testing.T) {
				_, err := Decode(base, tt.text)
				require.ErrorIs(t, err, ErrCorrupt)
				t.Log(err)
			})
		}
		// The largest offsets do decode.
		got, err := Decode(base, pack(flagRaw, body(base, max-base-2, 0)))
		require.NoError(t, err)
		require.Equal(t, []Run{{max - 1, max}}, got)
		got, err = Decode(base, pack(flagRaw, body(base, 0, max-base-2)))
		require.NoError(t, err)
		require.Equal(t, []Run{{base + 1, max}}, got)
		// So does a compressed body of exactly maxBody.
		b := append(body(base), make([]byte, maxBody-len(body(base)))...)
		got, err = Decode(base, pack(flagDeflate, b))
		require.NoError(t, err)
		require.Len(t, got, (maxBody-len(body(base)))/2)
	})
	t.Run("errors", func(t *testing.T) {
		for _, err := range []error{ErrForeign, ErrCorrupt, ErrStale} {
			require.True(t, strings.HasPrefix(err.Error(), "offsetmap: "), err.Error())
		}
		require.False(t, errors.Is(ErrCorrupt, ErrForeign))
	})
}

// fuzzRuns builds runs above base from data: each pair of bytes is a gap
// and a length, small or, for bytes from 0xf0, a power of 16 up to 2^60,
// so that offsets get near math.MaxInt64 too. It stops before overflow.
func fuzzRuns(base int64, data []byte) []Run {
	size := func(b byte) int64 {
		if b >= 0xf0 {
			return 1 << (4 * int64(b-0xef)) // 2^4 .. 2^64, which is 0: stops
		}
		return int64(b) + 1
	}
	var runs []Run
	prev := base
	for i := 0; i+1 < len(data); i += 2 {
		gap, length := size(data[i]), size(data[i+1])
		if gap <= 0 || length <= 0 || gap >= math.MaxInt64-prev || length > math.MaxInt64-prev-gap {
			break
		}
		from := prev + gap
		runs = append(runs, Run{from, from + length})
		prev = from + length
	}
	return runs
}

func FuzzRoundTrip(f *testing.F) {
	f.Add(int64(0), []byte{0, 0}, uint16(4096), false)
	f.Add(int64(1000), []byte{1, 5, 0, 0, 3, 200, 0xff, 0xff}, uint16(40), false)
	f.Add(int64(math.MaxInt64-100), []byte{1, 2, 3, 4}, uint16(100), false)
	f.Add(int64(-5), []byte{1, 2}, uint16(100), false)
	// Small maps in small limits reach the compressed and cut paths while
	// the fuzzer stays fast (TestTruncation and TestRealistic cover the
	// big maps).
	f.Add(int64(7), bytes.Repeat([]byte{0, 5}, 100), uint16(60), false)
	f.Add(int64(7), bytes.Repeat([]byte{0, 5, 1, 0, 0, 9}, 30), uint16(40), false)
	f.Add(int64(1<<40), []byte{0xf3, 0, 3, 0xf8, 1, 1, 0xfe, 0, 7, 7}, uint16(30), false)
	f.Add(int64(7), []byte{1, 2, 3, 4, 5, 6, 7, 8}, uint16(200), true)
	f.Fuzz(func(t *testing.T, base int64, data []byte, maxBytes uint16, unchecked bool) {
		if len(data) > 4096 {
			data = data[:4096] // at most 2048 runs: keep each run fast
		}
		var runs []Run
		if unchecked {
			// Runs straight from the bytes, most of them invalid: Encode
			// must refuse those.
			for i := 0; i+3 < len(data); i += 4 {
				runs = append(runs, Run{base + int64(int8(data[i]))*int64(data[i+1]), base + int64(int8(data[i+2]))*int64(data[i+3])})
			}
			if why := validRuns(base, runs); why != "" {
				text, kept := Encode(base, runs, int(maxBytes))
				if text != "" || kept != 0 {
					t.Fatalf("Encode(%d, %v) = %q, %d; want nothing: %s", base, runs, text, kept, why)
				}
				return
			}
		} else {
			if base < 0 {
				base = -(base + 1)
			}
			runs = fuzzRuns(base, data)
			if why := validRuns(base, runs); why != "" {
				t.Fatalf("fuzzRuns: %s", why)
			}
		}
		roundTrip(t, base, runs, int(maxBytes))
	})
}

// FuzzDecode: Decode of any text returns runs that are valid for base, or
// one of its errors, and never panics. When sealed, text is not taken as
// is: its first byte is the flags and the rest the body's runs, after the
// base, which the test compresses (odd flags) and checksums, so that the
// fuzzer gets past the checksum to the parser.
func FuzzDecode(f *testing.F) {
	rng := rand.New(rand.NewPCG(7, 8))
	seed := func(base int64, runs []Run, maxBytes int) {
		text, _ := Encode(base, runs, maxBytes)
		f.Add(base, text, false)
	}
	seed(1000, []Run{{1002, 1010}, {1020, 1021}}, 4096)
	seed(0, runsOf(0, every(20_000, 7)), 200)
	seed(0, runsOf(0, randomFinished(rng, 500, 0.13)), 200)
	seed(math.MaxInt64-10, []Run{{math.MaxInt64 - 3, math.MaxInt64}}, 100)
	f.Add(int64(1000), pack(flagRaw, body(1000, math.MaxInt64, 0)), false)
	f.Add(int64(1000), pack(flagDeflate, body(1000, 1, 2, 3, 4)), false)
	heldText, _, _ := EncodeHeld(1000, []Run{{1002, 1010}}, []Held{{Key: []byte("k"), Offset: 998, Since: 1}, {Key: []byte{}, Offset: 1001, Since: 2}}, 4096)
	f.Add(int64(1000), heldText, false)
	f.Add(int64(1000), "\x02\x01\x01k\x03\x05\x01\x02", true)
	f.Add(int64(1000), "\x03\x02\x00\x00\x00\x03abc\x7f\x01", true)
	f.Add(int64(0), "", false)
	f.Add(int64(0), "hello", false)
	f.Add(int64(0), `{"a":1}`, false)
	f.Add(int64(0), "pk1:", false)
	f.Add(int64(1000), "\x00\x01\x02\x03\x04", true)
	f.Add(int64(1000), "\x01\x00\x00\x00\x00\x00\x00", true)
	f.Add(int64(math.MaxInt64-100), "\x00\x10\x20\x80\x80\x01\x05", true)
	f.Add(int64(5), "\x00\xff\xff\xff\xff\xff\xff\xff\xff\x7f\x00", true)
	f.Fuzz(func(t *testing.T, base int64, text string, sealed bool) {
		if sealed && len(text) > 0 {
			b := append(binary.AppendUvarint(nil, uint64(max(base, 0))), text[1:]...)
			if text[0]&1 == 1 {
				text = pack(text[0]&(flagDeflate|flagHeld), b)
			} else {
				text = packData(text[0], b, crc32.ChecksumIEEE(b))
			}
		}
		runs, held, err := DecodeHeld(base, text)
		if err != nil {
			if !errors.Is(err, ErrForeign) && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrStale) {
				t.Fatalf("Decode: unexpected error %v", err)
			}
			if runs != nil || held != nil {
				t.Fatalf("Decode returned runs %v, held %v with error %v", runs, held, err)
			}
			return
		}
		if why := validRuns(base, runs); why != "" {
			t.Fatalf("Decode(%d, %q) = %v: %s", base, text, runs, why)
		}
		for _, h := range held {
			if h.Offset < 0 || h.Since < 0 || h.Key == nil {
				t.Fatalf("Decode(%d, %q): held key %+v", base, text, h)
			}
		}
		if len(runs) == 0 && len(held) == 0 {
			return
		}
		// What decodes encodes back to the same runs and held keys. (No
		// limit: the text may have been compressed better than Encode
		// does, but its body is at most maxBody, and Encode writes varints
		// no longer.)
		again, kept, keptHeld := EncodeHeld(base, runs, held, math.MaxInt)
		if kept != len(runs) || keptHeld != len(held) {
			t.Fatalf("re-encoding kept %d of %d runs, %d of %d held keys", kept, len(runs), keptHeld, len(held))
		}
		got, gotHeld, err := DecodeHeld(base, again)
		if err != nil || !equalRuns(got, runs) || !equalHeld(gotHeld, held) {
			t.Fatalf("re-encoded map decodes to %v, %v, %v; want %v, %v", got, gotHeld, err, runs, held)
		}
	})
}

// randomN returns n runs above base of a random 13% of unfinished offsets.
func randomN(rng *rand.Rand, base int64, n int) []Run {
	return runsOf(base, randomFinished(rng, 10*n, 0.13))[:n]
}

func BenchmarkEncode(b *testing.B) {
	rng := rand.New(rand.NewPCG(9, 10))
	const base = 1 << 32
	for _, bb := range []struct {
		name string
		runs []Run
	}{
		{"1 run", []Run{{base + 2, base + 50}}},
		{"100 runs", randomN(rng, base, 100)},
		{"3000 runs (compressed)", randomN(rng, base, 3000)},
		{"20000 offsets every 7th (compressed)", runsOf(base, every(20_000, 7))},
		{"30000 runs (cut)", randomN(rng, base, 30_000)},
	} {
		b.Run(bb.name, func(b *testing.B) {
			var text string
			var kept int
			b.ReportAllocs()
			for b.Loop() {
				text, kept = Encode(base, bb.runs, 4096)
			}
			b.ReportMetric(float64(len(bb.runs)), "runs")
			b.ReportMetric(float64(kept), "kept")
			b.ReportMetric(float64(len(text)), "bytes")
		})
	}
}

func BenchmarkDecode(b *testing.B) {
	rng := rand.New(rand.NewPCG(11, 12))
	const base = 1 << 32
	for _, bb := range []struct {
		name string
		runs []Run
	}{
		{"1 run", []Run{{base + 2, base + 50}}},
		{"100 runs", randomN(rng, base, 100)},
		{"3000 runs (compressed)", randomN(rng, base, 3000)},
	} {
		b.Run(bb.name, func(b *testing.B) {
			text, _ := Encode(base, bb.runs, 4096)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Decode(base, text); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func equalHeld(a, b []Held) bool {
	return slices.EqualFunc(a, b, func(x, y Held) bool {
		return bytes.Equal(x.Key, y.Key) && x.Offset == y.Offset && x.Since == y.Since
	})
}

// heldKeys returns n held keys of size bytes each, oldest first, the
// offsets around base.
func heldKeys(rng *rand.Rand, base int64, n, size int) []Held {
	held := make([]Held, n)
	for i := range held {
		key := make([]byte, size)
		for j := range key {
			key[j] = byte('a' + rng.IntN(26))
		}
		held[i] = Held{Key: key, Offset: max(0, base-int64(n)+int64(i)+rng.Int64N(3)), Since: 1_700_000_000 + int64(i)}
	}
	return held
}

// heldRoundTrip encodes runs and held in maxBytes and checks what
// EncodeHeld promises: the text fits; it decodes to runs[:keptRuns] and
// the newest keptHeld held keys; a held key was left out only if one more
// does not fit alone, and a run only if one more does not fit with the
// held keys kept.
func heldRoundTrip(t *testing.T, base int64, runs []Run, held []Held, maxBytes int) (string, int, int) {
	t.Helper()
	text, keptRuns, keptHeld := EncodeHeld(base, runs, held, maxBytes)
	if len(text) > maxBytes {
		t.Fatalf("len(text) = %d > maxBytes %d", len(text), maxBytes)
	}
	gotRuns, gotHeld, err := DecodeHeld(base, text)
	if err != nil {
		t.Fatalf("DecodeHeld: %v", err)
	}
	if !equalRuns(gotRuns, runs[:keptRuns]) {
		t.Fatalf("runs %v; want runs[:%d]", gotRuns, keptRuns)
	}
	if want := held[len(held)-keptHeld:]; !equalHeld(gotHeld, want) {
		t.Fatalf("held %v; want the newest %d: %v", gotHeld, keptHeld, want)
	}
	if plain, err := Decode(base, text); err != nil || !equalRuns(plain, gotRuns) {
		t.Fatalf("Decode = %v, %v; want the runs %v", plain, err, gotRuns)
	}
	if keptHeld < len(held) {
		if _, _, k := EncodeHeld(base, nil, held[len(held)-keptHeld-1:], maxBytes); k > keptHeld {
			t.Fatalf("kept %d held keys in %d bytes, but %d fit", keptHeld, maxBytes, k)
		}
		if keptHeld == 0 && text != "" {
			if want, _ := Encode(base, runs, maxBytes); want != text {
				t.Fatalf("no held key fits: text %q; want Encode's %q", text, want)
			}
		}
	} else if keptRuns < len(runs) && keptHeld > 0 {
		if _, k, _ := EncodeHeld(base, runs[:keptRuns+1], held, maxBytes); k > keptRuns {
			t.Fatalf("kept %d runs in %d bytes with the held keys, but %d fit", keptRuns, maxBytes, k)
		}
	}
	return text, keptRuns, keptHeld
}

func TestHeldRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	runs := []Run{{102, 110}, {120, 121}}
	held := []Held{{Key: []byte("customer-7"), Offset: 97, Since: 1_700_000_000}, {Key: []byte{}, Offset: 101, Since: 1_700_000_100}}
	text, keptRuns, keptHeld := heldRoundTrip(t, 100, runs, held, 4096)
	require.Equal(t, 2, keptRuns)
	require.Equal(t, 2, keptHeld)
	require.False(t, compressed(t, text))

	// Held keys alone, no run: a map of its own.
	text, keptRuns, keptHeld = heldRoundTrip(t, 100, nil, held, 4096)
	require.NotEmpty(t, text)
	require.Equal(t, 0, keptRuns)
	require.Equal(t, 2, keptHeld)

	// Without held keys, EncodeHeld writes what Encode writes.
	plain, _ := Encode(100, runs, 4096)
	withNone, _, _ := EncodeHeld(100, runs, nil, 4096)
	require.Equal(t, plain, withNone)

	// A held key whose offset is negative is refused.
	text, keptRuns, keptHeld = EncodeHeld(100, runs, []Held{{Key: []byte("k"), Offset: -1}}, 4096)
	require.Equal(t, "", text)
	require.Zero(t, keptRuns+keptHeld)

	// Random sizes and limits: the promises hold.
	for range 300 {
		base := rng.Int64N(1 << 40)
		rs := randomRuns(rng, base, rng.IntN(400), 20, 20)
		hs := heldKeys(rng, base, rng.IntN(60), 1+rng.IntN(120))
		heldRoundTrip(t, base, rs, hs, minText+rng.IntN(4096))
	}
}

// TestHeldTruncation: held keys that do not all fit are dropped oldest
// first; they go before runs; keys that compress well are compressed.
func TestHeldTruncation(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	held := heldKeys(rng, 5000, 100, 100) // 100 random keys of 100 bytes: not all in 4096
	runs := randomRuns(rng, 5000, 1000, 10, 10)
	_, keptRuns, keptHeld := heldRoundTrip(t, 5000, runs, held, 4096)
	require.Positive(t, keptHeld)
	require.Less(t, keptHeld, 100, "the oldest keys are dropped")
	require.Less(t, keptRuns, 20, "the held keys take the room first")

	// Keys alike compress: more than the raw text holds are kept.
	alike := make([]Held, 200)
	for i := range alike {
		alike[i] = Held{Key: fmt.Appendf(nil, "customer-%08d-account-settings", i), Offset: int64(4000 + i), Since: 1_700_000_000}
	}
	text, _, keptHeld := heldRoundTrip(t, 5000, nil, alike, 4096)
	require.Equal(t, 200, keptHeld)
	require.True(t, compressed(t, text))

	// A key too large for the limit alone: none kept, the runs as Encode.
	noise := make([]byte, 3500) // random bytes: no compression gets them into 4096 characters
	for i := range noise {
		noise[i] = byte(rng.Uint32())
	}
	huge := []Held{{Key: noise, Offset: 1, Since: 1}}
	_, keptRuns, keptHeld = heldRoundTrip(t, 5000, runs[:3], huge, 4096)
	require.Zero(t, keptHeld)
	require.Equal(t, 3, keptRuns)
}

func TestHeldDecodeErrors(t *testing.T) {
	const base = 1000
	held := func(parts ...[]byte) []byte {
		b := binary.AppendUvarint(nil, base)
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	uv := func(v uint64) []byte { return binary.AppendUvarint(nil, v) }
	sv := func(v int64) []byte { return binary.AppendVarint(nil, v) }
	for _, c := range []struct {
		name string
		text string
	}{
		{"no count", pack(flagHeld, held())},
		{"count too large", pack(flagHeld, held(uv(5), uv(1), []byte("k"), sv(0), uv(1)))},
		{"key too long", pack(flagHeld, held(uv(1), uv(50), []byte("k"), sv(0), uv(1)))},
		{"offset below 0", pack(flagHeld, held(uv(1), uv(1), []byte("k"), sv(-base-1), uv(1)))},
		{"no time", pack(flagHeld, held(uv(1), uv(1), []byte("k"), sv(0)))},
		{"huge time", pack(flagHeld, held(uv(1), uv(1), []byte("k"), sv(0), uv(math.MaxUint64)))},
		{"half a run after", pack(flagHeld, held(uv(1), uv(1), []byte("k"), sv(0), uv(1), uv(3)))},
		{"unknown flag", pack(4, held())},
	} {
		t.Run(c.name, func(t *testing.T) {
			runs, hs, err := DecodeHeld(base, c.text)
			require.ErrorIs(t, err, ErrCorrupt)
			require.Nil(t, runs)
			require.Nil(t, hs)
		})
	}
	// Compressed, held keys and runs.
	b := held(uv(1), uv(1), []byte("k"), sv(-3), uv(9), uv(0), uv(0))
	runs, hs, err := DecodeHeld(base, pack(flagHeld|flagDeflate, b))
	require.NoError(t, err)
	require.Equal(t, []Run{{1001, 1002}}, runs)
	require.True(t, equalHeld(hs, []Held{{Key: []byte("k"), Offset: 997, Since: 9}}))
}
