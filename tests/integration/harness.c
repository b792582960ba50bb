/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

long long it_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int it_wait_for(int (*cond_fn)(void *), void *baton, int timeout_ms)
{
    long long end = it_now_ms() + timeout_ms;

    for (;;) {
        if (cond_fn(baton)) {
            return 1;
        }
        if (it_now_ms() >= end) {
            return 0;
        }
        usleep(5000);
    }
}

static const char *env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);

    return v && *v ? v : dflt;
}

long it_read_file(const char *path, char *buf, size_t max)
{
    FILE *f = fopen(path, "r");
    size_t n;

    if (!f) {
        return -1;
    }
    n = fread(buf, 1, max - 1, f);
    buf[n] = '\0';
    fclose(f);
    return (long)n;
}

static int write_file(const char *path, const char *data)
{
    FILE *f = fopen(path, "w");

    if (!f) {
        return -1;
    }
    fputs(data, f);
    return fclose(f);
}

static int free_port(void)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0
        && getsockname(fd, (struct sockaddr *)&sa, &len) == 0) {
        port = ntohs(sa.sin_port);
    }
    if (fd >= 0) {
        close(fd);
    }
    return port;
}

/* Replace every @KEY@ of tmpl; values are NULL-terminated key/value pairs. */
static char *expand(const char *tmpl, const char **kv)
{
    size_t cap = strlen(tmpl) * 2 + 65536, len = 0;
    char *out = malloc(cap);
    const char *p = tmpl;

    while (*p) {
        if (*p == '@') {
            const char *end = strchr(p + 1, '@');
            int done = 0;

            for (int i = 0; end && kv[i]; i += 2) {
                size_t klen = strlen(kv[i]);

                if ((size_t)(end - p - 1) == klen
                    && !strncmp(p + 1, kv[i], klen)) {
                    size_t vlen = strlen(kv[i + 1]);

                    if (len + vlen + 1 >= cap) {
                        cap = (len + vlen + 1) * 2;
                        out = realloc(out, cap);
                    }
                    memcpy(out + len, kv[i + 1], vlen);
                    len += vlen;
                    p = end + 1;
                    done = 1;
                    break;
                }
            }
            if (done) {
                continue;
            }
        }
        if (len + 2 >= cap) {
            cap *= 2;
            out = realloc(out, cap);
        }
        out[len++] = *p++;
    }
    out[len] = '\0';
    return out;
}

/* Remember every server for the runner: "pid dir" lines. */
static void record_server(const it_server_t *srv)
{
    const char *list = getenv("COMET_IT_LIST");
    FILE *f;

    if (list && (f = fopen(list, "a"))) {
        fprintf(f, "%d %s\n", (int)srv->pid, srv->dir);
        fclose(f);
    }
}

static int make_config(it_server_t *srv, const it_opts_t *o)
{
    char tmpl[65536], path[512], port[16], tport[16], servers[16];
    char threads[16], workers[16], factor[64], usergroup[128], tls[8192];
    const char *srcdir = env_or("COMET_SRCDIR", ".");
    const char *mpm = o && o->mpm ? o->mpm : "event";
    int nserv = o && o->servers ? o->servers : 2;
    int nthr = o && o->threads ? o->threads : 5;
    char *conf;
    int rc;

    strcpy(srv->dir, "/tmp/comet-it.XXXXXX");
    if (!mkdtemp(srv->dir)) {
        return -1;
    }
    /* Children run as www-data when the tests run as root. */
    chmod(srv->dir, 0755);
    snprintf(path, sizeof(path), "%s/htdocs", srv->dir);
    mkdir(path, 0755);
    /* A child that crashes leaves its core here (the runner prints its
     * backtrace); children run as www-data. */
    snprintf(path, sizeof(path), "%s/cores", srv->dir);
    mkdir(path, 0777);
    chmod(path, 0777);
    snprintf(path, sizeof(path), "%s/htdocs/index.html", srv->dir);
    write_file(path, "hello from the document root\n");
    snprintf(srv->socket_path, sizeof(srv->socket_path), "%s/comet.sock",
             srv->dir);

    srv->port = free_port();
    srv->tls_port = (o && o->tls) ? free_port() : 0;
    srv->children_wanted = strcmp(mpm, "event") ? 0 : nserv;
    snprintf(port, sizeof(port), "%d", srv->port);
    snprintf(tport, sizeof(tport), "%d", srv->tls_port);
    snprintf(servers, sizeof(servers), "%d", nserv);
    snprintf(threads, sizeof(threads), "%d", nthr);
    snprintf(workers, sizeof(workers), "%d", nserv * nthr);
    factor[0] = '\0';
    if (o && o->async_factor) {
        snprintf(factor, sizeof(factor), "AsyncRequestWorkerFactor %d",
                 o->async_factor);
    }
    usergroup[0] = '\0';
    if (geteuid() == 0) {
        snprintf(usergroup, sizeof(usergroup),
                 "User www-data\nGroup www-data");
    }
    tls[0] = '\0';
    if (o && o->tls) {
        char cmd[2048], out[4096], ca[600];
        /* P-256: handshakes cost a fraction of RSA's (thousands of them
         * in some tests). */
        const char *ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
                         "-nodes";

        snprintf(cmd, sizeof(cmd), "openssl req -x509 %s "
                 "-keyout %s/key.pem -out %s/cert.pem -days 2 "
                 "-subj /CN=127.0.0.1 2>&1", ec, srv->dir, srv->dir);
        if (it_run(cmd, out, sizeof(out), 60000) != 0) {
            fprintf(stderr, "openssl failed: %s\n", out);
            return -1;
        }
        ca[0] = '\0';
        if (o->tls_client_ca) {
            snprintf(cmd, sizeof(cmd), "cd %s && openssl req -x509 %s "
                     "-keyout ca-key.pem -out ca.pem -days 2 "
                     "-subj /CN=comet-test-ca 2>&1 && openssl req %s "
                     "-keyout client-key.pem -out client.csr "
                     "-subj /CN=comet-test-client 2>&1 && openssl x509 -req "
                     "-in client.csr -CA ca.pem -CAkey ca-key.pem "
                     "-CAcreateserial -out client.pem -days 2 2>&1 "
                     "&& chmod 644 *.pem", srv->dir, ec, ec);
            if (it_run(cmd, out, sizeof(out), 60000) != 0) {
                fprintf(stderr, "openssl failed: %s\n", out);
                return -1;
            }
            snprintf(ca, sizeof(ca), "  SSLCACertificateFile %s/ca.pem\n",
                     srv->dir);
        }
        snprintf(tls, sizeof(tls),
                 "LoadModule ssl_module %s/mod_ssl.so\n"
                 "Listen 127.0.0.1:%s\n"
                 "SSLSessionCache none\n"
                 "<VirtualHost 127.0.0.1:%s>\n"
                 "  SSLEngine on\n"
                 "  SSLCertificateFile %s/cert.pem\n"
                 "  SSLCertificateKeyFile %s/key.pem\n"
                 "%s"
                 "  <Location /sub/>\n    SetHandler comet-subscriber\n"
                 "  </Location>\n"
                 "%s\n"
                 "</VirtualHost>\n",
                 env_or("COMET_HTTPD_MODULES", "/usr/lib/apache2/modules"),
                 tport, tport, srv->dir, srv->dir, ca,
                 o->tls_vhost ? o->tls_vhost : "");
    }

    snprintf(path, sizeof(path), "%s/tests/integration/httpd.conf.in",
             srcdir);
    if (it_read_file(path, tmpl, sizeof(tmpl)) < 0) {
        fprintf(stderr, "cannot read %s\n", path);
        return -1;
    }
    {
        const char *kv[] = {
            "DIR", srv->dir, "PORT", port, "MPM", mpm,
            "MODULES", env_or("COMET_HTTPD_MODULES",
                              "/usr/lib/apache2/modules"),
            "MODULE", env_or("COMET_MODULE", ".libs/mod_comet.so"),
            "SERVERS", servers, "THREADS", threads, "WORKERS", workers,
            "ASYNC_FACTOR", factor, "USER_GROUP", usergroup,
            "LOGLEVEL", o && o->loglevel ? o->loglevel : "info",
            "TLS", tls, "EXTRA", o && o->extra ? o->extra : "",
            NULL
        };
        char *once = expand(tmpl, kv);

        /* Twice, so that @MODULES@ and the like work inside "extra". */
        conf = expand(once, kv);
        free(once);
    }
    snprintf(path, sizeof(path), "%s/httpd.conf", srv->dir);
    rc = write_file(path, conf);
    free(conf);
    return rc;
}

static pid_t spawn_httpd(const it_server_t *srv, const char *mode,
                         const char *errfile)
{
    char conf[512];
    pid_t pid;

    snprintf(conf, sizeof(conf), "%s/httpd.conf", srv->dir);
    pid = fork();
    if (pid == 0) {
        int fd = open(errfile, O_WRONLY | O_CREAT | O_TRUNC, 0644);

        struct rlimit rl;

        /* Own process group: the runner can always kill all of it. */
        setsid();
        /* Thousands of subscribers need thousands of descriptors. */
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
            rl.rlim_cur = rl.rlim_max;
            setrlimit(RLIMIT_NOFILE, &rl);
        }
        rl.rlim_cur = rl.rlim_max = RLIM_INFINITY;
        setrlimit(RLIMIT_CORE, &rl);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        fd = open("/dev/null", O_RDONLY);
        if (fd >= 0) {
            dup2(fd, 0);
            close(fd);
        }
        if (getenv("COMET_ASAN") && *getenv("COMET_ASAN")) {
            /* A module built with -fsanitize=address inside an apache2
             * that is not: the runtime must come first.  Reports go to
             * files the runner looks for. */
            char opts[600];

            snprintf(opts, sizeof(opts), "detect_leaks=0:log_path=%s/asan",
                     srv->dir);
            setenv("LD_PRELOAD", getenv("COMET_ASAN"), 1);
            setenv("ASAN_OPTIONS", opts, 1);
        }
        if (!strcmp(mode, "-t")) {
            execlp(env_or("COMET_HTTPD", "apache2"), "apache2", "-d",
                   srv->dir, "-f", conf, "-t", (char *)NULL);
        }
        else {
            execlp(env_or("COMET_HTTPD", "apache2"), "apache2", "-d",
                   srv->dir, "-f", conf, "-DFOREGROUND", (char *)NULL);
        }
        _exit(127);
    }
    return pid;
}

int it_server_children(const it_server_t *srv, pid_t *pids, int max)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    int n = 0;

    if (!d) {
        return 0;
    }
    while ((e = readdir(d)) && n < max) {
        char path[300], buf[512], *p;
        int ppid;

        if (!isdigit((unsigned char)e->d_name[0])) {
            continue;
        }
        snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
        if (it_read_file(path, buf, sizeof(buf)) <= 0) {
            continue;
        }
        /* comm may hold spaces; the fields after the last ')' are fixed. */
        p = strrchr(buf, ')');
        if (p && sscanf(p + 2, "%*c %d", &ppid) == 1 && ppid == srv->pid) {
            pids[n++] = (pid_t)atoi(e->d_name);
        }
    }
    closedir(d);
    return n;
}

static int answers(int port)
{
    it_response_t *res = malloc(sizeof(*res));
    int ok = it_http(port, "GET", "/index.html", NULL, NULL, 0, res, 2000)
             == 0 && res->status == 200;

    free(res);
    return ok;
}

typedef struct ready_t {
    it_server_t *srv;
    int exited;
} ready_t;

static int server_ready(void *baton)
{
    ready_t *rd = baton;
    pid_t kids[64];
    int status;

    if (waitpid(rd->srv->pid, &status, WNOHANG) == rd->srv->pid) {
        rd->exited = 1;
        return 1;
    }
    if (it_server_children(rd->srv, kids, 64) < rd->srv->children_wanted) {
        return 0;
    }
    return answers(rd->srv->port);
}

void it_server_log_tail(const it_server_t *srv, int lines)
{
    char cmd[600], out[16384];

    snprintf(cmd, sizeof(cmd), "tail -n %d %s/error_log %s/stderr.log "
             "2>/dev/null", lines, srv->dir, srv->dir);
    it_run(cmd, out, sizeof(out), 5000);
    fprintf(stderr, "---- tail of %s/error_log ----\n%s----\n", srv->dir,
            out);
}

int it_server_start(it_server_t *srv, const it_opts_t *opts)
{
    memset(srv, 0, sizeof(*srv));
    if (make_config(srv, opts) != 0) {
        fprintf(stderr, "cannot write the test server's config\n");
        return -1;
    }
    return it_server_start_again(srv);
}

int it_server_start_again(it_server_t *srv)
{
    char errfile[512];
    ready_t rd;

    snprintf(errfile, sizeof(errfile), "%s/stderr.log", srv->dir);
    srv->pid = spawn_httpd(srv, "start", errfile);
    if (srv->pid <= 0) {
        srv->pid = 0;
        return -1;
    }
    record_server(srv);
    rd.srv = srv;
    rd.exited = 0;
    if (!it_wait_for(server_ready, &rd, 20000) || rd.exited) {
        fprintf(stderr, "apache2 did not come up (%s)\n",
                rd.exited ? "it exited" : "timeout");
        it_server_log_tail(srv, 30);
        if (!rd.exited) {
            it_server_stop(srv);
        }
        srv->pid = 0;
        return -1;
    }
    return 0;
}

/* Send sig to the server, wait for it to exit (bounded), then SIGKILL the
 * whole process group if anything is left. */
static void stop_with(it_server_t *srv, int sig)
{
    long long end;
    int status;

    if (srv->pid <= 0) {
        return;
    }
    kill(srv->pid, sig);
    end = it_now_ms() + 15000;
    while (it_now_ms() < end) {
        pid_t r = waitpid(srv->pid, &status, WNOHANG);

        if (r == srv->pid || (r < 0 && errno == ECHILD)) {
            break;
        }
        usleep(10000);
    }
    /* Whatever is left of the group (a hung child) goes now. */
    kill(-srv->pid, SIGKILL);
    waitpid(srv->pid, &status, WNOHANG);
    srv->pid = 0;
}

void it_server_stop(it_server_t *srv)
{
    /* apachectl -k graceful-stop (GracefulShutdownTimeout bounds it). */
    stop_with(srv, SIGWINCH);
}

void it_server_stop_now(it_server_t *srv)
{
    /* apachectl -k stop */
    stop_with(srv, SIGTERM);
}

typedef struct gen_t {
    it_server_t *srv;
    pid_t old[64];
    int nold;
} gen_t;

static int new_generation(void *baton)
{
    gen_t *g = baton;
    pid_t kids[64];
    int n = it_server_children(g->srv, kids, 64), fresh = 0;

    for (int i = 0; i < n; i++) {
        int seen = 0;

        for (int j = 0; j < g->nold; j++) {
            seen |= kids[i] == g->old[j];
        }
        fresh += !seen;
    }
    return fresh >= g->srv->children_wanted && answers(g->srv->port);
}

int it_server_graceful(it_server_t *srv)
{
    gen_t g;

    g.srv = srv;
    g.nold = it_server_children(srv, g.old, 64);
    if (kill(srv->pid, SIGUSR1) != 0) {
        return -1;
    }
    return it_wait_for(new_generation, &g, 20000) ? 0 : -1;
}

int it_server_try(const it_opts_t *opts, int start, char *out, size_t outlen)
{
    it_server_t srv;
    char errfile[512], log[8192];
    int status = -1;
    long long end;
    size_t n;

    memset(&srv, 0, sizeof(srv));
    out[0] = '\0';
    if (make_config(&srv, opts) != 0) {
        return -1;
    }
    snprintf(errfile, sizeof(errfile), "%s/stderr.log", srv.dir);
    srv.pid = spawn_httpd(&srv, start ? "start" : "-t", errfile);
    record_server(&srv);
    end = it_now_ms() + 20000;
    while (it_now_ms() < end) {
        if (waitpid(srv.pid, &status, WNOHANG) == srv.pid) {
            break;
        }
        usleep(10000);
    }
    if (it_now_ms() >= end) {
        it_server_stop(&srv);
        status = -1;
    }
    else {
        status = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
        kill(-srv.pid, SIGKILL);
    }
    if (it_read_file(errfile, out, outlen) < 0) {
        out[0] = '\0';
    }
    snprintf(errfile, sizeof(errfile), "%s/error_log", srv.dir);
    if (it_read_file(errfile, log, sizeof(log)) > 0) {
        n = strlen(out);
        snprintf(out + n, outlen - n, "%s", log);
    }
    return status;
}

/* ---- sockets --------------------------------------------------------------- */

int it_connect(int port)
{
    struct sockaddr_in sa;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

    if (fd < 0) {
        return -1;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

int it_connect_rcvbuf(int port, int rcvbuf)
{
    struct sockaddr_in sa;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0) {
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int it_connect_unix(const char *path)
{
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0) {
        return -1;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int it_send(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

int it_sendf(int fd, const char *fmt, ...)
{
    char buf[16384];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(buf)) {
        return -1;
    }
    return it_send(fd, buf, (size_t)n);
}

/* 1 data read, 0 closed, -2 timeout, -1 error */
static int read_some(int fd, char *buf, size_t max, size_t *len,
                     long long end)
{
    struct pollfd pfd;
    ssize_t n;
    int left = (int)(end - it_now_ms());

    if (*len + 1 >= max) {
        return -1;
    }
    if (left <= 0) {
        return -2;
    }
    pfd.fd = fd;
    pfd.events = POLLIN;
    if (poll(&pfd, 1, left) <= 0) {
        return -2;
    }
    n = read(fd, buf + *len, max - *len - 1);
    if (n < 0) {
        return errno == EINTR || errno == EAGAIN ? 1 : -1;
    }
    if (n == 0) {
        return 0;
    }
    *len += (size_t)n;
    buf[*len] = '\0';
    return 1;
}

int it_read_until(int fd, char *buf, size_t max, size_t *len, size_t from,
                  const char *needle, int timeout_ms)
{
    long long end = it_now_ms() + timeout_ms;

    buf[*len] = '\0';
    for (;;) {
        int r;

        if (from <= *len && memmem(buf + from, *len - from, needle,
                                   strlen(needle))) {
            return 1;
        }
        r = read_some(fd, buf, max, len, end);
        if (r == 0 || r == -2) {
            return 0;
        }
        if (r < 0) {
            return -1;
        }
    }
}

int it_read_to_close(int fd, char *buf, size_t max, size_t *len,
                     int timeout_ms)
{
    long long end = it_now_ms() + timeout_ms;

    buf[*len] = '\0';
    for (;;) {
        int r = read_some(fd, buf, max, len, end);

        if (r == 0) {
            return 1;
        }
        if (r < 0) {
            return 0;
        }
    }
}

const char *it_header(const it_response_t *res, const char *name, char *buf,
                      size_t len)
{
    size_t nlen = strlen(name);
    const char *p = strstr(res->head, "\r\n");

    while (p && p[2]) {
        p += 2;
        if (!strncasecmp(p, name, nlen) && p[nlen] == ':') {
            const char *v = p + nlen + 1, *e = strstr(v, "\r\n");
            size_t vl;

            while (*v == ' ') {
                v++;
            }
            vl = e ? (size_t)(e - v) : strlen(v);
            if (vl >= len) {
                vl = len - 1;
            }
            memcpy(buf, v, vl);
            buf[vl] = '\0';
            return buf;
        }
        p = strstr(p, "\r\n");
    }
    return NULL;
}

int it_parse_response(const char *raw, size_t len, it_response_t *res)
{
    const char *eoh = memmem(raw, len, "\r\n\r\n", 4), *p;
    size_t hlen;
    char te[64];

    memset(res, 0, sizeof(*res));
    if (!eoh || sscanf(raw, "HTTP/1.%*d %d", &res->status) != 1) {
        return -1;
    }
    hlen = (size_t)(eoh - raw) + 2;
    if (hlen >= sizeof(res->head)) {
        hlen = sizeof(res->head) - 1;
    }
    memcpy(res->head, raw, hlen);
    res->head[hlen] = '\0';
    p = eoh + 4;
    if (it_header(res, "Transfer-Encoding", te, sizeof(te))
        && !strcasecmp(te, "chunked")) {
        const char *end = raw + len;

        while (p < end) {
            char *q;
            unsigned long n = strtoul(p, &q, 16);

            if (q == p || !(q = memmem(q, (size_t)(end - q), "\r\n", 2))) {
                break;
            }
            p = q + 2;
            if (n == 0) {
                res->chunked_complete = 1;
                break;
            }
            if ((size_t)(end - p) < n) {
                n = (unsigned long)(end - p);
            }
            if (res->body_len + n < sizeof(res->body)) {
                memcpy(res->body + res->body_len, p, n);
                res->body_len += n;
            }
            p += n + 2;
        }
    }
    else {
        size_t n = (size_t)(raw + len - p);

        if (n >= sizeof(res->body)) {
            n = sizeof(res->body) - 1;
        }
        memcpy(res->body, p, n);
        res->body_len = n;
    }
    res->body[res->body_len] = '\0';
    return 0;
}

int it_http(int port, const char *method, const char *path,
            const char *extra_headers, const char *body, size_t body_len,
            it_response_t *res, int timeout_ms)
{
    static __thread char raw[512 * 1024];
    size_t len = 0;
    int fd = it_connect(port), rc = -1;

    memset(res, 0, sizeof(*res));
    if (fd < 0) {
        return -1;
    }
    if (it_sendf(fd, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 "Connection: close\r\n%s", method, path,
                 extra_headers ? extra_headers : "") == 0
        && (!body || it_sendf(fd, "Content-Length: %zu\r\n", body_len) == 0)
        && it_send(fd, "\r\n", 2) == 0
        && (!body || it_send(fd, body, body_len) == 0)) {
        it_read_to_close(fd, raw, sizeof(raw), &len, timeout_ms);
        rc = it_parse_response(raw, len, res);
    }
    close(fd);
    return rc;
}

int it_run(const char *cmd, char *out, size_t outlen, int timeout_ms)
{
    int pipefd[2], status = -1;
    size_t len = 0;
    pid_t pid;

    out[0] = '\0';
    if (pipe(pipefd) != 0) {
        return -1;
    }
    pid = fork();
    if (pid == 0) {
        dup2(pipefd[1], 1);
        dup2(pipefd[1], 2);
        close(pipefd[0]);
        close(pipefd[1]);
        setsid();
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    close(pipefd[1]);
    it_read_to_close(pipefd[0], out, outlen, &len, timeout_ms);
    close(pipefd[0]);
    for (int i = 0; i < 400 && waitpid(pid, &status, WNOHANG) != pid; i++) {
        usleep(5000);
        status = -2;
    }
    if (status == -2) {
        kill(-pid, SIGKILL);
        waitpid(pid, &status, 0);
        return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* ---- subscribers and publishes ---------------------------------------- */

int it_sub_open(it_sub_t *s, int port, const char *path, const char *hdrs)
{
    memset(s, 0, sizeof(*s));
    s->buf = malloc(IT_SUB_BUFSZ);
    s->fd = it_connect(port);
    if (!s->buf || s->fd < 0
        || it_sendf(s->fd, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n",
                    path, hdrs ? hdrs : "") != 0
        || it_read_until(s->fd, s->buf, IT_SUB_BUFSZ, &s->len, 0,
                         "\r\n\r\n", 5000) != 1) {
        return -1;
    }
    s->body = (size_t)(strstr(s->buf, "\r\n\r\n") - s->buf) + 4;
    return 0;
}

int it_sub_send(it_sub_t *s, int port, const char *path, const char *hdrs)
{
    memset(s, 0, sizeof(*s));
    s->buf = malloc(IT_SUB_BUFSZ);
    s->fd = it_connect(port);
    if (!s->buf || s->fd < 0
        || it_sendf(s->fd, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n",
                    path, hdrs ? hdrs : "") != 0) {
        return -1;
    }
    if (s->buf) {
        s->buf[0] = '\0';
    }
    return 0;
}

int it_sub_head(it_sub_t *s, int timeout_ms)
{
    int rc = it_read_until(s->fd, s->buf, IT_SUB_BUFSZ, &s->len, 0,
                           "\r\n\r\n", timeout_ms);

    if (rc == 1) {
        s->body = (size_t)(strstr(s->buf, "\r\n\r\n") - s->buf) + 4;
    }
    return rc;
}

int it_sub_wait(it_sub_t *s, const char *needle, int timeout_ms)
{
    return it_read_until(s->fd, s->buf, IT_SUB_BUFSZ, &s->len, s->body,
                         needle, timeout_ms);
}

void it_sub_close(it_sub_t *s)
{
    if (s->fd >= 0) {
        close(s->fd);
    }
    free(s->buf);
    s->fd = -1;
    s->buf = NULL;
}

int it_publish(int port, const char *channel, const char *data,
               const char *event, char *id, size_t idlen)
{
    it_response_t *res = malloc(sizeof(*res));
    char path[1200], hdr[256];
    int status = -1;

    snprintf(path, sizeof(path), "/pub/%s", channel);
    hdr[0] = '\0';
    if (event) {
        snprintf(hdr, sizeof(hdr), "Comet-Event: %s\r\n", event);
    }
    if (res && it_http(port, "POST", path, hdr, data, strlen(data), res,
                       5000) == 0) {
        status = res->status;
        if (id && !it_header(res, "Comet-Message-Id", id, idlen)) {
            id[0] = '\0';
        }
    }
    free(res);
    return status;
}

int it_subscribers(int port, const char *channel)
{
    it_response_t *res = malloc(sizeof(*res));
    char path[1200];
    const char *p;
    int n = -1;

    snprintf(path, sizeof(path), "/pub/%s", channel);
    if (res && it_http(port, "GET", path, NULL, NULL, 0, res, 5000) == 0) {
        if (res->status == 200
            && (p = strstr(res->body, "\"subscribers\":"))) {
            n = atoi(p + 14);
        }
        else if (res->status == 404) {
            n = 0;
        }
    }
    free(res);
    return n;
}

typedef struct count_t {
    int port;
    const char *channel;
    int want;
} count_t;

static int count_is(void *baton)
{
    count_t *c = baton;

    return it_subscribers(c->port, c->channel) == c->want;
}

int it_wait_subscribers_ms(int port, const char *channel, int want,
                           int timeout_ms)
{
    count_t c;

    c.port = port;
    c.channel = channel;
    c.want = want;
    return it_wait_for(count_is, &c, timeout_ms);
}

int it_wait_subscribers(int port, const char *channel, int want)
{
    return it_wait_subscribers_ms(port, channel, want, 10000);
}

long it_status_value(int port, const char *key)
{
    it_response_t *res = malloc(sizeof(*res));
    char want[128];
    const char *p;
    long v = -1;

    snprintf(want, sizeof(want), "\n%s: ", key);
    if (it_http(port, "GET", "/server-status?auto", NULL, NULL, 0, res, 5000)
        == 0 && res->status == 200 && (p = strstr(res->body, want))) {
        v = atol(p + strlen(want));
    }
    free(res);
    return v;
}

typedef struct status_want_t {
    int port;
    const char *key;
    long want;
} status_want_t;

static int status_is(void *baton)
{
    status_want_t *w = baton;

    return it_status_value(w->port, w->key) == w->want;
}

int it_wait_status(int port, const char *key, long want)
{
    status_want_t w;

    w.port = port;
    w.key = key;
    w.want = want;
    return it_wait_for(status_is, &w, 10000);
}

int it_log_count(const it_server_t *srv, const char *needle)
{
    static char log[4 * 1024 * 1024];
    char path[512];
    const char *p;
    int n = 0;

    snprintf(path, sizeof(path), "%s/error_log", srv->dir);
    if (it_read_file(path, log, sizeof(log)) < 0) {
        return 0;
    }
    for (p = log; (p = strstr(p, needle)); p += strlen(needle)) {
        n++;
    }
    return n;
}

void it_children_usage(const it_server_t *s, long *rss_kb, long *fds)
{
    pid_t kids[64];
    int n = it_server_children(s, kids, 64);

    *rss_kb = 0;
    *fds = 0;
    for (int i = 0; i < n; i++) {
        char path[64], buf[4096], *p;
        char cmd[128], out[64];

        snprintf(path, sizeof(path), "/proc/%d/status", (int)kids[i]);
        if (it_read_file(path, buf, sizeof(buf)) > 0
            && (p = strstr(buf, "RssAnon:"))) {
            *rss_kb += atol(p + 8);
        }
        snprintf(cmd, sizeof(cmd), "ls /proc/%d/fd | wc -l", (int)kids[i]);
        if (it_run(cmd, out, sizeof(out), 5000) == 0) {
            *fds += atol(out);
        }
    }
}

/* ---- faults ------------------------------------------------------------- */

static int process_dead(pid_t pid)
{
    char path[64], buf[512], *p;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    if (it_read_file(path, buf, sizeof(buf)) <= 0) {
        return 1;
    }
    p = strrchr(buf, ')');
    return p && (p[2] == 'Z' || p[2] == 'X');
}

int it_kill_child(const it_server_t *srv, pid_t pid)
{
    char path[300];
    FILE *f;
    long long end;

    snprintf(path, sizeof(path), "%s/expected-kills", srv->dir);
    if ((f = fopen(path, "a"))) {
        /* The parent's line for it: "child pid N exit signal Killed (9)". */
        fprintf(f, "child pid %d exit signal Killed\n", (int)pid);
        fclose(f);
    }
    if (kill(pid, SIGKILL) != 0) {
        return 0;
    }
    end = it_now_ms() + 10000;
    while (!process_dead(pid)) {
        if (it_now_ms() > end) {
            return 0;
        }
        usleep(1000);
    }
    return 1;
}

int it_status_processes(int port, pid_t *pids, long *subs, int max)
{
    it_response_t *res = malloc(sizeof(*res));
    const char *p;
    int n = -1;

    if (res && it_http(port, "GET", "/server-status?auto", NULL, NULL, 0,
                       res, 5000) == 0 && res->status == 200) {
        n = 0;
        for (p = res->body; n < max && (p = strstr(p, "\nCometProcess"));
             p++) {
            int pid;
            long s;

            if (sscanf(p, "\nCometProcess%*u: pid=%d slot=%*u subscribers=%ld",
                       &pid, &s) == 2) {
                pids[n] = (pid_t)pid;
                subs[n] = s;
                n++;
            }
        }
    }
    free(res);
    return n;
}

/* ---- an EventSource-like client ----------------------------------------- */

void it_es_init(it_es_t *es, int port, const char *path,
                it_es_event_fn *on_event, void *baton)
{
    memset(es, 0, sizeof(*es));
    es->port = port;
    snprintf(es->path, sizeof(es->path), "%s", path);
    es->fd = -1;
    es->on_event = on_event;
    es->baton = baton;
}

static void es_reset_parser(it_es_t *es)
{
    es->in_len = 0;
    es->chunked = 0;
    es->chunk_state = 0;
    es->chunk_left = 0;
    es->id_buf[0] = '\0';
    snprintf(es->id_buf, sizeof(es->id_buf), "%s", es->last_id);
    es->type[0] = '\0';
    es->data_len = 0;
    es->connected = 0;
}

int it_es_connect(it_es_t *es)
{
    char req[1024];
    int n;

    it_es_close(es);
    es_reset_parser(es);
    es->fd = it_connect(es->port);
    if (es->fd < 0) {
        return -1;
    }
    n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 "Accept: text/event-stream\r\nCache-Control: no-cache\r\n"
                 "%s%s%s\r\n", es->path,
                 es->last_id[0] ? "Last-Event-ID: " : "", es->last_id,
                 es->last_id[0] ? "\r\n" : "");
    if (it_send(es->fd, req, (size_t)n) != 0) {
        it_es_close(es);
        return -1;
    }
    fcntl(es->fd, F_SETFL, fcntl(es->fd, F_GETFL) | O_NONBLOCK);
    return 0;
}

void it_es_close(it_es_t *es)
{
    if (es->fd >= 0) {
        close(es->fd);
    }
    es->fd = -1;
    es->connected = 0;
}

static void es_grow(char **p, size_t *cap, size_t need)
{
    if (need > *cap) {
        *cap = need * 2 + 256;
        *p = realloc(*p, *cap);
    }
}

/* One line of the event stream (without its end). */
static void es_line(it_es_t *es, const char *line, size_t len)
{
    const char *colon, *value;
    size_t nlen, vlen;

    if (len == 0) {
        /* Dispatch. */
        snprintf(es->last_id, sizeof(es->last_id), "%s", es->id_buf);
        if (es->data_len) {
            es->data_len--;     /* the last LF */
            es->data[es->data_len] = '\0';
            es->events++;
            if (es->on_event) {
                es->on_event(es, es->type[0] ? es->type : "message",
                             es->data, es->data_len, es->baton);
            }
        }
        es->data_len = 0;
        es->type[0] = '\0';
        return;
    }
    if (line[0] == ':') {
        return;
    }
    colon = memchr(line, ':', len);
    nlen = colon ? (size_t)(colon - line) : len;
    value = colon ? colon + 1 : line + len;
    if (colon && value < line + len && *value == ' ') {
        value++;
    }
    vlen = (size_t)(line + len - value);
    if (nlen == 4 && !memcmp(line, "data", 4)) {
        es_grow(&es->data, &es->data_cap, es->data_len + vlen + 2);
        memcpy(es->data + es->data_len, value, vlen);
        es->data_len += vlen;
        es->data[es->data_len++] = '\n';
    }
    else if (nlen == 5 && !memcmp(line, "event", 5)) {
        snprintf(es->type, sizeof(es->type), "%.*s", (int)vlen, value);
    }
    else if (nlen == 2 && !memcmp(line, "id", 2)
             && vlen < sizeof(es->id_buf) && !memchr(value, '\0', vlen)) {
        memcpy(es->id_buf, value, vlen);
        es->id_buf[vlen] = '\0';
    }
}

/* Body bytes (de-chunked): split into lines (LF; CR LF and CR as well). */
static void es_body(it_es_t *es, const char *p, size_t n)
{
    es_grow(&es->in, &es->in_cap, es->in_len + n + 1);
    memcpy(es->in + es->in_len, p, n);
    es->in_len += n;
    for (;;) {
        char *e = NULL;
        size_t i, len, skip;

        for (i = 0; i < es->in_len; i++) {
            if (es->in[i] == '\n' || es->in[i] == '\r') {
                e = es->in + i;
                break;
            }
        }
        if (!e) {
            return;
        }
        len = (size_t)(e - es->in);
        skip = 1;
        if (*e == '\r') {
            if (len + 1 == es->in_len) {
                return;         /* a CR LF may be split: wait */
            }
            if (e[1] == '\n') {
                skip = 2;
            }
        }
        es_line(es, es->in, len);
        memmove(es->in, es->in + len + skip, es->in_len - len - skip);
        es->in_len -= len + skip;
    }
}

/* Bytes from the socket: the response head, then the body. */
static int es_bytes(it_es_t *es, const char *p, size_t n)
{
    while (n) {
        if (!es->connected) {
            char *eoh;

            es_grow(&es->in, &es->in_cap, es->in_len + n + 1);
            memcpy(es->in + es->in_len, p, n);
            es->in_len += n;
            es->in[es->in_len] = '\0';
            n = 0;
            if (!(eoh = memmem(es->in, es->in_len, "\r\n\r\n", 4))) {
                return es->in_len < 16384;
            }
            *eoh = '\0';
            es->status = 0;
            sscanf(es->in, "HTTP/1.%*d %d", &es->status);
            if (es->status != 200) {
                return 0;
            }
            es->chunked = strcasestr(es->in, "\r\nTransfer-Encoding: chunked")
                          != NULL;
            es->connected = 1;
            es->connects++;
            {
                /* What followed the head is body. */
                size_t hl = (size_t)(eoh - es->in) + 4, rest = es->in_len - hl;
                char *tmp = malloc(rest + 1);

                memcpy(tmp, es->in + hl, rest);
                es->in_len = 0;
                if (rest && !es_bytes(es, tmp, rest)) {
                    free(tmp);
                    return 0;
                }
                free(tmp);
            }
            continue;
        }
        if (!es->chunked) {
            es_body(es, p, n);
            return 1;
        }
        switch (es->chunk_state) {
        case 0:     /* the size line, up to its LF */
            if (*p == '\n') {
                es->chunk_state = es->chunk_left ? 1 : 3;
            }
            else if (isxdigit((unsigned char)*p)) {
                es->chunk_left = es->chunk_left * 16
                                 + (size_t)(isdigit((unsigned char)*p)
                                            ? *p - '0'
                                            : (tolower(*p) - 'a' + 10));
            }
            else if (*p != '\r') {
                return 0;
            }
            p++;
            n--;
            break;
        case 1: {   /* chunk data */
            size_t k = n < es->chunk_left ? n : es->chunk_left;

            es_body(es, p, k);
            es->chunk_left -= k;
            p += k;
            n -= k;
            if (!es->chunk_left) {
                es->chunk_state = 2;
            }
            break;
        }
        case 2:     /* the CR LF after the data */
            if (*p == '\n') {
                es->chunk_state = 0;
            }
            p++;
            n--;
            break;
        default:    /* after the last chunk */
            return 0;
        }
    }
    return 1;
}

int it_es_read(it_es_t *es)
{
    char buf[16384];

    if (es->fd < 0) {
        return 0;
    }
    for (;;) {
        ssize_t n = recv(es->fd, buf, sizeof(buf), MSG_DONTWAIT);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return 1;
        }
        if (n <= 0 || !es_bytes(es, buf, (size_t)n)) {
            it_es_close(es);
            return 0;
        }
    }
}

int it_es_poll(it_es_t *es, int n, int timeout_ms, int reconnect,
               int (*done_fn)(void *), void *baton)
{
    struct pollfd *pfd = malloc(sizeof(*pfd) * (size_t)n);
    int *idx = malloc(sizeof(int) * (size_t)n), done = 0;
    long long end = it_now_ms() + timeout_ms;

    while (!(done = done_fn && done_fn(baton)) && it_now_ms() < end) {
        int k = 0, r;

        for (int i = 0; i < n; i++) {
            if (es[i].fd < 0 && reconnect) {
                it_es_connect(&es[i]);
            }
            if (es[i].fd >= 0) {
                pfd[k].fd = es[i].fd;
                pfd[k].events = POLLIN;
                idx[k++] = i;
            }
        }
        r = poll(pfd, (nfds_t)k, 50);
        for (int j = 0; r > 0 && j < k; j++) {
            if (pfd[j].revents) {
                it_es_read(&es[idx[j]]);
            }
        }
    }
    free(pfd);
    free(idx);
    return done;
}

/* ---- a publisher on the publish socket ---------------------------------- */

void it_rpub_init(it_rpub_t *p, const char *socket_path)
{
    memset(p, 0, sizeof(*p));
    snprintf(p->path, sizeof(p->path), "%s", socket_path);
    p->fd = -1;
}

void it_rpub_close(it_rpub_t *p)
{
    if (p->fd >= 0) {
        close(p->fd);
    }
    p->fd = -1;
}

long it_rpub_publish(it_rpub_t *p, const char *channel, const char *data,
                     size_t len, int timeout_ms)
{
    long long end = it_now_ms() + timeout_ms;
    char head[512], line[512];
    size_t got = 0;
    int hl;

    for (;;) {
        while (p->fd < 0) {
            p->fd = it_connect_unix(p->path);
            if (p->fd >= 0) {
                break;
            }
            if (it_now_ms() > end) {
                return -3;
            }
            /* The socket is being made again (a restart): retry. */
            usleep(2000);
        }
        hl = snprintf(head, sizeof(head),
                      "*3\r\n$7\r\nPUBLISH\r\n$%zu\r\n%s\r\n$%zu\r\n",
                      strlen(channel), channel, len);
        /* A send that fails took nothing: certainly not sent, retry on a
         * new connection. */
        if (send(p->fd, head, (size_t)hl, MSG_NOSIGNAL) == hl) {
            break;
        }
        it_rpub_close(p);
        if (it_now_ms() > end) {
            return -3;
        }
    }
    if (it_send(p->fd, data, len) != 0 || it_send(p->fd, "\r\n", 2) != 0) {
        it_rpub_close(p);
        return -1;
    }
    /* The reply: one line. */
    while (!memchr(line, '\n', got)) {
        struct pollfd pfd = { p->fd, POLLIN, 0 };
        ssize_t n;
        int left = (int)(end + 10000 - it_now_ms());

        if (left <= 0 || poll(&pfd, 1, left) <= 0
            || (n = read(p->fd, line + got, sizeof(line) - 1 - got)) <= 0) {
            it_rpub_close(p);
            return -1;
        }
        got += (size_t)n;
        if (got >= sizeof(line) - 1) {
            break;
        }
    }
    line[got] = '\0';
    if (line[0] == ':') {
        return atol(line + 1);
    }
    snprintf(p->err, sizeof(p->err), "%.*s", (int)strcspn(line, "\r\n"),
             line);
    return -2;
}
