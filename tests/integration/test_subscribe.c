/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* Subscribers end to end against the real apache2 (event MPM, two
 * children): every transport, resuming, the missed-messages signal,
 * keepalive, disconnects, fan-out across processes, graceful restart, TLS,
 * and bad input. */

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"

#define BUFSZ IT_SUB_BUFSZ

static it_server_t srv;

/* ---- helpers ------------------------------------------------------------------- */

static void start(void)
{
    it_opts_t o;

    memset(&o, 0, sizeof(o));
    o.extra =
        "<Location /ka/>\n  SetHandler comet-subscriber\n"
        "  CometKeepalive 1\n</Location>\n"
        "<Location /lp1/>\n  SetHandler comet-subscriber\n"
        "  CometSubscriberTimeout 1\n</Location>\n"
        "<Location /two/>\n  SetHandler comet-subscriber\n"
        "  CometMaxChannels 2\n</Location>\n"
        "<Location /sse-only/>\n  SetHandler comet-subscriber\n"
        "  CometTransports sse\n</Location>\n"
        "<Location /cors/>\n  SetHandler comet-subscriber\n"
        "  CometAllowOrigin https://app.example\n</Location>\n"
        "<Location /byarg>\n  SetHandler comet-subscriber\n"
        "  CometChannel \"%{QUERY_STRING}\"\n</Location>\n";
    ck_assert_int_eq(it_server_start(&srv, &o), 0);
}

static void stop(void)
{
    it_server_stop(&srv);
}

/* ---- transports ------------------------------------------------------------------- */

START_TEST(sse_delivers_each_message_as_an_event_with_a_resumable_id)
{
    it_sub_t s;
    char id1[64], id2[64], want[256];

    ck_assert_int_eq(it_sub_open(&s, srv.port, "/sub/sse1",
                              "Accept: text/event-stream\r\n"), 0);
    ck_assert_ptr_nonnull(strstr(s.buf, " 200 "));
    ck_assert_ptr_nonnull(strcasestr(s.buf,
                          "Content-Type: text/event-stream"));
    ck_assert_ptr_nonnull(strcasestr(s.buf, "Connection: close"));
    ck_assert_ptr_nonnull(strcasestr(s.buf, "Transfer-Encoding: chunked"));
    ck_assert(it_wait_subscribers(srv.port, "sse1", 1));

    ck_assert_int_eq(it_publish(srv.port, "sse1", "hello", NULL, id1,
                             sizeof(id1)), 201);
    /* CR, LF and CRLF all split lines: no payload breaks the framing. */
    ck_assert_int_eq(it_publish(srv.port, "sse1", "a\nb\r\nc\rd\n\nid: x",
                             "typing", id2, sizeof(id2)), 201);
    snprintf(want, sizeof(want), "id: %s\ndata: hello\n\n", id1);
    ck_assert_msg(it_sub_wait(&s, want, 5000) == 1, "got: %s", s.buf);
    snprintf(want, sizeof(want), "id: %s\nevent: typing\ndata: a\ndata: b\n"
             "data: c\ndata: d\ndata:\ndata: id: x\n\n", id2);
    ck_assert_msg(it_sub_wait(&s, want, 5000) == 1, "got: %s", s.buf);
    it_sub_close(&s);
}
END_TEST

START_TEST(long_poll_waits_then_answers_with_json_and_the_next_id)
{
    it_sub_t s;
    char id[64], want[256];
    it_response_t *res = malloc(sizeof(*res));
    const char *p;
    char next[64], path[256];

    /* A parked long-poll's head comes with its answer. */
    ck_assert_int_eq(it_sub_send(&s, srv.port, "/sub/lp", NULL), 0);
    ck_assert(it_wait_subscribers(srv.port, "lp", 1));
    ck_assert_int_eq(it_publish(srv.port, "lp", "first \"quoted\"", NULL, id,
                             sizeof(id)), 201);
    ck_assert_int_eq(it_sub_head(&s, 5000), 1);
    ck_assert_ptr_nonnull(strcasestr(s.buf, "application/json"));
    /* (The connection stays open for the next poll: keep-alive.) */
    ck_assert_int_eq(it_read_until(s.fd, s.buf, BUFSZ, &s.len, s.body,
                                   "\r\n0\r\n\r\n", 5000), 1);
    snprintf(want, sizeof(want), "\"data\":\"first \\\"quoted\\\"\"");
    ck_assert_msg(strstr(s.buf + s.body, want), "got: %s", s.buf);
    snprintf(want, sizeof(want), "{\"id\":\"%s\"", id);
    ck_assert_msg(strstr(s.buf + s.body, want), "got: %s", s.buf);
    /* A clean end: the terminating chunk. */
    ck_assert_ptr_nonnull(strstr(s.buf + s.body, "\r\n0\r\n\r\n"));
    it_sub_close(&s);

    /* A burst between two polls is delivered whole, in order. */
    for (int i = 0; i < 5; i++) {
        char msg[16];

        snprintf(msg, sizeof(msg), "burst-%d", i);
        ck_assert_int_eq(it_publish(srv.port, "lp", msg, NULL, NULL, 0), 202);
    }
    snprintf(path, sizeof(path), "/sub/lp?last_event_id=%s", id);
    ck_assert_int_eq(it_http(srv.port, "GET", path, NULL, NULL, 0, res,
                             5000), 0);
    ck_assert_int_eq(res->status, 200);
    p = res->body;
    for (int i = 0; i < 5; i++) {
        char msg[32];

        snprintf(msg, sizeof(msg), "\"data\":\"burst-%d\"", i);
        p = strstr(p, msg);
        ck_assert_msg(p != NULL, "burst-%d missing or out of order: %s", i,
                      res->body);
    }
    ck_assert_ptr_nonnull(strstr(res->body, "\"missed\":false"));
    /* The next id names the last message; polling with it waits. */
    ck_assert(sscanf(res->body, "{\"id\":\"%63[^\"]\"", next) == 1);
    ck_assert_str_ne(next, id);
    free(res);
}
END_TEST

START_TEST(long_poll_times_out_with_an_empty_answer)
{
    it_response_t *res = malloc(sizeof(*res));
    long long t0 = it_now_ms();

    ck_assert_int_eq(it_http(srv.port, "GET", "/lp1/quiet", NULL, NULL, 0,
                             res, 10000), 0);
    ck_assert_int_eq(res->status, 200);
    ck_assert_msg(strstr(res->body, "\"messages\":[]"), "got %s", res->body);
    ck_assert(it_now_ms() - t0 >= 900);
    ck_assert(it_now_ms() - t0 < 5000);
    ck_assert(it_wait_subscribers(srv.port, "quiet", 0));
    free(res);
}
END_TEST

START_TEST(stream_sends_one_json_object_per_line)
{
    it_sub_t s;
    char id[64], want[256];

    ck_assert_int_eq(it_sub_open(&s, srv.port, "/sub/nd?transport=stream",
                              NULL), 0);
    ck_assert_ptr_nonnull(strcasestr(s.buf, "application/x-ndjson"));
    ck_assert(it_wait_subscribers(srv.port, "nd", 1));
    ck_assert_int_eq(it_publish(srv.port, "nd", "x\ty", "ev", id, sizeof(id)),
                     201);
    snprintf(want, sizeof(want), "{\"channel\":\"nd\",\"id\":\"%s\","
             "\"event\":\"ev\",", id);
    ck_assert_msg(it_sub_wait(&s, want, 5000) == 1, "got: %s", s.buf);
    ck_assert_msg(it_sub_wait(&s, "\"data\":\"x\\ty\"}\n", 5000) == 1,
                  "got: %s", s.buf);
    it_sub_close(&s);

    /* Accept: application/x-ndjson picks it too. */
    ck_assert_int_eq(it_sub_open(&s, srv.port, "/sub/nd",
                              "Accept: application/x-ndjson\r\n"), 0);
    ck_assert_ptr_nonnull(strcasestr(s.buf, "application/x-ndjson"));
    it_sub_close(&s);
}
END_TEST

START_TEST(several_channels_tell_which_channel_a_message_came_from)
{
    it_sub_t s;
    char ida[64], idb[64], want[256];

    ck_assert_int_eq(it_sub_open(&s, srv.port, "/sub/ma,mb",
                              "Accept: text/event-stream\r\n"), 0);
    ck_assert(it_wait_subscribers(srv.port, "mb", 1));
    ck_assert_int_eq(it_publish(srv.port, "mb", "to b", NULL, idb,
                             sizeof(idb)), 201);
    ck_assert_int_eq(it_publish(srv.port, "ma", "to a", "kind", ida,
                             sizeof(ida)), 201);
    ck_assert_msg(it_sub_wait(&s, "event: mb\ndata: to b\n\n", 5000) == 1,
                  "got: %s", s.buf);
    ck_assert_msg(it_sub_wait(&s, "event: ma#kind\ndata: to a\n\n", 5000) == 1,
                  "got: %s", s.buf);
    /* The compound id carries both positions: "<epoch>:<a>,<b>". */
    snprintf(want, sizeof(want), "id: %s,%s\nevent: ma#kind",
             ida, strchr(idb, ':') + 1);
    ck_assert_msg(strstr(s.buf, want), "want %s in %s", want, s.buf);
    it_sub_close(&s);
}
END_TEST

START_TEST(a_reconnecting_client_resumes_without_loss)
{
    it_sub_t s;
    char id[64], hdr[128], msg[32];
    int i;

    ck_assert_int_eq(it_sub_open(&s, srv.port, "/sub/resume",
                              "Accept: text/event-stream\r\n"), 0);
    ck_assert(it_wait_subscribers(srv.port, "resume", 1));
    ck_assert_int_eq(it_publish(srv.port, "resume", "m0", NULL, id, sizeof(id)),
                     201);
    ck_assert(it_sub_wait(&s, "data: m0\n", 5000) == 1);
    it_sub_close(&s);
    ck_assert(it_wait_subscribers(srv.port, "resume", 0));
    /* Published while the client is away. */
    for (i = 1; i <= 10; i++) {
        snprintf(msg, sizeof(msg), "m%d", i);
        ck_assert_int_eq(it_publish(srv.port, "resume", msg, NULL, NULL, 0),
                         202);
    }
    snprintf(hdr, sizeof(hdr), "Accept: text/event-stream\r\n"
             "Last-Event-ID: %s\r\n", id);
    ck_assert_int_eq(it_sub_open(&s, srv.port, "/sub/resume", hdr), 0);
    ck_assert(it_sub_wait(&s, "data: m10\n", 5000) == 1);
    for (i = 1; i <= 10; i++) {
        char *p;

        snprintf(msg, sizeof(msg), "data: m%d\n", i);
        ck_assert_msg((p = strstr(s.buf, msg)) != NULL, "lost m%d", i);
        ck_assert_msg(!strstr(p + 1, msg), "m%d twice", i);
    }
    ck_assert_ptr_null(strstr(s.buf, "data: m0\n"));
    ck_assert_ptr_null(strstr(s.buf, "comet-missed"));
    it_sub_close(&s);

    /* Browsers send no header on their first connect: the query works. */
    snprintf(hdr, sizeof(hdr), "/sub/resume?last_event_id=%s", id);
    ck_assert_int_eq(it_sub_open(&s, srv.port, hdr,
                              "Accept: text/event-stream\r\n"), 0);
    ck_assert(it_sub_wait(&s, "data: m10\n", 5000) == 1);
    it_sub_close(&s);

    /* Backlog on request, without an id. */
    ck_assert_int_eq(it_sub_open(&s, srv.port, "/sub/resume?backlog=2",
                              "Accept: text/event-stream\r\n"), 0);
    ck_assert(it_sub_wait(&s, "data: m10\n", 5000) == 1);
    ck_assert_ptr_nonnull(strstr(s.buf, "data: m9\n"));
    ck_assert_ptr_null(strstr(s.buf, "data: m8\n"));
    it_sub_close(&s);
}
END_TEST

START_TEST(keepalive_comments_flow_on_an_idle_stream)
{
    it_sub_t s;
    size_t from;

    ck_assert_int_eq(it_sub_open(&s, srv.port, "/ka/idle",
                              "Accept: text/event-stream\r\n"), 0);
    from = s.len;
    ck_assert(it_read_until(s.fd, s.buf, BUFSZ, &s.len, from, ":\n\n", 3000)
              == 1);
    from = s.len;
    ck_assert(it_read_until(s.fd, s.buf, BUFSZ, &s.len, from, ":\n\n", 3000)
              == 1);
    it_sub_close(&s);
}
END_TEST

START_TEST(a_client_that_leaves_is_forgotten_within_a_second)
{
    it_sub_t s[3];

    for (int i = 0; i < 3; i++) {
        /* s[1] is a long-poll: its head waits for its answer. */
        ck_assert_int_eq(i == 1 ? it_sub_send(&s[i], srv.port, "/sub/leave",
                                              NULL)
                                : it_sub_open(&s[i], srv.port, "/sub/leave",
                                              "Accept: text/event-stream\r\n"),
                         0);
    }
    ck_assert(it_wait_subscribers(srv.port, "leave", 3));
    for (int i = 0; i < 3; i++) {
        it_sub_close(&s[i]);
    }
    ck_assert(it_wait_subscribers(srv.port, "leave", 0));
}
END_TEST

START_TEST(subscribers_in_both_children_receive_a_publish)
{
    enum { N = 40 };
    it_sub_t s[N];
    char log[262144], id[64];
    int pids[16], npids = 0;

    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(it_sub_open(&s[i], srv.port, "/sub/spread",
                                  "Accept: text/event-stream\r\n"), 0);
    }
    ck_assert(it_wait_subscribers(srv.port, "spread", N));
    /* The access log names the process that served each subscribe. */
    {
        char path[512];
        char *line;

        snprintf(path, sizeof(path), "%s/access_log", srv.dir);
        ck_assert(it_read_file(path, log, sizeof(log)) > 0);
        for (line = strtok(log, "\n"); line; line = strtok(NULL, "\n")) {
            char *sp = strrchr(line, ' ');
            int pid, seen = 0;

            if (!strstr(line, "/sub/spread") || !sp) {
                continue;
            }
            pid = atoi(sp + 1);
            for (int k = 0; k < npids; k++) {
                seen |= pids[k] == pid;
            }
            if (!seen && npids < 16) {
                pids[npids++] = pid;
            }
        }
    }
    ck_assert_msg(npids >= 2, "all %d subscribers landed in one process", N);
    ck_assert_int_eq(it_publish(srv.port, "spread", "everyone", NULL, id,
                             sizeof(id)), 201);
    for (int i = 0; i < N; i++) {
        ck_assert_msg(it_sub_wait(&s[i], "data: everyone\n", 5000) == 1,
                      "subscriber %d got nothing", i);
        it_sub_close(&s[i]);
    }
}
END_TEST

/* HTTP/1.0 has no chunked coding: the subscriber is held and its stream
 * ends at close. */
START_TEST(an_http_1_0_client_gets_a_close_delimited_stream)
{
    it_sub_t s;
    int fd;
    size_t len = 0;
    char *buf = malloc(BUFSZ);

    fd = it_connect(srv.port);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(it_sendf(fd, "GET /sub/old HTTP/1.0\r\n"
                              "Accept: text/event-stream\r\n\r\n"), 0);
    ck_assert(it_read_until(fd, buf, BUFSZ, &len, 0, "retry: 3000\n\n",
                            5000) == 1);
    ck_assert_ptr_null(strcasestr(buf, "Transfer-Encoding"));
    ck_assert(it_wait_subscribers(srv.port, "old", 1));
    ck_assert_int_eq(it_publish(srv.port, "old", "for an old client", NULL,
                             NULL, 0), 201);
    ck_assert_msg(it_read_until(fd, buf, BUFSZ, &len, 0,
                                "data: for an old client\n\n", 5000) == 1,
                  "got %s", buf);
    close(fd);
    ck_assert(it_wait_subscribers(srv.port, "old", 0));
    free(buf);
    (void)s;
}
END_TEST

START_TEST(bad_input_gets_a_clear_4xx)
{
    it_response_t *res = malloc(sizeof(*res));

    ck_assert_int_eq(it_http(srv.port, "GET", "/sub/bad%20channel", NULL,
                             NULL, 0, res, 5000), 0);
    ck_assert_int_eq(res->status, 400);
    ck_assert_ptr_nonnull(strstr(res->body, "invalid channel id"));
    ck_assert_int_eq(it_http(srv.port, "GET", "/two/a,b,c", NULL, NULL, 0,
                             res, 5000), 0);
    ck_assert_int_eq(res->status, 400);
    ck_assert_ptr_nonnull(strstr(res->body, "too many channels"));
    ck_assert_int_eq(it_http(srv.port, "GET", "/sub/x?transport=smoke",
                             NULL, NULL, 0, res, 5000), 0);
    ck_assert_int_eq(res->status, 400);
    ck_assert_int_eq(it_http(srv.port, "GET", "/sse-only/x", NULL, NULL, 0,
                             res, 5000), 0);
    ck_assert_int_eq(res->status, 406);
    ck_assert_int_eq(it_http(srv.port, "POST", "/sub/x", NULL, "x", 1, res,
                             5000), 0);
    ck_assert_int_eq(res->status, 405);
    ck_assert_int_eq(it_http(srv.port, "GET", "/sub/a,a", NULL, NULL, 0,
                             res, 5000), 0);
    ck_assert_int_eq(res->status, 400);
    free(res);
}
END_TEST

START_TEST(cors_and_channel_expressions_follow_the_config)
{
    it_response_t *res = malloc(sizeof(*res));
    char v[128];
    it_sub_t s;

    ck_assert_int_eq(it_http(srv.port, "OPTIONS", "/cors/c",
                             "Origin: https://app.example\r\n", NULL, 0, res,
                             5000), 0);
    ck_assert_int_eq(res->status, 204);
    ck_assert_ptr_nonnull(it_header(res, "Access-Control-Allow-Origin", v,
                                    sizeof(v)));
    ck_assert_str_eq(v, "https://app.example");
    ck_assert_int_eq(it_http(srv.port, "OPTIONS", "/cors/c",
                             "Origin: https://evil.example\r\n", NULL, 0,
                             res, 5000), 0);
    ck_assert_ptr_null(it_header(res, "Access-Control-Allow-Origin", v,
                                 sizeof(v)));
    /* CometChannel takes the channel from an expression. */
    ck_assert_int_eq(it_sub_open(&s, srv.port, "/byarg?fromquery",
                              "Accept: text/event-stream\r\n"), 0);
    ck_assert(it_wait_subscribers(srv.port, "fromquery", 1));
    it_sub_close(&s);
    free(res);
}
END_TEST


/* Subscribe and leave, over and over, in every shape (detached, and
 * suspended for HTTP/1.0). */
static void churn(int port, int cycles)
{
    static const char *const reqs[] = {
        "GET /sub/churn HTTP/1.1\r\nHost: x\r\n"
        "Accept: text/event-stream\r\n\r\n",
        "GET /sub/churn?transport=stream HTTP/1.1\r\nHost: x\r\n\r\n",
        /* (A parked long-poll sends no head before its answer: its
         * cycles are test_longpoll's.) */
        "GET /sub/churn,other HTTP/1.1\r\nHost: x\r\n"
        "Accept: text/event-stream\r\n\r\n",
        /* Suspended (no chunked coding): the MPM's connection is kept. */
        "GET /sub/churn HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n",
    };
    char buf[4096];

    for (int i = 0; i < cycles; i++) {
        int fd = it_connect(port);
        size_t len = 0;

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(it_sendf(fd, "%s", reqs[i % 4]), 0);
        ck_assert_int_eq(it_read_until(fd, buf, sizeof(buf), &len, 0,
                                       "\r\n\r\n", 5000), 1);
        close(fd);
    }
}

/* ---- separate servers ------------------------------------------------------------ */

START_TEST(an_id_older_than_the_buffer_gets_the_rest_and_a_missed_signal)
{
    it_server_t s2;
    it_opts_t o;
    it_sub_t s;
    char id[64], hdr[128], msg[16];

    memset(&o, 0, sizeof(o));
    o.extra = "CometMessageBufferLength 3\n";
    ck_assert_int_eq(it_server_start(&s2, &o), 0);
    ck_assert_int_eq(it_publish(s2.port, "small", "m0", NULL, id, sizeof(id)),
                     202);
    for (int i = 1; i <= 6; i++) {
        snprintf(msg, sizeof(msg), "m%d", i);
        ck_assert_int_eq(it_publish(s2.port, "small", msg, NULL, NULL, 0), 202);
    }
    snprintf(hdr, sizeof(hdr), "Accept: text/event-stream\r\n"
             "Last-Event-ID: %s\r\n", id);
    ck_assert_int_eq(it_sub_open(&s, s2.port, "/sub/small", hdr), 0);
    ck_assert(it_sub_wait(&s, "data: m6\n", 5000) == 1);
    ck_assert_ptr_nonnull(strstr(s.buf, "event: comet-missed\ndata: small"));
    ck_assert_ptr_nonnull(strstr(s.buf, "data: m4\n"));
    ck_assert_ptr_null(strstr(s.buf, "data: m3\n"));
    it_sub_close(&s);

    /* Long-poll says the same in its JSON. */
    {
        it_response_t *res = malloc(sizeof(*res));
        char path[128];

        snprintf(path, sizeof(path), "/sub/small?last_event_id=%s", id);
        ck_assert_int_eq(it_http(s2.port, "GET", path, NULL, NULL, 0, res,
                                 5000), 0);
        ck_assert_ptr_nonnull(strstr(res->body, "\"missed\":true"));
        free(res);
    }
    it_server_stop(&s2);
}
END_TEST

START_TEST(graceful_restart_ends_parked_streams_and_clients_resume)
{
    it_server_t s2;
    it_sub_t s;
    char id[64], hdr[128];

    ck_assert_int_eq(it_server_start(&s2, NULL), 0);
    ck_assert_int_eq(it_sub_open(&s, s2.port, "/sub/gr",
                              "Accept: text/event-stream\r\n"), 0);
    ck_assert(it_wait_subscribers(s2.port, "gr", 1));
    ck_assert_int_eq(it_publish(s2.port, "gr", "before", NULL, id, sizeof(id)),
                     201);
    ck_assert(it_sub_wait(&s, "data: before\n", 5000) == 1);
    ck_assert_int_eq(it_server_graceful(&s2), 0);
    /* The stream ended cleanly (last chunk) and promptly. */
    ck_assert_int_eq(it_read_to_close(s.fd, s.buf, BUFSZ, &s.len, 5000), 1);
    ck_assert_ptr_nonnull(strstr(s.buf + s.body, "0\r\n\r\n"));
    it_sub_close(&s);
    ck_assert_int_eq(it_publish(s2.port, "gr", "after", NULL, NULL, 0), 202);
    snprintf(hdr, sizeof(hdr), "Accept: text/event-stream\r\n"
             "Last-Event-ID: %s\r\n", id);
    ck_assert_int_eq(it_sub_open(&s, s2.port, "/sub/gr", hdr), 0);
    ck_assert(it_sub_wait(&s, "data: after\n", 5000) == 1);
    it_sub_close(&s);
    it_server_stop(&s2);
}
END_TEST

START_TEST(sse_over_tls_works)
{
    it_server_t s2;
    it_opts_t o;
    char cmd[512], out[16384];
    FILE *f;
    size_t n = 0;

    memset(&o, 0, sizeof(o));
    o.tls = 1;
    ck_assert_int_eq(it_server_start(&s2, &o), 0);
    snprintf(cmd, sizeof(cmd), "curl -sk -N --max-time 8 -H 'Accept: "
             "text/event-stream' https://127.0.0.1:%d/sub/tls 2>&1",
             s2.tls_port);
    f = popen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    ck_assert(it_wait_subscribers(s2.port, "tls", 1));
    ck_assert_int_eq(it_publish(s2.port, "tls", "secret", NULL, NULL, 0), 201);
    /* Read until the event is there (curl exits by --max-time at worst). */
    while (n < sizeof(out) - 1) {
        size_t r = fread(out + n, 1, 1, f);

        if (r == 0) {
            break;
        }
        n += r;
        out[n] = '\0';
        if (strstr(out, "data: secret\n\n")) {
            break;
        }
    }
    out[n] = '\0';
    ck_assert_msg(strstr(out, "data: secret\n\n"), "curl said: %s", out);
    it_server_stop(&s2);
    pclose(f);
}
END_TEST

/* 5,000 parked SSE subscribers with the MPM's defaults apart from two
 * children of 25 threads: all get the message, and ordinary requests are
 * answered meanwhile. */
START_TEST(five_thousand_parked_subscribers_all_receive_while_the_site_answers)
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
        fds[i] = it_connect(s2.port);
        ck_assert_msg(fds[i] >= 0, "connect %d failed", i);
        ck_assert_int_eq(it_sendf(fds[i], "GET /sub/many HTTP/1.1\r\nHost: x"
                                  "\r\nAccept: text/event-stream\r\n\r\n"),
                         0);
    }
    ck_assert(it_wait_subscribers(s2.port, "many", N));
    /* The site still answers. */
    ck_assert_int_eq(it_http(s2.port, "GET", "/index.html", NULL, NULL, 0,
                             res, 5000), 0);
    ck_assert_int_eq(res->status, 200);
    ck_assert_int_eq(it_publish(s2.port, "many", "to all", NULL, NULL, 0), 201);

    /* Each stream must show the event; read whatever is there. */
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
            char buf[4096];
            ssize_t n;
            int i;

            if (!(pfd[j].revents & POLLIN)) {
                continue;
            }
            for (i = 0; fds[i] != pfd[j].fd; i++) {
            }
            n = recv(fds[i], buf, sizeof(buf) - 1, MSG_DONTWAIT);
            if (n > 0) {
                buf[n] = '\0';
                /* Events are small: one read holds the whole of it. */
                if (memmem(buf, (size_t)n, "data: to all\n", 13)) {
                    got[i] = 1;
                    done++;
                }
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
    ck_assert(it_wait_subscribers(s2.port, "many", 0));
    it_server_stop(&s2);
    free(fds);
    free(got);
    free(pfd);
    free(res);
}
END_TEST


/* With CometHTTP2 hold, a subscriber over HTTP/2 stays on its h2 worker
 * (never suspended: that would reset the stream); SSE and long-poll both
 * work. */
START_TEST(sse_and_long_poll_over_http2_work)
{
    it_server_t s2;
    it_opts_t o;
    char cmd[512], out[16384];
    FILE *sse, *lp;
    size_t n = 0;

    memset(&o, 0, sizeof(o));
    o.extra = "LoadModule http2_module @MODULES@/mod_http2.so\n"
              "Protocols h2c http/1.1\nCometHTTP2 hold\n";
    ck_assert_int_eq(it_server_start(&s2, &o), 0);
    snprintf(cmd, sizeof(cmd), "curl -s -N --http2-prior-knowledge "
             "--max-time 8 -H 'Accept: text/event-stream' "
             "http://127.0.0.1:%d/sub/h2 2>&1", s2.port);
    sse = popen(cmd, "r");
    snprintf(cmd, sizeof(cmd), "curl -s --http2-prior-knowledge --max-time 8"
             " -w ' HTTP/%%{http_version}' http://127.0.0.1:%d/sub/h2 2>&1",
             s2.port);
    lp = popen(cmd, "r");
    ck_assert(sse && lp);
    ck_assert(it_wait_subscribers(s2.port, "h2", 2));
    ck_assert_int_eq(it_publish(s2.port, "h2", "over h2", NULL, NULL, 0), 201);
    while (n < sizeof(out) - 1 && fread(out + n, 1, 1, sse) == 1) {
        n++;
        out[n] = '\0';
        if (strstr(out, "data: over h2\n\n")) {
            break;
        }
    }
    out[n] = '\0';
    ck_assert_msg(strstr(out, "data: over h2\n\n"), "SSE over h2: %s", out);
    n = fread(out, 1, sizeof(out) - 1, lp);
    out[n] = '\0';
    ck_assert_msg(strstr(out, "\"data\":\"over h2\"") && strstr(out, "HTTP/2"),
                  "long-poll over h2: %s", out);
    it_server_stop(&s2);
    pclose(sse);
    pclose(lp);
}
END_TEST

/* CometMaxSubscribers bounds each child; one more gets 503 with
 * Retry-After, and a place frees when a subscriber leaves. */
START_TEST(the_subscriber_limit_answers_503_with_retry_after)
{
    it_server_t s2;
    it_opts_t o;
    it_sub_t subs[3];
    int opened = 0, refused = 0;
    it_response_t *res = malloc(sizeof(*res));
    char v[32];

    memset(&o, 0, sizeof(o));
    o.extra = "CometMaxSubscribers 1\n";
    ck_assert_int_eq(it_server_start(&s2, &o), 0);
    /* Two children with room for one each: by the third at the latest a
     * child that already holds one gets the request. */
    for (int i = 0; i < 3 && !refused; i++) {
        ck_assert_int_eq(it_sub_open(&subs[opened], s2.port, "/sub/capped",
                                  "Accept: text/event-stream\r\n"), 0);
        if (strstr(subs[opened].buf, " 503 ")) {
            refused = 1;
            ck_assert_ptr_nonnull(strcasestr(subs[opened].buf,
                                             "Retry-After: 5"));
            it_sub_close(&subs[opened]);
        }
        else {
            ck_assert_ptr_nonnull(strstr(subs[opened].buf, " 200 "));
            opened++;
            ck_assert(it_wait_subscribers(s2.port, "capped", opened));
        }
    }
    ck_assert_msg(refused, "no 503 with %d subscribers open", opened);
    ck_assert_int_le(opened, 2);
    for (int i = 0; i < opened; i++) {
        it_sub_close(&subs[i]);
    }
    ck_assert(it_wait_subscribers(s2.port, "capped", 0));
    ck_assert_int_eq(it_http(s2.port, "GET", "/sub/capped?transport=longpoll"
                             "&last_event_id=00000001:0", NULL, NULL, 0, res,
                             5000), 0);
    ck_assert_int_eq(res->status, 200);
    (void)v;
    free(res);
    it_server_stop(&s2);
}
END_TEST

/* 50,000 subscribe/disconnect cycles: memory and descriptors of the
 * children come back to where they were (a leak of a record, a pool or a
 * socket per cycle would show as megabytes or thousands of fds). */
/* Every suspended connection has ended, as mod_comet and the MPM count. */
static int no_suspended_left(void *baton)
{
    int port = *(int *)baton;

    return it_status_value(port, "CometSuspended") == 0
           && it_status_value(port, "CometMpmSuspended") == 0
           && it_status_value(port, "CometMpmConnections") <= 1;
}

START_TEST(fifty_thousand_subscribe_disconnect_cycles_leave_nothing_behind)
{
    it_server_t s2;
    long rss0, fds0, rss1, fds1;

    ck_assert_int_eq(it_server_start(&s2, NULL), 0);
    /* Warm up: pools, allocator arenas and tables reach their working
     * size first. */
    churn(s2.port, 5000);
    ck_assert(it_wait_subscribers(s2.port, "churn", 0));
    it_children_usage(&s2, &rss0, &fds0);
    churn(s2.port, 50000);
    ck_assert(it_wait_subscribers(s2.port, "churn", 0));
    ck_assert(it_wait_subscribers(s2.port, "other", 0));
    ck_assert(it_wait_for(no_suspended_left, &s2.port, 10000));
    ck_assert_int_eq(it_log_count(&s2, "exit signal"), 0);
    it_children_usage(&s2, &rss1, &fds1);
    fprintf(stderr, "churn: children private RSS %ld -> %ld kB, fds %ld -> "
            "%ld\n",
            rss0, rss1, fds0, fds1);
    ck_assert_msg(fds1 <= fds0 + 4, "descriptors grew from %ld to %ld",
                  fds0, fds1);
    /* Under AddressSanitizer freed memory waits in its quarantine (up to
     * 256 MB), so RSS says nothing there; ASan itself checks the heap. */
    if (!getenv("COMET_ASAN")) {
        ck_assert_msg(rss1 <= rss0 + 1024, "private RSS grew from %ld to "
                      "%ld kB", rss0, rss1);
    }
    it_server_stop(&s2);
}
END_TEST

Suite *test_subscribe_suite(void)
{
    Suite *s = suite_create("subscribe");
    TCase *tc = tcase_create("transports");
    TCase *own = tcase_create("own-server");

    tcase_add_unchecked_fixture(tc, start, stop);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, sse_delivers_each_message_as_an_event_with_a_resumable_id);
    tcase_add_test(tc, long_poll_waits_then_answers_with_json_and_the_next_id);
    tcase_add_test(tc, long_poll_times_out_with_an_empty_answer);
    tcase_add_test(tc, stream_sends_one_json_object_per_line);
    tcase_add_test(tc, several_channels_tell_which_channel_a_message_came_from);
    tcase_add_test(tc, a_reconnecting_client_resumes_without_loss);
    tcase_add_test(tc, keepalive_comments_flow_on_an_idle_stream);
    tcase_add_test(tc, a_client_that_leaves_is_forgotten_within_a_second);
    tcase_add_test(tc, subscribers_in_both_children_receive_a_publish);
    tcase_add_test(tc, an_http_1_0_client_gets_a_close_delimited_stream);
    tcase_add_test(tc, bad_input_gets_a_clear_4xx);
    tcase_add_test(tc, cors_and_channel_expressions_follow_the_config);
    suite_add_tcase(s, tc);

    tcase_set_timeout(own, 240);
    tcase_add_test(own, an_id_older_than_the_buffer_gets_the_rest_and_a_missed_signal);
    tcase_add_test(own, graceful_restart_ends_parked_streams_and_clients_resume);
    tcase_add_test(own, sse_over_tls_works);
    tcase_add_test(own, sse_and_long_poll_over_http2_work);
    tcase_add_test(own, the_subscriber_limit_answers_503_with_retry_after);
    tcase_add_test(own, five_thousand_parked_subscribers_all_receive_while_the_site_answers);
    tcase_add_test(own, fifty_thousand_subscribe_disconnect_cycles_leave_nothing_behind);
    suite_add_tcase(s, own);
    return s;
}
