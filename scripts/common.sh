# Shared by scripts/run.sh and scripts/test.sh: system packages and the build cache.

# Installs the Debian packages named in "$@" that are missing (needs root or sudo).
install_missing_packages() {
    local missing=()
    local package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        return 0
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    echo "installing ${missing[*]}" >&2
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
}

# RocksDB's C++ takes minutes to compile: keep the build cache outside the clone so
# every clone (and CI) on this machine reuses it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kiln-target}"

# Free space (KiB) on the file system that holds the build cache.
free_build_space_kib() {
    df -Pk "$CARGO_TARGET_DIR" | awk 'NR == 2 { print $4 }'
}

# The cache is shared by every clone on the machine, and each clone path gets its own copy of the
# workspace's artifacts, so it only grows. A build that fills the disk fails half-way (CI did once:
# "No space left on device" while linking). Below KILN_MIN_FREE_GIB (default 12) of free space,
# this drops the incremental state first and, if that is not enough, the whole cache, which costs
# one cold build (RocksDB's C++ included) rather than a failed run.
ensure_build_space() {
    local floor_kib=$(( ${KILN_MIN_FREE_GIB:-12} * 1024 * 1024 ))
    mkdir -p "$CARGO_TARGET_DIR"
    if [ "$(free_build_space_kib)" -ge "$floor_kib" ]; then
        return 0
    fi
    echo "only $(( $(free_build_space_kib) / 1024 / 1024 )) GiB free for $CARGO_TARGET_DIR: removing its incremental state" >&2
    rm -rf "$CARGO_TARGET_DIR"/debug/incremental "$CARGO_TARGET_DIR"/release/incremental
    if [ "$(free_build_space_kib)" -ge "$floor_kib" ]; then
        return 0
    fi
    echo "still only $(( $(free_build_space_kib) / 1024 / 1024 )) GiB free: removing the whole build cache" >&2
    cargo clean
    mkdir -p "$CARGO_TARGET_DIR"
    if [ "$(free_build_space_kib)" -lt "$floor_kib" ]; then
        echo "warning: $(( $(free_build_space_kib) / 1024 / 1024 )) GiB free even without a build cache; the build may run out of space" >&2
    fi
}

# Builds the web UI into ui/dist, which node/build.rs embeds into kiln-node: run it before cargo builds
# the node. `npm ci` runs only when ui/node_modules is older than ui/package-lock.json.
build_ui() {
    if ! command -v npm >/dev/null 2>&1; then
        echo "error: npm (Node.js 20.19 or later) is needed to build the web UI in ui/" >&2
        return 1
    fi
    (
        cd ui
        if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
            npm ci --no-audit --no-fund
        fi
        npm run build
    )
}
