# Sourced by the scripts that build or test: installs Debian packages that are missing,
# with apt-get (through sudo when not root), saying which first.
#
#   BUILD_PACKAGES: what building authsync needs. A C++ compiler and libclang (bindgen)
#   for RocksDB, protoc for the .proto file, OpenSSL and zlib headers and make for
#   librdkafka.

BUILD_PACKAGES=(g++ libclang-dev protobuf-compiler libssl-dev zlib1g-dev pkg-config make)

# install_packages PKG...: installs those of PKG that are not installed yet.
install_packages() {
    local need=() pkg
    for pkg in "$@"; do
        # Installed, not merely known: a removed package whose config files remain
        # is still listed, as "deinstall ok config-files".
        [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" = "install ok installed" ] ||
            need+=("$pkg")
    done
    [ ${#need[@]} -gt 0 ] || return 0
    echo "installing with apt-get: ${need[*]}"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        "${need[@]}" >/dev/null
}

# first_build_notice: when the build directory has never built the dependency tree,
# says how long that takes.
first_build_notice() {
    local target="${CARGO_TARGET_DIR:-target}"
    if ! ls "$target"/debug/deps/liblibrocksdb_sys-*.rlib >/dev/null 2>&1; then
        echo "first build into $target: RocksDB and librdkafka compile from source, 16 to 35 minutes on 2 cores (later builds take seconds to a minute)"
    fi
}
