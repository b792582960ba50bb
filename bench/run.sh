#!/bin/sh
# Side-by-side benchmark: mod_comet against Nchan (nginx), same load
# generator (build/cometbench), same machine, same scenarios.
#
#   sh bench/run.sh quick     about 1/10 of the sizes, one repetition (< 1 min)
#   sh bench/run.sh full      full sizes, three repetitions, servers alternating
#
# Every server is started fresh for every run (so memory figures start from
# a clean process) and stopped by PID when the run ends; everything this
# script started is stopped on exit.  Raw JSON lines and per-run logs go to
# bench/out/<timestamp>/; the table of medians goes to stdout and to
# bench/out/<timestamp>/table.txt.
#
# Environment: NCHAN_PORT (default 18480), COMET_PORT (default 18481),
# SERVERS (default "comet nchan"; a server that cannot start is skipped).
set -eu

mode=${1:-quick}
case "$mode" in quick|full) ;; *) echo "usage: run.sh quick|full" >&2; exit 2 ;; esac

root=$(cd "$(dirname "$0")/.." && pwd)
bench=$root/build/cometbench
NCHAN_PORT=${NCHAN_PORT:-18480}
COMET_PORT=${COMET_PORT:-18481}
SERVERS=${SERVERS:-"comet nchan"}

[ -x "$bench" ] || make -C "$root" --no-print-directory build/cometbench >&2

# 10,000+ connections: as many descriptors as allowed, for the load generator
# and for the servers started from here.
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

stamp=$(date +%Y%m%d-%H%M%S)
out=$root/bench/out/$stamp
mkdir -p "$out"
results=$out/results.jsonl
: > "$results"
work=$(mktemp -d "${TMPDIR:-/tmp}/comet-bench.XXXXXX")

# ---- sizes ------------------------------------------------------------------

if [ "$mode" = full ]; then
    REPS=3
    IDLE_SUBS=10000 HOLD=3
    FAN_SUBS=5000 FAN_MSGS=200 FAN_RATE=50
    THR_CHANNELS=100 THR_PER_CHANNEL=10 THR_SECONDS=10
    LP_SUBS=1000 LP_MSGS=100 LP_RATE=20
    PUB_SECONDS=5
    TIMEOUT=180
else
    REPS=1
    IDLE_SUBS=1000 HOLD=1
    FAN_SUBS=500 FAN_MSGS=40 FAN_RATE=50
    THR_CHANNELS=10 THR_PER_CHANNEL=10 THR_SECONDS=2
    LP_SUBS=100 LP_MSGS=20 LP_RATE=20
    PUB_SECONDS=1
    TIMEOUT=60
fi

# ---- servers ----------------------------------------------------------------
#
# Each server NAME has four functions:
#   NAME_start   start it fresh; set SRV_PID (the process whose children are
#                the server too) and return 0, or return 1 to skip NAME
#   NAME_stop    stop it by PID (must be safe to call when not running)
#   NAME_args    the cometbench options that address it (port, URL
#                templates, publish method, wire dialect)
#   NAME_pubsock for the publish-path scenario over its Unix socket: the
#                cometbench options, or nothing when it has none

SRV_PID=

nchan_start() {
    SRV_PID=$(sh "$root/bench/nchan.sh" start "$work/nchan" "$NCHAN_PORT") || return 1
}

nchan_stop() {
    sh "$root/bench/nchan.sh" stop "$work/nchan" || true
    if [ -s "$work/nchan/error.log" ]; then
        cat "$work/nchan/error.log" >> "$out/nchan-error.log"
        : > "$work/nchan/error.log"
    fi
}

nchan_args() {
    echo "--server nchan --port $NCHAN_PORT --sub-url /sub/%s --pub http --pub-url /pub/%s"
}

nchan_pubsock() {
    :                                   # Nchan publishes over HTTP only
}

# ======== mod_comet: TO BE FILLED IN ========================================
# comet_start: start httpd with mod_comet fresh (own ServerRoot/PidFile/logs
# under "$work/comet", Listen 127.0.0.1:$COMET_PORT, the publish Unix socket
# under "$work/comet"), wait until the port listens (no fixed sleeps), set
# SRV_PID to the httpd parent PID and return 0.  Until then it returns 1 and
# every mod_comet run is skipped ("n/a" in the table).
comet_start() {
    return 1
}

# comet_stop: stop the httpd started by comet_start, by PID, and wait for it.
comet_stop() {
    :
}

# comet_args: how cometbench reaches mod_comet (subscriber/publisher URLs,
# and --server comet for its long-poll JSON and stream formats).
comet_args() {
    echo "--server comet --port $COMET_PORT --sub-url /sub/%s --pub http --pub-url /pub/%s"
}

# comet_pubsock: publishing over mod_comet's Unix socket (Redis protocol).
comet_pubsock() {
    echo "--pub resp --socket $work/comet/publish.sock"
}
# ======== end of mod_comet ====================================================

started=                                # servers currently running

stop_all() {
    for s in $started; do "${s}_stop"; done
    started=
}

cleanup() {
    trap - EXIT INT TERM
    stop_all
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- runs -------------------------------------------------------------------

# run SERVER SCENARIO REP [cometbench options...]
run() {
    r_srv=$1 r_scen=$2 r_rep=$3
    shift 3
    started=$r_srv
    if ! "${r_srv}_start"; then
        stop_all
        echo "  $r_srv: not available, $r_scen skipped" >&2
        return 0
    fi
    log=$out/$r_scen-$r_srv-$r_rep.log
    # shellcheck disable=SC2046 # the server options are words on purpose
    if "$bench" --scenario "$r_scen" --watch-pid "$SRV_PID" --timeout "$TIMEOUT" \
            $("${r_srv}_args") "$@" > "$work/line.json" 2> "$log"; then
        rc=0
    else
        rc=$?
    fi
    stop_all
    if [ -s "$work/line.json" ]; then
        sed "s/^{/{\"rep\":$r_rep,/" "$work/line.json" >> "$results"
        summarize "$r_srv" "$r_scen" "$r_rep" "$work/line.json"
    else
        echo "  $r_srv $r_scen #$r_rep: no result (exit $rc), see $log" >&2
    fi
}

# One progress line per run on stderr.
summarize() {
    awk -v srv="$1" -v scen="$2" -v rep="$3" '
        function f(k,   m) {
            if (match($0, "\"" k "\":[-0-9.e+]+")) {
                m = substr($0, RSTART, RLENGTH); sub(/^[^:]*:/, "", m); return m
            }
            return "?"
        }
        { printf "  %-6s %-14s #%s  subs %s/%s  published %s  loss %s  p50 %s us  p99 %s us  deliv/s %s  pub/s %s  B/sub %s  srv cpu %s s\n",
              srv, scen, rep, f("connected"), f("subs"), f("published"), f("loss"),
              f("p50_us"), f("p99_us"), f("deliv_per_s"), f("pub_per_s"),
              f("mem_per_sub_b"), f("srv_cpu_s") }' "$4" >&2
}

# The scenarios; each takes SERVER REP.
sc_idle_channels() {
    run "$1" idle-nch "$2" --transport sse --subs "$IDLE_SUBS" --channels "$IDLE_SUBS" \
        --hold "$HOLD" --concurrency 200
}
sc_idle_one() {
    run "$1" idle-1ch "$2" --transport sse --subs "$IDLE_SUBS" --channels 1 \
        --hold "$HOLD" --concurrency 200
}
sc_fanout() {
    run "$1" fanout "$2" --transport sse --subs "$FAN_SUBS" --channels 1 \
        --messages "$FAN_MSGS" --rate "$FAN_RATE" --size 100 --settle 10
}
sc_throughput() {
    run "$1" throughput "$2" --transport sse \
        --subs $((THR_CHANNELS * THR_PER_CHANNEL)) --channels "$THR_CHANNELS" \
        --duration "$THR_SECONDS" --rate 0 --pub-conns 4 --pipeline 8 --size 100 \
        --settle 10
}
sc_longpoll() {
    run "$1" longpoll "$2" --transport longpoll --subs "$LP_SUBS" --channels 1 \
        --messages "$LP_MSGS" --rate "$LP_RATE" --size 100 --settle 10
}
sc_pub_http() {
    run "$1" pub-http "$2" --subs 0 --channels 100 --duration "$PUB_SECONDS" \
        --rate 0 --pub-conns 4 --pipeline 8 --size 100
}
sc_pub_socket() {
    opts=$("${1}_pubsock")
    [ -n "$opts" ] || return 0
    # shellcheck disable=SC2086
    run "$1" pub-socket "$2" --subs 0 --channels 100 --duration "$PUB_SECONDS" \
        --rate 0 --pub-conns 4 --pipeline 8 --size 100 $opts
}

SCENARIOS="sc_idle_channels sc_idle_one sc_fanout sc_throughput sc_longpoll sc_pub_http sc_pub_socket"

echo "benchmark ($mode): $REPS repetition(s); output in $out" >&2
rep=1
while [ "$rep" -le "$REPS" ]; do
    # Alternate which server goes first, repetition by repetition.
    order=$SERVERS
    if [ $((rep % 2)) -eq 0 ]; then
        order=$(echo "$SERVERS" | awk '{ for (i = NF; i > 0; i--) printf "%s%s", $i, (i > 1 ? " " : "") }')
    fi
    for sc in $SCENARIOS; do
        for srv in $order; do
            "$sc" "$srv" "$rep"
        done
    done
    rep=$((rep + 1))
done

# ---- table of medians ---------------------------------------------------------

awk '
function val(k,   m) {
    if (match($0, "\"" k "\":[-0-9.e+]+")) {
        m = substr($0, RSTART, RLENGTH); sub(/^[^:]*:/, "", m); return m + 0
    }
    return ""
}
function str(k,   m) {
    if (match($0, "\"" k "\":\"[^\"]*\"")) {
        m = substr($0, RSTART, RLENGTH); sub(/^[^:]*:"/, "", m); sub(/"$/, "", m); return m
    }
    return ""
}
function median(key,   n, i, j, t, a) {
    n = cnt[key]
    if (n == 0) return ""
    for (i = 1; i <= n; i++) a[i] = v[key, i]
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j > 0 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function fmt(x) {
    if (x == "") return "n/a"
    if (x >= 100 || x == 0) return sprintf("%.0f", x)
    return sprintf("%.2f", x)
}
function row(scen, field, label,   c, n, r) {
    c = median(scen SUBSEP "comet" SUBSEP field)
    n = median(scen SUBSEP "nchan" SUBSEP field)
    r = (c != "" && n != "" && n + 0 != 0) ? sprintf("%.2f", c / n) : "n/a"
    if (c == "" && n == "") return
    printf "%-44s | %16s | %12s | %6s\n", label, fmt(c), fmt(n), r
}
{
    s = str("scenario"); sv = str("server")
    split("connect_s connect_p99_us mem_per_sub_b pss_per_sub_b p50_us p90_us p99_us max_us deliv_per_s pub_per_s loss srv_cpu_s srv_rss_kb_peak", F, " ")
    for (i in F) {
        x = val(F[i])
        if (x == "") continue
        k = s SUBSEP sv SUBSEP F[i]
        v[k, ++cnt[k]] = x
    }
}
END {
    printf "%-44s | %16s | %12s | %6s\n", "figure", "mod_comet median", "Nchan median", "ratio"
    printf "%-44s-+-%16s-+-%12s-+-%6s\n", "--------------------------------------------", "----------------", "------------", "------"
    row("idle-nch", "connect_s", "idle, N ch: connect all (s)")
    row("idle-nch", "connect_p99_us", "idle, N ch: connect p99 (us)")
    row("idle-nch", "mem_per_sub_b", "idle, N ch: server RSS per sub (B)")
    row("idle-nch", "pss_per_sub_b", "idle, N ch: server PSS per sub (B)")
    row("idle-1ch", "connect_s", "idle, 1 ch: connect all (s)")
    row("idle-1ch", "connect_p99_us", "idle, 1 ch: connect p99 (us)")
    row("idle-1ch", "mem_per_sub_b", "idle, 1 ch: server RSS per sub (B)")
    row("idle-1ch", "pss_per_sub_b", "idle, 1 ch: server PSS per sub (B)")
    row("fanout", "p50_us", "fan-out: latency p50 (us)")
    row("fanout", "p90_us", "fan-out: latency p90 (us)")
    row("fanout", "p99_us", "fan-out: latency p99 (us)")
    row("fanout", "max_us", "fan-out: latency max (us)")
    row("fanout", "deliv_per_s", "fan-out: deliveries/s")
    row("fanout", "pub_per_s", "fan-out: publishes/s achieved")
    row("fanout", "loss", "fan-out: lost deliveries")
    row("fanout", "srv_cpu_s", "fan-out: server CPU (s)")
    row("throughput", "pub_per_s", "throughput: publishes/s")
    row("throughput", "deliv_per_s", "throughput: deliveries/s")
    row("throughput", "p99_us", "throughput: latency p99 (us)")
    row("throughput", "loss", "throughput: lost deliveries")
    row("throughput", "srv_cpu_s", "throughput: server CPU (s)")
    row("throughput", "srv_rss_kb_peak", "throughput: server RSS peak (KB)")
    row("longpoll", "p50_us", "long-poll: latency p50 (us)")
    row("longpoll", "p99_us", "long-poll: latency p99 (us)")
    row("longpoll", "deliv_per_s", "long-poll: deliveries/s")
    row("longpoll", "loss", "long-poll: lost deliveries")
    row("longpoll", "srv_cpu_s", "long-poll: server CPU (s)")
    row("pub-http", "pub_per_s", "publish, HTTP POST, no subs: publishes/s")
    row("pub-socket", "pub_per_s", "publish, Unix socket, no subs: publishes/s")
}' "$results" | tee "$out/table.txt"
echo "raw results: $results" >&2
