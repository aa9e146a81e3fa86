package kafkaclient

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRepeatsAllowOncePerSecond(t *testing.T) {
	var r Repeats
	t0 := time.Unix(1000, 0)
	ok, n := r.Allow("Connect to 127.0.0.1:1 failed (after 0ms)", t0)
	require.True(t, ok)
	require.Zero(t, n)
	for i := range 5 {
		ok, _ = r.Allow("Connect to 127.0.0.1:1 failed (after 1ms)", t0.Add(time.Duration(i+1)*100*time.Millisecond))
		require.False(t, ok)
	}
	ok, _ = r.Allow("another line", t0.Add(200*time.Millisecond))
	require.True(t, ok)
	ok, n = r.Allow("Connect to 127.0.0.1:1 failed (after 3ms)", t0.Add(1100*time.Millisecond))
	require.True(t, ok)
	require.Equal(t, 5, n)
}
