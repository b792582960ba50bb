/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <apr_hash.h>
#include <apr_strings.h>

#include "comet_redis.h"

const char *comet_redis_strerror(apr_status_t rv, char *buf, apr_size_t len)
{
    switch (rv) {
    case COMET_REDIS_EDOWN:   return "not connected to Redis";
    case COMET_REDIS_ELOST:   return "connection to Redis lost";
    case COMET_REDIS_ECLOSED: return "Redis client closed";
    case COMET_REDIS_EAUTH:   return "Redis refused the handshake";
    case COMET_REDIS_EURL:    return "invalid Redis URL";
    default:
        return comet_strerror(rv, buf, len);
    }
}

/* ---- URLs --------------------------------------------------------------- */

static apr_status_t url_fail(char *err, apr_size_t errlen, const char *fmt,
                             ...)
    __attribute__((format(printf, 3, 4)));

static apr_status_t url_fail(char *err, apr_size_t errlen, const char *fmt,
                             ...)
{
    va_list ap;

    va_start(ap, fmt);
    apr_vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return COMET_REDIS_EURL;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* s[0, len) with %XX decoded, in p; NULL on a bad escape or a NUL. */
static char *pct_decode(const char *s, apr_size_t len, apr_pool_t *p)
{
    char *out = apr_palloc(p, len + 1), *o = out;
    apr_size_t i;

    for (i = 0; i < len; i++) {
        if (s[i] == '%') {
            int hi, lo;

            if (i + 2 >= len) {
                return NULL;
            }
            hi = hexval(s[i + 1]);
            lo = hexval(s[i + 2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                return NULL;
            }
            *o++ = (char)(hi * 16 + lo);
            i += 2;
        }
        else {
            *o++ = s[i];
        }
    }
    *o = '\0';
    return out;
}

/* Digits s[0, len) as a number in [min, max]; -1 otherwise. */
static long parse_num(const char *s, apr_size_t len, long min, long max)
{
    long v = 0;
    apr_size_t i;

    if (len == 0 || len > 9) {
        return -1;
    }
    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
        v = v * 10 + (s[i] - '0');
    }
    return v < min || v > max ? -1 : v;
}

/* "host[:port]" or "[v6][:port]" in s[0, len). */
static apr_status_t parse_hostport(const char *s, apr_size_t len,
                                   comet_redis_addr_t *addr, apr_pool_t *p,
                                   char *err, apr_size_t errlen)
{
    const char *host, *colon = NULL;
    apr_size_t hlen;
    long port = 6379;
    apr_size_t i;

    if (len == 0) {
        return url_fail(err, errlen, "no host");
    }
    if (s[0] == '[') {
        const char *close = memchr(s, ']', len);

        if (!close) {
            return url_fail(err, errlen, "IPv6 address without ']'");
        }
        host = s + 1;
        hlen = (apr_size_t)(close - host);
        if (close + 1 < s + len) {
            if (close[1] != ':') {
                return url_fail(err, errlen, "junk after ']'");
            }
            colon = close + 1;
        }
        if (hlen == 0 || !memchr(host, ':', hlen)) {
            return url_fail(err, errlen, "'[%.*s]' is not an IPv6 address",
                            (int)hlen, host);
        }
    }
    else {
        host = s;
        colon = memchr(s, ':', len);
        hlen = colon ? (apr_size_t)(colon - s) : len;
        if (hlen == 0) {
            return url_fail(err, errlen, "no host");
        }
        for (i = 0; i < hlen; i++) {
            char c = host[i];

            if (!(c == '.' || c == '-' || c == '_' || (c >= '0' && c <= '9')
                  || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))) {
                return url_fail(err, errlen, "invalid host name '%.*s'",
                                (int)hlen, host);
            }
        }
    }
    if (colon) {
        port = parse_num(colon + 1, (apr_size_t)(s + len - colon - 1), 1,
                         65535);
        if (port < 0) {
            return url_fail(err, errlen, "invalid port '%.*s' (1-65535)",
                            (int)(s + len - colon - 1), colon + 1);
        }
    }
    addr->host = apr_pstrmemdup(p, host, hlen);
    addr->port = (apr_port_t)port;
    addr->path = NULL;
    return APR_SUCCESS;
}

static const char *addr_display(const comet_redis_addr_t *a, apr_pool_t *p)
{
    if (a->path) {
        return apr_pstrcat(p, "unix:", a->path, NULL);
    }
    return strchr(a->host, ':')
           ? apr_psprintf(p, "[%s]:%u", a->host, (unsigned)a->port)
           : apr_psprintf(p, "%s:%u", a->host, (unsigned)a->port);
}

/* user:password in s[0, len). */
static apr_status_t parse_userinfo(const char *s, apr_size_t len,
                                   comet_redis_url_t *url, apr_pool_t *p,
                                   char *err, apr_size_t errlen)
{
    const char *colon = memchr(s, ':', len);
    apr_size_t ulen = colon ? (apr_size_t)(colon - s) : len;

    if (ulen) {
        if (!(url->user = pct_decode(s, ulen, p)) || !*url->user) {
            return url_fail(err, errlen, "invalid %%-escape in the user name");
        }
    }
    if (colon) {
        url->password = pct_decode(colon + 1,
                                   (apr_size_t)(s + len - colon - 1), p);
        if (!url->password) {
            /* Not a word about where: that would show part of it. */
            return url_fail(err, errlen, "invalid %%-escape in the password");
        }
        if (!*url->password) {
            url->password = NULL;
        }
    }
    return APR_SUCCESS;
}

static const char *display_userinfo(const comet_redis_url_t *url,
                                    apr_pool_t *p)
{
    if (!url->user && !url->password) {
        return "";
    }
    return apr_pstrcat(p, url->user ? url->user : "",
                       url->password ? ":***" : "", "@", NULL);
}

static apr_status_t parse_unix(comet_redis_url_t *url, const char *rest,
                               apr_pool_t *p, char *err, apr_size_t errlen)
{
    const char *q = strchr(rest, '?');
    apr_size_t plen = q ? (apr_size_t)(q - rest) : strlen(rest);
    struct sockaddr_un sun;

    if (strncmp(rest, "//", 2) == 0) {
        rest += 2;                          /* unix:///path */
        plen -= 2;
    }
    if (plen == 0 || rest[0] != '/') {
        return url_fail(err, errlen, "a Unix socket path must be absolute "
                        "(unix:/path/redis.sock)");
    }
    if (plen >= sizeof(sun.sun_path)) {
        return url_fail(err, errlen, "Unix socket path longer than %lu bytes",
                        (unsigned long)sizeof(sun.sun_path) - 1);
    }
    url->addrs = apr_pcalloc(p, sizeof(*url->addrs));
    url->naddrs = 1;
    url->addrs[0].path = apr_pstrmemdup(p, rest, plen);
    url->addrs[0].host = "";
    while (q) {
        const char *item = q + 1, *eq, *end;
        apr_size_t ilen;

        q = strchr(item, '&');
        end = q ? q : item + strlen(item);
        ilen = (apr_size_t)(end - item);
        eq = memchr(item, '=', ilen);
        if (!eq) {
            return url_fail(err, errlen, "'%.*s': expected db=N or user=NAME",
                            (int)ilen, item);
        }
        if (eq - item == 2 && strncmp(item, "db", 2) == 0) {
            long db = parse_num(eq + 1, (apr_size_t)(end - eq - 1), 0,
                                1 << 20);

            if (db < 0) {
                return url_fail(err, errlen, "invalid database number "
                                "'%.*s'", (int)(end - eq - 1), eq + 1);
            }
            url->db = (int)db;
        }
        else if (eq - item == 4 && strncmp(item, "user", 4) == 0) {
            url->user = pct_decode(eq + 1, (apr_size_t)(end - eq - 1), p);
            if (!url->user || !*url->user) {
                return url_fail(err, errlen, "invalid user name");
            }
        }
        else if (eq - item == 8 && strncmp(item, "password", 8) == 0) {
            return url_fail(err, errlen, "no password in a unix: URL: give "
                            "it in a password file");
        }
        else {
            return url_fail(err, errlen, "unknown parameter '%.*s' "
                            "(db, user)", (int)(eq - item), item);
        }
    }
    url->display = apr_psprintf(p, "unix:%s%s%s", url->addrs[0].path,
                                url->db ? apr_psprintf(p, "?db=%d", url->db)
                                        : "",
                                url->user ? apr_pstrcat(p, url->db ? "&" : "?",
                                                        "user=", url->user,
                                                        NULL) : "");
    return APR_SUCCESS;
}

static apr_status_t url_parse(comet_redis_url_t **urlp, const char *text,
                              apr_pool_t *p, char *err, apr_size_t errlen);

apr_status_t comet_redis_url_parse(comet_redis_url_t **urlp, const char *text,
                                   apr_pool_t *p, char *err,
                                   apr_size_t errlen)
{
    apr_status_t rv = url_parse(urlp, text, p, err, errlen);

    if (rv != APR_SUCCESS && text && strchr(text, '@') && errlen) {
        /* A URL with user info may have been cut in the wrong place (a
         * '/' in the password): no fragment of it may be quoted back. */
        char *quote = strchr(err, '\'');

        if (quote) {
            *quote = '\0';
            apr_snprintf(err + strlen(err), errlen - strlen(err),
                         "(not shown: the URL holds a password; write '/', "
                         "'@', ':' in one as %%2F, %%40, %%3A)");
        }
    }
    return rv;
}

static apr_status_t url_parse(comet_redis_url_t **urlp, const char *text,
                              apr_pool_t *p, char *err, apr_size_t errlen)
{
    comet_redis_url_t *url = apr_pcalloc(p, sizeof(*url));
    const char *rest, *auth_end, *at, *hp;
    apr_size_t i, n;
    apr_status_t rv;
    int cluster;

    if (!text || !*text) {
        return url_fail(err, errlen, "empty Redis URL");
    }
    for (i = 0; text[i]; i++) {
        if ((unsigned char)text[i] <= 0x20 || text[i] == 0x7f) {
            return url_fail(err, errlen, "blank or control character in "
                            "the Redis URL");
        }
    }
    if (strncasecmp(text, "unix:", 5) == 0) {
        url->kind = COMET_REDIS_UNIX;
        if ((rv = parse_unix(url, text + 5, p, err, errlen)) != APR_SUCCESS) {
            return rv;
        }
        *urlp = url;
        return APR_SUCCESS;
    }
    if (strncasecmp(text, "redis://", 8) == 0) {
        cluster = 0;
        rest = text + 8;
    }
    else if (strncasecmp(text, "redis-cluster://", 16) == 0) {
        cluster = 1;
        rest = text + 16;
    }
    else if (strncasecmp(text, "rediss://", 9) == 0) {
        return url_fail(err, errlen, "TLS to Redis (rediss://) is not "
                        "supported; use redis://, unix: or redis-cluster://");
    }
    else {
        const char *colon = strchr(text, ':');

        return url_fail(err, errlen, "unsupported Redis URL scheme '%.*s' "
                        "(use redis://host:port/db, unix:/path/redis.sock or "
                        "redis-cluster://host1:port1,host2:port2)",
                        colon ? (int)(colon - text) : 0, text);
    }
    url->kind = cluster ? COMET_REDIS_CLUSTER : COMET_REDIS_TCP;
    if (strpbrk(rest, "?#")) {
        return url_fail(err, errlen, "no query or fragment in a %s URL",
                        cluster ? "redis-cluster://" : "redis://");
    }
    auth_end = strchr(rest, '/');
    if (!auth_end) {
        auth_end = rest + strlen(rest);
    }
    /* The last '@' of the authority ends the user info (a password may
     * hold an unescaped '@'). */
    at = NULL;
    for (hp = rest; hp < auth_end; hp++) {
        if (*hp == '@') {
            at = hp;
        }
    }
    if (at) {
        if ((rv = parse_userinfo(rest, (apr_size_t)(at - rest), url, p, err,
                                 errlen)) != APR_SUCCESS) {
            return rv;
        }
        hp = at + 1;
    }
    else {
        hp = rest;
    }
    if (*auth_end == '/' && auth_end[1]) {
        long db = parse_num(auth_end + 1, strlen(auth_end + 1), 0, 1 << 20);

        if (db < 0) {
            return url_fail(err, errlen, "invalid database number '%s'",
                            auth_end + 1);
        }
        if (cluster && db != 0) {
            return url_fail(err, errlen, "a Redis Cluster has database 0 "
                            "only");
        }
        url->db = (int)db;
    }
    /* Host list: one, or a cluster's comma-separated seeds. */
    n = 1;
    for (i = 0; hp + i < auth_end; i++) {
        n += hp[i] == ',';
    }
    if (n > 1 && !cluster) {
        return url_fail(err, errlen, "several hosts: write redis-cluster:// "
                        "for a cluster");
    }
    if (n > COMET_REDIS_MAX_SEEDS) {
        return url_fail(err, errlen, "more than %d seed nodes",
                        COMET_REDIS_MAX_SEEDS);
    }
    url->addrs = apr_pcalloc(p, n * sizeof(*url->addrs));
    url->naddrs = n;
    for (i = 0; i < n; i++) {
        const char *comma = memchr(hp, ',', (apr_size_t)(auth_end - hp));
        const char *end = comma ? comma : auth_end;

        if ((rv = parse_hostport(hp, (apr_size_t)(end - hp), &url->addrs[i],
                                 p, err, errlen)) != APR_SUCCESS) {
            return rv;
        }
        hp = end + 1;
    }
    {
        const char *hosts = addr_display(&url->addrs[0], p);

        for (i = 1; i < n; i++) {
            hosts = apr_pstrcat(p, hosts, ",", addr_display(&url->addrs[i], p),
                                NULL);
        }
        url->display = apr_psprintf(p, "%s://%s%s%s",
                                    cluster ? "redis-cluster" : "redis",
                                    display_userinfo(url, p), hosts,
                                    url->db ? apr_psprintf(p, "/%d", url->db)
                                            : "");
    }
    *urlp = url;
    return APR_SUCCESS;
}

apr_status_t comet_redis_url_password_file(comet_redis_url_t *url,
                                           const char *path, apr_pool_t *p,
                                           char *err, apr_size_t errlen)
{
    char buf[514];
    ssize_t n;
    size_t len;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    char *nl;

    if (fd < 0) {
        return url_fail(err, errlen, "cannot open the Redis password file "
                        "%s: %s", path, strerror(errno));
    }
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n < 0) {
        return url_fail(err, errlen, "cannot read the Redis password file "
                        "%s: %s", path, strerror(errno));
    }
    buf[n] = '\0';
    nl = memchr(buf, '\n', (size_t)n);
    len = nl ? (size_t)(nl - buf) : (size_t)n;
    if (!nl && (size_t)n == sizeof(buf) - 1) {
        return url_fail(err, errlen, "the first line of the Redis password "
                        "file %s is longer than 512 bytes", path);
    }
    if (len && buf[len - 1] == '\r') {
        len--;
    }
    if (len == 0 || memchr(buf, '\0', len)) {
        return url_fail(err, errlen, "the Redis password file %s has no "
                        "password on its first line", path);
    }
    url->password = apr_pstrmemdup(p, buf, len);
    memset(buf, 0, sizeof(buf));
    /* The display form now says there is one. */
    if (url->kind == COMET_REDIS_UNIX) {
        url->display = apr_pstrcat(p, url->display, " (password from file)",
                                   NULL);
    }
    else if (!strstr(url->display, ":***@")) {
        const char *sep = strstr(url->display, "://") + 3;
        const char *at = strchr(sep, '@');

        url->display = at
            ? apr_psprintf(p, "%.*s:***%s", (int)(at - url->display),
                           url->display, at)
            : apr_psprintf(p, "%.*s:***@%s", (int)(sep - url->display),
                           url->display, sep);
    }
    return APR_SUCCESS;
}

/* ---- options and formatting --------------------------------------------- */

void comet_redis_opts_default(comet_redis_opts_t *o)
{
    memset(o, 0, sizeof(*o));
    o->connect_timeout = apr_time_from_sec(2);
    o->command_timeout = apr_time_from_sec(5);
    o->backoff_min = apr_time_from_msec(100);
    o->backoff_max = apr_time_from_sec(5);
    o->max_pending = 100000;
    o->max_out = 32 * 1024 * 1024;
    o->max_in = 80 * 1024 * 1024;
    o->max_channels = 1000000;
    comet_resp_reply_limits_default(&o->reply);
}

apr_status_t comet_redis_format(comet_buf_t *out, int argc,
                                const char *const *argv,
                                const apr_size_t *argvlen)
{
    apr_size_t start = out->len, need = 16;
    apr_status_t rv;
    char head[32];
    int i, n;

    if (argc < 1) {
        return APR_EINVAL;
    }
    for (i = 0; i < argc; i++) {
        need += 24 + (argvlen ? argvlen[i] : strlen(argv[i]));
    }
    if ((rv = comet_buf_reserve(out, need)) != APR_SUCCESS) {
        return rv;
    }
    n = apr_snprintf(head, sizeof(head), "*%d\r\n", argc);
    comet_buf_append(out, head, (apr_size_t)n);
    for (i = 0; i < argc; i++) {
        apr_size_t len = argvlen ? argvlen[i] : strlen(argv[i]);

        n = apr_snprintf(head, sizeof(head), "$%lu\r\n", (unsigned long)len);
        if (comet_buf_append(out, head, (apr_size_t)n) != APR_SUCCESS
            || comet_buf_append(out, argv[i], len) != APR_SUCCESS
            || comet_buf_append(out, "\r\n", 2) != APR_SUCCESS) {
            comet_buf_truncate(out, start);
            return APR_ENOSPC;
        }
    }
    return APR_SUCCESS;
}

/* ---- connection --------------------------------------------------------- */

typedef enum {
    CONN_IDLE,          /* created, not started                           */
    CONN_CONNECTING,    /* non-blocking connect under way                 */
    CONN_HANDSHAKE,     /* HELLO / AUTH / SELECT                          */
    CONN_READY,
    CONN_BACKOFF,       /* down; the timer brings the next attempt        */
    CONN_CLOSED
} conn_state_e;

/* Pub/sub commands: their confirmations are pushes named after them. */
#define FAM_NONE          0
#define FAM_SUBSCRIBE     1
#define FAM_SSUBSCRIBE    2
#define FAM_PSUBSCRIBE    3
#define FAM_UNSUBSCRIBE   4
#define FAM_SUNSUBSCRIBE  5
#define FAM_PUNSUBSCRIBE  6

static const char *const fam_names[] = {
    "", "subscribe", "ssubscribe", "psubscribe", "unsubscribe",
    "sunsubscribe", "punsubscribe"
};

static int fam_of(const char *s, apr_size_t len)
{
    int i;

    for (i = 1; i <= FAM_PUNSUBSCRIBE; i++) {
        if (strlen(fam_names[i]) == len
            && strncasecmp(s, fam_names[i], len) == 0) {
            return i;
        }
    }
    return FAM_NONE;
}

typedef struct redis_cmd_t redis_cmd_t;
struct redis_cmd_t {
    redis_cmd_t          *next;
    comet_redis_reply_fn *fn;
    void                 *baton;
    apr_time_t            deadline;
    apr_uint64_t          end;      /* stream offset after its last byte  */
    int                   family;
    apr_size_t            expect;   /* confirmations still due            */
};

typedef struct cmd_queue_t {
    redis_cmd_t *head;
    redis_cmd_t *tail;
} cmd_queue_t;

struct comet_redis_t {
    apr_pool_t                *pool;
    comet_loop_t              *loop;
    comet_redis_opts_t         opts;
    const comet_redis_url_t   *url;
    comet_redis_addr_t         addr;
    const char                *name;

    conn_state_e               state;
    int                        fd;
    comet_loop_io_t            io;
    int                        io_on;
    int                        interest;
    comet_timer_t              timer;

    /* Bytes to write: out[out_off, len).  Commands queued before the
     * handshake is done wait in hold, their records in held. */
    comet_buf_t               *out;
    apr_size_t                 out_off;
    comet_buf_t               *hold;
    comet_buf_t               *scratch; /* one command being formatted  */
    comet_buf_t               *in;
    comet_resp_reply_parser_t *parser;

    cmd_queue_t                fifo;    /* written or in out, in order  */
    cmd_queue_t                held;
    redis_cmd_t               *free_cmds;
    apr_size_t                 pending; /* fifo + held                  */
    apr_uint64_t               appended;/* bytes ever put in out        */
    apr_uint64_t               written; /* of them, written             */

    int                        proto;
    int                        pubsub;  /* RESP2 subscribed mode         */
    int                        attempts;/* failed since the last up      */
    apr_uint32_t               rng;
    int                        reported;/* -1 nothing yet, 0 down, 1 up  */
    apr_time_t                 log_next;
    unsigned                   log_quiet;

    comet_redis_state_fn      *state_fn;
    void                      *state_baton;
    comet_redis_push_fn       *push_fn;
    void                      *push_baton;
    comet_redis_stats_t        stats;
};

/* Rate limit of repeated connection failures in the log. */
#define CONN_LOG_EVERY apr_time_from_sec(30)

static void conn_connect(comet_redis_t *c);
static void conn_down(comet_redis_t *c, apr_status_t rv, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void conn_io(comet_loop_t *loop, int fd, int events, void *baton);

static redis_cmd_t *cmd_new(comet_redis_t *c)
{
    redis_cmd_t *cmd = c->free_cmds;

    if (cmd) {
        c->free_cmds = cmd->next;
    }
    else {
        cmd = apr_palloc(c->pool, sizeof(*cmd));
    }
    memset(cmd, 0, sizeof(*cmd));
    return cmd;
}

static void cmd_free(comet_redis_t *c, redis_cmd_t *cmd)
{
    cmd->next = c->free_cmds;
    c->free_cmds = cmd;
}

static void queue_push(cmd_queue_t *q, redis_cmd_t *cmd)
{
    cmd->next = NULL;
    if (q->tail) {
        q->tail->next = cmd;
    }
    else {
        q->head = cmd;
    }
    q->tail = cmd;
}

static redis_cmd_t *queue_pop(cmd_queue_t *q)
{
    redis_cmd_t *cmd = q->head;

    if (cmd) {
        q->head = cmd->next;
        if (!q->head) {
            q->tail = NULL;
        }
    }
    return cmd;
}

static apr_uint32_t conn_random(comet_redis_t *c)
{
    /* xorshift32: jitter needs spread, not secrecy. */
    apr_uint32_t x = c->rng;

    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return c->rng = x;
}

static void set_interest(comet_redis_t *c, int interest)
{
    if (c->io_on && interest != c->interest) {
        comet_loop_io_modify(c->loop, &c->io, interest);
        c->interest = interest;
    }
}

static void arm_timer(comet_redis_t *c, apr_time_t when)
{
    apr_status_t rv = comet_timer_arm(c->loop, &c->timer, when);

    if (rv != APR_SUCCESS) {
        /* Without its timer the connection could wait for ever. */
        comet_log(COMET_LOG_ERR, rv, "redis %s: cannot arm a timer", c->name);
    }
}

static void teardown_socket(comet_redis_t *c)
{
    if (c->io_on) {
        comet_loop_io_remove(c->loop, &c->io);
        c->io_on = 0;
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    comet_timer_cancel(c->loop, &c->timer);
    c->out->len = 0;
    c->out_off = 0;
    c->hold->len = 0;
    c->in->len = 0;
    comet_resp_reply_reset(c->parser);
    c->pubsub = 0;
}

static apr_status_t conn_cleanup(void *data)
{
    comet_redis_t *c = data;

    if (c->io_on) {
        comet_loop_io_remove(c->loop, &c->io);
        c->io_on = 0;
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    comet_timer_cancel(c->loop, &c->timer);
    c->state = CONN_CLOSED;
    return APR_SUCCESS;
}

/* Call fn of every record of q with a failure; detach them first, so that
 * a callback that queues a command meets the new state, not these. */
static void fail_queue(comet_redis_t *c, cmd_queue_t *q, apr_uint64_t written,
                       apr_status_t rv, const char *lost, const char *unsent)
{
    redis_cmd_t *cmd = q->head;

    q->head = q->tail = NULL;
    while (cmd) {
        redis_cmd_t *next = cmd->next;
        comet_redis_reply_fn *fn = cmd->fn;
        void *baton = cmd->baton;
        apr_status_t st = rv;
        const char *text = lost;

        if ((rv == COMET_REDIS_ELOST || rv == APR_TIMEUP)
            && cmd->end > written) {
            st = COMET_REDIS_EDOWN;
            text = unsent;
        }
        cmd_free(c, cmd);
        if (fn) {
            fn(baton, st, NULL, text);
        }
        cmd = next;
    }
}

static void conn_report(comet_redis_t *c, int up, apr_status_t rv,
                        const char *text)
{
    if (c->reported == up) {
        return;
    }
    c->reported = up;
    if (c->state_fn) {
        c->state_fn(c->state_baton, c, up, rv, text);
    }
}

static apr_interval_time_t backoff_delay(comet_redis_t *c)
{
    apr_interval_time_t d = c->opts.backoff_min, half;
    int i;

    for (i = 0; i < c->attempts && d < c->opts.backoff_max; i++) {
        d *= 2;
    }
    if (d > c->opts.backoff_max) {
        d = c->opts.backoff_max;
    }
    half = d / 2;
    return half + (apr_interval_time_t)(conn_random(c) % (apr_uint32_t)
                                        (half + 1));
}

static void conn_down(comet_redis_t *c, apr_status_t rv, const char *fmt, ...)
{
    cmd_queue_t fifo, held;
    apr_uint64_t written = c->written;
    char why[256], lost[400], unsent[400];
    apr_time_t now = comet_now_mono();
    int was_up = c->state == CONN_READY;
    va_list ap;

    if (c->state == CONN_CLOSED || c->state == CONN_BACKOFF) {
        return;
    }
    va_start(ap, fmt);
    apr_vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);

    teardown_socket(c);
    fifo = c->fifo;
    held = c->held;
    c->fifo.head = c->fifo.tail = NULL;
    c->held.head = c->held.tail = NULL;
    c->pending = 0;
    c->state = CONN_BACKOFF;
    c->stats.failures++;

    if (was_up) {
        comet_log(COMET_LOG_ERR, rv, "redis %s: connection lost: %s",
                  c->name, why);
        c->log_next = now + CONN_LOG_EVERY;
        c->log_quiet = 0;
    }
    else if (now >= c->log_next) {
        comet_log(COMET_LOG_ERR, rv, "redis %s: cannot connect: %s "
                  "(attempt %d%s)", c->name, why, c->attempts + 1,
                  c->log_quiet ? ", earlier failures not logged" : "");
        c->log_next = now + CONN_LOG_EVERY;
        c->log_quiet = 0;
    }
    else {
        c->log_quiet++;
    }
    arm_timer(c, now + backoff_delay(c));
    c->attempts++;

    apr_snprintf(lost, sizeof(lost), "connection to %s lost: %s", c->name,
                 why);
    apr_snprintf(unsent, sizeof(unsent), "not connected to %s: %s", c->name,
                 why);
    fail_queue(c, &fifo, written,
               was_up && rv == APR_TIMEUP ? APR_TIMEUP : COMET_REDIS_ELOST,
               lost, unsent);
    fail_queue(c, &held, 0, COMET_REDIS_EDOWN, unsent, unsent);
    if (c->state == CONN_BACKOFF) {
        conn_report(c, 0, rv, why);
    }
}

static void conn_flush(comet_redis_t *c)
{
    while (c->out_off < c->out->len) {
        ssize_t n = send(c->fd, c->out->data + c->out_off,
                         c->out->len - c->out_off, MSG_NOSIGNAL);

        if (n > 0) {
            c->out_off += (apr_size_t)n;
            c->written += (apr_uint64_t)n;
            c->stats.writes++;
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        }
        conn_down(c, APR_FROM_OS_ERROR(errno), "write failed: %s",
                  strerror(errno));
        return;
    }
    if (c->out_off == c->out->len) {
        c->out->len = 0;
        c->out_off = 0;
        set_interest(c, COMET_LOOP_READ);
    }
    else {
        /* Sent bytes go when they are many, not on every short write. */
        if (c->out_off > 256 * 1024) {
            comet_buf_consume(c->out, c->out_off);
            c->out_off = 0;
        }
        set_interest(c, COMET_LOOP_READ | COMET_LOOP_WRITE);
    }
}

/* Put a formatted command into out (or hold) with its record. */
static apr_status_t enqueue(comet_redis_t *c, int to_hold, int internal,
                            const char *resp, apr_size_t len, int family,
                            apr_size_t expect, comet_redis_reply_fn *fn,
                            void *baton)
{
    comet_buf_t *b = to_hold ? c->hold : c->out;
    redis_cmd_t *cmd;
    apr_status_t rv;

    /* The handshake's few commands are not the caller's to count. */
    if (!internal && c->pending >= c->opts.max_pending) {
        return APR_ENOSPC;
    }
    if (b == c->out && c->out_off && c->out->len + len > c->out->max) {
        comet_buf_consume(c->out, c->out_off);
        c->out_off = 0;
    }
    if ((rv = comet_buf_append(b, resp, len)) != APR_SUCCESS) {
        return rv;
    }
    cmd = cmd_new(c);
    cmd->fn = fn;
    cmd->baton = baton;
    cmd->deadline = comet_now_mono() + c->opts.command_timeout;
    cmd->family = family;
    cmd->expect = expect;
    if (to_hold) {
        cmd->end = c->hold->len;
        queue_push(&c->held, cmd);
    }
    else {
        c->appended += len;
        cmd->end = c->appended;
        queue_push(&c->fifo, cmd);
        if (family != FAM_NONE && c->proto < 3) {
            c->pubsub = 1;
        }
        if (c->state == CONN_READY && !comet_timer_armed(&c->timer)) {
            arm_timer(c, cmd->deadline);
        }
        set_interest(c, COMET_LOOP_READ | COMET_LOOP_WRITE);
    }
    c->pending++;
    c->stats.commands++;
    return APR_SUCCESS;
}

/* Queue a formatted command as the state allows. */
static apr_status_t submit(comet_redis_t *c, const char *resp, apr_size_t len,
                           int family, apr_size_t expect,
                           comet_redis_reply_fn *fn, void *baton)
{
    switch (c->state) {
    case CONN_READY:
        return enqueue(c, 0, 0, resp, len, family, expect, fn, baton);
    case CONN_IDLE:
    case CONN_CONNECTING:
    case CONN_HANDSHAKE:
        return enqueue(c, 1, 0, resp, len, family, expect, fn, baton);
    case CONN_BACKOFF:
        return COMET_REDIS_EDOWN;
    default:
        return COMET_REDIS_ECLOSED;
    }
}

/* Format into the connection's scratch buffer (not into out: the command
 * may go to hold, or be refused), then queue.  internal: a handshake
 * command, which goes out before anything held. */
static apr_status_t format_and_submit(comet_redis_t *c, int internal,
                                      int argc, const char *const *argv,
                                      const apr_size_t *argvlen,
                                      comet_redis_reply_fn *fn, void *baton)
{
    int family = FAM_NONE;
    apr_size_t expect = 0;
    apr_status_t rv;

    if (argc < 1) {
        return APR_EINVAL;
    }
    family = fam_of(argv[0], argvlen ? argvlen[0] : strlen(argv[0]));
    if (family != FAM_NONE) {
        if (argc < 2) {
            /* Their confirmations could not be counted. */
            return APR_EINVAL;
        }
        expect = (apr_size_t)argc - 1;
    }
    if (c->state == CONN_CLOSED) {
        return COMET_REDIS_ECLOSED;
    }
    c->scratch->len = 0;
    if ((rv = comet_redis_format(c->scratch, argc, argv, argvlen))
        != APR_SUCCESS) {
        return rv;
    }
    return internal ? enqueue(c, 0, 1, c->scratch->data, c->scratch->len,
                              family, expect, fn, baton)
                    : submit(c, c->scratch->data, c->scratch->len, family,
                             expect, fn, baton);
}

/* ---- handshake ---------------------------------------------------------- */

/* A server's error text about a command that carried the password, made
 * fit for a log: Redis before 6 answers an unknown command with its first
 * arguments ("with args beginning with: ..."), so that part goes, and any
 * copy of the password is masked anyway. */
static const char *redact(const comet_redis_t *c, const char *text,
                          char *buf, apr_size_t len)
{
    const char *pw = c->url->password, *cut;
    apr_size_t n = 0, pwlen = pw ? strlen(pw) : 0;

    cut = strstr(text, ", with args");
    while (*text && (!cut || text < cut) && n + 4 < len) {
        if (pwlen && strncmp(text, pw, pwlen) == 0) {
            memcpy(buf + n, "***", 3);
            n += 3;
            text += pwlen;
            continue;
        }
        buf[n++] = *text++;
    }
    buf[n] = '\0';
    return buf;
}

static void hs_ready(comet_redis_t *c);
static void hs_select(comet_redis_t *c);

static apr_status_t hs_command(comet_redis_t *c, int argc,
                               const char *const *argv,
                               comet_redis_reply_fn *fn)
{
    apr_status_t rv = format_and_submit(c, 1, argc, argv, NULL, fn, c);

    if (rv != APR_SUCCESS) {
        conn_down(c, rv, "cannot queue the handshake");
    }
    return rv;
}

static void hs_select_done(void *baton, apr_status_t st,
                           const comet_resp_reply_t *r, const char *err)
{
    comet_redis_t *c = baton;
    char buf[256];

    if (st != APR_SUCCESS || c->state != CONN_HANDSHAKE) {
        return;
    }
    if (r->type == COMET_REPLY_ERROR) {
        conn_down(c, COMET_REDIS_EAUTH, "SELECT %d refused: %s", c->url->db,
                  redact(c, r->str, buf, sizeof(buf)));
        return;
    }
    hs_ready(c);
}

static void hs_select(comet_redis_t *c)
{
    char db[16];
    const char *argv[2] = { "SELECT", db };

    if (c->url->db == 0) {
        hs_ready(c);
        return;
    }
    apr_snprintf(db, sizeof(db), "%d", c->url->db);
    hs_command(c, 2, argv, hs_select_done);
}

static void hs_auth_done(void *baton, apr_status_t st,
                         const comet_resp_reply_t *r, const char *err)
{
    comet_redis_t *c = baton;
    char buf[256];

    if (st != APR_SUCCESS || c->state != CONN_HANDSHAKE) {
        return;
    }
    if (r->type == COMET_REPLY_ERROR) {
        conn_down(c, COMET_REDIS_EAUTH, "AUTH refused: %s",
                  redact(c, r->str, buf, sizeof(buf)));
        return;
    }
    hs_select(c);
}

static void hs_auth(comet_redis_t *c)
{
    const char *argv[3];
    int argc = 0;

    if (!c->url->password && !c->url->user) {
        hs_select(c);
        return;
    }
    argv[argc++] = "AUTH";
    if (c->url->user) {
        argv[argc++] = c->url->user;
    }
    argv[argc++] = c->url->password ? c->url->password : "";
    hs_command(c, argc, argv, hs_auth_done);
}

static void hs_hello_done(void *baton, apr_status_t st,
                          const comet_resp_reply_t *r, const char *err)
{
    comet_redis_t *c = baton;
    const comet_resp_reply_t *v;
    char buf[256];

    if (st != APR_SUCCESS || c->state != CONN_HANDSHAKE) {
        return;
    }
    if (r->type == COMET_REPLY_ERROR) {
        if (strncmp(r->str, "NOPROTO", 7) == 0
            || strncasecmp(r->str, "ERR unknown command", 19) == 0) {
            /* Before Redis 6: RESP2, and AUTH on its own. */
            c->proto = 2;
            hs_auth(c);
            return;
        }
        conn_down(c, COMET_REDIS_EAUTH, "HELLO refused: %s",
                  redact(c, r->str, buf, sizeof(buf)));
        return;
    }
    v = comet_resp_reply_get(r, "proto");
    c->proto = (v && v->type == COMET_REPLY_INTEGER) ? (int)v->integer : 3;
    hs_select(c);
}

static void hs_start(comet_redis_t *c)
{
    const char *argv[7];
    int argc = 0;

    if (c->opts.resp2) {
        c->proto = 2;
        hs_auth(c);
        return;
    }
    argv[argc++] = "HELLO";
    argv[argc++] = "3";
    if (c->url->password || c->url->user) {
        argv[argc++] = "AUTH";
        argv[argc++] = c->url->user ? c->url->user : "default";
        argv[argc++] = c->url->password ? c->url->password : "";
    }
    if (c->opts.name) {
        argv[argc++] = "SETNAME";
        argv[argc++] = c->opts.name;
    }
    hs_command(c, argc, argv, hs_hello_done);
}

static void hs_ready(comet_redis_t *c)
{
    apr_uint64_t base = c->appended;
    redis_cmd_t *cmd;

    comet_timer_cancel(c->loop, &c->timer);
    /* What was held goes out behind the handshake, in order. */
    if (c->hold->len) {
        if (comet_buf_append(c->out, c->hold->data, c->hold->len)
            != APR_SUCCESS) {
            conn_down(c, APR_ENOSPC, "no room for the held commands");
            return;
        }
        c->appended += c->hold->len;
        c->hold->len = 0;
    }
    for (cmd = c->held.head; cmd; cmd = cmd->next) {
        cmd->end += base;
        if (cmd->family != FAM_NONE && c->proto < 3) {
            c->pubsub = 1;
        }
    }
    if (c->held.head) {
        if (c->fifo.tail) {
            c->fifo.tail->next = c->held.head;
        }
        else {
            c->fifo.head = c->held.head;
        }
        c->fifo.tail = c->held.tail;
        c->held.head = c->held.tail = NULL;
    }
    c->state = CONN_READY;
    c->stats.connects++;
    if (c->fifo.head) {
        arm_timer(c, c->fifo.head->deadline);
    }
    set_interest(c, c->out->len > c->out_off
                    ? COMET_LOOP_READ | COMET_LOOP_WRITE : COMET_LOOP_READ);
    if (c->attempts) {
        comet_log(COMET_LOG_NOTICE, APR_SUCCESS, "redis %s: connected "
                  "(RESP%d) after %d failed attempt%s", c->name, c->proto,
                  c->attempts,
                  c->attempts == 1 ? "" : "s");
    }
    else {
        comet_log(COMET_LOG_INFO, APR_SUCCESS, "redis %s: connected (RESP%d)",
                  c->name, c->proto);
    }
    c->attempts = 0;
    c->log_next = 0;
    conn_report(c, 1, APR_SUCCESS, "connected");
}

/* ---- socket ------------------------------------------------------------- */

static void conn_connected(comet_redis_t *c)
{
    int one = 1;

    if (!c->addr.path) {
        int idle = 30, intvl = 10, cnt = 3;

        /* Our writes are already batched per loop turn. */
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        /* A subscriber connection may be silent for hours: keepalive
         * finds a peer that vanished without a word in about a minute. */
        setsockopt(c->fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
        setsockopt(c->fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
        setsockopt(c->fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
        setsockopt(c->fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
    }
    c->state = CONN_HANDSHAKE;
    set_interest(c, COMET_LOOP_READ);
    hs_start(c);
}

/* The address to connect to.  Numeric hosts need no resolver; a name is
 * looked up with getaddrinfo(), which blocks the loop's thread for as long
 * as the resolver takes (documented: use addresses in production). */
static apr_status_t conn_address(comet_redis_t *c, struct sockaddr_storage *ss,
                                 socklen_t *len, char *err, apr_size_t errlen)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    struct addrinfo hints, *res = NULL;
    char port[8];
    int rc;

    memset(ss, 0, sizeof(*ss));
    if (c->addr.path) {
        struct sockaddr_un *sun = (struct sockaddr_un *)ss;

        sun->sun_family = AF_UNIX;
        apr_cpystrn(sun->sun_path, c->addr.path, sizeof(sun->sun_path));
        *len = sizeof(*sun);
        return APR_SUCCESS;
    }
    if (inet_pton(AF_INET, c->addr.host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(c->addr.port);
        *len = sizeof(*sin);
        return APR_SUCCESS;
    }
    if (inet_pton(AF_INET6, c->addr.host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(c->addr.port);
        *len = sizeof(*sin6);
        return APR_SUCCESS;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    apr_snprintf(port, sizeof(port), "%u", (unsigned)c->addr.port);
    rc = getaddrinfo(c->addr.host, port, &hints, &res);
    if (rc != 0 || !res || res->ai_addrlen > sizeof(*ss)) {
        apr_snprintf(err, errlen, "cannot resolve %s: %s", c->addr.host,
                     rc ? gai_strerror(rc) : "no address");
        if (res) {
            freeaddrinfo(res);
        }
        return APR_EGENERAL;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return APR_SUCCESS;
}

static void conn_connect(comet_redis_t *c)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char err[256];
    int fd;

    c->state = CONN_CONNECTING;
    if (conn_address(c, &ss, &len, err, sizeof(err)) != APR_SUCCESS) {
        conn_down(c, APR_EGENERAL, "%s", err);
        return;
    }
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        conn_down(c, APR_FROM_OS_ERROR(errno), "socket: %s", strerror(errno));
        return;
    }
    c->fd = fd;
    if (comet_loop_io_add(c->loop, &c->io, fd, COMET_LOOP_WRITE, conn_io, c)
        != APR_SUCCESS) {
        conn_down(c, APR_EGENERAL, "cannot watch the socket");
        return;
    }
    c->io_on = 1;
    c->interest = COMET_LOOP_WRITE;
    arm_timer(c, comet_now_mono() + c->opts.connect_timeout);
    if (connect(fd, (struct sockaddr *)&ss, len) == 0) {
        conn_connected(c);
    }
    else if (errno != EINPROGRESS && errno != EAGAIN) {
        conn_down(c, APR_FROM_OS_ERROR(errno), "connect: %s", strerror(errno));
    }
}

static void conn_timer(comet_loop_t *loop, comet_timer_t *t, void *baton)
{
    comet_redis_t *c = baton;

    switch (c->state) {
    case CONN_CONNECTING:
    case CONN_HANDSHAKE:
        conn_down(c, APR_TIMEUP, "no %s within %lu ms",
                  c->state == CONN_CONNECTING ? "connection" : "handshake",
                  (unsigned long)apr_time_as_msec(c->opts.connect_timeout));
        break;
    case CONN_BACKOFF:
        conn_connect(c);
        break;
    case CONN_READY:
        if (c->fifo.head) {
            if (c->fifo.head->deadline <= comet_now_mono()) {
                /* Replies come in order: nothing behind it can come. */
                conn_down(c, APR_TIMEUP, "no reply within %lu ms",
                          (unsigned long)apr_time_as_msec(
                              c->opts.command_timeout));
            }
            else {
                arm_timer(c, c->fifo.head->deadline);
            }
        }
        break;
    default:
        break;
    }
}

/* ---- replies ------------------------------------------------------------ */

static int is_push(const comet_redis_t *c, const comet_resp_reply_t *r)
{
    const comet_resp_reply_t *kind;

    if (r->type == COMET_REPLY_PUSH) {
        return 1;
    }
    if (!c->pubsub || r->type != COMET_REPLY_ARRAY || r->elements < 2) {
        return 0;
    }
    kind = r + 1;
    if (kind->type != COMET_REPLY_STRING) {
        return 0;
    }
    return fam_of(kind->str, kind->len) != FAM_NONE
           || comet_resp_reply_is(kind, "message", 0)
           || comet_resp_reply_is(kind, "smessage", 0)
           || comet_resp_reply_is(kind, "pmessage", 0);
}

static void pop_and_call(comet_redis_t *c, const comet_resp_reply_t *r)
{
    redis_cmd_t *cmd = queue_pop(&c->fifo);
    comet_redis_reply_fn *fn = cmd->fn;
    void *baton = cmd->baton;

    c->pending--;
    c->stats.replies++;
    cmd_free(c, cmd);
    if (fn) {
        fn(baton, APR_SUCCESS, r, NULL);
    }
}

static void dispatch(comet_redis_t *c, const comet_resp_reply_t *r)
{
    redis_cmd_t *head = c->fifo.head;

    if (is_push(c, r)) {
        const comet_resp_reply_t *kind = r + 1;
        int fam = (r->elements && kind->type == COMET_REPLY_STRING)
                  ? fam_of(kind->str, kind->len) : FAM_NONE;
        int confirms = fam != FAM_NONE && head && head->family == fam
                       && head->expect > 0;

        c->stats.pushes++;
        if (fam >= FAM_UNSUBSCRIBE && r->elements >= 3) {
            const comet_resp_reply_t *left = comet_resp_reply_child(r, 2);

            if (left->type == COMET_REPLY_INTEGER && left->integer == 0
                && c->proto < 3) {
                /* RESP2 leaves subscribed mode with the last channel. */
                c->pubsub = 0;
            }
        }
        if (c->push_fn) {
            c->push_fn(c->push_baton, c, r);
            if (c->state != CONN_READY) {
                return;
            }
        }
        if (confirms && --head->expect == 0) {
            pop_and_call(c, r);
        }
        return;
    }
    if (!head) {
        conn_down(c, COMET_EPROTO, "a reply without a command");
        return;
    }
    pop_and_call(c, r);
}

static void conn_read(comet_redis_t *c)
{
    int reads;

    for (reads = 0; reads < 16; reads++) {
        apr_size_t want = 64 * 1024, off = 0, used;
        const comet_resp_reply_t *r;
        apr_status_t rv;
        ssize_t n;

        if (c->in->max - c->in->len < want) {
            want = c->in->max - c->in->len;
        }
        if (want == 0 || comet_buf_reserve(c->in, want) != APR_SUCCESS) {
            conn_down(c, COMET_ETOOBIG, "a reply larger than %lu bytes",
                      (unsigned long)c->in->max);
            return;
        }
        n = read(c->fd, c->in->data + c->in->len, want);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                return;
            }
            conn_down(c, APR_FROM_OS_ERROR(errno), "read failed: %s",
                      strerror(errno));
            return;
        }
        if (n == 0) {
            conn_down(c, APR_EOF, "closed by the server");
            return;
        }
        c->in->len += (apr_size_t)n;
        for (;;) {
            rv = comet_resp_reply_parse(c->parser, c->in->data + off,
                                        c->in->len - off, &used, &r);
            if (rv == APR_INCOMPLETE) {
                break;
            }
            if (rv != APR_SUCCESS) {
                conn_down(c, rv, "bad reply from the server: %s",
                          comet_resp_reply_error(c->parser));
                return;
            }
            off += used;
            dispatch(c, r);
            if (c->state != CONN_READY && c->state != CONN_HANDSHAKE) {
                /* Down or closed in a callback: in is reset already. */
                return;
            }
        }
        comet_buf_consume(c->in, off);
        if ((apr_size_t)n < want) {
            return;
        }
    }
}

static void conn_io(comet_loop_t *loop, int fd, int events, void *baton)
{
    comet_redis_t *c = baton;

    if (c->state == CONN_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);

        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
            err = errno;
        }
        if (err) {
            conn_down(c, APR_FROM_OS_ERROR(err), "connect: %s",
                      strerror(err));
        }
        else if (events & COMET_LOOP_WRITE) {
            conn_connected(c);
        }
        else {
            conn_down(c, APR_EOF, "connect: closed");
        }
        return;
    }
    if (events & (COMET_LOOP_READ | COMET_LOOP_HUP | COMET_LOOP_ERROR)) {
        conn_read(c);
    }
    if ((events & COMET_LOOP_WRITE)
        && (c->state == CONN_READY || c->state == CONN_HANDSHAKE)) {
        conn_flush(c);
    }
}

/* ---- public ------------------------------------------------------------- */

apr_status_t comet_redis_create(comet_redis_t **cp, comet_loop_t *loop,
                                const comet_redis_url_t *url,
                                const comet_redis_addr_t *addr,
                                const comet_redis_opts_t *opts,
                                apr_pool_t *p)
{
    comet_redis_t *c = apr_pcalloc(p, sizeof(*c));
    apr_status_t rv;

    if (!url || url->naddrs == 0) {
        return APR_EINVAL;
    }
    if (opts) {
        c->opts = *opts;
    }
    else {
        comet_redis_opts_default(&c->opts);
    }
    if (c->opts.max_in < 64 * 1024 || c->opts.max_out < 64 * 1024
        || c->opts.max_pending == 0 || c->opts.backoff_min <= 0
        || c->opts.backoff_max < c->opts.backoff_min) {
        return APR_EINVAL;
    }
    /* A reply must fit in the input buffer whole. */
    if (c->opts.reply.max_bulk > c->opts.max_in - 1024) {
        c->opts.reply.max_bulk = c->opts.max_in - 1024;
    }
    c->pool = p;
    c->loop = loop;
    c->url = url;
    c->addr = addr ? *addr : url->addrs[0];
    c->addr.host = apr_pstrdup(p, c->addr.host ? c->addr.host : "");
    c->addr.path = c->addr.path ? apr_pstrdup(p, c->addr.path) : NULL;
    if (c->opts.name) {
        c->opts.name = apr_pstrdup(p, c->opts.name);
    }
    c->name = c->addr.path ? addr_display(&c->addr, p)
                           : apr_pstrcat(p, "redis://",
                                         addr_display(&c->addr, p), NULL);
    c->fd = -1;
    c->reported = -1;
    c->state = CONN_IDLE;
    c->rng = (apr_uint32_t)((apr_uint64_t)comet_now_mono()
                            ^ ((apr_uint64_t)getpid() << 16)
                            ^ (apr_uint64_t)(apr_uintptr_t)c) | 1;
    comet_timer_init(&c->timer, conn_timer, c);
    if ((rv = comet_buf_create(&c->out, p, 0, 2 * c->opts.max_out))
            != APR_SUCCESS
        || (rv = comet_buf_create(&c->hold, p, 0, c->opts.max_out))
            != APR_SUCCESS
        || (rv = comet_buf_create(&c->scratch, p, 0, c->opts.max_out))
            != APR_SUCCESS
        || (rv = comet_buf_create(&c->in, p, 0, c->opts.max_in))
            != APR_SUCCESS
        || (rv = comet_resp_reply_parser_create(&c->parser, &c->opts.reply,
                                                p)) != APR_SUCCESS) {
        return rv;
    }
    apr_pool_cleanup_register(p, c, conn_cleanup, apr_pool_cleanup_null);
    *cp = c;
    return APR_SUCCESS;
}

void comet_redis_on_state(comet_redis_t *c, comet_redis_state_fn *fn,
                          void *baton)
{
    c->state_fn = fn;
    c->state_baton = baton;
}

void comet_redis_on_push(comet_redis_t *c, comet_redis_push_fn *fn,
                         void *baton)
{
    c->push_fn = fn;
    c->push_baton = baton;
}

apr_status_t comet_redis_start(comet_redis_t *c)
{
    if (c->state != CONN_IDLE) {
        return c->state == CONN_CLOSED ? COMET_REDIS_ECLOSED : APR_SUCCESS;
    }
    conn_connect(c);
    return APR_SUCCESS;
}

apr_status_t comet_redis_command(comet_redis_t *c, int argc,
                                 const char *const *argv,
                                 const apr_size_t *argvlen,
                                 comet_redis_reply_fn *fn, void *baton)
{
    return format_and_submit(c, 0, argc, argv, argvlen, fn, baton);
}

apr_status_t comet_redis_commandv(comet_redis_t *c, comet_redis_reply_fn *fn,
                                  void *baton, ...)
{
    const char *argv[64];
    int argc = 0;
    va_list ap;

    va_start(ap, baton);
    while (argc < 64 && (argv[argc] = va_arg(ap, const char *)) != NULL) {
        argc++;
    }
    va_end(ap);
    if (argc == 64) {
        return APR_EINVAL;
    }
    return format_and_submit(c, 0, argc, argv, NULL, fn, baton);
}

apr_status_t comet_redis_command_resp(comet_redis_t *c, const char *resp,
                                      apr_size_t len,
                                      comet_redis_reply_fn *fn, void *baton)
{
    if (len < 4 || resp[0] != '*') {
        return APR_EINVAL;
    }
    return submit(c, resp, len, FAM_NONE, 0, fn, baton);
}

void comet_redis_close(comet_redis_t *c)
{
    cmd_queue_t fifo, held;
    char text[300];

    if (c->state == CONN_CLOSED) {
        return;
    }
    teardown_socket(c);
    c->state = CONN_CLOSED;
    fifo = c->fifo;
    held = c->held;
    c->fifo.head = c->fifo.tail = NULL;
    c->held.head = c->held.tail = NULL;
    c->pending = 0;
    apr_snprintf(text, sizeof(text), "client of %s closed", c->name);
    fail_queue(c, &fifo, 0, COMET_REDIS_ECLOSED, text, text);
    fail_queue(c, &held, 0, COMET_REDIS_ECLOSED, text, text);
}

int comet_redis_is_up(const comet_redis_t *c)
{
    return c->state == CONN_READY;
}

int comet_redis_proto(const comet_redis_t *c)
{
    return c->proto;
}

const char *comet_redis_name(const comet_redis_t *c)
{
    return c->name;
}

apr_size_t comet_redis_pending(const comet_redis_t *c)
{
    return c->pending;
}

void comet_redis_stats(const comet_redis_t *c, comet_redis_stats_t *stats)
{
    *stats = c->stats;
}

/* ---- pub/sub ------------------------------------------------------------ */

typedef enum {
    CH_WANT,        /* to subscribe when the connection is up              */
    CH_SENT,        /* (S)SUBSCRIBE sent, no confirmation yet              */
    CH_ACTIVE       /* confirmed                                           */
} chan_state_e;

typedef struct sub_chan_t {
    char         *name;         /* the hash key; NUL-terminated copy       */
    apr_size_t    len;
    int           sharded;
    chan_state_e  state;
    int           lost;         /* was ACTIVE, then LOST: READY resumes    */
    int           pinned;       /* an event about it is being delivered    */
    int           dead;         /* left the set while pinned: free after   */
    int           solo;         /* its batch was refused: alone from now   */
    apr_uint64_t  cmd;          /* the command that subscribed it          */
} sub_chan_t;

struct comet_redis_sub_t {
    apr_pool_t           *pool;
    comet_redis_t        *conn;
    apr_hash_t           *chans;
    apr_size_t            active;
    apr_size_t            max_channels;
    comet_redis_sub_fn   *fn;
    void                 *baton;
    comet_redis_state_fn *state_fn;
    void                 *state_baton;
    /* Sub commands complete in the order they were sent (also when they
     * fail), so the n-th completion is command n: no record per command. */
    apr_uint64_t          sent;
    apr_uint64_t          done;
};

/* (S)SUBSCRIBE batches: arguments per command when resubscribing. */
#define SUB_BATCH 128

static void chan_free(sub_chan_t *ch)
{
    free(ch);
}

/* Take ch out of the set; freed now or, if an event about it is being
 * delivered, once that is over. */
static void chan_remove(comet_redis_sub_t *sub, sub_chan_t *ch)
{
    apr_hash_set(sub->chans, ch->name, (apr_ssize_t)ch->len, NULL);
    if (ch->state == CH_ACTIVE) {
        sub->active--;
    }
    if (ch->pinned) {
        ch->dead = 1;
    }
    else {
        chan_free(ch);
    }
}

static void sub_event(comet_redis_sub_t *sub, sub_chan_t *ch, int type,
                      int resumed, const char *error)
{
    comet_redis_sub_event_t ev;

    memset(&ev, 0, sizeof(ev));
    ev.type = type;
    ev.sharded = ch->sharded;
    ev.resumed = resumed;
    ev.channel = ch->name;
    ev.channel_len = ch->len;
    ev.error = error;
    ch->pinned++;
    sub->fn(sub->baton, sub, &ev);
    ch->pinned--;
}

static void sub_cmd_done(void *baton, apr_status_t st,
                         const comet_resp_reply_t *r, const char *err);

/* Send (S)SUBSCRIBE or (S)UNSUBSCRIBE for chans[0, n). */
static apr_status_t sub_send(comet_redis_sub_t *sub, int unsub, int sharded,
                             sub_chan_t **chans, const char *name,
                             apr_size_t len, apr_size_t n)
{
    const char *argv[SUB_BATCH + 1];
    apr_size_t argvlen[SUB_BATCH + 1], i;
    apr_status_t rv;

    argv[0] = unsub ? (sharded ? "SUNSUBSCRIBE" : "UNSUBSCRIBE")
                    : (sharded ? "SSUBSCRIBE" : "SUBSCRIBE");
    argvlen[0] = strlen(argv[0]);
    for (i = 0; i < n; i++) {
        argv[i + 1] = chans ? chans[i]->name : name;
        argvlen[i + 1] = chans ? chans[i]->len : len;
    }
    rv = comet_redis_command(sub->conn, (int)n + 1, argv, argvlen,
                             sub_cmd_done, sub);
    if (rv != APR_SUCCESS) {
        return rv;
    }
    sub->sent++;
    for (i = 0; chans && i < n; i++) {
        chans[i]->state = CH_SENT;
        chans[i]->cmd = sub->sent;
    }
    return APR_SUCCESS;
}

/* Subscribe every channel that waits (the connection just came up, or a
 * subscription was lost). */
static void sub_send_waiting(comet_redis_sub_t *sub)
{
    sub_chan_t *batch[SUB_BATCH];
    apr_size_t n = 0;
    apr_hash_index_t *hi;
    int pass;

    /* Plain channels in batches; sharded ones one by one, since one
     * SSUBSCRIBE must stay within a hash slot in a cluster. */
    for (pass = 0; pass < 2; pass++) {
        for (hi = apr_hash_first(NULL, sub->chans); hi;
             hi = apr_hash_next(hi)) {
            sub_chan_t *ch = apr_hash_this_val(hi);

            if (ch->state != CH_WANT || ch->sharded != pass) {
                continue;
            }
            if (ch->solo) {
                if (sub_send(sub, 0, pass, &ch, NULL, 0, 1) != APR_SUCCESS) {
                    return;
                }
                continue;
            }
            batch[n++] = ch;
            if (n == (pass ? 1 : SUB_BATCH)) {
                if (sub_send(sub, 0, pass, batch, NULL, 0, n)
                    != APR_SUCCESS) {
                    /* The connection went down or is full: the rest
                     * waits for the next up. */
                    return;
                }
                n = 0;
            }
        }
        if (n && sub_send(sub, 0, pass, batch, NULL, 0, n) != APR_SUCCESS) {
            return;
        }
        n = 0;
    }
}

static void sub_cmd_done(void *baton, apr_status_t st,
                         const comet_resp_reply_t *r, const char *err)
{
    comet_redis_sub_t *sub = baton;
    apr_uint64_t id = ++sub->done;
    apr_hash_index_t *hi;
    sub_chan_t **failed;
    apr_size_t n = 0, i, count;

    if (st != APR_SUCCESS || r->type != COMET_REPLY_ERROR) {
        /* Failures with the connection are handled by its state change,
         * confirmations by the pushes. */
        return;
    }
    /* The server refused the command: every channel it carried leaves the
     * set (an error is rare; the scan of the set is fine). */
    count = apr_hash_count(sub->chans);
    failed = malloc((count ? count : 1) * sizeof(*failed));
    if (!failed) {
        return;
    }
    for (hi = apr_hash_first(NULL, sub->chans); hi; hi = apr_hash_next(hi)) {
        sub_chan_t *ch = apr_hash_this_val(hi);

        if (ch->state == CH_SENT && ch->cmd == id) {
            failed[n++] = ch;
            ch->pinned++;
        }
    }
    if (n > 1) {
        /* A batch is refused whole (an ACL that forbids one channel of
         * it): each goes again alone, so that only the bad ones fail. */
        for (i = 0; i < n; i++) {
            failed[i]->pinned--;
            failed[i]->state = CH_WANT;
            failed[i]->solo = 1;
        }
        free(failed);
        if (comet_redis_is_up(sub->conn)) {
            sub_send_waiting(sub);
        }
        return;
    }
    for (i = 0; i < n; i++) {
        sub_chan_t *ch = failed[i];
        comet_redis_sub_event_t ev;

        if (ch->dead) {
            continue;           /* unsubscribed by an earlier callback */
        }
        chan_remove(sub, ch);   /* pinned: only marked dead */
        memset(&ev, 0, sizeof(ev));
        ev.type = COMET_REDIS_SUB_FAILED;
        ev.sharded = ch->sharded;
        ev.channel = ch->name;
        ev.channel_len = ch->len;
        ev.error = r->str;
        sub->fn(sub->baton, sub, &ev);
    }
    for (i = 0; i < n; i++) {
        if (--failed[i]->pinned == 0 && failed[i]->dead) {
            chan_free(failed[i]);
        }
    }
    free(failed);
}

static void sub_push(void *baton, comet_redis_t *c,
                     const comet_resp_reply_t *push)
{
    comet_redis_sub_t *sub = baton;
    const comet_resp_reply_t *kind, *chan, *payload;
    sub_chan_t *ch;

    if (push->elements < 3) {
        return;
    }
    kind = push + 1;
    chan = comet_resp_reply_next(kind);
    if (kind->type != COMET_REPLY_STRING || chan->type != COMET_REPLY_STRING) {
        return;
    }
    ch = apr_hash_get(sub->chans, chan->str, (apr_ssize_t)chan->len);
    if (comet_resp_reply_is(kind, "message", 0)
        || comet_resp_reply_is(kind, "smessage", 0)) {
        comet_redis_sub_event_t ev;

        payload = comet_resp_reply_next(chan);
        if (!ch || payload->type != COMET_REPLY_STRING) {
            return;     /* unsubscribed meanwhile */
        }
        memset(&ev, 0, sizeof(ev));
        ev.type = COMET_REDIS_SUB_MESSAGE;
        ev.sharded = kind->str[0] == 's';
        ev.channel = chan->str;
        ev.channel_len = chan->len;
        ev.payload = payload->str;
        ev.payload_len = payload->len;
        sub->fn(sub->baton, sub, &ev);
        return;
    }
    if (!ch) {
        return;
    }
    if (comet_resp_reply_is(kind, "subscribe", 0)
        || comet_resp_reply_is(kind, "ssubscribe", 0)) {
        int resumed = ch->lost;

        if (ch->state != CH_SENT) {
            return;
        }
        ch->state = CH_ACTIVE;
        ch->lost = 0;
        sub->active++;
        sub_event(sub, ch, COMET_REDIS_SUB_READY, resumed, NULL);
        if (ch->dead && !ch->pinned) {
            chan_free(ch);
        }
        return;
    }
    if ((comet_resp_reply_is(kind, "unsubscribe", 0)
         || comet_resp_reply_is(kind, "sunsubscribe", 0))
        && ch->state == CH_ACTIVE) {
        /* Not ours (we take a channel out of the set before we send its
         * UNSUBSCRIBE): the server ended it, as Redis 7 does with the
         * sharded channels of a slot that moved to another node. */
        ch->state = CH_WANT;
        ch->lost = 1;
        sub->active--;
        sub_event(sub, ch, COMET_REDIS_SUB_LOST, 0,
                  "the server ended the subscription (its slot moved?)");
        if (ch->dead) {
            if (!ch->pinned) {
                chan_free(ch);
            }
            return;
        }
        if (ch->state == CH_WANT && comet_redis_is_up(sub->conn)) {
            sub_send(sub, 0, ch->sharded, &ch, NULL, 0, 1);
        }
    }
}

static void sub_state(void *baton, comet_redis_t *c, int up, apr_status_t why,
                      const char *text)
{
    comet_redis_sub_t *sub = baton;

    if (up) {
        sub_send_waiting(sub);
    }
    else {
        apr_size_t count = apr_hash_count(sub->chans), n = 0, i;
        sub_chan_t **lost = malloc((count ? count : 1) * sizeof(*lost));
        apr_hash_index_t *hi;
        char msg[300];

        apr_snprintf(msg, sizeof(msg), "connection to Redis lost: %s", text);
        for (hi = apr_hash_first(NULL, sub->chans); hi;
             hi = apr_hash_next(hi)) {
            sub_chan_t *ch = apr_hash_this_val(hi);

            if (ch->state == CH_ACTIVE && lost) {
                lost[n++] = ch;
                ch->pinned++;
                ch->lost = 1;
            }
            ch->state = CH_WANT;
        }
        sub->active = 0;
        for (i = 0; i < n; i++) {
            sub_chan_t *ch = lost[i];

            ch->pinned--;
            if (!ch->dead) {
                sub_event(sub, ch, COMET_REDIS_SUB_LOST, 0, msg);
            }
        }
        for (i = 0; i < n; i++) {
            if (lost[i]->dead && !lost[i]->pinned) {
                chan_free(lost[i]);
            }
        }
        free(lost);
    }
    if (sub->state_fn) {
        sub->state_fn(sub->state_baton, c, up, why, text);
    }
}

static apr_status_t sub_cleanup(void *data)
{
    comet_redis_sub_t *sub = data;
    apr_hash_index_t *hi;
    sub_chan_t *dead = NULL;

    /* The hash compares keys while it deletes, and the keys live in the
     * records: empty it first, free after. */
    for (hi = apr_hash_first(NULL, sub->chans); hi; hi = apr_hash_next(hi)) {
        sub_chan_t *ch = apr_hash_this_val(hi);

        ch->cmd = (apr_uint64_t)(apr_uintptr_t)dead;
        dead = ch;
    }
    apr_hash_clear(sub->chans);
    while (dead) {
        sub_chan_t *next = (sub_chan_t *)(apr_uintptr_t)dead->cmd;

        chan_free(dead);
        dead = next;
    }
    return APR_SUCCESS;
}

apr_status_t comet_redis_sub_create(comet_redis_sub_t **subp,
                                    comet_loop_t *loop,
                                    const comet_redis_url_t *url,
                                    const comet_redis_addr_t *addr,
                                    const comet_redis_opts_t *opts,
                                    comet_redis_sub_fn *fn, void *baton,
                                    apr_pool_t *p)
{
    comet_redis_sub_t *sub = apr_pcalloc(p, sizeof(*sub));
    comet_redis_opts_t o;
    apr_status_t rv;

    if (!fn) {
        return APR_EINVAL;
    }
    if (opts) {
        o = *opts;
    }
    else {
        comet_redis_opts_default(&o);
    }
    if ((rv = comet_redis_create(&sub->conn, loop, url, addr, &o, p))
        != APR_SUCCESS) {
        return rv;
    }
    sub->pool = p;
    sub->chans = apr_hash_make(p);
    sub->max_channels = o.max_channels;
    sub->fn = fn;
    sub->baton = baton;
    comet_redis_on_push(sub->conn, sub_push, sub);
    comet_redis_on_state(sub->conn, sub_state, sub);
    /* Registered after the connection's: runs before it. */
    apr_pool_cleanup_register(p, sub, sub_cleanup, apr_pool_cleanup_null);
    *subp = sub;
    return APR_SUCCESS;
}

void comet_redis_sub_on_state(comet_redis_sub_t *sub,
                              comet_redis_state_fn *fn, void *baton)
{
    sub->state_fn = fn;
    sub->state_baton = baton;
}

apr_status_t comet_redis_sub_start(comet_redis_sub_t *sub)
{
    return comet_redis_start(sub->conn);
}

apr_status_t comet_redis_sub_subscribe(comet_redis_sub_t *sub,
                                       const char *channel, apr_size_t len,
                                       int sharded)
{
    sub_chan_t *ch = apr_hash_get(sub->chans, channel, (apr_ssize_t)len);

    if (ch) {
        return ch->sharded == !!sharded ? APR_SUCCESS : APR_EINVAL;
    }
    if (len == 0) {
        return APR_EINVAL;
    }
    if (apr_hash_count(sub->chans) >= sub->max_channels) {
        return APR_ENOSPC;
    }
    if (!(ch = calloc(1, sizeof(*ch) + len + 1))) {
        return APR_ENOMEM;
    }
    ch->name = (char *)(ch + 1);
    memcpy(ch->name, channel, len);
    ch->len = len;
    ch->sharded = !!sharded;
    ch->state = CH_WANT;
    apr_hash_set(sub->chans, ch->name, (apr_ssize_t)len, ch);
    if (comet_redis_is_up(sub->conn)) {
        /* Refused only when the connection is full or just went down: the
         * channel then waits for the next up. */
        sub_send(sub, 0, ch->sharded, &ch, NULL, 0, 1);
    }
    return APR_SUCCESS;
}

apr_status_t comet_redis_sub_unsubscribe(comet_redis_sub_t *sub,
                                         const char *channel, apr_size_t len)
{
    sub_chan_t *ch = apr_hash_get(sub->chans, channel, (apr_ssize_t)len);
    int sharded, sent;

    if (!ch) {
        return APR_NOTFOUND;
    }
    sharded = ch->sharded;
    sent = ch->state != CH_WANT;
    chan_remove(sub, ch);
    if (sent && comet_redis_is_up(sub->conn)) {
        sub_send(sub, 1, sharded, NULL, channel, len, 1);
    }
    return APR_SUCCESS;
}

apr_size_t comet_redis_sub_count(const comet_redis_sub_t *sub)
{
    return apr_hash_count(sub->chans);
}

apr_size_t comet_redis_sub_active(const comet_redis_sub_t *sub)
{
    return sub->active;
}

comet_redis_t *comet_redis_sub_conn(comet_redis_sub_t *sub)
{
    return sub->conn;
}

void comet_redis_sub_close(comet_redis_sub_t *sub)
{
    comet_redis_close(sub->conn);
    sub_cleanup(sub);
    sub->active = 0;
}
