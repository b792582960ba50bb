/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_parse.c -- directive values, channel lists and the transport a
 * subscriber asks for (see comet_parse.h).
 */

#include <errno.h>
#include <string.h>

#include <apr_lib.h>
#include <apr_strings.h>

#include "comet_parse.h"
#include "comet_ids.h"
#include "comet_render.h"

apr_status_t comet_parse_size(const char *arg, apr_uint64_t min,
                              apr_uint64_t max, apr_uint64_t *out)
{
    char *end;
    apr_uint64_t v, mult = 1;

    if (!apr_isdigit(*arg)) {
        return APR_EINVAL;
    }
    errno = 0;
    v = (apr_uint64_t)apr_strtoi64(arg, &end, 10);
    if (errno) {
        return APR_EINVAL;
    }
    switch (apr_tolower(*end)) {
    case 'k': mult = 1024; end++; break;
    case 'm': mult = 1024 * 1024; end++; break;
    case 'g': mult = 1024 * 1024 * 1024; end++; break;
    default: break;
    }
    if (apr_tolower(*end) == 'b') {
        end++;
    }
    if (*end || v > APR_UINT64_MAX / mult) {
        return APR_EINVAL;
    }
    if (v > max / mult) {
        return APR_ERANGE;
    }
    v *= mult;
    if (v < min || v > max) {
        return APR_ERANGE;
    }
    *out = v;
    return APR_SUCCESS;
}

apr_status_t comet_parse_number(const char *arg, apr_int64_t min,
                                apr_int64_t max, apr_int64_t *out)
{
    char *end;
    apr_int64_t v;

    errno = 0;
    v = apr_strtoi64(arg, &end, 10);
    if (errno || end == arg || *end || !(apr_isdigit(*arg) || *arg == '-')) {
        return APR_EINVAL;
    }
    if (v < min || v > max) {
        return APR_ERANGE;
    }
    *out = v;
    return APR_SUCCESS;
}

int comet_parse_transport_name(const char *name)
{
    if (!strcasecmp(name, "sse") || !strcasecmp(name, "eventsource")) {
        return COMET_T_SSE;
    }
    if (!strcasecmp(name, "longpoll") || !strcasecmp(name, "long-poll")) {
        return COMET_T_LONGPOLL;
    }
    if (!strcasecmp(name, "stream")) {
        return COMET_T_STREAM;
    }
    if (!strcasecmp(name, "websocket") || !strcasecmp(name, "ws")) {
        return COMET_T_WS;
    }
    return 0;
}

apr_status_t comet_parse_transport(const char *query, const char *accept,
                                   int allowed, int *transport,
                                   const char **why)
{
    int t;

    if (query) {
        if (!(t = comet_parse_transport_name(query))) {
            *why = "unknown transport (use sse, longpoll, stream or websocket)";
            return APR_EINVAL;
        }
    }
    else if (accept && strcasestr(accept, "text/event-stream")) {
        t = COMET_T_SSE;
    }
    else if (accept && strcasestr(accept, "application/x-ndjson")) {
        t = COMET_T_STREAM;
    }
    else {
        t = COMET_T_LONGPOLL;
    }
    if (!(t & allowed)) {
        *why = "transport not allowed here (CometTransports)";
        return APR_EACCES;
    }
    *transport = t;
    return APR_SUCCESS;
}

static const char no_channel[] = "no channel named in the request";

apr_status_t comet_parse_channels(apr_pool_t *p, const char *spec, int max,
                                  apr_size_t maxlen, const char ***ids,
                                  int *n, const char **why)
{
    const char **out;
    char *list, *tok, *last;
    int count = 0;

    if (!spec || !*spec) {
        *why = no_channel;
        return APR_EINVAL;
    }
    out = apr_palloc(p, sizeof(*out) * (apr_size_t)max);
    list = apr_pstrdup(p, spec);
    for (tok = apr_strtok(list, ",", &last); tok;
         tok = apr_strtok(NULL, ",", &last)) {
        if (count == max) {
            *why = apr_psprintf(p, "too many channels (at most %d)", max);
            return APR_EINVAL;
        }
        if (comet_channel_id_check(tok, strlen(tok), maxlen)
            != APR_SUCCESS) {
            *why = apr_psprintf(p, "invalid channel id (1 to %"
                                APR_SIZE_T_FMT " bytes of "
                                COMET_CHANNEL_ID_CHARS ")", maxlen);
            return APR_EINVAL;
        }
        for (int i = 0; i < count; i++) {
            if (!strcmp(out[i], tok)) {
                *why = "channel named twice";
                return APR_EINVAL;
            }
        }
        out[count++] = tok;
    }
    if (!count) {
        *why = no_channel;
        return APR_EINVAL;
    }
    *ids = out;
    *n = count;
    return APR_SUCCESS;
}
