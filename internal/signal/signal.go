// Package signal holds the context keys by which the engine tells the
// stages of a pipeline what package pipeline's Draining and Revoked report.
// It imports only the standard library, so that both can use it.
package signal

import "context"

// DrainingKey's value is a <-chan struct{}, closed when a graceful
// shutdown begins.
type DrainingKey struct{}

// RevokedKey's value is a Revoked.
type RevokedKey struct{}

// Revoked returns a channel that is closed once the partition's current
// assignment ends (revoked, lost, or the pipeline stopped), or one closed
// already if the partition is not assigned.
type Revoked func(topic string, partition int32) <-chan struct{}

// WithDraining returns a copy of ctx whose pipeline.Draining channel is
// draining: for testing a stage outside a pipeline.
func WithDraining(ctx context.Context, draining <-chan struct{}) context.Context {
	return context.WithValue(ctx, DrainingKey{}, draining)
}
