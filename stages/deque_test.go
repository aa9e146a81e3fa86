package stages

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func elements(d *deque[int]) []int {
	var out []int
	for d.Len() > 0 {
		out = append(out, d.PopFront())
	}
	return out
}

func TestDequeAgainstASlice(t *testing.T) {
	var d deque[int]
	var model []int
	for i := range 1000 {
		switch i % 7 {
		case 0, 3:
			d.PushFront(i)
			model = append([]int{i}, model...)
		case 5:
			if len(model) > 0 {
				assert.Equal(t, model[0], d.Front())
				assert.Equal(t, model[0], d.PopFront())
				model = model[1:]
			}
		default:
			d.PushBack(i)
			model = append(model, i)
		}
		assert.Equal(t, len(model), d.Len())
	}
	d.Filter(func(v int) bool { return v%3 != 0 })
	var kept []int
	for _, v := range model {
		if v%3 != 0 {
			kept = append(kept, v)
		}
	}
	assert.Equal(t, kept, elements(&d))
	d.PushFront(1)
	d.PushBack(2)
	assert.Equal(t, []int{1, 2}, elements(&d))
}
