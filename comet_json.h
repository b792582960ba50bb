/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_json.h -- the one JSON document mod_comet reads: the envelope in
 * which a WebSocket client that subscribed to several channels publishes
 * (README, "Client publishing"):
 *
 *   {"channel": "room1", "event": "typing", "data": "hello"}
 *
 * "channel" (a string) and "data" are required, "event" (a string) is
 * optional; no other member is allowed (a client cannot set "from", which
 * the server fills in), and none may appear twice.  "data" that is a
 * string is the message's text, unescaped; any other JSON value (object,
 * array, number, true, false, null) is published as its JSON text, exactly
 * as the client wrote it.
 *
 * Strict RFC 8259: UTF-8 only, no control bytes in strings, \u escapes
 * with surrogates in pairs, numbers in JSON's grammar, nothing after the
 * object but whitespace, at most COMET_JSON_MAX_DEPTH nested arrays and
 * objects.  No recursion and no allocation: cost O(len), the stack of a
 * few dozen bytes.
 *
 * Server-independent: APR only.  Any thread.
 */
#ifndef COMET_JSON_H
#define COMET_JSON_H

#include "comet_core.h"

#define COMET_JSON_MAX_DEPTH 64

typedef struct comet_json_envelope_t {
    const char *channel;  apr_size_t channel_len;
    const char *event;    apr_size_t event_len;   /* NULL: absent          */
    const char *data;     apr_size_t data_len;
} comet_json_envelope_t;

/* Read text[0, len) as an envelope.  Unescaped strings are written into
 * scratch, which must hold len bytes (a string never grows when it is
 * unescaped); the envelope's pointers point into scratch or text.
 * APR_SUCCESS, or APR_EINVAL with *why a short English reason (a
 * constant) naming the first problem.  Any thread; O(len). */
apr_status_t comet_json_envelope(const char *text, apr_size_t len,
                                 char *scratch, comet_json_envelope_t *env,
                                 const char **why);

#endif /* COMET_JSON_H */
