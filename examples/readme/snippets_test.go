package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// snippetSources are the Go files a documentation code block may be taken
// from: this package's (compiled by go test ./...), and example modules'
// files compiled by their own tests in .ci/run.
var snippetSources = []string{"*.go", "../observability/main.go"}

// Every ```go block of README.md, docs/*.md and CONTRIBUTING.md is a run of
// whole lines of one of snippetSources, once a common indentation of tabs
// is taken off: so every snippet of the documentation compiles.
func TestDocSnippetsCompile(t *testing.T) {
	sources := map[string]string{}
	for _, pattern := range snippetSources {
		files, err := filepath.Glob(pattern)
		if err != nil || len(files) == 0 {
			t.Fatalf("no Go file matches %s", pattern)
		}
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			sources[f] = string(b)
		}
	}
	docs, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	docs = append(docs, "../../README.md", "../../CONTRIBUTING.md")
	blocks := 0
	for _, doc := range docs {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, block := range goBlocks(string(b)) {
			blocks++
			if !inSources(block.body, sources) {
				t.Errorf("%s:%d: this go block is not in %v; put it in a function of examples/readme and copy it from there:\n%s",
					doc, block.line, snippetSources, block.body)
			}
		}
	}
	if blocks == 0 {
		t.Fatal("no go block found")
	}
}

type goBlock struct {
	line int // of the opening fence
	body string
}

var fence = regexp.MustCompile("(?m)^```go\n")

// goBlocks returns the ```go blocks of markdown.
func goBlocks(markdown string) []goBlock {
	var blocks []goBlock
	for _, loc := range fence.FindAllStringIndex(markdown, -1) {
		body, _, ok := strings.Cut(markdown[loc[1]:], "\n```")
		if !ok {
			continue
		}
		blocks = append(blocks, goBlock{line: strings.Count(markdown[:loc[0]], "\n") + 1, body: body + "\n"})
	}
	return blocks
}

// inSources reports whether block is a run of whole lines of a source,
// with up to four leading tabs taken off every line of the source.
func inSources(block string, sources map[string]string) bool {
	for _, src := range sources {
		for tabs := 0; tabs <= 4; tabs++ {
			if strings.Contains("\n"+dedent(src, tabs), "\n"+block) {
				return true
			}
		}
	}
	return false
}

// dedent takes n leading tabs off every line that has them.
func dedent(src string, n int) string {
	prefix := strings.Repeat("\t", n)
	lines := strings.Split(src, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimPrefix(l, prefix)
	}
	return strings.Join(lines, "\n")
}
