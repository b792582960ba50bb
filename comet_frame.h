/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_frame.h -- the wire formats of the subscriber transports.
 *
 * Every function appends one complete frame to a comet_buf_t, or nothing
 * at all (APR_ENOSPC/APR_ENOMEM when it does not fit): a stream never
 * carries half a frame.  Payload bytes can never break a frame; names and
 * ids are expected to be clean (channel ids are, see comet_ids.h) but
 * are made harmless when they are not.  No function allocates except to
 * grow the buffer.  Cost O(bytes written).
 *
 * Threads: every function of this file may be called by any thread that
 * owns the buffer (in the module: the hub thread and request threads, each
 * on buffers of its own); none keeps state.
 *
 * Message ids are passed as their text form (comet_msgid_format*), which
 * is what clients see and send back; times are wall-clock apr_time_t
 * (microseconds) and are written as Unix milliseconds.
 *
 * ---- HTTP/1.1 chunked transfer coding -----------------------------------
 *   chunk:       <len in lowercase hex, no leading zeros>\r\n<data>\r\n
 *   last chunk:  0\r\n\r\n
 * An empty chunk would read as the last one, so chunking 0 bytes writes
 * nothing.
 *
 * ---- Server-Sent Events (text/event-stream) -------------------------------
 *   message:     id: <id>\n                   when there is an id
 *                event: <name>\n              when there is a name
 *                from: <sender>\n             when the message has one
 *                data: <line>\n               one per payload line
 *                \n
 *   A payload is split into lines at CR, LF and CRLF alike, which is how
 *   EventSource reads them; the client joins the data lines with LF, so it
 *   gets the payload back exactly except that every CR and CRLF has become
 *   LF (SSE cannot carry a CR).  An empty line is written "data:\n" (no
 *   space), so an empty payload is the single line "data:\n" and a payload
 *   that ends in a newline ends with an empty data line: "a\n" gives
 *   "data: a\ndata:\n\n".  Every other byte (NUL, invalid UTF-8) is
 *   written as it is.  CR, LF and NUL in an id or a name would end the
 *   field early (or make browsers drop the id): each is written as '?'.
 *   comment:     : <text>\n\n                 (":\n\n" when text is empty;
 *                                              CR/LF in text become ' ')
 *   retry:       retry: <ms>\n\n
 *
 *   The from field carries the identity the server established for the
 *   sender (CometClientIdentity).  EventSource ignores fields it does not
 *   know (HTML's rule), so browsers see the message as before; a client
 *   that reads the stream itself sees the sender.
 *
 *   Event names.  On a single-channel subscription the event name is the
 *   message's type and is absent for an untyped message.  On a
 *   multi-channel subscription it names the channel: "room1" for an
 *   untyped message of channel room1, "room1#typing" for one of type
 *   "typing" (comet_frame_event_name builds it).
 *
 *   Special events (no id line, so the client's Last-Event-ID stays):
 *     event: comet-missed\ndata: <channel>\n\n    messages were lost
 *     event: comet-deleted\ndata: <channel>\n\n   channel deleted; the
 *                                                  stream ends after it
 *
 * ---- JSON strings (RFC 8259) ----------------------------------------------
 *   " and \ are escaped as \" and \\; control bytes as \b \f \n \r \t or
 *   \u00XX; valid UTF-8 (shortest form, no surrogates, <= U+10FFFF) is
 *   written as it is, DEL and '/' too.  A byte that is not part of valid
 *   UTF-8 is written as \u00XX of its value.  Payloads are meant to be
 *   UTF-8 text; for the odd binary byte this is lossless for a client that
 *   looks at the JSON text, because a character U+0080..U+00FF from valid
 *   UTF-8 is never escaped (after an ordinary JSON parse the two read the
 *   same).
 *
 * ---- Long-poll response body: one JSON document ---------------------------
 *   {"id":"<next id>","missed":false,"messages":[<msg>,<msg>,...]}
 *   <msg> = {"channel":"room1","id":"<id>","event":"typing",
 *            "from":"alice","time":<unix ms>,"data":"..."}
 *   "event" is left out for an untyped message, "from" for one without a
 *   sender identity; "missed" is true when the
 *   store said messages were lost; a poll that timed out has
 *   "messages":[].  Built with comet_frame_poll_begin/_add/_end so that
 *   messages of several channels can be added in turn.
 *
 * ---- HTTP streaming: newline-delimited JSON (application/x-ndjson) -------
 *   message:     <msg>\n                      (<msg> as above)
 *   missed:      {"missed":true,"channel":"room1"}\n
 *   deleted:     {"deleted":true,"channel":"room1"}\n
 *   keepalive:   \n
 */
#ifndef COMET_FRAME_H
#define COMET_FRAME_H

#include <apr_pools.h>

#include "comet_core.h"
#include "comet_buf.h"

/* One message as the JSON formats show it. */
typedef struct comet_frame_msg_t {
    const char *channel;  apr_size_t channel_len;
    const char *id;       apr_size_t id_len;     /* text form           */
    const char *event;    apr_size_t event_len;  /* NULL/0: untyped     */
    const char *from;     apr_size_t from_len;   /* NULL/0: no sender   */
    const char *data;     apr_size_t data_len;
    apr_time_t  time;                            /* wall clock, in µs   */
} comet_frame_msg_t;

/* ---- HTTP/1.1 chunks ---------------------------------------------------- */

/* <hex len>\r\n<data>\r\n; nothing for len 0.  Any thread that owns buf. */
apr_status_t comet_frame_chunk(comet_buf_t *buf, const void *data,
                               apr_size_t len);

/* 0\r\n\r\n.  Any thread that owns buf. */
apr_status_t comet_frame_chunk_last(comet_buf_t *buf);

/* Build a chunk in place: _begin reserves room for the chunk header and
 * returns a mark; the caller appends the chunk's content with any
 * formatter; _end writes the header (moving the content down by the
 * header's unused bytes, so the hex length has no leading zeros) and the
 * trailing CRLF.  An empty content leaves nothing.  Lets a whole batch of
 * SSE messages be formatted once, as one chunk, without a copy.  Any
 * thread that owns buf. */
apr_status_t comet_frame_chunk_begin(comet_buf_t *buf, apr_size_t *mark);
apr_status_t comet_frame_chunk_end(comet_buf_t *buf, apr_size_t mark);

/* ---- Server-Sent Events ------------------------------------------------- */

/* One event; id and event may be NULL (no such line).  Any thread that
 * owns buf (as every SSE frame below). */
apr_status_t comet_frame_sse(comet_buf_t *buf,
                             const char *id, apr_size_t id_len,
                             const char *event, apr_size_t event_len,
                             const char *data, apr_size_t data_len);

/* The same with the sender's identity (from may be NULL: no line).  Any
 * thread that owns buf. */
apr_status_t comet_frame_sse_from(comet_buf_t *buf,
                                  const char *id, apr_size_t id_len,
                                  const char *event, apr_size_t event_len,
                                  const char *from, apr_size_t from_len,
                                  const char *data, apr_size_t data_len);

/* A comment, a retry, the missed and deleted events: see the format
 * above.  Any thread that owns buf. */
apr_status_t comet_frame_sse_comment(comet_buf_t *buf, const char *text,
                                     apr_size_t len);

apr_status_t comet_frame_sse_retry(comet_buf_t *buf, apr_uint32_t ms);

apr_status_t comet_frame_sse_missed(comet_buf_t *buf, const char *channel,
                                    apr_size_t len);

apr_status_t comet_frame_sse_deleted(comet_buf_t *buf, const char *channel,
                                     apr_size_t len);

/* The SSE event name of a message of channel with type (NULL/0: none):
 * multi = the subscription names several channels.  Returns NULL (and
 * *len 0) when the event has no name, else a string in p.  Any thread
 * that owns p. */
const char *comet_frame_event_name(apr_pool_t *p, int multi,
                                   const char *channel,
                                   apr_size_t channel_len,
                                   const char *type, apr_size_t type_len,
                                   apr_size_t *len);

/* ---- JSON --------------------------------------------------------------- */

/* The JSON string of s[0, len), with its quotes.  Any thread that owns
 * buf. */
apr_status_t comet_frame_json_string(comet_buf_t *buf, const char *s,
                                     apr_size_t len);

/* Long-poll body.  The state counts messages so that _add knows where a
 * comma goes; it lives on the caller's stack.  The next id comes first in
 * the document, so the caller reads the messages before it formats them.
 * A message that does not fit is left out whole (APR_ENOSPC); as the id is
 * already written, the caller then truncates the buffer back to start and
 * formats again with fewer messages and the id that matches them. */
typedef struct comet_frame_poll_t {
    comet_buf_t *buf;
    apr_size_t   start;       /* buf->len before _begin */
    apr_size_t   messages;    /* added so far           */
} comet_frame_poll_t;

/* Begin, add to and end one long-poll body.  Any thread that owns buf. */
apr_status_t comet_frame_poll_begin(comet_frame_poll_t *poll,
                                    comet_buf_t *buf,
                                    const char *next_id, apr_size_t id_len,
                                    int missed);
apr_status_t comet_frame_poll_add(comet_frame_poll_t *poll,
                                  const comet_frame_msg_t *msg);
apr_status_t comet_frame_poll_end(comet_frame_poll_t *poll);

/* One message object alone (no newline): a WebSocket text frame's
 * payload.  Any thread that owns buf. */
apr_status_t comet_frame_json_msg(comet_buf_t *buf,
                                  const comet_frame_msg_t *msg);

/* ndjson stream: a message, the missed and deleted lines, a keepalive.
 * Any thread that owns buf. */
apr_status_t comet_frame_ndjson(comet_buf_t *buf,
                                const comet_frame_msg_t *msg);
apr_status_t comet_frame_ndjson_missed(comet_buf_t *buf,
                                       const char *channel, apr_size_t len);
apr_status_t comet_frame_ndjson_deleted(comet_buf_t *buf,
                                        const char *channel, apr_size_t len);
apr_status_t comet_frame_ndjson_keepalive(comet_buf_t *buf);

#endif /* COMET_FRAME_H */
