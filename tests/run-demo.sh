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
mkdir -p "$dir/htdocs"
chmod 755 "$top/build" "$dir" "$dir/htdocs"
usergroup=""
[ "$(id -u)" = 0 ] && usergroup="User www-data
Group www-data"

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

CometPublishSocket "$dir/comet.sock"

<Location /sub/>
    SetHandler comet-subscriber
</Location>
<Location /pub/>
    SetHandler comet-publisher
    Require ip 127.0.0.1 ::1
</Location>
<Location /server-status>
    SetHandler server-status
    Require ip 127.0.0.1 ::1
</Location>
CONF

cat > "$dir/htdocs/index.html" <<'HTML'
<!doctype html>
<meta charset="utf-8">
<title>mod_comet demo</title>
<h1>mod_comet demo: channel <code>demo</code></h1>
<p>Publish with <code>redis-cli -s SOCKET publish demo hello</code> and watch below.</p>
<ul id="log"></ul>
<script>
  const log = document.getElementById('log');
  const es = new EventSource('/sub/demo');
  es.onmessage = (e) => {
    const li = document.createElement('li');
    li.textContent = e.lastEventId + ': ' + e.data;
    log.appendChild(li);
  };
</script>
HTML

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
  page:       http://127.0.0.1:$port/
  subscribe:  curl -N -H 'Accept: text/event-stream' http://127.0.0.1:$port/sub/demo
              curl -N 'http://127.0.0.1:$port/sub/demo?transport=stream'
              curl 'http://127.0.0.1:$port/sub/demo'            (long-poll)
  publish:    redis-cli -s $dir/comet.sock PUBLISH demo 'hello world'
              curl -d 'hello world' http://127.0.0.1:$port/pub/demo
  info:       curl http://127.0.0.1:$port/pub/demo
              curl http://127.0.0.1:$port/server-status
  stop:       make stop
MSG
