/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <apr_strings.h>

#include "unit_common.h"
#include "comet_ws.h"

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

static comet_buf_t *new_buf(apr_size_t max)
{
    comet_buf_t *b;

    ck_assert_int_eq(comet_buf_create(&b, comet_test_pool, 0, max),
                     APR_SUCCESS);
    return b;
}

/* Client frames, each with a different mask so that a parser that
 * unmasks with the wrong key or offset shows it. */
static unsigned char mask_seed;

static void cframe(comet_buf_t *s, int op, int fin, const void *data,
                   apr_size_t len)
{
    unsigned char mask[4];

    mask_seed += 0x3b;
    mask[0] = mask_seed;
    mask[1] = (unsigned char)(mask_seed * 7 + 1);
    mask[2] = (unsigned char)(mask_seed ^ 0xa5);
    mask[3] = (unsigned char)(mask_seed + 0x80);
    ck_assert_int_eq(comet_ws_frame_client(s, op, fin, 0, mask, data, len),
                     APR_SUCCESS);
}

#define CFRAME(s, op, fin, lit) cframe((s), (op), (fin), (lit), sizeof(lit) - 1)

/* A caller as the hub will be: a read buffer that new bytes are appended
 * to, the parser run over it until it wants more, consumed bytes dropped
 * by moving the rest to the front.  Events are written to log:
 *   T[text] B[binary] PING[..] PONG[..] CLOSE<code>[reason] ERR<code>  */
typedef struct feeder_t {
    comet_ws_parser_t *parser;
    char              *buf;
    apr_size_t         cap, len;
    comet_buf_t       *log;
    int                done;        /* error seen: feed nothing more */
    int                zero_copy;   /* messages returned from buf     */
    int                events;
} feeder_t;

static feeder_t *feeder_new(apr_size_t max_message, apr_size_t cap)
{
    feeder_t *f = apr_pcalloc(comet_test_pool, sizeof(*f));

    ck_assert_int_eq(comet_ws_parser_create(&f->parser, max_message,
                                            comet_test_pool), APR_SUCCESS);
    f->buf = apr_palloc(comet_test_pool, cap);
    f->cap = cap;
    f->log = new_buf(1 << 22);
    return f;
}

static void log_event(feeder_t *f, const comet_ws_event_t *ev)
{
    static const char *names[] = { "", "T", "B", "PING", "PONG", "CLOSE" };

    comet_buf_puts(f->log, names[ev->type]);
    if (ev->type == COMET_WS_EV_CLOSE) {
        comet_buf_printf(f->log, "%d", ev->code);
    }
    comet_buf_putc(f->log, '[');
    comet_buf_append(f->log, ev->data, ev->len);
    comet_buf_putc(f->log, ']');
}

static apr_status_t feed(feeder_t *f, const char *bytes, apr_size_t n)
{
    comet_ws_event_t ev;
    apr_size_t used;
    apr_status_t rv;
    int code;

    if (f->done) {
        return APR_EGENERAL;
    }
    ck_assert_uint_le(f->len + n, f->cap);
    memcpy(f->buf + f->len, bytes, n);
    f->len += n;
    for (;;) {
        rv = comet_ws_parse(f->parser, f->buf, f->len, &used, &ev);
        ck_assert_uint_le(used, f->len);
        if (rv == APR_SUCCESS) {
            ck_assert_uint_ge(used, 1);
            if ((ev.type == COMET_WS_EV_TEXT || ev.type == COMET_WS_EV_BINARY)
                && ev.data >= f->buf && ev.data < f->buf + f->cap) {
                f->zero_copy++;
            }
            log_event(f, &ev);
            f->events++;
        }
        else {
            ck_assert_uint_eq(used, f->len);
        }
        if (rv != APR_SUCCESS && rv != APR_INCOMPLETE && rv != APR_EOF) {
            const char *why = comet_ws_parser_error(f->parser, &code);

            ck_assert_str_ne(why, "");
            ck_assert(code == 1002 || code == 1007 || code == 1009
                      || code == 1011);
            ck_assert_int_eq(rv, code == 1009 ? COMET_ETOOBIG
                                 : code == 1011 ? APR_ENOMEM : COMET_EPROTO);
            comet_buf_printf(f->log, "ERR%d", code);
            f->done = 1;
        }
        memmove(f->buf, f->buf + used, f->len - used);
        f->len -= used;
        if (rv != APR_SUCCESS) {
            return rv;
        }
    }
}

/* The events of s fed in pieces of step bytes (0: all at once). */
static comet_buf_t *events_step(const char *s, apr_size_t len,
                                apr_size_t max, apr_size_t step)
{
    feeder_t *f = feeder_new(max, len + 1);
    apr_size_t i, n;

    if (!step) {
        step = len ? len : 1;
    }
    for (i = 0; i < len && !f->done; i += n) {
        n = len - i < step ? len - i : step;
        feed(f, s + i, n);
    }
    return f->log;
}

/* The events of s fed as s[0, cut) and s[cut, len). */
static comet_buf_t *events_cut(const char *s, apr_size_t len,
                               apr_size_t max, apr_size_t cut)
{
    feeder_t *f = feeder_new(max, len + 1);

    feed(f, s, cut);
    if (!f->done) {
        feed(f, s + cut, len - cut);
    }
    return f->log;
}

/* Whole, byte by byte, in threes, and cut in two at every point: the
 * same events every time.  Returns the events. */
static comet_buf_t *events_any_split(const comet_buf_t *s, apr_size_t max,
                                     int line)
{
    comet_buf_t *whole = events_step(s->data, s->len, max, 0), *other;
    apr_size_t cut, step;

    for (step = 1; step <= 3; step += 2) {
        other = events_step(s->data, s->len, max, step);
        ck_assert_msg(other->len == whole->len
                      && memcmp(other->data, whole->data, whole->len) == 0,
                      "line %d: in pieces of %lu: \"%s\", whole: \"%s\"",
                      line, (unsigned long)step,
                      comet_test_show(other->data, other->len),
                      comet_test_show(whole->data, whole->len));
    }
    for (cut = 0; cut <= s->len; cut++) {
        other = events_cut(s->data, s->len, max, cut);
        ck_assert_msg(other->len == whole->len
                      && memcmp(other->data, whole->data, whole->len) == 0,
                      "line %d: cut at %lu: \"%s\", whole: \"%s\"",
                      line, (unsigned long)cut,
                      comet_test_show(other->data, other->len),
                      comet_test_show(whole->data, whole->len));
    }
    return whole;
}

#define ASSERT_EVENTS(stream, max, lit) do {                                \
        comet_buf_t *ev_ = events_any_split((stream), (max), __LINE__);     \
        ASSERT_BUF(ev_, lit);                                               \
    } while (0)

#define MAX 65536

/* ---- handshake ---------------------------------------------------------- */

static comet_ws_request_t good_request(void)
{
    comet_ws_request_t r;

    r.method = "GET";
    r.protocol = "HTTP/1.1";
    r.upgrade = "websocket";
    r.connection = "Upgrade";
    r.version = "13";
    r.key = "dGhlIHNhbXBsZSBub25jZQ==";
    return r;
}

START_TEST(browser_handshake_is_accepted_with_the_rfc_accept_value)
{
    comet_ws_request_t r = good_request();
    const char *why = NULL;
    char accept[COMET_WS_ACCEPT_LEN + 1];

    ck_assert_int_eq(comet_ws_handshake_check(&r, &why), 101);
    ck_assert_str_eq(why, "");
    /* RFC 6455 1.3's example. */
    comet_ws_accept_key(r.key, accept);
    ck_assert_str_eq(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    comet_ws_accept_key("  dGhlIHNhbXBsZSBub25jZQ==\t", accept);
    ck_assert_str_eq(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");

    /* What Chromium and Firefox send. */
    r.upgrade = "WebSocket";
    r.connection = "keep-alive, Upgrade";
    r.protocol = "HTTP/1.1";
    ck_assert_int_eq(comet_ws_handshake_check(&r, &why), 101);
    r.upgrade = "h2c,  websocket ";
    r.connection = "upgrade,,";
    r.version = " 13 ";
    ck_assert_int_eq(comet_ws_handshake_check(&r, &why), 101);
}
END_TEST

#define ASSERT_REFUSED(field, value, status) do {                          \
        comet_ws_request_t r_ = good_request();                            \
        const char *why_ = NULL;                                           \
        r_.field = (value);                                                \
        ck_assert_int_eq(comet_ws_handshake_check(&r_, &why_), (status));  \
        ck_assert_ptr_nonnull(why_);                                       \
        ck_assert_str_ne(why_, "");                                        \
    } while (0)

START_TEST(bad_handshakes_are_refused_with_400_or_426)
{
    ASSERT_REFUSED(method, "POST", 400);
    ASSERT_REFUSED(method, "get", 400);
    ASSERT_REFUSED(method, NULL, 400);
    ASSERT_REFUSED(protocol, "HTTP/1.0", 400);
    ASSERT_REFUSED(protocol, "HTTP/0.9", 400);
    ASSERT_REFUSED(protocol, "HTTP/1.", 400);
    ASSERT_REFUSED(protocol, "HTTP/1.1x", 400);
    ASSERT_REFUSED(protocol, NULL, 400);
    ASSERT_REFUSED(upgrade, NULL, 400);
    ASSERT_REFUSED(upgrade, "h2c", 400);
    ASSERT_REFUSED(upgrade, "websocket/13", 400);
    ASSERT_REFUSED(upgrade, "websockets", 400);
    ASSERT_REFUSED(connection, NULL, 400);
    ASSERT_REFUSED(connection, "keep-alive", 400);
    ASSERT_REFUSED(connection, "upgraded", 400);
    ASSERT_REFUSED(version, NULL, 400);
    ASSERT_REFUSED(version, "8", 426);
    ASSERT_REFUSED(version, "", 426);
    ASSERT_REFUSED(version, "13, 8", 426);
    ASSERT_REFUSED(version, "130", 426);
    ASSERT_REFUSED(key, NULL, 400);
    ASSERT_REFUSED(key, "", 400);
    ASSERT_REFUSED(key, "dGhlIHNhbXBsZSBub25jZQ=", 400);      /* 23 chars */
    ASSERT_REFUSED(key, "dGhlIHNhbXBsZSBub25jZQ===", 400);
    ASSERT_REFUSED(key, "dGhlIHNhbXBsZSBub25jZQAA", 400);     /* 18 bytes */
    ASSERT_REFUSED(key, "dGhlIHNhbXBsZSBub25j*Q==", 400);
    ASSERT_REFUSED(key, "dGhlIHNhbXBsZSBub25jZQ==, "
                        "dGhlIHNhbXBsZSBub25jZQ==", 400);     /* twice */
}
END_TEST

START_TEST(upgrade_header_names_websocket_as_a_list_token)
{
    ck_assert(comet_ws_is_upgrade("websocket"));
    ck_assert(comet_ws_is_upgrade("WEBSOCKET"));
    ck_assert(comet_ws_is_upgrade("foo/2, websocket"));
    ck_assert(!comet_ws_is_upgrade(NULL));
    ck_assert(!comet_ws_is_upgrade(""));
    ck_assert(!comet_ws_is_upgrade("websocketx"));
    ck_assert(!comet_ws_is_upgrade("web socket"));
}
END_TEST

START_TEST(extension_offers_are_parsed_and_malformed_ones_noticed)
{
    const char *pmd = "permessage-deflate";

    ck_assert_int_eq(comet_ws_extension_offered(NULL, pmd), 0);
    ck_assert_int_eq(comet_ws_extension_offered("", pmd), 0);
    ck_assert_int_eq(comet_ws_extension_offered(
        "permessage-deflate; client_max_window_bits", pmd), 1);
    ck_assert_int_eq(comet_ws_extension_offered(
        "x-webkit-deflate-frame, PerMessage-Deflate ;server_no_context_takeover"
        " ; client_max_window_bits=15", pmd), 1);
    ck_assert_int_eq(comet_ws_extension_offered(
        "foo; bar=\"a, permessage-deflate\"", pmd), 0);
    ck_assert_int_eq(comet_ws_extension_offered(
        "foo; bar=\"a\\\"b\", permessage-deflate", pmd), 1);
    ck_assert_int_eq(comet_ws_extension_offered("x-webkit-deflate-frame",
                                                pmd), 0);
    ck_assert_int_eq(comet_ws_extension_offered("permessage-deflate;;", pmd),
                     -1);
    ck_assert_int_eq(comet_ws_extension_offered("foo; bar=\"x", pmd), -1);
    ck_assert_int_eq(comet_ws_extension_offered("foo bar", pmd), -1);
    ck_assert_int_eq(comet_ws_extension_offered("foo; =1", pmd), -1);
    ck_assert_int_eq(comet_ws_extension_offered(
        "permessage-deflate, ; x", pmd), -1);
}
END_TEST

START_TEST(subprotocol_is_the_clients_first_that_we_support)
{
    static const char *const ours[] = { "superchat", "chat" };
    const char *p;
    apr_size_t len = 0;

    p = comet_ws_pick_protocol("chat, superchat", ours, 2, &len);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq(len, 4);
    ck_assert_int_eq(strncmp(p, "chat", 4), 0);
    p = comet_ws_pick_protocol(" v2.json ,superchat", ours, 2, &len);
    ck_assert_uint_eq(len, 9);
    ck_assert_int_eq(strncmp(p, "superchat", 9), 0);
    /* Compared exactly, as the browser compares our answer. */
    ck_assert_ptr_null(comet_ws_pick_protocol("Chat", ours, 2, &len));
    ck_assert_ptr_null(comet_ws_pick_protocol("chatty", ours, 2, &len));
    ck_assert_ptr_null(comet_ws_pick_protocol(NULL, ours, 2, &len));
    ck_assert_ptr_null(comet_ws_pick_protocol("chat", ours, 0, &len));
}
END_TEST

START_TEST(handshake_response_has_exact_bytes)
{
    comet_buf_t *b = new_buf(1024), small;
    char mem[60];

    ck_assert_int_eq(comet_ws_handshake_response(
        b, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", NULL, 0), APR_SUCCESS);
    ASSERT_BUF(b, "HTTP/1.1 101 Switching Protocols\r\n"
                  "Upgrade: websocket\r\n"
                  "Connection: Upgrade\r\n"
                  "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                  "\r\n");
    comet_buf_truncate(b, 0);
    ck_assert_int_eq(comet_ws_handshake_response(
        b, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "chat, x", 4), APR_SUCCESS);
    ASSERT_BUF(b, "HTTP/1.1 101 Switching Protocols\r\n"
                  "Upgrade: websocket\r\n"
                  "Connection: Upgrade\r\n"
                  "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                  "Sec-WebSocket-Protocol: chat\r\n"
                  "\r\n");
    comet_buf_truncate(b, 0);
    ck_assert_int_eq(comet_ws_handshake_response(b, "x", "a\r\nb", 4),
                     APR_EINVAL);
    ck_assert_int_eq(comet_ws_handshake_response(b, "x", "", 0), APR_EINVAL);
    ck_assert_uint_eq(b->len, 0);
    comet_buf_wrap(&small, mem, sizeof(mem));
    ck_assert_int_eq(comet_ws_handshake_response(
        &small, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", NULL, 0), APR_ENOSPC);
    ck_assert_uint_eq(small.len, 0);
}
END_TEST

/* ---- framing (Autobahn 1.x-4.x) ----------------------------------------- */

START_TEST(text_and_binary_of_every_length_class_come_back)
{
    static const apr_size_t lens[] = { 0, 1, 125, 126, 127, 128, 1000,
                                       65535, 65536, 70000 };
    apr_size_t i, j;
    char *payload = malloc(70000);

    for (j = 0; j < 70000; j++) {
        payload[j] = (char)('a' + j % 26);
    }
    for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        comet_buf_t *s = new_buf(1 << 20), *ev;
        comet_buf_t *want = new_buf(1 << 20);
        int op = i % 2 ? COMET_WS_OP_BINARY : COMET_WS_OP_TEXT;

        cframe(s, op, 1, payload, lens[i]);
        comet_buf_puts(want, op == COMET_WS_OP_TEXT ? "T[" : "B[");
        comet_buf_append(want, payload, lens[i]);
        comet_buf_putc(want, ']');
        ev = events_step(s->data, s->len, 1 << 17, 0);
        assert_bytes(ev->data, ev->len, want->data, want->len, __LINE__);
        ev = events_step(s->data, s->len, 1 << 17, 1);
        assert_bytes(ev->data, ev->len, want->data, want->len, __LINE__);
        ev = events_step(s->data, s->len, 1 << 17, 4093);
        assert_bytes(ev->data, ev->len, want->data, want->len, __LINE__);
    }
    free(payload);
}
END_TEST

START_TEST(whole_frame_is_returned_in_place_and_split_one_gathered)
{
    comet_buf_t *s = new_buf(4096);
    feeder_t *f;
    comet_ws_event_t ev;
    apr_size_t used;
    char *copy;

    CFRAME(s, COMET_WS_OP_TEXT, 1, "hello");
    CFRAME(s, COMET_WS_OP_BINARY, 1, "world");
    copy = apr_pmemdup(comet_test_pool, s->data, s->len);
    f = feeder_new(MAX, 64);
    ck_assert_int_eq(comet_ws_parse(f->parser, copy, s->len, &used, &ev),
                     APR_SUCCESS);
    ck_assert_int_eq(ev.type, COMET_WS_EV_TEXT);
    ck_assert_uint_eq(used, 2 + 4 + 5);
    ck_assert_ptr_eq(ev.data, copy + 6);            /* unmasked in place */
    ck_assert_int_eq(memcmp(ev.data, "hello", 5), 0);
    ck_assert_int_eq(comet_ws_parse(f->parser, copy + used, s->len - used,
                                    &used, &ev), APR_SUCCESS);
    ck_assert_int_eq(ev.type, COMET_WS_EV_BINARY);
    ck_assert_uint_eq(used, 11);
    ck_assert_ptr_eq(f->parser->msg, NULL);         /* nothing allocated */

    /* Split: gathered by the parser, the caller keeps nothing. */
    f = feeder_new(MAX, 64);
    ck_assert_int_eq(feed(f, s->data, 8), APR_INCOMPLETE);
    ck_assert_uint_eq(f->len, 0);
    ck_assert_int_eq(feed(f, s->data + 8, s->len - 8), APR_INCOMPLETE);
    ASSERT_BUF(f->log, "T[hello]B[world]");
    ck_assert_int_eq(f->zero_copy, 1);
}
END_TEST

START_TEST(frame_header_in_pieces_is_kept_by_the_parser)
{
    comet_buf_t *s = new_buf(1 << 20);
    char *payload = calloc(1, 70000);
    feeder_t *f = feeder_new(1 << 17, 16);
    apr_size_t i;

    cframe(s, COMET_WS_OP_BINARY, 1, payload, 70000);
    /* 14 header bytes one by one: each is taken. */
    for (i = 0; i < 14; i++) {
        ck_assert_int_eq(feed(f, s->data + i, 1), APR_INCOMPLETE);
        ck_assert_uint_eq(f->len, 0);
    }
    ck_assert_int_eq(comet_ws_parser_in_message(f->parser), 1);
    for (; i < s->len; i += 10) {
        feed(f, s->data + i, s->len - i < 10 ? s->len - i : 10);
    }
    ck_assert_int_eq(f->events, 1);
    ck_assert_uint_eq(f->log->len, 70000 + 3);
    ck_assert_int_eq(comet_ws_parser_in_message(f->parser), 0);
    free(payload);
}
END_TEST

START_TEST(pings_and_pongs_carry_their_payloads)
{
    comet_buf_t *s = new_buf(4096);
    char p125[125];

    memset(p125, 'p', sizeof(p125));
    CFRAME(s, COMET_WS_OP_PING, 1, "");
    CFRAME(s, COMET_WS_OP_PING, 1, "Hello");
    CFRAME(s, COMET_WS_OP_PING, 1, "\x00\xff\xfe\x01");   /* binary */
    CFRAME(s, COMET_WS_OP_PONG, 1, "unsolicited");
    cframe(s, COMET_WS_OP_PING, 1, "xx", 2);
    ASSERT_EVENTS(s, MAX, "PING[]PING[Hello]PING[\x00\xff\xfe\x01]"
                          "PONG[unsolicited]PING[xx]");
    comet_buf_truncate(s, 0);
    cframe(s, COMET_WS_OP_PING, 1, p125, 125);
    cframe(s, COMET_WS_OP_PONG, 1, p125, 125);
    ck_assert_uint_eq(events_any_split(s, MAX, __LINE__)->len,
                      2 * (4 + 2 + 125));
}
END_TEST

START_TEST(control_frames_over_125_bytes_are_refused)
{
    comet_buf_t *s = new_buf(4096);
    char p[126];

    memset(p, 'p', sizeof(p));
    cframe(s, COMET_WS_OP_PING, 1, p, 126);
    ASSERT_EVENTS(s, MAX, "ERR1002");
    comet_buf_truncate(s, 0);
    cframe(s, COMET_WS_OP_PONG, 1, p, 126);
    ASSERT_EVENTS(s, MAX, "ERR1002");
    comet_buf_truncate(s, 0);
    cframe(s, COMET_WS_OP_CLOSE, 1, p, 126);
    ASSERT_EVENTS(s, MAX, "ERR1002");
    /* Found on the second byte, before any payload. */
    ck_assert_int_eq(feed(feeder_new(MAX, 16), s->data, 2), COMET_EPROTO);
}
END_TEST

START_TEST(reserved_bits_fail_with_1002_on_the_first_byte)
{
    static const unsigned char mask[4] = { 1, 2, 3, 4 };
    static const int ops[] = { COMET_WS_OP_TEXT, COMET_WS_OP_BINARY,
                               COMET_WS_OP_PING, COMET_WS_OP_CLOSE };
    int rsv, i;

    for (rsv = 1; rsv <= 7; rsv++) {
        for (i = 0; i < 4; i++) {
            comet_buf_t *s = new_buf(256);
            feeder_t *f;

            /* Autobahn 3.x: a good frame before, the bad one, one after. */
            CFRAME(s, COMET_WS_OP_TEXT, 1, "ok");
            ck_assert_int_eq(comet_ws_frame_client(s, ops[i], 1, rsv, mask,
                                                   "x", 1), APR_SUCCESS);
            CFRAME(s, COMET_WS_OP_PING, 1, "after");
            ASSERT_EVENTS(s, MAX, "T[ok]ERR1002");
            f = feeder_new(MAX, 256);
            ck_assert_int_eq(feed(f, s->data, 2 + 4 + 2 + 1), COMET_EPROTO);
        }
    }
}
END_TEST

START_TEST(reserved_opcodes_fail_with_1002)
{
    static const unsigned char mask[4] = { 9, 8, 7, 6 };
    int op;

    for (op = 3; op <= 15; op++) {
        comet_buf_t *s = new_buf(256);

        if (op >= 8 && op <= 10) {
            continue;
        }
        CFRAME(s, COMET_WS_OP_TEXT, 1, "ok");
        ck_assert_int_eq(comet_ws_frame_client(s, op, 1, 0, mask, "abc", 3),
                         APR_SUCCESS);
        CFRAME(s, COMET_WS_OP_PING, 1, "");
        ASSERT_EVENTS(s, MAX, "T[ok]ERR1002");
        comet_buf_truncate(s, 0);
        ck_assert_int_eq(comet_ws_frame_client(s, op, 0, 0, mask, "", 0),
                         APR_SUCCESS);
        ASSERT_EVENTS(s, MAX, "ERR1002");
    }
}
END_TEST

START_TEST(unmasked_frames_fail_with_1002)
{
    comet_buf_t *s = new_buf(256);
    feeder_t *f;
    int code;

    comet_buf_append(s, "\x81\x02hi", 4);
    ASSERT_EVENTS(s, MAX, "ERR1002");
    comet_buf_truncate(s, 0);
    comet_buf_append(s, "\x89\x00", 2);             /* unmasked ping */
    ASSERT_EVENTS(s, MAX, "ERR1002");
    f = feeder_new(MAX, 16);
    ck_assert_int_eq(feed(f, "\x82\x7e", 2), COMET_EPROTO);
    ck_assert_str_eq(comet_ws_parser_error(f->parser, &code),
                     "unmasked client frame");
    ck_assert_int_eq(code, 1002);
}
END_TEST

START_TEST(lengths_not_in_shortest_form_fail_with_1002)
{
    comet_buf_t *s = new_buf(256);

    /* 125 in the 16-bit form. */
    comet_buf_append(s, "\x82\xfe\x00\x7d", 4);
    ASSERT_EVENTS(s, MAX, "ERR1002");
    /* 65535 in the 64-bit form. */
    comet_buf_truncate(s, 0);
    comet_buf_append(s, "\x82\xff\x00\x00\x00\x00\x00\x00\xff\xff", 10);
    ASSERT_EVENTS(s, MAX, "ERR1002");
    /* 0 in the 64-bit form. */
    comet_buf_truncate(s, 0);
    comet_buf_append(s, "\x82\xff\x00\x00\x00\x00\x00\x00\x00\x00", 10);
    ASSERT_EVENTS(s, MAX, "ERR1002");
    /* Top bit set. */
    comet_buf_truncate(s, 0);
    comet_buf_append(s, "\x82\xff\x80\x00\x00\x00\x00\x00\x00\x00", 10);
    ASSERT_EVENTS(s, (apr_size_t)-1, "ERR1002");
    /* The shortest forms are fine: 126 in 16 bits, 65536 in 64. */
    comet_buf_truncate(s, 0);
    comet_buf_append(s, "\x82\xfe\x00\x7e" "\0\0\0\0", 8);
    ck_assert_int_eq(feed(feeder_new(MAX, 16), s->data, s->len),
                     APR_INCOMPLETE);
    comet_buf_truncate(s, 0);
    comet_buf_append(s, "\x82\xff\x00\x00\x00\x00\x00\x01\x00\x00"
                        "\0\0\0\0", 14);
    ck_assert_int_eq(feed(feeder_new(1 << 17, 16), s->data, s->len),
                     APR_INCOMPLETE);
}
END_TEST

/* ---- message size ------------------------------------------------------- */

START_TEST(message_over_the_limit_fails_with_1009_on_its_header)
{
    comet_buf_t *s = new_buf(1 << 16);
    char p[1001];
    feeder_t *f;
    int code;

    memset(p, 'x', sizeof(p));
    cframe(s, COMET_WS_OP_TEXT, 1, p, 1000);
    /* Exactly the limit: delivered. */
    ck_assert_uint_eq(events_any_split(s, 1000, __LINE__)->len, 1003);

    comet_buf_truncate(s, 0);
    cframe(s, COMET_WS_OP_TEXT, 1, p, 1001);
    ASSERT_EVENTS(s, 1000, "ERR1009");
    /* Found on the length, before the mask key or any payload. */
    f = feeder_new(1000, 16);
    ck_assert_int_eq(feed(f, s->data, 4), COMET_ETOOBIG);
    ck_assert_str_eq(comet_ws_parser_error(f->parser, &code),
                     "message too big");
    ck_assert_int_eq(code, 1009);
    ck_assert_ptr_null(f->parser->msg);

    /* A 64-bit length far past any memory. */
    comet_buf_truncate(s, 0);
    comet_buf_append(s, "\x82\xff\x00\x00\x01\x00\x00\x00\x00\x00", 10);
    ASSERT_EVENTS(s, 1 << 20, "ERR1009");
}
END_TEST

START_TEST(fragment_that_passes_the_limit_fails_with_1009)
{
    comet_buf_t *s = new_buf(1 << 16);
    char p[600];
    feeder_t *f;

    memset(p, 'y', sizeof(p));
    cframe(s, COMET_WS_OP_BINARY, 0, p, 400);
    cframe(s, COMET_WS_OP_PING, 1, "", 0);
    cframe(s, COMET_WS_OP_CONT, 0, p, 400);
    cframe(s, COMET_WS_OP_CONT, 1, p, 300);
    ASSERT_EVENTS(s, 1000, "PING[]ERR1009");
    f = feeder_new(1000, 2048);
    /* 400, the ping and 400 more pass; the third header fails. */
    ck_assert_int_eq(feed(f, s->data, 8 + 400 + 6 + 8 + 400 + 3),
                     APR_INCOMPLETE);
    ck_assert_int_eq(feed(f, s->data + 8 + 400 + 6 + 8 + 400 + 3, 1),
                     COMET_ETOOBIG);
    ck_assert_uint_le(f->parser->msg_cap, 1000);
    /* Control frames do not count against it. */
    comet_buf_truncate(s, 0);
    cframe(s, COMET_WS_OP_BINARY, 0, p, 500);
    cframe(s, COMET_WS_OP_PING, 1, p, 125);
    cframe(s, COMET_WS_OP_CONT, 1, p, 500);
    ck_assert_uint_eq(events_any_split(s, 1000, __LINE__)->len,
                      6 + 125 + 3 + 1000);
}
END_TEST

START_TEST(limit_counts_each_message_on_its_own)
{
    comet_buf_t *s = new_buf(1 << 16);
    char p[900];

    memset(p, 'm', sizeof(p));
    /* Two messages of 900 under a limit of 1000: gathered, then whole,
     * then gathered again. */
    cframe(s, COMET_WS_OP_BINARY, 0, p, 450);
    cframe(s, COMET_WS_OP_CONT, 1, p, 450);
    cframe(s, COMET_WS_OP_BINARY, 1, p, 900);
    cframe(s, COMET_WS_OP_BINARY, 0, p, 900);
    cframe(s, COMET_WS_OP_CONT, 1, p, 0);
    ck_assert_uint_eq(events_any_split(s, 1000, __LINE__)->len,
                      3 * (900 + 3));
}
END_TEST

START_TEST(reassembly_buffer_is_bounded_and_given_back)
{
    comet_buf_t *s = new_buf(1 << 20);
    char *p = malloc(100000);
    feeder_t *f = feeder_new(200000, 1 << 18);
    apr_size_t i;

    memset(p, 'z', 100000);
    for (i = 0; i < 10; i++) {
        cframe(s, i ? COMET_WS_OP_CONT : COMET_WS_OP_TEXT, i == 9,
               p, 10000);
    }
    ck_assert_int_eq(feed(f, s->data, s->len), APR_INCOMPLETE);
    ck_assert_int_eq(f->events, 1);
    ck_assert_uint_eq(f->log->len, 100003);
    ck_assert_uint_le(f->parser->msg_cap, 200000);
    /* A small message after it: the large buffer is gone. */
    comet_buf_truncate(s, 0);
    CFRAME(s, COMET_WS_OP_TEXT, 0, "a");
    CFRAME(s, COMET_WS_OP_CONT, 1, "b");
    ck_assert_int_eq(feed(f, s->data, s->len), APR_INCOMPLETE);
    ck_assert_uint_le(f->parser->msg_cap, 256);
    ck_assert_int_eq(memcmp(f->log->data + 100003, "T[ab]", 5), 0);
    comet_ws_parser_release(f->parser);
    ck_assert_ptr_null(f->parser->msg);
    free(p);
}
END_TEST

/* ---- fragmentation (Autobahn 5.x) --------------------------------------- */

START_TEST(fragmented_messages_are_joined)
{
    comet_buf_t *s = new_buf(4096);

    /* 5.3, 5.4, 5.5: text in two fragments; with an empty one. */
    CFRAME(s, COMET_WS_OP_TEXT, 0, "frag");
    CFRAME(s, COMET_WS_OP_CONT, 1, "ment1");
    CFRAME(s, COMET_WS_OP_BINARY, 0, "");
    CFRAME(s, COMET_WS_OP_CONT, 0, "\x00\x01");
    CFRAME(s, COMET_WS_OP_CONT, 1, "");
    CFRAME(s, COMET_WS_OP_TEXT, 0, "");
    CFRAME(s, COMET_WS_OP_CONT, 1, "");
    ASSERT_EVENTS(s, MAX, "T[fragment1]B[\x00\x01]T[]");
}
END_TEST

START_TEST(control_frames_may_come_between_fragments)
{
    comet_buf_t *s = new_buf(4096);

    /* 5.6-5.8, 5.19, 5.20. */
    CFRAME(s, COMET_WS_OP_TEXT, 0, "fragment1");
    CFRAME(s, COMET_WS_OP_PING, 1, "ping1");
    CFRAME(s, COMET_WS_OP_CONT, 0, "fragment2");
    CFRAME(s, COMET_WS_OP_PONG, 1, "pong");
    CFRAME(s, COMET_WS_OP_CONT, 0, "fragment3");
    CFRAME(s, COMET_WS_OP_PING, 1, "ping2");
    CFRAME(s, COMET_WS_OP_CONT, 1, "fragment4");
    CFRAME(s, COMET_WS_OP_BINARY, 1, "after");
    ASSERT_EVENTS(s, MAX, "PING[ping1]PONG[pong]PING[ping2]"
                          "T[fragment1fragment2fragment3fragment4]"
                          "B[after]");
    /* A close between fragments ends it all: the message is not
     * delivered. */
    comet_buf_truncate(s, 0);
    CFRAME(s, COMET_WS_OP_TEXT, 0, "half");
    CFRAME(s, COMET_WS_OP_CLOSE, 1, "\x03\xe8");
    CFRAME(s, COMET_WS_OP_CONT, 1, "rest");
    ASSERT_EVENTS(s, MAX, "CLOSE1000[]");
}
END_TEST

START_TEST(fragmented_control_frames_fail_with_1002)
{
    comet_buf_t *s = new_buf(4096);

    /* 5.1, 5.2 */
    CFRAME(s, COMET_WS_OP_PING, 0, "frag1");
    CFRAME(s, COMET_WS_OP_CONT, 1, "frag2");
    ASSERT_EVENTS(s, MAX, "ERR1002");
    comet_buf_truncate(s, 0);
    CFRAME(s, COMET_WS_OP_PONG, 0, "frag1");
    CFRAME(s, COMET_WS_OP_CONT, 1, "frag2");
    ASSERT_EVENTS(s, MAX, "ERR1002");
    comet_buf_truncate(s, 0);
    CFRAME(s, COMET_WS_OP_CLOSE, 0, "");
    ASSERT_EVENTS(s, MAX, "ERR1002");
}
END_TEST

START_TEST(continuation_with_no_message_open_fails_with_1002)
{
    comet_buf_t *s = new_buf(4096);

    /* 5.9-5.14 */
    CFRAME(s, COMET_WS_OP_CONT, 1, "non-continuation payload");
    CFRAME(s, COMET_WS_OP_TEXT, 1, "Hello, world!");
    ASSERT_EVENTS(s, MAX, "ERR1002");
    comet_buf_truncate(s, 0);
    CFRAME(s, COMET_WS_OP_CONT, 0, "fragment1");
    CFRAME(s, COMET_WS_OP_TEXT, 1, "fragment2");
    ASSERT_EVENTS(s, MAX, "ERR1002");
    /* After a finished message, too. */
    comet_buf_truncate(s, 0);
    CFRAME(s, COMET_WS_OP_TEXT, 0, "a");
    CFRAME(s, COMET_WS_OP_CONT, 1, "b");
    CFRAME(s, COMET_WS_OP_CONT, 1, "c");
    ASSERT_EVENTS(s, MAX, "T[ab]ERR1002");
}
END_TEST

START_TEST(new_data_frame_in_an_open_message_fails_with_1002)
{
    comet_buf_t *s = new_buf(4096);

    /* 5.15 */
    CFRAME(s, COMET_WS_OP_TEXT, 0, "fragment1");
    CFRAME(s, COMET_WS_OP_CONT, 1, "fragment2");
    CFRAME(s, COMET_WS_OP_CONT, 0, "fragment3");
    CFRAME(s, COMET_WS_OP_TEXT, 1, "fragment4");
    ASSERT_EVENTS(s, MAX, "T[fragment1fragment2]ERR1002");
    /* 5.17, 5.18 */
    comet_buf_truncate(s, 0);
    CFRAME(s, COMET_WS_OP_TEXT, 0, "fragment1");
    CFRAME(s, COMET_WS_OP_TEXT, 1, "fragment2");
    ASSERT_EVENTS(s, MAX, "ERR1002");
    comet_buf_truncate(s, 0);
    CFRAME(s, COMET_WS_OP_BINARY, 0, "fragment1");
    CFRAME(s, COMET_WS_OP_PING, 1, "");
    CFRAME(s, COMET_WS_OP_BINARY, 0, "fragment2");
    ASSERT_EVENTS(s, MAX, "PING[]ERR1002");
}
END_TEST

START_TEST(every_split_of_a_stream_gives_the_same_events)
{
    comet_buf_t *s = new_buf(1 << 16);
    char big[300];
    int i;

    for (i = 0; i < 300; i++) {
        big[i] = (char)i;
    }
    CFRAME(s, COMET_WS_OP_TEXT, 1, "single");
    CFRAME(s, COMET_WS_OP_TEXT, 0, "\xce\xba\xe1");      /* κ and half of ό */
    CFRAME(s, COMET_WS_OP_PING, 1, "p");
    CFRAME(s, COMET_WS_OP_CONT, 0, "\xbd\xb9");
    CFRAME(s, COMET_WS_OP_CONT, 0, "");
    CFRAME(s, COMET_WS_OP_PONG, 1, "");
    CFRAME(s, COMET_WS_OP_CONT, 1, "\xcf\x83\xce\xbc\xce\xb5");
    cframe(s, COMET_WS_OP_BINARY, 0, big, 200);
    cframe(s, COMET_WS_OP_CONT, 1, big + 200, 100);
    CFRAME(s, COMET_WS_OP_BINARY, 1, "");
    CFRAME(s, COMET_WS_OP_CLOSE, 1, "\x03\xe8" "done");
    CFRAME(s, COMET_WS_OP_TEXT, 1, "ignored");
    {
        comet_buf_t *want = new_buf(4096);

        comet_buf_puts(want, "T[single]PING[p]PONG[]"
                             "T[\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5]"
                             "B[");
        comet_buf_append(want, big, 300);
        comet_buf_puts(want, "]B[]CLOSE1000[done]");
        {
            comet_buf_t *got = events_any_split(s, MAX, __LINE__);

            assert_bytes(got->data, got->len, want->data, want->len,
                         __LINE__);
        }
    }
}
END_TEST

/* ---- UTF-8 (Autobahn 6.x) ----------------------------------------------- */

typedef struct {
    const char *s;
    apr_size_t  len;
    int         valid;
} utf8_case_t;

#define U(lit, v) { lit, sizeof(lit) - 1, v }

static const utf8_case_t utf8_cases[] = {
    /* 6.1, 6.2: valid text */
    U("", 1),
    U("Hello-\xc2\xb5@\xc3\x9f\xc3\xb6\xc3\xa4\xc3\xbc\xc3\xa0\xc3\xa1"
      "-UTF-8!!", 1),
    U("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", 1),       /* κόσμε */
    /* 6.3: κόσμε with a surrogate inside */
    U("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"
      "edited", 0),
    /* 6.5-6.7: first and last of each length */
    U("\x00", 1), U("\xc2\x80", 1), U("\xe0\xa0\x80", 1),
    U("\xf0\x90\x80\x80", 1),
    U("\x7f", 1), U("\xdf\xbf", 1), U("\xef\xbf\xbf", 1),
    U("\xf4\x8f\xbf\xbf", 1),
    /* 6.8: five- and six-byte forms */
    U("\xf8\x88\x80\x80\x80", 0), U("\xfc\x84\x80\x80\x80\x80", 0),
    /* 6.9, 6.10: other boundaries */
    U("\xed\x9f\xbf", 1), U("\xee\x80\x80", 1), U("\xef\xbf\xbd", 1),
    U("\xf4\x90\x80\x80", 0),                          /* U+110000 */
    U("\xf7\xbf\xbf\xbf", 0),
    /* 6.11: a sequence spanning "κόσμε" and an invalid tail */
    U("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80"
      "edited", 0),
    /* 6.12: unexpected continuation bytes */
    U("\x80", 0), U("\xbf", 0), U("\x80\xbf", 0), U("a\x80\xbf\x80", 0),
    /* 6.13: lonely start bytes */
    U("\xc0 ", 0), U("\xdf ", 0), U("\xe0 ", 0), U("\xef ", 0),
    U("\xf0 ", 0), U("\xf4 ", 0),
    /* 6.14: last continuation byte missing (at the end of the message) */
    U("\xc2", 0), U("\xe0\xa0", 0), U("\xf0\x90\x80", 0),
    U("\xdf", 0), U("\xef\xbf", 0), U("\xf4\x8f\xbf", 0),
    U("a\xe2\x82", 0),
    /* 6.15: concatenated incomplete sequences */
    U("\xc0\xe0\x80\xf0\x80\x80\xdf\xef\xbf", 0),
    /* 6.16: impossible bytes */
    U("\xfe", 0), U("\xff", 0), U("\xfe\xfe\xff\xff", 0),
    /* 6.17: overlong '/' */
    U("\xc0\xaf", 0), U("\xe0\x80\xaf", 0), U("\xf0\x80\x80\xaf", 0),
    U("\xf8\x80\x80\x80\xaf", 0),
    /* 6.18: largest overlongs */
    U("\xc1\xbf", 0), U("\xe0\x9f\xbf", 0), U("\xf0\x8f\xbf\xbf", 0),
    /* 6.19: overlong NUL */
    U("\xc0\x80", 0), U("\xe0\x80\x80", 0), U("\xf0\x80\x80\x80", 0),
    /* 6.20: single surrogates */
    U("\xed\xa0\x80", 0), U("\xed\xad\xbf", 0), U("\xed\xae\x80", 0),
    U("\xed\xaf\xbf", 0), U("\xed\xb0\x80", 0), U("\xed\xbe\x80", 0),
    U("\xed\xbf\xbf", 0),
    /* 6.21: paired surrogates */
    U("\xed\xa0\x80\xed\xb0\x80", 0), U("\xed\xaf\xbf\xed\xbf\xbf", 0),
    /* 6.22: noncharacters are valid */
    U("\xef\xbf\xbe", 1), U("\xef\xbf\xbf", 1), U("\xf0\x9f\xbf\xbe", 1),
    U("\xf4\x8f\xbf\xbe", 1), U("\xef\xb7\x90", 1),
    /* 6.23: the replacement character */
    U("\xef\xbf\xbd", 1),
};

START_TEST(utf8_check_matches_the_autobahn_table)
{
    apr_size_t i;

    for (i = 0; i < sizeof(utf8_cases) / sizeof(utf8_cases[0]); i++) {
        ck_assert_msg(comet_ws_utf8_valid(utf8_cases[i].s, utf8_cases[i].len)
                      == utf8_cases[i].valid, "case %lu: \"%s\"",
                      (unsigned long)i,
                      comet_test_show(utf8_cases[i].s, utf8_cases[i].len));
    }
}
END_TEST

/* Each case as one text frame, as one fragment per byte, and in two
 * fragments at every point: valid text comes back, invalid fails 1007. */
START_TEST(text_messages_are_utf8_checked_across_fragments)
{
    apr_size_t i, j, cut;

    for (i = 0; i < sizeof(utf8_cases) / sizeof(utf8_cases[0]); i++) {
        const utf8_case_t *c = &utf8_cases[i];
        comet_buf_t *want = new_buf(256), *s = new_buf(4096), *got;

        if (c->valid) {
            comet_buf_puts(want, "T[");
            comet_buf_append(want, c->s, c->len);
            comet_buf_puts(want, "]PONG[]");
        }
        else {
            comet_buf_puts(want, "ERR1007");
        }
        cframe(s, COMET_WS_OP_TEXT, 1, c->s, c->len);
        CFRAME(s, COMET_WS_OP_PONG, 1, "");
        got = events_any_split(s, MAX, __LINE__);
        assert_bytes(got->data, got->len, want->data, want->len, __LINE__);

        comet_buf_truncate(s, 0);
        CFRAME(s, COMET_WS_OP_TEXT, 0, "");
        for (j = 0; j < c->len; j++) {
            cframe(s, COMET_WS_OP_CONT, 0, c->s + j, 1);
        }
        CFRAME(s, COMET_WS_OP_CONT, 1, "");
        CFRAME(s, COMET_WS_OP_PONG, 1, "");
        got = events_step(s->data, s->len, MAX, 0);
        assert_bytes(got->data, got->len, want->data, want->len, __LINE__);

        for (cut = 0; cut <= c->len; cut++) {
            comet_buf_truncate(s, 0);
            cframe(s, COMET_WS_OP_TEXT, 0, c->s, cut);
            cframe(s, COMET_WS_OP_CONT, 1, c->s + cut, c->len - cut);
            CFRAME(s, COMET_WS_OP_PONG, 1, "");
            got = events_step(s->data, s->len, MAX, 1);
            assert_bytes(got->data, got->len, want->data, want->len,
                         __LINE__);
        }
    }
}
END_TEST

/* The check reads ASCII eight bytes at a time: a bad byte or a character
 * at any offset of a longer text, whole or in two fragments. */
START_TEST(utf8_check_finds_bytes_at_every_offset)
{
    char text[40];
    apr_size_t at, cut;

    for (at = 0; at < sizeof(text); at++) {
        memset(text, 'a', sizeof(text));
        text[at] = (char)0x80;
        ck_assert(!comet_ws_utf8_valid(text, sizeof(text)));
        text[at] = (char)0xc3;
        ck_assert(!comet_ws_utf8_valid(text, at + 1));
        if (at + 1 < sizeof(text)) {
            text[at + 1] = (char)0xa9;
            ck_assert(comet_ws_utf8_valid(text, sizeof(text)));
            for (cut = 0; cut <= sizeof(text); cut += 3) {
                comet_buf_t *s = new_buf(256);
                comet_buf_t *want = new_buf(256), *got;

                cframe(s, COMET_WS_OP_TEXT, 0, text, cut);
                cframe(s, COMET_WS_OP_CONT, 1, text + cut,
                       sizeof(text) - cut);
                comet_buf_puts(want, "T[");
                comet_buf_append(want, text, sizeof(text));
                comet_buf_puts(want, "]");
                got = events_step(s->data, s->len, MAX, 0);
                assert_bytes(got->data, got->len, want->data, want->len,
                             __LINE__);
            }
            text[at + 1] = (char)0xff;
            ck_assert(!comet_ws_utf8_valid(text, sizeof(text)));
        }
    }
}
END_TEST

START_TEST(invalid_utf8_fails_at_once_not_at_message_end)
{
    comet_buf_t *s = new_buf(4096);
    char p[1000];
    feeder_t *f;

    /* 6.4.x: the bad byte comes early in a long frame, the rest of the
     * frame has not arrived yet. */
    memset(p, 'a', sizeof(p));
    memcpy(p + 10, "\xf4\x90", 2);
    cframe(s, COMET_WS_OP_TEXT, 1, p, sizeof(p));
    f = feeder_new(MAX, 4096);
    ck_assert_int_eq(feed(f, s->data, 8 + 12), COMET_EPROTO);
    ASSERT_BUF(f->log, "ERR1007");
    /* The same in a continuation frame. */
    comet_buf_truncate(s, 0);
    CFRAME(s, COMET_WS_OP_TEXT, 0, "ok\xce");
    cframe(s, COMET_WS_OP_CONT, 1, p, sizeof(p));
    f = feeder_new(MAX, 4096);
    ck_assert_int_eq(feed(f, s->data, 9 + 8 + 1), COMET_EPROTO);
    ASSERT_BUF(f->log, "ERR1007");
}
END_TEST

START_TEST(binary_messages_are_not_utf8_checked)
{
    comet_buf_t *s = new_buf(4096);

    CFRAME(s, COMET_WS_OP_BINARY, 0, "\xff\xfe");
    CFRAME(s, COMET_WS_OP_CONT, 1, "\xc0");
    CFRAME(s, COMET_WS_OP_PING, 1, "\xc0");
    ASSERT_EVENTS(s, MAX, "B[\xff\xfe\xc0]PING[\xc0]");
}
END_TEST

/* ---- close (Autobahn 7.x) ----------------------------------------------- */

START_TEST(close_frames_give_code_and_reason)
{
    comet_buf_t *s = new_buf(4096);
    char reason[2 + 123];

    /* 7.3.1 */
    CFRAME(s, COMET_WS_OP_CLOSE, 1, "");
    ASSERT_EVENTS(s, MAX, "CLOSE1005[]");
    /* 7.3.3, 7.3.4 */
    comet_buf_truncate(s, 0);
    CFRAME(s, COMET_WS_OP_CLOSE, 1, "\x03\xe8");
    ASSERT_EVENTS(s, MAX, "CLOSE1000[]");
    comet_buf_truncate(s, 0);
    CFRAME(s, COMET_WS_OP_CLOSE, 1, "\x03\xe8Hello World!");
    ASSERT_EVENTS(s, MAX, "CLOSE1000[Hello World!]");
    comet_buf_truncate(s, 0);
    CFRAME(s, COMET_WS_OP_CLOSE, 1, "\x0f\xa0\xce\xba\xe1\xbd\xb9");
    ASSERT_EVENTS(s, MAX, "CLOSE4000[\xce\xba\xe1\xbd\xb9]");
    /* 7.3.5: the longest reason */
    comet_buf_truncate(s, 0);
    memset(reason, '*', sizeof(reason));
    reason[0] = 0x03;
    reason[1] = (char)0xe8;
    cframe(s, COMET_WS_OP_CLOSE, 1, reason, sizeof(reason));
    ck_assert_uint_eq(events_any_split(s, MAX, __LINE__)->len,
                      9 + 1 + 123 + 1);
}
END_TEST

START_TEST(close_frame_with_one_byte_fails_with_1002)
{
    comet_buf_t *s = new_buf(256);

    /* 7.3.2 */
    CFRAME(s, COMET_WS_OP_CLOSE, 1, "\x03");
    ASSERT_EVENTS(s, MAX, "ERR1002");
    ck_assert_int_eq(feed(feeder_new(MAX, 16), s->data, 2), COMET_EPROTO);
}
END_TEST

START_TEST(close_codes_are_checked_per_rfc_6455_section_7_4)
{
    static const int valid[] = { 1000, 1001, 1002, 1003, 1007, 1008, 1009,
                                 1010, 1011, 3000, 3999, 4000, 4999 };
    static const int invalid[] = { 0, 1, 999, 1004, 1005, 1006, 1012, 1013,
                                   1014, 1015, 1016, 1100, 2000, 2999,
                                   5000, 65535 };
    apr_size_t i;

    for (i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
        comet_buf_t *s = new_buf(256), *want = new_buf(256), *got;
        char p[2] = { (char)(valid[i] >> 8), (char)valid[i] };

        ck_assert(comet_ws_close_code_valid(valid[i]));
        cframe(s, COMET_WS_OP_CLOSE, 1, p, 2);
        comet_buf_printf(want, "CLOSE%d[]", valid[i]);
        got = events_any_split(s, MAX, __LINE__);
        assert_bytes(got->data, got->len, want->data, want->len, __LINE__);
    }
    for (i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
        comet_buf_t *s = new_buf(256);
        char p[2] = { (char)(invalid[i] >> 8), (char)invalid[i] };

        ck_assert(!comet_ws_close_code_valid(invalid[i]));
        cframe(s, COMET_WS_OP_CLOSE, 1, p, 2);
        ASSERT_EVENTS(s, MAX, "ERR1002");
    }
}
END_TEST

START_TEST(close_reason_that_is_not_utf8_fails_with_1007)
{
    comet_buf_t *s = new_buf(256);

    /* 7.5.1 */
    CFRAME(s, COMET_WS_OP_CLOSE, 1,
           "\x03\xe8\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"
           "edited");
    ASSERT_EVENTS(s, MAX, "ERR1007");
    comet_buf_truncate(s, 0);
    CFRAME(s, COMET_WS_OP_CLOSE, 1, "\x03\xe8\xce");
    ASSERT_EVENTS(s, MAX, "ERR1007");
}
END_TEST

START_TEST(nothing_is_read_after_a_close)
{
    comet_buf_t *s = new_buf(256);
    feeder_t *f = feeder_new(MAX, 256);
    comet_ws_event_t ev;
    apr_size_t used;
    char junk[] = "\x81\x02hi garbage";

    /* 7.1.x: frames after the close are ignored, whatever they are. */
    CFRAME(s, COMET_WS_OP_CLOSE, 1, "\x03\xe8");
    CFRAME(s, COMET_WS_OP_TEXT, 1, "late");
    ck_assert_int_eq(feed(f, s->data, s->len), APR_EOF);
    ASSERT_BUF(f->log, "CLOSE1000[]");
    ck_assert_int_eq(comet_ws_parse(f->parser, junk, sizeof(junk) - 1,
                                    &used, &ev), APR_EOF);
    ck_assert_uint_eq(used, sizeof(junk) - 1);
}
END_TEST

/* ---- errors ------------------------------------------------------------- */

START_TEST(errors_are_sticky_and_explained)
{
    feeder_t *f = feeder_new(MAX, 64);
    comet_ws_event_t ev;
    apr_size_t used = 99;
    char good[64];
    comet_buf_t b;
    int code = -1;

    ck_assert_str_eq(comet_ws_parser_error(f->parser, &code), "");
    ck_assert_int_eq(code, 0);
    ck_assert_int_eq(feed(f, "\x83\x80", 2), COMET_EPROTO);
    ck_assert_str_eq(comet_ws_parser_error(f->parser, &code),
                     "unknown opcode");
    ck_assert_int_eq(code, 1002);
    comet_buf_wrap(&b, good, sizeof(good));
    CFRAME(&b, COMET_WS_OP_TEXT, 1, "fine");
    ck_assert_int_eq(comet_ws_parse(f->parser, b.data, b.len, &used, &ev),
                     COMET_EPROTO);
    ck_assert_uint_eq(used, b.len);
    ck_assert_int_eq(comet_ws_parser_init(f->parser, 0), APR_EINVAL);
}
END_TEST

START_TEST(release_in_the_middle_of_a_message_fails_the_parser)
{
    feeder_t *f = feeder_new(MAX, 256);
    comet_buf_t *s = new_buf(256);
    int code;

    CFRAME(s, COMET_WS_OP_TEXT, 0, "part");
    ck_assert_int_eq(feed(f, s->data, s->len), APR_INCOMPLETE);
    ck_assert_ptr_nonnull(f->parser->msg);
    comet_ws_parser_release(f->parser);
    ck_assert_ptr_null(f->parser->msg);
    comet_ws_parser_error(f->parser, &code);
    ck_assert_int_eq(code, 1011);
    ck_assert_int_eq(feed(f, "\x80\x80", 2), APR_ENOMEM);
}
END_TEST

/* ---- encoder ------------------------------------------------------------ */

START_TEST(server_frames_have_exact_bytes)
{
    comet_buf_t *b = new_buf(1 << 20);
    unsigned char h[COMET_WS_SERVER_HEADER_MAX];
    char *p = calloc(1, 70000);

    ck_assert_int_eq(comet_ws_frame(b, COMET_WS_OP_TEXT, "hello", 5),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_ws_frame(b, COMET_WS_OP_BINARY, "", 0),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_ws_frame(b, COMET_WS_OP_PING, "x", 1),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_ws_frame(b, COMET_WS_OP_PONG, "y", 1),
                     APR_SUCCESS);
    ASSERT_BUF(b, "\x81\x05hello\x82\x00\x89\x01x\x8a\x01y");

    ck_assert_uint_eq(comet_ws_frame_header(h, COMET_WS_OP_TEXT, 125), 2);
    ck_assert_int_eq(memcmp(h, "\x81\x7d", 2), 0);
    ck_assert_uint_eq(comet_ws_frame_header(h, COMET_WS_OP_TEXT, 126), 4);
    ck_assert_int_eq(memcmp(h, "\x81\x7e\x00\x7e", 4), 0);
    ck_assert_uint_eq(comet_ws_frame_header(h, COMET_WS_OP_BINARY, 65535), 4);
    ck_assert_int_eq(memcmp(h, "\x82\x7e\xff\xff", 4), 0);
    ck_assert_uint_eq(comet_ws_frame_header(h, COMET_WS_OP_BINARY, 65536),
                      10);
    ck_assert_int_eq(memcmp(h, "\x82\x7f\0\0\0\0\0\x01\0\0", 10), 0);
    ck_assert_uint_eq(comet_ws_frame_header(h, COMET_WS_OP_TEXT,
                                            APR_UINT64_C(0x123456789a)), 10);
    ck_assert_int_eq(memcmp(h, "\x81\x7f\0\0\0\x12\x34\x56\x78\x9a", 10), 0);

    comet_buf_truncate(b, 0);
    ck_assert_int_eq(comet_ws_frame(b, COMET_WS_OP_BINARY, p, 70000),
                     APR_SUCCESS);
    ck_assert_uint_eq(b->len, 70010);
    ck_assert_int_eq(memcmp(b->data, "\x82\x7f\0\0\0\0\0\x01\x11\x70", 10),
                     0);
    free(p);
}
END_TEST

START_TEST(frames_that_may_not_be_sent_write_nothing)
{
    comet_buf_t *b = new_buf(1024), small;
    char p[126], mem[8];

    memset(p, 'p', sizeof(p));
    ck_assert_int_eq(comet_ws_frame(b, COMET_WS_OP_PING, p, 126), APR_EINVAL);
    ck_assert_int_eq(comet_ws_frame(b, COMET_WS_OP_CLOSE, p, 126),
                     APR_EINVAL);
    ck_assert_int_eq(comet_ws_frame(b, COMET_WS_OP_CONT, "a", 1), APR_EINVAL);
    ck_assert_int_eq(comet_ws_frame(b, 3, "a", 1), APR_EINVAL);
    ck_assert_uint_eq(b->len, 0);
    comet_buf_wrap(&small, mem, sizeof(mem));
    ck_assert_int_eq(comet_ws_frame(&small, COMET_WS_OP_TEXT, "1234567", 7),
                     APR_ENOSPC);
    ck_assert_uint_eq(small.len, 0);
    ck_assert_int_eq(comet_ws_frame(&small, COMET_WS_OP_TEXT, "123456", 6),
                     APR_SUCCESS);
    ck_assert_uint_eq(small.len, 8);
}
END_TEST

START_TEST(close_frames_cut_the_reason_at_a_character_boundary)
{
    comet_buf_t *b = new_buf(1024);
    char reason[200];
    int i;

    ck_assert_int_eq(comet_ws_close_frame(b, 0, "ignored", 7), APR_SUCCESS);
    ASSERT_BUF(b, "\x88\x00");
    comet_buf_truncate(b, 0);
    ck_assert_int_eq(comet_ws_close_frame(b, 1000, "bye", 3), APR_SUCCESS);
    ASSERT_BUF(b, "\x88\x05\x03\xe8" "bye");
    comet_buf_truncate(b, 0);
    ck_assert_int_eq(comet_ws_close_frame(b, 1001, NULL, 0), APR_SUCCESS);
    ASSERT_BUF(b, "\x88\x02\x03\xe9");
    ck_assert_int_eq(comet_ws_close_frame(b, 1005, "", 0), APR_EINVAL);
    ck_assert_int_eq(comet_ws_close_frame(b, 1006, "", 0), APR_EINVAL);
    ck_assert_int_eq(comet_ws_close_frame(b, 999, "", 0), APR_EINVAL);

    /* 62 two-byte characters are 124 bytes: one must go, whole. */
    for (i = 0; i < 62; i++) {
        memcpy(reason + 2 * i, "\xc3\xa9", 2);
    }
    comet_buf_truncate(b, 0);
    ck_assert_int_eq(comet_ws_close_frame(b, 1008, reason, 124),
                     APR_SUCCESS);
    ck_assert_uint_eq(b->len, 2 + 2 + 122);
    ck_assert_int_eq((unsigned char)b->data[1], 124);
    ck_assert(comet_ws_utf8_valid(b->data + 4, 122));
    /* 41 three-byte characters are exactly 123 bytes; 42 are cut to 41. */
    for (i = 0; i < 42; i++) {
        memcpy(reason + 3 * i, "\xe2\x82\xac", 3);
    }
    comet_buf_truncate(b, 0);
    ck_assert_int_eq(comet_ws_close_frame(b, 1000, reason, 126),
                     APR_SUCCESS);
    ck_assert_uint_eq(b->len, 2 + 2 + 123);
    /* Four-byte characters: 30 fit in 120, the 31st would need 124. */
    for (i = 0; i < 40; i++) {
        memcpy(reason + 4 * i, "\xf0\x9f\x98\x80", 4);
    }
    comet_buf_truncate(b, 0);
    ck_assert_int_eq(comet_ws_close_frame(b, 1000, reason, 160),
                     APR_SUCCESS);
    ck_assert_uint_eq(b->len, 2 + 2 + 120);
    /* A reason that is not UTF-8 is left out, not sent. */
    comet_buf_truncate(b, 0);
    ck_assert_int_eq(comet_ws_close_frame(b, 1011, "bad\xff", 4),
                     APR_SUCCESS);
    ASSERT_BUF(b, "\x88\x02\x03\xf3");
}
END_TEST

START_TEST(frame_begin_end_wraps_a_payload_formatted_in_place)
{
    comet_buf_t *b = new_buf(1 << 20), small;
    apr_size_t mark, i;
    char mem[40];

    comet_buf_puts(b, "prefix");
    ck_assert_int_eq(comet_ws_frame_begin(b, &mark), APR_SUCCESS);
    ck_assert_uint_eq(mark, 6);
    comet_buf_puts(b, "{\"a\":1}");
    ck_assert_int_eq(comet_ws_frame_end(b, mark, COMET_WS_OP_TEXT),
                     APR_SUCCESS);
    ASSERT_BUF(b, "prefix\x81\x07{\"a\":1}");

    /* 126..65535: the header fills the reserved room exactly. */
    comet_buf_truncate(b, 0);
    ck_assert_int_eq(comet_ws_frame_begin(b, &mark), APR_SUCCESS);
    for (i = 0; i < 300; i++) {
        comet_buf_putc(b, (char)('0' + i % 10));
    }
    ck_assert_int_eq(comet_ws_frame_end(b, mark, COMET_WS_OP_TEXT),
                     APR_SUCCESS);
    ck_assert_uint_eq(b->len, 304);
    ck_assert_int_eq(memcmp(b->data, "\x81\x7e\x01\x2c" "0123", 8), 0);
    ck_assert_int_eq(b->data[303], '9');

    /* Large: the payload moves up. */
    comet_buf_truncate(b, 0);
    ck_assert_int_eq(comet_ws_frame_begin(b, &mark), APR_SUCCESS);
    for (i = 0; i < 70000; i++) {
        comet_buf_putc(b, (char)('a' + i % 26));
    }
    ck_assert_int_eq(comet_ws_frame_end(b, mark, COMET_WS_OP_BINARY),
                     APR_SUCCESS);
    ck_assert_uint_eq(b->len, 70010);
    ck_assert_int_eq(memcmp(b->data, "\x82\x7f\0\0\0\0\0\x01\x11\x70" "abc",
                            13), 0);
    ck_assert_int_eq(b->data[70009], (char)('a' + 69999 % 26));

    /* Whole frame or nothing. */
    comet_buf_wrap(&small, mem, sizeof(mem));
    comet_buf_puts(&small, "ab");
    ck_assert_int_eq(comet_ws_frame_begin(&small, &mark), APR_SUCCESS);
    for (i = 0; i < 126; i++) {
        if (comet_buf_putc(&small, 'x') != APR_SUCCESS) {
            break;
        }
    }
    ck_assert_int_eq(comet_ws_frame_end(&small, mark, 3), APR_EINVAL);
    ck_assert_uint_eq(small.len, 2);
    ck_assert_int_eq(comet_ws_frame_end(&small, 1, COMET_WS_OP_TEXT),
                     APR_EINVAL);
}
END_TEST

START_TEST(frame_end_that_cannot_grow_drops_the_frame)
{
    comet_buf_t *b;
    apr_size_t mark, i;

    /* Room for 4 + 65536 but not for the 10-byte header it needs. */
    ck_assert_int_eq(comet_buf_create(&b, comet_test_pool, 0, 2 + 4 + 65536),
                     APR_SUCCESS);
    comet_buf_puts(b, "ok");
    ck_assert_int_eq(comet_ws_frame_begin(b, &mark), APR_SUCCESS);
    for (i = 0; i < 65536; i++) {
        ck_assert_int_eq(comet_buf_putc(b, 'x'), APR_SUCCESS);
    }
    ck_assert_int_eq(comet_ws_frame_end(b, mark, COMET_WS_OP_TEXT),
                     APR_ENOSPC);
    ASSERT_BUF(b, "ok");
}
END_TEST

START_TEST(client_frames_parse_back_to_the_same_bytes)
{
    static const unsigned char mask[4] = { 0x37, 0xfa, 0x21, 0x3d };
    comet_buf_t *b = new_buf(1 << 20);
    comet_buf_t *want = new_buf(1 << 20), *got;
    char *p = malloc(70000);
    apr_size_t i;

    /* RFC 6455 5.7's example: a masked "Hello". */
    ck_assert_int_eq(comet_ws_frame_client(b, COMET_WS_OP_TEXT, 1, 0, mask,
                                           "Hello", 5), APR_SUCCESS);
    ASSERT_BUF(b, "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58");
    for (i = 0; i < 70000; i++) {
        p[i] = (char)(i * 31);
    }
    comet_buf_truncate(b, 0);
    ck_assert_int_eq(comet_ws_frame_client(b, COMET_WS_OP_BINARY, 0, 0, mask,
                                           p, 70000), APR_SUCCESS);
    ck_assert_int_eq(comet_ws_frame_client(b, COMET_WS_OP_CONT, 1, 0, mask,
                                           p, 3), APR_SUCCESS);
    comet_buf_puts(want, "B[");
    comet_buf_append(want, p, 70000);
    comet_buf_append(want, p, 3);
    comet_buf_puts(want, "]");
    got = events_step(b->data, b->len, 1 << 17, 0);
    assert_bytes(got->data, got->len, want->data, want->len, __LINE__);
    got = events_step(b->data, b->len, 1 << 17, 777);
    assert_bytes(got->data, got->len, want->data, want->len, __LINE__);
    free(p);
}
END_TEST

Suite *test_comet_ws_suite(void)
{
    Suite *s = suite_create("comet_ws");
    TCase *th = tcase_create("handshake");
    TCase *tp = tcase_create("parser");
    TCase *te = tcase_create("encoder");

    tcase_add_checked_fixture(th, comet_test_pool_setup,
                              comet_test_pool_teardown);
    tcase_add_test(th, browser_handshake_is_accepted_with_the_rfc_accept_value);
    tcase_add_test(th, bad_handshakes_are_refused_with_400_or_426);
    tcase_add_test(th, upgrade_header_names_websocket_as_a_list_token);
    tcase_add_test(th, extension_offers_are_parsed_and_malformed_ones_noticed);
    tcase_add_test(th, subprotocol_is_the_clients_first_that_we_support);
    tcase_add_test(th, handshake_response_has_exact_bytes);
    suite_add_tcase(s, th);

    tcase_add_checked_fixture(tp, comet_test_pool_setup,
                              comet_test_pool_teardown);
    tcase_set_timeout(tp, 60);
    tcase_add_test(tp, text_and_binary_of_every_length_class_come_back);
    tcase_add_test(tp, whole_frame_is_returned_in_place_and_split_one_gathered);
    tcase_add_test(tp, frame_header_in_pieces_is_kept_by_the_parser);
    tcase_add_test(tp, pings_and_pongs_carry_their_payloads);
    tcase_add_test(tp, control_frames_over_125_bytes_are_refused);
    tcase_add_test(tp, reserved_bits_fail_with_1002_on_the_first_byte);
    tcase_add_test(tp, reserved_opcodes_fail_with_1002);
    tcase_add_test(tp, unmasked_frames_fail_with_1002);
    tcase_add_test(tp, lengths_not_in_shortest_form_fail_with_1002);
    tcase_add_test(tp, message_over_the_limit_fails_with_1009_on_its_header);
    tcase_add_test(tp, fragment_that_passes_the_limit_fails_with_1009);
    tcase_add_test(tp, limit_counts_each_message_on_its_own);
    tcase_add_test(tp, reassembly_buffer_is_bounded_and_given_back);
    tcase_add_test(tp, fragmented_messages_are_joined);
    tcase_add_test(tp, control_frames_may_come_between_fragments);
    tcase_add_test(tp, fragmented_control_frames_fail_with_1002);
    tcase_add_test(tp, continuation_with_no_message_open_fails_with_1002);
    tcase_add_test(tp, new_data_frame_in_an_open_message_fails_with_1002);
    tcase_add_test(tp, every_split_of_a_stream_gives_the_same_events);
    tcase_add_test(tp, utf8_check_matches_the_autobahn_table);
    tcase_add_test(tp, text_messages_are_utf8_checked_across_fragments);
    tcase_add_test(tp, utf8_check_finds_bytes_at_every_offset);
    tcase_add_test(tp, invalid_utf8_fails_at_once_not_at_message_end);
    tcase_add_test(tp, binary_messages_are_not_utf8_checked);
    tcase_add_test(tp, close_frames_give_code_and_reason);
    tcase_add_test(tp, close_frame_with_one_byte_fails_with_1002);
    tcase_add_test(tp, close_codes_are_checked_per_rfc_6455_section_7_4);
    tcase_add_test(tp, close_reason_that_is_not_utf8_fails_with_1007);
    tcase_add_test(tp, nothing_is_read_after_a_close);
    tcase_add_test(tp, errors_are_sticky_and_explained);
    tcase_add_test(tp, release_in_the_middle_of_a_message_fails_the_parser);
    suite_add_tcase(s, tp);

    tcase_add_checked_fixture(te, comet_test_pool_setup,
                              comet_test_pool_teardown);
    tcase_add_test(te, server_frames_have_exact_bytes);
    tcase_add_test(te, frames_that_may_not_be_sent_write_nothing);
    tcase_add_test(te, close_frames_cut_the_reason_at_a_character_boundary);
    tcase_add_test(te, frame_begin_end_wraps_a_payload_formatted_in_place);
    tcase_add_test(te, frame_end_that_cannot_grow_drops_the_frame);
    tcase_add_test(te, client_frames_parse_back_to_the_same_bytes);
    suite_add_tcase(s, te);
    return s;
}
