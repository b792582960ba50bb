/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_ws.h -- the WebSocket protocol (RFC 6455), server side.
 *
 * Three parts, none of which knows a socket or a server:
 *
 * ---- Handshake -------------------------------------------------------------
 * The glue hands over the pieces of an upgrade request as strings (header
 * values as httpd has them: repeated fields joined with ", ", or NULL when
 * absent); comet_ws_handshake_check says whether it is an acceptable
 * WebSocket opening handshake and, when not, which status to answer and
 * why (400, or 426 with "Sec-WebSocket-Version: 13").  The accept value
 * comes from comet_ws_accept_key.  We negotiate no extension: the answer
 * never carries Sec-WebSocket-Extensions, which declines permessage-deflate
 * and any other offer (RFC 6455 9.1); a client that sets an RSV bit anyway
 * is failed with 1002 by the parser.  A subprotocol is picked by
 * comet_ws_pick_protocol (the client's order of preference, names compared
 * exactly as the client must compare our answer).
 *
 * ---- Frame parser ---------------------------------------------------------
 * Client to server.  The caller owns the input buffer, as with comet_resp:
 * it passes the bytes it has not yet handed over (data, len); the parser
 * returns one event, or asks for more, or reports an error, and says in
 * *consumed how many leading bytes it is done with:
 *   - APR_INCOMPLETE: all of them (*consumed == len).  A partial frame
 *     header (at most 14 bytes) and partial payloads are kept by the
 *     parser, so the caller never needs to keep bytes between reads.
 *   - APR_SUCCESS: the bytes up to the end of the frame that completed the
 *     event; the rest is for the next call.
 * No byte is looked at twice, so any split of the input costs O(n), and
 * every split gives the same events.
 *
 * Where event bytes live.  A data message that arrives as one whole frame
 * in one call is unmasked in place in the caller's data and returned from
 * there (no copy, no allocation): the caller's bytes are scratch once
 * passed.  A fragmented message, or a frame that arrives over several
 * calls, is gathered in the parser's reassembly buffer, which grows with
 * the bytes that actually arrive (malloc, doubling) up to max_message and
 * is given back after a large message.  Control payloads (at most 125
 * bytes) are copied into the parser.  Either way an event's bytes stay
 * valid until the next call and until the caller overwrites its consumed
 * bytes: handle the event, then drop the bytes, then call again.
 *
 * Rules enforced (close code to send in brackets): RSV bits set, there
 * being no extension [1002]; unknown opcode [1002]; an unmasked frame
 * [1002]; a length not in its shortest form, or a 64-bit length with the
 * top bit set [1002]; a control frame that is fragmented or has more than
 * 125 bytes [1002]; a new text/binary frame while a fragmented message is
 * open, or a continuation with none open [1002]; a message longer than
 * max_message [1009] -- found on the frame header, before its payload is
 * read; text that is not UTF-8 (overlongs, surrogates, > U+10FFFF, a
 * message ending inside a sequence) [1007], checked as the bytes arrive,
 * across fragments, so a bad byte fails at once; a close payload of 1 byte
 * or with a code RFC 6455 7.4 does not allow on the wire [1002]; a close
 * reason that is not UTF-8 [1007].  Control frames may come between the
 * fragments of a message.
 *
 * Errors are sticky: every later call returns the same.  Then send a close
 * frame with comet_ws_parser_error's code and close.  After a CLOSE event
 * the parser reads nothing more (APR_EOF, every byte consumed): data after
 * a close is to be ignored (RFC 6455 5.5.1).
 *
 * ---- Frame encoder --------------------------------------------------------
 * Server to client: FIN set, unmasked.  Whole frames into a comet_buf_t or
 * nothing (APR_ENOSPC/APR_ENOMEM).  For zero-copy delivery of a payload
 * formatted once and sent to many, comet_ws_frame_header writes only the
 * header bytes (for a writev beside the payload), and
 * comet_ws_frame_begin/_end wrap bytes formatted straight into a buffer.
 * comet_ws_frame_client writes masked, possibly unfinished frames: what a
 * client sends (tests, benchmarks).
 *
 * Threads: nothing here locks or keeps global state; every function may be
 * called on any thread that owns the parser or buffer it is given.
 */
#ifndef COMET_WS_H
#define COMET_WS_H

#include <apr_pools.h>

#include "comet_core.h"
#include "comet_buf.h"

/* Opcodes. */
#define COMET_WS_OP_CONT    0x0
#define COMET_WS_OP_TEXT    0x1
#define COMET_WS_OP_BINARY  0x2
#define COMET_WS_OP_CLOSE   0x8
#define COMET_WS_OP_PING    0x9
#define COMET_WS_OP_PONG    0xA

/* Close codes we send or report (RFC 6455 7.4.1). */
#define COMET_WS_CLOSE_NORMAL        1000
#define COMET_WS_CLOSE_GOING_AWAY    1001
#define COMET_WS_CLOSE_PROTOCOL      1002
#define COMET_WS_CLOSE_UNSUPPORTED   1003
#define COMET_WS_CLOSE_NO_STATUS     1005   /* never on the wire          */
#define COMET_WS_CLOSE_INVALID_DATA  1007
#define COMET_WS_CLOSE_POLICY        1008
#define COMET_WS_CLOSE_TOO_BIG       1009
#define COMET_WS_CLOSE_INTERNAL      1011

#define COMET_WS_CONTROL_MAX   125  /* payload of a control frame          */
#define COMET_WS_REASON_MAX    123  /* close reason, after the 2-byte code */
#define COMET_WS_HEADER_MAX    14   /* 2 + 8 (length) + 4 (mask)           */
#define COMET_WS_SERVER_HEADER_MAX 10
#define COMET_WS_KEY_LEN       24   /* base64 of 16 bytes                  */
#define COMET_WS_ACCEPT_LEN    28   /* base64 of a SHA-1                   */

/* ---- handshake ---------------------------------------------------------- */

/* The parts of an upgrade request; NULL for an absent header. */
typedef struct comet_ws_request_t {
    const char *method;       /* "GET"                                   */
    const char *protocol;     /* "HTTP/1.1"                              */
    const char *upgrade;      /* Upgrade                                 */
    const char *connection;   /* Connection                              */
    const char *version;      /* Sec-WebSocket-Version                   */
    const char *key;          /* Sec-WebSocket-Key                       */
} comet_ws_request_t;

/* True when an Upgrade header value names websocket (a token of its
 * comma-separated list, in any case): the request means to be a
 * WebSocket, and comet_ws_handshake_check decides whether it is a good
 * one.  Any thread. */
int comet_ws_is_upgrade(const char *upgrade);

/* Check an opening handshake (RFC 6455 4.2.1).  Returns the status to
 * answer: 101 when it is acceptable; 400 when it is malformed (not GET,
 * not HTTP/1.1 or later, no "Upgrade: websocket", no "upgrade" token in
 * Connection, no or a bad Sec-WebSocket-Key, no Sec-WebSocket-Version);
 * 426 for a version other than 13 (answer with "Sec-WebSocket-Version:
 * 13").  *reason: a short English text for the log and the error page
 * ("" when accepted).  Any thread; O(header bytes). */
int comet_ws_handshake_check(const comet_ws_request_t *req,
                             const char **reason);

/* Sec-WebSocket-Accept for a key (as comet_ws_handshake_check accepted
 * it; surrounding blanks are ignored) into out, NUL-terminated.  Any
 * thread. */
void comet_ws_accept_key(const char *key,
                         char out[COMET_WS_ACCEPT_LEN + 1]);

/* Whether a Sec-WebSocket-Extensions value offers the named extension
 * (e.g. "permessage-deflate"): 1 yes, 0 no, -1 the value is not a valid
 * extension list.  We accept none, so this only informs (logs, counters);
 * a malformed offer is no reason to refuse, since it is declined anyway.
 * Any thread. */
int comet_ws_extension_offered(const char *extensions, const char *name);

/* Pick a subprotocol: the first name of the client's Sec-WebSocket-Protocol
 * list (offered, may be NULL) that is among supported[0, n).  Returns a
 * pointer into offered and its length in *len, or NULL when none fits
 * (then answer without Sec-WebSocket-Protocol; note that browsers fail a
 * connection that asked for subprotocols and got none).  Any thread. */
const char *comet_ws_pick_protocol(const char *offered,
                                   const char *const *supported,
                                   apr_size_t n, apr_size_t *len);

/* The whole 101 response head for a connection whose socket we write
 * ourselves: status line, Upgrade, Connection, Sec-WebSocket-Accept, and
 * Sec-WebSocket-Protocol when protocol is not NULL, then the blank line.
 * All or nothing.  Any thread that owns out. */
apr_status_t comet_ws_handshake_response(comet_buf_t *out,
                                         const char *accept,
                                         const char *protocol,
                                         apr_size_t protocol_len);

/* ---- parser ------------------------------------------------------------- */

typedef enum {
    COMET_WS_EV_TEXT = 1,       /* a whole message: data, len (UTF-8)      */
    COMET_WS_EV_BINARY,         /* a whole message: data, len              */
    COMET_WS_EV_PING,           /* payload: answer with a pong of it       */
    COMET_WS_EV_PONG,           /* payload                                 */
    COMET_WS_EV_CLOSE           /* code (1005: none given), reason in data */
} comet_ws_event_e;

typedef struct comet_ws_event_t {
    comet_ws_event_e type;
    const char      *data;
    apr_size_t       len;
    int              code;      /* CLOSE only                              */
} comet_ws_event_t;

/* The parser is a plain struct so that it can live inside a record that is
 * not in a pool (the hub's subscribers are malloc()ed).  Fields are
 * private; 224 bytes on LP64, plus the reassembly buffer while a message
 * is gathered. */
typedef struct comet_ws_parser_t {
    apr_uint64_t   frame_left;  /* payload bytes of this frame to come   */
    apr_size_t     max_message;
    char          *msg;         /* reassembly buffer (malloc)            */
    apr_size_t     msg_len, msg_cap;
    const char    *errmsg;
    apr_size_t     frame_pos;   /* payload bytes of this frame so far    */
    int            errcode;
    apr_status_t   err;
    unsigned char  state;
    unsigned char  hdr_len;
    unsigned char  opcode;      /* of the frame being read               */
    unsigned char  fin;
    unsigned char  msg_op;      /* TEXT/BINARY while a message is open, 0 */
    unsigned char  delivered;   /* last event came from msg: reset it    */
    unsigned char  utf8_need;   /* continuation bytes still due          */
    unsigned char  utf8_lo, utf8_hi;  /* bounds of the next one          */
    unsigned char  ctl_len;
    unsigned char  mask[4];
    unsigned char  hdr[COMET_WS_HEADER_MAX];
    char           ctl[COMET_WS_CONTROL_MAX];
} comet_ws_parser_t;

/* Make a parser for messages of at most max_message bytes (> 0).  It
 * allocates nothing yet; comet_ws_parser_release gives back what it may
 * have since.  Any thread. */
apr_status_t comet_ws_parser_init(comet_ws_parser_t *parser,
                                  apr_size_t max_message);

/* The same, in p, released with p.  Any thread. */
apr_status_t comet_ws_parser_create(comet_ws_parser_t **parser,
                                    apr_size_t max_message, apr_pool_t *p);

/* Free the reassembly buffer: at the end of a connection, or to shed
 * memory.  The last event's bytes may go with it.  A message still being
 * gathered is lost and the parser fails (1011); otherwise it may be used
 * again and allocates anew.  The thread that owns the parser. */
void comet_ws_parser_release(comet_ws_parser_t *parser);

/* Read data[0, len) for the next event.
 *   APR_SUCCESS     *ev filled; it ended at data[*consumed]
 *   APR_INCOMPLETE  all bytes taken; call again with more
 *   APR_EOF         a CLOSE event was returned earlier; bytes ignored
 *   COMET_EPROTO    protocol error (close code 1002 or 1007)
 *   COMET_ETOOBIG   message over max_message (close code 1009)
 *   APR_ENOMEM      the reassembly buffer could not grow (close code 1011)
 *   APR_EINVAL      data is NULL and len is not 0 (the parser is unchanged)
 * On APR_EOF and errors *consumed == len.  data is written to (unmasked
 * in place).  The thread that owns the parser; O(len). */
apr_status_t comet_ws_parse(comet_ws_parser_t *parser, char *data,
                            apr_size_t len, apr_size_t *consumed,
                            comet_ws_event_t *ev);

/* After an error: the close code to send (*code) and a short English
 * reason, fit for the close frame.  "" and 0 when there was none.  The
 * thread that owns the parser. */
const char *comet_ws_parser_error(const comet_ws_parser_t *parser,
                                  int *code);

/* True while a fragmented message is open.  The thread that owns the
 * parser. */
int comet_ws_parser_in_message(const comet_ws_parser_t *parser);

/* ---- encoder ------------------------------------------------------------ */

/* Write the header of a server frame (FIN set, unmasked) for a payload of
 * len bytes into hdr; returns its length (2, 4 or 10).  For a payload that
 * is sent from where it already is (writev).  Any thread. */
apr_size_t comet_ws_frame_header(unsigned char *hdr, int opcode,
                                 apr_uint64_t len);

/* Append one whole server frame.  Control frames (CLOSE, PING, PONG) with
 * more than 125 bytes and unknown opcodes are APR_EINVAL (nothing
 * written).  Any thread that owns out. */
apr_status_t comet_ws_frame(comet_buf_t *out, int opcode, const void *data,
                            apr_size_t len);

/* Append a close frame.  code 0: an empty payload (no code); otherwise a
 * code that may be sent (comet_ws_close_code_valid) and the reason, cut
 * at a UTF-8 character boundary to fit 123 bytes; a reason that is not
 * UTF-8 is left out rather than sent (the peer would fail on it).
 * APR_EINVAL for a code that may not be sent.  Any thread that owns out. */
apr_status_t comet_ws_close_frame(comet_buf_t *out, int code,
                                  const char *reason, apr_size_t len);

/* Format a frame's payload straight into out: begin reserves room for a
 * header and returns the mark; append the payload to out; end writes the
 * header before it (moving the payload only when its header is not 4
 * bytes long, i.e. below 126 or above 65535 bytes).  On failure of end
 * everything from mark on is dropped: whole frame or nothing.  Any thread
 * that owns out. */
apr_status_t comet_ws_frame_begin(comet_buf_t *out, apr_size_t *mark);
apr_status_t comet_ws_frame_end(comet_buf_t *out, apr_size_t mark,
                                int opcode);

/* A client's frame: masked with mask[4], FIN as given, any opcode in
 * 0..15 and the RSV bits rsv (0..7) as given, so that tests can also
 * write what a bad client writes.  Any thread that owns out. */
apr_status_t comet_ws_frame_client(comet_buf_t *out, int opcode, int fin,
                                   int rsv, const unsigned char mask[4],
                                   const void *data, apr_size_t len);

/* ---- rules -------------------------------------------------------------- */

/* A close code that may appear on the wire: 1000-1003, 1007-1011,
 * 3000-4999.  Any thread. */
int comet_ws_close_code_valid(int code);

/* Whether s[0, len) is well-formed UTF-8 (no overlongs, surrogates or
 * values above U+10FFFF).  Any thread; O(len). */
int comet_ws_utf8_valid(const char *s, apr_size_t len);

#endif /* COMET_WS_H */
