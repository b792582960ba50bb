/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* Unit tests of comet_hub.c: a hub on its own thread over a real store,
 * with socketpairs standing in for subscriber connections. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "store_util.h"
#include "tls_util.h"
#include "comet_hub.h"
#include "comet_tls.h"
#include "comet_ws.h"

typedef struct fixture_t {
    comet_store_t *st;
    comet_hub_t   *hub;
    apr_uint32_t   slot;
    int            wake_fd;
    pthread_t      thread;
    int            running;
} fixture_t;

static fixture_t fx;

/* Kept connections: what hub_start_with gives the next hub (0: none). */
static apr_time_t fx_keep_timeout;
static volatile int handed_fd = -1;
static volatile apr_uint32_t handed_served;

static apr_status_t handback(void *baton, int fd, apr_uint32_t served)
{
    (void)baton;
    handed_served = served;
    __atomic_store_n(&handed_fd, fd, __ATOMIC_SEQ_CST);
    return APR_SUCCESS;
}

/* What on_end was told (hub thread; read by the test after a wait). */
static volatile apr_uint32_t ended_tag, ended_calls;

static void record_end(void *baton, apr_uint32_t tag)
{
    (void)baton;
    ended_tag = tag;
    __atomic_add_fetch(&ended_calls, 1, __ATOMIC_SEQ_CST);
}

static void wake(void *baton, apr_uint32_t slot)
{
    apr_uint64_t one = 1;

    (void)baton;
    (void)slot;
    ck_assert(write(fx.wake_fd, &one, sizeof(one)) == sizeof(one));
}

static void *hub_thread(void *arg)
{
    comet_hub_run(arg);
    return NULL;
}

static void hub_join(void);

/* A hub over a store of store_mb MB keeping buffer_length messages a
 * channel (0: the store's defaults), with the given bounds. */
static void hub_start_with(apr_size_t max_pending, apr_uint32_t max_subs,
                           apr_size_t max_batch, apr_size_t store_mb,
                           apr_uint32_t buffer_length)
{
    comet_hub_config_t cfg;

    comet_test_pool_setup();
    memset(&fx, 0, sizeof(fx));
    fx.st = store_util_make((store_mb ? store_mb : 8) * 1024 * 1024,
                            buffer_length, 0, 0, 4);
    ck_assert_int_eq(comet_store_proc_attach(fx.st, (apr_int32_t)getpid(),
                                             &fx.slot), APR_SUCCESS);
    fx.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    memset(&cfg, 0, sizeof(cfg));
    cfg.store = fx.st;
    cfg.slot = fx.slot;
    cfg.wake_fd = fx.wake_fd;
    cfg.max_pending = max_pending;
    cfg.max_batch = max_batch;
    cfg.max_subscribers = max_subs;
    cfg.on_end = record_end;
    if (fx_keep_timeout) {
        cfg.handback = handback;
        cfg.keep_timeout = fx_keep_timeout;
        cfg.head_timeout = fx_keep_timeout;
        cfg.max_kept = 4;
    }
    handed_fd = -1;
    ended_tag = ended_calls = 0;
    /* What WebSocket clients publish through the hub wakes it too. */
    cfg.wake = wake;
    ck_assert_int_eq(comet_hub_create(&fx.hub, &cfg, comet_test_pool),
                     APR_SUCCESS);
    ck_assert_int_eq(pthread_create(&fx.thread, NULL, hub_thread, fx.hub), 0);
    fx.running = 1;
}

static void hub_start(apr_size_t max_pending, apr_uint32_t max_subs)
{
    hub_start_with(max_pending, max_subs, 0, 0, 0);
}

/* Replace the fixture's hub by one with other bounds. */
static void hub_restart_with(apr_size_t max_pending, apr_size_t max_batch,
                             apr_size_t store_mb, apr_uint32_t buffer_length)
{
    hub_join();
    close(fx.wake_fd);
    comet_test_pool_teardown();
    hub_start_with(max_pending, 0, max_batch, store_mb, buffer_length);
}

static void setup(void)
{
    hub_start(1024 * 1024, 0);
}

static void hub_join(void)
{
    if (fx.running) {
        comet_hub_stop(fx.hub);
        pthread_join(fx.thread, NULL);
        fx.running = 0;
    }
}

static void teardown(void)
{
    hub_join();
    close(fx.wake_fd);
    comet_test_pool_teardown();
}

/* Subscribe in the store and hand one end of a socketpair to the hub;
 * returns the client's end. */
static int adopt_from(const char *const *ids, apr_size_t n, int transport,
                      int chunked, apr_time_t interval,
                      apr_uint64_t *seqs_in, int start, int rcvbuf)
{
    comet_chanref_t refs[8];
    apr_uint64_t seqs[8];
    comet_hub_spec_t spec;
    int sv[2];

    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    if (rcvbuf) {
        setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
        setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &rcvbuf, sizeof(rcvbuf));
    }
    for (apr_size_t i = 0; i < n; i++) {
        comet_msgid_t newest;

        ck_assert_int_eq(comet_store_subscribe(fx.st, fx.slot, ids[i],
                                               strlen(ids[i]),
                                               comet_now_mono(), &refs[i],
                                               &newest), APR_SUCCESS);
        seqs[i] = seqs_in ? seqs_in[i] : newest.seq;
    }
    memset(&spec, 0, sizeof(spec));
    spec.fd = sv[0];
    spec.transport = transport;
    spec.chunked = chunked;
    spec.nchan = n;
    spec.refs = refs;
    spec.ids = ids;
    spec.seqs = seqs;
    spec.start = start;
    spec.interval = interval;
    ck_assert_int_eq(comet_hub_adopt(fx.hub, &spec, NULL), APR_SUCCESS);
    return sv[1];
}

static int adopt(const char *const *ids, apr_size_t n, int transport,
                 int chunked, apr_time_t interval, apr_uint64_t *seqs_in)
{
    return adopt_from(ids, n, transport, chunked, interval, seqs_in,
                      COMET_HUB_START_EXACT, 0);
}

static apr_uint64_t publish(const char *chan, const char *data,
                            const char *event)
{
    comet_publish_t msg;
    comet_publish_result_t res;

    memset(&msg, 0, sizeof(msg));
    msg.channel = chan;
    msg.channel_len = strlen(chan);
    msg.data = data;
    msg.data_len = strlen(data);
    msg.event = event;
    msg.event_len = event ? strlen(event) : 0;
    ck_assert_int_eq(comet_store_publish(fx.st, &msg, comet_now_mono(), wake,
                                         NULL, &res), APR_SUCCESS);
    return res.id.seq;
}

/* Publish data[0, len); returns the seq. */
static apr_uint64_t publish_n(const char *chan, const char *data,
                              apr_size_t len)
{
    comet_publish_t msg;
    comet_publish_result_t res;

    memset(&msg, 0, sizeof(msg));
    msg.channel = chan;
    msg.channel_len = strlen(chan);
    msg.data = data;
    msg.data_len = len;
    ck_assert_int_eq(comet_store_publish(fx.st, &msg, comet_now_mono(), wake,
                                         NULL, &res), APR_SUCCESS);
    return res.id.seq;
}

/* Publish "m<i>" for i in [from, to). */
static void publish_seq(const char *chan, int from, int to)
{
    for (int i = from; i < to; i++) {
        char data[32];

        snprintf(data, sizeof(data), "m%d", i);
        publish(chan, data, NULL);
    }
}

static apr_uint32_t store_subscribers(const char *chan)
{
    comet_channel_stats_t cs;

    if (comet_store_channel_stats(fx.st, chan, strlen(chan), &cs)
        != APR_SUCCESS) {
        return 0;
    }
    return cs.subscribers;
}

/* Read from fd until needle shows up (or EOF/timeout); 1 when found. */
static int read_until(int fd, char *buf, size_t max, size_t *len,
                      const char *needle, int ms)
{
    long long end = (long long)(comet_now_mono() / 1000) + ms;

    buf[*len] = '\0';
    while (!strstr(buf, needle)) {
        struct pollfd p = { fd, POLLIN, 0 };
        long long left = end - comet_now_mono() / 1000;
        ssize_t n;

        if (left <= 0 || poll(&p, 1, (int)left) <= 0) {
            return 0;
        }
        n = read(fd, buf + *len, max - *len - 1);
        if (n <= 0) {
            return 0;
        }
        *len += (size_t)n;
        buf[*len] = '\0';
    }
    return 1;
}

/* 1 when the peer closed within ms (data before it is read into buf). */
static int read_eof(int fd, char *buf, size_t max, size_t *len, int ms)
{
    long long end = (long long)(comet_now_mono() / 1000) + ms;

    for (;;) {
        struct pollfd p = { fd, POLLIN, 0 };
        long long left = end - comet_now_mono() / 1000;
        ssize_t n;

        if (left <= 0 || poll(&p, 1, (int)left) <= 0) {
            return 0;
        }
        n = read(fd, buf + *len, max - *len - 1);
        if (n == 0) {
            return 1;
        }
        if (n < 0) {
            return errno == ECONNRESET;
        }
        *len += (size_t)n;
        buf[*len] = '\0';
    }
}

static int wait_count(const char *chan, apr_uint32_t want)
{
    for (int i = 0; i < 2000; i++) {
        if (store_subscribers(chan) == want) {
            return 1;
        }
        usleep(1000);
    }
    return 0;
}

static int wait_hub_count(apr_uint32_t want)
{
    for (int i = 0; i < 2000; i++) {
        if (comet_hub_count(fx.hub) == want) {
            return 1;
        }
        usleep(1000);
    }
    return 0;
}

/* A client reading a whole stream: the raw bytes, and the body with HTTP
 * chunking taken off (and checked: a broken chunk sets bad). */
typedef struct rd_stream_t {
    int    fd, chunked, bad, eof;
    char  *raw, *body;
    size_t rlen, rpos, blen, cap;
} rd_stream_t;

static void rs_open(rd_stream_t *r, int fd, int chunked)
{
    memset(r, 0, sizeof(*r));
    r->fd = fd;
    r->chunked = chunked;
    r->cap = 1024 * 1024;
    r->raw = malloc(r->cap);
    r->body = malloc(r->cap);
    ck_assert(r->raw && r->body);
}

static void rs_close(rd_stream_t *r)
{
    close(r->fd);
    free(r->raw);
    free(r->body);
}

static void rs_dechunk(rd_stream_t *r)
{
    if (!r->chunked) {
        memcpy(r->body + r->blen, r->raw + r->rpos, r->rlen - r->rpos);
        r->blen += r->rlen - r->rpos;
        r->rpos = r->rlen;
        return;
    }
    for (;;) {
        char *p = r->raw + r->rpos, *end = r->raw + r->rlen, *nl, *x;
        unsigned long size;

        if (!(nl = memchr(p, '\n', (size_t)(end - p)))) {
            return;
        }
        size = strtoul(p, &x, 16);
        if (x == p || x + 2 != nl + 1 || x[0] != '\r') {
            r->bad = 1;
            return;
        }
        if ((size_t)(end - (nl + 1)) < size + 2) {
            return;
        }
        if (nl[1 + size] != '\r' || nl[2 + size] != '\n') {
            r->bad = 1;
            return;
        }
        memcpy(r->body + r->blen, nl + 1, size);
        r->blen += size;
        r->rpos = (size_t)(nl + 3 + size - r->raw);
        if (!size) {
            r->eof = 1;
        }
    }
}

/* Read until needle is in the body (1), or EOF, a broken chunk or ms pass
 * (0).  rate: bytes per read at most, 0 for as fast as it can. */
static int rs_until(rd_stream_t *r, const char *needle, int ms)
{
    long long end = (long long)(comet_now_mono() / 1000) + ms;

    for (;;) {
        struct pollfd p = { r->fd, POLLIN, 0 };
        long long left = end - comet_now_mono() / 1000;
        ssize_t n;

        r->body[r->blen] = '\0';
        if (memmem(r->body, r->blen, needle, strlen(needle))) {
            return 1;
        }
        if (r->bad || left <= 0 || poll(&p, 1, (int)left) <= 0) {
            return 0;
        }
        if (r->rlen + 65536 + 1 > r->cap) {
            r->cap *= 2;
            ck_assert((r->raw = realloc(r->raw, r->cap)) != NULL);
            ck_assert((r->body = realloc(r->body, r->cap)) != NULL);
        }
        n = read(r->fd, r->raw + r->rlen, 65536);
        if (n <= 0) {
            return 0;
        }
        r->rlen += (size_t)n;
        rs_dechunk(r);
    }
}

/* Read until the body holds len bytes: 1, or 0 as rs_until. */
static int rs_until_len(rd_stream_t *r, size_t len, int ms)
{
    long long end = (long long)(comet_now_mono() / 1000) + ms;

    while (r->blen < len) {
        struct pollfd p = { r->fd, POLLIN, 0 };
        long long left = end - comet_now_mono() / 1000;
        ssize_t n;

        if (r->bad || left <= 0 || poll(&p, 1, (int)left) <= 0) {
            return 0;
        }
        if (r->rlen + 65536 + 1 > r->cap) {
            r->cap *= 2;
            ck_assert((r->raw = realloc(r->raw, r->cap)) != NULL);
            ck_assert((r->body = realloc(r->body, r->cap)) != NULL);
        }
        if ((n = read(r->fd, r->raw + r->rlen, 65536)) <= 0) {
            return 0;
        }
        r->rlen += (size_t)n;
        rs_dechunk(r);
    }
    return 1;
}

/* The body holds "<key>m0", "<key>m1", ... "<key>m<count-1>", each once
 * and in order (key: "data: " for SSE, "\"data\":\"" for ndjson). */
static void assert_sequence(const rd_stream_t *r, const char *key, int count)
{
    const char *p = r->body, *end = r->body + r->blen;
    size_t klen = strlen(key);
    int next = 0;

    while ((p = memmem(p, (size_t)(end - p), key, klen)) != NULL) {
        p += klen;
        if (*p != 'm') {
            continue;
        }
        ck_assert_msg(atoi(p + 1) == next, "message m%d where m%d was due",
                      atoi(p + 1), next);
        next++;
    }
    ck_assert_int_eq(next, count);
}

/* ---- tests -------------------------------------------------------------- */

START_TEST(sse_subscriber_gets_each_message_as_a_chunked_event)
{
    const char *ids[] = { "room" };
    char buf[4096], want[256];
    size_t len = 0;
    apr_uint64_t seq;
    int fd = adopt(ids, 1, COMET_T_SSE, 1, 0, NULL);

    ck_assert(wait_hub_count(1));
    seq = publish("room", "hello", NULL);
    snprintf(want, sizeof(want), "id: %08x:%" APR_UINT64_T_FMT
             "\ndata: hello\n\n\r\n", comet_store_epoch(fx.st), seq);
    ck_assert_msg(read_until(fd, buf, sizeof(buf), &len, want, 2000),
                  "got %s", buf);
    /* Chunk framing: hex length, CRLF, the event, CRLF. */
    snprintf(want, sizeof(want), "%zx\r\nid: ", strlen(want) - 2);
    ck_assert_msg(strstr(buf, want), "no chunk header %s in %s", want, buf);
    close(fd);
}
END_TEST

START_TEST(one_wakeup_serves_every_subscriber_of_the_channel)
{
    enum { N = 200 };
    const char *ids[] = { "fan" };
    int fds[N];
    comet_hub_stats_t hs;

    for (int i = 0; i < N; i++) {
        fds[i] = adopt(ids, 1, COMET_T_STREAM, 0, 0, NULL);
    }
    ck_assert(wait_hub_count(N));
    comet_hub_stats(fx.hub, &hs);
    publish("fan", "x", NULL);
    for (int i = 0; i < N; i++) {
        char buf[1024];
        size_t len = 0;

        ck_assert(read_until(fds[i], buf, sizeof(buf), &len, "\"data\":\"x\"",
                             2000));
        close(fds[i]);
    }
    {
        comet_hub_stats_t after;

        comet_hub_stats(fx.hub, &after);
        ck_assert_uint_eq(after.deliveries - hs.deliveries, N);
        ck_assert_uint_le(after.wakeups - hs.wakeups, 2);
    }
}
END_TEST

START_TEST(a_client_that_closes_is_freed_and_uncounted)
{
    const char *ids[] = { "bye" };
    int fd = adopt(ids, 1, COMET_T_SSE, 1, 0, NULL);

    ck_assert(wait_hub_count(1));
    ck_assert_uint_eq(store_subscribers("bye"), 1);
    close(fd);
    ck_assert(wait_hub_count(0));
    ck_assert(wait_count("bye", 0));
}
END_TEST

START_TEST(the_adopters_tag_comes_back_once_when_the_subscriber_ends)
{
    const char *ids[] = { "tagged", "untagged" };
    comet_chanref_t ref;
    comet_msgid_t newest;
    comet_hub_spec_t spec;
    apr_uint64_t seq = 0;
    int sv[2], fd;

    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    ck_assert_int_eq(comet_store_subscribe(fx.st, fx.slot, ids[0], 6,
                                           comet_now_mono(), &ref, &newest),
                     APR_SUCCESS);
    memset(&spec, 0, sizeof(spec));
    spec.fd = sv[0];
    spec.transport = COMET_T_SSE;
    spec.chunked = 1;
    spec.nchan = 1;
    spec.refs = &ref;
    spec.ids = ids;
    spec.seqs = &seq;
    spec.tag = 0x2a;
    ck_assert_int_eq(comet_hub_adopt(fx.hub, &spec, NULL), APR_SUCCESS);
    ck_assert(wait_hub_count(1));
    ck_assert_uint_eq(ended_calls, 0);
    close(sv[1]);
    ck_assert(wait_hub_count(0));
    for (int i = 0; i < 2000 && !ended_calls; i++) {
        usleep(1000);
    }
    ck_assert_uint_eq(ended_calls, 1);
    ck_assert_uint_eq(ended_tag, 0x2a);
    /* The store subscriptions were gone by then. */
    ck_assert_uint_eq(store_subscribers("tagged"), 0);

    /* No tag: no call. */
    fd = adopt(ids + 1, 1, COMET_T_SSE, 1, 0, NULL);
    ck_assert(wait_hub_count(1));
    close(fd);
    ck_assert(wait_hub_count(0));
    ck_assert(wait_count("untagged", 0));
    ck_assert_uint_eq(ended_calls, 1);
}
END_TEST

START_TEST(a_client_that_does_not_read_is_dropped_past_the_bound)
{
    const char *ids[] = { "slow" };
    char big[4000];
    int fd, small = 4096;
    comet_hub_stats_t hs;

    hub_join();
    teardown();
    hub_start(16 * 1024, 0);
    fd = adopt(ids, 1, COMET_T_SSE, 1, 0, NULL);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    ck_assert(wait_hub_count(1));
    memset(big, 'z', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    /* Never read: the kernel's buffers fill, then our bounded queue. */
    for (int i = 0; i < 400 && comet_hub_count(fx.hub); i++) {
        publish("slow", big, NULL);
        usleep(500);
    }
    ck_assert(wait_hub_count(0));
    ck_assert(wait_count("slow", 0));
    comet_hub_stats(fx.hub, &hs);
    ck_assert_uint_eq(hs.dropped_slow, 1);
    close(fd);
}
END_TEST

START_TEST(long_poll_answers_once_and_ends_the_response)
{
    const char *ids[] = { "lp" };
    char buf[4096];
    size_t len = 0;
    int fd = adopt(ids, 1, COMET_T_LONGPOLL, 1, apr_time_from_sec(30), NULL);

    ck_assert(wait_hub_count(1));
    publish("lp", "one", NULL);
    ck_assert(read_eof(fd, buf, sizeof(buf), &len, 2000));
    ck_assert_msg(strstr(buf, "\"data\":\"one\"}]}"), "got %s", buf);
    ck_assert_msg(strstr(buf, "\r\n0\r\n\r\n"), "no last chunk: %s", buf);
    ck_assert(wait_count("lp", 0));
    close(fd);
}
END_TEST

START_TEST(long_poll_times_out_with_no_messages_and_the_same_id)
{
    const char *ids[] = { "quiet" };
    apr_uint64_t seqs[1] = { 7 };
    char buf[4096], want[64];
    size_t len = 0;
    int fd;

    /* Position 7 is one the store has handed out (on another channel):
     * nothing was lost after it, and nothing comes. */
    for (int i = 0; i < 7; i++) {
        publish("elsewhere", "x", NULL);
    }
    fd = adopt(ids, 1, COMET_T_LONGPOLL, 0, apr_time_from_msec(100), seqs);

    ck_assert(read_eof(fd, buf, sizeof(buf), &len, 2000));
    snprintf(want, sizeof(want), "{\"id\":\"%08x:7\"",
             comet_store_epoch(fx.st));
    ck_assert_msg(strstr(buf, want), "got %s", buf);
    ck_assert_ptr_nonnull(strstr(buf, "\"missed\":false"));
    ck_assert_ptr_nonnull(strstr(buf, "\"messages\":[]"));
    close(fd);
}
END_TEST

START_TEST(keepalives_flow_on_idle_streams)
{
    const char *ids[] = { "idle" };
    char buf[4096];
    size_t len = 0;
    int sse = adopt(ids, 1, COMET_T_SSE, 1, apr_time_from_msec(50), NULL);
    int nd = adopt(ids, 1, COMET_T_STREAM, 0, apr_time_from_msec(50), NULL);

    ck_assert(read_until(sse, buf, sizeof(buf), &len, "3\r\n:\n\n\r\n3\r\n:\n",
                         2000));
    len = 0;
    ck_assert(read_until(nd, buf, sizeof(buf), &len, "\n\n", 2000));
    close(sse);
    close(nd);
}
END_TEST

START_TEST(messages_published_before_adoption_are_caught_up)
{
    const char *ids[] = { "early" };
    apr_uint64_t seqs[1];
    comet_msgid_t newest;
    comet_chanref_t ref;
    char buf[4096];
    size_t len = 0;
    int fd;

    /* The position a subscriber had when its handler read the store. */
    ck_assert_int_eq(comet_store_subscribe(fx.st, fx.slot, "early", 5,
                                           comet_now_mono(), &ref, &newest),
                     APR_SUCCESS);
    comet_store_unsubscribe(fx.st, fx.slot, &ref, comet_now_mono());
    seqs[0] = newest.seq;
    publish("early", "meanwhile-1", NULL);
    publish("early", "meanwhile-2", NULL);
    fd = adopt(ids, 1, COMET_T_SSE, 0, 0, seqs);
    ck_assert_msg(read_until(fd, buf, sizeof(buf), &len,
                             "data: meanwhile-2\n\n", 2000), "got %s", buf);
    ck_assert_ptr_nonnull(strstr(buf, "data: meanwhile-1\n\n"));
    close(fd);
}
END_TEST

START_TEST(several_channels_get_compound_ids_and_channel_event_names)
{
    const char *ids[] = { "a", "b" };
    char buf[4096], want[128];
    size_t len = 0;
    apr_uint64_t sa, sb;
    int fd = adopt(ids, 2, COMET_T_SSE, 0, 0, NULL);

    ck_assert(wait_hub_count(1));
    sb = publish("b", "to-b", "t");
    sa = publish("a", "to-a", NULL);
    /* Order holds within a channel; the two channels' messages may come
     * in either order, but each event names its channel, and the second
     * one's id carries both positions. */
    ck_assert_msg(read_until(fd, buf, sizeof(buf), &len,
                             "event: b#t\ndata: to-b\n\n", 2000),
                  "got %s", buf);
    ck_assert_msg(read_until(fd, buf, sizeof(buf), &len,
                             "event: a\ndata: to-a\n\n", 2000),
                  "got %s", buf);
    snprintf(want, sizeof(want), "id: %08x:%" APR_UINT64_T_FMT ",%"
             APR_UINT64_T_FMT "\n", comet_store_epoch(fx.st), sa, sb);
    ck_assert_msg(strstr(buf, want), "want %s got %s", want, buf);
    close(fd);
}
END_TEST

/* Feed a message with its own seq into a fed copy of chan (the store
 * changes only if the channel is where *pos says; *pos is updated). */
static void feed(const char *chan, apr_uint64_t seq, const char *data,
                 comet_store_pos_t *pos)
{
    comet_store_feed_t f;

    memset(&f, 0, sizeof(f));
    f.channel = chan;
    f.channel_len = strlen(chan);
    f.has_msg = 1;
    f.seq = seq;
    f.data = data;
    f.data_len = strlen(data);
    f.expect_fed = pos->fed;
    f.expect_last = pos->last;
    ck_assert_int_eq(comet_store_feed(fx.st, &f, comet_now_mono(), wake,
                                      NULL, pos), APR_SUCCESS);
}

/* A copy fed from Redis starts its ids anew, below what its readers have
 * seen, when Redis lost its data: they are told, get the new messages,
 * and go on with the new ids (single and several channels alike). */
START_TEST(ids_that_start_anew_below_the_position_are_delivered_after_it)
{
    const char *one[] = { "anew" }, *two[] = { "anew", "other" };
    char b1[4096], b2[4096];
    size_t l1 = 0, l2 = 0;
    comet_store_pos_t pos;
    int f1 = adopt(one, 1, COMET_T_SSE, 0, 0, NULL);
    int f2 = adopt(two, 2, COMET_T_STREAM, 0, 0, NULL);

    ck_assert(wait_hub_count(2));
    memset(&pos, 0, sizeof(pos));
    feed("anew", 1000, "old-1000", &pos);
    ck_assert(read_until(f1, b1, sizeof(b1), &l1, "data: old-1000", 2000));
    ck_assert(read_until(f2, b2, sizeof(b2), &l2, "old-1000", 2000));
    l1 = l2 = 0;
    feed("anew", 5, "new-5", &pos);
    ck_assert_msg(read_until(f1, b1, sizeof(b1), &l1, "data: new-5", 2000),
                  "got %s", b1);
    ck_assert_msg(strstr(b1, "event: comet-missed"), "got %s", b1);
    ck_assert_msg(read_until(f2, b2, sizeof(b2), &l2, "new-5", 2000),
                  "got %s", b2);
    feed("anew", 6, "new-6", &pos);
    ck_assert_msg(read_until(f1, b1, sizeof(b1), &l1, "data: new-6", 2000),
                  "got %s", b1);
    ck_assert_msg(read_until(f2, b2, sizeof(b2), &l2, "new-6", 2000),
                  "got %s", b2);
    close(f1);
    close(f2);
}
END_TEST

START_TEST(a_deleted_channel_ends_its_streams_with_a_notice)
{
    const char *ids[] = { "gone" };
    char buf[4096];
    size_t len = 0;
    apr_uint32_t receivers = 0;
    int fd = adopt(ids, 1, COMET_T_SSE, 1, 0, NULL);

    ck_assert(wait_hub_count(1));
    ck_assert_int_eq(comet_store_delete(fx.st, "gone", 4, wake, NULL,
                                        &receivers), APR_SUCCESS);
    ck_assert_uint_eq(receivers, 1);
    ck_assert(read_eof(fd, buf, sizeof(buf), &len, 2000));
    ck_assert_msg(strstr(buf, "event: comet-deleted\ndata: gone\n\n"),
                  "got %s", buf);
    ck_assert_ptr_nonnull(strstr(buf, "0\r\n\r\n"));
    ck_assert(wait_hub_count(0));
    close(fd);
}
END_TEST

START_TEST(stopping_the_hub_ends_every_stream_cleanly)
{
    const char *ids[] = { "end" };
    int fds[10];

    for (int i = 0; i < 10; i++) {
        fds[i] = adopt(ids, 1, COMET_T_SSE, 1, 0, NULL);
    }
    ck_assert(wait_hub_count(10));
    hub_join();
    for (int i = 0; i < 10; i++) {
        char buf[256];
        size_t len = 0;

        ck_assert(read_eof(fds[i], buf, sizeof(buf), &len, 2000));
        ck_assert_str_eq(buf, "0\r\n\r\n");
        close(fds[i]);
    }
    ck_assert_uint_eq(store_subscribers("end"), 0);
}
END_TEST

START_TEST(the_subscriber_limit_refuses_adoption)
{
    const char *ids[] = { "cap" };
    comet_chanref_t ref;
    comet_msgid_t newest;
    comet_hub_spec_t spec;
    apr_uint64_t seq = 0;
    int fd;

    hub_join();
    teardown();
    hub_start(1024 * 1024, 1);
    fd = adopt(ids, 1, COMET_T_SSE, 1, 0, NULL);
    ck_assert_int_eq(comet_store_subscribe(fx.st, fx.slot, "cap", 3,
                                           comet_now_mono(), &ref, &newest),
                     APR_SUCCESS);
    memset(&spec, 0, sizeof(spec));
    spec.fd = -1;
    spec.sink = NULL;
    spec.transport = COMET_T_SSE;
    spec.nchan = 1;
    spec.refs = &ref;
    spec.ids = ids;
    spec.seqs = &seq;
    spec.fd = 99999;
    ck_assert_int_eq(comet_hub_adopt(fx.hub, &spec, NULL), APR_EAGAIN);
    comet_store_unsubscribe(fx.st, fx.slot, &ref, comet_now_mono());
    close(fd);
}
END_TEST

/* A sink subscriber: bytes handed to callbacks, cancel ends it. */
typedef struct sink_t {
    pthread_mutex_t mu;
    char buf[4096];
    size_t len;
    int closed;
} sink_t;

static apr_status_t sink_write(void *baton, const char *data,
                               apr_size_t len, int flags, apr_size_t *held)
{
    sink_t *k = baton;

    *held = 0;
    pthread_mutex_lock(&k->mu);
    if (k->len + len < sizeof(k->buf)) {
        memcpy(k->buf + k->len, data, len);
        k->len += len;
        k->buf[k->len] = '\0';
    }
    pthread_mutex_unlock(&k->mu);
    return APR_SUCCESS;
}

static void sink_close(void *baton)
{
    sink_t *k = baton;

    pthread_mutex_lock(&k->mu);
    k->closed = 1;
    pthread_mutex_unlock(&k->mu);
}

static const comet_hub_sink_t sink_fns = { sink_write, sink_close };

static int sink_has(sink_t *k, const char *needle, int want_closed)
{
    for (int i = 0; i < 2000; i++) {
        int ok;

        pthread_mutex_lock(&k->mu);
        ok = (!needle || strstr(k->buf, needle)) && k->closed >= want_closed;
        pthread_mutex_unlock(&k->mu);
        if (ok) {
            return 1;
        }
        usleep(1000);
    }
    return 0;
}

START_TEST(a_sink_subscriber_gets_plain_frames_and_can_be_cancelled)
{
    const char *ids[] = { "sink" };
    comet_chanref_t ref;
    comet_msgid_t newest;
    comet_hub_spec_t spec;
    comet_hub_sub_t *handle;
    apr_uint64_t seq;
    sink_t k;

    memset(&k, 0, sizeof(k));
    pthread_mutex_init(&k.mu, NULL);
    ck_assert_int_eq(comet_store_subscribe(fx.st, fx.slot, "sink", 4,
                                           comet_now_mono(), &ref, &newest),
                     APR_SUCCESS);
    seq = newest.seq;
    memset(&spec, 0, sizeof(spec));
    spec.fd = -1;
    spec.sink = &sink_fns;
    spec.sink_baton = &k;
    spec.transport = COMET_T_SSE;
    spec.nchan = 1;
    spec.refs = &ref;
    spec.ids = ids;
    spec.seqs = &seq;
    ck_assert_int_eq(comet_hub_adopt(fx.hub, &spec, &handle), APR_SUCCESS);
    ck_assert(wait_hub_count(1));
    publish("sink", "via sink", NULL);
    ck_assert(sink_has(&k, "data: via sink\n\n", 0));
    /* Not chunked: the writer's own filters frame it. */
    ck_assert_ptr_null(strstr(k.buf, "\r\n"));
    pthread_mutex_lock(&k.mu);
    if (!k.closed) {
        comet_hub_cancel(fx.hub, handle);
    }
    pthread_mutex_unlock(&k.mu);
    ck_assert(sink_has(&k, NULL, 1));
    ck_assert(wait_count("sink", 0));
}
END_TEST

/* ---- bounded delivery --------------------------------------------------- */

/* A task that holds the hub thread until released, so that a test can
 * publish many messages for one wakeup. */
typedef struct hold_t {
    comet_hub_task_t task;
    pthread_mutex_t  mu;
    pthread_cond_t   cv;
    int              held, released;
} hold_t;

static void hold_fn(comet_hub_t *hub, comet_hub_task_t *task, int stopping)
{
    hold_t *h = task->baton;

    pthread_mutex_lock(&h->mu);
    h->held = 1;
    pthread_cond_broadcast(&h->cv);
    while (!h->released) {
        pthread_cond_wait(&h->cv, &h->mu);
    }
    pthread_mutex_unlock(&h->mu);
}

static void hold_hub(hold_t *h)
{
    memset(h, 0, sizeof(*h));
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->cv, NULL);
    h->task.fn = hold_fn;
    h->task.baton = h;
    ck_assert_int_eq(comet_hub_post(fx.hub, &h->task), APR_SUCCESS);
    pthread_mutex_lock(&h->mu);
    while (!h->held) {
        pthread_cond_wait(&h->cv, &h->mu);
    }
    pthread_mutex_unlock(&h->mu);
}

static void release_hub(hold_t *h)
{
    pthread_mutex_lock(&h->mu);
    h->released = 1;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

/* One read brings more frames than a batch holds: the batch says how many
 * it holds, the channel's position advances by that much, and the rest
 * comes in the next rounds; every chunk is whole, nothing is skipped. */
START_TEST(a_read_larger_than_a_batch_goes_out_in_rounds)
{
    const char *ids[] = { "big" };
    char pad[400];
    rd_stream_t r;
    hold_t h;

    hub_restart_with(1024 * 1024, 2048, 16, 1000);
    rs_open(&r, adopt(ids, 1, COMET_T_SSE, 1, 0, NULL), 1);
    ck_assert(wait_hub_count(1));
    memset(pad, 'p', sizeof(pad) - 1);
    pad[sizeof(pad) - 1] = '\0';
    hold_hub(&h);
    for (int i = 0; i < 600; i++) {
        char data[512];

        snprintf(data, sizeof(data), "m%d\n%s", i, pad);
        publish("big", data, NULL);
    }
    release_hub(&h);
    ck_assert_msg(rs_until(&r, "data: m599\n", 5000), "bad=%d, %zu bytes",
                  r.bad, r.blen);
    ck_assert(!r.bad);
    assert_sequence(&r, "data: ", 600);
    rs_close(&r);
}
END_TEST

/* A subscriber that resumes thousands of messages behind another of the
 * same process gets every one of them, in order, once, while messages
 * keep coming; so does the one in step. */
START_TEST(one_far_behind_catches_up_in_order_once)
{
    const char *ids[] = { "far" };
    apr_uint64_t seqs[1] = { 0 };
    rd_stream_t live, behind;
    comet_hub_stats_t hs;

    hub_restart_with(1024 * 1024, 0, 16, 10000);
    rs_open(&live, adopt(ids, 1, COMET_T_STREAM, 0, 0, NULL), 0);
    ck_assert(wait_hub_count(1));
    publish_seq("far", 0, 5000);
    ck_assert(rs_until(&live, "\"data\":\"m4999\"", 5000));
    rs_open(&behind, adopt(ids, 1, COMET_T_STREAM, 0, 0, seqs), 0);
    publish_seq("far", 5000, 6000);
    ck_assert(rs_until(&behind, "\"data\":\"m5999\"", 10000));
    ck_assert(rs_until(&live, "\"data\":\"m5999\"", 5000));
    assert_sequence(&live, "\"data\":\"", 6000);
    assert_sequence(&behind, "\"data\":\"", 6000);
    ck_assert_ptr_null(strstr(behind.body, "missed"));
    comet_hub_stats(fx.hub, &hs);
    ck_assert_uint_ge(hs.catchup_reads, 5000 / 256);
    rs_close(&live);
    rs_close(&behind);
}
END_TEST

/* The lines of an ndjson body that name channel chan carry "m0", "m1",
 * ... "m<count-1>", each once and in order. */
static void assert_channel_sequence(const rd_stream_t *r, const char *chan,
                                    int count)
{
    char want[64];
    const char *p = r->body;
    int next = 0;

    snprintf(want, sizeof(want), "{\"channel\":\"%s\"", chan);
    while ((p = strstr(p, want)) != NULL) {
        const char *d = strstr(p, "\"data\":\"m"), *nl = strchr(p, '\n');

        ck_assert(d && nl && d < nl);
        ck_assert_msg(atoi(d + 9) == next, "%s: m%d where m%d was due",
                      chan, atoi(d + 9), next);
        next++;
        p = nl;
    }
    ck_assert_int_eq(next, count);
}

/* A subscriber to two channels, both far behind, while both go on: each
 * channel's messages in order, once; every id names both positions. */
START_TEST(several_channels_far_behind_catch_up_in_order_once)
{
    const char *ids[] = { "ca", "cb" };
    apr_uint64_t seqs[2] = { 0, 0 };
    rd_stream_t r;
    char last[64];

    hub_restart_with(1024 * 1024, 8 * 1024, 16, 5000);
    publish_seq("ca", 0, 1500);
    publish_seq("cb", 0, 1000);
    rs_open(&r, adopt(ids, 2, COMET_T_STREAM, 0, 0, seqs), 0);
    publish_seq("cb", 1000, 1200);
    publish_seq("ca", 1500, 1600);
    ck_assert(rs_until(&r, "{\"channel\":\"ca\"", 10000));
    ck_assert(rs_until(&r, "\"data\":\"m1599\"", 10000));
    ck_assert(rs_until(&r, "\"data\":\"m1199\"", 10000));
    assert_channel_sequence(&r, "ca", 1600);
    assert_channel_sequence(&r, "cb", 1200);
    /* Ids are compound: both channels' positions, "<epoch>:<a>,<b>". */
    snprintf(last, sizeof(last), "\"id\":\"%08x:", comet_store_epoch(fx.st));
    {
        const char *id = strstr(r.body, last), *end;

        ck_assert_ptr_nonnull(id);
        id += strlen(last);
        end = strchr(id, '"');
        ck_assert(end && memchr(id, ',', (size_t)(end - id)));
    }
    ck_assert_ptr_null(strstr(r.body, "missed"));
    rs_close(&r);
}
END_TEST

/* A position older than what the store keeps: the missed signal, once,
 * then what is kept, then the live messages. */
START_TEST(an_old_position_gets_the_missed_signal_once)
{
    const char *ids[] = { "lossy" };
    apr_uint64_t seqs[1];
    rd_stream_t r;
    char *p;
    int missed = 0;

    hub_restart_with(1024 * 1024, 0, 16, 100);
    seqs[0] = publish("lossy", "m0", NULL);
    for (int i = 1; i < 300; i++) {
        char data[16];

        snprintf(data, sizeof(data), "x%d", i);
        publish("lossy", data, NULL);
    }
    rs_open(&r, adopt(ids, 1, COMET_T_STREAM, 0, 0, seqs), 0);
    ck_assert(rs_until(&r, "\"data\":\"x299\"", 5000));
    publish("lossy", "after", NULL);
    ck_assert(rs_until(&r, "\"data\":\"after\"", 5000));
    for (p = r.body; (p = strstr(p, "\"missed\":true")); p++) {
        missed++;
    }
    ck_assert_int_eq(missed, 1);
    ck_assert(strstr(r.body, "\"missed\":true") < strstr(r.body, "x200"));
    ck_assert_ptr_null(strstr(r.body, "\"x199\""));
    rs_close(&r);
}
END_TEST

/* Messages that become frames larger than max_pending (newlines are six
 * times their size in SSE) do not drop a reader that takes each one. */
START_TEST(a_reader_keeping_up_survives_big_frames)
{
    const char *ids[] = { "nl" };
    apr_size_t n = 100 * 1024;
    char *nl = malloc(n);
    rd_stream_t r;
    comet_hub_stats_t hs;

    hub_restart_with(64 * 1024, 0, 16, 0);
    rs_open(&r, adopt(ids, 1, COMET_T_SSE, 1, 0, NULL), 1);
    ck_assert(wait_hub_count(1));
    memset(nl, '\n', n);
    for (int i = 0; i < 3; i++) {
        char tail[32];
        size_t before = r.blen;

        /* Some 600 KB of SSE ("data:" and a newline per line), taken in
         * full before anything else is published. */
        publish_n("nl", nl, n);
        ck_assert_msg(rs_until_len(&r, before + 6 * (n + 1), 5000),
                      "round %d: %zu bytes", i, r.blen - before);
        snprintf(tail, sizeof(tail), "data: mark%d\n", i);
        publish("nl", tail + 6, NULL);
        ck_assert_msg(rs_until(&r, tail, 5000), "round %d: %zu bytes", i,
                      r.blen);
    }
    ck_assert(!r.bad);
    comet_hub_stats(fx.hub, &hs);
    ck_assert_uint_eq(hs.dropped_slow, 0);
    ck_assert_uint_eq(comet_hub_count(fx.hub), 1);
    rs_close(&r);
    free(nl);
}
END_TEST

/* A sink that holds what it is given until the test drains it. */
typedef struct slow_sink_t {
    pthread_mutex_t mu;
    char           *buf;
    size_t          len, cap, held, max_held;
    int             notify, closed;
} slow_sink_t;

static apr_status_t slow_write(void *baton, const char *data, apr_size_t len,
                               int flags, apr_size_t *held)
{
    slow_sink_t *k = baton;

    pthread_mutex_lock(&k->mu);
    if (k->len + len + 1 > k->cap) {
        k->cap = (k->len + len + 1) * 2;
        k->buf = realloc(k->buf, k->cap);
    }
    memcpy(k->buf + k->len, data, len);
    k->len += len;
    k->buf[k->len] = '\0';
    k->held += len;
    if (k->held > k->max_held) {
        k->max_held = k->held;
    }
    if ((flags & COMET_HUB_SINK_NOTIFY) && k->held) {
        k->notify = 1;
    }
    *held = k->held;
    pthread_mutex_unlock(&k->mu);
    return APR_SUCCESS;
}

static void slow_close(void *baton)
{
    slow_sink_t *k = baton;

    pthread_mutex_lock(&k->mu);
    k->closed = 1;
    pthread_mutex_unlock(&k->mu);
}

static const comet_hub_sink_t slow_fns = { slow_write, slow_close };

/* A sink subscriber asking for a backlog gets it one part at a time, each
 * once the sink said all before had left: the hub never hands it more
 * than max_pending plus one batch. */
START_TEST(a_sink_gets_a_backlog_part_by_part)
{
    const char *ids[] = { "bl" };
    comet_chanref_t ref;
    comet_msgid_t newest;
    comet_hub_spec_t spec;
    comet_hub_sub_t *handle;
    apr_uint64_t seq = 0;
    slow_sink_t k;
    rd_stream_t r;
    int rounds = 0;

    hub_restart_with(32 * 1024, 8 * 1024, 16, 5000);
    publish_seq("bl", 0, 3000);
    memset(&k, 0, sizeof(k));
    pthread_mutex_init(&k.mu, NULL);
    ck_assert_int_eq(comet_store_subscribe(fx.st, fx.slot, "bl", 2,
                                           comet_now_mono(), &ref, &newest),
                     APR_SUCCESS);
    memset(&spec, 0, sizeof(spec));
    spec.fd = -1;
    spec.sink = &slow_fns;
    spec.sink_baton = &k;
    spec.transport = COMET_T_SSE;
    spec.nchan = 1;
    spec.refs = &ref;
    spec.ids = ids;
    spec.seqs = &seq;
    spec.start = COMET_HUB_START_BACKLOG;
    ck_assert_int_eq(comet_hub_adopt(fx.hub, &spec, &handle), APR_SUCCESS);
    for (;;) {
        int i, done;

        /* Wait for the hub's part, then drain it and say so. */
        for (i = 0; i < 5000; i++) {
            pthread_mutex_lock(&k.mu);
            done = k.notify || (k.buf && strstr(k.buf, "data: m2999\n"));
            pthread_mutex_unlock(&k.mu);
            if (done) {
                break;
            }
            usleep(1000);
        }
        ck_assert_msg(done, "the hub stopped after %d parts", rounds);
        pthread_mutex_lock(&k.mu);
        if (strstr(k.buf, "data: m2999\n")) {
            pthread_mutex_unlock(&k.mu);
            break;
        }
        k.held = 0;
        k.notify = 0;
        comet_hub_room(fx.hub, handle);
        rounds++;
        pthread_mutex_unlock(&k.mu);
    }
    ck_assert_int_gt(rounds, 3);
    ck_assert_uint_le(k.max_held, 32 * 1024 + 8 * 1024);
    memset(&r, 0, sizeof(r));
    r.body = k.buf;
    r.blen = k.len;
    assert_sequence(&r, "data: ", 3000);
    pthread_mutex_lock(&k.mu);
    comet_hub_cancel(fx.hub, handle);
    pthread_mutex_unlock(&k.mu);
    ck_assert(wait_hub_count(0));
    free(k.buf);
}
END_TEST

/* A long-poll far behind: each answer holds at most max_pending bytes of
 * messages and the id after the last; poll after poll, the client gets
 * them all. */
START_TEST(a_long_poll_behind_catches_up_poll_by_poll)
{
    const char *ids[] = { "lpfar" };
    apr_uint64_t seqs[1] = { 0 };
    char pad[100];
    rd_stream_t all;
    int polls = 0;

    hub_restart_with(8 * 1024, 0, 16, 5000);
    memset(pad, 'p', sizeof(pad) - 1);
    pad[sizeof(pad) - 1] = '\0';
    for (int i = 0; i < 1000; i++) {
        char data[160];

        snprintf(data, sizeof(data), "m%d %s", i, pad);
        publish("lpfar", data, NULL);
    }
    memset(&all, 0, sizeof(all));
    all.cap = 4 * 1024 * 1024;
    all.body = malloc(all.cap);
    while (polls < 100) {
        char buf[32 * 1024], *id;
        size_t len = 0;
        int fd = adopt(ids, 1, COMET_T_LONGPOLL, 0, apr_time_from_sec(30),
                       seqs);

        ck_assert(read_eof(fd, buf, sizeof(buf), &len, 5000));
        close(fd);
        polls++;
        ck_assert_uint_le(len, 8 * 1024 + 512);
        ck_assert((id = strstr(buf, "{\"id\":\"")) != NULL);
        seqs[0] = strtoull(strchr(id + 7, ':') + 1, NULL, 10);
        memcpy(all.body + all.blen, buf, len);
        all.blen += len;
        all.body[all.blen] = '\0';
        if (strstr(buf, "\"data\":\"m999 ")) {
            break;
        }
    }
    ck_assert_int_gt(polls, 10);
    ck_assert_ptr_null(strstr(all.body, "\"missed\":true"));
    assert_sequence(&all, "\"data\":\"", 1000);
    free(all.body);
}
END_TEST

/* Tasks: run on the hub's thread, in order; told when the loop has ended;
 * refused once the hub's thread is done. */
typedef struct task_rec_t {
    comet_hub_task_t task;
    pthread_t        ran_on;
    int              ran, stopping, order;
} task_rec_t;

static volatile int task_seq;

static void task_fn(comet_hub_t *hub, comet_hub_task_t *task, int stopping)
{
    task_rec_t *t = task->baton;

    t->ran_on = pthread_self();
    t->stopping = stopping;
    t->order = ++task_seq;
    __atomic_store_n(&t->ran, 1, __ATOMIC_RELEASE);
}

static int task_ran(task_rec_t *t)
{
    for (int i = 0; i < 2000; i++) {
        if (__atomic_load_n(&t->ran, __ATOMIC_ACQUIRE)) {
            return 1;
        }
        usleep(1000);
    }
    return 0;
}

static volatile int stop_calls;

static void on_stop(comet_hub_t *hub, void *baton)
{
    task_rec_t *late = baton;

    stop_calls++;
    /* Posted while stopping: still runs, with stopping set. */
    ck_assert_int_eq(comet_hub_post(hub, &late->task), APR_SUCCESS);
}

START_TEST(tasks_run_on_the_hub_thread_in_order_and_stop_with_it)
{
    task_rec_t a, b, late, refused;
    comet_hub_config_t cfg;

    hub_join();
    teardown();
    comet_test_pool_setup();
    memset(&fx, 0, sizeof(fx));
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    memset(&late, 0, sizeof(late));
    memset(&refused, 0, sizeof(refused));
    a.task.fn = b.task.fn = late.task.fn = refused.task.fn = task_fn;
    a.task.baton = &a;
    b.task.baton = &b;
    late.task.baton = &late;
    refused.task.baton = &refused;
    fx.st = store_util_make(8 * 1024 * 1024, 0, 0, 0, 4);
    ck_assert_int_eq(comet_store_proc_attach(fx.st, (apr_int32_t)getpid(),
                                             &fx.slot), APR_SUCCESS);
    fx.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    memset(&cfg, 0, sizeof(cfg));
    cfg.store = fx.st;
    cfg.slot = fx.slot;
    cfg.wake_fd = fx.wake_fd;
    cfg.on_stop = on_stop;
    cfg.on_stop_baton = &late;
    ck_assert_int_eq(comet_hub_create(&fx.hub, &cfg, comet_test_pool),
                     APR_SUCCESS);
    ck_assert_int_eq(pthread_create(&fx.thread, NULL, hub_thread, fx.hub), 0);
    fx.running = 1;

    task_seq = 0;
    stop_calls = 0;
    ck_assert_int_eq(comet_hub_post(fx.hub, &a.task), APR_SUCCESS);
    ck_assert_int_eq(comet_hub_post(fx.hub, &b.task), APR_SUCCESS);
    ck_assert(task_ran(&a) && task_ran(&b));
    ck_assert(pthread_equal(a.ran_on, fx.thread));
    ck_assert_int_eq(a.order, 1);
    ck_assert_int_eq(b.order, 2);
    ck_assert_int_eq(a.stopping, 0);
    hub_join();
    ck_assert_int_eq(stop_calls, 1);
    ck_assert(late.ran);
    ck_assert_int_eq(late.stopping, 1);
    ck_assert_int_eq(comet_hub_post(fx.hub, &refused.task), APR_EAGAIN);
    ck_assert(!refused.ran);
}
END_TEST


/* ---- TLS subscribers --------------------------------------------------- */

static SSL_CTX *tls_sctx, *tls_cctx;

/* Subscribe and hand the server's end of a finished handshake to the hub,
 * its session detached onto a dup of the socket (as the glue does); the
 * hub owns the server side afterwards. */
static void adopt_tls_as(tls_util_pair_t *tp, const char *id, int version,
                         const comet_hub_ws_spec_t *ws)
{
    comet_chanref_t ref;
    comet_msgid_t newest;
    apr_uint64_t seq;
    comet_hub_spec_t spec;
    const char *ids[1];
    char junk[64];
    int fd;

    signal(SIGPIPE, SIG_IGN);
    tls_sctx = tls_util_server_ctx(version);
    tls_cctx = tls_util_client_ctx(version);
    tls_util_pair(tp, tls_sctx, tls_cctx);
    /* The client takes the TLS 1.3 tickets now: later reads see only the
     * hub's records. */
    SSL_read(tp->client, junk, sizeof(junk));
    ERR_clear_error();
    fd = dup(tp->sfd);
    close(tp->sfd);
    tp->sfd = -1;
    ck_assert_int_eq(comet_tls_detach(tp->server, fd), APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(fx.st, fx.slot, id, strlen(id),
                                           comet_now_mono(), &ref, &newest),
                     APR_SUCCESS);
    seq = newest.seq;
    ids[0] = id;
    memset(&spec, 0, sizeof(spec));
    spec.fd = fd;
    spec.ssl = tp->server;
    spec.transport = ws ? COMET_T_WS : COMET_T_SSE;
    spec.chunked = !ws;
    spec.ws = ws;
    spec.nchan = 1;
    spec.refs = &ref;
    spec.ids = ids;
    spec.seqs = &seq;
    ck_assert_int_eq(comet_hub_adopt(fx.hub, &spec, NULL), APR_SUCCESS);
    tp->server = NULL;
}

static void adopt_tls(tls_util_pair_t *tp, const char *id, int version)
{
    adopt_tls_as(tp, id, version, NULL);
}

static void tls_done(tls_util_pair_t *tp)
{
    tls_util_pair_free(tp);
    SSL_CTX_free(tls_cctx);
    SSL_CTX_free(tls_sctx);
}

/* Decrypted bytes until needle shows up; 1 when found. */
static int tls_read_until(tls_util_pair_t *tp, char *buf, size_t max,
                          size_t *len, const char *needle)
{
    for (int i = 0; i < 200; i++) {
        buf[*len] = '\0';
        if (strstr(buf, needle)) {
            return 1;
        }
        if (!tls_util_client_some(tp, buf, max - 1, len, 100)
            && SSL_get_error(tp->client, -1) == SSL_ERROR_ZERO_RETURN) {
            break;
        }
    }
    buf[*len] = '\0';
    return strstr(buf, needle) != NULL;
}

START_TEST(a_tls_subscriber_gets_messages_and_ends_with_close_notify)
{
    tls_util_pair_t tp;
    comet_hub_stats_t hs;
    char buf[4096];
    size_t len = 0;

    adopt_tls(&tp, "tls", _i ? 3 : 2);
    ck_assert(wait_hub_count(1));
    comet_hub_stats(fx.hub, &hs);
    ck_assert_uint_eq(hs.detached, 1);
    ck_assert_uint_eq(hs.tls, 1);
    publish("tls", "over tls", NULL);
    ck_assert_msg(tls_read_until(&tp, buf, sizeof(buf), &len,
                                 "data: over tls\n\n\r\n"), "got %s", buf);
    hub_join();
    len = 0;
    ck_assert_int_eq(tls_util_client_read(&tp, buf, 6, &len, 2000),
                     SSL_ERROR_ZERO_RETURN);
    buf[len] = '\0';
    ck_assert_str_eq(buf, "0\r\n\r\n");
    ck_assert_uint_eq(store_subscribers("tls"), 0);
    tls_done(&tp);
}
END_TEST

START_TEST(a_tls_client_close_notify_is_answered_and_the_subscriber_freed)
{
    tls_util_pair_t tp;
    comet_hub_stats_t hs;
    char buf[64];
    size_t len = 0;

    adopt_tls(&tp, "tlsbye", 3);
    ck_assert(wait_hub_count(1));
    ck_assert_int_ge(SSL_shutdown(tp.client), 0);
    ck_assert(wait_hub_count(0));
    ck_assert(wait_count("tlsbye", 0));
    ck_assert_int_eq(tls_util_client_read(&tp, buf, 1, &len, 2000),
                     SSL_ERROR_ZERO_RETURN);
    comet_hub_stats(fx.hub, &hs);
    ck_assert_uint_eq(hs.tls, 0);
    ck_assert_uint_eq(hs.detached, 0);
    tls_done(&tp);
}
END_TEST

/* Count "data: m<k>" events in order from 1; returns how many, -1 when
 * one is missing or out of order. */
static int events_in_order(const char *buf)
{
    int n = 0;

    for (const char *p = buf; (p = strstr(p, "data: m")); p++) {
        if (atoi(p + 7) != ++n) {
            return -1;
        }
    }
    return n;
}

/* A client that reads slowly: what waits is kept in order and all of it
 * arrives; one that stops reading is dropped past the bound, and what it
 * did get is a gapless prefix (bytes are never dropped or reordered). */
START_TEST(tls_bytes_that_wait_are_kept_in_order_and_a_stuck_client_dropped)
{
    /* Fewer than the store keeps per channel; more bytes than the
     * socket and the bound hold together. */
    enum { MSGS = 90, MAXBUF = 4 * 1024 * 1024 };
    tls_util_pair_t tp;
    char *buf = malloc(MAXBUF), msg[3500];
    size_t len = 0;
    comet_hub_stats_t hs;
    int rcv = 4096, stuck = _i;

    hub_join();
    teardown();
    hub_start(stuck ? 64 * 1024 : 4 * 1024 * 1024, 0);
    adopt_tls(&tp, "tlsslow", 3);
    setsockopt(tp.cfd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
    ck_assert(wait_hub_count(1));
    /* The first one read: the hub has linked the subscriber. */
    publish("tlsslow", "m1 x", NULL);
    ck_assert(tls_read_until(&tp, buf, MAXBUF, &len, "data: m1 x"));
    memset(msg, 'x', sizeof(msg));
    for (int i = 2; i <= MSGS; i++) {
        snprintf(msg, 16, "m%d ", i);
        msg[strlen(msg)] = 'x';
        msg[sizeof(msg) - 1] = '\0';
        publish("tlsslow", msg, NULL);
    }
    if (stuck) {
        /* The drop comes with a write that finds more than the bound
         * unsent already: publishing goes on until it does. */
        for (int i = MSGS + 1; i < MSGS + 2000; i++) {
            comet_hub_stats(fx.hub, &hs);
            if (hs.dropped_slow) {
                break;
            }
            snprintf(msg, 16, "m%d ", i);
            msg[strlen(msg)] = 'x';
            publish("tlsslow", msg, NULL);
            usleep(1000);
        }
        ck_assert_uint_eq(hs.dropped_slow, 1);
        /* Cut without close_notify: read what came before the cut. */
        while (tls_util_client_some(&tp, buf, MAXBUF - 1, &len, 200)) {
        }
        buf[len] = '\0';
        ck_assert_msg(events_in_order(buf) >= 1, "got %d in order: %s",
                      events_in_order(buf), comet_test_show(buf, len));
        ck_assert_int_lt(events_in_order(buf), MSGS);
    }
    else {
        char want[32];

        snprintf(want, sizeof(want), "data: m%d x", MSGS);
        ck_assert(tls_read_until(&tp, buf, MAXBUF, &len, want));
        ck_assert_int_eq(events_in_order(buf), MSGS);
        comet_hub_stats(fx.hub, &hs);
        ck_assert_uint_eq(hs.dropped_slow, 0);
    }
    tls_done(&tp);
    free(buf);
}
END_TEST

/* ---- WebSocket ------------------------------------------------------------------ */

/* A client's view of a WebSocket: the bytes read so far, and the next
 * server frame taken from them. */
typedef struct wsc_t {
    int        fd;
    char       buf[256 * 1024];
    size_t     len, off;
} wsc_t;

static const unsigned char wsc_mask[4] = { 0x12, 0x34, 0x56, 0x78 };

static wsc_t *ws_adopt(const char *const *ids, apr_size_t n,
                       const comet_hub_ws_spec_t *ws, apr_time_t interval)
{
    comet_chanref_t refs[8];
    apr_uint64_t seqs[8];
    comet_hub_spec_t spec;
    wsc_t *c = calloc(1, sizeof(*c));
    int sv[2];

    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    for (apr_size_t i = 0; i < n; i++) {
        comet_msgid_t newest;

        ck_assert_int_eq(comet_store_subscribe(fx.st, fx.slot, ids[i],
                                               strlen(ids[i]),
                                               comet_now_mono(), &refs[i],
                                               &newest), APR_SUCCESS);
        seqs[i] = newest.seq;
    }
    memset(&spec, 0, sizeof(spec));
    spec.fd = sv[0];
    spec.transport = COMET_T_WS;
    spec.nchan = n;
    spec.refs = refs;
    spec.ids = ids;
    spec.seqs = seqs;
    spec.interval = interval;
    spec.ws = ws;
    ck_assert_int_eq(comet_hub_adopt(fx.hub, &spec, NULL), APR_SUCCESS);
    c->fd = sv[1];
    return c;
}

static void ws_spec(comet_hub_ws_spec_t *ws, int publish, const char *from)
{
    memset(ws, 0, sizeof(*ws));
    ws->publish = publish;
    ws->max_message = 64 * 1024;
    ws->from = from;
    ws->from_len = from ? strlen(from) : 0;
}

/* Send one client frame (masked). */
static void wsc_send(wsc_t *c, int opcode, int fin, const char *data,
                     size_t len)
{
    char mem[70000];
    comet_buf_t b;

    comet_buf_wrap(&b, mem, sizeof(mem));
    ck_assert_int_eq(comet_ws_frame_client(&b, opcode, fin, 0, wsc_mask,
                                           data, len), APR_SUCCESS);
    ck_assert(write(c->fd, b.data, b.len) == (ssize_t)b.len);
}

/* The next server frame within ms: 1 and its opcode and payload (valid
 * until the next call); 0 on timeout, -1 at EOF. */
static int wsc_next(wsc_t *c, int *op, const char **data, size_t *len,
                    int ms)
{
    long long end = (long long)(comet_now_mono() / 1000) + ms;

    for (;;) {
        size_t have = c->len - c->off, hl = 2, pl;
        const unsigned char *h = (const unsigned char *)c->buf + c->off;

        if (have >= 2) {
            ck_assert_msg(!(h[1] & 0x80), "a server frame is never masked");
            pl = h[1] & 0x7f;
            if (pl == 126) {
                hl = 4;
                pl = have >= 4 ? ((size_t)h[2] << 8 | h[3]) : 0;
            }
            else if (pl == 127) {
                hl = 10;
                pl = 0;
                for (int i = 2; have >= 10 && i < 10; i++) {
                    pl = pl << 8 | h[i];
                }
            }
            if (have >= hl && have >= hl + pl) {
                ck_assert_msg(h[0] & 0x80, "server frames are whole");
                *op = h[0] & 0x0f;
                *data = (const char *)h + hl;
                *len = pl;
                c->off += hl + pl;
                return 1;
            }
        }
        {
            struct pollfd p = { c->fd, POLLIN, 0 };
            long long left = end - comet_now_mono() / 1000;
            ssize_t n;

            if (left <= 0 || poll(&p, 1, (int)left) <= 0) {
                return 0;
            }
            if (c->off && c->off == c->len) {
                c->off = c->len = 0;
            }
            n = read(c->fd, c->buf + c->len, sizeof(c->buf) - c->len);
            if (n <= 0) {
                return -1;
            }
            c->len += (size_t)n;
        }
    }
}

/* The next text frame, skipping keepalives ("{}" and pings) and pongs;
 * its text in out (NUL-terminated). */
static int wsc_text(wsc_t *c, char *out, size_t max, int ms)
{
    int op;
    const char *d;
    size_t n;

    while (wsc_next(c, &op, &d, &n, ms) == 1) {
        if (op == COMET_WS_OP_PING || op == COMET_WS_OP_PONG
            || (op == COMET_WS_OP_TEXT && n == 2 && !memcmp(d, "{}", 2))) {
            continue;
        }
        ck_assert_int_eq(op, COMET_WS_OP_TEXT);
        ck_assert_uint_lt(n, max);
        memcpy(out, d, n);
        out[n] = '\0';
        return 1;
    }
    return 0;
}

/* The server's close frame (skipping anything else): its code. */
static int wsc_close_code(wsc_t *c, char *reason, size_t max, int ms)
{
    int op;
    const char *d;
    size_t n;

    while (wsc_next(c, &op, &d, &n, ms) == 1) {
        if (op != COMET_WS_OP_CLOSE) {
            continue;
        }
        ck_assert_uint_ge(n, 2);
        if (reason) {
            size_t r = n - 2 < max - 1 ? n - 2 : max - 1;

            memcpy(reason, d + 2, r);
            reason[r] = '\0';
        }
        return ((unsigned char)d[0] << 8) | (unsigned char)d[1];
    }
    return -1;
}

static int wsc_eof(wsc_t *c, int ms)
{
    int op;
    const char *d;
    size_t n;
    int r;

    while ((r = wsc_next(c, &op, &d, &n, ms)) == 1) {
    }
    return r == -1;
}

static void wsc_free(wsc_t *c)
{
    close(c->fd);
    free(c);
}

static int stored_count(const char *chan)
{
    comet_channel_stats_t cs;

    if (comet_store_channel_stats(fx.st, chan, strlen(chan), &cs)
        != APR_SUCCESS) {
        return 0;
    }
    return (int)cs.messages;
}

START_TEST(websocket_gets_each_message_as_a_text_frame_and_answers_pings)
{
    const char *ids[] = { "wsroom" };
    comet_hub_ws_spec_t ws;
    wsc_t *c;
    char text[4096], want[256];
    int op;
    const char *d;
    size_t n;
    apr_uint64_t seq;

    ws_spec(&ws, 0, NULL);
    c = ws_adopt(ids, 1, &ws, 0);
    ck_assert(wait_hub_count(1));
    seq = publish("wsroom", "hello", "typing");
    ck_assert(wsc_text(c, text, sizeof(text), 2000));
    snprintf(want, sizeof(want), "{\"channel\":\"wsroom\",\"id\":\"%08x:%"
             APR_UINT64_T_FMT "\",\"event\":\"typing\",\"time\":",
             comet_store_epoch(fx.st), seq);
    ck_assert_msg(!strncmp(text, want, strlen(want)), "got %s", text);
    ck_assert_msg(strstr(text, ",\"data\":\"hello\"}"), "got %s", text);
    /* A ping, even between the fragments of a message, gets its pong. */
    wsc_send(c, COMET_WS_OP_PING, 1, "p1", 2);
    ck_assert_int_eq(wsc_next(c, &op, &d, &n, 2000), 1);
    ck_assert_int_eq(op, COMET_WS_OP_PONG);
    ck_assert_uint_eq(n, 2);
    ck_assert(!memcmp(d, "p1", 2));
    ck_assert_uint_eq(store_subscribers("wsroom"), 1);
    wsc_free(c);
    ck_assert(wait_hub_count(0));
    ck_assert(wait_count("wsroom", 0));
}
END_TEST

START_TEST(websocket_client_publishes_with_its_identity_when_allowed)
{
    const char *ids[] = { "chat" };
    comet_hub_ws_spec_t ws;
    wsc_t *c;
    char text[4096];
    comet_read_t rd;
    comet_hub_stats_t hs;

    ws_spec(&ws, 1, "alice");
    c = ws_adopt(ids, 1, &ws, 0);
    ck_assert(wait_hub_count(1));
    /* Fragmented, with a ping in between. */
    wsc_send(c, COMET_WS_OP_TEXT, 0, "hel", 3);
    wsc_send(c, COMET_WS_OP_PING, 1, "", 0);
    wsc_send(c, COMET_WS_OP_CONT, 1, "lo", 2);
    /* The sender is a subscriber too: it gets its own message back. */
    ck_assert(wsc_text(c, text, sizeof(text), 2000));
    ck_assert_msg(strstr(text, "\"from\":\"alice\"")
                  && strstr(text, "\"data\":\"hello\""), "got %s", text);
    ck_assert_int_eq(comet_store_read_by_id(fx.st, "chat", 4,
                                            (comet_msgid_t){ 0, 0 }, 0, 0,
                                            comet_now_mono(),
                                            comet_test_pool, &rd),
                     APR_SUCCESS);
    ck_assert_int_eq(rd.msgs->nelts, 1);
    ck_assert_str_eq(APR_ARRAY_IDX(rd.msgs, 0, comet_msg_t).from, "alice");
    comet_hub_stats(fx.hub, &hs);
    ck_assert_uint_eq(hs.ws_published, 1);
    /* A binary message is refused with 1003. */
    wsc_send(c, COMET_WS_OP_BINARY, 1, "\x01", 1);
    ck_assert_int_eq(wsc_close_code(c, NULL, 0, 2000), 1003);
    wsc_free(c);
}
END_TEST

START_TEST(websocket_publishing_off_closes_1008_and_stores_nothing)
{
    const char *ids[] = { "quiet" };
    comet_hub_ws_spec_t ws;
    wsc_t *c;
    char reason[128];

    ws_spec(&ws, 0, NULL);
    c = ws_adopt(ids, 1, &ws, 0);
    ck_assert(wait_hub_count(1));
    wsc_send(c, COMET_WS_OP_TEXT, 1, "spam", 4);
    ck_assert_int_eq(wsc_close_code(c, reason, sizeof(reason), 2000), 1008);
    ck_assert_str_eq(reason, "publishing is not allowed here");
    /* We closed first: our side is shut, and the TCP connection ends as
     * soon as the client answers with its close. */
    wsc_send(c, COMET_WS_OP_CLOSE, 1, "\x03\xf0", 2);
    ck_assert(wsc_eof(c, 2000));
    ck_assert_int_eq(stored_count("quiet"), 0);
    ck_assert(wait_hub_count(0));
    wsc_free(c);
}
END_TEST

START_TEST(websocket_with_several_channels_publishes_an_envelope)
{
    const char *ids[] = { "a1", "b1" };
    comet_hub_ws_spec_t ws;
    wsc_t *c;
    char text[4096];
    static const char env[] =
        "{\"channel\":\"b1\",\"event\":\"move\",\"data\":{\"x\":1}}";

    ws_spec(&ws, 1, "bob");
    c = ws_adopt(ids, 2, &ws, 0);
    ck_assert(wait_hub_count(1));
    wsc_send(c, COMET_WS_OP_TEXT, 1, env, sizeof(env) - 1);
    ck_assert(wsc_text(c, text, sizeof(text), 2000));
    ck_assert_msg(strstr(text, "\"channel\":\"b1\"")
                  && strstr(text, "\"event\":\"move\"")
                  && strstr(text, "\"from\":\"bob\"")
                  && strstr(text, "\"data\":\"{\\\"x\\\":1}\""),
                  "got %s", text);
    /* Not JSON, or a channel it does not listen to: an error frame, and
     * the connection stays. */
    wsc_send(c, COMET_WS_OP_TEXT, 1, "hi", 2);
    ck_assert(wsc_text(c, text, sizeof(text), 2000));
    ck_assert_str_eq(text, "{\"error\":\"not a message envelope: not a "
                     "JSON object\"}");
    wsc_send(c, COMET_WS_OP_TEXT, 1, "{\"channel\":\"c1\",\"data\":\"x\"}",
             27);
    ck_assert(wsc_text(c, text, sizeof(text), 2000));
    ck_assert_str_eq(text, "{\"error\":\"not a channel of this "
                     "subscription\"}");
    ck_assert_int_eq(stored_count("a1") + stored_count("b1"), 1);
    wsc_free(c);
}
END_TEST

START_TEST(websocket_close_codes_for_the_client_and_for_broken_frames)
{
    const char *ids[] = { "codes" };
    comet_hub_ws_spec_t ws;
    wsc_t *c;
    char reason[128];
    comet_hub_stats_t hs;

    ws_spec(&ws, 1, NULL);
    /* The client closes: its code comes back, then the connection ends. */
    c = ws_adopt(ids, 1, &ws, 0);
    wsc_send(c, COMET_WS_OP_CLOSE, 1, "\x0f\xa0" "bye", 5);
    ck_assert_int_eq(wsc_close_code(c, NULL, 0, 2000), 4000);
    ck_assert(wsc_eof(c, 2000));
    wsc_free(c);
    /* No code: 1000. */
    c = ws_adopt(ids, 1, &ws, 0);
    wsc_send(c, COMET_WS_OP_CLOSE, 1, "", 0);
    ck_assert_int_eq(wsc_close_code(c, NULL, 0, 2000), 1000);
    wsc_free(c);
    /* Unmasked: 1002. */
    c = ws_adopt(ids, 1, &ws, 0);
    ck_assert(write(c->fd, "\x81\x02hi", 4) == 4);
    ck_assert_int_eq(wsc_close_code(c, reason, sizeof(reason), 2000), 1002);
    ck_assert(wsc_eof(c, 8000));
    wsc_free(c);
    /* Invalid UTF-8: 1007. */
    c = ws_adopt(ids, 1, &ws, 0);
    wsc_send(c, COMET_WS_OP_TEXT, 1, "\xc0\x80", 2);
    ck_assert_int_eq(wsc_close_code(c, NULL, 0, 2000), 1007);
    wsc_free(c);
    /* Too big: 1009, before the payload is read. */
    ws.max_message = 10;
    c = ws_adopt(ids, 1, &ws, 0);
    wsc_send(c, COMET_WS_OP_TEXT, 1, "01234567890", 11);
    ck_assert_int_eq(wsc_close_code(c, NULL, 0, 2000), 1009);
    wsc_free(c);
    ck_assert(wait_hub_count(0));
    comet_hub_stats(fx.hub, &hs);
    ck_assert_uint_eq(hs.ws_errors, 3);
    ck_assert_int_eq(stored_count("codes"), 0);
}
END_TEST

START_TEST(websocket_publishing_is_rate_limited)
{
    const char *ids[] = { "rate" };
    comet_hub_ws_spec_t ws;
    wsc_t *c;

    ws_spec(&ws, 1, NULL);
    ws.rate = 1;
    ws.burst = 3;
    c = ws_adopt(ids, 1, &ws, 0);
    for (int i = 0; i < 4; i++) {
        wsc_send(c, COMET_WS_OP_TEXT, 1, "x", 1);
    }
    ck_assert_int_eq(wsc_close_code(c, NULL, 0, 2000), 1008);
    ck_assert_int_eq(stored_count("rate"), 3);
    wsc_free(c);
}
END_TEST

START_TEST(websocket_pings_and_drops_a_client_that_never_answers)
{
    const char *ids[] = { "ping" };
    comet_hub_ws_spec_t ws;
    wsc_t *alive, *dead;
    int op;
    const char *d;
    size_t n;
    comet_hub_stats_t hs;

    ws_spec(&ws, 0, NULL);
    alive = ws_adopt(ids, 1, &ws, apr_time_from_msec(200));
    dead = ws_adopt(ids, 1, &ws, apr_time_from_msec(200));
    ck_assert(wait_hub_count(2));
    /* The live one answers each ping. */
    for (int pings = 0; pings < 4;) {
        ck_assert_int_eq(wsc_next(alive, &op, &d, &n, 2000), 1);
        if (op == COMET_WS_OP_PING) {
            wsc_send(alive, COMET_WS_OP_PONG, 1, d, n);
            pings++;
        }
        else {
            ck_assert_int_eq(op, COMET_WS_OP_TEXT);
            ck_assert(n == 2 && !memcmp(d, "{}", 2));
        }
    }
    /* The silent one lost its connection, without a close frame. */
    ck_assert(wsc_eof(dead, 2000));
    ck_assert(wait_hub_count(1));
    comet_hub_stats(fx.hub, &hs);
    ck_assert_uint_eq(hs.ws_timeouts, 1);
    wsc_free(alive);
    wsc_free(dead);
}
END_TEST

START_TEST(websocket_ends_1001_at_stop_and_1000_on_a_deleted_channel)
{
    const char *ids[] = { "gone" };
    comet_hub_ws_spec_t ws;
    wsc_t *c1, *c2;
    char text[4096];
    apr_uint32_t receivers;

    ws_spec(&ws, 0, NULL);
    c1 = ws_adopt(ids, 1, &ws, 0);
    ck_assert(wait_hub_count(1));
    ck_assert_int_eq(comet_store_delete(fx.st, "gone", 4, wake, NULL,
                                        &receivers), APR_SUCCESS);
    ck_assert(wsc_text(c1, text, sizeof(text), 2000));
    ck_assert_str_eq(text, "{\"deleted\":true,\"channel\":\"gone\"}");
    ck_assert_int_eq(wsc_close_code(c1, NULL, 0, 2000), 1000);
    wsc_free(c1);
    ck_assert(wait_hub_count(0));

    ids[0] = "stay";
    c2 = ws_adopt(ids, 1, &ws, 0);
    ck_assert(wait_hub_count(1));
    hub_join();
    ck_assert_int_eq(wsc_close_code(c2, NULL, 0, 2000), 1001);
    ck_assert(wsc_eof(c2, 2000));
    wsc_free(c2);
}
END_TEST

START_TEST(websocket_bytes_read_with_the_handshake_come_first)
{
    const char *ids[] = { "early" };
    comet_hub_ws_spec_t ws;
    wsc_t *c;
    char mem[256], text[4096];
    comet_buf_t b;

    comet_buf_wrap(&b, mem, sizeof(mem));
    comet_ws_frame_client(&b, COMET_WS_OP_TEXT, 1, 0, wsc_mask, "first", 5);
    /* Half of the next frame: the rest comes over the socket. */
    comet_ws_frame_client(&b, COMET_WS_OP_TEXT, 1, 0, wsc_mask, "second", 6);
    ws_spec(&ws, 1, "early-bird");
    ws.preread = mem;
    ws.preread_len = b.len - 4;
    c = ws_adopt(ids, 1, &ws, 0);
    ck_assert(write(c->fd, mem + b.len - 4, 4) == 4);
    ck_assert(wsc_text(c, text, sizeof(text), 2000));
    ck_assert_msg(strstr(text, "\"data\":\"first\""), "got %s", text);
    ck_assert(wsc_text(c, text, sizeof(text), 2000));
    ck_assert_msg(strstr(text, "\"data\":\"second\""), "got %s", text);
    wsc_free(c);
}
END_TEST

/* A WebSocket over a TLS session the hub carries on: the client's frames
 * are read through the session (a text message split over two records),
 * published with the sender's identity and echoed; at stop, the close
 * frame 1001, then close_notify. */
START_TEST(websocket_over_tls_reads_frames_publishes_and_closes_1001)
{
    static const unsigned char mask[4] = { 7, 1, 8, 3 };
    comet_hub_ws_spec_t ws;
    comet_hub_stats_t hs;
    tls_util_pair_t tp;
    char mem[256], buf[8192];
    comet_buf_t b;
    size_t len = 0;

    ws_spec(&ws, 1, "carol");
    adopt_tls_as(&tp, "wss", _i ? 3 : 2, &ws);
    ck_assert(wait_hub_count(1));
    comet_hub_stats(fx.hub, &hs);
    ck_assert_uint_eq(hs.tls, 1);
    ck_assert_uint_eq(hs.by_transport[3], 1);
    comet_buf_wrap(&b, mem, sizeof(mem));
    comet_ws_frame_client(&b, COMET_WS_OP_TEXT, 1, 0, mask, "over tls", 8);
    ck_assert_int_eq(SSL_write(tp.client, b.data, 5), 5);
    ck_assert_int_eq(SSL_write(tp.client, b.data + 5, (int)b.len - 5),
                     (int)b.len - 5);
    ck_assert_msg(tls_read_until(&tp, buf, sizeof(buf), &len,
                                 "\"from\":\"carol\""), "got %s", buf);
    ck_assert_msg(strstr(buf, "\"data\":\"over tls\""), "got %s", buf);
    ck_assert_int_eq(stored_count("wss"), 1);
    hub_join();
    ck_assert_msg(tls_read_until(&tp, buf, sizeof(buf), &len,
                                 "\x03\xe9server going away"),
                  "got %s", buf);
    len = 0;
    ck_assert_int_eq(tls_util_client_read(&tp, buf, 1, &len, 2000),
                     SSL_ERROR_ZERO_RETURN);
    ck_assert_uint_eq(store_subscribers("wss"), 0);
    tls_done(&tp);
}
END_TEST

START_TEST(a_lingering_long_poll_answers_what_came_meanwhile_at_once)
{
    const char *ids[] = { "lg" };
    comet_chanref_t ref;
    comet_msgid_t newest;
    apr_uint64_t seq;
    comet_hub_spec_t spec;
    char buf[4096];
    size_t len = 0;
    struct pollfd p;
    int sv[2];

    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    ck_assert_int_eq(comet_store_subscribe(fx.st, fx.slot, "lg", 2,
                                           comet_now_mono(), &ref, &newest),
                     APR_SUCCESS);
    seq = newest.seq;
    memset(&spec, 0, sizeof(spec));
    spec.fd = sv[0];
    spec.transport = COMET_T_LONGPOLL;
    spec.chunked = 1;
    spec.nchan = 1;
    spec.refs = &ref;
    spec.ids = ids;
    spec.seqs = &seq;
    spec.interval = apr_time_from_sec(30);
    spec.linger_ms = 1000;
    ck_assert_int_eq(comet_hub_adopt(fx.hub, &spec, NULL), APR_SUCCESS);
    ck_assert(wait_hub_count(1));
    publish("lg", "a", NULL);
    p.fd = sv[1];
    p.events = POLLIN;
    ck_assert_int_eq(poll(&p, 1, 200), 0);
    publish("lg", "b", NULL);
    ck_assert(read_eof(sv[1], buf, sizeof(buf), &len, 5000));
    ck_assert_msg(strstr(buf, "\"data\":\"a\"},") && strstr(buf,
                  "\"data\":\"b\"}]}"), "got %s", buf);
    ck_assert(wait_count("lg", 0));
    close(sv[1]);
}
END_TEST

/* ---- kept connections ------------------------------------------------------- */

static int hub_kept(apr_uint32_t want, apr_uint64_t handed)
{
    for (int i = 0; i < 400; i++) {
        comet_hub_stats_t st;

        comet_hub_stats(fx.hub, &st);
        if (st.kept == want && st.handed_back == handed) {
            return 1;
        }
        usleep(5000);
    }
    return 0;
}

/* A long-poll to keep, with its head held back. */
static int adopt_keep(const char *chan)
{
    static const char head[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: "
                               "chunked\r\n\r\n";
    comet_chanref_t ref;
    comet_msgid_t newest;
    apr_uint64_t seq;
    comet_hub_spec_t spec;
    const char *ids[] = { chan };
    int sv[2];

    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    ck_assert_int_eq(comet_store_subscribe(fx.st, fx.slot, chan, strlen(chan),
                                           comet_now_mono(), &ref, &newest),
                     APR_SUCCESS);
    seq = newest.seq;
    memset(&spec, 0, sizeof(spec));
    spec.fd = sv[0];
    spec.transport = COMET_T_LONGPOLL;
    spec.chunked = 1;
    spec.nchan = 1;
    spec.refs = &ref;
    spec.ids = ids;
    spec.seqs = &seq;
    spec.interval = apr_time_from_sec(30);
    spec.head = head;
    spec.head_len = sizeof(head) - 1;
    spec.keep = 1;
    ck_assert_int_eq(comet_hub_adopt(fx.hub, &spec, NULL), APR_SUCCESS);
    return sv[1];
}

START_TEST(a_kept_long_poll_connection_hands_its_next_request_back)
{
    static const char req[] = "GET /x HTTP/1.1\r\nHost: y\r\n\r\n";
    char buf[4096], got[64];
    size_t len = 0;
    int fd;

    fx_keep_timeout = apr_time_from_sec(30);
    hub_restart_with(1024 * 1024, 0, 0, 0);
    fd = adopt_keep("kp");
    ck_assert(wait_hub_count(1));
    /* The head waits for the answer. */
    ck_assert_int_eq(recv(fd, buf, sizeof(buf), MSG_DONTWAIT), -1);
    publish("kp", "one", NULL);
    ck_assert(read_until(fd, buf, sizeof(buf), &len, "\r\n0\r\n\r\n",
                         2000));
    ck_assert_msg(!strncmp(buf, "HTTP/1.1 200 OK\r\n", 17), "%s", buf);
    ck_assert_ptr_nonnull(strstr(buf, "\"data\":\"one\""));
    /* Kept: the subscriber is gone, the connection stays. */
    ck_assert(hub_kept(1, 0));
    ck_assert(wait_count("kp", 0));
    ck_assert(wait_hub_count(0));
    /* A head that comes in parts is handed back once whole, unread. */
    ck_assert(write(fd, req, 10) == 10);
    ck_assert(write(fd, req + 10, sizeof(req) - 11) ==
              (ssize_t)sizeof(req) - 11);
    ck_assert(hub_kept(0, 1));
    ck_assert_int_ge(handed_fd, 0);
    ck_assert_int_eq(handed_served, 1);
    ck_assert_int_eq(recv(handed_fd, got, sizeof(got), MSG_DONTWAIT),
                     (ssize_t)sizeof(req) - 1);
    close(handed_fd);
    close(fd);
    fx_keep_timeout = 0;
}
END_TEST

START_TEST(kept_connections_close_when_idle_and_when_the_hub_stops)
{
    char buf[4096];
    size_t len = 0;
    int fd, fd2;

    fx_keep_timeout = apr_time_from_msec(200);
    hub_restart_with(1024 * 1024, 0, 0, 0);
    fd = adopt_keep("ki");
    ck_assert(wait_hub_count(1));
    publish("ki", "one", NULL);
    ck_assert(read_eof(fd, buf, sizeof(buf), &len, 5000));
    ck_assert_ptr_nonnull(strstr(buf, "\"data\":\"one\""));
    ck_assert(hub_kept(0, 0));
    close(fd);

    /* Kept, or given back by the caller; then the hub stops: closed. */
    fd = adopt_keep("ks");
    ck_assert(wait_hub_count(1));
    {
        int sv[2];

        ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
        ck_assert_int_eq(comet_hub_keep(fx.hub, sv[0], 3, 0), APR_SUCCESS);
        fd2 = sv[1];
    }
    hub_join();
    len = 0;
    ck_assert(read_eof(fd, buf, sizeof(buf), &len, 2000));
    ck_assert_ptr_nonnull(strstr(buf, "\"messages\":[]"));
    len = 0;
    ck_assert(read_eof(fd2, buf, sizeof(buf), &len, 2000));
    ck_assert_int_eq(len, 0);
    close(fd);
    close(fd2);
    fx_keep_timeout = 0;
}
END_TEST

Suite *test_comet_hub_suite(void)
{
    Suite *s = suite_create("comet_hub");
    TCase *tc = tcase_create("hub");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, sse_subscriber_gets_each_message_as_a_chunked_event);
    tcase_add_test(tc, one_wakeup_serves_every_subscriber_of_the_channel);
    tcase_add_test(tc, a_client_that_closes_is_freed_and_uncounted);
    tcase_add_test(tc, a_client_that_does_not_read_is_dropped_past_the_bound);
    tcase_add_test(tc,
                   the_adopters_tag_comes_back_once_when_the_subscriber_ends);
    tcase_add_test(tc, long_poll_answers_once_and_ends_the_response);
    tcase_add_test(tc,
                   a_lingering_long_poll_answers_what_came_meanwhile_at_once);
    tcase_add_test(tc,
                   a_kept_long_poll_connection_hands_its_next_request_back);
    tcase_add_test(tc,
                   kept_connections_close_when_idle_and_when_the_hub_stops);
    tcase_add_test(tc, long_poll_times_out_with_no_messages_and_the_same_id);
    tcase_add_test(tc, keepalives_flow_on_idle_streams);
    tcase_add_test(tc, messages_published_before_adoption_are_caught_up);
    tcase_add_test(tc, several_channels_get_compound_ids_and_channel_event_names);
    tcase_add_test(tc,
                   ids_that_start_anew_below_the_position_are_delivered_after_it);
    tcase_add_test(tc, a_deleted_channel_ends_its_streams_with_a_notice);
    tcase_add_test(tc, stopping_the_hub_ends_every_stream_cleanly);
    tcase_add_test(tc, the_subscriber_limit_refuses_adoption);
    tcase_add_test(tc, a_sink_subscriber_gets_plain_frames_and_can_be_cancelled);
    tcase_add_test(tc, tasks_run_on_the_hub_thread_in_order_and_stop_with_it);
    tcase_add_loop_test(tc,
        a_tls_subscriber_gets_messages_and_ends_with_close_notify, 0, 2);
    tcase_add_test(tc,
        a_tls_client_close_notify_is_answered_and_the_subscriber_freed);
    tcase_add_loop_test(tc,
        tls_bytes_that_wait_are_kept_in_order_and_a_stuck_client_dropped,
        0, 2);
    tcase_add_test(tc, a_read_larger_than_a_batch_goes_out_in_rounds);
    tcase_add_test(tc, one_far_behind_catches_up_in_order_once);
    tcase_add_test(tc, an_old_position_gets_the_missed_signal_once);
    tcase_add_test(tc, several_channels_far_behind_catch_up_in_order_once);
    tcase_add_test(tc, a_reader_keeping_up_survives_big_frames);
    tcase_add_test(tc, a_sink_gets_a_backlog_part_by_part);
    tcase_add_test(tc, a_long_poll_behind_catches_up_poll_by_poll);
    tcase_add_test(tc,
                   websocket_gets_each_message_as_a_text_frame_and_answers_pings);
    tcase_add_test(tc, websocket_client_publishes_with_its_identity_when_allowed);
    tcase_add_test(tc, websocket_publishing_off_closes_1008_and_stores_nothing);
    tcase_add_test(tc, websocket_with_several_channels_publishes_an_envelope);
    tcase_add_test(tc,
                   websocket_close_codes_for_the_client_and_for_broken_frames);
    tcase_add_test(tc, websocket_publishing_is_rate_limited);
    tcase_add_test(tc, websocket_pings_and_drops_a_client_that_never_answers);
    tcase_add_test(tc,
                   websocket_ends_1001_at_stop_and_1000_on_a_deleted_channel);
    tcase_add_test(tc, websocket_bytes_read_with_the_handshake_come_first);
    tcase_add_loop_test(tc,
        websocket_over_tls_reads_frames_publishes_and_closes_1001, 0, 2);
    suite_add_tcase(s, tc);
    return s;
}
