package pipeline_test

import (
	"context"
	"fmt"

	"github.com/parallafka/parallafka/pipeline"
)

// A stage marks what it wants done with each message and sends every one
// on: here, tombstones (no value) are dropped, so they are committed
// without reaching the handler.
func ExampleStage() {
	var skipTombstones pipeline.Stage[string, []byte] = func(ctx context.Context, in <-chan *pipeline.Message[string, []byte], out chan<- *pipeline.Message[string, []byte]) error {
		for msg := range in {
			if msg.RawValue == nil {
				msg.Drop()
			}
			select {
			case out <- msg:
			case <-ctx.Done():
				return nil
			}
		}
		return nil
	}
	in, out := make(chan *pipeline.Message[string, []byte], 2), make(chan *pipeline.Message[string, []byte], 2)
	in <- &pipeline.Message[string, []byte]{Topic: "users", Offset: 7, RawValue: []byte("{}")}
	in <- &pipeline.Message[string, []byte]{Topic: "users", Offset: 8} // a tombstone
	close(in)
	_ = skipTombstones(context.Background(), in, out)
	close(out)
	for msg := range out {
		fmt.Println(msg, "dropped:", msg.Dropped())
	}
	// Output:
	// users[0]@7 dropped: false
	// users[0]@8 dropped: true
}

// Retry asks the pipeline to handle a message again after this attempt.
func ExampleMessage_Retry() {
	msg := &pipeline.Message[string, string]{Topic: "orders", Attempt: 1}
	msg.Retry()
	fmt.Println(msg.RetryRequested())
	msg.Attempt++ // the pipeline's next attempt begins
	fmt.Println(msg.RetryRequested())
	// Output:
	// true
	// false
}
