/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_parse.h -- what the glue reads from directives and requests that
 * needs no server state: sizes and whole numbers, a subscriber's list of
 * channels, the transport it asks for.  The glue adds the directive's
 * name or the HTTP status; the texts of request refusals are made here.
 *
 * Server-independent: APR only.  Any thread.
 */
#ifndef COMET_PARSE_H
#define COMET_PARSE_H

#include <apr_pools.h>

#include "comet_core.h"

/* A size: digits, then optionally K, M or G (times 1024, 1024^2, 1024^3),
 * then optionally B, in any case ("64M", "512k", "1Gb", "4096").
 * APR_SUCCESS and *out; APR_EINVAL when arg is not a size (or a number
 * past what 64 bits hold); APR_ERANGE when it is below min or above max,
 * so that the refusal can say which sizes are allowed. */
apr_status_t comet_parse_size(const char *arg, apr_uint64_t min,
                              apr_uint64_t max, apr_uint64_t *out);

/* A whole number, digits with an optional leading '-'.  APR_SUCCESS and
 * *out; APR_EINVAL when arg is not one; APR_ERANGE outside [min, max]. */
apr_status_t comet_parse_number(const char *arg, apr_int64_t min,
                                apr_int64_t max, apr_int64_t *out);

/* The transport a name stands for, in any case: "sse" or "eventsource",
 * "longpoll" or "long-poll", "stream", "websocket" or "ws".  A COMET_T_*
 * bit, or 0. */
int comet_parse_transport_name(const char *name);

/* The transport a subscriber asks for: query is its transport= argument,
 * accept its Accept header (each NULL when absent).  (A WebSocket
 * handshake is recognised by the glue, before this is asked.)  The
 * argument wins;
 * else an Accept of text/event-stream means SSE, one of
 * application/x-ndjson the stream; else long-poll.  allowed: the COMET_T_*
 * bits permitted.  APR_SUCCESS and *transport; APR_EINVAL when the
 * argument names no transport, APR_EACCES when the one asked for is not
 * allowed, with *why the refusal's text. */
apr_status_t comet_parse_transport(const char *query, const char *accept,
                                   int allowed, int *transport,
                                   const char **why);

/* Split spec at commas into channel ids (empty pieces are skipped): at
 * least one, at most max, each a valid id of at most maxlen bytes
 * (comet_channel_id_check), none named twice.  APR_SUCCESS with *ids
 * (copies in p) and *n; APR_EINVAL with *why (in p). */
apr_status_t comet_parse_channels(apr_pool_t *p, const char *spec, int max,
                                  apr_size_t maxlen, const char ***ids,
                                  int *n, const char **why);

#endif /* COMET_PARSE_H */
