package stages

import "time"

// Backoff is RetryConfig.backoff, for the tests of package stages_test.
func Backoff(c RetryConfig, attempt int) time.Duration { return c.backoff(attempt) }
