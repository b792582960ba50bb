/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet_takeover.c -- TLS subscribers detached like plain ones.
 *
 * mod_ssl hands every new TLS connection's SSL to the modules that ask,
 * through its optional pre_handshake hook; we keep it in the connection's
 * record.  For a subscriber the hub takes that session over once the
 * response head is out, and httpd ends its side of the connection as it
 * does for an aborted one, without writing a byte more.  The order of
 * events is everything here:
 *
 *   handler (request thread), head and first bytes flushed, checks passed
 *   (comet_takeover_refusal): a dup() of the socket (httpd closes its own
 *   descriptor before c->pool goes); a reference on the SSL (mod_ssl's
 *   SSL_free then only drops its own); quiet shutdown set (mod_ssl's
 *   close_notify becomes a no-op that only sets flags); r->eos_sent (no
 *   EOS, so no last chunk through mod_ssl); keep-alive off (nothing reads
 *   through mod_ssl again: a read would take the hub's records); the
 *   guard filter below mod_ssl; the subscriptions move to this record.
 *
 *   httpd then ends the request and the connection the ordinary way: EOR
 *   (the access log line: 200, the bytes of the subscribe), FLUSH + EOC.
 *   mod_ssl's output filter meets the EOC first: its quiet shutdown, its
 *   own reference on the client certificate dropped (it leaks when the
 *   connection is merely marked aborted), its SSL_free.  The EOC then
 *   reaches the guard, which sets c->aborted, so that the lingering close
 *   closes httpd's descriptor without shutdown().  Any data that reaches
 *   the guard after the takeover means mod_ssl wrote after all: the stream
 *   is poisoned, c->aborted is not set, nothing is adopted.
 *
 *   c->pool's cleanups run last in, first out.  Ours was registered in
 *   pre_handshake, before mod_ssl registered its own cleanup (mod_ssl
 *   runs the hook right after SSL_new), so ours runs after it: nothing of
 *   httpd refers to the SSL any more.  Only then is the session detached
 *   (comet_tls_detach: callbacks and application data cleared, a socket
 *   BIO on our descriptor) and adopted by the hub.
 *
 * What falls back to the suspended path: no session from pre_handshake
 * (mod_ssl absent or without the hook, another TLS module), a session not
 * bound to this connection or not established, unread input, SSLKEYLOGFILE
 * (mod_ssl's key-log callback reads the connection without a check, and
 * TLS 1.3 key updates would call it), CometTLSDetach off.
 *
 * Threads: the hook, the handler's part, the guard and the cleanup run on
 * the thread serving the connection (a request thread); only the hub
 * thread touches the session after the adoption.
 */

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
#include <apr_optional_hooks.h>

#include <openssl/ssl.h>

#include "mod_comet.h"
#include "mod_comet_config.h"
#include "mod_comet_quota.h"
#include "mod_comet_takeover.h"
#include "comet_tls.h"
#include "comet_ws.h"

APLOG_USE_MODULE(comet);

/* mod_ssl's hook (modules/ssl/mod_ssl_openssl.h, which Debian's
 * apache2-dev does not ship).  APR_OPTIONAL_HOOK names the type
 * <ns>_HOOK_<name>_t; the hook is found by its name, "pre_handshake". */
typedef int comet_ssl_HOOK_pre_handshake_t(conn_rec *c, SSL *ssl,
                                           int is_proxy);

/* Per TLS connection, in c->pool. */
typedef struct takeover_t {
    SSL              *ssl;        /* mod_ssl's, from pre_handshake      */
    server_rec       *s;          /* for logs once c is gone            */
    long              conn_id;
    int               fd;         /* our dup(), -1 until taken          */
    unsigned          taken:1;    /* the subscriber's: adopt in cleanup */
    unsigned          eoc_seen:1;
    unsigned          poisoned:1; /* data passed the guard after taking */
    comet_hub_t      *hub;
    comet_hub_spec_t  spec;       /* arrays in c->pool                  */
} takeover_t;

static ap_filter_rec_t *takeover_guard_handle;

/* ---- the connection's record and its end ------------------------------------------- */

static void takeover_unsubscribe(takeover_t *t)
{
    comet_store_t *store = comet_proc_store();
    apr_uint32_t slot;
    apr_time_t now = comet_now_mono();

    if (!store || !comet_proc_slot(&slot)) {
        return;
    }
    for (apr_size_t i = 0; i < t->spec.nchan; i++) {
        comet_store_unsubscribe(store, slot, &t->spec.refs[i], now);
    }
    comet_quota_release(NULL, t->spec.tag);
    t->spec.tag = 0;
}

/* c->pool's cleanup, after mod_ssl's: see the top of the file. */
static apr_status_t takeover_cleanup(void *data)
{
    takeover_t *t = data;
    const char *why = NULL;
    apr_status_t rv;

    if (!t->taken) {
        return APR_SUCCESS;
    }
    t->taken = 0;
    if (t->poisoned) {
        why = "mod_ssl wrote on it after the takeover";
    }
    else if (!t->eoc_seen) {
        /* A write failed first (c->aborted): the client is gone, and the
         * socket may have been shut down. */
        why = "the connection ended before its close";
    }
    else if (comet_tls_detach(t->ssl, t->fd) != APR_SUCCESS) {
        why = "no memory for a socket BIO";
    }
    if (!why) {
        t->spec.fd = t->fd;
        t->spec.ssl = t->ssl;
        rv = comet_hub_adopt(t->hub, &t->spec, NULL);
        if (rv == APR_SUCCESS) {
            return APR_SUCCESS;
        }
        /* The hub is stopping (or full): end the stream here, as the hub
         * would, without waiting. */
        if (t->spec.transport == COMET_T_WS) {
            static const char busy[] = "server busy";
            char mem[64];
            comet_buf_t b;
            apr_size_t n;

            comet_buf_wrap(&b, mem, sizeof(mem));
            if (comet_ws_close_frame(&b, 4503, busy, sizeof(busy) - 1)
                == APR_SUCCESS) {
                comet_tls_write(t->ssl, b.data, b.len, &n);
            }
        }
        else if (t->spec.chunked && t->spec.transport != COMET_T_LONGPOLL) {
            apr_size_t n;

            comet_tls_write(t->ssl, "0\r\n\r\n", 5, &n);
        }
        comet_tls_shutdown(t->ssl);
        why = "the hub is full or stopping";
    }
    ap_log_error(APLOG_MARK, APLOG_INFO, 0, t->s, COMET_LOGNO(0801)
                 "channel=%s sub=%ld: TLS session not handed to the hub (%s); "
                 "the stream ends", t->spec.ids[0], t->conn_id, why);
    comet_tls_free(t->ssl);
    close(t->fd);
    t->ssl = NULL;
    t->fd = -1;
    takeover_unsubscribe(t);
    return APR_SUCCESS;
}

static int takeover_pre_handshake(conn_rec *c, SSL *ssl, int is_proxy)
{
    takeover_t *t;

    /* HTTP/2 streams run on secondary connections (c->master) and never
     * get here; backend connections are not ours. */
    if (is_proxy || c->master || !comet_proc_store()) {
        return DECLINED;
    }
    t = apr_pcalloc(c->pool, sizeof(*t));
    t->ssl = ssl;
    t->s = c->base_server;
    t->conn_id = c->id;
    t->fd = -1;
    comet_conn(c, 1)->takeover = t;
    /* Before mod_ssl registers its own: runs after it. */
    apr_pool_cleanup_register(c->pool, t, takeover_cleanup,
                              apr_pool_cleanup_null);
    return DECLINED;
}

/* Below mod_ssl's output filter: see the top of the file. */
static apr_status_t takeover_guard(ap_filter_t *f, apr_bucket_brigade *bb)
{
    takeover_t *t = f->ctx;

    for (apr_bucket *b = APR_BRIGADE_FIRST(bb); b != APR_BRIGADE_SENTINEL(bb);
         b = APR_BUCKET_NEXT(b)) {
        if (AP_BUCKET_IS_EOC(b)) {
            t->eoc_seen = 1;
            if (!t->poisoned) {
                f->c->aborted = 1;
            }
        }
        else if (!APR_BUCKET_IS_METADATA(b) && b->length != 0) {
            t->poisoned = 1;
        }
    }
    return ap_pass_brigade(f->next, bb);
}

void comet_takeover_register_hooks(void)
{
    APR_OPTIONAL_HOOK(comet_ssl, pre_handshake, takeover_pre_handshake, NULL,
                      NULL, APR_HOOK_MIDDLE);
    /* mod_ssl's filter is at CONNECTION + 5, the core's at NETWORK. */
    takeover_guard_handle = ap_register_output_filter("COMET_TLS_GUARD",
                                                      takeover_guard, NULL,
                                                      AP_FTYPE_CONNECTION + 8);
}

/* ---- the handler's part ------------------------------------------------------------ */

/* Input already there, without waiting: 0 none, 1 some (the client
 * pipelined a request), -1 the client has left.  The read also moves raw
 * bytes httpd buffered below mod_ssl into the session, where they travel
 * with it. */
static int input_waiting(conn_rec *c)
{
    apr_bucket_brigade *bb = apr_brigade_create(c->pool, c->bucket_alloc);
    apr_status_t rv;
    apr_off_t len = 0;
    int rc = 0;

    rv = ap_get_brigade(c->input_filters, bb, AP_MODE_SPECULATIVE,
                        APR_NONBLOCK_READ, 1);
    if (rv == APR_SUCCESS) {
        apr_brigade_length(bb, 1, &len);
        rc = len > 0;
    }
    else if (!APR_STATUS_IS_EAGAIN(rv)) {
        rc = -1;
    }
    apr_brigade_destroy(bb);
    return rc;
}

const char *comet_takeover_refusal(request_rec *r)
{
    conn_rec *c = r->connection;
    comet_conn_t *cc = comet_conn(c, 0);
    takeover_t *t = cc ? cc->takeover : NULL;
    SSL *ssl;

    if (!comet_dir_tls_detach(comet_config_dir(r))) {
        return "CometTLSDetach off";
    }
    if (!t || !t->ssl) {
        return "mod_ssl's pre_handshake hook gave no session";
    }
    ssl = t->ssl;
    if (t->taken || !ap_ssl_conn_is_ssl(c) || SSL_get_app_data(ssl) != c) {
        return "the session is not this connection's";
    }
    if (!SSL_is_init_finished(ssl) || SSL_get_shutdown(ssl)) {
        return "the session is not established";
    }
    if (SSL_CTX_get_keylog_callback(SSL_get_SSL_CTX(ssl))) {
        return "SSLKEYLOGFILE is in use";
    }
    if (SSL_pending(ssl) || input_waiting(c) != 0) {
        return "input is waiting, or the client has left";
    }
    return NULL;
}

apr_status_t comet_takeover_start(request_rec *r, comet_hub_t *hub,
                                  const comet_hub_spec_t *spec)
{
    conn_rec *c = r->connection;
    takeover_t *t = comet_conn(c, 1)->takeover;
    apr_os_sock_t osfd;
    comet_chanref_t *refs;
    apr_uint64_t *seqs;
    const char **ids;
    apr_status_t rv;

    if (!t || !t->ssl) {
        return APR_EINVAL;
    }
    if ((rv = apr_os_sock_get(&osfd, ap_get_conn_socket(c))) != APR_SUCCESS) {
        return rv;
    }
    if ((t->fd = fcntl(osfd, F_DUPFD_CLOEXEC, 0)) < 0) {
        return APR_FROM_OS_ERROR(errno);
    }
    /* r->pool goes before c->pool's cleanups run. */
    refs = apr_pmemdup(c->pool, spec->refs, sizeof(*refs) * spec->nchan);
    seqs = apr_pmemdup(c->pool, spec->seqs, sizeof(*seqs) * spec->nchan);
    ids = apr_palloc(c->pool, sizeof(*ids) * spec->nchan);
    for (apr_size_t i = 0; i < spec->nchan; i++) {
        ids[i] = apr_pstrdup(c->pool, spec->ids[i]);
    }
    t->spec = *spec;
    t->spec.refs = refs;
    t->spec.seqs = seqs;
    t->spec.ids = ids;
    if (spec->ws) {
        /* A WebSocket's settings, for the hub; what its client sent is in
         * the socket or the session, nothing was read past the head. */
        comet_hub_ws_spec_t *ws = apr_pmemdup(c->pool, spec->ws,
                                              sizeof(*ws));

        ws->from = ws->from_len ? apr_pmemdup(c->pool, ws->from,
                                              ws->from_len) : NULL;
        ws->preread = NULL;
        ws->preread_len = 0;
        t->spec.ws = ws;
    }
    if (spec->later) {
        t->spec.later = apr_pmemdup(c->pool, spec->later,
                                    sizeof(*spec->later) * spec->nchan);
    }
    t->spec.fd = -1;
    t->spec.ssl = NULL;
    t->hub = hub;
    SSL_up_ref(t->ssl);
    SSL_set_quiet_shutdown(t->ssl, 1);
    r->eos_sent = 1;
    c->keepalive = AP_CONN_CLOSE;
    ap_add_output_filter_handle(takeover_guard_handle, t, NULL, c);
    t->taken = 1;
    return APR_SUCCESS;
}

/* ---- configuration: comet locations that HTTP/2 may serve --------------------------- */

/* The directive at file:line in the configuration tree. */
static const ap_directive_t *directive_at(const ap_directive_t *d,
                                         const char *file, unsigned line)
{
    for (; d; d = d->next) {
        const ap_directive_t *found;

        if ((unsigned)d->line_num == line && d->filename && file
            && !strcmp(d->filename, file) && !strcasecmp(d->directive,
                                                         "SetHandler")) {
            return d;
        }
        if (d->first_child
            && (found = directive_at(d->first_child, file, line)) != NULL) {
            return found;
        }
    }
    return NULL;
}

/* Whether a <Location> section's SetHandler is comet-subscriber (the
 * handler is an expression, evaluated per request: its directive's words
 * tell). */
static int is_subscriber_section(apr_pool_t *p, const core_dir_config *d)
{
    const ap_directive_t *dir;
    const char *args, *w;

    if (!d->expr_handler || !d->expr_handler->filename) {
        return 0;
    }
    dir = directive_at(ap_conftree, d->expr_handler->filename,
                       d->expr_handler->line_number);
    if (!dir || !(args = dir->args)) {
        return 0;
    }
    w = ap_getword_conf(p, &args);
    return !strcasecmp(w, "comet-subscriber");
}

static int speaks_h2(const server_rec *s)
{
    const core_server_config *sc = ap_get_core_module_config(s->module_config);

    for (int i = 0; sc->protocols && i < sc->protocols->nelts; i++) {
        if (!strcasecmp(APR_ARRAY_IDX(sc->protocols, i, const char *),
                        "h2")) {
            return 1;
        }
    }
    return 0;
}

void comet_takeover_post_config(apr_pool_t *ptemp, server_rec *s)
{
    if (!ap_find_linked_module("mod_http2.c")) {
        return;
    }
    for (; s; s = s->next) {
        const core_server_config *sc;

        if (!speaks_h2(s)) {
            continue;
        }
        sc = ap_get_core_module_config(s->module_config);
        for (int i = 0; sc->sec_url && i < sc->sec_url->nelts; i++) {
            ap_conf_vector_t *sec = APR_ARRAY_IDX(sc->sec_url, i,
                                                  ap_conf_vector_t *);
            const core_dir_config *d = ap_get_core_module_config(sec);
            /* A section with no Comet directive has no record of ours:
             * the host's defaults apply. */
            const comet_dir_conf_t *dc = ap_get_module_config(sec,
                                                              &comet_module);
            const char *where;

            /* A section that sets CometHTTP2 is a comet location too
             * (its SetHandler may come from an enclosing one). */
            if (!is_subscriber_section(ptemp, d) && !(dc && dc->http2)) {
                continue;
            }
            if (!dc || !dc->http2) {
                dc = ap_get_module_config(s->lookup_defaults, &comet_module);
            }
            where = d->expr_handler && d->expr_handler->filename
                    ? apr_psprintf(ptemp, " (%s:%u)",
                                   d->expr_handler->filename,
                                   d->expr_handler->line_number) : "";
            ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s, COMET_LOGNO(0802)
                         "comet location %s%s is served by the virtual host "
                         "of %s:%d, whose Protocols include h2: CometHTTP2 "
                         "%s applies to subscriptions over HTTP/2 there (see "
                         "README, \"TLS, HTTP/2 and HTTP/1.0\"); a comet "
                         "host of its own with Protocols http/1.1 avoids it",
                         d->d, where,
                         s->defn_name ? s->defn_name : "the main server",
                         s->defn_line_number,
                         comet_config_http2_name(dc ? comet_dir_http2(dc)
                                                 : COMET_H2_DOWNGRADE));
        }
    }
}
