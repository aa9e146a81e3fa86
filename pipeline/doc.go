// Package pipeline holds the types that Parallafka's sources, stages and
// handlers share: [Message], [Handler], [Middleware], [Stage], [Source] and
// [RebalanceListener], the batch handler's [BatchHandler],
// [BatchMiddleware] and [BatchError], with [TopicPartition], [Offset],
// [Header], [DeadLetter] and the errors of a failed message
// ([MessageError], [PanicError], [KeyHeldError]). It imports nothing of the
// engine's: package parallafka runs the pipeline, package kafka and
// package memsource are sources, package stages holds ready-made stages.
//
// A stage that holds messages back watches [Draining] (a graceful stop
// began) and [Revoked] (the message's partition went) and then sends them
// on at once:
//
//	func delay(ctx context.Context, in <-chan *pipeline.Message[string, []byte], out chan<- *pipeline.Message[string, []byte]) error {
//		for msg := range in {
//			select {
//			case <-time.After(time.Second):
//			case <-pipeline.Draining(ctx):
//			case <-pipeline.Revoked(ctx, msg):
//			}
//			select {
//			case out <- msg:
//			case <-ctx.Done():
//				return nil
//			}
//		}
//		return nil
//	}
package pipeline
