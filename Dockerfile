# The agent's image. It talks to the host's containerd through the mounted
# socket; README.md has the command line, the volumes and the capabilities
# it needs, and why.
#
# Base images are build arguments so that the same file builds from locally
# made bases (offline), and GOPROXY reaches a module proxy where the public
# one is out of reach:
#
#   docker build --build-arg VERSION=1.0.0 --build-arg COMMIT=$(git rev-parse HEAD) .
ARG GO_IMAGE=golang:1.26-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${GO_IMAGE} AS build
ARG GOPROXY
ARG GOSUMDB
ARG GOFLAGS=-buildvcs=false
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=
# cgo for NVML (go-nvml loads libnvidia-ml.so.1 at run time, so the build
# needs no driver).
RUN CGO_ENABLED=1 CGO_CFLAGS="-Wno-deprecated-declarations" \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
      -o /out/host-agent ./cmd/host-agent \
 && /out/host-agent version

FROM ${BASE_IMAGE}
# CA certificates for registries and the central server; the CNI plugins
# the rentals' networking runs (the agent executes them itself, in its own
# mount namespace) and the iptables/nft they call. Only the plugins the agent
# configures are kept.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates containernetworking-plugins iptables nftables \
 && find /usr/lib/cni -type f ! -name bridge ! -name portmap ! -name firewall \
      ! -name host-local ! -name loopback ! -name tuning ! -name bandwidth -delete \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /usr/share/doc /usr/share/man
COPY --from=build /out/host-agent /usr/local/bin/host-agent
ARG VERSION=dev
ARG COMMIT=
ARG SOURCE=https://github.com/host-agent/host-agent
LABEL org.opencontainers.image.title="host-agent" \
      org.opencontainers.image.description="Rents this machine's GPUs out as isolated containers on the host's containerd or Docker" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.url="${SOURCE}" \
      org.opencontainers.image.documentation="${SOURCE}#readme" \
      org.opencontainers.image.licenses="MIT"
ENV LISTEN_ADDR=:8080 \
    CONTAINERD_ADDRESS=/run/containerd/containerd.sock \
    CONTAINERD_NAMESPACE=rentals \
    STATE_DIR=/var/lib/host-agent \
    CNI_PLUGIN_DIRS=/usr/lib/cni
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/host-agent"]
