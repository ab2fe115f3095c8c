// Command relay is the only way out of a test VM with a NIC: qemu's
// guestfwd runs it once per guest connection with that connection as stdin
// and stdout, and it copies bytes to and from a TCP connection to the address
// given as its only argument. It never writes anything else to stdout or
// stderr (both are the guest's connection); failures just end it.
package main

import (
	"io"
	"net"
	"os"
	"sync"
	"time"
)

func main() {
	if len(os.Args) != 2 {
		os.Exit(2)
	}
	conn, err := net.DialTimeout("tcp", os.Args[1], 10*time.Second)
	if err != nil {
		os.Exit(1)
	}
	tcp := conn.(*net.TCPConn)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		io.Copy(tcp, os.Stdin)
		tcp.CloseWrite()
	}()
	go func() {
		defer wg.Done()
		io.Copy(os.Stdout, tcp)
		os.Stdout.Close()
	}()
	wg.Wait()
	tcp.Close()
}
