/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet_req.c -- reading a request to a comet location (see
 * mod_comet_req.h).  What needs no request state is comet_parse.c's.
 */

#include <apr_strings.h>
#include <httpd.h>
#include <http_config.h>
#include <http_core.h>
#include <http_log.h>
#include <http_protocol.h>
#include <http_request.h>
#include <util_script.h>

#include "mod_comet.h"
#include "mod_comet_req.h"
#include "comet_parse.h"

APLOG_USE_MODULE(comet);

#define COMET_REFUSAL_NOTE "comet-error"

int comet_refuse(request_rec *r, int status, const char *why)
{
    apr_table_setn(r->notes, COMET_REFUSAL_NOTE, why);
    return status;
}

const char *comet_refusal(const request_rec *r)
{
    return apr_table_get(r->notes, COMET_REFUSAL_NOTE);
}

int comet_error_response(request_rec *r, int status)
{
    const char *why = comet_refusal(r);

    if (status == HTTP_METHOD_NOT_ALLOWED || !why) {
        return status;
    }
    /* A one-line reason, not httpd's HTML page: clients of a push API read
     * it in a console. */
    r->status = status;
    ap_set_content_type(r, "text/plain; charset=utf-8");
    ap_rprintf(r, "%s\n", why);
    return OK;
}

const char *comet_query_arg(request_rec *r, apr_table_t **args,
                            const char *name)
{
    if (!r->args) {
        return NULL;
    }
    if (!*args) {
        ap_args_to_table(r, args);
    }
    return apr_table_get(*args, name);
}

int comet_request_channels(request_rec *r, const comet_dir_conf_t *dc,
                           int max, const char ***ids, int *n)
{
    const char *spec, *why;

    if (dc->channel_expr) {
        const char *err = NULL;

        spec = ap_expr_str_exec(r, dc->channel_expr, &err);
        if (err) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, COMET_LOGNO(0701)
                          "CometChannel: %s", err);
            return comet_refuse(r, HTTP_INTERNAL_SERVER_ERROR,
                                "CometChannel expression failed");
        }
    }
    else {
        /* The rest of the path after the <Location>; when nothing follows
         * it (a nested <Location /events/room1> that only tunes a
         * directive, or a <LocationMatch>), the last path segment. */
        const char *loc = dc->location;
        apr_size_t ll = loc ? strlen(loc) : 0;

        spec = NULL;
        if (ll && !strncmp(r->uri, loc, ll)) {
            spec = r->uri + ll;
            while (*spec == '/') {
                spec++;
            }
        }
        if (!spec || !*spec) {
            const char *slash = strrchr(r->uri, '/');

            spec = slash ? slash + 1 : r->uri;
        }
    }
    if (comet_parse_channels(r->pool, spec, max,
                             comet_config_max_channel_id(r->server), ids, n,
                             &why) != APR_SUCCESS) {
        return comet_refuse(r, HTTP_BAD_REQUEST, why);
    }
    /* With several channels an untyped message's SSE event name is its
     * channel: a channel named like the server's signals would forge
     * them (the store reserves the same names for event types). */
    for (int i = 0; *n > 1 && i < *n; i++) {
        if (!strncasecmp((*ids)[i], COMET_STORE_EVENT_RESERVED,
                         sizeof(COMET_STORE_EVENT_RESERVED) - 1)) {
            return comet_refuse(r, HTTP_BAD_REQUEST, "a channel id starting "
                                "with comet- cannot share a subscription "
                                "with other channels (its events would "
                                "look like the server's signals)");
        }
    }
    return OK;
}

int comet_request_transport(request_rec *r, const comet_dir_conf_t *dc,
                            apr_table_t **args, int *transport)
{
    const char *why;

    switch (comet_parse_transport(comet_query_arg(r, args, "transport"),
                                  apr_table_get(r->headers_in, "Accept"),
                                  comet_dir_transports(dc), transport,
                                  &why)) {
    case APR_SUCCESS:
        return OK;
    case APR_EACCES:
        return comet_refuse(r, HTTP_NOT_ACCEPTABLE, why);
    default:
        return comet_refuse(r, HTTP_BAD_REQUEST, why);
    }
}

const char *comet_request_location(request_rec *r,
                                   const comet_dir_conf_t *dc)
{
    core_dir_config *cd = ap_get_core_module_config(r->per_dir_config);

    /* Ours names the section only when one of our directives is in it;
     * core's always does. */
    return dc->location ? dc->location : cd && cd->d ? cd->d : r->uri;
}

/* Origin's own value, scheme://host[:port], as a browser writes it for a
 * request it sends to r's server. */
static const char *own_origin(request_rec *r)
{
    const char *host = apr_table_get(r->headers_in, "Host");

    return host ? apr_pstrcat(r->pool, ap_http_scheme(r), "://", host, NULL)
                : NULL;
}

int comet_request_cors(request_rec *r, const comet_dir_conf_t *dc)
{
    const char *allow = dc->allow_origin;
    const char *origin = apr_table_get(r->headers_in, "Origin");
    const char *site = apr_table_get(r->headers_in, "Sec-Fetch-Site");
    const char *own;

    if (allow && *allow && origin) {
        if (!strcmp(allow, "*")) {
            apr_table_setn(r->headers_out, "Access-Control-Allow-Origin",
                           "*");
            return 1;
        }
        apr_table_mergen(r->headers_out, "Vary", "Origin");
        for (const char *p = allow; *p;) {
            const char *w = ap_getword_white(r->pool, &p);

            if (!strcasecmp(w, origin)) {
                apr_table_setn(r->headers_out, "Access-Control-Allow-Origin",
                               origin);
                apr_table_setn(r->headers_out,
                               "Access-Control-Allow-Credentials", "true");
                return 1;
            }
        }
    }
    if (!origin) {
        /* A browser that sends no Origin still tells where the request
         * comes from. */
        return site && !strcasecmp(site, "cross-site")
               ? (allow && !strcmp(allow, "*") ? 1 : -1) : 0;
    }
    own = own_origin(r);
    return own && !strcasecmp(origin, own) ? 0 : -1;
}
