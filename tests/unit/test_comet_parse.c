/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

#include <string.h>

#include "unit_common.h"
#include "comet_parse.h"
#include "comet_ids.h"
#include "comet_render.h"

#define K 1024ULL
#define M (1024ULL * 1024)
#define G (1024ULL * 1024 * 1024)

/* ---- sizes -------------------------------------------------------------------- */

static apr_uint64_t size_ok(const char *arg, apr_uint64_t min,
                            apr_uint64_t max)
{
    apr_uint64_t v = 0;

    ck_assert_msg(comet_parse_size(arg, min, max, &v) == APR_SUCCESS,
                  "'%s' refused", arg);
    return v;
}

static apr_status_t size_rv(const char *arg, apr_uint64_t min,
                            apr_uint64_t max)
{
    apr_uint64_t v = 12345;
    apr_status_t rv = comet_parse_size(arg, min, max, &v);

    ck_assert_uint_eq(v, 12345);             /* untouched on a refusal */
    return rv;
}

START_TEST(size_takes_plain_bytes_and_suffixes_in_any_case)
{
    ck_assert_uint_eq(size_ok("4096", 1, G), 4096);
    ck_assert_uint_eq(size_ok("512k", 1, G), 512 * K);
    ck_assert_uint_eq(size_ok("512K", 1, G), 512 * K);
    ck_assert_uint_eq(size_ok("64M", 1, G), 64 * M);
    ck_assert_uint_eq(size_ok("64m", 1, G), 64 * M);
    ck_assert_uint_eq(size_ok("1G", 1, 64 * G), G);
    ck_assert_uint_eq(size_ok("1g", 1, 64 * G), G);
    ck_assert_uint_eq(size_ok("2kb", 1, G), 2 * K);
    ck_assert_uint_eq(size_ok("2KB", 1, G), 2 * K);
    ck_assert_uint_eq(size_ok("100b", 1, G), 100);
    ck_assert_uint_eq(size_ok("0", 0, 10), 0);
}
END_TEST

START_TEST(size_refuses_what_is_not_a_size)
{
    ck_assert_int_eq(size_rv("", 1, G), APR_EINVAL);
    ck_assert_int_eq(size_rv("M", 1, G), APR_EINVAL);
    ck_assert_int_eq(size_rv("12Q", 1, G), APR_EINVAL);
    ck_assert_int_eq(size_rv("-1", 0, G), APR_EINVAL);
    ck_assert_int_eq(size_rv("+1", 0, G), APR_EINVAL);
    ck_assert_int_eq(size_rv(" 1", 0, G), APR_EINVAL);
    ck_assert_int_eq(size_rv("1 ", 0, G), APR_EINVAL);
    ck_assert_int_eq(size_rv("1.5M", 1, G), APR_EINVAL);
    ck_assert_int_eq(size_rv("1MM", 1, G), APR_EINVAL);
    ck_assert_int_eq(size_rv("1bk", 1, G), APR_EINVAL);
    ck_assert_int_eq(size_rv("1T", 1, G), APR_EINVAL);
}
END_TEST

START_TEST(size_bounds_are_inclusive_and_overflow_is_refused)
{
    ck_assert_uint_eq(size_ok("4096", 4096, G), 4096);
    ck_assert_uint_eq(size_ok("1G", 4096, G), G);
    ck_assert_uint_eq(size_ok("64G", 1, 64 * G), 64 * G);
    ck_assert_int_eq(size_rv("4095", 4096, G), APR_ERANGE);
    ck_assert_int_eq(size_rv("3k", 4096, G), APR_ERANGE);
    /* Past the maximum, before or after the suffix: out of range (a
     * refusal that can say what is allowed, e.g. 64K for at most 65535). */
    ck_assert_int_eq(size_rv("1025M", 1, G), APR_ERANGE);
    ck_assert_int_eq(size_rv("1073741825", 1, G), APR_ERANGE);
    ck_assert_int_eq(size_rv("65G", 1, 64 * G), APR_ERANGE);
    ck_assert_int_eq(size_rv("64K", 1, 65535), APR_ERANGE);
    /* More than 64 bits hold, with and without a suffix. */
    ck_assert_int_eq(size_rv("99999999999999999999", 1, G), APR_EINVAL);
    ck_assert_int_eq(size_rv("18014398509481984G", 1, 64 * G), APR_EINVAL);
}
END_TEST

/* ---- numbers ------------------------------------------------------------------- */

START_TEST(number_takes_whole_numbers_within_bounds)
{
    apr_int64_t v = 0;

    ck_assert_int_eq(comet_parse_number("100", 1, 1000000, &v), APR_SUCCESS);
    ck_assert_int_eq(v, 100);
    ck_assert_int_eq(comet_parse_number("1", 1, 1, &v), APR_SUCCESS);
    ck_assert_int_eq(v, 1);
    ck_assert_int_eq(comet_parse_number("-5", -10, 10, &v), APR_SUCCESS);
    ck_assert_int_eq(v, -5);
    v = 7;
    ck_assert_int_eq(comet_parse_number("0", 1, 10, &v), APR_ERANGE);
    ck_assert_int_eq(comet_parse_number("11", 1, 10, &v), APR_ERANGE);
    ck_assert_int_eq(comet_parse_number("-1", 0, 10, &v), APR_ERANGE);
    ck_assert_int_eq(v, 7);
}
END_TEST

START_TEST(number_refuses_what_is_not_a_whole_number)
{
    apr_int64_t v = 7;

    ck_assert_int_eq(comet_parse_number("", 0, 10, &v), APR_EINVAL);
    ck_assert_int_eq(comet_parse_number("ten", 0, 10, &v), APR_EINVAL);
    ck_assert_int_eq(comet_parse_number("5s", 0, 10, &v), APR_EINVAL);
    ck_assert_int_eq(comet_parse_number("+5", 0, 10, &v), APR_EINVAL);
    ck_assert_int_eq(comet_parse_number(" 5", 0, 10, &v), APR_EINVAL);
    ck_assert_int_eq(comet_parse_number("1.0", 0, 10, &v), APR_EINVAL);
    ck_assert_int_eq(comet_parse_number("-", 0, 10, &v), APR_EINVAL);
    ck_assert_int_eq(comet_parse_number("99999999999999999999", 0, 10, &v),
                     APR_EINVAL);
    ck_assert_int_eq(v, 7);
}
END_TEST

/* ---- transports ---------------------------------------------------------------- */

START_TEST(transport_names_in_any_case)
{
    ck_assert_int_eq(comet_parse_transport_name("sse"), COMET_T_SSE);
    ck_assert_int_eq(comet_parse_transport_name("SSE"), COMET_T_SSE);
    ck_assert_int_eq(comet_parse_transport_name("EventSource"), COMET_T_SSE);
    ck_assert_int_eq(comet_parse_transport_name("longpoll"),
                     COMET_T_LONGPOLL);
    ck_assert_int_eq(comet_parse_transport_name("Long-Poll"),
                     COMET_T_LONGPOLL);
    ck_assert_int_eq(comet_parse_transport_name("STREAM"), COMET_T_STREAM);
    ck_assert_int_eq(comet_parse_transport_name("all"), 0);
    ck_assert_int_eq(comet_parse_transport_name(""), 0);
    ck_assert_int_eq(comet_parse_transport_name("sse "), 0);
    ck_assert_int_eq(comet_parse_transport_name("WebSocket"), COMET_T_WS);
    ck_assert_int_eq(comet_parse_transport_name("web-socket"), 0);
}
END_TEST

static int transport_of(const char *query, const char *accept, int allowed)
{
    const char *why = NULL;
    int t = 0;

    ck_assert_int_eq(comet_parse_transport(query, accept, allowed, &t, &why),
                     APR_SUCCESS);
    ck_assert_ptr_null(why);
    return t;
}

START_TEST(transport_from_the_query_else_the_accept_header_else_longpoll)
{
    ck_assert_int_eq(transport_of(NULL, NULL, COMET_T_ALL), COMET_T_LONGPOLL);
    ck_assert_int_eq(transport_of(NULL, "*/*", COMET_T_ALL),
                     COMET_T_LONGPOLL);
    ck_assert_int_eq(transport_of(NULL, "text/event-stream", COMET_T_ALL),
                     COMET_T_SSE);
    ck_assert_int_eq(transport_of(NULL, "Text/Event-Stream;q=1",
                                  COMET_T_ALL), COMET_T_SSE);
    ck_assert_int_eq(transport_of(NULL, "application/x-ndjson",
                                  COMET_T_ALL), COMET_T_STREAM);
    ck_assert_int_eq(transport_of(NULL, "application/json, "
                                  "APPLICATION/X-NDJSON", COMET_T_ALL),
                     COMET_T_STREAM);
    /* SSE wins when both are acceptable. */
    ck_assert_int_eq(transport_of(NULL, "application/x-ndjson, "
                                  "text/event-stream", COMET_T_ALL),
                     COMET_T_SSE);
    /* The query argument wins over the header. */
    ck_assert_int_eq(transport_of("stream", "text/event-stream",
                                  COMET_T_ALL), COMET_T_STREAM);
    ck_assert_int_eq(transport_of("LongPoll", "text/event-stream",
                                  COMET_T_ALL), COMET_T_LONGPOLL);
    ck_assert_int_eq(transport_of("eventsource", NULL, COMET_T_SSE),
                     COMET_T_SSE);
    ck_assert_int_eq(transport_of("websocket", NULL, COMET_T_ALL),
                     COMET_T_WS);
    ck_assert_int_eq(transport_of("WS", NULL, COMET_T_WS), COMET_T_WS);
}
END_TEST

START_TEST(transport_unknown_or_not_allowed_is_refused_with_a_reason)
{
    const char *why = NULL;
    int t = 99;

    ck_assert_int_eq(comet_parse_transport("carrier-pigeon", NULL,
                                           COMET_T_ALL, &t, &why),
                     APR_EINVAL);
    ck_assert_str_eq(why, "unknown transport (use sse, longpoll, stream or "
                     "websocket)");
    why = NULL;
    ck_assert_int_eq(comet_parse_transport("", "text/event-stream",
                                           COMET_T_ALL, &t, &why),
                     APR_EINVAL);
    ck_assert_ptr_nonnull(why);
    why = NULL;
    ck_assert_int_eq(comet_parse_transport("sse", NULL, COMET_T_LONGPOLL,
                                           &t, &why), APR_EACCES);
    ck_assert_str_eq(why, "transport not allowed here (CometTransports)");
    why = NULL;
    /* The default, long-poll, is refused too where it is not allowed. */
    ck_assert_int_eq(comet_parse_transport(NULL, NULL,
                                           COMET_T_SSE | COMET_T_STREAM,
                                           &t, &why), APR_EACCES);
    ck_assert_int_eq(comet_parse_transport(NULL, "text/event-stream",
                                           COMET_T_STREAM, &t, &why),
                     APR_EACCES);
    ck_assert_int_eq(t, 99);
}
END_TEST

/* ---- channel lists ------------------------------------------------------------- */

static apr_status_t channels(const char *spec, int max, apr_size_t maxlen,
                             const char ***ids, int *n, const char **why)
{
    *ids = NULL;
    *n = -1;
    *why = NULL;
    return comet_parse_channels(comet_test_pool, spec, max, maxlen, ids, n,
                                why);
}

START_TEST(channels_split_at_commas_in_order)
{
    const char **ids, *why;
    int n;

    ck_assert_int_eq(channels("room1", 64, 1024, &ids, &n, &why),
                     APR_SUCCESS);
    ck_assert_int_eq(n, 1);
    ck_assert_str_eq(ids[0], "room1");
    ck_assert_int_eq(channels("a,b/c,d:e@f~g.h_i-j", 64, 1024, &ids, &n,
                              &why), APR_SUCCESS);
    ck_assert_int_eq(n, 3);
    ck_assert_str_eq(ids[0], "a");
    ck_assert_str_eq(ids[1], "b/c");
    ck_assert_str_eq(ids[2], "d:e@f~g.h_i-j");
    /* Empty pieces are skipped. */
    ck_assert_int_eq(channels(",a,,b,", 64, 1024, &ids, &n, &why),
                     APR_SUCCESS);
    ck_assert_int_eq(n, 2);
    ck_assert_str_eq(ids[0], "a");
    ck_assert_str_eq(ids[1], "b");
    /* Case matters in ids: these are two. */
    ck_assert_int_eq(channels("Room,room", 64, 1024, &ids, &n, &why),
                     APR_SUCCESS);
    ck_assert_int_eq(n, 2);
}
END_TEST

/* The reason spec is refused for; nothing else is set. */
static const char *refused(const char *spec, int max, apr_size_t maxlen)
{
    const char **ids, *why;
    int n;

    ck_assert_int_eq(channels(spec, max, maxlen, &ids, &n, &why),
                     APR_EINVAL);
    ck_assert_ptr_null(ids);
    ck_assert_int_eq(n, -1);
    ck_assert_ptr_nonnull(why);
    return why;
}

START_TEST(channels_none_named_is_refused)
{
    const char *none = "no channel named in the request";

    ck_assert_str_eq(refused(NULL, 64, 1024), none);
    ck_assert_str_eq(refused("", 64, 1024), none);
    ck_assert_str_eq(refused(",,,", 64, 1024), none);
}
END_TEST

START_TEST(channels_invalid_ids_are_refused_with_the_rule)
{
    const char *rule = "invalid channel id (1 to 1024 bytes of A-Z a-z "
                       "0-9 - _ . ~ : @ /)";
    const char **ids, *why;
    int n;

    ck_assert_str_eq(refused("a,b c", 64, 1024), rule);
    ck_assert_str_eq(refused("a%20b", 64, 1024), rule);
    ck_assert_str_eq(refused("caf\xc3\xa9", 64, 1024), rule);
    ck_assert_str_eq(refused("a\"b", 64, 1024), rule);
    /* The length bound is the caller's (CometMaxChannelIdLength). */
    ck_assert_int_eq(channels("abcd", 64, 4, &ids, &n, &why), APR_SUCCESS);
    ck_assert_str_eq(refused("abcde", 64, 4), "invalid channel id (1 to 4 "
                     "bytes of A-Z a-z 0-9 - _ . ~ : @ /)");
}
END_TEST

START_TEST(channels_named_twice_are_refused)
{
    ck_assert_str_eq(refused("a,b,a", 64, 1024), "channel named twice");
    ck_assert_str_eq(refused("a,,a", 64, 1024), "channel named twice");
}
END_TEST

START_TEST(channels_beyond_the_limit_are_refused)
{
    const char **ids, *why;
    int n;

    ck_assert_int_eq(channels("a,b,c", 3, 1024, &ids, &n, &why),
                     APR_SUCCESS);
    ck_assert_int_eq(n, 3);
    ck_assert_str_eq(refused("a,b,c,d", 3, 1024),
                     "too many channels (at most 3)");
    /* A publisher names one channel. */
    ck_assert_str_eq(refused("a,b", 1, 1024),
                     "too many channels (at most 1)");
    /* The count is checked before the id. */
    ck_assert_str_eq(refused("a,b c", 1, 1024),
                     "too many channels (at most 1)");
}
END_TEST

Suite *test_comet_parse_suite(void)
{
    Suite *s = suite_create("comet_parse");
    TCase *tc = tcase_create("parse");

    tcase_add_checked_fixture(tc, comet_test_pool_setup,
                              comet_test_pool_teardown);
    tcase_add_test(tc, size_takes_plain_bytes_and_suffixes_in_any_case);
    tcase_add_test(tc, size_refuses_what_is_not_a_size);
    tcase_add_test(tc, size_bounds_are_inclusive_and_overflow_is_refused);
    tcase_add_test(tc, number_takes_whole_numbers_within_bounds);
    tcase_add_test(tc, number_refuses_what_is_not_a_whole_number);
    tcase_add_test(tc, transport_names_in_any_case);
    tcase_add_test(tc,
                   transport_from_the_query_else_the_accept_header_else_longpoll);
    tcase_add_test(tc,
                   transport_unknown_or_not_allowed_is_refused_with_a_reason);
    tcase_add_test(tc, channels_split_at_commas_in_order);
    tcase_add_test(tc, channels_none_named_is_refused);
    tcase_add_test(tc, channels_invalid_ids_are_refused_with_the_rule);
    tcase_add_test(tc, channels_named_twice_are_refused);
    tcase_add_test(tc, channels_beyond_the_limit_are_refused);
    suite_add_tcase(s, tc);
    return s;
}
