/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet_pub.c -- the comet-publisher handler: publish, inspect and
 * delete a channel over HTTP.  Access control is httpd's own (Require,
 * mod_auth*), and it must be there: a publisher location that no Require
 * applies to is refused (403), and so is a browser's request from another
 * origin unless CometAllowOrigin names it.
 *
 *   POST|PUT /pub/<channel>   body = message; Comet-Event: <type> optional
 *                             201 delivered to >= 1 subscriber, 202 to none
 *   GET      /pub/<channel>   channel info (JSON), 404 when unknown
 *   DELETE   /pub/<channel>   delete; subscribers get a final event
 *   OPTIONS  /pub/<channel>   the methods; anything else is 405
 *
 * Threads: request thread only.
 */

#include <apr_strings.h>
#include <httpd.h>
#include <http_config.h>
#include <http_core.h>
#include <http_log.h>
#include <http_protocol.h>
#include <http_request.h>

#include "mod_comet.h"
#include "mod_comet_config.h"
#include "mod_comet_pub.h"
#include "mod_comet_req.h"
#include "mod_comet_redis.h"

APLOG_USE_MODULE(comet);

#define COMET_EVENT_HEADER "Comet-Event"

/* mod_authz_core's: 1 when a Require applies to r's method.  NULL when
 * mod_authz_core is not loaded. */
static APR_OPTIONAL_FN_TYPE(authz_some_auth_required) *some_authz;

void comet_pub_optional_fns(void)
{
    some_authz = APR_RETRIEVE_OPTIONAL_FN(authz_some_auth_required);
}

/* Publishing is closed unless the configuration opens it.  Comet
 * locations skip the walk of the file system, so a <Directory />
 * Require all denied does not reach them: the <Location> itself (or one
 * around it) must say who may publish. */
static int access_configured(request_rec *r, const comet_dir_conf_t *dc)
{
    const char *loc = comet_request_location(r, dc);

    if (some_authz && some_authz(r)) {
        return 1;
    }
    ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, COMET_LOGNO(0105)
                  "refused: no access control applies to the publisher "
                  "<Location %s> for %s%s: add `Require ip 127.0.0.1 ::1` "
                  "(publishers on this host) or `Require valid-user` (with "
                  "an AuthType) to it, or `Require all granted` to let "
                  "anyone publish", loc, r->method, some_authz ? ""
                  : " (mod_authz_core is not loaded: load it, a2enmod "
                  "authz_core)");
    return 0;
}

/* A JSON string literal of s: channel ids are from a safe set already,
 * but error texts may come from anywhere. */
static const char *json_str(apr_pool_t *p, const char *s)
{
    apr_size_t n = 2;
    const char *q;
    char *out, *o;

    for (q = s; *q; q++) {
        n += (*q == '"' || *q == '\\') ? 2
             : ((unsigned char)*q < 0x20 ? 6 : 1);
    }
    o = out = apr_palloc(p, n + 1);
    *o++ = '"';
    for (q = s; *q; q++) {
        if (*q == '"' || *q == '\\') {
            *o++ = '\\';
            *o++ = *q;
        }
        else if ((unsigned char)*q < 0x20) {
            o += apr_snprintf(o, 7, "\\u%04x", (unsigned char)*q);
        }
        else {
            *o++ = *q;
        }
    }
    *o++ = '"';
    *o = '\0';
    return out;
}

static int json_reply(request_rec *r, int status, const char *json)
{
    r->status = status;
    ap_set_content_type(r, "application/json");
    apr_table_setn(r->headers_out, "Cache-Control", "no-cache");
    ap_rputs(json, r);
    ap_rputc('\n', r);
    return OK;
}

static int error_reply(request_rec *r, int status, const char *what)
{
    ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r, COMET_LOGNO(0101)
                  "publisher: %s", what);
    return json_reply(r, status, apr_psprintf(r->pool, "{\"error\":%s}",
                                              json_str(r->pool, what)));
}

/* Read the whole body, at most max bytes, into one buffer.  Returns OK,
 * HTTP_REQUEST_ENTITY_TOO_LARGE or another HTTP error.  A body too large
 * is not read to its end (that could be gigabytes): the connection is
 * closed after the answer instead, and httpd's lingering close lets the
 * client read it. */
static int read_body(request_rec *r, apr_size_t max, char **data,
                     apr_size_t *len)
{
    const char *cl = apr_table_get(r->headers_in, "Content-Length");
    apr_off_t clen = -1;
    apr_size_t cap, got = 0;
    char *buf;
    int rc;

    if ((rc = ap_setup_client_block(r, REQUEST_CHUNKED_DECHUNK)) != OK) {
        return rc;
    }
    if (cl && (apr_strtoff(&clen, cl, NULL, 10) != APR_SUCCESS || clen < 0)) {
        return HTTP_BAD_REQUEST;
    }
    if (clen > (apr_off_t)max) {
        r->connection->keepalive = AP_CONN_CLOSE;
        return HTTP_REQUEST_ENTITY_TOO_LARGE;
    }
    /* One byte more than allowed tells a too large chunked body. */
    cap = clen >= 0 ? (apr_size_t)clen + 1 : (max < 8192 ? max + 1 : 8192);
    buf = apr_palloc(r->pool, cap);
    if (ap_should_client_block(r)) {
        for (;;) {
            long n;

            if (got == cap) {
                apr_size_t ncap = cap > (max + 1) / 2 ? max + 1 : cap * 2;
                char *nbuf;

                if (cap == max + 1) {
                    r->connection->keepalive = AP_CONN_CLOSE;
                    return HTTP_REQUEST_ENTITY_TOO_LARGE;
                }
                nbuf = apr_palloc(r->pool, ncap);
                memcpy(nbuf, buf, got);
                buf = nbuf;
                cap = ncap;
            }
            n = ap_get_client_block(r, buf + got, cap - got);
            if (n < 0) {
                r->connection->keepalive = AP_CONN_CLOSE;
                return HTTP_BAD_REQUEST;
            }
            if (n == 0) {
                break;
            }
            got += (apr_size_t)n;
        }
    }
    if (got > max) {
        r->connection->keepalive = AP_CONN_CLOSE;
        return HTTP_REQUEST_ENTITY_TOO_LARGE;
    }
    *data = buf;
    *len = got;
    return OK;
}

static int publish(request_rec *r, const char *channel)
{
    apr_size_t max = comet_config_max_message(r->server);
    comet_publish_t msg;
    comet_publish_result_t res;
    char idbuf[COMET_MSGID_MAXLEN];
    const char *event = apr_table_get(r->headers_in, COMET_EVENT_HEADER);
    char *data = NULL;
    apr_size_t len = 0;
    apr_status_t rv;
    int rc;

    if ((rc = read_body(r, max, &data, &len)) != OK) {
        if (rc == HTTP_REQUEST_ENTITY_TOO_LARGE) {
            return error_reply(r, rc, apr_psprintf(r->pool,
                               "message larger than CometMaxMessageSize (%"
                               APR_SIZE_T_FMT " bytes)", max));
        }
        return rc;
    }
    memset(&msg, 0, sizeof(msg));
    msg.channel = channel;
    msg.channel_len = strlen(channel);
    msg.data = data;
    msg.data_len = len;
    if (event && *event) {
        msg.event = event;
        msg.event_len = strlen(event);
    }
    /* Who publishes, as the server knows it (a browser's POST): stored
     * with the message, never taken from the request itself. */
    if (comet_config_identity(r, comet_config_dir(r), &msg.from)
        != APR_SUCCESS) {
        return error_reply(r, HTTP_INTERNAL_SERVER_ERROR,
                           "no identity for the publisher "
                           "(CometClientIdentity)");
    }
    msg.from_len = msg.from ? strlen(msg.from) : 0;
    if (comet_shared_enabled()) {
        const char *why = NULL;

        rv = comet_shared_publish(r, &msg, &res, &why);
        if (rv == COMET_BUS_ENOTSENT || rv == COMET_BUS_EUNKNOWN) {
            /* Said to the publisher, never silently dropped: "not
             * stored" may be sent again; "outcome unknown" may be
             * stored already. */
            ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, COMET_LOGNO(0107)
                          "channel=%s: publish through Redis failed: %s",
                          channel, why);
            apr_table_setn(r->err_headers_out, "Retry-After", "1");
            return error_reply(r, HTTP_SERVICE_UNAVAILABLE, why);
        }
    }
    else {
        rv = comet_store_publish(comet_proc_store(), &msg, comet_now_mono(),
                                 comet_wake_slot, NULL, &res);
    }
    switch (rv) {
    case APR_SUCCESS:
        break;
    case COMET_ETOOBIG:
        return error_reply(r, HTTP_REQUEST_ENTITY_TOO_LARGE,
                           "message larger than CometMaxMessageSize");
    case COMET_EFULL:
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, COMET_LOGNO(0102)
                      "channel=%s: publish refused, the store is full "
                      "(CometSharedMemorySize)", channel);
        return error_reply(r, HTTP_INSUFFICIENT_STORAGE,
                           "the message store is full");
    case COMET_EBADCHAN:
        return error_reply(r, HTTP_BAD_REQUEST, "invalid channel id");
    case COMET_EPROTO:
        return error_reply(r, HTTP_BAD_REQUEST, "invalid " COMET_EVENT_HEADER
                           " (event type) header");
    case COMET_ERESERVED:
        return error_reply(r, HTTP_BAD_REQUEST, "invalid " COMET_EVENT_HEADER
                           " header: event types starting with comet- are "
                           "reserved for the server's own signals");
    default:
        comet_log_rerror(APLOG_ERR, rv, r, COMET_LOGNO(0103) "channel=%s: "
                         "publish failed", channel);
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    comet_msgid_format(idbuf, &res.id);
    apr_table_setn(r->headers_out, "Comet-Message-Id",
                   apr_pstrdup(r->pool, idbuf));
    return json_reply(r, res.receivers ? HTTP_CREATED : HTTP_ACCEPTED,
                      apr_psprintf(r->pool, "{\"channel\":\"%s\",\"id\":\"%s\","
                                   "\"receivers\":%u}", channel, idbuf,
                                   res.receivers));
}

static int channel_info(request_rec *r, const char *channel)
{
    comet_channel_stats_t st;
    char idbuf[COMET_MSGID_MAXLEN];
    apr_status_t rv;

    rv = comet_store_channel_stats(comet_proc_store(), channel,
                                   strlen(channel), &st);
    if (rv == COMET_ENOCHAN) {
        return error_reply(r, HTTP_NOT_FOUND, "no such channel");
    }
    if (rv != APR_SUCCESS) {
        return error_reply(r, HTTP_BAD_REQUEST, "invalid channel id");
    }
    comet_msgid_format(idbuf, &st.newest);
    if (r->header_only) {
        return json_reply(r, HTTP_OK, "");
    }
    return json_reply(r, HTTP_OK, apr_psprintf(r->pool,
        "{\"channel\":\"%s\",\"messages\":%u,\"bytes\":%" APR_SIZE_T_FMT
        ",\"subscribers\":%u,\"published\":%" APR_UINT64_T_FMT
        ",\"last_id\":\"%s\",\"last_publish\":%" APR_TIME_T_FMT "}",
        channel, st.messages, st.bytes, st.subscribers, st.published, idbuf,
        st.last_publish ? apr_time_as_msec(st.last_publish) : 0));
}

static int delete_channel(request_rec *r, const char *channel)
{
    apr_uint32_t receivers = 0;
    apr_status_t rv;

    rv = comet_store_delete(comet_proc_store(), channel, strlen(channel),
                            comet_wake_slot, NULL, &receivers);
    if (rv == COMET_ENOCHAN) {
        return error_reply(r, HTTP_NOT_FOUND, "no such channel");
    }
    if (rv != APR_SUCCESS) {
        return error_reply(r, HTTP_BAD_REQUEST, "invalid channel id");
    }
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, COMET_LOGNO(0104)
                  "channel=%s: deleted, %u subscribers told", channel,
                  receivers);
    return json_reply(r, HTTP_OK, apr_psprintf(r->pool,
                      "{\"channel\":\"%s\",\"deleted\":true,"
                      "\"receivers\":%u}", channel, receivers));
}

int comet_publisher_handler(request_rec *r)
{
    const comet_dir_conf_t *dc = comet_config_dir(r);
    const char **ids;
    int n, rc, cross;

    if (!comet_proc_store() || !comet_proc_slot(NULL)) {
        return HTTP_SERVICE_UNAVAILABLE;
    }
    if (!access_configured(r, dc)) {
        r->connection->keepalive = AP_CONN_CLOSE;
        return error_reply(r, HTTP_FORBIDDEN, "publishing is not "
                           "configured here (see the server's error log)");
    }
    /* A page of another site must not make its visitors' browsers
     * publish: a POST with a text/plain body needs no preflight. */
    cross = comet_request_cors(r, dc);
    if (cross < 0) {
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, COMET_LOGNO(0106)
                      "refused: a browser request from another origin (%s) "
                      "to publisher <Location %s>; list the origin in "
                      "CometAllowOrigin to allow it",
                      apr_table_get(r->headers_in, "Origin")
                      ? apr_table_get(r->headers_in, "Origin")
                      : "Sec-Fetch-Site: cross-site",
                      comet_request_location(r, dc));
        r->connection->keepalive = AP_CONN_CLOSE;
        return error_reply(r, HTTP_FORBIDDEN, "publishing from another "
                           "origin is not allowed here (CometAllowOrigin)");
    }
    if (cross > 0) {
        apr_table_setn(r->headers_out, "Access-Control-Expose-Headers",
                       "Comet-Message-Id");
    }
    /* httpd's 405 answer makes its Allow header from these. */
    ap_allow_standard_methods(r, REPLACE_ALLOW, M_GET, M_POST, M_PUT,
                              M_DELETE, M_OPTIONS, -1);
    if (r->method_number == M_OPTIONS) {
        apr_table_setn(r->headers_out, "Allow",
                       "GET, HEAD, POST, PUT, DELETE, OPTIONS");
        if (cross > 0) {
            apr_table_setn(r->headers_out, "Access-Control-Allow-Methods",
                           "GET, POST, PUT, DELETE, OPTIONS");
            apr_table_setn(r->headers_out, "Access-Control-Allow-Headers",
                           "Content-Type, " COMET_EVENT_HEADER);
            apr_table_setn(r->headers_out, "Access-Control-Max-Age",
                           "86400");
        }
        ap_set_content_length(r, 0);
        return OK;
    }
    if (r->method_number != M_GET && r->method_number != M_POST
        && r->method_number != M_PUT && r->method_number != M_DELETE) {
        r->connection->keepalive = AP_CONN_CLOSE;
        return HTTP_METHOD_NOT_ALLOWED;
    }
    rc = comet_request_channels(r, dc, 1, &ids, &n);
    if (rc != OK) {
        const char *why = comet_refusal(r);

        /* A body sent with a refused request is not read: the
         * connection ends after the answer. */
        r->connection->keepalive = AP_CONN_CLOSE;
        return error_reply(r, rc, why ? why : "invalid channel");
    }
    switch (r->method_number) {
    case M_POST:
    case M_PUT:
        return publish(r, ids[0]);
    case M_DELETE:
        return delete_channel(r, ids[0]);
    default:
        return channel_info(r, ids[0]);
    }
}
