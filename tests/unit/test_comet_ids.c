/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* Unit tests of comet_ids.c: message ids, channel ids, channel patterns. */
#include <string.h>

#include "unit_common.h"
#include "comet_ids.h"

static comet_msgid_t mkid(apr_uint32_t epoch, apr_uint64_t seq)
{
    comet_msgid_t id;

    id.epoch = epoch;
    id.seq = seq;
    return id;
}

static apr_status_t parse(const char *s, comet_msgid_t *id)
{
    return comet_msgid_parse(id, s, strlen(s));
}

/* ---- message ids -------------------------------------------------------- */

START_TEST(msgid_format_and_parse_round_trip)
{
    char buf[COMET_MSGID_MAXLEN];
    comet_msgid_t id = mkid(0x1f03a9c2, 42), back;

    ck_assert_uint_eq(comet_msgid_format(buf, &id), 11);
    ck_assert_str_eq(buf, "1f03a9c2:42");
    ck_assert_int_eq(parse(buf, &back), APR_SUCCESS);
    ck_assert_uint_eq(back.epoch, 0x1f03a9c2);
    ck_assert_uint_eq(back.seq, 42);

    id = mkid(0xffffffff, APR_UINT64_MAX);
    ck_assert_uint_eq(comet_msgid_format(buf, &id), COMET_MSGID_MAXLEN - 1);
    ck_assert_str_eq(buf, "ffffffff:18446744073709551615");
    ck_assert_int_eq(parse(buf, &back), APR_SUCCESS);
    ck_assert(back.seq == APR_UINT64_MAX);

    id = mkid(1, 0);
    comet_msgid_format(buf, &id);
    ck_assert_str_eq(buf, "00000001:0");
    ck_assert_int_eq(parse(buf, &back), APR_SUCCESS);
    ck_assert_uint_eq(back.seq, 0);
    /* Exactly len bytes are parsed. */
    ck_assert_int_eq(comet_msgid_parse(&back, "1f03a9c2:123", 10),
                     APR_SUCCESS);
    ck_assert_uint_eq(back.seq, 1);
}
END_TEST

START_TEST(msgid_parse_refuses_garbage)
{
    static const char *const bad[] = {
        "", ":", "1f03a9c2", "1f03a9c2:", "1f03a9c2:-1", "1f03a9c2:+1",
        "1f03a9c2:01", "1f03a9c2:00", "1f03a9c2:18446744073709551616",
        "1f03a9c2:99999999999999999999", "1f03a9c2:000000000000000000001",
        "1f03a9c2:123456789012345678901", "1F03A9C2:1", "1f03a9cg:1",
        "00000000:1", "1f03a9c2:1x", "1f03a9c2:1 ", " 1f03a9c2:1",
        "1f03a9c:1", "1f03a9c21:1", "1f03a9c2;1", "1f03a9c2:1,2",
        "1f03a9c2:1:2", "0x03a9c2:1", "1f03a9c2: 1", "-f03a9c2:1"
    };
    comet_msgid_t id = mkid(7, 7);
    apr_size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_msg(parse(bad[i], &id) == COMET_EBADID, "accepted '%s'",
                      bad[i]);
    }
    ck_assert_int_eq(comet_msgid_parse(&id, "1f03a9c2:1\0", 11),
                     COMET_EBADID);
    ck_assert_int_eq(comet_msgid_parse(&id, NULL, 0), COMET_EBADID);
    /* A refused parse leaves the id alone. */
    ck_assert_uint_eq(id.epoch, 7);
    ck_assert_uint_eq(id.seq, 7);
}
END_TEST

START_TEST(msgid_compound_round_trip_and_limits)
{
    apr_uint64_t seqs[4] = { 0, 17, APR_UINT64_MAX, 5 }, got[4];
    char buf[COMET_MSGID_COMPOUND_MAXLEN(4)];
    apr_uint32_t epoch;
    apr_size_t n, len;
    static const char *const bad[] = {
        "1f03a9c2:", "1f03a9c2:1,", "1f03a9c2:,1", "1f03a9c2:1,,2",
        "1f03a9c2:1,02", "1f03a9c2:1;2", "00000000:1,2", "1f03a9c2:1,2 ",
        "1f03a9c2:1,-2", "1f03a9c2:1,2:3", "1f03a9c2:1,18446744073709551616"
    };

    len = comet_msgid_format_compound(buf, 0xabcdef01, seqs, 4);
    ck_assert_str_eq(buf, "abcdef01:0,17,18446744073709551615,5");
    ck_assert_uint_eq(len, strlen(buf));
    ck_assert(len < sizeof(buf));
    ck_assert_int_eq(comet_msgid_parse_compound(&epoch, got, 4, &n, buf, len),
                     APR_SUCCESS);
    ck_assert_uint_eq(epoch, 0xabcdef01);
    ck_assert_uint_eq(n, 4);
    ck_assert(memcmp(got, seqs, sizeof(seqs)) == 0);
    /* More parts than the caller has room for. */
    ck_assert_int_eq(comet_msgid_parse_compound(&epoch, got, 3, &n, buf, len),
                     COMET_EBADID);
    ck_assert_int_eq(comet_msgid_parse_compound(&epoch, got, 1, &n,
                                                "abcdef01:9", 10),
                     APR_SUCCESS);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(got[0], 9);
    for (n = 0; n < sizeof(bad) / sizeof(bad[0]); n++) {
        apr_size_t k;

        ck_assert_msg(comet_msgid_parse_compound(&epoch, got, 4, &k, bad[n],
                                                 strlen(bad[n]))
                      == COMET_EBADID, "accepted '%s'", bad[n]);
    }
}
END_TEST

START_TEST(msgid_compare_orders_by_seq)
{
    comet_msgid_t a = mkid(5, 1), b = mkid(5, 2), c = mkid(5, 2);

    ck_assert_int_lt(comet_msgid_cmp(&a, &b), 0);
    ck_assert_int_gt(comet_msgid_cmp(&b, &a), 0);
    ck_assert_int_eq(comet_msgid_cmp(&b, &c), 0);
    c.seq = APR_UINT64_MAX;
    ck_assert_int_lt(comet_msgid_cmp(&b, &c), 0);
}
END_TEST

/* ---- channel ids -------------------------------------------------------- */

START_TEST(channel_id_check_accepts_only_the_safe_set)
{
    static const char *const good[] = {
        "a", "room-1", "A_b.c~d:e@f/g", "0123456789", "x/y/z"
    };
    static const char *const bad[] = {
        "a b", "a,b", "a%20", "a\"b", "a'b", "a\nb", "a\tb", "\xc3\xa9",
        "a?b", "a#b", "a*b", "a\\b", "a+b", "<a>"
    };
    char longid[COMET_CHANNEL_ID_MAX_DEFAULT + 2];
    apr_size_t i;

    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        ck_assert_int_eq(comet_channel_id_check(good[i], strlen(good[i]), 64),
                         APR_SUCCESS);
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_msg(comet_channel_id_check(bad[i], strlen(bad[i]), 64)
                      == COMET_EBADCHAN, "accepted '%s'", bad[i]);
    }
    ck_assert_int_eq(comet_channel_id_check("", 0, 64), COMET_EBADCHAN);
    ck_assert_int_eq(comet_channel_id_check(NULL, 3, 64), COMET_EBADCHAN);
    ck_assert_int_eq(comet_channel_id_check("a\0b", 3, 64), COMET_EBADCHAN);
    memset(longid, 'x', sizeof(longid));
    ck_assert_int_eq(comet_channel_id_check(longid,
                                            COMET_CHANNEL_ID_MAX_DEFAULT,
                                            COMET_CHANNEL_ID_MAX_DEFAULT),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_channel_id_check(longid,
                                            COMET_CHANNEL_ID_MAX_DEFAULT + 1,
                                            COMET_CHANNEL_ID_MAX_DEFAULT),
                     COMET_EBADCHAN);
}
END_TEST

/* ---- channel patterns ----------------------------------------------------- */

START_TEST(glob_matches_like_redis)
{
    static const struct { const char *p, *s; int m; } t[] = {
        { "*", "", 1 }, { "*", "anything", 1 }, { "", "", 1 }, { "", "a", 0 },
        { "a", "a", 1 }, { "a", "b", 0 }, { "a", "aa", 0 },
        { "h?llo", "hello", 1 }, { "h?llo", "hllo", 0 },
        { "h*llo", "hllo", 1 }, { "h*llo", "heeeello", 1 },
        { "h[ae]llo", "hallo", 1 }, { "h[ae]llo", "hillo", 0 },
        { "h[^e]llo", "hallo", 1 }, { "h[^e]llo", "hello", 0 },
        { "h[a-c]llo", "hbllo", 1 }, { "h[a-c]llo", "hdllo", 0 },
        { "h[c-a]llo", "hbllo", 1 },
        { "h\\*llo", "h*llo", 1 }, { "h\\*llo", "hello", 0 },
        { "h[\\]]", "h]", 1 }, { "a*b*c", "axxbyyc", 1 },
        { "a*b*c", "axxbyy", 0 }, { "*a", "bbba", 1 }, { "*a", "bbab", 0 },
        { "a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 0 },
        { "news/*", "news/sport", 1 }, { "news/*", "new/sport", 0 },
        { "ab\\", "ab\\", 1 }, { "h[ab", "ha", 1 }, { "h[ab", "hc", 0 },
        { "**x", "x", 1 }, { "?", "", 0 }
    };
    apr_size_t i;

    for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        ck_assert_msg(comet_glob_match(t[i].p, strlen(t[i].p), t[i].s,
                                       strlen(t[i].s)) == t[i].m,
                      "'%s' vs '%s'", t[i].p, t[i].s);
    }
}
END_TEST

Suite *test_comet_ids_suite(void)
{
    Suite *s = suite_create("comet_ids");
    TCase *msgid = tcase_create("msgid");
    TCase *chan = tcase_create("channel");

    tcase_add_test(msgid, msgid_format_and_parse_round_trip);
    tcase_add_test(msgid, msgid_parse_refuses_garbage);
    tcase_add_test(msgid, msgid_compound_round_trip_and_limits);
    tcase_add_test(msgid, msgid_compare_orders_by_seq);
    suite_add_tcase(s, msgid);

    tcase_add_test(chan, channel_id_check_accepts_only_the_safe_set);
    tcase_add_test(chan, glob_matches_like_redis);
    suite_add_tcase(s, chan);
    return s;
}
