# The agent's image. It talks to the host's containerd through the mounted
# socket; see README.md for the volumes it needs.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=1 CGO_CFLAGS="-Wno-deprecated-declarations" \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/host-agent ./cmd/host-agent

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/host-agent /usr/local/bin/host-agent
ENV LISTEN_ADDR=:8080 \
    CONTAINERD_ADDRESS=/run/containerd/containerd.sock \
    CONTAINERD_NAMESPACE=rentals \
    STATE_DIR=/var/lib/host-agent
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/host-agent"]
