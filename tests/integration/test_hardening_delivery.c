/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* Delivery under hostile or unlucky clients, against the real apache2:
 * a backlog nobody reads blocks no worker (plain HTTP/1.1, HTTP/1.0, TLS);
 * a subscriber thousands of messages behind gets every one, in order,
 * once; a frame larger than the batch arrives whole; a reader at full
 * speed survives a message that SSE makes six times larger, and the
 * configuration that would drop it is refused; a long-poll far behind
 * catches up poll by poll; memory taken for slow readers comes back. */

#include <ctype.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "harness.h"
#include "tls_client.h"

/* ---- publishing many messages ------------------------------------------- */

/* Publish "m<i> " followed by pad bytes of fill, for i in [from, to),
 * through the publish socket, pipelined.  0, or -1 on any refusal. */
static int publish_many(const it_server_t *s, const char *chan, int from,
                        int to, size_t pad, char fill)
{
    int fd = it_connect_unix(s->socket_path), rc = 0;
    size_t cap = pad + 256;
    char *msg = malloc(cap), *head = malloc(512 + strlen(chan));
    char reply[4096];

    if (fd < 0 || !msg || !head) {
        rc = -1;
        goto out;
    }
    for (int i = from; i < to && !rc; i += 32) {
        int n = to - i < 32 ? to - i : 32, replies = 0;
        size_t got = 0;

        for (int j = 0; j < n; j++) {
            int len = snprintf(msg, cap, "m%d ", i + j);

            memset(msg + len, fill, pad);
            len += (int)pad;
            snprintf(head, 512 + strlen(chan), "*3\r\n$7\r\nPUBLISH\r\n$%zu"
                     "\r\n%s\r\n$%d\r\n", strlen(chan), chan, len);
            if (it_send(fd, head, strlen(head)) || it_send(fd, msg, len)
                || it_send(fd, "\r\n", 2)) {
                rc = -1;
                break;
            }
        }
        /* One ":<receivers>" line each. */
        while (!rc && replies < n) {
            struct pollfd p = { fd, POLLIN, 0 };
            ssize_t r;

            if (poll(&p, 1, 10000) <= 0
                || (r = read(fd, reply + got, sizeof(reply) - got - 1))
                   <= 0) {
                rc = -1;
                break;
            }
            got += (size_t)r;
            reply[got] = '\0';
            if (strchr(reply, '-')) {
                fprintf(stderr, "publish refused: %s\n", reply);
                rc = -1;
                break;
            }
            for (char *p2; (p2 = strstr(reply, "\r\n")) != NULL;) {
                replies++;
                got -= (size_t)(p2 + 2 - reply);
                memmove(reply, p2 + 2, got + 1);
            }
        }
    }
out:
    if (fd >= 0) {
        close(fd);
    }
    free(msg);
    free(head);
    return rc;
}

/* ---- reading streams, checking order and uniqueness on the way ---------- */

/* Counts "<key>m<n>" in a stream fed piece by piece: each n must be the
 * one after the last. */
typedef struct seqchk_t {
    const char *key;
    int         next;          /* the number due next                   */
    int         bad;           /* a number out of order (first one)      */
    int         bad_at;
    char        carry[128];
    size_t      clen;
    long long   bytes;
} seqchk_t;

static void seqchk_init(seqchk_t *c, const char *key, int first)
{
    memset(c, 0, sizeof(*c));
    c->key = key;
    c->next = first;
    c->bad = -1;
}

static void seqchk_feed(seqchk_t *c, const char *data, size_t len)
{
    size_t klen = strlen(c->key), n = c->clen + len, pos = 0;
    char *buf = malloc(n + 1);

    c->bytes += (long long)len;
    memcpy(buf, c->carry, c->clen);
    memcpy(buf + c->clen, data, len);
    buf[n] = '\0';
    c->clen = 0;
    for (;;) {
        char *p = memmem(buf + pos, n - pos, c->key, klen), *q;
        long v;

        if (!p) {
            /* A key may begin in the last bytes. */
            size_t keep = n - pos < klen - 1 ? n - pos : klen - 1;

            memcpy(c->carry, buf + n - keep, keep);
            c->clen = keep;
            break;
        }
        q = p + klen;
        if (q < buf + n && *q != 'm') {
            pos = (size_t)(q - buf);
            continue;
        }
        for (q++; q < buf + n && isdigit((unsigned char)*q); q++) {
        }
        if (q >= buf + n) {
            /* The number may go on in the next piece (a key and a number
             * take far less than the carry). */
            size_t keep = (size_t)(buf + n - p);

            if (keep < sizeof(c->carry)) {
                memcpy(c->carry, p, keep);
                c->clen = keep;
            }
            break;
        }
        v = strtol(p + klen + 1, NULL, 10);
        if (v == c->next) {
            c->next++;
        }
        else if (c->bad < 0) {
            c->bad = (int)v;
            c->bad_at = c->next;
        }
        pos = (size_t)(q - buf);
    }
    free(buf);
}

/* A reader of one stream: a plain socket or a TLS connection. */
typedef struct reader_t {
    const char *name;
    int         fd;
    FILE       *pipe;          /* a command's output (curl over h2)      */
    it_tls_t    tls;
    int         is_tls;
    seqchk_t    chk;
    int         want;          /* read until chk.next reaches it        */
    int         eof;
} reader_t;

/* Read what is there (without waiting); 1 when something came. */
static int reader_pump(reader_t *r)
{
    char buf[65536];
    ssize_t n;

    if (r->eof) {
        return 0;
    }
    if (r->is_tls) {
        /* One record's worth at a time, so that the others take turns. */
        SSL *ssl = r->tls.ssl;
        struct pollfd p = { r->tls.fd, POLLIN, 0 };

        if (!SSL_pending(ssl) && poll(&p, 1, 0) <= 0) {
            return 0;
        }
        if ((n = SSL_read(ssl, buf, sizeof(buf))) > 0) {
            seqchk_feed(&r->chk, buf, (size_t)n);
            return 1;
        }
        r->eof = SSL_get_error(ssl, (int)n) != SSL_ERROR_WANT_READ;
        return 0;
    }
    n = r->pipe ? read(r->fd, buf, sizeof(buf))
                : recv(r->fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) {
        seqchk_feed(&r->chk, buf, (size_t)n);
        return 1;
    }
    if (n == 0) {
        r->eof = 1;
    }
    return 0;
}

/* A reader of curl's output: SSE over HTTP/2 (cleartext, prior
 * knowledge), a held subscriber. */
static void reader_open_h2(reader_t *r, const char *name, int port,
                           const char *path, const char *last_id, int first,
                           int want)
{
    char cmd[1024];

    memset(r, 0, sizeof(*r));
    r->name = name;
    r->want = want;
    seqchk_init(&r->chk, "data: ", first);
    snprintf(cmd, sizeof(cmd), "exec curl -s -N --http2-prior-knowledge "
             "--max-time 120 -H 'Accept: text/event-stream' "
             "-H 'Last-Event-ID: %s' http://127.0.0.1:%d%s", last_id, port,
             path);
    ck_assert_ptr_nonnull(r->pipe = popen(cmd, "r"));
    r->fd = fileno(r->pipe);
    fcntl(r->fd, F_SETFL, fcntl(r->fd, F_GETFL) | O_NONBLOCK);
}

/* Pump every reader until each has its want (1) or ms pass (0). */
static int readers_until_done(reader_t *rs, int n, int ms)
{
    long long end = it_now_ms() + ms;

    for (;;) {
        int done = 0, moved = 0;

        /* A few reads each in turn: a reader whose data keeps coming
         * must not starve the others (a client that is not read stops
         * reading too, and the server rightly gives up on it). */
        for (int i = 0; i < n; i++) {
            for (int k = 0; k < 4 && reader_pump(&rs[i]); k++) {
                moved = 1;
            }
            done += rs[i].chk.next >= rs[i].want;
        }
        if (done == n) {
            return 1;
        }
        if (it_now_ms() > end) {
            for (int i = 0; i < n; i++) {
                fprintf(stderr, "%s: at m%d of %d, %lld bytes%s\n",
                        rs[i].name, rs[i].chk.next, rs[i].want,
                        rs[i].chk.bytes, rs[i].eof ? ", closed" : "");
            }
            return 0;
        }
        if (!moved) {
            struct pollfd p[16];

            for (int i = 0; i < n && i < 16; i++) {
                p[i].fd = rs[i].is_tls ? rs[i].tls.fd : rs[i].fd;
                p[i].events = POLLIN;
                p[i].revents = 0;
            }
            poll(p, (nfds_t)(n < 16 ? n : 16), 50);
        }
    }
}

/* Readers that keep up: each reads up to message upto - 1. */
static int readers_reach(reader_t *rs, int n, int upto)
{
    for (int i = 0; i < n; i++) {
        rs[i].want = upto;
    }
    return readers_until_done(rs, n, 30000);
}

static const char *sse_request(const char *path, const char *proto,
                               const char *extra)
{
    static char req[4][1024];
    static int k;
    char *r = req[k++ % 4];

    snprintf(r, 1024, "GET %s %s\r\nHost: 127.0.0.1\r\n"
             "Accept: text/event-stream\r\n%s\r\n", path, proto,
             extra ? extra : "");
    return r;
}

/* Open a reader: plain HTTP/1.1 or HTTP/1.0, or TLS (HTTP/1.1). */
static void reader_open(reader_t *r, const char *name, const it_server_t *s,
                        int tls, const char *proto, const char *path,
                        const char *extra, const char *key, int first,
                        int want, int rcvbuf)
{
    memset(r, 0, sizeof(*r));
    r->name = name;
    r->want = want;
    r->fd = -1;
    seqchk_init(&r->chk, key, first);
    if (tls) {
        r->is_tls = 1;
        ck_assert_int_eq(it_tls_open_rcvbuf(&r->tls, s->tls_port,
                                            sse_request(path, proto, extra),
                                            rcvbuf ? rcvbuf : 1 << 20), 0);
        return;
    }
    r->fd = rcvbuf ? it_connect_rcvbuf(s->port, rcvbuf) : it_connect(s->port);
    ck_assert_int_ge(r->fd, 0);
    ck_assert_int_eq(it_sendf(r->fd, "%s", sse_request(path, proto, extra)),
                     0);
}

static void reader_close(reader_t *r)
{
    if (r->pipe) {
        /* curl ends with its stream (the test deletes the channel). */
        pclose(r->pipe);
        r->pipe = NULL;
        r->fd = -1;
        return;
    }
    if (r->is_tls) {
        it_tls_close(&r->tls, 0);
    }
    else if (r->fd >= 0) {
        close(r->fd);
    }
    r->fd = -1;
}

/* ---- the server's side -------------------------------------------------- */

/* How many of the server's children served a request for path, and how
 * many such requests the access log has (each line ends with the serving
 * pid; a detached subscriber's line is written as it parks). */
static int children_served(const it_server_t *s, const char *path,
                           int *lines)
{
    pid_t kids[64];
    int n = it_server_children(s, kids, 64), served = 0;
    char file[512], *log = malloc(1 << 20);

    *lines = 0;
    snprintf(file, sizeof(file), "%s/access_log", s->dir);
    if (it_read_file(file, log, 1 << 20) > 0) {
        char *seen = calloc((size_t)n + 1, 1);

        for (char *p = log; (p = strstr(p, path)); p++) {
            char *nl = strchr(p, '\n'), *sp;

            if (!nl) {
                break;
            }
            *nl = '\0';
            sp = strrchr(p, ' ');
            (*lines)++;
            for (int k = 0; sp && k < n; k++) {
                if (atoi(sp + 1) == (int)kids[k] && !seen[k]) {
                    seen[k] = 1;
                    served++;
                }
            }
            *nl = '\n';
        }
        free(seen);
    }
    free(log);
    return served;
}

typedef struct served_arg_t {
    const it_server_t *s;
    const char *path;
    int want;
} served_arg_t;

static int served_lines(void *baton)
{
    served_arg_t *a = baton;
    int lines;

    children_served(a->s, a->path, &lines);
    return lines >= a->want;
}

/* Nothing of a subscriber is left in the MPM or the hub. */
static int all_ended(void *baton)
{
    int port = *(int *)baton;

    return it_status_value(port, "CometSuspended") == 0
           && it_status_value(port, "CometHeld") == 0
           && it_status_value(port, "CometMpmSuspended") == 0
           && it_status_value(port, "CometConnections") == 0;
}

/* The site answers an ordinary request at once, and no more workers are
 * busy than this request and the status request itself. */
static void assert_site_free(int port)
{
    it_response_t *res = malloc(sizeof(*res));
    long busy = it_status_value(port, "BusyWorkers");

    ck_assert_msg(busy >= 1 && busy <= 2, "%ld busy workers", busy);
    ck_assert_int_eq(it_http(port, "GET", "/index.html", NULL, NULL, 0, res,
                             5000), 0);
    ck_assert_int_eq(res->status, 200);
    free(res);
}

/* ---- finding 2: no write on a worker waits for a client ----------------- */

/* Clients that ask for a 16 MB backlog (?backlog=all, or an id of another
 * server run) and read nothing: no worker waits for them, the site and
 * other subscribers are served at once; one that does read gets all of it,
 * through the same path. */
START_TEST(a_backlog_nobody_reads_blocks_no_worker)
{
    enum { HOARDERS = 10 };
    it_server_t s;
    it_opts_t o;
    reader_t h[HOARDERS], full[2];
    it_sub_t live;
    char msg[32];

    memset(&o, 0, sizeof(o));
    o.tls = 1;
    o.extra = "CometMessageBufferLength 200\nKeepAliveTimeout 1\n";
    ck_assert_int_eq(it_server_start(&s, &o), 0);
    /* 100 messages of 160 KB: 16 MB kept. */
    ck_assert_int_eq(publish_many(&s, "hoard", 0, 100, 160 * 1024, 'p'), 0);
    ck_assert_int_eq(it_sub_open(&live, s.port, "/sub/other",
                                 "Accept: text/event-stream\r\n"), 0);

    /* Ten that read nothing: more than a process has workers. */
    for (int i = 0; i < HOARDERS; i++) {
        int tls = i >= 8, h10 = i == 6 || i == 7;

        reader_open(&h[i], "hoarder", &s, tls, h10 ? "HTTP/1.0" : "HTTP/1.1",
                    i % 2 ? "/sub/hoard?backlog=all" : "/sub/hoard",
                    i % 2 ? NULL : "Last-Event-ID: 00000001:0\r\n", "data: ",
                    0, 100, 4096);
    }
    ck_assert(it_wait_subscribers_ms(s.port, "hoard", HOARDERS, 10000));
    for (int round = 0; round < 5; round++) {
        assert_site_free(s.port);
        snprintf(msg, sizeof(msg), "live-%d", round);
        ck_assert_int_eq(it_publish(s.port, "other", msg, NULL, NULL, 0),
                         201);
        ck_assert_int_eq(it_sub_wait(&live, msg, 5000), 1);
    }

    /* Those that read get the whole backlog, in order, once: plain and
     * TLS. */
    reader_open(&full[0], "plain reader", &s, 0, "HTTP/1.1",
                "/sub/hoard?backlog=all", NULL, "data: ", 0, 100, 0);
    reader_open(&full[1], "TLS reader", &s, 1, "HTTP/1.1",
                "/sub/hoard?backlog=all", NULL, "data: ", 0, 100, 0);
    ck_assert(readers_until_done(full, 2, 60000));
    for (int i = 0; i < 2; i++) {
        ck_assert_msg(full[i].chk.bad < 0, "%s: m%d where m%d was due",
                      full[i].name, full[i].chk.bad, full[i].chk.bad_at);
        reader_close(&full[i]);
    }
    assert_site_free(s.port);
    for (int i = 0; i < HOARDERS; i++) {
        reader_close(&h[i]);
    }
    it_sub_close(&live);
    ck_assert(it_wait_subscribers_ms(s.port, "hoard", 0, 10000));
    ck_assert(it_wait_for(all_ended, &s.port, 10000));
    it_server_stop(&s);
}
END_TEST

/* ---- finding 3: no silent loss ------------------------------------------ */

/* 5,000 messages of 4 KB (20 MB: more than the handler and the hub read
 * at once) behind subscribers of the same processes, resumed over plain
 * HTTP/1.1, TLS and HTTP/1.0 while more messages come: every one, in
 * order, once. */
START_TEST(a_subscriber_resuming_5000_behind_gets_all_in_order_once)
{
    it_server_t s;
    it_opts_t o;
    reader_t live[8], back[4];
    int nlive = 0;
    char id[64], hdr[128];

    memset(&o, 0, sizeof(o));
    o.tls = 1;
    o.extra = "CometMessageBufferLength 10000\nCometSharedMemorySize 128M\n"
              "KeepAliveTimeout 1\n"
              "LoadModule http2_module @MODULES@/mod_http2.so\n"
              "Protocols h2c http/1.1\nCometHTTP2 hold\n";
    ck_assert_int_eq(it_server_start(&s, &o), 0);
    /* A subscriber in every process, reading as it comes: one is kept
     * only when it landed in a process that had none. */
    {
        pid_t kids[64];
        int children = it_server_children(&s, kids, 64), covered = 0;
        served_arg_t arg = { &s, "GET /sub/far ", 0 };

        for (int tries = 0; tries < 60 && covered < children; tries++) {
            int now, lines;

            reader_open(&live[nlive], "live", &s, 0, "HTTP/1.1", "/sub/far",
                        NULL, "data: ", 0, 6000, 0);
            arg.want = tries + 1;
            ck_assert(it_wait_for(served_lines, &arg, 5000));
            now = children_served(&s, "GET /sub/far ", &lines);
            if (now > covered) {
                covered = now;
                nlive++;
            }
            else {
                reader_close(&live[nlive]);
            }
        }
        ck_assert_msg(covered == children && children >= 2,
                      "subscribers in %d of %d processes", covered, children);
        ck_assert(it_wait_subscribers(s.port, "far", nlive));
    }
    /* The position to resume from: m999's id.  The live ones read as it
     * comes (else they would rightly be dropped). */
    for (int i = 0; i < 999; i += 111) {
        ck_assert_int_eq(publish_many(&s, "far", i, i + 111, 4000, 'p'), 0);
        ck_assert(readers_reach(live, nlive, i + 111));
    }
    ck_assert_int_eq(it_publish(s.port, "far", "m999 ", NULL, id,
                                sizeof(id)), 201);
    for (int i = 1000; i < 6000; i += 100) {
        ck_assert_int_eq(publish_many(&s, "far", i, i + 100, 4000, 'p'), 0);
        ck_assert(readers_reach(live, nlive, i + 100));
    }

    snprintf(hdr, sizeof(hdr), "Last-Event-ID: %s\r\n", id);
    reader_open(&back[0], "plain", &s, 0, "HTTP/1.1", "/sub/far", hdr,
                "data: ", 1000, 6500, 0);
    reader_open(&back[1], "TLS", &s, 1, "HTTP/1.1", "/sub/far", hdr,
                "data: ", 1000, 6500, 0);
    reader_open(&back[2], "HTTP/1.0", &s, 0, "HTTP/1.0", "/sub/far", hdr,
                "data: ", 1000, 6500, 0);
    reader_open_h2(&back[3], "HTTP/2", s.port, "/sub/far", id, 1000, 6500);
    ck_assert(it_wait_subscribers(s.port, "far", nlive + 4));
    ck_assert_int_eq(publish_many(&s, "far", 6000, 6500, 4000, 'p'), 0);
    ck_assert(readers_until_done(back, 4, 120000));
    for (int i = 0; i < 4; i++) {
        ck_assert_msg(back[i].chk.bad < 0, "%s: m%d where m%d was due",
                      back[i].name, back[i].chk.bad, back[i].chk.bad_at);
    }
    /* Every stream ends (curl's too). */
    {
        it_response_t *res = malloc(sizeof(*res));

        ck_assert_int_eq(it_http(s.port, "DELETE", "/pub/far", NULL, NULL, 0,
                                 res, 5000), 0);
        ck_assert_int_eq(res->status, 200);
        free(res);
    }
    for (int i = 0; i < 4; i++) {
        reader_close(&back[i]);
    }
    for (int i = 0; i < nlive; i++) {
        reader_close(&live[i]);
    }
    ck_assert(it_wait_for(all_ended, &s.port, 10000));
    it_server_stop(&s);
}
END_TEST

/* ---- finding 4: no corrupted stream ------------------------------------- */

/* A message whose SSE frame (66 MB: 11 MB of newlines) is larger than any
 * buffer the hub formats batches in: it arrives whole, in one chunk, and
 * the next message after it. */
START_TEST(a_frame_larger_than_a_batch_arrives_whole)
{
    it_server_t s;
    it_opts_t o;
    reader_t r;
    size_t n = 11 * 1024 * 1024;
    char *big = malloc(n + 1), *head = malloc(256);
    int fd;

    memset(&o, 0, sizeof(o));
    o.extra = "CometMaxMessageSize 11M\nCometMaxPendingBytes 80M\n"
              "CometSharedMemorySize 128M\n";
    ck_assert_int_eq(it_server_start(&s, &o), 0);
    reader_open(&r, "plain", &s, 0, "HTTP/1.1", "/sub/huge", NULL,
                "\nid: ", 0, 0, 0);
    ck_assert(it_wait_subscribers(s.port, "huge", 1));
    memset(big, '\n', n);
    fd = it_connect_unix(s.socket_path);
    ck_assert_int_ge(fd, 0);
    snprintf(head, 256, "*3\r\n$7\r\nPUBLISH\r\n$4\r\nhuge\r\n$%zu\r\n", n);
    ck_assert_int_eq(it_send(fd, head, strlen(head)), 0);
    ck_assert_int_eq(it_send(fd, big, n), 0);
    ck_assert_int_eq(it_send(fd, "\r\n", 2), 0);
    {
        char rep[256] = "";

        ck_assert(read(fd, rep, sizeof(rep) - 1) > 0);
        ck_assert_msg(!strcmp(rep, ":1\r\n"), "publish: %s", rep);
    }
    close(fd);
    ck_assert_int_eq(it_publish(s.port, "huge", "after", NULL, NULL, 0), 201);
    {
        /* Read it all: the frame's (n + 1) "data:" lines, then "after",
         * each in a whole chunk. */
        size_t cap = 80 * 1024 * 1024, len = 0, lines = 0;
        char *all = malloc(cap);
        long long end = it_now_ms() + 60000;

        int found = 0;

        while (!found && it_now_ms() < end && len < cap) {
            struct pollfd p = { r.fd, POLLIN, 0 };
            size_t from = len > 12 ? len - 12 : 0;
            ssize_t got;

            if (poll(&p, 1, 1000) <= 0) {
                continue;
            }
            got = read(r.fd, all + len, cap - len);
            if (got <= 0) {
                break;
            }
            len += (size_t)got;
            /* Only what came since: the buffer holds tens of MB. */
            found = memmem(all + from, len - from, "data: after\n", 12)
                    != NULL;
        }
        ck_assert_msg(memmem(all, len, "data: after\n", 12), "%zu bytes",
                      len);
        {
            char *body = memmem(all, len, "\r\n\r\n", 4);

            /* De-chunk by hand: the parser's body buffer is smaller. */
            char *p = body + 4, *e = all + len, *out = malloc(len), *o2 = out;

            while (p < e) {
                char *x;
                unsigned long sz = strtoul(p, &x, 16);

                ck_assert_msg(x > p && x[0] == '\r' && x[1] == '\n',
                              "broken chunk at %zu", (size_t)(p - all));
                if (!sz || x + 2 + sz + 2 > e) {
                    break;
                }
                memcpy(o2, x + 2, sz);
                o2 += sz;
                ck_assert(x[2 + sz] == '\r' && x[3 + sz] == '\n');
                p = x + 4 + sz;
            }
            for (char *q = out; q + 6 <= o2; q++) {
                /* One pass: every "data:" line of the frame is empty. */
                if (*q == '\n' && q >= out + 5 && !memcmp(q - 5, "data:", 5)) {
                    lines++;
                }
            }
            ck_assert_uint_eq(lines, n + 1);
            ck_assert_ptr_nonnull(memmem(out, (size_t)(o2 - out),
                                         "data:\n\nid: ", 11));
            free(out);
        }
        free(all);
    }
    ck_assert_int_eq(it_status_value(s.port, "CometDroppedSlow"), 0);
    reader_close(&r);
    it_server_stop(&s);
    free(big);
    free(head);
}
END_TEST

/* ---- finding 5: limits count what is really pending --------------------- */

/* A 256 KiB message of newlines is some 1.5 MB of SSE (control bytes do
 * the same in JSON): with the defaults, readers at full speed (plain,
 * TLS, HTTP/1.0; SSE and ndjson) are not dropped. */
START_TEST(readers_at_full_speed_survive_a_256k_message_that_framing_grows)
{
    it_server_t s;
    it_opts_t o;
    reader_t r[4];
    size_t n = 256 * 1024;
    char *nl = malloc(n + 8), *ctl = malloc(n + 8);
    char *head = malloc(256);
    int fd;

    memset(&o, 0, sizeof(o));
    o.tls = 1;
    o.extra = "KeepAliveTimeout 1\n";
    ck_assert_int_eq(it_server_start(&s, &o), 0);
    reader_open(&r[0], "plain", &s, 0, "HTTP/1.1", "/sub/grow", NULL,
                "data: ", 0, 2, 0);
    reader_open(&r[1], "TLS", &s, 1, "HTTP/1.1", "/sub/grow", NULL,
                "data: ", 0, 2, 0);
    reader_open(&r[2], "HTTP/1.0", &s, 0, "HTTP/1.0", "/sub/grow", NULL,
                "data: ", 0, 2, 0);
    memset(&r[3], 0, sizeof(r[3]));
    r[3].name = "ndjson";
    r[3].want = 2;
    seqchk_init(&r[3].chk, "\"data\":\"", 0);
    r[3].fd = it_connect(s.port);
    ck_assert_int_ge(r[3].fd, 0);
    ck_assert_int_eq(it_sendf(r[3].fd, "GET /sub/grow HTTP/1.1\r\nHost: x\r\n"
                              "Accept: application/x-ndjson\r\n\r\n"), 0);
    ck_assert(it_wait_subscribers(s.port, "grow", 4));
    /* "m0 " and newlines; then "m1 " and control bytes. */
    memcpy(nl, "m0 ", 3);
    memset(nl + 3, '\n', n - 3);
    memcpy(ctl, "m1 ", 3);
    memset(ctl + 3, 0x01, n - 3);
    fd = it_connect_unix(s.socket_path);
    ck_assert_int_ge(fd, 0);
    for (int i = 0; i < 2; i++) {
        char rep[64] = "";

        snprintf(head, 256, "*3\r\n$7\r\nPUBLISH\r\n$4\r\ngrow\r\n$%zu\r\n",
                 n);
        ck_assert_int_eq(it_send(fd, head, strlen(head)), 0);
        ck_assert_int_eq(it_send(fd, i ? ctl : nl, n), 0);
        ck_assert_int_eq(it_send(fd, "\r\n", 2), 0);
        ck_assert(read(fd, rep, sizeof(rep) - 1) > 0);
        ck_assert_msg(rep[0] == ':', "publish: %s", rep);
    }
    close(fd);
    ck_assert(readers_until_done(r, 4, 30000));
    ck_assert_int_eq(it_status_value(s.port, "CometDroppedSlow"), 0);
    ck_assert_int_eq(it_subscribers(s.port, "grow"), 4);
    for (int i = 0; i < 4; i++) {
        reader_close(&r[i]);
    }
    ck_assert(it_wait_for(all_ended, &s.port, 10000));
    it_server_stop(&s);
    free(nl);
    free(ctl);
    free(head);
}
END_TEST

/* A pending bound below the largest frame of the largest message would
 * drop readers that keep up: refused at start, naming both directives. */
START_TEST(a_pending_bound_below_the_largest_frame_is_refused)
{
    it_opts_t o;
    char out[8192];

    memset(&o, 0, sizeof(o));
    o.extra = "CometMaxPendingBytes 1M\n";
    ck_assert_int_ne(it_server_try(&o, 0, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "CometMaxPendingBytes 1048576 is below")
                  && strstr(out, "CometMaxMessageSize 262144"), "%s", out);
    o.extra = "CometMaxPendingBytes 1M\nCometMaxMessageSize 128K\n";
    ck_assert_msg(it_server_try(&o, 0, out, sizeof(out)) == 0, "%s", out);
    o.extra = "CometMaxPendingBytes 2M\n";
    ck_assert_msg(it_server_try(&o, 0, out, sizeof(out)) == 0, "%s", out);
}
END_TEST

/* ---- finding 7: a long-poll far behind ---------------------------------- */

/* GET path and read the whole response, however large: the status, and
 * the body (chunking taken off) in *body (malloc()ed). */
static int get_whole(int port, const char *path, char **body, size_t *blen)
{
    size_t cap = 1 << 20, len = 0;
    char *raw = malloc(cap), *eoh, *p, *out;
    int fd = it_connect(port), status = -1;

    *body = NULL;
    *blen = 0;
    if (fd < 0 || it_sendf(fd, "GET %s HTTP/1.1\r\nHost: x\r\n"
                           "Connection: close\r\n\r\n", path)) {
        free(raw);
        return -1;
    }
    for (;;) {
        struct pollfd pf = { fd, POLLIN, 0 };
        ssize_t n;

        if (len + 65536 > cap) {
            raw = realloc(raw, cap *= 2);
        }
        if (poll(&pf, 1, 30000) <= 0
            || (n = read(fd, raw + len, 65536)) <= 0) {
            break;
        }
        len += (size_t)n;
    }
    close(fd);
    if (!(eoh = memmem(raw, len, "\r\n\r\n", 4))
        || sscanf(raw, "HTTP/1.%*d %d", &status) != 1) {
        free(raw);
        return -1;
    }
    *eoh = '\0';
    out = malloc(len + 1);
    p = eoh + 4;
    if (strcasestr(raw, "Transfer-Encoding: chunked")) {
        while (p < raw + len) {
            char *x;
            unsigned long sz = strtoul(p, &x, 16);

            if (x == p || !sz || x + 2 + sz > raw + len) {
                break;
            }
            memcpy(out + *blen, x + 2, sz);
            *blen += sz;
            p = x + 4 + sz;
        }
    }
    else {
        memcpy(out, p, (size_t)(raw + len - p));
        *blen = (size_t)(raw + len - p);
    }
    out[*blen] = '\0';
    *body = out;
    free(raw);
    return status;
}

/* 70 messages of 160 KB of control bytes (67 MB of JSON, more than any
 * answer's buffer): each answer holds what fits under the bound (at least
 * one message) and the id after it; poll after poll the client gets every
 * message once, TLS too. */
START_TEST(a_long_poll_far_behind_catches_up_poll_by_poll)
{
    it_server_t s;
    it_opts_t o;
    char id[64], first[64], path[256];
    seqchk_t chk;
    int polls = 0;

    memset(&o, 0, sizeof(o));
    o.tls = 1;
    o.extra = "CometSharedMemorySize 128M\nKeepAliveTimeout 1\n";
    ck_assert_int_eq(it_server_start(&s, &o), 0);
    ck_assert_int_eq(it_publish(s.port, "lpfar", "start", NULL, first,
                                sizeof(first)), 202);
    ck_assert_int_eq(publish_many(&s, "lpfar", 0, 70, 160 * 1024, 0x01), 0);

    /* Over TLS: the first message, and an id to go on from. */
    {
        it_tls_t t;
        char req[512];

        snprintf(req, sizeof(req), "GET /sub/lpfar?last_event_id=%s "
                 "HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", first);
        ck_assert_int_eq(it_tls_open(&t, s.tls_port, req), 0);
        ck_assert(it_tls_read_to_close(&t, 30000));
        ck_assert_msg(strstr(t.buf, "HTTP/1.1 200"), "%.200s", t.buf);
        ck_assert_ptr_nonnull(strstr(t.buf, "\"data\":\"m0 \\u0001"));
        ck_assert_ptr_null(strstr(t.buf, "\"data\":\"m2 "));
        it_tls_close(&t, 1);
    }

    seqchk_init(&chk, "\"data\":\"", 0);
    snprintf(id, sizeof(id), "%s", first);
    while (chk.next < 70 && polls < 200) {
        char *body, *p, *q;
        size_t blen;

        snprintf(path, sizeof(path), "/sub/lpfar?last_event_id=%s", id);
        ck_assert_int_eq(get_whole(s.port, path, &body, &blen), 200);
        polls++;
        ck_assert_msg(strstr(body, "\"missed\":false"), "%.200s", body);
        /* At most CometMaxPendingBytes of messages (2M by default), or
         * one message. */
        ck_assert_uint_le(blen, 2 * 1024 * 1024 + 4096);
        seqchk_feed(&chk, body, blen);
        ck_assert_msg(chk.bad < 0, "m%d where m%d was due", chk.bad,
                      chk.bad_at);
        ck_assert((p = strstr(body, "{\"id\":\"")) != NULL);
        ck_assert((q = strchr(p + 7, '"')) != NULL);
        ck_assert_int_lt(q - (p + 7), (int)sizeof(id));
        memcpy(id, p + 7, (size_t)(q - (p + 7)));
        id[q - (p + 7)] = '\0';
        free(body);
    }
    ck_assert_int_eq(chk.next, 70);
    ck_assert_int_gt(polls, 10);
    it_server_stop(&s);
}
END_TEST

/* ---- finding 11: memory comes back -------------------------------------- */

static int dropped_all(void *baton)
{
    int *v = baton;

    return it_status_value(v[0], "CometDroppedSlow") >= v[1];
}

/* Rounds of 100 subscribers that stop reading, each holding up to
 * CometMaxPendingBytes (1 MB here) until it is dropped, while subscribers
 * to new channels keep coming and staying, as on a live site: afterwards
 * the children's private memory comes back near where it was.  (Without
 * the newcomers the allocator would give back the top of the hub's heap by
 * itself; their channel records, made on the hub thread, pin it, as real
 * traffic does.  And in the first round it serves large buffers from mmap,
 * only after freeing one from its heap.) */
START_TEST(memory_taken_by_slow_subscribers_comes_back)
{
    enum { N = 100, ROUNDS = 3 };
    it_server_t s;
    it_opts_t o;
    int fds[N], arg[2], pins[ROUNDS * 10];
    long rss0, rss_peak = 0, rss1, fds0, fds1;
    long long end;

    memset(&o, 0, sizeof(o));
    o.extra = "CometMaxPendingBytes 1M\nCometMaxMessageSize 64K\n";
    ck_assert_int_eq(it_server_start(&s, &o), 0);
    /* Warm up: the first subscribers and publishes allocate for good. */
    for (int i = 0; i < 4; i++) {
        fds[i] = it_connect(s.port);
        ck_assert_int_eq(it_sendf(fds[i], "%s", sse_request("/sub/warm",
                                                            "HTTP/1.1",
                                                            NULL)), 0);
    }
    ck_assert(it_wait_subscribers(s.port, "warm", 4));
    ck_assert_int_eq(publish_many(&s, "warm", 0, 4, 1000, 'w'), 0);
    for (int i = 0; i < 4; i++) {
        close(fds[i]);
    }
    ck_assert(it_wait_subscribers(s.port, "warm", 0));
    it_children_usage(&s, &rss0, &fds0);

    arg[0] = s.port;
    for (int round = 0; round < ROUNDS; round++) {
        for (int i = 0; i < N; i++) {
            fds[i] = it_connect_rcvbuf(s.port, 4096);
            ck_assert_int_ge(fds[i], 0);
            ck_assert_int_eq(it_sendf(fds[i], "%s",
                                      sse_request("/sub/slowmem", "HTTP/1.1",
                                                  NULL)), 0);
        }
        ck_assert(it_wait_subscribers(s.port, "slowmem", N));
        /* 64 KB messages until every one of them is dropped; newcomers
         * arrive (and stay) while the slow ones hold their bytes. */
        arg[1] = N * (round + 1);
        for (int i = 0; i < 60 && !dropped_all(arg); i++) {
            ck_assert_int_eq(publish_many(&s, "slowmem", i, i + 1, 60000,
                                          's'), 0);
            it_children_usage(&s, &rss1, &fds1);
            if (rss1 > rss_peak) {
                rss_peak = rss1;
            }
            if (i == 12) {
                for (int k = round * 10; k < round * 10 + 10; k++) {
                    char path[64];

                    snprintf(path, sizeof(path), "/sub/pin%d", k);
                    pins[k] = it_connect(s.port);
                    ck_assert_int_eq(it_sendf(pins[k], "%s", sse_request(
                                     path, "HTTP/1.1", NULL)), 0);
                    ck_assert(it_wait_subscribers(s.port, path + 5, 1));
                }
            }
        }
        ck_assert(it_wait_for(dropped_all, arg, 10000));
        for (int i = 0; i < N; i++) {
            close(fds[i]);
        }
        ck_assert(it_wait_subscribers(s.port, "slowmem", 0));
    }
    /* The hub's tick gives memory back within a second or two. */
    end = it_now_ms() + 15000;
    do {
        it_children_usage(&s, &rss1, &fds1);
    } while (rss1 > rss0 + 16 * 1024 && it_now_ms() < end
             && usleep(200000) == 0);
    fprintf(stderr, "slow subscribers: children private RSS %ld kB before, "
            "%ld kB at most while %d were filling (%d rounds), %ld kB after "
            "they were dropped\n", rss0, rss_peak, N, ROUNDS, rss1);
    if (!getenv("COMET_ASAN")) {
        ck_assert_msg(rss_peak > rss0 + 32 * 1024, "the test filled nothing "
                      "(%ld -> %ld kB)", rss0, rss_peak);
        ck_assert_msg(rss1 <= rss0 + 16 * 1024, "private RSS %ld kB, was "
                      "%ld kB before", rss1, rss0);
    }
    for (int k = 0; k < ROUNDS * 10; k++) {
        close(pins[k]);
    }
    it_server_stop(&s);
}
END_TEST

/* One case a test, so that CK_RUN_CASE runs one alone. */
static void add_case(Suite *s, const char *name, const TTest *test)
{
    TCase *tc = tcase_create(name);

    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test);
    suite_add_tcase(s, tc);
}

Suite *test_hardening_delivery_suite(void)
{
    Suite *s = suite_create("hardening_delivery");

    add_case(s, "backlog", a_backlog_nobody_reads_blocks_no_worker);
    add_case(s, "catchup",
             a_subscriber_resuming_5000_behind_gets_all_in_order_once);
    add_case(s, "frame", a_frame_larger_than_a_batch_arrives_whole);
    add_case(s, "growth",
             readers_at_full_speed_survive_a_256k_message_that_framing_grows);
    add_case(s, "config", a_pending_bound_below_the_largest_frame_is_refused);
    add_case(s, "longpoll", a_long_poll_far_behind_catches_up_poll_by_poll);
    add_case(s, "memory", memory_taken_by_slow_subscribers_comes_back);
    return s;
}
