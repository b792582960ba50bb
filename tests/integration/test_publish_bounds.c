/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* The publish socket's bounds against the real apache2 (event MPM, two
 * children): idle and unfinished-command timeouts, the bound on the input
 * a child holds, silent connections that must not lock publishers out,
 * refusals that redis-cli and python3-redis can read, new connections
 * going to the child with room, and PUBSUB CHANNELS on a full store next
 * to publishes. */

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"

#define BUFSZ (64 * 1024)

static it_server_t srv;

static int both_children_attached(void *baton)
{
    return it_status_value(srv.port, "CometProcesses") == 2;
}

static void start_with(const char *extra)
{
    it_opts_t o;

    memset(&o, 0, sizeof(o));
    o.extra = extra;
    ck_assert_int_eq(it_server_start(&srv, &o), 0);
    /* Both children serve the socket (a child sees only the children
     * already up when it decides that all are full). */
    ck_assert(it_wait_for(both_children_attached, NULL, 10000));
}

static void stop(void)
{
    it_server_stop(&srv);
}

/* Short timeouts; a child holds at most four connections and 300K of
 * unfinished commands (at least one command: 128K + 128K). */
static void start_timeouts(void)
{
    start_with("CometMaxMessageSize 128K\n"
               "CometPublishSocketMaxClients 4\n"
               "CometPublishSocketTimeout 1\n"
               "CometPublishSocketCommandTimeout 2\n"
               "CometPublishSocketMaxInput 300K\n");
}

static void start_refusals(void)
{
    start_with("CometPublishSocketMaxClients 2\n");
}

static void start_walk(void)
{
    start_with("CometSharedMemorySize 16M\n"
               "CometMaxChannels 4\n");
}

/* ---- helpers ------------------------------------------------------------------- */

static int cli(const char *args, char *out, size_t max)
{
    char cmd[8192];

    snprintf(cmd, sizeof(cmd), "redis-cli -s '%s' %s", srv.socket_path,
             args);
    return it_run(cmd, out, max, 20000);
}

/* A connection that has been served (PING answered); -1 when it was
 * refused or closed instead. */
static int served_client(void)
{
    char buf[256];
    size_t len = 0;
    int fd = it_connect_unix(srv.socket_path);

    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(it_send(fd, "PING\r\n", 6), 0);
    if (it_read_until(fd, buf, sizeof(buf), &len, 0, "\r\n", 5000) != 1
        || strcmp(buf, "+PONG\r\n")) {
        close(fd);
        return -1;
    }
    return fd;
}

/* The pid of the child serving fd (INFO's process_id). */
static long client_pid(int fd)
{
    char buf[4096];
    size_t len = 0;
    const char *p;

    ck_assert_int_eq(it_send(fd, "INFO server\r\n", 13), 0);
    ck_assert_int_eq(it_read_until(fd, buf, sizeof(buf), &len, 0,
                                   "uptime_in_seconds:", 5000), 1);
    p = strstr(buf, "process_id:");
    ck_assert_ptr_nonnull(p);
    return atol(p + 11);
}

/* The server closes fd; what it sent before is left in buf. */
static int closed_by_server(int fd, char *buf, size_t max, int timeout_ms)
{
    size_t len = 0;

    return it_read_to_close(fd, buf, max, &len, timeout_ms);
}

static int status_at_least(void *baton)
{
    const long *want = baton;

    return it_status_value(srv.port, "CometSocketRefused") >= *want;
}

/* ---- timeouts and input ------------------------------------------------------------- */

typedef struct pong_t {
    char out[256];
} pong_t;

static int cli_pongs(void *baton)
{
    pong_t *p = baton;

    return cli("PING", p->out, sizeof(p->out)) == 0
           && !strcmp(p->out, "PONG\n");
}

START_TEST(silent_connections_are_closed_and_do_not_lock_publishers_out)
{
    char out[512], buf[256];
    int fds[8], i;
    long long t0;
    pong_t p;

    /* Eight silent connections fill both children (four each). */
    for (i = 0; i < 8; i++) {
        fds[i] = served_client();
        ck_assert_msg(fds[i] >= 0, "connection %d refused", i);
    }
    t0 = it_now_ms();
    ck_assert_int_eq(cli("PING", out, sizeof(out)), 0);
    if (strcmp(out, "PONG\n")) {
        /* Every child full: refused with Redis' words, readable. */
        ck_assert_str_eq(out, "ERR max number of clients reached\n\n");
    }
    /* The idle timeout (1 s) lets them go; publishers get in again. */
    for (i = 0; i < 8; i++) {
        ck_assert_msg(closed_by_server(fds[i], buf, sizeof(buf), 10000),
                      "connection %d still open", i);
        close(fds[i]);
    }
    fprintf(stderr, "publish socket: 8 silent connections closed %lld ms "
            "after they filled both children (CometPublishSocketTimeout "
            "1)\n", it_now_ms() - t0);
    ck_assert(it_wait_for(cli_pongs, &p, 10000));
}
END_TEST

START_TEST(a_half_sent_bulk_is_told_and_closed_after_the_command_timeout)
{
    static const char head[] = "*3\r\n$7\r\nPUBLISH\r\n$1\r\nh\r\n$100\r\n";
    char buf[512], part[50];
    int fd = it_connect_unix(srv.socket_path);

    ck_assert_int_ge(fd, 0);
    memset(part, 'x', sizeof(part));
    ck_assert_int_eq(it_send(fd, head, sizeof(head) - 1), 0);
    ck_assert_int_eq(it_send(fd, part, sizeof(part)), 0);
    ck_assert(closed_by_server(fd, buf, sizeof(buf), 10000));
    ck_assert_str_eq(buf, "-ERR command not complete after 2000 ms: "
                     "closing the connection\r\n");
    close(fd);
}
END_TEST

START_TEST(unfinished_commands_of_a_child_stay_under_max_input)
{
    enum { N = 8, BULK = 120000, PART = 100 * 1024 };
    static const char head[] = "*3\r\n$7\r\nPUBLISH\r\n$1\r\nb\r\n$120000\r\n";
    char *part = malloc(PART), buf[512];
    int fds[N], told[N], ntold = 0, i;
    long rss0, rss1, fd0, fd1;
    long long end;

    memset(part, 'b', PART);
    it_children_usage(&srv, &rss0, &fd0);
    for (i = 0; i < N; i++) {
        fds[i] = served_client();
        ck_assert_int_ge(fds[i], 0);
        told[i] = 0;
    }
    /* 100 KB of a 120 KB message on each: a child holds four, room for
     * two and a bit. */
    for (i = 0; i < N; i++) {
        ck_assert_int_eq(it_send(fds[i], head, sizeof(head) - 1), 0);
        ck_assert_int_eq(it_send(fds[i], part, PART), 0);
    }
    it_children_usage(&srv, &rss1, &fd1);
    end = it_now_ms() + 500;
    while (it_now_ms() < end) {
        struct pollfd p[N];

        for (i = 0; i < N; i++) {
            p[i].fd = fds[i];
            p[i].events = told[i] ? 0 : POLLIN;
            p[i].revents = 0;
        }
        if (poll(p, N, 50) <= 0) {
            continue;
        }
        for (i = 0; i < N; i++) {
            if (p[i].revents & (POLLIN | POLLHUP)) {
                /* The one that would pass the bound: told, then closed. */
                ck_assert(closed_by_server(fds[i], buf, sizeof(buf), 5000));
                ck_assert_str_eq(buf, "-ERR too much unfinished input on "
                                 "the publish socket (more than 307200 "
                                 "bytes in all): try again later\r\n");
                told[i] = 1;
                ntold++;
            }
        }
    }
    fprintf(stderr, "publish socket: %d of %d half-sent 120 KB commands "
            "refused by CometPublishSocketMaxInput 300K; children's RSS "
            "%ld -> %ld kB\n", ntold, N, rss0, rss1);
    /* Two children of four: at least one refusal each. */
    ck_assert_int_ge(ntold, 2);
    ck_assert_int_lt(ntold, N);
    /* The others finish and are answered. */
    for (i = 0; i < N; i++) {
        size_t len = 0;

        if (told[i]) {
            continue;
        }
        ck_assert_int_eq(it_send(fds[i], part, BULK - PART), 0);
        ck_assert_int_eq(it_send(fds[i], "\r\n", 2), 0);
        ck_assert_int_eq(it_read_until(fds[i], buf, sizeof(buf), &len, 0,
                                       "\r\n", 5000), 1);
        ck_assert_str_eq(buf, ":0\r\n");
    }
    for (i = 0; i < N; i++) {
        close(fds[i]);
    }
    free(part);
}
END_TEST

/* ---- refusals ------------------------------------------------------------------------ */

START_TEST(new_clients_go_to_the_child_with_room_and_refusals_are_readable)
{
    char out[4096], cmd[2048];
    long pids[4], want = 2;
    int fds[4], i, same = 0, rc;

    /* Four connections for two children of two: none refused, two each. */
    for (i = 0; i < 4; i++) {
        fds[i] = served_client();
        ck_assert_msg(fds[i] >= 0, "connection %d refused while a child "
                      "had room", i);
        pids[i] = client_pid(fds[i]);
    }
    for (i = 1; i < 4; i++) {
        same += pids[i] == pids[0];
    }
    ck_assert_msg(same == 1, "connections per child: %ld %ld %ld %ld",
                  pids[0], pids[1], pids[2], pids[3]);

    /* Every child full: redis-cli reads the refusal (no broken pipe). */
    rc = cli("PUBLISH refused hello", out, sizeof(out));
    fprintf(stderr, "redis-cli refused: exit status %d, output \"%s\"\n", rc,
            out);
    ck_assert_int_eq(rc, 0);
    ck_assert_str_eq(out, "ERR max number of clients reached\n\n");
    /* And a Redis client library says what happened. */
    snprintf(cmd, sizeof(cmd), "/usr/bin/python3 -c '\n"
             "import redis\n"
             "try:\n"
             "    redis.Redis(unix_socket_path=\"%s\").publish(\"r\", \"x\")\n"
             "except redis.ConnectionError as e:\n"
             "    print(\"refused:\", e)\n'", srv.socket_path);
    ck_assert_int_eq(it_run(cmd, out, sizeof(out), 20000), 0);
    ck_assert_str_eq(out, "refused: max number of clients reached\n");
    /* Counted (server-status, copied once a second) and logged. */
    ck_assert(it_wait_for(status_at_least, &want, 10000));
    ck_assert_int_ge(it_log_count(&srv, "connection refused: max number of "
                                  "clients reached"), 1);

    /* A place frees up: the next client is served. */
    close(fds[0]);
    {
        pong_t p;

        ck_assert(it_wait_for(cli_pongs, &p, 10000));
    }
    for (i = 1; i < 4; i++) {
        close(fds[i]);
    }
}
END_TEST

START_TEST(an_oversized_publish_is_refused_and_redis_cli_prints_why)
{
    char path[400], out[4096], args[512];
    char *big = malloc(2 * 1024 * 1024);
    FILE *f;
    int rc, i;

    snprintf(path, sizeof(path), "%s/big.txt", srv.dir);
    memset(big, 'q', 2 * 1024 * 1024);
    f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(big, 1, 2 * 1024 * 1024, f), 2 * 1024 * 1024);
    fclose(f);
    snprintf(args, sizeof(args), "-x PUBLISH big < '%s'", path);
    /* Declared 2 MB, 8 times the limit: refused on its $ line; the rest is
     * read and thrown away, so redis-cli gets no broken pipe. */
    for (i = 0; i < 3; i++) {
        rc = cli(args, out, sizeof(out));
        ck_assert_msg(rc == 0, "redis-cli exit status %d, output \"%s\"", rc,
                      out);
        ck_assert_str_eq(out, "ERR message larger than CometMaxMessageSize "
                         "(262144 bytes)\n\n");
    }
    ck_assert_int_ge(it_log_count(&srv, "closed: message larger than "
                                  "CometMaxMessageSize"), 3);
    free(big);
}
END_TEST

/* ---- PUBSUB CHANNELS ------------------------------------------------------------------ */

START_TEST(pubsub_channels_on_a_full_store_leaves_publishes_running)
{
    enum { NSUB = 200, IDLEN = 900 };
    char *pipe_cmds, *id = malloc(IDLEN + 1), *path, *pattern;
    char cmd[512], out[4096], buf[4096];
    long chans_max = it_status_value(srv.port, "CometChannelsMax");
    long long t0, walk_ms = 0, lat, lat_max = 0, lat_sum = 0;
    int fds[NSUB], i, fd, npub = 0, nfill;
    size_t len = 0, plen = 0;
    it_sub_t s;
    FILE *f;

    ck_assert_int_gt(chans_max, 1000);
    /* Fill the channel table with published-to channels: the 600 that
     * will be subscribed (900-byte ids), then short ones. */
    nfill = (int)chans_max - 3 * NSUB - 50;
    pipe_cmds = malloc((size_t)nfill * 32 + 3 * NSUB * (IDLEN + 16));
    memset(id, 'a', IDLEN);
    id[IDLEN] = '\0';
    for (i = 0; i < 3 * NSUB; i++) {
        snprintf(id + IDLEN - 8, 9, "%08d", i);
        plen += (size_t)sprintf(pipe_cmds + plen, "PUBLISH %s x\r\n", id);
    }
    for (i = 0; i < nfill; i++) {
        plen += (size_t)sprintf(pipe_cmds + plen, "PUBLISH fill/%d x\r\n", i);
    }
    snprintf(cmd, sizeof(cmd), "%s/fill.txt", srv.dir);
    f = fopen(cmd, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(pipe_cmds, 1, plen, f), plen);
    fclose(f);
    snprintf(buf, sizeof(buf), "--pipe < '%s'", cmd);
    ck_assert_int_eq(cli(buf, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "errors: 0"), "%s", out);
    free(pipe_cmds);

    /* Those 600 channels subscribed (three per subscriber). */
    path = malloc(3 * (IDLEN + 1) + 64);
    for (i = 0; i < NSUB; i++) {
        int n = sprintf(path, "/sub/");

        for (int k = 0; k < 3; k++) {
            int d = snprintf(id + IDLEN - 8, 9, "%08d", i * 3 + k);

            (void)d;
            n += sprintf(path + n, "%s%s", k ? "," : "", id);
        }
        fds[i] = it_connect(srv.port);
        ck_assert_int_ge(fds[i], 0);
        ck_assert_int_eq(it_sendf(fds[i], "GET %s HTTP/1.1\r\nHost: x\r\n"
                                  "Accept: text/event-stream\r\n\r\n", path),
                         0);
    }
    for (i = 0; i < NSUB; i++) {
        len = 0;
        ck_assert_int_eq(it_read_until(fds[i], buf, sizeof(buf), &len, 0,
                                       "\r\n\r\n", 10000), 1);
        ck_assert_msg(!strncmp(buf, "HTTP/1.1 200", 12), "%.80s", buf);
    }
    ck_assert_int_eq(it_status_value(srv.port, "CometChannels"),
                     nfill + 3 * NSUB);
    ck_assert_int_eq(it_status_value(srv.port, "CometSubscribers"),
                     3 * NSUB);

    /* A pattern that matches nothing and costs the glob its most: "*",
     * 400 a's, "b", against each 900-byte id. */
    pattern = malloc(512);
    pattern[0] = '*';
    memset(pattern + 1, 'a', 400);
    strcpy(pattern + 401, "b");
    ck_assert_int_eq(it_sub_send(&s, srv.port, "/sub/lat", NULL), 0);
    fd = it_connect_unix(srv.socket_path);
    ck_assert_int_ge(fd, 0);
    t0 = it_now_ms();
    ck_assert_int_eq(it_sendf(fd, "*3\r\n$6\r\nPUBSUB\r\n$8\r\nCHANNELS\r\n"
                              "$%zu\r\n%s\r\n", strlen(pattern), pattern), 0);
    /* Publish over HTTP (another thread, maybe another child) while it
     * walks, and time each publish. */
    for (;;) {
        struct pollfd p = { fd, POLLIN, 0 };
        long long p0 = it_now_ms();
        int st = it_publish(srv.port, "lat", "x", NULL, NULL, 0);

        ck_assert_msg(st == 201 || st == 202, "publish: %d", st);
        lat = it_now_ms() - p0;
        lat_sum += lat;
        lat_max = lat > lat_max ? lat : lat_max;
        npub++;
        if (poll(&p, 1, 0) == 1) {
            walk_ms = it_now_ms() - t0;
            break;
        }
        ck_assert_msg(it_now_ms() - t0 < 60000, "PUBSUB CHANNELS never "
                      "answered");
    }
    len = 0;
    ck_assert_int_eq(it_read_until(fd, buf, sizeof(buf), &len, 0, "\r\n",
                                   5000), 1);
    ck_assert_str_eq(buf, "*0\r\n");
    fprintf(stderr, "PUBSUB CHANNELS <costly pattern> over %ld channel "
            "records (%d subscribed, 900-byte ids): %lld ms; %d HTTP "
            "publishes meanwhile, longest %lld ms, mean %.1f ms\n",
            it_status_value(srv.port, "CometChannels"), 3 * NSUB, walk_ms,
            npub, lat_max, (double)lat_sum / npub);
    close(fd);
    it_sub_close(&s);
    for (i = 0; i < NSUB; i++) {
        close(fds[i]);
    }
    free(pattern);
    free(path);
    free(id);
}
END_TEST

/* ---- configuration -------------------------------------------------------------------- */

START_TEST(contradicting_or_bad_values_are_refused_naming_the_directive)
{
    char out[16384];
    it_opts_t o;

    memset(&o, 0, sizeof(o));
    /* Below one command of the largest message (256K + 128K). */
    o.extra = "CometPublishSocketMaxInput 300K\n";
    ck_assert_int_ne(it_server_try(&o, 1, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "CometPublishSocketMaxInput 307200 is less "
                         "than one command may be (393216 bytes"), "%s",
                  out);
    o.extra = "CometPublishSocketMaxClients 0\n";
    ck_assert_int_ne(it_server_try(&o, 0, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "CometPublishSocketMaxClients: 0 is out of "
                         "range"), "%s", out);
    o.extra = "CometPublishSocketTimeout soon\n";
    ck_assert_int_ne(it_server_try(&o, 0, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "CometPublishSocketTimeout: 'soon' is not a "
                         "whole number"), "%s", out);
    o.extra = "CometPublishSocketTimeout off\n"
              "CometPublishSocketCommandTimeout 1\n"
              "CometPublishSocketMaxInput 384K\n";
    ck_assert_int_eq(it_server_try(&o, 0, out, sizeof(out)), 0);
}
END_TEST

Suite *test_publish_bounds_suite(void)
{
    Suite *s = suite_create("publish_bounds");
    TCase *tt = tcase_create("timeouts");
    TCase *tr = tcase_create("refusals");
    TCase *tw = tcase_create("walk");
    TCase *tc = tcase_create("config");

    tcase_add_unchecked_fixture(tt, start_timeouts, stop);
    tcase_set_timeout(tt, 120);
    tcase_add_test(tt, silent_connections_are_closed_and_do_not_lock_publishers_out);
    tcase_add_test(tt, a_half_sent_bulk_is_told_and_closed_after_the_command_timeout);
    tcase_add_test(tt, unfinished_commands_of_a_child_stay_under_max_input);
    suite_add_tcase(s, tt);

    tcase_add_unchecked_fixture(tr, start_refusals, stop);
    tcase_set_timeout(tr, 120);
    tcase_add_test(tr, new_clients_go_to_the_child_with_room_and_refusals_are_readable);
    tcase_add_test(tr, an_oversized_publish_is_refused_and_redis_cli_prints_why);
    suite_add_tcase(s, tr);

    tcase_add_unchecked_fixture(tw, start_walk, stop);
    tcase_set_timeout(tw, 180);
    tcase_add_test(tw, pubsub_channels_on_a_full_store_leaves_publishes_running);
    suite_add_tcase(s, tw);

    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, contradicting_or_bad_values_are_refused_naming_the_directive);
    suite_add_tcase(s, tc);
    return s;
}
