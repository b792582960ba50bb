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
#define COMET_T_WS        0x8
#define COMET_T_ALL       (COMET_T_SSE | COMET_T_LONGPOLL | COMET_T_STREAM \
                           | COMET_T_WS)

/* The text id of a subscription's position: "<epoch>:<seq>" for one
 * channel, the compound form for several; in buf (at least
 * COMET_MSGID_COMPOUND_MAXLEN(nchan)).  Returns the length.  Any thread. */
apr_size_t comet_render_position_id(char *buf, apr_uint32_t epoch,
                                    const apr_uint64_t *seqs,
                                    apr_size_t nchan);

/* One message of channel ci as an SSE (transport COMET_T_SSE), ndjson
 * (COMET_T_STREAM) or WebSocket (COMET_T_WS: one text frame holding the
 * ndjson line's object, without the newline) frame; seqs[ci] has already
 * been advanced to the message's seq.  chunked: the frame becomes one
 * HTTP chunk (never for WebSocket).  The whole
 * frame or nothing (APR_ENOSPC when buf's bound is reached).  Any thread
 * that owns buf. */
apr_status_t comet_render_msg(comet_buf_t *buf, int transport, int chunked,
                              apr_uint32_t epoch, const char *const *ids,
                              const apr_uint64_t *seqs, apr_size_t nchan,
                              apr_size_t ci, const comet_msg_t *msg,
                              apr_pool_t *p);

/* The missed (deleted 0) or deleted (deleted 1) notice of channel, as an
 * SSE, ndjson or WebSocket frame; chunked and all-or-nothing as comet_render_msg.
 * Any thread that owns buf. */
apr_status_t comet_render_notice(comet_buf_t *buf, int transport,
                                 int chunked, int deleted,
                                 const char *channel);

/* Append what a subscriber of transport (SSE, stream or WebSocket) is due from one
 * read rd of channel ci of its subscription (NULL: nothing read): the
 * missed notice, then each message newer than seqs[ci] (which advances as
 * they are written), then the deleted notice.  ids: the subscription's
 * channel ids; event names and ids are the multi-channel ones when
 * nchan > 1.  chunked: each frame becomes one HTTP chunk.
 *
 * limit bounds what one call appends (0: no bound): once a message frame
 * would take the bytes this call appended past limit, it and the rest are
 * left out, except the first message frame, which always goes in (so a
 * caller always makes progress).  *complete (may be NULL) tells whether
 * every message and the deleted notice went in; when not, seqs[ci] names
 * the last message written and the rest is for a later call.  Whole
 * frames or nothing (APR_ENOSPC when buf's own bound is reached; seqs[ci]
 * then names the last message written).  Any thread that owns buf. */
apr_status_t comet_render_stream(comet_buf_t *buf, int transport,
                                 int chunked, apr_uint32_t epoch,
                                 const char *const *ids,
                                 apr_uint64_t *seqs, apr_size_t nchan,
                                 apr_size_t ci, const comet_read_t *rd,
                                 apr_size_t limit, int *complete,
                                 apr_pool_t *p);

/* The long-poll answer for reads[0..nchan) (NULL entries: nothing read):
 * one JSON document (not chunked) whose "id" is the position after every
 * message it holds; seqs advance to it.  missed: the document's "missed".
 *
 * limit bounds the document's messages (0: no bound): messages are taken
 * channel by channel, oldest first, while their JSON stays within limit
 * bytes, and always at least one, so that a client far behind catches up
 * poll by poll.  *complete (may be NULL) tells whether every message of
 * the reads went in.  tmp: a buffer of the caller's for the messages
 * while the id is not known yet (its content is lost).  Any thread that
 * owns buf and tmp. */
apr_status_t comet_render_poll(comet_buf_t *buf, comet_buf_t *tmp,
                               apr_uint32_t epoch, const char *const *ids,
                               apr_uint64_t *seqs, apr_size_t nchan,
                               const comet_read_t *const *reads,
                               int missed, apr_size_t limit, int *complete);

/* The largest frame one message can become in any transport (SSE turns
 * each line break into a "data:" line, JSON a control byte into
 * \u00XX: at most 6 bytes a payload byte), for payloads of at most
 * max_message bytes on channels of ids at most max_channel_id bytes, with
 * an event type, the longest compound id and HTTP chunk framing.  What a
 * bound on unsent bytes must let through for a reader that keeps up.
 * Any thread. */
apr_size_t comet_render_frame_max(apr_size_t max_message,
                                  apr_size_t max_channel_id);

#endif /* COMET_RENDER_H */
