/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* Long-poll at streaming's cost, against the real apache2 (event MPM, two
 * children): a parked long-poll's head leaves with its answer, in one
 * send. */

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"

static it_server_t srv;

static void start(void)
{
    it_opts_t o;

    memset(&o, 0, sizeof(o));
    o.extra =
        "<Location /lp3/>\n  SetHandler comet-subscriber\n"
        "  CometSubscriberTimeout 3\n</Location>\n";
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

Suite *test_longpoll_suite(void)
{
    Suite *s = suite_create("longpoll");
    TCase *tc = tcase_create("head");

    tcase_add_checked_fixture(tc, start, stop);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, a_parked_long_poll_sends_its_head_with_the_answer);
    tcase_add_test(tc,
        a_long_poll_that_times_out_sends_its_head_with_the_empty_answer);
    tcase_add_test(tc, streams_and_immediate_answers_send_their_head_at_once);
    suite_add_tcase(s, tc);
    return s;
}
