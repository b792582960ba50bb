/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * fuzz_ids.c -- libFuzzer target for the text forms clients send
 * (comet_ids.c): message ids (Last-Event-ID, last_event_id=, single and
 * compound), channel ids and PUBSUB CHANNELS patterns.
 *
 * Input: one byte of settings (the most seqs a compound id may hold:
 * 1..64, as a subscription of that many channels allows), then the text.
 * Checked:
 *   - the single and the compound parser accept exactly what the grammar
 *     of comet_ids.h describes (a model written here from that text: 8
 *     lowercase hex digits, not all zero, ':', decimal seqs without sign
 *     or leading zero, at most 20 digits and within 64 bits, ','
 *     between seqs, at most max of them);
 *   - what parses formats back to the very same text; a single id and a
 *     compound id of one seq parse alike;
 *   - ids made from the input's bytes format within COMET_MSGID_MAXLEN and
 *     parse back to themselves (epoch 0 excepted: it is refused);
 *     comet_msgid_cmp is an order;
 *   - comet_channel_id_check accepts exactly 1..max bytes of the safe set;
 *   - comet_glob_match agrees with a plain dynamic-programming matcher on
 *     patterns without classes, matches every string against "*" and
 *     against the string itself with every byte escaped, and never takes
 *     long (libFuzzer's -timeout catches a backtracking blow-up).
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comet_ids.h"

#define CHECK(cond) do {                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "fuzz_ids.c:%d: check failed: %s\n",           \
                    __LINE__, #cond);                                       \
            abort();                                                        \
        }                                                                   \
    } while (0)

#define MAX_SEQS 64

/* ---- the model of the grammar ------------------------------------------- */

static int model_epoch(const char *s, size_t len)
{
    int nonzero = 0;

    if (len < 9 || s[8] != ':') {
        return 0;
    }
    for (int i = 0; i < 8; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) {
            return 0;
        }
        nonzero |= s[i] != '0';
    }
    return nonzero;
}

static int model_seq(const char *s, size_t len)
{
    if (len == 0 || len > 20 || (len > 1 && s[0] == '0')) {
        return 0;
    }
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return 0;
        }
    }
    /* 20 digits: no more than 2^64 - 1, compared as text. */
    return len < 20 || memcmp(s, "18446744073709551615", 20) <= 0;
}

/* The number of seqs of a well-formed compound id, or 0. */
static size_t model_compound(const char *s, size_t len)
{
    size_t pos = 9, n = 0;

    if (!model_epoch(s, len)) {
        return 0;
    }
    for (;;) {
        size_t end = pos;

        while (end < len && s[end] != ',') {
            end++;
        }
        if (!model_seq(s + pos, end - pos)) {
            return 0;
        }
        n++;
        if (end == len) {
            return n;
        }
        pos = end + 1;
    }
}

static int model_chan_char(unsigned char c)
{
    return c != '\0'
           && strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                     "0123456789-_.~:@/", c) != NULL;
}

/* Glob without classes: *, ?, \x and literals, by dynamic programming
 * over (pattern position, string position). */
static int model_glob(const char *p, size_t plen, const char *s, size_t slen)
{
    /* m[j] = pattern prefix matched so far matches s[0, j). */
    unsigned char *m = calloc(slen + 1, 1), *next = calloc(slen + 1, 1);
    size_t i = 0;
    int r;

    CHECK(m && next);
    m[0] = 1;
    while (i < plen) {
        size_t used = 1;

        memset(next, 0, slen + 1);
        if (p[i] == '*') {
            int any = 0;

            for (size_t j = 0; j <= slen; j++) {
                any |= m[j];
                next[j] = (unsigned char)any;
            }
        }
        else {
            char lit = p[i];
            int wild = p[i] == '?';

            if (p[i] == '\\' && i + 1 < plen) {
                lit = p[i + 1];
                used = 2;
            }
            for (size_t j = 0; j < slen; j++) {
                if (m[j] && (wild || s[j] == lit)) {
                    next[j + 1] = 1;
                }
            }
        }
        memcpy(m, next, slen + 1);
        i += used;
    }
    r = m[slen];
    free(m);
    free(next);
    return r;
}

/* ---- checks -------------------------------------------------------------- */

static void check_msgid_text(const char *s, size_t len, size_t max)
{
    comet_msgid_t id;
    apr_uint32_t epoch;
    apr_uint64_t seqs[MAX_SEQS];
    char out[COMET_MSGID_COMPOUND_MAXLEN(MAX_SEQS)];
    size_t want = model_compound(s, len), n = 0;
    int single = want == 1;
    apr_status_t rv;

    rv = comet_msgid_parse(&id, s, len);
    CHECK((rv == APR_SUCCESS) == single);
    CHECK(rv == APR_SUCCESS || rv == COMET_EBADID);
    if (rv == APR_SUCCESS) {
        CHECK(comet_msgid_format(out, &id) == len);
        CHECK(memcmp(out, s, len) == 0);
    }

    rv = comet_msgid_parse_compound(&epoch, seqs, max, &n, s, len);
    CHECK((rv == APR_SUCCESS) == (want >= 1 && want <= max));
    CHECK(rv == APR_SUCCESS || rv == COMET_EBADID);
    if (rv == APR_SUCCESS) {
        CHECK(n == want);
        CHECK(comet_msgid_format_compound(out, epoch, seqs, n) == len);
        CHECK(memcmp(out, s, len) == 0);
        if (single) {
            CHECK(epoch == id.epoch && seqs[0] == id.seq);
        }
    }
}

static void check_msgid_values(const uint8_t *b, size_t size)
{
    comet_msgid_t a, c, back;
    char out[COMET_MSGID_MAXLEN];
    size_t len;
    apr_status_t rv;

    if (size < 24) {
        return;
    }
    memcpy(&a.epoch, b, 4);
    memcpy(&a.seq, b + 4, 8);
    memcpy(&c.epoch, b + 12, 4);
    memcpy(&c.seq, b + 16, 8);
    len = comet_msgid_format(out, &a);
    CHECK(len < COMET_MSGID_MAXLEN && out[len] == '\0');
    rv = comet_msgid_parse(&back, out, len);
    if (a.epoch == 0) {
        CHECK(rv == COMET_EBADID);
    }
    else {
        CHECK(rv == APR_SUCCESS);
        CHECK(back.epoch == a.epoch && back.seq == a.seq);
    }
    /* An order: antisymmetric, and 0 only for the same id. */
    CHECK(comet_msgid_cmp(&a, &c) == -comet_msgid_cmp(&c, &a));
    CHECK((comet_msgid_cmp(&a, &c) == 0)
          == (a.epoch == c.epoch && a.seq == c.seq));
    CHECK(comet_msgid_cmp(&a, &a) == 0);
}

static void check_channel_id(const char *s, size_t len)
{
    static const size_t maxes[] = { 1, 2, 16, 1024 };

    for (size_t k = 0; k < sizeof(maxes) / sizeof(maxes[0]); k++) {
        int ok = len >= 1 && len <= maxes[k];
        apr_status_t rv = comet_channel_id_check(s, len, maxes[k]);

        for (size_t i = 0; ok && i < len; i++) {
            ok = model_chan_char((unsigned char)s[i]);
        }
        CHECK(rv == (ok ? APR_SUCCESS : COMET_EBADCHAN));
    }
}

static void check_glob(const char *in, size_t len)
{
    /* The input is "<pattern>\0<string>" (no NUL: pattern only, matched
     * against itself). */
    const char *nul = memchr(in, '\0', len);
    const char *p = in, *s = nul ? nul + 1 : in;
    size_t plen = nul ? (size_t)(nul - in) : len;
    size_t slen = nul ? len - plen - 1 : len;
    char *esc = malloc(2 * slen + 1);

    CHECK(esc != NULL);
    (void)comet_glob_match(p, plen, s, slen);
    if (!memchr(p, '[', plen)) {
        CHECK(comet_glob_match(p, plen, s, slen)
              == model_glob(p, plen, s, slen));
    }
    CHECK(comet_glob_match("*", 1, s, slen));
    for (size_t i = 0; i < slen; i++) {
        esc[2 * i] = '\\';
        esc[2 * i + 1] = s[i];
    }
    CHECK(comet_glob_match(esc, 2 * slen, s, slen));
    free(esc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t max;
    char *s;

    if (size < 1) {
        return 0;
    }
    max = 1 + data[0] % MAX_SEQS;
    data++;
    size--;
    /* An exact copy, so that a read past the end is a report. */
    s = malloc(size ? size : 1);
    CHECK(s != NULL);
    memcpy(s, data, size);

    check_msgid_text(s, size, max);
    check_msgid_values(data, size);
    check_channel_id(s, size);
    if (size <= 512) {
        check_glob(s, size);
    }
    free(s);
    return 0;
}
