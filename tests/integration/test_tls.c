/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* TLS subscribers detached like plain ones: the hub takes mod_ssl's
 * session over once the response head is out.  Real apache2 with mod_ssl
 * (a generated P-256 certificate), two children, OpenSSL clients that
 * read the raw TLS stream where it matters: TLS 1.2 and 1.3, every
 * transport, client certificates, thousands of subscribers at the MPM's
 * defaults, slow and leaving clients, graceful restart, churn; and the
 * HTTP/2 policy (curl here, Chromium in test_browser.c). */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "harness.h"
#include "tls_client.h"

/* ---- helpers ------------------------------------------------------------------- */

static const char *request(const char *path, const char *accept,
                           const char *more)
{
    static char buf[1024];

    snprintf(buf, sizeof(buf), "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             "%s%s%s%s\r\n", path, accept ? "Accept: " : "",
             accept ? accept : "", accept ? "\r\n" : "", more ? more : "");
    return buf;
}

static void start(it_server_t *s, const it_opts_t *extra)
{
    it_opts_t o;

    if (extra) {
        o = *extra;
    }
    else {
        memset(&o, 0, sizeof(o));
    }
    o.tls = 1;
    ck_assert_int_eq(it_server_start(s, &o), 0);
}

typedef struct status_want_t {
    int port;
    const char *key;
    long want;
} status_want_t;

static int status_is(void *baton)
{
    status_want_t *w = baton;

    return it_status_value(w->port, w->key) == w->want;
}

/* The status key reaches want (the hubs copy their counts once a
 * second). */
static int wait_status(int port, const char *key, long want)
{
    status_want_t w;

    w.port = port;
    w.key = key;
    w.want = want;
    return it_wait_for(status_is, &w, 10000);
}

static int none_in_httpd(void *baton)
{
    int port = *(int *)baton;

    return it_status_value(port, "CometMpmConnections") <= 1
           && it_status_value(port, "CometMpmSuspended") == 0
           && it_status_value(port, "CometSuspended") == 0
           && it_status_value(port, "CometHeld") == 0;
}

/* Nothing of a subscriber is in httpd: the MPM counts no connection but
 * the status request's own (once connections of other requests have
 * gone), and none suspended; no subscriber is suspended or held. */
static void assert_not_in_httpd(int port)
{
    ck_assert_msg(it_wait_for(none_in_httpd, &port, 10000), "in httpd: %ld "
                  "MPM connections (%ld suspended), %ld suspended and %ld "
                  "held subscribers",
                  it_status_value(port, "CometMpmConnections"),
                  it_status_value(port, "CometMpmSuspended"),
                  it_status_value(port, "CometSuspended"),
                  it_status_value(port, "CometHeld"));
}

/* The id of the event whose data is data, from an SSE body. */
static int event_id(const char *body, const char *data, char *id,
                    size_t idlen)
{
    char want[256];
    const char *p, *q;

    snprintf(want, sizeof(want), "\ndata: %s\n", data);
    if (!(p = strstr(body, want))) {
        return 0;
    }
    /* The id line is the one before. */
    for (q = p; q > body && strncmp(q, "id: ", 4); q--) {
    }
    if (strncmp(q, "id: ", 4)) {
        return 0;
    }
    snprintf(id, idlen, "%.*s", (int)(strchr(q, '\n') - q - 4), q + 4);
    return 1;
}

/* Publish through the publish socket (no MPM worker involved). */
static void publish_on_socket(const it_server_t *s, const char *channel,
                              const char *data)
{
    char buf[256];
    size_t len = 0;
    int fd = it_connect_unix(s->socket_path);

    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(it_sendf(fd, "*3\r\n$7\r\nPUBLISH\r\n$%zu\r\n%s\r\n"
                              "$%zu\r\n%s\r\n", strlen(channel), channel,
                              strlen(data), data), 0);
    ck_assert(it_read_until(fd, buf, sizeof(buf), &len, 0, "\r\n", 5000)
              == 1);
    ck_assert_msg(buf[0] == ':', "publish socket said %s", buf);
    close(fd);
}

/* ---- detached TLS subscribers ------------------------------------------------- */

/* TLS 1.2 (0) and 1.3 (1): an SSE subscriber is detached, gets live
 * messages and resumes with Last-Event-ID; ndjson streams and parked
 * long-polls too.  None of them is in httpd while it waits. */
START_TEST(tls_subscribers_are_detached_get_live_messages_and_resume)
{
    it_server_t s;
    it_tls_t sse, nd, lp;
    it_tls_opts_t o;
    char id[64], more[128];

    memset(&o, 0, sizeof(o));
    o.version = _i ? 3 : 2;
    start(&s, NULL);
    ck_assert_int_eq(it_tls_open_opts(&sse, s.tls_port,
                                      request("/sub/live", "text/event-stream",
                                              NULL), &o), 0);
    ck_assert_msg(it_tls_read_until(&sse, "retry: 3000\n", 0, 5000),
                  "got %s", sse.buf);
    ck_assert_str_eq(it_tls_version(&sse), _i ? "TLSv1.3" : "TLSv1.2");
    ck_assert_int_eq(it_tls_open_opts(&nd, s.tls_port,
                                      request("/sub/live?transport=stream",
                                              NULL, NULL), &o), 0);
    ck_assert(it_tls_read_until(&nd, "\r\n\r\n", 0, 5000));
    ck_assert_int_eq(it_tls_open_opts(&lp, s.tls_port,
                                      request("/sub/live?transport=longpoll",
                                              NULL, NULL), &o), 0);
    ck_assert(it_tls_read_until(&lp, "\r\n\r\n", 0, 5000));
    ck_assert(it_wait_subscribers(s.port, "live", 3));
    ck_assert(wait_status(s.port, "CometDetachedTLS", 3));
    assert_not_in_httpd(s.port);

    ck_assert_int_eq(it_publish(s.port, "live", "first", NULL, NULL, 0), 201);
    ck_assert_msg(it_tls_read_until(&sse, "data: first\n\n", sse.body, 5000),
                  "SSE got %s", sse.buf);
    ck_assert_msg(it_tls_read_until(&nd, "\"data\":\"first\"", nd.body, 5000),
                  "ndjson got %s", nd.buf);
    /* The long-poll is answered and ends cleanly: last chunk, then
     * close_notify. */
    ck_assert(it_tls_read_to_close(&lp, 5000));
    ck_assert_msg(strstr(lp.buf + lp.body, "\"data\":\"first\"")
                  && strstr(lp.buf + lp.body, "\r\n0\r\n\r\n"),
                  "long-poll got %s", lp.buf);
    ck_assert_msg(lp.notified, "the long-poll ended without close_notify");
    it_tls_close(&lp, 1);

    /* Away, a message, back with the last id: it comes. */
    ck_assert(event_id(sse.buf + sse.body, "first", id, sizeof(id)));
    it_tls_close(&sse, 0);
    it_tls_close(&nd, 1);
    ck_assert(it_wait_subscribers(s.port, "live", 0));
    ck_assert_int_eq(it_publish(s.port, "live", "while away", NULL, NULL, 0),
                     202);
    snprintf(more, sizeof(more), "Last-Event-ID: %s\r\n", id);
    ck_assert_int_eq(it_tls_open_opts(&sse, s.tls_port,
                                      request("/sub/live", "text/event-stream",
                                              more), &o), 0);
    ck_assert_msg(it_tls_read_until(&sse, "data: while away\n\n", 0, 5000),
                  "resumed stream got %s", sse.buf);
    ck_assert_ptr_null(strstr(sse.buf, "data: first\n"));
    it_tls_close(&sse, 1);
    ck_assert(it_wait_subscribers(s.port, "live", 0));
    ck_assert(wait_status(s.port, "CometDetachedTLS", 0));
    ck_assert_int_eq(it_log_count(&s, "exit signal"), 0);
    it_server_stop(&s);
}
END_TEST


/* ---- the raw TLS stream --------------------------------------------------------- */

/* What a traced client read is the hub's stream alone, ended cleanly:
 * every record decrypted in order (no TLS error), the events e1..e<n> in
 * order, the last chunk at the very end, exactly one alert (close_notify)
 * and nothing on the socket after it but the FIN.  0 and why, or 1. */
static int stream_is_clean(it_tls_t *t, int n, char *why, size_t whylen)
{
    const char *body = t->body ? t->buf + t->body : "";
    int k = 0;

    why[0] = '\0';
    if (t->failed) {
        snprintf(why, whylen, "a record did not decrypt, or a fatal alert");
        return 0;
    }
    if (!t->notified || t->close_notifies != 1 || t->other_alerts) {
        snprintf(why, whylen, "alerts: %d close_notify (%s the end), %d "
                 "other", t->close_notifies, t->notified ? "at" : "not at",
                 t->other_alerts);
        return 0;
    }
    if (t->records_after || !it_tls_raw_to_eof(t, 3000) || t->bytes_after) {
        snprintf(why, whylen, "after close_notify: %d records, %ld raw "
                 "bytes%s", t->records_after, t->bytes_after,
                 t->bytes_after ? "" : ", no FIN");
        return 0;
    }
    for (const char *p = body; (p = strstr(p, "data: e")); p++) {
        if (atoi(p + 7) != ++k) {
            snprintf(why, whylen, "event %d where %d was due", atoi(p + 7),
                     k);
            return 0;
        }
    }
    if (k != n) {
        snprintf(why, whylen, "%d events of %d", k, n);
        return 0;
    }
    if (t->len < 5 || strcmp(t->buf + t->len - 5, "0\r\n\r\n")
        || !strstr(body, "\r\n0\r\n\r\n")) {
        snprintf(why, whylen, "the last chunk is not at the end");
        return 0;
    }
    return 1;
}

/* A subscriber whose stream is ended by the server (its channel deleted)
 * reads the hub's records and mod_ssl's nothing: TLS 1.2 and 1.3. */
START_TEST(the_raw_tls_stream_after_the_head_is_the_hubs_alone)
{
    it_server_t s;
    it_tls_t t;
    it_tls_opts_t o;
    it_response_t *res = malloc(sizeof(*res));
    char why[256];

    memset(&o, 0, sizeof(o));
    o.version = _i ? 3 : 2;
    o.trace = 1;
    start(&s, NULL);
    ck_assert_int_eq(it_tls_open_opts(&t, s.tls_port,
                                      request("/sub/raw", "text/event-stream",
                                              NULL), &o), 0);
    ck_assert(it_tls_read_until(&t, "retry: 3000\n\n", 0, 5000));
    ck_assert(it_wait_subscribers(s.port, "raw", 1));
    ck_assert(wait_status(s.port, "CometDetachedTLS", 1));
    publish_on_socket(&s, "raw", "e1");
    publish_on_socket(&s, "raw", "e2");
    publish_on_socket(&s, "raw", "e3");
    ck_assert(it_tls_read_until(&t, "data: e3\n", t.body, 5000));
    ck_assert_int_eq(it_http(s.port, "DELETE", "/pub/raw", NULL, NULL, 0, res,
                             5000), 0);
    ck_assert_int_eq(res->status, 200);
    ck_assert(it_tls_read_to_close(&t, 5000));
    ck_assert_msg(stream_is_clean(&t, 3, why, sizeof(why)), "%s: %s (%d "
                  "records): %s", it_tls_version(&t), why, t.records,
                  t.buf);
    fprintf(stderr, "raw %s stream: %d records, one close_notify, nothing "
            "after it\n", it_tls_version(&t), t.records);
    it_tls_close(&t, 0);
    ck_assert_int_eq(it_log_count(&s, "CM0801"), 0);
    it_server_stop(&s);
    free(res);
}
END_TEST

/* The negative control: a TLS server of the test's own makes the faults
 * the check exists for, and the check fails on each. */
enum {
    FAKE_CLEAN,           /* as the hub ends a stream                    */
    FAKE_EARLY_NOTIFY,    /* mod_ssl's close_notify after the head, then
                             the rest (a takeover that was not quiet)    */
    FAKE_BYTES_AFTER,     /* bytes on the socket after close_notify      */
    FAKE_FOREIGN_RECORD   /* a record another writer put on the socket   */
};

static SSL_CTX *fake_ctx(void)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();

    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                               (const unsigned char *)"fake", -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(x));
    X509_sign(x, key, EVP_sha256());
    SSL_CTX_use_certificate(ctx, x);
    SSL_CTX_use_PrivateKey(ctx, key);
    return ctx;
}

static void fake_write(SSL *ssl, const char *data)
{
    SSL_write(ssl, data, (int)strlen(data));
}

/* The child: one connection, one stream, then exit. */
static void fake_server(int lfd, int mode)
{
    SSL_CTX *ctx = fake_ctx();
    char buf[4096];
    int fd = accept(lfd, NULL, NULL);
    SSL *ssl = SSL_new(ctx);
    static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: "
        "text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";

    SSL_set_fd(ssl, fd);
    if (SSL_accept(ssl) != 1 || SSL_read(ssl, buf, sizeof(buf)) <= 0) {
        _exit(2);
    }
    fake_write(ssl, head);
    fake_write(ssl, "e\r\nretry: 3000\n\n\r\n");
    if (mode == FAKE_EARLY_NOTIFY) {
        SSL_shutdown(ssl);
        SSL_set_shutdown(ssl, 0);
    }
    if (mode == FAKE_FOREIGN_RECORD) {
        static const unsigned char rec[] = {
            23, 3, 3, 0, 24, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
            15, 16, 17, 18, 19, 20, 21, 22, 23, 24
        };

        send(fd, rec, sizeof(rec), 0);
    }
    for (int i = 1; i <= 3; i++) {
        char ev[64], chunk[96];

        snprintf(ev, sizeof(ev), "data: e%d\n\n", i);
        snprintf(chunk, sizeof(chunk), "%zx\r\n%s\r\n", strlen(ev), ev);
        fake_write(ssl, chunk);
    }
    fake_write(ssl, "0\r\n\r\n");
    SSL_shutdown(ssl);
    if (mode == FAKE_BYTES_AFTER) {
        send(fd, "0\r\n\r\n", 5, 0);
    }
    close(fd);
    _exit(0);
}

START_TEST(the_raw_stream_check_fails_on_what_it_exists_to_catch)
{
    static const char *const expect[] = {
        NULL, "after close_notify", "after close_notify", "did not decrypt"
    };
    struct sockaddr_in sa;
    socklen_t sl = sizeof(sa);
    it_tls_opts_t o;
    it_tls_t t;
    char why[256];
    int lfd, status;
    pid_t pid;

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_eq(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(lfd, 4), 0);
    ck_assert_int_eq(getsockname(lfd, (struct sockaddr *)&sa, &sl), 0);
    memset(&o, 0, sizeof(o));
    o.trace = 1;
    o.version = 3;
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        fake_server(lfd, _i);
    }
    ck_assert_int_eq(it_tls_open_opts(&t, ntohs(sa.sin_port),
                                      request("/x", NULL, NULL), &o), 0);
    it_tls_read_to_close(&t, 5000);
    if (_i == FAKE_CLEAN) {
        ck_assert_msg(stream_is_clean(&t, 3, why, sizeof(why)),
                      "the clean stream failed: %s", why);
    }
    else {
        ck_assert_msg(!stream_is_clean(&t, 3, why, sizeof(why)),
                      "fault %d passed the check", _i);
        ck_assert_msg(strstr(why, expect[_i]), "fault %d: %s", _i, why);
    }
    fprintf(stderr, "raw stream check, fake server mode %d: %s\n", _i,
            why[0] ? why : "clean");
    it_tls_close(&t, 0);
    waitpid(pid, &status, 0);
    close(lfd);
}
END_TEST

/* ---- client certificates ---------------------------------------------------------- */

/* SSLVerifyClient require on the host: the handshake (and the client's
 * certificate) is done before the takeover; the stream is as clean. */
START_TEST(subscribers_with_client_certificates_are_detached_too)
{
    it_server_t s;
    it_opts_t so;
    it_tls_t t, none;
    it_tls_opts_t o;
    it_response_t *res = malloc(sizeof(*res));
    char cert[400], key[400], why[256];

    memset(&so, 0, sizeof(so));
    so.tls_client_ca = 1;
    so.tls_vhost = "  SSLVerifyClient require\n";
    start(&s, &so);
    snprintf(cert, sizeof(cert), "%s/client.pem", s.dir);
    snprintf(key, sizeof(key), "%s/client-key.pem", s.dir);
    memset(&o, 0, sizeof(o));
    o.version = _i ? 3 : 2;
    o.trace = 1;
    /* Without a certificate: refused. */
    if (it_tls_open_opts(&none, s.tls_port, request("/sub/cert",
                                                   "text/event-stream", NULL),
                         &o) == 0) {
        ck_assert(!it_tls_read_until(&none, "retry: 3000", 0, 3000));
        it_tls_close(&none, 0);
    }
    o.cert = cert;
    o.key = key;
    ck_assert_int_eq(it_tls_open_opts(&t, s.tls_port,
                                      request("/sub/cert", "text/event-stream",
                                              NULL), &o), 0);
    ck_assert_msg(it_tls_read_until(&t, "retry: 3000\n\n", 0, 5000),
                  "got %s", t.buf);
    ck_assert(it_wait_subscribers(s.port, "cert", 1));
    ck_assert(wait_status(s.port, "CometDetachedTLS", 1));
    assert_not_in_httpd(s.port);
    publish_on_socket(&s, "cert", "e1");
    ck_assert(it_tls_read_until(&t, "data: e1\n", t.body, 5000));
    ck_assert_int_eq(it_http(s.port, "DELETE", "/pub/cert", NULL, NULL, 0,
                             res, 5000), 0);
    ck_assert(it_tls_read_to_close(&t, 5000));
    ck_assert_msg(stream_is_clean(&t, 1, why, sizeof(why)), "%s: %s",
                  it_tls_version(&t), why);
    it_tls_close(&t, 0);
    it_server_stop(&s);
    free(res);
}
END_TEST

/* ---- fallback ------------------------------------------------------------------------ */

/* HTTP/1.0 over TLS, or CometTLSDetach off: suspended as before. */
START_TEST(what_cannot_be_taken_over_is_suspended_as_before)
{
    it_server_t s;
    it_opts_t so;
    it_tls_t a, b;

    memset(&so, 0, sizeof(so));
    so.tls_vhost = "  <Location /sub/susp/>\n    CometTLSDetach off\n"
                   "  </Location>\n";
    so.async_factor = 4;
    start(&s, &so);
    ck_assert_int_eq(it_tls_open(&a, s.tls_port,
                                 "GET /sub/old HTTP/1.0\r\n"
                                 "Accept: text/event-stream\r\n\r\n"), 0);
    ck_assert(it_tls_read_until(&a, "retry: 3000\n\n", 0, 5000));
    ck_assert_int_eq(it_tls_open(&b, s.tls_port,
                                 request("/sub/susp/off", "text/event-stream",
                                         NULL)), 0);
    ck_assert(it_tls_read_until(&b, "retry: 3000\n\n", 0, 5000));
    ck_assert(wait_status(s.port, "CometSuspended", 2));
    ck_assert_int_eq(it_status_value(s.port, "CometDetachedTLS"), 0);
    publish_on_socket(&s, "old", "for the old one");
    publish_on_socket(&s, "off", "for the other");
    ck_assert(it_tls_read_until(&a, "data: for the old one\n", a.body, 5000));
    ck_assert(it_tls_read_until(&b, "data: for the other\n", b.body, 5000));
    it_tls_close(&a, 1);
    it_tls_close(&b, 0);
    ck_assert(wait_status(s.port, "CometSuspended", 0));
    it_server_stop(&s);
}
END_TEST

/* ---- clients that leave or stop reading ------------------------------------------------ */

/* close_notify, a plain close (FIN) and a reset: each noticed within a
 * second, in every transport. */
START_TEST(a_tls_client_that_leaves_is_noticed_within_a_second)
{
    static const char *const how[] = { "close_notify", "FIN", "RST" };
    const char *paths[] = { "/sub/leave", "/sub/leave?transport=stream",
                            "/sub/leave?transport=longpoll" };
    it_server_t s;

    start(&s, NULL);
    for (int way = 0; way < 3; way++) {
        for (int p = 0; p < 3; p++) {
            it_tls_t t;
            long long t0;

            ck_assert_int_eq(it_tls_open(&t, s.tls_port,
                                         request(paths[p], p ? NULL
                                                 : "text/event-stream",
                                                 NULL)), 0);
            ck_assert(it_tls_read_until(&t, "\r\n\r\n", 0, 5000));
            ck_assert(it_wait_subscribers(s.port, "leave", 1));
            t0 = it_now_ms();
            if (way == 2) {
                struct linger lg = { 1, 0 };

                setsockopt(t.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
            }
            it_tls_close(&t, way == 0);
            ck_assert_msg(it_wait_subscribers_ms(s.port, "leave", 0, 1000),
                          "%s not noticed within a second (%s)", how[way],
                          paths[p]);
            fprintf(stderr, "TLS client leaving with %s (%s): noticed after "
                    "%lld ms\n", how[way], paths[p], it_now_ms() - t0);
        }
    }
    ck_assert(wait_status(s.port, "CometDetachedTLS", 0));
    ck_assert_int_eq(it_log_count(&s, "exit signal"), 0);
    it_server_stop(&s);
}
END_TEST

static int dropped_one(void *baton)
{
    return it_status_value(*(int *)baton, "CometDroppedSlow") >= 1;
}

/* A TLS client that stops reading: writes to it never wait (the site
 * answers, no worker stays busy) and past CometMaxPendingBytes of
 * plaintext it is dropped. */
START_TEST(a_tls_client_that_stops_reading_is_dropped_without_blocking)
{
    it_server_t s;
    it_opts_t so;
    it_tls_t t;
    it_response_t *res = malloc(sizeof(*res));
    char *msg = malloc(16 * 1024 + 1);
    int sent = 0;

    memset(&so, 0, sizeof(so));
    /* The smallest bound the check at start allows for 16 KB messages
     * (their largest frame is some 120 KB). */
    so.extra = "CometMaxMessageSize 16K\nCometMaxPendingBytes 128K\n"
               "KeepAliveTimeout 1\n";
    start(&s, &so);
    memset(msg, 'x', 16 * 1024);
    msg[16 * 1024] = '\0';
    ck_assert_int_eq(it_tls_open_rcvbuf(&t, s.tls_port,
                                        request("/sub/stuck",
                                                "text/event-stream", NULL),
                                        4096), 0);
    ck_assert(it_tls_read_until(&t, "retry: 3000\n\n", 0, 5000));
    ck_assert(it_wait_subscribers(s.port, "stuck", 1));
    ck_assert(wait_status(s.port, "CometDetachedTLS", 1));
    while (it_subscribers(s.port, "stuck") == 1) {
        long long t0 = it_now_ms();

        ck_assert_int_lt(sent, 2000);
        ck_assert_int_eq(it_publish(s.port, "stuck", msg, NULL, NULL, 0),
                         201);
        sent++;
        if (sent % 10 == 0) {
            long busy = it_status_value(s.port, "BusyWorkers");

            ck_assert_int_eq(it_http(s.port, "GET", "/index.html", NULL,
                                     NULL, 0, res, 5000), 0);
            ck_assert_int_eq(res->status, 200);
            ck_assert_msg(busy >= 1 && busy <= 2, "%ld busy workers", busy);
        }
        ck_assert_int_lt(it_now_ms() - t0, 1000);
    }
    fprintf(stderr, "a TLS client that does not read: dropped after %d "
            "messages of 16 KB\n", sent);
    ck_assert(it_wait_for(dropped_one, &s.port, 5000));
    assert_not_in_httpd(s.port);
    it_tls_close(&t, 0);
    it_server_stop(&s);
    free(res);
    free(msg);
}
END_TEST

/* ---- graceful restart ---------------------------------------------------------------- */

typedef struct pids_t {
    pid_t pid[64];
    int n;
} pids_t;

static int all_exited(void *baton)
{
    pids_t *p = baton;

    for (int i = 0; i < p->n; i++) {
        if (kill(p->pid[i], 0) == 0) {
            return 0;
        }
    }
    return 1;
}

static int new_children_answer(void *baton)
{
    it_server_t *s = baton;
    pid_t kids[64];
    it_response_t *res;
    int ok;

    if (it_server_children(s, kids, 64) < 2) {
        return 0;
    }
    res = malloc(sizeof(*res));
    ok = it_http(s->port, "GET", "/index.html", NULL, NULL, 0, res, 2000)
         == 0 && res->status == 200;
    free(res);
    return ok;
}

/* A graceful restart ends every TLS stream cleanly (last chunk,
 * close_notify, close) and at once; the old children exit; the clients
 * come back and resume. */
START_TEST(graceful_restart_ends_tls_streams_cleanly_and_they_resume)
{
    enum { N = 8 };
    it_server_t s;
    it_tls_t t[N];
    it_tls_opts_t o;
    pids_t old;
    long long t0;
    char id[64], more[128], why[256];

    start(&s, NULL);
    memset(&o, 0, sizeof(o));
    o.trace = 1;
    for (int i = 0; i < N; i++) {
        o.version = i % 2 ? 3 : 2;
        ck_assert_int_eq(it_tls_open_opts(&t[i], s.tls_port,
                                          request("/sub/gr",
                                                  "text/event-stream", NULL),
                                          &o), 0);
        ck_assert(it_tls_read_until(&t[i], "retry: 3000\n\n", 0, 5000));
    }
    ck_assert(it_wait_subscribers(s.port, "gr", N));
    publish_on_socket(&s, "gr", "e1");
    for (int i = 0; i < N; i++) {
        ck_assert(it_tls_read_until(&t[i], "data: e1\n", t[i].body, 5000));
    }
    ck_assert(event_id(t[0].buf + t[0].body, "e1", id, sizeof(id)));
    old.n = it_server_children(&s, old.pid, 64);
    t0 = it_now_ms();
    ck_assert_int_eq(kill(s.pid, SIGUSR1), 0);
    for (int i = 0; i < N; i++) {
        ck_assert_msg(it_tls_read_to_close(&t[i], 5000), "stream %d did not "
                      "end", i);
        ck_assert_msg(stream_is_clean(&t[i], 1, why, sizeof(why)),
                      "stream %d (%s): %s", i, it_tls_version(&t[i]), why);
        it_tls_close(&t[i], 0);
    }
    fprintf(stderr, "graceful restart: %d TLS streams ended cleanly after "
            "%lld ms\n", N, it_now_ms() - t0);
    ck_assert(it_wait_for(all_exited, &old, 10000));
    ck_assert(it_wait_for(new_children_answer, &s, 20000));
    ck_assert_int_eq(it_publish(s.port, "gr", "after", NULL, NULL, 0), 202);
    snprintf(more, sizeof(more), "Last-Event-ID: %s\r\n", id);
    ck_assert_int_eq(it_tls_open(&t[0], s.tls_port,
                                 request("/sub/gr", "text/event-stream",
                                         more)), 0);
    ck_assert_msg(it_tls_read_until(&t[0], "data: after\n", 0, 5000),
                  "got %s", t[0].buf);
    ck_assert(wait_status(s.port, "CometDetachedTLS", 1));
    it_tls_close(&t[0], 1);
    ck_assert_int_eq(it_log_count(&s, "exit signal"), 0);
    it_server_stop(&s);
}
END_TEST


/* ---- thousands at the MPM's defaults ------------------------------------------------ */

/* Many TLS subscribers in one process, driven by one epoll loop with
 * non-blocking handshakes: small and bounded per connection. */
typedef struct many_conn_t {
    int    fd;
    SSL   *ssl;
    int    state;              /* 0 handshake, 1 request out, 2 waiting  */
    int    done;               /* found what the current phase wants     */
    char   tail[64];           /* the end of what was read (needles may
                                  straddle two reads)                    */
    size_t tlen;
} many_conn_t;

typedef struct many_t {
    SSL_CTX     *ctx;
    many_conn_t *c;
    int          n, ep, port, found;
    int          handshaking;      /* connections in state 0          */
    const char  *req;
} many_t;

static void many_read(many_t *m, many_conn_t *c, const char *needle)
{
    char buf[4096 + 64];

    for (;;) {
        int r;

        memcpy(buf, c->tail, c->tlen);
        r = SSL_read(c->ssl, buf + c->tlen, 4096);
        if (r <= 0) {
            ERR_clear_error();
            return;
        }
        r += (int)c->tlen;
        buf[r] = '\0';
        if (!c->done && memmem(buf, (size_t)r, needle, strlen(needle))) {
            c->done = 1;
            m->found++;
        }
        c->tlen = r < 48 ? (size_t)r : 48;
        memcpy(c->tail, buf + r - c->tlen, c->tlen);
    }
}

static void many_step(many_t *m, many_conn_t *c, const char *needle)
{
    if (c->state == 0) {
        int rc = SSL_do_handshake(c->ssl);

        if (rc != 1) {
            ERR_clear_error();
            return;
        }
        c->state = 1;
        m->handshaking--;
        ck_assert_int_eq(SSL_write(c->ssl, m->req, (int)strlen(m->req)),
                         (int)strlen(m->req));
        c->state = 2;
    }
    many_read(m, c, needle);
}

/* Run the loop until every connection found needle (or ms passed);
 * returns how many did.  Opens connections first when they are not. */
static int many_wait(many_t *m, const char *needle, int ms)
{
    struct epoll_event ev[256];
    long long end = it_now_ms() + ms, last = it_now_ms();
    int opened = 0;

    for (int i = 0; i < m->n; i++) {
        m->c[i].done = 0;
        opened += m->c[i].ssl != NULL;
    }
    m->found = 0;
    while (m->found < m->n && it_now_ms() < end) {
        int k;

        /* Keep at most 100 handshakes going. */
        while (opened < m->n && m->handshaking < 100) {
            many_conn_t *c = &m->c[opened];
            struct epoll_event e;

            m->handshaking++;
            c->fd = it_connect(m->port);
            ck_assert_msg(c->fd >= 0, "connect %d: %s", opened,
                          strerror(errno));
            fcntl(c->fd, F_SETFL, O_NONBLOCK);
            c->ssl = SSL_new(m->ctx);
            SSL_set_fd(c->ssl, c->fd);
            SSL_set_connect_state(c->ssl);
            e.events = EPOLLIN | EPOLLOUT | EPOLLET;
            e.data.ptr = c;
            ck_assert_int_eq(epoll_ctl(m->ep, EPOLL_CTL_ADD, c->fd, &e), 0);
            many_step(m, c, needle);
            opened++;
        }
        k = epoll_wait(m->ep, ev, 256, 100);
        for (int j = 0; j < k; j++) {
            many_step(m, ev[j].data.ptr, needle);
        }
        if (it_now_ms() - last >= 2000) {
            last = it_now_ms();
            fprintf(stderr, "  %d of %d TLS subscribers have '%.*s'\n",
                    m->found, m->n, (int)strcspn(needle, "\n"), needle);
        }
    }
    return m->found;
}

static void many_close(many_t *m)
{
    for (int i = 0; i < m->n; i++) {
        if (m->c[i].ssl) {
            SSL_free(m->c[i].ssl);
            close(m->c[i].fd);
        }
    }
    close(m->ep);
    SSL_CTX_free(m->ctx);
    free(m->c);
}

static int https_get_answers(int port)
{
    it_tls_t t;
    int ok;

    if (it_tls_open(&t, port, "GET /index.html HTTP/1.1\r\nHost: x\r\n"
                    "Connection: close\r\n\r\n") != 0) {
        return 0;
    }
    ok = it_tls_read_until(&t, "hello from the document root", 0, 5000);
    it_tls_close(&t, 1);
    return ok;
}

/* The MPM's defaults apart from two children of 25 threads (default
 * AsyncRequestWorkerFactor): 5,000 HTTPS subscribers are held (today's
 * suspended path held 96), all get the message, and ordinary HTTPS GETs
 * are answered meanwhile.  (Fewer under AddressSanitizer.) */
START_TEST(five_thousand_https_subscribers_at_the_mpm_defaults_all_receive)
{
    int n = getenv("COMET_ASAN") ? 1000 : 5000;
    it_server_t s;
    it_opts_t so;
    many_t m;
    struct rlimit rl;
    long long t0;

    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    ck_assert_msg(rl.rlim_cur > (rlim_t)n + 100, "need %d descriptors",
                  n + 100);
    memset(&so, 0, sizeof(so));
    so.threads = 25;
    /* Every client comes from one address. */
    so.extra = "CometMaxNewChannelsPerClient off\n";
    start(&s, &so);
    memset(&m, 0, sizeof(m));
    m.ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(m.ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_mode(m.ctx, SSL_MODE_RELEASE_BUFFERS);
    m.c = calloc((size_t)n, sizeof(*m.c));
    m.n = n;
    m.ep = epoll_create1(EPOLL_CLOEXEC);
    m.port = s.tls_port;
    m.req = request("/sub/many", "text/event-stream", NULL);
    t0 = it_now_ms();
    ck_assert_int_eq(many_wait(&m, "retry: 3000\n", 240000), n);
    fprintf(stderr, "%d HTTPS subscribers connected in %lld ms\n", n,
            it_now_ms() - t0);
    ck_assert(it_wait_subscribers_ms(s.port, "many", n, 30000));
    ck_assert(wait_status(s.port, "CometDetachedTLS", n));
    assert_not_in_httpd(s.port);
    ck_assert(https_get_answers(s.tls_port));
    t0 = it_now_ms();
    ck_assert_int_eq(it_publish(s.port, "many", "to all", NULL, NULL, 0), 201);
    ck_assert_int_eq(many_wait(&m, "data: to all\n", 60000), n);
    fprintf(stderr, "%d HTTPS subscribers got the message within %lld ms\n",
            n, it_now_ms() - t0);
    ck_assert(https_get_answers(s.tls_port));
    many_close(&m);
    ck_assert(it_wait_subscribers_ms(s.port, "many", 0, 30000));
    ck_assert_int_eq(it_log_count(&s, "exit signal"), 0);
    it_server_stop(&s);
}
END_TEST

/* ---- churn ------------------------------------------------------------------------ */

/* One client process: cycles TLS subscribe/leave in every shape, some
 * leaving before the head arrives; a line of progress now and then. */
static void churn_client(int port, int cycles, int seed)
{
    static const char *const paths[] = {
        "/sub/churn", "/sub/churn?transport=longpoll",
        "/sub/churn?transport=stream", "/sub/churn,churn2",
    };
    unsigned r = (unsigned)seed * 2654435761u;
    it_tls_opts_t o;

    memset(&o, 0, sizeof(o));
    for (int i = 0; i < cycles; i++) {
        it_tls_t t;
        int shape;

        r = r * 1103515245u + 12345u;
        shape = (int)((r >> 16) % 8);
        o.version = (r >> 20) % 2 ? 3 : 2;
        if (it_tls_open_opts(&t, port, request(paths[shape % 4],
                                               shape % 4 == 0
                                               ? "text/event-stream" : NULL,
                                               NULL), &o) != 0) {
            _exit(2);
        }
        if (shape < 6 && !it_tls_read_until(&t, "\r\n\r\n", 0, 10000)) {
            _exit(3);
        }
        it_tls_close(&t, shape & 1);
        if ((i + 1) % 1000 == 0) {
            fprintf(stderr, "  churn client %d: %d cycles\n", seed, i + 1);
        }
    }
    _exit(0);
}

static int churn(const it_server_t *s, int clients, int cycles, int seed)
{
    pid_t kids[16];
    int running = clients, published = 0;

    for (int k = 0; k < clients; k++) {
        kids[k] = fork();
        ck_assert_int_ge(kids[k], 0);
        if (kids[k] == 0) {
            churn_client(s->tls_port, cycles, seed + k);
        }
    }
    while (running) {
        int status;
        pid_t p = waitpid(-1, &status, WNOHANG);

        if (p > 0) {
            ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                          "churn client failed: %d", status);
            running--;
            continue;
        }
        /* Writes racing the leaving clients. */
        publish_on_socket(s, "churn", "churning");
        published++;
        usleep(2000);
    }
    return published;
}

/* 20,000 TLS subscribe/disconnect cycles (no client certificates: stock
 * mod_ssl itself grows with every client-certificate request) from four
 * clients at once, messages published meanwhile: no crash, every
 * subscriber ends, and the children's private memory and descriptors do
 * not grow.  COMET_TLS_CYCLES sets the total. */
START_TEST(twenty_thousand_tls_subscribe_disconnect_cycles_leave_nothing)
{
    enum { CLIENTS = 4 };
    const char *env = getenv("COMET_TLS_CYCLES");
    int total = env && atoi(env) > 0 ? atoi(env)
                : getenv("COMET_ASAN") ? 4000 : 20000, published;
    it_server_t s;
    it_opts_t so;
    long rss0, fds0, rss1, fds1;
    long long t0;

    memset(&so, 0, sizeof(so));
    so.async_factor = 0;
    start(&s, &so);
    /* Warm up: pools, OpenSSL's and the allocator's caches. */
    churn(&s, CLIENTS, 500, 100);
    ck_assert(it_wait_subscribers(s.port, "churn", 0));
    ck_assert(wait_status(s.port, "CometDetachedTLS", 0));
    assert_not_in_httpd(s.port);
    it_children_usage(&s, &rss0, &fds0);
    t0 = it_now_ms();
    published = churn(&s, CLIENTS, total / CLIENTS, 1);
    fprintf(stderr, "TLS churn: %d cycles, %d publishes, %lld ms\n", total,
            published, it_now_ms() - t0);
    ck_assert(it_wait_subscribers(s.port, "churn", 0));
    ck_assert(it_wait_subscribers(s.port, "churn2", 0));
    ck_assert(wait_status(s.port, "CometDetachedTLS", 0));
    assert_not_in_httpd(s.port);
    it_children_usage(&s, &rss1, &fds1);
    fprintf(stderr, "TLS churn: children's RssAnon %ld -> %ld kB, "
            "descriptors %ld -> %ld\n", rss0, rss1, fds0, fds1);
    ck_assert_msg(fds1 <= fds0 + 4, "descriptors grew from %ld to %ld",
                  fds0, fds1);
    /* (Under AddressSanitizer freed memory waits in its quarantine.) */
    if (!getenv("COMET_ASAN")) {
        ck_assert_msg(rss1 <= rss0 + 2048, "RssAnon grew from %ld to %ld "
                      "kB", rss0, rss1);
    }
    ck_assert_int_eq(it_log_count(&s, "exit signal"), 0);
    it_server_stop(&s);
}
END_TEST


/* ---- HTTP/2 ---------------------------------------------------------------------- */

/* Read from a popen()ed command until needle shows up or it ends. */
static int pipe_until(FILE *f, char *out, size_t max, const char *needle)
{
    size_t n = strlen(out);

    while (n < max - 1 && !strstr(out, needle)) {
        if (fread(out + n, 1, 1, f) != 1) {
            break;
        }
        out[++n] = '\0';
    }
    return strstr(out, needle) != NULL;
}

static int access_log_has(const it_server_t *s, const char *needle)
{
    char path[512], *log = malloc(1024 * 1024);
    int found;

    snprintf(path, sizeof(path), "%s/access_log", s->dir);
    found = it_read_file(path, log, 1024 * 1024) > 0 && strstr(log, needle);
    free(log);
    return found;
}

typedef struct logged_t {
    const it_server_t *s;
    const char *needle;
} logged_t;

static int logged(void *baton)
{
    logged_t *l = baton;

    return access_log_has(l->s, l->needle);
}

static int wait_logged(const it_server_t *s, const char *needle)
{
    logged_t l;

    l.s = s;
    l.needle = needle;
    return it_wait_for(logged, &l, 10000);
}

/* A host whose Protocols include h2, with the three CometHTTP2 policies
 * (curl speaks h2 by ALPN): downgrade (the default) makes curl retry over
 * HTTP/1.1, where the subscriber is detached; hold keeps it on its h2
 * worker; refuse answers 503.  The configuration says so at start. */
START_TEST(the_http2_policies_downgrade_hold_and_refuse)
{
    it_server_t s;
    it_opts_t so;
    char cmd[600], out[16384];
    FILE *f;

    memset(&so, 0, sizeof(so));
    so.extra = "LoadModule http2_module @MODULES@/mod_http2.so\n";
    so.tls_vhost = "  Protocols h2 http/1.1\n"
                   "  <Location /sub/hold/>\n    CometHTTP2 hold\n"
                   "  </Location>\n"
                   "  <Location /sub/refuse/>\n    CometHTTP2 refuse\n"
                   "  </Location>\n";
    start(&s, &so);
    ck_assert_msg(it_log_count(&s, "CM0802") >= 3, "no notice at start");
    ck_assert_int_ge(it_log_count(&s, "CometHTTP2 downgrade applies"), 1);
    ck_assert_int_ge(it_log_count(&s, "CometHTTP2 hold applies"), 1);

    /* downgrade */
    snprintf(cmd, sizeof(cmd), "curl -sk --http2 -N -v --max-time 15 -H "
             "'Accept: text/event-stream' https://127.0.0.1:%d/sub/down 2>&1",
             s.tls_port);
    f = popen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    out[0] = '\0';
    ck_assert_msg(pipe_until(f, out, sizeof(out), "retry: 3000"),
                  "curl said: %s", out);
    ck_assert_msg(strstr(out, "HTTP_1_1_REQUIRED"), "curl said: %s", out);
    ck_assert(it_wait_subscribers(s.port, "down", 1));
    ck_assert(wait_status(s.port, "CometDetachedTLS", 1));
    ck_assert_int_eq(it_publish(s.port, "down", "over 1.1", NULL, NULL, 0),
                     201);
    ck_assert_msg(pipe_until(f, out, sizeof(out), "data: over 1.1"),
                  "curl said: %s", out);
    ck_assert(wait_logged(&s, "\"GET /sub/down HTTP/2.0\" 403"));
    ck_assert(wait_logged(&s, "\"GET /sub/down HTTP/1.1\" 200"));
    pclose(f);

    /* hold */
    snprintf(cmd, sizeof(cmd), "curl -sk --http2 -N --max-time 15 -H "
             "'Accept: text/event-stream' https://127.0.0.1:%d/sub/hold/kept "
             "2>&1", s.tls_port);
    f = popen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    ck_assert(it_wait_subscribers(s.port, "kept", 1));
    ck_assert(wait_status(s.port, "CometHeld", 1));
    ck_assert_int_eq(it_publish(s.port, "kept", "over h2", NULL, NULL, 0),
                     201);
    out[0] = '\0';
    ck_assert_msg(pipe_until(f, out, sizeof(out), "data: over h2"),
                  "curl said: %s", out);
    pclose(f);
    ck_assert(wait_logged(&s, "\"GET /sub/hold/kept HTTP/2.0\" 200"));

    /* refuse */
    snprintf(cmd, sizeof(cmd), "curl -sk --http2 --max-time 15 -w "
             "' %%{http_code} HTTP/%%{http_version}' "
             "https://127.0.0.1:%d/sub/refuse/no 2>&1", s.tls_port);
    ck_assert_int_eq(it_run(cmd, out, sizeof(out), 20000), 0);
    ck_assert_msg(strstr(out, "CometHTTP2 refuse") && strstr(out, " 503 "
                  "HTTP/2"), "curl said: %s", out);
    ck_assert_int_eq(it_log_count(&s, "exit signal"), 0);
    it_server_stop(&s);
}
END_TEST

Suite *test_tls_suite(void)
{
    Suite *s = suite_create("tls");
    TCase *tc = tcase_create("detached");

    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc,
        tls_subscribers_are_detached_get_live_messages_and_resume, 0, 2);
    tcase_add_loop_test(tc,
        the_raw_tls_stream_after_the_head_is_the_hubs_alone, 0, 2);
    tcase_add_loop_test(tc,
        the_raw_stream_check_fails_on_what_it_exists_to_catch, 0, 4);
    tcase_add_loop_test(tc,
        subscribers_with_client_certificates_are_detached_too, 0, 2);
    tcase_add_test(tc, what_cannot_be_taken_over_is_suspended_as_before);
    tcase_add_test(tc, a_tls_client_that_leaves_is_noticed_within_a_second);
    tcase_add_test(tc,
        a_tls_client_that_stops_reading_is_dropped_without_blocking);
    tcase_add_test(tc,
        graceful_restart_ends_tls_streams_cleanly_and_they_resume);
    tcase_add_test(tc, the_http2_policies_downgrade_hold_and_refuse);
    suite_add_tcase(s, tc);

    /* The long ones, in a case of their own. */
    tc = tcase_create("load");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc,
        five_thousand_https_subscribers_at_the_mpm_defaults_all_receive);
    tcase_add_test(tc,
        twenty_thousand_tls_subscribe_disconnect_cycles_leave_nothing);
    suite_add_tcase(s, tc);
    return s;
}
