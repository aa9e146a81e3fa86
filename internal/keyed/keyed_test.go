package keyed_test

import (
	"testing"

	"github.com/parallafka/parallafka/internal/keyed"
)

func TestValues(t *testing.T) {
	key, seq, err := keyed.Parse(keyed.Value(42, 17))
	if err != nil {
		t.Fatal(err)
	}
	if key != "key-00042" || key != string(keyed.Key(42)) || seq != 17 {
		t.Fatalf("Parse(Value(42, 17)) = %q, %d", key, seq)
	}
	for _, bad := range []string{"", "key-1", "key-1/", "key-1/x", "key-1/-3"} {
		if _, _, err := keyed.Parse([]byte(bad)); err == nil {
			t.Errorf("Parse(%q): no error", bad)
		}
	}
}
