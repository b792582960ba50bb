/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_buf.h -- a growable byte buffer with a hard size limit.
 *
 * Every formatter of the core (RESP replies, HTTP chunks, SSE, JSON)
 * appends into one of these, so that a peer that never reads, or a message
 * at the size limit, costs a known maximum of memory and never a crash.
 *
 * Two kinds:
 *   - comet_buf_create(): the bytes live in malloc()ed memory that grows
 *     (doubling) up to max and is freed by a cleanup of the pool.  Pool
 *     memory would not do: a buffer that lives as long as a connection and
 *     grows now and then would leave every smaller copy behind in the pool.
 *   - comet_buf_wrap(): the caller's fixed array (stack, struct member);
 *     never grows, never allocates.
 *
 * Appends are all-or-nothing: when the bytes do not fit under max, nothing
 * is written and APR_ENOSPC is returned (APR_ENOMEM when malloc fails).
 * The formatters built on it keep that promise for whole frames: a frame
 * that does not fit leaves the buffer as it was, so a stream never carries
 * half a frame.
 *
 * A buffer belongs to one thread at a time; nothing here locks.  Every
 * function below: any thread that owns the buffer (in the module: the hub
 * thread, the publish thread and request threads, each on buffers of its
 * own).
 */
#ifndef COMET_BUF_H
#define COMET_BUF_H

#include <apr_pools.h>

#include "comet_core.h"

typedef struct comet_buf_t {
    char       *data;   /* content: [0, len); moves when it grows      */
    apr_size_t  len;
    apr_size_t  cap;    /* allocated bytes (private)                         */
    apr_size_t  max;    /* cap never exceeds it (private)                    */
    int         owned;  /* data is ours to realloc/free (private)            */
} comet_buf_t;

/* A buffer of at most max bytes in p's lifetime; initial bytes are
 * allocated at once (0: on the first append).  APR_EINVAL when
 * initial > max.  Any thread; cost: one malloc. */
apr_status_t comet_buf_create(comet_buf_t **buf, apr_pool_t *p,
                              apr_size_t initial, apr_size_t max);

/* Use the caller's array mem[0, size) as a buffer that never grows.  Any
 * thread. */
void comet_buf_wrap(comet_buf_t *buf, char *mem, apr_size_t size);

/* Make room for n more bytes (so that a writer can fill data + len
 * directly and then add to len).  O(1) unless the buffer must grow (one
 * realloc, amortised O(1) per byte).  Any thread that owns buf. */
apr_status_t comet_buf_reserve(comet_buf_t *buf, apr_size_t n);

/* Append data[0, n).  Any thread that owns buf. */
apr_status_t comet_buf_append(comet_buf_t *buf, const void *data,
                              apr_size_t n);

/* Append a NUL-terminated string (without its NUL).  Any thread that owns
 * buf. */
apr_status_t comet_buf_puts(comet_buf_t *buf, const char *s);

/* Append one byte.  Any thread that owns buf. */
apr_status_t comet_buf_putc(comet_buf_t *buf, char c);

/* printf-style append; output that does not fit is not written.  Any
 * thread that owns buf. */
apr_status_t comet_buf_printf(comet_buf_t *buf, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Forget everything after the first len bytes (len <= buf->len).  Any
 * thread that owns buf. */
void comet_buf_truncate(comet_buf_t *buf, apr_size_t len);

/* Drop the first n bytes (those a non-blocking write has sent); the rest
 * moves to the front: O(bytes left).  Any thread that owns buf. */
void comet_buf_consume(comet_buf_t *buf, apr_size_t n);

/* Free the memory of a created buffer before its pool goes (a buffer that
 * outlived its use); it is then empty and allocates again when used.  Any
 * thread that owns buf. */
void comet_buf_release(comet_buf_t *buf);

#endif /* COMET_BUF_H */
