# The control plane image: serin-control (gRPC 15010, HTTP 15080, webhook 15017) and serinctl.
# Build from the repository root:
#   docker build -f deploy/docker/control-plane.Dockerfile -t ghcr.io/serin-mesh/serin-control:0.1.0 .
FROM rust:1.90-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p serin-control -p serinctl \
    && cp target/release/serin-control target/release/serinctl /usr/local/bin/

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/serin-control /usr/local/bin/serinctl /usr/local/bin/
USER 65532:65532
EXPOSE 15010 15080 15017
ENTRYPOINT ["/usr/local/bin/serin-control"]
