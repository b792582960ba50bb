/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_bus.c -- channels shared through Redis (API and data design:
 * comet_bus.h).
 *
 * A channel this process subscribes to in Redis has a record here
 * (bus_chan_t), in one of three states:
 *
 *   SUBSCRIBING  subscribed in Redis, not yet confirmed (or the
 *                subscription was lost: Redis is down, or the slot moved)
 *   SYNCING      confirmed; the store's copy is being brought up to date
 *                (the sync script: the stream from the copy's newest on)
 *   LIVE         the copy follows the messages as they come
 *
 * A message that comes while a sync is under way is not fed: the sync is
 * done once more after it (refetch), which brings it.  A message that does
 * not follow the copy's newest starts a sync.  So the copy takes every
 * message in order, once (comet_store_feed refuses what does not follow),
 * and what it cannot have any more it marks as missed.
 *
 * Every command is a script, sent by its SHA1 (EVALSHA) and, on NOSCRIPT
 * (a Redis that restarted, or a node that never saw it), once more in full
 * (EVAL): NOSCRIPT means that it did not run, so that is safe.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <apr_hash.h>
#include <apr_sha1.h>
#include <apr_strings.h>
#include <apr_thread_cond.h>
#include <apr_thread_mutex.h>

#include "comet_bus.h"
#include "comet_redis_cluster.h"

/* ---- the scripts ----------------------------------------------------------
 * Redis' Lua numbers are doubles: every integer here stays below 2^53 (g
 * below 2^31, n below 2^32, times in ms), and seq = g * 2^32 + n is made by
 * the caller. */

#define LUA_NOW \
    "local t = redis.call('TIME') " \
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "

/* The sum of the unexpired counts of a subs hash (s: HGETALL). */
#define LUA_SUM \
    "local total = 0 " \
    "for i = 1, #s, 2 do " \
    "  local c, e = string.match(s[i + 1], '^(%d+):(%d+)$') " \
    "  if c and tonumber(e) > now then total = total + tonumber(c) end " \
    "end "

static const char *const scripts[] = {
    /* PUBLISH  KEYS: seq msgs subs  ARGV: pubsub-channel sharded maxlen
     * msg-ttl-ms seq-ttl-ms new-generation event data from */
    LUA_NOW
    "local g = tonumber(redis.call('HGET', KEYS[1], 'g')) "
    "local n "
    "if not g then "
    "  local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1) "
    "  if top[1] then "
    "    g = tonumber(string.match(top[1][1], '^(%d+)')) + 1 "
    "  else "
    "    g = tonumber(ARGV[6]) "
    "  end "
    "  n = 1 "
    "else "
    "  n = tonumber(redis.call('HGET', KEYS[1], 'n')) + 1 "
    "  if n > 4294967295 then g = g + 1; n = 1 end "
    "end "
    "redis.call('HSET', KEYS[1], 'g', g, 'n', n) "
    "redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], g .. '-' .. n, "
    "           'e', ARGV[7], 'd', ARGV[8], 't', now, 'f', ARGV[9]) "
    "if ARGV[4] ~= '0' then redis.call('PEXPIRE', KEYS[2], ARGV[4]) "
    "else redis.call('PERSIST', KEYS[2]) end "
    "if ARGV[5] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[5]) "
    "else redis.call('PERSIST', KEYS[1]) end "
    "redis.call(ARGV[2] == '1' and 'SPUBLISH' or 'PUBLISH', ARGV[1], "
    "           '1 ' .. g .. ' ' .. n .. ' ' .. now .. ' ' .. #ARGV[7] "
    "           .. ' ' .. #ARGV[9] .. '\\n' .. ARGV[7] .. ARGV[9] "
    "           .. ARGV[8]) "
    "local s = redis.call('HGETALL', KEYS[3]) "
    LUA_SUM
    "return {g, n, total}",

    /* SYNC  KEYS: seq msgs  ARGV: g n (the copy's newest; g 0: none)
     * count.  Returns {g, n, now, entries} ({0, 0, now, {}}: no seq). */
    LUA_NOW
    "local g = tonumber(redis.call('HGET', KEYS[1], 'g')) "
    "if not g then return {0, 0, now, {}} end "
    "local n = tonumber(redis.call('HGET', KEYS[1], 'n')) "
    "local f = tonumber(ARGV[1]) "
    "local start = '-' "
    "if f > 0 and f <= g then "
    "  start = ARGV[1] .. '-' .. (tonumber(ARGV[2]) + 1) "
    "end "
    "return {g, n, now, "
    "        redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', ARGV[3])}",

    /* BUMP  KEYS: seq  ARGV: g n (a seq somebody has seen).  When the
     * hash is behind it in the same generation, Redis lost writes: the
     * next generation begins. */
    "local g = tonumber(redis.call('HGET', KEYS[1], 'g')) "
    "local n = tonumber(redis.call('HGET', KEYS[1], 'n')) "
    "if g and g == tonumber(ARGV[1]) and n < tonumber(ARGV[2]) then "
    "  redis.call('HSET', KEYS[1], 'g', g + 1, 'n', 0) "
    "  return 1 "
    "end "
    "return 0",

    /* COUNT  KEYS: subs  ARGV: member count ttl-ms.  Also drops the
     * members whose time is up (servers that died). */
    LUA_NOW
    "if tonumber(ARGV[2]) > 0 then "
    "  redis.call('HSET', KEYS[1], ARGV[1], "
    "             ARGV[2] .. ':' .. (now + tonumber(ARGV[3]))) "
    "  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2) "
    "else "
    "  redis.call('HDEL', KEYS[1], ARGV[1]) "
    "end "
    "local s = redis.call('HGETALL', KEYS[1]) "
    "for i = 1, #s, 2 do "
    "  local c, e = string.match(s[i + 1], '^(%d+):(%d+)$') "
    "  if not c or tonumber(e) <= now then "
    "    redis.call('HDEL', KEYS[1], s[i]) "
    "  end "
    "end "
    "return 1",

    /* NUMSUB  KEYS: subs */
    LUA_NOW
    "local s = redis.call('HGETALL', KEYS[1]) "
    LUA_SUM
    "return total",
};

#define NSCRIPTS ((int)(sizeof(scripts) / sizeof(scripts[0])))

const char *comet_bus_script(int which)
{
    return which >= 0 && which < NSCRIPTS ? scripts[which] : NULL;
}

/* ---- records ------------------------------------------------------------ */

#define REQ_PUBLISH 1
#define REQ_SYNC    2
#define REQ_NUMSUB  3

struct comet_bus_req_t {
    comet_bus_req_t    *next;
    int                 kind;
    char               *channel;
    apr_size_t          channel_len;
    char               *event;
    apr_size_t          event_len;
    char               *data;
    apr_size_t          data_len;
    char               *from;
    apr_size_t          from_len;
    apr_uint64_t        want;
    comet_bus_result_t  res;
    char                error[256];
    comet_bus_done_fn  *done;
    void               *baton;
    int                 waited;     /* by comet_bus_call: under done_mu */
    int                 finished;
    int                 abandoned;
};

#define CH_SUBSCRIBING 0
#define CH_SYNCING     1
#define CH_LIVE        2

typedef struct bus_chan_t bus_chan_t;
struct bus_chan_t {
    bus_chan_t      *prev, *next;   /* the ring the sweep walks         */
    char            *id;            /* the comet channel                */
    apr_size_t       len;
    char            *rname;         /* the Redis channel                */
    apr_size_t       rlen;
    char            *key_seq, *key_msgs, *key_subs;
    int              state;
    int              fetching;      /* a sync in flight                 */
    int              refetch;       /* ... and once more after it       */
    int              fetch_due;     /* one failed: again at the tick    */
    int              gone;          /* out of the table                 */
    apr_uint32_t     refs;          /* commands in flight about it      */
    comet_bus_req_t *waiters;       /* syncs waiting for it             */
    apr_time_t       zero_since;    /* no subscriber here since         */
    apr_time_t       reg_at;        /* count last written               */
    apr_uint32_t     reg_count;
};

struct comet_bus_t {
    comet_bus_config_t     cfg;
    comet_loop_t          *loop;
    apr_pool_t            *pool;
    comet_redis_t         *cmd;     /* standalone: commands             */
    comet_redis_sub_t     *sub;     /* standalone: pub/sub              */
    comet_redis_cluster_t *cl;      /* a cluster: both                  */
    char                   sha[NSCRIPTS][41];
    apr_thread_mutex_t    *mu;      /* inq, closed                      */
    comet_bus_req_t       *inq, *inq_tail;
    int                    closed;
    apr_thread_mutex_t    *done_mu; /* finished/abandoned of waited reqs */
    apr_thread_cond_t     *done_cv;
    apr_hash_t            *chans;   /* id -> bus_chan_t                 */
    bus_chan_t            *ring;    /* any record of the ring, or NULL  */
    bus_chan_t            *cursor;  /* the sweep's next                 */
    comet_timer_t          tick;
    apr_uint32_t           buffer_length;
    apr_time_t             timeout;
    apr_size_t             max_message;
    apr_size_t             max_channel_id;
    apr_size_t             prefix_len;
    apr_time_t             log_next;
    apr_uint64_t           log_skipped;
    comet_bus_stats_t      st;      /* atomics                          */
};

#define BUS_TICK       apr_time_from_msec(250)
#define BUS_SWEEP      1024        /* records looked at per tick       */
#define BUS_LOG_EVERY  apr_time_from_sec(10)
#define BUS_STAT_ADD(bus, field, n) \
    __atomic_add_fetch(&(bus)->st.field, (n), __ATOMIC_RELAXED)

void comet_bus_config_default(comet_bus_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    comet_redis_opts_default(&cfg->redis);
    cfg->prefix = "comet";
    cfg->member = "?";
    cfg->linger = apr_time_from_sec(10);
    cfg->count_refresh = apr_time_from_sec(3);
    cfg->count_ttl = apr_time_from_sec(15);
    cfg->sync_timeout = apr_time_from_sec(2);
}

/* At most one line per BUS_LOG_EVERY for failures that repeat with every
 * publish while Redis is away; the next line counts the ones left out. */
static void bus_log_rated(comet_bus_t *bus, int level, apr_status_t rv,
                          const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void bus_log_rated(comet_bus_t *bus, int level, apr_status_t rv,
                          const char *fmt, ...)
{
    apr_time_t now = comet_now_mono();
    char what[768];
    va_list ap;

    if (now < bus->log_next) {
        bus->log_skipped++;
        return;
    }
    va_start(ap, fmt);
    apr_vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    if (rv >= APR_OS_START_USERERR + 100 && rv < APR_OS_START_USERERR + 200) {
        /* The client's own codes: the text says it already. */
        rv = 0;
    }
    if (bus->log_skipped) {
        comet_log(level, rv, "redis bus: %s (and %" APR_UINT64_T_FMT " more "
                  "like it not logged)", what, bus->log_skipped);
    }
    else {
        comet_log(level, rv, "redis bus: %s", what);
    }
    bus->log_skipped = 0;
    bus->log_next = now + BUS_LOG_EVERY;
}

/* ---- requests ----------------------------------------------------------- */

static comet_bus_req_t *req_make(int kind, const char *channel,
                                 apr_size_t clen, const char *event,
                                 apr_size_t elen, const char *data,
                                 apr_size_t dlen, const char *from,
                                 apr_size_t flen)
{
    comet_bus_req_t *req;
    char *p;

    req = malloc(sizeof(*req) + clen + elen + dlen + flen + 4);
    if (!req) {
        return NULL;
    }
    memset(req, 0, sizeof(*req));
    req->kind = kind;
    p = (char *)(req + 1);
    req->channel = p;
    memcpy(p, channel, clen);
    p[clen] = '\0';
    req->channel_len = clen;
    p += clen + 1;
    req->event = p;
    if (elen) {
        memcpy(p, event, elen);
    }
    p[elen] = '\0';
    req->event_len = elen;
    p += elen + 1;
    req->data = p;
    if (dlen) {
        memcpy(p, data, dlen);
    }
    p[dlen] = '\0';
    req->data_len = dlen;
    p += dlen + 1;
    req->from = p;
    if (flen) {
        memcpy(p, from, flen);
    }
    p[flen] = '\0';
    req->from_len = flen;
    req->res.error = req->error;
    return req;
}

comet_bus_req_t *comet_bus_req_publish(const comet_publish_t *msg,
                                       const char *from, apr_size_t from_len)
{
    return req_make(REQ_PUBLISH, msg->channel, msg->channel_len,
                    msg->event, msg->event ? msg->event_len : 0,
                    msg->data, msg->data_len,
                    from ? from : msg->from,
                    from ? from_len : msg->from ? msg->from_len : 0);
}

comet_bus_req_t *comet_bus_req_sync(const char *channel, apr_size_t len,
                                    apr_uint64_t want)
{
    comet_bus_req_t *req = req_make(REQ_SYNC, channel, len, NULL, 0, NULL, 0,
                                    NULL, 0);

    if (req) {
        req->want = want;
    }
    return req;
}

comet_bus_req_t *comet_bus_req_numsub(const char *channel, apr_size_t len)
{
    return req_make(REQ_NUMSUB, channel, len, NULL, 0, NULL, 0, NULL, 0);
}

const comet_bus_result_t *comet_bus_req_result(const comet_bus_req_t *req)
{
    return &req->res;
}

void comet_bus_req_free(comet_bus_req_t *req)
{
    free(req);
}

/* The request is done: to its callback, or to the thread waiting. */
static void req_finish(comet_bus_t *bus, comet_bus_req_t *req,
                       apr_status_t status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void req_finish(comet_bus_t *bus, comet_bus_req_t *req,
                       apr_status_t status, const char *fmt, ...)
{
    req->res.status = status;
    if (fmt) {
        va_list ap;

        va_start(ap, fmt);
        apr_vsnprintf(req->error, sizeof(req->error), fmt, ap);
        va_end(ap);
    }
    if (!req->waited) {
        req->done(req, req->baton);
        return;
    }
    apr_thread_mutex_lock(bus->done_mu);
    if (req->abandoned) {
        free(req);
    }
    else {
        req->finished = 1;
        apr_thread_cond_broadcast(bus->done_cv);
    }
    apr_thread_mutex_unlock(bus->done_mu);
}

static apr_status_t req_check(comet_bus_t *bus, comet_bus_req_t *req)
{
    apr_status_t rv;

    if (comet_channel_id_check(req->channel, req->channel_len,
                               bus->max_channel_id) != APR_SUCCESS) {
        return COMET_EBADCHAN;
    }
    if (req->kind != REQ_PUBLISH) {
        return APR_SUCCESS;
    }
    if (req->data_len > bus->max_message) {
        return COMET_ETOOBIG;
    }
    if (req->event_len) {
        static const apr_size_t rlen = sizeof(COMET_STORE_EVENT_RESERVED) - 1;

        if (req->event_len > COMET_STORE_EVENT_MAX) {
            return COMET_EPROTO;
        }
        for (apr_size_t i = 0; i < req->event_len; i++) {
            if ((unsigned char)req->event[i] <= 0x20
                || (unsigned char)req->event[i] >= 0x7f) {
                return COMET_EPROTO;
            }
        }
        if (req->event_len >= rlen
            && !strncasecmp(req->event, COMET_STORE_EVENT_RESERVED, rlen)) {
            return COMET_ERESERVED;
        }
    }
    rv = APR_SUCCESS;
    return rv;
}

static apr_status_t submit(comet_bus_t *bus, comet_bus_req_t *req)
{
    apr_status_t rv = req_check(bus, req);

    if (rv != APR_SUCCESS) {
        return rv;
    }
    req->next = NULL;
    apr_thread_mutex_lock(bus->mu);
    if (bus->closed) {
        apr_thread_mutex_unlock(bus->mu);
        return COMET_REDIS_ECLOSED;
    }
    if (bus->inq_tail) {
        bus->inq_tail->next = req;
    }
    else {
        bus->inq = req;
    }
    bus->inq_tail = req;
    apr_thread_mutex_unlock(bus->mu);
    comet_loop_wake(bus->loop);
    return APR_SUCCESS;
}

apr_status_t comet_bus_submit(comet_bus_t *bus, comet_bus_req_t *req,
                              comet_bus_done_fn *done, void *baton)
{
    req->done = done;
    req->baton = baton;
    req->waited = 0;
    return submit(bus, req);
}

apr_status_t comet_bus_call(comet_bus_t *bus, comet_bus_req_t **reqs,
                            apr_size_t n, apr_interval_time_t timeout)
{
    apr_time_t until;
    apr_size_t i, left = 0;
    apr_status_t rv;

    if (timeout <= 0) {
        timeout = bus->cfg.sync_timeout;
    }
    until = comet_now_mono() + timeout;
    for (i = 0; i < n; i++) {
        reqs[i]->waited = 1;
        reqs[i]->finished = 0;
        reqs[i]->abandoned = 0;
        if ((rv = submit(bus, reqs[i])) != APR_SUCCESS) {
            char eb[120];

            reqs[i]->finished = 1;
            reqs[i]->res.status = rv;
            apr_cpystrn(reqs[i]->error, comet_redis_strerror(rv, eb,
                                                             sizeof(eb)),
                        sizeof(reqs[i]->error));
        }
    }
    apr_thread_mutex_lock(bus->done_mu);
    for (;;) {
        apr_time_t now = comet_now_mono();

        left = 0;
        for (i = 0; i < n; i++) {
            left += !reqs[i]->finished;
        }
        if (!left || now >= until) {
            break;
        }
        apr_thread_cond_timedwait(bus->done_cv, bus->done_mu, until - now);
    }
    for (i = 0; left && i < n; i++) {
        if (!reqs[i]->finished) {
            reqs[i]->abandoned = 1;
            reqs[i] = NULL;
        }
    }
    apr_thread_mutex_unlock(bus->done_mu);
    return left ? APR_TIMEUP : APR_SUCCESS;
}

/* ---- sending scripts ---------------------------------------------------- */

typedef struct bus_call_t {
    comet_bus_t          *bus;
    int                   script;
    int                   evaled;
    comet_redis_reply_fn *fn;
    void                 *baton;
    const char           *key;
    apr_size_t            keylen;
    int                   argc;
    const char          **argv;
    apr_size_t           *argvlen;
} bus_call_t;

static apr_status_t call_send(bus_call_t *call);

static void call_reply(void *baton, apr_status_t status,
                       const comet_resp_reply_t *reply, const char *error)
{
    bus_call_t *call = baton;

    if (status == APR_SUCCESS && reply && reply->type == COMET_REPLY_ERROR
        && !call->evaled && !strncmp(reply->str, "NOSCRIPT", 8)) {
        /* It did not run: send the script itself. */
        apr_status_t rv;

        call->evaled = 1;
        if ((rv = call_send(call)) == APR_SUCCESS) {
            return;
        }
        if (call->fn) {
            call->fn(call->baton, COMET_REDIS_EDOWN, NULL,
                     "cannot send the script again");
        }
        free(call);
        return;
    }
    if (call->fn) {
        call->fn(call->baton, status, reply, error);
    }
    free(call);
}

static apr_status_t call_send(bus_call_t *call)
{
    comet_bus_t *bus = call->bus;

    call->argv[0] = call->evaled ? "EVAL" : "EVALSHA";
    call->argvlen[0] = strlen(call->argv[0]);
    call->argv[1] = call->evaled ? scripts[call->script]
                                 : bus->sha[call->script];
    call->argvlen[1] = strlen(call->argv[1]);
    if (bus->cl) {
        return comet_redis_cluster_command(bus->cl, call->key, call->keylen,
                                           call->argc, call->argv,
                                           call->argvlen, call_reply, call);
    }
    return comet_redis_command(bus->cmd, call->argc, call->argv,
                               call->argvlen, call_reply, call);
}

/* Run script with nkeys keys then the other arguments (NULL-terminated
 * pairs of pointer and length in args/lens, n of them); the first key
 * routes it.  fn is called exactly once when APR_SUCCESS is returned. */
static apr_status_t bus_script(comet_bus_t *bus, int script, int n,
                               const char *const *args,
                               const apr_size_t *lens, int nkeys,
                               comet_redis_reply_fn *fn, void *baton)
{
    apr_size_t total = 0;
    bus_call_t *call;
    char nk[16], *p;
    int i, argc = n + 3;
    apr_status_t rv;

    for (i = 0; i < n; i++) {
        total += lens[i] + 1;
    }
    call = malloc(sizeof(*call) + (sizeof(char *) + sizeof(apr_size_t))
                  * (apr_size_t)argc + total + sizeof(nk));
    if (!call) {
        return APR_ENOMEM;
    }
    call->bus = bus;
    call->script = script;
    call->evaled = 0;
    call->fn = fn;
    call->baton = baton;
    call->argc = argc;
    call->argv = (const char **)(call + 1);
    call->argvlen = (apr_size_t *)(call->argv + argc);
    p = (char *)(call->argvlen + argc);
    apr_snprintf(p, sizeof(nk), "%d", nkeys);
    call->argv[2] = p;
    call->argvlen[2] = strlen(p);
    p += sizeof(nk);
    for (i = 0; i < n; i++) {
        memcpy(p, args[i], lens[i]);
        p[lens[i]] = '\0';
        call->argv[3 + i] = p;
        call->argvlen[3 + i] = lens[i];
        p += lens[i] + 1;
    }
    call->key = call->argv[3];
    call->keylen = call->argvlen[3];
    if ((rv = call_send(call)) != APR_SUCCESS) {
        free(call);
    }
    return rv;
}

/* ---- channel records ---------------------------------------------------- */

static bus_chan_t *chan_find(comet_bus_t *bus, const char *id,
                             apr_size_t len)
{
    return apr_hash_get(bus->chans, id, (apr_ssize_t)len);
}

/* The comet channel of a Redis channel name, or NULL. */
static bus_chan_t *chan_by_rname(comet_bus_t *bus, const char *name,
                                 apr_size_t len)
{
    apr_size_t pl = bus->prefix_len;

    if (len < pl + 4 || memcmp(name, bus->cfg.prefix, pl)
        || name[pl] != ':' || name[pl + 1] != '{' || name[len - 1] != '}') {
        return NULL;
    }
    return chan_find(bus, name + pl + 2, len - pl - 3);
}

static apr_status_t redis_subscribe(comet_bus_t *bus, bus_chan_t *ch)
{
    if (bus->cl) {
        return comet_redis_cluster_subscribe(bus->cl, ch->rname, ch->rlen);
    }
    return comet_redis_sub_subscribe(bus->sub, ch->rname, ch->rlen, 0);
}

static void redis_unsubscribe(comet_bus_t *bus, bus_chan_t *ch)
{
    if (bus->cl) {
        comet_redis_cluster_unsubscribe(bus->cl, ch->rname, ch->rlen);
    }
    else {
        comet_redis_sub_unsubscribe(bus->sub, ch->rname, ch->rlen);
    }
}

static int sub_up(comet_bus_t *bus)
{
    return bus->cl ? comet_redis_cluster_is_up(bus->cl)
                   : comet_redis_is_up(comet_redis_sub_conn(bus->sub));
}

static bus_chan_t *chan_create(comet_bus_t *bus, const char *id,
                               apr_size_t len)
{
    const char *pf = bus->cfg.prefix;
    apr_size_t pl = bus->prefix_len, rl = pl + len + 3;
    bus_chan_t *ch;
    char *p;

    ch = calloc(1, sizeof(*ch) + len + 1 + (rl + 6) * 4);
    if (!ch) {
        return NULL;
    }
    p = (char *)(ch + 1);
    ch->id = p;
    memcpy(p, id, len);
    p[len] = '\0';
    ch->len = len;
    p += len + 1;
    ch->rname = p;
    ch->rlen = (apr_size_t)sprintf(p, "%s:{%.*s}", pf, (int)len, id);
    p += rl + 6;
    ch->key_seq = p;
    sprintf(p, "%s:seq", ch->rname);
    p += rl + 6;
    ch->key_msgs = p;
    sprintf(p, "%s:msgs", ch->rname);
    p += rl + 6;
    ch->key_subs = p;
    sprintf(p, "%s:subs", ch->rname);
    if (redis_subscribe(bus, ch) != APR_SUCCESS) {
        free(ch);
        return NULL;
    }
    ch->state = CH_SUBSCRIBING;
    apr_hash_set(bus->chans, ch->id, (apr_ssize_t)len, ch);
    if (bus->ring) {
        ch->next = bus->ring;
        ch->prev = bus->ring->prev;
        ch->prev->next = ch;
        ch->next->prev = ch;
    }
    else {
        bus->ring = ch->next = ch->prev = ch;
    }
    if (!bus->cursor) {
        bus->cursor = ch;
    }
    BUS_STAT_ADD(bus, channels, 1);
    return ch;
}

static void chan_unref(bus_chan_t *ch)
{
    if (--ch->refs == 0 && ch->gone) {
        free(ch);
    }
}

static void waiters_finish(comet_bus_t *bus, bus_chan_t *ch,
                           apr_status_t status, const char *why)
{
    comet_bus_req_t *w = ch->waiters;

    ch->waiters = NULL;
    while (w) {
        comet_bus_req_t *next = w->next;

        if (status == APR_SUCCESS) {
            req_finish(bus, w, status, NULL);
        }
        else {
            req_finish(bus, w, status, "%s", why);
        }
        w = next;
    }
}

static void count_write(comet_bus_t *bus, bus_chan_t *ch, apr_uint32_t count)
{
    char cnt[16], ttl[24];
    const char *args[4];
    apr_size_t lens[4];

    apr_snprintf(cnt, sizeof(cnt), "%u", count);
    apr_snprintf(ttl, sizeof(ttl), "%" APR_TIME_T_FMT,
                 apr_time_as_msec(bus->cfg.count_ttl));
    args[0] = ch->key_subs;
    args[1] = bus->cfg.member;
    args[2] = cnt;
    args[3] = ttl;
    for (int i = 0; i < 4; i++) {
        lens[i] = strlen(args[i]);
    }
    if (bus_script(bus, COMET_BUS_SCRIPT_COUNT, 4, args, lens, 1, NULL,
                   NULL) == APR_SUCCESS) {
        ch->reg_count = count;
        ch->reg_at = comet_now_mono();
    }
}

/* Forget the channel: unsubscribe in Redis, take our count back. */
static void chan_remove(comet_bus_t *bus, bus_chan_t *ch)
{
    if (ch->reg_count) {
        count_write(bus, ch, 0);
    }
    waiters_finish(bus, ch, APR_SUCCESS, NULL);
    redis_unsubscribe(bus, ch);
    apr_hash_set(bus->chans, ch->id, (apr_ssize_t)ch->len, NULL);
    if (ch->next == ch) {
        bus->ring = bus->cursor = NULL;
    }
    else {
        ch->prev->next = ch->next;
        ch->next->prev = ch->prev;
        if (bus->ring == ch) {
            bus->ring = ch->next;
        }
        if (bus->cursor == ch) {
            bus->cursor = ch->next;
        }
    }
    __atomic_sub_fetch(&bus->st.channels, 1, __ATOMIC_RELAXED);
    ch->gone = 1;
    ch->refs++;
    chan_unref(ch);
}

/* ---- feeding the store -------------------------------------------------- */

static apr_status_t feed(comet_bus_t *bus, bus_chan_t *ch, int has_msg,
                         apr_uint64_t seq, const char *event,
                         apr_size_t elen, const char *from, apr_size_t flen,
                         const char *data, apr_size_t dlen,
                         apr_interval_time_t age, comet_store_pos_t *pos)
{
    comet_store_feed_t f;
    apr_status_t rv;

    memset(&f, 0, sizeof(f));
    /* Redis had no seq for the channel (the copy is at 0): the first
     * message of a generation lost nothing. */
    f.follows = pos->fed && pos->last == 0 && (apr_uint32_t)seq == 1;
    f.channel = ch->id;
    f.channel_len = ch->len;
    f.has_msg = has_msg;
    f.seq = seq;
    f.event = elen ? event : NULL;
    f.event_len = elen;
    /* An identity longer than this store keeps is left out rather than
     * the message. */
    if (flen && flen <= COMET_STORE_FROM_MAX) {
        f.from = from;
        f.from_len = flen;
    }
    f.data = data;
    f.data_len = dlen;
    f.age = age;
    f.expect_fed = pos->fed;
    f.expect_last = pos->last;
    rv = comet_store_feed(bus->cfg.store, &f, comet_now_mono(),
                          bus->cfg.wake, bus->cfg.wake_baton, pos);
    if (rv == COMET_ETOOBIG || rv == COMET_EPROTO) {
        /* Larger than this server takes (CometMaxMessageSize differs
         * between servers): readers are told they missed it. */
        comet_log(COMET_LOG_WARNING, rv, "redis bus: channel=%s: message %"
                  APR_UINT64_T_FMT " cannot be stored here; readers are "
                  "told they missed it", ch->id, seq);
        f.has_msg = 0;
        rv = comet_store_feed(bus->cfg.store, &f, comet_now_mono(),
                              bus->cfg.wake, bus->cfg.wake_baton, pos);
    }
    return rv;
}

/* ---- syncing a channel -------------------------------------------------- */

static void fetch(comet_bus_t *bus, bus_chan_t *ch);

static void bump(comet_bus_t *bus, bus_chan_t *ch, apr_uint64_t seen)
{
    char g[16], n[16];
    const char *args[3] = { ch->key_seq, g, n };
    apr_size_t lens[3];

    apr_snprintf(g, sizeof(g), "%u", COMET_BUS_GEN(seen));
    apr_snprintf(n, sizeof(n), "%u", (apr_uint32_t)seen);
    lens[0] = strlen(args[0]);
    lens[1] = strlen(g);
    lens[2] = strlen(n);
    bus_log_rated(bus, COMET_LOG_WARNING, 0, "channel=%s: Redis is behind "
                  "seq %" APR_UINT64_T_FMT " that was handed out (a "
                  "failover or a restart lost writes): its ids go on in "
                  "a new generation, and readers are told they missed "
                  "messages", ch->id, seen);
    BUS_STAT_ADD(bus, rollbacks, 1);
    bus_script(bus, COMET_BUS_SCRIPT_BUMP, 3, args, lens, 1, NULL, NULL);
}

static const comet_resp_reply_t *field(const comet_resp_reply_t *fields,
                                       const char *name)
{
    return comet_resp_reply_get(fields, name);
}

/* Feed the stream entries of a sync reply (oldest first) and then the
 * position top; returns 0, or -1 when the channel is gone. */
static int feed_entries(comet_bus_t *bus, bus_chan_t *ch,
                        const comet_resp_reply_t *list, apr_uint64_t top,
                        apr_int64_t now_ms, comet_store_pos_t *pos)
{
    const comet_resp_reply_t *e;
    apr_size_t i;
    apr_status_t rv;

    for (i = 0, e = list + 1; i < list->elements;
         i++, e = comet_resp_reply_next(e)) {
        const comet_resp_reply_t *idn = comet_resp_reply_child(e, 0);
        const comet_resp_reply_t *fl = comet_resp_reply_child(e, 1);
        const comet_resp_reply_t *ev, *d, *t, *fr;
        apr_uint64_t g, n, seq;
        apr_int64_t when;
        char *dash;

        if (!idn || idn->type != COMET_REPLY_STRING || !fl) {
            continue;
        }
        g = apr_strtoi64(idn->str, &dash, 10);
        if (*dash != '-') {
            continue;
        }
        n = apr_strtoi64(dash + 1, NULL, 10);
        seq = COMET_BUS_SEQ(g, n);
        ev = field(fl, "e");
        d = field(fl, "d");
        fr = field(fl, "f");
        t = field(fl, "t");
        when = t && t->str ? apr_strtoi64(t->str, NULL, 10) : now_ms;
        for (;;) {
            int gap;

            if (pos->fed && COMET_BUS_GEN(seq) == COMET_BUS_GEN(pos->last)
                && seq <= pos->last) {
                break;          /* there already */
            }
            gap = !pos->fed || (seq != pos->last + 1
                                && !(pos->last == 0
                                     && (apr_uint32_t)seq == 1));
            rv = feed(bus, ch, 1, seq, ev ? ev->str : NULL,
                      ev ? ev->len : 0, fr ? fr->str : NULL,
                      fr ? fr->len : 0, d ? d->str : "", d ? d->len : 0,
                      now_ms > when ? apr_time_from_msec(now_ms - when) : 0,
                      pos);
            if (rv == COMET_ESTALE) {
                continue;       /* another process moved it: again */
            }
            if (rv == COMET_ENOCHAN) {
                return -1;
            }
            if (gap && pos->fed) {
                BUS_STAT_ADD(bus, gaps, 1);
            }
            BUS_STAT_ADD(bus, received, 1);
            break;
        }
    }
    for (;;) {
        if (pos->fed && pos->last == top) {
            return 0;
        }
        if (pos->fed && COMET_BUS_GEN(top) == COMET_BUS_GEN(pos->last)
            && top < pos->last) {
            /* The copy has what Redis no longer has. */
            bump(bus, ch, pos->last);
            ch->refetch = 1;
            return 0;
        }
        rv = feed(bus, ch, 0, top, NULL, 0, NULL, 0, NULL, 0, 0, pos);
        if (rv == COMET_ENOCHAN) {
            return -1;
        }
        if (rv != COMET_ESTALE) {
            if (top) {
                BUS_STAT_ADD(bus, gaps, 1);
            }
            return 0;
        }
    }
}

/* A sync's reply needs the bus and the channel. */
typedef struct fetch_ctx_t {
    comet_bus_t *bus;
    bus_chan_t  *ch;
} fetch_ctx_t;

static void fetch_done(void *baton, apr_status_t status,
                       const comet_resp_reply_t *reply, const char *error)
{
    fetch_ctx_t *fc = baton;
    comet_bus_t *bus = fc->bus;
    bus_chan_t *ch = fc->ch;
    const comet_resp_reply_t *g, *n, *now, *list;
    comet_store_pos_t pos;
    comet_bus_req_t *w;
    apr_uint64_t top;
    apr_status_t rv;

    free(fc);
    ch->fetching = 0;
    if (ch->gone) {
        chan_unref(ch);
        return;
    }
    chan_unref(ch);
    if (status != APR_SUCCESS || !reply || reply->type == COMET_REPLY_ERROR) {
        const char *why = error ? error : reply && reply->str ? reply->str
                                                             : "no reply";

        bus_log_rated(bus, COMET_LOG_ERR, status, "channel=%s: cannot read "
                      "it from Redis (%s); trying again", ch->id, why);
        ch->fetch_due = 1;
        waiters_finish(bus, ch, COMET_BUS_ENOTSENT, why);
        return;
    }
    g = comet_resp_reply_child(reply, 0);
    n = comet_resp_reply_child(reply, 1);
    now = comet_resp_reply_child(reply, 2);
    list = comet_resp_reply_child(reply, 3);
    if (!g || !n || !now || !list || g->type != COMET_REPLY_INTEGER
        || n->type != COMET_REPLY_INTEGER
        || !comet_resp_reply_aggregate(list)) {
        ch->fetch_due = 1;
        waiters_finish(bus, ch, COMET_BUS_ENOTSENT, "unexpected reply to "
                       "the sync script");
        return;
    }
    BUS_STAT_ADD(bus, fetches, 1);
    top = COMET_BUS_SEQ(g->integer, n->integer);
    rv = comet_store_position(bus->cfg.store, bus->cfg.slot, ch->id, ch->len,
                              &pos);
    if (rv != APR_SUCCESS) {
        chan_remove(bus, ch);
        return;
    }
    if (g->integer == 0) {
        /* Redis holds no seq for it (never published, expired, or lost
         * with a restart): a copy that knew nothing knows that much now;
         * one that knew more keeps it (the next publish starts another
         * generation, which tells its readers). */
        if (!pos.fed) {
            while ((rv = feed(bus, ch, 0, 0, NULL, 0, NULL, 0, NULL, 0, 0, &pos))
                   == COMET_ESTALE && !pos.fed) {
            }
        }
    }
    else if (feed_entries(bus, ch, list, top, now->integer, &pos) < 0) {
        chan_remove(bus, ch);
        return;
    }
    /* A new subscriber that has seen a seq that Redis no longer reaches:
     * Redis went back (a failover lost writes). */
    for (w = ch->waiters; w && g->integer; w = w->next) {
        if (w->want > top && COMET_BUS_GEN(w->want) == COMET_BUS_GEN(top)
            && !ch->refetch) {
            bump(bus, ch, w->want);
            ch->refetch = 1;
        }
    }
    if (ch->refetch) {
        ch->refetch = 0;
        fetch(bus, ch);
        return;
    }
    ch->state = CH_LIVE;
    waiters_finish(bus, ch, APR_SUCCESS, NULL);
}

static void fetch(comet_bus_t *bus, bus_chan_t *ch)
{
    comet_store_pos_t pos;
    char g[16], n[16], cnt[16];
    const char *args[5];
    apr_size_t lens[5];
    fetch_ctx_t *fc;
    apr_status_t rv;

    if (ch->fetching) {
        ch->refetch = 1;
        return;
    }
    ch->fetch_due = 0;
    rv = comet_store_position(bus->cfg.store, bus->cfg.slot, ch->id, ch->len,
                              &pos);
    if (rv != APR_SUCCESS) {
        chan_remove(bus, ch);
        return;
    }
    apr_snprintf(g, sizeof(g), "%u", pos.fed ? COMET_BUS_GEN(pos.last) : 0);
    apr_snprintf(n, sizeof(n), "%u", pos.fed ? (apr_uint32_t)pos.last : 0);
    apr_snprintf(cnt, sizeof(cnt), "%u", bus->buffer_length);
    args[0] = ch->key_seq;
    args[1] = ch->key_msgs;
    args[2] = g;
    args[3] = n;
    args[4] = cnt;
    for (int i = 0; i < 5; i++) {
        lens[i] = strlen(args[i]);
    }
    fc = malloc(sizeof(*fc));
    if (!fc) {
        ch->fetch_due = 1;
        return;
    }
    fc->bus = bus;
    fc->ch = ch;
    ch->state = ch->state == CH_SUBSCRIBING ? CH_SYNCING : ch->state;
    rv = bus_script(bus, COMET_BUS_SCRIPT_SYNC, 5, args, lens, 2, fetch_done,
                    fc);
    if (rv != APR_SUCCESS) {
        free(fc);
        ch->fetch_due = 1;
        waiters_finish(bus, ch, COMET_BUS_ENOTSENT, "Redis is not "
                       "reachable");
        return;
    }
    ch->fetching = 1;
    ch->refs++;
}

/* ---- messages and subscription events ----------------------------------- */

/* "1 <g> <n> <t> <event-len> <from-len>\n<event><from><data>" */
static int parse_message(const char *p, apr_size_t len, apr_uint64_t *seq,
                         apr_int64_t *t, const char **ev, apr_size_t *elen,
                         const char **from, apr_size_t *flen_out,
                         const char **data, apr_size_t *dlen)
{
    const char *nl = memchr(p, '\n', len < 128 ? len : 128);
    char head[128], *s, *end;
    apr_uint64_t v[5];
    apr_size_t hl, flen;
    int i;

    if (!nl || len < 2 || p[0] != '1' || p[1] != ' ') {
        return -1;
    }
    hl = (apr_size_t)(nl - p);
    memcpy(head, p + 2, hl - 2);
    head[hl - 2] = '\0';
    s = head;
    for (i = 0; i < 5; i++) {
        v[i] = apr_strtoi64(s, &end, 10);
        if (end == s || (*end != ' ' && *end != '\0')) {
            return -1;
        }
        s = end;
    }
    *seq = COMET_BUS_SEQ(v[0], v[1]);
    *t = (apr_int64_t)v[2];
    *elen = (apr_size_t)v[3];
    flen = (apr_size_t)v[4];
    if (*elen > COMET_STORE_EVENT_MAX || flen > len
        || hl + 1 + *elen + flen > len) {
        return -1;
    }
    *ev = nl + 1;
    *from = nl + 1 + *elen;
    *flen_out = flen;
    *data = nl + 1 + *elen + flen;
    *dlen = len - hl - 1 - *elen - flen;
    return 0;
}

static void on_message(comet_bus_t *bus, bus_chan_t *ch,
                       const comet_redis_sub_event_t *e)
{
    comet_store_pos_t pos;
    const char *ev, *from, *data;
    apr_size_t elen, flen, dlen;
    apr_uint64_t seq;
    apr_int64_t t;
    apr_status_t rv;

    if (ch->state != CH_LIVE || ch->fetching) {
        /* The sync under way may or may not have it: once more after. */
        if (ch->fetching) {
            ch->refetch = 1;
        }
        return;
    }
    if (parse_message(e->payload, e->payload_len, &seq, &t, &ev, &elen,
                      &from, &flen, &data, &dlen) < 0) {
        bus_log_rated(bus, COMET_LOG_WARNING, COMET_EPROTO, "channel=%s: a "
                      "message on %s is not ours: ignored", ch->id,
                      ch->rname);
        return;
    }
    pos.fed = 1;
    pos.last = seq - 1;
    rv = feed(bus, ch, 1, seq, ev, elen, from, flen, data, dlen, 0, &pos);
    if (rv == APR_SUCCESS || rv == COMET_EFULL) {
        BUS_STAT_ADD(bus, received, 1);
        return;
    }
    if (rv == COMET_ENOCHAN) {
        /* No subscriber of it is left in this server. */
        chan_remove(bus, ch);
        return;
    }
    if (rv == COMET_ESTALE && pos.fed && pos.last == 0
        && (apr_uint32_t)seq == 1) {
        /* The first message of a channel Redis knew nothing of. */
        rv = feed(bus, ch, 1, seq, ev, elen, from, flen, data, dlen, 0, &pos);
        if (rv == APR_SUCCESS) {
            BUS_STAT_ADD(bus, received, 1);
            return;
        }
    }
    if (rv == COMET_ESTALE && pos.fed
        && COMET_BUS_GEN(seq) == COMET_BUS_GEN(pos.last)
        && seq <= pos.last) {
        /* Another process of this server fed it first. */
        BUS_STAT_ADD(bus, duplicates, 1);
        return;
    }
    /* It does not follow: fetch what lies between. */
    fetch(bus, ch);
}

static void on_sub_event(comet_bus_t *bus, const comet_redis_sub_event_t *e)
{
    bus_chan_t *ch = chan_by_rname(bus, e->channel, e->channel_len);

    if (!ch) {
        return;
    }
    switch (e->type) {
    case COMET_REDIS_SUB_READY:
        fetch(bus, ch);
        break;
    case COMET_REDIS_SUB_LOST:
        ch->state = CH_SUBSCRIBING;
        waiters_finish(bus, ch, COMET_BUS_ENOTSENT, e->error ? e->error
                       : "subscription lost");
        break;
    case COMET_REDIS_SUB_FAILED:
        comet_log(COMET_LOG_ERR, 0, "redis bus: channel=%s: Redis refused "
                  "the subscription: %s", ch->id, e->error ? e->error : "");
        waiters_finish(bus, ch, COMET_BUS_ENOTSENT, e->error ? e->error
                       : "subscription refused");
        chan_remove(bus, ch);
        break;
    case COMET_REDIS_SUB_MESSAGE:
        on_message(bus, ch, e);
        break;
    }
}

static void cmd_state(void *baton, comet_redis_t *c, int up,
                      apr_status_t why, const char *text)
{
    comet_bus_t *bus = baton;

    __atomic_store_n(&bus->st.up, (apr_uint32_t)up, __ATOMIC_RELAXED);
}

static void cluster_state(void *baton, comet_redis_cluster_t *cl, int up,
                          const char *text)
{
    comet_bus_t *bus = baton;

    __atomic_store_n(&bus->st.up, (apr_uint32_t)up, __ATOMIC_RELAXED);
}

static void sub_event(void *baton, comet_redis_sub_t *sub,
                      const comet_redis_sub_event_t *e)
{
    on_sub_event(baton, e);
}

static void cluster_event(void *baton, comet_redis_cluster_t *cl,
                          const comet_redis_sub_event_t *e)
{
    on_sub_event(baton, e);
}

/* ---- requests on the bus's thread --------------------------------------- */

typedef struct publish_ctx_t {
    comet_bus_t     *bus;
    comet_bus_req_t *req;
} publish_ctx_t;

static void published(void *baton, apr_status_t status,
                      const comet_resp_reply_t *reply, const char *error)
{
    publish_ctx_t *pc = baton;
    comet_bus_t *bus = pc->bus;
    comet_bus_req_t *req = pc->req;
    const comet_resp_reply_t *g, *n, *total;
    bus_chan_t *ch;
    char eb[120];

    free(pc);
    if (status != APR_SUCCESS) {
        int unknown = status == COMET_REDIS_ELOST || status == APR_TIMEUP;

        BUS_STAT_ADD(bus, publish_failed, 1);
        bus_log_rated(bus, COMET_LOG_ERR, status, "channel=%s: publish %s: "
                      "%s", req->channel,
                      unknown ? "outcome unknown" : "not stored",
                      error ? error : comet_redis_strerror(status, eb,
                                                           sizeof(eb)));
        req_finish(bus, req, unknown ? COMET_BUS_EUNKNOWN
                                     : COMET_BUS_ENOTSENT, "%s%s",
                   unknown ? "Redis did not answer: the message may or may "
                   "not be stored: " : "not stored: ",
                   error ? error : comet_redis_strerror(status, eb,
                                                        sizeof(eb)));
        return;
    }
    g = comet_resp_reply_child(reply, 0);
    n = comet_resp_reply_child(reply, 1);
    total = comet_resp_reply_child(reply, 2);
    if (reply->type == COMET_REPLY_ERROR || !g || !n || !total
        || g->type != COMET_REPLY_INTEGER || n->type != COMET_REPLY_INTEGER) {
        /* A script that fails stops there: the message is not stored
         * (a seq it took leaves a gap, which readers are told of). */
        BUS_STAT_ADD(bus, publish_failed, 1);
        bus_log_rated(bus, COMET_LOG_ERR, 0, "channel=%s: publish not "
                      "stored: Redis answered %s",
                      req->channel, reply->str ? reply->str
                                               : "something unexpected");
        req_finish(bus, req, COMET_BUS_ENOTSENT, "not stored: Redis "
                   "answered %s", reply->str ? reply->str
                                             : "something unexpected");
        return;
    }
    BUS_STAT_ADD(bus, published, 1);
    req->res.id.epoch = COMET_BUS_EPOCH;
    req->res.id.seq = COMET_BUS_SEQ(g->integer, n->integer);
    req->res.count = total->type == COMET_REPLY_INTEGER ? total->integer : 0;
    /* Subscribers here need not wait for the message to come back. */
    ch = chan_find(bus, req->channel, req->channel_len);
    if (ch && ch->state == CH_LIVE && !ch->fetching) {
        comet_store_pos_t pos;

        pos.fed = 1;
        pos.last = req->res.id.seq - 1;
        if (feed(bus, ch, 1, req->res.id.seq, req->event, req->event_len,
                 req->from, req->from_len, req->data, req->data_len, 0,
                 &pos) == APR_SUCCESS) {
            BUS_STAT_ADD(bus, received, 1);
        }
    }
    req_finish(bus, req, APR_SUCCESS, NULL);
}

static void run_publish(comet_bus_t *bus, comet_bus_req_t *req)
{
    char pubchan[COMET_STORE_CHANNEL_ID_MAX + 64], maxlen[16], ttl[24],
         sttl[24], gen[16], keys[3][COMET_STORE_CHANNEL_ID_MAX + 64];
    const char *args[12];
    apr_size_t lens[12];
    apr_uint32_t g = 0;
    apr_time_t seq_ttl;
    publish_ctx_t *pc;
    apr_status_t rv;
    int i;

    apr_snprintf(pubchan, sizeof(pubchan), "%s:{%s}", bus->cfg.prefix,
                 req->channel);
    apr_snprintf(keys[0], sizeof(keys[0]), "%s:seq", pubchan);
    apr_snprintf(keys[1], sizeof(keys[1]), "%s:msgs", pubchan);
    apr_snprintf(keys[2], sizeof(keys[2]), "%s:subs", pubchan);
    apr_snprintf(maxlen, sizeof(maxlen), "%u", bus->buffer_length);
    apr_snprintf(ttl, sizeof(ttl), "%" APR_TIME_T_FMT,
                 bus->timeout > 0 ? apr_time_as_msec(bus->timeout) : 0);
    /* The seq outlives the messages (a day at least), so that a client
     * that comes back after they expired is told it missed them instead of
     * meeting a new generation. */
    seq_ttl = bus->timeout > 0 ? bus->timeout * 2 : 0;
    if (seq_ttl && seq_ttl < apr_time_from_sec(86400)) {
        seq_ttl = apr_time_from_sec(86400);
    }
    apr_snprintf(sttl, sizeof(sttl), "%" APR_TIME_T_FMT,
                 apr_time_as_msec(seq_ttl));
    while (g == 0) {
        if (apr_generate_random_bytes((unsigned char *)&g, sizeof(g))
            != APR_SUCCESS) {
            g = (apr_uint32_t)comet_now_mono() | 1;
        }
        g &= 0x7fffffff;
    }
    apr_snprintf(gen, sizeof(gen), "%u", g);
    args[0] = keys[0];
    args[1] = keys[1];
    args[2] = keys[2];
    args[3] = pubchan;
    args[4] = bus->cl ? "1" : "0";
    args[5] = maxlen;
    args[6] = ttl;
    args[7] = sttl;
    args[8] = gen;
    for (i = 0; i < 9; i++) {
        lens[i] = strlen(args[i]);
    }
    args[9] = req->event;
    lens[9] = req->event_len;
    args[10] = req->data;
    lens[10] = req->data_len;
    args[11] = req->from;
    lens[11] = req->from_len;
    pc = malloc(sizeof(*pc));
    if (!pc) {
        req_finish(bus, req, COMET_BUS_ENOTSENT, "not stored: out of "
                   "memory");
        return;
    }
    pc->bus = bus;
    pc->req = req;
    rv = bus_script(bus, COMET_BUS_SCRIPT_PUBLISH, 12, args, lens, 3,
                    published, pc);
    if (rv != APR_SUCCESS) {
        char eb[120];

        free(pc);
        BUS_STAT_ADD(bus, publish_failed, 1);
        bus_log_rated(bus, COMET_LOG_ERR, rv, "channel=%s: publish not "
                      "stored: %s", req->channel,
                      comet_redis_strerror(rv, eb, sizeof(eb)));
        req_finish(bus, req, COMET_BUS_ENOTSENT, "not stored: %s",
                   rv == COMET_REDIS_EDOWN ? "Redis is not reachable"
                   : comet_redis_strerror(rv, eb, sizeof(eb)));
    }
}

static void numsub_done(void *baton, apr_status_t status,
                        const comet_resp_reply_t *reply, const char *error)
{
    publish_ctx_t *pc = baton;
    comet_bus_req_t *req = pc->req;
    comet_bus_t *bus = pc->bus;

    free(pc);
    if (status != APR_SUCCESS || !reply
        || reply->type != COMET_REPLY_INTEGER) {
        req_finish(bus, req, COMET_BUS_ENOTSENT, "%s", error ? error
                   : reply && reply->str ? reply->str : "no answer");
        return;
    }
    req->res.count = reply->integer;
    req_finish(bus, req, APR_SUCCESS, NULL);
}

static void run_numsub(comet_bus_t *bus, comet_bus_req_t *req)
{
    char key[COMET_STORE_CHANNEL_ID_MAX + 64];
    const char *args[1] = { key };
    apr_size_t lens[1];
    publish_ctx_t *pc = malloc(sizeof(*pc));

    apr_snprintf(key, sizeof(key), "%s:{%s}:subs", bus->cfg.prefix,
                 req->channel);
    lens[0] = strlen(key);
    if (!pc) {
        req_finish(bus, req, COMET_BUS_ENOTSENT, "out of memory");
        return;
    }
    pc->bus = bus;
    pc->req = req;
    if (bus_script(bus, COMET_BUS_SCRIPT_NUMSUB, 1, args, lens, 1,
                   numsub_done, pc) != APR_SUCCESS) {
        free(pc);
        req_finish(bus, req, COMET_BUS_ENOTSENT, "Redis is not reachable");
    }
}

static void run_sync(comet_bus_t *bus, comet_bus_req_t *req)
{
    bus_chan_t *ch = chan_find(bus, req->channel, req->channel_len);
    comet_store_pos_t pos;

    if (!ch && !(ch = chan_create(bus, req->channel, req->channel_len))) {
        req_finish(bus, req, COMET_BUS_ENOTSENT, "cannot subscribe in "
                   "Redis (too many channels?)");
        return;
    }
    ch->zero_since = 0;
    if (ch->state == CH_LIVE && !ch->fetching) {
        if (comet_store_position(bus->cfg.store, bus->cfg.slot, ch->id,
                                 ch->len, &pos) != APR_SUCCESS) {
            req_finish(bus, req, APR_SUCCESS, NULL);
            return;
        }
        if (pos.fed && (req->want == 0
                        || (COMET_BUS_GEN(req->want)
                            == COMET_BUS_GEN(pos.last)
                            && req->want <= pos.last))) {
            if (pos.slot_subscribers != ch->reg_count) {
                count_write(bus, ch, pos.slot_subscribers);
            }
            req_finish(bus, req, APR_SUCCESS, NULL);
            return;
        }
    }
    if (!sub_up(bus)) {
        /* The copy catches up when Redis is back; the subscriber need
         * not wait for that. */
        req_finish(bus, req, COMET_BUS_ENOTSENT, "Redis is not reachable");
        return;
    }
    req->next = ch->waiters;
    ch->waiters = req;
    if (ch->state == CH_LIVE || ch->fetch_due) {
        fetch(bus, ch);
    }
    else if (ch->fetching) {
        ch->refetch = 1;
    }
    /* SUBSCRIBING: READY brings the sync. */
}

static void on_wake(comet_loop_t *loop, void *baton)
{
    comet_bus_t *bus = baton;
    comet_bus_req_t *req;

    apr_thread_mutex_lock(bus->mu);
    req = bus->inq;
    bus->inq = bus->inq_tail = NULL;
    apr_thread_mutex_unlock(bus->mu);
    while (req) {
        comet_bus_req_t *next = req->next;

        req->next = NULL;
        switch (req->kind) {
        case REQ_PUBLISH:
            run_publish(bus, req);
            break;
        case REQ_SYNC:
            run_sync(bus, req);
            break;
        default:
            run_numsub(bus, req);
            break;
        }
        req = next;
    }
}

/* ---- the sweep ---------------------------------------------------------- */

static void on_tick(comet_loop_t *loop, comet_timer_t *timer, void *baton)
{
    comet_bus_t *bus = baton;
    apr_time_t now = comet_now_mono();
    apr_size_t budget = BUS_SWEEP;

    while (bus->cursor && budget--) {
        bus_chan_t *ch = bus->cursor;
        comet_store_pos_t pos;

        bus->cursor = ch->next;
        if (comet_store_position(bus->cfg.store, bus->cfg.slot, ch->id,
                                 ch->len, &pos) != APR_SUCCESS) {
            chan_remove(bus, ch);
            continue;
        }
        if (pos.slot_subscribers == 0 && !ch->waiters) {
            if (!ch->zero_since) {
                ch->zero_since = now;
                if (ch->reg_count) {
                    count_write(bus, ch, 0);
                }
            }
            else if (now - ch->zero_since >= bus->cfg.linger) {
                chan_remove(bus, ch);
                continue;
            }
        }
        else if (pos.slot_subscribers
                 && (pos.slot_subscribers != ch->reg_count
                     || now - ch->reg_at >= bus->cfg.count_refresh)) {
            ch->zero_since = 0;
            count_write(bus, ch, pos.slot_subscribers);
        }
        if (ch->fetch_due && sub_up(bus) && ch->state != CH_SUBSCRIBING) {
            fetch(bus, ch);
        }
        if (bus->cursor == bus->ring) {
            break;      /* once round per tick at most */
        }
    }
    comet_timer_arm_in(loop, timer, BUS_TICK);
}

/* ---- life --------------------------------------------------------------- */

static void sha1_hex(const char *text, char *out)
{
    unsigned char d[APR_SHA1_DIGESTSIZE];
    apr_sha1_ctx_t ctx;
    int i;

    apr_sha1_init(&ctx);
    apr_sha1_update(&ctx, text, (unsigned int)strlen(text));
    apr_sha1_final(d, &ctx);
    for (i = 0; i < APR_SHA1_DIGESTSIZE; i++) {
        sprintf(out + 2 * i, "%02x", d[i]);
    }
}

apr_status_t comet_bus_create(comet_bus_t **out, comet_loop_t *loop,
                              const comet_bus_config_t *cfg, apr_pool_t *p)
{
    comet_bus_t *bus = apr_pcalloc(p, sizeof(*bus));
    comet_store_config_t sc;
    apr_status_t rv;
    int i;

    if (!cfg->url || !cfg->store || !cfg->prefix || !cfg->member) {
        return APR_EINVAL;
    }
    bus->cfg = *cfg;
    bus->loop = loop;
    bus->pool = p;
    bus->prefix_len = strlen(cfg->prefix);
    comet_store_get_config(cfg->store, &sc);
    bus->buffer_length = sc.buffer_length;
    bus->timeout = sc.message_timeout;
    bus->max_message = sc.max_message_size;
    bus->max_channel_id = sc.max_channel_id;
    if (sc.epoch != COMET_BUS_EPOCH) {
        comet_log(COMET_LOG_ERR, APR_EINVAL, "redis bus: the store's epoch "
                  "is %08x, not the bus's %08x", sc.epoch, COMET_BUS_EPOCH);
        return APR_EINVAL;
    }
    for (i = 0; i < NSCRIPTS; i++) {
        sha1_hex(scripts[i], bus->sha[i]);
    }
    bus->chans = apr_hash_make(p);
    if ((rv = apr_thread_mutex_create(&bus->mu, APR_THREAD_MUTEX_DEFAULT, p))
        != APR_SUCCESS
        || (rv = apr_thread_mutex_create(&bus->done_mu,
                                         APR_THREAD_MUTEX_DEFAULT, p))
           != APR_SUCCESS
        || (rv = apr_thread_cond_create(&bus->done_cv, p)) != APR_SUCCESS) {
        return rv;
    }
    if (cfg->url->kind == COMET_REDIS_CLUSTER) {
        rv = comet_redis_cluster_create(&bus->cl, loop, cfg->url,
                                        &bus->cfg.redis, cluster_event, bus,
                                        p);
    }
    else {
        rv = comet_redis_create(&bus->cmd, loop, cfg->url, NULL,
                                &bus->cfg.redis, p);
        if (rv == APR_SUCCESS) {
            rv = comet_redis_sub_create(&bus->sub, loop, cfg->url, NULL,
                                        &bus->cfg.redis, sub_event, bus, p);
        }
    }
    if (rv != APR_SUCCESS) {
        return rv;
    }
    if (bus->cl) {
        comet_redis_cluster_on_state(bus->cl, cluster_state, bus);
    }
    else {
        comet_redis_on_state(bus->cmd, cmd_state, bus);
    }
    comet_loop_on_wake(loop, on_wake, bus);
    comet_timer_init(&bus->tick, on_tick, bus);
    *out = bus;
    return APR_SUCCESS;
}

apr_status_t comet_bus_start(comet_bus_t *bus)
{
    apr_status_t rv;

    if (bus->cl) {
        rv = comet_redis_cluster_start(bus->cl);
    }
    else if ((rv = comet_redis_start(bus->cmd)) == APR_SUCCESS) {
        rv = comet_redis_sub_start(bus->sub);
    }
    if (rv == APR_SUCCESS) {
        rv = comet_timer_arm_in(bus->loop, &bus->tick, BUS_TICK);
    }
    return rv;
}

void comet_bus_close(comet_bus_t *bus)
{
    comet_bus_req_t *req;

    apr_thread_mutex_lock(bus->mu);
    bus->closed = 1;
    req = bus->inq;
    bus->inq = bus->inq_tail = NULL;
    apr_thread_mutex_unlock(bus->mu);
    while (req) {
        comet_bus_req_t *next = req->next;

        req_finish(bus, req, COMET_BUS_ENOTSENT, "not sent: shutting down");
        req = next;
    }
    comet_timer_cancel(bus->loop, &bus->tick);
    while (bus->ring) {
        bus_chan_t *ch = bus->ring;

        waiters_finish(bus, ch, COMET_BUS_ENOTSENT, "shutting down");
        chan_remove(bus, ch);
    }
    /* Commands in flight fail with COMET_REDIS_ECLOSED through their
     * callbacks (publishes: not stored). */
    if (bus->cl) {
        comet_redis_cluster_close(bus->cl);
    }
    else {
        comet_redis_close(bus->cmd);
        comet_redis_sub_close(bus->sub);
    }
}

void comet_bus_stats(comet_bus_t *bus, comet_bus_stats_t *out)
{
    out->up = __atomic_load_n(&bus->st.up, __ATOMIC_RELAXED);
    out->channels = __atomic_load_n(&bus->st.channels, __ATOMIC_RELAXED);
    out->published = __atomic_load_n(&bus->st.published, __ATOMIC_RELAXED);
    out->publish_failed = __atomic_load_n(&bus->st.publish_failed,
                                          __ATOMIC_RELAXED);
    out->received = __atomic_load_n(&bus->st.received, __ATOMIC_RELAXED);
    out->duplicates = __atomic_load_n(&bus->st.duplicates, __ATOMIC_RELAXED);
    out->fetches = __atomic_load_n(&bus->st.fetches, __ATOMIC_RELAXED);
    out->gaps = __atomic_load_n(&bus->st.gaps, __ATOMIC_RELAXED);
    out->rollbacks = __atomic_load_n(&bus->st.rollbacks, __ATOMIC_RELAXED);
}
