/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_pubsub.c -- subscribed connections of the publish socket: Redis'
 * pub/sub (SUBSCRIBE, UNSUBSCRIBE, PSUBSCRIBE, PUNSUBSCRIBE) and
 * COMET.SUBSCRIBE with message ids, fed by the store.
 *
 * Where messages come from.  The server drains a process slot of the
 * store of its own, with its own wakeup fd, on its loop, as a hub drains
 * its slot (the module gives each child's publish thread a second slot
 * beside its hub's).  A connection's subscription to a channel is one
 * store subscription of that slot: publishes count it among their
 * receivers, PUBSUB NUMSUB and CHANNELS see it, and the store queues the
 * channel for the slot when something is published there, from any
 * process.  Patterns: while the server has one, its slot watches every
 * channel (comet_store_proc_watch), and each channel a drain brings is
 * matched against the patterns.
 *
 * Records (malloc()ed: subscriptions come and go during a connection's
 * life, which a pool would not give back):
 *   channel       a channel the server listens to, by name or because a
 *                 pattern matched it: id, store ref, the position up to
 *                 which its messages were handed out, its subscriptions
 *                 (each holding one store subscription);
 *   pattern       a distinct pattern and its subscriptions;
 *   subscription  one connection's to one channel or pattern, on the
 *                 target's list and on the connection's.
 *
 * Delivery.  For each channel a drain brings, the messages after the
 * channel's position are read in bounded batches, formatted once per shape
 * (message, comet.message, pmessage of each pattern; RESP2 or RESP3), and
 * each subscription gets the part it has not had (one made in the middle
 * of a batch gets the tail).  A connection whose unsent output would pass
 * max_pending is dropped (closed after the drain, logged and counted);
 * the others are flushed once, after the drain.
 *
 * Resuming.  COMET.SUBSCRIBE ... FROM <id> makes a *lagging*
 * subscription: the shared batches skip it and it reads the store on its
 * own, a slice at a time and only while its connection's unsent output is
 * under max_output, until it has caught up with the channel's position;
 * then it joins the shared batches.  So a long backlog costs a bounded
 * buffer, never max_pending (the subscriber is not dropped for it).
 *
 * Threads: the server's loop thread (the publish thread), as all of
 * comet_pubsrv.
 */

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <apr_hash.h>
#include <apr_lib.h>
#include <apr_strings.h>

#include "comet_pubsrv_private.h"

/* Refs taken from the slot's queue per call. */
#define PUBSUB_DRAIN_BATCH     256
/* One batch of a channel: at most this many messages and (beyond the
 * first) payload bytes. */
#define PUBSUB_READ_MSGS       1024
#define PUBSUB_READ_BYTES      (256 * 1024)
/* One slice of a lagging subscription's own reading. */
#define PUBSUB_CATCHUP_MSGS    256
#define PUBSUB_CATCHUP_BYTES   (64 * 1024)
#define PUBSUB_DEFAULT_PENDING (1024 * 1024)
/* A shape's buffer holding more than this after a drain is given back. */
#define PUBSUB_SHAPE_KEEP      (256 * 1024)
/* At most one warning per interval about dropped subscribers. */
#define PUBSUB_LOG_INTERVAL    apr_time_from_sec(10)

enum {
    SHAPE_MSG2, SHAPE_MSG3, SHAPE_IDS2, SHAPE_IDS3, SHAPE_PMSG2, SHAPE_PMSG3
};

/* Kinds of subscription, the first byte of its key in c->sub_names. */
#define KIND_CHAN 'c'
#define KIND_PAT  'p'

struct comet_pubsub_chan_t {
    comet_pubsub_chan_t *prev, *next;     /* srv->chan_list             */
    comet_chanref_t      ref;
    apr_uint32_t         index;           /* by_index key, ref.index    */
    apr_uint64_t         seq;             /* handed out up to here      */
    comet_pubsub_sub_t  *subs;            /* by name                    */
    apr_uint32_t         nsubs;           /* and its store subscriptions */
    int                  stored;          /* nsubs are held in the store */
    int                  rebound;         /* on a record since the last
                                             read: its first read's
                                             "missed" only says that the
                                             record is new              */
    apr_size_t           len;
    char                 id[1];
};

struct comet_pubsub_pat_t {
    comet_pubsub_pat_t  *prev, *next;     /* srv->pat_list              */
    comet_pubsub_sub_t  *subs;
    apr_uint32_t         nsubs;
    apr_uint64_t         start;           /* the store's seq when made  */
    apr_size_t           len;
    char                 pat[1];
};

struct comet_pubsub_sub_t {
    comet_pubconn_t     *conn;
    comet_pubsub_chan_t *chan;            /* one of the two             */
    comet_pubsub_pat_t  *pat;
    comet_pubsub_sub_t  *tprev, *tnext;   /* the target's list          */
    comet_pubsub_sub_t  *cprev, *cnext;   /* the connection's list      */
    apr_uint64_t         pos;             /* had (or not wanted) up to  */
    comet_msgid_t        from;            /* a lagging one's first read */
    int                  ids;             /* comet.message pushes       */
    int                  lagging;
    int                  first;           /* next read is after from    */
    apr_size_t           klen;
    char                 key[1];          /* kind, then the name        */
};

static void chan_deliver(comet_pubsrv_t *srv, comet_pubsub_chan_t *chan);
static int chan_fed(comet_pubsrv_t *srv, const comet_pubsub_chan_t *chan);
static void chan_forget(comet_pubsrv_t *srv, comet_pubsub_chan_t *chan);
static void pushed_flush(comet_pubsrv_t *srv);

/* ---- small things --------------------------------------------------------- */

static void put(comet_pubconn_t *c, apr_status_t rv)
{
    if (rv != APR_SUCCESS) {
        c->broken = 1;
    }
}

static void stat_set(apr_uint32_t *field, apr_uint32_t v)
{
    __atomic_store_n(field, v, __ATOMIC_RELAXED);
}

static comet_msgid_t msgid(comet_pubsrv_t *srv, apr_uint64_t seq)
{
    comet_msgid_t id;

    id.epoch = comet_store_epoch(srv->cfg.store);
    id.seq = seq;
    return id;
}

static int available(comet_pubconn_t *c)
{
    if (c->srv->cfg.wake_fd > 0) {
        return 1;
    }
    comet_pubcmd_reply_err(c, "ERR subscribing is not available in this "
                           "process (no process slot of the store left for "
                           "it): subscribe over HTTP");
    return 0;
}

/* The connection needs a flush for pushes it got: after the drain, or
 * (outside one) on the next turn of the loop. */
static void mark_pushed(comet_pubconn_t *c)
{
    comet_pubsrv_t *srv = c->srv;

    if (!c->pushed) {
        c->pushed = 1;
        c->push_prev = NULL;
        c->push_next = srv->pushed;
        if (srv->pushed) {
            srv->pushed->push_prev = c;
        }
        srv->pushed = c;
    }
    if (!srv->draining && !comet_timer_armed(&srv->push_timer)
        && comet_timer_arm_in(srv->loop, &srv->push_timer, 0)
           != APR_SUCCESS) {
        /* Cannot happen (the loop has room for this timer); the pushes
         * then go with the next drain or the connection's next event. */
    }
}

static void unmark_pushed(comet_pubconn_t *c)
{
    comet_pubsrv_t *srv = c->srv;

    if (!c->pushed) {
        return;
    }
    if (c->push_prev) {
        c->push_prev->push_next = c->push_next;
    }
    else {
        srv->pushed = c->push_next;
    }
    if (c->push_next) {
        c->push_next->push_prev = c->push_prev;
    }
    c->push_prev = c->push_next = NULL;
    c->pushed = 0;
}

static void ratelog_slow(comet_pubsrv_t *srv, comet_pubconn_t *c,
                         apr_size_t pending)
{
    apr_time_t now = comet_now_mono();
    char more[80] = "";

    if (now < srv->log_slow.next) {
        srv->log_slow.skipped++;
        return;
    }
    if (srv->log_slow.skipped) {
        apr_snprintf(more, sizeof(more), " (and %" APR_UINT64_T_FMT " more "
                     "in the last %d s)", srv->log_slow.skipped,
                     (int)apr_time_sec(PUBSUB_LOG_INTERVAL));
    }
    comet_log(COMET_LOG_WARNING, 0, "publish socket: subscriber client %"
              APR_UINT64_T_FMT " dropped: %" APR_SIZE_T_FMT " bytes of "
              "messages unsent, more than %" APR_SIZE_T_FMT
              " (CometMaxPendingBytes)%s", c->id, pending,
              srv->cfg.max_pending, more);
    srv->log_slow.skipped = 0;
    srv->log_slow.next = now + PUBSUB_LOG_INTERVAL;
}

/* A subscriber that does not take its messages: closed after the drain,
 * as Redis closes a pub/sub client past its output buffer limit. */
static void drop(comet_pubconn_t *c, apr_size_t pending)
{
    comet_pubsrv_t *srv = c->srv;

    if (c->dropped) {
        return;
    }
    c->dropped = 1;
    COMET_PUBSRV_STAT_ADD(srv, dropped_slow, 1);
    COMET_PUBSRV_STAT_ADD(srv, dropped, 1);
    ratelog_slow(srv, c, pending);
    mark_pushed(c);
}

/* Append pushes [a, b) of a shape to the connection, within max_pending
 * (a connection with nothing unsent always takes one batch). */
static void push_bytes(comet_pubconn_t *c, const char *data, apr_size_t len,
                       apr_size_t msgs)
{
    comet_pubsrv_t *srv = c->srv;

    /* After QUIT (or an error that ends it) nothing more is sent. */
    if (c->dropped || c->closing || !len) {
        return;
    }
    if (c->out->len && c->out->len + len > srv->cfg.max_pending) {
        drop(c, c->out->len + len);
        return;
    }
    if (comet_buf_append(c->out, data, len) != APR_SUCCESS) {
        drop(c, c->out->len + len);
        return;
    }
    COMET_PUBSRV_STAT_ADD(srv, pushes, msgs);
    mark_pushed(c);
}

/* ---- push shapes ----------------------------------------------------------- */

/* One message in one shape, appended to out. */
static apr_status_t shape_write(comet_buf_t *out, int shape,
                                comet_pubsrv_t *srv, const char *chan,
                                apr_size_t chan_len, const char *pat,
                                apr_size_t pat_len, const comet_msg_t *m)
{
    int proto = shape % 2 ? COMET_RESP3 : COMET_RESP2;
    apr_size_t start = out->len;
    char id[COMET_MSGID_MAXLEN];
    apr_size_t idlen;
    apr_status_t rv;

    switch (shape) {
    case SHAPE_MSG2:
    case SHAPE_MSG3:
        if ((rv = comet_resp_push(out, proto, 3)) == APR_SUCCESS
            && (rv = comet_resp_bulk(out, "message", 7)) == APR_SUCCESS
            && (rv = comet_resp_bulk(out, chan, chan_len)) == APR_SUCCESS) {
            rv = comet_resp_bulk(out, m->data, m->data_len);
        }
        break;
    case SHAPE_IDS2:
    case SHAPE_IDS3:
        /* Type, channel and data where Redis has them, so that a client
         * library's generic pub/sub handling finds channel and data; then
         * what Redis has no place for. */
        idlen = comet_msgid_format(id, &m->id);
        if ((rv = comet_resp_push(out, proto, 6)) == APR_SUCCESS
            && (rv = comet_resp_bulk(out, "comet.message", 13))
               == APR_SUCCESS
            && (rv = comet_resp_bulk(out, chan, chan_len)) == APR_SUCCESS
            && (rv = comet_resp_bulk(out, m->data, m->data_len))
               == APR_SUCCESS
            && (rv = comet_resp_bulk(out, id, idlen)) == APR_SUCCESS
            && (rv = comet_resp_bulk(out, m->event ? m->event : "",
                                     m->event_len)) == APR_SUCCESS) {
            /* The sender's identity as the server established it (a
             * WebSocket client's or an HTTP publisher's); "" when none. */
            rv = comet_resp_bulk(out, m->from ? m->from : "", m->from_len);
        }
        break;
    default:
        if ((rv = comet_resp_push(out, proto, 4)) == APR_SUCCESS
            && (rv = comet_resp_bulk(out, "pmessage", 8)) == APR_SUCCESS
            && (rv = comet_resp_bulk(out, pat, pat_len)) == APR_SUCCESS
            && (rv = comet_resp_bulk(out, chan, chan_len)) == APR_SUCCESS) {
            rv = comet_resp_bulk(out, m->data, m->data_len);
        }
        break;
    }
    if (rv != APR_SUCCESS) {
        comet_buf_truncate(out, start);
    }
    (void)srv;
    return rv;
}

/* Format the batch once in a shape (pat for pmessage). */
static comet_pubsub_shape_t *shape_get(comet_pubsrv_t *srv, int k,
                                       const comet_pubsub_chan_t *chan,
                                       const comet_pubsub_pat_t *pat,
                                       const apr_array_header_t *msgs)
{
    comet_pubsub_shape_t *sh = &srv->shape[k];
    int i;

    if (sh->done) {
        return sh;
    }
    comet_buf_truncate(sh->buf, 0);
    sh->off = apr_palloc(srv->batch, sizeof(apr_size_t)
                                     * ((apr_size_t)msgs->nelts + 1));
    for (i = 0; i < msgs->nelts; i++) {
        sh->off[i] = sh->buf->len;
        if (shape_write(sh->buf, k, srv, chan->id, chan->len,
                        pat ? pat->pat : NULL, pat ? pat->len : 0,
                        &APR_ARRAY_IDX(msgs, i, comet_msg_t))
            != APR_SUCCESS) {
            /* The buffer is sized for a whole batch: cannot happen.  The
             * batch is cut there rather than sent torn. */
            comet_log(COMET_LOG_ERR, APR_ENOSPC, "publish socket: channel=%s:"
                      " a batch of %d messages does not fit its buffer",
                      chan->id, msgs->nelts);
            break;
        }
    }
    for (; i <= msgs->nelts; i++) {
        sh->off[i] = sh->buf->len;
    }
    sh->done = 1;
    return sh;
}

static void shapes_reset(comet_pubsrv_t *srv)
{
    int k;

    for (k = 0; k < COMET_PUBSUB_SHAPES; k++) {
        srv->shape[k].done = 0;
    }
}

/* Index of the first message of the batch newer than pos. */
static int first_after(const apr_array_header_t *msgs, apr_uint64_t pos)
{
    int lo = 0, hi = msgs->nelts;

    while (lo < hi) {
        int mid = (lo + hi) / 2;

        if (APR_ARRAY_IDX(msgs, mid, comet_msg_t).id.seq <= pos) {
            lo = mid + 1;
        }
        else {
            hi = mid;
        }
    }
    return lo;
}

/* A push of the server's own about a channel: comet.missed (the messages
 * after id are gone) or comet.deleted (id: the channel's last). */
static void push_signal(comet_pubconn_t *c, const char *type,
                        const comet_pubsub_chan_t *chan,
                        const comet_msgid_t *id)
{
    char idbuf[COMET_MSGID_MAXLEN], tmp[1024];
    apr_size_t idlen = comet_msgid_format(idbuf, id);
    comet_buf_t *b, wrap;

    /* Built aside first, so that max_pending is checked on the whole. */
    comet_buf_wrap(&wrap, tmp, sizeof(tmp));
    b = &wrap;
    if (chan->len + 64 > sizeof(tmp)
        && comet_buf_create(&b, c->srv->scratch, 0, chan->len + 128)
           != APR_SUCCESS) {
        c->broken = 1;
        return;
    }
    if (comet_resp_push(b, c->proto, 3) == APR_SUCCESS
        && comet_resp_bulk(b, type, strlen(type)) == APR_SUCCESS
        && comet_resp_bulk(b, chan->id, chan->len) == APR_SUCCESS
        && comet_resp_bulk(b, idbuf, idlen) == APR_SUCCESS) {
        push_bytes(c, b->data, b->len, 0);
    }
    if (b != &wrap) {
        apr_pool_clear(c->srv->scratch);
    }
}

/* ---- records -------------------------------------------------------------- */

/* Map the record index of ref to chan.  A channel known through a
 * pattern only whose index the store handed out again is forgotten, so
 * that the channels known hold distinct indexes: at most the store's
 * table. */
static void index_set(comet_pubsrv_t *srv, comet_pubsub_chan_t *chan,
                      const comet_chanref_t *ref)
{
    comet_pubsub_chan_t *other;

    if (apr_hash_get(srv->by_index, &chan->index, sizeof(chan->index))
        == chan) {
        apr_hash_set(srv->by_index, &chan->index, sizeof(chan->index), NULL);
    }
    other = apr_hash_get(srv->by_index, &ref->index, sizeof(ref->index));
    if (other && other != chan) {
        apr_hash_set(srv->by_index, &other->index, sizeof(other->index),
                     NULL);
        if (!other->nsubs) {
            chan_forget(srv, other);
        }
    }
    chan->ref = *ref;
    chan->index = ref->index;
    apr_hash_set(srv->by_index, &chan->index, sizeof(chan->index), chan);
}

static comet_pubsub_chan_t *chan_new(comet_pubsrv_t *srv, const char *id,
                                     apr_size_t len,
                                     const comet_chanref_t *ref,
                                     apr_uint64_t seq)
{
    comet_pubsub_chan_t *chan = calloc(1, sizeof(*chan) + len);

    if (!chan) {
        return NULL;
    }
    memcpy(chan->id, id, len);
    chan->len = len;
    chan->seq = seq;
    chan->index = APR_UINT32_MAX;
    index_set(srv, chan, ref);
    apr_hash_set(srv->chans, chan->id, (apr_ssize_t)len, chan);
    chan->next = srv->chan_list;
    if (chan->next) {
        chan->next->prev = chan;
    }
    srv->chan_list = chan;
    return chan;
}

static void chan_forget(comet_pubsrv_t *srv, comet_pubsub_chan_t *chan)
{
    if (apr_hash_get(srv->by_index, &chan->index, sizeof(chan->index))
        == chan) {
        apr_hash_set(srv->by_index, &chan->index, sizeof(chan->index), NULL);
    }
    apr_hash_set(srv->chans, chan->id, (apr_ssize_t)chan->len, NULL);
    if (chan->prev) {
        chan->prev->next = chan->next;
    }
    else {
        srv->chan_list = chan->next;
    }
    if (chan->next) {
        chan->next->prev = chan->prev;
    }
    free(chan);
}

/* Does any pattern match the channel id?  *start: the oldest pattern's
 * start among those that do. */
static int pats_match(comet_pubsrv_t *srv, const char *id, apr_size_t len,
                      apr_uint64_t *start)
{
    comet_pubsub_pat_t *pat;
    int n = 0;

    for (pat = srv->pat_list; pat; pat = pat->next) {
        if (comet_glob_match(pat->pat, pat->len, id, len)) {
            if (start && (!n || pat->start < *start)) {
                *start = pat->start;
            }
            n++;
        }
    }
    return n;
}

static int pats_match_any(void *baton, const char *id, apr_size_t len)
{
    return pats_match(baton, id, len, NULL);
}

/* Tell the store how many patterns this slot listens to (0: stop
 * watching).  *seq: the store's seq at that instant. */
static apr_status_t pats_announce(comet_pubsrv_t *srv, apr_uint64_t *seq)
{
    apr_status_t rv = comet_store_proc_watch(srv->cfg.store, srv->cfg.slot,
                                             srv->npats, seq);

    stat_set(&srv->st.patterns, srv->npats);
    return rv;
}

/* A channel known through a pattern only, which no pattern matches any
 * more, is forgotten. */
static void chans_sweep(comet_pubsrv_t *srv)
{
    comet_pubsub_chan_t *chan, *next;

    for (chan = srv->chan_list; chan; chan = next) {
        next = chan->next;
        if (!chan->nsubs && !pats_match(srv, chan->id, chan->len, NULL)) {
            chan_forget(srv, chan);
        }
    }
}

static comet_pubsub_sub_t *sub_new(comet_pubconn_t *c, int kind,
                                   const char *name, apr_size_t len)
{
    comet_pubsub_sub_t *sub = calloc(1, sizeof(*sub) + len + 1);

    if (!sub) {
        return NULL;
    }
    sub->conn = c;
    sub->key[0] = (char)kind;
    memcpy(sub->key + 1, name, len);
    sub->klen = len + 1;
    return sub;
}

static void sub_link(comet_pubsub_sub_t *sub, comet_pubsub_sub_t **list)
{
    comet_pubconn_t *c = sub->conn;
    int was = COMET_PUBCONN_SUBSCRIBED(c);

    sub->tnext = *list;
    if (sub->tnext) {
        sub->tnext->tprev = sub;
    }
    *list = sub;
    sub->cnext = c->subs;
    if (sub->cnext) {
        sub->cnext->cprev = sub;
    }
    c->subs = sub;
    apr_hash_set(c->sub_names, sub->key, (apr_ssize_t)sub->klen, sub);
    if (sub->chan) {
        c->nchans++;
    }
    else {
        c->npats++;
    }
    if (!was) {
        COMET_PUBSRV_STAT_ADD(c->srv, subscribers, 1);
    }
}

/* End one subscription: out of the store, off both lists, freed. */
static void sub_end(comet_pubsub_sub_t *sub)
{
    comet_pubconn_t *c = sub->conn;
    comet_pubsrv_t *srv = c->srv;
    comet_pubsub_sub_t **list;

    list = sub->chan ? &sub->chan->subs : &sub->pat->subs;
    if (sub->tprev) {
        sub->tprev->tnext = sub->tnext;
    }
    else {
        *list = sub->tnext;
    }
    if (sub->tnext) {
        sub->tnext->tprev = sub->tprev;
    }
    if (sub->cprev) {
        sub->cprev->cnext = sub->cnext;
    }
    else {
        c->subs = sub->cnext;
    }
    if (sub->cnext) {
        sub->cnext->cprev = sub->cprev;
    }
    apr_hash_set(c->sub_names, sub->key, (apr_ssize_t)sub->klen, NULL);

    if (sub->chan) {
        comet_pubsub_chan_t *chan = sub->chan;

        if (chan->stored) {
            comet_store_unsubscribe(srv->cfg.store, srv->cfg.slot,
                                    &chan->ref, comet_now_mono());
        }
        if (sub->lagging) {
            c->lagging--;
        }
        c->nchans--;
        if (--chan->nsubs == 0) {
            chan->stored = 0;
            stat_set(&srv->st.channels, --srv->nchans);
            /* A pattern may still want it (its position stays). */
            if (!pats_match(srv, chan->id, chan->len, NULL)) {
                chan_forget(srv, chan);
            }
        }
    }
    else {
        comet_pubsub_pat_t *pat = sub->pat;

        c->npats--;
        if (--pat->nsubs == 0) {
            apr_hash_set(srv->pats, pat->pat, (apr_ssize_t)pat->len, NULL);
            if (pat->prev) {
                pat->prev->next = pat->next;
            }
            else {
                srv->pat_list = pat->next;
            }
            if (pat->next) {
                pat->next->prev = pat->prev;
            }
            free(pat);
            srv->npats--;
            pats_announce(srv, NULL);
            chans_sweep(srv);
        }
    }
    if (!COMET_PUBCONN_SUBSCRIBED(c)) {
        __atomic_sub_fetch(&srv->st.subscribers, 1, __ATOMIC_RELAXED);
    }
    free(sub);
}

/* ---- delivery ------------------------------------------------------------- */

/* Hand a batch to the channel's subscriptions and to those of the
 * patterns that match it. */
static void batch_hand_out(comet_pubsrv_t *srv, comet_pubsub_chan_t *chan,
                           const apr_array_header_t *msgs)
{
    int n = msgs->nelts;
    apr_uint64_t last = APR_ARRAY_IDX(msgs, n - 1, comet_msg_t).id.seq;
    comet_pubsub_sub_t *sub;
    comet_pubsub_pat_t *pat;

    shapes_reset(srv);
    for (sub = chan->subs; sub; sub = sub->tnext) {
        comet_pubconn_t *c = sub->conn;
        comet_pubsub_shape_t *sh;
        int i, k;

        if (sub->lagging || c->dropped || sub->pos >= last) {
            continue;
        }
        i = first_after(msgs, sub->pos);
        k = (sub->ids ? SHAPE_IDS2 : SHAPE_MSG2)
            + (c->proto == COMET_RESP3);
        sh = shape_get(srv, k, chan, NULL, msgs);
        push_bytes(c, sh->buf->data + sh->off[i], sh->off[n] - sh->off[i],
                   (apr_size_t)(n - i));
        sub->pos = last;
    }
    for (pat = srv->pat_list; pat; pat = pat->next) {
        if (!comet_glob_match(pat->pat, pat->len, chan->id, chan->len)) {
            continue;
        }
        srv->shape[SHAPE_PMSG2].done = srv->shape[SHAPE_PMSG3].done = 0;
        for (sub = pat->subs; sub; sub = sub->tnext) {
            comet_pubconn_t *c = sub->conn;
            comet_pubsub_shape_t *sh;
            int i;

            /* A pattern's subscription has one position for all
             * channels: where it began. */
            if (c->dropped || sub->pos >= last) {
                continue;
            }
            i = first_after(msgs, sub->pos);
            sh = shape_get(srv, SHAPE_PMSG2 + (c->proto == COMET_RESP3), chan,
                           pat, msgs);
            push_bytes(c, sh->buf->data + sh->off[i],
                       sh->off[n] - sh->off[i], (apr_size_t)(n - i));
        }
    }
}

/* The channel was deleted (COMET.DELETE, HTTP DELETE).  Redis knows no
 * such thing: its subscribers stay subscribed to the name.  Ours are told
 * (comet.deleted, to those that asked for ids) and their store
 * subscriptions move to the channel's next record (made now, or by the
 * publish that made it again).  Returns 1 when the channel is to be read
 * again. */
static int chan_deleted(comet_pubsrv_t *srv, comet_pubsub_chan_t *chan,
                        const comet_msgid_t *last)
{
    apr_time_t now = comet_now_mono();
    comet_pubsub_sub_t *sub;
    comet_chanref_t ref;
    comet_msgid_t newest;
    apr_uint32_t i, moved = 0;
    apr_status_t rv = APR_SUCCESS;

    if (!chan->nsubs) {
        chan_forget(srv, chan);
        return 0;
    }
    for (sub = chan->subs; sub; sub = sub->tnext) {
        if (sub->ids) {
            push_signal(sub->conn, "comet.deleted", chan, last);
        }
    }
    if (chan->stored) {
        for (i = 0; i < chan->nsubs; i++) {
            comet_store_unsubscribe(srv->cfg.store, srv->cfg.slot,
                                    &chan->ref, now);
        }
        chan->stored = 0;
    }
    for (; moved < chan->nsubs; moved++) {
        rv = comet_store_subscribe(srv->cfg.store, srv->cfg.slot, chan->id,
                                   chan->len, now, &ref, &newest);
        if (rv != APR_SUCCESS) {
            break;
        }
    }
    if (rv != APR_SUCCESS) {
        /* No room for the channel again: its subscribers cannot go on
         * hearing it.  They are closed (they may come back when there is
         * room). */
        comet_log(COMET_LOG_ERR, rv, "publish socket: channel=%s: deleted, "
                  "and its %u subscribers cannot subscribe to it again: "
                  "closing them", chan->id, chan->nsubs);
        for (i = 0; i < moved; i++) {
            comet_store_unsubscribe(srv->cfg.store, srv->cfg.slot, &ref,
                                    now);
        }
        for (sub = chan->subs; sub; sub = sub->tnext) {
            drop(sub->conn, sub->conn->out->len);
        }
        return 0;
    }
    chan->stored = 1;
    index_set(srv, chan, &ref);
    /* Ids grow across records: the new record's messages are all newer
     * than the position. */
    chan->rebound = 1;
    return 1;
}

/* Messages of a channel gone from its buffer before this process read
 * them (the publishers outran this process's reading by more than the
 * buffer holds). */
static void missed_log(comet_pubsrv_t *srv, const comet_pubsub_chan_t *chan,
                       apr_uint32_t closed)
{
    apr_time_t now = comet_now_mono();
    comet_store_config_t cfg;
    char more[80] = "";

    if (now < srv->log_missed.next) {
        srv->log_missed.skipped++;
        return;
    }
    comet_store_get_config(srv->cfg.store, &cfg);
    if (srv->log_missed.skipped) {
        apr_snprintf(more, sizeof(more), " (and %" APR_UINT64_T_FMT " more "
                     "times in the last %d s)", srv->log_missed.skipped,
                     (int)apr_time_sec(PUBSUB_LOG_INTERVAL));
    }
    comet_log(COMET_LOG_WARNING, 0, "publish socket: channel=%.128s: "
              "messages left the channel's buffer (CometMessageBufferLength "
              "%u) before this process read them for its subscribers: %u "
              "of them closed%s", chan->id, cfg.buffer_length, closed, more);
    srv->log_missed.skipped = 0;
    srv->log_missed.next = now + PUBSUB_LOG_INTERVAL;
}

static void missed_drop(comet_pubsrv_t *srv, comet_pubsub_chan_t *chan)
{
    comet_msgid_t at = msgid(srv, chan->seq);
    comet_pubsub_sub_t *sub;
    comet_pubsub_pat_t *pat;
    apr_uint32_t closed = 0;

    for (sub = chan->subs; sub; sub = sub->tnext) {
        if (sub->lagging || sub->conn->dropped) {
            continue;
        }
        if (sub->ids) {
            push_signal(sub->conn, "comet.missed", chan, &at);
        }
        else {
            sub->conn->dropped = 1;
            mark_pushed(sub->conn);
            closed++;
        }
    }
    for (pat = srv->pat_list; pat; pat = pat->next) {
        if (!comet_glob_match(pat->pat, pat->len, chan->id, chan->len)) {
            continue;
        }
        for (sub = pat->subs; sub; sub = sub->tnext) {
            if (!sub->conn->dropped) {
                sub->conn->dropped = 1;
                mark_pushed(sub->conn);
                closed++;
            }
        }
    }
    COMET_PUBSRV_STAT_ADD(srv, missed, closed);
    COMET_PUBSRV_STAT_ADD(srv, dropped, closed);
    missed_log(srv, chan, closed);
}

static void chan_deliver(comet_pubsrv_t *srv, comet_pubsub_chan_t *chan)
{
    comet_store_t *st = srv->cfg.store;
    int rounds = 0;

    for (;;) {
        comet_read_t rd;
        apr_status_t rv;

        rv = comet_store_read(st, &chan->ref, msgid(srv, chan->seq),
                              PUBSUB_READ_MSGS, PUBSUB_READ_BYTES,
                              comet_now_mono(), srv->batch, &rd);
        if (rv != APR_SUCCESS) {
            apr_pool_clear(srv->batch);
            if (rv == COMET_ENOCHAN && !chan->nsubs) {
                /* Reclaimed since a pattern found it. */
                chan_forget(srv, chan);
            }
            return;
        }
        if (rd.deleted) {
            apr_pool_clear(srv->batch);
            if (chan_deleted(srv, chan, &rd.newest) && ++rounds < 2) {
                continue;
            }
            return;
        }
        if (rd.missed && !chan->rebound && chan->seq == 0
            && chan_fed(srv, chan)) {
            /* Nothing of the channel was here when its listeners came;
             * then the copy took its position from elsewhere (CometRedis:
             * ids of all servers): they lost nothing, they start there. */
            rd.missed = 0;
            if (!rd.msgs->nelts) {
                chan->seq = rd.newest.seq;
            }
        }
        if (rd.missed && !chan->rebound) {
            /* This process fell behind the channel's buffer: messages
             * went before it read them.  COMET.SUBSCRIBE is told; a Redis
             * subscriber has no way to be, so it is closed rather than
             * left to miss messages without knowing (as Redis closes a
             * subscriber it cannot give every message to). */
            missed_drop(srv, chan);
        }
        chan->rebound = 0;
        if (rd.msgs->nelts) {
            batch_hand_out(srv, chan, rd.msgs);
            chan->seq = APR_ARRAY_IDX(rd.msgs, rd.msgs->nelts - 1,
                                      comet_msg_t).id.seq;
        }
        apr_pool_clear(srv->batch);
        if (!rd.more || !rd.msgs->nelts) {
            return;
        }
    }
}

/* The store's copy of the channel is fed from elsewhere. */
static int chan_fed(comet_pubsrv_t *srv, const comet_pubsub_chan_t *chan)
{
    comet_store_pos_t pos;

    return comet_store_position(srv->cfg.store, srv->cfg.slot, chan->id,
                                chan->len, &pos) == APR_SUCCESS && pos.fed;
}

/* A ref from the slot's queue (or an overflow's walk). */
static void ref_deliver(comet_pubsrv_t *srv, const comet_chanref_t *ref)
{
    comet_pubsub_chan_t *chan;
    apr_uint64_t start = 0;
    const char *id;
    apr_size_t len;

    chan = apr_hash_get(srv->by_index, &ref->index, sizeof(ref->index));
    if (chan && chan->ref.gen == ref->gen) {
        chan_deliver(srv, chan);
        return;
    }
    if (chan && !chan->nsubs) {
        /* Known through a pattern, and the record was reused since. */
        chan_forget(srv, chan);
    }
    if (!srv->pat_list) {
        return;
    }
    if (comet_store_chan_id(srv->cfg.store, ref, srv->scratch, &id, &len)
        != APR_SUCCESS) {
        apr_pool_clear(srv->scratch);
        return;
    }
    chan = apr_hash_get(srv->chans, id, (apr_ssize_t)len);
    if (chan) {
        if (!chan->nsubs) {
            index_set(srv, chan, ref);
        }
        /* else: it still holds the deleted record of that name, which it
         * is about to learn of. */
    }
    else if (pats_match(srv, id, len, &start)) {
        chan = chan_new(srv, id, len, ref, start);
    }
    if (chan) {
        chan->rebound = 1;
    }
    apr_pool_clear(srv->scratch);
    if (chan) {
        chan_deliver(srv, chan);
    }
}

/* The slot's queue overflowed: look at every channel subscribed here,
 * and at every channel published to since the last drain that a pattern
 * matches.  (Refs first, then delivery: delivering may forget records.) */
static void overflow_deliver(comet_pubsrv_t *srv)
{
    comet_pubsub_chan_t *chan;
    apr_array_header_t *refs;
    apr_pool_t *p;
    int i;

    if (apr_pool_create(&p, srv->pool) != APR_SUCCESS) {
        return;
    }
    refs = apr_array_make(p, (int)srv->nchans + 1, sizeof(comet_chanref_t));
    for (chan = srv->chan_list; chan; chan = chan->next) {
        if (chan->nsubs) {
            APR_ARRAY_PUSH(refs, comet_chanref_t) = chan->ref;
        }
    }
    for (i = 0; i < refs->nelts; i++) {
        ref_deliver(srv, &APR_ARRAY_IDX(refs, i, comet_chanref_t));
    }
    if (srv->pat_list) {
        apr_array_header_t *found;

        found = comet_store_published_since(srv->cfg.store, srv->drained,
                                            pats_match_any, srv, p);
        for (i = 0; i < found->nelts; i++) {
            ref_deliver(srv,
                        &APR_ARRAY_IDX(found, i, comet_store_chan_t).ref);
        }
    }
    apr_pool_destroy(p);
}

/* Take what the slot's queue holds.  flush: send the pushes now (from the
 * loop); else on the next turn (from inside a connection's commands,
 * where flushing could re-enter that connection). */
static void pubsub_drain(comet_pubsrv_t *srv, int flush)
{
    comet_chanref_t refs[PUBSUB_DRAIN_BATCH];
    apr_uint64_t before = comet_store_last_seq(srv->cfg.store);
    apr_size_t n, i;
    int overflow;

    srv->draining = 1;
    do {
        n = comet_store_proc_drain(srv->cfg.store, srv->cfg.slot, refs,
                                   PUBSUB_DRAIN_BATCH, &overflow);
        for (i = 0; i < n; i++) {
            ref_deliver(srv, &refs[i]);
        }
        if (overflow) {
            overflow_deliver(srv);
        }
    } while (n == PUBSUB_DRAIN_BATCH);
    /* Whatever a later overflow hides was published after this. */
    srv->drained = before;
    srv->draining = 0;
    if (flush) {
        pushed_flush(srv);
    }
    else if (srv->pushed && !comet_timer_armed(&srv->push_timer)
             && comet_timer_arm_in(srv->loop, &srv->push_timer, 0)
                != APR_SUCCESS) {
        /* Cannot happen (the loop has room for it); flushed with the
         * next drain otherwise. */
    }
}

void comet_pubsub_poll(comet_pubsrv_t *srv)
{
    apr_uint64_t v;

    if (srv->cfg.wake_fd > 0 && !srv->draining
        && read(srv->cfg.wake_fd, &v, sizeof(v)) == sizeof(v)) {
        pubsub_drain(srv, 0);
    }
}

static void pushed_flush(comet_pubsrv_t *srv)
{
    comet_pubconn_t *c;
    int k;

    while ((c = srv->pushed)) {
        unmark_pushed(c);
        comet_pubsrv_conn_kick(c);
    }
    for (k = 0; k < COMET_PUBSUB_SHAPES; k++) {
        if (srv->shape[k].buf->cap > PUBSUB_SHAPE_KEEP) {
            comet_buf_release(srv->shape[k].buf);
        }
    }
}

static void push_timer_fired(comet_loop_t *loop, comet_timer_t *timer,
                             void *baton)
{
    pushed_flush(baton);
}

static void wake_io(comet_loop_t *loop, int fd, int events, void *baton)
{
    apr_uint64_t v;

    /* Nonblocking: EAGAIN when a drain took the wakeup already. */
    if (read(fd, &v, sizeof(v)) < 0 && errno != EAGAIN) {
        comet_log(COMET_LOG_WARNING, APR_FROM_OS_ERROR(errno),
                  "publish socket: cannot read the wakeup fd of slot %u",
                  baton ? ((comet_pubsrv_t *)baton)->cfg.slot : 0);
    }
    pubsub_drain(baton, 1);
}

/* ---- lagging subscriptions ----------------------------------------------- */

/* One slice of a lagging subscription's own reading. */
static void catch_up_one(comet_pubsub_sub_t *sub)
{
    comet_pubconn_t *c = sub->conn;
    comet_pubsrv_t *srv = c->srv;
    comet_pubsub_chan_t *chan = sub->chan;
    comet_msgid_t after = sub->first ? sub->from : msgid(srv, sub->pos);
    comet_buf_t *b = srv->shape[SHAPE_IDS2 + (c->proto == COMET_RESP3)].buf;
    comet_read_t rd;
    apr_status_t rv;
    int i, join = 1;

    rv = comet_store_read(srv->cfg.store, &chan->ref, after,
                          PUBSUB_CATCHUP_MSGS, PUBSUB_CATCHUP_BYTES,
                          comet_now_mono(), srv->batch, &rd);
    /* A record gone or deleted: the shared reading says so. */
    if (rv == APR_SUCCESS && !rd.deleted) {
        if (rd.missed) {
            push_signal(c, "comet.missed", chan, &after);
        }
        comet_buf_truncate(b, 0);
        for (i = 0; i < rd.msgs->nelts; i++) {
            const comet_msg_t *m = &APR_ARRAY_IDX(rd.msgs, i, comet_msg_t);

            if (shape_write(b, SHAPE_IDS2 + (c->proto == COMET_RESP3), srv,
                            chan->id, chan->len, NULL, 0, m)
                != APR_SUCCESS) {
                break;
            }
            sub->pos = m->id.seq;
        }
        /* Written whatever max_pending says: a slice is bounded, and only
         * taken while the connection's output is under max_output. */
        if (!c->dropped && b->len
            && comet_buf_append(c->out, b->data, b->len) != APR_SUCCESS) {
            c->broken = 1;
        }
        COMET_PUBSRV_STAT_ADD(srv, pushes, (apr_uint64_t)i);
        comet_buf_truncate(b, 0);
        /* (A message that did not fit would stop it for good.) */
        join = !rd.more || i == 0;
    }
    sub->first = 0;
    apr_pool_clear(srv->batch);
    if (join) {
        /* Everything after the position that the store still holds has
         * been read; what lies between is gone (and was reported). */
        if (sub->pos < chan->seq) {
            sub->pos = chan->seq;
        }
        sub->lagging = 0;
        c->lagging--;
    }
}

void comet_pubsub_catch_up(comet_pubconn_t *c)
{
    comet_pubsub_sub_t *sub, *next;

    for (sub = c->subs; sub && c->lagging; sub = next) {
        next = sub->cnext;
        while (sub->lagging && !c->dropped && !c->broken
               && c->out->len < c->srv->cfg.max_output) {
            catch_up_one(sub);
        }
    }
}

/* ---- commands ------------------------------------------------------------- */

/* "subscribe" / "unsubscribe" / "psubscribe" / "punsubscribe" with the
 * name (NULL: a null) and the connection's count, as Redis replies. */
static void reply_sub(comet_pubconn_t *c, const char *what,
                      const char *name, apr_size_t len)
{
    put(c, comet_resp_push(c->out, c->proto, 3));
    put(c, comet_resp_bulk(c->out, what, strlen(what)));
    if (name) {
        put(c, comet_resp_bulk(c->out, name, len));
    }
    else {
        put(c, comet_resp_null(c->out, c->proto));
    }
    put(c, comet_resp_integer(c->out, (apr_int64_t)(c->nchans + c->npats)));
}

static comet_pubsub_sub_t *sub_find(comet_pubconn_t *c, int kind,
                                    const char *name, apr_size_t len)
{
    char key[1 + 256];

    if (len + 1 <= sizeof(key)) {
        key[0] = (char)kind;
        memcpy(key + 1, name, len);
        return apr_hash_get(c->sub_names, key, (apr_ssize_t)len + 1);
    }
    else {
        char *k = malloc(len + 1);
        comet_pubsub_sub_t *sub;

        if (!k) {
            return NULL;
        }
        k[0] = (char)kind;
        memcpy(k + 1, name, len);
        sub = apr_hash_get(c->sub_names, k, (apr_ssize_t)len + 1);
        free(k);
        return sub;
    }
}

static int room_for_one_more(comet_pubconn_t *c)
{
    if (c->nchans + c->npats < COMET_PUBSRV_MAX_SUBS) {
        return 1;
    }
    comet_pubcmd_reply_err(c, "ERR too many subscriptions on one connection "
                           "(at most %d channels and patterns)",
                           COMET_PUBSRV_MAX_SUBS);
    return 0;
}

/* Subscribe c to a channel; from (COMET.SUBSCRIBE FROM) makes it read
 * the store from there first. */
static void subscribe_one(comet_pubconn_t *c, const char *name,
                          apr_size_t len, int ids, const comet_msgid_t *from)
{
    comet_pubsrv_t *srv = c->srv;
    comet_store_t *st = srv->cfg.store;
    comet_pubsub_sub_t *sub = sub_find(c, KIND_CHAN, name, len);
    comet_pubsub_chan_t *chan;
    comet_chanref_t ref;
    comet_msgid_t newest;
    apr_status_t rv;
    int tries;

    if (sub) {
        /* Subscribed already: the last command decides the shape. */
        sub->ids = ids;
        if (!from) {
            reply_sub(c, "subscribe", name, len);
            return;
        }
        /* A resume on a subscription held already: it starts over. */
        sub_end(sub);
    }
    if (!room_for_one_more(c)) {
        return;
    }
    chan = apr_hash_get(srv->chans, name, (apr_ssize_t)len);
    for (tries = 0;; tries++) {
        rv = comet_store_subscribe(st, srv->cfg.slot, name, len,
                                   comet_now_mono(), &ref, &newest);
        if (rv != APR_SUCCESS) {
            if (rv == COMET_EFULL || rv == COMET_EQUOTA) {
                comet_pubcmd_reply_err(c, "ERR no room in the store for "
                                       "another subscription "
                                       "(CometSharedMemorySize)");
            }
            else {
                comet_pubcmd_reply_store_error(c, rv);
            }
            return;
        }
        if (!chan || !chan->stored || (chan->ref.index == ref.index
                                       && chan->ref.gen == ref.gen)) {
            break;
        }
        /* Its record was deleted and nobody here knows yet: move the
         * channel's subscriptions first. */
        comet_store_unsubscribe(st, srv->cfg.slot, &ref, comet_now_mono());
        if (tries) {
            comet_pubcmd_reply_err(c, "ERR channel %.128s is being deleted: "
                                   "try again", name);
            return;
        }
        chan_deliver(srv, chan);
        chan = apr_hash_get(srv->chans, name, (apr_ssize_t)len);
    }
    if (!(sub = sub_new(c, KIND_CHAN, name, len))) {
        comet_store_unsubscribe(st, srv->cfg.slot, &ref, comet_now_mono());
        c->broken = 1;
        return;
    }
    if (!chan) {
        if (!(chan = chan_new(srv, name, len, &ref, newest.seq))) {
            comet_store_unsubscribe(st, srv->cfg.slot, &ref,
                                    comet_now_mono());
            free(sub);
            c->broken = 1;
            return;
        }
    }
    else if (!chan->nsubs) {
        /* Known through a pattern so far: its position stays. */
        index_set(srv, chan, &ref);
    }
    if (chan->nsubs++ == 0) {
        stat_set(&srv->st.channels, ++srv->nchans);
        if (srv->cfg.follow) {
            srv->cfg.follow(srv->cfg.follow_baton, chan->id, chan->len);
        }
    }
    chan->stored = 1;
    sub->chan = chan;
    sub->ids = ids;
    /* What the channel gets from now on: everything after its newest. */
    sub->pos = newest.seq;
    sub_link(sub, &chan->subs);
    reply_sub(c, "subscribe", name, len);
    if (from) {
        if (from->epoch == comet_store_epoch(st)
            && from->seq == newest.seq) {
            return;     /* nothing is missing */
        }
        sub->lagging = 1;
        sub->first = 1;
        sub->from = *from;
        sub->pos = 0;
        c->lagging++;
        comet_pubsub_catch_up(c);
    }
}

void comet_pubsub_cmd_subscribe(comet_pubconn_t *c,
                                const comet_resp_cmd_t *cmd)
{
    apr_size_t i;

    if (!available(c)) {
        return;
    }
    for (i = 1; i < cmd->argc && !c->broken; i++) {
        subscribe_one(c, cmd->argv[i], cmd->argv_len[i], 0, NULL);
    }
}

void comet_pubsub_cmd_comet_subscribe(comet_pubconn_t *c,
                                      const comet_resp_cmd_t *cmd)
{
    comet_msgid_t from;

    if (cmd->argc != 2 && cmd->argc != 4) {
        comet_pubcmd_reply_err(c, "ERR syntax error: COMET.SUBSCRIBE "
                               "<channel> [FROM <id>]");
        return;
    }
    if (cmd->argc == 4) {
        if (cmd->argv_len[2] != 4 || strcasecmp(cmd->argv[2], "FROM")) {
            comet_pubcmd_reply_err(c, "ERR syntax error: COMET.SUBSCRIBE "
                                   "<channel> [FROM <id>]");
            return;
        }
        if (comet_msgid_parse(&from, cmd->argv[3], cmd->argv_len[3])
            != APR_SUCCESS) {
            comet_pubcmd_reply_err(c, "ERR invalid message id '%.64s' (an "
                                   "id of a comet.message, "
                                   "<epoch>:<seq>)", cmd->argv[3]);
            return;
        }
    }
    if (!available(c)) {
        return;
    }
    subscribe_one(c, cmd->argv[1], cmd->argv_len[1], 1,
                  cmd->argc == 4 ? &from : NULL);
}

void comet_pubsub_cmd_unsubscribe(comet_pubconn_t *c,
                                  const comet_resp_cmd_t *cmd)
{
    comet_pubsub_sub_t *sub, *next;
    apr_size_t i;

    if (cmd->argc == 1) {
        int n = 0;

        for (sub = c->subs; sub; sub = next) {
            next = sub->cnext;
            if (sub->chan) {
                /* The name lives in the record: reply before it goes. */
                apr_size_t len = sub->chan->len;
                char *name = apr_pstrmemdup(c->srv->scratch, sub->chan->id,
                                            len);

                sub_end(sub);
                reply_sub(c, "unsubscribe", name, len);
                n++;
            }
        }
        apr_pool_clear(c->srv->scratch);
        if (!n) {
            reply_sub(c, "unsubscribe", NULL, 0);
        }
        return;
    }
    for (i = 1; i < cmd->argc; i++) {
        if ((sub = sub_find(c, KIND_CHAN, cmd->argv[i], cmd->argv_len[i]))) {
            sub_end(sub);
        }
        reply_sub(c, "unsubscribe", cmd->argv[i], cmd->argv_len[i]);
    }
}

static void psubscribe_one(comet_pubconn_t *c, const char *name,
                           apr_size_t len)
{
    comet_pubsrv_t *srv = c->srv;
    comet_pubsub_sub_t *sub = sub_find(c, KIND_PAT, name, len);
    comet_pubsub_pat_t *pat;
    apr_uint64_t seq;

    if (sub) {
        reply_sub(c, "psubscribe", name, len);
        return;
    }
    if (len > 2 * srv->max_channel_id) {
        comet_pubcmd_reply_err(c, "ERR pattern longer than %" APR_SIZE_T_FMT
                               " bytes", 2 * srv->max_channel_id);
        return;
    }
    if (!room_for_one_more(c) || !(sub = sub_new(c, KIND_PAT, name, len))) {
        return;
    }
    pat = apr_hash_get(srv->pats, name, (apr_ssize_t)len);
    if (!pat) {
        if (!(pat = calloc(1, sizeof(*pat) + len))) {
            free(sub);
            c->broken = 1;
            return;
        }
        memcpy(pat->pat, name, len);
        pat->len = len;
        srv->npats++;
        /* From this instant every publish is queued for us: what comes
         * after seq is the pattern's. */
        if (pats_announce(srv, &seq) != APR_SUCCESS) {
            srv->npats--;
            stat_set(&srv->st.patterns, srv->npats);
            free(pat);
            free(sub);
            comet_pubcmd_reply_err(c, "ERR cannot listen to patterns in this "
                                   "process");
            return;
        }
        pat->start = seq;
        apr_hash_set(srv->pats, pat->pat, (apr_ssize_t)len, pat);
        pat->next = srv->pat_list;
        if (pat->next) {
            pat->next->prev = pat;
        }
        srv->pat_list = pat;
    }
    else {
        seq = comet_store_last_seq(srv->cfg.store);
    }
    pat->nsubs++;
    sub->pat = pat;
    sub->pos = seq;
    sub_link(sub, &pat->subs);
    reply_sub(c, "psubscribe", name, len);
}

void comet_pubsub_cmd_psubscribe(comet_pubconn_t *c,
                                 const comet_resp_cmd_t *cmd)
{
    apr_size_t i;

    if (!available(c)) {
        return;
    }
    for (i = 1; i < cmd->argc && !c->broken; i++) {
        psubscribe_one(c, cmd->argv[i], cmd->argv_len[i]);
    }
}

void comet_pubsub_cmd_punsubscribe(comet_pubconn_t *c,
                                   const comet_resp_cmd_t *cmd)
{
    comet_pubsub_sub_t *sub, *next;
    apr_size_t i;

    if (cmd->argc == 1) {
        int n = 0;

        for (sub = c->subs; sub; sub = next) {
            next = sub->cnext;
            if (sub->pat) {
                apr_size_t len = sub->pat->len;
                char *name = apr_pstrmemdup(c->srv->scratch, sub->pat->pat,
                                            len);

                sub_end(sub);
                reply_sub(c, "punsubscribe", name, len);
                n++;
            }
        }
        apr_pool_clear(c->srv->scratch);
        if (!n) {
            reply_sub(c, "punsubscribe", NULL, 0);
        }
        return;
    }
    for (i = 1; i < cmd->argc; i++) {
        if ((sub = sub_find(c, KIND_PAT, cmd->argv[i], cmd->argv_len[i]))) {
            sub_end(sub);
        }
        reply_sub(c, "punsubscribe", cmd->argv[i], cmd->argv_len[i]);
    }
}

void comet_pubsub_reset(comet_pubconn_t *c)
{
    while (c->subs) {
        sub_end(c->subs);
    }
}

void comet_pubsub_conn_end(comet_pubconn_t *c)
{
    comet_pubsub_reset(c);
    unmark_pushed(c);
}

/* ---- the server's part ---------------------------------------------------- */

static apr_status_t pubsub_cleanup(void *data)
{
    comet_pubsrv_t *srv = data;
    comet_pubsub_chan_t *chan;

    /* The connections (and their subscriptions) went first: what is left
     * are channels known through patterns. */
    while ((chan = srv->chan_list)) {
        chan_forget(srv, chan);
    }
    if (srv->wake_watched) {
        comet_loop_io_remove(srv->loop, &srv->wake_io);
        srv->wake_watched = 0;
    }
    comet_timer_cancel(srv->loop, &srv->push_timer);
    if (srv->npats) {
        srv->npats = 0;
        pats_announce(srv, NULL);
    }
    return APR_SUCCESS;
}

apr_status_t comet_pubsub_init(comet_pubsrv_t *srv)
{
    comet_store_config_t scfg;
    apr_size_t shape_max;
    apr_status_t rv;
    int k;

    if (!srv->cfg.max_pending) {
        srv->cfg.max_pending = PUBSUB_DEFAULT_PENDING;
    }
    srv->chans = apr_hash_make(srv->pool);
    srv->by_index = apr_hash_make(srv->pool);
    srv->pats = apr_hash_make(srv->pool);
    comet_timer_init(&srv->push_timer, push_timer_fired, srv);
    if ((rv = apr_pool_create(&srv->batch, srv->pool)) != APR_SUCCESS) {
        return rv;
    }
    /* A batch: its payload, and each message's framing with the channel
     * and the pattern. */
    comet_store_get_config(srv->cfg.store, &scfg);
    shape_max = srv->cfg.max_message + PUBSUB_READ_BYTES
                + PUBSUB_READ_MSGS * (3 * scfg.max_channel_id + 256);
    for (k = 0; k < COMET_PUBSUB_SHAPES; k++) {
        if ((rv = comet_buf_create(&srv->shape[k].buf, srv->pool, 0,
                                   shape_max)) != APR_SUCCESS) {
            return rv;
        }
    }
    srv->drained = comet_store_last_seq(srv->cfg.store);
    /* Registered after the connections' pools exist as children: those go
     * first when the server's pool is destroyed. */
    apr_pool_cleanup_register(srv->pool, srv, pubsub_cleanup,
                              apr_pool_cleanup_null);
    if (srv->cfg.wake_fd > 0) {
        if ((rv = comet_loop_io_add(srv->loop, &srv->wake_io,
                                    srv->cfg.wake_fd, COMET_LOOP_READ,
                                    wake_io, srv)) != APR_SUCCESS) {
            return rv;
        }
        srv->wake_watched = 1;
    }
    return APR_SUCCESS;
}
