#!/bin/sh
# Publishing throughput: PUBLISH through mod_comet's Unix publish socket
# (redis-benchmark, one by one and pipelined), the same command against a
# real redis-server on a Unix socket of the same machine, and HTTP POSTs to
# the publisher handler (ab).  No subscribers: this measures the publish
# path (parse, store, reply), not fan-out.
#
#   sh bench/publish.sh [requests]        default 100000 (HTTP: a fifth)
#
# Environment: PORT (default 18490) for httpd; REPS (default 3): each figure
# is the median of REPS runs; COMET_MODULE (default .libs/mod_comet.so).
# Everything started here is stopped by PID on exit.
set -eu

N=${1:-100000}
REPS=${REPS:-3}
PORT=${PORT:-18490}
CLIENTS=50
root=$(cd "$(dirname "$0")/.." && pwd)
so=${COMET_MODULE:-$root/.libs/mod_comet.so}
APACHE2=${APACHE2:-$(command -v apache2 || echo /usr/sbin/apache2)}
modules=$(apxs -q LIBEXECDIR 2>/dev/null || echo /usr/lib/apache2/modules)

for tool in redis-benchmark redis-server ab "$APACHE2"; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "publish.sh: $tool is missing (sh tests/deps.sh)" >&2; exit 1; }
done
[ -f "$so" ] || { echo "publish.sh: $so missing (make)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/comet-pubbench.XXXXXX")
chmod 755 "$work"
httpd_pid=
redis_pid=

cleanup() {
    [ -n "$httpd_pid" ] && kill "$httpd_pid" 2>/dev/null || true
    [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null || true
    i=0
    while [ "$i" -lt 100 ] && { { [ -n "$httpd_pid" ] && kill -0 "$httpd_pid" 2>/dev/null; } \
            || { [ -n "$redis_pid" ] && kill -0 "$redis_pid" 2>/dev/null; }; }; do
        sleep 0.1; i=$((i + 1))
    done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# ---- servers ------------------------------------------------------------------

cp "$so" "$work/mod_comet.so"
usergroup=
if [ "$(id -u)" = 0 ]; then
    usergroup="User www-data
Group www-data"
fi
cat > "$work/httpd.conf" <<EOF
ServerRoot "$work"
ServerName 127.0.0.1
Listen 127.0.0.1:$PORT
PidFile "$work/httpd.pid"
DefaultRuntimeDir "$work"
Mutex file:$work default
ErrorLog "$work/error_log"
LogLevel warn
$usergroup
LoadModule mpm_event_module $modules/mod_mpm_event.so
LoadModule authz_core_module $modules/mod_authz_core.so
LoadModule comet_module $work/mod_comet.so
StartServers 2
ServerLimit 2
ThreadsPerChild 25
MaxRequestWorkers 50
MaxKeepAliveRequests 0
CometPublishSocket "$work/comet.sock"
<Location /pub/>
    SetHandler comet-publisher
    Require all granted
</Location>
EOF
setsid "$APACHE2" -d "$work" -f "$work/httpd.conf" -DFOREGROUND \
    > "$work/stderr.log" 2>&1 &
httpd_pid=$!
redis-server --port 0 --unixsocket "$work/redis.sock" --unixsocketperm 700 \
    --save '' --appendonly no > "$work/redis.log" 2>&1 &
redis_pid=$!

i=0
until [ -S "$work/comet.sock" ] && [ -S "$work/redis.sock" ] \
        && redis-cli -s "$work/comet.sock" PING >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -gt 200 ]; then
        echo "publish.sh: servers did not come up" >&2
        cat "$work/stderr.log" "$work/error_log" "$work/redis.log" >&2 || true
        exit 1
    fi
    sleep 0.05
done

# ---- runs --------------------------------------------------------------------------

median() {
    sort -n | awk '{ v[NR] = $1 } END { if (NR) printf "%.0f\n", v[int((NR + 1) / 2)] }'
}

# redis-benchmark prints "PUBLISH ...: 123456.78 requests per second, ..."
rb() {   # socket pipeline
    r=1
    while [ "$r" -le "$REPS" ]; do
        redis-benchmark -s "$1" -n "$N" -c "$CLIENTS" -P "$2" -q \
            PUBLISH bench "a 32-byte message for the bench." 2>/dev/null \
            | tr '\r' '\n' | sed -n 's/.*: \([0-9.]*\) requests per second.*/\1/p' \
            | tail -n 1
        r=$((r + 1))
    done | median
}

ab_run() {   # keepalive flag
    printf 'a 32-byte message for the bench.' > "$work/body"
    r=1
    while [ "$r" -le "$REPS" ]; do
        ab $1 -q -n $((N / 5)) -c "$CLIENTS" -p "$work/body" -T text/plain \
            "http://127.0.0.1:$PORT/pub/bench" 2>/dev/null \
            | sed -n 's/^Requests per second: *\([0-9.]*\).*/\1/p'
        r=$((r + 1))
    done | median
}

comet1=$(rb "$work/comet.sock" 1)
redis1=$(rb "$work/redis.sock" 1)
comet16=$(rb "$work/comet.sock" 16)
redis16=$(rb "$work/redis.sock" 16)
http=$(ab_run "")
httpk=$(ab_run "-k")

echo "machine: $(nproc) CPUs, $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1)"
echo "$("$APACHE2" -v | sed -n 's/^Server version: //p'), $(redis-server --version | cut -d' ' -f1-3)"
echo "requests: $N per run ($((N / 5)) for HTTP), $CLIENTS clients, median of $REPS runs"
printf '%-46s %12s\n' "path" "publishes/s"
printf '%-46s %12s\n' "mod_comet socket, redis-benchmark -P 1" "$comet1"
printf '%-46s %12s\n' "redis-server socket, redis-benchmark -P 1" "$redis1"
printf '%-46s %12s\n' "mod_comet socket, redis-benchmark -P 16" "$comet16"
printf '%-46s %12s\n' "redis-server socket, redis-benchmark -P 16" "$redis16"
printf '%-46s %12s\n' "mod_comet HTTP POST, ab (new connection each)" "$http"
printf '%-46s %12s\n' "mod_comet HTTP POST, ab -k (keep-alive)" "$httpk"
