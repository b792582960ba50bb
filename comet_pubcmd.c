/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_pubcmd.c -- the commands of the publish socket (the list is in
 * comet_pubsrv.h): the table that names them, one function per command,
 * and the reply writers.  comet_pubsrv.c reads and parses a connection's
 * input and calls comet_pubcmd_execute for each complete command; a
 * command only writes its reply into the connection's output buffer (it
 * never does I/O and never blocks), so the connection code decides alone
 * when bytes move.  The publish thread.
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <apr_lib.h>
#include <apr_strings.h>

#include "comet_pubsrv_private.h"

/* ---- replies ---------------------------------------------------------------- */

/* Reply writers note a failure instead of returning it: the only way one
 * fails is a full or unallocatable output buffer, and then the connection
 * is beyond help (it is closed once the command returns). */
static void put(comet_pubconn_t *c, apr_status_t rv)
{
    if (rv != APR_SUCCESS) {
        c->broken = 1;
    }
}

static void reply_ok(comet_pubconn_t *c)
{
    put(c, comet_resp_simple(c->out, "OK", 2));
}

static void reply_str(comet_pubconn_t *c, const char *s)
{
    put(c, comet_resp_bulk(c->out, s, strlen(s)));
}

static void reply_int(comet_pubconn_t *c, apr_int64_t v)
{
    put(c, comet_resp_integer(c->out, v));
}

void comet_pubcmd_reply_err(comet_pubconn_t *c, const char *fmt, ...)
{
    char text[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    put(c, comet_resp_error(c->out, text, strlen(text)));
    COMET_PUBSRV_STAT_ADD(c->srv, errors, 1);
}

/* Redis's wording, with the command's name as the client wrote it. */
static void reply_arity(comet_pubconn_t *c, const char *name)
{
    char lower[64];
    apr_size_t i;

    for (i = 0; name[i] && i < sizeof(lower) - 1; i++) {
        lower[i] = (char)apr_tolower(name[i]);
    }
    lower[i] = '\0';
    comet_pubcmd_reply_err(c, "ERR wrong number of arguments for '%s' "
                           "command", lower);
}

static void reply_subcommand(comet_pubconn_t *c, const char *sub,
                             const char *cmd)
{
    comet_pubcmd_reply_err(c, "ERR unknown subcommand '%.128s'. Try %s HELP.",
                           sub, cmd);
}

static int arg_is(const comet_resp_cmd_t *cmd, apr_size_t i, const char *s)
{
    return cmd->argv_len[i] == strlen(s) && !strcasecmp(cmd->argv[i], s);
}

void comet_pubcmd_store_error_text(comet_pubconn_t *c, apr_status_t rv,
                                   char *text, apr_size_t len)
{
    char buf[120];

    switch (rv) {
    case COMET_EBADCHAN:
        apr_snprintf(text, len, "ERR invalid channel id (1 to %"
                     APR_SIZE_T_FMT " bytes of " COMET_CHANNEL_ID_CHARS ")",
                     c->srv->max_channel_id);
        break;
    case COMET_ETOOBIG:
        apr_snprintf(text, len, "ERR message larger than "
                     "CometMaxMessageSize (%" APR_SIZE_T_FMT " bytes)",
                     c->srv->cfg.max_message);
        break;
    case COMET_EFULL:
        apr_snprintf(text, len, "ERR the message store is full "
                     "(CometSharedMemorySize): message not stored");
        break;
    case COMET_EPROTO:
        apr_snprintf(text, len, "ERR invalid event type (1 to %d printable "
                     "bytes other than space)", COMET_STORE_EVENT_MAX);
        break;
    default:
        apr_snprintf(text, len, "ERR %s",
                     comet_strerror(rv, buf, sizeof(buf)));
        break;
    }
}

void comet_pubcmd_reply_store_error(comet_pubconn_t *c, apr_status_t rv)
{
    char text[512];

    comet_pubcmd_store_error_text(c, rv, text, sizeof(text));
    comet_pubcmd_reply_err(c, "%s", text);
}

void comet_pubcmd_reply_pending(comet_pubconn_t *c,
                                comet_pubsrv_pending_t *p)
{
    if (p->raw) {
        put(c, comet_buf_append(c->out, p->raw, p->raw_len));
    }
    else if (p->rv == APR_SUCCESS) {
        COMET_PUBSRV_STAT_ADD(c->srv, publishes, 1);
        reply_int(c, p->receivers);
    }
    else {
        comet_pubcmd_reply_err(c, "%s", p->error);
    }
}

/* ---- commands ---------------------------------------------------------------- */

typedef void pub_cmd_fn(comet_pubconn_t *c, const comet_resp_cmd_t *cmd);

typedef struct pub_command_t {
    const char *name;
    int         arity;     /* as Redis counts: n exactly, -n at least n */
    pub_cmd_fn *fn;
    int         flags;
} pub_command_t;

/* Allowed in RESP2's subscribed mode (Redis: the (P)SUBSCRIBE family,
 * PING, QUIT, RESET; RESP3 allows everything). */
#define PUBCMD_SUBSCRIBED 0x01


static void publish(comet_pubconn_t *c, const comet_resp_cmd_t *cmd,
                    apr_size_t ci, apr_size_t ei, apr_size_t di)
{
    comet_pubsrv_t *srv = c->srv;
    comet_publish_result_t res;
    comet_publish_t m;
    apr_status_t rv;

    memset(&m, 0, sizeof(m));
    m.channel = cmd->argv[ci];
    m.channel_len = cmd->argv_len[ci];
    m.data = cmd->argv[di];
    m.data_len = cmd->argv_len[di];
    if (ei && cmd->argv_len[ei]) {
        m.event = cmd->argv[ei];
        m.event_len = cmd->argv_len[ei];
    }
    if (m.data_len > srv->cfg.max_message) {
        comet_pubcmd_reply_store_error(c, COMET_ETOOBIG);
        return;
    }
    if (srv->cfg.publish) {
        comet_pubsrv_pending_t *p = comet_pubsrv_pending_add(c);

        if (!p) {
            c->broken = 1;
            return;
        }
        rv = srv->cfg.publish(srv->cfg.publish_baton, p, &m);
        if (rv != APR_SUCCESS) {
            /* Not taken: the reply is known now, in its place. */
            p->rv = rv;
            comet_pubcmd_store_error_text(c, rv, p->error,
                                          sizeof(p->error));
            comet_pubsrv_pending_done(p);
        }
        return;
    }
    rv = comet_store_publish(srv->cfg.store, &m, comet_now_mono(),
                             srv->cfg.wake, srv->cfg.wake_baton, &res);
    if (rv != APR_SUCCESS) {
        if (rv == COMET_EFULL) {
            comet_log(COMET_LOG_WARNING, rv, "publish socket: channel=%s: "
                      "message refused, the store is full", m.channel);
        }
        comet_pubcmd_reply_store_error(c, rv);
        return;
    }
    COMET_PUBSRV_STAT_ADD(srv, publishes, 1);
    reply_int(c, res.receivers);
}

static void cmd_publish(comet_pubconn_t *c, const comet_resp_cmd_t *cmd)
{
    publish(c, cmd, 1, 0, 2);
}

static void cmd_comet_publish(comet_pubconn_t *c, const comet_resp_cmd_t *cmd)
{
    publish(c, cmd, 1, 2, 3);
}

/* The reply to a COMET.* command on a channel that the store refused: null
 * when the channel does not exist, the error otherwise.  Returns 1 when it
 * replied (rv is not APR_SUCCESS). */
static int reply_refusal(comet_pubconn_t *c, apr_status_t rv)
{
    if (rv == COMET_ENOCHAN) {
        put(c, comet_resp_null(c->out, c->proto));
        return 1;
    }
    if (rv != APR_SUCCESS) {
        comet_pubcmd_reply_store_error(c, rv);
        return 1;
    }
    return 0;
}

static void cmd_comet_info(comet_pubconn_t *c, const comet_resp_cmd_t *cmd)
{
    comet_channel_stats_t st;
    char id[COMET_MSGID_MAXLEN];
    apr_status_t rv;

    rv = comet_store_channel_stats(c->srv->cfg.store, cmd->argv[1],
                                   cmd->argv_len[1], &st);
    if (reply_refusal(c, rv)) {
        return;
    }
    comet_msgid_format(id, &st.newest);
    put(c, comet_resp_map(c->out, c->proto, 6));
    reply_str(c, "messages");
    reply_int(c, st.messages);
    reply_str(c, "bytes");
    reply_int(c, (apr_int64_t)st.bytes);
    reply_str(c, "subscribers");
    reply_int(c, st.subscribers);
    reply_str(c, "published");
    reply_int(c, (apr_int64_t)st.published);
    reply_str(c, "last_id");
    reply_str(c, id);
    reply_str(c, "last_publish");
    reply_int(c, st.last_publish ? apr_time_as_msec(st.last_publish) : 0);
}

static void cmd_comet_delete(comet_pubconn_t *c, const comet_resp_cmd_t *cmd)
{
    comet_pubsrv_t *srv = c->srv;
    apr_uint32_t receivers = 0;
    apr_status_t rv;

    rv = comet_store_delete(srv->cfg.store, cmd->argv[1], cmd->argv_len[1],
                            srv->cfg.wake, srv->cfg.wake_baton, &receivers);
    if (reply_refusal(c, rv)) {
        return;
    }
    comet_log(COMET_LOG_INFO, 0, "publish socket: channel=%s: deleted, %u "
              "subscribers told", cmd->argv[1], receivers);
    reply_int(c, receivers);
}

static void cmd_pubsub(comet_pubconn_t *c, const comet_resp_cmd_t *cmd)
{
    comet_pubsrv_t *srv = c->srv;
    apr_size_t i;

    if (arg_is(cmd, 1, "NUMSUB")) {
        put(c, comet_resp_array(c->out, (cmd->argc - 2) * 2));
        for (i = 2; i < cmd->argc; i++) {
            comet_channel_stats_t st;

            put(c, comet_resp_bulk(c->out, cmd->argv[i], cmd->argv_len[i]));
            if (comet_store_channel_stats(srv->cfg.store, cmd->argv[i],
                                          cmd->argv_len[i], &st)
                != APR_SUCCESS) {
                st.subscribers = 0;
            }
            reply_int(c, st.subscribers);
        }
    }
    else if (arg_is(cmd, 1, "CHANNELS")) {
        apr_array_header_t *list;
        apr_size_t mark = c->out->len;
        apr_status_t rv;
        int n;

        if (cmd->argc > 3) {
            reply_arity(c, "pubsub|channels");
            return;
        }
        list = comet_store_channels(srv->cfg.store,
                                    cmd->argc == 3 ? cmd->argv[2] : NULL,
                                    APR_SIZE_MAX, srv->scratch);
        rv = comet_resp_array(c->out, (apr_size_t)list->nelts);
        for (n = 0; rv == APR_SUCCESS && n < list->nelts; n++) {
            const char *ch = APR_ARRAY_IDX(list, n, const char *);

            rv = comet_resp_bulk(c->out, ch, strlen(ch));
        }
        apr_pool_clear(srv->scratch);
        if (rv != APR_SUCCESS) {
            comet_buf_truncate(c->out, mark);
            comet_pubcmd_reply_err(c, "ERR reply too large: name a narrower "
                                   "pattern");
        }
    }
    else if (arg_is(cmd, 1, "NUMPAT")) {
        if (cmd->argc != 2) {
            reply_arity(c, "pubsub|numpat");
            return;
        }
        /* Patterns of the publish socket's subscribers, every process's
         * (HTTP subscribers name channels, never patterns). */
        reply_int(c, (apr_int64_t)comet_store_patterns(srv->cfg.store));
    }
    else if (arg_is(cmd, 1, "HELP")) {
        static const char *const help[] = {
            "PUBSUB <subcommand> [<arg> ...]. Subcommands are:",
            "CHANNELS [<pattern>]",
            "    Return the channels with at least one subscriber that "
            "match the glob pattern (all when none).",
            "NUMPAT",
            "    Return the number of patterns subscribed to (each "
            "process counts its own).",
            "NUMSUB [<channel> ...]",
            "    Return the number of subscribers of each channel.",
        };

        put(c, comet_resp_array(c->out, sizeof(help) / sizeof(help[0])));
        for (i = 0; i < sizeof(help) / sizeof(help[0]); i++) {
            put(c, comet_resp_simple(c->out, help[i], strlen(help[i])));
        }
    }
    else {
        reply_subcommand(c, cmd->argv[1], "PUBSUB");
    }
}

static void cmd_ping(comet_pubconn_t *c, const comet_resp_cmd_t *cmd)
{
    if (cmd->argc > 2) {
        reply_arity(c, "ping");
    }
    else if (COMET_PUBCONN_SUBSCRIBED(c) && c->proto == COMET_RESP2) {
        /* Subscribed, RESP2: replies are pushes, so is the pong. */
        put(c, comet_resp_array(c->out, 2));
        put(c, comet_resp_bulk(c->out, "pong", 4));
        put(c, comet_resp_bulk(c->out, cmd->argc == 2 ? cmd->argv[1] : "",
                               cmd->argc == 2 ? cmd->argv_len[1] : 0));
    }
    else if (cmd->argc == 2) {
        put(c, comet_resp_bulk(c->out, cmd->argv[1], cmd->argv_len[1]));
    }
    else {
        put(c, comet_resp_simple(c->out, "PONG", 4));
    }
}

static void cmd_echo(comet_pubconn_t *c, const comet_resp_cmd_t *cmd)
{
    put(c, comet_resp_bulk(c->out, cmd->argv[1], cmd->argv_len[1]));
}

static void cmd_quit(comet_pubconn_t *c, const comet_resp_cmd_t *cmd)
{
    reply_ok(c);
    c->closing = 1;
}

static void cmd_reset(comet_pubconn_t *c, const comet_resp_cmd_t *cmd)
{
    comet_pubsub_reset(c);
    c->proto = COMET_RESP2;
    c->name[0] = '\0';
    put(c, comet_resp_simple(c->out, "RESET", 5));
}

static const char *refuse_auth =
    "ERR AUTH is not supported: who may publish is decided by the publish "
    "socket's file permissions (CometPublishSocketMode)";

static void cmd_auth(comet_pubconn_t *c, const comet_resp_cmd_t *cmd)
{
    comet_pubcmd_reply_err(c, "%s", refuse_auth);
}

static void cmd_ssubscribe(comet_pubconn_t *c, const comet_resp_cmd_t *cmd)
{
    comet_pubcmd_reply_err(c, "ERR sharded pub/sub is not supported: use "
                           "SUBSCRIBE");
}

static int set_name(comet_pubconn_t *c, const char *name, apr_size_t len)
{
    apr_size_t i;

    for (i = 0; i < len; i++) {
        if (name[i] <= ' ' || name[i] > '~') {
            comet_pubcmd_reply_err(c, "ERR Client names cannot contain "
                                   "spaces, newlines or special "
                                   "characters.");
            return 0;
        }
    }
    if (len >= sizeof(c->name)) {
        comet_pubcmd_reply_err(c, "ERR client name too long (at most %d "
                               "bytes)", (int)sizeof(c->name) - 1);
        return 0;
    }
    memcpy(c->name, name, len);
    c->name[len] = '\0';
    return 1;
}

static void cmd_hello(comet_pubconn_t *c, const comet_resp_cmd_t *cmd)
{
    const char *version = c->srv->cfg.version ? c->srv->cfg.version : "";
    int proto = c->proto;
    apr_size_t i = 1;

    if (cmd->argc >= 2) {
        char *end;
        long v = strtol(cmd->argv[1], &end, 10);

        if (end == cmd->argv[1] || *end || cmd->argv_len[1] == 0) {
            comet_pubcmd_reply_err(c, "ERR Protocol version is not an "
                                   "integer or out of range");
            return;
        }
        if (v != COMET_RESP2 && v != COMET_RESP3) {
            static const char noproto[] =
                "NOPROTO unsupported protocol version";

            put(c, comet_resp_error(c->out, noproto, sizeof(noproto) - 1));
            COMET_PUBSRV_STAT_ADD(c->srv, errors, 1);
            return;
        }
        proto = (int)v;
        i = 2;
    }
    for (; i < cmd->argc; i++) {
        if (arg_is(cmd, i, "AUTH") && i + 2 < cmd->argc) {
            comet_pubcmd_reply_err(c, "%s", refuse_auth);
            return;
        }
        if (arg_is(cmd, i, "SETNAME") && i + 1 < cmd->argc) {
            if (!set_name(c, cmd->argv[i + 1], cmd->argv_len[i + 1])) {
                return;
            }
            i++;
            continue;
        }
        comet_pubcmd_reply_err(c, "ERR Syntax error in HELLO option "
                               "'%.128s'", cmd->argv[i]);
        return;
    }
    c->proto = proto;
    put(c, comet_resp_map(c->out, c->proto, 7));
    reply_str(c, "server");
    reply_str(c, "mod_comet");
    reply_str(c, "version");
    reply_str(c, version);
    reply_str(c, "proto");
    reply_int(c, c->proto);
    reply_str(c, "id");
    reply_int(c, (apr_int64_t)c->id);
    reply_str(c, "mode");
    reply_str(c, "standalone");
    reply_str(c, "role");
    reply_str(c, "master");
    reply_str(c, "modules");
    put(c, comet_resp_array(c->out, 0));
}

static const char *conn_line(comet_pubconn_t *c, apr_pool_t *p)
{
    return apr_psprintf(p, "id=%" APR_UINT64_T_FMT " addr=unix fd=%d "
                        "name=%s age=%" APR_TIME_T_FMT " sub=%u psub=%u "
                        "omem=%" APR_SIZE_T_FMT " resp=%d\n", c->id,
                        c->fd, c->name,
                        apr_time_sec(comet_now_mono() - c->since), c->nchans,
                        c->npats, c->out->len, c->proto);
}

static void cmd_client(comet_pubconn_t *c, const comet_resp_cmd_t *cmd)
{
    comet_pubsrv_t *srv = c->srv;

    if (arg_is(cmd, 1, "SETNAME")) {
        if (cmd->argc != 3) {
            reply_arity(c, "client|setname");
        }
        else if (set_name(c, cmd->argv[2], cmd->argv_len[2])) {
            reply_ok(c);
        }
    }
    else if (arg_is(cmd, 1, "GETNAME")) {
        if (c->name[0]) {
            reply_str(c, c->name);
        }
        else {
            put(c, comet_resp_null(c->out, c->proto));
        }
    }
    else if (arg_is(cmd, 1, "ID")) {
        reply_int(c, (apr_int64_t)c->id);
    }
    else if (arg_is(cmd, 1, "SETINFO")) {
        /* Client libraries announce themselves; nothing to keep. */
        if (cmd->argc != 4) {
            reply_arity(c, "client|setinfo");
        }
        else if (arg_is(cmd, 2, "LIB-NAME") || arg_is(cmd, 2, "LIB-VER")) {
            reply_ok(c);
        }
        else {
            comet_pubcmd_reply_err(c, "ERR Unrecognized option '%.128s'",
                                   cmd->argv[2]);
        }
    }
    else if (arg_is(cmd, 1, "INFO")) {
        reply_str(c, conn_line(c, srv->scratch));
        apr_pool_clear(srv->scratch);
    }
    else if (arg_is(cmd, 1, "LIST")) {
        comet_buf_t *text;
        comet_pubconn_t *o;

        if (comet_buf_create(&text, srv->scratch, 0, COMET_PUBSRV_REPLY_MAX)
            != APR_SUCCESS) {
            c->broken = 1;
            return;
        }
        for (o = srv->conns; o; o = o->next) {
            put(c, comet_buf_puts(text, conn_line(o, srv->scratch)));
        }
        put(c, comet_resp_bulk(c->out, text->data, text->len));
        apr_pool_clear(srv->scratch);
    }
    else if (arg_is(cmd, 1, "NO-EVICT") || arg_is(cmd, 1, "NO-TOUCH")) {
        reply_ok(c);
    }
    else if (arg_is(cmd, 1, "REPLY")) {
        if (cmd->argc == 3 && arg_is(cmd, 2, "ON")) {
            reply_ok(c);
        }
        else {
            comet_pubcmd_reply_err(c, "ERR only CLIENT REPLY ON is supported");
        }
    }
    else if (arg_is(cmd, 1, "HELP")) {
        put(c, comet_resp_array(c->out, 1));
        put(c, comet_resp_simple(c->out, "CLIENT SETNAME|GETNAME|SETINFO|"
                                 "ID|INFO|LIST|NO-EVICT|NO-TOUCH|REPLY ON",
                                 sizeof("CLIENT SETNAME|GETNAME|SETINFO|"
                                        "ID|INFO|LIST|NO-EVICT|NO-TOUCH|"
                                        "REPLY ON") - 1));
    }
    else {
        reply_subcommand(c, cmd->argv[1], "CLIENT");
    }
}

static void cmd_select(comet_pubconn_t *c, const comet_resp_cmd_t *cmd)
{
    if (cmd->argv_len[1] == 1 && cmd->argv[1][0] == '0') {
        reply_ok(c);
    }
    else {
        /* Channels are not keys: there is one namespace, database 0. */
        comet_pubcmd_reply_err(c, "ERR DB index is out of range");
    }
}

static void cmd_command(comet_pubconn_t *c, const comet_resp_cmd_t *cmd);

static void cmd_config(comet_pubconn_t *c, const comet_resp_cmd_t *cmd)
{
    if (arg_is(cmd, 1, "GET")) {
        if (cmd->argc < 3) {
            reply_arity(c, "config|get");
            return;
        }
        /* The settings are httpd's directives, not Redis parameters:
         * none matches. */
        put(c, comet_resp_map(c->out, c->proto, 0));
    }
    else {
        reply_subcommand(c, cmd->argv[1], "CONFIG");
    }
}

static void cmd_info(comet_pubconn_t *c, const comet_resp_cmd_t *cmd)
{
    comet_pubsrv_t *srv = c->srv;
    comet_store_stats_t ss;
    comet_pubsrv_stats_t ps;
    char *text;

    comet_store_stats(srv->cfg.store, &ss);
    comet_pubsrv_stats(srv, &ps);
    text = apr_psprintf(srv->scratch,
        "# Server\r\n"
        "comet_version:%s\r\n"
        "redis_mode:standalone\r\n"
        "process_id:%ld\r\n"
        "uptime_in_seconds:%" APR_TIME_T_FMT "\r\n"
        "\r\n"
        "# Clients\r\n"
        "connected_clients:%u\r\n"
        "pubsub_clients:%u\r\n"
        "\r\n"
        "# Stats\r\n"
        "total_connections_received:%" APR_UINT64_T_FMT "\r\n"
        "rejected_connections:%" APR_UINT64_T_FMT "\r\n"
        "total_commands_processed:%" APR_UINT64_T_FMT "\r\n"
        "total_publishes:%" APR_UINT64_T_FMT "\r\n"
        "total_error_replies:%" APR_UINT64_T_FMT "\r\n"
        "pubsub_channels:%u\r\n"
        "pubsub_patterns:%u\r\n"
        "total_pushes:%" APR_UINT64_T_FMT "\r\n"
        "pubsub_dropped_slow:%" APR_UINT64_T_FMT "\r\n"
        "pubsub_missed:%" APR_UINT64_T_FMT "\r\n"
        "\r\n"
        "# Store\r\n"
        "channels:%u\r\n"
        "channels_max:%u\r\n"
        "messages:%" APR_UINT64_T_FMT "\r\n"
        "memory_used:%" APR_SIZE_T_FMT "\r\n"
        "memory_free:%" APR_SIZE_T_FMT "\r\n"
        "subscribers:%" APR_UINT64_T_FMT "\r\n"
        "published:%" APR_UINT64_T_FMT "\r\n",
        srv->cfg.version ? srv->cfg.version : "", (long)getpid(),
        apr_time_sec(comet_now_mono() - srv->started), ps.clients,
        ps.subscribers, ps.accepted, ps.refused, ps.commands, ps.publishes,
        ps.errors, ps.channels, ps.patterns, ps.pushes, ps.dropped_slow,
        ps.missed,
        ss.channels,
        ss.channels_max, ss.messages, ss.bytes_used, ss.bytes_free,
        ss.subscribers, ss.published);
    reply_str(c, text);
    apr_pool_clear(srv->scratch);
}

/* Looked up by a linear scan: with a couple of dozen names that costs
 * less than hashing one.  PUBLISH comes first: it is the one that counts. */
static const pub_command_t commands[] = {
    { "PUBLISH",         3,  cmd_publish,       0 },
    { "COMET.PUBLISH",   4,  cmd_comet_publish, 0 },
    { "PING",            -1, cmd_ping,          PUBCMD_SUBSCRIBED },
    { "SUBSCRIBE",       -2, comet_pubsub_cmd_subscribe, PUBCMD_SUBSCRIBED },
    { "UNSUBSCRIBE",     -1, comet_pubsub_cmd_unsubscribe,
      PUBCMD_SUBSCRIBED },
    { "PSUBSCRIBE",      -2, comet_pubsub_cmd_psubscribe, PUBCMD_SUBSCRIBED },
    { "PUNSUBSCRIBE",    -1, comet_pubsub_cmd_punsubscribe,
      PUBCMD_SUBSCRIBED },
    { "COMET.SUBSCRIBE", -2, comet_pubsub_cmd_comet_subscribe,
      PUBCMD_SUBSCRIBED },
    { "PUBSUB",          -2, cmd_pubsub,        0 },
    { "ECHO",            2,  cmd_echo,          0 },
    { "COMET.INFO",      2,  cmd_comet_info,    0 },
    { "COMET.DELETE",    2,  cmd_comet_delete,  0 },
    { "HELLO",           -1, cmd_hello,         0 },
    { "CLIENT",          -2, cmd_client,        0 },
    { "COMMAND",         -1, cmd_command,       0 },
    { "SELECT",          2,  cmd_select,        0 },
    { "INFO",            -1, cmd_info,          0 },
    { "CONFIG",          -2, cmd_config,        0 },
    { "QUIT",            -1, cmd_quit,          PUBCMD_SUBSCRIBED },
    { "RESET",           1,  cmd_reset,         PUBCMD_SUBSCRIBED },
    { "AUTH",            -2, cmd_auth,          0 },
    { "SSUBSCRIBE",      -2, cmd_ssubscribe,    PUBCMD_SUBSCRIBED },
    { "SUNSUBSCRIBE",    -1, cmd_ssubscribe,    PUBCMD_SUBSCRIBED },
};

static apr_size_t command_count(void)
{
    return sizeof(commands) / sizeof(commands[0]);
}

static const pub_command_t *find_command(const comet_resp_cmd_t *cmd)
{
    apr_size_t i;

    for (i = 0; i < command_count(); i++) {
        if (arg_is(cmd, 0, commands[i].name)) {
            return &commands[i];
        }
    }
    return NULL;
}

static void cmd_command(comet_pubconn_t *c, const comet_resp_cmd_t *cmd)
{
    apr_size_t i;

    if (cmd->argc == 1) {
        /* Key positions and flags would only matter to a cluster client;
         * an empty table tells a library to use its built-in one. */
        put(c, comet_resp_array(c->out, 0));
    }
    else if (arg_is(cmd, 1, "COUNT")) {
        reply_int(c, (apr_int64_t)command_count());
    }
    else if (arg_is(cmd, 1, "DOCS")) {
        put(c, comet_resp_map(c->out, c->proto, 0));
    }
    else if (arg_is(cmd, 1, "LIST")) {
        put(c, comet_resp_array(c->out, command_count()));
        for (i = 0; i < command_count(); i++) {
            char lower[32];
            apr_size_t j;

            for (j = 0; commands[i].name[j] && j < sizeof(lower) - 1; j++) {
                lower[j] = (char)apr_tolower(commands[i].name[j]);
            }
            put(c, comet_resp_bulk(c->out, lower, j));
        }
    }
    else if (arg_is(cmd, 1, "INFO")) {
        put(c, comet_resp_array(c->out, cmd->argc - 2));
        for (i = 2; i < cmd->argc; i++) {
            put(c, comet_resp_null(c->out, c->proto));
        }
    }
    else {
        reply_subcommand(c, cmd->argv[1], "COMMAND");
    }
}

static void reply_unknown(comet_pubconn_t *c, const comet_resp_cmd_t *cmd)
{
    char args[160];
    apr_size_t i, len = 0;

    /* Like Redis: quote the arguments until about 128 bytes are shown. */
    args[0] = '\0';
    for (i = 1; i < cmd->argc && len < 128; i++) {
        int n = apr_snprintf(args + len, sizeof(args) - len, "'%.*s' ",
                             (int)(128 - len), cmd->argv[i]);

        if (n <= 0) {
            break;
        }
        len += (apr_size_t)n;
        if (len >= sizeof(args)) {
            len = sizeof(args) - 1;
        }
    }
    comet_pubcmd_reply_err(c, "ERR unknown command '%.128s', with args "
                           "beginning with: %s", cmd->argv[0], args);
}

void comet_pubcmd_execute(comet_pubconn_t *c, const comet_resp_cmd_t *cmd)
{
    const pub_command_t *pc = find_command(cmd);
    int argc = (int)cmd->argc;
    comet_buf_t *out = c->out;
    comet_pubsrv_pending_t *p;

    if (c->npend && (!pc || (pc->fn != cmd_publish
                             && pc->fn != cmd_comet_publish))) {
        /* A publish before it waits for its reply: this reply waits
         * behind it. */
        c->out = c->srv->capture;
        comet_buf_truncate(c->out, 0);
    }
    COMET_PUBSRV_STAT_ADD(c->srv, commands, 1);
    if (!pc) {
        reply_unknown(c, cmd);
    }
    else if ((pc->arity > 0 && argc != pc->arity)
             || (pc->arity < 0 && argc < -pc->arity)) {
        reply_arity(c, pc->name);
    }
    else if (COMET_PUBCONN_SUBSCRIBED(c) && c->proto == COMET_RESP2
             && !(pc->flags & PUBCMD_SUBSCRIBED)) {
        char lower[32];
        apr_size_t i;

        for (i = 0; pc->name[i] && i < sizeof(lower) - 1; i++) {
            lower[i] = (char)apr_tolower(pc->name[i]);
        }
        lower[i] = '\0';
        comet_pubcmd_reply_err(c, "ERR Can't execute '%s': only (P|S)"
                               "SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / "
                               "RESET are allowed in this context", lower);
    }
    else {
        pc->fn(c, cmd);
    }
    if (c->out != out) {
        c->out = out;
        p = comet_pubsrv_pending_add(c);
        if (!p || !(p->raw = malloc(c->srv->capture->len + 1))) {
            c->broken = 1;
            return;
        }
        memcpy(p->raw, c->srv->capture->data, c->srv->capture->len);
        p->raw_len = c->srv->capture->len;
        comet_buf_truncate(c->srv->capture, 0);
        comet_pubsrv_pending_done(p);
    }
}
