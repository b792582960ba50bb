/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* CometRedis: two apache2 instances (A and B) sharing one redis-server, or
 * a local Redis Cluster.  Subscribers are raw SSE connections read by one
 * poll loop (sse_t), which checks as it goes that each one gets every
 * message once and in order; publishes go through the publish sockets
 * (pipelined) and over HTTP.  Progress goes to stderr. */

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <apr_general.h>
#include <apr_strings.h>

#include "harness.h"
#include "redis_util.h"
#include "comet_redis_cluster.h"

static long long t0;

static void progress(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static void progress(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "[redis share %5.1fs] ",
            (double)(it_now_ms() - t0) / 1000.0);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* ---- SSE subscribers ------------------------------------------------------ */

typedef struct sse_t {
    int                fd;
    char               chan[64];
    char               buf[16384];
    size_t             len;
    int                head_done;
    long               chunk_left;     /* -1: reading a size line        */
    char               line[4096];
    size_t             line_len;
    /* The event being read. */
    char               ev_id[64];
    char               ev_type[64];
    char               ev_data[256];
    /* What came. */
    unsigned long long last_seq;
    char               last_id[64];
    int                count;
    int                dups;           /* a seq not above the last one   */
    int                missed;         /* comet-missed signals            */
    int                missed_before;  /* messages counted when the first
                                          missed signal came             */
    int                missed_since;   /* one since the last message      */
    int                closed;
    unsigned long long order;          /* hash of the data in order      */
    char               first[64];      /* data of the first message      */
    char               last[64];       /* data of the last message       */
    int                seen[4096];     /* by message number in data "mN" */
} sse_t;

static void sse_event(sse_t *s)
{
    if (!strcmp(s->ev_type, "comet-missed")) {
        if (!s->missed++) {
            s->missed_before = s->count;
        }
        s->missed_since = 1;
    }
    else if (s->ev_id[0]) {
        const char *colon = strchr(s->ev_id, ':');
        unsigned long long seq = colon ? strtoull(colon + 1, NULL, 10) : 0;
        const char *d = s->ev_data;
        unsigned char *u;

        /* Ids may start anew (lower) only after a missed signal. */
        if (seq <= s->last_seq && s->count && !s->missed_since) {
            s->dups++;
        }
        s->missed_since = 0;
        s->last_seq = seq;
        apr_cpystrn(s->last_id, s->ev_id, sizeof(s->last_id));
        if (!s->count) {
            apr_cpystrn(s->first, d, sizeof(s->first));
        }
        apr_cpystrn(s->last, d, sizeof(s->last));
        s->count++;
        for (u = (unsigned char *)s->ev_data; *u; u++) {
            s->order = s->order * 1099511628211ULL + *u;
        }
        s->order = s->order * 31 + 7;
        if (d[0] == 'm') {
            int n = atoi(d + 1);

            if (n >= 0 && n < 4096) {
                s->seen[n]++;
            }
        }
    }
    s->ev_id[0] = s->ev_type[0] = s->ev_data[0] = '\0';
}

static void sse_line(sse_t *s, const char *l)
{
    if (!*l) {
        if (s->ev_id[0] || s->ev_type[0] || s->ev_data[0]) {
            sse_event(s);
        }
    }
    else if (!strncmp(l, "id: ", 4)) {
        apr_cpystrn(s->ev_id, l + 4, sizeof(s->ev_id));
    }
    else if (!strncmp(l, "event: ", 7)) {
        apr_cpystrn(s->ev_type, l + 7, sizeof(s->ev_type));
    }
    else if (!strncmp(l, "data: ", 6)) {
        apr_cpystrn(s->ev_data, l + 6, sizeof(s->ev_data));
    }
}

/* Body bytes (de-chunked) into lines. */
static void sse_body(sse_t *s, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\n') {
            s->line[s->line_len] = '\0';
            sse_line(s, s->line);
            s->line_len = 0;
        }
        else if (s->line_len + 1 < sizeof(s->line)) {
            s->line[s->line_len++] = p[i];
        }
    }
}

/* Consume what is buffered: the head, then chunks. */
static void sse_parse(sse_t *s)
{
    size_t off = 0;

    if (!s->head_done) {
        char *end = memmem(s->buf, s->len, "\r\n\r\n", 4);

        if (!end) {
            return;
        }
        ck_assert_msg(!strncmp(s->buf, "HTTP/1.1 200", 12), "%.*s",
                      (int)(end - s->buf), s->buf);
        s->head_done = 1;
        s->chunk_left = -1;
        off = (size_t)(end - s->buf) + 4;
    }
    while (off < s->len) {
        if (s->chunk_left < 0) {
            char *nl = memchr(s->buf + off, '\n', s->len - off);

            if (!nl) {
                break;
            }
            s->chunk_left = strtol(s->buf + off, NULL, 16);
            off = (size_t)(nl - s->buf) + 1;
            if (s->chunk_left == 0) {
                s->closed = 1;
                off = s->len;
                break;
            }
            s->chunk_left += 2;     /* its CRLF */
        }
        else {
            size_t take = s->len - off < (size_t)s->chunk_left
                          ? s->len - off : (size_t)s->chunk_left;
            size_t data = take;

            if ((size_t)s->chunk_left - take < 2) {
                data = take - (2 - ((size_t)s->chunk_left - take));
            }
            sse_body(s, s->buf + off, data);
            s->chunk_left -= (long)take;
            off += take;
            if (s->chunk_left == 0) {
                s->chunk_left = -1;
            }
        }
    }
    memmove(s->buf, s->buf + off, s->len - off);
    s->len -= off;
}

static int sse_open(sse_t *s, int port, const char *chan, const char *last)
{
    char req[512];

    memset(s, 0, sizeof(*s));
    apr_cpystrn(s->chan, chan, sizeof(s->chan));
    s->fd = it_connect(port);
    if (s->fd < 0) {
        return -1;
    }
    snprintf(req, sizeof(req), "GET /sub/%s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             "Accept: text/event-stream\r\n%s%s%s\r\n", chan,
             last ? "Last-Event-ID: " : "", last ? last : "",
             last ? "\r\n" : "");
    if (it_send(s->fd, req, strlen(req)) != 0) {
        return -1;
    }
    fcntl(s->fd, F_SETFL, O_NONBLOCK);
    return 0;
}

static void sse_close(sse_t *s)
{
    if (s->fd >= 0) {
        close(s->fd);
    }
    s->fd = -1;
}

/* Read from every open subscriber for up to ms, or until done(baton). */
static int sse_pump(sse_t *subs, int n, int ms, int (*done)(void *),
                    void *baton)
{
    struct pollfd *pfd = calloc((size_t)n, sizeof(*pfd));
    long long until = it_now_ms() + ms;
    int ok = 0;

    for (;;) {
        int k, left = (int)(until - it_now_ms());

        if (done && done(baton)) {
            ok = 1;
            break;
        }
        if (left <= 0) {
            break;
        }
        for (k = 0; k < n; k++) {
            pfd[k].fd = subs[k].fd >= 0 && !subs[k].closed ? subs[k].fd : -1;
            pfd[k].events = POLLIN;
            pfd[k].revents = 0;
        }
        if (poll(pfd, (nfds_t)n, left < 50 ? left : 50) < 0) {
            if (errno == EINTR) {
                continue;       /* a child of the test ended meanwhile */
            }
            break;
        }
        for (k = 0; k < n; k++) {
            if (pfd[k].revents & (POLLIN | POLLHUP | POLLERR)) {
                sse_t *s = &subs[k];
                ssize_t r;

                while ((r = read(s->fd, s->buf + s->len,
                                 sizeof(s->buf) - s->len)) > 0) {
                    s->len += (size_t)r;
                    sse_parse(s);
                }
                if (r == 0) {
                    s->closed = 1;
                }
            }
        }
    }
    free(pfd);
    return ok || (done && done(baton));
}

typedef struct all_t {
    sse_t *subs;
    int    n;
    int    want;        /* messages each */
} all_t;

static int all_have(void *baton)
{
    all_t *a = baton;

    for (int i = 0; i < a->n; i++) {
        if (a->subs[i].count < a->want) {
            return 0;
        }
    }
    return 1;
}

typedef struct acked_t {
    sse_t     *subs;
    int        n;
    const int *acked;       /* by message number: acknowledged */
    int        from, to;    /* the numbers that must have come */
} acked_t;

/* Every subscriber has every acknowledged message of [from, to). */
static int all_acked_seen(void *baton)
{
    acked_t *k = baton;

    for (int i = 0; i < k->n; i++) {
        for (int m = k->from; m < k->to; m++) {
            if (k->acked[m] && !k->subs[i].seen[m]) {
                return 0;
            }
        }
    }
    return 1;
}

static int all_headed(void *baton)
{
    all_t *a = baton;

    for (int i = 0; i < a->n; i++) {
        if (!a->subs[i].head_done) {
            return 0;
        }
    }
    return 1;
}

/* ---- publishing ------------------------------------------------------------ */

typedef struct pubc_t {
    int    fd;
    char   buf[65536];
    size_t len;
} pubc_t;

static void pubc_open(pubc_t *p, const it_server_t *srv)
{
    memset(p, 0, sizeof(*p));
    p->fd = it_connect_unix(srv->socket_path);
    ck_assert_int_ge(p->fd, 0);
}

static void pubc_send(pubc_t *p, const char *chan, const char *data)
{
    char cmd[512];
    int n = snprintf(cmd, sizeof(cmd), "*3\r\n$7\r\nPUBLISH\r\n$%zu\r\n%s\r\n"
                     "$%zu\r\n%s\r\n", strlen(chan), chan, strlen(data),
                     data);

    ck_assert_int_eq(it_send(p->fd, cmd, (size_t)n), 0);
}

/* One reply line ("" on a timeout): ":N" or "-ERR ...". */
static const char *pubc_reply(pubc_t *p, char *line, size_t max, int ms)
{
    long long until = it_now_ms() + ms;

    for (;;) {
        char *nl = memchr(p->buf, '\n', p->len);

        if (nl) {
            size_t l = (size_t)(nl - p->buf);

            snprintf(line, max, "%.*s", (int)(l && nl[-1] == '\r' ? l - 1
                                                                  : l),
                     p->buf);
            memmove(p->buf, nl + 1, p->len - l - 1);
            p->len -= l + 1;
            return line;
        }
        if (it_now_ms() > until) {
            line[0] = '\0';
            return line;
        }
        {
            struct pollfd pfd = { p->fd, POLLIN, 0 };
            ssize_t r;

            if (poll(&pfd, 1, 50) > 0) {
                r = read(p->fd, p->buf + p->len, sizeof(p->buf) - p->len);
                if (r <= 0) {
                    line[0] = '\0';
                    return line;
                }
                p->len += (size_t)r;
            }
        }
    }
}

/* ---- servers ------------------------------------------------------------------ */

static apr_pool_t *tp;
static redis_util_server_t rs;
static it_server_t sa, sb;

static void setup(void)
{
    struct rlimit rl;

    apr_initialize();
    apr_pool_create(&tp, NULL);
    redis_util_sweep_setup();
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void teardown(void)
{
    redis_util_sweep();
    apr_terminate();
}

static void start_pair(const char *url, const char *more)
{
    it_opts_t o;
    char *extra = apr_psprintf(tp, "CometRedis %s\n"
                               "CometMessageBufferLength 2000\n%s", url,
                               more ? more : "");


    memset(&o, 0, sizeof(o));
    o.extra = extra;
    o.threads = 10;
    ck_assert_int_eq(it_server_start(&sa, &o), 0);
    ck_assert_int_eq(it_server_start(&sb, &o), 0);
}

static void stop_pair(void)
{
    it_server_stop(&sa);
    it_server_stop(&sb);
}

static void start_redis(void)
{
    memset(&rs, 0, sizeof(rs));
    ck_assert_int_eq(redis_util_start(&rs), 0);
}

/* ---- tests ------------------------------------------------------------------- */

START_TEST(subscribers_on_a_receive_what_b_publishes_by_socket_and_http)
{
    sse_t s[2];
    all_t a = { s, 2, 0 };
    pubc_t pb;
    char line[256], id[64], url[64];
    int st;

    t0 = it_now_ms();
    start_redis();
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", rs.port);
    start_pair(url, NULL);
    progress("A on %d and B on %d share %s", sa.port, sb.port, url);
    ck_assert_int_eq(sse_open(&s[0], sa.port, "room", NULL), 0);
    ck_assert_int_eq(sse_open(&s[1], sb.port, "room", NULL), 0);
    ck_assert(sse_pump(s, 2, 5000, all_headed, &a));

    pubc_open(&pb, &sb);
    pubc_send(&pb, "room", "m0");
    pubc_reply(&pb, line, sizeof(line), 5000);
    /* PUBLISH counts the subscribers of every server (as registered). */
    ck_assert_msg(line[0] == ':', "%s", line);
    st = it_publish(sb.port, "room", "m1", NULL, id, sizeof(id));
    ck_assert_msg(st == 201 || st == 202, "HTTP publish: %d", st);
    a.want = 2;
    ck_assert(sse_pump(s, 2, 5000, all_have, &a));
    for (int i = 0; i < 2; i++) {
        ck_assert_str_eq(s[i].first, "m0");
        ck_assert_str_eq(s[i].last, "m1");
        ck_assert_str_eq(s[i].last_id, id);
        ck_assert_int_eq(s[i].dups + s[i].missed, 0);
    }
    progress("A's and B's subscribers got B's socket and HTTP publishes "
             "(id %s)", id);

    /* PUBLISH counts the subscribers of both servers. */
    for (int tries = 0; tries < 50; tries++) {
        pubc_send(&pb, "room", "again");
        pubc_reply(&pb, line, sizeof(line), 5000);
        if (!strcmp(line, ":2")) {
            break;
        }
        poll(NULL, 0, 100);
    }
    ck_assert_str_eq(line, ":2");
    /* server-status says how Redis is doing, per server (each process
     * writes its numbers there once a second). */
    for (int tries = 0; tries < 50; tries++) {
        if (it_status_value(sa.port, "CometRedisUp") == 2
            && it_status_value(sa.port, "CometRedisReceived") >= 2
            && it_status_value(sb.port, "CometRedisPublishes") >= 2) {
            break;
        }
        poll(NULL, 0, 100);
    }
    ck_assert_int_eq(it_status_value(sa.port, "CometRedisUp"), 2);
    ck_assert_int_ge(it_status_value(sa.port, "CometRedisReceived"), 2);
    ck_assert_int_eq(it_status_value(sa.port, "CometRedisPublishes"), 0);
    ck_assert_int_ge(it_status_value(sb.port, "CometRedisPublishes"), 2);
    ck_assert_int_eq(it_status_value(sb.port, "CometRedisPublishFailures"),
                     0);
    close(pb.fd);
    sse_close(&s[0]);
    sse_close(&s[1]);
    stop_pair();
    redis_util_stop(&rs);
}
END_TEST

/* A WebSocket client's message goes through Redis like any other: a
 * client publishing on A (tests/browser/ws_client.mjs "say": alice, who
 * waits for her own echo, which A's copy gets from Redis) reaches an SSE
 * subscriber on B with her identity, and B's copy has the same id. */
START_TEST(a_websocket_client_on_a_reaches_sse_on_b_with_its_sender)
{
    it_sub_t s;
    char url[64], cmd[600], out[8192];

    t0 = it_now_ms();
    start_redis();
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", rs.port);
    start_pair(url,
               "LoadModule auth_basic_module @MODULES@/mod_auth_basic.so\n"
               "LoadModule authn_core_module @MODULES@/mod_authn_core.so\n"
               "LoadModule authn_file_module @MODULES@/mod_authn_file.so\n"
               "LoadModule authz_user_module @MODULES@/mod_authz_user.so\n"
               "<Location /wspub/>\n"
               "    SetHandler comet-subscriber\n"
               "    CometClientPublish on\n"
               "    CometClientIdentity \"%{REMOTE_USER}\"\n"
               "    AuthType Basic\n"
               "    AuthName comet\n"
               "    AuthUserFile \"@DIR@/htpasswd\"\n"
               "    Require valid-user\n"
               "</Location>\n");
    snprintf(cmd, sizeof(cmd), "htpasswd -bc '%s/htpasswd' alice wonderland",
             sa.dir);
    ck_assert_msg(it_run(cmd, out, sizeof(out), 10000) == 0, "%s", out);
    ck_assert_int_eq(it_sub_open(&s, sb.port, "/sub/wsroom",
                                 "Accept: text/event-stream\r\n"), 0);
    ck_assert(it_wait_subscribers(sb.port, "wsroom", 1));
    snprintf(cmd, sizeof(cmd), "node tests/browser/ws_client.mjs say %d "
             "/wspub/wsroom from-a-by-websocket", sa.port);
    ck_assert_msg(it_run(cmd, out, sizeof(out), 90000) == 0, "%s", out);
    ck_assert_msg(it_sub_wait(&s, "from: alice\ndata: from-a-by-websocket\n",
                              10000) == 1,
                  "B's subscriber got: %s", s.buf + s.body);
    out[strcspn(out, "\n")] = '\0';
    progress("B's SSE subscriber got A's WebSocket publish from alice (%s)",
             out);
    for (int tries = 0; tries < 50; tries++) {
        if (it_status_value(sa.port, "CometRedisPublishes") >= 1) {
            break;
        }
        poll(NULL, 0, 100);
    }
    ck_assert_int_ge(it_status_value(sa.port, "CometRedisPublishes"), 1);
    it_sub_close(&s);
    stop_pair();
    redis_util_stop(&rs);
}
END_TEST

/* The publish socket's listeners hear what other servers publish: a
 * SUBSCRIBE on B's socket gets a message published on A (HTTP and
 * socket). */
START_TEST(a_socket_subscriber_on_b_hears_publishes_made_on_a)
{
    pubc_t sub, pa;
    char url[64], buf[4096], line[256];
    size_t have = 0;
    long long until;
    int st;

    t0 = it_now_ms();
    start_redis();
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", rs.port);
    start_pair(url, NULL);
    pubc_open(&sub, &sb);
    ck_assert_int_eq(it_send(sub.fd, "*2\r\n$9\r\nSUBSCRIBE\r\n$6\r\n"
                             "sockch\r\n", 32), 0);
    /* Until B's copy follows the channel, a publish on A may come before
     * it: publish until one arrives, then one more that must. */
    pubc_open(&pa, &sa);
    until = it_now_ms() + 10000;
    memset(buf, 0, sizeof(buf));
    while (!strstr(buf, "from-a-http") && it_now_ms() < until) {
        struct pollfd pfd = { sub.fd, POLLIN, 0 };
        char id[64];

        st = it_publish(sa.port, "sockch", "from-a-http", NULL, id,
                        sizeof(id));
        ck_assert_msg(st == 201 || st == 202, "HTTP publish: %d", st);
        while (poll(&pfd, 1, 200) > 0 && have < sizeof(buf) - 1) {
            ssize_t n = read(sub.fd, buf + have, sizeof(buf) - 1 - have);

            if (n <= 0) {
                break;
            }
            have += (size_t)n;
            buf[have] = '\0';
        }
    }
    ck_assert_msg(strstr(buf, "$7\r\nmessage\r\n$6\r\nsockch\r\n$11\r\n"
                          "from-a-http\r\n"), "B's socket got: %s", buf);
    pubc_send(&pa, "sockch", "from-a-socket");
    pubc_reply(&pa, line, sizeof(line), 5000);
    ck_assert_msg(line[0] == ':', "%s", line);
    until = it_now_ms() + 5000;
    while (!strstr(buf, "from-a-socket") && it_now_ms() < until
           && have < sizeof(buf) - 1) {
        struct pollfd pfd = { sub.fd, POLLIN, 0 };
        ssize_t n;

        if (poll(&pfd, 1, 200) <= 0) {
            continue;
        }
        if ((n = read(sub.fd, buf + have, sizeof(buf) - 1 - have)) <= 0) {
            break;
        }
        have += (size_t)n;
        buf[have] = '\0';
    }
    ck_assert_msg(strstr(buf, "$6\r\nsockch\r\n$13\r\nfrom-a-socket\r\n"),
                  "B's socket got: %s", buf);
    progress("a SUBSCRIBE on B's socket heard A's HTTP and socket publishes");
    close(pa.fd);
    close(sub.fd);
    stop_pair();
    redis_util_stop(&rs);
}
END_TEST

START_TEST(a_subscriber_moving_from_a_to_b_gets_exactly_what_it_missed)
{
    sse_t s;
    all_t a = { &s, 1, 0 };
    char id[64], last[64], url[64];
    int i;

    t0 = it_now_ms();
    start_redis();
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", rs.port);
    start_pair(url, NULL);
    ck_assert_int_eq(sse_open(&s, sa.port, "move", NULL), 0);
    ck_assert(sse_pump(&s, 1, 5000, all_headed, &a));
    for (i = 0; i < 3; i++) {
        ck_assert_int_ge(it_publish(i % 2 ? sa.port : sb.port, "move",
                                    apr_psprintf(tp, "m%d", i), NULL, id,
                                    sizeof(id)), 201);
    }
    a.want = 3;
    ck_assert(sse_pump(&s, 1, 5000, all_have, &a));
    apr_cpystrn(last, s.last_id, sizeof(last));
    sse_close(&s);
    /* Missed while away: five, published on either server. */
    for (i = 3; i < 8; i++) {
        ck_assert_int_ge(it_publish(i % 2 ? sa.port : sb.port, "move",
                                    apr_psprintf(tp, "m%d", i), NULL, id,
                                    sizeof(id)), 202);
    }
    ck_assert_int_eq(sse_open(&s, sb.port, "move", last), 0);
    a.want = 5;
    ck_assert(sse_pump(&s, 1, 5000, all_have, &a));
    sse_pump(&s, 1, 300, NULL, NULL);
    ck_assert_int_eq(s.count, 5);
    ck_assert_str_eq(s.first, "m3");
    ck_assert_str_eq(s.last, "m7");
    ck_assert_str_eq(s.last_id, id);
    ck_assert_int_eq(s.missed, 0);
    ck_assert_int_eq(s.dups, 0);
    progress("resumed on B from %s: exactly m3..m7, no missed signal", last);
    sse_close(&s);
    stop_pair();
    redis_util_stop(&rs);
}
END_TEST

/* A Redis that wants a password: given by CometRedisPasswordFile, it
 * works; a wrong one makes publishes fail and say so; neither password
 * ever shows in the log. */
START_TEST(a_password_from_a_file_opens_redis_and_never_shows_in_the_log)
{
    static const char good[] = "Gd-7a1f3c-pass", bad[] = "Wr-9e2b4d-pass";
    sse_t s;
    all_t a = { &s, 1, 0 };
    pubc_t pb, pa;
    char line[256], url[64], *file, *more;
    FILE *f;
    int st;

    t0 = it_now_ms();
    memset(&rs, 0, sizeof(rs));
    snprintf(rs.extra, sizeof(rs.extra), "--requirepass %s", good);
    ck_assert_int_eq(redis_util_start(&rs), 0);
    file = apr_psprintf(tp, "%s/redis.password", rs.dir);
    ck_assert_ptr_nonnull(f = fopen(file, "w"));
    fprintf(f, "%s\n", good);
    fclose(f);
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", rs.port);
    more = apr_psprintf(tp, "CometRedisPasswordFile %s\n", file);
    start_pair(url, more);
    ck_assert_int_eq(sse_open(&s, sa.port, "locked", NULL), 0);
    ck_assert(sse_pump(&s, 1, 5000, all_headed, &a));
    pubc_open(&pb, &sb);
    pubc_send(&pb, "locked", "m0");
    pubc_reply(&pb, line, sizeof(line), 5000);
    ck_assert_msg(line[0] == ':', "%s", line);
    a.want = 1;
    ck_assert(sse_pump(&s, 1, 5000, all_have, &a));
    ck_assert_str_eq(s.last, "m0");
    close(pb.fd);
    sse_close(&s);
    stop_pair();
    ck_assert_int_eq(it_log_count(&sa, good) + it_log_count(&sb, good), 0);
    progress("the password from the file opened Redis on A and B");

    /* A wrong password: refused, said to the publisher, never logged. */
    f = fopen(file, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "%s\n", bad);
    fclose(f);
    start_pair(url, more);
    pubc_open(&pa, &sa);
    pubc_send(&pa, "locked", "m1");
    pubc_reply(&pa, line, sizeof(line), 10000);
    ck_assert_msg(line[0] == '-' && strstr(line, "not stored"), "%s", line);
    st = it_publish(sa.port, "locked", "m2", NULL, NULL, 0);
    ck_assert_int_eq(st, 503);
    close(pa.fd);
    stop_pair();
    ck_assert_int_gt(it_log_count(&sa, "WRONGPASS"), 0);
    ck_assert_int_eq(it_log_count(&sa, "APR does not understand"), 0);
    ck_assert_int_eq(it_log_count(&sa, bad) + it_log_count(&sb, bad)
                     + it_log_count(&sa, good) + it_log_count(&sb, good), 0);
    progress("a wrong password: publishes refused (-ERR, 503), the log "
             "has Redis' refusal and no password");
    redis_util_stop(&rs);
}
END_TEST

/* n subscribers on one channel, half on A, half on B; msgs published
 * alternately on A and B through their sockets. */
static void burst(const char *chan, int nsubs, int msgs, sse_t *subs)
{
    all_t a = { subs, nsubs, 0 };
    pubc_t pa, pb;
    char line[256];
    int i, replies = 0, errors = 0;
    long long t;

    for (i = 0; i < nsubs; i++) {
        ck_assert_int_eq(sse_open(&subs[i], i % 2 ? sb.port : sa.port, chan,
                                  NULL), 0);
    }
    ck_assert(sse_pump(subs, nsubs, 30000, all_headed, &a));
    progress("%d subscribers connected", nsubs);
    pubc_open(&pa, &sa);
    pubc_open(&pb, &sb);
    t = it_now_ms();
    for (i = 0; i < msgs; i++) {
        pubc_send(i % 2 ? &pb : &pa, chan, apr_psprintf(tp, "m%d", i));
        if (i % 50 == 49) {
            /* Keep the replies flowing: 25 on each socket. */
            for (int k = 0; k < 50; k++) {
                pubc_reply(k % 2 ? &pb : &pa, line, sizeof(line), 10000);
                replies++;
                errors += line[0] != ':';
            }
            sse_pump(subs, nsubs, 0, NULL, NULL);
        }
    }
    ck_assert_int_eq(errors, 0);
    progress("%d publishes acknowledged in %lld ms", replies,
             it_now_ms() - t);
    a.want = msgs;
    ck_assert_msg(sse_pump(subs, nsubs, 60000, all_have, &a),
                  "not every subscriber got %d messages", msgs);
    progress("%d subscribers x %d messages delivered in %lld ms", nsubs, msgs,
             it_now_ms() - t);
    close(pa.fd);
    close(pb.fd);
}

START_TEST(a_burst_from_a_and_b_reaches_1000_subscribers_once_in_one_order)
{
    enum { NSUBS = 1000, MSGS = 1000 };
    sse_t *subs = calloc(NSUBS, sizeof(*subs));
    char url[64];
    int i;

    t0 = it_now_ms();
    start_redis();
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", rs.port);
    start_pair(url, NULL);
    burst("burst", NSUBS, MSGS, subs);
    sse_pump(subs, NSUBS, 300, NULL, NULL);
    for (i = 0; i < NSUBS; i++) {
        ck_assert_msg(subs[i].count == MSGS && !subs[i].dups
                      && !subs[i].missed, "subscriber %d: %d messages, %d "
                      "out of order, %d missed", i, subs[i].count,
                      subs[i].dups, subs[i].missed);
        ck_assert_msg(subs[i].order == subs[0].order, "subscriber %d saw "
                      "another order", i);
        for (int m = 0; m < MSGS; m++) {
            ck_assert_msg(subs[i].seen[m] == 1, "subscriber %d got m%d %d "
                          "times", i, m, subs[i].seen[m]);
        }
        sse_close(&subs[i]);
    }
    progress("every message once, in one order, on both servers");
    free(subs);
    stop_pair();
    redis_util_stop(&rs);
}
END_TEST

START_TEST(redis_killed_and_restarted_mid_burst)
{
    enum { NSUBS = 40, MSGS = 400 };
    sse_t *subs = calloc(NSUBS, sizeof(*subs));
    int acked[MSGS];
    all_t a = { subs, NSUBS, 0 };
    pubc_t pa, pb;
    char url[64], line[256];
    int i, failed = 0, port, after = 0;
    acked_t kw;

    t0 = it_now_ms();
    start_redis();
    port = rs.port;
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", rs.port);
    start_pair(url, NULL);
    for (i = 0; i < NSUBS; i++) {
        ck_assert_int_eq(sse_open(&subs[i], i % 2 ? sb.port : sa.port, "kill",
                                  NULL), 0);
    }
    ck_assert(sse_pump(subs, NSUBS, 10000, all_headed, &a));
    pubc_open(&pa, &sa);
    pubc_open(&pb, &sb);
    for (i = 0; i < MSGS; i++) {
        pubc_t *p = i % 2 ? &pb : &pa;

        if (i == MSGS / 3) {
            redis_util_kill(&rs, SIGKILL);
            progress("redis-server killed after %d publishes", i);
        }
        if (i == MSGS / 2) {
            rs.port = port;
            ck_assert_int_eq(redis_util_start(&rs), 0);
            progress("redis-server restarted (its data gone)");
        }
        pubc_send(p, "kill", apr_psprintf(tp, "m%d", i));
        pubc_reply(p, line, sizeof(line), 10000);
        acked[i] = line[0] == ':';
        if (!acked[i]) {
            /* Said, never silent. */
            ck_assert_msg(line[0] == '-' && (strstr(line, "not stored")
                                             || strstr(line, "may or may "
                                                       "not")),
                          "reply %d: %s", i, line);
            failed++;
            if (i > MSGS / 2) {
                /* Reconnecting: wait a little and go on. */
                poll(NULL, 0, 20);
            }
        }
        else if (i > MSGS / 2) {
            after++;
        }
        sse_pump(subs, NSUBS, 0, NULL, NULL);
    }
    ck_assert_int_gt(failed, 0);
    ck_assert_int_gt(after, 50);
    progress("%d publishes refused while Redis was away, %d stored after",
             failed, after);
    /* Every subscriber: still connected, nothing twice, in order, every
     * message acknowledged after the restart, and for any acknowledged
     * one it lacks, the missed signal. */
    kw.subs = subs;
    kw.n = NSUBS;
    kw.acked = acked;
    kw.from = MSGS / 2 + 1;
    kw.to = MSGS;
    if (!sse_pump(subs, NSUBS, 20000, all_acked_seen, &kw)) {
        for (i = 0; i < NSUBS; i++) {
            for (int m = kw.from; m < kw.to; m++) {
                ck_assert_msg(!acked[m] || subs[i].seen[m], "subscriber %d "
                              "lacks m%d, acknowledged after the restart "
                              "(it has %d messages, the last %s id %s; %d "
                              "missed signals)", i, m, subs[i].count,
                              subs[i].last, subs[i].last_id, subs[i].missed);
            }
        }
    }
    for (i = 0; i < NSUBS; i++) {
        int lacking = 0;

        ck_assert_msg(!subs[i].closed, "subscriber %d was disconnected", i);
        ck_assert_int_eq(subs[i].dups, 0);
        for (int m = 0; m < MSGS; m++) {
            ck_assert_int_le(subs[i].seen[m], 1);
            if (acked[m] && !subs[i].seen[m]) {
                ck_assert_msg(m < MSGS / 2, "subscriber %d lacks m%d, "
                              "acknowledged after the restart", i, m);
                lacking++;
            }
            if (!acked[m]) {
                ck_assert_int_eq(subs[i].seen[m], 0);
            }
        }
        if (lacking) {
            ck_assert_msg(subs[i].missed, "subscriber %d lacks %d "
                          "messages and was not told", i, lacking);
        }
        /* A Redis without its data starts a new generation: told. */
        ck_assert_msg(subs[i].missed, "subscriber %d: no missed signal "
                      "after Redis lost its data", i);
        sse_close(&subs[i]);
    }
    close(pa.fd);
    close(pb.fd);
    progress("every subscriber: in order, once, the missed signal");
    ck_assert_int_gt(it_log_count(&sa, "redis"), 0);
    free(subs);
    stop_pair();
    redis_util_stop(&rs);
}
END_TEST

/* ---- a three-master cluster ------------------------------------------------ */

#define NODES 6

static redis_util_server_t node[NODES];

static const char *ncli(int i, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static const char *ncli(int i, const char *fmt, ...)
{
    static char out[16384];
    char args[1024];
    va_list ap;
    size_t len;

    va_start(ap, fmt);
    vsnprintf(args, sizeof(args), fmt, ap);
    va_end(ap);
    redis_util_sh(out, sizeof(out), "redis-cli -p %d %s 2>&1", node[i].port,
                  args);
    len = strlen(out);
    while (len && (out[len - 1] == '\n' || out[len - 1] == '\r')) {
        out[--len] = '\0';
    }
    return out;
}

static int cluster_ok(void *baton)
{
    for (int i = 0; i < NODES; i++) {
        if (node[i].pid
            && !strstr(ncli(i, "CLUSTER INFO"), "cluster_state:ok")) {
            poll(NULL, 0, 50);
            return 0;
        }
    }
    return 1;
}

/* The node index serving slot as master (CLUSTER NODES of a live node). */
static int master_of_slot(unsigned slot)
{
    char *text = NULL, *line, *save;
    int live = 0, found = -1;

    while (live < NODES && !node[live].pid) {
        live++;
    }
    text = strdup(ncli(live, "CLUSTER NODES"));
    for (line = strtok_r(text, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        char addr[64], flags[64];
        const char *p;
        int port, f = 0;

        if (sscanf(line, "%*s %63s %63s", addr, flags) != 2
            || !strstr(flags, "master") || strstr(flags, "fail")) {
            continue;
        }
        port = atoi(strchr(addr, ':') + 1);
        /* Fields 9 and on: slot ranges. */
        for (p = line; f < 8 && (p = strchr(p, ' ')); p++, f++) {
        }
        while (p && *p) {
            unsigned lo, hi;
            int used = 0;

            while (*p == ' ') {
                p++;
            }
            if (sscanf(p, "%u-%u%n", &lo, &hi, &used) == 2
                || (sscanf(p, "%u%n", &lo, &used) == 1 && (hi = lo, 1))) {
                if (slot >= lo && slot <= hi) {
                    for (int i = 0; i < NODES; i++) {
                        if (node[i].port == port) {
                            found = i;
                        }
                    }
                }
            }
            p = strchr(p, ' ');
        }
    }
    free(text);
    return found;
}

/* A channel name served by master m (not an earlier pick). */
static void chan_on(char *out, size_t len, const char *prefix, int m)
{
    for (int n = 0; n < 100000; n++) {
        snprintf(out, len, "%s%d", prefix, n);
        if (master_of_slot(comet_redis_slot(out, strlen(out))) == m) {
            return;
        }
    }
    ck_abort_msg("no channel on node %d", m);
}

/* Every replica's link to its master is up (a replica that never synced
 * would not be elected). */
static int replicas_linked(void *baton)
{
    for (int i = 0; i < NODES; i++) {
        const char *role = ncli(i, "ROLE");

        if (!strncmp(role, "slave", 5) && !strstr(role, "\nconnected\n")) {
            poll(NULL, 0, 50);
            return 0;
        }
    }
    return 1;
}

static void cluster_start(char *url, size_t len)
{
    char create[1024], out[8192];
    int i;

    snprintf(create, sizeof(create), "redis-cli --cluster create");
    for (i = 0; i < NODES; i++) {
        memset(&node[i], 0, sizeof(node[i]));
        node[i].port = redis_util_free_cluster_port();
        apr_cpystrn(node[i].extra, "--cluster-enabled yes "
                    "--cluster-config-file nodes.conf "
                    "--cluster-node-timeout 1500", sizeof(node[i].extra));
        ck_assert_msg(redis_util_start(&node[i]) == 0, "node %d", i);
        snprintf(create + strlen(create), sizeof(create) - strlen(create),
                 " 127.0.0.1:%d", node[i].port);
    }
    strcat(create, " --cluster-replicas 1 --cluster-yes");
    ck_assert_msg(redis_util_sh(out, sizeof(out), "%s 2>&1", create) == 0,
                  "%s", out);
    ck_assert(it_wait_for(cluster_ok, NULL, 20000));
    ck_assert(it_wait_for(replicas_linked, NULL, 20000));
    snprintf(url, len, "redis-cluster://127.0.0.1:%d,127.0.0.1:%d",
             node[0].port, node[1].port);
}

static void cluster_stop(void)
{
    for (int i = 0; i < NODES; i++) {
        redis_util_stop(&node[i]);
    }
}

static int masters(int *m)
{
    int n = 0;

    for (unsigned slot = 0; slot < 16384 && n < 3; slot += 512) {
        int k = master_of_slot(slot), j;

        for (j = 0; j < n && m[j] != k; j++) {
        }
        if (j == n && k >= 0) {
            m[n++] = k;
        }
    }
    return n;
}

START_TEST(a_cluster_spreads_channels_over_three_masters_and_survives_a_failover)
{
    enum { PER = 4, MSGS = 600 };
    sse_t subs[3 * PER];
    all_t a = { subs, 3 * PER, 0 };
    char url[256], chans[3][32], line[256];
    int m[3], acked[3][MSGS], i, c, victim, failed = 0, after = 0;
    pubc_t pa, pb;
    long long killed_at = 0;

    t0 = it_now_ms();
    cluster_start(url, sizeof(url));
    ck_assert_int_eq(masters(m), 3);
    for (c = 0; c < 3; c++) {
        chan_on(chans[c], sizeof(chans[c]), "spread", m[c]);
    }
    progress("cluster up; channels %s %s %s on three masters", chans[0],
             chans[1], chans[2]);
    start_pair(url, NULL);
    for (i = 0; i < 3 * PER; i++) {
        ck_assert_int_eq(sse_open(&subs[i], i % 2 ? sb.port : sa.port,
                                  chans[i % 3], NULL), 0);
    }
    ck_assert(sse_pump(subs, 3 * PER, 10000, all_headed, &a));
    pubc_open(&pa, &sa);
    pubc_open(&pb, &sb);

    /* The burst: each message to the three channels, alternately on A and
     * B; the master of the first channel is killed a third of the way. */
    victim = m[0];
    memset(acked, 0, sizeof(acked));
    for (i = 0; i < MSGS; i++) {
        if (i == MSGS / 3) {
            redis_util_kill(&node[victim], SIGKILL);
            killed_at = it_now_ms();
            progress("master of %s killed after %d publishes each", chans[0],
                     i);
        }
        for (c = 0; c < 3; c++) {
            pubc_t *p = (i + c) % 2 ? &pb : &pa;

            pubc_send(p, chans[c], apr_psprintf(tp, "m%d", i));
            pubc_reply(p, line, sizeof(line), 10000);
            acked[c][i] = line[0] == ':';
            if (!acked[c][i]) {
                /* While a master is failing, Redis refuses writes to every
                 * slot (cluster-require-full-coverage): said, not lost. */
                ck_assert_msg(line[0] == '-' && (strstr(line, "not stored")
                                                 || strstr(line, "may or")),
                              "%s m%d: %s", chans[c], i, line);
                failed++;
            }
            else if (c == 0 && killed_at) {
                after++;
            }
        }
        if (killed_at && (!acked[0][i] || !acked[1][i] || !acked[2][i])) {
            /* Until the replica is promoted (node timeout 1.5 s). */
            sse_pump(subs, 3 * PER, 20, NULL, NULL);
        }
        sse_pump(subs, 3 * PER, 0, NULL, NULL);
    }
    if (after <= 20) {
        progress("cluster after the failover:\n%s",
                 ncli(m[1], "CLUSTER NODES"));
    }
    ck_assert_int_gt(after, 20);
    progress("%d publishes refused during the failover (%.1f s), %d stored "
             "to %s after it", failed,
             (double)(it_now_ms() - killed_at) / 1000.0, after, chans[0]);
    a.want = 1;
    sse_pump(subs, 3 * PER, 3000, NULL, NULL);
    for (i = 0; i < 3 * PER; i++) {
        int lacking = 0;

        c = i % 3;
        ck_assert_msg(!subs[i].closed, "subscriber %d disconnected", i);
        ck_assert_msg(subs[i].dups == 0, "subscriber %d (%s): out of order",
                      i, chans[c]);
        for (int k = 0; k < MSGS; k++) {
            ck_assert_int_le(subs[i].seen[k], 1);
            if (acked[c][k] && !subs[i].seen[k]) {
                lacking++;
            }
            if (!acked[c][k]) {
                ck_assert_int_eq(subs[i].seen[k], 0);
            }
        }
        ck_assert_msg(!lacking || subs[i].missed, "subscriber %d (%s) "
                      "lacks %d messages and was not told", i, chans[c],
                      lacking);
        if (c) {
            /* The other masters' channels lost nothing. */
            ck_assert_int_eq(lacking, 0);
            ck_assert_int_eq(subs[i].missed, 0);
        }
        sse_close(&subs[i]);
    }
    progress("channels on the other masters: everything; on the failed "
             "one: in order, once, and the missed signal where needed");
    close(pa.fd);
    close(pb.fd);
    stop_pair();
    cluster_stop();
}
END_TEST

Suite *test_redis_share_suite(void)
{
    Suite *s = suite_create("redis_share");
    TCase *tc = tcase_create("standalone");
    TCase *trs = tcase_create("failures");
    TCase *tcl = tcase_create("cluster");

    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 180);
    tcase_add_test(tc,
                   subscribers_on_a_receive_what_b_publishes_by_socket_and_http);
    tcase_add_test(tc,
                   a_websocket_client_on_a_reaches_sse_on_b_with_its_sender);
    tcase_add_test(tc, a_socket_subscriber_on_b_hears_publishes_made_on_a);
    tcase_add_test(tc,
                   a_subscriber_moving_from_a_to_b_gets_exactly_what_it_missed);
    tcase_add_test(tc,
                   a_burst_from_a_and_b_reaches_1000_subscribers_once_in_one_order);
    suite_add_tcase(s, tc);
    tcase_add_unchecked_fixture(trs, setup, teardown);
    tcase_set_timeout(trs, 180);
    tcase_add_test(trs, redis_killed_and_restarted_mid_burst);
    tcase_add_test(trs,
                   a_password_from_a_file_opens_redis_and_never_shows_in_the_log);
    suite_add_tcase(s, trs);

    tcase_add_unchecked_fixture(tcl, setup, teardown);
    tcase_set_timeout(tcl, 180);
    tcase_add_test(tcl,
                   a_cluster_spreads_channels_over_three_masters_and_survives_a_failover);
    suite_add_tcase(s, tcl);
    return s;
}
