# The sidecar image: serin-proxy (the sidecar, uid 1337) and serin-iptables (the init container,
# run as root with NET_ADMIN and NET_RAW only). Build from the repository root:
#   docker build -f deploy/docker/proxy.Dockerfile -t ghcr.io/serin-mesh/serin-proxy:0.1.0 .
FROM rust:1.90-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p serin-proxy -p serin-iptables \
    && cp target/release/serin-proxy target/release/serin-iptables /usr/local/bin/

FROM debian:bookworm-slim
# iptables brings both the nft and the legacy tools; serin-iptables uses whichever the node uses.
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1337 serin-proxy \
    && useradd --uid 1337 --gid 1337 --no-create-home --shell /usr/sbin/nologin serin-proxy
COPY --from=build /usr/local/bin/serin-proxy /usr/local/bin/serin-iptables /usr/local/bin/
USER 1337:1337
EXPOSE 15000 15001 15006
ENTRYPOINT ["/usr/local/bin/serin-proxy"]
