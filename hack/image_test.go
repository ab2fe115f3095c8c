// Package hack holds generators (hack/gendocs) and, in this test, checks of the
// container image recipe that need no Docker engine.
package hack_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// readRoot reads a file of the repository root.
func readRoot(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestDockerfile ties the Dockerfile to the Makefile: the build stage runs a
// make target that exists and writes bin/kipvs, and the final stage copies
// that file to the ENTRYPOINT.
func TestDockerfile(t *testing.T) {
	df := readRoot(t, "Dockerfile")
	mk := readRoot(t, "Makefile")
	stages := regexp.MustCompile(`(?m)^FROM .*$`).FindAllString(df, -1)
	if len(stages) != 2 || !strings.HasSuffix(stages[0], " AS build") {
		t.Fatalf("want a build stage and a final stage, got %q", stages)
	}
	m := regexp.MustCompile(`(?m)^RUN make ([a-z-]+)`).FindStringSubmatch(df)
	if m == nil {
		t.Fatal("the build stage does not run make")
	}
	recipe := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(m[1]) + `:.*\n\t(.*)$`).FindStringSubmatch(mk)
	if recipe == nil {
		t.Fatalf("Makefile has no target %s", m[1])
	}
	if !strings.Contains(recipe[1], "-o bin/kipvs ./cmd/kipvs") || !strings.Contains(recipe[1], "CGO_ENABLED=0") {
		t.Errorf("make %s: %q does not build a static bin/kipvs", m[1], recipe[1])
	}
	if !strings.Contains(df, "COPY --from=build /src/bin/kipvs /usr/local/bin/kipvs") ||
		!strings.Contains(df, `ENTRYPOINT ["/usr/local/bin/kipvs"]`) {
		t.Error("the final stage does not copy bin/kipvs to its ENTRYPOINT /usr/local/bin/kipvs")
	}
}

// TestDockerignoreKeepsSources fails when .dockerignore leaves out a
// directory that cmd/kipvs is built from.
func TestDockerignoreKeepsSources(t *testing.T) {
	var excluded []string
	for line := range strings.SplitSeq(readRoot(t, ".dockerignore"), "\n") {
		if dir, ok := strings.CutPrefix(strings.TrimSpace(line), "/"); ok && strings.HasSuffix(dir, "/") {
			excluded = append(excluded, dir)
		}
	}
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.Dir}}{{end}}", "../cmd/kipvs").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	for dir := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		rel, err := filepath.Rel(root, dir)
		if err != nil || strings.HasPrefix(rel, "..") {
			continue // a module dependency
		}
		for _, ex := range excluded {
			if strings.HasPrefix(rel+"/", ex) {
				t.Errorf(".dockerignore excludes /%s, but cmd/kipvs is built from %s", ex, rel)
			}
		}
	}
}
