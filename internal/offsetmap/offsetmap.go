// Package offsetmap encodes the offset map that parallafka commits with each
// partition's committed offset, in the commit's metadata string.
//
// # Why
//
// A partition is committed at its lowest unfinished offset, the base: every
// offset below it finished. Handlers run in parallel, so many offsets above
// the base may be finished too when the partition is committed. Without a
// record of them, the next owner of the partition (after a rebalance or a
// crash) redoes them all. The offset map is that record: the runs of
// finished offsets above the base, which the next owner skips.
//
// # Format
//
// The text is ASCII, safe in the string Kafka stores:
//
//	"pk1:" + base64.RawURLEncoding(payload)
//	payload = flags (1 byte) | data | CRC-32 (IEEE, big-endian, 4 bytes) of body
//	flags   = bit 0 (1): data is the body DEFLATE-compressed, else the body;
//	          bit 1 (2): the body has held keys
//	body    = uvarint(base) [held] then, per run, uvarint(gap-1) uvarint(length-1)
//	held    = uvarint(count) then, per key, oldest first:
//	          uvarint(len) key varint(offset-base) uvarint(since, Unix seconds)
//
// The gap of a run is its first offset minus the end of the run before it
// (the base for the first run): runs are above the base, disjoint and not
// adjacent, so the gap is at least 1, and so is the length. The base is
// stored so that a map left behind by an offset moved without its metadata
// (by a reset tool, say) is recognized as stale, not applied to offsets it
// does not describe. The checksum catches a damaged map, which would
// otherwise skip offsets that never finished. A later format gets a new
// prefix, which this one's Decode reports as foreign.
//
// The held keys (EncodeHeld) are the partition's keys whose messages go to
// the dead-letter stage unhandled until released, each with the offset of
// the message that held it and when: they must survive a rebalance and a
// restart as the map does, and take its room first. A text without held
// keys has flags 0 or 1, which every version decodes; a version before held
// keys refuses one with them as corrupt (and redoes the work its map
// recorded: nothing is lost).
//
// Encode writes the raw body when its text fits, without touching the
// compressor: a few runs, the usual case, cost a few hundred nanoseconds.
// It compresses only when the raw text does not fit. Each run costs 2 bytes
// raw while its gap and length are below 128 (2.7 characters of text), so
// about 1,500 runs fit raw in 4096 bytes; compressed, about 4,000 runs of
// a random map fit, and far more of a regular one. All of a window of
// 20,000 offsets with a random 13% unfinished (2,231 runs) takes about
// 2,300 bytes; with every 7th unfinished (2,858 runs), about 1,500.
//
// # Limits
//
// The broker limits commit metadata to offset.metadata.max.bytes (4096 by
// default; it counts characters, which for this ASCII text are bytes) and
// fails a partition's commit with more (OFFSET_METADATA_TOO_LARGE), so the
// committer passes its limit to Encode. A map whose text does not fit is
// cut to the longest prefix of its runs that fits (the lowest runs, those
// the next owner reaches first): the finished offsets left out are redone
// by the next owner, but the commit never waits or fails for the map. So a
// full map costs more redo, never a stall.
//
// Runs end at math.MaxInt64 at most (Run.To is exclusive). Decode bounds
// what it inflates to 1 MiB of body, over 500,000 runs, which Encode never
// exceeds, and rejects offsets that overflow an int64, so hostile or
// damaged metadata costs an error, never a panic, a huge allocation or
// wrong offsets.
package offsetmap

import (
	"bytes"
	"compress/flate"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"sort"
	"strings"
	"sync"
)

// Run is a half-open range [From, To) of finished offsets.
type Run struct{ From, To int64 }

// Held is a key held in its partition (see EncodeHeld): its messages are
// not handled until it is released.
type Held struct {
	Key    []byte // the record key's bytes
	Offset int64  // the offset of the message whose failure held the key
	Since  int64  // when the key was held, in Unix seconds
}

var (
	// ErrForeign is returned by Decode for metadata that is not an offset
	// map: written by another tool or library, or by a later format version.
	ErrForeign = errors.New("offsetmap: metadata is not an offset map")
	// ErrCorrupt is returned by Decode for an offset map that is malformed
	// or fails its checksum.
	ErrCorrupt = errors.New("offsetmap: offset map is corrupt")
	// ErrStale is returned by Decode for an offset map written for another
	// committed offset: the offset was moved without its metadata.
	ErrStale = errors.New("offsetmap: offset map is stale: written for another committed offset")
)

const (
	prefix      = "pk1:"
	flagRaw     = 0
	flagDeflate = 1 // the data is the body DEFLATE-compressed
	flagHeld    = 2 // the body has held keys, between the base and the runs
	crcSize     = 4

	// maxBody bounds the body, raw or inflated: Decode rejects more and
	// Encode never writes more.
	maxBody = 1 << 20
	// maxPayload bounds the payload Decode accepts: DEFLATE may grow
	// incompressible data a little (5 bytes per 64 KiB stored block).
	maxPayload = 1 + maxBody + maxBody/1024 + 64 + crcSize
	// minText is the length of the shortest text with a run: one flags
	// byte, a 1-byte base, a 2-byte run and the checksum, raw (no DEFLATE
	// stream of 3 bytes or more is shorter than 5 bytes).
	minText = len(prefix) + (8*(1+1+2+crcSize)+5)/6
)

// The DEFLATE levels Encode tries, in this order: a prefix fits if its
// text fits at either. The body is a stream of small varints. Huffman
// coding alone shrinks irregular maps best (string matching costs more
// bits than it saves on them: 4096 bytes hold 10% fewer runs of a random
// map at BestCompression, 16% fewer at BestSpeed) and fastest. String
// matching wins by far on periodic maps, as when one key in a round robin
// of keys is stuck: every k-th offset is unfinished while the window grows.
// BestSpeed packs 2,858 such runs in 87 bytes (Huffman alone: 1,474) at
// a third of BestCompression's cost.
var levels = [...]int{flate.HuffmanOnly, flate.BestSpeed}

var b64 = base64.RawURLEncoding

// scratch holds an Encode's buffers, pooled since Encode runs on every
// commit.
type scratch struct {
	body []byte // flags byte (flagRaw), then the body
	ends []int  // ends[k]: len(body) with the first k runs
	best []byte // the compressed payload of the last prefix that fit
	text []byte
	d    *deflater // while Encode compresses
}

var scratches = sync.Pool{New: func() any { return new(scratch) }}

// maxPooled bounds the buffers a pooled scratch or deflater keeps.
const maxPooled = 1 << 20

func (s *scratch) release() {
	if s.d != nil {
		s.d.release()
		s.d = nil
	}
	if cap(s.body) > maxPooled || cap(s.ends) > maxPooled/8 || cap(s.best) > maxPooled || cap(s.text) > maxPooled {
		return // a rare huge map: let the GC have it
	}
	scratches.Put(s)
}

// deflater is a DEFLATE writer per level and the buffer they write to,
// pooled: a writer holds a few hundred kilobytes.
type deflater struct {
	w   [len(levels)]*flate.Writer
	out limitBuffer
}

var deflaters = sync.Pool{New: func() any {
	d := new(deflater)
	for i, level := range levels {
		d.w[i], _ = flate.NewWriter(&d.out, level) // the levels are valid
	}
	return d
}}

func (d *deflater) release() {
	if cap(d.out.buf) > maxPooled {
		d.out.buf = nil
	}
	deflaters.Put(d)
}

// limitBuffer is a buffer that refuses to grow beyond limit bytes, which
// stops a compression whose output cannot fit anyway.
type limitBuffer struct {
	buf   []byte
	limit int
}

var errFull = errors.New("offsetmap: compressed map too large")

func (b *limitBuffer) Write(p []byte) (int, error) {
	if len(b.buf)+len(p) > b.limit {
		return 0, errFull
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}

// textLen is the length of the text of a payload of n bytes.
func textLen(n int) int { return len(prefix) + b64.EncodedLen(n) }

// Encode returns the metadata text for a commit at offset base that records
// runs as finished, and how many of runs it kept.
//
// runs must be sorted, disjoint, non-empty (From < To), not adjacent (a run
// starts after the one before it ends: merge touching runs) and above base
// (From > base), and base must not be negative. Encode checks this and
// returns ("", 0) on a violation rather than write a map that could mark
// an unfinished offset finished.
//
// The text fits in maxBytes (len(text) <= maxBytes). The raw text is used
// when it fits; otherwise Encode compresses. When the whole map fits
// neither way, Encode keeps the longest prefix runs[:kept] that fits,
// found by a galloping then binary search over the run count: runs[:kept]
// fits, raw or compressed, and runs[:kept+1] fits neither way. (Compressed
// size may, rarely, shrink as a prefix grows, so a longer prefix could fit
// too; never mind.) Runs are never shortened, so Decode returns exactly
// runs[:kept]: a subset of runs, never an offset that did not finish. With
// no runs, or a maxBytes too small for the first run, it returns ("", 0).
//
// Encode is safe for concurrent use. Its buffers and compressors are
// pooled; when the raw text fits, it does not compress, and allocates the
// text only.
func Encode(base int64, runs []Run, maxBytes int) (text string, kept int) {
	text, kept, _ = EncodeHeld(base, runs, nil, maxBytes)
	return text, kept
}

// EncodeHeld is Encode with held keys: the metadata text for a commit at
// offset base that records runs as finished and held as the partition's
// held keys, oldest first. It returns how many runs it kept (runs[:keptRuns],
// as Encode) and how many held keys (the newest: held[len(held)-keptHeld:]).
//
// Held keys go first: a key left out is a key no longer held after a
// rebalance or a restart, while a run left out is only work redone. So
// EncodeHeld keeps the newest held keys that fit with no run at all
// (dropping the oldest first), then as many runs as fit with them. Without
// held keys (or when not even the newest fits) the text is Encode's, in
// the format every version decodes.
func EncodeHeld(base int64, runs []Run, held []Held, maxBytes int) (text string, keptRuns, keptHeld int) {
	if len(runs) == 0 && len(held) == 0 || base < 0 || maxBytes < minText {
		return "", 0, 0
	}
	for _, h := range held {
		if h.Offset < 0 || h.Since < 0 {
			return "", 0, 0
		}
	}
	s := scratches.Get().(*scratch)
	defer s.release()
	if len(held) > 0 && !(s.build(base, nil, held) && s.fits(0, maxBytes)) {
		// Not all fit: the first count of newest keys that does not fit,
		// alone, less one.
		h := sort.Search(len(held)+1, func(h int) bool {
			return h > 0 && !(s.build(base, nil, held[len(held)-h:]) && s.fits(0, maxBytes))
		}) - 1
		held = held[len(held)-h:]
	}
	if !s.build(base, runs, held) {
		return "", 0, 0 // invalid runs (or held keys)
	}
	text, keptRuns = s.search(len(runs), len(held) > 0, maxBytes)
	if text == "" {
		return "", 0, 0
	}
	return text, keptRuns, len(held)
}

// build writes the body of runs and held into s.body, with its flags byte
// first (flagRaw, with flagHeld if there are held keys), and s.ends:
// ends[k] is the body's length with the first k runs. It reports false
// for runs Encode refuses.
func (s *scratch) build(base int64, runs []Run, held []Held) bool {
	flags := byte(flagRaw)
	if len(held) > 0 {
		flags |= flagHeld
	}
	b := append(s.body[:0], flags)
	b = binary.AppendUvarint(b, uint64(base))
	if len(held) > 0 {
		b = binary.AppendUvarint(b, uint64(len(held)))
		for _, h := range held {
			b = binary.AppendUvarint(b, uint64(len(h.Key)))
			b = append(b, h.Key...)
			b = binary.AppendVarint(b, h.Offset-base)
			b = binary.AppendUvarint(b, uint64(h.Since))
		}
	}
	ends := append(s.ends[:0], len(b))
	prev := base
	for _, r := range runs {
		if r.From <= prev || r.To <= r.From {
			s.body, s.ends = b, ends
			return false // unsorted, overlapping, adjacent, empty or not above base
		}
		b = binary.AppendUvarint(b, uint64(r.From-prev-1))
		b = binary.AppendUvarint(b, uint64(r.To-r.From-1))
		ends = append(ends, len(b))
		prev = r.To
	}
	s.body, s.ends = b, ends
	return true
}

// fits reports whether the body with the first k runs fits in maxBytes,
// raw or compressed (then left in s.best).
func (s *scratch) fits(k, maxBytes int) bool {
	if s.ends[k]-1 > maxBody {
		return false
	}
	return s.rawFits(k, maxBytes) || s.deflates(k, maxBytes)
}

func (s *scratch) rawFits(k, maxBytes int) bool { return textLen(s.ends[k]+crcSize) <= maxBytes }

// search returns the text of the longest prefix of the n runs in s.body
// that fits in maxBytes, and its length. With held keys (held) the body
// without runs is known to fit, and is a text; without, a text needs a run.
func (s *scratch) search(n int, held bool, maxBytes int) (string, int) {
	ends := s.ends
	if ends[n]-1 > maxBody {
		// Never write a body Decode would refuse.
		n = sort.Search(n+1, func(k int) bool { return ends[k]-1 > maxBody }) - 1
	}
	if s.rawFits(n, maxBytes) {
		return s.raw(n), n // the fast path: the raw text fits
	}
	// The longest prefix whose raw text fits, -1 when none does (even with
	// no run, for a huge base or many held keys): raw text grows with the
	// run count.
	rawLo := sort.Search(n+1, func(k int) bool { return !s.rawFits(k, maxBytes) }) - 1
	lo := max(0, rawLo)
	if rawLo < 0 && (!held || !s.deflates(0, maxBytes)) {
		return "", 0 // nothing fits (with held keys, build made sure it does)
	}

	// Beyond lo only a compressed text can fit. Gallop from lo (so the cost
	// follows what is kept, not the whole map), then bisect: lo always
	// fits, hi does not.
	hi := -1
	for step := max(lo, 1); lo < n; step *= 2 {
		k := min(lo+step, n)
		if !s.deflates(k, maxBytes) {
			hi = k
			break
		}
		lo = k
	}
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		if s.deflates(mid, maxBytes) {
			lo = mid
		} else {
			hi = mid
		}
	}
	switch {
	case lo == 0 && !held:
		return "", 0
	case lo == rawLo:
		return s.raw(lo), lo
	}
	// s.best holds the compressed payload of the last k that fit: lo.
	return s.encode(s.best), lo
}

// raw returns the raw text of the first k runs. It overwrites the body
// after them.
func (s *scratch) raw(k int) string {
	end := s.ends[k]
	sum := crc32.ChecksumIEEE(s.body[1:end])
	s.body = binary.BigEndian.AppendUint32(s.body[:end], sum)
	return s.encode(s.body)
}

func (s *scratch) encode(payload []byte) string {
	s.text = b64.AppendEncode(append(s.text[:0], prefix...), payload)
	return string(s.text)
}

// deflates compresses the body of the first k runs and reports whether its
// text fits in maxBytes at one of the levels; if so the payload is left in
// s.best.
func (s *scratch) deflates(k, maxBytes int) bool {
	if s.d == nil {
		s.d = deflaters.Get().(*deflater)
	}
	body := s.body[1:s.ends[k]]
	for _, w := range s.d.w {
		if payload, ok := s.d.deflate(w, s.body[0]|flagDeflate, body, maxBytes); ok {
			s.best = binary.BigEndian.AppendUint32(append(s.best[:0], payload...), crc32.ChecksumIEEE(body))
			return true
		}
	}
	return false
}

// deflate compresses body with w and returns the payload without its
// checksum, if its text fits in maxBytes.
func (d *deflater) deflate(w *flate.Writer, flags byte, body []byte, maxBytes int) ([]byte, bool) {
	d.out.buf = append(d.out.buf[:0], flags)
	// The longest payload whose text fits (base64 takes 4 characters per 3
	// bytes, and 2 or 3 for a last 1 or 2), less the checksum: output
	// beyond it stops the compression.
	d.out.limit = (min(maxBytes, 2*maxPayload)-len(prefix))*6/8 - crcSize
	w.Reset(&d.out)
	if _, err := w.Write(body); err != nil {
		return nil, false // errFull
	}
	if err := w.Close(); err != nil {
		return nil, false
	}
	return d.out.buf, textLen(len(d.out.buf)+crcSize) <= maxBytes
}

// readers pools DEFLATE readers (io.ReadCloser and flate.Resetter).
var readers sync.Pool

func corrupt(why string) error { return fmt.Errorf("%w: %s", ErrCorrupt, why) }

// Decode parses text written by Encode for a commit whose committed offset
// is base, and returns its runs: sorted, disjoint, not adjacent and above
// base.
//
// Empty text is no map: nil, nil. Text that is not an offset map returns an
// error matching ErrForeign (errors.Is); an offset map that is malformed or
// fails its checksum, ErrCorrupt; one written for another committed offset
// than base (moved without its metadata, e.g. by a reset tool), ErrStale.
func Decode(base int64, text string) ([]Run, error) {
	runs, _, err := DecodeHeld(base, text)
	return runs, err
}

// DecodeHeld is Decode that returns the held keys too (EncodeHeld), oldest
// first; none from a text written by Encode.
func DecodeHeld(base int64, text string) ([]Run, []Held, error) {
	if text == "" {
		return nil, nil, nil
	}
	if !strings.HasPrefix(text, prefix) {
		return nil, nil, ErrForeign
	}
	enc := text[len(prefix):]
	if len(enc) > b64.EncodedLen(maxPayload) {
		return nil, nil, corrupt("too long")
	}
	p, err := b64.Strict().DecodeString(enc)
	// The decoder skips CR and LF: insist on the canonical text.
	if err != nil || b64.EncodedLen(len(p)) != len(enc) {
		return nil, nil, corrupt("bad base64")
	}
	if len(p) < 1+1+crcSize {
		return nil, nil, corrupt("too short")
	}
	data, sum := p[1:len(p)-crcSize], binary.BigEndian.Uint32(p[len(p)-crcSize:])
	var body []byte
	switch p[0] &^ flagHeld {
	case flagRaw:
		if len(data) > maxBody {
			return nil, nil, corrupt("body too large")
		}
		body = data
	case flagDeflate:
		if body, err = inflate(data); err != nil {
			return nil, nil, err
		}
	default:
		return nil, nil, corrupt(fmt.Sprintf("unknown flags %#x", p[0]))
	}
	if crc32.ChecksumIEEE(body) != sum {
		return nil, nil, corrupt("checksum mismatch")
	}

	v, n := binary.Uvarint(body)
	if n <= 0 || v > math.MaxInt64 {
		return nil, nil, corrupt("bad base")
	}
	if int64(v) != base {
		return nil, nil, fmt.Errorf("%w (written for %d, committed at %d)", ErrStale, v, base)
	}
	var held []Held
	if p[0]&flagHeld != 0 {
		var k int
		if held, k, err = decodeHeld(base, body[n:]); err != nil {
			return nil, nil, err
		}
		n += k
	}
	// Each run ends two varints, each of which ends with a byte below 0x80.
	ends := 0
	for _, c := range body[n:] {
		if c < 0x80 {
			ends++
		}
	}
	runs := make([]Run, 0, ends/2)
	prev := v // the end of the last run, or the base
	for pos := n; pos < len(body); {
		gap, n := binary.Uvarint(body[pos:])
		if n <= 0 {
			return nil, nil, corrupt("bad run")
		}
		pos += n
		length, n := binary.Uvarint(body[pos:])
		if n <= 0 {
			return nil, nil, corrupt("bad run")
		}
		pos += n
		// from = prev+gap+1 and to = from+length+1 <= MaxInt64.
		room := uint64(math.MaxInt64) - prev
		if room < 2 || gap > room-2 {
			return nil, nil, corrupt("offset overflow")
		}
		from := prev + gap + 1
		if length > uint64(math.MaxInt64)-from-1 {
			return nil, nil, corrupt("offset overflow")
		}
		to := from + length + 1
		runs = append(runs, Run{From: int64(from), To: int64(to)})
		prev = to
	}
	return runs, held, nil
}

// decodeHeld parses the held keys at the start of b, and returns them with
// the number of bytes they took.
func decodeHeld(base int64, b []byte) ([]Held, int, error) {
	count, pos := binary.Uvarint(b)
	// Each key takes 3 bytes at least: its length, its offset, its time.
	if pos <= 0 || count > uint64(len(b)-pos)/3 {
		return nil, 0, corrupt("bad held key count")
	}
	held := make([]Held, 0, count)
	for range count {
		size, n := binary.Uvarint(b[pos:])
		if n <= 0 || size > uint64(len(b)-pos-n) {
			return nil, 0, corrupt("bad held key")
		}
		pos += n
		key := bytes.Clone(b[pos : pos+int(size)])
		pos += int(size)
		delta, n := binary.Varint(b[pos:])
		if n <= 0 || delta < -base || delta > math.MaxInt64-base {
			return nil, 0, corrupt("bad held key offset")
		}
		pos += n
		since, n := binary.Uvarint(b[pos:])
		if n <= 0 || since > math.MaxInt64 {
			return nil, 0, corrupt("bad held key time")
		}
		pos += n
		if key == nil {
			key = []byte{}
		}
		held = append(held, Held{Key: key, Offset: base + delta, Since: int64(since)})
	}
	return held, pos, nil
}

// inflate decompresses data, at most maxBody bytes of it, which must be one
// whole DEFLATE stream.
func inflate(data []byte) ([]byte, error) {
	src := bytes.NewReader(data)
	r, _ := readers.Get().(io.ReadCloser)
	if r == nil {
		r = flate.NewReader(src)
	} else if err := r.(flate.Resetter).Reset(src, nil); err != nil {
		return nil, corrupt("inflate: " + err.Error())
	}
	defer readers.Put(r)
	var out bytes.Buffer
	_, err := out.ReadFrom(io.LimitReader(r, maxBody+1))
	switch {
	case err != nil:
		return nil, corrupt("inflate: " + err.Error())
	case out.Len() > maxBody:
		return nil, corrupt("body too large")
	case src.Len() != 0:
		// bytes.Reader is an io.ByteReader, which the decompressor reads
		// no further than its stream's end.
		return nil, corrupt("data after the DEFLATE stream")
	}
	return out.Bytes(), nil
}
