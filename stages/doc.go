// Package stages holds middleware and stages to insert into a Parallafka
// pipeline: Retry and DeadLetterQueue (AfterHandle stages), Dedupe and
// Timeout (handler middleware). Each is built on the public extension API
// only (package pipeline): they are exactly what a user could write.
//
// Each constructor checks its configuration and returns an error for a bad
// one (it never panics), before anything runs:
//
//	timeout, err := stages.Timeout[string, Payment](5 * time.Second)
//	...
//	retry, err := stages.Retry[string, Payment](stages.RetryConfig{MaxAttempts: 5})
//	...
//	deadLetter, err := stages.DeadLetterQueue[string, Payment](stages.DeadLetterConfig{Writer: dlq})
//	...
//	p, err := parallafka.New(src,
//		parallafka.WithMiddleware(timeout),
//		parallafka.WithAfterHandle("retry", retry),
//		parallafka.WithAfterHandle("dead-letter", deadLetter),
//	)
package stages
