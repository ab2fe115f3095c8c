// Command etcd is etcd's own server main, built from go.etcd.io/etcd/server/v3
// at the version k8s.io/kubernetes v1.37.2 pins, for kipvs's API server tests.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
