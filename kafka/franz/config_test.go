package franz_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/parallafka/parallafka/kafka/franz"
)

// NewClient refuses the options that break the guarantees; NewSource
// refuses a client NewClient did not build, and a client used twice.
func TestUnsafeOptionsRefused(t *testing.T) {
	seed := kgo.SeedBrokers("127.0.0.1:1")
	for name, opts := range map[string][]kgo.Opt{
		"no group":             {seed},
		"marked auto-commit":   {seed, kgo.ConsumerGroup("g"), kgo.AutoCommitMarks()},
		"greedy auto-commit":   {seed, kgo.ConsumerGroup("g"), kgo.GreedyAutoCommit()},
		"auto-commit interval": {seed, kgo.ConsumerGroup("g"), kgo.AutoCommitInterval(100)},
		"block on poll":        {seed, kgo.ConsumerGroup("g"), kgo.BlockRebalanceOnPoll()},
		"topics in the client": {seed, kgo.ConsumerGroup("g"), kgo.ConsumeTopics("t")},
		"regex":                {seed, kgo.ConsumerGroup("g"), kgo.ConsumeRegex()},
	} {
		t.Run(name, func(t *testing.T) {
			cl, err := franz.NewClient(opts, franz.WithLogger(nil))
			if cl != nil {
				cl.Close()
			}
			assert.ErrorIs(t, err, franz.ErrUnsafeConfig)
		})
	}

	own, err := kgo.NewClient(seed, kgo.ConsumerGroup("g"), kgo.DisableAutoCommit())
	require.NoError(t, err)
	defer own.Close()
	_, err = franz.NewSource(own, []string{"t"}, franz.String, franz.String)
	assert.ErrorIs(t, err, franz.ErrUnsafeConfig, "a client NewClient did not build")

	cl, err := franz.NewClient([]kgo.Opt{seed, kgo.ConsumerGroup("g"), kgo.DisableAutoCommit()}, franz.WithLogger(nil))
	require.NoError(t, err, "DisableAutoCommit given by the caller is fine")
	src, err := franz.NewSource(cl, []string{"t"}, franz.String, franz.String)
	require.NoError(t, err)
	_, err = franz.NewSource(cl, []string{"t"}, franz.String, franz.String)
	assert.Error(t, err, "a client serves one Source")
	require.NoError(t, src.Close())

	for name, opts := range map[string][]kgo.Opt{
		"acks=1":         {seed, kgo.RequiredAcks(kgo.LeaderAck()), kgo.DisableIdempotentWrite()},
		"no idempotence": {seed, kgo.DisableIdempotentWrite()},
		"consumer group": {seed, kgo.ConsumerGroup("g")},
	} {
		t.Run("dead-letter "+name, func(t *testing.T) {
			_, err := franz.NewDeadLetterWriter(opts, franz.WithLogger(nil))
			assert.ErrorIs(t, err, franz.ErrUnsafeConfig)
		})
	}
}

// A negative startup timeout is refused, not taken for "forever".
func TestStartupTimeoutNegativeRefused(t *testing.T) {
	cl, err := franz.NewClient([]kgo.Opt{kgo.SeedBrokers("127.0.0.1:1"), kgo.ConsumerGroup("g")}, franz.WithLogger(nil))
	require.NoError(t, err)
	defer cl.Close()
	_, err = franz.NewSource(cl, []string{"t"}, franz.String, franz.String, franz.WithStartupTimeout(-time.Second))
	require.ErrorContains(t, err, "WithStartupTimeout: negative timeout")
	src, err := franz.NewSource(cl, []string{"t"}, franz.String, franz.String, franz.WithStartupTimeout(0))
	require.NoError(t, err, "0 waits forever; the refused NewSource did not claim the client")
	require.NoError(t, src.Close())
}
