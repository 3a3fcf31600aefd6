# syntax=docker/dockerfile:1
# authsync node image: built in a Rust image, run in a slim one as a non-root user.
#   docker build -t authsync .
# The binary is the one `cargo build --release --locked` builds.

FROM rust:1.95-bookworm AS build
# bindgen (librocksdb-sys) needs libclang; prost-build needs protoc; librdkafka builds
# with cmake-free make and needs zlib and OpenSSL headers.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libclang-dev clang protobuf-compiler libssl-dev zlib1g-dev pkg-config make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
COPY benches benches
COPY tests tests
COPY chaos chaos
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin authsync \
 && cp target/release/authsync /usr/local/bin/authsync

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/authsync authsync \
 # Mount points owned by the node's user, so fresh named volumes are writable by it:
 # data, and one keyring directory per region (each node mounts only its own).
 && mkdir -p /var/lib/authsync/data /keys/af-south /keys/eu-west /keys/us-east /keys/new \
 && chown -R authsync:authsync /var/lib/authsync /keys \
 && chmod 0700 /keys/af-south /keys/eu-west /keys/us-east /keys/new
COPY --from=build /usr/local/bin/authsync /usr/local/bin/authsync
USER authsync
WORKDIR /var/lib/authsync
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["authsync"]
CMD ["node", "--config", "/etc/authsync/node.toml"]
