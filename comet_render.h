/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_render.h -- a store read rendered as one transport's frames.
 *
 * Between the store (comet_read_t, positions as seqs) and the wire formats
 * (comet_frame.h): which frames a read becomes, in which order, and which
 * id each frame carries.  The hub renders what it delivers to parked
 * subscribers; a request thread renders what a subscriber is due at once,
 * before it parks or answers a long-poll.  Both get the same bytes.
 *
 * Positions: seqs[0, nchan) are a subscription's positions, one per channel
 * in the order the subscriber named them (the last seq delivered).  A
 * message frame carries the position after that message: the plain id
 * "<epoch>:<seq>" for one channel, the compound id for several, so that a
 * client resuming with it misses nothing on any channel.
 *
 * Server-independent: APR only.  No function keeps state or takes a lock:
 * any thread that owns the buffer (hub thread, request thread).  Cost
 * O(bytes written); nothing is allocated except to grow the buffer (and
 * an SSE event name, in p).
 */
#ifndef COMET_RENDER_H
#define COMET_RENDER_H

#include <apr_pools.h>

#include "comet_core.h"
#include "comet_buf.h"
#include "comet_store.h"

/* Transports; the values are the bits of CometTransports. */
#define COMET_T_SSE       0x1
#define COMET_T_LONGPOLL  0x2
#define COMET_T_STREAM    0x4
#define COMET_T_ALL       (COMET_T_SSE | COMET_T_LONGPOLL | COMET_T_STREAM)

/* The text id of a subscription's position: "<epoch>:<seq>" for one
 * channel, the compound form for several; in buf (at least
 * COMET_MSGID_COMPOUND_MAXLEN(nchan)).  Returns the length.  Any thread. */
apr_size_t comet_render_position_id(char *buf, apr_uint32_t epoch,
                                    const apr_uint64_t *seqs,
                                    apr_size_t nchan);

/* One message of channel ci as an SSE (transport COMET_T_SSE) or ndjson
 * (COMET_T_STREAM) frame; seqs[ci] has already been advanced to the
 * message's seq.  chunked: the frame becomes one HTTP chunk.  The whole
 * frame or nothing (APR_ENOSPC when buf's bound is reached).  Any thread
 * that owns buf. */
apr_status_t comet_render_msg(comet_buf_t *buf, int transport, int chunked,
                              apr_uint32_t epoch, const char *const *ids,
                              const apr_uint64_t *seqs, apr_size_t nchan,
                              apr_size_t ci, const comet_msg_t *msg,
                              apr_pool_t *p);

/* The missed (deleted 0) or deleted (deleted 1) notice of channel, as an
 * SSE or ndjson frame; chunked and all-or-nothing as comet_render_msg.
 * Any thread that owns buf. */
apr_status_t comet_render_notice(comet_buf_t *buf, int transport,
                                 int chunked, int deleted,
                                 const char *channel);

/* Append what a subscriber of transport (SSE or stream) is due from one
 * read rd of channel ci of its subscription (NULL: nothing read): the
 * missed notice, then each message newer than seqs[ci] (which advances as
 * they are written), then the deleted notice.  ids: the subscription's
 * channel ids; event names and ids are the multi-channel ones when
 * nchan > 1.  chunked: each frame becomes one HTTP chunk.  Whole frames
 * or nothing (APR_ENOSPC when buf's bound is reached; seqs[ci] then names
 * the last message written).  Any thread that owns buf. */
apr_status_t comet_render_stream(comet_buf_t *buf, int transport,
                                 int chunked, apr_uint32_t epoch,
                                 const char *const *ids,
                                 apr_uint64_t *seqs, apr_size_t nchan,
                                 apr_size_t ci, const comet_read_t *rd,
                                 apr_pool_t *p);

/* The long-poll answer for reads[0..nchan) (NULL entries: nothing read):
 * one JSON document (not chunked) whose "id" is the position after every
 * message it holds; seqs advance to it.  missed: the document's "missed".
 * Any thread that owns buf. */
apr_status_t comet_render_poll(comet_buf_t *buf, apr_uint32_t epoch,
                               const char *const *ids,
                               apr_uint64_t *seqs, apr_size_t nchan,
                               const comet_read_t *const *reads,
                               int missed);

#endif /* COMET_RENDER_H */
