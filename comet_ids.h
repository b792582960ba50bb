/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_ids.h -- the text forms clients write and read back: message ids
 * (SSE "id:" lines, Last-Event-ID, long-poll "id"), channel ids (URLs,
 * PUBLISH) and channel patterns (PUBSUB CHANNELS).  The store keeps and
 * hands out ids; what makes one well-formed is decided here, so that the
 * subscriber, the publisher and the store agree on it.
 *
 * Server-independent: APR only.  Every function is pure (no lock, no
 * allocation, no state): any thread.
 */
#ifndef COMET_IDS_H
#define COMET_IDS_H

#include <apr.h>

#include "comet_core.h"

/* ------------------------------------------------------------------ */
/* Message ids                                                         */
/* ------------------------------------------------------------------ */

/*
 * A message id is (epoch, seq).  The epoch names one store segment: it is
 * drawn at random when a segment is formatted, so ids of a previous server
 * run (full stop/start) are recognised as foreign instead of being compared
 * as numbers.  seq comes from one counter for the whole segment, so it
 * strictly increases within every channel and is never reused, also when an
 * idle channel is reclaimed and later created again.  Nothing in an id is
 * derived from the wall clock.
 *
 * Text form (what clients see in SSE "id:" lines and send back):
 *     <epoch>:<seq>                 one channel,  e.g.  "1f03a9c2:42"
 *     <epoch>:<seq>,<seq>,...       several channels, in the order the
 *                                   subscriber named them
 * epoch: 8 lowercase hex digits, never 00000000; seq: decimal, no sign, no
 * leading zeros except "0" itself, at most 20 digits.  seq 0 means "before
 * the first message".
 */
typedef struct comet_msgid_t {
    apr_uint32_t epoch;
    apr_uint64_t seq;
} comet_msgid_t;

/* Longest text of one id, and of a compound id of n channels, with NUL. */
#define COMET_MSGID_MAXLEN           (8 + 1 + 20 + 1)
#define COMET_MSGID_COMPOUND_MAXLEN(n) (8 + 1 + 21 * (apr_size_t)(n) + 1)

/* Format into buf (at least COMET_MSGID_MAXLEN); returns the length.  Any
 * thread. */
apr_size_t comet_msgid_format(char *buf, const comet_msgid_t *id);

/* Parse exactly len bytes; COMET_EBADID on anything malformed.  Any
 * thread. */
apr_status_t comet_msgid_parse(comet_msgid_t *id, const char *s,
                               apr_size_t len);

/* Compound form: one epoch, n seqs.  format: buf at least
 * COMET_MSGID_COMPOUND_MAXLEN(n); returns the length.  parse: fills at most
 * max seqs, sets *n; COMET_EBADID when malformed or more than max.  Any
 * thread. */
apr_size_t comet_msgid_format_compound(char *buf, apr_uint32_t epoch,
                                       const apr_uint64_t *seqs,
                                       apr_size_t n);
apr_status_t comet_msgid_parse_compound(apr_uint32_t *epoch,
                                        apr_uint64_t *seqs, apr_size_t max,
                                        apr_size_t *n, const char *s,
                                        apr_size_t len);

/* Order of two ids of the same epoch: <0, 0, >0.  Any thread. */
int comet_msgid_cmp(const comet_msgid_t *a, const comet_msgid_t *b);

/* ------------------------------------------------------------------ */
/* Channel ids                                                         */
/* ------------------------------------------------------------------ */

/* Channel ids are 1..max_len bytes from the safe set
 *     A-Z a-z 0-9 and  - _ . ~ : @ /
 * (no comma: it separates channels in a subscription; no space, quote,
 * percent or control byte: an id can be written in a URL, a config file
 * and a log line as it is).  Returns APR_SUCCESS or COMET_EBADCHAN.  Any
 * thread. */
#define COMET_CHANNEL_ID_MAX_DEFAULT 1024
/* The allowed bytes, as error texts name them. */
#define COMET_CHANNEL_ID_CHARS "A-Z a-z 0-9 - _ . ~ : @ /"

apr_status_t comet_channel_id_check(const char *id, apr_size_t len,
                                    apr_size_t max_len);

/* ------------------------------------------------------------------ */
/* Channel patterns                                                    */
/* ------------------------------------------------------------------ */

/* Does s[0, slen) match the glob pattern p[0, plen)?  Redis's PUBSUB
 * CHANNELS syntax: * ? [..] and \ escapes.  In a class, [^...] negates and
 * a-z is a range; an unterminated class runs to the end of the pattern; a
 * trailing \ matches itself.  O(plen * slen) at worst, never a
 * backtracking blow-up.  Any thread. */
int comet_glob_match(const char *p, apr_size_t plen,
                     const char *s, apr_size_t slen);

#endif /* COMET_IDS_H */
