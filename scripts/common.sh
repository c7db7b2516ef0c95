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
