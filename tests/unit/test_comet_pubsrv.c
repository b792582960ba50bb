/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* Unit tests of comet_pubsrv.c, the publish socket's connections: partial
 * reads, pipelines, many clients, framing errors, the memory bounds, the
 * client limit and the server's end (pubsrv_util.h has the fixture).
 * Every test runs in its own forked process under check's timeout. */
#include <apr_strings.h>

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
    send_str(c, "PING\r\n");
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

/* ---- deadlines ---------------------------------------------------------- */

static comet_pubsrv_stats_t stats(comet_pubsrv_t *srv)
{
    comet_pubsrv_stats_t s;

    comet_pubsrv_stats(srv, &s);
    return s;
}

static int no_input(void)
{
    return stats(fx.srv).input_bytes == 0;
}

static int has_input(void)
{
    return stats(fx.srv).input_bytes > 0;
}

static int one_timeout(void)
{
    return stats(fx.srv).timeouts == 1;
}

START_TEST(an_idle_client_is_closed_and_a_busy_one_is_not)
{
    long long end;
    opts_t o;
    int idle, busy;

    memset(&o, 0, sizeof(o));
    o.idle_timeout = apr_time_from_msec(300);
    start(&o);
    idle = client();
    busy = client();
    send_str(idle, "PING\r\n");
    expect(idle, "+PONG\r\n");
    /* A command every 100 ms keeps the other one for three timeouts. */
    end = now_ms() + 900;
    while (now_ms() < end) {
        send_str(busy, "PING\r\n");
        expect(busy, "+PONG\r\n");
        usleep(100 * 1000);
    }
    /* Closed without a word, as Redis closes idle clients. */
    expect_closed(idle);
    send_str(busy, "PING\r\n");
    expect(busy, "+PONG\r\n");
    ck_assert_uint_eq(stats(fx.srv).timeouts, 1);
    ck_assert_uint_eq(stats(fx.srv).clients, 1);
    close(idle);
    close(busy);
}
END_TEST

START_TEST(a_half_sent_bulk_is_told_and_closed_after_the_command_timeout)
{
    char part[3000];
    opts_t o;
    int fd, keep;

    memset(&o, 0, sizeof(o));
    o.command_timeout = apr_time_from_msec(300);
    start(&o);
    fd = client();
    keep = client();
    memset(part, 'x', sizeof(part));
    /* 3000 of the 4000 bytes announced, then nothing. */
    send_str(fd, "*3\r\n$7\r\nPUBLISH\r\n$1\r\nh\r\n$4000\r\n");
    send_all(fd, part, sizeof(part));
    ck_assert(wait_until(has_input));
    expect(fd, "-ERR command not complete after 300 ms: closing the "
           "connection\r\n");
    expect_closed(fd);
    ck_assert(wait_until(one_timeout));
    ck_assert(wait_until(no_input));
    /* No idle timeout by default: the other client stays. */
    send_str(keep, "PING\r\n");
    expect(keep, "+PONG\r\n");
    close(fd);
    close(keep);
}
END_TEST

static int one_dropped(void)
{
    return stats(fx.srv).dropped == 1;
}

START_TEST(a_timer_that_cannot_be_armed_closes_its_client_and_counts)
{
    char c;
    opts_t o;
    int fds[4], i;
    size_t got;

    memset(&o, 0, sizeof(o));
    o.max_timers = 3;                   /* far too few for the clients */
    o.idle_timeout = apr_time_from_sec(60);
    start(&o);
    for (i = 0; i < 3; i++) {
        fds[i] = client();
        send_str(fds[i], "PING\r\n");
        expect(fds[i], "+PONG\r\n");
    }
    /* The fourth would have no idle timeout: it is not served at all. */
    fds[3] = client();
    ck_assert(wait_until(one_dropped));
    ck_assert(!read_n(fds[3], &c, 1, &got) && got == 0);
    for (i = 0; i < 3; i++) {
        send_str(fds[i], "PING\r\n");
        expect(fds[i], "+PONG\r\n");
        close(fds[i]);
    }
    close(fds[3]);
    ck_assert_uint_ge(comet_pubsrv_timers(0), 1024);
}
END_TEST

/* ---- input buffers --------------------------------------------------- */

START_TEST(whole_commands_cost_no_input_buffer_of_their_own)
{
    char *pipe = malloc(200 * 16);
    size_t len = 0;
    int fds[20], i;

    start(NULL);
    for (i = 0; i < 200; i++) {
        len += (size_t)sprintf(pipe + len, "PUBLISH w %d\r\n", i);
    }
    for (i = 0; i < 20; i++) {
        fds[i] = client();
        send_all(fds[i], pipe, len);
    }
    for (i = 0; i < 20; i++) {
        int n;

        for (n = 0; n < 200; n++) {
            expect(fds[i], ":0\r\n");
        }
    }
    /* Twenty idle connections hold no input at all. */
    ck_assert_uint_eq(stats(fx.srv).input_bytes, 0);
    /* An unfinished command holds about its own size. */
    send_str(fds[0], "PUBLISH w 12345");
    ck_assert(wait_until(has_input));
    ck_assert_uint_le(stats(fx.srv).input_bytes, 64);
    send_str(fds[0], "\r\n");
    expect(fds[0], ":0\r\n");
    ck_assert(wait_until(no_input));
    for (i = 0; i < 20; i++) {
        close(fds[i]);
    }
    free(pipe);
}
END_TEST

START_TEST(unfinished_commands_together_stay_under_max_input)
{
    enum { N = 8, PART = 100 * 1024 };
    char *part = malloc(PART), buf[256];
    comet_pubsrv_stats_t s;
    int fds[N], i, told = -1;
    opts_t o;

    memset(&o, 0, sizeof(o));
    o.max_message = 128 * 1024;
    /* Room for two and a half of the eight half-sent bulks. */
    o.max_input = 300 * 1000;
    start(&o);
    memset(part, 'y', PART);
    for (i = 0; i < N; i++) {
        fds[i] = client();
        send_str(fds[i], "*3\r\n$7\r\nPUBLISH\r\n$1\r\nb\r\n$120000\r\n");
        send_all(fds[i], part, PART);
        s = stats(fx.srv);
        ck_assert_uint_le(s.input_bytes, o.max_input);
        /* The one that passes the bound is told, then closed; the others
         * keep their place. */
        if (told < 0) {
            struct pollfd p = { fds[i], POLLIN, 0 };

            if (poll(&p, 1, 200) == 1) {
                read_line(fds[i], buf, sizeof(buf));
                ck_assert_str_eq(buf, "-ERR too much unfinished input on "
                                 "the publish socket (more than 300000 "
                                 "bytes in all): try again later\r\n");
                expect_closed(fds[i]);
                told = i;
            }
        }
    }
    ck_assert_msg(told >= 2 && told < N, "told %d", told);
    ck_assert_uint_ge(stats(fx.srv).dropped, 1);
    /* Those held finish their commands and are answered. */
    for (i = 0; i < told; i++) {
        memset(part, 'z', PART);
        send_all(fds[i], part, 120000 - PART);
        send_str(fds[i], "\r\n");
        expect(fds[i], ":0\r\n");
    }
    for (i = 0; i < N; i++) {
        close(fds[i]);
    }
    ck_assert(wait_until(no_clients));
    ck_assert_uint_eq(stats(fx.srv).input_bytes, 0);
    free(part);
}
END_TEST

/* ---- refusals ----------------------------------------------------------- */

/* Send len bytes (all of them must be taken: a refused client is read to
 * its end, not cut off), then read the reply line and the end. */
static void send_then_expect_end(int fd, const char *data, size_t len,
                                 const char *reply)
{
    send_all(fd, data, len);
    shutdown(fd, SHUT_WR);
    expect(fd, reply);
    expect_closed(fd);
}

START_TEST(a_refused_client_can_send_its_whole_command_then_reads_why)
{
    char *big = malloc(300 * 1024);
    size_t len;
    opts_t o;
    int a, c;

    memset(&o, 0, sizeof(o));
    o.max_clients = 1;
    start(&o);
    a = client();
    send_str(a, "PING\r\n");
    expect(a, "+PONG\r\n");
    /* A 300 KB command from a client that is one too many: it is read
     * (and thrown away), so the client gets no broken pipe and reads the
     * refusal. */
    len = (size_t)sprintf(big, "*3\r\n$7\r\nPUBLISH\r\n$1\r\nr\r\n$%d\r\n",
                          290 * 1024);
    memset(big + len, 'r', 300 * 1024 - len);
    c = client();
    send_then_expect_end(c, big, 300 * 1024,
                         "-ERR max number of clients reached\r\n");
    close(c);
    ck_assert_uint_eq(stats(fx.srv).refused, 1);
    ck_assert_uint_eq(stats(fx.srv).clients, 1);
    close(a);
    free(big);
}
END_TEST

START_TEST(a_refused_client_that_sends_nothing_is_told_after_a_while)
{
    long long t0;
    opts_t o;
    int a, c;

    memset(&o, 0, sizeof(o));
    o.max_clients = 1;
    start(&o);
    a = client();
    send_str(a, "PING\r\n");
    expect(a, "+PONG\r\n");
    t0 = now_ms();
    c = client();
    expect(c, "-ERR max number of clients reached\r\n");
    expect_closed(c);
    ck_assert_int_ge(now_ms() - t0,
                     apr_time_as_msec(COMET_PUBSRV_LINGER) - 10);
    close(c);
    close(a);
}
END_TEST

START_TEST(an_oversized_message_is_refused_in_order)
{
    char *big = malloc(1024 * 1024);
    size_t len;
    int fd;

    start(NULL);
    fd = client();
    /* Declared far beyond the limit: refused on its $ line, and the rest
     * (a megabyte) is read and thrown away, not cut off. */
    len = (size_t)sprintf(big, "*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$%d\r\n",
                          1000 * 1000);
    memset(big + len, 'o', 1024 * 1024 - len);
    send_then_expect_end(fd, big, 1024 * 1024,
                         "-ERR message larger than CometMaxMessageSize "
                         "(4096 bytes)\r\n");
    close(fd);
    free(big);
}
END_TEST

static int three_clients(void)
{
    return stats(fx.srv).clients + stats(fx.srv2).clients == 3;
}

static int pong(int fd)
{
    char buf[64];

    send_str(fd, "PING\r\n");
    read_line(fd, buf, sizeof(buf));
    return !strcmp(buf, "+PONG\r\n");
}

START_TEST(a_full_server_leaves_new_clients_to_a_peer_with_room)
{
    int fds[5], i;
    opts_t o;

    memset(&o, 0, sizeof(o));
    o.max_clients = 2;
    o.second = 2;
    start(&o);
    /* Four clients for two servers of two: whichever takes the first
     * ones, nobody is refused while the other has room. */
    for (i = 0; i < 4; i++) {
        fds[i] = client();
        ck_assert_msg(pong(fds[i]), "client %d refused", i);
    }
    ck_assert_uint_eq(stats(fx.srv).clients, 2);
    ck_assert_uint_eq(stats(fx.srv2).clients, 2);
    ck_assert_uint_eq(stats(fx.srv).refused + stats(fx.srv2).refused, 0);
    /* Both full: the fifth is told. */
    fds[4] = client();
    send_str(fds[4], "PING\r\n");
    expect(fds[4], "-ERR max number of clients reached\r\n");
    expect_closed(fds[4]);
    close(fds[4]);
    ck_assert_uint_eq(stats(fx.srv).refused + stats(fx.srv2).refused, 1);
    /* A place frees up in one of them: the next client gets it. */
    close(fds[0]);
    ck_assert(wait_until(three_clients));
    fds[0] = client();
    ck_assert(pong(fds[0]));
    for (i = 0; i < 4; i++) {
        close(fds[i]);
    }
}
END_TEST

/* ---- publishes handed out (as to Redis) ---------------------------------- */

#define HANDED_MAX 2048

static struct {
    pthread_mutex_t         mu;
    comet_pubsrv_pending_t *p[HANDED_MAX];
    char                    data[HANDED_MAX][16];
    int                     n;
} handed = { PTHREAD_MUTEX_INITIALIZER, { 0 }, { { 0 } }, 0 };

static apr_status_t hand_out(void *baton, comet_pubsrv_pending_t *p,
                             const comet_publish_t *msg)
{
    if (msg->data_len == 3 && !memcmp(msg->data, "bad", 3)) {
        return COMET_EBADCHAN;
    }
    pthread_mutex_lock(&handed.mu);
    ck_assert_int_lt(handed.n, HANDED_MAX);
    snprintf(handed.data[handed.n], sizeof(handed.data[0]), "%.*s",
             (int)msg->data_len, msg->data);
    handed.p[handed.n++] = p;
    pthread_mutex_unlock(&handed.mu);
    return APR_SUCCESS;
}

static int handed_n;

static int handed_reached(void)
{
    int n;

    pthread_mutex_lock(&handed.mu);
    n = handed.n;
    pthread_mutex_unlock(&handed.mu);
    return n >= handed_n;
}

static int readable(int fd)
{
    struct pollfd pfd = { fd, POLLIN, 0 };

    return poll(&pfd, 1, 100) > 0;
}

START_TEST(publishes_handed_out_are_answered_in_order_with_the_replies_between)
{
    opts_t o;
    int fd, fd2;

    memset(&o, 0, sizeof(o));
    o.publish = hand_out;
    handed.n = 0;
    start(&o);
    fd = client();
    send_str(fd, "PUBLISH a one\r\nPING\r\nPUBLISH a two\r\nPUBLISH a bad\r\n"
             "ECHO x\r\n");
    handed_n = 2;
    ck_assert(wait_until(handed_reached));
    ck_assert_str_eq(handed.data[0], "one");
    ck_assert_str_eq(handed.data[1], "two");
    /* The second is done first: nothing may overtake the first. */
    comet_pubsrv_published(handed.p[1], APR_SUCCESS, 7, NULL);
    ck_assert(!readable(fd));
    comet_pubsrv_published(handed.p[0], COMET_EFULL, 0,
                           "ERR not stored: Redis is not reachable");
    expect(fd, "-ERR not stored: Redis is not reachable\r\n+PONG\r\n:7\r\n"
           "-ERR invalid channel id (1 to 1024 bytes of "
           COMET_CHANNEL_ID_CHARS ")\r\n$1\r\nx\r\n");

    /* A client that leaves with a publish under way. */
    fd2 = client();
    send_str(fd2, "PUBLISH a three\r\n");
    handed_n = 3;
    ck_assert(wait_until(handed_reached));
    close(fd2);
    ck_assert(wait_until(one_client));
    comet_pubsrv_published(handed.p[2], APR_SUCCESS, 1, NULL);
    send_str(fd, "PUBLISH a four\r\n");
    handed_n = 4;
    ck_assert(wait_until(handed_reached));
    comet_pubsrv_published(handed.p[3], APR_SUCCESS, 2, NULL);
    expect(fd, ":2\r\n");
    close(fd);
}
END_TEST

START_TEST(a_connection_with_too_many_publishes_waiting_is_not_read)
{
    opts_t o;
    char *pipe = malloc(64 * (COMET_PUBSRV_PIPELINE + 10));
    size_t len = 0;
    int fd, i;

    memset(&o, 0, sizeof(o));
    o.publish = hand_out;
    handed.n = 0;
    start(&o);
    fd = client();
    for (i = 0; i < COMET_PUBSRV_PIPELINE + 10; i++) {
        len += (size_t)sprintf(pipe + len, "PUBLISH a %d\r\n", i);
    }
    send_all(fd, pipe, len);
    handed_n = COMET_PUBSRV_PIPELINE;
    ck_assert(wait_until(handed_reached));
    poll(NULL, 0, 100);
    ck_assert_int_eq(handed.n, COMET_PUBSRV_PIPELINE);
    comet_pubsrv_published(handed.p[0], APR_SUCCESS, 0, NULL);
    expect(fd, ":0\r\n");
    handed_n = COMET_PUBSRV_PIPELINE + 1;
    ck_assert(wait_until(handed_reached));
    for (i = 1; i < COMET_PUBSRV_PIPELINE + 10; i++) {
        handed_n = i + 1;
        ck_assert(wait_until(handed_reached));
        comet_pubsrv_published(handed.p[i], APR_SUCCESS, 1, NULL);
    }
    for (i = 1; i < COMET_PUBSRV_PIPELINE + 10; i++) {
        expect(fd, ":1\r\n");
    }
    ck_assert_str_eq(handed.data[COMET_PUBSRV_PIPELINE + 9],
                     apr_psprintf(comet_test_pool, "%d",
                                  COMET_PUBSRV_PIPELINE + 9));
    free(pipe);
    close(fd);
}
END_TEST

Suite *test_comet_pubsrv_suite(void)
{
    Suite *s = suite_create("comet_pubsrv");
    TCase *tp = tcase_create("pipelines");
    TCase *te = tcase_create("errors");
    TCase *tb = tcase_create("bounds");
    TCase *tr = tcase_create("refusals");

    tcase_add_checked_fixture(tp, setup, teardown);
    tcase_add_test(tp, a_pipeline_fed_one_byte_at_a_time_is_answered_in_order);
    tcase_add_test(tp, many_clients_at_once_each_get_their_own_answers);
    tcase_add_test(tp, commands_sent_before_a_half_close_are_all_answered);
    tcase_add_test(tp,
                   publishes_handed_out_are_answered_in_order_with_the_replies_between);
    tcase_add_test(tp, a_connection_with_too_many_publishes_waiting_is_not_read);
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
    tcase_add_test(tb, an_idle_client_is_closed_and_a_busy_one_is_not);
    tcase_add_test(tb, a_half_sent_bulk_is_told_and_closed_after_the_command_timeout);
    tcase_add_test(tb, a_timer_that_cannot_be_armed_closes_its_client_and_counts);
    tcase_add_test(tb, whole_commands_cost_no_input_buffer_of_their_own);
    tcase_add_test(tb, unfinished_commands_together_stay_under_max_input);
    suite_add_tcase(s, tb);

    tcase_add_checked_fixture(tr, setup, teardown);
    tcase_set_timeout(tr, 30);
    tcase_add_test(tr, a_refused_client_can_send_its_whole_command_then_reads_why);
    tcase_add_test(tr, a_refused_client_that_sends_nothing_is_told_after_a_while);
    tcase_add_test(tr, an_oversized_message_is_refused_in_order);
    tcase_add_test(tr, a_full_server_leaves_new_clients_to_a_peer_with_room);
    suite_add_tcase(s, tr);
    return s;
}
