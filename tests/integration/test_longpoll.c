/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* Long-poll at streaming's cost, against the real apache2 (event MPM, two
 * children): a parked long-poll's head leaves with its answer, in one
 * send; its connection is kept for the next request, which httpd serves
 * as any other (access control, other handlers, pipelining), until
 * KeepAliveTimeout, a graceful restart or a stop. */

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "comet_buf.h"
#include "comet_ws.h"
#include "harness.h"

static it_server_t srv;

static void start(void)
{
    it_opts_t o;

    memset(&o, 0, sizeof(o));
    o.extra =
        "<Location /lp3/>\n  SetHandler comet-subscriber\n"
        "  CometSubscriberTimeout 3\n</Location>\n"
        "<Location /linger/>\n  SetHandler comet-subscriber\n"
        "  CometLongPollLinger 2000\n</Location>\n";
    ck_assert_int_eq(it_server_start(&srv, &o), 0);
}

static void stop(void)
{
    it_server_stop(&srv);
}

/* Bytes waiting on fd now, without reading them (0: none). */
static ssize_t waiting(int fd)
{
    char b[64];
    ssize_t n = recv(fd, b, sizeof(b), MSG_PEEK | MSG_DONTWAIT);

    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : n;
}

/* ---- the held-back head --------------------------------------------------- */

START_TEST(a_parked_long_poll_sends_its_head_with_the_answer)
{
    it_sub_t s;
    it_response_t *res = malloc(sizeof(*res));
    char id[64], want[128], ctype[128];

    ck_assert_int_eq(it_sub_send(&s, srv.port, "/sub/held", NULL), 0);
    /* Detached: the hub has it, so the handler is done with the head. */
    ck_assert(it_wait_status(srv.port, "CometDetached", 1));
    ck_assert_msg(waiting(s.fd) == 0, "the head left before the answer");

    ck_assert_int_eq(it_publish(srv.port, "held", "one", NULL, id,
                                sizeof(id)), 201);
    ck_assert_int_eq(it_read_until(s.fd, s.buf, IT_SUB_BUFSZ, &s.len, 0,
                                   "\r\n0\r\n\r\n", 5000), 1);
    ck_assert_int_eq(it_parse_response(s.buf, s.len, res), 0);
    ck_assert_int_eq(res->status, 200);
    ck_assert(res->chunked_complete);
    ck_assert_ptr_nonnull(it_header(res, "Content-Type", ctype,
                                    sizeof(ctype)));
    ck_assert_ptr_nonnull(strstr(ctype, "application/json"));
    snprintf(want, sizeof(want), "{\"id\":\"%s\"", id);
    ck_assert_msg(strstr(res->body, want), "got %s", res->body);
    ck_assert_ptr_nonnull(strstr(res->body, "\"data\":\"one\""));
    it_sub_close(&s);
    free(res);
}
END_TEST

START_TEST(a_long_poll_that_times_out_sends_its_head_with_the_empty_answer)
{
    it_sub_t s;
    it_response_t *res = malloc(sizeof(*res));

    ck_assert_int_eq(it_sub_send(&s, srv.port, "/lp3/quiet", NULL), 0);
    ck_assert(it_wait_status(srv.port, "CometDetached", 1));
    ck_assert_msg(waiting(s.fd) == 0, "the head left before the answer");
    ck_assert_int_eq(it_read_until(s.fd, s.buf, IT_SUB_BUFSZ, &s.len, 0,
                                   "\r\n0\r\n\r\n", 10000), 1);
    ck_assert_int_eq(it_parse_response(s.buf, s.len, res), 0);
    ck_assert_int_eq(res->status, 200);
    ck_assert_msg(strstr(res->body, "\"messages\":[]"), "got %s", res->body);
    it_sub_close(&s);
    free(res);
}
END_TEST

/* Streams need their head at once (EventSource's open event), and so
 * does a long-poll that is answered at once. */
START_TEST(streams_and_immediate_answers_send_their_head_at_once)
{
    it_sub_t s;
    it_response_t *res = malloc(sizeof(*res));
    char id[64], path[128];

    ck_assert_int_eq(it_sub_open(&s, srv.port, "/sub/heads",
                                 "Accept: text/event-stream\r\n"), 0);
    ck_assert_ptr_nonnull(strstr(s.buf, " 200 "));
    it_sub_close(&s);
    /* (The stream may still be counted: 201 or 202.) */
    ck_assert_int_ge(it_publish(srv.port, "heads", "kept", NULL, id,
                                sizeof(id)), 201);
    snprintf(path, sizeof(path), "/sub/heads?backlog=1");
    ck_assert_int_eq(it_http(srv.port, "GET", path, NULL, NULL, 0, res,
                             5000), 0);
    ck_assert_int_eq(res->status, 200);
    ck_assert_ptr_nonnull(strstr(res->body, "\"data\":\"kept\""));
    free(res);
}
END_TEST

/* ---- CometLongPollLinger ------------------------------------------------------ */

START_TEST(a_lingering_long_poll_answers_a_burst_in_one_answer)
{
    it_sub_t s;
    it_rpub_t pub;
    it_response_t *res = malloc(sizeof(*res));
    struct pollfd p;
    const char *b1, *b2, *b3;

    ck_assert_int_eq(it_sub_send(&s, srv.port, "/linger/burst", NULL), 0);
    ck_assert(it_wait_subscribers(srv.port, "burst", 1));
    it_rpub_init(&pub, srv.socket_path);
    ck_assert_int_eq(it_rpub_publish(&pub, "burst", "b1", 2, 10000), 1);
    /* The first message does not answer: the poll lingers (2 s). */
    p.fd = s.fd;
    p.events = POLLIN;
    ck_assert_int_eq(poll(&p, 1, 300), 0);
    ck_assert_int_ge(it_rpub_publish(&pub, "burst", "b2", 2, 10000), 0);
    ck_assert_int_ge(it_rpub_publish(&pub, "burst", "b3", 2, 10000), 0);
    it_rpub_close(&pub);
    ck_assert_int_eq(it_read_until(s.fd, s.buf, IT_SUB_BUFSZ, &s.len, 0,
                                   "\r\n0\r\n\r\n", 10000), 1);
    ck_assert_int_eq(it_parse_response(s.buf, s.len, res), 0);
    ck_assert_int_eq(res->status, 200);
    b1 = strstr(res->body, "\"data\":\"b1\"");
    b2 = strstr(res->body, "\"data\":\"b2\"");
    b3 = strstr(res->body, "\"data\":\"b3\"");
    ck_assert_msg(b1 && b2 && b3 && b1 < b2 && b2 < b3, "got %s", res->body);
    it_sub_close(&s);
    free(res);
}
END_TEST

START_TEST(a_bad_linger_is_refused_naming_the_directive)
{
    char out[8192];
    it_opts_t o;

    memset(&o, 0, sizeof(o));
    o.extra = "<Location /x/>\n  SetHandler comet-subscriber\n"
              "  CometLongPollLinger soon\n</Location>\n";
    ck_assert_int_ne(it_server_try(&o, 0, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "CometLongPollLinger: 'soon'"), "%s", out);
    o.extra = "<Location /x/>\n  SetHandler comet-subscriber\n"
              "  CometLongPollLinger 10001\n</Location>\n";
    ck_assert_int_ne(it_server_try(&o, 0, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "0 to 10000"), "%s", out);
}
END_TEST

/* ---- kept connections --------------------------------------------------------- */

/* A client connection that polls again and again on one socket. */
typedef struct lp_conn_t {
    int    fd;
    char   buf[64 * 1024];
    size_t len;
    char   id[128];        /* the last answer's id                       */
    int    status;
    int    close;          /* the answer said Connection: close          */
    int    pending;        /* a poll is on its way                       */
    long   answers;
} lp_conn_t;

static void lp_poll(lp_conn_t *k, const char *path, const char *hdrs)
{
    char q[512];

    if (k->id[0]) {
        snprintf(q, sizeof(q), "%s%slast_event_id=%s", path,
                 strchr(path, '?') ? "&" : "?", k->id);
    }
    else {
        snprintf(q, sizeof(q), "%s", path);
    }
    ck_assert_int_eq(it_sendf(k->fd, "GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n",
                              q, hdrs ? hdrs : ""), 0);
    k->pending = 1;
}

/* Whether buf[0, len) holds a whole response (Content-Length or chunked);
 * its length then. */
static size_t lp_whole(const char *buf, size_t len)
{
    const char *eoh = memmem(buf, len, "\r\n\r\n", 4), *cl, *end;
    size_t hl;

    if (!eoh) {
        return 0;
    }
    hl = (size_t)(eoh - buf) + 4;
    cl = memmem(buf, hl, "Content-Length: ", 16);
    if (cl) {
        size_t n = (size_t)atol(cl + 16);

        return len >= hl + n ? hl + n : 0;
    }
    end = memmem(eoh + 4, len - hl, "\r\n0\r\n\r\n", 7);
    if (!end && len - hl >= 5 && !memcmp(eoh + 4, "0\r\n\r\n", 5)) {
        return hl + 5;
    }
    return end ? (size_t)(end - buf) + 7 : 0;
}

/* Take a whole response out of k->buf, if there: 1, else 0. */
static int lp_take(lp_conn_t *k, it_response_t *res)
{
    size_t n = lp_whole(k->buf, k->len);
    char conn[64];

    if (!n) {
        return 0;
    }
    ck_assert_int_eq(it_parse_response(k->buf, n, res), 0);
    k->status = res->status;
    k->close = it_header(res, "Connection", conn, sizeof(conn))
               && strcasestr(conn, "close");
    if (res->status == 200) {
        sscanf(res->body, "{\"id\":\"%127[^\"]\"", k->id);
    }
    memmove(k->buf, k->buf + n, k->len - n);
    k->len -= n;
    k->pending = 0;
    k->answers++;
    return 1;
}

/* Read one whole response (bounded wait): 1, else 0. */
static int lp_answer(lp_conn_t *k, it_response_t *res, int timeout_ms)
{
    long long end = it_now_ms() + timeout_ms;

    while (!lp_take(k, res)) {
        struct pollfd p = { k->fd, POLLIN, 0 };
        ssize_t n;

        if (it_now_ms() >= end || poll(&p, 1, 100) < 0) {
            if (it_now_ms() >= end) {
                return 0;
            }
            continue;
        }
        if (!(p.revents & (POLLIN | POLLHUP | POLLERR))) {
            continue;
        }
        n = recv(k->fd, k->buf + k->len, sizeof(k->buf) - k->len - 1, 0);
        if (n <= 0) {
            return 0;
        }
        k->len += (size_t)n;
    }
    return 1;
}

static void lp_open(lp_conn_t *k, int port)
{
    memset(k, 0, sizeof(*k));
    k->fd = it_connect(port);
    ck_assert_int_ge(k->fd, 0);
}

static void kept_start(it_server_t *s, const char *more)
{
    it_opts_t o;
    char *extra = malloc(4096);

    snprintf(extra, 4096,
             "KeepAlive On\nKeepAliveTimeout 3\nMaxKeepAliveRequests 100\n"
             "<Location /guarded/>\n  SetHandler comet-subscriber\n"
             "  Require expr \"%%{HTTP:X-Allow} == 'yes'\"\n</Location>\n"
             "<Location /nokeep/>\n  SetHandler comet-subscriber\n"
             "  CometLongPollKeepAlive off\n</Location>\n%s",
             more ? more : "");
    memset(&o, 0, sizeof(o));
    o.extra = extra;
    ck_assert_int_eq(it_server_start(s, &o), 0);
    free(extra);
}

/* One parked poll on k answered by a publish to chan. */
static void poll_answered(it_server_t *s, lp_conn_t *k, const char *path,
                          const char *chan, const char *msg,
                          const char *hdrs, long detached)
{
    it_response_t *res = malloc(sizeof(*res));
    char want[128];

    lp_poll(k, path, hdrs);
    ck_assert(it_wait_subscribers(s->port, chan, 1));
    ck_assert_int_eq(it_publish(s->port, chan, msg, NULL, NULL, 0), 201);
    ck_assert_msg(lp_answer(k, res, 10000), "no answer on the connection");
    ck_assert_int_eq(res->status, 200);
    snprintf(want, sizeof(want), "\"data\":\"%s\"", msg);
    ck_assert_msg(strstr(res->body, want), "got %s", res->body);
    free(res);
}

START_TEST(a_kept_connection_serves_the_second_and_third_polls)
{
    it_server_t s;
    lp_conn_t *k = malloc(sizeof(*k));
    long served0;

    kept_start(&s, NULL);
    lp_open(k, s.port);
    poll_answered(&s, k, "/sub/ka", "ka", "m1", NULL, 1);
    ck_assert_msg(!k->close, "the answer closed the connection");
    ck_assert(it_wait_status(s.port, "CometKept", 1));
    served0 = it_status_value(s.port, "CometKeptRequests");
    poll_answered(&s, k, "/sub/ka", "ka", "m2", NULL, 1);
    poll_answered(&s, k, "/sub/ka", "ka", "m3", NULL, 1);
    /* Both later polls came over the kept connection. */
    ck_assert(it_wait_status(s.port, "CometKeptRequests", served0 + 2));
    ck_assert_int_eq(k->answers, 3);
    ck_assert(it_wait_status(s.port, "CometKept", 1));

    /* A location that does not keep: the answer says close. */
    close(k->fd);
    lp_open(k, s.port);
    k->id[0] = '\0';
    poll_answered(&s, k, "/nokeep/x", "x", "m1", NULL, 1);
    ck_assert(k->close);
    close(k->fd);
    free(k);
    it_server_stop(&s);
}
END_TEST

START_TEST(an_ordinary_request_on_a_kept_connection_gets_an_ordinary_answer)
{
    it_server_t s;
    lp_conn_t *k = malloc(sizeof(*k));
    it_response_t *res = malloc(sizeof(*res));

    kept_start(&s, NULL);
    lp_open(k, s.port);
    poll_answered(&s, k, "/sub/ord", "ord", "m1", NULL, 1);
    ck_assert(it_wait_status(s.port, "CometKept", 1));
    /* A file, a 404, then a poll again, all on the same connection. */
    ck_assert_int_eq(it_sendf(k->fd, "GET /index.html HTTP/1.1\r\nHost: x"
                              "\r\n\r\n"), 0);
    ck_assert(lp_answer(k, res, 10000));
    ck_assert_int_eq(res->status, 200);
    ck_assert_str_eq(res->body, "hello from the document root\n");
    ck_assert_int_eq(it_sendf(k->fd, "GET /nothing-here HTTP/1.1\r\nHost: x"
                              "\r\n\r\n"), 0);
    ck_assert(lp_answer(k, res, 10000));
    ck_assert_int_eq(res->status, 404);
    ck_assert(!k->close);
    poll_answered(&s, k, "/sub/ord", "ord", "m2", NULL, 1);
    /* Two requests in one segment: both answered, in order. */
    ck_assert_int_eq(it_sendf(k->fd, "GET /index.html HTTP/1.1\r\nHost: x"
                              "\r\n\r\nGET /gone HTTP/1.1\r\nHost: x\r\n\r\n"),
                     0);
    ck_assert(lp_answer(k, res, 10000));
    ck_assert_int_eq(res->status, 200);
    ck_assert(lp_answer(k, res, 10000));
    ck_assert_int_eq(res->status, 404);
    close(k->fd);
    free(res);
    free(k);
    it_server_stop(&s);
}
END_TEST

START_TEST(access_control_applies_to_every_request_on_a_kept_connection)
{
    it_server_t s;
    lp_conn_t *k = malloc(sizeof(*k));
    it_response_t *res = malloc(sizeof(*res));

    kept_start(&s, NULL);
    lp_open(k, s.port);
    poll_answered(&s, k, "/guarded/g", "g", "m1", "X-Allow: yes\r\n", 1);
    ck_assert(it_wait_status(s.port, "CometKept", 1));
    lp_poll(k, "/guarded/g", NULL);
    ck_assert(lp_answer(k, res, 10000));
    ck_assert_int_eq(res->status, 403);
    ck_assert(it_log_count(&s, "AH01630") >= 1);
    close(k->fd);
    free(res);
    free(k);
    it_server_stop(&s);
}
END_TEST

/* A WebSocket upgrade as the next request on a kept connection: httpd
 * serves it as on any connection (101), and the socket becomes a
 * WebSocket of the hub's that receives, pings and closes as any other;
 * the kept record is gone (a WebSocket is never a kept long-poll). */
START_TEST(a_websocket_upgrade_on_a_kept_connection_becomes_a_websocket)
{
    static const unsigned char mask[4] = { 1, 2, 3, 4 };
    it_server_t s;
    lp_conn_t *k = malloc(sizeof(*k));
    char mem[64];
    comet_buf_t b;
    size_t from;

    kept_start(&s, NULL);
    lp_open(k, s.port);
    poll_answered(&s, k, "/sub/kw", "kw", "m1", NULL, 1);
    ck_assert(it_wait_status(s.port, "CometKept", 1));
    ck_assert_int_eq(it_sendf(k->fd, "GET /sub/kw HTTP/1.1\r\nHost: x\r\n"
                              "Upgrade: websocket\r\nConnection: Upgrade"
                              "\r\nSec-WebSocket-Key: "
                              "dGhlIHNhbXBsZSBub25jZQ==\r\n"
                              "Sec-WebSocket-Version: 13\r\n\r\n"), 0);
    k->len = 0;
    ck_assert_int_eq(it_read_until(k->fd, k->buf, sizeof(k->buf), &k->len, 0,
                                   "\r\n\r\n", 10000), 1);
    ck_assert_msg(!strncmp(k->buf, "HTTP/1.1 101 ", 13), "%s", k->buf);
    ck_assert(strcasestr(k->buf, "Sec-WebSocket-Accept: "
                         "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    /* Now a WebSocket subscriber, no longer a kept connection. */
    ck_assert(it_wait_subscribers(s.port, "kw", 1));
    ck_assert(it_wait_status(s.port, "CometKept", 0));
    from = k->len;
    ck_assert_int_eq(it_publish(s.port, "kw", "over the socket", NULL, NULL,
                                0), 201);
    ck_assert_int_eq(it_read_until(k->fd, k->buf, sizeof(k->buf), &k->len,
                                   from, "over the socket", 10000), 1);
    /* Our close frame: the server answers it and closes. */
    comet_buf_wrap(&b, mem, sizeof(mem));
    comet_ws_frame_client(&b, COMET_WS_OP_CLOSE, 1, 0, mask, "\x03\xe8", 2);
    ck_assert_int_eq(it_send(k->fd, b.data, b.len), 0);
    ck_assert_int_eq(it_read_to_close(k->fd, k->buf, sizeof(k->buf), &k->len,
                                      10000), 1);
    ck_assert(it_wait_subscribers(s.port, "kw", 0));
    close(k->fd);
    free(k);
    it_server_stop(&s);
}
END_TEST

START_TEST(an_idle_kept_connection_is_closed_after_keepalivetimeout)
{
    it_server_t s;
    lp_conn_t *k = malloc(sizeof(*k));
    long long t0;

    kept_start(&s, NULL);
    lp_open(k, s.port);
    poll_answered(&s, k, "/sub/idle", "idle", "m1", NULL, 1);
    ck_assert(it_wait_status(s.port, "CometKept", 1));
    t0 = it_now_ms();
    k->len = 0;
    ck_assert_int_eq(it_read_to_close(k->fd, k->buf, sizeof(k->buf), &k->len,
                                      15000), 1);
    /* KeepAliveTimeout 3 */
    ck_assert_msg(it_now_ms() - t0 >= 1500, "closed after %lld ms",
                  it_now_ms() - t0);
    ck_assert_int_eq(k->len, 0);
    ck_assert(it_wait_status(s.port, "CometKept", 0));

    /* A half-sent head keeps no worker: the rest comes, it is served. */
    close(k->fd);
    lp_open(k, s.port);
    k->id[0] = '\0';
    poll_answered(&s, k, "/sub/idle", "idle", "m2", NULL, 1);
    ck_assert(it_wait_status(s.port, "CometKept", 1));
    ck_assert_int_eq(it_sendf(k->fd, "GET /index.html HTTP/1.1\r\nHo"), 0);
    ck_assert(it_wait_status(s.port, "BusyWorkers", 1));
    ck_assert_int_eq(it_sendf(k->fd, "st: x\r\n\r\n"), 0);
    {
        it_response_t *res = malloc(sizeof(*res));

        ck_assert(lp_answer(k, res, 10000));
        ck_assert_int_eq(res->status, 200);
        free(res);
    }
    close(k->fd);
    free(k);
    it_server_stop(&s);
}
END_TEST

/* A large response to a client that does not read keeps no worker: the
 * hub waits for room, callbacks write on. */
START_TEST(a_slow_reader_on_a_kept_connection_holds_no_worker)
{
    enum { SIZE = 16 * 1024 * 1024 };
    it_server_t s;
    lp_conn_t *k = malloc(sizeof(*k));
    char path[600], *chunk = malloc(65536), *eoh;
    size_t got = 0, want;
    FILE *f;

    /* With sendfile the core output filter keeps the file's rest as a
     * file, not in memory: the response needs no flow control, its write
     * completion is ours (without it httpd's own flow control makes the
     * handler wait, as on any connection). */
    kept_start(&s, "EnableSendfile On\n");
    snprintf(path, sizeof(path), "%s/htdocs/big.bin", s.dir);
    ck_assert_ptr_nonnull(f = fopen(path, "w"));
    memset(chunk, 'b', 65536);
    for (int i = 0; i < SIZE / 65536; i++) {
        ck_assert_int_eq(fwrite(chunk, 1, 65536, f), 65536);
    }
    fclose(f);
    memset(k, 0, sizeof(*k));
    k->fd = it_connect_rcvbuf(s.port, 4096);
    ck_assert_int_ge(k->fd, 0);
    poll_answered(&s, k, "/sub/big", "big", "m1", NULL, 1);
    ck_assert(it_wait_status(s.port, "CometKept", 1));
    ck_assert_int_eq(it_sendf(k->fd, "GET /big.bin HTTP/1.1\r\nHost: x"
                              "\r\n\r\n"), 0);
    /* Its first bytes come; then no worker waits while we do not read. */
    ck_assert_int_eq(it_read_until(k->fd, k->buf, sizeof(k->buf), &k->len, 0,
                                   "\r\n\r\n", 10000), 1);
    ck_assert(it_wait_status(s.port, "CometKeptRequests", 1));
    ck_assert(it_wait_status(s.port, "BusyWorkers", 1));
    /* Then all of it arrives, and the connection serves on. */
    ck_assert_ptr_nonnull(eoh = strstr(k->buf, "\r\n\r\n"));
    ck_assert_ptr_nonnull(strstr(k->buf, "Content-Length: 16777216"));
    got = k->len - (size_t)(eoh + 4 - k->buf);
    want = SIZE;
    while (got < want) {
        ssize_t n = recv(k->fd, chunk, 65536, 0);

        ck_assert_msg(n > 0, "closed after %zu bytes of %zu", got, want);
        got += (size_t)n;
    }
    ck_assert_int_eq(got, want);
    k->len = 0;
    poll_answered(&s, k, "/sub/big", "big", "m2", NULL, 1);
    close(k->fd);
    free(chunk);
    free(k);
    it_server_stop(&s);
}
END_TEST

/* Each connection of ks[0, n) read until the server closes it. */
static int all_closed(lp_conn_t *ks, int n, int timeout_ms)
{
    for (int i = 0; i < n; i++) {
        if (it_read_to_close(ks[i].fd, ks[i].buf, sizeof(ks[i].buf),
                             &ks[i].len, timeout_ms) != 1) {
            return 0;
        }
    }
    return 1;
}

START_TEST(restart_and_stop_close_kept_connections)
{
    enum { N = 20, P = 5 };
    it_server_t s;
    lp_conn_t *ks = calloc(N + P, sizeof(*ks));
    it_response_t *res = malloc(sizeof(*res));
    char path[64];

    kept_start(&s, "KeepAliveTimeout 60\n");
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < N + P; i++) {
            lp_open(&ks[i], s.port);
            snprintf(path, sizeof(path), "/sub/r%d", i);
            lp_poll(&ks[i], path, NULL);
        }
        ck_assert(it_wait_status(s.port, "CometDetached", N + P));
        for (int i = 0; i < N; i++) {
            char chan[16];

            snprintf(chan, sizeof(chan), "r%d", i);
            ck_assert_int_eq(it_publish(s.port, chan, "x", NULL, NULL, 0),
                             201);
            ck_assert(lp_answer(&ks[i], res, 10000));
            ck_assert_int_eq(res->status, 200);
        }
        ck_assert(it_wait_status(s.port, "CometKept", N));
        if (round == 0) {
            ck_assert_int_eq(it_server_graceful(&s), 0);
        }
        else {
            it_server_stop_now(&s);
        }
        /* The parked polls get their empty answer first, then all close. */
        for (int i = N; i < N + P; i++) {
            ck_assert(lp_answer(&ks[i], res, 10000));
            ck_assert_msg(strstr(res->body, "\"messages\":[]"), "%s",
                          res->body);
        }
        ck_assert_msg(all_closed(ks, N + P, 10000), "a kept connection "
                      "outlived the %s", round ? "stop" : "restart");
        for (int i = 0; i < N + P; i++) {
            close(ks[i].fd);
        }
        if (round == 0) {
            /* The new generation keeps connections too. */
            ck_assert(it_wait_status(s.port, "CometKept", 0));
        }
    }
    free(ks);
    free(res);
    it_server_stop(&s);
}
END_TEST

/* Polls on n connections, each again as soon as answered, while a
 * publisher sends one message each time every client has the last. */
static void poll_cycles(it_server_t *s, lp_conn_t *ks, int n, long cycles)
{
    it_rpub_t pub;
    it_response_t *res = malloc(sizeof(*res));
    struct pollfd *pfd = calloc((size_t)n, sizeof(*pfd));
    long done = 0, seq = 0;
    int have = n;

    it_rpub_init(&pub, s->socket_path);
    for (int i = 0; i < n; i++) {
        lp_poll(&ks[i], "/sub/cycle", NULL);
    }
    /* (Later polls name their position; the first ones start at "now".) */
    ck_assert(it_wait_subscribers(s->port, "cycle", n));
    while (done < cycles) {
        if (have == n) {
            char msg[32];

            snprintf(msg, sizeof(msg), "c%ld", ++seq);
            ck_assert_int_ge(it_rpub_publish(&pub, "cycle", msg,
                                             strlen(msg), 10000), 0);
            have = 0;
        }
        for (int i = 0; i < n; i++) {
            pfd[i].fd = ks[i].fd;
            pfd[i].events = POLLIN;
        }
        if (poll(pfd, (nfds_t)n, 10000) <= 0) {
            int waiting = 0;

            for (int i = 0; i < n; i++) {
                waiting += ks[i].pending;
            }
            ck_abort_msg("no answer for 10 s after %ld cycles: message "
                         "c%ld reached %d of %d clients, %d polls waiting; "
                         "server: %ld detached, %ld kept, %ld subscribed",
                         done, seq, have, n, waiting,
                         it_status_value(s->port, "CometDetached"),
                         it_status_value(s->port, "CometKept"),
                         it_status_value(s->port, "CometSubscribers"));
        }
        for (int i = 0; i < n; i++) {
            ssize_t r;

            if (!(pfd[i].revents & (POLLIN | POLLHUP | POLLERR))) {
                continue;
            }
            r = recv(ks[i].fd, ks[i].buf + ks[i].len,
                     sizeof(ks[i].buf) - ks[i].len - 1, 0);
            ck_assert_msg(r > 0, "connection %d closed after %ld answers",
                          i, ks[i].answers);
            ks[i].len += (size_t)r;
            while (lp_take(&ks[i], res)) {
                char want[32];

                ck_assert_int_eq(res->status, 200);
                ck_assert(!ks[i].close);
                snprintf(want, sizeof(want), "\"data\":\"c%ld\"", seq);
                if (strstr(res->body, want)) {
                    have++;
                }
                done++;
                lp_poll(&ks[i], "/sub/cycle", NULL);
            }
        }
    }
    /* The last polls wait parked: end them with one more message. */
    ck_assert_int_ge(it_rpub_publish(&pub, "cycle", "end", 3, 10000), 0);
    for (int i = 0; i < n; i++) {
        if (ks[i].pending) {
            ck_assert(lp_answer(&ks[i], res, 10000));
        }
    }
    it_rpub_close(&pub);
    free(pfd);
    free(res);
}

START_TEST(fifty_thousand_poll_cycles_leave_memory_and_descriptors_flat)
{
    enum { N = 50 };
    it_server_t s;
    lp_conn_t *ks = calloc(N, sizeof(*ks));
    long rss0, fds0, rss1, fds1;

    kept_start(&s, "KeepAliveTimeout 60\nMaxKeepAliveRequests 0\n");
    for (int i = 0; i < N; i++) {
        lp_open(&ks[i], s.port);
    }
    /* Warm up: pools, free lists and buffers reach their working size. */
    poll_cycles(&s, ks, N, 10000);
    ck_assert(it_wait_status(s.port, "CometKept", N));
    it_children_usage(&s, &rss0, &fds0);
    poll_cycles(&s, ks, N, 50000);
    ck_assert(it_wait_status(s.port, "CometKept", N));
    it_children_usage(&s, &rss1, &fds1);
    fprintf(stderr, "50,000 long-poll cycles on %d kept connections: "
            "children RssAnon %ld -> %ld kB, descriptors %ld -> %ld; %ld "
            "requests on kept connections\n", N, rss0, rss1, fds0, fds1,
            it_status_value(s.port, "CometKeptRequests"));
    ck_assert_msg(fds1 <= fds0, "descriptors grew from %ld to %ld", fds0,
                  fds1);
    /* (Under AddressSanitizer freed memory waits in its quarantine, up to
     * 256 MB: RSS says nothing there; ASan itself checks the heap.) */
    if (!getenv("COMET_ASAN")) {
        ck_assert_msg(rss1 - rss0 <= 2048, "RssAnon grew from %ld to %ld kB",
                      rss0, rss1);
    }
    for (int i = 0; i < N; i++) {
        close(ks[i].fd);
    }
    free(ks);
    it_server_stop(&s);
}
END_TEST

Suite *test_longpoll_suite(void)
{
    Suite *s = suite_create("longpoll");
    TCase *tc = tcase_create("head");
    TCase *kept = tcase_create("kept");

    tcase_add_checked_fixture(tc, start, stop);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, a_parked_long_poll_sends_its_head_with_the_answer);
    tcase_add_test(tc,
        a_long_poll_that_times_out_sends_its_head_with_the_empty_answer);
    tcase_add_test(tc, streams_and_immediate_answers_send_their_head_at_once);
    tcase_add_test(tc, a_lingering_long_poll_answers_a_burst_in_one_answer);
    tcase_add_test(tc, a_bad_linger_is_refused_naming_the_directive);
    suite_add_tcase(s, tc);

    tcase_set_timeout(kept, 300);
    tcase_add_test(kept, a_kept_connection_serves_the_second_and_third_polls);
    tcase_add_test(kept,
        an_ordinary_request_on_a_kept_connection_gets_an_ordinary_answer);
    tcase_add_test(kept,
        access_control_applies_to_every_request_on_a_kept_connection);
    tcase_add_test(kept,
        an_idle_kept_connection_is_closed_after_keepalivetimeout);
    tcase_add_test(kept, a_slow_reader_on_a_kept_connection_holds_no_worker);
    tcase_add_test(kept,
                   a_websocket_upgrade_on_a_kept_connection_becomes_a_websocket);
    tcase_add_test(kept, restart_and_stop_close_kept_connections);
    tcase_add_test(kept,
        fifty_thousand_poll_cycles_leave_memory_and_descriptors_flat);
    suite_add_tcase(s, kept);
    return s;
}
