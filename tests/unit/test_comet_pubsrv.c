/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* Unit tests of comet_pubsrv.c, the publish socket's connections: partial
 * reads, pipelines, many clients, framing errors, the memory bounds, the
 * client limit and the server's end (pubsrv_util.h has the fixture).
 * Every test runs in its own forked process under check's timeout. */
#include "pubsrv_util.h"

/* ---- pipelines ---------------------------------------------------------- */

START_TEST(a_pipeline_fed_one_byte_at_a_time_is_answered_in_order)
{
    char *pipe = malloc(64 * 1024), exp[64 * 16];
    size_t len = 0, elen = 0, i;
    comet_read_t r;
    int fd;

    start(NULL);
    fd = client();
    for (i = 0; i < 200; i++) {
        char num[16];
        int n = snprintf(num, sizeof(num), "%zu", i);

        /* Both framings, mixed. */
        if (i % 2) {
            len += (size_t)sprintf(pipe + len, "*3\r\n$7\r\nPUBLISH\r\n$3\r\n"
                                   "seq\r\n$%d\r\n%s\r\n", n, num);
        }
        else {
            len += (size_t)sprintf(pipe + len, "publish seq %s\r\n", num);
        }
    }
    len += (size_t)sprintf(pipe + len, "PING\r\n");
    for (i = 0; i < 200; i++) {
        elen += (size_t)sprintf(exp + elen, ":0\r\n");
    }
    sprintf(exp + elen, "+PONG\r\n");
    /* The first 300 bytes one at a time (partial reads everywhere), the
     * rest at once. */
    for (i = 0; i < 300; i++) {
        send_all(fd, pipe + i, 1);
    }
    send_all(fd, pipe + 300, len - 300);
    expect(fd, exp);

    r = read_all("seq");
    ck_assert_int_eq(r.msgs->nelts, 100);      /* the buffer length */
    for (i = 0; i < 100; i++) {
        char num[16];

        snprintf(num, sizeof(num), "%zu", i + 100);
        ck_assert_str_eq(msg_at(&r, (int)i)->data, num);
    }
    free(pipe);
    close(fd);
}
END_TEST

START_TEST(many_clients_at_once_each_get_their_own_answers)
{
    enum { NCLIENT = 40, NMSG = 50 };
    int fds[NCLIENT], c, m;

    start(NULL);
    for (c = 0; c < NCLIENT; c++) {
        fds[c] = client();
    }
    /* Interleaved: every client has commands in flight at once. */
    for (m = 0; m < NMSG; m++) {
        for (c = 0; c < NCLIENT; c++) {
            char cmd[64];

            snprintf(cmd, sizeof(cmd), "PUBLISH ch%d m%d\r\n", c, m);
            send_str(fds[c], cmd);
        }
    }
    for (c = 0; c < NCLIENT; c++) {
        char ch[16];
        comet_read_t r;

        for (m = 0; m < NMSG; m++) {
            expect(fds[c], ":0\r\n");
        }
        snprintf(ch, sizeof(ch), "ch%d", c);
        r = read_all(ch);
        ck_assert_int_eq(r.msgs->nelts, NMSG);
        ck_assert_str_eq(msg_at(&r, NMSG - 1)->data, "m49");
        close(fds[c]);
    }
    ck_assert(wait_until(no_clients));
}
END_TEST

START_TEST(commands_sent_before_a_half_close_are_all_answered)
{
    int fd;

    start(NULL);
    fd = client();
    send_str(fd, "PUBLISH a 1\r\nPUBLISH a 2\r\nPING\r\n");
    shutdown(fd, SHUT_WR);
    expect(fd, ":0\r\n:0\r\n+PONG\r\n");
    expect_closed(fd);
    close(fd);
}
END_TEST

/* ---- framing errors ----------------------------------------------------- */

START_TEST(malformed_framing_is_answered_then_only_that_client_is_closed)
{
    int bad, good;

    start(NULL);
    good = client();
    bad = client();
    send_str(bad, "*2\r\n$4\r\nPING\r\n$x\r\n");
    expect(bad, "-ERR Protocol error: invalid bulk length\r\n");
    expect_closed(bad);
    close(bad);

    bad = client();
    send_str(bad, "PING \"unbalanced\r\n");
    expect(bad, "-ERR Protocol error: unbalanced quotes in request\r\n");
    expect_closed(bad);
    close(bad);

    send_str(good, "PING\r\n");
    expect(good, "+PONG\r\n");
    close(good);
}
END_TEST

START_TEST(a_bulk_far_beyond_the_limit_is_refused_without_reading_it)
{
    int fd;

    start(NULL);
    fd = client();
    /* Declared 100 MB: refused on its header line, nothing buffered. */
    send_str(fd, "*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$100000000\r\n");
    expect(fd, "-ERR message larger than CometMaxMessageSize (4096 "
           "bytes)\r\n");
    expect_closed(fd);
    close(fd);
}
END_TEST

START_TEST(a_request_larger_than_the_input_bound_ends_the_connection)
{
    char *arg = malloc(60000);
    int fd, i;

    start(NULL);
    memset(arg, 'a', 60000);
    fd = client();
    /* Each argument is allowed, together they pass the bound (4 KiB of
     * message + 64 KiB of slack + 64 KiB of arguments). */
    send_str(fd, "*5\r\n$6\r\nPUBSUB\r\n$6\r\nNUMSUB\r\n");
    for (i = 0; i < 3; i++) {
        send_until_closed(fd, "$60000\r\n", 8);
        send_until_closed(fd, arg, 60000);
        send_until_closed(fd, "\r\n", 2);
    }
    expect(fd, "-ERR Protocol error: request larger than 135168 "
           "bytes\r\n");
    expect_closed(fd);
    free(arg);
    close(fd);
}
END_TEST

/* ---- bounds ------------------------------------------------------------- */

static int stuck_dropped(void)
{
    comet_pubsrv_stats_t s;

    comet_pubsrv_stats(fx.srv, &s);
    return s.dropped == 1 && s.clients == 0;
}

START_TEST(a_client_that_never_reads_is_throttled_then_dropped)
{
    char chunk[4096];
    size_t sent = 0;
    opts_t o;
    int fd, small = 16 * 1024;

    memset(&o, 0, sizeof(o));
    o.max_output = 4096;
    o.stuck = apr_time_from_msec(300);
    start(&o);
    fd = client();
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    for (size_t i = 0; i + 6 <= sizeof(chunk); i += 6) {
        memcpy(chunk + i, "PING\r\n", 6);
    }
    /* Write PINGs without reading a reply until the server stops taking
     * them: writes must block well before what we sent would have cost
     * the server unbounded memory. */
    for (;;) {
        struct pollfd p = { fd, POLLOUT, 0 };
        ssize_t n;

        if (poll(&p, 1, 500) <= 0) {
            break;                          /* not writable: held back */
        }
        n = send(fd, chunk, sizeof(chunk) - sizeof(chunk) % 6,
                 MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EAGAIN) {
            continue;
        }
        if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) {
            break;                          /* already let go */
        }
        ck_assert_int_gt(n, 0);
        sent += (size_t)n;
        ck_assert_msg(sent < 64 * 1024 * 1024, "server never pushed back");
    }
    ck_assert_msg(sent < 8 * 1024 * 1024, "sent %zu bytes before blocking",
                  sent);
    /* Taking nothing for the stuck timeout gets it disconnected. */
    ck_assert(wait_until(stuck_dropped));
    close(fd);
}
END_TEST

START_TEST(a_slow_client_that_keeps_reading_gets_every_reply)
{
    enum { N = 20000 };
    char *pipe = malloc(N * 6), buf[4096];
    size_t got = 0, want = (size_t)N * 7;
    long long end;
    opts_t o;
    int fd;

    memset(&o, 0, sizeof(o));
    o.max_output = 2048;
    o.stuck = apr_time_from_msec(500);
    start(&o);
    for (int i = 0; i < N; i++) {
        memcpy(pipe + i * 6, "PING\r\n", 6);
    }
    fd = client();
    send_all(fd, pipe, (size_t)N * 6 / 2);
    end = now_ms() + 20000;
    /* Read in small bites, sending the rest of the pipeline meanwhile. */
    {
        size_t off = (size_t)N * 6 / 2;

        while (got < want && now_ms() < end) {
            struct pollfd p = { fd, POLLIN, 0 };
            ssize_t n;

            if (off < (size_t)N * 6) {
                n = send(fd, pipe + off, (size_t)N * 6 - off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n > 0) {
                    off += (size_t)n;
                }
            }
            if (poll(&p, 1, 100) <= 0) {
                continue;
            }
            n = recv(fd, buf, 512, 0);
            ck_assert_int_gt(n, 0);
            for (ssize_t i = 0; i < n; i++) {
                ck_assert(buf[i] == "+PONG\r\n"[(got + (size_t)i) % 7]);
            }
            got += (size_t)n;
        }
    }
    ck_assert_uint_eq(got, want);
    free(pipe);
    close(fd);
}
END_TEST

static int one_client(void)
{
    comet_pubsrv_stats_t s;

    comet_pubsrv_stats(fx.srv, &s);
    return s.clients == 1;
}

START_TEST(clients_past_the_limit_are_told_and_closed)
{
    opts_t o;
    int a, b, c;

    memset(&o, 0, sizeof(o));
    o.max_clients = 2;
    start(&o);
    a = client();
    b = client();
    send_str(a, "PING\r\n");
    send_str(b, "PING\r\n");
    expect(a, "+PONG\r\n");
    expect(b, "+PONG\r\n");
    c = client();
    expect(c, "-ERR max number of clients reached\r\n");
    expect_closed(c);
    close(c);
    close(a);
    /* A place is free again once a client leaves. */
    ck_assert(wait_until(one_client));
    c = client();
    send_str(c, "PING\r\n");
    expect(c, "+PONG\r\n");
    close(b);
    close(c);
}
END_TEST

START_TEST(an_adopted_socketpair_is_served_and_stats_count_it)
{
    comet_pubsrv_stats_t s;
    int sv[2];
    opts_t o;

    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
                     0);
    memset(&o, 0, sizeof(o));
    o.adopt_fd = sv[1];
    start(&o);
    send_str(sv[0], "PUBLISH p 1\r\nNOPE\r\n");
    expect(sv[0], ":0\r\n-ERR unknown command 'NOPE', with args beginning "
           "with: \r\n");
    comet_pubsrv_stats(fx.srv, &s);
    ck_assert_uint_eq(s.clients, 1);
    ck_assert_uint_eq(s.accepted, 1);
    ck_assert_uint_eq(s.commands, 2);
    ck_assert_uint_eq(s.publishes, 1);
    ck_assert_uint_eq(s.errors, 1);
    close(sv[0]);
    ck_assert(wait_until(no_clients));
}
END_TEST

START_TEST(a_stopped_server_closes_its_clients_when_its_pool_goes)
{
    char c;
    int fd;

    start(NULL);
    fd = client();
    send_str(fd, "PING\r\n");
    expect(fd, "+PONG\r\n");
    comet_loop_stop(fx.loop);
    pthread_join(fx.thread, NULL);
    fx.running = 0;
    apr_pool_clear(comet_test_pool);
    ck_assert_int_eq(recv(fd, &c, 1, 0), 0);
    close(fd);
}
END_TEST

Suite *test_comet_pubsrv_suite(void)
{
    Suite *s = suite_create("comet_pubsrv");
    TCase *tp = tcase_create("pipelines");
    TCase *te = tcase_create("errors");
    TCase *tb = tcase_create("bounds");

    tcase_add_checked_fixture(tp, setup, teardown);
    tcase_add_test(tp, a_pipeline_fed_one_byte_at_a_time_is_answered_in_order);
    tcase_add_test(tp, many_clients_at_once_each_get_their_own_answers);
    tcase_add_test(tp, commands_sent_before_a_half_close_are_all_answered);
    suite_add_tcase(s, tp);

    tcase_add_checked_fixture(te, setup, teardown);
    tcase_add_test(te, malformed_framing_is_answered_then_only_that_client_is_closed);
    tcase_add_test(te, a_bulk_far_beyond_the_limit_is_refused_without_reading_it);
    tcase_add_test(te, a_request_larger_than_the_input_bound_ends_the_connection);
    suite_add_tcase(s, te);

    tcase_add_checked_fixture(tb, setup, teardown);
    tcase_set_timeout(tb, 30);
    tcase_add_test(tb, a_client_that_never_reads_is_throttled_then_dropped);
    tcase_add_test(tb, a_slow_client_that_keeps_reading_gets_every_reply);
    tcase_add_test(tb, clients_past_the_limit_are_told_and_closed);
    tcase_add_test(tb, an_adopted_socketpair_is_served_and_stats_count_it);
    tcase_add_test(tb, a_stopped_server_closes_its_clients_when_its_pool_goes);
    suite_add_tcase(s, tb);
    return s;
}
