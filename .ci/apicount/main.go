// Command apicount counts a module's public API the way issue 22 does:
// exported top-level names (types, functions, variables, constants) plus
// exported methods of exported types, per package, skipping internal/,
// examples/, bench/ and test files. Run from the module root:
//
//	go run ./.ci/apicount      # counts per package
//	go run ./.ci/apicount -v   # and the names
//
// A client adapter's own package (kafka/franz) is listed but left out of the
// total, as issue 22 counts.
package main

import (
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// uncounted are the client adapters' own packages.
var uncounted = map[string]bool{"kafka/franz": true}

func main() {
	verbose := flag.Bool("v", false, "list the names")
	flag.Parse()
	counts := map[string]int{}
	names := map[string][]string{}
	skip := []string{"internal", "examples", "bench", "contrib", "testdata", "integration"}
	filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			base := d.Name()
			if path != "." && (strings.HasPrefix(base, ".") || contains(skip, base)) {
				return filepath.SkipDir
			}
			if path != "." {
				if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil {
					return filepath.SkipDir // another module
				}
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		if f.Name.Name == "main" {
			return nil
		}
		dir := filepath.Dir(path)
		for _, decl := range f.Decls {
			switch d := decl.(type) {
			case *ast.FuncDecl:
				if !d.Name.IsExported() {
					continue
				}
				if d.Recv == nil {
					counts[dir]++
					names[dir] = append(names[dir], d.Name.Name)
				} else if recv, ok := recvName(d.Recv.List[0].Type); ok {
					counts[dir]++
					names[dir] = append(names[dir], recv+"."+d.Name.Name)
				}
			case *ast.GenDecl:
				for _, s := range d.Specs {
					switch s := s.(type) {
					case *ast.TypeSpec:
						if s.Name.IsExported() {
							counts[dir]++
							names[dir] = append(names[dir], s.Name.Name)
						}
					case *ast.ValueSpec:
						for _, n := range s.Names {
							if n.IsExported() {
								counts[dir]++
								names[dir] = append(names[dir], n.Name)
							}
						}
					}
				}
			}
		}
		return nil
	})
	dirs := make([]string, 0, len(counts))
	for d := range counts {
		dirs = append(dirs, d)
	}
	sort.Strings(dirs)
	total := 0
	for _, d := range dirs {
		if uncounted[d] {
			fmt.Printf("%-28s %4d (a client adapter: not in the total)\n", d, counts[d])
		} else {
			fmt.Printf("%-28s %4d\n", d, counts[d])
			total += counts[d]
		}
		if *verbose {
			sort.Strings(names[d])
			fmt.Printf("    %s\n", strings.Join(names[d], " "))
		}
	}
	fmt.Printf("%-28s %4d\n", "total", total)
}

// recvName returns a method receiver's type name and whether it is exported.
func recvName(e ast.Expr) (string, bool) {
	for {
		switch t := e.(type) {
		case *ast.StarExpr:
			e = t.X
		case *ast.IndexExpr:
			e = t.X
		case *ast.IndexListExpr:
			e = t.X
		case *ast.Ident:
			return t.Name, t.IsExported()
		default:
			return "", false
		}
	}
}

func contains(s []string, x string) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}
