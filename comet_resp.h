/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_resp.h -- the Redis protocol (RESP) of the publisher socket.
 *
 * Requests: what redis-cli and the Redis client libraries send, i.e.
 *   - arrays of bulk strings:
 *         *3\r\n$7\r\nPUBLISH\r\n$5\r\nroom1\r\n$2\r\nhi\r\n
 *   - inline commands:
 *         PUBLISH room1 "hello world"\r\n
 *     split at whitespace; "..." takes the escapes \n \r \t \b \a \\ \"
 *     and \xHH, '...' only \'; a closing quote must be followed by
 *     whitespace or the end of the line; a line ends at LF, a CR before it
 *     is dropped; an empty line is skipped.
 * Both may be pipelined: many commands in one read.  RESP3 clients send the
 * same requests (they switch with HELLO 3), so only the reply writer needs
 * to know the protocol version.
 *
 * Parser model.  The caller owns the input buffer.  It passes the bytes it
 * has not yet handed over (data, len); the parser returns one complete
 * command, or asks for more, or reports an error, and always says in
 * *consumed how many leading bytes it is done with (the caller drops them
 * before the next call; an incomplete command consumes nothing, blank
 * input before it may be).  Between calls the caller may move its bytes
 * (compact, realloc) and append more, but must pass the same unconsumed
 * bytes first: the parser remembers offsets, not pointers, and does not
 * look at the same byte twice, so feeding a large bulk one byte at a time
 * costs O(n), not O(n^2).
 *
 * A returned command's argv point into the caller's buffer and are NUL
 * terminated there: the parser writes the NULs over the bytes that follow
 * each argument (the CR of a bulk, the separator of an inline word) and
 * unescapes quoted inline words in place.  So the bytes of a command are
 * scratch once it is returned; they stay valid until the caller drops or
 * overwrites them.
 *
 * The "*<n>" and "$<len>" lines are checked byte by byte as they arrive
 * (optional '-', at most 18 digits, CRLF), so garbage is refused at once
 * instead of being buffered until some CRLF comes.
 *
 * Errors are sticky (every later call returns the same until
 * comet_resp_parser_reset); the connection is not usable after one:
 *   COMET_EPROTO   malformed input; comet_resp_parser_error() has the
 *                  Redis-like text ("Protocol error: invalid bulk length").
 *                  Reply "-ERR <text>" and close.
 *   COMET_ETOOBIG  a bulk string declared longer than limits.max_bulk:
 *                  found on its "$<len>" line, before any of its bytes are
 *                  read or buffered.  The rest of the request is not
 *                  skipped (it can be anything up to max_bulk bytes long);
 *                  reply "-ERR message larger than maximum message size"
 *                  and close.
 *
 * A parser belongs to one thread at a time (in the module: the publish
 * thread, which owns every publish socket connection).
 */
#ifndef COMET_RESP_H
#define COMET_RESP_H

#include <apr_pools.h>

#include "comet_core.h"
#include "comet_buf.h"

typedef struct comet_resp_limits_t {
    apr_size_t max_args;    /* arguments of one command (1024)             */
    apr_size_t max_bulk;    /* bytes of one bulk string: max message size
                               plus slack (256K + 1K)                      */
    apr_size_t max_inline;  /* bytes of an inline line (64K)             */
} comet_resp_limits_t;

#define COMET_RESP_MAX_ARGS_DEFAULT    1024
#define COMET_RESP_MAX_BULK_DEFAULT    (256 * 1024 + 1024)
#define COMET_RESP_MAX_INLINE_DEFAULT  (64 * 1024)

/* Fill limits with the defaults above.  Any thread. */
void comet_resp_limits_default(comet_resp_limits_t *limits);

typedef struct comet_resp_parser_t comet_resp_parser_t;

typedef struct comet_resp_cmd_t {
    apr_size_t   argc;          /* >= 1                                  */
    char       **argv;          /* NUL-terminated, in the caller's data  */
    apr_size_t  *argv_len;      /* may contain NULs: use these lengths   */
} comet_resp_cmd_t;

/* A parser in p (copies limits; NULL: the defaults).  Its argument arrays
 * grow as commands need them, up to max_args.  Any thread. */
apr_status_t comet_resp_parser_create(comet_resp_parser_t **parser,
                                      const comet_resp_limits_t *limits,
                                      apr_pool_t *p);

/* Look at data[0, len) for the next command.
 *   APR_SUCCESS     *cmd filled; it occupied data[0, *consumed)
 *   APR_INCOMPLETE  call again with more bytes after data[*consumed]
 *   COMET_EPROTO, COMET_ETOOBIG: see above (*consumed is 0)
 * cmd stays valid until the next call.  The thread that owns the parser;
 * cost: O(new bytes). */
apr_status_t comet_resp_parse(comet_resp_parser_t *parser, char *data,
                              apr_size_t len, apr_size_t *consumed,
                              comet_resp_cmd_t *cmd);

/* Text of the last error (no CR/LF, no "-ERR" prefix); "" when none.  The
 * thread that owns the parser. */
const char *comet_resp_parser_error(const comet_resp_parser_t *parser);

/* Forget everything, errors included (for a new connection).  The thread
 * that owns the parser. */
void comet_resp_parser_reset(comet_resp_parser_t *parser);

/* ---- replies ---------------------------------------------------------------
 * Each appends one whole element to out, or nothing (APR_ENOSPC or
 * APR_ENOMEM: out is bounded, see comet_buf.h).  Simple strings and errors
 * are one line: CR and LF in them are written as spaces.  proto is 2 or 3
 * (what the client chose with HELLO); it matters where the RESP3 type
 * differs.  Each of them: any thread that owns out; cost O(bytes). */

#define COMET_RESP2 2
#define COMET_RESP3 3

apr_status_t comet_resp_simple(comet_buf_t *out, const char *s,
                               apr_size_t len);                  /* +OK    */
/* s starts with the error code: "ERR unknown command". */
apr_status_t comet_resp_error(comet_buf_t *out, const char *s,
                              apr_size_t len);                   /* -ERR   */
apr_status_t comet_resp_errorf(comet_buf_t *out, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
apr_status_t comet_resp_integer(comet_buf_t *out, apr_int64_t v); /* :42   */
apr_status_t comet_resp_bulk(comet_buf_t *out, const void *data,
                             apr_size_t len);                    /* $2 hi  */
/* RESP2 $-1, RESP3 _ */
apr_status_t comet_resp_null(comet_buf_t *out, int proto);
/* *<n> */
apr_status_t comet_resp_array(comet_buf_t *out, apr_size_t n);
/* A map of n pairs: RESP3 %<n>, RESP2 the flat array *<2n> (HELLO). */
apr_status_t comet_resp_map(comet_buf_t *out, int proto, apr_size_t n);
/* Out-of-band data (pub/sub messages): RESP3 ><n>, RESP2 *<n>. */
apr_status_t comet_resp_push(comet_buf_t *out, int proto, apr_size_t n);

#endif /* COMET_RESP_H */
