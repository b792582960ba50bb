/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* Applications listening on the publish socket, against the real apache2
 * (event MPM, two children): redis-cli in subscribed mode (RESP2 and
 * RESP3) and python3-redis' PubSub receive what HTTP and the socket
 * publish, in whichever child they are; patterns; PING in subscribed
 * mode; a subscriber that does not read is dropped while publishers go
 * on; COMET.SUBSCRIBE FROM resumes exactly once, with comet.missed when
 * messages are gone. */

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

static it_server_t srv;

static void start(void)
{
    it_opts_t o;

    memset(&o, 0, sizeof(o));
    /* A small bound, so that a silent subscriber passes it soon; messages
     * of at most 32K, so that their largest frame is within it. */
    o.extra = "CometMaxMessageSize 32K\nCometMaxPendingBytes 256K\n";
    ck_assert_int_eq(it_server_start(&srv, &o), 0);
}

static void stop(void)
{
    it_server_stop(&srv);
}

/* ---- helpers --------------------------------------------------------------- */

/* A redis-cli running in the background, its output in a file. */
typedef struct cli_t {
    pid_t pid;
    char  out[512];
} cli_t;

static void cli_start(cli_t *c, const char *tag, const char *const *args)
{
    const char *argv[16];
    int n = 0, fd;

    snprintf(c->out, sizeof(c->out), "%s/cli-%s.out", srv.dir, tag);
    argv[n++] = "redis-cli";
    argv[n++] = "-s";
    argv[n++] = srv.socket_path;
    while (*args && n < 15) {
        argv[n++] = *args++;
    }
    argv[n] = NULL;
    c->pid = fork();
    ck_assert_int_ge(c->pid, 0);
    if (c->pid == 0) {
        fd = open(c->out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0) {
            _exit(127);
        }
        execvp("redis-cli", (char *const *)argv);
        _exit(127);
    }
}

static void cli_stop(cli_t *c)
{
    if (c->pid > 0) {
        kill(c->pid, SIGTERM);
        waitpid(c->pid, NULL, 0);
        c->pid = 0;
    }
}

typedef struct has_t {
    const char *path;
    const char *needle;
} has_t;

/* needle is in the file's last 256 KB. */
static int file_has(void *baton)
{
    has_t *h = baton;
    static char buf[256 * 1024 + 1];
    FILE *f = fopen(h->path, "r");
    size_t n;

    if (!f) {
        return 0;
    }
    if (fseek(f, -(long)(sizeof(buf) - 1), SEEK_END) != 0) {
        rewind(f);
    }
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strstr(buf, h->needle) != NULL;
}

/* Wait until the background redis-cli has printed needle. */
static int cli_wait(cli_t *c, const char *needle)
{
    has_t h = { c->out, needle };

    return it_wait_for(file_has, &h, 10000);
}

static int cli(const char *args, char *out, size_t max)
{
    char cmd[4096];

    snprintf(cmd, sizeof(cmd), "redis-cli -s '%s' %s", srv.socket_path,
             args);
    return it_run(cmd, out, max, 20000);
}

/* server-status?auto, whole. */
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

/* Children whose publish socket has at least one subscriber now (the
 * per-process lines are copied once a second). */
static int children_with_socket_subscribers(void)
{
    char buf[16384];
    const char *p;
    int n = 0;

    if (status_auto(buf, sizeof(buf)) != 0) {
        return 0;
    }
    for (p = strstr(buf, " socket_subscribers="); p;
         p = strstr(p + 1, " socket_subscribers=")) {
        n += atoi(p + 20) > 0;
    }
    return n;
}

static int both_children_listen(void *baton)
{
    return children_with_socket_subscribers() == 2;
}

static int numsub(const char *channel)
{
    char args[256], out[512];
    const char *nl;

    snprintf(args, sizeof(args), "PUBSUB NUMSUB %s", channel);
    if (cli(args, out, sizeof(out)) != 0 || !(nl = strchr(out, '\n'))) {
        return -1;
    }
    return atoi(nl + 1);
}

typedef struct count_t {
    const char *channel;
    int want;
} count_t;

static int numsub_is(void *baton)
{
    count_t *c = baton;

    return numsub(c->channel) == c->want;
}

static int python_redis(void)
{
    char out[1024];

    return access("/usr/bin/python3", X_OK) == 0
           && it_run("/usr/bin/python3 -c 'import redis'", out, sizeof(out),
                     20000) == 0;
}

/* ---- redis-cli ------------------------------------------------------------ */

START_TEST(redis_cli_subscribers_in_both_children_hear_http_and_socket)
{
    enum { MAXCLI = 12 };
    const char *args[] = { "SUBSCRIBE", "room1", NULL };
    cli_t c[MAXCLI];
    count_t none = { "room1", 0 };
    char out[4096], tag[16], want[32];
    int n = 0, i;

    /* Subscribers until both children have one (fair accept spreads them,
     * but which child takes a connection is up to the kernel). */
    while (n < MAXCLI) {
        snprintf(tag, sizeof(tag), "room1-%d", n);
        cli_start(&c[n], tag, args);
        ck_assert(cli_wait(&c[n], "subscribe\nroom1\n1\n"));
        n++;
        if (n >= 2 && it_wait_for(both_children_listen, NULL, 1500)) {
            break;
        }
    }
    ck_assert_msg(children_with_socket_subscribers() == 2,
                  "%d subscribers, all in one child", n);
    ck_assert_int_eq(numsub("room1"), n);

    /* HTTP, served by one child: heard in both. */
    ck_assert_int_eq(it_publish(srv.port, "room1", "from http", NULL, NULL,
                                0), 201);
    /* The socket: its receivers are the subscribers of every child. */
    ck_assert_int_eq(cli("PUBLISH room1 'from the socket'", out,
                         sizeof(out)), 0);
    snprintf(want, sizeof(want), "%d\n", n);
    ck_assert_str_eq(out, want);
    for (i = 0; i < n; i++) {
        ck_assert_msg(cli_wait(&c[i], "message\nroom1\nfrom http\n"
                               "message\nroom1\nfrom the socket\n"),
                      "subscriber %d", i);
    }
    for (i = 0; i < n; i++) {
        cli_stop(&c[i]);
    }
    ck_assert(it_wait_for(numsub_is, &none, 10000));
}
END_TEST

START_TEST(redis_cli_psubscribe_over_resp3_hears_matching_channels)
{
    const char *args[] = { "-3", "PSUBSCRIBE", "news.*", NULL };
    const char *plain[] = { "SUBSCRIBE", "news.a", NULL };
    char out[1024];
    cli_t p, s;

    cli_start(&p, "psub", args);
    ck_assert(cli_wait(&p, "psubscribe\nnews.*\n1\n"));
    cli_start(&s, "sub-news", plain);
    ck_assert(cli_wait(&s, "subscribe\nnews.a\n1\n"));
    ck_assert_int_eq(cli("PUBSUB NUMPAT", out, sizeof(out)), 0);
    ck_assert_str_eq(out, "1\n");
    /* Pattern subscribers are not channel receivers (as in Redis'
     * NUMSUB); the channel's subscriber is. */
    ck_assert_int_eq(cli("PUBLISH news.a first", out, sizeof(out)), 0);
    ck_assert_str_eq(out, "1\n");
    ck_assert_int_eq(it_publish(srv.port, "sport", "no", NULL, NULL, 0),
                     202);
    ck_assert_int_eq(it_publish(srv.port, "news.b", "second", NULL, NULL,
                                0), 202);
    ck_assert(cli_wait(&p, "pmessage\nnews.*\nnews.a\nfirst\n"
                           "pmessage\nnews.*\nnews.b\nsecond\n"));
    ck_assert(cli_wait(&s, "message\nnews.a\nfirst\n"));
    cli_stop(&p);
    cli_stop(&s);
}
END_TEST

/* ---- python3-redis -------------------------------------------------------- */

START_TEST(python_redis_pubsub_subscribes_pings_and_hears_both_ways_in)
{
    char cmd[4096], out[4096];

    if (!python_redis()) {
        ck_abort_msg("python3-redis is not installed (tests/deps.sh)");
    }
    /* redis-py's own PubSub (RESP2: the installed 4.x has no RESP3); the
     * publishes come by the socket and by HTTP while it listens. */
    snprintf(cmd, sizeof(cmd), "/usr/bin/python3 -c '\n"
             "import redis, time, urllib.request\n"
             "r = redis.Redis(unix_socket_path=\"%s\")\n"
             "p = r.pubsub()\n"
             "p.subscribe(\"py\")\n"
             "p.psubscribe(\"py.*\")\n"
             "got = []\n"
             "def take(n):\n"
             "    end = time.time() + 10\n"
             "    while len(got) < n and time.time() < end:\n"
             "        m = p.get_message(timeout=1)\n"
             "        if m: got.append(m)\n"
             "take(2)\n"
             "print(r.publish(\"py\", \"by socket\"))\n"
             "print(r.pubsub_numsub(\"py\"), r.pubsub_numpat())\n"
             "urllib.request.urlopen(urllib.request.Request("
             "\"http://127.0.0.1:%d/pub/py.x\", data=b\"by http\"))\n"
             "p.ping(\"hi\")\n"
             "take(5)\n"
             "# Pushes and the pong come in the order the server saw\n"
             "# them: any order will do.\n"
             "for l in sorted(\"%%s %%s %%s %%s\" %% (m[\"type\"], "
             "m[\"pattern\"], m[\"channel\"], m[\"data\"]) "
             "for m in got): print(l)\n"
             "p.close()\n'", srv.socket_path, srv.port);
    ck_assert_msg(it_run(cmd, out, sizeof(out), 30000) == 0, "%s", out);
    ck_assert_str_eq(out,
                     "1\n"
                     "[(b'py', 1)] 1\n"
                     "message None b'py' b'by socket'\n"
                     "pmessage b'py.*' b'py.x' b'by http'\n"
                     "pong None None b'hi'\n"
                     "psubscribe None b'py.*' 2\n"
                     "subscribe None b'py' 1\n");
}
END_TEST

/* ---- bounds ---------------------------------------------------------------- */

typedef struct status_want_t {
    const char *key;
    long value;
} status_want_t;

static int status_at_least(void *baton)
{
    status_want_t *w = baton;

    return it_status_value(srv.port, w->key) >= w->value;
}

START_TEST(a_subscriber_that_does_not_read_is_dropped_and_publishers_go_on)
{
    enum { MSG = 16 * 1024, COUNT = 200 };
    status_want_t dropped = { "CometSocketDroppedSlow", 1 };
    char *msg, *cmd, *buf, out[4096];
    size_t len = 0, cmdlen;
    int slow, fast, rcv = 4096, pub, i;

    /* A client that subscribes, then reads nothing, with a small receive
     * buffer; and one that takes each message. */
    slow = it_connect_unix(srv.socket_path);
    ck_assert_int_ge(slow, 0);
    setsockopt(slow, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
    ck_assert_int_eq(it_send(slow, "SUBSCRIBE flood\r\n", 17), 0);
    ck_assert_int_eq(it_read_until(slow, out, sizeof(out), &len, 0,
                                   ":1\r\n", 5000), 1);
    fast = it_connect_unix(srv.socket_path);
    ck_assert_int_ge(fast, 0);
    ck_assert_int_eq(it_send(fast, "SUBSCRIBE flood\r\n", 17), 0);
    len = 0;
    ck_assert_int_eq(it_read_until(fast, out, sizeof(out), &len, 0,
                                   ":1\r\n", 5000), 1);

    /* 3.2 MB of messages from one publisher: each answered, while the
     * silent subscriber passes CometMaxPendingBytes (256K). */
    msg = malloc(MSG + 1);
    memset(msg, 'f', MSG);
    msg[MSG] = '\0';
    cmd = malloc(MSG + 128);
    buf = malloc(MSG + 256);
    cmdlen = (size_t)snprintf(cmd, MSG + 128, "*3\r\n$7\r\nPUBLISH\r\n$5\r\n"
                              "flood\r\n$%d\r\n%s\r\n", MSG, msg);
    pub = it_connect_unix(srv.socket_path);
    ck_assert_int_ge(pub, 0);
    for (i = 0; i < COUNT; i++) {
        len = 0;
        ck_assert_int_eq(it_send(pub, cmd, cmdlen), 0);
        ck_assert_msg(it_read_until(pub, out, sizeof(out), &len, 0, "\r\n",
                                    10000) == 1, "publish %d unanswered", i);
        len = 0;
        ck_assert_msg(it_read_until(fast, buf, MSG + 256, &len, 0,
                                    "ff\r\n", 10000) == 1,
                      "message %d not received", i);
    }
    ck_assert(it_wait_for(status_at_least, &dropped, 10000));
    ck_assert_int_ge(it_log_count(&srv, "publish socket: subscriber client"),
                     1);
    ck_assert_int_ge(it_log_count(&srv, "(CometMaxPendingBytes)"), 1);
    /* The silent one was closed (after what the kernel held for it); the
     * other still listens. */
    {
        char drain[65536];
        ssize_t n;

        while ((n = recv(slow, drain, sizeof(drain), 0)) > 0) {
        }
        ck_assert_int_eq(n, 0);
    }
    ck_assert_int_eq(cli("PUBLISH flood last", out, sizeof(out)), 0);
    ck_assert_str_eq(out, "1\n");
    len = 0;
    ck_assert_int_eq(it_read_until(fast, buf, MSG + 256, &len, 0,
                                   "$4\r\nlast\r\n", 10000), 1);
    close(slow);
    close(fast);
    close(pub);
    free(msg);
    free(cmd);
    free(buf);
}
END_TEST

/* ---- COMET.SUBSCRIBE ------------------------------------------------------ */

/* Occurrences of needle in hay. */
static int count_of(const char *hay, const char *needle)
{
    int n = 0;

    while ((hay = strstr(hay, needle))) {
        n++;
        hay += strlen(needle);
    }
    return n;
}

START_TEST(comet_subscribe_from_resumes_exactly_once_across_a_restart)
{
    count_t gone = { "app", 0 };
    char id[64], id3[64], req[256], want[128], *buf;
    size_t len = 0;
    int fd, i;

    buf = malloc(IT_SUB_BUFSZ);
    /* The application listens, takes three messages, and goes away. */
    fd = it_connect_unix(srv.socket_path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(it_send(fd, "COMET.SUBSCRIBE app\r\n", 21), 0);
    ck_assert_int_eq(it_read_until(fd, buf, IT_SUB_BUFSZ, &len, 0, ":1\r\n",
                                   5000), 1);
    for (i = 1; i <= 3; i++) {
        char data[16];

        snprintf(data, sizeof(data), "msg-%d", i);
        ck_assert_int_eq(it_publish(srv.port, "app", data,
                                    i == 2 ? "typed" : NULL, id, sizeof(id)),
                         201);
    }
    strcpy(id3, id);
    snprintf(want, sizeof(want), "%s\r\n", id3);
    ck_assert_int_eq(it_read_until(fd, buf, IT_SUB_BUFSZ, &len, 0, want,
                                   5000), 1);
    ck_assert_msg(strstr(buf, "$5\r\ntyped\r\n"), "%s", buf);
    close(fd);
    ck_assert(it_wait_for(numsub_is, &gone, 10000));

    /* Meanwhile: two more. */
    ck_assert_int_eq(it_publish(srv.port, "app", "msg-4", NULL, NULL, 0),
                     202);
    ck_assert_int_eq(it_publish(srv.port, "app", "msg-5", NULL, id,
                                sizeof(id)), 202);

    /* Back, from the last it handled: 4 and 5 once, then live ones. */
    fd = it_connect_unix(srv.socket_path);
    ck_assert_int_ge(fd, 0);
    snprintf(req, sizeof(req), "COMET.SUBSCRIBE app FROM %s\r\n", id3);
    ck_assert_int_eq(it_send(fd, req, strlen(req)), 0);
    len = 0;
    snprintf(want, sizeof(want), "%s\r\n", id);
    ck_assert_int_eq(it_read_until(fd, buf, IT_SUB_BUFSZ, &len, 0, want,
                                   5000), 1);
    ck_assert_int_eq(it_publish(srv.port, "app", "msg-6", NULL, NULL, 0),
                     201);
    ck_assert_int_eq(it_send(fd, "PING\r\n", 6), 0);
    ck_assert_int_eq(it_read_until(fd, buf, IT_SUB_BUFSZ, &len, 0,
                                   "$4\r\npong\r\n$0\r\n\r\n", 5000), 1);
    ck_assert_int_eq(count_of(buf, "comet.message"), 3);
    ck_assert_int_eq(count_of(buf, "msg-4"), 1);
    ck_assert_int_eq(count_of(buf, "msg-5"), 1);
    ck_assert_int_eq(count_of(buf, "msg-6"), 1);
    ck_assert_int_eq(count_of(buf, "msg-3"), 0);
    ck_assert_int_eq(count_of(buf, "comet.missed"), 0);
    ck_assert(strstr(buf, "msg-4") < strstr(buf, "msg-5")
              && strstr(buf, "msg-5") < strstr(buf, "msg-6"));
    close(fd);
    free(buf);
}
END_TEST

START_TEST(comet_subscribe_from_an_evicted_id_gets_the_missed_signal)
{
    char first[64], last[64], req[256], want[128], *buf;
    size_t len = 0;
    int fd, i;

    buf = malloc(IT_SUB_BUFSZ);
    ck_assert_int_eq(it_publish(srv.port, "lost", "oldest", NULL, first,
                                sizeof(first)), 202);
    /* CometBufferLength is 100: the oldest goes. */
    for (i = 0; i < 120; i++) {
        ck_assert_int_eq(it_publish(srv.port, "lost", "newer", NULL, last,
                                    sizeof(last)), 202);
    }
    fd = it_connect_unix(srv.socket_path);
    ck_assert_int_ge(fd, 0);
    snprintf(req, sizeof(req), "COMET.SUBSCRIBE lost FROM %s\r\n", first);
    ck_assert_int_eq(it_send(fd, req, strlen(req)), 0);
    snprintf(want, sizeof(want), "%s\r\n", last);
    ck_assert_int_eq(it_read_until(fd, buf, IT_SUB_BUFSZ, &len, 0, want,
                                   10000), 1);
    snprintf(want, sizeof(want), "*3\r\n$12\r\ncomet.missed\r\n$4\r\nlost"
             "\r\n$%zu\r\n%s\r\n", strlen(first), first);
    ck_assert_msg(strstr(buf, want), "%.300s", buf);
    ck_assert_int_eq(count_of(buf, "comet.missed"), 1);
    ck_assert_int_eq(count_of(buf, "comet.message"), 100);
    ck_assert_int_eq(count_of(buf, "oldest"), 0);
    close(fd);
    free(buf);
}
END_TEST

Suite *test_pubsub_suite(void)
{
    Suite *s = suite_create("pubsub");
    TCase *tc = tcase_create("socket");

    tcase_add_unchecked_fixture(tc, start, stop);
    tcase_set_timeout(tc, 180);
    tcase_add_test(tc,
                   redis_cli_subscribers_in_both_children_hear_http_and_socket);
    tcase_add_test(tc, redis_cli_psubscribe_over_resp3_hears_matching_channels);
    tcase_add_test(tc,
                   python_redis_pubsub_subscribes_pings_and_hears_both_ways_in);
    tcase_add_test(tc,
                   a_subscriber_that_does_not_read_is_dropped_and_publishers_go_on);
    tcase_add_test(tc,
                   comet_subscribe_from_resumes_exactly_once_across_a_restart);
    tcase_add_test(tc,
                   comet_subscribe_from_an_evicted_id_gets_the_missed_signal);
    suite_add_tcase(s, tc);
    return s;
}
