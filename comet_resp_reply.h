/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_resp_reply.h -- the Redis protocol (RESP2 and RESP3) as a client
 * reads it: replies from a Redis server.
 *
 * comet_resp.h parses what clients send us (requests); this parses what a
 * server sends back, for our own Redis client (comet_redis.h).  The two
 * share the model, not the code: requests are flat arrays of bulks, replies
 * nest and have a dozen types.
 *
 * Types:
 *   RESP2  +simple  -error  :integer  $bulk ($-1 nil)  *array (*-1 nil)
 *   RESP3  _null  ,double  #bool  (big number  !blob error  =verbatim
 *          %map  ~set  >push  |attribute
 * Streamed RESP3 strings and aggregates ($? *? ;chunk .end) are refused
 * (COMET_EPROTO): Redis never sends them.  Attributes (|) are parsed,
 * checked against the limits and dropped: they are metadata about the
 * reply that follows them and no command of ours asks for one.
 *
 * Parser model: the one of comet_resp.h.  The caller owns the input
 * buffer and passes the bytes it has not consumed (data, len); the parser
 * returns one complete reply, or asks for more, or fails, and says in
 * *consumed how many leading bytes it is done with (0 until a reply is
 * complete: the caller drops them before the next call).  Between calls
 * the caller may move its bytes and append more, but must pass the same
 * unconsumed bytes first: the parser keeps offsets, not pointers, and
 * never looks at a byte twice, so a reply fed one byte at a time costs
 * O(n), not O(n^2).
 *
 * Result: a tree flattened in pre-order into one array of nodes that the
 * parser reuses from reply to reply.  An aggregate node is followed by its
 * elements, each followed by its own; node->span counts a node and all of
 * its descendants, so the next sibling of n is n + n->span and its first
 * element n + 1 (comet_resp_reply_next / _child).  Why a tree and not a
 * flat event stream: every consumer (a command callback, the pub/sub
 * dispatcher, the cluster slot map) wants to look at a whole reply, often
 * out of order ("the element after the key named 'slots'"); a stream would
 * make each of them keep its own state machine across reads.  Why one
 * array: no allocation per reply once the array has grown to the largest
 * reply seen (bounded by max_elements), and nothing to free.
 *
 * Strings are not copied: node->str points into the caller's buffer and is
 * NUL-terminated there (the NUL is written over the CR after the string).
 * So a reply is valid until the caller drops or overwrites its bytes, or
 * calls the parser again.
 *
 * Bounds (comet_resp_reply_limits_t) are checked on each header line as it
 * arrives: a bulk declared longer than max_bulk, an aggregate deeper than
 * max_depth, more elements in one reply than max_elements (declared counts
 * are checked at once, before any element is read), or a line longer than
 * max_line fails with COMET_ETOOBIG or COMET_EPROTO; memory is the
 * reply's bytes (the caller's) plus at most max_elements nodes.
 *
 * Errors are sticky until comet_resp_reply_reset(); after one the
 * connection's byte stream cannot be trusted and should be closed.
 *
 * A parser belongs to one thread at a time.
 */
#ifndef COMET_RESP_REPLY_H
#define COMET_RESP_REPLY_H

#include <apr_pools.h>

#include "comet_core.h"

/* Node types.  A "simple" string and a bulk are both STRING (flags tell
 * them apart); "-" and "!" are both ERROR. */
#define COMET_REPLY_STRING   1      /* + $ =  (str, len)                    */
#define COMET_REPLY_ERROR    2      /* - !    (str, len): "ERR ..."         */
#define COMET_REPLY_INTEGER  3      /* :      (integer)                     */
#define COMET_REPLY_NIL      4      /* _ $-1 *-1                            */
#define COMET_REPLY_DOUBLE   5      /* ,      (dval; str is the text)       */
#define COMET_REPLY_BOOL     6      /* #      (integer 0 or 1)              */
#define COMET_REPLY_BIGNUM   7      /* (      (str: the digits)             */
#define COMET_REPLY_ARRAY    8      /* *      (elements)                    */
#define COMET_REPLY_MAP      9      /* %      (elements = 2 x pairs)        */
#define COMET_REPLY_SET      10     /* ~      (elements)                    */
#define COMET_REPLY_PUSH     11     /* >      (elements)                    */

/* flags */
#define COMET_REPLY_F_SIMPLE   0x01 /* from a + or - line, not a $ or ! bulk */
#define COMET_REPLY_F_VERBATIM 0x02 /* from =: format holds "txt", "mkd"   */

typedef struct comet_resp_reply_t {
    int          type;
    int          flags;
    const char  *str;       /* STRING ERROR DOUBLE BIGNUM: NUL-terminated */
    apr_size_t   len;       /* bytes of str                               */
    apr_int64_t  integer;   /* INTEGER, BOOL                              */
    double       dval;      /* DOUBLE                                     */
    apr_size_t   elements;  /* aggregates: direct elements (a map's keys
                               and values both count)                     */
    apr_size_t   span;      /* nodes of this subtree, itself included     */
    char         format[4]; /* VERBATIM: the 3-letter format, NUL ended   */
    /* Parser's own: str as an offset until the reply is complete. */
    apr_size_t   off_;
} comet_resp_reply_t;

typedef struct comet_resp_reply_limits_t {
    apr_size_t max_depth;     /* aggregates nested in one another (16)    */
    apr_size_t max_elements;  /* nodes in one reply (1M)                  */
    apr_size_t max_bulk;      /* bytes of one bulk/blob/verbatim (64M)    */
    apr_size_t max_line;      /* bytes of a + - : , ( # _ line (64K)      */
} comet_resp_reply_limits_t;

#define COMET_RESP_REPLY_MAX_DEPTH_DEFAULT     16
#define COMET_RESP_REPLY_MAX_ELEMENTS_DEFAULT  (1024 * 1024)
#define COMET_RESP_REPLY_MAX_BULK_DEFAULT      (64 * 1024 * 1024)
#define COMET_RESP_REPLY_MAX_LINE_DEFAULT      (64 * 1024)

/* Any thread. */
void comet_resp_reply_limits_default(comet_resp_reply_limits_t *limits);

typedef struct comet_resp_reply_parser_t comet_resp_reply_parser_t;

/* A parser in p (copies limits; NULL: the defaults).  Its stack (max_depth
 * entries) is allocated now; its node array grows by doubling in p up to
 * max_elements (the copies left behind add up to less than the final
 * size).  APR_EINVAL for a zero limit.  Any thread. */
apr_status_t comet_resp_reply_parser_create(comet_resp_reply_parser_t **parser,
                                            const comet_resp_reply_limits_t
                                                *limits,
                                            apr_pool_t *p);

/* Look at data[0, len) for the next reply.
 *   APR_SUCCESS     *reply is its root node; it occupied data[0, *consumed)
 *   APR_INCOMPLETE  call again with more bytes after data[len] (*consumed 0)
 *   COMET_EPROTO    malformed (comet_resp_reply_error() says how)
 *   COMET_ETOOBIG   a declared size or count beyond the limits
 *   APR_ENOMEM      the node array could not grow
 *   APR_EINVAL      len is less than the bytes already shown
 * The reply stays valid until the next call and while data is unchanged.
 * Owner thread; cost O(new bytes) plus O(nodes) once the reply is done. */
apr_status_t comet_resp_reply_parse(comet_resp_reply_parser_t *parser,
                                    char *data, apr_size_t len,
                                    apr_size_t *consumed,
                                    const comet_resp_reply_t **reply);

/* Text of the last error (no CR/LF); "" when none.  Owner thread. */
const char *comet_resp_reply_error(const comet_resp_reply_parser_t *parser);

/* Forget everything, errors included (for a new connection).  Owner
 * thread. */
void comet_resp_reply_reset(comet_resp_reply_parser_t *parser);

/* ---- walking a reply (any thread that holds the reply; O(1) unless said) */

/* The node after n and all its descendants: n's next sibling. */
static APR_INLINE const comet_resp_reply_t *
comet_resp_reply_next(const comet_resp_reply_t *n)
{
    return n + n->span;
}

/* Element i of an aggregate, or NULL (not an aggregate, i out of range).
 * O(i + the sizes of the elements before it). */
const comet_resp_reply_t *comet_resp_reply_child(const comet_resp_reply_t *n,
                                                 apr_size_t i);

/* The value of key (a STRING) in a MAP, or in an ARRAY of key/value pairs
 * (what RESP2 sends for a RESP3 map), or NULL.  O(size of n). */
const comet_resp_reply_t *comet_resp_reply_get(const comet_resp_reply_t *n,
                                               const char *key);

/* n is a STRING equal to s (case-insensitive when nocase). */
int comet_resp_reply_is(const comet_resp_reply_t *n, const char *s,
                        int nocase);

/* True for ARRAY MAP SET PUSH. */
int comet_resp_reply_aggregate(const comet_resp_reply_t *n);

#endif /* COMET_RESP_REPLY_H */
