/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet_sub.c -- the comet-subscriber handler.
 *
 * It reads what the request asks for (channels, transport, the last id the
 * client saw), counts the subscriber in the store, sends the response head
 * (and SSE's retry line) and then parks the subscriber with this process's
 * hub, with its positions: the hub delivers whatever is due from there (a
 * backlog too) at the pace the client reads, so no write here ever waits
 * for a client.  Parking is one of:
 *
 *   detached  HTTP/1.1 with nothing but httpd's own framing filters (and
 *             mod_ssl's) on the way: the hub gets a dup() of the socket
 *             and httpd is told the connection is gone (c->aborted), so
 *             httpd logs the request, frees its pools and forgets the
 *             connection.  No worker thread, no MPM connection slot, ~100
 *             bytes kept.  Over TLS the hub takes mod_ssl's session over
 *             too (mod_comet_takeover.c; ~14 KB, OpenSSL's session).
 *   suspended what cannot be detached (HTTP/1.0, a transforming filter, a
 *             TLS session that cannot be taken over): the bytes go
 *             through httpd's filters.  The handler returns SUSPENDED and
 *             MPM worker callbacks write what the hub hands over, without
 *             ever waiting for the client (mod_comet_susp.c).  Bounded
 *             per process by what the event MPM leaves room for.
 *   held      HTTP/2 with CometHTTP2 hold (a stream must not be
 *             suspended): the handler keeps its thread and writes what the
 *             hub hands it.  Bounded per process (see README).  By default
 *             (CometHTTP2 downgrade) an HTTP/2 subscription is answered so
 *             that the client retries over HTTP/1.1 instead.
 *
 * A long-poll that finds messages waiting is answered at once, like any
 * ordinary response (keep-alive allowed), when the answer is small
 * (SUB_ANSWER_NOW: well under any socket buffer); a larger one is the
 * hub's to give.
 *
 * Threads: the handler runs on a request thread; held_write and
 * held_close, the sink of a held subscriber, on the hub thread (they only
 * hand the bytes over, under the held record's mutex).
 */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <apr_atomic.h>
#include <apr_strings.h>
#include <apr_thread_cond.h>
#include <apr_thread_mutex.h>
#include <httpd.h>
#include <http_config.h>
#include <http_connection.h>
#include <http_core.h>
#include <http_log.h>
#include <http_protocol.h>
#include <http_request.h>
#include <http_ssl.h>
#include <ap_mpm.h>
#include <util_filter.h>
#include <util_script.h>

#include "mod_comet.h"
#include "mod_comet_config.h"
#include "mod_comet_sub.h"
#include "mod_comet_req.h"
#include "mod_comet_quota.h"
#include "mod_comet_susp.h"
#include "mod_comet_status.h"
#include "mod_comet_takeover.h"
#include "mod_comet_ws.h"
#include "mod_comet_redis.h"
#include "event_bridge.h"
#include "mod_comet_keep.h"
#include "comet_frame.h"
#include "comet_render.h"

APLOG_USE_MODULE(comet);

/* ---- the request's wishes ------------------------------------------------------ */

typedef struct sub_req_t {
    request_rec       *r;
    comet_store_t     *store;
    apr_uint32_t       slot;         /* this process's, in the store     */
    const comet_dir_conf_t *dc;
    const char       **ids;
    int                nchan;
    int                transport;
    int                has_id;       /* the client sent a last id        */
    int                foreign;      /* ... of another store epoch       */
    long               backlog;      /* -1 none, -2 all, else count      */
    apr_uint32_t       epoch;
    comet_chanref_t   *refs;
    apr_uint64_t      *seqs;
    int                subscribed;   /* how many refs hold a subscription */
    apr_uint32_t       quota_tag;    /* CometMaxNewChannelsPerClient's    */
    apr_table_t       *args;         /* the query, once parsed           */
    int               *later;        /* CometRedis: [nchan] nothing to read
                                        now: the position is beyond this
                                        server's copy, which Redis could
                                        not bring up to date in time; the
                                        hub delivers once it has         */
} sub_req_t;

static int parse_position(sub_req_t *sr)
{
    request_rec *r = sr->r;
    const char *id = apr_table_get(r->headers_in, "Last-Event-ID");
    const char *backlog = comet_query_arg(r, &sr->args, "backlog");
    apr_size_t n = 0;
    apr_uint32_t epoch;

    if (!id) {
        id = comet_query_arg(r, &sr->args, "last_event_id");
    }
    sr->backlog = -1;
    if (backlog) {
        char *end;

        if (!strcasecmp(backlog, "all")) {
            sr->backlog = -2;
        }
        else if ((sr->backlog = strtol(backlog, &end, 10)) < 0 || *end
                 || end == backlog || sr->backlog > 1000000) {
            return comet_refuse(r, HTTP_BAD_REQUEST, "backlog must be a "
                                "count or 'all'");
        }
    }
    if (!id || !*id) {
        return OK;
    }
    sr->has_id = 1;
    if (comet_msgid_parse_compound(&epoch, sr->seqs, (apr_size_t)sr->nchan,
                                   &n, id, strlen(id)) != APR_SUCCESS
        || n != (apr_size_t)sr->nchan) {
        /* Not an id this subscription can have been given (garbage, or
         * another number of channels).  A 4xx would make EventSource give
         * up for good: start afresh instead, and say that some messages
         * may be missing. */
        COMET_SUB_LOG(r, APLOG_DEBUG, 0, 0408, sr->ids[0], "last event id "
                      "'%.64s' is not one of %d channel(s): starting with "
                      "the missed signal", id, sr->nchan);
        epoch = 0;
    }
    for (int i = 0; epoch == sr->epoch && i < sr->nchan
                    && !comet_shared_enabled(); i++) {
        /* A seq this store never handed out: no position of ours.  (Shared
         * through Redis, the copy may not have it yet: the store's rule
         * for fed channels decides once it is brought up to date.) */
        if (sr->seqs[i] > comet_store_last_seq(sr->store)) {
            epoch = 0;
        }
    }
    if (epoch != sr->epoch) {
        /* An id of an earlier server run, or one we cannot place: deliver
         * what is kept, and say that some may be missing. */
        sr->foreign = 1;
        memset(sr->seqs, 0, sizeof(*sr->seqs) * (apr_size_t)sr->nchan);
    }
    return OK;
}

static void unsubscribe_all(sub_req_t *sr)
{
    apr_time_t now = comet_now_mono();

    for (int i = 0; i < sr->subscribed; i++) {
        comet_store_unsubscribe(sr->store, sr->slot,
                                &sr->refs[i], now);
    }
    sr->subscribed = 0;
    comet_quota_release(NULL, sr->quota_tag);
    sr->quota_tag = 0;
}

/* The hub has adopted the subscriber: its subscriptions, and what they
 * count against the client's quota, are the hub's to give back. */
static void handed_to_hub(sub_req_t *sr)
{
    sr->subscribed = 0;
    sr->quota_tag = 0;
}

static apr_status_t unsubscribe_cleanup(void *data)
{
    unsubscribe_all(data);
    return APR_SUCCESS;
}

/* 503: the store has no room for this subscription now; the log says
 * which bound and how to raise it. */
static int refuse_store(sub_req_t *sr, const char *id, apr_status_t rv)
{
    request_rec *r = sr->r;
    char eb[160];

    apr_table_setn(r->err_headers_out, "Retry-After", "5");
    if (rv == COMET_EQUOTA) {
        COMET_SUB_LOG(r, APLOG_WARNING, 0, 0409, id, "refused: %s: "
                      "channels that only subscribers made may use three "
                      "quarters of the channel records and seven eighths "
                      "of the store (raise CometSharedMemorySize for "
                      "more)", comet_strerror(rv, eb, sizeof(eb)));
        return comet_refuse(r, HTTP_SERVICE_UNAVAILABLE, "no room for "
                            "another channel that nobody has published "
                            "to");
    }
    COMET_SUB_LOG(r, APLOG_WARNING, 0, 0402, id, "refused: %s "
                  "(CometSharedMemorySize)",
                  comet_strerror(rv, eb, sizeof(eb)));
    return comet_refuse(r, HTTP_SERVICE_UNAVAILABLE,
                        "the channel store is full");
}

static int subscribe_all(sub_req_t *sr)
{
    request_rec *r = sr->r;
    apr_time_t now = comet_now_mono();
    int flags = comet_dir_existing_only(sr->dc) ? COMET_STORE_SUB_EXISTING
                                                 : 0;
    apr_uint32_t unpublished = 0, max, held;
    apr_status_t rv;

    for (int i = 0; i < sr->nchan; i++) {
        comet_msgid_t newest;

        rv = comet_store_subscribe_ex(sr->store, sr->slot, sr->ids[i],
                                      strlen(sr->ids[i]), flags, now,
                                      &sr->refs[i], &newest);
        if (rv != APR_SUCCESS) {
            unsubscribe_all(sr);
            switch (rv) {
            case COMET_EFULL:
            case COMET_EQUOTA:
                return refuse_store(sr, sr->ids[i], rv);
            case COMET_ENOCHAN:
                return comet_refuse(r, HTTP_NOT_FOUND, apr_pstrcat(r->pool,
                                    "no such channel: ", sr->ids[i],
                                    " (this location subscribes to "
                                    "channels that exist only)", NULL));
            default:
                return comet_refuse(r, HTTP_BAD_REQUEST,
                                    "invalid channel id");
            }
        }
        sr->subscribed++;
        /* Seq 0: nobody has published to it; its record is ours. */
        unpublished += newest.seq == 0;
        if (sr->has_id) {
            continue;
        }
        sr->seqs[i] = newest.seq;
        if (sr->backlog == -2) {
            sr->seqs[i] = 0;
        }
        else if (sr->backlog >= 0
                 && comet_store_backlog_start(sr->store, &sr->refs[i],
                                              (apr_size_t)sr->backlog, now,
                                              &sr->seqs[i]) != APR_SUCCESS) {
            sr->seqs[i] = newest.seq;
        }
    }
    max = comet_config_max_new_per_client(r->server);
    if (unpublished && max) {
        rv = comet_quota_take(r, unpublished, max, &sr->quota_tag, &held);
        if (rv != APR_SUCCESS) {
            unsubscribe_all(sr);
            apr_table_setn(r->err_headers_out, "Retry-After", "5");
            COMET_SUB_LOG(r, APLOG_WARNING, 0, 0410, sr->ids[0], "refused: "
                          "client %s holds %u subscriptions to channels "
                          "nobody has published to in this process, %u "
                          "more would pass CometMaxNewChannelsPerClient "
                          "%u (behind a proxy, let mod_remoteip name the "
                          "client, or raise the limit)", r->useragent_ip,
                          held, unpublished, max);
            return comet_refuse(r, HTTP_SERVICE_UNAVAILABLE, "too many "
                                "subscriptions to channels nobody has "
                                "published to from this client");
        }
    }
    return OK;
}

/* CometRedis: bring this server's copy of the channels up to date for
 * the subscriber (subscribed already, so the copy is kept so), then take
 * the position of one without an id from it. */
static void sync_redis(sub_req_t *sr)
{
    int *synced = apr_pcalloc(sr->r->pool, sizeof(int) * (apr_size_t)sr->nchan);

    sr->later = apr_pcalloc(sr->r->pool, sizeof(int) * (apr_size_t)sr->nchan);
    comet_shared_sync(sr->r, sr->ids, sr->seqs, sr->nchan, synced);
    for (int i = 0; i < sr->nchan; i++) {
        comet_store_pos_t pos;

        if (comet_store_position(sr->store, sr->slot, sr->ids[i],
                                 strlen(sr->ids[i]), &pos) != APR_SUCCESS) {
            continue;
        }
        if (!sr->has_id && sr->backlog == -1) {
            sr->seqs[i] = pos.last;
        }
        else if (!synced[i] && sr->has_id && sr->seqs[i]
                 && (!pos.fed || sr->seqs[i] > pos.last)) {
            COMET_SUB_LOG(sr->r, APLOG_INFO, 0, 0415, sr->ids[i], "Redis "
                          "did not bring this server's copy up to the "
                          "client's position in time: its messages come "
                          "once it does");
            sr->later[i] = 1;
        }
    }
}

/* Where the positions came from, for the hub (comet_hub_spec_t.start). */
static int position_start(const sub_req_t *sr)
{
    if (sr->foreign) {
        return COMET_HUB_START_LOST;
    }
    return !sr->has_id && sr->backlog != -1 ? COMET_HUB_START_BACKLOG
                                            : COMET_HUB_START_EXACT;
}

/* A long-poll answered by the handler holds at most this many bytes of
 * messages (and what it would hold is read in bounded steps); a larger
 * answer is the hub's, which never waits for the client. */
#define SUB_ANSWER_NOW      (32 * 1024)
#define SUB_ANSWER_NOW_MSGS 256

/* Read what each channel holds after the subscriber's position, a little
 * (a long-poll deciding whether to answer at once).  *more: some channel
 * holds more than was read. */
static void read_due(sub_req_t *sr, comet_read_t **reads, int *any,
                     int *more)
{
    comet_msgid_t after;
    apr_time_t now = comet_now_mono();

    *any = *more = 0;
    for (int i = 0; i < sr->nchan; i++) {
        comet_read_t *rd = apr_pcalloc(sr->r->pool, sizeof(*rd));

        after.epoch = sr->epoch;
        after.seq = sr->seqs[i];
        if (sr->later && sr->later[i]) {
            rd->msgs = apr_array_make(sr->r->pool, 1, sizeof(comet_msg_t));
            reads[i] = rd;
            continue;
        }
        if (comet_store_read(sr->store, &sr->refs[i], after,
                             SUB_ANSWER_NOW_MSGS, SUB_ANSWER_NOW, now,
                             sr->r->pool, rd) != APR_SUCCESS) {
            continue;
        }
        if (!sr->has_id) {
            /* Asking for backlog is not having lost anything. */
            rd->missed = 0;
        }
        if (sr->foreign) {
            rd->missed = 1;
        }
        reads[i] = rd;
        *more |= rd->more;
        if (rd->msgs->nelts || rd->missed || rd->deleted) {
            *any = 1;
        }
    }
}

/* ---- responding ------------------------------------------------------------------ */

static void stream_headers(sub_req_t *sr)
{
    request_rec *r = sr->r;

    switch (sr->transport) {
    case COMET_T_SSE:
        ap_set_content_type(r, "text/event-stream; charset=utf-8");
        break;
    case COMET_T_STREAM:
        ap_set_content_type(r, "application/x-ndjson; charset=utf-8");
        break;
    default:
        ap_set_content_type(r, "application/json; charset=utf-8");
        break;
    }
    apr_table_setn(r->headers_out, "Cache-Control", "no-cache, no-store");
    apr_table_setn(r->headers_out, "X-Accel-Buffering", "no");
    /* Nothing may buffer or compress a stream on its way out. */
    apr_table_setn(r->subprocess_env, "no-gzip", "1");
    apr_table_setn(r->subprocess_env, "no-brotli", "1");
}

/* Answer a long-poll at once when its answer is small: OK, or DECLINED
 * (the hub answers it). */
static int answer_poll_now(sub_req_t *sr, comet_read_t **reads)
{
    comet_buf_t *buf, *tmp;
    apr_uint64_t *seqs;
    int missed = 0, complete = 0;

    for (int i = 0; i < sr->nchan; i++) {
        missed |= reads[i] && reads[i]->missed;
    }
    seqs = apr_pmemdup(sr->r->pool, sr->seqs,
                       sizeof(*seqs) * (apr_size_t)sr->nchan);
    if (comet_buf_create(&buf, sr->r->pool, 4096, 64 * 1024 * 1024)
        != APR_SUCCESS
        || comet_buf_create(&tmp, sr->r->pool, 4096, 64 * 1024 * 1024)
           != APR_SUCCESS
        || comet_render_poll(buf, tmp, sr->epoch, sr->ids, seqs,
                             (apr_size_t)sr->nchan,
                             (const comet_read_t *const *)reads, missed,
                             SUB_ANSWER_NOW, &complete) != APR_SUCCESS) {
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    if (!complete || tmp->len > SUB_ANSWER_NOW) {
        return DECLINED;
    }
    unsubscribe_all(sr);
    stream_headers(sr);
    ap_set_content_length(sr->r, (apr_off_t)buf->len);
    ap_rwrite(buf->data, (int)buf->len, sr->r);
    return OK;
}

/* Only httpd's own framing filters may sit between us and the socket when
 * the hub writes to it directly. */
static int filters_allow_detach(sub_req_t *sr)
{
    request_rec *r = sr->r;
    static const char *const known[] = {
        "old_write", "chunk", "http_header", "http_outerror", "byterange",
        "content_length", "core", "log_input_output", "req_core",
        "reqtimeout", "eor", "ssl/tls filter", "ssl/tls coalescing filter",
        NULL
    };
    ap_filter_t *f;

    for (f = r->output_filters; f; f = f->next) {
        int ok = 0;

        for (int i = 0; known[i]; i++) {
            ok |= !strcasecmp(f->frec->name, known[i]);
        }
        if (!ok) {
            COMET_SUB_LOG(r, APLOG_DEBUG, 0, 0401, sr->ids[0], "filter %s "
                          "on the way out: the subscriber is not detached",
                          f->frec->name);
            return 0;
        }
    }
    return 1;
}

/* Checked before the head is sent (a TLS session that cannot be taken
 * over means a suspended subscriber, which is prepared before the head). */
static int can_detach(sub_req_t *sr)
{
    request_rec *r = sr->r;
    const char *why;

    if (r->proto_num < HTTP_VERSION(1, 1) || r->connection->master
        || r->header_only || !filters_allow_detach(sr)) {
        return 0;
    }
    if (ap_ssl_conn_is_ssl(r->connection)
        && (why = comet_takeover_refusal(r)) != NULL) {
        COMET_SUB_LOG(r, APLOG_DEBUG, 0, 0412, sr->ids[0], "TLS session "
                      "not taken over (%s): the subscriber is suspended",
                      why);
        return 0;
    }
    return 1;
}

/* Through httpd's filters, flushed.  The handler sends only the head and
 * SSE's retry line this way (small, and the client has just asked for
 * them); a held subscriber's thread sends its stream (it is that stream's
 * own thread). */
static apr_status_t send_now(request_rec *r, const char *data, apr_size_t len)
{
    if (len && ap_rwrite(data, (int)len, r) < 0) {
        return APR_EGENERAL;
    }
    return ap_rflush(r) < 0 ? APR_EGENERAL : APR_SUCCESS;
}

/* ---- a long-poll's held-back head ------------------------------------------------ */

/* A detached long-poll does not send its head when it parks: the hub
 * sends it with the answer, in one send, so that the client wakes once per
 * poll and the loopback or network path carries one segment instead of
 * two (the client waits for the whole answer anyway).  The head is
 * generated by httpd's filters as usual and captured just above the core
 * output filter.  A head larger than the hub takes is let through. */

static ap_filter_rec_t *head_capture_handle;

typedef struct head_capture_t {
    char        data[COMET_HUB_HEAD_MAX];
    apr_size_t  len;
    int         passed;     /* too large: let through, nothing held back */
    ap_filter_t *below;     /* where a head that is not parked goes      */
} head_capture_t;

static apr_status_t head_capture_filter(ap_filter_t *f,
                                        apr_bucket_brigade *bb)
{
    head_capture_t *hc = f->ctx;
    apr_bucket *e;

    if (hc->passed) {
        return ap_pass_brigade(f->next, bb);
    }
    for (e = APR_BRIGADE_FIRST(bb); e != APR_BRIGADE_SENTINEL(bb);
         e = APR_BUCKET_NEXT(e)) {
        const char *d;
        apr_size_t n;
        apr_status_t rv;

        if (APR_BUCKET_IS_METADATA(e)) {
            continue;
        }
        if ((rv = apr_bucket_read(e, &d, &n, APR_BLOCK_READ))
            != APR_SUCCESS) {
            return rv;
        }
        if (n > sizeof(hc->data) - hc->len) {
            /* What was held back goes first, then the rest as it came. */
            apr_bucket *b = apr_bucket_transient_create(hc->data, hc->len,
                                                        f->c->bucket_alloc);

            hc->passed = 1;
            APR_BRIGADE_INSERT_HEAD(bb, b);
            return ap_pass_brigade(f->next, bb);
        }
        memcpy(hc->data + hc->len, d, n);
        hc->len += n;
    }
    apr_brigade_cleanup(bb);
    return APR_SUCCESS;
}

void comet_sub_register_filter(void)
{
    head_capture_handle = ap_register_output_filter("COMET_HEAD_HELD",
                                                    head_capture_filter,
                                                    NULL,
                                                    AP_FTYPE_NETWORK - 1);
}

/* Generate the head through httpd's filters without sending it.  On
 * success *hc holds it, or says it was sent after all (passed). */
static apr_status_t hold_head(request_rec *r, head_capture_t **out)
{
    head_capture_t *hc = apr_palloc(r->pool, sizeof(*hc));
    ap_filter_t *f;
    apr_status_t rv;

    hc->len = 0;
    hc->passed = 0;
    f = ap_add_output_filter_handle(head_capture_handle, hc, r,
                                    r->connection);
    if (!f) {
        return APR_EGENERAL;
    }
    hc->below = f->next;
    rv = send_now(r, NULL, 0);
    ap_remove_output_filter(f);
    *out = hc;
    return rv;
}

/* The subscriber is not parked after all: its held head goes out now, so
 * that the response httpd ends is whole. */
static void release_head(request_rec *r, const head_capture_t *hc)
{
    conn_rec *c = r->connection;
    apr_bucket_brigade *bb;

    if (!hc || hc->passed || !hc->len) {
        return;
    }
    bb = apr_brigade_create(r->pool, c->bucket_alloc);
    APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_transient_create(hc->data,
                                                            hc->len,
                                                            c->bucket_alloc));
    APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_flush_create(c->bucket_alloc));
    ap_pass_brigade(hc->below, bb);
    apr_brigade_cleanup(bb);
}

/* Whether a detached long-poll's connection may outlive its answer. */
static int keep_longpoll(const sub_req_t *sr)
{
    request_rec *r = sr->r;

    return sr->transport == COMET_T_LONGPOLL && comet_keep_enabled()
           && comet_dir_longpoll_keepalive(sr->dc)
           && !ap_ssl_conn_is_ssl(r->connection)
           && r->proto_num >= HTTP_VERSION(1, 1);
}

static void fill_spec(sub_req_t *sr, comet_hub_spec_t *spec)
{
    memset(spec, 0, sizeof(*spec));
    spec->fd = -1;
    spec->transport = sr->transport;
    spec->nchan = (apr_size_t)sr->nchan;
    spec->refs = sr->refs;
    spec->ids = sr->ids;
    spec->seqs = sr->seqs;
    spec->start = position_start(sr);
    spec->later = sr->later;
    spec->interval = sr->transport == COMET_T_LONGPOLL
                     ? comet_dir_subscriber_timeout(sr->dc)
                     : comet_dir_keepalive(sr->dc);
    spec->tag = sr->quota_tag;
    spec->linger_ms = sr->transport == COMET_T_LONGPOLL
                      ? comet_dir_longpoll_linger(sr->dc) : 0;
}

static int park_detached(sub_req_t *sr, comet_hub_t *hub,
                         const head_capture_t *hc)
{
    request_rec *r = sr->r;
    conn_rec *c = r->connection;
    apr_os_sock_t osfd;
    comet_hub_spec_t spec;
    comet_hub_sub_t *handle;
    apr_status_t rv;
    int fd;

    if (ap_ssl_conn_is_ssl(c)) {
        fill_spec(sr, &spec);
        spec.chunked = r->chunked;
        if ((rv = comet_takeover_start(r, hub, &spec)) != APR_SUCCESS) {
            COMET_SUB_LOG(r, APLOG_INFO, rv, 0411, sr->ids[0], "cannot take "
                          "the TLS session over; ending the response");
            return OK;
        }
        /* The connection's record owns the subscriptions (and what they
         * count against the client's quota) now; the hub gets them when
         * httpd has let go of the connection. */
        handed_to_hub(sr);
        return OK;
    }
    if (apr_os_sock_get(&osfd, ap_get_conn_socket(c)) != APR_SUCCESS
        || (fd = fcntl(osfd, F_DUPFD_CLOEXEC, 0)) < 0) {
        release_head(r, hc);
        return DONE;
    }
    fill_spec(sr, &spec);
    spec.fd = fd;
    /* httpd chose the framing when it sent the head: chunked for HTTP/1.1
     * unless something ruled it out, else the body ends at close. */
    spec.chunked = r->chunked;
    /* The head allowed keep-alive (keep_longpoll below): the hub keeps
     * the connection after the answer; c->keepalives counts the requests
     * for MaxKeepAliveRequests. */
    if (sr->transport == COMET_T_LONGPOLL && c->keepalive == AP_CONN_KEEPALIVE
        && r->chunked && c->keepalives > 0) {
        spec.keep = (apr_uint32_t)c->keepalives;
    }
    if (hc && !hc->passed) {
        spec.head = hc->data;
        spec.head_len = hc->len;
    }
    rv = comet_hub_adopt(hub, &spec, &handle);
    if (rv != APR_SUCCESS) {
        close(fd);
        release_head(r, hc);
        COMET_SUB_LOG(r, APLOG_INFO, rv, 0403, sr->ids[0], "the hub is full "
                      "or stopping; ending the response");
        return OK;
    }
    handed_to_hub(sr);
    /* httpd must neither write the last chunk nor shut the socket down: the
     * stream is the hub's now.  It logs the request and closes its own
     * descriptor only. */
    c->keepalive = AP_CONN_CLOSE;
    c->aborted = 1;
    return OK;
}

/* ---- held subscribers (bytes through httpd's filters) ----------------------------- */

typedef struct held_t {
    apr_thread_mutex_t *mu;
    apr_thread_cond_t  *cv;
    comet_buf_t        *out;
    apr_size_t          writing;   /* bytes the thread is sending now    */
    int                 last;      /* the hub ended the stream           */
    int                 closed;    /* the hub called close: done with us */
    int                 overflow;
    int                 notify;    /* the hub waits for all to leave     */
} held_t;

/* The held subscriber's sink.  Hub thread. */
static apr_status_t held_write(void *baton, const char *data, apr_size_t len,
                               int flags, apr_size_t *held)
{
    held_t *h = baton;
    apr_status_t rv = APR_SUCCESS;

    apr_thread_mutex_lock(h->mu);
    if (len && (rv = comet_buf_append(h->out, data, len)) != APR_SUCCESS) {
        h->overflow = 1;
    }
    h->last |= !!(flags & COMET_HUB_SINK_LAST);
    *held = h->out->len + h->writing;
    if ((flags & COMET_HUB_SINK_NOTIFY) && *held) {
        /* park_held calls comet_hub_room once all has left. */
        h->notify = 1;
    }
    if (len) {
        apr_thread_cond_signal(h->cv);
    }
    apr_thread_mutex_unlock(h->mu);
    return rv;
}

static void held_close(void *baton)
{
    held_t *h = baton;

    apr_thread_mutex_lock(h->mu);
    h->closed = 1;
    apr_thread_cond_signal(h->cv);
    apr_thread_mutex_unlock(h->mu);
}

static const comet_hub_sink_t held_sink = { held_write, held_close };

/* Held subscribers each keep a worker thread; at most half of a process's
 * threads may be held, so that ordinary requests are always served. */

static apr_uint32_t held_limit(void)
{
    int threads = 0;

    ap_mpm_query(AP_MPMQ_MAX_THREADS, &threads);
    return threads > 2 ? (apr_uint32_t)threads / 2 : 1;
}

/* How often a held subscriber looks whether its client is still there. */
#define HELD_POLL apr_time_from_msec(250)

/* True when the client has closed its side of a connection of its own (a
 * stream of HTTP/2 shares its socket with others: there httpd sets
 * c->aborted instead).  Nothing is read: the bytes stay for the filters. */
static int peer_left(conn_rec *c)
{
    apr_os_sock_t fd;
    struct pollfd p;

    if (c->master
        || apr_os_sock_get(&fd, ap_get_conn_socket(c)) != APR_SUCCESS) {
        return 0;
    }
    p.fd = fd;
    p.events = POLLRDHUP;
    p.revents = 0;
    return poll(&p, 1, 0) > 0
           && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

/* Reserve a place for a held subscriber; 0 when the process has none. */
static int held_reserve(void)
{
    if (apr_atomic_inc32(&comet_status_live()->held) >= held_limit()) {
        apr_atomic_dec32(&comet_status_live()->held);
        return 0;
    }
    return 1;
}

/* ---- suspended subscribers (see mod_comet_susp.c) ------------------------------------ */

static int park_suspended(sub_req_t *sr, comet_hub_t *hub, comet_buf_t *buf)
{
    request_rec *r = sr->r;
    comet_hub_spec_t spec;
    int rc;

    comet_susp_prepare(r);
    if (send_now(r, buf->data, buf->len) != APR_SUCCESS
        || r->connection->aborted) {
        /* Trap: never suspend a connection httpd already knows is gone. */
        comet_susp_unreserve();
        return OK;
    }
    fill_spec(sr, &spec);
    rc = comet_susp_park(r, hub, &spec, comet_config_max_pending(r->server));
    if (rc == SUSPENDED) {
        handed_to_hub(sr);
        COMET_SUB_LOG(r, APLOG_DEBUG, 0, 0404, sr->ids[0],
                      "parked (suspended)");
    }
    return rc;
}

static int park_held(sub_req_t *sr, comet_hub_t *hub)
{
    request_rec *r = sr->r;
    apr_size_t max_pending = comet_config_max_pending(r->server);
    comet_hub_spec_t spec;
    comet_hub_sub_t *handle;
    comet_buf_t *spare;
    held_t h;
    int cancelled = 0;

    memset(&h, 0, sizeof(h));
    /* The hub hands over at most max_pending plus one write of at most
     * max_pending (comet_hub.h); past this something is wrong. */
    if (apr_thread_mutex_create(&h.mu, APR_THREAD_MUTEX_DEFAULT, r->pool)
        || apr_thread_cond_create(&h.cv, r->pool)
        || comet_buf_create(&h.out, r->pool, 0, 2 * max_pending + 65536)
        || comet_buf_create(&spare, r->pool, 0, 2 * max_pending + 65536)) {
        return OK;
    }
    fill_spec(sr, &spec);
    spec.sink = &held_sink;
    spec.sink_baton = &h;
    if (comet_hub_adopt(hub, &spec, &handle) != APR_SUCCESS) {
        return OK;
    }
    handed_to_hub(sr);
    apr_thread_mutex_lock(h.mu);
    for (;;) {
        /* Bytes first: the hub's last write comes right before its close,
         * and must still reach the client. */
        if (h.out->len && !cancelled) {
            comet_buf_t *tmp = h.out;

            h.out = spare;
            spare = tmp;
            h.writing = spare->len;
            apr_thread_mutex_unlock(h.mu);
            if (send_now(r, spare->data, spare->len) != APR_SUCCESS
                || r->connection->aborted) {
                COMET_SUB_LOG(r, APLOG_INFO, 0, 0414, sr->ids[0], "held "
                              "stream: the client is gone or does not read "
                              "(%" APR_SIZE_T_FMT " bytes unsent)",
                              spare->len);
                apr_thread_mutex_lock(h.mu);
                if (!h.closed) {
                    comet_hub_cancel(hub, handle);
                }
                cancelled = 1;
            }
            else {
                apr_thread_mutex_lock(h.mu);
            }
            h.writing = 0;
            comet_buf_truncate(spare, 0);
            if (spare->cap > 1024 * 1024) {
                /* A backlog or a large message made it big. */
                comet_buf_release(spare);
            }
            if (!h.out->len && h.notify && !h.closed && !cancelled) {
                /* Under h.mu and before close: see comet_hub_room. */
                h.notify = 0;
                comet_hub_room(hub, handle);
            }
            continue;
        }
        if (h.closed) {
            break;
        }
        if (!cancelled && (h.overflow || r->connection->aborted
                           || peer_left(r->connection))) {
            /* Under h.mu and before close: see comet_hub_cancel. */
            comet_hub_cancel(hub, handle);
            cancelled = 1;
        }
        apr_thread_cond_timedwait(h.cv, h.mu, HELD_POLL);
    }
    apr_thread_mutex_unlock(h.mu);
    return OK;
}

/* ---- WebSocket subscribers (see mod_comet_ws.c) ------------------------------------ */

static int park_websocket(sub_req_t *sr, comet_hub_t *hub)
{
    comet_hub_spec_t spec;
    int rc, adopted;

    /* What is due (a backlog, the missed signal) is the hub's to send, as
     * for a detached stream. */
    fill_spec(sr, &spec);
    rc = comet_ws_park(sr->r, sr->dc, hub, &spec, &adopted);
    if (adopted) {
        handed_to_hub(sr);
    }
    return rc;
}

/* 503: this process has no room for another subscriber now. */
static int refuse_busy(request_rec *r, const char *why)
{
    apr_table_setn(r->err_headers_out, "Retry-After", "5");
    return comet_refuse(r, HTTP_SERVICE_UNAVAILABLE, why);
}

/* True when the process holds CometMaxSubscribers already. */
static int process_full(request_rec *r, comet_hub_t *hub)
{
    apr_uint32_t max = comet_config_max_subscribers(r->server);

    return max && comet_hub_count(hub) >= max;
}

/* ---- the handler ------------------------------------------------------------------- */

int comet_subscriber_handler(request_rec *r)
{
    const comet_dir_conf_t *dc = comet_config_dir(r);
    comet_store_t *store = comet_proc_store();
    comet_hub_t *hub = comet_bridge_hub();
    apr_uint32_t slot;
    sub_req_t *sr;
    comet_read_t **reads;
    comet_buf_t *buf;
    head_capture_t *hc = NULL;
    apr_status_t sent;
    int rc, any, more, detach, suspend;

    if (!store || !comet_proc_slot(&slot) || !hub) {
        return HTTP_SERVICE_UNAVAILABLE;
    }
    r->allowed = (AP_METHOD_BIT << M_GET) | (AP_METHOD_BIT << M_OPTIONS);
    /* In r->pool, not on the stack: a cleanup of r->pool refers to it, and
     * r->pool goes after this function has returned. */
    sr = apr_pcalloc(r->pool, sizeof(*sr));
    sr->r = r;
    sr->dc = dc;
    sr->store = store;
    sr->slot = slot;
    sr->epoch = comet_store_epoch(store);

    if (r->method_number == M_OPTIONS) {
        /* A browser of another origin reads the stream only if allowed
         * (the browser enforces it): nothing to refuse here. */
        comet_request_cors(r, dc);
        if (apr_table_get(r->headers_out, "Access-Control-Allow-Origin")) {
            apr_table_setn(r->headers_out, "Access-Control-Allow-Methods",
                           "GET, OPTIONS");
            apr_table_setn(r->headers_out, "Access-Control-Allow-Headers",
                           "Last-Event-ID, Cache-Control, Accept");
            apr_table_setn(r->headers_out, "Access-Control-Max-Age",
                           "86400");
        }
        apr_table_setn(r->headers_out, "Allow", "GET, OPTIONS");
        r->status = HTTP_NO_CONTENT;
        return OK;
    }
    if (r->method_number != M_GET) {
        return HTTP_METHOD_NOT_ALLOWED;
    }
    if (comet_ws_wanted(r)) {
        /* Refused before the upgrade with an HTTP status; once it is
         * good, every refusal is a close frame (mod_comet_ws.h). */
        if ((rc = comet_ws_check(r, dc)) != OK) {
            return comet_error_response(r, rc);
        }
        sr->transport = COMET_T_WS;
    }
    if ((rc = comet_request_channels(r, dc, comet_dir_max_channels(dc),
                                     &sr->ids, &sr->nchan)) != OK
        || (sr->transport != COMET_T_WS
            && (rc = comet_request_transport(r, dc, &sr->args,
                                             &sr->transport)) != OK)) {
        goto refused;
    }
    if (sr->transport == COMET_T_WS && !comet_ws_wanted(r)) {
        sr->transport = 0;
        rc = comet_refuse(r, HTTP_BAD_REQUEST, "the websocket transport "
                          "needs a WebSocket handshake (Upgrade: websocket)");
        goto refused;
    }
    sr->refs = apr_pcalloc(r->pool, sizeof(*sr->refs) * (apr_size_t)sr->nchan);
    sr->seqs = apr_pcalloc(r->pool, sizeof(*sr->seqs) * (apr_size_t)sr->nchan);
    if ((rc = parse_position(sr)) != OK) {
        goto refused;
    }
    comet_request_cors(r, dc);
    if (r->header_only) {
        stream_headers(sr);
        return OK;
    }
    if (process_full(r, hub)) {
        rc = refuse_busy(r, "too many subscribers in this process "
                         "(CometMaxSubscribers)");
        goto refused;
    }
    if ((rc = subscribe_all(sr)) != OK) {
        goto refused;
    }
    /* Whatever way this ends before the hub takes over, the store must not
     * keep counting this subscriber. */
    apr_pool_cleanup_register(r->pool, sr, unsubscribe_cleanup,
                              apr_pool_cleanup_null);
    if (comet_shared_enabled()) {
        sync_redis(sr);
    }

    if (sr->transport == COMET_T_LONGPOLL) {
        reads = apr_pcalloc(r->pool, sizeof(*reads) * (apr_size_t)sr->nchan);
        read_due(sr, reads, &any, &more);
        if (any && !more && (rc = answer_poll_now(sr, reads)) != DECLINED) {
            return rc;
        }
    }
    if (sr->transport == COMET_T_WS) {
        return park_websocket(sr, hub);
    }

    /* A parked subscriber's connection ends with its stream, but a
     * detached plain long-poll's may be kept for the next request (as
     * KeepAlive and the client allow).  Said in the header rather than by
     * c->keepalive, which would also make httpd drop the chunked coding
     * that lets a client see a clean end. */
    detach = can_detach(sr);
    if (!(detach && keep_longpoll(sr))) {
        apr_table_setn(r->headers_out, "Connection", "close");
    }
    stream_headers(sr);
    /* The head and SSE's retry line; everything else is the hub's. */
    if (comet_buf_create(&buf, r->pool, 64, 64) != APR_SUCCESS) {
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    if (sr->transport == COMET_T_SSE) {
        comet_frame_sse_retry(buf, 3000);
    }
    suspend = !detach && comet_susp_possible(r);
    if (suspend && !comet_susp_reserve(r)) {
        rc = refuse_busy(r, "too many suspended subscribers in this "
                         "process (the event MPM's connection limit)");
        goto refused;
    }
    if (suspend) {
        return park_suspended(sr, hub, buf);
    }
    if (!detach && r->connection->master
        && comet_dir_http2(dc) != COMET_H2_HOLD) {
        /* An HTTP/2 stream cannot be detached or suspended. */
        unsubscribe_all(sr);
        if (comet_dir_http2(dc) == COMET_H2_REFUSE) {
            rc = comet_refuse(r, HTTP_SERVICE_UNAVAILABLE, "subscriptions "
                              "over HTTP/2 are not served here (CometHTTP2 "
                              "refuse); use HTTP/1.1");
            goto refused;
        }
        /* mod_http2 resets the stream with HTTP_1_1_REQUIRED, and the
         * client retries over HTTP/1.1. */
        COMET_SUB_LOG(r, APLOG_DEBUG, 0, 0413, sr->ids[0], "HTTP/2: asking "
                      "the client to retry over HTTP/1.1 (CometHTTP2 "
                      "downgrade)");
        apr_table_setn(r->notes, "ssl-renegotiate-forbidden", "comet");
        return HTTP_FORBIDDEN;
    }
    if (!detach && !held_reserve()) {
        COMET_SUB_LOG(r, APLOG_WARNING, 0, 0405, sr->ids[0], "refused, %u "
                      "subscribers that need a worker thread (HTTP/2) are "
                      "held in this process already; serve comet locations "
                      "over HTTP/1.1 to hold more", held_limit());
        rc = refuse_busy(r, "too many subscribers that need a worker "
                         "thread in this process");
        goto refused;
    }
    if (detach && sr->transport == COMET_T_LONGPOLL && !buf->len
        && !ap_ssl_conn_is_ssl(r->connection)) {
        sent = hold_head(r, &hc);
    }
    else {
        sent = send_now(r, buf->data, buf->len);
    }
    if (sent != APR_SUCCESS || r->connection->aborted) {
        /* Trap: never park a connection httpd already knows is gone. */
        rc = OK;
    }
    else if (detach) {
        COMET_SUB_LOG(r, APLOG_DEBUG, 0, 0406, sr->ids[0],
                      "parked (detached%s)",
                      ap_ssl_conn_is_ssl(r->connection) ? ", TLS" : "");
        return park_detached(sr, hub, hc);
    }
    else {
        COMET_SUB_LOG(r, APLOG_DEBUG, 0, 0407, sr->ids[0],
                      "parked (held)");
        rc = park_held(sr, hub);
    }
    if (!detach) {
        apr_atomic_dec32(&comet_status_live()->held);
    }
    return rc;

refused:
    if (sr->transport == COMET_T_WS) {
        return comet_ws_refuse(r, rc);
    }
    return comet_error_response(r, rc);
}
