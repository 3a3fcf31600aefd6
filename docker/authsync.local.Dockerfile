# authsync node image for a machine that cannot pull: the runtime stage of ../Dockerfile
# (same user, directories, permissions, healthcheck and command) around a binary built
# on the host, which is bookworm too, so its glibc and libssl3 match.
#   scripts/compose.sh builds it as authsync:latest from a context holding only the binary.
# debian:bookworm-slim here is the local debootstrap image (scripts/compose.sh), which
# already holds the packages ../Dockerfile installs: ca-certificates curl libssl3 zlib1g.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/authsync authsync \
 # Mount points owned by the node's user, so fresh named volumes are writable by it:
 # data, and one keyring directory per region (each node mounts only its own).
 && mkdir -p /var/lib/authsync/data /keys/af-south /keys/eu-west /keys/us-east /keys/new \
 && chown -R authsync:authsync /var/lib/authsync /keys \
 && chmod 0700 /keys/af-south /keys/eu-west /keys/us-east /keys/new
USER authsync
WORKDIR /var/lib/authsync
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["authsync"]
CMD ["node", "--config", "/etc/authsync/node.toml"]
# Last, so that a new binary rebuilds one layer (it is root's, as in ../Dockerfile).
COPY authsync /usr/local/bin/authsync
