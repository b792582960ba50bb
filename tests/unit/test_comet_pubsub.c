/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* Unit tests of comet_pubsub.c, the publish socket's subscribers: a real
 * server with a store slot of its own and its eventfd (pubsrv_util.h),
 * clients speaking RESP over the Unix socket, publishes through the socket
 * and straight into the store (as another process would).  Pushes are
 * compared byte for byte with what Redis sends. */
#include "pubsrv_util.h"

/* ---- helpers --------------------------------------------------------------- */

static opts_t sub_opts(void)
{
    opts_t o;

    memset(&o, 0, sizeof(o));
    o.subscribers = 1;
    return o;
}

/* "$<len>\r\n<s>\r\n" appended to buf. */
static void bulk(char *buf, size_t max, const char *s)
{
    size_t len = strlen(buf);

    snprintf(buf + len, max - len, "$%zu\r\n%s\r\n", strlen(s), s);
}

/* A push of n bulk strings (RESP2 "*", RESP3 ">"). */
static char *push(char kind, int n, ...)
{
    static char buf[8][4096];
    static int next;
    char *b = buf[next++ % 8];
    va_list ap;
    int i;

    snprintf(b, 4096, "%c%d\r\n", kind, n);
    va_start(ap, n);
    for (i = 0; i < n; i++) {
        bulk(b, 4096, va_arg(ap, const char *));
    }
    va_end(ap);
    return b;
}

/* "*3 $<what> $<name> :<count>" (RESP2). */
static char *sub_reply(const char *what, const char *name, int count)
{
    static char buf[4][512];
    static int next;
    char *b = buf[next++ % 4];

    snprintf(b, 512, "*3\r\n");
    bulk(b, 512, what);
    if (name) {
        bulk(b, 512, name);
    }
    else {
        strcat(b, "$-1\r\n");
    }
    snprintf(b + strlen(b), 512 - strlen(b), ":%d\r\n", count);
    return b;
}

/* Read until needle has come (the bytes before it are thrown away). */
static void read_until(int fd, const char *needle)
{
    size_t cap = 1 << 20, len = 0, got;
    char *buf = malloc(cap + 1);

    for (;;) {
        ck_assert_msg(len < cap && read_n(fd, buf + len, 1, &got),
                      "\"%s\" never came", needle);
        len++;
        buf[len] = '\0';
        if (len >= strlen(needle)
            && !memcmp(buf + len - strlen(needle), needle, strlen(needle))) {
            break;
        }
    }
    free(buf);
}

static void publish_via(int fd, const char *ch, const char *data,
                        const char *receivers)
{
    char cmd[4096], want[32];

    snprintf(cmd, sizeof(cmd), "*3\r\n$7\r\nPUBLISH\r\n$%zu\r\n%s\r\n"
             "$%zu\r\n%s\r\n", strlen(ch), ch, strlen(data), data);
    send_str(fd, cmd);
    snprintf(want, sizeof(want), ":%s\r\n", receivers);
    expect(fd, want);
}

/* A publish from "another process": straight into the store, with the
 * store's wakeup of the server's slot. */
static comet_msgid_t store_pub(const char *ch, const char *data,
                               const char *event)
{
    comet_publish_result_t res;
    comet_publish_t m;

    memset(&m, 0, sizeof(m));
    m.channel = ch;
    m.channel_len = strlen(ch);
    m.data = data;
    m.data_len = strlen(data);
    m.event = event;
    m.event_len = event ? strlen(event) : 0;
    ck_assert_int_eq(comet_store_publish(fx.st, &m, comet_now_mono(),
                                         wake_cb, NULL, &res), APR_SUCCESS);
    return res.id;
}

/* The same with the sender's identity (a WebSocket client's, say). */
static comet_msgid_t store_pub_from(const char *ch, const char *data,
                                    const char *from)
{
    comet_publish_result_t res;
    comet_publish_t m;

    memset(&m, 0, sizeof(m));
    m.channel = ch;
    m.channel_len = strlen(ch);
    m.data = data;
    m.data_len = strlen(data);
    m.from = from;
    m.from_len = strlen(from);
    ck_assert_int_eq(comet_store_publish(fx.st, &m, comet_now_mono(),
                                         wake_cb, NULL, &res), APR_SUCCESS);
    return res.id;
}

static const char *id_str(comet_msgid_t id)
{
    static char buf[4][COMET_MSGID_MAXLEN];
    static int next;
    char *b = buf[next++ % 4];

    comet_msgid_format(b, &id);
    return b;
}

static int numsub(int fd, const char *ch)
{
    char cmd[256], line[64];

    snprintf(cmd, sizeof(cmd), "PUBSUB NUMSUB %s\r\n", ch);
    send_str(fd, cmd);
    read_line(fd, line, sizeof(line));     /* *2 */
    read_line(fd, line, sizeof(line));     /* $len */
    read_line(fd, line, sizeof(line));     /* the channel */
    read_line(fd, line, sizeof(line));     /* :n */
    return atoi(line + 1);
}

static int subscribers_now(void)
{
    comet_pubsrv_stats_t s;

    comet_pubsrv_stats(fx.srv, &s);
    return (int)s.subscribers;
}

static int no_subscribers(void)
{
    return subscribers_now() == 0;
}

/* ---- SUBSCRIBE ----------------------------------------------------------- */

START_TEST(subscribe_counts_and_receives_every_publisher_s_messages)
{
    opts_t o = sub_opts();
    int sub, pub;

    start(&o);
    sub = client();
    pub = client();
    send_str(sub, "SUBSCRIBE room1 room2\r\n");
    expect(sub, sub_reply("subscribe", "room1", 1));
    expect(sub, sub_reply("subscribe", "room2", 2));
    /* Counted like any subscriber: PUBLISH's receivers, NUMSUB. */
    publish_via(pub, "room1", "hello", "1");
    expect(sub, push('*', 3, "message", "room1", "hello"));
    ck_assert_int_eq(numsub(pub, "room1"), 1);
    /* From another process: straight into the store. */
    store_pub("room2", "from afar", NULL);
    expect(sub, push('*', 3, "message", "room2", "from afar"));
    /* A channel nobody here subscribed to is not pushed. */
    publish_via(pub, "other", "x", "0");
    publish_via(pub, "room1", "again", "1");
    expect(sub, push('*', 3, "message", "room1", "again"));
    /* The same channel twice: one subscription. */
    send_str(sub, "SUBSCRIBE room1\r\n");
    expect(sub, sub_reply("subscribe", "room1", 2));
    ck_assert_int_eq(numsub(pub, "room1"), 1);
    /* Its close gives the subscriptions back. */
    close(sub);
    ck_assert(wait_until(no_subscribers));
    ck_assert_int_eq(numsub(pub, "room1"), 0);
    close(pub);
}
END_TEST

START_TEST(two_subscribers_of_one_channel_count_twice_and_both_receive)
{
    opts_t o = sub_opts();
    int a, b, pub;

    start(&o);
    a = client();
    b = client();
    pub = client();
    send_str(a, "SUBSCRIBE c\r\n");
    expect(a, sub_reply("subscribe", "c", 1));
    send_str(b, "SUBSCRIBE c\r\n");
    expect(b, sub_reply("subscribe", "c", 1));
    publish_via(pub, "c", "m1", "2");
    expect(a, push('*', 3, "message", "c", "m1"));
    expect(b, push('*', 3, "message", "c", "m1"));
    send_str(a, "UNSUBSCRIBE c\r\n");
    expect(a, sub_reply("unsubscribe", "c", 0));
    publish_via(pub, "c", "m2", "1");
    expect(b, push('*', 3, "message", "c", "m2"));
    /* a is out of subscribed mode: a plain PING answers. */
    send_str(a, "PING\r\n");
    expect(a, "+PONG\r\n");
    close(a);
    close(b);
    close(pub);
}
END_TEST

START_TEST(subscribed_mode_allows_redis_commands_only_and_ping_is_a_push)
{
    opts_t o = sub_opts();
    int fd;

    start(&o);
    fd = client();
    send_str(fd, "SUBSCRIBE a\r\n");
    expect(fd, sub_reply("subscribe", "a", 1));
    send_str(fd, "PUBLISH a x\r\n");
    expect(fd, "-ERR Can't execute 'publish': only (P|S)SUBSCRIBE / "
           "(P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this "
           "context\r\n");
    send_str(fd, "COMET.INFO a\r\n");
    expect(fd, "-ERR Can't execute 'comet.info': only (P|S)SUBSCRIBE / "
           "(P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this "
           "context\r\n");
    /* Unknown commands and arities are told first, as Redis does. */
    send_str(fd, "FROB\r\nPUBLISH a\r\n");
    expect(fd, "-ERR unknown command 'FROB', with args beginning with: "
           "\r\n-ERR wrong number of arguments for 'publish' command\r\n");
    send_str(fd, "PING\r\nPING hi\r\n");
    expect(fd, "*2\r\n$4\r\npong\r\n$0\r\n\r\n*2\r\n$4\r\npong\r\n$2\r\nhi"
           "\r\n");
    send_str(fd, "SSUBSCRIBE a\r\n");
    expect(fd, "-ERR sharded pub/sub is not supported: use SUBSCRIBE\r\n");
    /* RESET leaves every subscription, without a reply for each. */
    send_str(fd, "RESET\r\nPING\r\n");
    expect(fd, "+RESET\r\n+PONG\r\n");
    ck_assert(wait_until(no_subscribers));
    send_str(fd, "SUBSCRIBE a\r\nQUIT\r\n");
    expect(fd, sub_reply("subscribe", "a", 1));
    expect(fd, "+OK\r\n");
    expect_closed(fd);
    close(fd);
    ck_assert(wait_until(no_subscribers));
}
END_TEST

START_TEST(unsubscribe_replies_for_each_channel_and_once_for_none)
{
    opts_t o = sub_opts();
    char line[64];
    int fd, i;

    start(&o);
    fd = client();
    send_str(fd, "UNSUBSCRIBE\r\nPUNSUBSCRIBE\r\n");
    expect(fd, sub_reply("unsubscribe", NULL, 0));
    expect(fd, sub_reply("punsubscribe", NULL, 0));
    send_str(fd, "UNSUBSCRIBE never\r\n");
    expect(fd, sub_reply("unsubscribe", "never", 0));
    send_str(fd, "SUBSCRIBE a b\r\nPSUBSCRIBE p*\r\n");
    expect(fd, sub_reply("subscribe", "a", 1));
    expect(fd, sub_reply("subscribe", "b", 2));
    expect(fd, sub_reply("psubscribe", "p*", 3));
    /* Both channels, in some order; the pattern stays. */
    send_str(fd, "UNSUBSCRIBE\r\n");
    for (i = 0; i < 2; i++) {
        read_line(fd, line, sizeof(line));
        ck_assert_str_eq(line, "*3\r\n");
        read_line(fd, line, sizeof(line));
        read_line(fd, line, sizeof(line));
        ck_assert_str_eq(line, "unsubscribe\r\n");
        read_line(fd, line, sizeof(line));
        read_line(fd, line, sizeof(line));
        read_line(fd, line, sizeof(line));
        ck_assert_int_eq(atoi(line + 1), 2 - i);
    }
    send_str(fd, "PING\r\n");
    expect(fd, "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    send_str(fd, "PUNSUBSCRIBE p*\r\nPING\r\n");
    expect(fd, sub_reply("punsubscribe", "p*", 0));
    expect(fd, "+PONG\r\n");
    close(fd);
}
END_TEST

START_TEST(resp3_subscribers_get_push_types_and_may_run_any_command)
{
    opts_t o = sub_opts();
    int fd;

    start(&o);
    fd = client();
    send_str(fd, "HELLO 3\r\nPING\r\n");
    read_until(fd, "+PONG\r\n");
    send_str(fd, "SUBSCRIBE a\r\n");
    expect(fd, ">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n");
    /* RESP3 has no subscribed mode: PUBLISH runs, PING is a plain one. */
    send_str(fd, "PUBLISH a x\r\n");
    expect(fd, ":1\r\n");
    expect(fd, push('>', 3, "message", "a", "x"));
    send_str(fd, "PING\r\n");
    expect(fd, "+PONG\r\n");
    send_str(fd, "UNSUBSCRIBE b\r\n");
    expect(fd, ">3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:1\r\n");
    send_str(fd, "UNSUBSCRIBE\r\nUNSUBSCRIBE\r\n");
    expect(fd, ">3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n");
    expect(fd, ">3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n");
    close(fd);
}
END_TEST

START_TEST(subscribing_refuses_bad_channels_and_keeps_the_good_ones)
{
    opts_t o = sub_opts();
    int fd;

    start(&o);
    fd = client();
    send_str(fd, "SUBSCRIBE good bad%id also\r\n");
    expect(fd, sub_reply("subscribe", "good", 1));
    expect(fd, "-ERR invalid channel id (1 to 1024 bytes of A-Z a-z 0-9 - _ "
           ". ~ : @ /)\r\n");
    expect(fd, sub_reply("subscribe", "also", 2));
    close(fd);
}
END_TEST

/* ---- patterns ------------------------------------------------------------- */

START_TEST(psubscribe_matches_globs_and_numpat_counts_patterns)
{
    opts_t o = sub_opts();
    int sub, pub;

    start(&o);
    sub = client();
    pub = client();
    send_str(pub, "PUBSUB NUMPAT\r\n");
    expect(pub, ":0\r\n");
    send_str(sub, "PSUBSCRIBE news.* h?llo\r\n");
    expect(sub, sub_reply("psubscribe", "news.*", 1));
    expect(sub, sub_reply("psubscribe", "h?llo", 2));
    send_str(pub, "PUBSUB NUMPAT\r\n");
    expect(pub, ":2\r\n");
    /* As in Redis, NUMSUB counts channel subscribers only. */
    ck_assert_int_eq(numsub(pub, "news.a"), 0);
    publish_via(pub, "news.a", "1", "0");
    expect(sub, push('*', 4, "pmessage", "news.*", "news.a", "1"));
    publish_via(pub, "sport", "2", "0");
    store_pub("hallo", "3", NULL);
    expect(sub, push('*', 4, "pmessage", "h?llo", "hallo", "3"));
    /* A channel subscribed and matched: both pushes. */
    send_str(sub, "SUBSCRIBE news.b\r\n");
    expect(sub, sub_reply("subscribe", "news.b", 3));
    publish_via(pub, "news.b", "4", "1");
    expect(sub, push('*', 3, "message", "news.b", "4"));
    expect(sub, push('*', 4, "pmessage", "news.*", "news.b", "4"));
    send_str(sub, "PUNSUBSCRIBE news.*\r\n");
    expect(sub, sub_reply("punsubscribe", "news.*", 2));
    publish_via(pub, "news.a", "5", "0");
    send_str(pub, "PUBSUB NUMPAT\r\n");
    expect(pub, ":1\r\n");
    send_str(sub, "PING\r\n");
    expect(sub, "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    close(sub);
    ck_assert(wait_until(no_subscribers));
    send_str(pub, "PUBSUB NUMPAT\r\n");
    expect(pub, ":0\r\n");
    close(pub);
}
END_TEST

START_TEST(a_pattern_sees_more_channels_than_the_wakeup_queue_holds)
{
    opts_t o = sub_opts();
    char name[32], want[128];
    comet_publish_t m;
    int sub, i, n = COMET_STORE_QUEUE_LEN + 500;

    o.store_size = 64 * 1024 * 1024;
    start(&o);
    sub = client();
    send_str(sub, "PSUBSCRIBE ch*\r\n");
    expect(sub, sub_reply("psubscribe", "ch*", 1));
    /* Published without a wakeup (the server cannot drain meanwhile),
     * then woken once: its queue overflowed. */
    memset(&m, 0, sizeof(m));
    m.data = "x";
    m.data_len = 1;
    for (i = 0; i < n; i++) {
        snprintf(name, sizeof(name), "ch%d", i);
        m.channel = name;
        m.channel_len = strlen(name);
        ck_assert_int_eq(comet_store_publish(fx.st, &m, comet_now_mono(),
                                             NULL, NULL, NULL),
                         APR_SUCCESS);
    }
    wake_cb(NULL, fx.sub_slot);
    /* Every channel once. */
    for (i = 0; i < n; i++) {
        char line[64];
        int k;

        read_line(sub, line, sizeof(line));
        ck_assert_str_eq(line, "*4\r\n");
        for (k = 0; k < 7; k++) {
            read_line(sub, line, sizeof(line));
        }
        ck_assert_str_eq(line, "$1\r\n");
        read_line(sub, line, sizeof(line));
        ck_assert_str_eq(line, "x\r\n");
    }
    send_str(sub, "PING\r\n");
    snprintf(want, sizeof(want), "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    expect(sub, want);
    close(sub);
}
END_TEST

/* ---- bounds ---------------------------------------------------------------- */

static int one_dropped(void)
{
    comet_pubsrv_stats_t s;

    comet_pubsrv_stats(fx.srv, &s);
    return s.dropped_slow == 1;
}

START_TEST(a_subscriber_that_does_not_read_is_dropped_and_publishers_go_on)
{
    opts_t o = sub_opts();
    char data[1024];
    int slow, fast, pub, i, rcv = 4096;
    long long t0;

    o.max_pending = 64 * 1024;
    start(&o);
    slow = client();
    setsockopt(slow, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
    fast = client();
    pub = client();
    send_str(slow, "SUBSCRIBE c\r\n");
    expect(slow, sub_reply("subscribe", "c", 1));
    send_str(fast, "SUBSCRIBE c\r\n");
    expect(fast, sub_reply("subscribe", "c", 1));
    memset(data, 'd', sizeof(data) - 1);
    data[sizeof(data) - 1] = '\0';
    /* slow never reads again; publishers are answered all the same. */
    t0 = now_ms();
    for (i = 0; i < 2000 && !one_dropped(); i++) {
        char cmd[1200];

        snprintf(cmd, sizeof(cmd), "PUBLISH c %s\r\n", data);
        send_str(pub, cmd);
        read_until(pub, "\r\n");
        expect(fast, push('*', 3, "message", "c", data));
    }
    ck_assert(wait_until(one_dropped));
    ck_assert_msg(now_ms() - t0 < WAIT_MS, "publishers were held up");
    /* The slow one is gone (after what the kernel holds), the other
     * stays. */
    {
        char buf[65536];
        ssize_t n;

        while ((n = recv(slow, buf, sizeof(buf), 0)) > 0) {
        }
        ck_assert_int_eq(n, 0);
    }
    publish_via(pub, "c", "after", "1");
    read_until(fast, "$5\r\nafter\r\n");
    close(slow);
    close(fast);
    close(pub);
}
END_TEST

static int one_client_left(void)
{
    comet_pubsrv_stats_t s;

    comet_pubsrv_stats(fx.srv, &s);
    return s.clients == 1 && s.timeouts >= 1;
}

START_TEST(subscribed_connections_list_channels_and_hold_a_client_place)
{
    opts_t o = sub_opts();
    int r3, r2, extra;

    o.max_clients = 2;
    start(&o);
    r3 = client();
    send_str(r3, "HELLO 3\r\nPING\r\n");
    read_until(r3, "+PONG\r\n");
    send_str(r3, "SUBSCRIBE news\r\n");
    expect(r3, ">3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n");
    r2 = client();
    send_str(r2, "SUBSCRIBE nets\r\n");
    expect(r2, sub_reply("subscribe", "nets", 1));
    /* RESP3: PUBSUB CHANNELS (the store's sliced walk) runs between the
     * pushes, and finds the subscriptions of both connections. */
    send_str(r3, "PUBSUB CHANNELS news\r\nPUBSUB CHANNELS nets\r\n");
    expect(r3, "*1\r\n$4\r\nnews\r\n*1\r\n$4\r\nnets\r\n");
    /* RESP2 in subscribed mode refuses it, as Redis does. */
    send_str(r2, "PUBSUB CHANNELS\r\n");
    expect(r2, "-ERR Can't execute 'pubsub': only (P|S)SUBSCRIBE / "
           "(P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this "
           "context\r\n");
    /* A subscriber holds its place among the clients: a third is told. */
    extra = client();
    send_str(extra, "PING\r\n");
    expect(extra, "-ERR max number of clients reached\r\n");
    expect_closed(extra);
    close(extra);
    /* And still gets what is published. */
    store_pub("nets", "n1", NULL);
    expect(r2, push('*', 3, "message", "nets", "n1"));
    close(r3);
    close(r2);
}
END_TEST

START_TEST(the_idle_timeout_spares_subscribers)
{
    opts_t o = sub_opts();
    int sub, idle;

    o.idle_timeout = apr_time_from_msec(200);
    start(&o);
    sub = client();
    idle = client();
    send_str(sub, "SUBSCRIBE c\r\n");
    expect(sub, sub_reply("subscribe", "c", 1));
    /* The idle publisher goes; the subscriber, as idle, stays. */
    ck_assert(wait_until(one_client_left));
    expect_closed(idle);
    store_pub("c", "still here", NULL);
    expect(sub, push('*', 3, "message", "c", "still here"));
    close(idle);
    close(sub);
}
END_TEST

/* ---- COMET.SUBSCRIBE ------------------------------------------------------ */

START_TEST(comet_subscribe_shows_the_sender_and_subscribe_does_not)
{
    opts_t o = sub_opts();
    comet_msgid_t before, first, live;
    int ids, plain;

    start(&o);
    before = store_pub("talk", "earlier", NULL);
    first = store_pub_from("talk", "hello", "alice");
    ids = client();
    plain = client();
    send_str(plain, "SUBSCRIBE talk\r\n");
    expect(plain, sub_reply("subscribe", "talk", 1));
    send_str(ids, "COMET.SUBSCRIBE talk FROM ");
    send_str(ids, id_str(before));
    send_str(ids, "\r\n");
    expect(ids, sub_reply("subscribe", "talk", 1));
    /* From the backlog, then live: the sender last. */
    expect(ids, push('*', 6, "comet.message", "talk", "hello", id_str(first),
                     "", "alice"));
    live = store_pub_from("talk", "again", "bob");
    expect(ids, push('*', 6, "comet.message", "talk", "again", id_str(live),
                     "", "bob"));
    /* A Redis message has no place for it. */
    expect(plain, push('*', 3, "message", "talk", "again"));
    close(ids);
    close(plain);
}
END_TEST

START_TEST(comet_subscribe_pushes_ids_events_and_resumes_exactly_once)
{
    opts_t o = sub_opts();
    comet_msgid_t id[6];
    int fd, i;

    start(&o);
    for (i = 0; i < 5; i++) {
        char d[8];

        snprintf(d, sizeof(d), "m%d", i);
        id[i] = store_pub("r", d, i == 3 ? "typed" : NULL);
    }
    fd = client();
    /* From the second: the three after it, then the live ones. */
    send_str(fd, "COMET.SUBSCRIBE r FROM ");
    send_str(fd, id_str(id[1]));
    send_str(fd, "\r\n");
    expect(fd, sub_reply("subscribe", "r", 1));
    expect(fd, push('*', 6, "comet.message", "r", "m2", id_str(id[2]), "",
                    ""));
    expect(fd, push('*', 6, "comet.message", "r", "m3", id_str(id[3]),
                    "typed", ""));
    expect(fd, push('*', 6, "comet.message", "r", "m4", id_str(id[4]), "",
                    ""));
    id[5] = store_pub("r", "live", NULL);
    expect(fd, push('*', 6, "comet.message", "r", "live", id_str(id[5]), "",
                    ""));
    send_str(fd, "PING\r\n");
    expect(fd, "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    close(fd);

    /* Without FROM: from now on, ids all the same. */
    fd = client();
    send_str(fd, "COMET.SUBSCRIBE r\r\n");
    expect(fd, sub_reply("subscribe", "r", 1));
    id[0] = store_pub("r", "next", NULL);
    expect(fd, push('*', 6, "comet.message", "r", "next", id_str(id[0]), "",
                    ""));
    /* Refusals. */
    send_str(fd, "COMET.SUBSCRIBE r FROM nonsense\r\n");
    expect(fd, "-ERR invalid message id 'nonsense' (an id of a "
           "comet.message, <epoch>:<seq>)\r\n");
    send_str(fd, "COMET.SUBSCRIBE r AFTER 1:1\r\n");
    expect(fd, "-ERR syntax error: COMET.SUBSCRIBE <channel> [FROM "
           "<id>]\r\n");
    close(fd);
}
END_TEST

START_TEST(comet_subscribe_from_a_lost_id_says_missed_then_what_is_kept)
{
    opts_t o = sub_opts();
    comet_msgid_t first, last = { 0, 0 };
    int fd, i, n;

    start(&o);
    first = store_pub("r", "gone", NULL);
    /* The buffer keeps 100: the first ones go. */
    for (i = 0; i < 150; i++) {
        last = store_pub("r", "kept", NULL);
    }
    fd = client();
    send_str(fd, "COMET.SUBSCRIBE r FROM ");
    send_str(fd, id_str(first));
    send_str(fd, "\r\n");
    expect(fd, sub_reply("subscribe", "r", 1));
    expect(fd, push('*', 3, "comet.missed", "r", id_str(first)));
    for (n = 0; n < 100; n++) {
        read_until(fd, "comet.message\r\n");
    }
    read_until(fd, id_str(last));
    expect(fd, "\r\n$0\r\n\r\n$0\r\n\r\n");
    send_str(fd, "PING\r\n");
    expect(fd, "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    close(fd);

    /* An id of another server run: missed, then all that is kept. */
    fd = client();
    send_str(fd, "COMET.SUBSCRIBE r FROM 00000001:5\r\n");
    expect(fd, sub_reply("subscribe", "r", 1));
    expect(fd, push('*', 3, "comet.missed", "r", "00000001:5"));
    for (n = 0; n < 100; n++) {
        read_until(fd, "comet.message\r\n");
    }
    close(fd);
}
END_TEST

START_TEST(a_long_backlog_is_read_a_slice_at_a_time_without_a_drop)
{
    opts_t o = sub_opts();
    comet_msgid_t first, id[100];
    char data[2048];
    int fd, i;

    /* A backlog of 200 KB for a connection that may hold 16 KB of unsent
     * pushes: read from the store as it takes them, never dropped. */
    o.max_pending = 16 * 1024;
    o.max_output = 4096;
    start(&o);
    memset(data, 'b', sizeof(data) - 1);
    data[sizeof(data) - 1] = '\0';
    first = store_pub("big", "before", NULL);
    for (i = 0; i < 100; i++) {
        data[0] = (char)('0' + i % 10);
        id[i] = store_pub("big", data, NULL);
    }
    fd = client();
    send_str(fd, "COMET.SUBSCRIBE big FROM ");
    send_str(fd, id_str(first));
    send_str(fd, "\r\n");
    expect(fd, sub_reply("subscribe", "big", 1));
    for (i = 0; i < 100; i++) {
        data[0] = (char)('0' + i % 10);
        expect(fd, push('*', 6, "comet.message", "big", data, id_str(id[i]),
                        "", ""));
        if (i == 50) {
            /* Live messages meanwhile come after the backlog, once. */
            store_pub("big", "live", NULL);
        }
    }
    read_until(fd, "$4\r\nlive\r\n");
    ck_assert(!one_dropped());
    close(fd);
}
END_TEST

START_TEST(a_deleted_channel_is_told_and_its_subscribers_stay)
{
    opts_t o = sub_opts();
    comet_msgid_t last, next;
    int sub, plain, pub;

    start(&o);
    sub = client();
    plain = client();
    pub = client();
    send_str(sub, "COMET.SUBSCRIBE d\r\n");
    expect(sub, sub_reply("subscribe", "d", 1));
    send_str(plain, "SUBSCRIBE d\r\n");
    expect(plain, sub_reply("subscribe", "d", 1));
    last = store_pub("d", "one", NULL);
    expect(sub, push('*', 6, "comet.message", "d", "one", id_str(last), "",
                     ""));
    expect(plain, push('*', 3, "message", "d", "one"));
    send_str(pub, "COMET.DELETE d\r\n");
    expect(pub, ":2\r\n");
    expect(sub, push('*', 3, "comet.deleted", "d", id_str(last)));
    /* As in Redis, a subscription is to a name: it goes on. */
    ck_assert_int_eq(numsub(pub, "d"), 2);
    next = store_pub("d", "two", NULL);
    expect(sub, push('*', 6, "comet.message", "d", "two", id_str(next), "",
                     ""));
    expect(plain, push('*', 3, "message", "d", "two"));
    close(sub);
    close(plain);
    close(pub);
}
END_TEST

static int one_missed(void)
{
    comet_pubsrv_stats_t s;

    comet_pubsrv_stats(fx.srv, &s);
    return s.missed == 2;
}

START_TEST(a_process_outrun_by_its_channel_closes_its_redis_subscribers)
{
    opts_t o = sub_opts();
    comet_publish_t m;
    comet_msgid_t at;
    int plain, pat, ids, i;

    start(&o);
    plain = client();
    pat = client();
    ids = client();
    send_str(plain, "SUBSCRIBE m\r\n");
    expect(plain, sub_reply("subscribe", "m", 1));
    send_str(pat, "PSUBSCRIBE m*\r\n");
    expect(pat, sub_reply("psubscribe", "m*", 1));
    send_str(ids, "COMET.SUBSCRIBE m\r\n");
    expect(ids, sub_reply("subscribe", "m", 1));
    /* 150 messages while the process reads nothing (no wakeup), then one
     * wakeup: 50 left the buffer of 100 before they were read. */
    memset(&m, 0, sizeof(m));
    m.channel = "m";
    m.channel_len = 1;
    m.data = "x";
    m.data_len = 1;
    for (i = 0; i < 150; i++) {
        ck_assert_int_eq(comet_store_publish(fx.st, &m, comet_now_mono(),
                                             NULL, NULL, NULL),
                         APR_SUCCESS);
    }
    wake_cb(NULL, fx.sub_slot);
    /* Redis' subscribers cannot be told: closed, never left to miss
     * messages without knowing.  COMET.SUBSCRIBE is told, and goes on. */
    expect_closed(plain);
    expect_closed(pat);
    at.epoch = comet_store_epoch(fx.st);
    at.seq = 0;
    expect(ids, push('*', 3, "comet.missed", "m", id_str(at)));
    for (i = 0; i < 100; i++) {
        read_until(ids, "$1\r\nx\r\n");
    }
    ck_assert(wait_until(one_missed));
    close(plain);
    close(pat);
    close(ids);
}
END_TEST

Suite *test_comet_pubsub_suite(void)
{
    Suite *s = suite_create("comet_pubsub");
    TCase *sub = tcase_create("subscribe");
    TCase *pat = tcase_create("patterns");
    TCase *bounds = tcase_create("bounds");
    TCase *ids = tcase_create("ids");

    tcase_add_checked_fixture(sub, setup, teardown);
    tcase_add_test(sub,
                   subscribe_counts_and_receives_every_publisher_s_messages);
    tcase_add_test(sub,
                   two_subscribers_of_one_channel_count_twice_and_both_receive);
    tcase_add_test(sub,
                   subscribed_mode_allows_redis_commands_only_and_ping_is_a_push);
    tcase_add_test(sub, unsubscribe_replies_for_each_channel_and_once_for_none);
    tcase_add_test(sub,
                   resp3_subscribers_get_push_types_and_may_run_any_command);
    tcase_add_test(sub,
                   subscribing_refuses_bad_channels_and_keeps_the_good_ones);
    suite_add_tcase(s, sub);

    tcase_add_checked_fixture(pat, setup, teardown);
    tcase_add_test(pat, psubscribe_matches_globs_and_numpat_counts_patterns);
    tcase_add_test(pat,
                   a_pattern_sees_more_channels_than_the_wakeup_queue_holds);
    suite_add_tcase(s, pat);

    tcase_add_checked_fixture(bounds, setup, teardown);
    tcase_add_test(bounds,
                   a_subscriber_that_does_not_read_is_dropped_and_publishers_go_on);
    tcase_add_test(bounds, the_idle_timeout_spares_subscribers);
    tcase_add_test(bounds,
                   subscribed_connections_list_channels_and_hold_a_client_place);
    suite_add_tcase(s, bounds);

    tcase_add_checked_fixture(ids, setup, teardown);
    tcase_add_test(ids,
                   comet_subscribe_pushes_ids_events_and_resumes_exactly_once);
    tcase_add_test(ids,
                   comet_subscribe_from_a_lost_id_says_missed_then_what_is_kept);
    tcase_add_test(ids,
                   a_long_backlog_is_read_a_slice_at_a_time_without_a_drop);
    tcase_add_test(ids, a_deleted_channel_is_told_and_its_subscribers_stay);
    tcase_add_test(ids, comet_subscribe_shows_the_sender_and_subscribe_does_not);
    tcase_add_test(ids,
                   a_process_outrun_by_its_channel_closes_its_redis_subscribers);
    suite_add_tcase(s, ids);
    return s;
}
