/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * fuzz_parse.c -- libFuzzer target for what comet_parse.c reads from a
 * subscriber's request: the channel list of the URL (or of a
 * CometChannel expression), the transport= argument with the Accept
 * header, and whole numbers such as backlog=.
 *
 * Input: two bytes of settings, then "<channels>\0<transport>\0<accept>
 * \0<number>" (missing parts are absent: NULL).
 *   [0]     the most channels (1..70)
 *   [1]     the longest channel id (1, 2, 8, 64, 1024) and the transports
 *           allowed (any combination)
 * Each is compared with a model written here from comet_parse.h:
 *   - channels: split at commas, empty pieces skipped; refused, with the
 *     first reason in order (no channel, too many, invalid id, named
 *     twice), or accepted as exactly the pieces, in order;
 *   - transport: the argument names one (any case) or is refused; without
 *     it, Accept containing text/event-stream (any case) means SSE,
 *     application/x-ndjson the stream, else long-poll; refused (EACCES)
 *     when not allowed;
 *   - number: optional '-', then digits only, within 64 bits; EINVAL,
 *     ERANGE outside [min, max], or the value.
 */

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <apr_general.h>
#include <apr_pools.h>

#include "comet_parse.h"
#include "comet_ids.h"
#include "comet_render.h"

#define CHECK(cond) do {                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "fuzz_parse.c:%d: check failed: %s\n",         \
                    __LINE__, #cond);                                       \
            abort();                                                        \
        }                                                                   \
    } while (0)

static apr_pool_t *root;

/* ---- channel lists --------------------------------------------------------- */

enum { REF_OK, REF_NONE, REF_MANY, REF_BAD, REF_TWICE };

static int model_valid_id(const char *s, size_t len, size_t maxlen)
{
    static const char safe[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                               "abcdefghijklmnopqrstuvwxyz0123456789-_.~:@/";

    if (len == 0 || len > maxlen) {
        return 0;
    }
    for (size_t i = 0; i < len; i++) {
        if (!memchr(safe, s[i], sizeof(safe) - 1)) {
            return 0;
        }
    }
    return 1;
}

static void check_channels(apr_pool_t *p, const char *spec, int max,
                           size_t maxlen)
{
    const char **ids = NULL, *why = NULL;
    const char *piece[80];
    size_t plen[80];
    int n = -1, count = 0, want = REF_OK;
    const char *s = spec;
    apr_status_t rv;

    /* The model. */
    while (want == REF_OK) {
        const char *end = strchr(s, ',');
        size_t len = end ? (size_t)(end - s) : strlen(s);

        if (len) {
            if (count == max) {
                want = REF_MANY;
                break;
            }
            if (!model_valid_id(s, len, maxlen)) {
                want = REF_BAD;
                break;
            }
            for (int i = 0; i < count; i++) {
                if (plen[i] == len && !memcmp(piece[i], s, len)) {
                    want = REF_TWICE;
                }
            }
            piece[count] = s;
            plen[count++] = len;
        }
        if (!end) {
            break;
        }
        s = end + 1;
    }
    if (want == REF_OK && count == 0) {
        want = REF_NONE;
    }

    rv = comet_parse_channels(p, spec, max, maxlen, &ids, &n, &why);
    if (want == REF_OK) {
        CHECK(rv == APR_SUCCESS);
        CHECK(n == count);
        for (int i = 0; i < n; i++) {
            CHECK(strlen(ids[i]) == plen[i]);
            CHECK(!memcmp(ids[i], piece[i], plen[i]));
            CHECK(comet_channel_id_check(ids[i], plen[i], maxlen)
                  == APR_SUCCESS);
        }
        return;
    }
    CHECK(rv == APR_EINVAL);
    CHECK(why != NULL && why[0] != '\0');
    CHECK(!strchr(why, '\r') && !strchr(why, '\n'));
    switch (want) {
    case REF_NONE:  CHECK(strstr(why, "no channel") != NULL); break;
    case REF_MANY:  CHECK(strstr(why, "too many") != NULL); break;
    case REF_BAD:   CHECK(strstr(why, "invalid channel id") != NULL); break;
    case REF_TWICE: CHECK(strstr(why, "twice") != NULL); break;
    }
}

/* ---- transport ------------------------------------------------------------- */

static int model_transport_name(const char *s)
{
    if (!strcasecmp(s, "sse") || !strcasecmp(s, "eventsource")) {
        return COMET_T_SSE;
    }
    if (!strcasecmp(s, "longpoll") || !strcasecmp(s, "long-poll")) {
        return COMET_T_LONGPOLL;
    }
    if (!strcasecmp(s, "websocket") || !strcasecmp(s, "ws")) {
        return COMET_T_WS;
    }
    return strcasecmp(s, "stream") ? 0 : COMET_T_STREAM;
}

static int contains_nocase(const char *hay, const char *needle)
{
    size_t n = strlen(needle);

    for (; *hay; hay++) {
        if (!strncasecmp(hay, needle, n)) {
            return 1;
        }
    }
    return 0;
}

static void check_transport(const char *query, const char *accept,
                            int allowed)
{
    int t = -1, want;
    const char *why = NULL;
    apr_status_t rv = comet_parse_transport(query, accept, allowed, &t, &why);

    if (query) {
        want = model_transport_name(query);
        CHECK(comet_parse_transport_name(query) == want);
        if (!want) {
            CHECK(rv == APR_EINVAL && why && why[0]);
            return;
        }
    }
    else if (accept && contains_nocase(accept, "text/event-stream")) {
        want = COMET_T_SSE;
    }
    else if (accept && contains_nocase(accept, "application/x-ndjson")) {
        want = COMET_T_STREAM;
    }
    else {
        want = COMET_T_LONGPOLL;
    }
    if (!(want & allowed)) {
        CHECK(rv == APR_EACCES && why && why[0]);
        return;
    }
    CHECK(rv == APR_SUCCESS);
    CHECK(t == want);
}

/* ---- whole numbers ------------------------------------------------------------- */

static void check_number(const char *s, apr_int64_t min, apr_int64_t max)
{
    apr_int64_t v = 0, out = 12345;
    const char *d = s + (*s == '-');
    int neg = *s == '-', ok = *d != '\0';
    apr_status_t rv = comet_parse_number(s, min, max, &out);

    /* The model: digits only after the sign, accumulated with an overflow
     * check in the sign's direction. */
    for (; ok && *d; d++) {
        int digit = *d - '0';

        if (*d < '0' || *d > '9') {
            ok = 0;
        }
        else if (!neg && v > (INT64_MAX - digit) / 10) {
            ok = 0;
        }
        else if (neg && v < (INT64_MIN + digit) / 10) {
            ok = 0;
        }
        else {
            v = v * 10 + (neg ? -digit : digit);
        }
    }
    if (!ok) {
        CHECK(rv == APR_EINVAL);
        return;
    }
    if (v < min || v > max) {
        CHECK(rv == APR_ERANGE);
        return;
    }
    CHECK(rv == APR_SUCCESS);
    CHECK(out == v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t maxlens[] = { 1, 2, 8, 64, 1024 };
    apr_pool_t *p;
    char *text, *part[4] = { NULL, NULL, NULL, NULL };
    size_t at = 0;
    int max, allowed;

    if (!root) {
        CHECK(apr_initialize() == APR_SUCCESS);
        CHECK(apr_pool_create(&root, NULL) == APR_SUCCESS);
    }
    if (size < 2) {
        return 0;
    }
    max = 1 + data[0] % 70;
    allowed = (data[1] >> 4) & COMET_T_ALL;
    text = malloc(size - 2 + 1);
    CHECK(text != NULL);
    memcpy(text, data + 2, size - 2);
    text[size - 2] = '\0';
    /* Split at NULs into at most four strings. */
    for (int i = 0; i < 4 && at <= size - 2; i++) {
        part[i] = text + at;
        at += strlen(text + at) + 1;
    }
    CHECK(apr_pool_create(&p, root) == APR_SUCCESS);
    check_channels(p, part[0], max, maxlens[(data[1] & 0xf) % 5]);
    check_transport(part[1], part[2], allowed);
    if (part[3]) {
        check_number(part[3], -1000, INT64_MAX);
        check_number(part[3], INT64_MIN, INT64_MAX);
    }
    apr_pool_destroy(p);
    free(text);
    return 0;
}
