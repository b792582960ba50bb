/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_hub.c -- the subscribers of one process and their delivery.
 *
 * Records (all on the hub thread, all malloc()ed: a pool per subscriber
 * would cost more than the subscriber):
 *
 *   hub_chan_t    one per channel with local subscribers: the store ref,
 *                 the id, the members, and chan->seq, the newest id read
 *                 from the store for this channel.
 *   hub_member_t  one per (subscriber, channel): list links and the
 *                 subscriber's position in that channel.
 *   comet_hub_sub_t  the subscriber: its socket watcher (or sink), its
 *                 TLS session when it has one, unsent bytes, its place in
 *                 a timer queue, its members.
 *
 * Delivery of a channel: read once after chan->seq; format each message
 * once per shape (SSE or ndjson, chunked or not) into a shared buffer,
 * remembering where each message starts; each single-channel member gets
 * the suffix it has not seen with one non-blocking send.  Multi-channel
 * subscribers and long-polls carry subscriber-specific ids and are
 * formatted one by one.
 *
 * A socket's I/O goes through hub_io_send, hub_io_recv and hub_io_shutdown:
 * plain sends and receives, or, for a TLS subscriber, its session
 * (comet_tls.h).  Unsent bytes are plaintext either way, so
 * max_pending counts plaintext; after a short TLS write the queue keeps
 * its bytes in order (moving is allowed, dropping or reordering is not:
 * the session has encrypted a record of them already), and a subscriber
 * past the bound is dropped, never its bytes.  A TLS stream ends with its
 * last bytes, then close_notify, then the close.
 *
 * Timers: all subscribers with the same keepalive (or long-poll timeout)
 * share one FIFO queue; since the interval is the same, the queue is in
 * deadline order, and one loop timer per queue (at its head) is enough for
 * any number of subscribers.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <apr_atomic.h>
#include <apr_strings.h>
#include <apr_thread_mutex.h>

#include "comet_hub.h"
#include "comet_frame.h"
#include "comet_render.h"
#include "comet_loop.h"
#include "comet_tls.h"

/* How much one store read may bring for one channel before the hub turns
 * to other work. */
#define HUB_READ_MSGS       256
#define HUB_READ_BYTES      (1024 * 1024)
#define HUB_DRAIN_BATCH     1024
#define HUB_LINGER          apr_time_from_sec(5)
#define HUB_MAINTAIN_EVERY  apr_time_from_sec(1)

/* sub->flags */
#define SUB_MULTI     0x01   /* several channels                           */
#define SUB_CHUNKED   0x02   /* our frames are HTTP chunks                 */
#define SUB_ENDING    0x04   /* last bytes queued; close once they are out */
#define SUB_WANTWRITE 0x08   /* WRITE interest set                         */
#define SUB_CANCEL    0x10   /* cancel requested (set under hub->mu)       */
#define SUB_LINKED    0x20   /* adopted on the hub thread                  */

typedef struct hub_chan_t hub_chan_t;
typedef struct hub_member_t hub_member_t;
typedef struct hub_tq_t hub_tq_t;

struct hub_member_t {
    comet_hub_sub_t *sub;
    hub_chan_t      *chan;
    hub_member_t    *prev, *next;
    apr_uint64_t     seq;
};

struct comet_hub_sub_t {
    comet_loop_io_t  io;            /* io.fd is the socket (-1: sink)    */
    comet_hub_t     *hub;
    const comet_hub_sink_t *sink;
    void            *sink_baton;
    struct ssl_st   *ssl;           /* io.fd's TLS session, or NULL      */
    char            *pend;          /* unsent bytes [pend_off, pend_len) */
    apr_uint32_t     pend_len, pend_off;
    comet_hub_sub_t *tprev, *tnext; /* in tq                             */
    hub_tq_t        *tq;
    apr_time_t       deadline;
    unsigned char    transport;
    unsigned char    flags;
    unsigned short   nchan;
    apr_uint32_t     tag;           /* for cfg.on_end (fits the padding) */
    hub_member_t     m[];
};

struct hub_chan_t {
    comet_chanref_t  ref;
    hub_chan_t      *hnext;         /* hash chain                        */
    hub_member_t    *head;
    apr_uint32_t     members;
    apr_uint64_t     seq;
    int              busy;          /* delivering: free later            */
    apr_size_t       id_len;
    char             id[];
};

/* A subscriber waiting to be linked by the hub thread, with the channel
 * ids it came with (needed only to create hub_chan_t records). */
typedef struct hub_handoff_t {
    struct hub_handoff_t *next;
    comet_hub_sub_t      *sub;
    comet_chanref_t      *refs;
    apr_size_t           *id_lens;
    char                **ids;
} hub_handoff_t;

/* The kinds of timer queue. */
#define TQ_KEEPALIVE 1
#define TQ_TIMEOUT   2
#define TQ_LINGER    3

struct hub_tq_t {
    hub_tq_t        *next;
    comet_hub_t     *hub;
    int              kind;
    apr_time_t       interval;
    comet_hub_sub_t *head, *tail;
    comet_timer_t    timer;
};

/* A shared batch: the frames of one read, formatted once. */
typedef struct hub_batch_t {
    int           built;
    comet_buf_t  *buf;
    apr_size_t   *offs;      /* start of message i; offs[n] = end          */
    apr_size_t    missed_end;/* the missed notice is [0, missed_end)       */
} hub_batch_t;

struct comet_hub_t {
    comet_hub_config_t cfg;
    apr_pool_t      *pool;
    apr_pool_t      *scratch;       /* cleared after each delivery        */
    comet_loop_t    *loop;
    comet_loop_io_t  wake_io;
    comet_timer_t    maintain;
    apr_uint32_t     epoch;

    apr_thread_mutex_t *mu;         /* guards the fields below, to tasks_closed */
    hub_handoff_t   *handoff, *handoff_tail;
    comet_hub_sub_t **cancels;
    apr_size_t       ncancels, cancels_cap;
    int              stopping;
    comet_hub_task_t *tasks, *tasks_tail;
    int              tasks_closed;  /* the thread is done: posts refused  */
    int              loop_done;     /* hub thread only: the loop has ended */

    hub_chan_t     **table;
    apr_size_t       table_size;    /* power of two                       */
    apr_size_t       nchans;
    hub_tq_t        *tqs;

    comet_buf_t     *out;           /* per-subscriber formatting          */
    comet_buf_t     *bbuf[4];       /* shared batches: sse/nd x chunked   */
    apr_size_t      *boffs;         /* 4 x (HUB_READ_MSGS + 1) offsets    */

    volatile apr_uint32_t count;
    volatile apr_uint32_t by_transport[3];
    volatile apr_uint32_t detached, tls;
    volatile apr_uint64_t adopted, deliveries, wakeups, dropped_slow,
                          closed_by_client;
};

/* ---- small helpers --------------------------------------------------------- */

static int tindex(int transport)
{
    return transport == COMET_T_SSE ? 0
           : transport == COMET_T_LONGPOLL ? 1 : 2;
}

static void stat_add(volatile apr_uint64_t *v, apr_uint64_t n)
{
    __atomic_add_fetch(v, n, __ATOMIC_RELAXED);
}

/* ---- channel table ------------------------------------------------------------- */

static hub_chan_t *chan_find(comet_hub_t *hub, const comet_chanref_t *ref)
{
    hub_chan_t *c = hub->table[ref->index & (hub->table_size - 1)];

    while (c && !(c->ref.index == ref->index && c->ref.gen == ref->gen)) {
        c = c->hnext;
    }
    return c;
}

static void table_grow(comet_hub_t *hub)
{
    apr_size_t nsize = hub->table_size * 2;
    hub_chan_t **nt = calloc(nsize, sizeof(*nt));

    if (!nt) {
        return;           /* longer chains, still correct */
    }
    for (apr_size_t i = 0; i < hub->table_size; i++) {
        hub_chan_t *c = hub->table[i], *next;

        for (; c; c = next) {
            next = c->hnext;
            c->hnext = nt[c->ref.index & (nsize - 1)];
            nt[c->ref.index & (nsize - 1)] = c;
        }
    }
    free(hub->table);
    hub->table = nt;
    hub->table_size = nsize;
}

static hub_chan_t *chan_get(comet_hub_t *hub, const comet_chanref_t *ref,
                            const char *id, apr_size_t id_len,
                            apr_uint64_t seq)
{
    hub_chan_t *c = chan_find(hub, ref);
    apr_size_t b;

    if (c) {
        return c;
    }
    if (!(c = calloc(1, sizeof(*c) + id_len + 1))) {
        return NULL;
    }
    c->ref = *ref;
    c->seq = seq;
    c->id_len = id_len;
    memcpy(c->id, id, id_len);
    if (hub->nchans >= hub->table_size) {
        table_grow(hub);
    }
    b = ref->index & (hub->table_size - 1);
    c->hnext = hub->table[b];
    hub->table[b] = c;
    hub->nchans++;
    return c;
}

static void chan_release(comet_hub_t *hub, hub_chan_t *c)
{
    hub_chan_t **pp;

    if (c->members || c->busy) {
        return;
    }
    for (pp = &hub->table[c->ref.index & (hub->table_size - 1)]; *pp;
         pp = &(*pp)->hnext) {
        if (*pp == c) {
            *pp = c->hnext;
            break;
        }
    }
    hub->nchans--;
    free(c);
}

/* ---- timer queues ------------------------------------------------------------- */

static void tq_fire(comet_loop_t *loop, comet_timer_t *timer, void *baton);

static hub_tq_t *tq_get(comet_hub_t *hub, int kind, apr_time_t interval)
{
    hub_tq_t *q;

    for (q = hub->tqs; q; q = q->next) {
        if (q->kind == kind && q->interval == interval) {
            return q;
        }
    }
    q = apr_pcalloc(hub->pool, sizeof(*q));
    q->hub = hub;
    q->kind = kind;
    q->interval = interval;
    comet_timer_init(&q->timer, tq_fire, q);
    q->next = hub->tqs;
    hub->tqs = q;
    return q;
}

static void tq_remove(comet_hub_sub_t *s)
{
    hub_tq_t *q = s->tq;

    if (!q) {
        return;
    }
    if (s->tprev) {
        s->tprev->tnext = s->tnext;
    }
    else {
        q->head = s->tnext;
    }
    if (s->tnext) {
        s->tnext->tprev = s->tprev;
    }
    else {
        q->tail = s->tprev;
    }
    s->tprev = s->tnext = NULL;
    s->tq = NULL;
    if (!q->head) {
        comet_timer_cancel(q->hub->loop, &q->timer);
    }
}

/* Append with deadline; the queue stays in deadline order because every
 * member of it has the same interval. */
static void tq_push(hub_tq_t *q, comet_hub_sub_t *s, apr_time_t deadline)
{
    s->deadline = deadline;
    s->tq = q;
    s->tnext = NULL;
    s->tprev = q->tail;
    if (q->tail) {
        q->tail->tnext = s;
    }
    else {
        q->head = s;
        comet_timer_arm(q->hub->loop, &q->timer, deadline);
    }
    q->tail = s;
}

/* ---- ending subscribers ---------------------------------------------------------- */

static void sub_free(comet_hub_t *hub, comet_hub_sub_t *s)
{
    apr_time_t now = comet_now_mono();

    for (unsigned i = 0; i < s->nchan; i++) {
        hub_member_t *m = &s->m[i];
        hub_chan_t *c = m->chan;

        if (!c) {
            continue;
        }
        if (m->prev) {
            m->prev->next = m->next;
        }
        else {
            c->head = m->next;
        }
        if (m->next) {
            m->next->prev = m->prev;
        }
        c->members--;
        comet_store_unsubscribe(hub->cfg.store, hub->cfg.slot, &c->ref, now);
        chan_release(hub, c);
        m->chan = NULL;
    }
    if (s->tag && hub->cfg.on_end) {
        hub->cfg.on_end(hub->cfg.on_end_baton, s->tag);
        s->tag = 0;
    }
    tq_remove(s);
    if (s->io.fd >= 0) {
        comet_loop_io_remove(hub->loop, &s->io);
        close(s->io.fd);
        s->io.fd = -1;
    }
    if (s->ssl) {
        comet_tls_free(s->ssl);
        s->ssl = NULL;
        apr_atomic_dec32(&hub->tls);
    }
    if (!s->sink) {
        apr_atomic_dec32(&hub->detached);
    }
    else {
        /* close first: once it has returned, the sink's owner calls
         * comet_hub_cancel no more, so the purge below is final. */
        s->sink->close(s->sink_baton);
        apr_thread_mutex_lock(hub->mu);
        for (apr_size_t i = 0; i < hub->ncancels; i++) {
            if (hub->cancels[i] == s) {
                hub->cancels[i] = hub->cancels[--hub->ncancels];
                break;
            }
        }
        apr_thread_mutex_unlock(hub->mu);
    }
    free(s->pend);
    apr_atomic_dec32(&hub->count);
    apr_atomic_dec32(&hub->by_transport[tindex(s->transport)]);
    free(s);
}

static int sub_write(comet_hub_t *hub, comet_hub_sub_t *s, const char *data,
                     apr_size_t len, int last);

/* End a subscriber the orderly way: its stream's end, then close once the
 * bytes are out (or after HUB_LINGER). */
static int send_out(comet_hub_t *hub, comet_hub_sub_t *s, int end_chunked,
                    int last);

static int sub_end(comet_hub_t *hub, comet_hub_sub_t *s)
{
    char buf[64];
    comet_buf_t b;

    if (s->flags & SUB_ENDING) {
        return 1;
    }
    s->flags |= SUB_ENDING;
    if (s->transport == COMET_T_LONGPOLL) {
        /* A long-poll that ends without news answers with no messages and
         * the position the client already has. */
        const comet_read_t *none[1024];
        const char *ids[1024];
        apr_uint64_t seqs[1024];

        for (unsigned i = 0; i < s->nchan; i++) {
            seqs[i] = s->m[i].seq;
            none[i] = NULL;
            ids[i] = s->m[i].chan ? s->m[i].chan->id : "";
        }
        comet_buf_truncate(hub->out, 0);
        if (comet_render_poll(hub->out, hub->epoch, ids, seqs, s->nchan,
                              none, 0) != APR_SUCCESS) {
            sub_free(hub, s);
            return 0;
        }
        return send_out(hub, s, !!(s->flags & SUB_CHUNKED), 1);
    }
    comet_buf_wrap(&b, buf, sizeof(buf));
    if (s->flags & SUB_CHUNKED) {
        comet_frame_chunk_last(&b);
    }
    return sub_write(hub, s, b.data, b.len, 1);
}

/* ---- a socket's I/O: plain, or through its TLS session ------------------------------ */

/* Send what the socket takes now: the count (0 when it is full), or -1
 * when the connection is gone. */
static apr_ssize_t hub_io_send(comet_hub_sub_t *s, const char *data,
                               apr_size_t len)
{
    ssize_t n;

    if (s->ssl) {
        apr_size_t done = 0;

        return comet_tls_write(s->ssl, data, len, &done) == APR_SUCCESS
               ? (apr_ssize_t)done : -1;
    }
    n = send(s->io.fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR
               ? 0 : -1;
    }
    return n;
}

/* The socket is readable: a subscriber has nothing to say after its
 * request, so what comes is dropped (bounded by its arrival).  1: still
 * there; 0: the client ended the connection (EOF, close_notify); -1:
 * failed.  *write_first: a TLS session must write before it can read on
 * (a key update's answer): call again when the socket is writable. */
static int hub_io_recv(comet_hub_sub_t *s, int *write_first)
{
    char junk[512];
    ssize_t n;

    *write_first = 0;
    if (s->ssl) {
        switch (comet_tls_read(s->ssl, NULL)) {
        case APR_SUCCESS:
            return 1;
        case APR_EAGAIN:
            *write_first = 1;
            return 1;
        case APR_EOF:
            return 0;
        default:
            return -1;
        }
    }
    n = recv(s->io.fd, junk, sizeof(junk), MSG_DONTWAIT);
    if (n == 0) {
        return 0;
    }
    return n > 0 || errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR
           ? 1 : -1;
}

/* After the stream's last bytes: 1 when the connection may be closed
 * now, 0 when the socket must become writable first (TLS close_notify
 * still to go). */
static int hub_io_shutdown(comet_hub_sub_t *s)
{
    return !s->ssl || comet_tls_shutdown(s->ssl) != APR_EAGAIN;
}

/* ---- writing ------------------------------------------------------------------------ */

static void sub_io(comet_loop_t *loop, int fd, int events, void *baton);

static void sub_want_write(comet_hub_t *hub, comet_hub_sub_t *s, int on)
{
    if (!!(s->flags & SUB_WANTWRITE) != !!on) {
        s->flags ^= SUB_WANTWRITE;
        comet_loop_io_modify(hub->loop, &s->io, COMET_LOOP_READ
                             | (on ? COMET_LOOP_WRITE : 0));
    }
}

/* The stream's bytes are all out and it ends: close, once a TLS session
 * has sent its close_notify (bounded by the linger timer).  Returns 1
 * when the subscriber still exists afterwards. */
static int sub_close(comet_hub_t *hub, comet_hub_sub_t *s)
{
    if (!hub_io_shutdown(s)) {
        if (!s->tq || s->tq->kind != TQ_LINGER) {
            tq_remove(s);
            tq_push(tq_get(hub, TQ_LINGER, HUB_LINGER), s,
                    comet_now_mono() + HUB_LINGER);
        }
        sub_want_write(hub, s, 1);
        return 1;
    }
    sub_free(hub, s);
    return 0;
}

/* Returns 1 when the subscriber still exists afterwards, 0 when it was
 * freed (callers must not touch it then). */
static int sub_write(comet_hub_t *hub, comet_hub_sub_t *s, const char *data,
                     apr_size_t len, int last)
{
    if (s->sink) {
        if (s->sink->write(s->sink_baton, data, len, last) != APR_SUCCESS) {
            stat_add(&hub->dropped_slow, 1);
            sub_free(hub, s);
            return 0;
        }
        if (last) {
            sub_free(hub, s);
            return 0;
        }
        return 1;
    }
    if (!s->pend_len && len) {
        apr_ssize_t n = hub_io_send(s, data, len);

        if (n < 0) {
            stat_add(&hub->closed_by_client, 1);
            sub_free(hub, s);
            return 0;
        }
        if (n > 0) {
            data += n;
            len -= (apr_size_t)n;
        }
    }
    if (len) {
        apr_size_t left = s->pend_len - s->pend_off;
        char *np;

        if (left + len > hub->cfg.max_pending) {
            /* A client that does not read is dropped; it reconnects and
             * resumes from its last id. */
            comet_log(COMET_LOG_INFO, APR_SUCCESS, "channel=%s: subscriber "
                      "dropped, %" APR_SIZE_T_FMT " bytes unsent",
                      s->m[0].chan ? s->m[0].chan->id : "?", left + len);
            stat_add(&hub->dropped_slow, 1);
            sub_free(hub, s);
            return 0;
        }
        if (s->pend_off) {
            memmove(s->pend, s->pend + s->pend_off, left);
            s->pend_len = (apr_uint32_t)left;
            s->pend_off = 0;
        }
        if (!(np = realloc(s->pend, left + len))) {
            sub_free(hub, s);
            return 0;
        }
        s->pend = np;
        memcpy(s->pend + left, data, len);
        s->pend_len = (apr_uint32_t)(left + len);
        sub_want_write(hub, s, 1);
    }
    if (last) {
        if (s->pend_len) {
            /* Give the tail a bounded time to leave. */
            tq_remove(s);
            tq_push(tq_get(hub, TQ_LINGER, HUB_LINGER), s,
                    comet_now_mono() + HUB_LINGER);
            return 1;
        }
        return sub_close(hub, s);
    }
    return 1;
}

/* Returns 1 when the subscriber still exists afterwards. */
static int sub_flush(comet_hub_t *hub, comet_hub_sub_t *s)
{
    while (s->pend_off < s->pend_len) {
        apr_ssize_t n = hub_io_send(s, s->pend + s->pend_off,
                                    s->pend_len - s->pend_off);

        if (n < 0) {
            stat_add(&hub->closed_by_client, 1);
            sub_free(hub, s);
            return 0;
        }
        if (n == 0) {
            return 1;
        }
        s->pend_off += (apr_uint32_t)n;
    }
    free(s->pend);
    s->pend = NULL;
    s->pend_len = s->pend_off = 0;
    if (s->flags & SUB_ENDING) {
        return sub_close(hub, s);
    }
    sub_want_write(hub, s, 0);
    return 1;
}

static void sub_io(comet_loop_t *loop, int fd, int events, void *baton)
{
    comet_hub_sub_t *s = baton;
    comet_hub_t *hub = s->hub;
    int write_first = 0, ending = s->flags & SUB_ENDING;

    /* A TLS session that had to write before reading on reads again once
     * it could (a WRITE with nothing queued and no end to send). */
    if ((events & COMET_LOOP_READ)
        || (s->ssl && (events & COMET_LOOP_WRITE) && !s->pend_len
            && !ending)) {
        int rc = hub_io_recv(s, &write_first);

        if (rc <= 0) {
            stat_add(&hub->closed_by_client, 1);
            /* A TLS client's close_notify is answered, if it fits. */
            if (rc == 0 && s->ssl && !s->pend_len) {
                hub_io_shutdown(s);
            }
            sub_free(hub, s);
            return;
        }
    }
    if (events & (COMET_LOOP_HUP | COMET_LOOP_ERROR)) {
        stat_add(&hub->closed_by_client, 1);
        sub_free(hub, s);
        return;
    }
    if ((events & COMET_LOOP_WRITE) || s->ssl) {
        if (s->pend_len) {
            if (!sub_flush(hub, s)) {
                return;
            }
        }
        else if (ending && s->ssl) {
            /* close_notify is still to go */
            if (!sub_close(hub, s)) {
                return;
            }
        }
        else if (!write_first) {
            sub_want_write(hub, s, 0);
        }
    }
    if (write_first) {
        sub_want_write(hub, s, 1);
    }
}

/* ---- delivery ---------------------------------------------------------------------- */

static void batch_build(comet_hub_t *hub, hub_batch_t *b, int transport,
                        int chunked, hub_chan_t *c, const comet_read_t *rd)
{
    const char *ids[1];
    apr_uint64_t seq = c->seq;
    int n = rd->msgs->nelts;

    b->built = 1;
    b->buf = hub->bbuf[(transport == COMET_T_SSE ? 0 : 2) + !!chunked];
    comet_buf_truncate(b->buf, 0);
    /* Every read brings at most HUB_READ_MSGS messages: each shape has
     * its fixed share of the array made at creation. */
    b->offs = hub->boffs + (((transport == COMET_T_SSE ? 0 : 2) + !!chunked)
                            * (HUB_READ_MSGS + 1));
    ids[0] = c->id;
    if (rd->missed) {
        comet_render_notice(b->buf, transport, chunked, 0, c->id);
    }
    b->missed_end = b->buf->len;
    for (int i = 0; i < n; i++) {
        const comet_msg_t *m = &APR_ARRAY_IDX(rd->msgs, i, comet_msg_t);

        b->offs[i] = b->buf->len;
        seq = m->id.seq;
        if (comet_render_msg(b->buf, transport, chunked, hub->epoch, ids,
                             &seq, 1, 0, m, hub->scratch) != APR_SUCCESS) {
            /* Too large for the batch buffer: leave the rest out; the
             * subscribers get them one by one from the next read. */
            n = i;
            break;
        }
    }
    b->offs[n] = b->buf->len;
}

/* Wrap hub->out (one whole document or frame run) for s and send it. */
static int send_out(comet_hub_t *hub, comet_hub_sub_t *s, int end_chunked,
                    int last)
{
    comet_buf_t *cb = hub->bbuf[3];
    apr_size_t mark;

    if (!end_chunked) {
        return sub_write(hub, s, hub->out->data, hub->out->len, last);
    }
    comet_buf_truncate(cb, 0);
    if (comet_frame_chunk_begin(cb, &mark) != APR_SUCCESS
        || comet_buf_append(cb, hub->out->data, hub->out->len) != APR_SUCCESS
        || comet_frame_chunk_end(cb, mark) != APR_SUCCESS
        || comet_frame_chunk_last(cb) != APR_SUCCESS) {
        sub_free(hub, s);
        return 0;
    }
    return sub_write(hub, s, cb->data, cb->len, last);
}

/* Deliver a read of channel c to one member.  Returns 1 when the
 * subscriber still exists afterwards. */
static int deliver_member(comet_hub_t *hub, hub_chan_t *c, hub_member_t *m,
                          const comet_read_t *rd, hub_batch_t *batches)
{
    comet_hub_sub_t *s = m->sub;
    int n = rd->msgs->nelts, k = 0, chunked = !!(s->flags & SUB_CHUNKED);
    int missed = rd->missed && m->seq <= c->seq;
    const char *ids[1024];
    apr_uint64_t seqs[1024];
    comet_read_t mine;

    if (s->flags & SUB_ENDING) {
        return 1;
    }
    while (k < n && APR_ARRAY_IDX(rd->msgs, k, comet_msg_t).id.seq <= m->seq) {
        k++;
    }
    if (k == n && !missed && !rd->deleted) {
        return 1;
    }
    stat_add(&hub->deliveries, (apr_uint64_t)(n - k));

    if (s->nchan == 1 && s->transport != COMET_T_LONGPOLL) {
        hub_batch_t *b = &batches[(s->transport == COMET_T_SSE ? 0 : 2)
                                  + chunked];
        apr_size_t from;

        if (!b->built) {
            batch_build(hub, b, s->transport, chunked, c, rd);
        }
        from = missed ? 0 : b->offs[k];
        if (k < n) {
            m->seq = APR_ARRAY_IDX(rd->msgs, n - 1, comet_msg_t).id.seq;
        }
        if (b->offs[n] > from
            && !sub_write(hub, s, b->buf->data + from, b->offs[n] - from,
                          0)) {
            return 0;
        }
        if (rd->deleted) {
            char tail[1500];
            comet_buf_t tb;

            comet_buf_wrap(&tb, tail, sizeof(tail));
            comet_render_notice(&tb, s->transport, chunked, 1, c->id);
            if (chunked) {
                comet_frame_chunk_last(&tb);
            }
            s->flags |= SUB_ENDING;
            return sub_write(hub, s, tb.data, tb.len, 1);
        }
        return 1;
    }

    /* Subscriber-specific: ids that name all its channels. */
    mine = *rd;
    mine.missed = missed;
    for (unsigned i = 0; i < s->nchan; i++) {
        ids[i] = s->m[i].chan ? s->m[i].chan->id : "";
        seqs[i] = s->m[i].seq;
    }
    comet_buf_truncate(hub->out, 0);
    if (s->transport == COMET_T_LONGPOLL) {
        const comet_read_t *reads[1024];

        for (unsigned i = 0; i < s->nchan; i++) {
            reads[i] = &s->m[i] == m ? &mine : NULL;
        }
        if (comet_render_poll(hub->out, hub->epoch, ids, seqs, s->nchan,
                              reads, missed) != APR_SUCCESS) {
            sub_free(hub, s);
            return 0;
        }
        for (unsigned i = 0; i < s->nchan; i++) {
            s->m[i].seq = seqs[i];
        }
        s->flags |= SUB_ENDING;
        return send_out(hub, s, chunked, 1);
    }
    else {
        apr_size_t ci = (apr_size_t)(m - s->m);

        if (comet_render_stream(hub->out, s->transport, chunked,
                                hub->epoch, ids, seqs, s->nchan, ci,
                                &mine, hub->scratch) != APR_SUCCESS) {
            sub_free(hub, s);
            return 0;
        }
        m->seq = seqs[ci];
        if (rd->deleted) {
            if (chunked) {
                comet_frame_chunk_last(hub->out);
            }
            s->flags |= SUB_ENDING;
            return sub_write(hub, s, hub->out->data, hub->out->len, 1);
        }
        return sub_write(hub, s, hub->out->data, hub->out->len, 0);
    }
}

/* Read what is new in c and hand it to every member. */
static void deliver_chan(comet_hub_t *hub, hub_chan_t *c)
{
    int rounds = 0;

    c->busy++;
    while (c->head && rounds++ < 64) {
        comet_read_t rd;
        comet_msgid_t after;
        hub_batch_t batches[4];
        hub_member_t *m, *next;
        apr_status_t rv;

        after.epoch = hub->epoch;
        after.seq = c->seq;
        rv = comet_store_read(hub->cfg.store, &c->ref, after, HUB_READ_MSGS,
                              HUB_READ_BYTES, comet_now_mono(), hub->scratch,
                              &rd);
        if (rv != APR_SUCCESS) {
            break;
        }
        if (!rd.msgs->nelts && !rd.missed && !rd.deleted) {
            break;
        }
        memset(batches, 0, sizeof(batches));
        for (m = c->head; m; m = next) {
            /* Freeing m's subscriber never frees another member of c. */
            next = m->next;
            deliver_member(hub, c, m, &rd, batches);
        }
        if (rd.msgs->nelts) {
            c->seq = APR_ARRAY_IDX(rd.msgs, rd.msgs->nelts - 1,
                                   comet_msg_t).id.seq;
        }
        apr_pool_clear(hub->scratch);
        if (!rd.more || rd.deleted) {
            break;
        }
    }
    c->busy--;
    chan_release(hub, c);
}

/* Every channel with local members, as after a lost wakeup queue. */
static void deliver_all(comet_hub_t *hub)
{
    hub_chan_t **all;
    apr_size_t n = 0;

    if (!hub->nchans || !(all = malloc(sizeof(*all) * hub->nchans))) {
        return;
    }
    for (apr_size_t i = 0; i < hub->table_size; i++) {
        for (hub_chan_t *c = hub->table[i]; c; c = c->hnext) {
            c->busy++;
            all[n++] = c;
        }
    }
    for (apr_size_t i = 0; i < n; i++) {
        deliver_chan(hub, all[i]);
    }
    for (apr_size_t i = 0; i < n; i++) {
        all[i]->busy--;
        chan_release(hub, all[i]);
    }
    free(all);
}

/* The store queued channels of ours. */
static void wake_io(comet_loop_t *loop, int fd, int events, void *baton)
{
    comet_hub_t *hub = baton;
    comet_chanref_t refs[HUB_DRAIN_BATCH];
    apr_uint64_t v;
    apr_size_t n;
    int overflow = 0, lost = 0;

    /* Reset the counter before draining: a publish after the drain kicks
     * the eventfd again. */
    if (read(fd, &v, sizeof(v)) < 0 && errno != EAGAIN) {
        comet_log(COMET_LOG_WARNING, APR_FROM_OS_ERROR(errno),
                  "reading the wakeup eventfd");
    }
    stat_add(&hub->wakeups, 1);
    do {
        n = comet_store_proc_drain(hub->cfg.store, hub->cfg.slot, refs,
                                   HUB_DRAIN_BATCH, &overflow);
        lost |= overflow;
        for (apr_size_t i = 0; i < n && !lost; i++) {
            hub_chan_t *c = chan_find(hub, &refs[i]);

            if (c) {
                deliver_chan(hub, c);
            }
        }
    } while (n == HUB_DRAIN_BATCH);
    if (lost) {
        deliver_all(hub);
    }
}

static void tq_fire(comet_loop_t *loop, comet_timer_t *timer, void *baton)
{
    hub_tq_t *q = baton;
    comet_hub_t *hub = q->hub;
    apr_time_t now = comet_now_mono();
    comet_hub_sub_t *s;

    while ((s = q->head) && s->deadline <= now) {
        tq_remove(s);
        if (q->kind == TQ_LINGER) {
            sub_free(hub, s);
        }
        else if (q->kind == TQ_TIMEOUT) {
            sub_end(hub, s);
        }
        else {
            char buf[32];
            comet_buf_t b;
            apr_size_t mark = 0;
            int chunked = !!(s->flags & SUB_CHUNKED);

            comet_buf_wrap(&b, buf, sizeof(buf));
            if (chunked) {
                comet_frame_chunk_begin(&b, &mark);
            }
            if (s->transport == COMET_T_SSE) {
                comet_frame_sse_comment(&b, "", 0);
            }
            else {
                comet_frame_ndjson_keepalive(&b);
            }
            if (chunked) {
                comet_frame_chunk_end(&b, mark);
            }
            tq_push(q, s, now + q->interval);
            sub_write(hub, s, b.data, b.len, 0);
        }
    }
    if (q->head && !comet_timer_armed(&q->timer)) {
        comet_timer_arm(loop, &q->timer, q->head->deadline);
    }
}

static void maintain(comet_loop_t *loop, comet_timer_t *timer, void *baton)
{
    comet_hub_t *hub = baton;

    comet_store_proc_reap(hub->cfg.store);
    /* Reclaim idle channels a little at a time, and re-kick any process
     * whose wakeup a publisher died before sending. */
    comet_store_maintain(hub->cfg.store, comet_now_mono(), hub->cfg.wake,
                         hub->cfg.wake_baton);
    if (hub->cfg.tick) {
        hub->cfg.tick(hub, hub->cfg.tick_baton);
    }
    comet_timer_arm_in(loop, timer, HUB_MAINTAIN_EVERY);
}

/* On the hub thread: give a handed-over subscriber its channels, its
 * socket watcher and timer, and whatever was published meanwhile. */
static void link_sub(comet_hub_t *hub, hub_handoff_t *h)
{
    comet_hub_sub_t *s = h->sub;
    apr_time_t interval = s->deadline;
    unsigned i;

    s->deadline = 0;
    s->flags |= SUB_LINKED;
    for (i = 0; i < s->nchan; i++) {
        hub_member_t *m = &s->m[i];
        hub_chan_t *c = chan_get(hub, &h->refs[i], h->ids[i], h->id_lens[i],
                                 m->seq);

        if (!c) {
            apr_time_t now = comet_now_mono();

            for (unsigned j = i; j < s->nchan; j++) {
                comet_store_unsubscribe(hub->cfg.store, hub->cfg.slot,
                                        &h->refs[j], now);
            }
            if (s->io.fd >= 0) {
                close(s->io.fd);
                s->io.fd = -1;
            }
            sub_free(hub, s);
            return;
        }
        m->chan = c;
        m->prev = NULL;
        m->next = c->head;
        if (c->head) {
            c->head->prev = m;
        }
        c->head = m;
        c->members++;
    }
    if (s->io.fd >= 0) {
        int fd = s->io.fd, fl = fcntl(fd, F_GETFL);

        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
        if (hub->cfg.sndbuf > 0) {
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &hub->cfg.sndbuf,
                       sizeof(hub->cfg.sndbuf));
        }
        if (comet_loop_io_add(hub->loop, &s->io, fd, COMET_LOOP_READ, sub_io,
                              s) != APR_SUCCESS) {
            close(fd);
            s->io.fd = -1;
            sub_free(hub, s);
            return;
        }
        /* Bytes the session read before it was ours: no poll reports
         * them. */
        if (s->ssl && comet_tls_has_pending(s->ssl)) {
            int write_first;

            if (hub_io_recv(s, &write_first) <= 0) {
                stat_add(&hub->closed_by_client, 1);
                sub_free(hub, s);
                return;
            }
            if (write_first) {
                sub_want_write(hub, s, 1);
            }
        }
    }
    if (interval > 0) {
        tq_push(tq_get(hub, s->transport == COMET_T_LONGPOLL ? TQ_TIMEOUT
                                                            : TQ_KEEPALIVE,
                       interval), s, comet_now_mono() + interval);
    }
    /* Catch up: what was published between the handler's read and now. */
    for (i = 0; i < s->nchan; i++) {
        hub_member_t *m = &s->m[i];
        hub_chan_t *c = m->chan;
        comet_read_t rd;
        comet_msgid_t after;
        hub_batch_t batches[4];
        int alive;

        after.epoch = hub->epoch;
        after.seq = m->seq;
        if (comet_store_read(hub->cfg.store, &c->ref, after, HUB_READ_MSGS,
                             HUB_READ_BYTES, comet_now_mono(), hub->scratch,
                             &rd) != APR_SUCCESS) {
            continue;
        }
        /* The handler told the client of anything missed already. */
        rd.missed = 0;
        memset(batches, 0, sizeof(batches));
        c->busy++;
        alive = deliver_member(hub, c, m, &rd, batches);
        c->busy--;
        apr_pool_clear(hub->scratch);
        chan_release(hub, c);
        if (!alive || (s->flags & SUB_ENDING)) {
            return;
        }
    }
}

/* Run the tasks posted so far (those posted meanwhile come with the next
 * wakeup).  close_after: take turns until none is left, then refuse any
 * more (the end of comet_hub_run). */
static void run_tasks(comet_hub_t *hub, int close_after)
{
    comet_hub_task_t *t, *next;

    do {
        apr_thread_mutex_lock(hub->mu);
        t = hub->tasks;
        hub->tasks = hub->tasks_tail = NULL;
        if (!t && close_after) {
            hub->tasks_closed = 1;
        }
        apr_thread_mutex_unlock(hub->mu);
        for (; t; t = next) {
            /* The task may be posted again (or freed) by its fn. */
            next = t->next;
            t->next = NULL;
            t->fn(hub, t, hub->loop_done);
        }
    } while (close_after && !hub->tasks_closed);
}

static void on_wake(comet_loop_t *loop, void *baton)
{
    comet_hub_t *hub = baton;
    hub_handoff_t *h, *next;
    comet_hub_sub_t *cancel[256];
    apr_size_t ncancel = 0;

    apr_thread_mutex_lock(hub->mu);
    h = hub->handoff;
    hub->handoff = hub->handoff_tail = NULL;
    apr_thread_mutex_unlock(hub->mu);
    for (; h; h = next) {
        next = h->next;
        link_sub(hub, h);
        free(h);
    }
    /* Cancels are taken in bounded batches; sub_free purges a freed
     * subscriber from the list under the same lock, so every entry taken
     * here is alive. */
    for (;;) {
        apr_thread_mutex_lock(hub->mu);
        ncancel = hub->ncancels < 256 ? hub->ncancels : 256;
        hub->ncancels -= ncancel;
        memcpy(cancel, hub->cancels + hub->ncancels,
               ncancel * sizeof(*cancel));
        apr_thread_mutex_unlock(hub->mu);
        if (!ncancel) {
            break;
        }
        for (apr_size_t i = 0; i < ncancel; i++) {
            stat_add(&hub->closed_by_client, 1);
            sub_free(hub, cancel[i]);
        }
    }
    run_tasks(hub, 0);
}

/* ---- life ---------------------------------------------------------------------------- */

apr_status_t comet_hub_create(comet_hub_t **out, const comet_hub_config_t *cfg,
                              apr_pool_t *p)
{
    comet_hub_t *hub = apr_pcalloc(p, sizeof(*hub));
    apr_status_t rv;

    hub->cfg = *cfg;
    if (!hub->cfg.max_pending) {
        hub->cfg.max_pending = 1024 * 1024;
    }
    hub->pool = p;
    hub->epoch = comet_store_epoch(cfg->store);
    if ((rv = apr_pool_create(&hub->scratch, p)) != APR_SUCCESS
        || (rv = apr_thread_mutex_create(&hub->mu, APR_THREAD_MUTEX_DEFAULT,
                                         p)) != APR_SUCCESS
        || (rv = comet_loop_create(&hub->loop, 4096, p)) != APR_SUCCESS
        || (rv = comet_buf_create(&hub->out, p, 4096, 64 * 1024 * 1024))
           != APR_SUCCESS) {
        return rv;
    }
    for (int i = 0; i < 4; i++) {
        if ((rv = comet_buf_create(&hub->bbuf[i], p, 4096,
                                   64 * 1024 * 1024)) != APR_SUCCESS) {
            return rv;
        }
    }
    hub->table_size = 64;
    hub->table = calloc(hub->table_size, sizeof(*hub->table));
    hub->boffs = malloc(sizeof(*hub->boffs) * 4 * (HUB_READ_MSGS + 1));
    hub->cancels_cap = 64;
    hub->cancels = malloc(sizeof(*hub->cancels) * hub->cancels_cap);
    if (!hub->table || !hub->cancels || !hub->boffs) {
        return APR_ENOMEM;
    }
    comet_loop_on_wake(hub->loop, on_wake, hub);
    if (cfg->wake_fd >= 0
        && (rv = comet_loop_io_add(hub->loop, &hub->wake_io, cfg->wake_fd,
                                   COMET_LOOP_READ, wake_io, hub))
           != APR_SUCCESS) {
        return rv;
    }
    comet_timer_init(&hub->maintain, maintain, hub);
    comet_timer_arm_in(hub->loop, &hub->maintain, HUB_MAINTAIN_EVERY);
    *out = hub;
    return APR_SUCCESS;
}

apr_status_t comet_hub_run(comet_hub_t *hub)
{
    apr_status_t rv = comet_loop_run(hub->loop);
    hub_handoff_t *h, *next;

    hub->loop_done = 1;
    if (hub->cfg.on_stop) {
        hub->cfg.on_stop(hub, hub->cfg.on_stop_baton);
    }
    apr_thread_mutex_lock(hub->mu);
    hub->stopping = 1;
    h = hub->handoff;
    hub->handoff = hub->handoff_tail = NULL;
    apr_thread_mutex_unlock(hub->mu);
    /* Handed over but never linked: link, so that they end like the rest. */
    for (; h; h = next) {
        next = h->next;
        link_sub(hub, h);
        free(h);
    }
    on_wake(hub->loop, hub);
    /* End every stream (last chunk, empty long-poll answer), without
     * waiting for slow readers. */
    for (apr_size_t i = 0; i < hub->table_size; i++) {
        hub_chan_t *c;

        while ((c = hub->table[i]) != NULL) {
            comet_hub_sub_t *s = c->head->sub;

            if (sub_end(hub, s)) {
                sub_free(hub, s);
            }
        }
    }
    if (hub->cfg.wake_fd >= 0) {
        comet_loop_io_remove(hub->loop, &hub->wake_io);
    }
    comet_timer_cancel(hub->loop, &hub->maintain);
    /* Tasks posted up to now run; later posts are refused. */
    run_tasks(hub, 1);
    free(hub->table);
    hub->table = NULL;
    free(hub->cancels);
    hub->cancels = NULL;
    free(hub->boffs);
    hub->boffs = NULL;
    return rv;
}

void comet_hub_stop(comet_hub_t *hub)
{
    apr_thread_mutex_lock(hub->mu);
    hub->stopping = 1;
    apr_thread_mutex_unlock(hub->mu);
    comet_loop_stop(hub->loop);
}

void comet_hub_cancel(comet_hub_t *hub, comet_hub_sub_t *handle)
{
    apr_thread_mutex_lock(hub->mu);
    for (apr_size_t i = 0; i < hub->ncancels; i++) {
        if (hub->cancels[i] == handle) {
            apr_thread_mutex_unlock(hub->mu);
            return;
        }
    }
    if (hub->ncancels == hub->cancels_cap) {
        comet_hub_sub_t **n = realloc(hub->cancels, sizeof(*n)
                                      * hub->cancels_cap * 2);

        if (!n) {
            /* The keepalive or the client's own close ends it later. */
            apr_thread_mutex_unlock(hub->mu);
            return;
        }
        hub->cancels = n;
        hub->cancels_cap *= 2;
    }
    hub->cancels[hub->ncancels++] = handle;
    apr_thread_mutex_unlock(hub->mu);
    comet_loop_wake(hub->loop);
}

apr_status_t comet_hub_post(comet_hub_t *hub, comet_hub_task_t *task)
{
    apr_thread_mutex_lock(hub->mu);
    if (hub->tasks_closed) {
        apr_thread_mutex_unlock(hub->mu);
        return APR_EAGAIN;
    }
    task->next = NULL;
    if (hub->tasks_tail) {
        hub->tasks_tail->next = task;
    }
    else {
        hub->tasks = task;
    }
    hub->tasks_tail = task;
    /* Under the lock: once tasks_closed is set the loop may go. */
    comet_loop_wake(hub->loop);
    apr_thread_mutex_unlock(hub->mu);
    return APR_SUCCESS;
}

apr_uint32_t comet_hub_count(comet_hub_t *hub)
{
    return apr_atomic_read32(&hub->count);
}

void comet_hub_stats(comet_hub_t *hub, comet_hub_stats_t *out)
{
    out->subscribers = apr_atomic_read32(&hub->count);
    out->detached = apr_atomic_read32(&hub->detached);
    out->tls = apr_atomic_read32(&hub->tls);
    for (int i = 0; i < 3; i++) {
        out->by_transport[i] = apr_atomic_read32(&hub->by_transport[i]);
    }
    out->adopted = __atomic_load_n(&hub->adopted, __ATOMIC_RELAXED);
    out->deliveries = __atomic_load_n(&hub->deliveries, __ATOMIC_RELAXED);
    out->wakeups = __atomic_load_n(&hub->wakeups, __ATOMIC_RELAXED);
    out->dropped_slow = __atomic_load_n(&hub->dropped_slow, __ATOMIC_RELAXED);
    out->closed_by_client = __atomic_load_n(&hub->closed_by_client,
                                            __ATOMIC_RELAXED);
}

struct comet_loop_t *comet_hub_loop(comet_hub_t *hub)
{
    return hub->loop;
}

/* ---- adopting ---------------------------------------------------------------------- */

apr_status_t comet_hub_adopt(comet_hub_t *hub, const comet_hub_spec_t *spec,
                             comet_hub_sub_t **handle)
{
    comet_hub_sub_t *s;
    hub_handoff_t *h;
    apr_size_t idbytes = 0;
    char *p;

    if (!spec->nchan || spec->nchan > 1024
        || (spec->fd < 0 && !spec->sink)) {
        return APR_EINVAL;
    }
    for (apr_size_t i = 0; i < spec->nchan; i++) {
        idbytes += strlen(spec->ids[i]) + 1;
    }
    s = calloc(1, sizeof(*s) + spec->nchan * sizeof(hub_member_t));
    h = malloc(sizeof(*h) + spec->nchan * (sizeof(comet_chanref_t)
                                           + sizeof(char *)
                                           + sizeof(apr_size_t)) + idbytes);
    if (!s || !h) {
        free(s);
        free(h);
        return APR_ENOMEM;
    }
    s->hub = hub;
    s->io.fd = spec->fd;
    s->ssl = spec->fd >= 0 ? spec->ssl : NULL;
    s->sink = spec->fd < 0 ? spec->sink : NULL;
    s->sink_baton = spec->sink_baton;
    s->transport = (unsigned char)spec->transport;
    s->nchan = (unsigned short)spec->nchan;
    s->tag = spec->tag;
    s->flags = (spec->nchan > 1 ? SUB_MULTI : 0)
               | (spec->chunked ? SUB_CHUNKED : 0);
    s->deadline = spec->interval;     /* the period, until linked */
    h->sub = s;
    h->next = NULL;
    h->refs = (comet_chanref_t *)(h + 1);
    h->ids = (char **)(h->refs + spec->nchan);
    h->id_lens = (apr_size_t *)(h->ids + spec->nchan);
    p = (char *)(h->id_lens + spec->nchan);
    for (apr_size_t i = 0; i < spec->nchan; i++) {
        s->m[i].sub = s;
        s->m[i].seq = spec->seqs[i];
        h->refs[i] = spec->refs[i];
        h->id_lens[i] = strlen(spec->ids[i]);
        memcpy(p, spec->ids[i], h->id_lens[i] + 1);
        h->ids[i] = p;
        p += h->id_lens[i] + 1;
    }

    apr_thread_mutex_lock(hub->mu);
    if (hub->stopping || (hub->cfg.max_subscribers
                          && hub->count >= hub->cfg.max_subscribers)) {
        apr_thread_mutex_unlock(hub->mu);
        free(s);
        free(h);
        return APR_EAGAIN;
    }
    apr_atomic_inc32(&hub->count);
    apr_atomic_inc32(&hub->by_transport[tindex(s->transport)]);
    if (!s->sink) {
        apr_atomic_inc32(&hub->detached);
    }
    if (s->ssl) {
        apr_atomic_inc32(&hub->tls);
    }
    if (hub->handoff_tail) {
        hub->handoff_tail->next = h;
    }
    else {
        hub->handoff = h;
    }
    hub->handoff_tail = h;
    apr_thread_mutex_unlock(hub->mu);
    stat_add(&hub->adopted, 1);
    if (handle) {
        *handle = s;
    }
    comet_loop_wake(hub->loop);
    return APR_SUCCESS;
}
