/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* Hash slots.  The client against a real six-node cluster (routing,
 * MOVED, ASK, failover, sharded pub/sub) is in the integration suite
 * redis_cluster: it takes some ten seconds. */

#include <string.h>

#include "unit_common.h"
#include "comet_redis_cluster.h"

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

Suite *test_comet_redis_cluster_suite(void)
{
    Suite *s = suite_create("comet_redis_cluster");
    TCase *tc = tcase_create("slots");

    tcase_add_test(tc, crc16_is_xmodem);
    tcase_add_test(tc, slots_are_those_redis_computes);
    tcase_add_test(tc, hash_tags_pick_the_hashed_part);
    suite_add_tcase(s, tc);
    return s;
}
