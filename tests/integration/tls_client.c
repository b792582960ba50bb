/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

#include <errno.h>
#include <stdio.h>
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

/* One context per (version, certificate): made once, kept. */
static struct {
    int version;
    const char *cert;
    SSL_CTX *ctx;
} ctxs[8];

static SSL_CTX *client_ctx(const it_tls_opts_t *o)
{
    int version = o ? o->version : 0;
    const char *cert = o ? o->cert : NULL;
    int i;

    for (i = 0; i < 8 && ctxs[i].ctx; i++) {
        if (ctxs[i].version == version
            && (ctxs[i].cert == cert
                || (cert && ctxs[i].cert && !strcmp(ctxs[i].cert, cert)))) {
            return ctxs[i].ctx;
        }
    }
    if (i == 8) {
        return NULL;
    }
    ctxs[i].ctx = SSL_CTX_new(TLS_client_method());
    ctxs[i].version = version;
    ctxs[i].cert = cert ? strdup(cert) : NULL;
    SSL_CTX_set_verify(ctxs[i].ctx, SSL_VERIFY_NONE, NULL);
    if (version == 2) {
        SSL_CTX_set_min_proto_version(ctxs[i].ctx, TLS1_2_VERSION);
        SSL_CTX_set_max_proto_version(ctxs[i].ctx, TLS1_2_VERSION);
    }
    else if (version == 3) {
        SSL_CTX_set_min_proto_version(ctxs[i].ctx, TLS1_3_VERSION);
    }
    if (cert && (SSL_CTX_use_certificate_file(ctxs[i].ctx, cert,
                                              SSL_FILETYPE_PEM) != 1
                 || SSL_CTX_use_PrivateKey_file(ctxs[i].ctx, o->key,
                                                SSL_FILETYPE_PEM) != 1)) {
        fprintf(stderr, "cannot load the client certificate %s\n", cert);
    }
    return ctxs[i].ctx;
}

/* Every raw byte read from the socket: cut into records by their
 * 5-byte headers. */
static long trace_raw(BIO *b, int oper, const char *argp, size_t len,
                      int argi, long argl, int ret, size_t *processed)
{
    it_tls_t *t = (it_tls_t *)BIO_get_callback_arg(b);
    const unsigned char *p = (const unsigned char *)argp;
    size_t n;

    if (oper != (BIO_CB_READ | BIO_CB_RETURN) || ret <= 0 || !processed) {
        return ret;
    }
    for (n = *processed; n;) {
        if (t->rbody_left) {
            size_t k = n < t->rbody_left ? n : t->rbody_left;

            t->rbody_left -= k;
            p += k;
            n -= k;
            continue;
        }
        t->rh[t->rh_have++] = *p++;
        n--;
        if (t->rh_have == 5) {
            t->rbody_left = ((size_t)t->rh[3] << 8) | t->rh[4];
            t->rh_have = 0;
            t->records++;
            if (t->close_notifies) {
                t->records_after++;
            }
        }
    }
    return ret;
}

/* Alerts and handshake messages the server sent, decrypted. */
static void trace_msg(int write_p, int version, int content_type,
                      const void *buf, size_t len, SSL *ssl, void *arg)
{
    it_tls_t *t = arg;
    const unsigned char *p = buf;

    if (write_p || !len) {
        return;
    }
    if (content_type == SSL3_RT_ALERT && len >= 2) {
        if (p[1] == SSL3_AD_CLOSE_NOTIFY) {
            t->close_notifies++;
        }
        else {
            t->other_alerts++;
        }
    }
    else if (content_type == SSL3_RT_HANDSHAKE && p[0] == SSL3_MT_KEY_UPDATE) {
        t->key_updates++;
    }
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
    return it_tls_open_opts(t, port, request, NULL);
}

int it_tls_open_rcvbuf(it_tls_t *t, int port, const char *request,
                       int rcvbuf)
{
    it_tls_opts_t o;

    memset(&o, 0, sizeof(o));
    o.rcvbuf = rcvbuf;
    return it_tls_open_opts(t, port, request, &o);
}

int it_tls_open_opts(it_tls_t *t, int port, const char *request,
                     const it_tls_opts_t *o)
{
    long long end = it_now_ms() + 10000;
    size_t off = 0, len = strlen(request);
    int rcvbuf = o ? o->rcvbuf : 0;
    SSL *ssl;
    int rc;

    memset(t, 0, sizeof(*t));
    t->fd = rcvbuf > 0 ? it_connect_rcvbuf(port, rcvbuf) : it_connect(port);
    if (t->fd < 0) {
        return -1;
    }
    fcntl(t->fd, F_SETFL, fcntl(t->fd, F_GETFL) | O_NONBLOCK);
    t->ssl = ssl = SSL_new(client_ctx(o));
    if (o && o->trace) {
        BIO *bio = BIO_new_socket(t->fd, BIO_NOCLOSE);

        BIO_set_callback_ex(bio, trace_raw);
        BIO_set_callback_arg(bio, (char *)t);
        SSL_set_bio(ssl, bio, bio);
        SSL_set_msg_callback(ssl, trace_msg);
        SSL_set_msg_callback_arg(ssl, t);
    }
    else {
        SSL_set_fd(ssl, t->fd);
    }
    if (o && o->cert) {
        /* A per-location SSLVerifyClient asks after the handshake. */
        SSL_set_post_handshake_auth(ssl, 1);
    }
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
        t->notified = e == SSL_ERROR_ZERO_RETURN;
        t->failed = e == SSL_ERROR_SSL;
        return -1;
    }
}

int it_tls_raw_to_eof(it_tls_t *t, int timeout_ms)
{
    long long end = it_now_ms() + timeout_ms;
    char buf[4096];

    for (;;) {
        ssize_t n;

        if (!wait_fd(t->fd, 0, end)) {
            return 0;
        }
        n = recv(t->fd, buf, sizeof(buf), 0);
        if (n == 0) {
            return 1;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                continue;
            }
            return errno == ECONNRESET;
        }
        t->bytes_after += n;
    }
}

const char *it_tls_version(const it_tls_t *t)
{
    return t->ssl ? SSL_get_version(t->ssl) : "none";
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
