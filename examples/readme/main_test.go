package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The README's "Use it against your own cluster" snippet is this file: the
// build of this package compiles it, and this test keeps the two identical.
func TestREADMESnippetIsThisFile(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	snippet, ok := goBlockAfter(string(readme), "## Use it against your own cluster")
	if !ok {
		t.Fatal(`README.md: no go code block after the heading "## Use it against your own cluster"`)
	}
	file, err := os.ReadFile("main.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal([]byte(snippet), file) {
		t.Errorf("README.md's snippet and examples/readme/main.go differ; make them identical.\n%s",
			firstDifference(snippet, string(file)))
	}
}

// goBlockAfter returns the body of the first ```go block after heading.
func goBlockAfter(markdown, heading string) (string, bool) {
	_, rest, ok := strings.Cut(markdown, "\n"+heading+"\n")
	if !ok {
		return "", false
	}
	_, rest, ok = strings.Cut(rest, "```go\n")
	if !ok {
		return "", false
	}
	body, _, ok := strings.Cut(rest, "```\n")
	return body, ok
}

// firstDifference names the first line where a and b differ.
func firstDifference(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := 0; i < len(al) || i < len(bl); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			return fmt.Sprintf("line %d:\nREADME.md: %s\nmain.go:   %s", i+1, x, y)
		}
	}
	return ""
}
