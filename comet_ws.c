/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

#include <stdlib.h>
#include <string.h>

#include <apr_base64.h>
#include <apr_sha1.h>
#include <apr_strings.h>

#include "comet_ws.h"

/* RFC 6455 1.3: what the key is hashed with. */
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* The reassembly buffer's first size, and the largest one kept after a
 * message: a connection that sent one big message does not hold its
 * memory while it idles. */
#define WS_MSG_MIN   256
#define WS_MSG_KEEP  256

/* Parser states. */
#define WS_HEADER   0
#define WS_PAYLOAD  1
#define WS_CLOSED   2
#define WS_ERROR    3

/* ---- UTF-8 -----------------------------------------------------------------
 * One byte at a time, so that a text message split anywhere (fragments,
 * reads) is checked as its bytes come.  The state is the number of
 * continuation bytes still due and the range the next one must fall in:
 * the ranges after E0, ED, F0 and F4 are what exclude overlongs,
 * surrogates and values above U+10FFFF (RFC 3629 section 4). */

typedef struct {
    unsigned char need, lo, hi;
} utf8_state_t;

/* 0 when b cannot come next. */
static int utf8_step(utf8_state_t *u, unsigned char b)
{
    if (u->need) {
        if (b < u->lo || b > u->hi) {
            return 0;
        }
        u->need--;
        u->lo = 0x80;
        u->hi = 0xBF;
        return 1;
    }
    if (b < 0x80) {
        return 1;
    }
    u->lo = 0x80;
    u->hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
        u->need = 1;
    }
    else if (b >= 0xE0 && b <= 0xEF) {
        u->need = 2;
        if (b == 0xE0) {
            u->lo = 0xA0;               /* below: overlong                 */
        }
        else if (b == 0xED) {
            u->hi = 0x9F;               /* above: U+D800..U+DFFF           */
        }
    }
    else if (b >= 0xF0 && b <= 0xF4) {
        u->need = 3;
        if (b == 0xF0) {
            u->lo = 0x90;               /* below: overlong                 */
        }
        else if (b == 0xF4) {
            u->hi = 0x8F;               /* above: beyond U+10FFFF          */
        }
    }
    else {
        return 0;                       /* 80..C1 (stray, overlong), F5..FF */
    }
    return 1;
}

static int utf8_run(utf8_state_t *u, const unsigned char *s, apr_size_t len)
{
    apr_size_t i = 0;
    apr_uint64_t w;

    while (i < len) {
        if (!u->need) {
            /* ASCII runs eight bytes at a time. */
            while (len - i >= 8) {
                memcpy(&w, s + i, 8);
                if (w & APR_UINT64_C(0x8080808080808080)) {
                    break;
                }
                i += 8;
            }
            if (i == len) {
                break;
            }
            if (s[i] < 0x80) {
                i++;
                continue;
            }
        }
        if (!utf8_step(u, s[i])) {
            return 0;
        }
        i++;
    }
    return 1;
}

int comet_ws_utf8_valid(const char *s, apr_size_t len)
{
    utf8_state_t u = { 0, 0x80, 0xBF };

    return utf8_run(&u, (const unsigned char *)s, len) && u.need == 0;
}

int comet_ws_close_code_valid(int code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1011)
           || (code >= 3000 && code <= 4999);
}

/* ---- handshake ---------------------------------------------------------- */

#define WS_OWS(c) ((c) == ' ' || (c) == '\t')

/* RFC 7230 3.2.6 tchar. */
static int is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
        || (c >= '0' && c <= '9')) {
        return 1;
    }
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* The next element of a comma-separated list (RFC 7230 7: empty elements
 * and blanks around them are skipped), trimmed.  0 at the end. */
static int list_next(const char **cur, const char **tok, apr_size_t *len)
{
    const char *s = *cur, *e;

    while (WS_OWS(*s) || *s == ',') {
        s++;
    }
    if (!*s) {
        *cur = s;
        return 0;
    }
    for (e = s; *e && *e != ','; e++) {
    }
    *cur = e;
    *tok = s;
    while (e > s && WS_OWS(e[-1])) {
        e--;
    }
    *len = (apr_size_t)(e - s);
    return 1;
}

/* Whether a list has the element name (case-insensitive). */
static int list_has(const char *list, const char *name)
{
    apr_size_t nlen = strlen(name), len;
    const char *tok;

    if (!list) {
        return 0;
    }
    while (list_next(&list, &tok, &len)) {
        if (len == nlen && strncasecmp(tok, name, len) == 0) {
            return 1;
        }
    }
    return 0;
}

int comet_ws_is_upgrade(const char *upgrade)
{
    return list_has(upgrade, "websocket");
}

/* "HTTP/<major>.<minor>" with major.minor >= 1.1. */
static int http11_or_later(const char *proto)
{
    int major = 0, minor = 0, digits = 0;

    if (!proto || strncmp(proto, "HTTP/", 5) != 0) {
        return 0;
    }
    proto += 5;
    for (; *proto >= '0' && *proto <= '9' && digits < 4; proto++, digits++) {
        major = major * 10 + (*proto - '0');
    }
    if (!digits || *proto++ != '.') {
        return 0;
    }
    for (digits = 0; *proto >= '0' && *proto <= '9' && digits < 4;
         proto++, digits++) {
        minor = minor * 10 + (*proto - '0');
    }
    if (!digits || *proto) {
        return 0;
    }
    return major > 1 || (major == 1 && minor >= 1);
}

static void trim(const char *s, const char **start, apr_size_t *len)
{
    const char *e;

    while (WS_OWS(*s)) {
        s++;
    }
    e = s + strlen(s);
    while (e > s && WS_OWS(e[-1])) {
        e--;
    }
    *start = s;
    *len = (apr_size_t)(e - s);
}

/* base64 of 16 bytes: 22 characters of the alphabet and "==". */
static int key_valid(const char *key)
{
    const char *k;
    apr_size_t len, i;

    trim(key, &k, &len);
    if (len != COMET_WS_KEY_LEN || k[22] != '=' || k[23] != '=') {
        return 0;
    }
    for (i = 0; i < 22; i++) {
        unsigned char c = (unsigned char)k[i];

        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')
              || (c >= '0' && c <= '9') || c == '+' || c == '/')) {
            return 0;
        }
    }
    return 1;
}

int comet_ws_handshake_check(const comet_ws_request_t *req,
                             const char **reason)
{
    const char *v;
    apr_size_t vlen;

    if (!req->method || strcmp(req->method, "GET") != 0) {
        *reason = "a WebSocket handshake must be a GET request";
        return 400;
    }
    if (!http11_or_later(req->protocol)) {
        *reason = "a WebSocket handshake needs HTTP/1.1";
        return 400;
    }
    if (!comet_ws_is_upgrade(req->upgrade)) {
        *reason = "no \"Upgrade: websocket\" header";
        return 400;
    }
    if (!list_has(req->connection, "upgrade")) {
        *reason = "no \"upgrade\" token in the Connection header";
        return 400;
    }
    if (!req->version) {
        *reason = "no Sec-WebSocket-Version header";
        return 400;
    }
    trim(req->version, &v, &vlen);
    if (vlen != 2 || memcmp(v, "13", 2) != 0) {
        *reason = "unsupported WebSocket version (13 is supported)";
        return 426;
    }
    if (!req->key) {
        *reason = "no Sec-WebSocket-Key header";
        return 400;
    }
    if (!key_valid(req->key)) {
        *reason = "Sec-WebSocket-Key is not the base64 of 16 bytes";
        return 400;
    }
    *reason = "";
    return 101;
}

void comet_ws_accept_key(const char *key, char out[COMET_WS_ACCEPT_LEN + 1])
{
    unsigned char digest[APR_SHA1_DIGESTSIZE];
    apr_sha1_ctx_t ctx;
    const char *k;
    apr_size_t len;

    trim(key, &k, &len);
    apr_sha1_init(&ctx);
    apr_sha1_update(&ctx, k, (unsigned int)len);
    apr_sha1_update(&ctx, WS_GUID, sizeof(WS_GUID) - 1);
    apr_sha1_final(digest, &ctx);
    apr_base64_encode_binary(out, digest, APR_SHA1_DIGESTSIZE);
}

/* An extension list (RFC 6455 9.1):
 *   1#( token *( OWS ";" OWS token [ "=" ( token / quoted-string ) ] ) )
 * Walked whole, so that a malformed value reads as such even when the
 * name comes before the fault. */
int comet_ws_extension_offered(const char *s, const char *name)
{
    apr_size_t nlen = strlen(name);
    int found = 0, elements = 0;

    if (!s) {
        return 0;
    }
    for (;;) {
        const char *tok;

        while (WS_OWS(*s) || *s == ',') {
            s++;
        }
        if (!*s) {
            break;
        }
        tok = s;
        while (is_tchar((unsigned char)*s)) {
            s++;
        }
        if (s == tok) {
            return -1;
        }
        if ((apr_size_t)(s - tok) == nlen
            && strncasecmp(tok, name, nlen) == 0) {
            found = 1;
        }
        elements++;
        for (;;) {
            const char *p;

            while (WS_OWS(*s)) {
                s++;
            }
            if (*s != ';') {
                break;
            }
            s++;
            while (WS_OWS(*s)) {
                s++;
            }
            for (p = s; is_tchar((unsigned char)*s); s++) {
            }
            if (s == p) {
                return -1;
            }
            while (WS_OWS(*s)) {
                s++;
            }
            if (*s != '=') {
                continue;
            }
            s++;
            while (WS_OWS(*s)) {
                s++;
            }
            if (*s == '"') {
                for (s++; *s && *s != '"'; s++) {
                    if (*s == '\\' && s[1]) {
                        s++;
                    }
                }
                if (*s++ != '"') {
                    return -1;
                }
            }
            else {
                for (p = s; is_tchar((unsigned char)*s); s++) {
                }
                if (s == p) {
                    return -1;
                }
            }
        }
        while (WS_OWS(*s)) {
            s++;
        }
        if (*s && *s != ',') {
            return -1;
        }
    }
    return elements ? found : 0;
}

const char *comet_ws_pick_protocol(const char *offered,
                                   const char *const *supported,
                                   apr_size_t n, apr_size_t *len)
{
    const char *tok;
    apr_size_t tlen, i;

    if (!offered) {
        return NULL;
    }
    while (list_next(&offered, &tok, &tlen)) {
        for (i = 0; i < n; i++) {
            if (strlen(supported[i]) == tlen
                && memcmp(supported[i], tok, tlen) == 0) {
                *len = tlen;
                return tok;
            }
        }
    }
    return NULL;
}

apr_status_t comet_ws_handshake_response(comet_buf_t *out,
                                         const char *accept,
                                         const char *protocol,
                                         apr_size_t protocol_len)
{
    apr_size_t start = out->len, i;
    apr_status_t rv;

    if (protocol) {
        /* It goes into a header line: only a token may. */
        if (!protocol_len) {
            return APR_EINVAL;
        }
        for (i = 0; i < protocol_len; i++) {
            if (!is_tchar((unsigned char)protocol[i])) {
                return APR_EINVAL;
            }
        }
    }
    rv = comet_buf_printf(out, "HTTP/1.1 101 Switching Protocols\r\n"
                          "Upgrade: websocket\r\n"
                          "Connection: Upgrade\r\n"
                          "Sec-WebSocket-Accept: %s\r\n", accept);
    if (rv == APR_SUCCESS && protocol) {
        rv = comet_buf_printf(out, "Sec-WebSocket-Protocol: %.*s\r\n",
                              (int)protocol_len, protocol);
    }
    if (rv == APR_SUCCESS) {
        rv = comet_buf_append(out, "\r\n", 2);
    }
    if (rv != APR_SUCCESS) {
        comet_buf_truncate(out, start);
    }
    return rv;
}

/* ---- parser ------------------------------------------------------------- */

apr_status_t comet_ws_parser_init(comet_ws_parser_t *parser,
                                  apr_size_t max_message)
{
    memset(parser, 0, sizeof(*parser));
    if (max_message == 0) {
        return APR_EINVAL;
    }
    parser->max_message = max_message;
    parser->state = WS_HEADER;
    return APR_SUCCESS;
}

static apr_status_t parser_cleanup(void *data)
{
    comet_ws_parser_release(data);
    return APR_SUCCESS;
}

apr_status_t comet_ws_parser_create(comet_ws_parser_t **parserp,
                                    apr_size_t max_message, apr_pool_t *p)
{
    comet_ws_parser_t *parser = apr_palloc(p, sizeof(*parser));
    apr_status_t rv = comet_ws_parser_init(parser, max_message);

    if (rv != APR_SUCCESS) {
        return rv;
    }
    apr_pool_cleanup_register(p, parser, parser_cleanup,
                              apr_pool_cleanup_null);
    *parserp = parser;
    return APR_SUCCESS;
}

void comet_ws_parser_release(comet_ws_parser_t *parser)
{
    free(parser->msg);
    parser->msg = NULL;
    parser->msg_len = parser->msg_cap = 0;
    if (parser->msg_op && parser->state != WS_ERROR) {
        /* Its bytes are gone: the message cannot be finished. */
        parser->msg_op = 0;
        parser->state = WS_ERROR;
        parser->err = APR_ENOMEM;
        parser->errcode = COMET_WS_CLOSE_INTERNAL;
        parser->errmsg = "message buffer released";
    }
}

const char *comet_ws_parser_error(const comet_ws_parser_t *parser, int *code)
{
    if (parser->state != WS_ERROR) {
        *code = 0;
        return "";
    }
    *code = parser->errcode;
    return parser->errmsg;
}

int comet_ws_parser_in_message(const comet_ws_parser_t *parser)
{
    return parser->msg_op != 0;
}

static apr_status_t fail(comet_ws_parser_t *parser, int code,
                         const char *msg)
{
    parser->state = WS_ERROR;
    parser->errcode = code;
    parser->errmsg = msg;
    parser->err = code == COMET_WS_CLOSE_TOO_BIG ? COMET_ETOOBIG
                  : code == COMET_WS_CLOSE_INTERNAL ? APR_ENOMEM
                  : COMET_EPROTO;
    return parser->err;
}

/* What h[0, n) shows of a frame header, checked as far as it goes, so
 * that a bad frame fails on its first bytes.  1: complete (*hlen, *plen);
 * 0: a valid beginning; -1: failed.  Runs again over the same saved bytes
 * when a header comes in pieces; nothing it reads changes meanwhile. */
static int header_check(comet_ws_parser_t *parser, const unsigned char *h,
                        apr_size_t n, apr_size_t *hlen, apr_uint64_t *plen)
{
    apr_uint64_t len;
    int op, fin, l7;
    apr_size_t ext, i;

    if (n < 1) {
        return 0;
    }
    if (h[0] & 0x70) {
        fail(parser, COMET_WS_CLOSE_PROTOCOL,
             "reserved bits set, no extension was negotiated");
        return -1;
    }
    op = h[0] & 0x0F;
    fin = h[0] & 0x80;
    switch (op) {
    case COMET_WS_OP_CONT:
        if (!parser->msg_op) {
            fail(parser, COMET_WS_CLOSE_PROTOCOL,
                 "continuation frame with no message open");
            return -1;
        }
        break;
    case COMET_WS_OP_TEXT:
    case COMET_WS_OP_BINARY:
        if (parser->msg_op) {
            fail(parser, COMET_WS_CLOSE_PROTOCOL,
                 "new data frame while a fragmented message is open");
            return -1;
        }
        break;
    case COMET_WS_OP_CLOSE:
    case COMET_WS_OP_PING:
    case COMET_WS_OP_PONG:
        if (!fin) {
            fail(parser, COMET_WS_CLOSE_PROTOCOL, "fragmented control frame");
            return -1;
        }
        break;
    default:
        fail(parser, COMET_WS_CLOSE_PROTOCOL, "unknown opcode");
        return -1;
    }
    if (n < 2) {
        return 0;
    }
    if (!(h[1] & 0x80)) {
        fail(parser, COMET_WS_CLOSE_PROTOCOL, "unmasked client frame");
        return -1;
    }
    l7 = h[1] & 0x7F;
    if (op & 0x8) {
        if (l7 > COMET_WS_CONTROL_MAX) {
            fail(parser, COMET_WS_CLOSE_PROTOCOL,
                 "control frame longer than 125 bytes");
            return -1;
        }
        if (op == COMET_WS_OP_CLOSE && l7 == 1) {
            fail(parser, COMET_WS_CLOSE_PROTOCOL,
                 "close frame with a 1-byte payload");
            return -1;
        }
    }
    ext = l7 == 126 ? 2 : l7 == 127 ? 8 : 0;
    if (n < 2 + ext) {
        return 0;
    }
    if (ext) {
        len = 0;
        for (i = 0; i < ext; i++) {
            len = (len << 8) | h[2 + i];
        }
        if (ext == 8 && (h[2] & 0x80)) {
            fail(parser, COMET_WS_CLOSE_PROTOCOL,
                 "frame length with the most significant bit set");
            return -1;
        }
        if (len < (ext == 2 ? 126 : 65536)) {
            fail(parser, COMET_WS_CLOSE_PROTOCOL,
                 "frame length not in its shortest form");
            return -1;
        }
    }
    else {
        len = (apr_uint64_t)l7;
    }
    /* What the message holds so far (a new one: nothing yet); never more
     * than max_message, so this cannot wrap. */
    if (!(op & 0x8)
        && len > parser->max_message
                 - (op == COMET_WS_OP_CONT ? parser->msg_len : 0)) {
        fail(parser, COMET_WS_CLOSE_TOO_BIG, "message too big");
        return -1;
    }
    if (n < 2 + ext + 4) {
        return 0;
    }
    *hlen = 2 + ext + 4;
    *plen = len;
    return 1;
}

/* The header length once its second byte is known. */
static apr_size_t header_size(unsigned char b1)
{
    int l7 = b1 & 0x7F;

    return 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) + 4;
}

/* Room for n more message bytes; never beyond max_message (the header
 * check made sure that msg_len + n fits). */
static apr_status_t msg_reserve(comet_ws_parser_t *parser, apr_size_t n)
{
    apr_size_t need = parser->msg_len + n, cap;
    char *m;

    if (need <= parser->msg_cap) {
        return APR_SUCCESS;
    }
    cap = parser->msg_cap < WS_MSG_MIN ? WS_MSG_MIN : parser->msg_cap;
    while (cap < need) {
        cap = cap > parser->max_message / 2 ? parser->max_message : cap * 2;
    }
    if (cap > parser->max_message) {
        cap = parser->max_message;
    }
    m = realloc(parser->msg, cap);
    if (!m) {
        return APR_ENOMEM;
    }
    parser->msg = m;
    parser->msg_cap = cap;
    return APR_SUCCESS;
}

/* dst may be src (unmasking in place). */
static void unmask(unsigned char *dst, const unsigned char *src,
                   apr_size_t n, const unsigned char mask[4],
                   apr_size_t offset)
{
    unsigned char m8[8];
    apr_uint64_t m, w;
    apr_size_t i;

    for (i = 0; i < 8; i++) {
        m8[i] = mask[(offset + i) & 3];
    }
    memcpy(&m, m8, 8);
    for (i = 0; n - i >= 8; i += 8) {
        memcpy(&w, src + i, 8);
        w ^= m;
        memcpy(dst + i, &w, 8);
    }
    for (; i < n; i++) {
        dst[i] = src[i] ^ mask[(offset + i) & 3];
    }
}

/* A control frame is complete in parser->ctl. */
static apr_status_t control_event(comet_ws_parser_t *parser,
                                  comet_ws_event_t *ev)
{
    ev->data = parser->ctl;
    ev->len = parser->ctl_len;
    ev->code = 0;
    switch (parser->opcode) {
    case COMET_WS_OP_PING:
        ev->type = COMET_WS_EV_PING;
        break;
    case COMET_WS_OP_PONG:
        ev->type = COMET_WS_EV_PONG;
        break;
    default:
        ev->type = COMET_WS_EV_CLOSE;
        if (parser->ctl_len == 0) {
            ev->code = COMET_WS_CLOSE_NO_STATUS;
        }
        else {
            const unsigned char *c = (const unsigned char *)parser->ctl;

            ev->code = (c[0] << 8) | c[1];
            if (!comet_ws_close_code_valid(ev->code)) {
                return fail(parser, COMET_WS_CLOSE_PROTOCOL,
                            "invalid close code");
            }
            ev->data = parser->ctl + 2;
            ev->len = parser->ctl_len - 2;
            if (!comet_ws_utf8_valid(ev->data, ev->len)) {
                return fail(parser, COMET_WS_CLOSE_INVALID_DATA,
                            "close reason is not UTF-8");
            }
        }
        parser->state = WS_CLOSED;
        break;
    }
    return APR_SUCCESS;
}

static void start_message(comet_ws_parser_t *parser, int op)
{
    parser->msg_op = (unsigned char)op;
    parser->msg_len = 0;
    parser->utf8_need = 0;
}

static apr_status_t message_event(comet_ws_parser_t *parser,
                                  comet_ws_event_t *ev, char *data,
                                  apr_size_t len)
{
    if (parser->msg_op == COMET_WS_OP_TEXT && parser->utf8_need) {
        return fail(parser, COMET_WS_CLOSE_INVALID_DATA,
                    "text message ends inside a UTF-8 sequence");
    }
    ev->type = parser->msg_op == COMET_WS_OP_TEXT ? COMET_WS_EV_TEXT
                                                  : COMET_WS_EV_BINARY;
    ev->data = data ? data : "";
    ev->len = len;
    ev->code = 0;
    parser->msg_op = 0;
    return APR_SUCCESS;
}

/* Payload bytes of the current frame: unmasked to dst, and checked as
 * UTF-8 when they belong to a text message.  0 on invalid UTF-8. */
static int take_payload(comet_ws_parser_t *parser, unsigned char *dst,
                        const unsigned char *src, apr_size_t n)
{
    unmask(dst, src, n, parser->mask, parser->frame_pos);
    parser->frame_pos += n;
    parser->frame_left -= n;
    if (parser->opcode & 0x8 || parser->msg_op != COMET_WS_OP_TEXT) {
        return 1;
    }
    else {
        utf8_state_t u;
        int ok;

        u.need = parser->utf8_need;
        u.lo = parser->utf8_lo;
        u.hi = parser->utf8_hi;
        ok = utf8_run(&u, dst, n);
        parser->utf8_need = u.need;
        parser->utf8_lo = u.lo;
        parser->utf8_hi = u.hi;
        return ok;
    }
}

apr_status_t comet_ws_parse(comet_ws_parser_t *parser, char *data,
                            apr_size_t len, apr_size_t *consumed,
                            comet_ws_event_t *ev)
{
    unsigned char *in = (unsigned char *)data;
    apr_size_t pos = 0, hlen = 0, n;
    apr_uint64_t plen = 0;
    apr_status_t rv;
    int got;

    *consumed = len;
    if (parser->state == WS_ERROR) {
        return parser->err;
    }
    if (parser->state == WS_CLOSED) {
        return APR_EOF;
    }
    if (!data && len) {
        return APR_EINVAL;
    }
    if (parser->delivered) {
        /* The last event's bytes were ours and are now the caller's no
         * longer. */
        parser->delivered = 0;
        parser->msg_len = 0;
        if (parser->msg_cap > WS_MSG_KEEP) {
            free(parser->msg);
            parser->msg = NULL;
            parser->msg_cap = 0;
        }
    }

    for (;;) {
        if (parser->state == WS_HEADER) {
            if (parser->hdr_len == 0) {
                /* The usual case: the header is all here; nothing is
                 * copied. */
                n = len - pos;
                got = header_check(parser, in + pos, n, &hlen, &plen);
                if (got < 0) {
                    return parser->err;
                }
                if (got == 0) {
                    memcpy(parser->hdr, in + pos, n);
                    parser->hdr_len = (unsigned char)n;
                    return APR_INCOMPLETE;
                }
                memcpy(parser->mask, in + pos + hlen - 4, 4);
                parser->opcode = in[pos] & 0x0F;
                parser->fin = in[pos] >> 7;
                pos += hlen;
            }
            else {
                /* A header in pieces: saved bytes, topped up no further
                 * than the header goes. */
                for (;;) {
                    apr_size_t want = parser->hdr_len < 2
                                      ? 2 : header_size(parser->hdr[1]);

                    n = want - parser->hdr_len;
                    if (n > len - pos) {
                        n = len - pos;
                    }
                    memcpy(parser->hdr + parser->hdr_len, in + pos, n);
                    parser->hdr_len += (unsigned char)n;
                    pos += n;
                    got = header_check(parser, parser->hdr, parser->hdr_len,
                                       &hlen, &plen);
                    if (got < 0) {
                        return parser->err;
                    }
                    if (got > 0) {
                        break;
                    }
                    if (pos == len) {
                        return APR_INCOMPLETE;
                    }
                }
                memcpy(parser->mask, parser->hdr + hlen - 4, 4);
                parser->opcode = parser->hdr[0] & 0x0F;
                parser->fin = parser->hdr[0] >> 7;
                parser->hdr_len = 0;
            }
            parser->frame_left = plen;
            parser->frame_pos = 0;
            parser->ctl_len = 0;
            if (parser->opcode == COMET_WS_OP_TEXT
                || parser->opcode == COMET_WS_OP_BINARY) {
                start_message(parser, parser->opcode);
                if (parser->fin && plen <= len - pos) {
                    /* A whole message, all here: unmasked where it is. */
                    n = (apr_size_t)plen;
                    if (!take_payload(parser, in + pos, in + pos, n)) {
                        return fail(parser, COMET_WS_CLOSE_INVALID_DATA,
                                    "invalid UTF-8 in a text message");
                    }
                    rv = message_event(parser, ev, data + pos, n);
                    if (rv != APR_SUCCESS) {
                        return rv;
                    }
                    *consumed = pos + n;
                    return APR_SUCCESS;
                }
            }
            parser->state = WS_PAYLOAD;
        }

        /* WS_PAYLOAD */
        n = len - pos;
        if (n > parser->frame_left) {
            n = (apr_size_t)parser->frame_left;
        }
        if (parser->opcode & 0x8) {
            take_payload(parser, (unsigned char *)parser->ctl
                                 + parser->ctl_len, in + pos, n);
            parser->ctl_len += (unsigned char)n;
        }
        else {
            if (n && (rv = msg_reserve(parser, n)) != APR_SUCCESS) {
                return fail(parser, COMET_WS_CLOSE_INTERNAL,
                            "out of memory");
            }
            if (n && !take_payload(parser, (unsigned char *)parser->msg
                                           + parser->msg_len, in + pos, n)) {
                return fail(parser, COMET_WS_CLOSE_INVALID_DATA,
                            "invalid UTF-8 in a text message");
            }
            parser->msg_len += n;
        }
        pos += n;
        if (parser->frame_left) {
            return APR_INCOMPLETE;
        }
        parser->state = WS_HEADER;
        if (parser->opcode & 0x8) {
            rv = control_event(parser, ev);
            if (rv == APR_SUCCESS) {
                *consumed = pos;
            }
            return rv;
        }
        if (parser->fin) {
            rv = message_event(parser, ev, parser->msg, parser->msg_len);
            if (rv == APR_SUCCESS) {
                parser->delivered = 1;
                *consumed = pos;
            }
            return rv;
        }
    }
}

/* ---- encoder ------------------------------------------------------------ */

static apr_size_t put_header(unsigned char *h, int b0, int masked,
                             apr_uint64_t len)
{
    int m = masked ? 0x80 : 0;
    int i;

    h[0] = (unsigned char)b0;
    if (len < 126) {
        h[1] = (unsigned char)(m | (int)len);
        return 2;
    }
    if (len <= 0xFFFF) {
        h[1] = (unsigned char)(m | 126);
        h[2] = (unsigned char)(len >> 8);
        h[3] = (unsigned char)len;
        return 4;
    }
    h[1] = (unsigned char)(m | 127);
    for (i = 0; i < 8; i++) {
        h[2 + i] = (unsigned char)(len >> (56 - 8 * i));
    }
    return 10;
}

apr_size_t comet_ws_frame_header(unsigned char *hdr, int opcode,
                                 apr_uint64_t len)
{
    return put_header(hdr, 0x80 | (opcode & 0x0F), 0, len);
}

static int server_opcode_ok(int opcode, apr_size_t len)
{
    switch (opcode) {
    case COMET_WS_OP_TEXT:
    case COMET_WS_OP_BINARY:
        return 1;
    case COMET_WS_OP_CLOSE:
    case COMET_WS_OP_PING:
    case COMET_WS_OP_PONG:
        return len <= COMET_WS_CONTROL_MAX;
    default:
        return 0;
    }
}

apr_status_t comet_ws_frame(comet_buf_t *out, int opcode, const void *data,
                            apr_size_t len)
{
    unsigned char h[COMET_WS_SERVER_HEADER_MAX];
    apr_size_t hlen;
    apr_status_t rv;

    if (!server_opcode_ok(opcode, len)) {
        return APR_EINVAL;
    }
    hlen = comet_ws_frame_header(h, opcode, len);
    if (len > (apr_size_t)-1 - hlen) {
        return APR_ENOSPC;
    }
    if ((rv = comet_buf_reserve(out, hlen + len)) != APR_SUCCESS) {
        return rv;
    }
    memcpy(out->data + out->len, h, hlen);
    if (len) {
        memcpy(out->data + out->len + hlen, data, len);
    }
    out->len += hlen + len;
    return APR_SUCCESS;
}

apr_status_t comet_ws_close_frame(comet_buf_t *out, int code,
                                  const char *reason, apr_size_t len)
{
    char payload[COMET_WS_CONTROL_MAX];

    if (code == 0) {
        return comet_ws_frame(out, COMET_WS_OP_CLOSE, NULL, 0);
    }
    if (!comet_ws_close_code_valid(code)) {
        return APR_EINVAL;
    }
    if (!reason) {
        len = 0;
    }
    if (len > COMET_WS_REASON_MAX) {
        len = COMET_WS_REASON_MAX;
        /* Back to the start of the character that did not fit. */
        while (len && ((unsigned char)reason[len] & 0xC0) == 0x80) {
            len--;
        }
    }
    if (!comet_ws_utf8_valid(reason, len)) {
        len = 0;
    }
    payload[0] = (char)(code >> 8);
    payload[1] = (char)code;
    if (len) {
        memcpy(payload + 2, reason, len);
    }
    return comet_ws_frame(out, COMET_WS_OP_CLOSE, payload, len + 2);
}

/* What frame_begin reserves: the header of a payload of 126..65535
 * bytes, the usual size of a JSON message. */
#define WS_RESERVE 4

apr_status_t comet_ws_frame_begin(comet_buf_t *out, apr_size_t *mark)
{
    apr_status_t rv;

    if ((rv = comet_buf_reserve(out, WS_RESERVE)) != APR_SUCCESS) {
        return rv;
    }
    *mark = out->len;
    out->len += WS_RESERVE;
    return APR_SUCCESS;
}

apr_status_t comet_ws_frame_end(comet_buf_t *out, apr_size_t mark,
                                int opcode)
{
    unsigned char h[COMET_WS_SERVER_HEADER_MAX];
    apr_size_t plen, hlen;
    char *payload;
    apr_status_t rv;

    if (mark > out->len || out->len - mark < WS_RESERVE) {
        return APR_EINVAL;
    }
    plen = out->len - mark - WS_RESERVE;
    if (!server_opcode_ok(opcode, plen)) {
        comet_buf_truncate(out, mark);
        return APR_EINVAL;
    }
    hlen = comet_ws_frame_header(h, opcode, plen);
    if (hlen > WS_RESERVE) {
        if ((rv = comet_buf_reserve(out, hlen - WS_RESERVE)) != APR_SUCCESS) {
            comet_buf_truncate(out, mark);
            return rv;
        }
    }
    payload = out->data + mark + WS_RESERVE;
    if (hlen != WS_RESERVE) {
        memmove(out->data + mark + hlen, payload, plen);
    }
    memcpy(out->data + mark, h, hlen);
    out->len = mark + hlen + plen;
    return APR_SUCCESS;
}

apr_status_t comet_ws_frame_client(comet_buf_t *out, int opcode, int fin,
                                   int rsv, const unsigned char mask[4],
                                   const void *data, apr_size_t len)
{
    unsigned char h[COMET_WS_HEADER_MAX];
    apr_size_t hlen;
    apr_status_t rv;
    int b0 = (fin ? 0x80 : 0) | ((rsv & 7) << 4) | (opcode & 0x0F);

    hlen = put_header(h, b0, 1, len);
    memcpy(h + hlen, mask, 4);
    hlen += 4;
    if (len > (apr_size_t)-1 - hlen) {
        return APR_ENOSPC;
    }
    if ((rv = comet_buf_reserve(out, hlen + len)) != APR_SUCCESS) {
        return rv;
    }
    memcpy(out->data + out->len, h, hlen);
    unmask((unsigned char *)out->data + out->len + hlen, data, len, mask, 0);
    out->len += hlen + len;
    return APR_SUCCESS;
}
