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
# NCHAN_TLS_PORT (default 18482), COMET_TLS_PORT (default 18483),
# SERVERS (default "comet nchan"; a server that cannot start is skipped),
# SCENARIOS (default: all; e.g. "sc_idle_one sc_fanout_socket"),
# COMET_MODULE (default .libs/mod_comet.so of this tree), REPS (full: 3).
#
# Exit status: 0 when every mod_comet run produced a result with no lost
# delivery, no unanswered publish and no crashed child; 1 otherwise (the
# reasons are printed last).  Nchan missing or failing only warns.
set -eu

mode=${1:-quick}
case "$mode" in quick|full) ;; *) echo "usage: run.sh quick|full" >&2; exit 2 ;; esac

root=$(cd "$(dirname "$0")/.." && pwd)
bench=$root/build/cometbench
NCHAN_PORT=${NCHAN_PORT:-18480}
COMET_PORT=${COMET_PORT:-18481}
NCHAN_TLS_PORT=${NCHAN_TLS_PORT:-18482}
COMET_TLS_PORT=${COMET_TLS_PORT:-18483}
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

# One certificate for both servers' HTTPS (P-256, self-signed; the client
# does not check it).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$work/key.pem" -out "$work/cert.pem" -days 2 \
    -subj /CN=127.0.0.1 >/dev/null 2>&1 || { echo "run.sh: openssl failed" >&2; exit 1; }
chmod 644 "$work/key.pem" "$work/cert.pem"

# ---- sizes ------------------------------------------------------------------

if [ "$mode" = full ]; then
    REPS=${REPS:-3} WARMUP=0.5
    IDLE_SUBS=10000 HOLD=3
    FAN_SUBS=5000 FAN_MSGS=200 FAN_RATE=50
    THR_CHANNELS=100 THR_PER_CHANNEL=10 THR_SECONDS=10
    LP_SUBS=1000 LP_MSGS=100 LP_RATE=20
    FANEQ_MSGS=100 FANEQ_RATE=10
    THREQ_RATE=2000 THREQ_SECONDS=5
    PUB_SECONDS=5
    TLS_SUSP_SUBS=1000
    WS_PUBS=1000 WS_PUB_RATE=20000
    TIMEOUT=180
else
    REPS=1 WARMUP=0.2
    IDLE_SUBS=1000 HOLD=0.5
    FAN_SUBS=500 FAN_MSGS=40 FAN_RATE=50
    THR_CHANNELS=10 THR_PER_CHANNEL=10 THR_SECONDS=1
    LP_SUBS=100 LP_MSGS=20 LP_RATE=20
    FANEQ_MSGS=10 FANEQ_RATE=20
    THREQ_RATE=1000 THREQ_SECONDS=1
    PUB_SECONDS=1
    TLS_SUSP_SUBS=200
    WS_PUBS=100 WS_PUB_RATE=5000
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
#   NAME_probe   (optional) run before NAME_pubsock
#   NAME_tls     the cometbench options that put the subscribers on its
#                HTTPS port

SRV_PID=

nchan_start() {
    SRV_PID=$(sh "$root/bench/nchan.sh" start "$work/nchan" "$NCHAN_PORT" \
              "$NCHAN_TLS_PORT" "$work/cert.pem" "$work/key.pem") || return 1
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

nchan_tls() {
    echo "--tls --sub-port $NCHAN_TLS_PORT"
}

# ======== mod_comet =========================================================
# httpd (event MPM) with mod_comet, from bench/comet.conf.in, in its own
# ServerRoot under "$work/comet": pid file, error_log, runtime files and the
# publish socket all live there.  The module is the one built in this tree
# (COMET_MODULE overrides), copied once when the script starts so that every
# run measures the same build even if the tree is rebuilt meanwhile.
APACHE2=${APACHE2:-$(command -v apache2 || command -v httpd || echo /usr/sbin/apache2)}
COMET_SHM=${COMET_SHM:-64M}             # the module default; resident from the start
COMET_EXTRA=                            # lines a scenario adds to the config
comet_modules=$(apxs -q LIBEXECDIR 2>/dev/null || echo /usr/lib/apache2/modules)
comet_so=
comet_has_sock=                         # publish socket: "" unknown, 1 yes, 0 no
COMET_PGID=

# Is something listening on 127.0.0.1:$1?  (/proc/net/tcp, state 0A)
port_listening() {
    grep -q "^ *[0-9]*: 0100007F:$(printf '%04X' "$1") 00000000:0000 0A" /proc/net/tcp
}

comet_pid() {
    [ -s "$work/comet/httpd.pid" ] || return 1
    p=$(cat "$work/comet/httpd.pid" 2>/dev/null) || return 1
    [ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 1
    echo "$p"
}

comet_start() {
    d=$work/comet
    if [ -z "$comet_so" ]; then
        src=${COMET_MODULE:-$root/.libs/mod_comet.so}
        if [ ! -f "$src" ] || [ ! -x "$APACHE2" ]; then
            echo "  mod_comet: $src or apache2 missing (make all)" >&2
            return 1
        fi
        comet_so=$work/mod_comet.so
        cp "$src" "$comet_so"
        chmod 755 "$comet_so"
    fi
    mkdir -p "$d"
    chmod 755 "$work" "$d"
    if port_listening "$COMET_PORT" || port_listening "$COMET_TLS_PORT"; then
        echo "  mod_comet: port $COMET_PORT or $COMET_TLS_PORT is already in use" >&2
        return 1
    fi
    usergroup=
    if [ "$(id -u)" = 0 ]; then
        usergroup="User www-data\nGroup www-data"
        chown www-data:www-data "$d" 2>/dev/null || true
    fi
    printf '%s\n' "$COMET_EXTRA" > "$d/extra.conf"
    sed -e "s|@DIR@|$d|g" -e "s|@PORT@|$COMET_PORT|g" \
        -e "s|@MODULES@|$comet_modules|g" -e "s|@MODULE@|$comet_so|g" \
        -e "s|@USER_GROUP@|$usergroup|" -e "s|@SHM@|$COMET_SHM|g" \
        -e "s|@TLS_PORT@|$COMET_TLS_PORT|g" -e "s|@CERT@|$work/cert.pem|g" \
        -e "s|@KEY@|$work/key.pem|g" -e "s|@EXTRA@|Include $d/extra.conf|" \
        "$root/bench/comet.conf.in" > "$d/httpd.conf"
    rm -f "$d/httpd.pid"
    # Own session and process group (setsid: the subshell is no group
    # leader, so setsid execs in place and $! is the httpd parent); cores
    # go to $d (CoreDumpDirectory).
    ( ulimit -c unlimited 2>/dev/null || true
      exec setsid "$APACHE2" -d "$d" -f "$d/httpd.conf" -DFOREGROUND ) \
        >> "$d/stdout.log" 2>&1 &
    COMET_PGID=$!
    # Wait (bounded, polling) for the pid file, the listening socket and
    # both children; then for the publish socket, when this build has one.
    i=0
    while :; do
        if p=$(comet_pid) && port_listening "$COMET_PORT" \
                && [ "$(pgrep -c -P "$p" 2>/dev/null || echo 0)" -ge 2 ]; then
            break
        fi
        if ! kill -0 "$COMET_PGID" 2>/dev/null; then
            echo "  mod_comet: httpd exited at start; see $out/comet-error.log" >&2
            tail -n 5 "$d/error_log" "$d/stdout.log" >&2 2>/dev/null || true
            comet_collect
            return 1
        fi
        i=$((i + 1))
        if [ "$i" -gt 300 ]; then
            echo "  mod_comet: httpd did not come up in 15 s" >&2
            comet_stop
            return 1
        fi
        sleep 0.05
    done
    SRV_PID=$p
    # The publish socket: the first start finds out (within 2 s) whether
    # this build serves it and answers PUBLISH; later starts wait for it.
    case "$comet_has_sock" in
        0) return 0 ;;
        1) n=300 ;;
        *) n=40 ;;
    esac
    i=0
    while [ ! -S "$d/publish.sock" ] && [ "$i" -lt "$n" ]; do
        sleep 0.05
        i=$((i + 1))
    done
    if [ -z "$comet_has_sock" ]; then
        comet_has_sock=0
        if [ -S "$d/publish.sock" ]; then
            if ! command -v redis-cli >/dev/null 2>&1; then
                comet_has_sock=1
            elif r=$(redis-cli -s "$d/publish.sock" PUBLISH cometbench-probe x 2>&1) \
                    && [ "$r" -ge 0 ] 2>/dev/null; then
                comet_has_sock=1
            else
                echo "  mod_comet: publish socket did not answer PUBLISH ($r);" \
                     "socket scenario skipped" >&2
            fi
        fi
    fi
    [ "$comet_has_sock" = 1 ] && [ ! -S "$d/publish.sock" ] \
        && echo "  mod_comet: publish socket missing this time" >&2
    return 0
}

# Move the error_log (and any core) out of the run directory.
comet_collect() {
    d=$work/comet
    if [ -s "$d/error_log" ]; then
        cat "$d/error_log" >> "$out/comet-error.log"
        : > "$d/error_log"
    fi
    for c in "$d"/core*; do
        [ -f "$c" ] && mv "$c" "$out/" 2>/dev/null
    done
    return 0
}

comet_stop() {
    d=$work/comet
    p=$(comet_pid) || p=${COMET_PGID:-}
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
        kill -TERM "$p" 2>/dev/null || true
        i=0
        while kill -0 "$p" 2>/dev/null; do
            i=$((i + 1))
            if [ "$i" -gt 200 ]; then
                echo "  mod_comet: httpd $p ignored SIGTERM for 10 s; killed" >&2
                kill -KILL "$p" 2>/dev/null || true
                break
            fi
            sleep 0.05
        done
    fi
    # Whatever is left of that process group (children of a killed
    # parent), each by its PID.
    if [ -n "${COMET_PGID:-}" ]; then
        for c in $(pgrep -g "$COMET_PGID" 2>/dev/null); do
            kill -KILL "$c" 2>/dev/null || true
        done
        wait "$COMET_PGID" 2>/dev/null || true
    fi
    COMET_PGID=
    rm -f "$d/httpd.pid"
    [ -d "$d" ] && comet_collect
    return 0
}

# comet_args: how cometbench reaches mod_comet (subscriber/publisher URLs,
# and --server comet for its long-poll JSON and stream formats).
comet_args() {
    echo "--server comet --port $COMET_PORT --sub-url /sub/%s --pub http --pub-url /pub/%s"
}

# comet_probe: find out whether this build serves the publish socket, when
# no run has started the server yet (called before NAME_pubsock).
comet_probe() {
    [ -z "$comet_has_sock" ] || return 0
    started=comet
    comet_start >/dev/null 2>&1 || true
    stop_all
}

# comet_pubsock: publishing over mod_comet's Unix socket (Redis protocol),
# when this build has one.
comet_pubsock() {
    [ "$comet_has_sock" = 1 ] || return 0
    echo "--pub resp --socket $work/comet/publish.sock"
}

comet_tls() {
    echo "--tls --sub-port $COMET_TLS_PORT"
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

# Busy CPU time of the whole machine so far, in clock ticks (/proc/stat).
machine_ticks() {
    awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}
HZ=$(getconf CLK_TCK 2>/dev/null || echo 100)

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
    t_before=$(machine_ticks)
    # shellcheck disable=SC2046 # the server options are words on purpose
    if "$bench" --scenario "$r_scen" --watch-pid "$SRV_PID" --timeout "$TIMEOUT" \
            --warmup "$WARMUP" \
            $("${r_srv}_args") "$@" > "$work/line.json" 2> "$log"; then
        rc=0
    else
        rc=$?
    fi
    t_after=$(machine_ticks)
    crashes=$(grep -c 'exit signal\|exited on signal' "$out/$r_srv-error.log" 2>/dev/null || true)
    stop_all
    if [ -s "$work/line.json" ]; then
        # The CPU that neither the server nor cometbench used meanwhile:
        # other processes on the machine, which distort the figures.
        other=$(awk -v t=$((t_after - t_before)) -v hz="$HZ" '{
            s = 0; c = 0
            if (match($0, /"srv_cpu_s":[0-9.]+/)) s = substr($0, RSTART + 12, RLENGTH - 12)
            if (match($0, /"client_cpu_s":[0-9.]+/)) c = substr($0, RSTART + 15, RLENGTH - 15)
            o = t / hz - s - c; if (o < 0) o = 0
            printf "%.2f", o }' "$work/line.json")
        sed -i "s/^{/{\"rep\":$r_rep,\"other_cpu_s\":$other,/" "$work/line.json"
        cat "$work/line.json" >> "$results"
        summarize "$r_srv" "$r_scen" "$r_rep" "$work/line.json"
        bad=$(awk '{
            r = ""
            if (match($0, /"loss":[1-9]/)) r = r " lost deliveries;"
            if (match($0, /"pub_lost":[1-9]/)) r = r " unanswered publishes;"
            # (tls-suspended shows how many the suspended path refuses.)
            if (match($0, /"failed":[1-9]/) && !match($0, /"scenario":"tls-suspended"/)) r = r " subscribers not connected;"
            if (match($0, /"timed_out":true/)) r = r " timed out;"
            printf "%s", r }' "$work/line.json")
    else
        bad=" no result (exit $rc);"
        echo "  $r_srv $r_scen #$r_rep: no result (exit $rc), see $log" >&2
    fi
    now_crashes=$(grep -c 'exit signal\|exited on signal' "$out/$r_srv-error.log" 2>/dev/null || true)
    [ "${now_crashes:-0}" -gt "${crashes:-0}" ] && bad="$bad child crashed (exit signal in $r_srv-error.log);"
    if [ -n "$bad" ]; then
        echo "$r_srv $r_scen #$r_rep:$bad see $log" >> "$out/problems.txt"
        echo "  $r_srv $r_scen #$r_rep: PROBLEM:$bad" >&2
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
        { printf "  %-6s %-14s #%s  subs %s/%s  published %s  loss %s  p50 %s us  p99 %s us  deliv/s %s  pub/s %s  B/sub %s  srv cpu %s s  others %s s\n",
              srv, scen, rep, f("connected"), f("subs"), f("published"), f("loss"),
              f("p50_us"), f("p99_us"), f("deliv_per_s"), f("pub_per_s"),
              f("mem_per_sub_b"), f("srv_cpu_s"), f("other_cpu_s") }' "$4" >&2
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
# The same two at a rate both servers sustain, so that latencies are
# compared under the same load (the two above run each server as fast as
# it goes, so its latency is that of its own, different, load).
sc_fanout_eq() {
    run "$1" fanout-eq "$2" --transport sse --subs "$FAN_SUBS" --channels 1 \
        --messages "$FANEQ_MSGS" --rate "$FANEQ_RATE" --size 100 --settle 10
}
sc_throughput_eq() {
    run "$1" throughput-eq "$2" --transport sse \
        --subs $((THR_CHANNELS * THR_PER_CHANNEL)) --channels "$THR_CHANNELS" \
        --duration "$THREQ_SECONDS" --rate "$THREQ_RATE" --pub-conns 4 --pipeline 8 \
        --size 100 --settle 10
}
sc_longpoll() {
    run "$1" longpoll "$2" --transport longpoll --subs "$LP_SUBS" --channels 1 \
        --messages "$LP_MSGS" --rate "$LP_RATE" --size 100 --settle 10
}
sc_pub_http() {
    run "$1" pub-http "$2" --subs 0 --channels 100 --duration "$PUB_SECONDS" \
        --rate 0 --pub-conns 4 --pipeline 8 --size 100
}
# opts: the cometbench options for publishing over SERVER's Unix socket,
# or nothing.
pubsock_opts() {
    if command -v "${1}_probe" >/dev/null 2>&1; then
        "${1}_probe"
    fi
    opts=$("${1}_pubsock")
}

# Fan-out as above with the publisher on the server's Unix socket (where
# it has one), so that the publisher's HTTP path does not hold back the rate.
sc_fanout_socket() {
    pubsock_opts "$1"
    [ -n "$opts" ] || return 0
    # shellcheck disable=SC2086
    run "$1" fanout-socket "$2" --transport sse --subs "$FAN_SUBS" --channels 1 \
        --messages "$FAN_MSGS" --rate "$FAN_RATE" --size 100 --settle 10 $opts
}
sc_pub_socket() {
    pubsock_opts "$1"
    [ -n "$opts" ] || return 0
    # shellcheck disable=SC2086
    run "$1" pub-socket "$2" --subs 0 --channels 100 --duration "$PUB_SECONDS" \
        --rate 0 --pub-conns 4 --pipeline 8 --size 100 $opts
}

# An application listening on the publish socket (SUBSCRIBE, one
# connection) under the burst of sc_pub_socket: the messages per second it
# receives.  mod_comet only: Nchan has no Redis-protocol subscriber.  The
# channel keeps 10,000 messages: a burst of 100,000+ messages/s into one
# channel passes the default 100 in under a millisecond, which a thread
# descheduled on a loaded machine can miss (the subscriber is then closed,
# never left to miss messages without knowing).
sc_socket_sub() {
    [ "$1" = comet ] || return 0
    pubsock_opts "$1"
    [ -n "$opts" ] || return 0
    COMET_EXTRA="CometMessageBufferLength 10000"
    # shellcheck disable=SC2086
    run "$1" socket-sub "$2" --transport resp --subs 1 --channels 1 \
        --duration "$PUB_SECONDS" --rate 0 --pub-conns 4 --pipeline 8 \
        --size 100 --settle 10 $opts
    COMET_EXTRA=
}

# HTTPS subscribers (the same certificate on both sides; publishers on
# plain HTTP): idle memory and connect time at IDLE_SUBS, and fan-out as
# above.  Both servers run at the MPM's (and nginx's) defaults here, so the
# idle run also shows how many HTTPS subscribers each holds.
sc_tls_idle() {
    # shellcheck disable=SC2046
    run "$1" tls-idle "$2" --transport sse --subs "$IDLE_SUBS" --channels 1 \
        --hold "$HOLD" --concurrency 200 --connect-timeout 180 $("${1}_tls")
}
sc_tls_fanout() {
    # shellcheck disable=SC2046
    run "$1" tls-fanout "$2" --transport sse --subs "$FAN_SUBS" --channels 1 \
        --messages "$FAN_MSGS" --rate "$FAN_RATE" --size 100 --settle 10 \
        $("${1}_tls")
}
sc_tls_fanout_eq() {
    # shellcheck disable=SC2046
    run "$1" tls-fanout-eq "$2" --transport sse --subs "$FAN_SUBS" --channels 1 \
        --messages "$FANEQ_MSGS" --rate "$FANEQ_RATE" --size 100 --settle 10 \
        $("${1}_tls")
}
# mod_comet only: the suspended path that HTTPS subscribers took before
# (CometTLSDetach off), for comparison: how many of TLS_SUSP_SUBS the
# MPM's defaults let it hold.
sc_tls_suspended() {
    [ "$1" = comet ] || return 0
    COMET_EXTRA="CometTLSDetach off"
    # shellcheck disable=SC2046
    run "$1" tls-suspended "$2" --transport sse --subs "$TLS_SUSP_SUBS" \
        --channels 1 --hold "$HOLD" --concurrency 50 --connect-timeout 20 \
        $("${1}_tls")
    COMET_EXTRA=
}

# WebSocket: idle memory, fan-out (as fast as both go, and at the same
# rate), and WS_PUBS client WebSockets publishing WS_PUB_RATE messages/s
# in all, each to its own channel with one WebSocket subscriber (mod_comet:
# /wspub/, a subscriber location with client publishing on; Nchan: its
# publisher location).  As fast as they can send, both servers evict from
# their 100-message buffers faster than one subscriber per channel reads.
sc_ws_idle() {
    run "$1" ws-idle "$2" --transport ws --subs "$IDLE_SUBS" --channels "$IDLE_SUBS" \
        --hold "$HOLD" --concurrency 200
}
sc_ws_fanout() {
    run "$1" ws-fanout "$2" --transport ws --subs "$FAN_SUBS" --channels 1 \
        --messages "$FAN_MSGS" --rate "$FAN_RATE" --size 100 --settle 10
}
sc_ws_fanout_eq() {
    run "$1" ws-fanout-eq "$2" --transport ws --subs "$FAN_SUBS" --channels 1 \
        --messages "$FANEQ_MSGS" --rate "$FANEQ_RATE" --size 100 --settle 10
}
sc_ws_publish() {
    pub_url=/pub/%s
    [ "$1" = comet ] && pub_url=/wspub/%s
    run "$1" ws-publish "$2" --transport ws --subs "$WS_PUBS" --channels "$WS_PUBS" \
        --pub ws --pub-url "$pub_url" --pub-conns "$WS_PUBS" \
        --duration "$PUB_SECONDS" --rate "$WS_PUB_RATE" --size 100 --settle 10
}

# The same client publishing, heard by the application: mod_comet's
# listeners are SUBSCRIBE connections on its publish socket (one per
# channel, as the WebSocket subscribers above); Nchan has none, so its
# column is its WebSocket subscribers' (the ws-publish run again).
sc_ws_publish_socket() {
    if [ "$1" = comet ]; then
        pubsock_opts "$1"
        [ -n "$opts" ] || return 0
        run "$1" ws-publish-socket "$2" --transport resp \
            --socket "${opts##*--socket }" --subs "$WS_PUBS" \
            --channels "$WS_PUBS" --pub ws --pub-url /wspub/%s \
            --pub-conns "$WS_PUBS" --duration "$PUB_SECONDS" \
            --rate "$WS_PUB_RATE" --size 100 --settle 10
    else
        run "$1" ws-publish-socket "$2" --transport ws --subs "$WS_PUBS" \
            --channels "$WS_PUBS" --pub ws --pub-url /pub/%s \
            --pub-conns "$WS_PUBS" --duration "$PUB_SECONDS" \
            --rate "$WS_PUB_RATE" --size 100 --settle 10
    fi
}

SCENARIOS=${SCENARIOS:-"sc_idle_channels sc_idle_one sc_fanout sc_fanout_eq sc_fanout_socket sc_throughput sc_throughput_eq sc_longpoll sc_pub_http sc_pub_socket sc_socket_sub sc_tls_idle sc_tls_fanout sc_tls_fanout_eq sc_tls_suspended sc_ws_idle sc_ws_fanout sc_ws_fanout_eq sc_ws_publish sc_ws_publish_socket"}

# Nchan: installed when missing (as root); without it the table shows n/a.
case " $SERVERS " in
*" nchan "*)
    if ! sh "$root/bench/nchan.sh" check; then
        echo "run.sh: Nchan is not available (needs nginx-light and" \
             "libnginx-mod-nchan); its runs are skipped, its column shows n/a" >&2
        SERVERS=$(echo "$SERVERS" | sed 's/\bnchan\b//; s/  */ /g; s/^ //; s/ $//')
    fi
    ;;
esac

# Others' load distorts every figure here: say so when the machine is busy.
t0=$(machine_ticks); sleep 1; busy=$(( ($(machine_ticks) - t0) * 100 / HZ ))
if [ "$busy" -gt 20 ]; then
    echo "run.sh: warning: the machine is busy (${busy}% of one CPU used by" \
         "others in the last second); figures will be distorted" >&2
fi
echo "before: ${busy}% of one CPU busy; load average $(cat /proc/loadavg)" > "$out/load.txt"

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
    split("connected connect_s connect_p99_us mem_per_sub_b pss_per_sub_b p50_us p90_us p99_us max_us deliv_per_s pub_per_s loss pub_lost pub_retries srv_cpu_s srv_rss_kb_peak other_cpu_s", F, " ")
    for (i in F) {
        x = val(F[i])
        if (x == "") continue
        k = s SUBSEP sv SUBSEP F[i]
        v[k, ++cnt[k]] = x
        sum[sv, F[i]] += x
        seen[sv] = 1
    }
}
function total(field, label) {
    printf "%-44s | %16s | %12s | %6s\n", label,
        ("comet" in seen) ? sum["comet", field] + 0 : "n/a",
        ("nchan" in seen) ? sum["nchan", field] + 0 : "n/a", ""
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
    row("fanout-eq", "pub_per_s", "fan-out, same rate: publishes/s")
    row("fanout-eq", "p50_us", "fan-out, same rate: latency p50 (us)")
    row("fanout-eq", "p99_us", "fan-out, same rate: latency p99 (us)")
    row("fanout-eq", "max_us", "fan-out, same rate: latency max (us)")
    row("fanout-eq", "loss", "fan-out, same rate: lost deliveries")
    row("fanout-eq", "srv_cpu_s", "fan-out, same rate: server CPU (s)")
    row("fanout-socket", "pub_per_s", "fan-out, socket publisher: publishes/s")
    row("fanout-socket", "deliv_per_s", "fan-out, socket publisher: deliveries/s")
    row("fanout-socket", "p50_us", "fan-out, socket publisher: p50 (us)")
    row("fanout-socket", "p99_us", "fan-out, socket publisher: p99 (us)")
    row("fanout-socket", "loss", "fan-out, socket publisher: lost")
    row("throughput", "pub_per_s", "throughput: publishes/s")
    row("throughput", "deliv_per_s", "throughput: deliveries/s")
    row("throughput", "p50_us", "throughput: latency p50 (us)")
    row("throughput", "p99_us", "throughput: latency p99 (us)")
    row("throughput", "loss", "throughput: lost deliveries")
    row("throughput", "srv_cpu_s", "throughput: server CPU (s)")
    row("throughput", "srv_rss_kb_peak", "throughput: server RSS peak (KB)")
    row("throughput-eq", "pub_per_s", "throughput, same rate: publishes/s")
    row("throughput-eq", "p50_us", "throughput, same rate: latency p50 (us)")
    row("throughput-eq", "p99_us", "throughput, same rate: latency p99 (us)")
    row("throughput-eq", "loss", "throughput, same rate: lost deliveries")
    row("throughput-eq", "srv_cpu_s", "throughput, same rate: server CPU (s)")
    row("longpoll", "p50_us", "long-poll: latency p50 (us)")
    row("longpoll", "p99_us", "long-poll: latency p99 (us)")
    row("longpoll", "deliv_per_s", "long-poll: deliveries/s")
    row("longpoll", "loss", "long-poll: lost deliveries")
    row("longpoll", "srv_cpu_s", "long-poll: server CPU (s)")
    row("longpoll", "pub_retries", "long-poll: publishes sent again (1)")
    row("tls-idle", "connected", "HTTPS idle, 1 ch: subscribers held")
    row("tls-idle", "connect_s", "HTTPS idle, 1 ch: connect all (s)")
    row("tls-idle", "connect_p99_us", "HTTPS idle, 1 ch: connect p99 (us)")
    row("tls-idle", "mem_per_sub_b", "HTTPS idle, 1 ch: server RSS per sub (B)")
    row("tls-idle", "pss_per_sub_b", "HTTPS idle, 1 ch: server PSS per sub (B)")
    row("tls-suspended", "connected", "HTTPS, CometTLSDetach off: subs held")
    row("tls-fanout", "deliv_per_s", "HTTPS fan-out: deliveries/s")
    row("tls-fanout", "pub_per_s", "HTTPS fan-out: publishes/s achieved")
    row("tls-fanout", "p50_us", "HTTPS fan-out: latency p50 (us)")
    row("tls-fanout", "p99_us", "HTTPS fan-out: latency p99 (us)")
    row("tls-fanout", "loss", "HTTPS fan-out: lost deliveries")
    row("tls-fanout", "srv_cpu_s", "HTTPS fan-out: server CPU (s)")
    row("tls-fanout-eq", "pub_per_s", "HTTPS fan-out, same rate: publishes/s")
    row("tls-fanout-eq", "p50_us", "HTTPS fan-out, same rate: p50 (us)")
    row("tls-fanout-eq", "p99_us", "HTTPS fan-out, same rate: p99 (us)")
    row("tls-fanout-eq", "loss", "HTTPS fan-out, same rate: lost")
    row("pub-http", "pub_per_s", "publish, HTTP POST, no subs: publishes/s")
    row("pub-socket", "pub_per_s", "publish, Unix socket, no subs: publishes/s")
    row("socket-sub", "deliv_per_s", "socket SUBSCRIBEr under a burst: msgs/s")
    row("socket-sub", "p99_us", "socket SUBSCRIBEr under a burst: p99 (us)")
    row("socket-sub", "loss", "socket SUBSCRIBEr under a burst: lost")
    row("ws-idle", "connect_s", "WebSocket idle: connect all (s)")
    row("ws-idle", "mem_per_sub_b", "WebSocket idle: server RSS per sub (B)")
    row("ws-idle", "pss_per_sub_b", "WebSocket idle: server PSS per sub (B)")
    row("ws-fanout", "deliv_per_s", "WebSocket fan-out: deliveries/s")
    row("ws-fanout", "p50_us", "WebSocket fan-out: latency p50 (us)")
    row("ws-fanout", "p99_us", "WebSocket fan-out: latency p99 (us)")
    row("ws-fanout", "loss", "WebSocket fan-out: lost deliveries")
    row("ws-fanout", "srv_cpu_s", "WebSocket fan-out: server CPU (s)")
    row("ws-fanout-eq", "deliv_per_s", "WebSocket fan-out, same rate: deliveries/s")
    row("ws-fanout-eq", "p50_us", "WebSocket fan-out, same rate: p50 (us)")
    row("ws-fanout-eq", "p99_us", "WebSocket fan-out, same rate: p99 (us)")
    row("ws-fanout-eq", "loss", "WebSocket fan-out, same rate: lost")
    row("ws-fanout-eq", "srv_cpu_s", "WebSocket fan-out, same rate: server CPU (s)")
    row("ws-publish", "pub_per_s", "WebSocket clients publish: messages/s")
    row("ws-publish", "deliv_per_s", "WebSocket clients publish: deliveries/s")
    row("ws-publish", "p50_us", "WebSocket clients publish: p50 (us)")
    row("ws-publish", "p99_us", "WebSocket clients publish: p99 (us)")
    row("ws-publish", "loss", "WebSocket clients publish: lost")
    row("ws-publish", "srv_cpu_s", "WebSocket clients publish: server CPU (s)")
    row("ws-publish-socket", "pub_per_s", "WS clients publish, socket subs (3): msgs/s")
    row("ws-publish-socket", "deliv_per_s", "WS clients publish, socket subs: deliv/s")
    row("ws-publish-socket", "p50_us", "WS clients publish, socket subs: p50 (us)")
    row("ws-publish-socket", "p99_us", "WS clients publish, socket subs: p99 (us)")
    row("ws-publish-socket", "loss", "WS clients publish, socket subs: lost")
    total("loss", "all runs: lost deliveries (sum)")
    total("pub_lost", "all runs: unanswered publishes (sum)")
    total("pub_retries", "all runs: publishes sent again (sum) (1)")
    total("other_cpu_s", "all runs: CPU s used by other processes (2)")
    print "(1) after the server closed an idle keep-alive publisher connection"
    print "    as the next request went out; sent again on a new connection."
    print "(2) busy CPU of the machine during the runs minus the server'"'"'s and"
    print "    cometbench'"'"'s own: other processes, which distort the figures."
    print "(3) mod_comet: SUBSCRIBE connections on the publish socket hear what"
    print "    the WebSocket clients publish; Nchan has none: its WebSocket subscribers."
}' "$results" | tee "$out/table.txt"
echo "raw results: $results" >&2
echo "after: load average $(cat /proc/loadavg)" >> "$out/load.txt"
if [ -s "$out/problems.txt" ]; then
    echo "run.sh: problems (see $out):" >&2
    sed 's/^/  /' "$out/problems.txt" >&2
    if grep -q '^comet ' "$out/problems.txt"; then
        exit 1
    fi
fi
exit 0
