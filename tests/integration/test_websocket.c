/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* WebSocket subscribers against the real apache2 (event MPM, two
 * children): the npm `ws` client (tests/browser/ws_client.mjs) for
 * frames, pings, every close code, resume and the envelope; a graceful restart closes
 * with 1001 (with mod_reqtimeout loaded, which must not cut an idle
 * WebSocket); a WebSocket client on one child publishes and SSE
 * subscribers on the other, and python3-redis subscribers on the publish
 * socket, receive it with its identity; 5,000 idle
 * WebSockets on 2 x 25 threads all receive while the site answers; 20,000
 * connect/close cycles leave nothing behind.  The last two use a minimal
 * client of our own (raw frames through comet_ws).  Over TLS (wss://, the
 * test's certificate): the same scenarios, the session taken over by the
 * hub (counted as detached TLS), 1001 at a graceful restart, and 501
 * before the upgrade where the session cannot be taken over. */

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "comet_ws.h"

/* Locations of the suite's server (see tests/browser/ws_client.mjs). */
static const char ws_conf[] =
    "LoadModule auth_basic_module @MODULES@/mod_auth_basic.so\n"
    "LoadModule authn_core_module @MODULES@/mod_authn_core.so\n"
    "LoadModule authn_file_module @MODULES@/mod_authn_file.so\n"
    "LoadModule authz_user_module @MODULES@/mod_authz_user.so\n"
    "LoadModule reqtimeout_module @MODULES@/mod_reqtimeout.so\n"
    "RequestReadTimeout header=2 body=2\n"
    "CometMaxMessageSize 4K\n"
    "<Location /wspub/>\n"
    "    SetHandler comet-subscriber\n"
    "    CometClientPublish on\n"
    "    CometClientIdentity \"%{REMOTE_USER}\"\n"
    "    CometClientPublishRate 50 100\n"
    "    AuthType Basic\n"
    "    AuthName comet\n"
    "    AuthUserFile \"@DIR@/htpasswd\"\n"
    "    Require valid-user\n"
    "</Location>\n"
    "<Location /wspub/ratelimited>\n"
    "    CometClientPublishRate 2 5\n"
    "</Location>\n"
    "<Location /authpub/>\n"
    "    SetHandler comet-publisher\n"
    "    CometClientIdentity \"%{REMOTE_USER}\"\n"
    "    AuthType Basic\n"
    "    AuthName comet\n"
    "    AuthUserFile \"@DIR@/htpasswd\"\n"
    "    Require valid-user\n"
    "</Location>\n";

static it_server_t srv;
static int use_tls;             /* the ws client speaks wss:// (srv's TLS) */

static void start_as(int tls)
{
    it_opts_t o;
    char cmd[600], out[1024], *conf = malloc(sizeof(ws_conf) + 256);

    memset(&o, 0, sizeof(o));
    snprintf(conf, sizeof(ws_conf) + 256, "%s%s", ws_conf,
             tls ? "<Location /sub/notakeover>\n"
                   "    CometTLSDetach off\n"
                   "</Location>\n" : "");
    o.extra = conf;
    o.tls = tls;
    use_tls = tls;
    ck_assert_int_eq(it_server_start(&srv, &o), 0);
    free(conf);
    snprintf(cmd, sizeof(cmd), "htpasswd -bc '%s/htpasswd' alice wonderland",
             srv.dir);
    ck_assert_int_eq(it_run(cmd, out, sizeof(out), 10000), 0);
}

static void start(void)
{
    start_as(0);
}

static void start_tls(void)
{
    start_as(1);
}

static void stop(void)
{
    it_server_stop(&srv);
    use_tls = 0;
}

/* ---- the npm ws client -------------------------------------------------------- */

/* Run a scenario of tests/browser/ws_client.mjs to its end; its output in
 * out.  0 when it passed. */
static int node_run(const char *scenario, const char *args, char *out,
                    size_t outlen)
{
    char cmd[1400], env[600] = "";

    if (use_tls) {
        snprintf(env, sizeof(env), "COMET_WS_TLS=%d:%s/cert.pem ",
                 srv.tls_port, srv.dir);
    }
    snprintf(cmd, sizeof(cmd), "%snode tests/browser/ws_client.mjs %s %d %s",
             env, scenario, srv.port, args ? args : "");
    return it_run(cmd, out, outlen, 90000);
}

/* The same in the background, its output going to a file. */
typedef struct node_t {
    pid_t pid;
    char  log[400];
} node_t;

static void node_start(node_t *n, const char *scenario, const char *arg)
{
    static int seq;
    char port[16];

    snprintf(n->log, sizeof(n->log), "%s/node-%d.log", srv.dir, ++seq);
    snprintf(port, sizeof(port), "%d", srv.port);
    n->pid = fork();
    if (n->pid == 0) {
        int fd = open(n->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);

        if (use_tls) {
            char env[600];

            snprintf(env, sizeof(env), "%d:%s/cert.pem", srv.tls_port,
                     srv.dir);
            setenv("COMET_WS_TLS", env, 1);
        }
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execlp("node", "node", "tests/browser/ws_client.mjs", scenario, port,
               arg, (char *)NULL);
        _exit(127);
    }
    ck_assert_int_gt(n->pid, 0);
}

typedef struct log_wait_t {
    const char *path, *needle;
} log_wait_t;

static int log_has(void *baton)
{
    log_wait_t *w = baton;
    char buf[16384];

    return it_read_file(w->path, buf, sizeof(buf)) > 0
           && strstr(buf, w->needle);
}

static int node_wait(node_t *n, const char *needle, int ms)
{
    log_wait_t w = { n->log, needle };

    return it_wait_for(log_has, &w, ms);
}

static int node_finish(node_t *n, char *out, size_t outlen)
{
    int status = 0;

    waitpid(n->pid, &status, 0);
    if (it_read_file(n->log, out, outlen) < 0) {
        out[0] = '\0';
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

START_TEST(ws_client_gets_messages_of_two_channels_and_resumes_after_reconnect)
{
    char out[16384];

    ck_assert_msg(node_run("messages", NULL, out, sizeof(out)) == 0,
                  "%s", out);
    ck_assert_msg(strstr(out, "resumed while-away") && strstr(out, "PASS"),
                  "%s", out);
}
END_TEST

START_TEST(ws_client_sees_fragments_pings_and_every_close_code)
{
    char out[16384];

    ck_assert_msg(node_run("protocol", NULL, out, sizeof(out)) == 0,
                  "%s", out);
    ck_assert_msg(strstr(out, "PASS"), "%s", out);
}
END_TEST

START_TEST(ws_client_publishes_an_envelope_and_cannot_forge_its_sender)
{
    char out[16384];

    ck_assert_msg(node_run("envelope", NULL, out, sizeof(out)) == 0,
                  "%s", out);
    ck_assert_msg(strstr(out, "PASS"), "%s", out);
}
END_TEST

START_TEST(ws_client_publishing_too_fast_is_closed_with_1008)
{
    char out[16384];
    it_response_t *res = malloc(sizeof(*res));

    ck_assert_msg(node_run("rate", NULL, out, sizeof(out)) == 0, "%s", out);
    /* The burst of 5 went through, nothing after it. */
    ck_assert_int_eq(it_http(srv.port, "GET", "/pub/ratelimited", NULL, NULL,
                             0, res, 5000), 0);
    ck_assert_msg(strstr(res->body, "\"messages\":5"), "%s", res->body);
    free(res);
}
END_TEST

/* The pid that served the last request whose line has needle. */
static int served_by(const char *needle)
{
    char path[512], *log = malloc(1 << 20), *line, *save = NULL;
    int pid = 0;

    snprintf(path, sizeof(path), "%s/access_log", srv.dir);
    if (it_read_file(path, log, 1 << 20) > 0) {
        for (line = strtok_r(log, "\n", &save); line;
             line = strtok_r(NULL, "\n", &save)) {
            char *sp = strrchr(line, ' ');

            if (strstr(line, needle) && sp) {
                pid = atoi(sp + 1);
            }
        }
    }
    free(log);
    return pid;
}

/* The client-publishing path end to end: node_run("say", "<location>
 * <text>") publishes from a WebSocket as alice and returns once its echo
 * came back; served_by() names the child that served a request.  Any
 * other listener (a SUBSCRIBE on srv.socket_path, say) can be opened next
 * to the SSE subscribers below and expect the same message with from =
 * alice. */
/* Applications listening on the publish socket with python3-redis: a
 * Redis subscriber of channel and one of COMET.SUBSCRIBE, each on its own
 * connection, until each has want messages; then what each got, one line
 * a message (the latter with the sender, its sixth element). */
static void py_listen_start(node_t *n, const char *channel, int want)
{
    char script[2048], log[400];

    snprintf(log, sizeof(log), "%s/py-listen.log", srv.dir);
    snprintf(n->log, sizeof(n->log), "%s", log);
    snprintf(script, sizeof(script),
             "import redis, sys, time\n"
             "r = redis.Redis(unix_socket_path=\"%s\")\n"
             "plain = r.pubsub()\n"
             "plain.subscribe(\"%s\")\n"
             "ids = r.pubsub()\n"
             "ids.execute_command(\"COMET.SUBSCRIBE\", \"%s\")\n"
             "print(\"ready\", flush=True)\n"
             "pl, il = [], []\n"
             "end = time.time() + 30\n"
             "while (len(pl) < %d or len(il) < %d) and time.time() < end:\n"
             "    m = plain.get_message(timeout=0.1)\n"
             "    if m and m[\"type\"] == \"message\": pl.append(m)\n"
             "    x = ids.parse_response(block=False, timeout=0.1)\n"
             "    if x and x[0] == b\"comet.message\": il.append(x)\n"
             "for m in pl: print(\"message\", m[\"channel\"], m[\"data\"])\n"
             "for x in il: print(x[0], x[1], x[2], \"from\", x[5])\n",
             srv.socket_path, channel, channel, want, want);
    n->pid = fork();
    if (n->pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);

        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execl("/usr/bin/python3", "python3", "-c", script, (char *)NULL);
        _exit(127);
    }
    ck_assert_int_gt(n->pid, 0);
}

START_TEST(a_websocket_on_one_child_reaches_sse_on_the_other_with_its_sender)
{
    enum { N = 24 };
    it_sub_t s[N];
    node_t py;
    char out[16384], path[64];
    int ws_pid, other = 0;

    for (int i = 0; i < N; i++) {
        snprintf(path, sizeof(path), "/sub/ident?n=%d", i);
        ck_assert_int_eq(it_sub_open(&s[i], srv.port, path,
                                     "Accept: text/event-stream\r\n"), 0);
    }
    /* And two applications on the publish socket (they count among the
     * channel's subscribers). */
    py_listen_start(&py, "ident", 2);
    ck_assert_msg(node_wait(&py, "ready", 20000), "python3-redis did not "
                  "subscribe");
    ck_assert(it_wait_subscribers(srv.port, "ident", N + 2));
    ck_assert_msg(node_run("say", "/wspub/ident hi-from-alice", out,
                           sizeof(out)) == 0, "%s", out);
    ws_pid = served_by("GET /wspub/ident ");
    ck_assert_int_gt(ws_pid, 0);
    for (int i = 0; i < N; i++) {
        snprintf(path, sizeof(path), "/sub/ident?n=%d ", i);
        other += served_by(path) != ws_pid;
        ck_assert_msg(it_sub_wait(&s[i], "from: alice\ndata: hi-from-alice\n",
                                  5000) == 1,
                      "subscriber %d got: %s", i, s[i].buf + s[i].body);
    }
    ck_assert_msg(other > 0, "every SSE subscriber shared the WebSocket's "
                  "process");
    /* An HTTP POST where the location names the identity carries it too;
     * a header of the request's own cannot set it. */
    {
        it_response_t *res = malloc(sizeof(*res));

        ck_assert_int_eq(it_http(srv.port, "POST", "/authpub/ident",
                                 "Authorization: Basic "
                                 "YWxpY2U6d29uZGVybGFuZA==\r\n"
                                 "From: mallory\r\n", "by-post", 7, res,
                                 5000), 0);
        ck_assert_int_eq(res->status, 201);
        free(res);
    }
    for (int i = 0; i < N; i++) {
        ck_assert(it_sub_wait(&s[i], "from: alice\ndata: by-post\n", 5000)
                  == 1);
        it_sub_close(&s[i]);
    }
    /* The socket's subscribers heard both; COMET.SUBSCRIBE with the
     * sender the server established, a Redis message without it. */
    ck_assert_int_eq(node_finish(&py, out, sizeof(out)), 0);
    ck_assert_str_eq(out, "ready\n"
                     "message b'ident' b'hi-from-alice'\n"
                     "message b'ident' b'by-post'\n"
                     "b'comet.message' b'ident' b'hi-from-alice' from "
                     "b'alice'\n"
                     "b'comet.message' b'ident' b'by-post' from b'alice'\n");
}
END_TEST

START_TEST(a_graceful_restart_closes_websockets_with_1001)
{
    node_t n;
    char out[4096];

    node_start(&n, "wait_close", "/sub/restart");
    ck_assert_msg(node_wait(&n, "open", 20000), "never opened");
    ck_assert(it_wait_subscribers(srv.port, "restart", 1));
    /* Idle past mod_reqtimeout's limits: it must not cut the WebSocket. */
    sleep(3);
    ck_assert_int_eq(it_subscribers(srv.port, "restart"), 1);
    ck_assert_int_eq(it_server_graceful(&srv), 0);
    ck_assert_msg(node_wait(&n, "close", 20000), "no close seen");
    ck_assert_int_eq(node_finish(&n, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "close 1001 server going away"), "%s", out);
}
END_TEST

/* ---- over TLS ----------------------------------------------------------------- */

typedef struct status_is_t {
    int port;
    const char *key;
    long want;
} status_is_t;

static int status_is(void *baton)
{
    status_is_t *w = baton;

    return it_status_value(w->port, w->key) == w->want;
}

/* The fixture's scenarios run again over wss:// (start_tls). */
START_TEST(wss_client_gets_messages_and_resumes)
{
    char out[16384];

    ck_assert_msg(node_run("messages", NULL, out, sizeof(out)) == 0,
                  "%s", out);
    ck_assert_msg(strstr(out, "resumed while-away") && strstr(out, "PASS"),
                  "%s", out);
}
END_TEST

START_TEST(wss_client_sees_fragments_pings_and_every_close_code)
{
    char out[16384];

    ck_assert_msg(node_run("protocol", NULL, out, sizeof(out)) == 0,
                  "%s", out);
    ck_assert_msg(strstr(out, "PASS"), "%s", out);
}
END_TEST

START_TEST(wss_client_publishes_an_envelope_with_its_identity)
{
    char out[16384];

    ck_assert_msg(node_run("envelope", NULL, out, sizeof(out)) == 0,
                  "%s", out);
    ck_assert_msg(strstr(out, "PASS"), "%s", out);
}
END_TEST

START_TEST(wss_where_the_session_cannot_be_taken_over_is_refused_with_501)
{
    char out[16384];

    ck_assert_msg(node_run("refused", "/sub/notakeover 501", out,
                           sizeof(out)) == 0, "%s", out);
    ck_assert_int_eq(it_subscribers(srv.port, "notakeover"), 0);
}
END_TEST

START_TEST(a_wss_socket_is_detached_tls_and_closed_with_1001_at_restart)
{
    node_t n;
    char out[4096];
    status_is_t w = { srv.port, "CometDetachedTLS", 1 };

    node_start(&n, "wait_close", "/sub/wssrestart");
    ck_assert_msg(node_wait(&n, "open", 20000), "never opened");
    ck_assert(it_wait_subscribers(srv.port, "wssrestart", 1));
    /* The hub carries the session: detached, neither suspended nor held. */
    ck_assert_msg(it_wait_for(status_is, &w, 10000), "detached TLS %ld",
                  it_status_value(srv.port, "CometDetachedTLS"));
    ck_assert_int_eq(it_status_value(srv.port, "CometSuspended"), 0);
    ck_assert_int_eq(it_publish(srv.port, "wssrestart", "before", NULL, NULL,
                                0), 201);
    ck_assert_int_eq(it_server_graceful(&srv), 0);
    ck_assert_msg(node_wait(&n, "close", 20000), "no close seen");
    ck_assert_int_eq(node_finish(&n, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "close 1001 server going away"), "%s", out);
}
END_TEST

/* ---- many clients of our own ------------------------------------------------- */

static const char handshake[] =
    "GET /sub/%s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n";

/* Connect and send the handshake (the answer is read later). */
static int ws_connect(int port, const char *channel)
{
    int fd = it_connect(port);

    if (fd >= 0 && it_sendf(fd, handshake, channel) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

START_TEST(five_thousand_idle_websockets_all_receive_while_the_site_answers)
{
    enum { N = 5000 };
    it_server_t s2;
    it_opts_t o;
    int *fds = malloc(sizeof(int) * N);
    char *got = calloc(N, 1);
    struct pollfd *pfd = malloc(sizeof(*pfd) * N);
    it_response_t *res = malloc(sizeof(*res));
    struct rlimit rl;
    int done = 0;
    long long end;

    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    ck_assert_msg(rl.rlim_cur > N + 100, "need %d descriptors", N + 100);
    memset(&o, 0, sizeof(o));
    o.threads = 25;
    /* All from one address, to a channel nobody has published to yet. */
    o.extra = "CometMaxNewChannelsPerClient off\n";
    ck_assert_int_eq(it_server_start(&s2, &o), 0);
    for (int i = 0; i < N; i++) {
        fds[i] = ws_connect(s2.port, "wsmany");
        ck_assert_msg(fds[i] >= 0, "connect %d failed", i);
    }
    ck_assert(it_wait_subscribers_ms(s2.port, "wsmany", N, 60000));
    ck_assert_int_eq(it_status_value(s2.port, "CometMpmSuspended"), 0);
    ck_assert_int_eq(it_http(s2.port, "GET", "/index.html", NULL, NULL, 0,
                             res, 5000), 0);
    ck_assert_int_eq(res->status, 200);
    ck_assert_int_eq(it_publish(s2.port, "wsmany", "to all", NULL, NULL, 0),
                     201);
    /* Each connection has its 101 and then one text frame with the
     * message; both fit in what one read brings. */
    end = it_now_ms() + 30000;
    while (done < N && it_now_ms() < end) {
        int k = 0;

        for (int i = 0; i < N; i++) {
            if (!got[i]) {
                pfd[k].fd = fds[i];
                pfd[k].events = POLLIN;
                k++;
            }
        }
        if (poll(pfd, (nfds_t)k, 1000) <= 0) {
            continue;
        }
        for (int j = 0; j < k; j++) {
            static char buf[8192];
            ssize_t n;
            int i;

            if (!(pfd[j].revents & POLLIN)) {
                continue;
            }
            for (i = 0; fds[i] != pfd[j].fd; i++) {
            }
            n = recv(fds[i], buf, sizeof(buf), MSG_DONTWAIT);
            if (n > 0 && memmem(buf, (size_t)n, "\"data\":\"to all\"", 15)) {
                got[i] = 1;
                done++;
            }
        }
    }
    ck_assert_int_eq(done, N);
    ck_assert_int_eq(it_http(s2.port, "GET", "/index.html", NULL, NULL, 0,
                             res, 5000), 0);
    ck_assert_int_eq(res->status, 200);
    for (int i = 0; i < N; i++) {
        close(fds[i]);
    }
    ck_assert(it_wait_subscribers(s2.port, "wsmany", 0));
    it_server_stop(&s2);
    free(fds);
    free(got);
    free(pfd);
    free(res);
}
END_TEST

/* Open, upgrade, and end: by our close frame (the server answers and
 * closes), or by just closing the socket, in turn. */
static void ws_churn(int port, int cycles)
{
    static const unsigned char mask[4] = { 9, 8, 7, 6 };
    char buf[4096], mem[64];
    comet_buf_t b;

    comet_buf_wrap(&b, mem, sizeof(mem));
    comet_ws_frame_client(&b, COMET_WS_OP_CLOSE, 1, 0, mask, "\x03\xe8", 2);
    for (int i = 0; i < cycles; i++) {
        int fd = ws_connect(port, i % 3 ? "wschurn" : "wschurn,other");
        size_t len = 0;

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(it_read_until(fd, buf, sizeof(buf), &len, 0,
                                       "\r\n\r\n", 5000), 1);
        ck_assert_msg(!strncmp(buf, "HTTP/1.1 101 ", 13), "%s", buf);
        if (i & 1) {
            ck_assert_int_eq(it_send(fd, b.data, b.len), 0);
            ck_assert_int_eq(it_read_to_close(fd, buf, sizeof(buf), &len,
                                              5000), 1);
        }
        close(fd);
    }
}

START_TEST(twenty_thousand_websocket_cycles_leave_nothing_behind)
{
    it_server_t s2;
    long rss0, fds0, rss1, fds1;

    ck_assert_int_eq(it_server_start(&s2, NULL), 0);
    ws_churn(s2.port, 2000);
    ck_assert(it_wait_subscribers(s2.port, "wschurn", 0));
    it_children_usage(&s2, &rss0, &fds0);
    ws_churn(s2.port, 20000);
    ck_assert(it_wait_subscribers(s2.port, "wschurn", 0));
    ck_assert(it_wait_subscribers(s2.port, "other", 0));
    ck_assert_int_eq(it_log_count(&s2, "exit signal"), 0);
    it_children_usage(&s2, &rss1, &fds1);
    fprintf(stderr, "websocket churn: children private RSS %ld -> %ld kB, "
            "fds %ld -> %ld\n", rss0, rss1, fds0, fds1);
    ck_assert_msg(fds1 <= fds0 + 4, "descriptors grew from %ld to %ld",
                  fds0, fds1);
    if (!getenv("COMET_ASAN")) {
        ck_assert_msg(rss1 <= rss0 + 1024, "private RSS grew from %ld to "
                      "%ld kB", rss0, rss1);
    }
    it_server_stop(&s2);
}
END_TEST

Suite *test_websocket_suite(void)
{
    Suite *s = suite_create("websocket");
    TCase *tc = tcase_create("ws-client");
    TCase *tls = tcase_create("wss-client");
    TCase *own = tcase_create("own-server");

    tcase_add_unchecked_fixture(tc, start, stop);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc,
        ws_client_gets_messages_of_two_channels_and_resumes_after_reconnect);
    tcase_add_test(tc, ws_client_sees_fragments_pings_and_every_close_code);
    tcase_add_test(tc,
        ws_client_publishes_an_envelope_and_cannot_forge_its_sender);
    tcase_add_test(tc, ws_client_publishing_too_fast_is_closed_with_1008);
    tcase_add_test(tc,
        a_websocket_on_one_child_reaches_sse_on_the_other_with_its_sender);
    /* Last: the restart ends the fixture server's generation. */
    tcase_add_test(tc, a_graceful_restart_closes_websockets_with_1001);
    suite_add_tcase(s, tc);

    tcase_add_unchecked_fixture(tls, start_tls, stop);
    tcase_set_timeout(tls, 120);
    tcase_add_test(tls, wss_client_gets_messages_and_resumes);
    tcase_add_test(tls, wss_client_sees_fragments_pings_and_every_close_code);
    tcase_add_test(tls, wss_client_publishes_an_envelope_with_its_identity);
    tcase_add_test(tls,
        wss_where_the_session_cannot_be_taken_over_is_refused_with_501);
    /* Last: the restart ends the fixture server's generation. */
    tcase_add_test(tls,
        a_wss_socket_is_detached_tls_and_closed_with_1001_at_restart);
    suite_add_tcase(s, tls);

    tcase_set_timeout(own, 300);
    tcase_add_test(own,
        five_thousand_idle_websockets_all_receive_while_the_site_answers);
    tcase_add_test(own, twenty_thousand_websocket_cycles_leave_nothing_behind);
    suite_add_tcase(s, own);
    return s;
}
