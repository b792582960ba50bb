/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* Helpers shared by the TLS tests: a server context with a self-signed
 * P-256 certificate made in memory, a client context, and a finished
 * handshake over a socketpair, the way a server's TLS code would leave a
 * session before the hub takes it over. */
#ifndef COMET_TLS_UTIL_H
#define COMET_TLS_UTIL_H

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "unit_common.h"

/* version: 2 = TLS 1.2 only, 3 = TLS 1.3 only, 0 = either. */
static APR_INLINE void tls_util_version(SSL_CTX *ctx, int version)
{
    if (version == 2) {
        SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
        SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
    }
    else if (version == 3) {
        SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    }
}

/* A server context as mod_ssl leaves it where it matters here: EOF
 * without close_notify reads as the end, not as an error. */
static APR_INLINE SSL_CTX *tls_util_server_ctx(int version)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_NAME *name;

    ck_assert(ctx && key && x);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, key);
    name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               (const unsigned char *)"127.0.0.1", -1, -1, 0);
    X509_set_issuer_name(x, name);
    ck_assert(X509_sign(x, key, EVP_sha256()) > 0);
    ck_assert_int_eq(SSL_CTX_use_certificate(ctx, x), 1);
    ck_assert_int_eq(SSL_CTX_use_PrivateKey(ctx, key), 1);
    X509_free(x);
    EVP_PKEY_free(key);
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    tls_util_version(ctx, version);
    return ctx;
}

static APR_INLINE SSL_CTX *tls_util_client_ctx(int version)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    ck_assert_ptr_nonnull(ctx);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    tls_util_version(ctx, version);
    return ctx;
}

typedef struct tls_util_pair_t {
    int  sfd, cfd;          /* the server's and the client's socket      */
    SSL *server, *client;   /* both on non-blocking sockets              */
} tls_util_pair_t;

/* Wait until fd is ready for what OpenSSL asked (err); 0 on timeout. */
static APR_INLINE int tls_util_wait(int fd, int err, int ms)
{
    struct pollfd p;

    p.fd = fd;
    p.events = err == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN;
    p.revents = 0;
    return poll(&p, 1, ms) > 0;
}

/* A socketpair with a finished handshake on it.  The server's session is
 * on sfd through an fd BIO (the glue's sessions are on other BIOs: the
 * detach replaces whatever is there). */
static APR_INLINE void tls_util_pair(tls_util_pair_t *tp, SSL_CTX *sctx,
                                     SSL_CTX *cctx)
{
    int sv[2], sdone = 0, cdone = 0, rounds = 0;

    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    tp->sfd = sv[0];
    tp->cfd = sv[1];
    fcntl(tp->sfd, F_SETFL, O_NONBLOCK);
    fcntl(tp->cfd, F_SETFL, O_NONBLOCK);
    tp->server = SSL_new(sctx);
    tp->client = SSL_new(cctx);
    SSL_set_fd(tp->server, tp->sfd);
    SSL_set_fd(tp->client, tp->cfd);
    SSL_set_accept_state(tp->server);
    SSL_set_connect_state(tp->client);
    while (!(sdone && cdone)) {
        ck_assert_int_lt(rounds++, 1000);
        if (!cdone) {
            int rc = SSL_do_handshake(tp->client);

            cdone = rc == 1;
            ck_assert(cdone || SSL_get_error(tp->client, rc)
                               == SSL_ERROR_WANT_READ);
        }
        if (!sdone) {
            int rc = SSL_do_handshake(tp->server);

            sdone = rc == 1;
            ck_assert(sdone || SSL_get_error(tp->server, rc)
                               == SSL_ERROR_WANT_READ);
        }
    }
    ERR_clear_error();
}

/* Read from the client side until want bytes arrived (appended to
 * buf[*len]) or ms passed.  Returns the SSL error that stopped it
 * (SSL_ERROR_NONE when the bytes are there). */
static APR_INLINE int tls_util_client_read(tls_util_pair_t *tp, char *buf,
                                           size_t want, size_t *len, int ms)
{
    while (*len < want) {
        size_t n = 0;
        int rc = SSL_read_ex(tp->client, buf + *len, want - *len, &n);
        int err;

        if (rc > 0) {
            *len += n;
            continue;
        }
        err = SSL_get_error(tp->client, rc);
        if (err != SSL_ERROR_WANT_READ || !tls_util_wait(tp->cfd, err, ms)) {
            ERR_clear_error();
            return err;
        }
    }
    return SSL_ERROR_NONE;
}

/* Read on the client side what arrives within ms, at most max - *len
 * bytes (appended to buf[*len]).  Returns the bytes read. */
static APR_INLINE size_t tls_util_client_some(tls_util_pair_t *tp, char *buf,
                                              size_t max, size_t *len, int ms)
{
    size_t before = *len;

    while (*len < max) {
        size_t n = 0;
        int rc = SSL_read_ex(tp->client, buf + *len, max - *len, &n);

        if (rc > 0) {
            *len += n;
            continue;
        }
        rc = SSL_get_error(tp->client, rc);
        ERR_clear_error();
        if (rc != SSL_ERROR_WANT_READ || *len > before
            || !tls_util_wait(tp->cfd, rc, ms)) {
            break;
        }
    }
    return *len - before;
}

static APR_INLINE void tls_util_pair_free(tls_util_pair_t *tp)
{
    if (tp->client) {
        SSL_free(tp->client);
    }
    if (tp->server) {
        SSL_free(tp->server);
    }
    if (tp->cfd >= 0) {
        close(tp->cfd);
    }
    if (tp->sfd >= 0) {
        close(tp->sfd);
    }
    tp->client = tp->server = NULL;
    tp->cfd = tp->sfd = -1;
}

#endif
