package parallafka_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/parallafka/parallafka/pipeline/memsource"
)

// Helpers shared by the package's tests.

// handledTwice counts messages handled more than once: seen maps a
// message's place to an *atomic.Int64 of its handler calls.
func handledTwice(seen *sync.Map) (dups int) {
	seen.Range(func(_, v any) bool {
		if v.(*atomic.Int64).Load() > 1 {
			dups++
		}
		return true
	})
	return dups
}

// cpuTime is the process's CPU time (user and system) so far: per message,
// it is steadier than the wall clock on a machine shared with other work.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// must returns v, failing with a panic if err is not nil: for stages built
// from configurations the tests know to be valid.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// benchSource is a source of n messages over 1,000 keys on 4 partitions,
// for the benchmarks.
func benchSource(n int) *memsource.Source[string, int] {
	src := memsource.New[string, int]()
	src.AddTopic(topic, 4)
	for i := range n {
		src.Produce(topic, int32(i%4), fmt.Sprintf("k%d", i%1000), i)
	}
	return src
}
