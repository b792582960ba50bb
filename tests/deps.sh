#!/bin/sh
# Install (as root) or name (otherwise) the Debian packages mod_comet needs to
# build, test and run.  Idempotent: does nothing when all are there.
set -e
need="apache2 apache2-dev apache2-utils libapr1-dev libaprutil1-dev check pkg-config libssl-dev redis-server redis-tools python3-redis gcc make openssl curl chromium"
missing=""
for p in $need; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
    echo "mod_comet: installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
else
    echo "mod_comet: missing Debian packages:$missing" >&2
    echo "mod_comet: install them with:  sudo apt-get install$missing" >&2
    exit 1
fi
