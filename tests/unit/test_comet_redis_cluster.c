/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* Hash slots, and the client against a fake node older than CLUSTER
 * SHARDS.  The client against a real six-node cluster (routing, MOVED,
 * ASK, failover, sharded pub/sub) is in the integration suite
 * redis_cluster: it takes some ten seconds. */

#include <stdio.h>
#include <string.h>

#include <apr_strings.h>

#include "unit_common.h"
#include "comet_redis_cluster.h"
#include "redis_util.h"
#include "redis_fake.h"

START_TEST(crc16_is_xmodem)
{
    ck_assert_uint_eq(comet_redis_crc16("123456789", 9), 0x31C3);
    ck_assert_uint_eq(comet_redis_crc16("", 0), 0);
}
END_TEST

START_TEST(slots_are_those_redis_computes)
{
    /* Values from CLUSTER KEYSLOT. */
    ck_assert_uint_eq(comet_redis_slot("foo", 3), 12182);
    ck_assert_uint_eq(comet_redis_slot("bar", 3), 5061);
    ck_assert_uint_eq(comet_redis_slot("hello", 5), 866);
}
END_TEST

START_TEST(hash_tags_pick_the_hashed_part)
{
    unsigned user = comet_redis_slot("user1000", 8);

    ck_assert_uint_eq(comet_redis_slot("{user1000}.following", 20), user);
    ck_assert_uint_eq(comet_redis_slot("{user1000}.followers", 20), user);
    ck_assert_uint_eq(comet_redis_slot("x{user1000}y{z}", 15), user);
    /* An empty tag does not count: the whole key is hashed. */
    ck_assert_uint_eq(comet_redis_slot("foo{}{bar}", 10),
                      comet_redis_crc16("foo{}{bar}", 10) & 16383);
    /* From the first '{' to the first '}' after it. */
    ck_assert_uint_eq(comet_redis_slot("foo{{bar}}zap", 13),
                      comet_redis_crc16("{bar", 4) & 16383);
    ck_assert_uint_eq(comet_redis_slot("foo{bar}{zap}", 13),
                      comet_redis_slot("bar", 3));
    /* No closing brace: the whole key. */
    ck_assert_uint_eq(comet_redis_slot("foo{bar", 7),
                      comet_redis_crc16("foo{bar", 7) & 16383);
    /* Binary keys. */
    ck_assert_uint_lt(comet_redis_slot("a\0{b}", 5), 16384);
    ck_assert_uint_eq(comet_redis_slot("a\0{b}", 5), comet_redis_slot("b", 1));
}
END_TEST

static void quiet(void *baton, int level, const char *file, int line,
                  apr_status_t rv, const char *fmt, va_list ap)
{
}

static void setup(void)
{
    comet_test_pool_setup();
    comet_log_set(quiet, NULL, COMET_LOG_DEBUG);
}

static void teardown(void)
{
    comet_log_set(NULL, NULL, 0);
    comet_test_pool_teardown();
}

static int cluster_up(void *baton)
{
    return comet_redis_cluster_is_up(baton);
}

typedef struct reply_t {
    int          n;
    apr_status_t status;
    char         str[64];
} reply_t;

static void on_reply(void *baton, apr_status_t st,
                     const comet_resp_reply_t *r, const char *err)
{
    reply_t *rep = baton;

    rep->n++;
    rep->status = st;
    apr_cpystrn(rep->str, r && r->str ? r->str : "", sizeof(rep->str));
}

START_TEST(old_node_gives_its_map_by_cluster_slots)
{
    comet_loop_t *loop;
    fake_t *f;
    comet_redis_url_t *url;
    comet_redis_cluster_t *cl;
    comet_redis_cluster_stats_t st;
    const char *argv[] = { "SET", "foo", "bar" };
    char err[128];
    reply_t r;

    ck_assert_int_eq(comet_loop_create(&loop, 256, comet_test_pool),
                     APR_SUCCESS);
    f = fake_start(loop, FAKE_CLUSTER6, comet_test_pool);
    ck_assert_int_eq(comet_redis_url_parse(&url, apr_psprintf(comet_test_pool,
                         "redis-cluster://127.0.0.1:%d", f->port),
                         comet_test_pool, err, sizeof(err)), APR_SUCCESS);
    ck_assert_int_eq(comet_redis_cluster_create(&cl, loop, url, NULL, NULL,
                                                NULL, comet_test_pool),
                     APR_SUCCESS);
    /* Before the map: refused at once, not queued. */
    ck_assert_int_eq(comet_redis_cluster_command(cl, "foo", 3, 3, argv, NULL,
                                                 on_reply, &r),
                     COMET_REDIS_EDOWN);
    comet_redis_cluster_start(cl);
    ck_assert(run_until(loop, cluster_up, cl, 5000));
    ck_assert_ptr_nonnull(strstr(f->seen, "CLUSTER SHARDS|CLUSTER SLOTS|"));
    ck_assert_str_eq(comet_redis_cluster_master_of(cl, 0),
                     apr_psprintf(comet_test_pool, "127.0.0.1:%d", f->port));
    comet_redis_cluster_stats(cl, &st);
    ck_assert_uint_eq(st.masters, 1);
    ck_assert_uint_eq(st.nodes, 1);
    memset(&r, 0, sizeof(r));
    ck_assert_int_eq(comet_redis_cluster_command(cl, "foo", 3, 3, argv, NULL,
                                                 on_reply, &r), APR_SUCCESS);
    ck_assert(wait_count(loop, &r.n, 1, 5000));
    ck_assert_int_eq(r.status, APR_SUCCESS);
    ck_assert_str_eq(r.str, "OK");
    ck_assert_ptr_nonnull(strstr(f->seen, "SET foo bar|"));

    /* Closed: pending commands fail, new ones are refused. */
    memset(&r, 0, sizeof(r));
    f->silent = 1;
    ck_assert_int_eq(comet_redis_cluster_command(cl, "foo", 3, 3, argv, NULL,
                                                 on_reply, &r), APR_SUCCESS);
    comet_redis_cluster_close(cl);
    ck_assert_int_eq(r.n, 1);
    ck_assert_int_eq(r.status, COMET_REDIS_ECLOSED);
    ck_assert_int_eq(comet_redis_cluster_command(cl, "foo", 3, 3, argv, NULL,
                                                 on_reply, &r),
                     COMET_REDIS_ECLOSED);
}
END_TEST

Suite *test_comet_redis_cluster_suite(void)
{
    Suite *s = suite_create("comet_redis_cluster");
    TCase *tc = tcase_create("slots");
    TCase *tf;

    tcase_add_test(tc, crc16_is_xmodem);
    tcase_add_test(tc, slots_are_those_redis_computes);
    tcase_add_test(tc, hash_tags_pick_the_hashed_part);
    suite_add_tcase(s, tc);

    tf = tcase_create("fake");
    tcase_add_checked_fixture(tf, setup, teardown);
    tcase_add_test(tf, old_node_gives_its_map_by_cluster_slots);
    suite_add_tcase(s, tf);
    return s;
}
