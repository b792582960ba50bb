/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_tls.c -- a TLS session that the hub carries on by itself (see
 * comet_tls.h).
 *
 * What can still call back into the session's first user after the
 * detach, and why it is harmless (OpenSSL 3.0, mod_ssl's SSL_CTX):
 *   - info, message and verify callbacks and the application data: set
 *     per session, cleared here (an info callback of NULL would fall back
 *     to the context's and a verify callback of NULL would keep the old
 *     one, so both become callbacks of ours that do nothing);
 *   - renegotiation (TLS 1.2) and post-handshake authentication (TLS 1.3)
 *     would run the context's handshake callbacks: renegotiation is
 *     refused here (the client gets a no_renegotiation alert), and the hub
 *     never asks for a certificate;
 *   - new-session and ticket callbacks: TLS 1.3 tickets went out right
 *     after the handshake, before the response; no more are issued;
 *   - the key-log callback (SSLKEYLOGFILE): such sessions are never
 *     detached (the glue checks), since a key update would log through it.
 * The OpenSSL error queue is per thread: every call clears what it left,
 * so that nothing of ours shows up in another user's error on the thread.
 */

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "comet_tls.h"

static void tls_info_none(const SSL *ssl, int where, int ret)
{
    (void)ssl;
    (void)where;
    (void)ret;
}

/* A NULL verify callback would leave the old one in place (OpenSSL keeps
 * it), so this one takes its place; no certificate is verified after the
 * detach anyway. */
static int tls_verify_as_is(int ok, X509_STORE_CTX *ctx)
{
    (void)ctx;
    return ok;
}

apr_status_t comet_tls_detach(SSL *ssl, int fd)
{
    BIO *bio;

    /* A quiet SSL_shutdown only set both flags. */
    SSL_set_quiet_shutdown(ssl, 0);
    SSL_set_shutdown(ssl, 0);
    SSL_set_app_data(ssl, NULL);
    SSL_set_info_callback(ssl, tls_info_none);
    SSL_set_msg_callback(ssl, NULL);
    SSL_set_msg_callback_arg(ssl, NULL);
    SSL_set_verify(ssl, SSL_get_verify_mode(ssl), tls_verify_as_is);
    SSL_set_options(ssl, SSL_OP_NO_RENEGOTIATION);
    SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE
                      | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                      | SSL_MODE_RELEASE_BUFFERS);
    SSL_clear_mode(ssl, SSL_MODE_AUTO_RETRY);
    bio = BIO_new_socket(fd, BIO_NOCLOSE);
    if (!bio) {
        ERR_clear_error();
        return APR_ENOMEM;
    }
    SSL_set_bio(ssl, bio, bio);
    /* Idle from here on: about 33 KB of record buffers go back.  (With
     * RELEASE_BUFFERS already set this finds nothing to free.) */
    SSL_free_buffers(ssl);
    ERR_clear_error();
    return APR_SUCCESS;
}

/* What a failed call means for the session. */
static apr_status_t tls_failed(SSL *ssl, int rc)
{
    int err = SSL_get_error(ssl, rc);

    ERR_clear_error();
    return err == SSL_ERROR_ZERO_RETURN ? APR_EOF : APR_ECONNRESET;
}

apr_status_t comet_tls_write(SSL *ssl, const char *data, apr_size_t len,
                             apr_size_t *written)
{
    *written = 0;
    while (*written < len) {
        size_t n = 0;
        int rc;

        ERR_clear_error();
        rc = SSL_write_ex(ssl, data + *written, len - *written, &n);
        if (rc > 0) {
            /* With partial writes: one record or more went out. */
            *written += n;
            continue;
        }
        if (SSL_get_error(ssl, rc) == SSL_ERROR_WANT_WRITE) {
            ERR_clear_error();
            return APR_SUCCESS;
        }
        return tls_failed(ssl, rc);
    }
    return APR_SUCCESS;
}

apr_status_t comet_tls_read(SSL *ssl, apr_size_t *stray)
{
    /* A whole record's plaintext fits: nothing stays inside the session
     * that a poll would not report. */
    char buf[16384];
    apr_size_t total = 0;

    if (stray) {
        *stray = 0;
    }
    while (total < COMET_TLS_READ_MAX) {
        size_t n = 0;
        int rc;

        ERR_clear_error();
        rc = SSL_read_ex(ssl, buf, sizeof(buf), &n);
        if (rc > 0) {
            total += n;
            if (stray) {
                *stray += n;
            }
            continue;
        }
        switch (SSL_get_error(ssl, rc)) {
        case SSL_ERROR_WANT_READ:
            ERR_clear_error();
            return APR_SUCCESS;
        case SSL_ERROR_WANT_WRITE:
            ERR_clear_error();
            return APR_EAGAIN;
        default:
            return tls_failed(ssl, rc);
        }
    }
    return APR_SUCCESS;
}

apr_status_t comet_tls_recv(SSL *ssl, char *buf, apr_size_t cap,
                            apr_size_t *got)
{
    size_t n = 0;
    int rc;

    *got = 0;
    ERR_clear_error();
    rc = SSL_read_ex(ssl, buf, cap, &n);
    if (rc > 0) {
        *got = n;
        return APR_SUCCESS;
    }
    switch (SSL_get_error(ssl, rc)) {
    case SSL_ERROR_WANT_READ:
        ERR_clear_error();
        return APR_SUCCESS;
    case SSL_ERROR_WANT_WRITE:
        ERR_clear_error();
        return APR_EAGAIN;
    default:
        return tls_failed(ssl, rc);
    }
}

apr_status_t comet_tls_shutdown(SSL *ssl)
{
    int rc;

    ERR_clear_error();
    rc = SSL_shutdown(ssl);
    if (rc >= 0) {
        /* 0: ours is sent, the client's not seen; we do not wait. */
        ERR_clear_error();
        return APR_SUCCESS;
    }
    if (SSL_get_error(ssl, rc) == SSL_ERROR_WANT_WRITE) {
        ERR_clear_error();
        return APR_EAGAIN;
    }
    ERR_clear_error();
    return APR_EGENERAL;
}

int comet_tls_has_pending(SSL *ssl)
{
    return SSL_has_pending(ssl);
}

void comet_tls_free(SSL *ssl)
{
    SSL_free(ssl);
}
