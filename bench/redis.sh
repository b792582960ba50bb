#!/bin/sh
# Channels shared through Redis: cross-server fan-out and publish throughput,
# mod_comet (CometRedis) beside Nchan (nchan_redis_url), both against the
# same redis-server, with the one-server figures of each beside them.  Same
# load generator (build/cometbench) as bench/run.sh.
#
#   sh bench/redis.sh quick     500 subscribers, short runs (< 1 min)
#   sh bench/redis.sh full      5,000 subscribers, one channel; 5 s of
#                               publishing at full speed
#
# Setups, each started fresh and stopped by PID after its runs:
#   comet-1    one httpd, its own shared-memory store (no Redis)
#   comet-2r   two httpd sharing channels through one redis-server
#              (CometRedis redis://127.0.0.1:$REDIS_PORT)
#   nchan-1    one nginx + Nchan, memory store
#   nchan-2r   two nginx + Nchan sharing the same redis-server
#              (nchan_redis_url, nchan_use_redis on)
# Scenarios:
#   fanout     1 channel, FAN_SUBS SSE subscribers (over both servers of a
#              pair: odd ones on the second), FAN_MSGS messages at FAN_RATE/s
#              published in turn on each server (mod_comet: its publish
#              socket; Nchan: HTTP POST), 100-byte payloads
#   publish    no subscribers, 100 channels, PUB_SECONDS of publishing as
#              fast as it goes (4 connections, 8 in flight each, over both
#              servers of a pair)
# The redis-server is flushed before every setup.  Raw JSON lines go to
# bench/out/redis-<timestamp>/results.jsonl; the table goes to stdout.
#
# Environment: REDIS_PORT (18490), COMET_PORT/COMET_PORT2 (18491/18492),
# NCHAN_PORT/NCHAN_PORT2 (18493/18494), the TLS ports each template needs
# (18495..18498, unused by the runs), SETUPS (default "comet-1 comet-2r
# nchan-1 nchan-2r"), COMET_MODULE (default .libs/mod_comet.so).
set -eu

mode=${1:-quick}
case "$mode" in quick|full) ;; *) echo "usage: redis.sh quick|full" >&2; exit 2 ;; esac

root=$(cd "$(dirname "$0")/.." && pwd)
bench=$root/build/cometbench
REDIS_PORT=${REDIS_PORT:-18490}
COMET_PORT=${COMET_PORT:-18491}
COMET_PORT2=${COMET_PORT2:-18492}
NCHAN_PORT=${NCHAN_PORT:-18493}
NCHAN_PORT2=${NCHAN_PORT2:-18494}
SETUPS=${SETUPS:-"comet-1 comet-2r nchan-1 nchan-2r"}
APACHE2=${APACHE2:-$(command -v apache2 || echo /usr/sbin/apache2)}

if [ "$mode" = full ]; then
    FAN_SUBS=5000 FAN_MSGS=200 FAN_RATE=50 PUB_SECONDS=5 TIMEOUT=180
else
    FAN_SUBS=500 FAN_MSGS=40 FAN_RATE=50 PUB_SECONDS=1 TIMEOUT=60
fi

[ -x "$bench" ] || make -C "$root" --no-print-directory build/cometbench >&2
command -v redis-server >/dev/null || { echo "redis.sh: redis-server missing (apt-get install redis-server)" >&2; exit 1; }
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

stamp=$(date +%Y%m%d-%H%M%S)
out=$root/bench/out/redis-$stamp
mkdir -p "$out"
results=$out/results.jsonl
: > "$results"
work=$(mktemp -d "${TMPDIR:-/tmp}/comet-redis-bench.XXXXXX")
chmod 755 "$work"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$work/key.pem" -out "$work/cert.pem" -days 2 \
    -subj /CN=127.0.0.1 >/dev/null 2>&1
chmod 644 "$work/key.pem" "$work/cert.pem"

listening() {
    grep -q "^ *[0-9]*: 0100007F:$(printf '%04X' "$1") 00000000:0000 0A" /proc/net/tcp
}

# Wait (bounded) until cond succeeds: wait_for SECONDS what cmd...
wait_for() {
    w_max=$1 w_what=$2
    shift 2
    i=0
    while ! "$@" >/dev/null 2>&1; do
        i=$((i + 1))
        if [ "$i" -gt $((w_max * 20)) ]; then
            echo "redis.sh: $w_what did not happen in $w_max s" >&2
            return 1
        fi
        sleep 0.05
    done
}

# ---- redis-server -------------------------------------------------------------

REDIS_PID=
redis_start() {
    listening "$REDIS_PORT" && { echo "redis.sh: port $REDIS_PORT in use" >&2; exit 1; }
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' \
        --appendonly no --dir "$work" --logfile "$work/redis.log" &
    REDIS_PID=$!
    wait_for 10 "redis-server start" redis-cli -p "$REDIS_PORT" ping
}
redis_stop() {
    [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null && wait "$REDIS_PID" 2>/dev/null || true
    REDIS_PID=
}

# ---- mod_comet ----------------------------------------------------------------

comet_so=$work/mod_comet.so
cp "${COMET_MODULE:-$root/.libs/mod_comet.so}" "$comet_so"
chmod 755 "$comet_so"
modules=$(apxs -q LIBEXECDIR 2>/dev/null || echo /usr/lib/apache2/modules)
COMET_PIDS=

# comet_start NAME PORT TLS_PORT EXTRA
comet_start() {
    d=$work/$1
    mkdir -p "$d"
    chmod 755 "$d"
    ug=
    if [ "$(id -u)" = 0 ]; then
        ug="User www-data\nGroup www-data"
        chown www-data:www-data "$d"
    fi
    printf '%s\n' "$4" > "$d/extra.conf"
    sed -e "s|@DIR@|$d|g" -e "s|@PORT@|$2|g" -e "s|@MODULES@|$modules|g" \
        -e "s|@MODULE@|$comet_so|g" -e "s|@USER_GROUP@|$ug|" \
        -e "s|@SHM@|64M|g" -e "s|@TLS_PORT@|$3|g" \
        -e "s|@CERT@|$work/cert.pem|g" -e "s|@KEY@|$work/key.pem|g" \
        -e "s|@EXTRA@|Include $d/extra.conf|" \
        "$root/bench/comet.conf.in" > "$d/httpd.conf"
    ( exec setsid "$APACHE2" -d "$d" -f "$d/httpd.conf" -DFOREGROUND ) \
        >> "$d/stdout.log" 2>&1 &
    COMET_PIDS="$COMET_PIDS $!"
    wait_for 15 "httpd on $2" listening "$2"
    wait_for 15 "the publish socket of $1" test -S "$d/publish.sock"
    wait_for 15 "the publish socket of $1 answering" \
        redis-cli -s "$d/publish.sock" PUBLISH cometbench-probe x
    SRV_PID=$(cat "$d/httpd.pid")
}
comet_stop() {
    for p in $COMET_PIDS; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in $COMET_PIDS; do
        i=0
        while kill -0 "$p" 2>/dev/null && [ "$i" -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
        kill -KILL "$p" 2>/dev/null || true
    done
    COMET_PIDS=
    for d in "$work"/comet*; do
        [ -s "$d/error_log" ] && { cat "$d/error_log" >> "$out/comet-error.log"; : > "$d/error_log"; }
    done
    return 0
}

# ---- Nchan --------------------------------------------------------------------

NCHAN_DIRS=
sed -e "s|nchan_message_timeout 1h;|nchan_message_timeout 1h;\n    nchan_use_redis on;\n    nchan_redis_url redis://127.0.0.1:$REDIS_PORT;|" \
    "$root/bench/nchan.conf.in" > "$work/nchan-redis.conf.in"

# nchan_start NAME PORT TLS_PORT TEMPLATE
nchan_start() {
    SRV_PID=$(NCHAN_CONF_IN=$4 sh "$root/bench/nchan.sh" start "$work/$1" "$2" "$3" \
              "$work/cert.pem" "$work/key.pem")
    NCHAN_DIRS="$NCHAN_DIRS $work/$1"
}
nchan_stop() {
    for d in $NCHAN_DIRS; do
        sh "$root/bench/nchan.sh" stop "$d" || true
        [ -s "$d/error.log" ] && { cat "$d/error.log" >> "$out/nchan-error.log"; : > "$d/error.log"; }
    done
    NCHAN_DIRS=
    return 0
}

cleanup() {
    trap - EXIT INT TERM
    comet_stop
    nchan_stop
    redis_stop
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- runs ---------------------------------------------------------------------

# run SETUP SCENARIO cometbench-options...
run() {
    r_setup=$1 r_scen=$2
    shift 2
    echo "== $r_setup $r_scen" >&2
    if line=$("$bench" --scenario "$r_setup/$r_scen" --watch-pid "$SRV_PID" \
              --timeout "$TIMEOUT" "$@" 2>>"$out/$r_setup-$r_scen.log"); then
        echo "$line" | sed "s|^{|{\"setup\":\"$r_setup\",\"run\":\"$r_scen\",|" >> "$results"
    else
        echo "redis.sh: $r_setup $r_scen failed; see $out/$r_setup-$r_scen.log" >&2
        tail -n 5 "$out/$r_setup-$r_scen.log" >&2 || true
    fi
}

fanout_opts="--transport sse --subs $FAN_SUBS --channels 1 --messages $FAN_MSGS --rate $FAN_RATE --pipeline 4 --size 100 --settle 10 --warmup 0.5"
publish_opts="--subs 0 --channels 100 --duration $PUB_SECONDS --rate 0 --pub-conns 4 --pipeline 8 --size 100"

# The load generator is one client address whose thousands of subscribers
# wait on a channel nobody has published to yet: mod_comet's quota for that
# (CometMaxNewChannelsPerClient, 1024 per process) would refuse most of
# them.  Nchan has no such limit.
comet_extra="CometMaxNewChannelsPerClient off"

redis_start
for setup in $SETUPS; do
    redis-cli -p "$REDIS_PORT" flushall >/dev/null
    case "$setup" in
    comet-1)
        comet_start comet1 "$COMET_PORT" 18495 "$comet_extra"
        s1=$work/comet1/publish.sock
        # shellcheck disable=SC2086
        run "$setup" fanout --server comet --port "$COMET_PORT" --sub-url /sub/%s \
            --pub resp --socket "$s1" $fanout_opts
        # shellcheck disable=SC2086
        run "$setup" publish --server comet --port "$COMET_PORT" --sub-url /sub/%s \
            --pub resp --socket "$s1" $publish_opts
        comet_stop ;;
    comet-2r)
        extra="$comet_extra
CometRedis redis://127.0.0.1:$REDIS_PORT"
        comet_start comet1 "$COMET_PORT" 18495 "$extra"
        comet_start comet2 "$COMET_PORT2" 18496 "$extra"
        s1=$work/comet1/publish.sock s2=$work/comet2/publish.sock
        # shellcheck disable=SC2086
        run "$setup" fanout --server comet --port "$COMET_PORT" --port2 "$COMET_PORT2" \
            --sub-url /sub/%s --pub resp --socket "$s1" --socket2 "$s2" \
            --pub-conns 2 --pub-alternate $fanout_opts
        # shellcheck disable=SC2086
        run "$setup" publish --server comet --port "$COMET_PORT" --port2 "$COMET_PORT2" \
            --sub-url /sub/%s --pub resp --socket "$s1" --socket2 "$s2" $publish_opts
        comet_stop ;;
    nchan-1)
        nchan_start nchan1 "$NCHAN_PORT" 18497 "$root/bench/nchan.conf.in"
        # shellcheck disable=SC2086
        run "$setup" fanout --server nchan --port "$NCHAN_PORT" --sub-url /sub/%s \
            --pub http --pub-url /pub/%s $fanout_opts
        # shellcheck disable=SC2086
        run "$setup" publish --server nchan --port "$NCHAN_PORT" --sub-url /sub/%s \
            --pub http --pub-url /pub/%s $publish_opts
        nchan_stop ;;
    nchan-2r)
        nchan_start nchan1 "$NCHAN_PORT" 18497 "$work/nchan-redis.conf.in"
        nchan_start nchan2 "$NCHAN_PORT2" 18498 "$work/nchan-redis.conf.in"
        # shellcheck disable=SC2086
        run "$setup" fanout --server nchan --port "$NCHAN_PORT" --port2 "$NCHAN_PORT2" \
            --sub-url /sub/%s --pub http --pub-url /pub/%s \
            --pub-conns 2 --pub-alternate $fanout_opts
        # shellcheck disable=SC2086
        run "$setup" publish --server nchan --port "$NCHAN_PORT" --port2 "$NCHAN_PORT2" \
            --sub-url /sub/%s --pub http --pub-url /pub/%s $publish_opts
        nchan_stop ;;
    *) echo "redis.sh: unknown setup $setup" >&2 ;;
    esac
done

# ---- table --------------------------------------------------------------------

awk '
function num(k,   m) {
    if (match($0, "\"" k "\":[-0-9.e+]+")) { m = substr($0, RSTART, RLENGTH); sub(/.*:/, "", m); return m + 0 }
    return -1
}
function str(k,   m) {
    if (match($0, "\"" k "\":\"[^\"]*\"")) { m = substr($0, RSTART, RLENGTH); sub(/^[^:]*:"/, "", m); sub(/"$/, "", m); return m }
    return "?"
}
BEGIN {
    printf "%-9s %-8s %8s %9s %9s %9s %10s %11s %6s %6s\n", "setup", "run", "subs",
           "p50 ms", "p99 ms", "max ms", "deliv/s", "publishes/s", "loss", "dups"
}
{
    printf "%-9s %-8s %8d %9.2f %9.2f %9.2f %10.0f %11.0f %6d %6d\n", str("setup"), str("run"),
           num("subs"), num("p50_us") / 1000, num("p99_us") / 1000, num("max_us") / 1000,
           num("deliv_per_s"), num("pub_per_s"), num("loss"), num("dups")
}' "$results" | tee "$out/table.txt"
echo "(raw: $results)" >&2
