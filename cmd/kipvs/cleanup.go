package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"

	"github.com/spf13/cobra"

	"github.com/kipvs/kipvs/ipvs"
	"github.com/kipvs/kipvs/proxier"
)

// cleanupOptions are the flags of kipvs cleanup.
type cleanupOptions struct {
	dryRun       bool
	dummyLink    string
	excludeCIDRs []string
}

// newCleanupCommand returns "kipvs cleanup": it removes what kipvs created on
// this node (proxier.PlanCleanup says exactly what) and prints one line per object.
func newCleanupCommand() *cobra.Command {
	o := cleanupOptions{dummyLink: proxier.DefaultDummyLink}
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "Remove kipvs's virtual servers, dummy link and addresses, KIPVS-* chains, jump rules and ipsets from this node",
		Long: "kipvs cleanup removes what kipvs created on this node and leaves everything else:\n" +
			"virtual servers on addresses of the dummy link, NodePort virtual servers on node addresses whose\n" +
			"port is in kipvs's KIPVS-NODE-PORT-* ipsets (NodePorts of externalTrafficPolicy Local Services are\n" +
			"not in those sets and stay), the dummy link's addresses and the link, the KIPVS-* chains in nat and\n" +
			"filter with the rules that jump to them, and the KIPVS-*/KIPVS6-* ipsets. Nothing in\n" +
			"--ipvs-exclude-cidrs is touched. It prints one line per object and can run again safely.\n" +
			"Stop kipvs first: a running kipvs recreates what cleanup removes.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runCleanup(cmd.Context(), cmd.OutOrStdout(), o)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.dryRun, "dry-run", false, "print what would be removed without changing anything")
	f.StringVar(&o.dummyLink, "dummy-link", o.dummyLink, "name of the dummy link kipvs binds VIPs to")
	f.StringSliceVar(&o.excludeCIDRs, "ipvs-exclude-cidrs", nil, "comma-separated CIDRs whose virtual servers and addresses are left alone")
	return cmd
}

// runCleanup opens the kernel boundaries and runs proxier.Cleanup.
func runCleanup(ctx context.Context, out io.Writer, o cleanupOptions) error {
	var exclude []netip.Prefix
	for _, s := range o.excludeCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return fmt.Errorf("--ipvs-exclude-cidrs: %q is not a CIDR", s)
		}
		exclude = append(exclude, p.Masked())
	}
	nk, backend, err := proxier.NewNetfilterKernel(ctx)
	if err != nil {
		return fmt.Errorf("setting up iptables: %w", err)
	}
	defer func() { _ = nk.Close() }()
	k := proxier.NetfilterCleaner(nk)
	k.Links = proxier.NewNetlinkAddresses()
	ipv, err := ipvs.New()
	if err != nil {
		return err
	}
	defer func() { _ = ipv.Close() }()
	k.IPVS = ipv
	if _, err := ipv.Dump(ctx); errors.Is(err, ipvs.ErrNotSupported) {
		// Without the ip_vs module there is no virtual server to remove.
		fmt.Fprintln(out, "# IPVS is not loaded: no virtual servers to remove")
		k.IPVS = nil
	}
	fmt.Fprintf(out, "# %s\n", backend)
	verb := "removed"
	if o.dryRun {
		verb = "would remove"
	}
	plan, err := proxier.Cleanup(ctx, k, o.dummyLink, exclude, o.dryRun, func(r proxier.Removal, err error) {
		if err != nil {
			fmt.Fprintf(out, "failed to remove %s: %v\n", r, err)
			return
		}
		fmt.Fprintf(out, "%s %s\n", verb, r)
	})
	if o.dryRun {
		for _, r := range plan {
			fmt.Fprintf(out, "%s %s\n", verb, r)
		}
	}
	if err != nil {
		return err
	}
	if len(plan) == 0 {
		fmt.Fprintln(out, "# nothing of kipvs's to remove")
	}
	return nil
}
