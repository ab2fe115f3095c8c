// Command kipvs is a Kubernetes service proxy that programs Linux IPVS: a
// maintained replacement for kube-proxy's IPVS mode, with kube-proxy's flags and
// KubeProxyConfiguration file.
//
// This package only wires the other packages together: configuration in
// proxier/config, the kernel in ipvs and proxier, the API server in endpoints.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/kipvs/kipvs/proxier/config"
)

// version is set at build time: go build -ldflags "-X main.version=v0.1.0".
var version = "dev"

func main() {
	// SIGTERM and SIGINT stop kipvs gracefully: the kernel's IPVS table stays in
	// place, so traffic keeps flowing until the next kipvs takes over.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	err := newRootCommand().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kipvs:", err)
		os.Exit(1)
	}
}

// newRootCommand returns the kipvs command: without a subcommand it runs the proxy.
func newRootCommand() *cobra.Command {
	opts := config.NewOptions()
	cmd := &cobra.Command{
		Use:   "kipvs",
		Short: "Kubernetes service proxy on Linux IPVS, compatible with kube-proxy's IPVS mode",
		Long: "kipvs watches Services, EndpointSlices and its Node and programs IPVS virtual servers for them.\n" +
			"It accepts kube-proxy's flags and a kube-proxy KubeProxyConfiguration file (--config);\n" +
			"flags given on the command line override the file.",
		Args:              cobra.NoArgs,
		SilenceUsage:      true,
		SilenceErrors:     true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd.Context(), opts)
		},
	}
	opts.AddFlags(cmd.Flags())
	cmd.AddCommand(newStatusCommand())
	cmd.AddCommand(newCleanupCommand())
	cmd.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the kipvs version and the Go version it was built with",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "kipvs %s (%s, %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		},
	})
	return cmd
}
