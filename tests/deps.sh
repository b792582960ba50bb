#!/bin/sh
# Install (as root) or name (otherwise) the Debian packages mod_comet needs to
# build, test and run, then the browser tests' npm packages (tests/browser,
# from its lockfile).  Idempotent: does nothing when all are there.
set -e
need="apache2 apache2-dev apache2-utils libapr1-dev libaprutil1-dev check pkg-config libssl-dev redis-server redis-tools python3-redis php-cli php-redis gcc make openssl curl chromium clang libclang-rt-14-dev"
missing=""
for p in $need; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $p"
done
# Node.js from wherever it came (a newer one than Debian's may be there).
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
    || missing="$missing nodejs npm"

# npm ci when node_modules is missing or older than the lockfile.
npm_ci() {
    dir="$(dirname "$0")/browser"
    if [ ! -f "$dir/node_modules/.package-lock.json" ] \
       || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
        echo "mod_comet: npm ci in tests/browser"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    fi
}

if [ -z "$missing" ]; then
    npm_ci
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    echo "mod_comet: installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
    npm_ci
else
    echo "mod_comet: missing Debian packages:$missing" >&2
    echo "mod_comet: install them with:  sudo apt-get install$missing" >&2
    exit 1
fi
