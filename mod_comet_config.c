/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet_config.c -- the Comet* directives: parsing, defaults, merging.
 *
 * Every refusal names the directive; httpd adds the file and line.  The
 * directives run at configuration time only (the parent, or `apache2 -t`);
 * the getters of the values in effect on any thread (they only read).
 */

#include <errno.h>
#include <stdlib.h>
#include <sys/un.h>

#include <apr_strings.h>
#include <httpd.h>
#include <http_config.h>
#include <http_log.h>
#include <http_core.h>

#include "mod_comet.h"
#include "mod_comet_config.h"
#include "comet_render.h"
#include "comet_hub.h"
#include "comet_parse.h"
#include "comet_pubsrv.h"
#include "comet_bus.h"

APLOG_USE_MODULE(comet);

/* Server-wide settings.  Only the main server's record counts: there is
 * one store and one publish socket for the whole httpd. */
typedef struct comet_srv_conf_t {
    apr_size_t    shm_size;            /* CometSharedMemorySize          */
    apr_int64_t   buffer_length;       /* CometMessageBufferLength       */
    apr_time_t    message_timeout;     /* CometMessageTimeout            */
    apr_size_t    max_message_size;    /* CometMaxMessageSize            */
    apr_size_t    max_channel_id;      /* CometMaxChannelIdLength        */
    apr_time_t    channel_idle;        /* CometChannelIdleTimeout        */
    const char   *publish_socket;      /* CometPublishSocket; "" = off   */
    int           socket_mode;         /* CometPublishSocketMode; -1 unset */
    apr_int64_t   socket_clients;      /* CometPublishSocketMaxClients   */
    apr_time_t    socket_timeout;      /* CometPublishSocketTimeout; 0 off */
    apr_time_t    socket_cmd_timeout;  /* CometPublishSocketCommandTimeout */
    apr_size_t    socket_max_input;    /* CometPublishSocketMaxInput     */
    apr_int64_t   max_subscribers;     /* CometMaxSubscribers, per child */
    apr_size_t    max_pending;         /* CometMaxPendingBytes           */
    apr_int64_t   max_new_per_client;  /* CometMaxNewChannelsPerClient;
                                          -1 unset, 0 off                */
    comet_redis_url_t *redis;          /* CometRedis; NULL: off          */
    const char   *redis_password_file; /* CometRedisPasswordFile         */
    int           redis_ready;         /* the password file was read     */
} comet_srv_conf_t;

/* Defaults, documented in README's directive reference. */
#define COMET_DEFAULT_SHM_SIZE        (64 * 1024 * 1024)
#define COMET_DEFAULT_BUFFER_LENGTH   100
#define COMET_DEFAULT_MESSAGE_TIMEOUT apr_time_from_sec(3600)
#define COMET_DEFAULT_MAX_MESSAGE     (256 * 1024)
#define COMET_DEFAULT_MAX_CHANNEL_ID  COMET_CHANNEL_ID_MAX_DEFAULT
#define COMET_DEFAULT_CHANNEL_IDLE    apr_time_from_sec(60)
#define COMET_DEFAULT_SOCKET_NAME     "comet.sock"
#define COMET_DEFAULT_SOCKET_MODE     0660
#define COMET_DEFAULT_SOCKET_CLIENTS  1024
/* The Redis protocol has no authentication here and clients of a local
 * socket reconnect in microseconds: a connection idle for five minutes
 * (Redis' own advice for its "timeout") is let go rather than held. */
#define COMET_DEFAULT_SOCKET_TIMEOUT  apr_time_from_sec(300)
/* A command over a local socket arrives in microseconds; one still
 * unfinished after this is a client that stopped in the middle. */
#define COMET_DEFAULT_SOCKET_CMD_TIMEOUT apr_time_from_sec(10)
#define COMET_DEFAULT_SOCKET_MAX_INPUT (32 * 1024 * 1024)
#define COMET_DEFAULT_MAX_PENDING     (2 * 1024 * 1024)
#define COMET_DEFAULT_KEEPALIVE       apr_time_from_sec(15)
#define COMET_DEFAULT_SUB_TIMEOUT     apr_time_from_sec(30)
#define COMET_DEFAULT_MAX_CHANNELS    64
#define COMET_DEFAULT_NEW_PER_CLIENT  1024
#define COMET_DEFAULT_TLS_DETACH      1
#define COMET_DEFAULT_HTTP2           COMET_H2_DOWNGRADE
#define COMET_DEFAULT_PUBLISH_RATE    10
#define COMET_DEFAULT_PUBLISH_BURST   20

/* ---- value parsers ------------------------------------------------------ */

/* A size (comet_parse_size) in [min, max] bytes. */
static const char *parse_size(cmd_parms *cmd, const char *arg,
                              apr_uint64_t min, apr_uint64_t max,
                              apr_size_t *out)
{
    apr_uint64_t v;

    switch (comet_parse_size(arg, min, max, &v)) {
    case APR_SUCCESS:
        *out = (apr_size_t)v;
        return NULL;
    case APR_ERANGE:
        return apr_psprintf(cmd->pool, "%s: %s is out of range (%"
                            APR_UINT64_T_FMT " to %" APR_UINT64_T_FMT
                            " bytes)", cmd->cmd->name, arg, min, max);
    default:
        return apr_psprintf(cmd->pool, "%s: '%s' is not a size (a number "
                            "of bytes with an optional K, M or G suffix)",
                            cmd->cmd->name, arg);
    }
}

/* A whole number in [min, max]. */
static const char *parse_number(cmd_parms *cmd, const char *arg,
                                apr_int64_t min, apr_int64_t max,
                                apr_int64_t *out)
{
    switch (comet_parse_number(arg, min, max, out)) {
    case APR_SUCCESS:
        return NULL;
    case APR_ERANGE:
        return apr_psprintf(cmd->pool, "%s: %s is out of range (%"
                            APR_INT64_T_FMT " to %" APR_INT64_T_FMT ")",
                            cmd->cmd->name, arg, min, max);
    default:
        return apr_psprintf(cmd->pool, "%s: '%s' is not a whole number",
                            cmd->cmd->name, arg);
    }
}

/* Seconds, a whole number in [min, max]. */
static const char *parse_seconds(cmd_parms *cmd, const char *arg,
                                 apr_int64_t min, apr_int64_t max,
                                 apr_time_t *out)
{
    apr_int64_t v;
    const char *err = parse_number(cmd, arg, min, max, &v);

    if (err) {
        return err;
    }
    *out = apr_time_from_sec(v);
    return NULL;
}

static comet_srv_conf_t *srv_conf(cmd_parms *cmd)
{
    return ap_get_module_config(cmd->server->module_config, &comet_module);
}

/* Store and socket settings exist once per httpd. */
static const char *global_only(cmd_parms *cmd)
{
    return ap_check_cmd_context(cmd, GLOBAL_ONLY);
}

/* ---- server-wide directives ---------------------------------------------- */

static const char *set_shm_size(cmd_parms *cmd, void *dc, const char *arg)
{
    const char *err = global_only(cmd);

    return err ? err : parse_size(cmd, arg, 1024 * 1024,
                                  (apr_uint64_t)64 * 1024 * 1024 * 1024,
                                  &srv_conf(cmd)->shm_size);
}

static const char *set_buffer_length(cmd_parms *cmd, void *dc,
                                     const char *arg)
{
    const char *err = global_only(cmd);

    return err ? err : parse_number(cmd, arg, 1, 1000000,
                                    &srv_conf(cmd)->buffer_length);
}

static const char *set_message_timeout(cmd_parms *cmd, void *dc,
                                       const char *arg)
{
    const char *err = global_only(cmd);

    return err ? err : parse_seconds(cmd, arg, 1, 365 * 86400,
                                     &srv_conf(cmd)->message_timeout);
}

static const char *set_max_message_size(cmd_parms *cmd, void *dc,
                                        const char *arg)
{
    const char *err = global_only(cmd);

    return err ? err : parse_size(cmd, arg, 1, 64 * 1024 * 1024,
                                  &srv_conf(cmd)->max_message_size);
}

static const char *set_max_channel_id(cmd_parms *cmd, void *dc,
                                      const char *arg)
{
    const char *err = global_only(cmd);

    /* What the store can hold: a larger value would pass here and stop
     * the server at its start. */
    return err ? err : parse_size(cmd, arg, 1, COMET_STORE_CHANNEL_ID_MAX,
                                  &srv_conf(cmd)->max_channel_id);
}

static const char *set_channel_idle(cmd_parms *cmd, void *dc,
                                    const char *arg)
{
    const char *err = global_only(cmd);

    return err ? err : parse_seconds(cmd, arg, 1, 365 * 86400,
                                     &srv_conf(cmd)->channel_idle);
}

static const char *set_publish_socket(cmd_parms *cmd, void *dc,
                                      const char *arg)
{
    comet_srv_conf_t *sc = srv_conf(cmd);
    const char *err = global_only(cmd);
    struct sockaddr_un sun;

    if (err) {
        return err;
    }
    if (!strcasecmp(arg, "off")) {
        sc->publish_socket = "";
        return NULL;
    }
    if (!*arg) {
        return apr_psprintf(cmd->pool, "%s: needs a path or 'off'",
                            cmd->cmd->name);
    }
    sc->publish_socket = ap_runtime_dir_relative(cmd->pool, arg);
    if (!sc->publish_socket
        || strlen(sc->publish_socket) >= sizeof(sun.sun_path)) {
        return apr_psprintf(cmd->pool, "%s: path '%s' is longer than a Unix "
                            "socket path may be (%d bytes)", cmd->cmd->name,
                            sc->publish_socket ? sc->publish_socket : arg,
                            (int)sizeof(sun.sun_path) - 1);
    }
    return NULL;
}

static const char *set_socket_mode(cmd_parms *cmd, void *dc, const char *arg)
{
    const char *err = global_only(cmd);
    char *end;
    long v;

    if (err) {
        return err;
    }
    errno = 0;
    v = strtol(arg, &end, 8);
    if (errno || end == arg || *end || v < 0 || v > 0777) {
        return apr_psprintf(cmd->pool, "%s: '%s' is not an octal file mode "
                            "(e.g. 0660)", cmd->cmd->name, arg);
    }
    if (!(v & 0600)) {
        return apr_psprintf(cmd->pool, "%s: mode %s would not let the "
                            "server's own user use the socket",
                            cmd->cmd->name, arg);
    }
    srv_conf(cmd)->socket_mode = (int)v;
    return NULL;
}

static const char *set_socket_clients(cmd_parms *cmd, void *dc,
                                      const char *arg)
{
    const char *err = global_only(cmd);

    return err ? err : parse_number(cmd, arg, 1, 100000,
                                    &srv_conf(cmd)->socket_clients);
}

static const char *set_socket_timeout(cmd_parms *cmd, void *dc,
                                      const char *arg)
{
    const char *err = global_only(cmd);

    if (err) {
        return err;
    }
    if (!strcasecmp(arg, "off")) {
        arg = "0";
    }
    return parse_seconds(cmd, arg, 0, 365 * 86400,
                         &srv_conf(cmd)->socket_timeout);
}

static const char *set_socket_cmd_timeout(cmd_parms *cmd, void *dc,
                                          const char *arg)
{
    const char *err = global_only(cmd);

    return err ? err : parse_seconds(cmd, arg, 1, 3600,
                                     &srv_conf(cmd)->socket_cmd_timeout);
}

static const char *set_socket_max_input(cmd_parms *cmd, void *dc,
                                        const char *arg)
{
    const char *err = global_only(cmd);

    return err ? err : parse_size(cmd, arg, 64 * 1024,
                                  (apr_uint64_t)64 * 1024 * 1024 * 1024,
                                  &srv_conf(cmd)->socket_max_input);
}

static const char *set_max_subscribers(cmd_parms *cmd, void *dc,
                                       const char *arg)
{
    const char *err = global_only(cmd);

    return err ? err : parse_number(cmd, arg, 1, 10000000,
                                    &srv_conf(cmd)->max_subscribers);
}

static const char *set_max_pending(cmd_parms *cmd, void *dc, const char *arg)
{
    const char *err = global_only(cmd);

    return err ? err : parse_size(cmd, arg, 4096, 1024 * 1024 * 1024,
                                  &srv_conf(cmd)->max_pending);
}

static const char *set_max_new_per_client(cmd_parms *cmd, void *dc,
                                          const char *arg)
{
    const char *err = global_only(cmd);

    if (err) {
        return err;
    }
    if (!strcasecmp(arg, "off")) {
        srv_conf(cmd)->max_new_per_client = 0;
        return NULL;
    }
    return parse_number(cmd, arg, 1, 100000000,
                        &srv_conf(cmd)->max_new_per_client);
}

static const char *set_redis(cmd_parms *cmd, void *dc, const char *arg)
{
    const char *err = global_only(cmd);
    comet_srv_conf_t *sc = srv_conf(cmd);
    char why[512];

    if (err) {
        return err;
    }
    if (!strcasecmp(arg, "off")) {
        sc->redis = NULL;
        return NULL;
    }
    /* The text is never repeated: it may hold a password. */
    if (comet_redis_url_parse(&sc->redis, arg, cmd->pool, why, sizeof(why))
        != APR_SUCCESS) {
        sc->redis = NULL;
        return apr_psprintf(cmd->pool, "%s: %s (redis://[user:password@]"
                            "host[:port][/db], unix:/path[?db=N], or "
                            "redis-cluster://host:port,host:port,...)",
                            cmd->cmd->name, why);
    }
    return NULL;
}

static const char *set_redis_password_file(cmd_parms *cmd, void *dc,
                                           const char *arg)
{
    const char *err = global_only(cmd);

    if (err) {
        return err;
    }
    srv_conf(cmd)->redis_password_file = ap_server_root_relative(cmd->pool,
                                                                 arg);
    return NULL;
}

/* ---- per-directory directives ---------------------------------------------- */

/* Comet locations skip the walk of the file system (see mod_comet.c), so
 * <Directory>, <Files> and .htaccess never apply to them: a Comet*
 * directive there would silently do nothing, or, with a comet handler set
 * there too, reach a handler that mod_comet refuses.  Say so at once.
 * (.htaccess is ruled out by the directives' ACCESS_CONF.) */
static const char *location_only(cmd_parms *cmd)
{
    const char *err = ap_check_cmd_context(cmd, NOT_IN_DIRECTORY);
    const ap_directive_t *d;

    if (err) {
        return apr_pstrcat(cmd->pool, err, " (use <Location> or "
                           "<LocationMatch>: comet locations are not "
                           "files)", NULL);
    }
    for (d = cmd->directive ? cmd->directive->parent : NULL; d;
         d = d->parent) {
        if (!strcasecmp(d->directive, "<Files")
            || !strcasecmp(d->directive, "<FilesMatch")) {
            return apr_psprintf(cmd->pool, "%s cannot occur within %s> "
                                "section (use <Location> or "
                                "<LocationMatch>: comet locations are not "
                                "files)", cmd->cmd->name, d->directive);
        }
    }
    return NULL;
}

static const char *set_channel(cmd_parms *cmd, void *mconfig, const char *arg)
{
    comet_dir_conf_t *dc = mconfig;
    const char *err = location_only(cmd);

    if (err) {
        return err;
    }
    dc->channel_expr = ap_expr_parse_cmd(cmd, arg, AP_EXPR_FLAG_STRING_RESULT,
                                         &err, NULL);
    if (err) {
        return apr_psprintf(cmd->pool, "%s: cannot parse expression '%s': %s",
                            cmd->cmd->name, arg, err);
    }
    dc->channel_expr_set = 1;
    return NULL;
}

static const char *set_transports(cmd_parms *cmd, void *mconfig,
                                  const char *args)
{
    comet_dir_conf_t *dc = mconfig;
    const char *w;
    int t = 0;

    if ((w = location_only(cmd)) != NULL) {
        return w;
    }
    while (*(w = ap_getword_conf(cmd->temp_pool, &args))) {
        int one = strcasecmp(w, "all") ? comet_parse_transport_name(w)
                                       : COMET_T_ALL;

        if (!one) {
            return apr_psprintf(cmd->pool, "%s: unknown transport '%s' "
                                "(use sse, longpoll, stream, websocket or all)",
                                cmd->cmd->name, w);
        }
        t |= one;
    }
    if (!t) {
        return apr_psprintf(cmd->pool, "%s: name at least one transport",
                            cmd->cmd->name);
    }
    dc->transports = t;
    return NULL;
}

static const char *set_keepalive(cmd_parms *cmd, void *mconfig,
                                 const char *arg)
{
    comet_dir_conf_t *dc = mconfig;
    const char *err = location_only(cmd);

    if (err) {
        return err;
    }
    if (!strcasecmp(arg, "off")) {
        dc->keepalive = 0;
        return NULL;
    }
    return parse_seconds(cmd, arg, 1, 86400, &dc->keepalive);
}

static const char *set_sub_timeout(cmd_parms *cmd, void *mconfig,
                                   const char *arg)
{
    const char *err = location_only(cmd);

    return err ? err : parse_seconds(cmd, arg, 1, 86400,
                                     &((comet_dir_conf_t *)mconfig)
                                         ->subscriber_timeout);
}

static const char *set_max_channels(cmd_parms *cmd, void *mconfig,
                                    const char *arg)
{
    apr_int64_t v;
    const char *err = location_only(cmd);

    if (!err) {
        err = parse_number(cmd, arg, 1, 1024, &v);
    }
    if (!err) {
        ((comet_dir_conf_t *)mconfig)->max_channels = (int)v;
    }
    return err;
}

static const char *set_allow_origin(cmd_parms *cmd, void *mconfig,
                                    const char *args)
{
    comet_dir_conf_t *dc = mconfig;
    const char *w, *list = "";

    if ((w = location_only(cmd)) != NULL) {
        return w;
    }
    while (*(w = ap_getword_conf(cmd->temp_pool, &args))) {
        if (!strcasecmp(w, "off")) {
            dc->allow_origin = "";
            return NULL;
        }
        if (strcmp(w, "*") && strncasecmp(w, "http://", 7)
            && strncasecmp(w, "https://", 8)) {
            return apr_psprintf(cmd->pool, "%s: '%s' is not an origin (use *, "
                                "off, or origins such as https://example.com)",
                                cmd->cmd->name, w);
        }
        list = *list ? apr_pstrcat(cmd->pool, list, " ", w, NULL)
                     : apr_pstrdup(cmd->pool, w);
    }
    if (!*list) {
        return apr_psprintf(cmd->pool, "%s: needs *, off or a list of "
                            "origins", cmd->cmd->name);
    }
    dc->allow_origin = list;
    return NULL;
}

static const char *set_existing_only(cmd_parms *cmd, void *mconfig, int on)
{
    const char *err = location_only(cmd);

    if (!err) {
        ((comet_dir_conf_t *)mconfig)->existing_only = on ? 1 : 0;
    }
    return err;
}

static const char *set_lp_linger(cmd_parms *cmd, void *mconfig,
                                 const char *arg)
{
    char *end;
    long v = strtol(arg, &end, 10);

    if (end == arg || *end || v < 0 || v > 10000) {
        return apr_psprintf(cmd->pool, "%s: '%s' is not a number of "
                            "milliseconds from 0 to 10000", cmd->cmd->name,
                            arg);
    }
    ((comet_dir_conf_t *)mconfig)->lp_linger = v;
    return NULL;
}

static const char *set_lp_keepalive(cmd_parms *cmd, void *mconfig, int on)
{
    ((comet_dir_conf_t *)mconfig)->lp_keepalive = on;
    return NULL;
}

static const char *set_tls_detach(cmd_parms *cmd, void *mconfig, int on)
{
    const char *err = location_only(cmd);

    if (!err) {
        ((comet_dir_conf_t *)mconfig)->tls_detach = on;
    }
    return err;
}

static const char *const http2_names[] = {
    NULL, "downgrade", "hold", "refuse"
};

const char *comet_config_http2_name(int policy)
{
    return policy >= COMET_H2_DOWNGRADE && policy <= COMET_H2_REFUSE
           ? http2_names[policy] : "?";
}

static const char *set_http2(cmd_parms *cmd, void *mconfig, const char *arg)
{
    const char *err = location_only(cmd);

    if (err) {
        return err;
    }
    for (int i = COMET_H2_DOWNGRADE; i <= COMET_H2_REFUSE; i++) {
        if (!strcasecmp(arg, http2_names[i])) {
            ((comet_dir_conf_t *)mconfig)->http2 = i;
            return NULL;
        }
    }
    return apr_psprintf(cmd->pool, "%s: '%s' is not a policy (use "
                        "downgrade, hold or refuse)", cmd->cmd->name, arg);
}

#define COMET_DIR_CONF (RSRC_CONF | ACCESS_CONF)

static const char *set_client_publish(cmd_parms *cmd, void *mconfig,
                                      int on)
{
    const char *err = location_only(cmd);

    if (!err) {
        ((comet_dir_conf_t *)mconfig)->client_publish = on ? 1 : 0;
    }
    return err;
}

static const char *set_client_identity(cmd_parms *cmd, void *mconfig,
                                       const char *arg)
{
    comet_dir_conf_t *dc = mconfig;
    const char *err = location_only(cmd);

    if (err) {
        return err;
    }
    if (!strcasecmp(arg, "none")) {
        dc->client_identity = NULL;
        dc->client_identity_set = 1;
        return NULL;
    }
    dc->client_identity = ap_expr_parse_cmd(cmd, arg,
                                            AP_EXPR_FLAG_STRING_RESULT,
                                            &err, NULL);
    if (err) {
        return apr_psprintf(cmd->pool, "%s: cannot parse expression '%s': %s",
                            cmd->cmd->name, arg, err);
    }
    dc->client_identity_set = 1;
    return NULL;
}

static const char *set_publish_rate(cmd_parms *cmd, void *mconfig,
                                    const char *rate, const char *burst)
{
    comet_dir_conf_t *dc = mconfig;
    apr_int64_t r, b;
    const char *err = location_only(cmd);

    if (err || (err = parse_number(cmd, rate, 1, 100000, &r))
        || (burst && (err = parse_number(cmd, burst, 1, 1000000, &b)))) {
        return err;
    }
    dc->publish_rate = r;
    dc->publish_burst = burst ? b : 2 * r;
    return NULL;
}

const command_rec comet_cmds[] = {
    AP_INIT_TAKE1("CometSharedMemorySize", set_shm_size, NULL, RSRC_CONF,
                  "Size of the shared memory holding channels and messages "
                  "(default 64M)"),
    AP_INIT_TAKE1("CometMessageBufferLength", set_buffer_length, NULL,
                  RSRC_CONF, "Messages kept per channel (default 100)"),
    AP_INIT_TAKE1("CometMessageTimeout", set_message_timeout, NULL, RSRC_CONF,
                  "Seconds a message is kept (default 3600)"),
    AP_INIT_TAKE1("CometMaxMessageSize", set_max_message_size, NULL,
                  RSRC_CONF, "Largest message accepted (default 256K)"),
    AP_INIT_TAKE1("CometMaxChannelIdLength", set_max_channel_id, NULL,
                  RSRC_CONF, "Longest channel id accepted (default 1024)"),
    AP_INIT_TAKE1("CometChannelIdleTimeout", set_channel_idle, NULL,
                  RSRC_CONF, "Seconds before a channel with no subscribers "
                  "and no messages is removed (default 60)"),
    AP_INIT_TAKE1("CometPublishSocket", set_publish_socket, NULL, RSRC_CONF,
                  "Unix socket for local publishers speaking the Redis "
                  "protocol, or 'off' (default comet.sock in the runtime "
                  "directory)"),
    AP_INIT_TAKE1("CometPublishSocketMode", set_socket_mode, NULL, RSRC_CONF,
                  "File mode of the publish socket (default 0660)"),
    AP_INIT_TAKE1("CometPublishSocketMaxClients", set_socket_clients, NULL,
                  RSRC_CONF, "Publish socket connections per child process "
                  "(default 1024)"),
    AP_INIT_TAKE1("CometPublishSocketTimeout", set_socket_timeout, NULL,
                  RSRC_CONF, "Seconds a publish socket connection may stay "
                  "without a command, or 0 (default 300)"),
    AP_INIT_TAKE1("CometPublishSocketCommandTimeout", set_socket_cmd_timeout,
                  NULL, RSRC_CONF, "Seconds a publish socket command may "
                  "take to arrive once begun (default 10)"),
    AP_INIT_TAKE1("CometPublishSocketMaxInput", set_socket_max_input, NULL,
                  RSRC_CONF, "Bytes of unfinished publish socket commands "
                  "a child holds for all its connections (default 32M)"),
    AP_INIT_TAKE1("CometMaxSubscribers", set_max_subscribers, NULL, RSRC_CONF,
                  "Subscribers per child process before 503"),
    AP_INIT_TAKE1("CometMaxPendingBytes", set_max_pending, NULL, RSRC_CONF,
                  "Unsent bytes per subscriber before it is dropped "
                  "(default 1M)"),
    AP_INIT_TAKE1("CometMaxNewChannelsPerClient", set_max_new_per_client,
                  NULL, RSRC_CONF, "Subscriptions to channels never "
                  "published to that one client address may hold per child "
                  "process, or off (default 1024)"),
    AP_INIT_TAKE1("CometRedis", set_redis, NULL, RSRC_CONF,
                  "Share channels with other servers through Redis: "
                  "redis://[user:password@]host:port[/db], unix:/path, "
                  "redis-cluster://host:port,host:port,... or off (default "
                  "off)"),
    AP_INIT_TAKE1("CometRedisPasswordFile", set_redis_password_file, NULL,
                  RSRC_CONF, "File whose first line is the Redis password "
                  "(read at start, as root)"),
    /* Per location: never in .htaccess, nor (location_only) in
     * <Directory> or <Files>. */
    AP_INIT_TAKE1("CometChannel", set_channel, NULL, COMET_DIR_CONF,
                  "Expression giving the channel id(s), comma separated "
                  "(default: the rest of the URL path)"),
    AP_INIT_RAW_ARGS("CometTransports", set_transports, NULL, COMET_DIR_CONF,
                     "Transports allowed: sse longpoll stream websocket "
                     "(default all)"),
    AP_INIT_TAKE1("CometKeepalive", set_keepalive, NULL, COMET_DIR_CONF,
                  "Seconds between keepalive lines, or off (default 15)"),
    AP_INIT_TAKE1("CometSubscriberTimeout", set_sub_timeout, NULL,
                  COMET_DIR_CONF,
                  "Seconds a long-poll waits for a message (default 30)"),
    AP_INIT_TAKE1("CometMaxChannels", set_max_channels, NULL, COMET_DIR_CONF,
                  "Channels one subscriber may name (default 64)"),
    AP_INIT_RAW_ARGS("CometAllowOrigin", set_allow_origin, NULL,
                     COMET_DIR_CONF,
                     "Origins allowed to subscribe or publish from a "
                     "browser of another origin: *, off or a list (default "
                     "off)"),
    AP_INIT_FLAG("CometSubscribeExistingOnly", set_existing_only, NULL,
                 COMET_DIR_CONF, "Refuse (404) subscriptions to channels "
                 "nobody has published to (default off)"),
    AP_INIT_TAKE1("CometLongPollLinger", set_lp_linger, NULL, COMET_DIR_CONF,
                  "Milliseconds a long-poll with news waits for more before "
                  "answering, so that a burst leaves in one answer (default "
                  "0: at once)"),
    AP_INIT_FLAG("CometLongPollKeepAlive", set_lp_keepalive, NULL,
                 COMET_DIR_CONF, "Keep a plain HTTP/1.1 long-poll's "
                 "connection after its answer, for the client's next "
                 "request, as KeepAlive allows (default on)"),
    AP_INIT_FLAG("CometTLSDetach", set_tls_detach, NULL, COMET_DIR_CONF,
                 "Take over mod_ssl's TLS session so that TLS subscribers "
                 "are detached like plain ones; off: suspend them "
                 "(default on)"),
    AP_INIT_TAKE1("CometHTTP2", set_http2, NULL, COMET_DIR_CONF,
                  "Subscriptions over HTTP/2: downgrade (the client retries "
                  "over HTTP/1.1), hold (a worker thread each, bounded) or "
                  "refuse (503) (default downgrade)"),
    AP_INIT_FLAG("CometClientPublish", set_client_publish, NULL, COMET_DIR_CONF,
                 "Whether WebSocket clients may publish to their channels "
                 "(default off)"),
    AP_INIT_TAKE1("CometClientIdentity", set_client_identity, NULL, COMET_DIR_CONF,
                  "Expression giving the identity stored with what a client "
                  "publishes, e.g. \"%{REMOTE_USER}\" (default none)"),
    AP_INIT_TAKE12("CometClientPublishRate", set_publish_rate, NULL, COMET_DIR_CONF,
                   "Messages per second one WebSocket client may publish, "
                   "and the burst (default 10 20)"),
    { NULL }
};

/* ---- records ------------------------------------------------------------ */

void *comet_create_srv_conf(apr_pool_t *p, server_rec *s)
{
    comet_srv_conf_t *sc = apr_pcalloc(p, sizeof(*sc));

    sc->buffer_length = -1;
    sc->message_timeout = -1;
    sc->channel_idle = -1;
    sc->max_subscribers = -1;
    sc->socket_mode = -1;
    sc->max_new_per_client = -1;
    sc->socket_clients = -1;
    sc->socket_timeout = -1;
    sc->socket_cmd_timeout = -1;
    return sc;
}

void *comet_merge_srv_conf(apr_pool_t *p, void *basev, void *addv)
{
    /* Store and socket settings are GLOBAL_ONLY: a virtual host inherits the
     * main server's record unchanged. */
    return basev;
}

void *comet_create_dir_conf(apr_pool_t *p, char *dir)
{
    comet_dir_conf_t *dc = apr_pcalloc(p, sizeof(*dc));

    dc->location = dir;
    dc->transports = -1;
    dc->keepalive = -1;
    dc->subscriber_timeout = -1;
    dc->max_channels = -1;
    dc->existing_only = -1;
    dc->tls_detach = -1;
    dc->client_publish = -1;
    dc->publish_rate = -1;
    dc->publish_burst = -1;
    dc->lp_keepalive = -1;
    dc->lp_linger = -1;
    return dc;
}

void *comet_merge_dir_conf(apr_pool_t *p, void *basev, void *addv)
{
    comet_dir_conf_t *base = basev, *add = addv;
    comet_dir_conf_t *dc = apr_pcalloc(p, sizeof(*dc));

    dc->location = add->location ? add->location : base->location;
    dc->channel_expr_set = add->channel_expr_set || base->channel_expr_set;
    dc->channel_expr = add->channel_expr_set ? add->channel_expr
                                             : base->channel_expr;
    dc->transports = add->transports != -1 ? add->transports
                                           : base->transports;
    dc->keepalive = add->keepalive != -1 ? add->keepalive : base->keepalive;
    dc->subscriber_timeout = add->subscriber_timeout != -1
                             ? add->subscriber_timeout
                             : base->subscriber_timeout;
    dc->max_channels = add->max_channels != -1 ? add->max_channels
                                               : base->max_channels;
    dc->allow_origin = add->allow_origin ? add->allow_origin
                                         : base->allow_origin;
    dc->existing_only = add->existing_only != -1 ? add->existing_only
                                                 : base->existing_only;
    dc->tls_detach = add->tls_detach != -1 ? add->tls_detach
                                           : base->tls_detach;
    dc->http2 = add->http2 ? add->http2 : base->http2;
    dc->client_publish = add->client_publish != -1 ? add->client_publish
                                                   : base->client_publish;
    dc->client_identity_set = add->client_identity_set
                              || base->client_identity_set;
    dc->client_identity = add->client_identity_set ? add->client_identity
                                                   : base->client_identity;
    dc->publish_rate = add->publish_rate != -1 ? add->publish_rate
                                               : base->publish_rate;
    dc->publish_burst = add->publish_rate != -1 ? add->publish_burst
                                                : base->publish_burst;
    dc->lp_keepalive = add->lp_keepalive != -1 ? add->lp_keepalive
                                               : base->lp_keepalive;
    dc->lp_linger = add->lp_linger != -1 ? add->lp_linger : base->lp_linger;
    return dc;
}

const comet_dir_conf_t *comet_config_dir(const request_rec *r)
{
    return ap_get_module_config(r->per_dir_config, &comet_module);
}

int comet_dir_transports(const comet_dir_conf_t *dc)
{
    return dc->transports == -1 ? COMET_T_ALL : dc->transports;
}

apr_time_t comet_dir_keepalive(const comet_dir_conf_t *dc)
{
    return dc->keepalive == -1 ? COMET_DEFAULT_KEEPALIVE : dc->keepalive;
}

apr_time_t comet_dir_subscriber_timeout(const comet_dir_conf_t *dc)
{
    return dc->subscriber_timeout == -1 ? COMET_DEFAULT_SUB_TIMEOUT
                                        : dc->subscriber_timeout;
}

int comet_dir_max_channels(const comet_dir_conf_t *dc)
{
    return dc->max_channels == -1 ? COMET_DEFAULT_MAX_CHANNELS
                                  : dc->max_channels;
}

int comet_dir_existing_only(const comet_dir_conf_t *dc)
{
    return dc->existing_only == 1;
}

apr_uint32_t comet_dir_longpoll_linger(const comet_dir_conf_t *dc)
{
    return dc->lp_linger > 0 ? (apr_uint32_t)dc->lp_linger : 0;
}

int comet_dir_longpoll_keepalive(const comet_dir_conf_t *dc)
{
    return dc->lp_keepalive != 0;
}

int comet_dir_tls_detach(const comet_dir_conf_t *dc)
{
    return dc->tls_detach == -1 ? COMET_DEFAULT_TLS_DETACH : dc->tls_detach;
}

int comet_dir_http2(const comet_dir_conf_t *dc)
{
    return dc->http2 ? dc->http2 : COMET_DEFAULT_HTTP2;
}

int comet_dir_client_publish(const comet_dir_conf_t *dc)
{
    return dc->client_publish == 1;
}

void comet_dir_publish_rate(const comet_dir_conf_t *dc, apr_uint32_t *rate,
                            apr_uint32_t *burst)
{
    *rate = dc->publish_rate == -1 ? COMET_DEFAULT_PUBLISH_RATE
                                   : (apr_uint32_t)dc->publish_rate;
    *burst = dc->publish_rate == -1 ? COMET_DEFAULT_PUBLISH_BURST
                                    : (apr_uint32_t)dc->publish_burst;
}

apr_status_t comet_config_identity(request_rec *r,
                                   const comet_dir_conf_t *dc,
                                   const char **from)
{
    const char *err = NULL, *v;

    *from = NULL;
    if (!dc->client_identity) {
        return APR_SUCCESS;
    }
    v = ap_expr_str_exec(r, dc->client_identity, &err);
    if (err) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, COMET_LOGNO(0901)
                      "CometClientIdentity: %s", err);
        return APR_EGENERAL;
    }
    if (v && strlen(v) > COMET_STORE_FROM_MAX) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, COMET_LOGNO(0902)
                      "CometClientIdentity gave %" APR_SIZE_T_FMT " bytes, "
                      "more than the %d an identity may have",
                      strlen(v), COMET_STORE_FROM_MAX);
        return APR_EGENERAL;
    }
    *from = v && *v ? v : NULL;
    return APR_SUCCESS;
}

static const comet_srv_conf_t *srv_get(const server_rec *s)
{
    return ap_get_module_config(s->module_config, &comet_module);
}

apr_size_t comet_config_max_message(const server_rec *s)
{
    apr_size_t v = srv_get(s)->max_message_size;

    return v ? v : COMET_DEFAULT_MAX_MESSAGE;
}

apr_size_t comet_config_max_channel_id(const server_rec *s)
{
    apr_size_t v = srv_get(s)->max_channel_id;

    return v ? v : COMET_DEFAULT_MAX_CHANNEL_ID;
}

/* The largest frame a message can become here: what the bound on unsent
 * bytes must let through for a reader that keeps up. */
static apr_size_t frame_max(const server_rec *s)
{
    return comet_render_frame_max(comet_config_max_message(s),
                                  comet_config_max_channel_id(s));
}

apr_size_t comet_config_max_pending(const server_rec *s)
{
    apr_size_t v = srv_get(s)->max_pending, frame;

    if (v) {
        return v;
    }
    frame = frame_max(s);
    return frame > COMET_DEFAULT_MAX_PENDING ? frame
                                             : COMET_DEFAULT_MAX_PENDING;
}

const char *comet_config_check(const server_rec *s, apr_pool_t *p)
{
    apr_size_t pending = srv_get(s)->max_pending, frame = frame_max(s);
    apr_size_t message = comet_config_max_message(s);
    apr_size_t around = frame - 6 * message;

    if (!pending || pending >= frame) {
        const char *path = srv_get(s)->publish_socket;

        /* The publish socket's own, when it is on. */
        return !path || *path ? comet_config_check_socket(s, p) : NULL;
    }
    return apr_psprintf(p, "CometMaxPendingBytes %" APR_SIZE_T_FMT " is below "
                        "the largest frame a message of CometMaxMessageSize %"
                        APR_SIZE_T_FMT " can become (%" APR_SIZE_T_FMT
                        " bytes: SSE and JSON take up to 6 bytes for a payload "
                        "byte), so a subscriber reading at full speed could be "
                        "dropped; raise CometMaxPendingBytes to at least %"
                        APR_SIZE_T_FMT " or lower CometMaxMessageSize to at "
                        "most %" APR_SIZE_T_FMT, pending, message, frame, frame,
                        pending > around ? (pending - around) / 6 : 0);
}

apr_uint32_t comet_config_max_subscribers(const server_rec *s)
{
    apr_int64_t v = srv_get(s)->max_subscribers;

    return v > 0 ? (apr_uint32_t)v : 0;
}

apr_uint32_t comet_config_max_new_per_client(const server_rec *s)
{
    apr_int64_t v = srv_get(s)->max_new_per_client;

    return v == -1 ? COMET_DEFAULT_NEW_PER_CLIENT : (apr_uint32_t)v;
}

int comet_config_socket_mode(const server_rec *s)
{
    int v = srv_get(s)->socket_mode;

    return v >= 0 ? v : COMET_DEFAULT_SOCKET_MODE;
}

apr_uint32_t comet_config_socket_clients(const server_rec *s)
{
    apr_int64_t v = srv_get(s)->socket_clients;

    return v > 0 ? (apr_uint32_t)v : COMET_DEFAULT_SOCKET_CLIENTS;
}

apr_time_t comet_config_socket_timeout(const server_rec *s)
{
    apr_time_t v = srv_get(s)->socket_timeout;

    return v >= 0 ? v : COMET_DEFAULT_SOCKET_TIMEOUT;
}

apr_time_t comet_config_socket_cmd_timeout(const server_rec *s)
{
    apr_time_t v = srv_get(s)->socket_cmd_timeout;

    return v > 0 ? v : COMET_DEFAULT_SOCKET_CMD_TIMEOUT;
}

apr_size_t comet_config_socket_max_input(const server_rec *s)
{
    apr_size_t v = srv_get(s)->socket_max_input;
    apr_size_t four;

    if (v) {
        return v;
    }
    /* Room for a few of the largest commands at once, whatever the
     * message size. */
    four = 4 * comet_pubsrv_command_max(comet_config_max_message(s));
    return four > COMET_DEFAULT_SOCKET_MAX_INPUT
           ? four : COMET_DEFAULT_SOCKET_MAX_INPUT;
}

const char *comet_config_check_socket(const server_rec *s, apr_pool_t *p)
{
    apr_size_t v = srv_get(s)->socket_max_input;
    apr_size_t one = comet_pubsrv_command_max(comet_config_max_message(s));

    if (v && v < one) {
        return apr_psprintf(p, "CometPublishSocketMaxInput %" APR_SIZE_T_FMT
                            " is less than one command may be (%"
                            APR_SIZE_T_FMT " bytes: CometMaxMessageSize "
                            "plus 128K); raise it or lower "
                            "CometMaxMessageSize", v, one);
    }
    return NULL;
}

const char *comet_config_publish_socket(const server_rec *s, apr_pool_t *p)
{
    const char *v = srv_get(s)->publish_socket;

    return v ? v : ap_runtime_dir_relative(p, COMET_DEFAULT_SOCKET_NAME);
}

void comet_config_store(const server_rec *s, comet_store_config_t *cfg,
                        apr_uint32_t procs)
{
    const comet_srv_conf_t *sc = srv_get(s);

    comet_store_config_default(cfg, sc->shm_size ? sc->shm_size
                                                 : COMET_DEFAULT_SHM_SIZE);
    cfg->buffer_length = sc->buffer_length != -1
                         ? (apr_uint32_t)sc->buffer_length
                         : COMET_DEFAULT_BUFFER_LENGTH;
    cfg->message_timeout = sc->message_timeout != -1
                           ? sc->message_timeout
                           : COMET_DEFAULT_MESSAGE_TIMEOUT;
    cfg->max_message_size = comet_config_max_message(s);
    cfg->max_channel_id = comet_config_max_channel_id(s);
    cfg->channel_idle = sc->channel_idle != -1 ? sc->channel_idle
                                               : COMET_DEFAULT_CHANNEL_IDLE;
    cfg->max_procs = procs;
    /* Shared through Redis, every server's store gives a message the same
     * id: one epoch for all. */
    cfg->epoch = sc->redis ? COMET_BUS_EPOCH : 0;
}

const char *comet_config_check_redis(const server_rec *s, apr_pool_t *p)
{
    comet_srv_conf_t *sc = (comet_srv_conf_t *)srv_get(s);
    char why[512];

    if (!sc->redis) {
        return sc->redis_password_file
               ? "CometRedisPasswordFile is set but CometRedis is not" : NULL;
    }
    if (sc->redis_password_file && !sc->redis_ready
        && comet_redis_url_password_file(sc->redis, sc->redis_password_file,
                                         p, why, sizeof(why))
           != APR_SUCCESS) {
        return apr_psprintf(p, "CometRedisPasswordFile: %s", why);
    }
    sc->redis_ready = 1;
    return NULL;
}

const comet_redis_url_t *comet_config_redis(const server_rec *s)
{
    return srv_get(s)->redis;
}
