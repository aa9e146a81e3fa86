// Command floor measures the CPU per message of the smallest Go pipeline with the
// engine's hand-offs: a poller goroutine sends slices of 256 messages to a
// coordinator, which sends each message to one of 16 workers over a
// buffered channel (cap 32) and takes each back over another (cap 32),
// at most 32 out at a time. No other logic.
package main

import (
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"
)

type msg struct {
	off int64
	pad [160]byte
}

func cpu() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func main() {
	const n = 1_000_000
	const workers = 16
	polled := make(chan []*msg, 4)
	dispatch := make(chan *msg, 2*workers)
	released := make(chan *msg, 2*workers)
	c0, t0 := cpu(), time.Now()
	go func() {
		for i := 0; i < n; i += 256 {
			b := make([]*msg, 0, 256)
			for j := i; j < i+256 && j < n; j++ {
				b = append(b, &msg{off: int64(j)})
			}
			polled <- b
		}
		close(polled)
	}()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range dispatch {
				m.off++ // the handler
				released <- m
			}
		}()
	}
	var ready []*msg
	out, done := 0, 0
	pol := polled
	for done < n {
		for out < 2*workers && len(ready) > 0 {
			dispatch <- ready[0]
			ready = ready[1:]
			out++
		}
		if k := len(released); k > 0 {
			for range k {
				<-released
				out--
				done++
			}
			continue
		}
		select {
		case b, ok := <-pol:
			if !ok {
				pol = nil
				continue
			}
			ready = append(ready, b...)
		case <-released:
			out--
			done++
		}
	}
	close(dispatch)
	wg.Wait()
	el, c := time.Since(t0), cpu()-c0
	fmt.Fprintf(os.Stdout, "%d msgs in %v: %.0f msg/s, %.3f us CPU/msg\n", n, el, n/el.Seconds(), float64(c.Microseconds())/n)
}
