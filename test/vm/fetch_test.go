package vm

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

const aptDependsSample = `iproute2
  PreDepends: init-system-helpers
  Depends: debconf
 |Depends: libbpf1
  Depends: libc6
  Depends: <debconf-2.0>
  Depends: libxtables12
libbpf1
  Depends: libc6
  Depends: zlib1g
debconf
  PreDepends: perl-base
  Depends: libtextwrap1
libxtables12
  Depends: libc6
zlib1g
  Depends: libc6
libc6
  Depends: libgcc-s1
libgcc-s1
  Depends: gcc-12-base
  Depends: libc6
perl-base
  PreDepends: libcrypt1
`

func TestLibraryClosure(t *testing.T) {
	graph := parseAptDepends(aptDependsSample)
	wantDeps := []string{"init-system-helpers", "debconf", "libbpf1", "libc6", "libxtables12"}
	if diff := cmp.Diff(wantDeps, graph["iproute2"]); diff != "" {
		t.Errorf("iproute2 deps (-want +got):\n%s", diff)
	}
	tests := []struct {
		roots []string
		want  []string
	}{
		// debconf's and perl-base's libraries are not followed.
		{roots: []string{"iproute2"}, want: []string{"iproute2", "libbpf1", "libc6", "libgcc-s1", "libxtables12", "zlib1g"}},
		{roots: []string{"zlib1g"}, want: []string{"libc6", "libgcc-s1", "zlib1g"}},
		{roots: []string{"unknown"}, want: []string{"unknown"}},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, libraryClosure(graph, tt.roots)); diff != "" {
			t.Errorf("closure of %v (-want +got):\n%s", tt.roots, diff)
		}
	}
}

func TestParseKernelPin(t *testing.T) {
	tests := []struct {
		in      string
		want    kernelPin
		wantErr bool
	}{
		{in: "linux-image-6.1.0-56-cloud-amd64 6.1.192-2\n", want: kernelPin{"linux-image-6.1.0-56-cloud-amd64", "6.1.192-2"}},
		{in: "linux-image-6.1.0-56-cloud-amd64", want: kernelPin{Package: "linux-image-6.1.0-56-cloud-amd64"}},
		{in: "6.1.0-56-cloud-amd64", wantErr: true},
		{in: "", wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseKernelPin(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("parseKernelPin(%q) = %+v, %v", tt.in, got, err)
		}
	}
	if got := (kernelPin{Package: "linux-image-6.1.0-56-cloud-amd64"}).KernelRelease(); got != "6.1.0-56-cloud-amd64" {
		t.Errorf("KernelRelease = %q", got)
	}
}
