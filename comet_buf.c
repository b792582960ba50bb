/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comet_buf.h"

/* Below this a buffer is not worth a realloc of its own. */
#define COMET_BUF_MIN_ALLOC 64

static apr_status_t buf_cleanup(void *data)
{
    comet_buf_t *buf = data;

    free(buf->data);
    buf->data = NULL;
    buf->len = buf->cap = 0;
    return APR_SUCCESS;
}

apr_status_t comet_buf_create(comet_buf_t **bufp, apr_pool_t *p,
                              apr_size_t initial, apr_size_t max)
{
    comet_buf_t *buf;

    if (initial > max) {
        return APR_EINVAL;
    }
    buf = apr_pcalloc(p, sizeof(*buf));
    buf->max = max;
    buf->owned = 1;
    if (initial) {
        buf->data = malloc(initial);
        if (!buf->data) {
            return APR_ENOMEM;
        }
        buf->cap = initial;
    }
    apr_pool_cleanup_register(p, buf, buf_cleanup, apr_pool_cleanup_null);
    *bufp = buf;
    return APR_SUCCESS;
}

void comet_buf_wrap(comet_buf_t *buf, char *mem, apr_size_t size)
{
    buf->data = mem;
    buf->len = 0;
    buf->cap = size;
    buf->max = size;
    buf->owned = 0;
}

apr_status_t comet_buf_reserve(comet_buf_t *buf, apr_size_t n)
{
    apr_size_t need, cap;
    char *data;

    if (n <= buf->cap - buf->len) {
        return APR_SUCCESS;
    }
    /* Written so that no sum can wrap around. */
    if (!buf->owned || n > buf->max || buf->len > buf->max - n) {
        return APR_ENOSPC;
    }
    need = buf->len + n;
    cap = buf->cap < COMET_BUF_MIN_ALLOC ? COMET_BUF_MIN_ALLOC : buf->cap;
    while (cap < need) {
        cap = cap > buf->max / 2 ? buf->max : cap * 2;
    }
    if (cap > buf->max) {
        cap = buf->max;
    }
    data = realloc(buf->data, cap);
    if (!data) {
        return APR_ENOMEM;
    }
    buf->data = data;
    buf->cap = cap;
    return APR_SUCCESS;
}

apr_status_t comet_buf_append(comet_buf_t *buf, const void *data,
                              apr_size_t n)
{
    apr_status_t rv;

    if (n == 0) {
        return APR_SUCCESS;
    }
    if ((rv = comet_buf_reserve(buf, n)) != APR_SUCCESS) {
        return rv;
    }
    memcpy(buf->data + buf->len, data, n);
    buf->len += n;
    return APR_SUCCESS;
}

apr_status_t comet_buf_puts(comet_buf_t *buf, const char *s)
{
    return comet_buf_append(buf, s, strlen(s));
}

apr_status_t comet_buf_putc(comet_buf_t *buf, char c)
{
    if (buf->len < buf->cap) {
        buf->data[buf->len++] = c;
        return APR_SUCCESS;
    }
    return comet_buf_append(buf, &c, 1);
}

apr_status_t comet_buf_printf(comet_buf_t *buf, const char *fmt, ...)
{
    va_list ap;
    char small[128], *big;
    int n;
    apr_status_t rv;

    /* First into a stack buffer: most texts are short, and the length
     * must be known before the buffer may grow. */
    va_start(ap, fmt);
    n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0) {
        return APR_EINVAL;
    }
    if ((apr_size_t)n < sizeof(small)) {
        return comet_buf_append(buf, small, (apr_size_t)n);
    }
    /* Long texts are rare (error replies): format them once more into a
     * temporary so that the NUL vsnprintf writes never needs room in buf. */
    big = malloc((apr_size_t)n + 1);
    if (!big) {
        return APR_ENOMEM;
    }
    va_start(ap, fmt);
    vsnprintf(big, (apr_size_t)n + 1, fmt, ap);
    va_end(ap);
    rv = comet_buf_append(buf, big, (apr_size_t)n);
    free(big);
    return rv;
}

void comet_buf_truncate(comet_buf_t *buf, apr_size_t len)
{
    if (len < buf->len) {
        buf->len = len;
    }
}

void comet_buf_consume(comet_buf_t *buf, apr_size_t n)
{
    if (n >= buf->len) {
        buf->len = 0;
        return;
    }
    memmove(buf->data, buf->data + n, buf->len - n);
    buf->len -= n;
}

void comet_buf_release(comet_buf_t *buf)
{
    if (buf->owned) {
        buf_cleanup(buf);
    }
}
