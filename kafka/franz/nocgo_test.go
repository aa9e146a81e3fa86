package franz_test

import (
	"os/exec"
	"strings"
	"testing"
)

// Neither this package nor the franz example depends on confluent-kafka-go
// (cgo): a franz user builds with CGO_ENABLED=0.
func TestNoConfluentDependency(t *testing.T) {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	cmd := exec.Command(goCmd, "list", "-deps", ".", "../../examples/franz")
	cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.Contains(dep, "confluent-kafka-go") {
			t.Errorf("depends on %s", dep)
		}
	}
}
