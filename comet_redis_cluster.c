/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <apr_hash.h>
#include <apr_strings.h>

#include "comet_redis_cluster.h"

apr_uint16_t comet_redis_crc16(const char *buf, apr_size_t len)
{
    apr_uint16_t crc = 0;
    apr_size_t i;
    int b;

    for (i = 0; i < len; i++) {
        crc ^= (apr_uint16_t)((unsigned char)buf[i] << 8);
        for (b = 0; b < 8; b++) {
            crc = (crc & 0x8000) ? (apr_uint16_t)((crc << 1) ^ 0x1021)
                                 : (apr_uint16_t)(crc << 1);
        }
    }
    return crc;
}

unsigned comet_redis_slot(const char *key, apr_size_t len)
{
    const char *open = memchr(key, '{', len);

    if (open) {
        apr_size_t rest = len - (apr_size_t)(open - key) - 1;
        const char *close = memchr(open + 1, '}', rest);

        if (close && close > open + 1) {
            return comet_redis_crc16(open + 1, (apr_size_t)(close - open - 1))
                   & (COMET_REDIS_SLOTS - 1);
        }
    }
    return comet_redis_crc16(key, len) & (COMET_REDIS_SLOTS - 1);
}

/* ---- records ------------------------------------------------------------ */

typedef struct cl_node_t cl_node_t;
struct cl_node_t {
    comet_redis_cluster_t *cl;
    cl_node_t             *next;
    char                  *host;
    apr_port_t             port;
    const char            *key;     /* "host:port"                        */
    apr_pool_t            *pool;    /* its connections'; anew on revival   */
    comet_redis_t         *conn;
    comet_redis_sub_t     *sub;
    int                    master;  /* in the current map                 */
    int                    seed;
    int                    closed;  /* connections closed (departed node)  */
};

/* A command kept for a redirection: its RESP bytes follow it. */
typedef struct cl_cmd_t cl_cmd_t;
struct cl_cmd_t {
    cl_cmd_t              *prev;
    cl_cmd_t              *next;
    comet_redis_cluster_t *cl;
    comet_redis_reply_fn  *fn;
    void                  *baton;
    int                    redirects;
    apr_size_t             len;
    char                   resp[1];
};

typedef struct cl_chan_t {
    char       *name;
    apr_size_t  len;
    unsigned    slot;
    cl_node_t  *node;       /* whose subscriber has it, or NULL          */
    int         active;     /* READY on node                             */
    int         lost;       /* LOST told: the next READY is resumed      */
    int         moved;      /* LOST to be told after a map change        */
    int         redirects;  /* MOVED on SSUBSCRIBE since the last READY  */
} cl_chan_t;

struct comet_redis_cluster_t {
    apr_pool_t                   *pool;
    comet_loop_t                 *loop;
    const comet_redis_url_t      *url;
    comet_redis_opts_t            opts;
    cl_node_t                    *nodes;
    apr_size_t                    nnodes;
    apr_hash_t                   *by_key;
    cl_node_t                    *slots[COMET_REDIS_SLOTS];
    comet_timer_t                 timer;
    apr_interval_time_t           interval;
    int                           refreshing;
    int                           refresh_again;
    int                           use_slots;    /* no CLUSTER SHARDS     */
    int                           map_known;
    int                           attempts;     /* unhealthy refreshes   */
    int                           up;
    int                           closed;
    apr_time_t                    log_next;
    cl_cmd_t                     *cmds;
    apr_size_t                    pending;
    comet_buf_t                  *scratch;
    apr_hash_t                   *chans;
    apr_uint32_t                  rng;
    comet_redis_cluster_sub_fn   *sub_fn;
    void                         *sub_baton;
    comet_redis_cluster_state_fn *state_fn;
    void                         *state_baton;
    comet_redis_cluster_stats_t   stats;
};

static void cl_refresh_now(comet_redis_cluster_t *cl);
static void cl_check(comet_redis_cluster_t *cl);
static void cl_sub_event(void *baton, comet_redis_sub_t *sub,
                         const comet_redis_sub_event_t *ev);

/* ---- nodes -------------------------------------------------------------- */

static void cl_node_state(void *baton, comet_redis_t *c, int up,
                          apr_status_t why, const char *text);

/* (Re)open the node's command connection. */
static apr_status_t node_open(cl_node_t *n)
{
    comet_redis_cluster_t *cl = n->cl;
    comet_redis_addr_t addr;
    apr_status_t rv;

    if (n->conn && !n->closed) {
        return APR_SUCCESS;
    }
    if (n->pool) {
        /* Its old connections were closed: nothing of them can call back
         * any more, and nothing else points into the pool. */
        apr_pool_destroy(n->pool);
    }
    n->conn = NULL;
    n->sub = NULL;
    if ((rv = apr_pool_create(&n->pool, cl->pool)) != APR_SUCCESS) {
        n->pool = NULL;
        return rv;
    }
    memset(&addr, 0, sizeof(addr));
    addr.host = n->host;
    addr.port = n->port;
    if ((rv = comet_redis_create(&n->conn, cl->loop, cl->url, &addr,
                                 &cl->opts, n->pool)) != APR_SUCCESS) {
        n->conn = NULL;
        return rv;
    }
    comet_redis_on_state(n->conn, cl_node_state, n);
    n->closed = 0;
    return comet_redis_start(n->conn);
}

static void node_close(cl_node_t *n)
{
    if (n->closed || !n->conn) {
        return;
    }
    n->closed = 1;
    if (n->sub) {
        comet_redis_sub_close(n->sub);
    }
    comet_redis_close(n->conn);
}

static cl_node_t *node_get(comet_redis_cluster_t *cl, const char *host,
                           apr_size_t hlen, apr_int64_t port)
{
    char key[300];
    cl_node_t *n;
    int klen;

    if (hlen == 0 || hlen > 255 || port <= 0 || port > 65535) {
        return NULL;
    }
    klen = apr_snprintf(key, sizeof(key), "%.*s:%d", (int)hlen, host,
                        (int)port);
    if ((n = apr_hash_get(cl->by_key, key, klen)) != NULL) {
        return n;
    }
    if (cl->nnodes >= COMET_REDIS_CLUSTER_MAX_NODES) {
        comet_log(COMET_LOG_ERR, APR_ENOSPC, "redis %s: more than %d nodes; "
                  "%s ignored", cl->url->display,
                  COMET_REDIS_CLUSTER_MAX_NODES, key);
        return NULL;
    }
    n = apr_pcalloc(cl->pool, sizeof(*n));
    n->cl = cl;
    n->host = apr_pstrmemdup(cl->pool, host, hlen);
    n->port = (apr_port_t)port;
    n->key = apr_pstrmemdup(cl->pool, key, (apr_size_t)klen);
    n->next = cl->nodes;
    cl->nodes = n;
    cl->nnodes++;
    apr_hash_set(cl->by_key, n->key, klen, n);
    return n;
}

static cl_node_t *node_sub(cl_node_t *n)
{
    comet_redis_cluster_t *cl = n->cl;
    comet_redis_addr_t addr;

    if (n->sub) {
        return n->sub ? n : NULL;
    }
    if (node_open(n) != APR_SUCCESS) {
        return NULL;
    }
    memset(&addr, 0, sizeof(addr));
    addr.host = n->host;
    addr.port = n->port;
    if (comet_redis_sub_create(&n->sub, cl->loop, cl->url, &addr, &cl->opts,
                               cl_sub_event, n, n->pool) != APR_SUCCESS) {
        n->sub = NULL;
        return NULL;
    }
    comet_redis_sub_start(n->sub);
    return n;
}

/* ---- refreshing the map ------------------------------------------------- */

static apr_interval_time_t cl_backoff(comet_redis_cluster_t *cl)
{
    apr_interval_time_t d = cl->opts.backoff_min, half;
    int i;

    for (i = 0; i < cl->attempts && d < cl->opts.backoff_max; i++) {
        d *= 2;
    }
    if (d > cl->opts.backoff_max) {
        d = cl->opts.backoff_max;
    }
    cl->rng ^= cl->rng << 13;
    cl->rng ^= cl->rng >> 17;
    cl->rng ^= cl->rng << 5;
    half = d / 2;
    return half + (apr_interval_time_t)(cl->rng % (apr_uint32_t)(half + 1));
}

/* The next refresh, no later than delay from now. */
static void cl_refresh_in(comet_redis_cluster_t *cl, apr_interval_time_t delay)
{
    apr_time_t when = comet_now_mono() + delay;

    if (cl->closed) {
        return;
    }
    if (!comet_timer_armed(&cl->timer) || cl->timer.when > when) {
        comet_timer_arm(cl->loop, &cl->timer, when);
    }
}

static void cl_refresh_soon(comet_redis_cluster_t *cl)
{
    cl_refresh_in(cl, cl->opts.backoff_min);
}

/* After a refresh: soon while something is missing, else in a while. */
static void cl_schedule(comet_redis_cluster_t *cl)
{
    if (cl->up) {
        cl->attempts = 0;
        cl_refresh_in(cl, cl->interval);
    }
    else {
        cl_refresh_in(cl, cl_backoff(cl));
        cl->attempts++;
    }
}

static void cl_timer(comet_loop_t *loop, comet_timer_t *t, void *baton)
{
    cl_refresh_now(baton);
}

/* "ip", else "endpoint", of a CLUSTER SHARDS node entry. */
static const comet_resp_reply_t *shard_host(const comet_resp_reply_t *node)
{
    const comet_resp_reply_t *h = comet_resp_reply_get(node, "ip");

    if (!h || h->type != COMET_REPLY_STRING || h->len == 0) {
        h = comet_resp_reply_get(node, "endpoint");
    }
    return h && h->type == COMET_REPLY_STRING && h->len
           && !(h->len == 1 && h->str[0] == '?') ? h : NULL;
}

static int parse_shards(comet_redis_cluster_t *cl,
                        const comet_resp_reply_t *r, cl_node_t *asked,
                        cl_node_t **map)
{
    const comet_resp_reply_t *shard;
    apr_size_t i;

    if (r->type != COMET_REPLY_ARRAY) {
        return 0;
    }
    shard = r + 1;
    for (i = 0; i < r->elements; i++, shard = comet_resp_reply_next(shard)) {
        const comet_resp_reply_t *slots = comet_resp_reply_get(shard, "slots");
        const comet_resp_reply_t *nodes = comet_resp_reply_get(shard, "nodes");
        const comet_resp_reply_t *nd, *host, *port;
        cl_node_t *master = NULL;
        apr_size_t j;

        if (!slots || !nodes || slots->type != COMET_REPLY_ARRAY
            || nodes->type != COMET_REPLY_ARRAY) {
            return 0;
        }
        nd = nodes + 1;
        for (j = 0; j < nodes->elements; j++, nd = comet_resp_reply_next(nd)) {
            if (!comet_resp_reply_is(comet_resp_reply_get(nd, "role"),
                                     "master", 0)) {
                continue;
            }
            host = shard_host(nd);
            port = comet_resp_reply_get(nd, "port");
            if (!port || port->type != COMET_REPLY_INTEGER) {
                continue;
            }
            master = host ? node_get(cl, host->str, host->len, port->integer)
                          : node_get(cl, asked->host, strlen(asked->host),
                                     port->integer);
            if (comet_resp_reply_is(comet_resp_reply_get(nd, "health"),
                                    "online", 0)) {
                break;  /* an online master beats one marked failed */
            }
        }
        if (!master) {
            continue;   /* no master now: its slots stay unserved */
        }
        for (j = 0; j + 1 < slots->elements; j += 2) {
            const comet_resp_reply_t *a = comet_resp_reply_child(slots, j);
            const comet_resp_reply_t *b = comet_resp_reply_next(a);
            apr_int64_t s;

            if (a->type != COMET_REPLY_INTEGER
                || b->type != COMET_REPLY_INTEGER
                || a->integer < 0 || b->integer >= COMET_REDIS_SLOTS
                || a->integer > b->integer) {
                return 0;
            }
            for (s = a->integer; s <= b->integer; s++) {
                map[s] = master;
            }
        }
    }
    return 1;
}

static int parse_slots(comet_redis_cluster_t *cl, const comet_resp_reply_t *r,
                       cl_node_t *asked, cl_node_t **map)
{
    const comet_resp_reply_t *e;
    apr_size_t i;

    if (r->type != COMET_REPLY_ARRAY) {
        return 0;
    }
    e = r + 1;
    for (i = 0; i < r->elements; i++, e = comet_resp_reply_next(e)) {
        const comet_resp_reply_t *a = comet_resp_reply_child(e, 0);
        const comet_resp_reply_t *b = comet_resp_reply_child(e, 1);
        const comet_resp_reply_t *m = comet_resp_reply_child(e, 2);
        const comet_resp_reply_t *host = comet_resp_reply_child(m, 0);
        const comet_resp_reply_t *port = comet_resp_reply_child(m, 1);
        cl_node_t *master;
        apr_int64_t s;

        if (!a || !b || !host || !port || a->type != COMET_REPLY_INTEGER
            || b->type != COMET_REPLY_INTEGER || a->integer < 0
            || b->integer >= COMET_REDIS_SLOTS || a->integer > b->integer
            || port->type != COMET_REPLY_INTEGER
            || host->type != COMET_REPLY_STRING) {
            return 0;
        }
        master = (host->len && !(host->len == 1 && host->str[0] == '?'))
                 ? node_get(cl, host->str, host->len, port->integer)
                 : node_get(cl, asked->host, strlen(asked->host),
                            port->integer);
        for (s = a->integer; master && s <= b->integer; s++) {
            map[s] = master;
        }
    }
    return 1;
}

static void cl_chan_place(comet_redis_cluster_t *cl, cl_chan_t *ch)
{
    cl_node_t *n = cl->slots[ch->slot];

    ch->node = NULL;
    ch->active = 0;
    if (!n || !node_sub(n)) {
        return;     /* placed when a map names a master */
    }
    ch->node = n;
    comet_redis_sub_subscribe(n->sub, ch->name, ch->len, 1);
}

static void forward(comet_redis_cluster_t *cl, int type, int resumed,
                    const char *name, apr_size_t len, const char *error)
{
    comet_redis_sub_event_t ev;

    if (!cl->sub_fn) {
        return;
    }
    memset(&ev, 0, sizeof(ev));
    ev.type = type;
    ev.sharded = 1;
    ev.resumed = resumed;
    ev.channel = name;
    ev.channel_len = len;
    ev.error = error;
    cl->sub_fn(cl->sub_baton, cl, &ev);
}

/* Channels whose slot's master is not the node that has them: moved, and
 * their LOST told after the walk, from copies of their names (a callback
 * may unsubscribe, and so free, any of them). */
typedef struct cl_moved_t {
    char       *name;
    apr_size_t  len;
} cl_moved_t;

static void cl_rebalance(comet_redis_cluster_t *cl)
{
    apr_hash_index_t *hi;
    cl_moved_t *moved = NULL;
    apr_size_t n = 0, cap = 0, i;

    for (hi = apr_hash_first(NULL, cl->chans); hi; hi = apr_hash_next(hi)) {
        cl_chan_t *ch = apr_hash_this_val(hi);
        cl_node_t *want = cl->slots[ch->slot];

        if (want == ch->node && ch->node) {
            continue;
        }
        if (ch->node && ch->node->sub && !ch->node->closed) {
            comet_redis_sub_unsubscribe(ch->node->sub, ch->name, ch->len);
        }
        if (ch->active) {
            if (n == cap) {
                apr_size_t ncap = cap ? cap * 2 : 16;
                cl_moved_t *more = realloc(moved, ncap * sizeof(*moved));

                if (more) {
                    moved = more;
                    cap = ncap;
                }
            }
            if (n < cap && (moved[n].name = malloc(ch->len)) != NULL) {
                memcpy(moved[n].name, ch->name, ch->len);
                moved[n].len = ch->len;
                n++;
                ch->moved = 1;
            }
        }
        cl_chan_place(cl, ch);
    }
    for (i = 0; i < n; i++) {
        cl_chan_t *ch = apr_hash_get(cl->chans, moved[i].name,
                                     (apr_ssize_t)moved[i].len);

        if (ch && ch->moved) {
            ch->moved = 0;
            ch->lost = 1;
            forward(cl, COMET_REDIS_SUB_LOST, 0, ch->name, ch->len,
                    "the channel's hash slot moved to another node");
        }
        free(moved[i].name);
    }
    free(moved);
}

static void cl_apply(comet_redis_cluster_t *cl, cl_node_t **map)
{
    apr_size_t changes = 0, masters = 0;
    cl_node_t *n;
    unsigned s;

    for (n = cl->nodes; n; n = n->next) {
        n->master = 0;
    }
    for (s = 0; s < COMET_REDIS_SLOTS; s++) {
        if (map[s]) {
            map[s]->master = 1;
        }
        if (cl->slots[s] != map[s]) {
            changes++;
            cl->slots[s] = map[s];
        }
    }
    cl->stats.refreshes++;
    if (changes) {
        cl->stats.map_changes++;
        comet_log(COMET_LOG_NOTICE, APR_SUCCESS, "redis %s: slot map changed "
                  "(%lu slots)", cl->url->display, (unsigned long)changes);
    }
    for (n = cl->nodes; n; n = n->next) {
        if (n->master) {
            masters++;
            node_open(n);
        }
    }
    cl->stats.masters = masters;
    cl->map_known = 1;
    cl_rebalance(cl);
    /* Departed nodes: closed once nothing waits on them (seeds stay, for
     * the next refresh). */
    for (n = cl->nodes; n; n = n->next) {
        if (!n->master && !n->seed && !n->closed && n->conn
            && comet_redis_pending(n->conn) == 0
            && (!n->sub || comet_redis_sub_count(n->sub) == 0)) {
            node_close(n);
        }
    }
}

static void cl_map_done(void *baton, apr_status_t st,
                        const comet_resp_reply_t *r, const char *err)
{
    cl_node_t *asked = baton;
    comet_redis_cluster_t *cl = asked->cl;
    cl_node_t **map;
    int ok;

    cl->refreshing = 0;
    if (cl->closed) {
        return;
    }
    if (st != APR_SUCCESS) {
        cl_schedule(cl);
        return;
    }
    if (r->type == COMET_REPLY_ERROR) {
        if (!cl->use_slots && strcasestr(r->str, "unknown subcommand")) {
            /* Before Redis 7. */
            cl->use_slots = 1;
            cl_refresh_now(cl);
            return;
        }
        if (comet_now_mono() >= cl->log_next) {
            comet_log(COMET_LOG_ERR, APR_SUCCESS, "redis %s: %s refused the "
                      "slot map: %s", cl->url->display, asked->key, r->str);
            cl->log_next = comet_now_mono() + apr_time_from_sec(30);
        }
        cl_schedule(cl);
        return;
    }
    if (!(map = calloc(COMET_REDIS_SLOTS, sizeof(*map)))) {
        cl_schedule(cl);
        return;
    }
    ok = cl->use_slots ? parse_slots(cl, r, asked, map)
                       : parse_shards(cl, r, asked, map);
    if (ok) {
        cl_apply(cl, map);
    }
    else if (comet_now_mono() >= cl->log_next) {
        comet_log(COMET_LOG_ERR, COMET_EPROTO, "redis %s: cannot read the "
                  "slot map from %s", cl->url->display, asked->key);
        cl->log_next = comet_now_mono() + apr_time_from_sec(30);
    }
    free(map);
    cl_check(cl);
    if (cl->closed) {
        return;
    }
    if (cl->refresh_again) {
        cl->refresh_again = 0;
        cl_refresh_now(cl);
        return;
    }
    cl_schedule(cl);
}

static void cl_refresh_now(comet_redis_cluster_t *cl)
{
    static const char *const shards[] = { "CLUSTER", "SHARDS" };
    static const char *const slots[] = { "CLUSTER", "SLOTS" };
    cl_node_t *n, *pick = NULL;

    if (cl->closed) {
        return;
    }
    if (cl->refreshing) {
        cl->refresh_again = 1;
        return;
    }
    comet_timer_cancel(cl->loop, &cl->timer);
    /* Any node that is up will do; a master first (a node just back from
     * a failure may still hold an old view for a moment). */
    for (n = cl->nodes; n; n = n->next) {
        if (n->conn && !n->closed && comet_redis_is_up(n->conn)) {
            pick = n;
            if (n->master) {
                break;
            }
        }
    }
    if (!pick) {
        /* Every connection is (re)connecting: the seeds are kept open, so
         * one will come up and ask (cl_node_state); meanwhile retry. */
        for (n = cl->nodes; n; n = n->next) {
            if (n->seed) {
                node_open(n);
            }
        }
        cl_schedule(cl);
        return;
    }
    if (comet_redis_command(pick->conn, 2, cl->use_slots ? slots : shards,
                            NULL, cl_map_done, pick) == APR_SUCCESS) {
        cl->refreshing = 1;
    }
    else {
        cl_schedule(cl);
    }
}

static void cl_check(comet_redis_cluster_t *cl)
{
    const char *why = NULL;
    char text[300];
    unsigned s;
    int up;

    for (s = 0; s < COMET_REDIS_SLOTS && !why; s++) {
        cl_node_t *n = cl->slots[s];

        if (!n) {
            apr_snprintf(text, sizeof(text), "hash slot %u has no master", s);
            why = text;
        }
        else if (n->closed || !comet_redis_is_up(n->conn)) {
            apr_snprintf(text, sizeof(text), "master %s of hash slot %u is "
                         "down", n->key, s);
            why = text;
        }
    }
    up = why == NULL;
    if (up == cl->up) {
        return;
    }
    cl->up = up;
    if (up) {
        comet_log(COMET_LOG_NOTICE, APR_SUCCESS, "redis %s: every hash slot "
                  "served (%lu masters)", cl->url->display,
                  (unsigned long)cl->stats.masters);
    }
    else {
        comet_log(COMET_LOG_ERR, APR_SUCCESS, "redis %s: %s",
                  cl->url->display, why);
    }
    if (cl->state_fn) {
        cl->state_fn(cl->state_baton, cl, up, up ? "every hash slot served"
                                                  : why);
    }
}

static void cl_node_state(void *baton, comet_redis_t *c, int up,
                          apr_status_t why, const char *text)
{
    cl_node_t *n = baton;
    comet_redis_cluster_t *cl = n->cl;

    if (cl->closed) {
        return;
    }
    if (up && !cl->map_known) {
        cl_refresh_now(cl);
    }
    else if (!up && n->master) {
        /* Failed, or failing over: ask the others who serves its slots. */
        cl->attempts = 0;
        cl_refresh_soon(cl);
    }
    cl_check(cl);
}

/* ---- commands ----------------------------------------------------------- */

/* "MOVED 3999 127.0.0.1:6381" or "ASK ...": 1 with the parts. */
static int parse_redirect(const char *e, int *ask, unsigned *slot,
                          const char **host, apr_size_t *hlen,
                          apr_int64_t *port)
{
    const char *p, *colon;
    char *end;
    long v;

    if (strncmp(e, "MOVED ", 6) == 0) {
        *ask = 0;
        p = e + 6;
    }
    else if (strncmp(e, "ASK ", 4) == 0) {
        *ask = 1;
        p = e + 4;
    }
    else {
        return 0;
    }
    v = strtol(p, &end, 10);
    if (end == p || *end != ' ' || v < 0 || v >= COMET_REDIS_SLOTS) {
        return 0;
    }
    *slot = (unsigned)v;
    p = end + 1;
    colon = strrchr(p, ':');
    if (!colon) {
        return 0;
    }
    v = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || *end != '\0') {
        return 0;
    }
    *host = p;
    *hlen = (apr_size_t)(colon - p);
    *port = v;
    return 1;
}

static void cmd_unlink(comet_redis_cluster_t *cl, cl_cmd_t *cmd)
{
    if (cmd->prev) {
        cmd->prev->next = cmd->next;
    }
    else {
        cl->cmds = cmd->next;
    }
    if (cmd->next) {
        cmd->next->prev = cmd->prev;
    }
    cl->pending--;
}

static void cl_cmd_done(void *baton, apr_status_t st,
                        const comet_resp_reply_t *r, const char *err)
{
    cl_cmd_t *cmd = baton;
    comet_redis_cluster_t *cl = cmd->cl;
    comet_redis_reply_fn *fn = cmd->fn;
    void *fn_baton = cmd->baton;
    char text[400];

    if (st == APR_SUCCESS && r->type == COMET_REPLY_ERROR && !cl->closed) {
        const char *host;
        apr_size_t hlen;
        apr_int64_t port;
        unsigned slot;
        int ask;

        if (cmd->redirects < COMET_REDIS_CLUSTER_MAX_REDIRECTS
            && parse_redirect(r->str, &ask, &slot, &host, &hlen, &port)) {
            cl_node_t *n = node_get(cl, host, hlen, port);

            if (n && node_open(n) == APR_SUCCESS) {
                apr_status_t rv = APR_SUCCESS;

                cmd->redirects++;
                if (ask) {
                    cl->stats.asked++;
                    rv = comet_redis_commandv(n->conn, NULL, NULL, "ASKING",
                                              NULL);
                }
                else {
                    cl->stats.moved++;
                    cl->slots[slot] = n;
                    n->master = 1;
                    cl_refresh_soon(cl);
                }
                if (rv == APR_SUCCESS) {
                    rv = comet_redis_command_resp(n->conn, cmd->resp,
                                                  cmd->len, cl_cmd_done, cmd);
                }
                if (rv == APR_SUCCESS) {
                    return;
                }
                /* Not sent: it did not run. */
                apr_snprintf(text, sizeof(text), "redirected to %s, which "
                             "cannot take it now", n->key);
                cmd_unlink(cl, cmd);
                free(cmd);
                if (fn) {
                    fn(fn_baton, rv == APR_ENOSPC ? APR_ENOSPC
                                                  : COMET_REDIS_EDOWN,
                       NULL, text);
                }
                return;
            }
        }
        else if (strncmp(r->str, "CLUSTERDOWN", 11) == 0
                 || strncmp(r->str, "TRYAGAIN", 8) == 0) {
            cl_refresh_soon(cl);
        }
    }
    cmd_unlink(cl, cmd);
    free(cmd);
    if (fn) {
        fn(fn_baton, st, r, err);
    }
}

apr_status_t comet_redis_cluster_command(comet_redis_cluster_t *cl,
                                         const char *key, apr_size_t keylen,
                                         int argc, const char *const *argv,
                                         const apr_size_t *argvlen,
                                         comet_redis_reply_fn *fn,
                                         void *baton)
{
    cl_node_t *n;
    cl_cmd_t *cmd;
    apr_status_t rv;

    if (cl->closed) {
        return COMET_REDIS_ECLOSED;
    }
    n = cl->slots[comet_redis_slot(key, keylen)];
    if (!n || n->closed) {
        return COMET_REDIS_EDOWN;
    }
    if (cl->pending >= cl->opts.max_pending) {
        return APR_ENOSPC;
    }
    cl->scratch->len = 0;
    if ((rv = comet_redis_format(cl->scratch, argc, argv, argvlen))
        != APR_SUCCESS) {
        return rv;
    }
    if (!(cmd = malloc(sizeof(*cmd) + cl->scratch->len))) {
        return APR_ENOMEM;
    }
    memcpy(cmd->resp, cl->scratch->data, cl->scratch->len);
    cmd->len = cl->scratch->len;
    cmd->cl = cl;
    cmd->fn = fn;
    cmd->baton = baton;
    cmd->redirects = 0;
    rv = comet_redis_command_resp(n->conn, cmd->resp, cmd->len, cl_cmd_done,
                                  cmd);
    if (rv != APR_SUCCESS) {
        free(cmd);
        return rv;
    }
    cmd->prev = NULL;
    cmd->next = cl->cmds;
    if (cl->cmds) {
        cl->cmds->prev = cmd;
    }
    cl->cmds = cmd;
    cl->pending++;
    return APR_SUCCESS;
}

/* ---- sharded pub/sub ---------------------------------------------------- */

static void chan_free(comet_redis_cluster_t *cl, cl_chan_t *ch)
{
    apr_hash_set(cl->chans, ch->name, (apr_ssize_t)ch->len, NULL);
    free(ch);
}

static void cl_sub_event(void *baton, comet_redis_sub_t *sub,
                         const comet_redis_sub_event_t *ev)
{
    cl_node_t *n = baton;
    comet_redis_cluster_t *cl = n->cl;
    cl_chan_t *ch = apr_hash_get(cl->chans, ev->channel,
                                 (apr_ssize_t)ev->channel_len);
    int resumed;

    if (cl->closed || !ch || ch->node != n) {
        return;     /* a node the channel has left */
    }
    switch (ev->type) {
    case COMET_REDIS_SUB_MESSAGE:
        if (cl->sub_fn) {
            cl->sub_fn(cl->sub_baton, cl, ev);
        }
        break;

    case COMET_REDIS_SUB_READY:
        resumed = ev->resumed || ch->lost;
        ch->active = 1;
        ch->lost = 0;
        ch->redirects = 0;
        forward(cl, COMET_REDIS_SUB_READY, resumed, ev->channel,
                ev->channel_len, NULL);
        break;

    case COMET_REDIS_SUB_LOST:
        /* Its node failed, or ended the subscription (its slot moved, or
         * it is a replica now): taken from the node's set, and placed
         * again by the next map, on whichever master serves the slot
         * then (perhaps the same one, back up). */
        comet_redis_sub_unsubscribe(n->sub, ch->name, ch->len);
        ch->node = NULL;
        cl_refresh_soon(cl);
        if (ch->active) {
            ch->active = 0;
            ch->lost = 1;
            forward(cl, COMET_REDIS_SUB_LOST, 0, ev->channel, ev->channel_len,
                    ev->error);
        }
        break;

    case COMET_REDIS_SUB_FAILED:
        {
            const char *host;
            apr_size_t hlen;
            apr_int64_t port;
            unsigned slot;
            int ask;

            /* No longer in n's set. */
            ch->node = NULL;
            ch->active = 0;
            if (ch->redirects < COMET_REDIS_CLUSTER_MAX_REDIRECTS
                && parse_redirect(ev->error, &ask, &slot, &host, &hlen,
                                  &port)) {
                ch->redirects++;
                if (!ask) {
                    cl_node_t *to = node_get(cl, host, hlen, port);

                    if (to) {
                        cl->slots[slot] = to;
                        to->master = 1;
                        node_open(to);
                    }
                }
                cl_refresh_soon(cl);
                /* MOVED: to the new owner now; ASK (a slot migrating):
                 * placed by the next map. */
                if (!ask) {
                    cl_chan_place(cl, ch);
                }
                break;
            }
            {
                char name[512];
                apr_size_t len = ch->len < sizeof(name) ? ch->len
                                                        : sizeof(name);

                memcpy(name, ch->name, len);
                chan_free(cl, ch);
                forward(cl, COMET_REDIS_SUB_FAILED, 0, name, len, ev->error);
            }
        }
        break;
    }
}

apr_status_t comet_redis_cluster_subscribe(comet_redis_cluster_t *cl,
                                           const char *channel,
                                           apr_size_t len)
{
    cl_chan_t *ch;

    if (cl->closed) {
        return COMET_REDIS_ECLOSED;
    }
    if (len == 0 || len > 512) {
        return APR_EINVAL;
    }
    if (apr_hash_get(cl->chans, channel, (apr_ssize_t)len)) {
        return APR_SUCCESS;
    }
    if (apr_hash_count(cl->chans) >= cl->opts.max_channels) {
        return APR_ENOSPC;
    }
    if (!(ch = calloc(1, sizeof(*ch) + len + 1))) {
        return APR_ENOMEM;
    }
    ch->name = (char *)(ch + 1);
    memcpy(ch->name, channel, len);
    ch->len = len;
    ch->slot = comet_redis_slot(channel, len);
    apr_hash_set(cl->chans, ch->name, (apr_ssize_t)len, ch);
    cl_chan_place(cl, ch);
    return APR_SUCCESS;
}

apr_status_t comet_redis_cluster_unsubscribe(comet_redis_cluster_t *cl,
                                             const char *channel,
                                             apr_size_t len)
{
    cl_chan_t *ch = apr_hash_get(cl->chans, channel, (apr_ssize_t)len);

    if (!ch) {
        return APR_NOTFOUND;
    }
    if (ch->node && ch->node->sub && !ch->node->closed) {
        comet_redis_sub_unsubscribe(ch->node->sub, ch->name, ch->len);
    }
    chan_free(cl, ch);
    return APR_SUCCESS;
}

/* ---- public ------------------------------------------------------------- */

static apr_status_t cl_cleanup(void *data)
{
    comet_redis_cluster_t *cl = data;
    apr_hash_index_t *hi;

    /* The nodes' pools (subpools) and connections are gone already: free
     * what was malloc()ed, call nobody. */
    cl->closed = 1;
    while (cl->cmds) {
        cl_cmd_t *cmd = cl->cmds;

        cl->cmds = cmd->next;
        free(cmd);
    }
    /* The hash compares keys while it deletes, and the keys live in the
     * records: empty it first, free after (chained through node). */
    {
        cl_chan_t *dead = NULL;

        for (hi = apr_hash_first(NULL, cl->chans); hi;
             hi = apr_hash_next(hi)) {
            cl_chan_t *ch = apr_hash_this_val(hi);

            ch->node = (cl_node_t *)dead;
            dead = ch;
        }
        apr_hash_clear(cl->chans);
        while (dead) {
            cl_chan_t *next = (cl_chan_t *)dead->node;

            free(dead);
            dead = next;
        }
    }
    return APR_SUCCESS;
}

apr_status_t comet_redis_cluster_create(comet_redis_cluster_t **clp,
                                        comet_loop_t *loop,
                                        const comet_redis_url_t *url,
                                        const comet_redis_opts_t *opts,
                                        comet_redis_cluster_sub_fn *sub_fn,
                                        void *sub_baton, apr_pool_t *p)
{
    comet_redis_cluster_t *cl;
    apr_status_t rv;
    apr_size_t i;

    if (!url || url->kind != COMET_REDIS_CLUSTER || url->naddrs == 0) {
        return APR_EINVAL;
    }
    cl = apr_pcalloc(p, sizeof(*cl));
    cl->pool = p;
    cl->loop = loop;
    cl->url = url;
    if (opts) {
        cl->opts = *opts;
    }
    else {
        comet_redis_opts_default(&cl->opts);
    }
    cl->interval = apr_time_from_sec(30);
    cl->by_key = apr_hash_make(p);
    cl->chans = apr_hash_make(p);
    cl->sub_fn = sub_fn;
    cl->sub_baton = sub_baton;
    cl->rng = (apr_uint32_t)((apr_uint64_t)comet_now_mono()
                             ^ ((apr_uint64_t)getpid() << 16)) | 1;
    comet_timer_init(&cl->timer, cl_timer, cl);
    if ((rv = comet_buf_create(&cl->scratch, p, 0, cl->opts.max_out))
        != APR_SUCCESS) {
        return rv;
    }
    for (i = 0; i < url->naddrs; i++) {
        cl_node_t *n = node_get(cl, url->addrs[i].host,
                                strlen(url->addrs[i].host),
                                url->addrs[i].port);

        if (n) {
            n->seed = 1;
        }
    }
    apr_pool_cleanup_register(p, cl, cl_cleanup, apr_pool_cleanup_null);
    *clp = cl;
    return APR_SUCCESS;
}

void comet_redis_cluster_on_state(comet_redis_cluster_t *cl,
                                  comet_redis_cluster_state_fn *fn,
                                  void *baton)
{
    cl->state_fn = fn;
    cl->state_baton = baton;
}

void comet_redis_cluster_refresh_interval(comet_redis_cluster_t *cl,
                                          apr_interval_time_t interval)
{
    cl->interval = interval > 0 ? interval : apr_time_from_sec(30);
}

apr_status_t comet_redis_cluster_start(comet_redis_cluster_t *cl)
{
    cl_node_t *n;
    apr_status_t rv;

    for (n = cl->nodes; n; n = n->next) {
        if (n->seed && (rv = node_open(n)) != APR_SUCCESS) {
            return rv;
        }
    }
    return APR_SUCCESS;
}

void comet_redis_cluster_refresh(comet_redis_cluster_t *cl)
{
    cl_refresh_now(cl);
}

const char *comet_redis_cluster_master_of(const comet_redis_cluster_t *cl,
                                          unsigned slot)
{
    return slot < COMET_REDIS_SLOTS && cl->slots[slot]
           ? cl->slots[slot]->key : NULL;
}

int comet_redis_cluster_is_up(const comet_redis_cluster_t *cl)
{
    return cl->up;
}

void comet_redis_cluster_stats(const comet_redis_cluster_t *cl,
                               comet_redis_cluster_stats_t *stats)
{
    *stats = cl->stats;
    stats->nodes = cl->nnodes;
}

void comet_redis_cluster_close(comet_redis_cluster_t *cl)
{
    cl_node_t *n;

    if (cl->closed) {
        return;
    }
    comet_timer_cancel(cl->loop, &cl->timer);
    /* Pending commands fail through cl_cmd_done (ECLOSED), which frees
     * them; then nothing may call back. */
    for (n = cl->nodes; n; n = n->next) {
        node_close(n);
    }
    cl->closed = 1;
    cl_cleanup(cl);
}
