/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet_ws.c -- WebSocket subscribers: the opening handshake, and the
 * hand-over to the hub (see mod_comet_ws.h).
 *
 * The 101 goes below httpd's request filters, which would make an HTTP
 * response body of it (chunking): straight to the socket, or over TLS
 * through the connection's filters (mod_ssl), flushed.  Then the
 * connection is detached as an HTTP/1.1 stream is (mod_comet_sub.c).
 * Plain: the hub gets a dup() of the socket, httpd is told the connection
 * is gone (c->aborted) and logs the request, frees its pools and closes
 * its own descriptor without shutting the socket down.  TLS: the hub
 * takes mod_ssl's session over (mod_comet_takeover.c), and ends the
 * WebSocket with a close frame and close_notify of its own.  No worker
 * thread, no MPM slot, no mod_reqtimeout: httpd no longer knows the
 * connection.
 *
 * Threads: request thread only.
 */

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <apr_strings.h>
#include <httpd.h>
#include <http_config.h>
#include <http_connection.h>
#include <http_core.h>
#include <http_log.h>
#include <http_protocol.h>
#include <http_request.h>
#include <http_ssl.h>
#include <util_filter.h>

#include "mod_comet.h"
#include "mod_comet_config.h"
#include "mod_comet_req.h"
#include "mod_comet_takeover.h"
#include "mod_comet_ws.h"
#include "comet_render.h"
#include "comet_ws.h"

APLOG_USE_MODULE(comet);

/* Bytes of the client's first frames httpd may have read with the
 * handshake; the hub takes them before anything from the socket. */
#define WS_PREREAD_MAX (64 * 1024)

/* A client that may not publish has no reason to send more than control
 * frames: its messages are refused anyway, and this bounds what its
 * parser may hold while it reads one. */
#define WS_LISTEN_ONLY_MAX 1024

int comet_ws_wanted(const request_rec *r)
{
    return comet_ws_is_upgrade(apr_table_get(r->headers_in, "Upgrade"));
}

/* The host[:port] of an origin ("scheme://host[:port]"), or NULL. */
static const char *origin_host(const char *origin)
{
    const char *p = strstr(origin, "://");

    return p && !strchr(p + 3, '/') ? p + 3 : NULL;
}

/* Browsers send Origin and let any page open a WebSocket anywhere, so the
 * server must decide: CometAllowOrigin's list, or "*", or -- when it is
 * off -- only the site's own pages (Origin's host is the request's Host).
 * A client without Origin is no browser page and is let in. */
static int origin_allowed(request_rec *r, const comet_dir_conf_t *dc)
{
    const char *origin = apr_table_get(r->headers_in, "Origin");
    const char *allow = dc->allow_origin, *host, *oh;

    if (!origin) {
        return 1;
    }
    if (allow && *allow) {
        if (!strcmp(allow, "*")) {
            return 1;
        }
        for (const char *p = allow; *p;) {
            if (!strcasecmp(ap_getword_white(r->pool, &p), origin)) {
                return 1;
            }
        }
        return 0;
    }
    host = apr_table_get(r->headers_in, "Host");
    oh = origin_host(origin);
    return host && oh && !strcasecmp(host, oh);
}

int comet_ws_check(request_rec *r, const comet_dir_conf_t *dc)
{
    comet_ws_request_t req;
    const char *why;
    int status;

    req.method = r->method;
    req.protocol = r->protocol;
    req.upgrade = apr_table_get(r->headers_in, "Upgrade");
    req.connection = apr_table_get(r->headers_in, "Connection");
    req.version = apr_table_get(r->headers_in, "Sec-WebSocket-Version");
    req.key = apr_table_get(r->headers_in, "Sec-WebSocket-Key");
    status = comet_ws_handshake_check(&req, &why);
    if (status == 426) {
        apr_table_setn(r->err_headers_out, "Sec-WebSocket-Version", "13");
        return comet_refuse(r, HTTP_UPGRADE_REQUIRED, why);
    }
    if (status != 101) {
        return comet_refuse(r, HTTP_BAD_REQUEST, why);
    }
    if (!(comet_dir_transports(dc) & COMET_T_WS)) {
        return comet_refuse(r, HTTP_NOT_ACCEPTABLE, "transport not allowed "
                            "here (CometTransports)");
    }
    if (!origin_allowed(r, dc)) {
        return comet_refuse(r, HTTP_FORBIDDEN, "origin not allowed "
                            "(CometAllowOrigin)");
    }
    if (r->connection->master) {
        return comet_refuse(r, HTTP_NOT_IMPLEMENTED, "WebSocket is served "
                            "over HTTP/1.1 only, not over HTTP/2");
    }
    /* Before the 101: the session is taken over only when nothing of the
     * client's waits (a client sends no frame before the 101). */
    if (ap_ssl_conn_is_ssl(r->connection)
        && (why = comet_takeover_refusal(r)) != NULL) {
        return comet_refuse(r, HTTP_NOT_IMPLEMENTED,
                            apr_psprintf(r->pool, "WebSocket over TLS needs "
                                         "the hub to take the TLS session "
                                         "over, which it cannot here (%s)",
                                         why));
    }
    return OK;
}

/* Write all of data on the connection (blocking, within the socket's
 * timeout, as the head of any response is): straight to the socket, or
 * over TLS through the connection's filters, flushed. */
static apr_status_t send_raw(conn_rec *c, const char *data, apr_size_t len)
{
    apr_socket_t *sock = ap_get_conn_socket(c);

    if (ap_ssl_conn_is_ssl(c)) {
        apr_bucket_brigade *bb = apr_brigade_create(c->pool,
                                                    c->bucket_alloc);
        apr_status_t rv;

        APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_transient_create(
                                        data, len, c->bucket_alloc));
        APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_flush_create(c->bucket_alloc));
        rv = ap_pass_brigade(c->output_filters, bb);
        apr_brigade_destroy(bb);
        return rv == APR_SUCCESS && c->aborted ? APR_ECONNABORTED : rv;
    }
    while (len) {
        apr_size_t n = len;
        apr_status_t rv = apr_socket_send(sock, data, &n);

        if (rv != APR_SUCCESS && !(APR_STATUS_IS_EAGAIN(rv) && n)) {
            return rv;
        }
        data += n;
        len -= n;
    }
    return APR_SUCCESS;
}

/* The 101, into out.  A client may offer the subprotocols "comet.publish"
 * and "comet": the answer names the first it offered of those this
 * connection has, "comet.publish" only where it may publish, so that it
 * knows whether its messages go over the WebSocket (comet.js's publish).
 * Other offers get no subprotocol. */
static apr_status_t upgrade_head(request_rec *r, comet_buf_t *out,
                                 int publish)
{
    static const char *const protocols[] = { "comet.publish", "comet" };
    char accept[COMET_WS_ACCEPT_LEN + 1];
    const char *proto;
    apr_size_t len = 0;

    comet_ws_accept_key(apr_table_get(r->headers_in, "Sec-WebSocket-Key"),
                        accept);
    proto = comet_ws_pick_protocol(apr_table_get(r->headers_in,
                                                 "Sec-WebSocket-Protocol"),
                                   protocols + !publish, 2 - !publish, &len);
    return comet_ws_handshake_response(out, accept, proto, len);
}

/* httpd is done with the connection: it logs the request and closes its
 * descriptor only (see mod_comet_sub.c, park_detached).  Over TLS it ends
 * the connection itself, sending nothing more for r (no response head, no
 * last chunk); mod_ssl's close_notify is its own (or, once the session is
 * taken over, the hub's). */
static void let_go(request_rec *r)
{
    r->status = HTTP_SWITCHING_PROTOCOLS;
    r->connection->keepalive = AP_CONN_CLOSE;
    if (ap_ssl_conn_is_ssl(r->connection)) {
        r->eos_sent = 1;
    }
    else {
        r->connection->aborted = 1;
    }
}

/* 101, then close with 4000 + status and reason. */
static void close_after_upgrade(request_rec *r, int status, const char *why)
{
    comet_buf_t *b;

    if (comet_buf_create(&b, r->pool, 512, 4096) == APR_SUCCESS
        && upgrade_head(r, b, 0) == APR_SUCCESS
        && comet_ws_close_frame(b, 4000 + status, why,
                                why ? strlen(why) : 0) == APR_SUCCESS) {
        send_raw(r->connection, b->data, b->len);
    }
    let_go(r);
}

/* A close frame with code and reason, after the 101. */
static void close_frame(request_rec *r, int code, const char *why)
{
    char mem[COMET_WS_CONTROL_MAX + COMET_WS_SERVER_HEADER_MAX];
    comet_buf_t b;

    comet_buf_wrap(&b, mem, sizeof(mem));
    if (comet_ws_close_frame(&b, code, why, strlen(why)) == APR_SUCCESS) {
        send_raw(r->connection, b.data, b.len);
    }
}

int comet_ws_refuse(request_rec *r, int status)
{
    const char *why = comet_refusal(r);

    if (status < 400 || status > 999) {
        status = HTTP_INTERNAL_SERVER_ERROR;
    }
    ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r, COMET_LOGNO(1001)
                  "WebSocket refused after the upgrade: %d %s", status,
                  why ? why : "");
    close_after_upgrade(r, status, why);
    return OK;
}

/* What the client sent past its handshake and httpd's input filters have
 * read already (or read now: nothing waits), into *out. */
static void collect_preread(request_rec *r, char **out, apr_size_t *len)
{
    conn_rec *c = r->connection;
    apr_bucket_brigade *bb = apr_brigade_create(r->pool, c->bucket_alloc);
    ap_filter_t *f, *next;
    char *buf = NULL;
    apr_size_t have = 0;

    /* mod_reqtimeout must not time a WebSocket. */
    for (f = c->input_filters; f; f = next) {
        next = f->next;
        if (!strcasecmp(f->frec->name, "reqtimeout")) {
            ap_remove_input_filter(f);
        }
    }
    while (have < WS_PREREAD_MAX) {
        apr_size_t n = WS_PREREAD_MAX - have;

        apr_brigade_cleanup(bb);
        if (ap_get_brigade(c->input_filters, bb, AP_MODE_READBYTES,
                           APR_NONBLOCK_READ, (apr_off_t)n) != APR_SUCCESS
            || APR_BRIGADE_EMPTY(bb)) {
            break;
        }
        if (!buf) {
            buf = apr_palloc(r->pool, WS_PREREAD_MAX);
        }
        if (apr_brigade_flatten(bb, buf + have, &n) != APR_SUCCESS || !n) {
            break;
        }
        have += n;
    }
    apr_brigade_cleanup(bb);
    *out = buf;
    *len = have;
}

int comet_ws_park(request_rec *r, const comet_dir_conf_t *dc,
                  comet_hub_t *hub, comet_hub_spec_t *spec, int *adopted)
{
    conn_rec *c = r->connection;
    comet_hub_ws_spec_t ws;
    comet_buf_t *head;
    apr_os_sock_t osfd;
    char *preread;
    apr_size_t preread_len;
    const char *from = NULL;
    apr_status_t rv;
    int fd;

    *adopted = 0;
    memset(&ws, 0, sizeof(ws));
    ws.publish = comet_dir_client_publish(dc);
    comet_dir_publish_rate(dc, &ws.rate, &ws.burst);
    ws.max_message = ws.publish ? comet_config_max_message(r->server)
                                : WS_LISTEN_ONLY_MAX;
    if (ws.publish && comet_config_identity(r, dc, &from) != APR_SUCCESS) {
        return comet_ws_refuse(r, comet_refuse(r, HTTP_INTERNAL_SERVER_ERROR,
                               "no identity for the client "
                               "(CometClientIdentity)"));
    }
    ws.from = from;
    ws.from_len = from ? strlen(from) : 0;

    if (comet_buf_create(&head, r->pool, 256, 256) != APR_SUCCESS
        || upgrade_head(r, head, ws.publish) != APR_SUCCESS) {
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    /* The head goes out before the hub may write. */
    if (send_raw(c, head->data, head->len) != APR_SUCCESS) {
        let_go(r);
        return OK;
    }
    spec->transport = COMET_T_WS;
    spec->chunked = 0;
    spec->ws = &ws;
    if (ap_ssl_conn_is_ssl(c)) {
        /* Nothing more is read through mod_ssl (it would take the hub's
         * records): what the client sends waits in the socket, or in the
         * session, which the hub reads first. */
        rv = comet_takeover_start(r, hub, spec);
        if (rv != APR_SUCCESS) {
            COMET_SUB_LOG(r, APLOG_INFO, rv, 1004, spec->ids[0], "cannot "
                          "take the TLS session over; closing the "
                          "WebSocket");
            close_frame(r, 4000 + HTTP_SERVICE_UNAVAILABLE, "server busy");
            let_go(r);
            return OK;
        }
        *adopted = 1;
        COMET_SUB_LOG(r, APLOG_DEBUG, 0, 1005, spec->ids[0],
                      "WebSocket parked (detached, TLS)%s", ws.publish
                      ? ", may publish" : "");
        let_go(r);
        return OK;
    }
    collect_preread(r, &preread, &preread_len);
    ws.preread = preread;
    ws.preread_len = preread_len;

    if (apr_os_sock_get(&osfd, ap_get_conn_socket(c)) != APR_SUCCESS
        || (fd = fcntl(osfd, F_DUPFD_CLOEXEC, 0)) < 0) {
        let_go(r);
        return OK;
    }
    spec->fd = fd;
    rv = comet_hub_adopt(hub, spec, NULL);
    if (rv != APR_SUCCESS) {
        /* Upgraded already: the refusal is a close frame (4503). */
        close(fd);
        COMET_SUB_LOG(r, APLOG_INFO, rv, 1002, spec->ids[0], "the hub is "
                      "full or stopping; closing the WebSocket");
        close_frame(r, 4000 + HTTP_SERVICE_UNAVAILABLE, "server busy");
        let_go(r);
        return OK;
    }
    *adopted = 1;
    COMET_SUB_LOG(r, APLOG_DEBUG, 0, 1003, spec->ids[0],
                  "WebSocket parked (detached)%s", ws.publish
                  ? ", may publish" : "");
    let_go(r);
    return OK;
}
