#!/usr/bin/env bash
# build.sh builds etcd, kube-apiserver, kubectl and kube-proxy (k8s.io/kubernetes
# v1.37.2) for kipvs's API server tests into ${KIPVS_CACHE:-$HOME/.cache/kipvs}/apiserver/bin.
#
# The binaries never go into the repository. A stamp file records a hash of the
# build module (go.mod, go.sum, the etcd wrapper, this script) and the Go
# version; when it matches, the build is skipped. FORCE=1 rebuilds anyway.
#
# Cold build: see README.md for measured times (several minutes on 2 cores,
# ~2.8 GB peak memory while linking kube-apiserver).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
module="${here}/build"
cache="${KIPVS_CACHE:-${HOME}/.cache/kipvs}/apiserver"
bin="${cache}/bin"
stamp="${bin}/.stamp"
binaries=(etcd kube-apiserver kubectl kube-proxy)

kube_version="v1.37.2"
kube_major="1"
kube_minor="37"
# The release time of k8s.io/kubernetes v1.37.2 on the module proxy, so that
# buildDate is reproducible instead of "now".
build_date="2026-10-27T12:01:04Z"

export GOTOOLCHAIN=local
export CGO_ENABLED=0 # static binaries: kube-proxy also has to run inside the test VM

want_stamp() {
	{
		go version
		cat "${module}/go.mod" "${module}/go.sum" "${module}/cmd/etcd/main.go" "${BASH_SOURCE[0]}"
	} | sha256sum | cut -d' ' -f1
}

up_to_date() {
	local b
	[[ -f "${stamp}" ]] || return 1
	for b in "${binaries[@]}"; do
		[[ -x "${bin}/${b}" ]] || return 1
	done
	[[ "$(cat "${stamp}")" == "$(want_stamp)" ]]
}

ldflags() {
	local key val pkg out=""
	for kv in "gitVersion=${kube_version}" "gitMajor=${kube_major}" "gitMinor=${kube_minor}" \
		"gitTreeState=clean" "buildDate=${build_date}"; do
		key="${kv%%=*}"
		val="${kv#*=}"
		for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
			out+=" -X ${pkg}.${key}=${val}"
		done
	done
	echo "-s -w${out}"
}

main() {
	mkdir -p "${cache}"
	# One build at a time: two test runs racing on a cold cache would both link.
	exec 9>"${cache}/.build.lock"
	flock 9

	if [[ "${FORCE:-0}" != 1 ]] && up_to_date; then
		echo "apiserver binaries up to date in ${bin}"
		return 0
	fi

	local start tmp
	start=$(date +%s)
	tmp="$(mktemp -d "${cache}/bin.tmp.XXXXXX")"
	chmod 755 "${tmp}"
	trap 'rm -rf "${tmp}"' EXIT

	echo "building ${binaries[*]} (k8s.io/kubernetes ${kube_version}) into ${bin} ..."
	(
		cd "${module}"
		go build -trimpath -ldflags "$(ldflags)" -o "${tmp}/" \
			./cmd/etcd \
			k8s.io/kubernetes/cmd/kube-apiserver \
			k8s.io/kubernetes/cmd/kubectl \
			k8s.io/kubernetes/cmd/kube-proxy
	)
	want_stamp >"${tmp}/.stamp"

	rm -rf "${bin}"
	mv "${tmp}" "${bin}"
	trap - EXIT
	echo "built in $(($(date +%s) - start)) s:"
	"${bin}/kubectl" version --client || true
	ls -l "${bin}"
}

main "$@"
