/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* Publishing end to end against the real apache2 (event MPM, two
 * children): the Unix publish socket with redis-cli, raw RESP and a Redis
 * client library; its permissions and its life across restarts; the HTTP
 * publisher; and the numbers server-status shows for all of it. */

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define BUFSZ  (64 * 1024)
#define MAXMSG 65536            /* CometMaxMessageSize of the test server */

static it_server_t srv;

static const char *extra =
    "CometMaxMessageSize 64K\n"
    "<Location /pub-refused/>\n"
    "    SetHandler comet-publisher\n"
    "    Require ip 10.0.0.1\n"
    "</Location>\n";

static void start(void)
{
    it_opts_t o;

    memset(&o, 0, sizeof(o));
    o.extra = extra;
    ck_assert_int_eq(it_server_start(&srv, &o), 0);
}

static void stop(void)
{
    it_server_stop(&srv);
}

/* ---- helpers ------------------------------------------------------------------- */

static void unix_addr(struct sockaddr_un *sa, const char *path)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    ck_assert_uint_lt(strlen(path), sizeof(sa->sun_path));
    memcpy(sa->sun_path, path, strlen(path));
}

static int sub_send(it_sub_t *s, int port, const char *channel)
{
    memset(s, 0, sizeof(*s));
    s->buf = malloc(IT_SUB_BUFSZ);
    s->fd = it_connect(port);
    if (s->fd < 0) {
        return -1;
    }
    return it_sendf(s->fd, "GET /sub/%s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    "Accept: text/event-stream\r\n\r\n", channel);
}

static int sub_head(it_sub_t *s)
{
    if (it_read_until(s->fd, s->buf, IT_SUB_BUFSZ, &s->len, 0, "\r\n\r\n",
                      5000) != 1) {
        return -1;
    }
    s->body = (size_t)(strstr(s->buf, "\r\n\r\n") - s->buf) + 4;
    return strncmp(s->buf, "HTTP/1.1 200", 12) ? -1 : 0;
}

static int sub_open(it_sub_t *s, int port, const char *channel)
{
    return sub_send(s, port, channel) == 0 ? sub_head(s) : -1;
}

static int status_auto(char *buf, size_t max)
{
    it_response_t *res = malloc(sizeof(*res));
    int rc = -1;

    if (it_http(srv.port, "GET", "/server-status?auto", NULL, NULL, 0, res,
                5000) == 0 && res->status == 200) {
        size_t n = res->body_len < max - 1 ? res->body_len : max - 1;

        memcpy(buf, res->body, n);
        buf[n] = '\0';
        rc = 0;
    }
    free(res);
    return rc;
}

/* A "Key: value" number of server-status?auto, or -1. */
static long long status_value(const char *key)
{
    char buf[16384], want[128];
    const char *p;

    if (status_auto(buf, sizeof(buf)) != 0) {
        return -1;
    }
    snprintf(want, sizeof(want), "\n%s: ", key);
    p = strstr(buf, want);
    return p ? atoll(p + strlen(want)) : -1;
}

/* Subscribers per live process from the CometProcessN lines; returns the
 * number of processes. */
static int status_per_process(long long *subs, int max)
{
    char buf[16384];
    const char *p;
    int n = 0;

    if (status_auto(buf, sizeof(buf)) != 0) {
        return 0;
    }
    for (p = strstr(buf, "\nCometProcess"); p && n < max;
         p = strstr(p + 1, "\nCometProcess")) {
        const char *s = strstr(p, " subscribers=");

        if (p[13] >= '0' && p[13] <= '9' && s) {
            subs[n++] = atoll(s + 13);
        }
    }
    return n;
}

typedef struct want_t {
    const char *key;
    long long value;
} want_t;

static int status_is(void *baton)
{
    want_t *w = baton;

    return status_value(w->key) == w->value;
}

static int wait_status(const char *key, long long value)
{
    want_t w = { key, value };

    return it_wait_for(status_is, &w, 10000);
}

/* redis-cli against the test server's socket; returns its exit status. */
static int cli(const char *args, char *out, size_t max)
{
    char cmd[4096];

    snprintf(cmd, sizeof(cmd), "redis-cli -s '%s' %s", srv.socket_path,
             args);
    return it_run(cmd, out, max, 20000);
}

/* One RESP exchange on a fresh connection: send req, read until the
 * reply holds want (or the peer closes); the reply is left in out. */
static int resp(const char *req, size_t reqlen, const char *want, char *out,
                size_t max)
{
    size_t len = 0;
    int fd = it_connect_unix(srv.socket_path), rc;

    if (fd < 0) {
        return -1;
    }
    if (it_send(fd, req, reqlen) != 0) {
        close(fd);
        return -1;
    }
    rc = it_read_until(fd, out, max, &len, 0, want, 10000);
    close(fd);
    return rc;
}

/* ---- the socket --------------------------------------------------------------------- */

START_TEST(redis_cli_publish_counts_the_subscribers_of_both_children)
{
    enum { MAXSUB = 80, BURST = 8 };
    it_sub_t s[MAXSUB];
    long long per[16];
    char out[4096], expect[64];
    int n = 0, nproc = 0;

    /* A burst of connections is spread over both children's listeners;
     * open bursts until server-status shows subscribers in each. */
    while (n + BURST <= MAXSUB) {
        int both = 1, i;

        for (i = 0; i < BURST; i++) {
            ck_assert_int_eq(sub_send(&s[n + i], srv.port, "both"), 0);
        }
        for (i = 0; i < BURST; i++) {
            ck_assert_int_eq(sub_head(&s[n + i]), 0);
        }
        n += BURST;
        ck_assert(wait_status("CometSubscribers", n));
        nproc = status_per_process(per, 16);
        for (i = 0; i < nproc; i++) {
            both &= per[i] >= 1;
        }
        if (nproc >= 2 && both) {
            break;
        }
    }
    ck_assert_msg(nproc >= 2 && per[0] >= 1 && per[1] >= 1,
                  "subscribers did not reach both children (%d open)", n);

    ck_assert_int_eq(cli("PUBLISH both 'hello both'", out, sizeof(out)), 0);
    snprintf(expect, sizeof(expect), "%d\n", n);
    ck_assert_str_eq(out, expect);
    for (int i = 0; i < n; i++) {
        ck_assert_msg(it_sub_wait(&s[i], "data: hello both\n", 5000) == 1,
                      "subscriber %d got nothing", i);
    }

    snprintf(expect, sizeof(expect), "both\n%d\nnobody\n0\n", n);
    ck_assert_int_eq(cli("PUBSUB NUMSUB both nobody", out, sizeof(out)), 0);
    ck_assert_str_eq(out, expect);
    ck_assert_int_eq(cli("PUBSUB CHANNELS 'bo*'", out, sizeof(out)), 0);
    ck_assert_str_eq(out, "both\n");
    ck_assert_int_eq(cli("PUBSUB NUMPAT", out, sizeof(out)), 0);
    ck_assert_str_eq(out, "0\n");

    for (int i = 0; i < n; i++) {
        it_sub_close(&s[i]);
    }
    ck_assert(wait_status("CometSubscribers", 0));
}
END_TEST

START_TEST(pipelined_publishes_arrive_in_order)
{
    /* Fewer than the channel's buffer (100): a subscriber woken after the
     * whole burst still finds every message. */
    enum { N = 90 };
    char *req = malloc(N * 40), *out = malloc(N * 8), want[64], cmd[600];
    size_t len = 0;
    it_sub_t s;

    ck_assert_int_eq(sub_open(&s, srv.port, "order"), 0);
    ck_assert(wait_status("CometSubscribers", 1));
    /* All in one write, raw RESP arrays and inline commands mixed. */
    for (int i = 0; i < N; i++) {
        char num[16];
        int nl = snprintf(num, sizeof(num), "m%d", i);

        len += (size_t)(i % 2
            ? sprintf(req + len, "*3\r\n$7\r\nPUBLISH\r\n$5\r\norder\r\n"
                      "$%d\r\n%s\r\n", nl, num)
            : sprintf(req + len, "PUBLISH order %s\r\n", num));
    }
    len += (size_t)sprintf(req + len, "PING\r\n");
    ck_assert_int_eq(resp(req, len, "+PONG\r\n", out, N * 8), 1);
    for (int i = 0; i < N; i++) {
        ck_assert_msg(!strncmp(out + i * 4, ":1\r\n", 4), "reply %d: %.8s",
                      i, out + i * 4);
    }
    for (int i = 0, from = (int)s.body; i < N; i++) {
        char *at;

        snprintf(want, sizeof(want), "data: m%d\n", i);
        ck_assert_msg(it_sub_wait(&s, want, 5000) == 1, "no %s", want);
        at = strstr(s.buf + from, want);
        ck_assert_msg(at, "%s out of order", want);
        from = (int)(at - s.buf);
    }

    /* redis-cli's own pipe mode (it ends with an ECHO of a marker). */
    snprintf(cmd, sizeof(cmd), "printf 'PUBLISH order p1\\r\\nPUBLISH order "
             "p2\\r\\nPUBLISH order p3\\r\\n' | redis-cli -s '%s' --pipe",
             srv.socket_path);
    ck_assert_int_eq(it_run(cmd, out, N * 8, 20000), 0);
    ck_assert_msg(strstr(out, "errors: 0, replies: 3"), "%s", out);
    ck_assert_int_eq(it_sub_wait(&s, "data: p3\n", 5000), 1);
    ck_assert_ptr_nonnull(strstr(strstr(s.buf, "data: p1\n"), "data: p2\n"));
    it_sub_close(&s);
    free(req);
    free(out);
}
END_TEST

START_TEST(socket_errors_are_clear_and_framing_errors_close_only_that_client)
{
    char out[8192], *big = malloc(MAXMSG + 200);
    size_t n;
    int keep;

    ck_assert_int_eq(cli("FROB a b", out, sizeof(out)), 0);
    /* Redis' own wording (redis-cli adds a blank line after errors). */
    ck_assert_str_eq(out, "ERR unknown command 'FROB', with args beginning "
                     "with: 'a' 'b' \n\n");
    ck_assert_int_eq(cli("PUBLISH onlychannel", out, sizeof(out)), 0);
    ck_assert_str_eq(out, "ERR wrong number of arguments for 'publish' "
                     "command\n\n");
    ck_assert_int_eq(cli("PUBLISH 'bad channel' x", out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "ERR invalid channel id"), "%s", out);
    ck_assert_int_eq(cli("COMET.PUBLISH c 'two words' x", out, sizeof(out)),
                     0);
    ck_assert_msg(strstr(out, "ERR invalid event type"), "%s", out);
    ck_assert_int_eq(cli("AUTH secret", out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "ERR AUTH is not supported"), "%s", out);

    /* One byte over CometMaxMessageSize: refused, connection kept. */
    keep = it_connect_unix(srv.socket_path);
    ck_assert_int_ge(keep, 0);
    n = (size_t)sprintf(big, "*3\r\n$7\r\nPUBLISH\r\n$3\r\nbig\r\n$%d\r\n",
                        MAXMSG + 1);
    memset(big + n, 'z', MAXMSG + 1);
    n += MAXMSG + 1;
    memcpy(big + n, "\r\nPING\r\n", 8);
    ck_assert_int_eq(it_send(keep, big, n + 8), 0);
    {
        size_t len = 0;

        ck_assert_int_eq(it_read_until(keep, out, sizeof(out), &len, 0,
                                       "+PONG\r\n", 5000), 1);
        ck_assert_str_eq(out, "-ERR message larger than CometMaxMessageSize "
                         "(65536 bytes)\r\n+PONG\r\n");
    }

    /* Broken framing: the error, then that connection only is closed. */
    {
        static const char bad[] = "*2\r\n$4\r\nPING\r\n$-7\r\n";

        ck_assert_int_eq(resp(bad, sizeof(bad) - 1, "\r\n", out,
                              sizeof(out)), 1);
    }
    ck_assert_str_eq(out, "-ERR Protocol error: invalid bulk length\r\n");
    {
        int fd = it_connect_unix(srv.socket_path);
        size_t len = 0;

        ck_assert_int_eq(it_send(fd, "*1\r\n$4\r\nPINGxx", 14), 0);
        ck_assert_int_eq(it_read_to_close(fd, out, sizeof(out), &len, 5000),
                         1);
        ck_assert_str_eq(out, "-ERR Protocol error: expected CRLF after bulk "
                         "string\r\n");
        close(fd);
    }
    ck_assert_int_eq(it_send(keep, "PING\r\n", 6), 0);
    {
        size_t len = 0;

        ck_assert_int_eq(it_read_until(keep, out, sizeof(out), &len, 0,
                                       "+PONG\r\n", 5000), 1);
    }
    close(keep);
    free(big);
}
END_TEST

START_TEST(a_redis_client_library_connects_and_publishes)
{
    char cmd[2048], out[4096];
    it_sub_t s;

    if (access("/usr/bin/python3", X_OK) != 0
        || it_run("/usr/bin/python3 -c 'import redis'", out, sizeof(out),
                  20000) != 0) {
        ck_abort_msg("python3-redis is not installed (tests/deps.sh)");
    }
    ck_assert_int_eq(sub_open(&s, srv.port, "py"), 0);
    ck_assert(wait_status("CometSubscribers", 1));
    /* client_name makes the library send CLIENT SETNAME on connect. */
    snprintf(cmd, sizeof(cmd), "/usr/bin/python3 -c '\n"
             "import redis\n"
             "r = redis.Redis(unix_socket_path=\"%s\", client_name=\"t\")\n"
             "print(r.ping())\n"
             "print(r.publish(\"py\", \"from python\"))\n"
             "print(r.pubsub_numsub(\"py\"))\n"
             "print(r.pubsub_channels(\"p*\"))\n"
             "print(r.info()[\"redis_mode\"])\n"
             "print(r.client_getname())\n"
             "print(r.execute_command(\"COMET.INFO\", \"py\")[0:4])\n"
             "r.close()\n'", srv.socket_path);
    ck_assert_int_eq(it_run(cmd, out, sizeof(out), 20000), 0);
    ck_assert_str_eq(out, "True\n1\n[(b'py', 1)]\n[b'py']\nstandalone\nt\n"
                     "[b'messages', 1, b'bytes', 11]\n");
    ck_assert_int_eq(it_sub_wait(&s, "data: from python\n", 5000), 1);
    it_sub_close(&s);
}
END_TEST

START_TEST(comet_delete_over_the_socket_ends_the_subscribers)
{
    char out[4096];
    it_sub_t s;

    ck_assert_int_eq(sub_open(&s, srv.port, "gone"), 0);
    ck_assert(wait_status("CometSubscribers", 1));
    ck_assert_int_eq(cli("COMET.PUBLISH gone notice 'last words'", out,
                         sizeof(out)), 0);
    ck_assert_str_eq(out, "1\n");
    ck_assert_int_eq(it_sub_wait(&s, "event: notice\n", 5000), 1);
    ck_assert_int_eq(cli("COMET.DELETE gone", out, sizeof(out)), 0);
    ck_assert_str_eq(out, "1\n");
    /* The stream ends (last chunk) and the server closes. */
    ck_assert_int_eq(it_sub_wait(&s, "0\r\n\r\n", 5000), 1);
    ck_assert_int_eq(cli("COMET.DELETE gone", out, sizeof(out)), 0);
    ck_assert_str_eq(out, "\n");
    ck_assert_int_eq(cli("COMET.INFO gone", out, sizeof(out)), 0);
    ck_assert_str_eq(out, "\n");
    it_sub_close(&s);
}
END_TEST

START_TEST(only_users_the_socket_mode_allows_can_connect)
{
    struct stat st;

    ck_assert_int_eq(lstat(srv.socket_path, &st), 0);
    ck_assert(S_ISSOCK(st.st_mode));
    ck_assert_int_eq(st.st_mode & 0777, 0660);
    if (geteuid() != 0) {
        /* Without root the server cannot change users: it owns it. */
        ck_assert_int_eq(st.st_uid, geteuid());
        return;
    }
    /* As root the file belongs to httpd's User and Group (www-data). */
    ck_assert_int_ne(st.st_uid, 0);
    ck_assert_int_ne(st.st_gid, 0);
    {
        pid_t pid = fork();
        int status;

        if (pid == 0) {
            struct sockaddr_un sa;
            int fd;

            /* nobody: neither the owner nor in the group. */
            if (setgroups(0, NULL) != 0 || setgid(65534) != 0
                || setuid(65534) != 0) {
                _exit(2);
            }
            fd = socket(AF_UNIX, SOCK_STREAM, 0);
            unix_addr(&sa, srv.socket_path);
            if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
                _exit(3);
            }
            _exit(errno == EACCES ? 0 : 4);
        }
        ck_assert_int_gt(pid, 0);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                      "an unprivileged user could connect (status %d)",
                      status);
    }
}
END_TEST

/* ---- HTTP ------------------------------------------------------------------------------ */

START_TEST(http_publish_answers_201_or_202_with_id_and_receivers)
{
    it_response_t *res = malloc(sizeof(*res));
    char id[64], body[256];
    it_sub_t s;

    ck_assert_int_eq(it_http(srv.port, "POST", "/pub/h1", NULL, "nobody",
                             6, res, 5000), 0);
    ck_assert_int_eq(res->status, 202);
    ck_assert_ptr_nonnull(it_header(res, "Comet-Message-Id", id, sizeof(id)));
    snprintf(body, sizeof(body), "{\"channel\":\"h1\",\"id\":\"%s\","
             "\"receivers\":0}\n", id);
    ck_assert_str_eq(res->body, body);
    ck_assert_ptr_nonnull(strcasestr(res->head, "Content-Type: "
                                     "application/json"));

    ck_assert_int_eq(sub_open(&s, srv.port, "h1"), 0);
    ck_assert(wait_status("CometSubscribers", 1));
    ck_assert_int_eq(it_http(srv.port, "PUT", "/pub/h1",
                             "Comet-Event: update\r\n", "to you", 6, res,
                             5000), 0);
    ck_assert_int_eq(res->status, 201);
    ck_assert_msg(strstr(res->body, "\"receivers\":1}"), "%s", res->body);
    ck_assert_int_eq(it_sub_wait(&s, "event: update\n", 5000), 1);
    ck_assert_int_eq(it_sub_wait(&s, "data: to you\n", 5000), 1);

    /* An empty body is an empty message. */
    ck_assert_int_eq(it_http(srv.port, "POST", "/pub/h1", NULL, "", 0, res,
                             5000), 0);
    ck_assert_int_eq(res->status, 201);
    ck_assert_int_eq(it_http(srv.port, "POST", "/pub/h1",
                             "Comet-Event: two words\r\n", "x", 1, res,
                             5000), 0);
    ck_assert_int_eq(res->status, 400);
    ck_assert_msg(strstr(res->body, "Comet-Event"), "%s", res->body);
    ck_assert_int_eq(it_http(srv.port, "POST", "/pub/a,b", NULL, "x", 1,
                             res, 5000), 0);
    ck_assert_int_eq(res->status, 400);
    it_sub_close(&s);
    free(res);
}
END_TEST

START_TEST(http_get_describes_a_channel_and_delete_ends_it)
{
    it_response_t *res = malloc(sizeof(*res));
    it_sub_t s;

    ck_assert_int_eq(it_http(srv.port, "GET", "/pub/h2", NULL, NULL, 0, res,
                             5000), 0);
    ck_assert_int_eq(res->status, 404);
    ck_assert_int_eq(sub_open(&s, srv.port, "h2"), 0);
    ck_assert(wait_status("CometSubscribers", 1));
    ck_assert_int_eq(it_http(srv.port, "POST", "/pub/h2", NULL, "12345", 5,
                             res, 5000), 0);
    ck_assert_int_eq(it_http(srv.port, "GET", "/pub/h2", NULL, NULL, 0, res,
                             5000), 0);
    ck_assert_int_eq(res->status, 200);
    ck_assert_msg(strstr(res->body, "\"channel\":\"h2\",\"messages\":1,"
                         "\"bytes\":5,\"subscribers\":1,\"published\":1,"
                         "\"last_id\":\""), "%s", res->body);
    ck_assert_msg(strstr(res->body, "\"last_publish\":1"), "%s", res->body);
    ck_assert_int_eq(it_http(srv.port, "HEAD", "/pub/h2", NULL, NULL, 0,
                             res, 5000), 0);
    ck_assert_int_eq(res->status, 200);
    ck_assert_int_eq(res->body_len, 0);

    ck_assert_int_eq(it_http(srv.port, "DELETE", "/pub/h2", NULL, NULL, 0,
                             res, 5000), 0);
    ck_assert_int_eq(res->status, 200);
    ck_assert_str_eq(res->body, "{\"channel\":\"h2\",\"deleted\":true,"
                     "\"receivers\":1}\n");
    ck_assert_int_eq(it_sub_wait(&s, "0\r\n\r\n", 5000), 1);
    ck_assert_int_eq(it_http(srv.port, "DELETE", "/pub/h2", NULL, NULL, 0,
                             res, 5000), 0);
    ck_assert_int_eq(res->status, 404);
    it_sub_close(&s);
    free(res);
}
END_TEST

START_TEST(http_other_methods_get_405_with_allow_and_options_lists_them)
{
    it_response_t *res = malloc(sizeof(*res));
    char allow[256];

    ck_assert_int_eq(it_http(srv.port, "PATCH", "/pub/h3", NULL, "x", 1,
                             res, 5000), 0);
    ck_assert_int_eq(res->status, 405);
    ck_assert_ptr_nonnull(it_header(res, "Allow", allow, sizeof(allow)));
    ck_assert_msg(strstr(allow, "GET") && strstr(allow, "POST")
                  && strstr(allow, "PUT") && strstr(allow, "DELETE"),
                  "Allow: %s", allow);
    ck_assert_int_eq(it_http(srv.port, "OPTIONS", "/pub/h3", NULL, NULL, 0,
                             res, 5000), 0);
    ck_assert_int_eq(res->status, 200);
    ck_assert_ptr_nonnull(it_header(res, "Allow", allow, sizeof(allow)));
    ck_assert_str_eq(allow, "GET, HEAD, POST, PUT, DELETE, OPTIONS");
    free(res);
}
END_TEST

/* Send a request head (and the start of a body) and read the answer,
 * which must come without the rest of the body being sent. */
static int early_answer(const char *head, const char *body, size_t blen,
                        it_response_t *res)
{
    static char raw[65536];
    size_t len = 0;
    int fd = it_connect(srv.port), rc = -1;

    if (fd >= 0 && it_send(fd, head, strlen(head)) == 0
        && it_send(fd, body, blen) == 0
        && it_read_to_close(fd, raw, sizeof(raw), &len, 5000) == 1) {
        rc = it_parse_response(raw, len, res);
    }
    if (fd >= 0) {
        close(fd);
    }
    return rc;
}

START_TEST(http_too_large_is_413_without_reading_the_rest)
{
    it_response_t *res = malloc(sizeof(*res));
    char *big = malloc(MAXMSG + 1024);

    /* Announced too large: answered before any of it is read. */
    ck_assert_int_eq(early_answer("POST /pub/h4 HTTP/1.1\r\nHost: x\r\n"
                                  "Content-Length: 1000000000\r\n\r\n",
                                  "abc", 3, res), 0);
    ck_assert_int_eq(res->status, 413);
    ck_assert_msg(strstr(res->body, "CometMaxMessageSize (65536 bytes)"),
                  "%s", res->body);

    /* Chunked, never ending: answered once the limit is passed. */
    {
        size_t n = (size_t)sprintf(big, "%x\r\n", MAXMSG + 100);

        memset(big + n, 'q', MAXMSG + 100);
        n += MAXMSG + 100;
        memcpy(big + n, "\r\n", 2);
        ck_assert_int_eq(early_answer("POST /pub/h4 HTTP/1.1\r\nHost: x\r\n"
                                      "Transfer-Encoding: chunked\r\n\r\n",
                                      big, n + 2, res), 0);
        ck_assert_int_eq(res->status, 413);
    }
    /* Exactly the limit is fine. */
    memset(big, 'm', MAXMSG);
    ck_assert_int_eq(it_http(srv.port, "POST", "/pub/h4", NULL, big, MAXMSG,
                             res, 5000), 0);
    ck_assert_int_eq(res->status, 202);
    ck_assert_int_eq(it_http(srv.port, "GET", "/pub/h4", NULL, NULL, 0, res,
                             5000), 0);
    ck_assert_msg(strstr(res->body, "\"messages\":1,\"bytes\":65536"), "%s",
                  res->body);
    free(big);
    free(res);
}
END_TEST

START_TEST(http_require_refuses_before_the_publisher_runs)
{
    it_response_t *res = malloc(sizeof(*res));

    ck_assert_int_eq(it_http(srv.port, "POST", "/pub-refused/h5", NULL, "x",
                             1, res, 5000), 0);
    ck_assert_int_eq(res->status, 403);
    ck_assert_int_eq(it_http(srv.port, "GET", "/pub/h5", NULL, NULL, 0, res,
                             5000), 0);
    ck_assert_int_eq(res->status, 404);
    free(res);
}
END_TEST

/* ---- server-status ---------------------------------------------------------------------- */

START_TEST(server_status_counts_what_was_done)
{
    it_response_t *res = malloc(sizeof(*res));
    long long used, avail;
    char out[256];
    it_sub_t s[3];

    /* A fresh server: every count starts at zero. */
    ck_assert_int_eq(status_value("CometSubscribers"), 0);
    ck_assert_int_eq(status_value("CometPublishes"), 0);
    ck_assert_int_eq(status_value("CometDeliveries"), 0);
    ck_assert_int_eq(status_value("CometChannels"), 0);
    ck_assert_int_eq(status_value("CometProcesses"), 2);
    used = status_value("CometSharedMemoryUsed");
    avail = status_value("CometSharedMemoryFree");
    ck_assert_int_gt(avail, 0);

    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(sub_open(&s[i], srv.port, "counted"), 0);
    }
    ck_assert(wait_status("CometSubscribers", 3));
    ck_assert_int_eq(cli("PUBLISH counted one", out, sizeof(out)), 0);
    ck_assert_str_eq(out, "3\n");
    ck_assert_int_eq(it_http(srv.port, "POST", "/pub/counted", NULL, "two",
                             3, res, 5000), 0);
    ck_assert_int_eq(res->status, 201);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(it_sub_wait(&s[i], "data: two\n", 5000), 1);
    }
    ck_assert_int_eq(status_value("CometPublishes"), 2);
    ck_assert_int_eq(status_value("CometChannels"), 1);
    ck_assert_int_eq(status_value("CometMessages"), 2);
    ck_assert_int_gt(status_value("CometSharedMemoryUsed"), used);
    /* Deliveries are copied from each process once a second. */
    ck_assert(wait_status("CometDeliveries", 6));
    ck_assert(wait_status("CometSocketPublishes", 1));
    /* The message area only changes hands between used and free. */
    ck_assert_int_eq(status_value("CometSharedMemoryUsed")
                     + status_value("CometSharedMemoryFree"), used + avail);

    /* The HTML page has the same section. */
    ck_assert_int_eq(it_http(srv.port, "GET", "/server-status", NULL, NULL,
                             0, res, 5000), 0);
    ck_assert_ptr_nonnull(strstr(res->body, "<h2>mod_comet</h2>"));
    ck_assert_ptr_nonnull(strstr(res->body, "<dt>Subscribers: 3 "));
    ck_assert_ptr_nonnull(strstr(res->body, "<th>Deliveries</th>"));
    for (int i = 0; i < 3; i++) {
        it_sub_close(&s[i]);
    }
    ck_assert(wait_status("CometSubscribers", 0));
    free(res);
}
END_TEST

/* ---- configuration and life ---------------------------------------------------------- */

START_TEST(socket_mode_full_store_and_graceful_restart)
{
    it_server_t s;
    it_opts_t o;
    struct stat st, st2;
    char cmd[600], out[4096], *big = malloc(70000);
    it_response_t *res = malloc(sizeof(*res));
    int full = 0;

    memset(&o, 0, sizeof(o));
    o.extra = "CometPublishSocketMode 0600\nCometSharedMemorySize 2M\n"
              "CometMaxMessageSize 64K\n";
    ck_assert_int_eq(it_server_start(&s, &o), 0);
    ck_assert_int_eq(lstat(s.socket_path, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0600);

    /* Fill the store through the socket: a clear error, nothing torn. */
    for (int i = 0; i < 60 && !full; i++) {
        size_t len = 0;
        int n, fd = it_connect_unix(s.socket_path);

        ck_assert_int_ge(fd, 0);
        n = sprintf(big, "*3\r\n$7\r\nPUBLISH\r\n$3\r\nf%02d\r\n$60000\r\n",
                    i);
        memset(big + n, 'f', 60000);
        memcpy(big + n + 60000, "\r\n", 2);
        ck_assert_int_eq(it_send(fd, big, (size_t)n + 60002), 0);
        ck_assert_int_eq(it_read_until(fd, out, sizeof(out), &len, 0, "\r\n",
                                       5000), 1);
        if (out[0] == '-') {
            ck_assert_str_eq(out, "-ERR the message store is full "
                             "(CometSharedMemorySize): message not "
                             "stored\r\n");
            full = 1;
        }
        close(fd);
    }
    ck_assert_msg(full, "a 2 MB store took 60 messages of 60 KB");
    /* ...and HTTP says 507. */
    memset(big, 'h', 60000);
    ck_assert_int_eq(it_http(s.port, "POST", "/pub/fullhttp", NULL, big,
                             60000, res, 5000), 0);
    ck_assert_int_eq(res->status, 507);

    /* A graceful restart makes a new socket at the same path. */
    ck_assert_int_eq(it_server_graceful(&s), 0);
    ck_assert_int_eq(lstat(s.socket_path, &st2), 0);
    /* (ext4 may hand the unlinked socket's inode number to the new one:
     * its change time tells them apart.) */
    ck_assert(st2.st_ino != st.st_ino
              || st2.st_ctim.tv_sec != st.st_ctim.tv_sec
              || st2.st_ctim.tv_nsec != st.st_ctim.tv_nsec);
    ck_assert_int_eq(st2.st_mode & 0777, 0600);
    snprintf(cmd, sizeof(cmd), "redis-cli -s '%s' COMET.DELETE f00",
             s.socket_path);
    ck_assert_int_eq(it_run(cmd, out, sizeof(out), 20000), 0);
    ck_assert_str_eq(out, "0\n");
    it_server_stop(&s);
    ck_assert_int_ne(access(s.socket_path, F_OK), 0);
    free(big);
    free(res);
}
END_TEST

START_TEST(socket_off_stale_sockets_and_bad_paths)
{
    char path[128], out[16384];
    struct sockaddr_un sa;
    it_server_t s;
    it_opts_t o;
    char conf[300];
    int fd;

    memset(&o, 0, sizeof(o));
    /* off: no file; HTTP still publishes. */
    o.extra = "CometPublishSocket off\n";
    ck_assert_int_eq(it_server_start(&s, &o), 0);
    ck_assert_int_ne(access(s.socket_path, F_OK), 0);
    {
        it_response_t *res = malloc(sizeof(*res));

        ck_assert_int_eq(it_http(s.port, "POST", "/pub/off", NULL, "x", 1,
                                 res, 5000), 0);
        ck_assert_int_eq(res->status, 202);
        free(res);
    }
    it_server_stop(&s);

    /* A socket file left behind by a crash is replaced. */
    snprintf(path, sizeof(path), "/tmp/comet-it-stale.%d.sock", (int)getpid());
    unlink(path);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    unix_addr(&sa, path);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);
    snprintf(conf, sizeof(conf), "CometPublishSocket %s\n", path);
    o.extra = conf;
    ck_assert_int_eq(it_server_start(&s, &o), 0);
    {
        char cmd[300];

        snprintf(cmd, sizeof(cmd), "redis-cli -s %s PING", path);
        ck_assert_int_eq(it_run(cmd, out, sizeof(out), 20000), 0);
        ck_assert_str_eq(out, "PONG\n");
    }
    /* A second server on the same path is refused: it is alive. */
    ck_assert_int_ne(it_server_try(&o, 1, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "another process is listening on"), "%s",
                  out);
    it_server_stop(&s);
    ck_assert_int_ne(access(path, F_OK), 0);

    /* A file that is not a socket is never removed. */
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_int_ne(it_server_try(&o, 1, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "CometPublishSocket: refusing to replace a "
                         "file that is not a socket"), "%s", out);
    ck_assert_int_eq(access(path, F_OK), 0);
    unlink(path);

    /* A directory that does not exist: the directive is named. */
    o.extra = "CometPublishSocket /nonexistent-comet-dir/p.sock\n";
    ck_assert_int_ne(it_server_try(&o, 1, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "CometPublishSocket: cannot bind "
                         "/nonexistent-comet-dir/p.sock"), "%s", out);
}
END_TEST

Suite *test_publish_suite(void)
{
    Suite *s = suite_create("publish");
    TCase *ts = tcase_create("socket");
    TCase *tst = tcase_create("status");
    TCase *th = tcase_create("http");
    TCase *tc = tcase_create("config");

    tcase_add_unchecked_fixture(ts, start, stop);
    tcase_set_timeout(ts, 120);
    tcase_add_test(ts, redis_cli_publish_counts_the_subscribers_of_both_children);
    tcase_add_test(ts, pipelined_publishes_arrive_in_order);
    tcase_add_test(ts, socket_errors_are_clear_and_framing_errors_close_only_that_client);
    tcase_add_test(ts, a_redis_client_library_connects_and_publishes);
    tcase_add_test(ts, comet_delete_over_the_socket_ends_the_subscribers);
    tcase_add_test(ts, only_users_the_socket_mode_allows_can_connect);
    suite_add_tcase(s, ts);

    tcase_add_unchecked_fixture(tst, start, stop);
    tcase_set_timeout(tst, 60);
    tcase_add_test(tst, server_status_counts_what_was_done);
    suite_add_tcase(s, tst);

    tcase_add_unchecked_fixture(th, start, stop);
    tcase_set_timeout(th, 60);
    tcase_add_test(th, http_publish_answers_201_or_202_with_id_and_receivers);
    tcase_add_test(th, http_get_describes_a_channel_and_delete_ends_it);
    tcase_add_test(th, http_other_methods_get_405_with_allow_and_options_lists_them);
    tcase_add_test(th, http_too_large_is_413_without_reading_the_rest);
    tcase_add_test(th, http_require_refuses_before_the_publisher_runs);
    suite_add_tcase(s, th);

    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, socket_mode_full_store_and_graceful_restart);
    tcase_add_test(tc, socket_off_stale_sockets_and_bad_paths);
    suite_add_tcase(s, tc);
    return s;
}
