package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kipvs/kipvs/proxier"
)

// DefaultStatusAddress is where a local kipvs serves its status (the default
// --metrics-bind-address).
const DefaultStatusAddress = "http://127.0.0.1:10249/status"

// conntrackWarnPercent is the conntrack fill above which kipvs status warns.
const conntrackWarnPercent = 80

// watchInterval is how often --watch refreshes; tests shorten it.
var watchInterval = 2 * time.Second

// statusOptions are the flags of kipvs status.
type statusOptions struct {
	address string
	output  string
	watch   bool
}

// newStatusCommand returns "kipvs status": it reads a running kipvs's status
// endpoint and prints it like kubectl get.
func newStatusCommand() *cobra.Command {
	o := statusOptions{address: DefaultStatusAddress}
	cmd := &cobra.Command{
		Use:   "status [namespace/service | VIP:port]",
		Short: "Show what the kipvs on this node programs: Services, VIPs, backends with live connection counts, drift and rejected objects",
		Long: "kipvs status reads the status endpoint of the kipvs running on this node (on its metrics address)\n" +
			"and prints one row per Service port and VIP. -o wide adds a row per backend with its pod, node,\n" +
			"zone, state (ready, terminating, draining with the time left) and connection counters; -o json\n" +
			"prints the endpoint's JSON. A Service (namespace/name) or a VIP (IP:port) narrows the output.",
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			arg := ""
			if len(args) == 1 {
				arg = args[0]
			}
			return runStatus(cmd.Context(), cmd.OutOrStdout(), o, arg)
		},
	}
	cmd.Flags().StringVar(&o.address, "address", o.address, "URL of the kipvs status endpoint.")
	cmd.Flags().StringVarP(&o.output, "output", "o", o.output, "Output format: empty for a table, wide, or json.")
	cmd.Flags().BoolVarP(&o.watch, "watch", "w", o.watch, "Refresh every 2 seconds until interrupted.")
	return cmd
}

// runStatus fetches and prints the status once, or every watchInterval with --watch.
func runStatus(ctx context.Context, out io.Writer, o statusOptions, arg string) error {
	if o.output != "" && o.output != "wide" && o.output != "json" {
		return fmt.Errorf("unknown output format %q: want wide or json", o.output)
	}
	u, err := statusURL(o.address, arg)
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 30 * time.Second}
	for {
		var buf bytes.Buffer
		if err := printStatus(ctx, &buf, client, u, o.output); err != nil {
			if o.watch && ctx.Err() != nil {
				return nil // interrupted while fetching
			}
			return err
		}
		if o.watch {
			fmt.Fprint(out, "\033[H\033[2J") // clear the terminal, like watch(1)
		}
		if _, err := out.Write(buf.Bytes()); err != nil {
			return err
		}
		if !o.watch {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(watchInterval):
		}
	}
}

// statusURL adds the query for a Service (namespace/name) or VIP (IP:port) argument.
func statusURL(address, arg string) (string, error) {
	u, err := url.Parse(address)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return "", fmt.Errorf("--address %q: want a URL such as %s", address, DefaultStatusAddress)
	}
	q := u.Query()
	switch {
	case arg == "":
	case strings.Contains(arg, "/"):
		q.Set("service", arg)
	default:
		if _, err := netip.ParseAddrPort(arg); err != nil {
			return "", fmt.Errorf("argument %q: want namespace/service or VIP:port ([IPv6]:port)", arg)
		}
		q.Set("vip", arg)
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// printStatus fetches the status and prints it in format ("", "wide" or "json").
func printStatus(ctx context.Context, w io.Writer, client *http.Client, u, format string) error {
	body, err := fetchStatus(ctx, client, u)
	if err != nil {
		return err
	}
	if format == "json" {
		_, err := w.Write(body)
		return err
	}
	var st proxier.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("kipvs status at %s: decoding the answer: %w", u, err)
	}
	return renderStatus(w, &st, format == "wide")
}

// fetchStatus GETs the status document.
func fetchStatus(ctx context.Context, client *http.Client, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		var nerr net.Error
		var operr *net.OpError
		if errors.As(err, &operr) || errors.As(err, &nerr) {
			return nil, fmt.Errorf("cannot reach kipvs status at %s: is kipvs running on this node? (%w)", u, err)
		}
		return nil, fmt.Errorf("kipvs status at %s: %w", u, err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("kipvs status at %s: reading the answer: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("kipvs status at %s: HTTP %d: %s", u, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return body, nil
}

// renderStatus prints a status document as text: a summary, one row per
// Service port and VIP (wide: and one per backend), then drift, rejected
// objects and read errors.
func renderStatus(w io.Writer, st *proxier.Status, wide bool) error {
	fmt.Fprintf(w, "Node %s at %s\n", st.Node, st.Time.UTC().Format(time.RFC3339))
	if ls := st.LastSync; ls != nil {
		result := "ok"
		if ls.Error != "" {
			result = "error: " + ls.Error
		}
		fmt.Fprintf(w, "Last sync: %s, %s, %s, %d writes (%d failed): %s\n", ls.Time.UTC().Format(time.RFC3339), ls.Kind,
			time.Duration(ls.DurationSeconds*float64(time.Second)).Round(time.Millisecond), ls.Writes, ls.FailedWrites, result)
	} else {
		fmt.Fprintln(w, "Last sync: none yet")
	}
	if ct := st.Conntrack; ct != nil {
		fmt.Fprintf(w, "Conntrack: %d/%d entries (%.1f%%)\n", ct.Entries, ct.Limit, ct.Percent)
		if ct.Percent > conntrackWarnPercent {
			fmt.Fprintf(w, "WARNING: the conntrack table is %.1f%% full: when it is full the kernel drops new connections; raise net.netfilter.nf_conntrack_max\n", ct.Percent)
		}
	}
	fmt.Fprintln(w)
	var table bytes.Buffer
	tw := tabwriter.NewWriter(&table, 0, 8, 2, ' ', 0)
	header := "SERVICE\tPROTO\tVIP\tKIND\tSCHED\tAFFINITY\tBACKENDS\tACTIVE\tINACTIVE\t"
	if wide {
		header += "POD\tNODE\tZONE\tSTATE\tWEIGHT\t"
	}
	fmt.Fprintln(tw, header+"NOTES")
	for i := range st.Services {
		renderServicePort(tw, &st.Services[i], wide)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for line := range strings.Lines(table.String()) {
		fmt.Fprintln(w, strings.TrimRight(line, " \n"))
	}
	section(w, "DRIFT", "KIND\tOBJECT\tPROBLEM", len(st.Drift), func(i int) string {
		d := st.Drift[i]
		return d.Kind + "\t" + d.Object + "\t" + d.Problem
	})
	section(w, "REJECTED", "KIND\tOBJECT\tREASON", len(st.Rejected), func(i int) string {
		r := st.Rejected[i]
		return r.Kind + "\t" + r.Namespace + "/" + r.Name + "\t" + r.Reason
	})
	for _, e := range st.Errors {
		fmt.Fprintln(w, "ERROR:", e)
	}
	return nil
}

// renderServicePort prints the rows of one Service port.
func renderServicePort(tw io.Writer, sp *proxier.ServicePortStatus, wide bool) {
	affinity := sp.Affinity
	if sp.AffinityTimeoutSeconds > 0 {
		affinity += "/" + strconv.FormatUint(uint64(sp.AffinityTimeoutSeconds), 10) + "s"
	}
	if len(sp.VirtualServers) == 0 {
		note := "no virtual server"
		if sp.Error != "" {
			note = "error: " + sp.Error
		} else if sp.Skipped != "" {
			note = "skipped: " + sp.Skipped
		}
		row(tw, wide, sp.Name, sp.Protocol, "-", "-", dash(sp.Scheduler), affinity, fmt.Sprintf("%d/%d", sp.Endpoints.Ready, sp.Endpoints.Total), "0", "0", note)
		return
	}
	for _, vs := range sp.VirtualServers {
		ready, active, inactive, draining, missing := 0, 0, 0, 0, 0
		for _, b := range vs.Backends {
			active += b.ActiveConns
			inactive += b.InactiveConns
			switch b.State {
			case proxier.StateReady, proxier.StateTerminating:
				ready++
			case proxier.StateDraining:
				draining++
			case proxier.StateMissing:
				missing++
			}
		}
		var notes []string
		if !vs.InKernel {
			notes = append(notes, "missing from the kernel")
		} else if missing > 0 {
			notes = append(notes, fmt.Sprintf("%d missing from the kernel", missing))
		}
		if draining > 0 {
			notes = append(notes, fmt.Sprintf("%d draining", draining))
		}
		if sp.Error != "" {
			notes = append(notes, "error: "+sp.Error)
		}
		row(tw, wide, sp.Name, sp.Protocol, vs.VIP, vs.Kind, dash(sp.Scheduler), affinity, fmt.Sprintf("%d/%d", ready, len(vs.Backends)),
			strconv.Itoa(active), strconv.Itoa(inactive), strings.Join(notes, "; "))
		if !wide {
			continue
		}
		for _, b := range vs.Backends {
			state := b.State
			if b.DrainSecondsLeft != nil {
				state += fmt.Sprintf(" (%s left)", time.Duration(*b.DrainSecondsLeft*float64(time.Second)).Round(time.Second))
			}
			fmt.Fprintf(tw, "  -> %s\t\t\t\t\t\t\t%d\t%d\t%s\t%s\t%s\t%s\t%d\t\n", b.Address, b.ActiveConns, b.InactiveConns,
				dash(b.Pod), dash(b.Node), dash(b.Zone), state, b.Weight)
		}
	}
}

// row prints one Service port row (the last column is NOTES); wide rows leave
// the backend columns before it empty.
func row(tw io.Writer, wide bool, cols ...string) {
	line := strings.Join(cols[:len(cols)-1], "\t") + "\t"
	if wide {
		line += "\t\t\t\t\t"
	}
	fmt.Fprintln(tw, line+cols[len(cols)-1])
}

// section prints a titled table of n rows, nothing when n is 0.
func section(w io.Writer, title, header string, n int, line func(int) string) {
	if n == 0 {
		return
	}
	fmt.Fprintf(w, "\n%s\n", title)
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for i := range n {
		fmt.Fprintln(tw, line(i))
	}
	_ = tw.Flush()
}

// dash returns s, or "-" when s is empty.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
