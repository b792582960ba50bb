/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unit_common.h"
#include "comet_resp.h"

/* ---- helpers ------------------------------------------------------------ */


static void assert_bytes(const char *got, apr_size_t got_len,
                         const char *want, apr_size_t want_len, int line)
{
    ck_assert_msg(got_len == want_len && memcmp(got, want, want_len) == 0,
                  "line %d: got \"%s\" (%lu bytes), want \"%s\" (%lu bytes)",
                  line, comet_test_show(got, got_len), (unsigned long)got_len,
                  comet_test_show(want, want_len), (unsigned long)want_len);
}

#define ASSERT_BUF(b, lit) \
    assert_bytes((b)->data, (b)->len, (lit), sizeof(lit) - 1, __LINE__)

/* A caller as the publisher socket will be: a buffer the bytes are read
 * into, the parser run over the unconsumed part, consumed bytes dropped
 * by moving the rest to the front (so the parser sees its bytes move
 * between calls).  Every command is written to cmds as "[arg][arg]\n". */
typedef struct feeder_t {
    comet_resp_parser_t *parser;
    char                *buf;
    apr_size_t           cap;
    apr_size_t           len;
    comet_buf_t         *cmds;
    int                  count;
} feeder_t;

static feeder_t *feeder_new(const comet_resp_limits_t *limits,
                            apr_size_t cap)
{
    feeder_t *f = apr_pcalloc(comet_test_pool, sizeof(*f));

    ck_assert_int_eq(comet_resp_parser_create(&f->parser, limits,
                                              comet_test_pool), APR_SUCCESS);
    f->buf = apr_palloc(comet_test_pool, cap);
    f->cap = cap;
    ck_assert_int_eq(comet_buf_create(&f->cmds, comet_test_pool, 0, 1 << 22),
                     APR_SUCCESS);
    return f;
}

static apr_status_t feed(feeder_t *f, const char *bytes, apr_size_t n)
{
    apr_status_t rv;
    apr_size_t used, i;
    comet_resp_cmd_t cmd;

    ck_assert_uint_le(f->len + n, f->cap);
    memcpy(f->buf + f->len, bytes, n);
    f->len += n;
    for (;;) {
        rv = comet_resp_parse(f->parser, f->buf, f->len, &used, &cmd);
        if (rv == APR_SUCCESS) {
            ck_assert_uint_ge(cmd.argc, 1);
            for (i = 0; i < cmd.argc; i++) {
                ck_assert_int_eq(cmd.argv[i][cmd.argv_len[i]], '\0');
                comet_buf_putc(f->cmds, '[');
                comet_buf_append(f->cmds, cmd.argv[i], cmd.argv_len[i]);
                comet_buf_putc(f->cmds, ']');
            }
            comet_buf_putc(f->cmds, '\n');
            f->count++;
        }
        else if (rv != APR_INCOMPLETE) {
            ck_assert_uint_eq(used, 0);
        }
        ck_assert_uint_le(used, f->len);
        memmove(f->buf, f->buf + used, f->len - used);
        f->len -= used;
        if (rv != APR_SUCCESS) {
            return rv;
        }
    }
}

static apr_status_t feed_str(feeder_t *f, const char *s)
{
    return feed(f, s, strlen(s));
}

/* Input whose bytes are checked by ASSERT_CMDS below. */
#define FEED(f, lit) feed((f), (lit), sizeof(lit) - 1)
#define ASSERT_CMDS(f, lit) ASSERT_BUF((f)->cmds, lit)

#define ASSERT_PROTO_ERROR(input, text) do {                              \
        feeder_t *f_ = feeder_new(NULL, 1 << 16);                         \
        ck_assert_int_eq(FEED(f_, input), COMET_EPROTO);                  \
        ck_assert_str_eq(comet_resp_parser_error(f_->parser), (text));    \
        ck_assert_int_eq(f_->count, 0);                                   \
    } while (0)

static const char pipeline[] =
    "*3\r\n$7\r\nPUBLISH\r\n$5\r\nroom1\r\n$5\r\nhello\r\n"
    "PING\r\n"
    "*2\r\n$4\r\nECHO\r\n$0\r\n\r\n"
    "\r\n"
    "SET \"a b\" 'c'\n"
    "*0\r\n"
    "*2\r\n$4\r\nECHO\r\n$6\r\nx\r\n\0yz\r\n";

static const char pipeline_cmds[] =
    "[PUBLISH][room1][hello]\n"
    "[PING]\n"
    "[ECHO][]\n"
    "[SET][a b][c]\n"
    "[ECHO][x\r\n\0yz]\n";

/* ---- framing ------------------------------------------------------------ */

START_TEST(array_of_bulks_gives_argv)
{
    feeder_t *f = feeder_new(NULL, 4096);

    ck_assert_int_eq(FEED(f, "*3\r\n$7\r\nPUBLISH\r\n$5\r\nroom1\r\n"
                             "$5\r\nhello\r\n"), APR_INCOMPLETE);
    ASSERT_CMDS(f, "[PUBLISH][room1][hello]\n");
    ck_assert_uint_eq(f->len, 0);
}
END_TEST

START_TEST(pipelined_commands_come_out_one_by_one)
{
    feeder_t *f = feeder_new(NULL, 4096);

    ck_assert_int_eq(feed(f, pipeline, sizeof(pipeline) - 1),
                     APR_INCOMPLETE);
    ASSERT_CMDS(f, pipeline_cmds);
    ck_assert_int_eq(f->count, 5);
    ck_assert_uint_eq(f->len, 0);
}
END_TEST

START_TEST(byte_by_byte_feeding_gives_the_same_commands)
{
    feeder_t *f = feeder_new(NULL, 4096);
    apr_size_t i;

    for (i = 0; i < sizeof(pipeline) - 1; i++) {
        ck_assert_int_eq(feed(f, pipeline + i, 1), APR_INCOMPLETE);
    }
    ASSERT_CMDS(f, pipeline_cmds);
}
END_TEST

START_TEST(any_split_into_two_reads_gives_the_same_commands)
{
    apr_size_t cut;

    for (cut = 0; cut <= sizeof(pipeline) - 1; cut++) {
        feeder_t *f = feeder_new(NULL, 4096);

        ck_assert_int_eq(feed(f, pipeline, cut), APR_INCOMPLETE);
        ck_assert_int_eq(feed(f, pipeline + cut, sizeof(pipeline) - 1 - cut),
                         APR_INCOMPLETE);
        ASSERT_CMDS(f, pipeline_cmds);
    }
}
END_TEST

START_TEST(large_bulk_fed_byte_by_byte_completes)
{
    comet_resp_limits_t lim;
    feeder_t *f;
    const apr_size_t size = 256 * 1024;
    char head[64];
    char *payload = malloc(size);
    apr_size_t i;
    int n;

    comet_resp_limits_default(&lim);
    f = feeder_new(&lim, size + 128);
    for (i = 0; i < size; i++) {
        payload[i] = (char)(i * 7);
    }
    n = sprintf(head, "*2\r\n$7\r\nPUBLISH\r\n$%lu\r\n", (unsigned long)size);
    ck_assert_int_eq(feed(f, head, (apr_size_t)n), APR_INCOMPLETE);
    for (i = 0; i < size; i++) {
        ck_assert_int_eq(feed(f, payload + i, 1), APR_INCOMPLETE);
    }
    ck_assert_int_eq(f->count, 0);
    ck_assert_int_eq(feed(f, "\r\n", 2), APR_INCOMPLETE);
    ck_assert_int_eq(f->count, 1);
    ck_assert_uint_eq(f->cmds->len, 9 + 1 + size + 1 + 1);
    ck_assert_int_eq(memcmp(f->cmds->data + 10, payload, size), 0);
    free(payload);
}
END_TEST

START_TEST(blank_input_is_consumed_even_without_a_command)
{
    feeder_t *f = feeder_new(NULL, 64);
    int i;

    /* Far more blank lines than the buffer holds: each is dropped. */
    for (i = 0; i < 100; i++) {
        ck_assert_int_eq(FEED(f, "\r\n"), APR_INCOMPLETE);
        ck_assert_int_eq(FEED(f, "*0\r\n"), APR_INCOMPLETE);
        ck_assert_uint_eq(f->len, 0);
    }
    ck_assert_int_eq(FEED(f, "\n \t\r\nPI"), APR_INCOMPLETE);
    ck_assert_uint_eq(f->len, 2);
    ck_assert_int_eq(FEED(f, "NG\r\n"), APR_INCOMPLETE);
    ASSERT_CMDS(f, "[PING]\n");
}
END_TEST

/* ---- inline commands ---------------------------------------------------- */

START_TEST(inline_splits_at_whitespace)
{
    feeder_t *f = feeder_new(NULL, 4096);

    FEED(f, "  PUBLISH\troom1   hello  \r\n");
    FEED(f, "PING\n");
    FEED(f, "a\rb\n");
    ASSERT_CMDS(f, "[PUBLISH][room1][hello]\n[PING]\n[a][b]\n");
}
END_TEST

START_TEST(inline_double_and_single_quotes)
{
    feeder_t *f = feeder_new(NULL, 4096);

    ck_assert_int_eq(FEED(f, "PUBLISH \"hello world\" 'it\\'s' \"q\\\"q\" "
                             "\"\\x41\\x4a\\n\\t\\\\\\xZZ\" \"\" 'a\"b\\n' "
                             "x\"y z\"\r\n"), APR_INCOMPLETE);
    ASSERT_CMDS(f, "[PUBLISH][hello world][it's][q\"q][AJ\n\t\\xZZ][]"
                   "[a\"b\\n][xy z]\n");
}
END_TEST

START_TEST(inline_unbalanced_quotes_are_protocol_errors)
{
    ASSERT_PROTO_ERROR("SET \"abc\r\n",
                       "Protocol error: unbalanced quotes in request");
    ASSERT_PROTO_ERROR("SET \"abc\"def\r\n",
                       "Protocol error: unbalanced quotes in request");
    ASSERT_PROTO_ERROR("SET 'abc\n",
                       "Protocol error: unbalanced quotes in request");
    ASSERT_PROTO_ERROR("SET 'a'b\n",
                       "Protocol error: unbalanced quotes in request");
}
END_TEST

START_TEST(inline_line_longer_than_limit_is_refused)
{
    comet_resp_limits_t lim;
    feeder_t *f;
    char *line = malloc(70000);

    comet_resp_limits_default(&lim);
    lim.max_inline = 16;
    f = feeder_new(&lim, 4096);
    ck_assert_int_eq(FEED(f, "0123456789abcdef\r"), APR_INCOMPLETE);
    ck_assert_int_eq(FEED(f, "\n"), APR_INCOMPLETE);
    ASSERT_CMDS(f, "[0123456789abcdef]\n");
    ck_assert_int_eq(FEED(f, "0123456789abcdefg"), COMET_EPROTO);
    ck_assert_str_eq(comet_resp_parser_error(f->parser),
                     "Protocol error: too big inline request");

    /* The default: 64K, found without waiting for a newline. */
    f = feeder_new(NULL, 70000);
    memset(line, 'a', 70000);
    ck_assert_int_eq(feed(f, line, 65536), APR_INCOMPLETE);
    ck_assert_int_eq(feed(f, line, 1), COMET_EPROTO);
    free(line);
}
END_TEST

START_TEST(too_many_arguments_are_refused)
{
    comet_resp_limits_t lim;
    feeder_t *f;

    comet_resp_limits_default(&lim);
    lim.max_args = 3;
    f = feeder_new(&lim, 4096);
    ck_assert_int_eq(FEED(f, "a b c\n"), APR_INCOMPLETE);
    ck_assert_int_eq(FEED(f, "a b c d\n"), COMET_EPROTO);
    ck_assert_str_eq(comet_resp_parser_error(f->parser),
                     "Protocol error: too many arguments");

    f = feeder_new(&lim, 4096);
    ck_assert_int_eq(FEED(f, "*4\r\n"), COMET_EPROTO);
    ck_assert_str_eq(comet_resp_parser_error(f->parser),
                     "Protocol error: too many arguments");

    /* The default allows 1024. */
    f = feeder_new(NULL, 4096);
    ck_assert_int_eq(FEED(f, "*1024\r\n"), APR_INCOMPLETE);
    f = feeder_new(NULL, 4096);
    ck_assert_int_eq(FEED(f, "*1025\r\n"), COMET_EPROTO);
}
END_TEST

START_TEST(many_arguments_grow_the_argument_arrays)
{
    feeder_t *f = feeder_new(NULL, 1 << 16);
    comet_buf_t *want;
    int i;

    ck_assert_int_eq(comet_buf_create(&want, comet_test_pool, 0, 1 << 16),
                     APR_SUCCESS);
    FEED(f, "*1000\r\n");
    for (i = 0; i < 1000; i++) {
        char arg[32];

        sprintf(arg, "$%d\r\n%d\r\n", i < 10 ? 1 : i < 100 ? 2 : 3, i);
        feed_str(f, arg);
        comet_buf_printf(want, "[%d]", i);
    }
    comet_buf_putc(want, '\n');
    ck_assert_int_eq(f->count, 1);
    ck_assert_uint_eq(f->cmds->len, want->len);
    ck_assert_int_eq(memcmp(f->cmds->data, want->data, want->len), 0);
}
END_TEST

/* ---- garbage ------------------------------------------------------------ */

START_TEST(bad_lengths_are_protocol_errors)
{
    ASSERT_PROTO_ERROR("*-5\r\n", "Protocol error: invalid multibulk length");
    ASSERT_PROTO_ERROR("*-1\r\n", "Protocol error: invalid multibulk length");
    ASSERT_PROTO_ERROR("*abc\r\n", "Protocol error: invalid multibulk length");
    ASSERT_PROTO_ERROR("*\r\n", "Protocol error: invalid multibulk length");
    ASSERT_PROTO_ERROR("*1234567890123456789\r\n",
                       "Protocol error: invalid multibulk length");
    /* Refused at the first bad byte, without waiting for a CRLF. */
    ASSERT_PROTO_ERROR("*1\r\n$abc", "Protocol error: invalid bulk length");
    ASSERT_PROTO_ERROR("*1\r\n$-1\r\n", "Protocol error: invalid bulk length");
    ASSERT_PROTO_ERROR("*1\r\n$\r\n", "Protocol error: invalid bulk length");
    ASSERT_PROTO_ERROR("*1\r\n$+3\r\n", "Protocol error: invalid bulk length");
    ASSERT_PROTO_ERROR("*2\r\n:1\r\n",
                       "Protocol error: expected '$', got ':'");
    ASSERT_PROTO_ERROR("*1\r\n\x01", "Protocol error: expected '$', got '?'");
}
END_TEST

START_TEST(missing_crlf_is_a_protocol_error)
{
    ASSERT_PROTO_ERROR("*1\n", "Protocol error: invalid multibulk length");
    ASSERT_PROTO_ERROR("*1\r\r", "Protocol error: invalid multibulk length");
    ASSERT_PROTO_ERROR("*1\r\n$3\n", "Protocol error: invalid bulk length");
    ASSERT_PROTO_ERROR("*1\r\n$3\r\nabcXY",
                       "Protocol error: expected CRLF after bulk string");
    ASSERT_PROTO_ERROR("*1\r\n$3\r\nabc\rX",
                       "Protocol error: expected CRLF after bulk string");
}
END_TEST

START_TEST(bulk_larger_than_limit_is_reported_before_its_bytes)
{
    comet_resp_limits_t lim;
    feeder_t *f = feeder_new(NULL, 4096);

    ck_assert_int_eq(FEED(f, "*3\r\n$7\r\nPUBLISH\r\n$5\r\nroom1\r\n"
                             "$300000\r\n"), COMET_ETOOBIG);
    ck_assert_str_eq(comet_resp_parser_error(f->parser),
                     "message larger than maximum message size");
    /* Sticky: the caller replies and closes, whatever comes after. */
    ck_assert_int_eq(FEED(f, "abc"), COMET_ETOOBIG);
    ck_assert_int_eq(f->count, 0);

    comet_resp_limits_default(&lim);
    lim.max_bulk = 10;
    f = feeder_new(&lim, 4096);
    ck_assert_int_eq(FEED(f, "*1\r\n$10\r\n0123456789\r\n"), APR_INCOMPLETE);
    ck_assert_int_eq(FEED(f, "*1\r\n$11\r\n"), COMET_ETOOBIG);
    ASSERT_CMDS(f, "[0123456789]\n");
}
END_TEST

START_TEST(errors_are_sticky_until_reset)
{
    feeder_t *f = feeder_new(NULL, 4096);

    ck_assert_int_eq(FEED(f, "*x"), COMET_EPROTO);
    ck_assert_int_eq(FEED(f, "PING\r\n"), COMET_EPROTO);
    ck_assert_int_eq(f->count, 0);
    comet_resp_parser_reset(f->parser);
    ck_assert_str_eq(comet_resp_parser_error(f->parser), "");
    f->len = 0;
    ck_assert_int_eq(FEED(f, "PING\r\n"), APR_INCOMPLETE);
    ASSERT_CMDS(f, "[PING]\n");
}
END_TEST

START_TEST(bad_limits_are_refused)
{
    comet_resp_limits_t lim;
    comet_resp_parser_t *p;

    comet_resp_limits_default(&lim);
    lim.max_args = 0;
    ck_assert_int_eq(comet_resp_parser_create(&p, &lim, comet_test_pool),
                     APR_EINVAL);
}
END_TEST

/* ---- replies ------------------------------------------------------------ */

START_TEST(replies_have_exact_bytes)
{
    comet_buf_t *b;

    ck_assert_int_eq(comet_buf_create(&b, comet_test_pool, 0, 4096),
                     APR_SUCCESS);
    comet_resp_simple(b, "OK", 2);
    comet_resp_error(b, "ERR unknown command", 19);
    comet_resp_integer(b, 0);
    comet_resp_integer(b, -1);
    comet_resp_integer(b, 42);
    comet_resp_bulk(b, "hello", 5);
    comet_resp_bulk(b, "", 0);
    comet_resp_bulk(b, "\r\n\0", 3);
    comet_resp_array(b, 0);
    comet_resp_array(b, 3);
    ASSERT_BUF(b, "+OK\r\n-ERR unknown command\r\n:0\r\n:-1\r\n:42\r\n"
                  "$5\r\nhello\r\n$0\r\n\r\n$3\r\n\r\n\0\r\n*0\r\n*3\r\n");

    comet_buf_truncate(b, 0);
    comet_resp_integer(b, APR_INT64_MAX);
    comet_resp_integer(b, APR_INT64_MIN);
    ASSERT_BUF(b, ":9223372036854775807\r\n:-9223372036854775808\r\n");
}
END_TEST

START_TEST(resp2_and_resp3_differ_in_null_map_and_push)
{
    comet_buf_t *b;

    ck_assert_int_eq(comet_buf_create(&b, comet_test_pool, 0, 4096),
                     APR_SUCCESS);
    comet_resp_null(b, COMET_RESP2);
    comet_resp_map(b, COMET_RESP2, 3);
    comet_resp_push(b, COMET_RESP2, 3);
    ASSERT_BUF(b, "$-1\r\n*6\r\n*3\r\n");

    comet_buf_truncate(b, 0);
    comet_resp_null(b, COMET_RESP3);
    comet_resp_map(b, COMET_RESP3, 3);
    comet_resp_push(b, COMET_RESP3, 3);
    ASSERT_BUF(b, "_\r\n%3\r\n>3\r\n");
}
END_TEST

START_TEST(simple_strings_and_errors_stay_on_one_line)
{
    comet_buf_t *b;

    ck_assert_int_eq(comet_buf_create(&b, comet_test_pool, 0, 4096),
                     APR_SUCCESS);
    comet_resp_simple(b, "a\r\nb", 4);
    comet_resp_errorf(b, "ERR unknown command '%s'", "x\ny");
    ASSERT_BUF(b, "+a  b\r\n-ERR unknown command 'x y'\r\n");
}
END_TEST

START_TEST(long_error_text_is_cut_not_refused)
{
    comet_buf_t *b;
    char text[1000];

    memset(text, 'e', sizeof(text) - 1);
    text[sizeof(text) - 1] = '\0';
    ck_assert_int_eq(comet_buf_create(&b, comet_test_pool, 0, 4096),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_resp_errorf(b, "ERR %s", text), APR_SUCCESS);
    ck_assert_uint_eq(b->len, 1 + 511 + 2);
    ck_assert_int_eq(memcmp(b->data + b->len - 2, "\r\n", 2), 0);
}
END_TEST

START_TEST(reply_that_does_not_fit_writes_nothing)
{
    comet_buf_t b;
    char mem[10];

    comet_buf_wrap(&b, mem, sizeof(mem));
    ck_assert_int_eq(comet_resp_simple(&b, "OK", 2), APR_SUCCESS);
    ck_assert_int_eq(comet_resp_bulk(&b, "hi", 2), APR_ENOSPC);
    ck_assert_uint_eq(b.len, 5);
    ck_assert_int_eq(comet_resp_error(&b, "ERR x", 5), APR_ENOSPC);
    ck_assert_uint_eq(b.len, 5);
}
END_TEST

Suite *test_comet_resp_suite(void)
{
    Suite *s = suite_create("comet_resp");
    TCase *tc = tcase_create("parser");
    TCase *tr = tcase_create("replies");

    tcase_add_checked_fixture(tc, comet_test_pool_setup,
                              comet_test_pool_teardown);
    /* A 256 KB bulk fed one byte a call is 262,000 parser calls: a
     * fraction of a second alone, more than Check's 4 s of wall time
     * when the machine is busy with other work. */
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, array_of_bulks_gives_argv);
    tcase_add_test(tc, pipelined_commands_come_out_one_by_one);
    tcase_add_test(tc, byte_by_byte_feeding_gives_the_same_commands);
    tcase_add_test(tc, any_split_into_two_reads_gives_the_same_commands);
    tcase_add_test(tc, large_bulk_fed_byte_by_byte_completes);
    tcase_add_test(tc, blank_input_is_consumed_even_without_a_command);
    tcase_add_test(tc, inline_splits_at_whitespace);
    tcase_add_test(tc, inline_double_and_single_quotes);
    tcase_add_test(tc, inline_unbalanced_quotes_are_protocol_errors);
    tcase_add_test(tc, inline_line_longer_than_limit_is_refused);
    tcase_add_test(tc, too_many_arguments_are_refused);
    tcase_add_test(tc, many_arguments_grow_the_argument_arrays);
    tcase_add_test(tc, bad_lengths_are_protocol_errors);
    tcase_add_test(tc, missing_crlf_is_a_protocol_error);
    tcase_add_test(tc, bulk_larger_than_limit_is_reported_before_its_bytes);
    tcase_add_test(tc, errors_are_sticky_until_reset);
    tcase_add_test(tc, bad_limits_are_refused);
    suite_add_tcase(s, tc);

    tcase_add_checked_fixture(tr, comet_test_pool_setup,
                              comet_test_pool_teardown);
    tcase_add_test(tr, replies_have_exact_bytes);
    tcase_add_test(tr, resp2_and_resp3_differ_in_null_map_and_push);
    tcase_add_test(tr, simple_strings_and_errors_stay_on_one_line);
    tcase_add_test(tr, long_error_text_is_cut_not_refused);
    tcase_add_test(tr, reply_that_does_not_fit_writes_nothing);
    suite_add_tcase(s, tr);
    return s;
}
