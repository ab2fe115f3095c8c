//go:build tools

// Package tools records the k8s.io/kubernetes commands build.sh builds, so
// that go mod tidy keeps every module they need.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
