#!/bin/sh
# A private nginx + Nchan for the benchmark: its own prefix directory (pid,
# logs, temp files), listening on 127.0.0.1 only, started and stopped by PID.
#
#   sh bench/nchan.sh start DIR PORT TLS_PORT CERT KEY
#                                      generate DIR/nginx.conf, start, wait
#                                      until the port listens; prints the
#                                      master PID (HTTPS on TLS_PORT with
#                                      the certificate CERT and key KEY)
#   sh bench/nchan.sh stop DIR         stop the master started in DIR
#   sh bench/nchan.sh pid DIR          print the master PID (if running)
#   sh bench/nchan.sh check            install if missing (as root); exit 1
#                                      with a message when unavailable
#
# NCHAN_CONF_IN names another configuration template (default
# bench/nchan.conf.in), with the same placeholders.
#
# Installs nginx and the Nchan module from Debian when missing (as root).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
NGINX=${NGINX:-/usr/sbin/nginx}

die() { echo "nchan.sh: $*" >&2; exit 1; }

find_module() {
    for m in /usr/lib/nginx/modules/ngx_nchan_module.so \
             /usr/share/nginx/modules/ngx_nchan_module.so; do
        [ -f "$m" ] && { echo "$m"; return 0; }
    done
    # Debian names the module in its modules-available snippet.
    f=/usr/share/nginx/modules-available/mod-nchan.conf
    if [ -f "$f" ]; then
        m=$(sed -n 's/^[[:space:]]*load_module[[:space:]]*\([^;]*\);.*/\1/p' "$f" | head -n 1)
        case "$m" in /*) ;; *) m=/usr/lib/nginx/$m ;; esac
        [ -f "$m" ] && { echo "$m"; return 0; }
    fi
    return 1
}

ensure_installed() {
    [ -x "$NGINX" ] && find_module >/dev/null && return 0
    [ "$(id -u)" = 0 ] || die "nginx with the Nchan module is missing: apt-get install nginx-light libnginx-mod-nchan"
    echo "nchan.sh: installing nginx-light libnginx-mod-nchan" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null 2>&1 || true
    apt-get install -y -qq --no-install-recommends nginx-light libnginx-mod-nchan \
        >/dev/null 2>&1 || die "apt-get install nginx-light libnginx-mod-nchan failed"
    [ -x "$NGINX" ] && find_module >/dev/null || die "install failed"
}

master_pid() {
    [ -f "$1/nginx.pid" ] || return 1
    p=$(cat "$1/nginx.pid" 2>/dev/null) || return 1
    [ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 1
    echo "$p"
}

# Is something listening on 127.0.0.1:$1?  (/proc/net/tcp: local address
# in hex, state 0A = LISTEN)
listening() {
    hexport=$(printf '%04X' "$1")
    grep -q "^ *[0-9]*: 0100007F:$hexport 00000000:0000 0A" /proc/net/tcp
}

start() {
    dir=$1 port=$2 tls_port=$3 cert=$4 key=$5
    ensure_installed
    module=$(find_module)
    mkdir -p "$dir/tmp"
    dir=$(cd "$dir" && pwd)
    if p=$(master_pid "$dir"); then die "already running in $dir (pid $p)"; fi
    listening "$port" && die "port $port is already in use"
    # As many descriptors as this process may have: the workers inherit it.
    hard=$(ulimit -Hn)
    [ "$hard" = unlimited ] && hard=200000
    nofile=$hard
    [ "$nofile" -gt 200000 ] && nofile=200000
    ulimit -n "$nofile" 2>/dev/null || true
    conns=65536                         # per worker, within the descriptor limit
    [ "$conns" -gt "$nofile" ] && conns=$nofile
    sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$port|g" -e "s|@TLS_PORT@|$tls_port|g" \
        -e "s|@CERT@|$cert|g" -e "s|@KEY@|$key|g" \
        -e "s|@MODULE@|$module|g" -e "s|@NOFILE@|$nofile|g" -e "s|@CONNS@|$conns|g" \
        "${NCHAN_CONF_IN:-$here/nchan.conf.in}" > "$dir/nginx.conf"
    rm -f "$dir/nginx.pid"
    "$NGINX" -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" 2>>"$dir/error.log" \
        || die "nginx failed to start; see $dir/error.log"
    # Wait (bounded) for the pid file and the listening socket.
    i=0
    while :; do
        if p=$(master_pid "$dir") && listening "$port"; then
            echo "$p"
            return 0
        fi
        i=$((i + 1))
        if [ "$i" -gt 200 ]; then
            stop "$dir"
            die "nginx did not come up; see $dir/error.log"
        fi
        sleep 0.05
    done
}

stop() {
    dir=$1
    p=$(master_pid "$dir") || return 0
    kill -TERM "$p" 2>/dev/null || true
    i=0
    while kill -0 "$p" 2>/dev/null; do
        i=$((i + 1))
        if [ "$i" -gt 200 ]; then
            kill -KILL "$p" 2>/dev/null || true
            break
        fi
        sleep 0.05
    done
    rm -f "$dir/nginx.pid"
}

case "${1:-}" in
    start) [ $# -eq 6 ] || die "usage: nchan.sh start DIR PORT TLS_PORT CERT KEY"
           start "$2" "$3" "$4" "$5" "$6" ;;
    stop)  [ $# -eq 2 ] || die "usage: nchan.sh stop DIR"; stop "$2" ;;
    pid)   [ $# -eq 2 ] || die "usage: nchan.sh pid DIR"; master_pid "$2" ;;
    check) ensure_installed ;;
    *)     die "usage: nchan.sh start DIR PORT TLS_PORT CERT KEY | stop DIR | pid DIR | check" ;;
esac
