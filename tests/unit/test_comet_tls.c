/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* Unit tests of comet_tls.c: real OpenSSL sessions over socketpairs.  The
 * server's session is made the way a server's TLS code would leave it
 * (callbacks and application data of its own, a quiet shutdown run on
 * it), detached onto a dup() of the socket, and driven as the hub drives
 * it; the client is an ordinary OpenSSL client that checks what arrives. */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "tls_util.h"
#include "comet_tls.h"

static int fake_user_data;
static int info_calls, msg_calls, verify_calls;

static void first_user_info(const SSL *ssl, int where, int ret)
{
    (void)ssl;
    (void)where;
    (void)ret;
    info_calls++;
}

static void first_user_msg(int write_p, int version, int content_type,
                           const void *buf, size_t len, SSL *ssl, void *arg)
{
    (void)write_p; (void)version; (void)content_type; (void)buf; (void)len;
    (void)ssl; (void)arg;
    msg_calls++;
}

static int first_user_verify(int ok, X509_STORE_CTX *ctx)
{
    (void)ctx;
    verify_calls++;
    return ok;
}

/* What the client sees: handshake messages and alerts it receives. */
static int client_key_updates, client_alerts[256];

static void client_msg(int write_p, int version, int content_type,
                       const void *buf, size_t len, SSL *ssl, void *arg)
{
    const unsigned char *p = buf;

    (void)version; (void)ssl; (void)arg;
    if (write_p || !len) {
        return;
    }
    if (content_type == SSL3_RT_HANDSHAKE && p[0] == 24) {
        client_key_updates++;
    }
    else if (content_type == SSL3_RT_ALERT && len >= 2) {
        client_alerts[p[1]]++;
    }
}

static SSL_CTX *sctx, *cctx;
static tls_util_pair_t tp;

static void setup_version(int version)
{
    /* As in httpd: a write to a socket the peer closed fails, and does
     * not kill the process (socket BIOs write with write()). */
    signal(SIGPIPE, SIG_IGN);
    comet_test_pool_setup();
    sctx = tls_util_server_ctx(version);
    cctx = tls_util_client_ctx(version);
    SSL_CTX_set_msg_callback(cctx, client_msg);
    memset(client_alerts, 0, sizeof(client_alerts));
    client_key_updates = info_calls = msg_calls = verify_calls = 0;
    tls_util_pair(&tp, sctx, cctx);
}

static void teardown(void)
{
    tls_util_pair_free(&tp);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
    comet_test_pool_teardown();
}

/* The server's first user leaves its marks, ends its part with a quiet
 * shutdown (which must write nothing), closes its own descriptor; the
 * session is detached onto a dup of the socket. */
static void take_over(void)
{
    struct pollfd p;
    char buf[64];
    int fd;

    /* The client takes what came after the handshake (TLS 1.3 tickets). */
    ck_assert_int_le(SSL_read(tp.client, buf, sizeof(buf)), 0);
    ck_assert_int_eq(SSL_get_error(tp.client, -1), SSL_ERROR_WANT_READ);
    ERR_clear_error();
    SSL_set_app_data(tp.server, &fake_user_data);
    SSL_set_info_callback(tp.server, first_user_info);
    SSL_set_msg_callback(tp.server, first_user_msg);
    SSL_set_verify(tp.server, SSL_VERIFY_PEER, first_user_verify);
    SSL_set_quiet_shutdown(tp.server, 1);
    SSL_set_shutdown(tp.server, SSL_RECEIVED_SHUTDOWN);
    ck_assert_int_eq(SSL_shutdown(tp.server), 1);
    p.fd = tp.cfd;
    p.events = POLLIN;
    ck_assert_msg(poll(&p, 1, 0) == 0, "the quiet shutdown wrote something");

    fd = dup(tp.sfd);
    ck_assert_int_ge(fd, 0);
    close(tp.sfd);
    tp.sfd = fd;
    ck_assert_int_eq(comet_tls_detach(tp.server, fd), APR_SUCCESS);
    info_calls = msg_calls = 0;
}

/* Write all of data as the hub does (bounded wait for room). */
static void server_write_all(const char *data, apr_size_t len)
{
    apr_size_t off = 0;

    while (off < len) {
        apr_size_t n = 0;

        ck_assert_int_eq(comet_tls_write(tp.server, data + off, len - off,
                                         &n), APR_SUCCESS);
        off += n;
        if (off < len) {
            ck_assert(tls_util_wait(tp.sfd, SSL_ERROR_WANT_WRITE, 5000));
        }
    }
}

static void client_expect(const char *want)
{
    char buf[256];
    size_t len = 0;

    ck_assert_int_eq(tls_util_client_read(&tp, buf, strlen(want), &len,
                                          5000), SSL_ERROR_NONE);
    ck_assert_msg(len == strlen(want) && !memcmp(buf, want, len),
                  "client got %s", comet_test_show(buf, len));
}

/* The client reads what is there (a record cut short waits for the
 * server's next write) until the server's socket has room again. */
static void client_read_until_writable(char *buf, size_t max, size_t *len)
{
    for (int i = 0; i < 500; i++) {
        tls_util_client_some(&tp, buf, max, len, 0);
        if (tls_util_wait(tp.sfd, SSL_ERROR_WANT_WRITE, 10)) {
            return;
        }
    }
    ck_abort_msg("the server's socket never had room again");
}

/* ---- tests -------------------------------------------------------------- */

START_TEST(a_detached_session_goes_on_with_no_tie_to_its_first_user)
{
    setup_version(_i ? 3 : 2);
    take_over();
    ck_assert_ptr_null(SSL_get_app_data(tp.server));
    ck_assert_ptr_ne((void *)SSL_get_info_callback(tp.server),
                     (void *)first_user_info);
    ck_assert_ptr_ne((void *)SSL_get_verify_callback(tp.server),
                     (void *)first_user_verify);
    ck_assert_int_eq(SSL_get_shutdown(tp.server), 0);
    ck_assert(SSL_get_options(tp.server) & SSL_OP_NO_RENEGOTIATION);
    ck_assert(SSL_get_mode(tp.server) & SSL_MODE_ENABLE_PARTIAL_WRITE);
    ck_assert(SSL_get_mode(tp.server) & SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    ck_assert(SSL_get_mode(tp.server) & SSL_MODE_RELEASE_BUFFERS);
    ck_assert(!(SSL_get_mode(tp.server) & SSL_MODE_AUTO_RETRY));
    ck_assert_int_eq(SSL_get_rfd(tp.server), tp.sfd);
    ck_assert_int_eq(SSL_get_wfd(tp.server), tp.sfd);

    server_write_all("hello from the hub", 18);
    client_expect("hello from the hub");
    /* Nothing of the first user's ran again. */
    ck_assert_int_eq(info_calls, 0);
    ck_assert_int_eq(msg_calls, 0);
    ck_assert_int_eq(verify_calls, 0);
}
END_TEST

/* The socket fills: the unwritten bytes move to a new buffer with more
 * behind them (as the hub's queue does), and every byte arrives once, in
 * order. */
START_TEST(writes_to_a_full_socket_resume_and_every_byte_arrives_in_order)
{
    enum { TOTAL = 1024 * 1024 };
    char *src = malloc(TOTAL), *got = malloc(TOTAL);
    char *pend = NULL;
    apr_size_t pend_len = 0, queued = 0;
    size_t got_len = 0;
    int partial = 0, sndbuf = 8192;

    setup_version(_i ? 3 : 2);
    setsockopt(tp.sfd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    take_over();
    for (int i = 0; i < TOTAL; i++) {
        src[i] = (char)('a' + (i * 7 + i / 1000) % 26);
    }
    while (got_len < TOTAL) {
        apr_size_t n = 0;

        /* Queue the next 10 KB behind whatever waits (moving it). */
        if (queued < TOTAL) {
            apr_size_t k = TOTAL - queued < 10240 ? TOTAL - queued : 10240;
            char *np = malloc(pend_len + k);

            memcpy(np, pend, pend_len);
            memcpy(np + pend_len, src + queued, k);
            free(pend);
            pend = np;
            pend_len += k;
            queued += k;
        }
        ck_assert_int_eq(comet_tls_write(tp.server, pend, pend_len, &n),
                         APR_SUCCESS);
        memmove(pend, pend + n, pend_len - n);
        pend_len -= n;
        partial += pend_len > 0;
        /* The client reads a little now and then: what is there (a
         * record cut short waits for the server's next write). */
        if (pend_len) {
            client_read_until_writable(got, TOTAL, &got_len);
        }
        else if (queued == TOTAL) {
            ck_assert(tls_util_client_some(&tp, got, TOTAL, &got_len, 5000));
        }
    }
    ck_assert_int_eq(pend_len, 0);
    ck_assert_msg(partial > 10, "the socket never filled (%d)", partial);
    ck_assert(!memcmp(got, src, TOTAL));
    free(pend);
    free(src);
    free(got);
}
END_TEST

START_TEST(close_notify_from_the_client_reads_as_the_end_and_is_answered)
{
    char buf[16];
    size_t len = 0;

    setup_version(_i ? 3 : 2);
    take_over();
    ck_assert_int_eq(comet_tls_read(tp.server, NULL), APR_SUCCESS);
    ck_assert_int_ge(SSL_shutdown(tp.client), 0);
    ck_assert(tls_util_wait(tp.sfd, SSL_ERROR_WANT_READ, 5000));
    ck_assert_int_eq(comet_tls_read(tp.server, NULL), APR_EOF);
    ck_assert_int_eq(comet_tls_shutdown(tp.server), APR_SUCCESS);
    ck_assert_int_eq(tls_util_client_read(&tp, buf, 1, &len, 5000),
                     SSL_ERROR_ZERO_RETURN);
    ck_assert_int_eq(client_alerts[SSL3_AD_CLOSE_NOTIFY], 1);
}
END_TEST

START_TEST(a_client_that_just_closes_ends_the_session)
{
    apr_status_t rv;

    setup_version(3);
    take_over();
    close(tp.cfd);
    tp.cfd = -1;
    ck_assert(tls_util_wait(tp.sfd, SSL_ERROR_WANT_READ, 5000));
    rv = comet_tls_read(tp.server, NULL);
    /* mod_ssl's context reads EOF as the end (IGNORE_UNEXPECTED_EOF). */
    ck_assert_int_eq(rv, APR_EOF);
    /* Writing to it fails rather than waits. */
    {
        apr_size_t n = 0;

        for (int i = 0; i < 100 && rv != APR_ECONNRESET; i++) {
            rv = comet_tls_write(tp.server, "x", 1, &n);
        }
        ck_assert_int_ne(rv, APR_SUCCESS);
    }
}
END_TEST

START_TEST(stray_application_data_is_dropped_and_counted)
{
    apr_size_t stray = 0;

    setup_version(_i ? 3 : 2);
    take_over();
    ck_assert_int_eq(SSL_write(tp.client, "GET / HTTP/1.1\r\n\r\n", 18), 18);
    ck_assert(tls_util_wait(tp.sfd, SSL_ERROR_WANT_READ, 5000));
    ck_assert_int_eq(comet_tls_read(tp.server, &stray), APR_SUCCESS);
    ck_assert_int_eq(stray, 18);
    server_write_all("still here", 10);
    client_expect("still here");
}
END_TEST

/* TLS 1.3: the client asks for a key update; the hub's read takes it, the
 * next write carries the server's own update, and the stream decrypts. */
START_TEST(a_key_update_from_the_client_is_answered_and_the_stream_goes_on)
{
    setup_version(3);
    take_over();
    ck_assert_int_eq(SSL_key_update(tp.client, SSL_KEY_UPDATE_REQUESTED), 1);
    ck_assert_int_eq(SSL_do_handshake(tp.client), 1);
    ck_assert(tls_util_wait(tp.sfd, SSL_ERROR_WANT_READ, 5000));
    ck_assert_int_eq(comet_tls_read(tp.server, NULL), APR_SUCCESS);
    server_write_all("after the update", 16);
    client_expect("after the update");
    ck_assert_int_eq(client_key_updates, 1);
    server_write_all("and after that", 14);
    client_expect("and after that");
}
END_TEST

/* TLS 1.2: a renegotiation the client starts never completes, even on a
 * context that would allow it. */
START_TEST(renegotiation_is_refused_after_the_detach)
{
    int rc = 0, rounds = 0;

    signal(SIGPIPE, SIG_IGN);
    comet_test_pool_setup();
    sctx = tls_util_server_ctx(2);
    SSL_CTX_set_options(sctx, SSL_OP_ALLOW_CLIENT_RENEGOTIATION);
    cctx = tls_util_client_ctx(2);
    SSL_CTX_set_msg_callback(cctx, client_msg);
    memset(client_alerts, 0, sizeof(client_alerts));
    tls_util_pair(&tp, sctx, cctx);
    take_over();
    ck_assert_int_eq(SSL_renegotiate(tp.client), 1);
    for (;;) {
        apr_status_t rv;

        ck_assert_int_lt(rounds++, 100);
        rc = SSL_do_handshake(tp.client);
        if (rc == 1 || SSL_get_error(tp.client, rc) != SSL_ERROR_WANT_READ) {
            break;
        }
        ck_assert(tls_util_wait(tp.sfd, SSL_ERROR_WANT_READ, 5000));
        rv = comet_tls_read(tp.server, NULL);
        if (rv != APR_SUCCESS) {
            break;
        }
        tls_util_wait(tp.cfd, SSL_ERROR_WANT_READ, 1000);
    }
    ck_assert_int_ne(rc, 1);
    ck_assert_int_eq(client_alerts[SSL_AD_NO_RENEGOTIATION], 1);
    ERR_clear_error();
}
END_TEST

START_TEST(close_notify_follows_every_byte_written)
{
    enum { TOTAL = 300 * 1024 };
    char *src = malloc(TOTAL), *got = malloc(TOTAL + 1);
    size_t got_len = 0;
    apr_size_t off = 0;
    apr_status_t rv;
    int sndbuf = 8192;

    setup_version(_i ? 3 : 2);
    setsockopt(tp.sfd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    take_over();
    memset(src, 'z', TOTAL);
    while (off < TOTAL) {
        apr_size_t n = 0;

        ck_assert_int_eq(comet_tls_write(tp.server, src + off, TOTAL - off,
                                         &n), APR_SUCCESS);
        off += n;
        if (off < TOTAL) {
            client_read_until_writable(got, TOTAL, &got_len);
        }
    }
    while ((rv = comet_tls_shutdown(tp.server)) == APR_EAGAIN) {
        client_read_until_writable(got, TOTAL, &got_len);
    }
    ck_assert_int_eq(rv, APR_SUCCESS);
    ck_assert_int_eq(tls_util_client_read(&tp, got, TOTAL + 1, &got_len,
                                          5000), SSL_ERROR_ZERO_RETURN);
    ck_assert_int_eq(got_len, TOTAL);
    ck_assert_int_eq(client_alerts[SSL3_AD_CLOSE_NOTIFY], 1);
    free(src);
    free(got);
}
END_TEST

/* Bytes already inside the session are visible to the caller, who must
 * read them (a poll would not report them). */
START_TEST(bytes_inside_the_session_are_reported_as_pending)
{
    apr_size_t stray = 0;
    char one;

    setup_version(3);
    SSL_set_read_ahead(tp.server, 1);
    ck_assert_int_eq(SSL_write(tp.client, "ab", 2), 2);
    ck_assert(tls_util_wait(tp.sfd, SSL_ERROR_WANT_READ, 5000));
    ck_assert_int_eq(SSL_read(tp.server, &one, 1), 1);
    take_over();
    ck_assert(comet_tls_has_pending(tp.server));
    ck_assert_int_eq(comet_tls_read(tp.server, &stray), APR_SUCCESS);
    ck_assert_int_eq(stray, 1);
    ck_assert(!comet_tls_has_pending(tp.server));
}
END_TEST

/* A WebSocket's frames: the client's bytes come out in order, one record
 * at most a call (the rest stays pending inside the session), nothing
 * when nothing waits, and close_notify reads as the end. */
START_TEST(recv_gives_the_clients_bytes_record_by_record_then_the_end)
{
    char buf[64];
    apr_size_t got = 0, have = 0;

    setup_version(_i ? 3 : 2);
    take_over();
    ck_assert_int_eq(comet_tls_recv(tp.server, buf, sizeof(buf), &got),
                     APR_SUCCESS);
    ck_assert_uint_eq(got, 0);
    ck_assert_int_eq(SSL_write(tp.client, "first", 5), 5);
    ck_assert_int_eq(SSL_write(tp.client, "second", 6), 6);
    for (int i = 0; i < 100 && have < 11; i++) {
        ck_assert(tls_util_wait(tp.sfd, SSL_ERROR_WANT_READ, 5000));
        do {
            ck_assert_int_eq(comet_tls_recv(tp.server, buf + have,
                                            sizeof(buf) - have, &got),
                             APR_SUCCESS);
            ck_assert_uint_le(got, 6);
            have += got;
        } while (got || comet_tls_has_pending(tp.server));
    }
    ck_assert_uint_eq(have, 11);
    ck_assert(!memcmp(buf, "firstsecond", 11));
    ck_assert_int_ge(SSL_shutdown(tp.client), 0);
    ck_assert(tls_util_wait(tp.sfd, SSL_ERROR_WANT_READ, 5000));
    ck_assert_int_eq(comet_tls_recv(tp.server, buf, sizeof(buf), &got),
                     APR_EOF);
}
END_TEST

Suite *test_comet_tls_suite(void)
{
    Suite *s = suite_create("comet_tls");
    TCase *tc = tcase_create("session");

    tcase_add_checked_fixture(tc, NULL, teardown);
    /* Loop tests run for TLS 1.2 (0) and TLS 1.3 (1). */
    tcase_add_loop_test(tc,
        a_detached_session_goes_on_with_no_tie_to_its_first_user, 0, 2);
    tcase_add_loop_test(tc,
        writes_to_a_full_socket_resume_and_every_byte_arrives_in_order, 0, 2);
    tcase_add_loop_test(tc,
        close_notify_from_the_client_reads_as_the_end_and_is_answered, 0, 2);
    tcase_add_test(tc, a_client_that_just_closes_ends_the_session);
    tcase_add_loop_test(tc, stray_application_data_is_dropped_and_counted,
                        0, 2);
    tcase_add_test(tc,
        a_key_update_from_the_client_is_answered_and_the_stream_goes_on);
    tcase_add_test(tc, renegotiation_is_refused_after_the_detach);
    tcase_add_loop_test(tc, close_notify_follows_every_byte_written, 0, 2);
    tcase_add_test(tc, bytes_inside_the_session_are_reported_as_pending);
    tcase_add_loop_test(tc,
        recv_gives_the_clients_bytes_record_by_record_then_the_end, 0, 2);
    suite_add_tcase(s, tc);
    return s;
}
