/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* The Redis Cluster client (comet_redis_cluster.c) against a real local
 * cluster: six redis-server processes (three masters, three replicas) on
 * free 127.0.0.1 ports, joined by redis-cli --cluster create.  No httpd:
 * it is here, not among the unit tests, because a cluster and its
 * failovers take some ten seconds.  Progress goes to stderr. */

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <apr_general.h>
#include <apr_strings.h>

#include "comet_redis_cluster.h"
#include "redis_util.h"

#define NODES 6

static long long t0;

static void progress(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static void progress(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "[redis cluster %5.1fs] ",
            (double)(redis_util_ms() - t0) / 1000.0);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static void quiet_log(void *baton, int level, const char *file, int line,
                      apr_status_t rv, const char *fmt, va_list ap)
{
    if (getenv("COMET_TEST_VERBOSE")) {
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
    }
}

/* ---- recorders ---------------------------------------------------------- */

typedef struct reply_t {
    int          n;
    apr_status_t status;
    int          type;
    apr_int64_t  integer;
    char         str[256];
    char         error[256];
} reply_t;

static void on_reply(void *baton, apr_status_t st,
                     const comet_resp_reply_t *r, const char *err)
{
    reply_t *rep = baton;

    rep->n++;
    rep->status = st;
    rep->type = r ? r->type : 0;
    rep->integer = r ? r->integer : 0;
    rep->str[0] = rep->error[0] = '\0';
    if (r && r->str) {
        apr_cpystrn(rep->str, r->str, sizeof(rep->str));
    }
    if (err) {
        apr_cpystrn(rep->error, err, sizeof(rep->error));
    }
}

typedef struct events_t {
    int  ready;
    int  resumed;
    int  lost;
    int  failed;
    int  messages;
    char last_msg[128];
    char last_chan[128];
    int  ups;
    int  downs;
} events_t;

static void on_sub(void *baton, comet_redis_cluster_t *cl,
                   const comet_redis_sub_event_t *ev)
{
    events_t *e = baton;

    snprintf(e->last_chan, sizeof(e->last_chan), "%.*s",
             (int)ev->channel_len, ev->channel);
    switch (ev->type) {
    case COMET_REDIS_SUB_READY:
        e->ready++;
        e->resumed += ev->resumed;
        break;
    case COMET_REDIS_SUB_LOST:
        e->lost++;
        break;
    case COMET_REDIS_SUB_FAILED:
        e->failed++;
        break;
    case COMET_REDIS_SUB_MESSAGE:
        e->messages++;
        snprintf(e->last_msg, sizeof(e->last_msg), "%.*s",
                 (int)ev->payload_len, ev->payload);
        break;
    }
}

static void on_state(void *baton, comet_redis_cluster_t *cl, int up,
                     const char *text)
{
    events_t *e = baton;

    if (up) {
        e->ups++;
    }
    else {
        e->downs++;
    }
}

/* ---- helpers ------------------------------------------------------------ */

static redis_util_server_t srv[NODES];
static comet_loop_t *loop;
static comet_redis_cluster_t *cl;
static apr_pool_t *pool;

static reply_t cmd(const char *key, ...)
{
    const char *argv[16];
    int argc = 0;
    reply_t r;
    va_list ap;
    apr_status_t rv;

    memset(&r, 0, sizeof(r));
    va_start(ap, key);
    while (argc < 15 && (argv[argc] = va_arg(ap, const char *)) != NULL) {
        argc++;
    }
    va_end(ap);
    rv = comet_redis_cluster_command(cl, key, strlen(key), argc, argv, NULL,
                                     on_reply, &r);
    if (rv != APR_SUCCESS) {
        r.n = 1;
        r.status = rv;
        return r;
    }
    ck_assert_msg(wait_count(loop, &r.n, 1, 5000), "no reply to %s %s",
                  argv[0], key);
    return r;
}

/* Output of redis-cli against node i, trimmed. */
static const char *cli(int i, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static const char *cli(int i, const char *fmt, ...)
{
    static char out[8192];
    char args[1024];
    va_list ap;
    size_t len;

    va_start(ap, fmt);
    vsnprintf(args, sizeof(args), fmt, ap);
    va_end(ap);
    redis_util_sh(out, sizeof(out), "redis-cli -p %d %s 2>&1", srv[i].port,
                  args);
    len = strlen(out);
    while (len && (out[len - 1] == '\n' || out[len - 1] == '\r')) {
        out[--len] = '\0';
    }
    return out;
}

static int node_by_port(int port)
{
    int i;

    for (i = 0; i < NODES; i++) {
        if (srv[i].port == port) {
            return i;
        }
    }
    return -1;
}

/* The node index of the master of slot, in the client's map. */
static int master_of(unsigned slot)
{
    const char *hp = comet_redis_cluster_master_of(cl, slot);
    const char *colon = hp ? strrchr(hp, ':') : NULL;

    return colon ? node_by_port(atoi(colon + 1)) : -1;
}

/* A name "<prefix>{<n>}" whose slot is served by master m (and not in
 * avoid, when >= 0), searching n upwards. */
static void name_on(char *out, size_t len, const char *prefix, int m,
                    int avoid_slot)
{
    int n;

    for (n = 0; n < 100000; n++) {
        unsigned slot;

        snprintf(out, len, "%s{%d}", prefix, n);
        slot = comet_redis_slot(out, strlen(out));
        if (master_of(slot) == m && (int)slot != avoid_slot) {
            return;
        }
    }
    ck_abort_msg("no name found on node %d", m);
}

static int role_is(void *baton)
{
    const int *want = baton;   /* { node, 1: master } */
    static long long last;
    static int result;

    /* The loop polls every 2 ms; redis-cli is a process: every 50 ms. */
    if (redis_util_ms() - last >= 50) {
        last = redis_util_ms();
        result = strncmp(cli(want[0], "ROLE"), "master", 6) == 0;
    }
    return result;
}

/* A replica's link to its master is up. */
static int link_up(void *baton)
{
    const int *want = baton;
    static long long last;
    static int result;

    if (redis_util_ms() - last >= 50) {
        last = redis_util_ms();
        result = strstr(cli(want[0], "ROLE"), "\nconnected\n") != NULL;
    }
    return result;
}

static int cluster_up(void *baton)
{
    return comet_redis_cluster_is_up(cl);
}

static int cluster_ok_everywhere(void *baton)
{
    static long long last;
    static int result;
    int i;

    if (redis_util_ms() - last < 50) {
        return result;
    }
    last = redis_util_ms();
    for (i = 0; i < NODES; i++) {
        if (srv[i].pid
            && !strstr(cli(i, "CLUSTER INFO"), "cluster_state:ok")) {
            return result = 0;
        }
    }
    return result = 1;
}

static int slot_master_is(void *baton)
{
    const int *want = baton;   /* { slot, node } */

    return master_of((unsigned)want[0]) == want[1];
}

static void setup(void)
{
    apr_initialize();
    redis_util_sweep_setup();
}

static void teardown(void)
{
    redis_util_sweep();
    apr_terminate();
}

/* ---- the test ----------------------------------------------------------- */

START_TEST(cluster_routing_redirections_failover_and_sharded_pubsub)
{
    comet_redis_url_t *url;
    comet_redis_opts_t o;
    comet_redis_cluster_stats_t st;
    events_t ev;
    char create[1024], err[256], chan[NODES][64], key[64], out[4096];
    int masters[3], nm = 0, i, mv_slot, a, b, want[2];
    reply_t r;

    t0 = redis_util_ms();
    memset(&ev, 0, sizeof(ev));
    ck_assert_int_eq(apr_pool_create(&pool, NULL), APR_SUCCESS);
    comet_log_set(quiet_log, NULL, COMET_LOG_DEBUG);
    ck_assert_int_eq(comet_loop_create(&loop, 4096, pool), APR_SUCCESS);

    /* Six nodes, one cluster. */
    snprintf(create, sizeof(create), "redis-cli --cluster create");
    for (i = 0; i < NODES; i++) {
        memset(&srv[i], 0, sizeof(srv[i]));
        srv[i].port = redis_util_free_cluster_port();
        apr_cpystrn(srv[i].extra, "--cluster-enabled yes "
                    "--cluster-config-file nodes.conf "
                    "--cluster-node-timeout 1500", sizeof(srv[i].extra));
        ck_assert_msg(redis_util_start(&srv[i]) == 0, "node %d", i);
        snprintf(create + strlen(create), sizeof(create) - strlen(create),
                 " 127.0.0.1:%d", srv[i].port);
    }
    progress("6 nodes up");
    strcat(create, " --cluster-replicas 1 --cluster-yes");
    ck_assert_msg(redis_util_sh(out, sizeof(out), "%s 2>&1", create) == 0,
                  "%s", out);
    ck_assert(run_until(loop, cluster_ok_everywhere, NULL, 10000));
    progress("cluster created");

    /* The client, from two seeds. */
    comet_redis_opts_default(&o);
    o.backoff_min = apr_time_from_msec(50);
    o.backoff_max = apr_time_from_msec(500);
    o.connect_timeout = apr_time_from_sec(1);
    ck_assert_int_eq(comet_redis_url_parse(&url, apr_psprintf(pool,
                         "redis-cluster://127.0.0.1:%d,127.0.0.1:%d",
                         srv[0].port, srv[1].port), pool, err, sizeof(err)),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_redis_cluster_create(&cl, loop, url, &o, on_sub,
                                                &ev, pool), APR_SUCCESS);
    comet_redis_cluster_on_state(cl, on_state, &ev);
    ck_assert_int_eq(comet_redis_cluster_start(cl), APR_SUCCESS);
    ck_assert(run_until(loop, cluster_up, NULL, 10000));
    comet_redis_cluster_stats(cl, &st);
    ck_assert_uint_eq(st.masters, 3);
    ck_assert_int_eq(ev.ups, 1);
    for (i = 0; i < NODES; i++) {
        int seen = 0, j;

        for (j = 0; j < 16384 && !seen; j += 97) {
            seen = master_of((unsigned)j) == i;
        }
        if (seen || master_of(16383) == i) {
            masters[nm++] = i;
        }
    }
    ck_assert_int_eq(nm, 3);
    progress("client up: masters are nodes %d %d %d", masters[0], masters[1],
             masters[2]);

    /* Our slots are Redis' slots. */
    for (i = 0; i < 20; i++) {
        snprintf(key, sizeof(key), i % 2 ? "k%d" : "{tag%d}x", i * 7919);
        ck_assert_uint_eq(comet_redis_slot(key, strlen(key)),
                          (unsigned)atoi(cli(0, "CLUSTER KEYSLOT '%s'", key)));
    }

    /* Commands reach every master. */
    for (i = 0; i < 300; i++) {
        snprintf(key, sizeof(key), "key:%d", i);
        r = cmd(key, "SET", key, "v", NULL);
        ck_assert_msg(r.status == APR_SUCCESS && !strcmp(r.str, "OK"),
                      "%s: %d %s %s", key, r.status, r.str, r.error);
    }
    for (i = 0; i < 3; i++) {
        int keys = atoi(cli(masters[i], "DBSIZE"));

        ck_assert_msg(keys > 50, "master %d has %d keys", masters[i], keys);
    }
    comet_redis_cluster_stats(cl, &st);
    ck_assert_uint_eq(st.moved, 0);
    progress("300 keys written over the 3 masters");

    /* Sharded pub/sub on every master. */
    for (i = 0; i < 3; i++) {
        name_on(chan[i], sizeof(chan[i]), "chan", masters[i], -1);
        ck_assert_int_eq(comet_redis_cluster_subscribe(cl, chan[i],
                                                       strlen(chan[i])),
                         APR_SUCCESS);
    }
    ck_assert(wait_count(loop, &ev.ready, 3, 5000));
    for (i = 0; i < 3; i++) {
        r = cmd(chan[i], "SPUBLISH", chan[i], apr_psprintf(pool, "m%d", i),
                NULL);
        ck_assert_int_eq(r.integer, 1);
    }
    ck_assert(wait_count(loop, &ev.messages, 3, 5000));
    progress("SSUBSCRIBE on the 3 masters: 3 messages");

    /* Resharding one empty slot from master a to b: ASK during the
     * migration, MOVED after it, and the channel of that slot follows. */
    a = masters[0];
    b = masters[1];
    /* Not the slot of the channel already on a. */
    name_on(key, sizeof(key), "mv", a,
            (int)comet_redis_slot(chan[0], strlen(chan[0])));
    mv_slot = (int)comet_redis_slot(key, strlen(key));
    snprintf(chan[3], sizeof(chan[3]), "chan%s", strchr(key, '{'));
    ck_assert_int_eq(comet_redis_slot(chan[3], strlen(chan[3])),
                     (unsigned)mv_slot);
    ck_assert_int_eq(comet_redis_cluster_subscribe(cl, chan[3],
                                                   strlen(chan[3])),
                     APR_SUCCESS);
    ck_assert(wait_count(loop, &ev.ready, 4, 5000));
    ck_assert_str_eq(cli(a, "CLUSTER COUNTKEYSINSLOT %d", mv_slot), "0");
    {
        char ida[64], idb[64];

        apr_cpystrn(ida, cli(a, "CLUSTER MYID"), sizeof(ida));
        apr_cpystrn(idb, cli(b, "CLUSTER MYID"), sizeof(idb));
        ck_assert_str_eq(cli(b, "CLUSTER SETSLOT %d IMPORTING %s", mv_slot,
                             ida), "OK");
        ck_assert_str_eq(cli(a, "CLUSTER SETSLOT %d MIGRATING %s", mv_slot,
                             idb), "OK");
        r = cmd(key, "SET", key, "asked", NULL);
        ck_assert_msg(r.status == APR_SUCCESS && !strcmp(r.str, "OK"),
                      "%d %s %s", r.status, r.str, r.error);
        comet_redis_cluster_stats(cl, &st);
        ck_assert_uint_eq(st.asked, 1);
        progress("ASK followed during the migration of slot %d", mv_slot);
        ck_assert_str_eq(cli(b, "CLUSTER SETSLOT %d NODE %s", mv_slot, idb),
                         "OK");
        ck_assert_str_eq(cli(a, "CLUSTER SETSLOT %d NODE %s", mv_slot, idb),
                         "OK");
        /* Written on b, the target, though a was asked. */
        ck_assert_str_eq(cli(b, "GET '%s'", key), "asked");
    }
    r = cmd(key, "GET", key, NULL);
    ck_assert_msg(r.status == APR_SUCCESS && !strcmp(r.str, "asked"),
                  "%d %s %s", r.status, r.str, r.error);
    comet_redis_cluster_stats(cl, &st);
    ck_assert_uint_ge(st.moved, 1);
    want[0] = mv_slot;
    want[1] = b;
    ck_assert(run_until(loop, slot_master_is, want, 5000));
    progress("MOVED followed: slot %d now on node %d", mv_slot, b);
    /* The channel of the moved slot: lost, then ready again on b,
     * resumed (the owner would fetch what it missed). */
    ck_assert(wait_count(loop, &ev.lost, 1, 5000));
    ck_assert(wait_count(loop, &ev.resumed, 1, 5000));
    r = cmd(chan[3], "SPUBLISH", chan[3], "after-move", NULL);
    ck_assert_int_eq(r.integer, 1);
    ck_assert(wait_count(loop, &ev.messages, 4, 5000));
    ck_assert_str_eq(ev.last_msg, "after-move");
    progress("the moved slot's channel resumed on node %d", b);

    /* A forced failover: the replica of master c takes over; the client
     * follows the MOVED the demoted master answers, and c's channel. */
    {
        int c = masters[2], rep = -1, before = ev.resumed;
        int role[2];

        for (i = 0; i < NODES; i++) {
            const char *role_out = cli(i, "ROLE");

            if (strncmp(role_out, "slave", 5) == 0
                && atoi(strchr(strchr(role_out, '\n') + 1, '\n') + 1)
                   == srv[c].port) {
                rep = i;
            }
        }
        ck_assert_int_ge(rep, 0);
        role[0] = rep;
        role[1] = 1;
        /* A manual failover waits for the replica to catch up, so its link
         * must be up; when it does not end in time (a loaded machine),
         * FORCE skips the agreement with the master. */
        ck_assert(run_until(loop, link_up, role, 10000));
        ck_assert_str_eq(cli(rep, "CLUSTER FAILOVER"), "OK");
        if (!run_until(loop, role_is, role, 7000)) {
            progress("manual failover not done in 7 s: FORCE");
            ck_assert_str_eq(cli(rep, "CLUSTER FAILOVER FORCE"), "OK");
            ck_assert(run_until(loop, role_is, role, 10000));
        }
        progress("CLUSTER FAILOVER: node %d replaced master %d", rep, c);
        name_on(key, sizeof(key), "fo", c, -1);
        r = cmd(key, "SET", key, "after-failover", NULL);
        ck_assert_msg(r.status == APR_SUCCESS && !strcmp(r.str, "OK"),
                      "%d %s %s", r.status, r.str, r.error);
        ck_assert_str_eq(cli(rep, "GET '%s'", key), "after-failover");
        want[0] = (int)comet_redis_slot(key, strlen(key));
        want[1] = rep;
        ck_assert(run_until(loop, slot_master_is, want, 5000));
        ck_assert(wait_count(loop, &ev.resumed, before + 1, 5000));
        r = cmd(chan[2], "SPUBLISH", chan[2], "after-failover", NULL);
        ck_assert_int_eq(r.integer, 1);
        ck_assert(wait_count(loop, &ev.messages, 5, 5000));
        ck_assert_str_eq(ev.last_msg, "after-failover");
        progress("commands and channel followed the failover to node %d",
                 rep);
        masters[2] = rep;
    }

    /* A master killed: its replica is elected (node timeout 1.5 s); the
     * client refreshes from the nodes left until every slot is served. */
    {
        int dead = masters[0], before = ev.resumed, downs = ev.downs;
        int slot0 = (int)comet_redis_slot(chan[0], strlen(chan[0]));

        redis_util_kill(&srv[dead], SIGKILL);
        progress("master %d killed", dead);
        r = cmd(chan[0], "SPUBLISH", chan[0], "while-down", NULL);
        ck_assert_msg(r.status != APR_SUCCESS, "a publish to a dead master "
                      "succeeded");
        ck_assert(wait_count(loop, &ev.downs, downs + 1, 5000));
        ck_assert(run_until(loop, cluster_up, NULL, 15000));
        ck_assert_int_ne(master_of((unsigned)slot0), dead);
        progress("replica %d promoted; client up again",
                 master_of((unsigned)slot0));
        ck_assert(wait_count(loop, &ev.resumed, before + 1, 5000));
        r = cmd(chan[0], "SPUBLISH", chan[0], "after-kill", NULL);
        ck_assert_int_eq(r.integer, 1);
        ck_assert(wait_count(loop, &ev.messages, 6, 5000));
        ck_assert_str_eq(ev.last_msg, "after-kill");
        snprintf(key, sizeof(key), "key:%d", 0);
        for (i = 0; i < 300; i++) {
            snprintf(key, sizeof(key), "key:%d", i);
            r = cmd(key, "GET", key, NULL);
            ck_assert_msg(r.status == APR_SUCCESS && !strcmp(r.str, "v"),
                          "%s: %d %s %s", key, r.status, r.str, r.error);
        }
        progress("all 300 keys read back after the failover");
    }

    comet_redis_cluster_close(cl);
    for (i = 0; i < NODES; i++) {
        redis_util_stop(&srv[i]);
    }
    comet_log_set(NULL, NULL, 0);
    apr_pool_destroy(pool);
    progress("done");
}
END_TEST

Suite *test_redis_cluster_suite(void)
{
    Suite *s = suite_create("redis_cluster");
    TCase *tc = tcase_create("cluster");

    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc,
                   cluster_routing_redirections_failover_and_sharded_pubsub);
    suite_add_tcase(s, tc);
    return s;
}
