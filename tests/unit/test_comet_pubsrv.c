/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* Unit tests of comet_pubsrv.c: a real store, a real Unix socket, the
 * loop in a thread of its own, clients in the test's thread.  Every test
 * runs in its own forked process under check's timeout; waits are on
 * conditions (a reply, a closed socket, a counter), bounded. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "store_util.h"
#include "comet_loop.h"
#include "comet_pubsrv.h"

#define WAIT_MS 5000

typedef struct fixture_t {
    comet_store_t  *st;
    comet_loop_t   *loop;
    comet_pubsrv_t *srv;
    pthread_t       thread;
    int             running;
    int             lfd;
    char            dir[64];
    char            path[128];
    apr_uint32_t    woken;      /* bit per slot the store asked to wake */
} fixture_t;

static fixture_t fx;

static void wake_cb(void *baton, apr_uint32_t slot)
{
    __atomic_or_fetch(&fx.woken, 1u << slot, __ATOMIC_SEQ_CST);
}

static void *loop_main(void *arg)
{
    comet_loop_run(fx.loop);
    return NULL;
}

typedef struct opts_t {
    apr_size_t          store_size;    /* 0: 4 MB */
    apr_size_t          max_message;   /* 0: 4096 */
    apr_size_t          max_output;
    apr_interval_time_t stuck;
    apr_uint32_t        max_clients;
    int                 adopt_fd;      /* served before the loop starts */
} opts_t;

static void start(const opts_t *o)
{
    comet_pubsrv_config_t cfg;
    comet_store_config_t scfg;
    struct sockaddr_un sa;

    memset(&fx, 0, sizeof(fx));
    comet_store_config_default(&scfg, o && o->store_size ? o->store_size
                                                         : 4 * 1024 * 1024);
    scfg.max_procs = 4;
    scfg.max_message_size = o && o->max_message ? o->max_message : 4096;
    fx.st = store_util_make_cfg(&scfg);
    ck_assert_int_eq(comet_loop_create(&fx.loop, 1024, comet_test_pool),
                     APR_SUCCESS);

    strcpy(fx.dir, "/tmp/comet-pubsrv.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(fx.dir));
    snprintf(fx.path, sizeof(fx.path), "%s/s", fx.dir);
    fx.lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fx.lfd, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    strcpy(sa.sun_path, fx.path);
    ck_assert_int_eq(bind(fx.lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(fx.lfd, 128), 0);

    memset(&cfg, 0, sizeof(cfg));
    cfg.store = fx.st;
    cfg.listen_fd = fx.lfd;
    cfg.wake = wake_cb;
    cfg.version = "test";
    if (o) {
        cfg.max_output = o->max_output;
        cfg.stuck_timeout = o->stuck;
        cfg.max_clients = o->max_clients;
    }
    ck_assert_int_eq(comet_pubsrv_create(&fx.srv, fx.loop, &cfg,
                                         comet_test_pool), APR_SUCCESS);
    if (o && o->adopt_fd > 0) {
        ck_assert_int_eq(comet_pubsrv_adopt(fx.srv, o->adopt_fd),
                         APR_SUCCESS);
    }
    ck_assert_int_eq(pthread_create(&fx.thread, NULL, loop_main, NULL), 0);
    fx.running = 1;
}

static void setup(void)
{
    comet_test_pool_setup();
}

static void teardown(void)
{
    if (fx.running) {
        comet_loop_stop(fx.loop);
        pthread_join(fx.thread, NULL);
        fx.running = 0;
    }
    /* Destroying the pool closes the server's connections. */
    comet_test_pool_teardown();
    if (fx.lfd > 0) {
        close(fx.lfd);
        unlink(fx.path);
        rmdir(fx.dir);
    }
}

/* ---- clients ------------------------------------------------------------- */

static long long now_ms(void)
{
    return (long long)(comet_now_mono() / 1000);
}

static int client(void)
{
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    ck_assert_int_ge(fd, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    strcpy(sa.sun_path, fx.path);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

static void send_all(int fd, const char *data, size_t len)
{
    while (len) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);

        ck_assert_msg(n > 0, "send: %s", strerror(errno));
        data += n;
        len -= (size_t)n;
    }
}

static void send_str(int fd, const char *s)
{
    send_all(fd, s, strlen(s));
}

/* Send what the peer takes until it closes. */
static void send_until_closed(int fd, const char *data, size_t len)
{
    while (len) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);

        if (n <= 0) {
            return;
        }
        data += n;
        len -= (size_t)n;
    }
}

/* Read exactly len bytes (0 when the peer closed first or time ran out;
 * *got says how many came). */
static int read_n(int fd, char *buf, size_t len, size_t *got)
{
    long long end = now_ms() + WAIT_MS;

    *got = 0;
    while (*got < len) {
        struct pollfd p = { fd, POLLIN, 0 };
        ssize_t n;

        if (poll(&p, 1, (int)(end - now_ms())) <= 0) {
            return 0;
        }
        n = recv(fd, buf + *got, len - *got, 0);
        if (n <= 0) {
            return 0;
        }
        *got += (size_t)n;
    }
    return 1;
}

/* The next bytes from fd must be exactly expect. */
static void expect(int fd, const char *expect)
{
    size_t len = strlen(expect), got;
    char *buf = malloc(len + 1);

    read_n(fd, buf, len, &got);
    buf[got] = '\0';
    ck_assert_msg(got == len && !memcmp(buf, expect, len),
                  "expected \"%s\", got \"%s\"", expect, buf);
    free(buf);
}

/* The peer closes (after nothing more than what was read). */
static void expect_closed(int fd)
{
    char c;
    size_t got;

    ck_assert_msg(!read_n(fd, &c, 1, &got) && got == 0,
                  "connection still open (or more data)");
}

/* Read one reply line (up to CRLF) into buf. */
static void read_line(int fd, char *buf, size_t max)
{
    size_t len = 0, got;

    while (len + 1 < max) {
        ck_assert_msg(read_n(fd, buf + len, 1, &got), "no full line: %.*s",
                      (int)len, buf);
        len++;
        if (len >= 2 && buf[len - 2] == '\r' && buf[len - 1] == '\n') {
            break;
        }
    }
    buf[len] = '\0';
}

static int wait_until(int (*cond)(void))
{
    long long end = now_ms() + WAIT_MS;

    while (!cond()) {
        if (now_ms() > end) {
            return 0;
        }
        usleep(2000);
    }
    return 1;
}

static int no_clients(void)
{
    comet_pubsrv_stats_t s;

    comet_pubsrv_stats(fx.srv, &s);
    return s.clients == 0;
}

static comet_chanref_t subscribe(apr_uint32_t slot, const char *ch)
{
    comet_chanref_t ref;
    comet_msgid_t newest;

    ck_assert_int_eq(comet_store_subscribe(fx.st, slot, ch, strlen(ch), 0,
                                           &ref, &newest), APR_SUCCESS);
    return ref;
}

static apr_uint32_t attach(void)
{
    apr_uint32_t slot;

    ck_assert_int_eq(comet_store_proc_attach(fx.st, (apr_int32_t)getpid(),
                                             &slot), APR_SUCCESS);
    return slot;
}

static comet_read_t read_all(const char *ch)
{
    comet_msgid_t zero = { 0, 0 };
    comet_read_t r;

    ck_assert_int_eq(comet_store_read_by_id(fx.st, ch, strlen(ch), zero, 0, 0,
                                            comet_now_mono(), comet_test_pool,
                                            &r), APR_SUCCESS);
    return r;
}

static comet_msg_t *msg_at(comet_read_t *r, int i)
{
    return &APR_ARRAY_IDX(r->msgs, i, comet_msg_t);
}

/* ---- publishing ----------------------------------------------------------- */

START_TEST(publish_answers_the_receivers_of_every_process_and_wakes_them)
{
    apr_uint32_t s0, s1;
    comet_read_t r;
    int fd;

    start(NULL);
    s0 = attach();
    /* A second process slot: another pid that is alive (our parent). */
    ck_assert_int_eq(comet_store_proc_attach(fx.st, (apr_int32_t)getppid(),
                                             &s1), APR_SUCCESS);
    subscribe(s0, "room");
    subscribe(s0, "room");
    subscribe(s1, "room");

    fd = client();
    send_str(fd, "*3\r\n$7\r\nPUBLISH\r\n$4\r\nroom\r\n$5\r\nhello\r\n");
    expect(fd, ":3\r\n");
    ck_assert_uint_eq(__atomic_load_n(&fx.woken, __ATOMIC_SEQ_CST),
                      (1u << s0) | (1u << s1));
    /* No subscriber: stored all the same, Redis counts 0. */
    send_str(fd, "PUBLISH empty x\r\n");
    expect(fd, ":0\r\n");

    r = read_all("room");
    ck_assert_int_eq(r.msgs->nelts, 1);
    ck_assert_str_eq(msg_at(&r, 0)->data, "hello");
    ck_assert_ptr_null(msg_at(&r, 0)->event);
    r = read_all("empty");
    ck_assert_int_eq(r.msgs->nelts, 1);
    close(fd);
}
END_TEST

START_TEST(comet_publish_stores_the_event_type_and_inline_quotes_work)
{
    comet_read_t r;
    int fd;

    start(NULL);
    fd = client();
    send_str(fd, "COMET.PUBLISH news update \"hello world\\n\"\r\n");
    expect(fd, ":0\r\n");
    /* An empty event type is no event type. */
    send_str(fd, "*4\r\n$13\r\nCOMET.PUBLISH\r\n$4\r\nnews\r\n$0\r\n\r\n"
             "$3\r\nraw\r\n");
    expect(fd, ":0\r\n");
    r = read_all("news");
    ck_assert_int_eq(r.msgs->nelts, 2);
    ck_assert_str_eq(msg_at(&r, 0)->event, "update");
    ck_assert_str_eq(msg_at(&r, 0)->data, "hello world\n");
    ck_assert_ptr_null(msg_at(&r, 1)->event);
    ck_assert_str_eq(msg_at(&r, 1)->data, "raw");
    close(fd);
}
END_TEST

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

/* ---- inspecting ----------------------------------------------------------- */

START_TEST(pubsub_numsub_channels_and_numpat_answer_like_redis)
{
    apr_uint32_t s0;
    char line[256];
    int fd;

    start(NULL);
    s0 = attach();
    subscribe(s0, "news.a");
    subscribe(s0, "news.a");
    subscribe(s0, "sport");
    fd = client();

    send_str(fd, "PUBSUB NUMSUB news.a sport nobody bad%id\r\n");
    expect(fd, "*8\r\n$6\r\nnews.a\r\n:2\r\n$5\r\nsport\r\n:1\r\n"
           "$6\r\nnobody\r\n:0\r\n$6\r\nbad%id\r\n:0\r\n");
    send_str(fd, "PUBSUB NUMSUB\r\n");
    expect(fd, "*0\r\n");
    send_str(fd, "PUBSUB CHANNELS news.*\r\n");
    expect(fd, "*1\r\n$6\r\nnews.a\r\n");
    send_str(fd, "PUBSUB CHANNELS\r\n");
    read_line(fd, line, sizeof(line));
    ck_assert_str_eq(line, "*2\r\n");
    read_line(fd, line, sizeof(line));
    read_line(fd, line, sizeof(line));
    read_line(fd, line, sizeof(line));
    read_line(fd, line, sizeof(line));
    send_str(fd, "PUBSUB NUMPAT\r\n");
    expect(fd, ":0\r\n");
    send_str(fd, "pubsub frob\r\n");
    expect(fd, "-ERR unknown subcommand 'frob'. Try PUBSUB HELP.\r\n");
    send_str(fd, "PUBSUB\r\n");
    expect(fd, "-ERR wrong number of arguments for 'pubsub' command\r\n");
    close(fd);
}
END_TEST

START_TEST(comet_info_and_delete_report_a_channel_and_null_when_absent)
{
    apr_uint32_t s0;
    char line[128];
    int fd;

    start(NULL);
    s0 = attach();
    subscribe(s0, "x");
    fd = client();
    send_str(fd, "PUBLISH x abc\r\nPUBLISH x de\r\n");
    expect(fd, ":1\r\n:1\r\n");
    send_str(fd, "COMET.INFO x\r\n");
    expect(fd, "*12\r\n$8\r\nmessages\r\n:2\r\n$5\r\nbytes\r\n:5\r\n"
           "$11\r\nsubscribers\r\n:1\r\n$9\r\npublished\r\n:2\r\n"
           "$7\r\nlast_id\r\n");
    read_line(fd, line, sizeof(line));     /* $<n> */
    read_line(fd, line, sizeof(line));     /* <epoch>:2 */
    ck_assert_msg(strstr(line, ":2\r\n"), "last_id %s", line);
    expect(fd, "$12\r\nlast_publish\r\n");
    read_line(fd, line, sizeof(line));
    ck_assert_msg(line[0] == ':' && atoll(line + 1) > 0, "%s", line);

    send_str(fd, "COMET.INFO nothing\r\n");
    expect(fd, "$-1\r\n");
    /* Take the wakeups of the publishes, as the hub would. */
    {
        comet_chanref_t refs[4];
        int overflow;

        comet_store_proc_drain(fx.st, s0, refs, 4, &overflow);
    }
    fx.woken = 0;
    send_str(fd, "COMET.DELETE x\r\n");
    expect(fd, ":1\r\n");
    ck_assert_uint_eq(__atomic_load_n(&fx.woken, __ATOMIC_SEQ_CST),
                      1u << s0);
    send_str(fd, "COMET.DELETE nothing\r\n");
    expect(fd, "$-1\r\n");
    send_str(fd, "COMET.DELETE bad,id\r\n");
    expect(fd, "-ERR invalid channel id (1 to 1024 bytes of A-Z a-z 0-9 - _ "
           ". ~ : @ /)\r\n");
    close(fd);
}
END_TEST

/* ---- what client libraries send ----------------------------------------------- */

START_TEST(hello_switches_to_resp3_and_the_connect_chatter_is_answered)
{
    char line[256];
    int fd;

    start(NULL);
    fd = client();
    send_str(fd, "HELLO 3 SETNAME lib-client\r\n");
    expect(fd, "%7\r\n$6\r\nserver\r\n$9\r\nmod_comet\r\n$7\r\nversion\r\n"
           "$4\r\ntest\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n");
    read_line(fd, line, sizeof(line));
    expect(fd, "$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n"
           "$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n");
    /* RESP3 types from now on. */
    send_str(fd, "COMET.INFO none\r\nCLIENT GETNAME\r\n");
    expect(fd, "_\r\n$10\r\nlib-client\r\n");
    send_str(fd, "COMMAND DOCS\r\nCONFIG GET save\r\n");
    expect(fd, "%0\r\n%0\r\n");
    send_str(fd, "HELLO 2\r\n");
    expect(fd, "*14\r\n");
    for (int i = 0; i < 14; i++) {
        read_line(fd, line, sizeof(line));
        if (line[0] == '$') {
            read_line(fd, line, sizeof(line));
        }
    }
    send_str(fd, "HELLO 4\r\nHELLO x\r\nHELLO 3 AUTH u p\r\n");
    expect(fd, "-NOPROTO unsupported protocol version\r\n"
           "-ERR Protocol version is not an integer or out of range\r\n");
    read_line(fd, line, sizeof(line));
    ck_assert_msg(!strncmp(line, "-ERR AUTH is not supported", 26), "%s",
                  line);

    send_str(fd, "CLIENT SETINFO LIB-NAME redis-py\r\n"
             "CLIENT SETINFO LIB-VER 5.0\r\nCLIENT SETNAME bad name\r\n"
             "SELECT 0\r\nSELECT 1\r\nCOMMAND\r\nCOMMAND COUNT\r\n"
             "PING\r\nPING hi\r\nECHO there\r\n");
    expect(fd, "+OK\r\n+OK\r\n-ERR wrong number of arguments for "
           "'client|setname' command\r\n+OK\r\n-ERR DB index is out of "
           "range\r\n*0\r\n:19\r\n+PONG\r\n$2\r\nhi\r\n$5\r\nthere\r\n");
    send_str(fd, "AUTH secret\r\n");
    read_line(fd, line, sizeof(line));
    ck_assert_msg(strstr(line, "CometPublishSocketMode"), "%s", line);
    send_str(fd, "INFO\r\n");
    read_line(fd, line, sizeof(line));
    ck_assert_msg(line[0] == '$', "%s", line);
    read_line(fd, line, sizeof(line));
    ck_assert_str_eq(line, "# Server\r\n");
    close(fd);

    fd = client();
    send_str(fd, "QUIT\r\nPING\r\n");
    expect(fd, "+OK\r\n");
    expect_closed(fd);
    close(fd);
}
END_TEST

/* ---- errors ---------------------------------------------------------------------- */

START_TEST(refusals_use_redis_wording_and_keep_the_connection)
{
    char big[5000];
    int fd;

    start(NULL);
    fd = client();
    send_str(fd, "FLUSHALL\r\nfoo bar baz\r\n");
    expect(fd, "-ERR unknown command 'FLUSHALL', with args beginning with: "
           "\r\n-ERR unknown command 'foo', with args beginning with: "
           "'bar' 'baz' \r\n");
    send_str(fd, "PUBLISH onlyone\r\nPUBLISH a b c\r\nECHO\r\n");
    expect(fd, "-ERR wrong number of arguments for 'publish' command\r\n"
           "-ERR wrong number of arguments for 'publish' command\r\n"
           "-ERR wrong number of arguments for 'echo' command\r\n");
    send_str(fd, "PUBLISH bad,channel x\r\nPUBLISH \"\" x\r\n");
    expect(fd, "-ERR invalid channel id (1 to 1024 bytes of A-Z a-z 0-9 - _ "
           ". ~ : @ /)\r\n-ERR invalid channel id (1 to 1024 bytes of A-Z "
           "a-z 0-9 - _ . ~ : @ /)\r\n");
    send_str(fd, "COMET.PUBLISH c \"bad type\" x\r\n");
    expect(fd, "-ERR invalid event type (1 to 64 printable bytes other than "
           "space)\r\n");
    send_str(fd, "SUBSCRIBE c\r\n");
    expect(fd, "-ERR this socket only publishes: subscribe over HTTP "
           "(EventSource, long-poll or stream)\r\n");

    /* The largest message passes; one byte more is refused, and the
     * connection goes on. */
    memset(big, 'x', sizeof(big));
    send_str(fd, "*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$4096\r\n");
    send_all(fd, big, 4096);
    send_str(fd, "\r\n*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$4097\r\n");
    send_all(fd, big, 4097);
    send_str(fd, "\r\nPING\r\n");
    expect(fd, ":0\r\n-ERR message larger than CometMaxMessageSize (4096 "
           "bytes)\r\n+PONG\r\n");
    close(fd);
}
END_TEST

START_TEST(a_full_store_refuses_with_a_clear_error)
{
    opts_t o;
    char *big, *cmd, line[256];
    int fd, i, full = 0;

    memset(&o, 0, sizeof(o));
    o.max_message = 60000;
    o.store_size = 512 * 1024;
    start(&o);
    big = malloc(60000);
    cmd = malloc(61000);
    memset(big, 'y', 60000);
    fd = client();
    /* Different channels, so no eviction makes room. */
    for (i = 0; i < 40 && !full; i++) {
        int n = sprintf(cmd, "*3\r\n$7\r\nPUBLISH\r\n$3\r\nf%02d\r\n"
                        "$60000\r\n", i);

        send_all(fd, cmd, (size_t)n);
        send_all(fd, big, 60000);
        send_str(fd, "\r\n");
        read_line(fd, line, sizeof(line));
        if (line[0] == '-') {
            ck_assert_str_eq(line, "-ERR the message store is full "
                             "(CometSharedMemorySize): message not "
                             "stored\r\n");
            full = 1;
        }
        else {
            ck_assert_str_eq(line, ":0\r\n");
        }
    }
    ck_assert_msg(full, "store never filled");
    send_str(fd, "PING\r\n");
    expect(fd, "+PONG\r\n");
    free(big);
    free(cmd);
    close(fd);
}
END_TEST

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

/* ---- bounds ------------------------------------------------------------------------ */

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
    TCase *tp = tcase_create("publish");
    TCase *ti = tcase_create("inspect");
    TCase *tc = tcase_create("clients");
    TCase *te = tcase_create("errors");
    TCase *tb = tcase_create("bounds");

    tcase_add_checked_fixture(tp, setup, teardown);
    tcase_add_test(tp, publish_answers_the_receivers_of_every_process_and_wakes_them);
    tcase_add_test(tp, comet_publish_stores_the_event_type_and_inline_quotes_work);
    tcase_add_test(tp, a_pipeline_fed_one_byte_at_a_time_is_answered_in_order);
    tcase_add_test(tp, many_clients_at_once_each_get_their_own_answers);
    tcase_add_test(tp, commands_sent_before_a_half_close_are_all_answered);
    suite_add_tcase(s, tp);

    tcase_add_checked_fixture(ti, setup, teardown);
    tcase_add_test(ti, pubsub_numsub_channels_and_numpat_answer_like_redis);
    tcase_add_test(ti, comet_info_and_delete_report_a_channel_and_null_when_absent);
    suite_add_tcase(s, ti);

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, hello_switches_to_resp3_and_the_connect_chatter_is_answered);
    suite_add_tcase(s, tc);

    tcase_add_checked_fixture(te, setup, teardown);
    tcase_add_test(te, refusals_use_redis_wording_and_keep_the_connection);
    tcase_add_test(te, a_full_store_refuses_with_a_clear_error);
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
