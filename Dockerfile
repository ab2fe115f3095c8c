# syntax=docker/dockerfile:1
#
# kipvs's container image: a static kipvs on Debian slim with iptables.
#
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) -t REGISTRY/kipvs:TAG .
#   docker buildx build --platform linux/amd64,linux/arm64 ... --push .
#
# The build stage compiles kipvs from the sources in the build context with
# `make image-binary`, so the image depends neither on the host's Go nor on a
# prebuilt bin/kipvs (docs/install.md). It runs on the build machine's
# platform and cross-compiles for the target (kipvs is pure Go, CGO_ENABLED=0).

ARG GO_VERSION=1.26
ARG DEBIAN_VERSION=trixie

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETARCH
ARG VERSION=dev
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN make image-binary GOARCH=${TARGETARCH} VERSION=${VERSION}

FROM debian:${DEBIAN_VERSION}-slim
# iptables: kipvs runs iptables-nft or iptables-legacy (and their -save and
# ip6tables variants; Debian's iptables package ships both backends) after
# finding which one the node's kubelet uses, so the alternatives are left at
# Debian's default; plain `iptables` is used only where neither variant exists.
# kmod: modprobe, which the IPVS library runs once for ip_vs when the module is
# not loaded (with /lib/modules mounted from the node, see deploy/).
# ipsets, conntrack and IPVS go over netlink: no ipset, conntrack or ipvsadm
# tools are needed.
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables kmod \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/bin/kipvs /usr/local/bin/kipvs
ENTRYPOINT ["/usr/local/bin/kipvs"]
