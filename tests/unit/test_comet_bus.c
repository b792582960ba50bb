/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* The bus against a real redis-server: two stores stand for two servers,
 * each with its bus on a loop of its own (driven in turns by the test
 * thread), sharing one Redis. */

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <apr_strings.h>

#include "unit_common.h"
#include "comet_bus.h"
#include "redis_util.h"
#include "store_util.h"

#define NSRV 2

typedef struct server_t {
    comet_store_t *store;
    apr_uint32_t   slot;
    comet_loop_t  *loop;
    comet_bus_t   *bus;
    int            kicks;
} server_t;

static redis_util_server_t rs;
static server_t srv[NSRV];
static char redis_url[128];

static void bus_log(void *baton, int level, const char *file, int line,
                    apr_status_t rv, const char *fmt, va_list ap)
{
    if (getenv("COMET_TEST_VERBOSE")) {
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
    }
}

static void kick(void *baton, apr_uint32_t slot)
{
    ((server_t *)baton)->kicks++;
}

static void server_make(server_t *s, int n, apr_interval_time_t ttl)
{
    comet_store_config_t cfg;
    comet_bus_config_t bc;
    comet_redis_url_t *url;
    char err[256];

    comet_store_config_default(&cfg, 4 * 1024 * 1024);
    cfg.epoch = COMET_BUS_EPOCH;
    cfg.max_procs = 4;
    s->store = store_util_make_cfg(&cfg);
    ck_assert_int_eq(comet_store_proc_attach(s->store, getpid(), &s->slot),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_loop_create(&s->loop, 4096, comet_test_pool),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_redis_url_parse(&url, redis_url, comet_test_pool,
                                           err, sizeof(err)), APR_SUCCESS);
    comet_bus_config_default(&bc);
    bc.url = url;
    bc.redis.backoff_min = apr_time_from_msec(20);
    bc.redis.backoff_max = apr_time_from_msec(200);
    bc.redis.command_timeout = apr_time_from_sec(1);
    bc.store = s->store;
    bc.slot = s->slot;
    bc.wake = kick;
    bc.wake_baton = s;
    bc.member = apr_psprintf(comet_test_pool, "test-%d", n);
    bc.count_refresh = apr_time_from_msec(200);
    bc.count_ttl = ttl ? ttl : apr_time_from_sec(15);
    bc.linger = apr_time_from_msec(300);
    ck_assert_int_eq(comet_bus_create(&s->bus, s->loop, &bc,
                                      comet_test_pool), APR_SUCCESS);
    ck_assert_int_eq(comet_bus_start(s->bus), APR_SUCCESS);
}

/* Drive every server's loop in turns until cond holds or ms pass. */
static int run_all(int (*cond)(void *), void *baton, int ms)
{
    long long until = redis_util_ms() + ms;

    while (redis_util_ms() < until) {
        if (cond(baton)) {
            return 1;
        }
        for (int i = 0; i < NSRV; i++) {
            if (srv[i].loop) {
                run_for(srv[i].loop, 3);
            }
        }
    }
    return cond(baton);
}

static int bus_up(void *baton)
{
    comet_bus_stats_t st;

    for (int i = 0; i < NSRV; i++) {
        if (!srv[i].bus) {
            continue;
        }
        comet_bus_stats(srv[i].bus, &st);
        if (!st.up) {
            return 0;
        }
    }
    return 1;
}

static int bus_down(void *baton)
{
    comet_bus_stats_t st;

    comet_bus_stats(srv[0].bus, &st);
    return !st.up;
}

static void setup(void)
{
    comet_test_pool_setup();
    comet_log_set(bus_log, NULL, COMET_LOG_DEBUG);
    memset(&rs, 0, sizeof(rs));
    memset(srv, 0, sizeof(srv));
    ck_assert_int_eq(redis_util_start(&rs), 0);
    snprintf(redis_url, sizeof(redis_url), "redis://127.0.0.1:%d", rs.port);
}

static void teardown(void)
{
    for (int i = 0; i < NSRV; i++) {
        if (srv[i].bus) {
            comet_bus_close(srv[i].bus);
        }
    }
    redis_util_stop(&rs);
    comet_log_set(NULL, NULL, 0);
    comet_test_pool_teardown();
}

static const char *cli(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static const char *cli(const char *fmt, ...)
{
    static char out[4096];
    char cmd[1024];
    va_list ap;
    apr_size_t n;

    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    redis_util_sh(out, sizeof(out), "redis-cli -p %d %s", rs.port, cmd);
    n = strlen(out);
    while (n && (out[n - 1] == '\n' || out[n - 1] == '\r')) {
        out[--n] = '\0';
    }
    return out;
}

/* ---- requests ------------------------------------------------------------ */

typedef struct done_t {
    int               n;
    comet_bus_result_t res[64];
    char              err[64][256];
} done_t;

static void on_done(comet_bus_req_t *req, void *baton)
{
    done_t *d = baton;
    const comet_bus_result_t *r = comet_bus_req_result(req);

    if (d->n < 64) {
        d->res[d->n] = *r;
        apr_cpystrn(d->err[d->n], r->error ? r->error : "",
                    sizeof(d->err[0]));
        d->res[d->n].error = d->err[d->n];
    }
    d->n++;
    comet_bus_req_free(req);
}

typedef struct want_t {
    int *count;
    int  want;
} want_t;

static int reached(void *baton)
{
    want_t *w = baton;

    return *w->count >= w->want;
}

static void wait_done(done_t *d, int n)
{
    want_t w = { &d->n, n };

    ck_assert_msg(run_all(reached, &w, 10000), "%d of %d requests done",
                  d->n, n);
}

static void publish(server_t *s, const char *chan, const char *data,
                    const char *event, done_t *d)
{
    comet_publish_t m;

    memset(&m, 0, sizeof(m));
    m.channel = chan;
    m.channel_len = strlen(chan);
    m.data = data;
    m.data_len = strlen(data);
    m.event = event;
    m.event_len = event ? strlen(event) : 0;
    ck_assert_int_eq(comet_bus_submit(s->bus, comet_bus_req_publish(&m, NULL,
                                                                   0),
                                      on_done, d), APR_SUCCESS);
}

static comet_chanref_t subscribe(server_t *s, const char *chan,
                                 apr_uint64_t want, done_t *d)
{
    comet_chanref_t ref;
    comet_msgid_t newest;

    ck_assert_int_eq(comet_store_subscribe(s->store, s->slot, chan,
                                           strlen(chan), 0, &ref, &newest),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_bus_submit(s->bus,
                                      comet_bus_req_sync(chan, strlen(chan),
                                                         want),
                                      on_done, d), APR_SUCCESS);
    return ref;
}

/* The seqs a store holds after 'after', as "s1 s2 ...", and missed. */
typedef struct held_t {
    server_t    *s;
    const char  *chan;
    apr_uint64_t after;
    int          want;
    int          missed;
    apr_uint64_t seqs[256];
    int          n;
    char         data[256][32];
} held_t;

static int holds(void *baton)
{
    held_t *h = baton;
    comet_msgid_t a = { COMET_BUS_EPOCH, h->after };
    comet_read_t r;

    if (comet_store_read_by_id(h->s->store, h->chan, strlen(h->chan), a, 0, 0,
                               comet_now_mono(), comet_test_pool, &r)
        != APR_SUCCESS) {
        return 0;
    }
    h->n = r.msgs->nelts < 256 ? r.msgs->nelts : 256;
    h->missed = r.missed;
    for (int i = 0; i < h->n; i++) {
        comet_msg_t *m = &APR_ARRAY_IDX(r.msgs, i, comet_msg_t);

        h->seqs[i] = m->id.seq;
        apr_cpystrn(h->data[i], m->data, sizeof(h->data[i]));
        ck_assert_uint_eq(m->id.epoch, COMET_BUS_EPOCH);
    }
    return h->n >= h->want;
}

static void assert_in_order(const held_t *h)
{
    for (int i = 1; i < h->n; i++) {
        ck_assert_msg(h->seqs[i] == h->seqs[i - 1] + 1, "seq %"
                      APR_UINT64_T_FMT " after %" APR_UINT64_T_FMT,
                      h->seqs[i], h->seqs[i - 1]);
    }
}

/* ---- tests --------------------------------------------------------------- */

START_TEST(a_publish_on_one_server_reaches_the_copy_of_another_in_order)
{
    done_t sync, pub;
    held_t h;
    comet_bus_stats_t st;

    memset(&sync, 0, sizeof(sync));
    memset(&pub, 0, sizeof(pub));
    server_make(&srv[0], 0, 0);
    server_make(&srv[1], 1, 0);
    ck_assert(run_all(bus_up, NULL, 5000));
    subscribe(&srv[1], "room", 0, &sync);
    wait_done(&sync, 1);
    ck_assert_int_eq(sync.res[0].status, APR_SUCCESS);

    for (int i = 0; i < 5; i++) {
        publish(&srv[0], "room", apr_psprintf(comet_test_pool, "m%d", i),
                i == 2 ? "typing" : NULL, &pub);
    }
    wait_done(&pub, 5);
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(pub.res[i].status, APR_SUCCESS);
        ck_assert_uint_eq(pub.res[i].id.epoch, COMET_BUS_EPOCH);
        ck_assert_uint_eq(pub.res[i].id.seq, pub.res[0].id.seq + i);
        /* Counted once the count is written (at the latest a tick). */
        ck_assert_int_le(pub.res[i].count, 1);
    }
    ck_assert_uint_eq((apr_uint32_t)pub.res[0].id.seq, 1);
    memset(&h, 0, sizeof(h));
    h.s = &srv[1];
    h.chan = "room";
    h.want = 5;
    ck_assert(run_all(holds, &h, 5000));
    for (int i = 0; i < 5; i++) {
        ck_assert_uint_eq(h.seqs[i], pub.res[i].id.seq);
        ck_assert_str_eq(h.data[i], apr_psprintf(comet_test_pool, "m%d", i));
    }
    ck_assert_str_eq(cli("XLEN comet:{room}:msgs"), "5");

    /* A publish on the server that has the copy: stored once there. */
    publish(&srv[1], "room", "mine", NULL, &pub);
    wait_done(&pub, 6);
    h.want = 6;
    ck_assert(run_all(holds, &h, 5000));
    ck_assert_str_eq(h.data[5], "mine");
    assert_in_order(&h);
    run_all(reached, &(want_t){ &pub.n, 1000 }, 300);
    ck_assert(!holds(&h) || h.n == 6);
    comet_bus_stats(srv[1].bus, &st);
    ck_assert_uint_eq(st.received, 6);
    ck_assert_uint_ge(st.duplicates, 1);
    ck_assert_uint_eq(st.channels, 1);
    /* The store on the publishing server copies nothing: nobody there
     * subscribed. */
    ck_assert_int_eq(comet_store_read_by_id(srv[0].store, "room", 4,
                                            (comet_msgid_t){ 0, 0 }, 0, 0, 0,
                                            comet_test_pool,
                                            &(comet_read_t){ 0 }),
                     COMET_ENOCHAN);
}
END_TEST

START_TEST(a_copy_whose_subscription_was_lost_catches_up_in_order)
{
    done_t sync, pub;
    held_t h;
    comet_bus_stats_t st;

    memset(&sync, 0, sizeof(sync));
    memset(&pub, 0, sizeof(pub));
    server_make(&srv[0], 0, 0);
    server_make(&srv[1], 1, 0);
    ck_assert(run_all(bus_up, NULL, 5000));
    subscribe(&srv[1], "away", 0, &sync);
    wait_done(&sync, 1);
    publish(&srv[0], "away", "first", NULL, &pub);
    wait_done(&pub, 1);
    memset(&h, 0, sizeof(h));
    h.s = &srv[1];
    h.chan = "away";
    h.want = 1;
    ck_assert(run_all(holds, &h, 5000));
    h.after = h.seqs[0];

    /* B's subscription goes; A publishes while B is away. */
    ck_assert_str_eq(cli("CLIENT KILL TYPE pubsub"), "1");
    for (int i = 0; i < 20; i++) {
        publish(&srv[0], "away", apr_psprintf(comet_test_pool, "a%d", i),
                NULL, &pub);
    }
    wait_done(&pub, 21);
    h.want = 20;
    ck_assert(run_all(holds, &h, 10000));
    ck_assert_int_eq(h.n, 20);
    ck_assert(!h.missed);
    assert_in_order(&h);
    ck_assert_str_eq(h.data[0], "a0");
    ck_assert_str_eq(h.data[19], "a19");
    comet_bus_stats(srv[1].bus, &st);
    ck_assert_uint_ge(st.fetches, 2);
}
END_TEST

START_TEST(a_subscriber_from_another_server_resumes_exactly_where_it_was)
{
    done_t sync, pub;
    held_t h;

    memset(&sync, 0, sizeof(sync));
    memset(&pub, 0, sizeof(pub));
    server_make(&srv[0], 0, 0);
    server_make(&srv[1], 1, 0);
    ck_assert(run_all(bus_up, NULL, 5000));
    for (int i = 0; i < 10; i++) {
        publish(&srv[0], "resume", apr_psprintf(comet_test_pool, "r%d", i),
                NULL, &pub);
    }
    wait_done(&pub, 10);
    /* Nobody on B ever read it: its copy comes with the subscriber. */
    subscribe(&srv[1], "resume", pub.res[3].id.seq, &sync);
    wait_done(&sync, 1);
    ck_assert_int_eq(sync.res[0].status, APR_SUCCESS);
    memset(&h, 0, sizeof(h));
    h.s = &srv[1];
    h.chan = "resume";
    h.after = pub.res[3].id.seq;
    ck_assert(holds(&h) || h.n == 6);
    ck_assert_int_eq(h.n, 6);
    ck_assert(!h.missed);
    ck_assert_str_eq(h.data[0], "r4");
    assert_in_order(&h);
    /* The whole stream is there: an older position is placed too. */
    h.after = pub.res[0].id.seq;
    holds(&h);
    ck_assert_int_eq(h.n, 9);
    ck_assert(!h.missed);
    /* A position Redis never handed out is told so. */
    h.after = pub.res[9].id.seq + 5;
    holds(&h);
    ck_assert(h.missed);
}
END_TEST

START_TEST(redis_restarted_without_its_data_starts_a_new_generation)
{
    done_t sync, pub;
    held_t h;
    apr_uint64_t old;
    comet_bus_stats_t st;
    int port;

    memset(&sync, 0, sizeof(sync));
    memset(&pub, 0, sizeof(pub));
    server_make(&srv[0], 0, 0);
    server_make(&srv[1], 1, 0);
    ck_assert(run_all(bus_up, NULL, 5000));
    subscribe(&srv[1], "gen", 0, &sync);
    wait_done(&sync, 1);
    for (int i = 0; i < 3; i++) {
        publish(&srv[0], "gen", apr_psprintf(comet_test_pool, "g%d", i), NULL,
                &pub);
    }
    wait_done(&pub, 3);
    old = pub.res[2].id.seq;
    memset(&h, 0, sizeof(h));
    h.s = &srv[1];
    h.chan = "gen";
    h.want = 3;
    ck_assert(run_all(holds, &h, 5000));

    port = rs.port;
    redis_util_kill(&rs, SIGKILL);
    rs.port = port;
    publish(&srv[0], "gen", "lost", NULL, &pub);
    wait_done(&pub, 4);
    ck_assert_int_eq(pub.res[3].status, COMET_BUS_ENOTSENT);
    ck_assert_msg(strstr(pub.err[3], "not stored"), "%s", pub.err[3]);
    ck_assert_int_eq(redis_util_start(&rs), 0);
    ck_assert(run_all(bus_up, NULL, 5000));
    publish(&srv[0], "gen", "new", NULL, &pub);
    wait_done(&pub, 5);
    ck_assert_int_eq(pub.res[4].status, APR_SUCCESS);
    ck_assert_uint_ne(COMET_BUS_GEN(pub.res[4].id.seq), COMET_BUS_GEN(old));

    /* A reader at the old position learns that it missed something. */
    h.after = old;
    h.want = 1;
    ck_assert(run_all(holds, &h, 10000));
    ck_assert_str_eq(h.data[0], "new");
    ck_assert(h.missed);
    comet_bus_stats(srv[1].bus, &st);
    ck_assert_uint_ge(st.gaps, 1);
}
END_TEST

START_TEST(redis_that_went_back_continues_in_the_next_generation)
{
    done_t sync, pub;
    held_t h;
    apr_uint64_t last;
    apr_uint32_t g;
    comet_bus_stats_t st;

    memset(&sync, 0, sizeof(sync));
    memset(&pub, 0, sizeof(pub));
    server_make(&srv[0], 0, 0);
    server_make(&srv[1], 1, 0);
    ck_assert(run_all(bus_up, NULL, 5000));
    subscribe(&srv[1], "back", 0, &sync);
    wait_done(&sync, 1);
    for (int i = 0; i < 5; i++) {
        publish(&srv[0], "back", apr_psprintf(comet_test_pool, "b%d", i), NULL,
                &pub);
    }
    wait_done(&pub, 5);
    last = pub.res[4].id.seq;
    g = COMET_BUS_GEN(last);
    memset(&h, 0, sizeof(h));
    h.s = &srv[1];
    h.chan = "back";
    h.want = 5;
    ck_assert(run_all(holds, &h, 5000));

    /* What a failover that lost the last two writes leaves. */
    cli("HSET comet:{back}:seq n 3");
    cli("XDEL comet:{back}:msgs %u-4 %u-5", g, g);
    /* A subscriber that saw seq 5 comes to A. */
    subscribe(&srv[0], "back", last, &sync);
    wait_done(&sync, 2);
    ck_assert_int_eq(sync.res[1].status, APR_SUCCESS);
    ck_assert_uint_eq(strtoul(cli("HGET comet:{back}:seq g"), NULL, 10),
                      g + 1);
    comet_bus_stats(srv[0].bus, &st);
    ck_assert_uint_ge(st.rollbacks, 1);

    publish(&srv[0], "back", "after", NULL, &pub);
    wait_done(&pub, 6);
    ck_assert_uint_eq(pub.res[5].id.seq, COMET_BUS_SEQ(g + 1, 1));
    /* Both servers' readers at seq 5 are told they missed messages. */
    for (int i = 0; i < NSRV; i++) {
        memset(&h, 0, sizeof(h));
        h.s = &srv[i];
        h.chan = "back";
        h.after = last;
        h.want = 1;
        ck_assert_msg(run_all(holds, &h, 5000), "server %d", i);
        ck_assert_str_eq(h.data[h.n - 1], "after");
        ck_assert(h.missed);
    }
}
END_TEST

START_TEST(counts_of_every_server_add_up_and_a_dead_ones_expire)
{
    done_t sync, pub, num;
    comet_chanref_t refs[5];
    int k = 0;

    memset(&sync, 0, sizeof(sync));
    memset(&pub, 0, sizeof(pub));
    memset(&num, 0, sizeof(num));
    server_make(&srv[0], 0, apr_time_from_sec(2));
    server_make(&srv[1], 1, apr_time_from_sec(2));
    ck_assert(run_all(bus_up, NULL, 5000));
    for (int i = 0; i < 2; i++) {
        refs[k++] = subscribe(&srv[0], "count", 0, &sync);
    }
    for (int i = 0; i < 3; i++) {
        refs[k++] = subscribe(&srv[1], "count", 0, &sync);
    }
    wait_done(&sync, 5);
    /* A server that died a while ago left its count behind. */
    cli("HSET comet:{count}:subs dead 7:1000");
    for (int tries = 0; tries < 50; tries++) {
        run_all(reached, &(want_t){ &num.n, 1000 }, 100);
        ck_assert_int_eq(comet_bus_submit(srv[0].bus,
                                          comet_bus_req_numsub("count", 5),
                                          on_done, &num), APR_SUCCESS);
        wait_done(&num, num.n + 1);
        if (num.res[num.n - 1].count == 5) {
            break;
        }
    }
    ck_assert_int_eq(num.res[num.n - 1].count, 5);
    publish(&srv[1], "count", "hello", NULL, &pub);
    wait_done(&pub, 1);
    ck_assert_int_eq(pub.res[0].count, 5);

    /* B's subscribers leave: its count goes (at once, then the
     * subscription after the linger). */
    for (int i = 2; i < 5; i++) {
        comet_store_unsubscribe(srv[1].store, srv[1].slot, &refs[i], 0);
    }
    for (int tries = 0; tries < 50; tries++) {
        run_all(reached, &(want_t){ &num.n, 1000 }, 100);
        ck_assert_int_eq(comet_bus_submit(srv[0].bus,
                                          comet_bus_req_numsub("count", 5),
                                          on_done, &num), APR_SUCCESS);
        wait_done(&num, num.n + 1);
        if (num.res[num.n - 1].count == 2) {
            break;
        }
    }
    ck_assert_int_eq(num.res[num.n - 1].count, 2);
    ck_assert_str_eq(cli("HEXISTS comet:{count}:subs dead"), "0");
}
END_TEST

START_TEST(a_lost_reply_is_an_unknown_outcome_and_flushed_scripts_are_resent)
{
    done_t pub;

    memset(&pub, 0, sizeof(pub));
    redis_util_stop(&rs);
    memset(&rs, 0, sizeof(rs));
    apr_cpystrn(rs.extra, "--enable-debug-command yes", sizeof(rs.extra));
    ck_assert_int_eq(redis_util_start(&rs), 0);
    snprintf(redis_url, sizeof(redis_url), "redis://127.0.0.1:%d", rs.port);
    server_make(&srv[0], 0, 0);
    ck_assert(run_all(bus_up, NULL, 5000));
    publish(&srv[0], "s", "one", NULL, &pub);
    wait_done(&pub, 1);
    ck_assert_int_eq(pub.res[0].status, APR_SUCCESS);

    ck_assert_str_eq(cli("SCRIPT FLUSH"), "OK");
    publish(&srv[0], "s", "two", NULL, &pub);
    wait_done(&pub, 2);
    ck_assert_int_eq(pub.res[1].status, APR_SUCCESS);
    ck_assert_uint_eq(pub.res[1].id.seq, pub.res[0].id.seq + 1);

    /* Redis busy past the command timeout (1 s): the publish was sent,
     * its fate is not known. */
    redis_util_sh(NULL, 0, "redis-cli -p %d DEBUG SLEEP 2 >/dev/null &",
                  rs.port);
    run_all(reached, &(want_t){ &pub.n, 1000 }, 200);
    publish(&srv[0], "s", "three", NULL, &pub);
    wait_done(&pub, 3);
    ck_assert_int_eq(pub.res[2].status, COMET_BUS_EUNKNOWN);
    ck_assert_msg(strstr(pub.err[2], "may or may not"), "%s", pub.err[2]);
}
END_TEST

/* comet_bus_call from a thread other than the bus's. */
typedef struct caller_t {
    comet_bus_t *bus;
    apr_status_t rv;
    apr_status_t status;
    apr_int64_t  took_ms;
} caller_t;

static void *caller_main(void *arg)
{
    caller_t *c = arg;
    comet_publish_t m;
    comet_bus_req_t *req;
    long long t0 = redis_util_ms();

    memset(&m, 0, sizeof(m));
    m.channel = "call";
    m.channel_len = 4;
    m.data = "x";
    m.data_len = 1;
    req = comet_bus_req_publish(&m, "alice", 5);
    c->rv = comet_bus_call(c->bus, &req, 1, apr_time_from_sec(3));
    c->took_ms = redis_util_ms() - t0;
    if (req) {
        c->status = comet_bus_req_result(req)->status;
        comet_bus_req_free(req);
    }
    return NULL;
}

static int thread_done(void *baton)
{
    return __atomic_load_n((int *)baton, __ATOMIC_ACQUIRE);
}

static void *caller_wrap(void *arg)
{
    void **a = arg;

    caller_main(a[0]);
    __atomic_store_n((int *)a[1], 1, __ATOMIC_RELEASE);
    return NULL;
}

START_TEST(a_request_thread_waits_for_its_publish_and_fails_fast_when_down)
{
    caller_t c;
    pthread_t t;
    int finished = 0;
    void *args[2] = { &c, &finished };

    server_make(&srv[0], 0, 0);
    ck_assert(run_all(bus_up, NULL, 5000));
    memset(&c, 0, sizeof(c));
    c.bus = srv[0].bus;
    pthread_create(&t, NULL, caller_wrap, args);
    ck_assert(run_all(thread_done, &finished, 5000));
    pthread_join(t, NULL);
    ck_assert_int_eq(c.rv, APR_SUCCESS);
    ck_assert_int_eq(c.status, APR_SUCCESS);
    ck_assert_msg(strstr(cli("XRANGE comet:{call}:msgs - +"),
                         "\nd\nx\nt\n")
                  && strstr(cli("XRANGE comet:{call}:msgs - +"),
                            "\nf\nalice"), "%s",
                  cli("XRANGE comet:{call}:msgs - +"));

    /* Once the bus knows Redis is gone, a publish fails at once. */
    redis_util_kill(&rs, SIGKILL);
    ck_assert(run_all(bus_down, NULL, 5000));
    memset(&c, 0, sizeof(c));
    c.bus = srv[0].bus;
    finished = 0;
    pthread_create(&t, NULL, caller_wrap, args);
    ck_assert(run_all(thread_done, &finished, 5000));
    pthread_join(t, NULL);
    ck_assert_int_eq(c.rv, APR_SUCCESS);
    ck_assert_int_eq(c.status, COMET_BUS_ENOTSENT);
    ck_assert_int_lt(c.took_ms, 1000);
}
END_TEST

Suite *test_comet_bus_suite(void)
{
    Suite *s = suite_create("comet_bus");
    TCase *tc = tcase_create("redis");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_unchecked_fixture(tc, redis_util_sweep_setup, redis_util_sweep);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc,
                   a_publish_on_one_server_reaches_the_copy_of_another_in_order);
    tcase_add_test(tc, a_copy_whose_subscription_was_lost_catches_up_in_order);
    tcase_add_test(tc,
                   a_subscriber_from_another_server_resumes_exactly_where_it_was);
    tcase_add_test(tc, redis_restarted_without_its_data_starts_a_new_generation);
    tcase_add_test(tc, redis_that_went_back_continues_in_the_next_generation);
    tcase_add_test(tc, counts_of_every_server_add_up_and_a_dead_ones_expire);
    tcase_add_test(tc,
                   a_lost_reply_is_an_unknown_outcome_and_flushed_scripts_are_resent);
    tcase_add_test(tc,
                   a_request_thread_waits_for_its_publish_and_fails_fast_when_down);
    suite_add_tcase(s, tc);
    return s;
}
