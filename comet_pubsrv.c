/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_pubsrv.c -- the publish socket's RESP server (see comet_pubsrv.h).
 *
 * One record per connection, in a pool of its own (destroyed when the
 * connection closes).  A connection moves bytes in three steps, all on the
 * loop thread:
 *   read     one recv() into the input buffer per readiness event, so
 *            that a client with a long pipeline cannot hold the loop for
 *            more than one buffer's worth of commands;
 *   process  parse and run every complete command while the unsent
 *            replies stay under max_output (replies of a whole pipeline go
 *            out in one send);
 *   flush    send() until EAGAIN, then wait for WRITE.
 * Reading stops while the replies are over the bound (the kernel's buffer
 * then fills and the client's writes block: back-pressure, not memory),
 * and starts again as soon as they drain below it.
 *
 * The server's pools use an allocator of their own, so that connections
 * can come and go on the loop thread while other threads allocate from
 * the pool the server was created in.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <apr_allocator.h>
#include <apr_lib.h>
#include <apr_strings.h>

#include "comet_buf.h"
#include "comet_pubsrv.h"
#include "comet_resp.h"

#define PUBSRV_DEFAULT_CLIENTS   1024
#define PUBSRV_DEFAULT_OUTPUT    (256 * 1024)
#define PUBSRV_DEFAULT_STUCK     apr_time_from_sec(30)
/* Room for the arguments around the message in one command. */
#define PUBSRV_ARGS_ROOM         (64 * 1024)
/* Input is read at least this much at a time; an idle connection's buffer
 * shrinks back to it. */
#define PUBSRV_READ_CHUNK        (16 * 1024)
/* A reply may pass max_output by this much (PUBSUB CHANNELS of a large
 * table); a longer one is refused. */
#define PUBSRV_REPLY_MAX         (64 * 1024 * 1024)
/* Accepts per readiness event, so that a connection storm cannot keep the
 * loop from serving the connections it already has. */
#define PUBSRV_ACCEPT_BATCH      64
/* How long the listener rests when the process is out of descriptors
 * (level-triggered, it would otherwise report the same pending
 * connection in a tight loop). */
#define PUBSRV_ACCEPT_PAUSE      apr_time_from_msec(100)
#define PUBSRV_NAME_MAX          128

typedef struct pub_conn_t pub_conn_t;

struct comet_pubsrv_t {
    comet_pubsrv_config_t cfg;
    comet_loop_t         *loop;
    apr_pool_t           *pool;       /* own allocator; loop thread only */
    apr_pool_t           *scratch;    /* cleared after each use          */
    comet_resp_limits_t   limits;
    apr_size_t            in_max;     /* input buffer bound              */
    apr_size_t            max_channel_id;
    comet_loop_io_t       lio;        /* the listener                    */
    int                   listening;
    comet_timer_t         resume;     /* ends an accept pause            */
    pub_conn_t           *conns;      /* all connections                 */
    apr_uint64_t          next_id;
    apr_time_t            started;    /* comet_now_mono()                */
    comet_pubsrv_stats_t  st;         /* atomics: read by any thread     */
};

struct pub_conn_t {
    comet_pubsrv_t      *srv;
    pub_conn_t          *prev, *next;
    apr_pool_t          *pool;
    int                  fd;
    comet_loop_io_t      io;
    int                  watched;
    comet_timer_t        stuck;
    comet_resp_parser_t *parser;
    char                *in;          /* malloc()ed: it grows and shrinks */
    apr_size_t           in_len, in_cap;
    comet_buf_t         *out;
    apr_uint64_t         id;
    apr_time_t           since;
    int                  proto;       /* COMET_RESP2 or COMET_RESP3       */
    int                  eof;         /* the client will send no more     */
    int                  closing;     /* close once out is sent           */
    int                  broken;      /* a reply could not be written     */
    char                 name[PUBSRV_NAME_MAX];
};

#define STAT_ADD(srv, field, n) \
    __atomic_add_fetch(&(srv)->st.field, (n), __ATOMIC_RELAXED)

static void conn_close(pub_conn_t *c);

/* ---- replies ---------------------------------------------------------------- */

/* Reply writers note a failure instead of returning it: the only way one
 * fails is a full or unallocatable output buffer, and then the connection
 * is beyond help (it is closed once the command returns). */
static void put(pub_conn_t *c, apr_status_t rv)
{
    if (rv != APR_SUCCESS) {
        c->broken = 1;
    }
}

static void reply_ok(pub_conn_t *c)
{
    put(c, comet_resp_simple(c->out, "OK", 2));
}

static void reply_str(pub_conn_t *c, const char *s)
{
    put(c, comet_resp_bulk(c->out, s, strlen(s)));
}

static void reply_int(pub_conn_t *c, apr_int64_t v)
{
    put(c, comet_resp_integer(c->out, v));
}

static void reply_err(pub_conn_t *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void reply_err(pub_conn_t *c, const char *fmt, ...)
{
    char text[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    put(c, comet_resp_error(c->out, text, strlen(text)));
    STAT_ADD(c->srv, errors, 1);
}

/* Redis's wording, with the command's name as the client wrote it. */
static void reply_arity(pub_conn_t *c, const char *name)
{
    char lower[64];
    apr_size_t i;

    for (i = 0; name[i] && i < sizeof(lower) - 1; i++) {
        lower[i] = (char)apr_tolower(name[i]);
    }
    lower[i] = '\0';
    reply_err(c, "ERR wrong number of arguments for '%s' command", lower);
}

static void reply_subcommand(pub_conn_t *c, const char *sub,
                             const char *cmd)
{
    reply_err(c, "ERR unknown subcommand '%.128s'. Try %s HELP.", sub, cmd);
}

static int arg_is(const comet_resp_cmd_t *cmd, apr_size_t i, const char *s)
{
    return cmd->argv_len[i] == strlen(s) && !strcasecmp(cmd->argv[i], s);
}


static void reply_store_error(pub_conn_t *c, apr_status_t rv)
{
    char buf[120];

    switch (rv) {
    case COMET_EBADCHAN:
        reply_err(c, "ERR invalid channel id (1 to %" APR_SIZE_T_FMT
                  " bytes of A-Z a-z 0-9 - _ . ~ : @ /)",
                  c->srv->max_channel_id);
        break;
    case COMET_ETOOBIG:
        reply_err(c, "ERR message larger than CometMaxMessageSize (%"
                  APR_SIZE_T_FMT " bytes)", c->srv->cfg.max_message);
        break;
    case COMET_EFULL:
        reply_err(c, "ERR the message store is full "
                  "(CometSharedMemorySize): message not stored");
        break;
    case COMET_EPROTO:
        reply_err(c, "ERR invalid event type (1 to %d printable bytes "
                  "other than space)", COMET_STORE_EVENT_MAX);
        break;
    default:
        reply_err(c, "ERR %s", comet_strerror(rv, buf, sizeof(buf)));
        break;
    }
}

/* ---- commands ---------------------------------------------------------------- */

typedef void pub_cmd_fn(pub_conn_t *c, const comet_resp_cmd_t *cmd);

typedef struct pub_command_t {
    const char *name;
    int         arity;     /* as Redis counts: n exactly, -n at least n */
    pub_cmd_fn *fn;
} pub_command_t;


static void publish(pub_conn_t *c, const comet_resp_cmd_t *cmd,
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
        reply_store_error(c, COMET_ETOOBIG);
        return;
    }
    rv = comet_store_publish(srv->cfg.store, &m, comet_now_mono(),
                             srv->cfg.wake, srv->cfg.wake_baton, &res);
    if (rv != APR_SUCCESS) {
        if (rv == COMET_EFULL) {
            comet_log(COMET_LOG_WARNING, rv, "publish socket: channel=%s: "
                      "message refused, the store is full", m.channel);
        }
        reply_store_error(c, rv);
        return;
    }
    STAT_ADD(srv, publishes, 1);
    reply_int(c, res.receivers);
}

static void cmd_publish(pub_conn_t *c, const comet_resp_cmd_t *cmd)
{
    publish(c, cmd, 1, 0, 2);
}

static void cmd_comet_publish(pub_conn_t *c, const comet_resp_cmd_t *cmd)
{
    publish(c, cmd, 1, 2, 3);
}

static void cmd_comet_info(pub_conn_t *c, const comet_resp_cmd_t *cmd)
{
    comet_channel_stats_t st;
    char id[COMET_MSGID_MAXLEN];
    apr_status_t rv;

    rv = comet_store_channel_stats(c->srv->cfg.store, cmd->argv[1],
                                   cmd->argv_len[1], &st);
    if (rv == COMET_ENOCHAN) {
        put(c, comet_resp_null(c->out, c->proto));
        return;
    }
    if (rv != APR_SUCCESS) {
        reply_store_error(c, rv);
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

static void cmd_comet_delete(pub_conn_t *c, const comet_resp_cmd_t *cmd)
{
    comet_pubsrv_t *srv = c->srv;
    apr_uint32_t receivers = 0;
    apr_status_t rv;

    rv = comet_store_delete(srv->cfg.store, cmd->argv[1], cmd->argv_len[1],
                            srv->cfg.wake, srv->cfg.wake_baton, &receivers);
    if (rv == COMET_ENOCHAN) {
        put(c, comet_resp_null(c->out, c->proto));
        return;
    }
    if (rv != APR_SUCCESS) {
        reply_store_error(c, rv);
        return;
    }
    comet_log(COMET_LOG_INFO, 0, "publish socket: channel=%s: deleted, %u "
              "subscribers told", cmd->argv[1], receivers);
    reply_int(c, receivers);
}

static void cmd_pubsub(pub_conn_t *c, const comet_resp_cmd_t *cmd)
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
            reply_err(c, "ERR reply too large: name a narrower pattern");
        }
    }
    else if (arg_is(cmd, 1, "NUMPAT")) {
        if (cmd->argc != 2) {
            reply_arity(c, "pubsub|numpat");
            return;
        }
        /* Subscribers name channels, never patterns. */
        reply_int(c, 0);
    }
    else if (arg_is(cmd, 1, "HELP")) {
        static const char *const help[] = {
            "PUBSUB <subcommand> [<arg> ...]. Subcommands are:",
            "CHANNELS [<pattern>]",
            "    Return the channels with at least one subscriber that "
            "match the glob pattern (all when none).",
            "NUMPAT",
            "    Return 0: subscribers name channels, never patterns.",
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

static void cmd_ping(pub_conn_t *c, const comet_resp_cmd_t *cmd)
{
    if (cmd->argc > 2) {
        reply_arity(c, "ping");
    }
    else if (cmd->argc == 2) {
        put(c, comet_resp_bulk(c->out, cmd->argv[1], cmd->argv_len[1]));
    }
    else {
        put(c, comet_resp_simple(c->out, "PONG", 4));
    }
}

static void cmd_echo(pub_conn_t *c, const comet_resp_cmd_t *cmd)
{
    put(c, comet_resp_bulk(c->out, cmd->argv[1], cmd->argv_len[1]));
}

static void cmd_quit(pub_conn_t *c, const comet_resp_cmd_t *cmd)
{
    reply_ok(c);
    c->closing = 1;
}

static void cmd_reset(pub_conn_t *c, const comet_resp_cmd_t *cmd)
{
    c->proto = COMET_RESP2;
    c->name[0] = '\0';
    put(c, comet_resp_simple(c->out, "RESET", 5));
}

static const char *refuse_auth =
    "ERR AUTH is not supported: who may publish is decided by the publish "
    "socket's file permissions (CometPublishSocketMode)";

static void cmd_auth(pub_conn_t *c, const comet_resp_cmd_t *cmd)
{
    reply_err(c, "%s", refuse_auth);
}

static void cmd_subscribe(pub_conn_t *c, const comet_resp_cmd_t *cmd)
{
    reply_err(c, "ERR this socket only publishes: subscribe over HTTP "
              "(EventSource, long-poll or stream)");
}

static int set_name(pub_conn_t *c, const char *name, apr_size_t len)
{
    apr_size_t i;

    for (i = 0; i < len; i++) {
        if (name[i] <= ' ' || name[i] > '~') {
            reply_err(c, "ERR Client names cannot contain spaces, newlines "
                      "or special characters.");
            return 0;
        }
    }
    if (len >= sizeof(c->name)) {
        reply_err(c, "ERR client name too long (at most %d bytes)",
                  (int)sizeof(c->name) - 1);
        return 0;
    }
    memcpy(c->name, name, len);
    c->name[len] = '\0';
    return 1;
}

static void cmd_hello(pub_conn_t *c, const comet_resp_cmd_t *cmd)
{
    const char *version = c->srv->cfg.version ? c->srv->cfg.version : "";
    int proto = c->proto;
    apr_size_t i = 1;

    if (cmd->argc >= 2) {
        char *end;
        long v = strtol(cmd->argv[1], &end, 10);

        if (end == cmd->argv[1] || *end || cmd->argv_len[1] == 0) {
            reply_err(c, "ERR Protocol version is not an integer or out of "
                      "range");
            return;
        }
        if (v != COMET_RESP2 && v != COMET_RESP3) {
            static const char noproto[] =
                "NOPROTO unsupported protocol version";

            put(c, comet_resp_error(c->out, noproto, sizeof(noproto) - 1));
            STAT_ADD(c->srv, errors, 1);
            return;
        }
        proto = (int)v;
        i = 2;
    }
    for (; i < cmd->argc; i++) {
        if (arg_is(cmd, i, "AUTH") && i + 2 < cmd->argc) {
            reply_err(c, "%s", refuse_auth);
            return;
        }
        if (arg_is(cmd, i, "SETNAME") && i + 1 < cmd->argc) {
            if (!set_name(c, cmd->argv[i + 1], cmd->argv_len[i + 1])) {
                return;
            }
            i++;
            continue;
        }
        reply_err(c, "ERR Syntax error in HELLO option '%.128s'",
                  cmd->argv[i]);
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

static const char *conn_line(pub_conn_t *c, apr_pool_t *p)
{
    return apr_psprintf(p, "id=%" APR_UINT64_T_FMT " addr=unix fd=%d "
                        "name=%s age=%" APR_TIME_T_FMT " resp=%d\n", c->id,
                        c->fd, c->name,
                        apr_time_sec(comet_now_mono() - c->since), c->proto);
}

static void cmd_client(pub_conn_t *c, const comet_resp_cmd_t *cmd)
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
            reply_err(c, "ERR Unrecognized option '%.128s'", cmd->argv[2]);
        }
    }
    else if (arg_is(cmd, 1, "INFO")) {
        reply_str(c, conn_line(c, srv->scratch));
        apr_pool_clear(srv->scratch);
    }
    else if (arg_is(cmd, 1, "LIST")) {
        comet_buf_t *text;
        pub_conn_t *o;

        if (comet_buf_create(&text, srv->scratch, 0, PUBSRV_REPLY_MAX)
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
            reply_err(c, "ERR only CLIENT REPLY ON is supported");
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

static void cmd_select(pub_conn_t *c, const comet_resp_cmd_t *cmd)
{
    if (cmd->argv_len[1] == 1 && cmd->argv[1][0] == '0') {
        reply_ok(c);
    }
    else {
        /* Channels are not keys: there is one namespace, database 0. */
        reply_err(c, "ERR DB index is out of range");
    }
}

static void cmd_command(pub_conn_t *c, const comet_resp_cmd_t *cmd);

static void cmd_config(pub_conn_t *c, const comet_resp_cmd_t *cmd)
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

static void cmd_info(pub_conn_t *c, const comet_resp_cmd_t *cmd)
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
        "\r\n"
        "# Stats\r\n"
        "total_connections_received:%" APR_UINT64_T_FMT "\r\n"
        "total_commands_processed:%" APR_UINT64_T_FMT "\r\n"
        "total_publishes:%" APR_UINT64_T_FMT "\r\n"
        "total_error_replies:%" APR_UINT64_T_FMT "\r\n"
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
        ps.accepted, ps.commands, ps.publishes, ps.errors, ss.channels,
        ss.channels_max, ss.messages, ss.bytes_used, ss.bytes_free,
        ss.subscribers, ss.published);
    reply_str(c, text);
    apr_pool_clear(srv->scratch);
}

/* Looked up by a linear scan: with a couple of dozen names that costs
 * less than hashing one.  PUBLISH comes first: it is the one that counts. */
static const pub_command_t commands[] = {
    { "PUBLISH",       3,  cmd_publish },
    { "COMET.PUBLISH", 4,  cmd_comet_publish },
    { "PING",          -1, cmd_ping },
    { "PUBSUB",        -2, cmd_pubsub },
    { "ECHO",          2,  cmd_echo },
    { "COMET.INFO",    2,  cmd_comet_info },
    { "COMET.DELETE",  2,  cmd_comet_delete },
    { "HELLO",         -1, cmd_hello },
    { "CLIENT",        -2, cmd_client },
    { "COMMAND",       -1, cmd_command },
    { "SELECT",        2,  cmd_select },
    { "INFO",          -1, cmd_info },
    { "CONFIG",        -2, cmd_config },
    { "QUIT",          -1, cmd_quit },
    { "RESET",         1,  cmd_reset },
    { "AUTH",          -2, cmd_auth },
    { "SUBSCRIBE",     -2, cmd_subscribe },
    { "PSUBSCRIBE",    -2, cmd_subscribe },
    { "SSUBSCRIBE",    -2, cmd_subscribe },
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

static void cmd_command(pub_conn_t *c, const comet_resp_cmd_t *cmd)
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

static void reply_unknown(pub_conn_t *c, const comet_resp_cmd_t *cmd)
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
    reply_err(c, "ERR unknown command '%.128s', with args beginning with: "
              "%s", cmd->argv[0], args);
}

static void execute(pub_conn_t *c, const comet_resp_cmd_t *cmd)
{
    const pub_command_t *pc = find_command(cmd);
    int argc = (int)cmd->argc;

    STAT_ADD(c->srv, commands, 1);
    if (!pc) {
        reply_unknown(c, cmd);
    }
    else if ((pc->arity > 0 && argc != pc->arity)
             || (pc->arity < 0 && argc < -pc->arity)) {
        reply_arity(c, pc->name);
    }
    else {
        pc->fn(c, cmd);
    }
}

/* ---- connections -------------------------------------------------------------- */

static void set_interest(pub_conn_t *c)
{
    comet_pubsrv_t *srv = c->srv;
    int want = 0;

    if (!c->closing && !c->eof && c->out->len < srv->cfg.max_output) {
        want |= COMET_LOOP_READ;
    }
    if (c->out->len) {
        want |= COMET_LOOP_WRITE;
    }
    comet_loop_io_modify(srv->loop, &c->io, want);

    /* Waiting on the client to take its replies: over the bound, or with
     * a last reply before closing.  A client that takes nothing at all for
     * stuck_timeout is let go (flush re-arms on every bit of progress). */
    if (c->out->len && (c->closing || c->out->len >= srv->cfg.max_output)) {
        if (!comet_timer_armed(&c->stuck)) {
            comet_timer_arm_in(srv->loop, &c->stuck, srv->cfg.stuck_timeout);
        }
    }
    else if (comet_timer_armed(&c->stuck)) {
        comet_timer_cancel(srv->loop, &c->stuck);
    }
}

/* Returns -1 when the connection is to be closed at once. */
static int conn_flush(pub_conn_t *c)
{
    comet_pubsrv_t *srv = c->srv;
    int progress = 0;

    while (c->out->len) {
        ssize_t n = send(c->fd, c->out->data, c->out->len,
                         MSG_NOSIGNAL | MSG_DONTWAIT);

        if (n > 0) {
            comet_buf_consume(c->out, (apr_size_t)n);
            progress = 1;
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        }
        return -1;
    }
    if (c->out->len == 0 && c->out->cap > srv->cfg.max_output) {
        /* One large reply should not cost the connection's memory for
         * the rest of its life. */
        comet_buf_release(c->out);
    }
    if (progress && comet_timer_armed(&c->stuck)) {
        comet_timer_arm_in(srv->loop, &c->stuck, srv->cfg.stuck_timeout);
    }
    return 0;
}

/* Run the complete commands in the input buffer.  Returns 1 when it
 * stopped because the replies passed max_output (commands may be left),
 * 0 when the input holds no complete command (or the connection is
 * closing). */
static int conn_process(pub_conn_t *c)
{
    comet_pubsrv_t *srv = c->srv;
    apr_size_t start = 0, consumed;
    comet_resp_cmd_t cmd;
    apr_status_t rv;
    int blocked = 0;

    while (!c->closing && !c->broken) {
        if (c->out->len >= srv->cfg.max_output) {
            blocked = 1;
            break;
        }
        rv = comet_resp_parse(c->parser, c->in + start, c->in_len - start,
                              &consumed, &cmd);
        start += consumed;
        if (rv == APR_SUCCESS) {
            execute(c, &cmd);
            continue;
        }
        if (rv == APR_INCOMPLETE) {
            break;
        }
        /* Framing is lost: answer and hang up, as Redis does. */
        if (rv == COMET_ETOOBIG) {
            reply_store_error(c, COMET_ETOOBIG);
        }
        else {
            reply_err(c, "ERR %s", comet_resp_parser_error(c->parser));
        }
        comet_log(COMET_LOG_INFO, 0, "publish socket: client %"
                  APR_UINT64_T_FMT " closed: %s", c->id,
                  rv == COMET_ETOOBIG ? "message larger than "
                  "CometMaxMessageSize" : comet_resp_parser_error(c->parser));
        STAT_ADD(srv, dropped, 1);
        c->closing = 1;
        c->in_len = start = 0;
    }
    if (start) {
        memmove(c->in, c->in + start, c->in_len - start);
        c->in_len -= start;
    }
    return blocked;
}

/* One recv().  Returns -1 when the connection is to be closed at once. */
static int conn_read(pub_conn_t *c)
{
    comet_pubsrv_t *srv = c->srv;
    ssize_t n;

    if (c->in_cap - c->in_len < PUBSRV_READ_CHUNK && c->in_cap < srv->in_max) {
        apr_size_t cap = c->in_cap * 2;
        char *in;

        if (cap < c->in_len + PUBSRV_READ_CHUNK) {
            cap = c->in_len + PUBSRV_READ_CHUNK;
        }
        if (cap > srv->in_max) {
            cap = srv->in_max;
        }
        if (!(in = realloc(c->in, cap))) {
            comet_log(COMET_LOG_ERR, APR_ENOMEM, "publish socket: client %"
                      APR_UINT64_T_FMT ": no memory for its input", c->id);
            return -1;
        }
        c->in = in;
        c->in_cap = cap;
    }
    if (c->in_len == c->in_cap) {
        /* A whole buffer and still no complete command. */
        reply_err(c, "ERR Protocol error: request larger than %"
                  APR_SIZE_T_FMT " bytes", srv->in_max);
        comet_log(COMET_LOG_INFO, 0, "publish socket: client %"
                  APR_UINT64_T_FMT " closed: request too large", c->id);
        STAT_ADD(srv, dropped, 1);
        c->closing = 1;
        c->in_len = 0;
        return 0;
    }
    n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
    if (n > 0) {
        c->in_len += (apr_size_t)n;
    }
    else if (n == 0) {
        c->eof = 1;
    }
    else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        return -1;
    }
    return 0;
}

static void conn_service(pub_conn_t *c)
{
    comet_pubsrv_t *srv = c->srv;

    for (;;) {
        int blocked = conn_process(c);

        if (c->broken) {
            comet_log(COMET_LOG_WARNING, APR_ENOSPC, "publish socket: client "
                      "%" APR_UINT64_T_FMT " closed: a reply could not be "
                      "buffered", c->id);
            conn_close(c);
            return;
        }
        if (conn_flush(c) < 0) {
            conn_close(c);
            return;
        }
        if (!blocked || c->out->len >= srv->cfg.max_output) {
            break;
        }
        /* The socket took enough of the replies: run more commands. */
    }
    if (c->eof && !c->closing) {
        /* Every complete command has run; nothing more will come. */
        c->closing = 1;
    }
    if (c->closing && c->out->len == 0) {
        conn_close(c);
        return;
    }
    if (c->in_len == 0 && c->in_cap > PUBSRV_READ_CHUNK) {
        /* Back to a small buffer after a large message. */
        char *in = realloc(c->in, PUBSRV_READ_CHUNK);

        if (in) {
            c->in = in;
            c->in_cap = PUBSRV_READ_CHUNK;
        }
    }
    set_interest(c);
}

static void conn_io(comet_loop_t *loop, int fd, int events, void *baton)
{
    pub_conn_t *c = baton;
    int reading = !c->closing && !c->eof
                  && c->out->len < c->srv->cfg.max_output;

    if (events & COMET_LOOP_ERROR) {
        conn_close(c);
        return;
    }
    if (events & (COMET_LOOP_READ | COMET_LOOP_HUP)) {
        if (!reading) {
            /* Only a full hangup is reported without READ interest: the
             * client can take no reply any more. */
            if (events & COMET_LOOP_HUP) {
                conn_close(c);
                return;
            }
        }
        else if (conn_read(c) < 0) {
            conn_close(c);
            return;
        }
    }
    conn_service(c);
}

static void conn_stuck(comet_loop_t *loop, comet_timer_t *timer, void *baton)
{
    pub_conn_t *c = baton;

    comet_log(COMET_LOG_INFO, 0, "publish socket: client %" APR_UINT64_T_FMT
              " closed: it took none of its %" APR_SIZE_T_FMT " bytes of "
              "replies for %" APR_TIME_T_FMT " s", c->id, c->out->len,
              apr_time_sec(c->srv->cfg.stuck_timeout));
    STAT_ADD(c->srv, dropped, 1);
    conn_close(c);
}

static apr_status_t conn_cleanup(void *data)
{
    pub_conn_t *c = data;
    comet_pubsrv_t *srv = c->srv;

    if (c->watched) {
        comet_loop_io_remove(srv->loop, &c->io);
    }
    comet_timer_cancel(srv->loop, &c->stuck);
    close(c->fd);
    free(c->in);
    if (c->prev) {
        c->prev->next = c->next;
    }
    else {
        srv->conns = c->next;
    }
    if (c->next) {
        c->next->prev = c->prev;
    }
    __atomic_sub_fetch(&srv->st.clients, 1, __ATOMIC_RELAXED);
    return APR_SUCCESS;
}

static void conn_close(pub_conn_t *c)
{
    apr_pool_destroy(c->pool);
}

static apr_status_t conn_open(comet_pubsrv_t *srv, int fd)
{
    apr_pool_t *p;
    pub_conn_t *c;
    apr_status_t rv;

    if ((rv = apr_pool_create(&p, srv->pool)) != APR_SUCCESS) {
        close(fd);
        return rv;
    }
    c = apr_pcalloc(p, sizeof(*c));
    c->srv = srv;
    c->pool = p;
    c->fd = fd;
    c->proto = COMET_RESP2;
    c->id = ++srv->next_id;
    c->since = comet_now_mono();
    comet_timer_init(&c->stuck, conn_stuck, c);
    c->next = srv->conns;
    if (c->next) {
        c->next->prev = c;
    }
    srv->conns = c;
    __atomic_add_fetch(&srv->st.clients, 1, __ATOMIC_RELAXED);
    apr_pool_cleanup_register(p, c, conn_cleanup, apr_pool_cleanup_null);

    if ((rv = comet_resp_parser_create(&c->parser, &srv->limits, p))
        != APR_SUCCESS
        || (rv = comet_buf_create(&c->out, p, 0, srv->cfg.max_output
                                                 + PUBSRV_REPLY_MAX))
           != APR_SUCCESS) {
        conn_close(c);
        return rv;
    }
    if (!(c->in = malloc(PUBSRV_READ_CHUNK))) {
        conn_close(c);
        return APR_ENOMEM;
    }
    c->in_cap = PUBSRV_READ_CHUNK;
    if ((rv = comet_loop_io_add(srv->loop, &c->io, fd, COMET_LOOP_READ,
                                conn_io, c)) != APR_SUCCESS) {
        conn_close(c);
        return rv;
    }
    c->watched = 1;
    STAT_ADD(srv, accepted, 1);
    comet_log(COMET_LOG_DEBUG, 0, "publish socket: client %" APR_UINT64_T_FMT
              " connected", c->id);
    return APR_SUCCESS;
}

/* ---- the listener --------------------------------------------------------------- */

static void refuse_client(int fd)
{
    static const char msg[] = "-ERR max number of clients reached\r\n";

    /* Best effort: a new socket has room for a line. */
    if (send(fd, msg, sizeof(msg) - 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
        /* nothing more to tell it */
    }
    close(fd);
}

static void listener_resume(comet_loop_t *loop, comet_timer_t *timer,
                            void *baton)
{
    comet_pubsrv_t *srv = baton;

    comet_loop_io_modify(loop, &srv->lio, COMET_LOOP_READ);
}

static void listener_io(comet_loop_t *loop, int fd, int events, void *baton)
{
    comet_pubsrv_t *srv = baton;
    int i;

    for (i = 0; i < PUBSRV_ACCEPT_BATCH; i++) {
        int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (cfd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                /* Another process of the server took it, or none left. */
                return;
            }
            comet_log(errno == EMFILE || errno == ENFILE
                      ? COMET_LOG_WARNING : COMET_LOG_ERR,
                      APR_FROM_OS_ERROR(errno), "publish socket: cannot "
                      "accept a connection; trying again in %d ms",
                      (int)apr_time_as_msec(PUBSRV_ACCEPT_PAUSE));
            comet_loop_io_modify(loop, &srv->lio, 0);
            comet_timer_arm_in(loop, &srv->resume, PUBSRV_ACCEPT_PAUSE);
            return;
        }
        if (__atomic_load_n(&srv->st.clients, __ATOMIC_RELAXED)
            >= srv->cfg.max_clients) {
            refuse_client(cfd);
            continue;
        }
        conn_open(srv, cfd);
    }
}

/* ---- the server ------------------------------------------------------------------ */

static apr_status_t srv_cleanup(void *data)
{
    comet_pubsrv_t *srv = data;

    /* The connections' pools (children of this one) are gone already. */
    if (srv->listening) {
        comet_loop_io_remove(srv->loop, &srv->lio);
        srv->listening = 0;
    }
    comet_timer_cancel(srv->loop, &srv->resume);
    return APR_SUCCESS;
}

apr_status_t comet_pubsrv_create(comet_pubsrv_t **out, comet_loop_t *loop,
                                 const comet_pubsrv_config_t *cfg,
                                 apr_pool_t *p)
{
    comet_store_config_t scfg;
    apr_allocator_t *alloc;
    comet_pubsrv_t *srv;
    apr_pool_t *pool;
    apr_status_t rv;

    if ((rv = apr_allocator_create(&alloc)) != APR_SUCCESS) {
        return rv;
    }
    if ((rv = apr_pool_create_ex(&pool, p, NULL, alloc)) != APR_SUCCESS) {
        apr_allocator_destroy(alloc);
        return rv;
    }
    apr_allocator_owner_set(alloc, pool);
    /* Keep a few connections' worth of freed blocks, not every peak. */
    apr_allocator_max_free_set(alloc, 1024 * 1024);
    apr_pool_tag(pool, "comet_pubsrv");

    srv = apr_pcalloc(pool, sizeof(*srv));
    srv->cfg = *cfg;
    srv->loop = loop;
    srv->pool = pool;
    srv->started = comet_now_mono();
    comet_store_get_config(cfg->store, &scfg);
    srv->max_channel_id = scfg.max_channel_id;
    if (!srv->cfg.max_message) {
        srv->cfg.max_message = scfg.max_message_size;
    }
    if (!srv->cfg.max_clients) {
        srv->cfg.max_clients = PUBSRV_DEFAULT_CLIENTS;
    }
    if (!srv->cfg.max_output) {
        srv->cfg.max_output = PUBSRV_DEFAULT_OUTPUT;
    }
    if (srv->cfg.stuck_timeout <= 0) {
        srv->cfg.stuck_timeout = PUBSRV_DEFAULT_STUCK;
    }
    comet_resp_limits_default(&srv->limits);
    srv->limits.max_bulk = srv->cfg.max_message + COMET_PUBSRV_BULK_SLACK;
    srv->in_max = srv->limits.max_bulk + PUBSRV_ARGS_ROOM;
    if ((rv = apr_pool_create(&srv->scratch, pool)) != APR_SUCCESS) {
        return rv;
    }
    comet_timer_init(&srv->resume, listener_resume, srv);
    apr_pool_cleanup_register(pool, srv, srv_cleanup,
                              apr_pool_cleanup_null);
    if (cfg->listen_fd >= 0) {
        if ((rv = comet_loop_io_add(loop, &srv->lio, cfg->listen_fd,
                                    COMET_LOOP_READ, listener_io, srv))
            != APR_SUCCESS) {
            return rv;
        }
        srv->listening = 1;
    }
    *out = srv;
    return APR_SUCCESS;
}

apr_status_t comet_pubsrv_adopt(comet_pubsrv_t *srv, int fd)
{
    int flags = fcntl(fd, F_GETFL);

    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        apr_status_t rv = APR_FROM_OS_ERROR(errno);

        close(fd);
        return rv;
    }
    if (__atomic_load_n(&srv->st.clients, __ATOMIC_RELAXED)
        >= srv->cfg.max_clients) {
        refuse_client(fd);
        return APR_EAGAIN;
    }
    return conn_open(srv, fd);
}

void comet_pubsrv_stats(comet_pubsrv_t *srv, comet_pubsrv_stats_t *out)
{
    out->clients = __atomic_load_n(&srv->st.clients, __ATOMIC_RELAXED);
    out->accepted = __atomic_load_n(&srv->st.accepted, __ATOMIC_RELAXED);
    out->commands = __atomic_load_n(&srv->st.commands, __ATOMIC_RELAXED);
    out->publishes = __atomic_load_n(&srv->st.publishes, __ATOMIC_RELAXED);
    out->errors = __atomic_load_n(&srv->st.errors, __ATOMIC_RELAXED);
    out->dropped = __atomic_load_n(&srv->st.dropped, __ATOMIC_RELAXED);
}
