// Package stages holds middleware and stages to insert into a Parallafka
// pipeline: Retry and DeadLetterQueue (AfterHandle stages), Dedupe and
// Timeout (handler middleware). Each is built on the public extension API
// only (package pipeline): they are exactly what a user could write.
//
//	p, err := parallafka.New(src,
//		parallafka.WithMiddleware(stages.Timeout[string, Payment](5*time.Second)),
//		parallafka.WithAfterHandle("retry", stages.Retry[string, Payment](stages.RetryConfig{MaxAttempts: 5})),
//		parallafka.WithAfterHandle("dead-letter", stages.DeadLetterQueue[string, Payment](stages.DeadLetterConfig{Writer: dlq})),
//	)
package stages
