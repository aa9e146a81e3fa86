package main

import "testing"

// The example runs to the end on the embedded broker.
func TestRun(t *testing.T) {
	if err := run("", 300); err != nil {
		t.Fatal(err)
	}
}
