/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_ids.c -- the text forms clients write and read back: message ids,
 * channel ids, channel patterns (API: comet_ids.h).
 */

#include "comet_ids.h"

/* ------------------------------------------------------------------ */
/* Message ids                                                         */
/* ------------------------------------------------------------------ */

static const char ids_hex[] = "0123456789abcdef";

static apr_size_t format_u64(char *buf, apr_uint64_t v)
{
    char tmp[20];
    apr_size_t n = 0, i;

    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (i = 0; i < n; i++) {
        buf[i] = tmp[n - 1 - i];
    }
    return n;
}

static apr_size_t format_epoch(char *buf, apr_uint32_t epoch)
{
    int i;

    for (i = 0; i < 8; i++) {
        buf[i] = ids_hex[(epoch >> (28 - 4 * i)) & 0xf];
    }
    buf[8] = ':';
    return 9;
}

apr_size_t comet_msgid_format(char *buf, const comet_msgid_t *id)
{
    apr_size_t n = format_epoch(buf, id->epoch);

    n += format_u64(buf + n, id->seq);
    buf[n] = '\0';
    return n;
}

apr_size_t comet_msgid_format_compound(char *buf, apr_uint32_t epoch,
                                       const apr_uint64_t *seqs,
                                       apr_size_t n)
{
    apr_size_t len, i;

    if (n == 0) {
        buf[0] = '\0';
        return 0;
    }
    len = format_epoch(buf, epoch);
    for (i = 0; i < n; i++) {
        if (i) {
            buf[len++] = ',';
        }
        len += format_u64(buf + len, seqs[i]);
    }
    buf[len] = '\0';
    return len;
}

/* "<8 lowercase hex>:" with a nonzero value. */
static apr_status_t parse_epoch(apr_uint32_t *epoch, const char *s,
                                apr_size_t len)
{
    apr_uint32_t v = 0;
    int i;

    if (!s || len < 9 || s[8] != ':') {
        return COMET_EBADID;
    }
    for (i = 0; i < 8; i++) {
        char c = s[i];

        if (c >= '0' && c <= '9') {
            v = (v << 4) | (apr_uint32_t)(c - '0');
        }
        else if (c >= 'a' && c <= 'f') {
            v = (v << 4) | (apr_uint32_t)(c - 'a' + 10);
        }
        else {
            return COMET_EBADID;
        }
    }
    if (v == 0) {
        return COMET_EBADID;
    }
    *epoch = v;
    return APR_SUCCESS;
}

/* Decimal, no sign, no leading zero but "0", at most 20 digits, fits. */
static apr_status_t parse_seq(apr_uint64_t *seq, const char *s,
                              apr_size_t len)
{
    apr_uint64_t v = 0;
    apr_size_t i;

    if (len == 0 || len > 20 || (len > 1 && s[0] == '0')) {
        return COMET_EBADID;
    }
    for (i = 0; i < len; i++) {
        unsigned d;

        if (s[i] < '0' || s[i] > '9') {
            return COMET_EBADID;
        }
        d = (unsigned)(s[i] - '0');
        if (v > (APR_UINT64_MAX - d) / 10) {
            return COMET_EBADID;
        }
        v = v * 10 + d;
    }
    *seq = v;
    return APR_SUCCESS;
}

apr_status_t comet_msgid_parse(comet_msgid_t *id, const char *s,
                               apr_size_t len)
{
    comet_msgid_t v;

    if (parse_epoch(&v.epoch, s, len) != APR_SUCCESS
        || parse_seq(&v.seq, s + 9, len - 9) != APR_SUCCESS) {
        return COMET_EBADID;
    }
    *id = v;
    return APR_SUCCESS;
}

apr_status_t comet_msgid_parse_compound(apr_uint32_t *epoch,
                                        apr_uint64_t *seqs, apr_size_t max,
                                        apr_size_t *n, const char *s,
                                        apr_size_t len)
{
    apr_uint32_t ep;
    apr_size_t pos = 9, count = 0;

    if (parse_epoch(&ep, s, len) != APR_SUCCESS) {
        return COMET_EBADID;
    }
    for (;;) {
        apr_size_t end = pos;

        while (end < len && s[end] != ',') {
            end++;
        }
        if (count >= max
            || parse_seq(&seqs[count], s + pos, end - pos) != APR_SUCCESS) {
            return COMET_EBADID;
        }
        count++;
        if (end == len) {
            break;
        }
        pos = end + 1;
    }
    *epoch = ep;
    *n = count;
    return APR_SUCCESS;
}

int comet_msgid_cmp(const comet_msgid_t *a, const comet_msgid_t *b)
{
    if (a->epoch != b->epoch) {
        return a->epoch < b->epoch ? -1 : 1;
    }
    if (a->seq != b->seq) {
        return a->seq < b->seq ? -1 : 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Channel ids                                                         */
/* ------------------------------------------------------------------ */

static int chan_char_ok(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
           || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'
           || c == '~' || c == ':' || c == '@' || c == '/';
}

apr_status_t comet_channel_id_check(const char *id, apr_size_t len,
                                    apr_size_t max_len)
{
    apr_size_t i;

    if (!id || len == 0 || len > max_len) {
        return COMET_EBADCHAN;
    }
    for (i = 0; i < len; i++) {
        if (!chan_char_ok((unsigned char)id[i])) {
            return COMET_EBADCHAN;
        }
    }
    return APR_SUCCESS;
}

/* ------------------------------------------------------------------ */
/* Channel patterns                                                    */
/* ------------------------------------------------------------------ */

/* Does the class at p[0..plen) (just after '[') match c?  *used receives
 * the pattern bytes the class takes, its closing ']' included. */
static int glob_class(const char *p, apr_size_t plen, char c,
                      apr_size_t *used)
{
    apr_size_t i = 0;
    int neg = 0, match = 0;

    if (i < plen && p[i] == '^') {
        neg = 1;
        i++;
    }
    while (i < plen && p[i] != ']') {
        if (p[i] == '\\' && i + 1 < plen) {
            if (p[i + 1] == c) {
                match = 1;
            }
            i += 2;
        }
        else if (i + 2 < plen && p[i + 1] == '-' && p[i + 2] != ']') {
            char lo = p[i], hi = p[i + 2];

            if (lo > hi) {
                char t = lo;
                lo = hi;
                hi = t;
            }
            if (c >= lo && c <= hi) {
                match = 1;
            }
            i += 3;
        }
        else {
            if (p[i] == c) {
                match = 1;
            }
            i++;
        }
    }
    *used = i < plen ? i + 1 : i;
    return neg ? !match : match;
}

/* Iterative: a '*' remembers where to resume, so patterns such as
 * "a*a*a*b" cost O(plen * slen), not an exponential backtrack. */
int comet_glob_match(const char *p, apr_size_t plen,
                           const char *s, apr_size_t slen)
{
    apr_size_t pi = 0, si = 0, star_p = 0, star_s = 0;
    int star = 0;

    while (si < slen) {
        if (pi < plen) {
            apr_size_t used = 1;
            int ok;

            switch (p[pi]) {
            case '*':
                while (pi < plen && p[pi] == '*') {
                    pi++;
                }
                if (pi == plen) {
                    return 1;
                }
                star = 1;
                star_p = pi;
                star_s = si;
                continue;
            case '?':
                ok = 1;
                break;
            case '[':
                ok = glob_class(p + pi + 1, plen - pi - 1, s[si], &used);
                used++;
                break;
            case '\\':
                if (pi + 1 < plen) {
                    ok = p[pi + 1] == s[si];
                    used = 2;
                }
                else {
                    ok = s[si] == '\\';
                }
                break;
            default:
                ok = p[pi] == s[si];
                break;
            }
            if (ok) {
                pi += used;
                si++;
                continue;
            }
        }
        if (!star) {
            return 0;
        }
        pi = star_p;
        si = ++star_s;
    }
    while (pi < plen && p[pi] == '*') {
        pi++;
    }
    return pi == plen;
}
