/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <apr_strings.h>

#include "unit_common.h"
#include "comet_buf.h"
#include "comet_resp_reply.h"

/* ---- helpers ------------------------------------------------------------ */

/* A reply in one canonical line, for comparisons:
 *   +s  -e  :i  _  ,d  #t  (big  $s  =fmt:s  !e
 *   *[..]  %{k v ..}  ~<..>  >(..)   elements separated by spaces.
 * Strings are shown through comet_test_show (so NULs and CRs are visible),
 * and their NUL terminator is checked on the way. */
static void dump(comet_buf_t *out, const comet_resp_reply_t *n)
{
    const comet_resp_reply_t *c;
    apr_size_t i;
    const char *open = "", *close = "";

    switch (n->type) {
    case COMET_REPLY_STRING:
    case COMET_REPLY_ERROR:
        ck_assert_int_eq(n->str[n->len], '\0');
        if (n->flags & COMET_REPLY_F_VERBATIM) {
            comet_buf_printf(out, "=%s:", n->format);
        }
        else if (n->flags & COMET_REPLY_F_SIMPLE) {
            comet_buf_putc(out, n->type == COMET_REPLY_ERROR ? '-' : '+');
        }
        else {
            comet_buf_putc(out, n->type == COMET_REPLY_ERROR ? '!' : '$');
        }
        comet_buf_puts(out, comet_test_show(n->str, n->len));
        ck_assert_uint_eq(n->span, 1);
        return;
    case COMET_REPLY_INTEGER:
        comet_buf_printf(out, ":%" APR_INT64_T_FMT, n->integer);
        return;
    case COMET_REPLY_NIL:
        comet_buf_putc(out, '_');
        return;
    case COMET_REPLY_DOUBLE:
        ck_assert_int_eq(n->str[n->len], '\0');
        comet_buf_printf(out, ",%s=%g", n->str, n->dval);
        return;
    case COMET_REPLY_BOOL:
        comet_buf_puts(out, n->integer ? "#t" : "#f");
        return;
    case COMET_REPLY_BIGNUM:
        comet_buf_printf(out, "(%s", n->str);
        return;
    case COMET_REPLY_ARRAY: open = "*["; close = "]"; break;
    case COMET_REPLY_MAP:   open = "%{"; close = "}"; break;
    case COMET_REPLY_SET:   open = "~<"; close = ">"; break;
    case COMET_REPLY_PUSH:  open = ">("; close = ")"; break;
    default:
        ck_abort_msg("unknown node type %d", n->type);
    }
    comet_buf_puts(out, open);
    c = n + 1;
    for (i = 0; i < n->elements; i++) {
        if (i) {
            comet_buf_putc(out, ' ');
        }
        ck_assert_ptr_eq(c, comet_resp_reply_child(n, i));
        dump(out, c);
        c = comet_resp_reply_next(c);
    }
    ck_assert_ptr_eq(c, n + n->span);
    comet_buf_puts(out, close);
}

/* A caller as the Redis client is: the unconsumed bytes at the front of
 * its buffer, consumed ones dropped by moving the rest down (so the parser
 * sees its bytes move between calls).  Each reply is dumped as a line. */
typedef struct feeder_t {
    comet_resp_reply_parser_t *parser;
    char                      *buf;
    apr_size_t                 cap;
    apr_size_t                 len;
    comet_buf_t               *out;
    int                        count;
    apr_size_t                 last_len;    /* of the last reply's str */
    apr_status_t               last;
} feeder_t;

static feeder_t *feeder_new(const comet_resp_reply_limits_t *limits,
                            apr_size_t cap)
{
    feeder_t *f = apr_pcalloc(comet_test_pool, sizeof(*f));

    ck_assert_int_eq(comet_resp_reply_parser_create(&f->parser, limits,
                                                    comet_test_pool),
                     APR_SUCCESS);
    f->buf = malloc(cap);
    f->cap = cap;
    ck_assert_int_eq(comet_buf_create(&f->out, comet_test_pool, 0, 1 << 24),
                     APR_SUCCESS);
    return f;
}

static apr_status_t feed(feeder_t *f, const char *bytes, apr_size_t n)
{
    const comet_resp_reply_t *reply;
    apr_size_t used;
    apr_status_t rv;

    ck_assert_uint_le(f->len + n, f->cap);
    memcpy(f->buf + f->len, bytes, n);
    f->len += n;
    for (;;) {
        rv = comet_resp_reply_parse(f->parser, f->buf, f->len, &used, &reply);
        if (rv != APR_SUCCESS) {
            ck_assert_uint_eq(used, 0);
            break;
        }
        ck_assert_uint_ge(used, 3);
        ck_assert_uint_le(used, f->len);
        dump(f->out, reply);
        f->last_len = reply->len;
        comet_buf_putc(f->out, '\n');
        f->count++;
        memmove(f->buf, f->buf + used, f->len - used);
        f->len -= used;
    }
    f->last = rv;
    return rv;
}

#define FEEDS(f, lit) feed((f), (lit), sizeof(lit) - 1)

static void feeder_free(feeder_t *f)
{
    free(f->buf);
}

static void assert_dump(feeder_t *f, const char *want, int line)
{
    ck_assert_msg(f->out->len == strlen(want)
                  && memcmp(f->out->data, want, f->out->len) == 0,
                  "line %d: got\n%.*s\nwant\n%s", line, (int)f->out->len,
                  f->out->data, want);
}

#define ASSERT_DUMP(f, want) assert_dump((f), (want), __LINE__)

/* One of every type, RESP2 and RESP3, and nestings of them: the input and
 * the dump it must give.  Reused by the split tests. */
static const char every_type[] =
    "+OK\r\n"
    "-ERR unknown command 'FOO'\r\n"
    ":0\r\n"
    ":-9223372036854775808\r\n"
    ":9223372036854775807\r\n"
    "$5\r\nhello\r\n"
    "$0\r\n\r\n"
    "$4\r\na\r\nb\r\n"
    "$-1\r\n"
    "*-1\r\n"
    "*0\r\n"
    "*3\r\n:1\r\n$3\r\nfoo\r\n*2\r\n+a\r\n*1\r\n_\r\n"
    "_\r\n"
    ",3.25\r\n"
    ",-inf\r\n"
    ",1e+300\r\n"
    "#t\r\n"
    "#f\r\n"
    "(3492890328409238509324850943850943825024385\r\n"
    "!21\r\nSYNTAX invalid syntax\r\n"
    "=15\r\ntxt:Some string\r\n"
    "%2\r\n+first\r\n:1\r\n$6\r\nsecond\r\n%1\r\n+x\r\n~2\r\n:1\r\n:2\r\n"
    "~0\r\n"
    ">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$3\r\nmsg\r\n"
    "|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*2\r\n:2039\r\n:9\r\n"
    "*2\r\n|1\r\n+ttl\r\n:3600\r\n+v\r\n|0\r\n:7\r\n";

static const char every_type_dump[] =
    "+OK\n"
    "-ERR unknown command 'FOO'\n"
    ":0\n"
    ":-9223372036854775808\n"
    ":9223372036854775807\n"
    "$hello\n"
    "$\n"
    "$a\\x0d\\x0ab\n"
    "_\n"
    "_\n"
    "*[]\n"
    "*[:1 $foo *[+a *[_]]]\n"
    "_\n"
    ",3.25=3.25\n"
    ",-inf=-inf\n"
    ",1e+300=1e+300\n"
    "#t\n"
    "#f\n"
    "(3492890328409238509324850943850943825024385\n"
    "!SYNTAX invalid syntax\n"
    "=txt:Some string\n"
    "%{+first :1 $second %{+x ~<:1 :2>}}\n"
    "~<>\n"
    ">($message $ch $msg)\n"
    "*[:2039 :9]\n"
    "*[+v :7]\n";

/* ---- types -------------------------------------------------------------- */

START_TEST(every_resp2_and_resp3_type_parses_into_its_tree)
{
    feeder_t *f = feeder_new(NULL, 4096);

    ck_assert_int_eq(feed(f, every_type, sizeof(every_type) - 1),
                     APR_INCOMPLETE);
    ASSERT_DUMP(f, every_type_dump);
    ck_assert_uint_eq(f->len, 0);
    feeder_free(f);
}
END_TEST

START_TEST(any_split_into_two_reads_gives_the_same_replies)
{
    apr_size_t total = sizeof(every_type) - 1, at;

    for (at = 0; at <= total; at++) {
        feeder_t *f = feeder_new(NULL, 4096);

        feed(f, every_type, at);
        ck_assert_msg(f->last == APR_INCOMPLETE, "split %lu: %s",
                      (unsigned long)at,
                      comet_resp_reply_error(f->parser));
        feed(f, every_type + at, total - at);
        ck_assert_int_eq(f->last, APR_INCOMPLETE);
        ASSERT_DUMP(f, every_type_dump);
        feeder_free(f);
    }
}
END_TEST

START_TEST(any_split_into_three_reads_gives_the_same_replies)
{
    apr_size_t total = sizeof(every_type) - 1, a, b;

    /* Every pair of split points inside a window, to exercise a parser
     * state entered in one call and left two calls later. */
    for (a = 0; a <= total; a += 7) {
        for (b = a; b <= total && b < a + 40; b++) {
            feeder_t *f = feeder_new(NULL, 4096);

            feed(f, every_type, a);
            feed(f, every_type + a, b - a);
            feed(f, every_type + b, total - b);
            ck_assert_int_eq(f->last, APR_INCOMPLETE);
            ASSERT_DUMP(f, every_type_dump);
            feeder_free(f);
        }
    }
}
END_TEST

START_TEST(byte_by_byte_feeding_gives_the_same_replies)
{
    feeder_t *f = feeder_new(NULL, 4096);
    apr_size_t i;

    for (i = 0; i < sizeof(every_type) - 1; i++) {
        ck_assert_int_eq(feed(f, every_type + i, 1), APR_INCOMPLETE);
    }
    ASSERT_DUMP(f, every_type_dump);
    feeder_free(f);
}
END_TEST

START_TEST(attributes_are_dropped_wherever_they_stand)
{
    feeder_t *f = feeder_new(NULL, 1024);

    /* An attribute of an attribute's value, then the reply. */
    FEEDS(f, "|1\r\n+a\r\n|1\r\n+b\r\n:1\r\n:2\r\n:3\r\n");
    FEEDS(f, "*3\r\n:1\r\n|2\r\n+k\r\n*1\r\n:9\r\n+l\r\n_\r\n:2\r\n:3\r\n");
    FEEDS(f, "%1\r\n|1\r\n+m\r\n+n\r\n+key\r\n+value\r\n");
    ck_assert_int_eq(f->last, APR_INCOMPLETE);
    ASSERT_DUMP(f, ":3\n*[:1 :2 :3]\n%{+key +value}\n");
    feeder_free(f);
}
END_TEST

START_TEST(strings_are_nul_terminated_in_place)
{
    feeder_t *f = feeder_new(NULL, 64);
    const comet_resp_reply_t *r;
    apr_size_t used;
    char buf[] = "*2\r\n$3\r\nabc\r\n+de\r\n";

    ck_assert_int_eq(comet_resp_reply_parse(f->parser, buf, strlen(buf),
                                            &used, &r), APR_SUCCESS);
    ck_assert_uint_eq(used, strlen("*2\r\n$3\r\nabc\r\n+de\r\n"));
    ck_assert_ptr_eq(r[1].str, buf + 8);
    ck_assert_str_eq(r[1].str, "abc");
    ck_assert_str_eq(r[2].str, "de");
    feeder_free(f);
}
END_TEST

START_TEST(walkers_find_children_and_map_values)
{
    feeder_t *f = feeder_new(NULL, 1024);
    const comet_resp_reply_t *r, *v;
    apr_size_t used;
    char map3[] = "%3\r\n+server\r\n+redis\r\n+proto\r\n:3\r\n"
                  "+modules\r\n*1\r\n*2\r\n+a\r\n+b\r\n";
    char map2[] = "*4\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:2\r\n";

    ck_assert_int_eq(comet_resp_reply_parse(f->parser, map3, strlen(map3),
                                            &used, &r), APR_SUCCESS);
    ck_assert_int_eq(r->type, COMET_REPLY_MAP);
    ck_assert_uint_eq(r->elements, 6);
    v = comet_resp_reply_get(r, "proto");
    ck_assert_ptr_nonnull(v);
    ck_assert_int_eq(v->integer, 3);
    v = comet_resp_reply_get(r, "modules");
    ck_assert_ptr_nonnull(v);
    ck_assert(comet_resp_reply_is(comet_resp_reply_child(
        comet_resp_reply_child(v, 0), 1), "B", 1));
    ck_assert(!comet_resp_reply_is(comet_resp_reply_child(
        comet_resp_reply_child(v, 0), 1), "B", 0));
    ck_assert_ptr_null(comet_resp_reply_get(r, "nope"));
    ck_assert_ptr_null(comet_resp_reply_child(r, 6));
    ck_assert_ptr_null(comet_resp_reply_child(v + 3, 0));

    ck_assert_int_eq(comet_resp_reply_parse(f->parser, map2, strlen(map2),
                                            &used, &r), APR_SUCCESS);
    v = comet_resp_reply_get(r, "proto");
    ck_assert_ptr_nonnull(v);
    ck_assert_int_eq(v->integer, 2);
    ck_assert(comet_resp_reply_is(comet_resp_reply_get(r, "server"),
                                  "redis", 0));
    feeder_free(f);
}
END_TEST

/* ---- cost --------------------------------------------------------------- */

START_TEST(large_bulk_and_line_fed_byte_by_byte_complete)
{
    const apr_size_t size = 128 * 1024;
    comet_resp_reply_limits_t lim;
    char *payload = malloc(size + 64);
    feeder_t *f;
    apr_size_t i;
    int n;

    /* Each call looks only at the new byte: quadratic rescanning would
     * take minutes here, not milliseconds. */
    comet_resp_reply_limits_default(&lim);
    lim.max_line = size;
    f = feeder_new(&lim, 2 * size + 128);
    n = sprintf(payload, "$%lu\r\n", (unsigned long)size);
    ck_assert_int_eq(feed(f, payload, (apr_size_t)n), APR_INCOMPLETE);
    for (i = 0; i < size; i++) {
        char c = (char)('a' + i % 26);

        ck_assert_int_eq(feed(f, &c, 1), APR_INCOMPLETE);
    }
    feed(f, "\r\n+", 3);
    ck_assert_int_eq(f->count, 1);
    ck_assert_uint_eq(f->last_len, size);
    for (i = 0; i < size - 2; i++) {
        ck_assert_int_eq(feed(f, "x", 1), APR_INCOMPLETE);
    }
    ck_assert_int_eq(f->count, 1);
    feed(f, "\r\n", 2);
    ck_assert_int_eq(f->count, 2);
    ck_assert_uint_eq(f->last_len, size - 2);
    feeder_free(f);
    free(payload);
}
END_TEST

START_TEST(large_array_fed_in_small_pieces_completes)
{
    comet_buf_t *in;
    feeder_t *f = feeder_new(NULL, 1 << 20);
    apr_size_t i;
    const comet_resp_reply_t *r;
    apr_size_t used;

    ck_assert_int_eq(comet_buf_create(&in, comet_test_pool, 0, 1 << 20),
                     APR_SUCCESS);
    comet_buf_printf(in, "*20000\r\n");
    for (i = 0; i < 20000; i++) {
        comet_buf_printf(in, ":%lu\r\n", (unsigned long)i);
    }
    for (i = 0; i < in->len; i += 5) {
        feed(f, in->data + i, in->len - i < 5 ? in->len - i : 5);
    }
    ck_assert_int_eq(f->count, 1);
    ck_assert_int_eq(f->last, APR_INCOMPLETE);

    /* The same bytes at once: the tree has every element in order. */
    ck_assert_int_eq(comet_resp_reply_parse(f->parser, in->data, in->len,
                                            &used, &r), APR_SUCCESS);
    ck_assert_uint_eq(used, in->len);
    ck_assert_uint_eq(r->elements, 20000);
    ck_assert_uint_eq(r->span, 20001);
    for (i = 0; i < 20000; i++) {
        ck_assert_int_eq(r[1 + i].integer, (apr_int64_t)i);
    }
    feeder_free(f);
}
END_TEST

/* ---- bounds and errors -------------------------------------------------- */

static apr_status_t parse_once(const comet_resp_reply_limits_t *lim,
                               const char *text, char *err, apr_size_t errlen)
{
    feeder_t *f = feeder_new(lim, 4096);
    apr_status_t rv = feed(f, text, strlen(text));

    apr_cpystrn(err, comet_resp_reply_error(f->parser), errlen);
    feeder_free(f);
    return rv;
}

START_TEST(malformed_replies_are_protocol_errors)
{
    static const char *bad[] = {
        "?\r\n", "\r\n", "+ok\n", ":12a\r\n", ":\r\n",
        ":99999999999999999999\r\n", ":-9223372036854775809\r\n",
        "$-2\r\n", "$x\r\n", "$3\r\nabcd\r\n", "$3\r\nabc\n\n",
        "*-2\r\n", "*a\r\n", "%-1\r\n", "!-1\r\n", "=2\r\nab\r\n",
        "=5\r\ntxtxx\r\n", "#x\r\n", "#tt\r\n", "_x\r\n", ",\r\n",
        ",1.5x\r\n", "(12a\r\n", "(\r\n", "$?\r\n", "*?\r\n", "~?\r\n",
        ";4\r\n", ".\r\n", "*2\r\n:1\r\n?\r\n",
    };
    char err[128];
    apr_size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        apr_status_t rv = parse_once(NULL, bad[i], err, sizeof(err));

        ck_assert_msg(rv == COMET_EPROTO, "\"%s\": got %d (%s)",
                      comet_test_show(bad[i], strlen(bad[i])), rv, err);
        ck_assert_msg(strncmp(err, "Protocol error: ", 16) == 0, "%s", err);
    }
}
END_TEST

START_TEST(limits_are_checked_on_the_header_before_the_payload)
{
    comet_resp_reply_limits_t lim;
    char err[128];

    comet_resp_reply_limits_default(&lim);
    lim.max_bulk = 100;
    lim.max_elements = 10;
    lim.max_depth = 3;
    lim.max_line = 8;

    /* No payload follows: refused on the header alone. */
    ck_assert_int_eq(parse_once(&lim, "$101\r\n", err, sizeof(err)),
                     COMET_ETOOBIG);
    ck_assert_str_eq(err, "reply string longer than 100 bytes");
    ck_assert_int_eq(parse_once(&lim, "!101\r\n", err, sizeof(err)),
                     COMET_ETOOBIG);
    ck_assert_int_eq(parse_once(&lim, "$100\r\n", err, sizeof(err)),
                     APR_INCOMPLETE);
    ck_assert_int_eq(parse_once(&lim, "*10\r\n", err, sizeof(err)),
                     COMET_ETOOBIG);
    ck_assert_str_eq(err, "reply has more than 10 elements");
    ck_assert_int_eq(parse_once(&lim, "*9\r\n", err, sizeof(err)),
                     APR_INCOMPLETE);
    ck_assert_int_eq(parse_once(&lim, "%5\r\n", err, sizeof(err)),
                     COMET_ETOOBIG);
    /* Declared counts add up across levels. */
    ck_assert_int_eq(parse_once(&lim, "*3\r\n*3\r\n*3\r\n", err, sizeof(err)),
                     APR_INCOMPLETE);
    ck_assert_int_eq(parse_once(&lim, "*3\r\n*3\r\n*4\r\n", err, sizeof(err)),
                     COMET_ETOOBIG);
    ck_assert_int_eq(parse_once(&lim, "*1\r\n*1\r\n*1\r\n", err, sizeof(err)),
                     APR_INCOMPLETE);
    ck_assert_int_eq(parse_once(&lim, "*1\r\n*1\r\n*1\r\n*1\r\n", err,
                                sizeof(err)), COMET_ETOOBIG);
    ck_assert_str_eq(err, "reply nested deeper than 3 levels");
    ck_assert_int_eq(parse_once(&lim, "*1\r\n*1\r\n*1\r\n*0\r\n", err,
                                sizeof(err)), APR_INCOMPLETE);
    /* A line too long is refused before its end comes. */
    ck_assert_int_eq(parse_once(&lim, "+123456789", err, sizeof(err)),
                     COMET_ETOOBIG);
    ck_assert_int_eq(parse_once(&lim, "+12345678", err, sizeof(err)),
                     APR_INCOMPLETE);
    ck_assert_int_eq(parse_once(&lim, "+123456789\r\n", err, sizeof(err)),
                     COMET_ETOOBIG);
    ck_assert_int_eq(parse_once(&lim, "+12345678\r\n", err, sizeof(err)),
                     APR_INCOMPLETE);
}
END_TEST

START_TEST(a_reply_at_the_element_limit_parses)
{
    comet_resp_reply_limits_t lim;
    feeder_t *f;

    comet_resp_reply_limits_default(&lim);
    lim.max_elements = 4;
    f = feeder_new(&lim, 256);
    FEEDS(f, "*3\r\n:1\r\n:2\r\n:3\r\n");
    FEEDS(f, "*1\r\n*1\r\n*1\r\n:1\r\n");
    ck_assert_int_eq(f->last, APR_INCOMPLETE);
    ASSERT_DUMP(f, "*[:1 :2 :3]\n*[*[*[:1]]]\n");
    FEEDS(f, "*2\r\n*1\r\n:1\r\n*1\r\n:2\r\n");
    ck_assert_int_eq(f->last, COMET_ETOOBIG);
    feeder_free(f);
}
END_TEST

/* Found by fuzz_resp_reply: a line past max_line that ends in a bare LF
 * was a protocol error when its bytes came at once, and too big when they
 * came one by one.  The same bytes get the same answer however they come. */
START_TEST(an_overlong_line_is_refused_alike_whole_or_byte_by_byte)
{
    static const char text[] = ",3.1\xc3\xf2\n,inf\r\n";
    comet_resp_reply_limits_t lim;
    feeder_t *whole, *bytes;
    apr_size_t i;

    comet_resp_reply_limits_default(&lim);
    lim.max_line = 1;
    whole = feeder_new(&lim, 64);
    bytes = feeder_new(&lim, 64);
    ck_assert_int_eq(FEEDS(whole, text), COMET_ETOOBIG);
    for (i = 0; i < sizeof(text) - 1; i++) {
        if (feed(bytes, text + i, 1) != APR_INCOMPLETE) {
            break;
        }
    }
    ck_assert_int_eq(bytes->last, COMET_ETOOBIG);
    ck_assert_str_eq(comet_resp_reply_error(whole->parser),
                     comet_resp_reply_error(bytes->parser));
    feeder_free(whole);
    feeder_free(bytes);
}
END_TEST

START_TEST(errors_are_sticky_until_reset)
{
    feeder_t *f = feeder_new(NULL, 256);

    ck_assert_int_eq(feed(f, "@\r\n", 3), COMET_EPROTO);
    ck_assert_str_eq(comet_resp_reply_error(f->parser),
                     "Protocol error: unknown reply type '@'");
    f->len = 0;
    ck_assert_int_eq(feed(f, "+OK\r\n", 5), COMET_EPROTO);
    comet_resp_reply_reset(f->parser);
    ck_assert_str_eq(comet_resp_reply_error(f->parser), "");
    f->len = 0;
    ck_assert_int_eq(feed(f, "+OK\r\n", 5), APR_INCOMPLETE);
    ASSERT_DUMP(f, "+OK\n");
    feeder_free(f);
}
END_TEST

START_TEST(reset_forgets_a_reply_in_progress)
{
    feeder_t *f = feeder_new(NULL, 256);

    feed(f, "*2\r\n$5\r\nab", 10);
    comet_resp_reply_reset(f->parser);
    f->len = 0;
    feed(f, ":1\r\n", 4);
    ASSERT_DUMP(f, ":1\n");
    feeder_free(f);
}
END_TEST

START_TEST(fewer_bytes_than_already_shown_is_refused)
{
    feeder_t *f = feeder_new(NULL, 256);
    const comet_resp_reply_t *r;
    apr_size_t used;

    feed(f, "*2\r\n:1\r\n", 8);
    ck_assert_int_eq(comet_resp_reply_parse(f->parser, f->buf, 3, &used, &r),
                     APR_EINVAL);
    feeder_free(f);
}
END_TEST

START_TEST(bad_limits_are_refused)
{
    comet_resp_reply_limits_t lim;
    comet_resp_reply_parser_t *p;

    comet_resp_reply_limits_default(&lim);
    lim.max_depth = 0;
    ck_assert_int_eq(comet_resp_reply_parser_create(&p, &lim,
                                                    comet_test_pool),
                     APR_EINVAL);
    comet_resp_reply_limits_default(&lim);
    lim.max_elements = 0;
    ck_assert_int_eq(comet_resp_reply_parser_create(&p, &lim,
                                                    comet_test_pool),
                     APR_EINVAL);
}
END_TEST

Suite *test_comet_resp_reply_suite(void)
{
    Suite *s = suite_create("comet_resp_reply");
    TCase *tt = tcase_create("types");
    TCase *tc = tcase_create("cost");
    TCase *tb = tcase_create("bounds");

    tcase_add_checked_fixture(tt, comet_test_pool_setup,
                              comet_test_pool_teardown);
    tcase_add_test(tt, every_resp2_and_resp3_type_parses_into_its_tree);
    tcase_add_test(tt, any_split_into_two_reads_gives_the_same_replies);
    tcase_add_test(tt, any_split_into_three_reads_gives_the_same_replies);
    tcase_add_test(tt, byte_by_byte_feeding_gives_the_same_replies);
    tcase_add_test(tt, attributes_are_dropped_wherever_they_stand);
    tcase_add_test(tt, strings_are_nul_terminated_in_place);
    tcase_add_test(tt, walkers_find_children_and_map_values);
    suite_add_tcase(s, tt);

    tcase_add_checked_fixture(tc, comet_test_pool_setup,
                              comet_test_pool_teardown);
    /* Generous for sanitizer builds; a quadratic parser would need hours. */
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, large_bulk_and_line_fed_byte_by_byte_complete);
    tcase_add_test(tc, large_array_fed_in_small_pieces_completes);
    suite_add_tcase(s, tc);

    tcase_add_checked_fixture(tb, comet_test_pool_setup,
                              comet_test_pool_teardown);
    tcase_add_test(tb, malformed_replies_are_protocol_errors);
    tcase_add_test(tb, limits_are_checked_on_the_header_before_the_payload);
    tcase_add_test(tb, a_reply_at_the_element_limit_parses);
    tcase_add_test(tb, an_overlong_line_is_refused_alike_whole_or_byte_by_byte);
    tcase_add_test(tb, errors_are_sticky_until_reset);
    tcase_add_test(tb, reset_forgets_a_reply_in_progress);
    tcase_add_test(tb, fewer_bytes_than_already_shown_is_refused);
    tcase_add_test(tb, bad_limits_are_refused);
    suite_add_tcase(s, tb);
    return s;
}
