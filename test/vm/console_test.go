package vm

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

func TestConsoleParsesMarker(t *testing.T) {
	const marker = "KIPVS-EXIT-abc "
	tests := []struct {
		name     string
		chunks   []string
		wantOut  string
		wantCode int
		wantSeen bool
	}{
		{
			name:     "plain",
			chunks:   []string{"hello\r\n", "KIPVS-EXIT-abc 0\r\n", "reboot: Power down\r\n"},
			wantOut:  "hello\n",
			wantCode: 0, wantSeen: true,
		},
		{
			name:     "split across writes after a partial line",
			chunks:   []string{"no newline", "KIPVS-EX", "IT-abc 42\r", "\n"},
			wantOut:  "no newline\n",
			wantCode: 42, wantSeen: true,
		},
		{
			name:    "other nonce is output, not a marker",
			chunks:  []string{"KIPVS-EXIT-xyz 0\r\n", "tail"},
			wantOut: "KIPVS-EXIT-xyz 0\ntail\n",
		},
		{
			name:    "marker without a number is output",
			chunks:  []string{"KIPVS-EXIT-abc oops\n"},
			wantOut: "KIPVS-EXIT-abc oops\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			c := newConsole(&out, marker)
			for _, ch := range tt.chunks {
				c.Write([]byte(ch))
			}
			c.Flush()
			code, seen := c.ExitCode()
			if out.String() != tt.wantOut || code != tt.wantCode || seen != tt.wantSeen {
				t.Errorf("got out %q code %d seen %v; want %q %d %v", out.String(), code, seen, tt.wantOut, tt.wantCode, tt.wantSeen)
			}
		})
	}
}

func TestRunScriptQuotes(t *testing.T) {
	opts := Options{Dir: "/work/it's here", Env: []string{"A=x y", "B=it's"}, Args: []string{"-v", "a'b", "$(false)"}}
	script := runScript("/kipvs/bin/prog", opts)
	// Replace the exec with printing of argv so that /bin/sh parses the script
	// exactly as the guest would.
	script = strings.Replace(script, "mkdir -p", "true", 1)
	script = strings.Replace(script, "\ncd ", "\ntrue ", 1)
	script = strings.Replace(script, "exec env -i", "printf '%s\\n'", 1)
	out, err := exec.Command("sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("sh: %v\n%s", err, out)
	}
	want := strings.Join([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "TMPDIR=/tmp",
		"A=x y", "B=it's", "/kipvs/bin/prog", "-v", "a'b", "$(false)"}, "\n") + "\n"
	if string(out) != want {
		t.Errorf("argv:\n%s\nwant:\n%s", out, want)
	}
}
