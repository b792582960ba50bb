#!/bin/sh
# make run / make stop: a demo apache2 with mod_comet, configured entirely
# inside build/demo (nothing of the system's configuration is used).
set -e
action=$1 top=$2 port=${3:-8080}
dir="$top/build/demo"
modules=$(apxs -q LIBEXECDIR 2>/dev/null || echo /usr/lib/apache2/modules)
pidfile="$dir/httpd.pid"

stop() {
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        pid=$(cat "$pidfile")
        kill -TERM "$pid"
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 150 ]; do
            sleep 0.1; i=$((i + 1))
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
        echo "mod_comet demo stopped (pid $pid)"
    else
        echo "mod_comet demo is not running"
    fi
    rm -f "$pidfile"
}

if [ "$action" = stop ]; then
    stop
    exit 0
fi

[ -f "$pidfile" ] && stop >/dev/null
mkdir -p "$dir/htdocs/comet"
chmod 755 "$top/build" "$dir" "$dir/htdocs" "$dir/htdocs/comet"
usergroup=""
[ "$(id -u)" = 0 ] && usergroup="User www-data
Group www-data"

# The chat page and the client, copied (the children, running as www-data,
# need not be able to read the source tree).  The page is told where the
# publish socket is.
cp "$top/client/comet.js" "$dir/htdocs/comet/comet.js"
sed "s|content=\"/run/apache2/comet.sock\"|content=\"$dir/comet.sock\"|" \
    "$top/demo/index.html" > "$dir/htdocs/index.html"
chmod 644 "$dir/htdocs/index.html" "$dir/htdocs/comet/comet.js"

cat > "$dir/httpd.conf" <<CONF
# mod_comet demo server, written by 'make run'.
ServerRoot "$dir"
ServerName 127.0.0.1
Listen 127.0.0.1:$port
PidFile "$pidfile"
DefaultRuntimeDir "$dir"
Mutex file:$dir default
ErrorLog "$dir/error_log"
LogLevel warn comet:info
$usergroup

LoadModule mpm_event_module $modules/mod_mpm_event.so
LoadModule authz_core_module $modules/mod_authz_core.so
LoadModule authz_host_module $modules/mod_authz_host.so
LoadModule mime_module $modules/mod_mime.so
LoadModule dir_module $modules/mod_dir.so
LoadModule status_module $modules/mod_status.so
LoadModule comet_module $top/.libs/mod_comet.so

StartServers 2
ServerLimit 4
ThreadsPerChild 25
MaxRequestWorkers 100

TypesConfig /etc/mime.types
DocumentRoot "$dir/htdocs"
DirectoryIndex index.html
<Directory "$dir/htdocs">
    Require all granted
</Directory>
LogFormat "%h %t \"%r\" %>s %B %D" demo
CustomLog "$dir/access_log" demo

# Applications publish through this socket (Redis protocol):
#   redis-cli -s $dir/comet.sock PUBLISH lobby 'hello'
CometPublishSocket "$dir/comet.sock"

# Browsers subscribe here: /events/lobby,dev,random
<Location /events/>
    SetHandler comet-subscriber
</Location>

# The chat page publishes here with POST /publish/<room>.  Anyone who can
# reach this location can publish to any channel, so it is open to the
# loopback address only: the demo listens on 127.0.0.1 anyway, and a real
# site must not open an HTTP publisher wider than its trusted hosts.
<Location /publish/>
    SetHandler comet-publisher
    Require ip 127.0.0.1 ::1
</Location>

<Location /server-status>
    SetHandler server-status
    Require ip 127.0.0.1 ::1
</Location>
CONF

apache2 -d "$dir" -f "$dir/httpd.conf" -k start
i=0
until [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; do
    i=$((i + 1))
    if [ $i -gt 100 ]; then
        echo "apache2 did not start; see $dir/error_log" >&2
        tail -n 20 "$dir/error_log" >&2 || true
        exit 1
    fi
    sleep 0.1
done
cat <<MSG
mod_comet demo running (pid $(cat "$pidfile")), config $dir/httpd.conf
  chat:       http://127.0.0.1:$port/          (open it in two windows)
  client:     http://127.0.0.1:$port/comet/comet.js
  subscribe:  curl -N -H 'Accept: text/event-stream' http://127.0.0.1:$port/events/lobby
              curl -N 'http://127.0.0.1:$port/events/lobby?transport=stream'
              curl 'http://127.0.0.1:$port/events/lobby?backlog=5'     (long-poll)
  publish:    redis-cli -s $dir/comet.sock PUBLISH lobby '{"name":"shell","text":"hello"}'
              curl -d 'hello world' http://127.0.0.1:$port/publish/lobby
  info:       curl http://127.0.0.1:$port/publish/lobby
              curl http://127.0.0.1:$port/server-status
  stop:       make stop
MSG
