package stages

// deque is a double-ended queue on a ring buffer: the router's list of
// dispatchable messages, which takes new ones at the back and keys that
// continue at the front, both without copying the list.
type deque[T any] struct {
	buf  []T // len(buf) is zero or a power of two
	head int
	n    int
}

func (d *deque[T]) Len() int { return d.n }

// Front returns the first element; the deque must not be empty.
func (d *deque[T]) Front() T { return d.buf[d.head] }

func (d *deque[T]) PushBack(v T) {
	d.grow()
	d.buf[(d.head+d.n)&(len(d.buf)-1)] = v
	d.n++
}

func (d *deque[T]) PushFront(v T) {
	d.grow()
	d.head = (d.head - 1) & (len(d.buf) - 1)
	d.buf[d.head] = v
	d.n++
}

// PopFront removes the first element; the deque must not be empty.
func (d *deque[T]) PopFront() T {
	var zero T
	v := d.buf[d.head]
	d.buf[d.head] = zero
	d.head = (d.head + 1) & (len(d.buf) - 1)
	d.n--
	return v
}

// Filter keeps, in order, the elements for which keep returns true.
func (d *deque[T]) Filter(keep func(T) bool) {
	var zero T
	kept := 0
	for i := range d.n {
		v := d.buf[(d.head+i)&(len(d.buf)-1)]
		if keep(v) {
			d.buf[(d.head+kept)&(len(d.buf)-1)] = v
			kept++
		}
	}
	for i := kept; i < d.n; i++ {
		d.buf[(d.head+i)&(len(d.buf)-1)] = zero
	}
	d.n = kept
}

func (d *deque[T]) grow() {
	if d.n < len(d.buf) {
		return
	}
	buf := make([]T, max(16, 2*len(d.buf)))
	for i := range d.n {
		buf[i] = d.buf[(d.head+i)&(len(d.buf)-1)]
	}
	d.buf, d.head = buf, 0
}
