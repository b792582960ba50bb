/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * fuzz_ws.c -- libFuzzer target for the WebSocket frame parser and encoder
 * (comet_ws.c).
 *
 * Input: three bytes of settings, then the bytes a client sends.
 *   [0]     the message size limit (one of a few, from 1 byte up)
 *   [1]     the largest piece the stream is handed over in (1..256)
 *   [2]     seed of the piece sizes, fragment sizes and masks
 *
 * The stream is parsed twice: all at once, and in pieces through a
 * caller's buffer that keeps only what the parser did not consume (as the
 * hub will).  Checked:
 *   - consumed never exceeds what was passed; all of it unless an event
 *     came; an event consumes at least one byte;
 *   - every event keeps the rules: text is UTF-8, messages are within the
 *     limit, control payloads within 125 bytes, a close code is one that
 *     may be sent (or 1005 with nothing), nothing comes after a close,
 *     errors are sticky and carry 1002/1007/1009 and a reason;
 *   - both runs give the same events and end the same way;
 *   - each message, ping, pong and close, encoded again as a client would
 *     (masked, fragmented at random, pings between fragments) and parsed
 *     by a new parser, gives the same event with the same bytes; encoded
 *     as the server does, it has the right header and bytes.
 *
 * Build and run (the sanitizers make every check above fatal):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -I. \
 *       $(apr-1-config --cppflags --includes) tests/fuzz/fuzz_ws.c \
 *       comet_ws.c comet_buf.c comet_core.c -lapr-1 -laprutil-1 -o fuzz_ws
 *   ./fuzz_ws -max_len=8192 tests/fuzz/corpus/ws
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comet_ws.h"

#define CHECK(cond) do {                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "fuzz_ws.c:%d: check failed: %s\n", __LINE__,  \
                    #cond);                                                 \
            abort();                                                        \
        }                                                                   \
    } while (0)

static uint32_t rng;

static uint32_t rnd(void)
{
    /* xorshift32: the same input always takes the same path. */
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);

    CHECK(p != NULL);
    return p;
}

/* What a run saw, for comparing two runs: one record per event
 * (type, code, length, bytes) and the way it ended. */
typedef struct {
    unsigned char *p;
    size_t         len, cap;
} log_t;

static void log_put(log_t *log, const void *data, size_t n)
{
    if (n == 0) {
        return;
    }
    if (log->len + n > log->cap) {
        log->cap = (log->len + n) * 2 + 64;
        log->p = realloc(log->p, log->cap);
        CHECK(log->p != NULL);
    }
    memcpy(log->p + log->len, data, n);
    log->len += n;
}

static void log_event(log_t *log, const comet_ws_event_t *ev)
{
    int head[2] = { (int)ev->type, ev->code };

    log_put(log, head, sizeof(head));
    log_put(log, &ev->len, sizeof(ev->len));
    log_put(log, ev->data, ev->len);
}

static void check_event(const comet_ws_event_t *ev, size_t max_message)
{
    switch (ev->type) {
    case COMET_WS_EV_TEXT:
        CHECK(comet_ws_utf8_valid(ev->data, ev->len));
        /* fall through */
    case COMET_WS_EV_BINARY:
        CHECK(ev->len <= max_message);
        break;
    case COMET_WS_EV_PING:
    case COMET_WS_EV_PONG:
        CHECK(ev->len <= COMET_WS_CONTROL_MAX);
        break;
    case COMET_WS_EV_CLOSE:
        if (ev->code == COMET_WS_CLOSE_NO_STATUS) {
            CHECK(ev->len == 0);
        }
        else {
            CHECK(comet_ws_close_code_valid(ev->code));
            CHECK(ev->len <= COMET_WS_REASON_MAX);
            CHECK(comet_ws_utf8_valid(ev->data, ev->len));
        }
        break;
    default:
        CHECK(!"unknown event type");
    }
    CHECK(ev->data != NULL || ev->len == 0);
}

static int event_opcode(int type)
{
    switch (type) {
    case COMET_WS_EV_TEXT:   return COMET_WS_OP_TEXT;
    case COMET_WS_EV_BINARY: return COMET_WS_OP_BINARY;
    case COMET_WS_EV_PING:   return COMET_WS_OP_PING;
    case COMET_WS_EV_PONG:   return COMET_WS_OP_PONG;
    default:                 return COMET_WS_OP_CLOSE;
    }
}

static void random_mask(unsigned char mask[4])
{
    uint32_t r = rnd();

    memcpy(mask, &r, 4);
}

/* The event encoded as a client sends it, parsed by a new parser: the
 * same event (after any pings put between the fragments). */
static void check_client_roundtrip(const comet_ws_event_t *ev,
                                   size_t max_message)
{
    int op = event_opcode(ev->type), pings = 0, got_pings = 0;
    size_t nfrag = 1, off = 0, i, cap, used, pos;
    unsigned char mask[4];
    comet_ws_parser_t parser;
    comet_ws_event_t back;
    comet_buf_t out;
    const char *payload = ev->data;
    size_t plen = ev->len;
    char close_payload[2 + COMET_WS_REASON_MAX];
    char *mem;
    apr_status_t rv;

    if (op == COMET_WS_OP_CLOSE) {
        if (ev->code == COMET_WS_CLOSE_NO_STATUS) {
            plen = 0;
        }
        else {
            close_payload[0] = (char)(ev->code >> 8);
            close_payload[1] = (char)ev->code;
            memcpy(close_payload + 2, ev->data, ev->len);
            plen = ev->len + 2;
        }
        payload = close_payload;
    }
    if (!(op & 0x8)) {
        nfrag = 1 + rnd() % 4;
    }
    cap = plen + nfrag * (COMET_WS_HEADER_MAX + COMET_WS_HEADER_MAX + 4);
    mem = xmalloc(cap);
    comet_buf_wrap(&out, mem, cap);
    for (i = 0; i < nfrag; i++) {
        size_t n = i + 1 == nfrag ? plen - off
                                  : (plen - off) ? rnd() % (plen - off + 1) : 0;

        random_mask(mask);
        CHECK(comet_ws_frame_client(&out, i ? COMET_WS_OP_CONT : op,
                                    i + 1 == nfrag, 0, mask, payload + off,
                                    n) == APR_SUCCESS);
        off += n;
        if (i + 1 < nfrag && rnd() % 2) {
            random_mask(mask);
            CHECK(comet_ws_frame_client(&out, COMET_WS_OP_PING, 1, 0, mask,
                                        "ping", 4) == APR_SUCCESS);
            pings++;
        }
    }
    CHECK(comet_ws_parser_init(&parser, max_message) == APR_SUCCESS);
    pos = 0;
    for (;;) {
        rv = comet_ws_parse(&parser, out.data + pos, out.len - pos, &used,
                            &back);
        CHECK(rv == APR_SUCCESS);
        pos += used;
        if (back.type != COMET_WS_EV_PING || op == COMET_WS_OP_PING) {
            break;
        }
        CHECK(back.len == 4 && memcmp(back.data, "ping", 4) == 0);
        got_pings++;
    }
    CHECK(got_pings == pings);
    CHECK(pos == out.len);
    CHECK(back.type == ev->type);
    CHECK(back.code == ev->code);
    CHECK(back.len == ev->len);
    CHECK(ev->len == 0 || memcmp(back.data, ev->data, ev->len) == 0);
    comet_ws_parser_release(&parser);
    free(mem);
}

/* The event encoded as the server sends it: header and bytes. */
static void check_server_encoding(const comet_ws_event_t *ev)
{
    int op = event_opcode(ev->type);
    size_t cap = ev->len + COMET_WS_SERVER_HEADER_MAX + 4, hlen, mark;
    unsigned char hdr[COMET_WS_SERVER_HEADER_MAX];
    const unsigned char *h;
    comet_buf_t out;
    char *mem = xmalloc(cap);

    comet_buf_wrap(&out, mem, cap);
    if (op == COMET_WS_OP_CLOSE) {
        CHECK(comet_ws_close_frame(&out, ev->code == COMET_WS_CLOSE_NO_STATUS
                                         ? 0 : ev->code,
                                   ev->data, ev->len) == APR_SUCCESS);
        h = (const unsigned char *)out.data;
        CHECK(h[0] == 0x88);
        if (ev->code == COMET_WS_CLOSE_NO_STATUS) {
            CHECK(out.len == 2 && h[1] == 0);
        }
        else {
            CHECK(out.len == 4 + ev->len && h[1] == 2 + ev->len);
            CHECK(((h[2] << 8) | h[3]) == ev->code);
            CHECK(memcmp(h + 4, ev->data, ev->len) == 0);
        }
        free(mem);
        return;
    }
    CHECK(comet_ws_frame(&out, op, ev->data, ev->len) == APR_SUCCESS);
    hlen = comet_ws_frame_header(hdr, op, ev->len);
    CHECK(out.len == hlen + ev->len);
    CHECK(memcmp(out.data, hdr, hlen) == 0);
    CHECK(memcmp(out.data + hlen, ev->data, ev->len) == 0);
    h = hdr;
    CHECK(h[0] == (0x80 | op));
    CHECK((h[1] & 0x80) == 0);
    if (hlen == 2) {
        CHECK(h[1] == ev->len && ev->len < 126);
    }
    else if (hlen == 4) {
        CHECK(h[1] == 126 && ((size_t)h[2] << 8 | h[3]) == ev->len
              && ev->len >= 126);
    }
    else {
        CHECK(hlen == 10 && h[1] == 127 && ev->len > 0xFFFF);
    }
    /* Formatted in place: the same bytes. */
    comet_buf_truncate(&out, 0);
    CHECK(comet_ws_frame_begin(&out, &mark) == APR_SUCCESS);
    CHECK(comet_buf_append(&out, ev->data, ev->len) == APR_SUCCESS);
    CHECK(comet_ws_frame_end(&out, mark, op) == APR_SUCCESS);
    CHECK(out.len == hlen + ev->len);
    CHECK(memcmp(out.data, hdr, hlen) == 0);
    CHECK(memcmp(out.data + hlen, ev->data, ev->len) == 0);
    free(mem);
}

/* Feed in[0, n) in pieces of 1..max_piece bytes (0: all at once) through
 * a caller's buffer; log what comes out. */
static void run(const unsigned char *in, size_t n, size_t max_message,
                size_t max_piece, log_t *log, int deep)
{
    comet_ws_parser_t parser;
    comet_ws_event_t ev;
    char *buf = xmalloc(n);
    size_t have = 0, fed = 0, used;
    apr_status_t rv = APR_INCOMPLETE;
    int closed = 0, code;

    CHECK(comet_ws_parser_init(&parser, max_message) == APR_SUCCESS);
    do {
        size_t piece = max_piece ? 1 + rnd() % max_piece : n - fed;

        if (piece > n - fed) {
            piece = n - fed;
        }
        memcpy(buf + have, in + fed, piece);
        have += piece;
        fed += piece;
        for (;;) {
            rv = comet_ws_parse(&parser, buf, have, &used, &ev);
            CHECK(used <= have);
            if (rv == APR_SUCCESS) {
                CHECK(!closed);
                CHECK(used >= 1);
                check_event(&ev, max_message);
                log_event(log, &ev);
                if (deep) {
                    check_client_roundtrip(&ev, max_message);
                    check_server_encoding(&ev);
                }
                closed = ev.type == COMET_WS_EV_CLOSE;
            }
            else {
                CHECK(used == have);
            }
            memmove(buf, buf + used, have - used);
            have -= used;
            if (rv != APR_SUCCESS) {
                break;
            }
        }
        if (rv == APR_EOF) {
            CHECK(closed);
        }
        else if (rv != APR_INCOMPLETE) {
            const char *why = comet_ws_parser_error(&parser, &code);
            comet_ws_event_t again;
            char byte = 0;

            CHECK(why[0] != '\0');
            CHECK((code == 1002 && rv == COMET_EPROTO)
                  || (code == 1007 && rv == COMET_EPROTO)
                  || (code == 1009 && rv == COMET_ETOOBIG)
                  || (code == 1011 && rv == APR_ENOMEM));
            CHECK(comet_ws_parse(&parser, &byte, 1, &used, &again) == rv);
            CHECK(used == 1);
            log_put(log, &code, sizeof(code));
            break;
        }
        else {
            CHECK(!closed);
            CHECK(have == 0);
        }
    } while (fed < n);
    log_put(log, &rv, sizeof(rv));
    comet_ws_parser_release(&parser);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t limits[] = { 1, 2, 125, 126, 300, 65535, 65536,
                                     1 << 20 };
    size_t max_message, max_piece;
    log_t whole = { NULL, 0, 0 }, pieces = { NULL, 0, 0 };

    if (size < 3) {
        return 0;
    }
    max_message = limits[data[0] % (sizeof(limits) / sizeof(limits[0]))];
    max_piece = 1 + data[1];
    rng = 0x9e3779b9u ^ ((uint32_t)data[2] * 0x01000193u);
    data += 3;
    size -= 3;

    run(data, size, max_message, 0, &whole, 1);
    run(data, size, max_message, max_piece, &pieces, 0);
    CHECK(whole.len == pieces.len);
    CHECK(whole.len == 0 || memcmp(whole.p, pieces.p, whole.len) == 0);
    free(whole.p);
    free(pieces.p);
    return 0;
}
