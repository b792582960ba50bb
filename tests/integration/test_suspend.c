/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* Suspended subscribers end to end: TLS streams parked without a worker
 * thread each (more of them than the workers there are), clients that
 * leave, long-polls answered and timed out, graceful restart and stop
 * with parked streams, and thousands of subscribe/disconnect cycles.
 * TLS subscribers are suspended here because CometTLSDetach is off (by
 * default they are detached: test_tls.c); HTTP/1.0 ones always are.
 * Every test ends by checking that the MPM's connections are all gone
 * and that no child crashed. */

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "tls_client.h"

/* ---- helpers ------------------------------------------------------------------- */

static int publish(int port, const char *channel, const char *data)
{
    it_response_t *res = malloc(sizeof(*res));
    char path[256];
    int status = -1;

    snprintf(path, sizeof(path), "/pub/%s", channel);
    if (it_http(port, "POST", path, NULL, data, strlen(data), res, 5000)
        == 0) {
        status = res->status;
    }
    free(res);
    return status;
}

/* Nothing of a subscriber is left: no suspended or held subscriber, no
 * MPM connection counted as suspended, and no MPM connection but the
 * status request's own. */
static int all_ended(void *baton)
{
    int port = *(int *)baton;

    return it_status_value(port, "CometSuspended") == 0
           && it_status_value(port, "CometHeld") == 0
           && it_status_value(port, "CometMpmSuspended") == 0
           && it_status_value(port, "CometMpmConnections") <= 1;
}

/* The MPM's scoreboard agrees: no connection suspended, and its counts
 * did not wrap (a connection ended in the wrong state makes the
 * lingering count wrap to 4294967xxx).  The MPM copies its counts there
 * only when it maintains its timeout queues: keep-alive connections left
 * to time out (KeepAliveTimeout 1) make each child do so. */
static int scoreboard_clean(void *baton)
{
    int port = *(int *)baton;

    return it_status_value(port, "CometScoreboardSuspended") == 0
           && it_status_value(port, "CometScoreboardLingering") < 1000
           && it_status_value(port, "CometScoreboardConnections") < 1000;
}

static int scoreboard_thirty(void *baton)
{
    return it_status_value(*(int *)baton, "CometScoreboardSuspended") == 30;
}

/* Wait for cond while keep-alive connections time out in the children. */
static int wait_scoreboard(int port, int (*cond)(void *))
{
    int clean = 0;

    for (int round = 0; round < 5 && !clean; round++) {
        int fds[6];

        for (int i = 0; i < 6; i++) {
            char buf[4096];
            size_t len = 0;

            fds[i] = it_connect(port);
            ck_assert_int_ge(fds[i], 0);
            ck_assert_int_eq(it_sendf(fds[i], "GET /index.html HTTP/1.1\r\n"
                                      "Host: x\r\n\r\n"), 0);
            ck_assert(it_read_until(fds[i], buf, sizeof(buf), &len, 0,
                                    "document root\n", 5000) == 1);
        }
        clean = it_wait_for(cond, &port, 3000);
        for (int i = 0; i < 6; i++) {
            close(fds[i]);
        }
    }
    return clean;
}

static int quiet(void *baton)
{
    return it_status_value(*(int *)baton, "CometMpmConnections") <= 1;
}

static void assert_scoreboard_clean(int port)
{
    int clean = wait_scoreboard(port, scoreboard_clean);

    /* The keep-alive connections are gone before anything else happens:
     * httpd 2.4's event MPM may crash when stopped ungracefully while a
     * worker is closing a connection (close_worker_sockets() reads the
     * socket of a connection whose pool the worker has just freed), with
     * or without mod_comet. */
    ck_assert(it_wait_for(quiet, &port, 10000));
    ck_assert_msg(clean, "scoreboard: %ld suspended, %ld lingering, %ld "
                  "connections",
                  it_status_value(port, "CometScoreboardSuspended"),
                  it_status_value(port, "CometScoreboardLingering"),
                  it_status_value(port, "CometScoreboardConnections"));
}

static void assert_all_ended(const it_server_t *s)
{
    int port = s->port;

    ck_assert_msg(it_wait_for(all_ended, &port, 10000), "left: suspended "
                  "%ld held %ld, MPM connections %ld (suspended %ld)",
                  it_status_value(port, "CometSuspended"),
                  it_status_value(port, "CometHeld"),
                  it_status_value(port, "CometMpmConnections"),
                  it_status_value(port, "CometMpmSuspended"));
    assert_scoreboard_clean(port);
    ck_assert_int_eq(it_log_count(s, "exit signal"), 0);
}

static const char *request(const char *path, const char *accept)
{
    static char buf[512];

    snprintf(buf, sizeof(buf), "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             "%s%s%s\r\n", path, accept ? "Accept: " : "",
             accept ? accept : "", accept ? "\r\n" : "");
    return buf;
}

/* Publish through the publish socket: no MPM worker is involved. */
static void publish_on_socket(const it_server_t *s, const char *channel,
                              const char *data)
{
    char buf[256];
    size_t len = 0;
    int fd = it_connect_unix(s->socket_path);

    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(it_sendf(fd, "*3\r\n$7\r\nPUBLISH\r\n$%zu\r\n%s\r\n"
                              "$%zu\r\n%s\r\n", strlen(channel), channel,
                              strlen(data), data), 0);
    ck_assert(it_read_until(fd, buf, sizeof(buf), &len, 0, "\r\n", 5000)
              == 1);
    ck_assert_msg(buf[0] == ':', "publish socket said %s", buf);
    close(fd);
}

/* Before an ungraceful stop (see it_server_stop_now): the last request's
 * connection has been closed by the time a message published through the
 * socket has reached every parked client. */
static void quiesce(const it_server_t *s, it_tls_t *t, int n,
                    const char *channel)
{
    publish_on_socket(s, channel, "quiet now");
    for (int i = 0; i < n; i++) {
        ck_assert(it_tls_read_until(&t[i], "data: quiet now\n\n", t[i].body,
                                    5000));
    }
}

static void start_tls(it_server_t *s, int async_factor)
{
    it_opts_t o;

    memset(&o, 0, sizeof(o));
    o.tls = 1;
    o.async_factor = async_factor;
    o.extra = "KeepAliveTimeout 1\nCometTLSDetach off\n"
              "<Location /lp1/>\n  SetHandler comet-subscriber\n"
              "  CometSubscriberTimeout 1\n</Location>\n"
              "<Location /ka/>\n  SetHandler comet-subscriber\n"
              "  CometKeepalive 1\n</Location>\n";
    ck_assert_int_eq(it_server_start(s, &o), 0);
}

/* ---- tests ------------------------------------------------------------------------ */

static int thirty_suspended(void *baton)
{
    return it_status_value(*(int *)baton, "CometSuspended") == 30;
}

/* 30 TLS SSE subscribers with two children of 5 threads: held, at most 2
 * per child would be allowed; suspended, all park, ordinary requests are
 * answered meanwhile, and all get the message. */
START_TEST(thirty_tls_subscribers_park_without_a_worker_each)
{
    enum { N = 30 };
    it_server_t s;
    it_tls_t *t = calloc(N, sizeof(*t));
    it_response_t *res = malloc(sizeof(*res));

    start_tls(&s, 10);
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(it_tls_open(&t[i], s.tls_port,
                                     request("/sub/thirty",
                                             "text/event-stream")), 0);
        ck_assert_msg(it_tls_read_until(&t[i], "retry: 3000\n", 0, 5000),
                      "subscriber %d: %s", i, t[i].buf);
        ck_assert_ptr_nonnull(strstr(t[i].buf, " 200 "));
        ck_assert_ptr_nonnull(strcasestr(t[i].buf,
                                         "Transfer-Encoding: chunked"));
    }
    ck_assert(it_wait_subscribers_ms(s.port, "thirty", N, 10000));
    ck_assert(it_wait_for(thirty_suspended, &s.port, 5000));
    /* The MPM counts them as suspended too. */
    ck_assert_msg(wait_scoreboard(s.port, scoreboard_thirty), "scoreboard: "
                  "%ld suspended",
                  it_status_value(s.port, "CometScoreboardSuspended"));
    ck_assert_int_eq(it_status_value(s.port, "CometMpmSuspended"), N);
    /* The site answers while they wait. */
    for (int i = 0; i < 20; i++) {
        long long t0 = it_now_ms();

        ck_assert_int_eq(it_http(s.port, "GET", "/index.html", NULL, NULL, 0,
                                 res, 5000), 0);
        ck_assert_int_eq(res->status, 200);
        ck_assert_int_lt(it_now_ms() - t0, 2000);
    }
    ck_assert_int_eq(publish(s.port, "thirty", "to all thirty"), 201);
    for (int i = 0; i < N; i++) {
        ck_assert_msg(it_tls_read_until(&t[i], "data: to all thirty\n\n",
                                        t[i].body, 5000),
                      "subscriber %d got: %s", i, t[i].buf);
    }
    /* Not one of them keeps a worker. */
    ck_assert_int_eq(it_status_value(s.port, "CometHeld"), 0);
    for (int i = 0; i < N; i++) {
        it_tls_close(&t[i], i % 2);
    }
    ck_assert(it_wait_subscribers_ms(s.port, "thirty", 0, 10000));
    assert_all_ended(&s);
    it_server_stop(&s);
    free(t);
    free(res);
}
END_TEST

/* A TLS client that leaves, with or without close_notify, in every
 * transport, is forgotten within two seconds. */
START_TEST(a_tls_client_that_leaves_is_forgotten_within_two_seconds)
{
    it_server_t s;
    it_tls_t t[3];
    const char *paths[] = { "/sub/gone", "/sub/gone?transport=longpoll",
                            "/sub/gone?transport=stream" };

    start_tls(&s, 0);
    for (int round = 0; round < 2; round++) {
        long long t0;

        for (int i = 0; i < 3; i++) {
            ck_assert_int_eq(it_tls_open(&t[i], s.tls_port,
                                         request(paths[i], NULL)), 0);
            ck_assert(it_tls_read_until(&t[i], "\r\n\r\n", 0, 5000));
        }
        ck_assert(it_wait_subscribers_ms(s.port, "gone", 3, 10000));
        t0 = it_now_ms();
        for (int i = 0; i < 3; i++) {
            it_tls_close(&t[i], round);
        }
        ck_assert(it_wait_subscribers_ms(s.port, "gone", 0, 2000));
        fprintf(stderr, "TLS clients forgotten %lld ms after leaving (%s)\n",
                it_now_ms() - t0, round ? "close_notify" : "no close_notify");
    }
    assert_all_ended(&s);
    it_server_stop(&s);
}
END_TEST

/* A TLS long-poll: answered by a publish with the message and a clean
 * end; with nothing published, answered empty after its timeout. */
START_TEST(tls_long_poll_is_answered_by_a_publish_or_times_out)
{
    it_server_t s;
    it_tls_t t;
    long long t0;

    start_tls(&s, 0);
    ck_assert_int_eq(it_tls_open(&t, s.tls_port, request("/sub/tlp", NULL)),
                     0);
    ck_assert(it_tls_read_until(&t, "\r\n\r\n", 0, 5000));
    ck_assert_ptr_nonnull(strcasestr(t.buf, "application/json"));
    ck_assert(it_wait_subscribers_ms(s.port, "tlp", 1, 10000));
    ck_assert_int_eq(publish(s.port, "tlp", "polled"), 201);
    ck_assert(it_tls_read_to_close(&t, 5000));
    ck_assert_msg(strstr(t.buf + t.body, "\"data\":\"polled\""), "got %s",
                  t.buf);
    ck_assert_msg(strstr(t.buf + t.body, "\r\n0\r\n\r\n"), "no last chunk: "
                  "%s", t.buf);
    it_tls_close(&t, 1);

    t0 = it_now_ms();
    ck_assert_int_eq(it_tls_open(&t, s.tls_port, request("/lp1/tquiet",
                                                          NULL)), 0);
    ck_assert(it_tls_read_to_close(&t, 10000));
    ck_assert_msg(strstr(t.buf + t.body, "\"messages\":[]"), "got %s",
                  t.buf);
    ck_assert_msg(strstr(t.buf + t.body, "\r\n0\r\n\r\n"), "no last chunk: "
                  "%s", t.buf);
    ck_assert_int_ge(it_now_ms() - t0, 900);
    ck_assert_int_lt(it_now_ms() - t0, 5000);
    it_tls_close(&t, 1);

    /* Keepalives flow on an idle TLS stream. */
    ck_assert_int_eq(it_tls_open(&t, s.tls_port,
                                 request("/ka/tidle", "text/event-stream")),
                     0);
    ck_assert(it_tls_read_until(&t, "retry: 3000\n\n", 0, 5000));
    ck_assert(it_tls_read_until(&t, ":\n\n", t.len, 3000));
    ck_assert(it_tls_read_until(&t, ":\n\n", t.len, 3000));
    it_tls_close(&t, 0);
    ck_assert(it_wait_subscribers_ms(s.port, "tlp", 0, 10000));
    ck_assert(it_wait_subscribers_ms(s.port, "tquiet", 0, 10000));
    ck_assert(it_wait_subscribers_ms(s.port, "tidle", 0, 10000));
    assert_all_ended(&s);
    it_server_stop(&s);
}
END_TEST

typedef struct pids_t {
    pid_t pid[64];
    int n;
} pids_t;

static int all_exited(void *baton)
{
    pids_t *p = baton;

    for (int i = 0; i < p->n; i++) {
        if (kill(p->pid[i], 0) == 0) {
            return 0;
        }
    }
    return 1;
}

static int new_children_answer(void *baton)
{
    it_server_t *s = baton;
    pid_t kids[64];
    it_response_t *res;
    int ok;

    if (it_server_children(s, kids, 64) < 2) {
        return 0;
    }
    res = malloc(sizeof(*res));
    ok = it_http(s->port, "GET", "/index.html", NULL, NULL, 0, res, 2000)
         == 0 && res->status == 200;
    free(res);
    return ok;
}

/* A graceful restart with parked TLS subscribers: every stream ends
 * cleanly and promptly, the old children exit, the new ones serve. */
START_TEST(graceful_restart_ends_parked_tls_streams_and_old_children_exit)
{
    enum { N = 8 };
    it_server_t s;
    it_tls_t t[N + 1];
    pids_t old;
    long long t0;

    start_tls(&s, 4);
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(it_tls_open(&t[i], s.tls_port,
                                     request("/sub/tgr",
                                             "text/event-stream")), 0);
        ck_assert(it_tls_read_until(&t[i], "retry: 3000\n\n", 0, 5000));
    }
    ck_assert_int_eq(it_tls_open(&t[N], s.tls_port,
                                 request("/sub/tgrlp", NULL)), 0);
    ck_assert(it_tls_read_until(&t[N], "\r\n\r\n", 0, 5000));
    ck_assert(it_wait_subscribers_ms(s.port, "tgr", N, 10000));
    ck_assert(it_wait_subscribers_ms(s.port, "tgrlp", 1, 10000));
    old.n = it_server_children(&s, old.pid, 64);
    t0 = it_now_ms();
    /* As apachectl -k graceful; the streams end at once, long before the
     * new generation is up. */
    ck_assert_int_eq(kill(s.pid, SIGUSR1), 0);
    for (int i = 0; i <= N; i++) {
        ck_assert_msg(it_tls_read_to_close(&t[i], 5000), "stream %d did not "
                      "end", i);
        ck_assert_msg(strstr(t[i].buf + t[i].body, "0\r\n\r\n"),
                      "stream %d ended without its last chunk: %s", i,
                      t[i].buf);
        it_tls_close(&t[i], 1);
    }
    fprintf(stderr, "graceful restart: streams ended after %lld ms\n",
            it_now_ms() - t0);
    ck_assert(it_wait_for(all_exited, &old, 10000));
    fprintf(stderr, "graceful restart: old children gone after %lld ms\n",
            it_now_ms() - t0);
    ck_assert(it_wait_for(new_children_answer, &s, 20000));
    /* The new generation serves TLS subscribers. */
    ck_assert_int_eq(it_tls_open(&t[0], s.tls_port,
                                 request("/sub/tgr", "text/event-stream")),
                     0);
    ck_assert(it_tls_read_until(&t[0], "retry: 3000\n\n", 0, 5000));
    ck_assert(it_wait_subscribers_ms(s.port, "tgr", 1, 10000));
    ck_assert_int_eq(publish(s.port, "tgr", "after the restart"), 201);
    ck_assert(it_tls_read_until(&t[0], "data: after the restart\n\n",
                                t[0].body, 5000));
    it_tls_close(&t[0], 0);
    ck_assert(it_wait_subscribers_ms(s.port, "tgr", 0, 10000));
    assert_all_ended(&s);
    it_server_stop(&s);
}
END_TEST

/* Stopping the server (apachectl -k stop) with parked TLS subscribers:
 * it exits promptly, the streams end, and no child crashes on the way. */
START_TEST(stopping_with_parked_tls_subscribers_is_prompt)
{
    enum { N = 8 };
    it_server_t s;
    it_tls_t t[N];
    char path[600], log[65536];
    long long t0;

    start_tls(&s, 4);
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(it_tls_open(&t[i], s.tls_port,
                                     request("/sub/tstop",
                                             "text/event-stream")), 0);
        ck_assert(it_tls_read_until(&t[i], "retry: 3000\n\n", 0, 5000));
    }
    ck_assert(it_wait_subscribers_ms(s.port, "tstop", N, 10000));
    quiesce(&s, t, N, "tstop");
    snprintf(path, sizeof(path), "%s", s.dir);
    t0 = it_now_ms();
    it_server_stop_now(&s);
    ck_assert_int_lt(it_now_ms() - t0, 5000);
    for (int i = 0; i < N; i++) {
        ck_assert(it_tls_read_to_close(&t[i], 5000));
        it_tls_close(&t[i], 0);
    }
    strcpy(s.dir, path);
    ck_assert_int_eq(it_log_count(&s, "exit signal"), 0);
    snprintf(path, sizeof(path), "%s/error_log", s.dir);
    it_read_file(path, log, sizeof(log));
    ck_assert_msg(!strstr(log, "still did not exit"), "a child had to be "
                  "killed: %s", log);
}
END_TEST

static int dropped_one(void *baton)
{
    return it_status_value(*(int *)baton, "CometDroppedSlow") >= 1;
}

/* A suspended subscriber that stops reading (TLS, or plain HTTP/1.0):
 * writes to it never wait (the site keeps answering, no worker stays
 * busy), and once its unsent bytes pass CometMaxPendingBytes it is
 * dropped. */
static void slow_client(int tls)
{
    it_server_t s;
    it_opts_t o;
    it_tls_t t;
    it_response_t *res = malloc(sizeof(*res));
    char *msg = malloc(16 * 1024 + 1), *buf = malloc(4096);
    size_t len = 0;
    int sent = 0, fd = -1;

    memset(&o, 0, sizeof(o));
    o.tls = tls;
    /* The smallest bound the check at start allows for 16 KB messages
     * (their largest frame is some 120 KB). */
    o.extra = "CometMaxMessageSize 16K\nCometMaxPendingBytes 128K\n"
              "KeepAliveTimeout 1\nCometTLSDetach off\n";
    ck_assert_int_eq(it_server_start(&s, &o), 0);
    memset(msg, 'x', 16 * 1024);
    msg[16 * 1024] = '\0';
    if (tls) {
        ck_assert_int_eq(it_tls_open_rcvbuf(&t, s.tls_port,
                                            request("/sub/slow",
                                                    "text/event-stream"),
                                            4096), 0);
        ck_assert(it_tls_read_until(&t, "retry: 3000\n\n", 0, 5000));
    }
    else {
        fd = it_connect_rcvbuf(s.port, 4096);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(it_sendf(fd, "GET /sub/slow HTTP/1.0\r\n"
                                  "Accept: text/event-stream\r\n\r\n"), 0);
        ck_assert(it_read_until(fd, buf, 4096, &len, 0, "retry: 3000\n\n",
                                5000) == 1);
    }
    ck_assert(it_wait_subscribers_ms(s.port, "slow", 1, 10000));
    /* It reads nothing from here on. */
    while (it_subscribers(s.port, "slow") == 1) {
        long long t0 = it_now_ms();

        ck_assert_int_lt(sent, 2000);
        ck_assert_int_eq(publish(s.port, "slow", msg), 201);
        sent++;
        if (sent % 25 == 0) {
            long busy = it_status_value(s.port, "BusyWorkers");

            ck_assert_int_eq(it_http(s.port, "GET", "/index.html", NULL,
                                     NULL, 0, res, 5000), 0);
            ck_assert_int_eq(res->status, 200);
            /* This request and the status request, nothing else. */
            ck_assert_msg(busy >= 1 && busy <= 2, "%ld busy workers", busy);
        }
        ck_assert_int_lt(it_now_ms() - t0, 1000);
    }
    fprintf(stderr, "a%s client that does not read: dropped after %d "
            "messages of 16 KB\n", tls ? " TLS" : "n HTTP/1.0", sent);
    ck_assert(it_wait_for(dropped_one, &s.port, 5000));
    if (tls) {
        it_tls_close(&t, 0);
    }
    else {
        close(fd);
    }
    assert_all_ended(&s);
    it_server_stop(&s);
    free(res);
    free(msg);
    free(buf);
}

START_TEST(a_tls_client_that_does_not_read_blocks_no_worker_and_is_dropped)
{
    slow_client(1);
}
END_TEST

START_TEST(an_http_1_0_client_that_does_not_read_blocks_no_worker_either)
{
    slow_client(0);
}
END_TEST

static int stuck_logged(void *baton)
{
    const it_server_t *s = baton;
    char path[512], *log = malloc(1024 * 1024);
    int found;

    snprintf(path, sizeof(path), "%s/access_log", s->dir);
    found = it_read_file(path, log, 1024 * 1024) > 0
            && strstr(log, "GET /sub/stuck ");
    free(log);
    return found;
}

/* A stream that ends (its channel deleted) while its client reads
 * nothing: the end waits at most a few seconds for the client, then the
 * connection is cut and freed. */
START_TEST(an_ended_stream_whose_client_does_not_read_is_cut_after_a_while)
{
    it_server_t s;
    it_opts_t o;
    it_tls_t t;
    it_response_t *res = malloc(sizeof(*res));
    char *msg = malloc(16 * 1024 + 1);
    long long t0;

    memset(&o, 0, sizeof(o));
    o.tls = 1;
    o.extra = "CometMaxPendingBytes 16M\nKeepAliveTimeout 1\n"
              "CometTLSDetach off\n";
    ck_assert_int_eq(it_server_start(&s, &o), 0);
    memset(msg, 'y', 16 * 1024);
    msg[16 * 1024] = '\0';
    ck_assert_int_eq(it_tls_open_rcvbuf(&t, s.tls_port,
                                        request("/sub/stuck",
                                                "text/event-stream"), 4096),
                     0);
    ck_assert(it_tls_read_until(&t, "retry: 3000\n\n", 0, 5000));
    ck_assert(it_wait_subscribers_ms(s.port, "stuck", 1, 10000));
    /* 8 MB: more than the kernel's buffers hold (some 3 MB here, at most
     * tcp_wmem's 4 MB), less than CometMaxPendingBytes. */
    for (int i = 0; i < 512; i++) {
        ck_assert_int_eq(publish(s.port, "stuck", msg), 201);
    }
    ck_assert_int_eq(it_subscribers(s.port, "stuck"), 1);
    t0 = it_now_ms();
    ck_assert_int_eq(it_http(s.port, "DELETE", "/pub/stuck", NULL, NULL, 0,
                             res, 5000), 0);
    ck_assert_int_eq(res->status, 200);
    /* The access log line is written as the connection ends. */
    ck_assert(it_wait_for(stuck_logged, &s, 15000));
    fprintf(stderr, "an ended stream nobody reads: cut after %lld ms\n",
            it_now_ms() - t0);
    /* It was given its few seconds (5). */
    ck_assert_int_ge(it_now_ms() - t0, 4000);
    it_tls_close(&t, 0);
    assert_all_ended(&s);
    it_server_stop(&s);
    free(res);
    free(msg);
}
END_TEST

/* Past (ThreadsPerChild - 1) x AsyncRequestWorkerFactor suspended
 * subscribers a process answers 503 with Retry-After and says in the log
 * which setting raises the bound; a place frees when a subscriber
 * leaves. */
START_TEST(the_suspended_bound_answers_503_and_names_the_setting)
{
    enum { MAX = 12 };
    it_server_t s;
    it_tls_t t[MAX];
    int opened = 0, refused = 0;

    /* 4 per process: (5 - 1) x 1. */
    start_tls(&s, 1);
    while (opened < MAX && !refused) {
        it_tls_t *c = &t[opened];

        ck_assert_int_eq(it_tls_open(c, s.tls_port,
                                     request("/sub/bound",
                                             "text/event-stream")), 0);
        ck_assert(it_tls_read_until(c, "\r\n\r\n", 0, 5000));
        if (strstr(c->buf, " 503 ")) {
            refused = 1;
            ck_assert_ptr_nonnull(strcasestr(c->buf, "Retry-After: 5"));
            it_tls_close(c, 1);
        }
        else {
            ck_assert_ptr_nonnull(strstr(c->buf, " 200 "));
            opened++;
            ck_assert(it_wait_subscribers_ms(s.port, "bound", opened, 10000));
        }
    }
    ck_assert_msg(refused, "no 503 with %d suspended", opened);
    ck_assert_int_ge(opened, 4);
    ck_assert_int_le(opened, 8);
    ck_assert_int_eq(it_log_count(&s, "Raise AsyncRequestWorkerFactor"), 1);
    for (int i = 0; i < opened; i++) {
        it_tls_close(&t[i], 0);
    }
    ck_assert(it_wait_subscribers_ms(s.port, "bound", 0, 10000));
    ck_assert_int_eq(it_tls_open(&t[0], s.tls_port,
                                 request("/sub/bound", "text/event-stream")),
                     0);
    ck_assert(it_tls_read_until(&t[0], "retry: 3000\n\n", 0, 5000));
    it_tls_close(&t[0], 0);
    assert_all_ended(&s);
    it_server_stop(&s);
}
END_TEST

/* One client process of the churn: cycles subscribe/leave in every
 * shape, some leaving before the head arrives. */
static void churn_client(int port, int cycles, int seed)
{
    static const char *const paths[] = {
        "/sub/tchurn", "/sub/tchurn?transport=longpoll",
        "/sub/tchurn?transport=stream", "/sub/tchurn,tother",
    };
    unsigned r = (unsigned)seed * 2654435761u;

    for (int i = 0; i < cycles; i++) {
        it_tls_t t;
        int shape;

        r = r * 1103515245u + 12345u;
        shape = (int)((r >> 16) % 8);
        if (it_tls_open(&t, port, request(paths[shape % 4],
                                          shape % 4 == 0
                                          ? "text/event-stream" : NULL))
            != 0) {
            _exit(2);
        }
        if (shape < 6 && !it_tls_read_until(&t, "\r\n\r\n", 0, 5000)) {
            _exit(3);
        }
        it_tls_close(&t, shape & 1);
    }
    _exit(0);
}

/* clients processes churning cycles each while this one publishes;
 * returns the publishes made. */
static int churn(int port, int clients, int cycles, int seed)
{
    pid_t kids[16];
    int running = clients, published = 0;

    for (int k = 0; k < clients; k++) {
        kids[k] = fork();
        ck_assert_int_ge(kids[k], 0);
        if (kids[k] == 0) {
            churn_client(port, cycles, seed + k);
        }
    }
    while (running) {
        int status;
        pid_t p = waitpid(-1, &status, WNOHANG);

        if (p > 0) {
            ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                          "churn client failed: %d", status);
            running--;
            continue;
        }
        /* Writes racing the leaving clients. */
        publish(port, "tchurn", "churning");
        publish(port, "tother", "churning");
        published += 2;
    }
    return published;
}

/* Thousands of TLS subscribe/disconnect cycles from several clients at
 * once, with messages published meanwhile: no crash, every subscriber
 * and connection ends, and the children's descriptors and memory come
 * back.  COMET_TLS_CHURN sets the cycles per client (for long runs). */
START_TEST(thousands_of_tls_subscribe_disconnect_cycles_leave_nothing)
{
    enum { CLIENTS = 4 };
    const char *env = getenv("COMET_TLS_CHURN");
    int cycles = env && atoi(env) > 0 ? atoi(env) : 600, published;
    it_server_t s;
    long rss0, fds0, rss1, fds1;
    long long t0;

    start_tls(&s, 10);
    /* Warm up: pools, OpenSSL's and the allocator's caches. */
    churn(s.tls_port, CLIENTS, 100, 100);
    ck_assert(it_wait_subscribers_ms(s.port, "tchurn", 0, 10000));
    ck_assert(it_wait_subscribers_ms(s.port, "tother", 0, 10000));
    assert_all_ended(&s);
    it_children_usage(&s, &rss0, &fds0);

    t0 = it_now_ms();
    published = churn(s.tls_port, CLIENTS, cycles, 1);
    fprintf(stderr, "TLS churn: %d cycles, %d publishes, %lld ms, gate "
            "waits %ld\n", CLIENTS * cycles, published, it_now_ms() - t0,
            it_status_value(s.port, "CometSuspendGateWaits"));
    ck_assert(it_wait_subscribers_ms(s.port, "tchurn", 0, 10000));
    ck_assert(it_wait_subscribers_ms(s.port, "tother", 0, 10000));
    assert_all_ended(&s);
    it_children_usage(&s, &rss1, &fds1);
    fprintf(stderr, "TLS churn: children private RSS %ld -> %ld kB, fds %ld "
            "-> %ld\n", rss0, rss1, fds0, fds1);
    ck_assert_msg(fds1 <= fds0 + 4, "descriptors grew from %ld to %ld",
                  fds0, fds1);
    /* (Under AddressSanitizer freed memory waits in its quarantine.) */
    if (!getenv("COMET_ASAN")) {
        ck_assert_msg(rss1 <= rss0 + 2048, "private RSS grew from %ld to "
                      "%ld kB", rss0, rss1);
    }
    it_server_stop(&s);
}
END_TEST

/* A churn client that never fails: it goes on until killed, through
 * restarts and refusals. */
static void churn_forever(int port, int seed)
{
    unsigned r = (unsigned)seed * 2654435761u;

    for (;;) {
        it_tls_t t;

        r = r * 1103515245u + 12345u;
        if (it_tls_open(&t, port, request((r >> 16) % 2 ? "/sub/tload"
                                          : "/sub/tload?transport=longpoll",
                                          NULL)) != 0) {
            usleep(10000);
            continue;
        }
        if ((r >> 20) % 4) {
            it_tls_read_until(&t, "\r\n\r\n", 0, 2000);
        }
        it_tls_close(&t, (r >> 18) & 1);
    }
}

static void publish_for(int port, int ms)
{
    long long end = it_now_ms() + ms;

    while (it_now_ms() < end) {
        if (publish(port, "tload", "load") < 0) {
            usleep(10000);
        }
    }
}

/* A graceful restart while TLS clients churn, streams are parked and
 * messages are published, then a stop (apachectl -k stop) with parked
 * streams: no child crashes or hangs, the server comes back after the
 * restart and stops promptly. */
START_TEST(restart_and_stop_during_tls_churn_crash_nothing)
{
    enum { CLIENTS = 3, PARKED = 10 };
    it_server_t s;
    it_tls_t t[PARKED];
    pid_t kids[CLIENTS];
    pids_t old;
    char dir[256];
    long long t0;

    start_tls(&s, 10);
    for (int i = 0; i < PARKED; i++) {
        ck_assert_int_eq(it_tls_open(&t[i], s.tls_port,
                                     request("/sub/tparked",
                                             "text/event-stream")), 0);
        ck_assert(it_tls_read_until(&t[i], "retry: 3000\n\n", 0, 5000));
    }
    for (int k = 0; k < CLIENTS; k++) {
        kids[k] = fork();
        ck_assert_int_ge(kids[k], 0);
        if (kids[k] == 0) {
            churn_forever(s.tls_port, k + 7);
        }
    }
    publish_for(s.port, 1000);
    old.n = it_server_children(&s, old.pid, 64);
    ck_assert_int_eq(kill(s.pid, SIGUSR1), 0);
    for (int i = 0; i < PARKED; i++) {
        ck_assert_msg(it_tls_read_to_close(&t[i], 5000), "parked stream %d "
                      "did not end", i);
        it_tls_close(&t[i], 0);
    }
    publish_for(s.port, 1000);
    ck_assert(it_wait_for(all_exited, &old, 15000));
    ck_assert(it_wait_for(new_children_answer, &s, 20000));
    for (int i = 0; i < PARKED; i++) {
        ck_assert_int_eq(it_tls_open(&t[i], s.tls_port,
                                     request("/sub/tparked",
                                             "text/event-stream")), 0);
        ck_assert(it_tls_read_until(&t[i], "retry: 3000\n\n", 0, 5000));
    }
    publish_for(s.port, 1000);
    /* The stop comes with the parked streams only: see
     * it_server_stop_now. */
    for (int k = 0; k < CLIENTS; k++) {
        kill(kids[k], SIGKILL);
        waitpid(kids[k], NULL, 0);
    }
    quiesce(&s, t, PARKED, "tparked");
    strcpy(dir, s.dir);
    t0 = it_now_ms();
    it_server_stop_now(&s);
    ck_assert_int_lt(it_now_ms() - t0, 5000);
    for (int i = 0; i < PARKED; i++) {
        ck_assert(it_tls_read_to_close(&t[i], 5000));
        it_tls_close(&t[i], 0);
    }
    strcpy(s.dir, dir);
    ck_assert_int_eq(it_log_count(&s, "exit signal"), 0);
    ck_assert_int_eq(it_log_count(&s, "still did not exit"), 0);
}
END_TEST

Suite *test_suspend_suite(void)
{
    Suite *s = suite_create("suspend");
    TCase *tc = tcase_create("tls");

    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, thirty_tls_subscribers_park_without_a_worker_each);
    tcase_add_test(tc, a_tls_client_that_leaves_is_forgotten_within_two_seconds);
    tcase_add_test(tc, tls_long_poll_is_answered_by_a_publish_or_times_out);
    tcase_add_test(tc, graceful_restart_ends_parked_tls_streams_and_old_children_exit);
    tcase_add_test(tc, stopping_with_parked_tls_subscribers_is_prompt);
    tcase_add_test(tc, the_suspended_bound_answers_503_and_names_the_setting);
    tcase_add_test(tc, a_tls_client_that_does_not_read_blocks_no_worker_and_is_dropped);
    tcase_add_test(tc, an_http_1_0_client_that_does_not_read_blocks_no_worker_either);
    tcase_add_test(tc, an_ended_stream_whose_client_does_not_read_is_cut_after_a_while);
    tcase_add_test(tc, thousands_of_tls_subscribe_disconnect_cycles_leave_nothing);
    tcase_add_test(tc, restart_and_stop_during_tls_churn_crash_nothing);
    suite_add_tcase(s, tc);
    return s;
}
