// Command apiserver-up starts the test etcd + kube-apiserver (built by
// test/apiserver/build.sh), prints how to reach them and runs until SIGINT or
// SIGTERM. The demo and manual debugging use it:
//
//	go run ./test/apiserver/cmd/apiserver-up [-dir DIR] [-vm-address 10.0.2.100]
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/kipvs/kipvs/test/apiserver"
)

func main() {
	dir := flag.String("dir", "", "working directory to keep (default: a temporary one, removed on exit)")
	vmAddress := flag.String("vm-address", "", "also write an admin kubeconfig for https://ADDRESS:PORT, e.g. 10.0.2.100 (the test VM's guestfwd address)")
	flag.Parse()
	if err := run(*dir, *vmAddress); err != nil {
		fmt.Fprintln(os.Stderr, "apiserver-up:", err)
		os.Exit(1)
	}
}

func run(dir, vmAddress string) error {
	if reason, ok := apiserver.Available(); !ok {
		return fmt.Errorf("%s", reason)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	s, err := apiserver.Start(ctx, apiserver.Options{Dir: dir})
	if err != nil {
		return err
	}
	defer s.Stop()
	fmt.Printf("kube-apiserver ready in %v\n", time.Since(start).Round(time.Millisecond))
	fmt.Printf("URL:        %s\nkubeconfig: %s\nCA:         %s\netcd:       %s\nlogs:       %s/{etcd,kube-apiserver}.log\n",
		s.URL, s.AdminKubeconfig, s.CAFile, s.EtcdURL, s.Dir)
	if vmAddress != "" {
		vmServer := "https://" + net.JoinHostPort(vmAddress, strconv.Itoa(s.Port))
		path, err := s.TokenKubeconfig(s.AdminToken, vmServer)
		if err != nil {
			return err
		}
		fmt.Printf("VM kubeconfig (%s): %s\n", vmServer, path)
	}
	fmt.Printf("export KUBECONFIG=%s\n", s.AdminKubeconfig)
	fmt.Println("Ctrl-C to stop")
	<-ctx.Done()
	fmt.Println("stopping")
	return s.Stop()
}
