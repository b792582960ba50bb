/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "harness.h"
#include "tls_client.h"

static SSL_CTX *ctx;

static SSL_CTX *client_ctx(void)
{
    if (!ctx) {
        ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    return ctx;
}

/* Wait for fd to be ready for what OpenSSL asked; 0 on timeout. */
static int wait_fd(int fd, int want_write, long long end)
{
    struct pollfd p;
    int left = (int)(end - it_now_ms());

    if (left <= 0) {
        return 0;
    }
    p.fd = fd;
    p.events = want_write ? POLLOUT : POLLIN;
    return poll(&p, 1, left) > 0;
}

int it_tls_open(it_tls_t *t, int port, const char *request)
{
    return it_tls_open_rcvbuf(t, port, request, 0);
}

int it_tls_open_rcvbuf(it_tls_t *t, int port, const char *request,
                       int rcvbuf)
{
    long long end = it_now_ms() + 10000;
    size_t off = 0, len = strlen(request);
    SSL *ssl;
    int rc;

    memset(t, 0, sizeof(*t));
    t->fd = rcvbuf > 0 ? it_connect_rcvbuf(port, rcvbuf) : it_connect(port);
    if (t->fd < 0) {
        return -1;
    }
    fcntl(t->fd, F_SETFL, fcntl(t->fd, F_GETFL) | O_NONBLOCK);
    t->ssl = ssl = SSL_new(client_ctx());
    SSL_set_fd(ssl, t->fd);
    while ((rc = SSL_connect(ssl)) != 1) {
        int e = SSL_get_error(ssl, rc);

        if ((e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
            || !wait_fd(t->fd, e == SSL_ERROR_WANT_WRITE, end)) {
            it_tls_close(t, 0);
            return -1;
        }
    }
    while (off < len) {
        rc = SSL_write(ssl, request + off, (int)(len - off));
        if (rc > 0) {
            off += (size_t)rc;
            continue;
        }
        rc = SSL_get_error(ssl, rc);
        if ((rc != SSL_ERROR_WANT_READ && rc != SSL_ERROR_WANT_WRITE)
            || !wait_fd(t->fd, rc == SSL_ERROR_WANT_WRITE, end)) {
            it_tls_close(t, 0);
            return -1;
        }
    }
    t->cap = 64 * 1024;
    t->buf = malloc(t->cap);
    t->buf[0] = '\0';
    return 0;
}

/* Read what is there (waiting until end for something): 1 read, 0
 * timeout, -1 closed or error. */
static int read_some(it_tls_t *t, long long end)
{
    SSL *ssl = t->ssl;

    for (;;) {
        int rc, e;

        if (t->len + 4096 + 1 > t->cap) {
            t->cap *= 2;
            t->buf = realloc(t->buf, t->cap);
        }
        rc = SSL_read(ssl, t->buf + t->len, (int)(t->cap - t->len - 1));
        if (rc > 0) {
            t->len += (size_t)rc;
            t->buf[t->len] = '\0';
            if (!t->body) {
                char *eoh = strstr(t->buf, "\r\n\r\n");

                if (eoh) {
                    t->body = (size_t)(eoh - t->buf) + 4;
                }
            }
            return 1;
        }
        e = SSL_get_error(ssl, rc);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            if (!wait_fd(t->fd, e == SSL_ERROR_WANT_WRITE, end)) {
                return 0;
            }
            continue;
        }
        ERR_clear_error();
        t->eof = 1;
        return -1;
    }
}

int it_tls_read_until(it_tls_t *t, const char *needle, size_t from,
                      int timeout_ms)
{
    long long end = it_now_ms() + timeout_ms;

    if (!t->ssl) {
        return 0;
    }
    for (;;) {
        if (from <= t->len && strstr(t->buf + from, needle)) {
            return 1;
        }
        if (t->eof || read_some(t, end) <= 0) {
            return 0;
        }
    }
}

int it_tls_read_to_close(it_tls_t *t, int timeout_ms)
{
    long long end = it_now_ms() + timeout_ms;

    if (!t->ssl) {
        return 0;
    }
    while (!t->eof) {
        if (read_some(t, end) == 0) {
            return 0;
        }
    }
    return 1;
}

void it_tls_close(it_tls_t *t, int notify)
{
    if (t->ssl) {
        if (notify) {
            SSL_shutdown(t->ssl);
        }
        SSL_free(t->ssl);
        t->ssl = NULL;
    }
    if (t->fd >= 0) {
        close(t->fd);
    }
    t->fd = -1;
    free(t->buf);
    t->buf = NULL;
}
