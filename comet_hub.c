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
 *                 the id, the members, and chan->seq, the channel's shared
 *                 position: the newest id its shared batch has delivered.
 *   hub_member_t  one per (subscriber, channel): list links, the
 *                 subscriber's position in that channel (the last id
 *                 handed to its output), and whether it is catching up.
 *   comet_hub_sub_t  the subscriber: its socket watcher (or sink), its
 *                 unsent bytes (a chain of fixed-size chunks), its place
 *                 in a timer queue and in the refill queue, its members.
 *
 * The flow, all on the hub thread:
 *
 *   wake_io -> deliver_chan(c), once per channel the store queued: a read
 *     after chan->seq (at most HUB_READ_MSGS / HUB_READ_BYTES), each
 *     needed shape (SSE or ndjson, chunked or not) rendered once
 *     (batch_build: at most max_batch bytes, at least one message; the
 *     round is the fewest messages a built shape holds), then
 *     deliver_member for each member:
 *       in step (its position is chan->seq, or ahead of it and the read
 *       says nothing was lost): the part of the shared batch it has not
 *       seen; a subscriber to several channels or a long-poll is
 *       rendered on its own from the same read, because its ids are its
 *       own (at most max_batch; a long-poll answer at most max_pending);
 *       catching up: skipped, its own reads serve it.
 *     chan->seq advances to the round's last message.  A member given
 *     less than the round becomes one that catches up.
 *   sub_refill(s): while s has members catching up and all it was given
 *     has left: one read of its own after a member's position, rendered
 *     (at most max_batch), written; a member whose read reached the
 *     channel's newest message is in step again.  HUB_REFILL_READS per
 *     turn, then the ready queue (the next turn).  Run on adoption
 *     (link_sub), when unsent bytes have all left (sub_flush on EPOLLOUT;
 *     comet_hub_room from a sink), and from the ready queue.
 *   sub_write(s): the one way bytes reach a subscriber: the drop rule
 *     (more than max_pending unsent before the write), then the sink, or
 *     hub_io_send and the chunk chain for what the socket did not take.
 *   hub_io_send, hub_io_recv, hub_io_shutdown and sub_close_fd: the only
 *     code that touches a subscriber's socket: plain sends and receives,
 *     or, for a TLS subscriber, its session (comet_tls.h).  Unsent bytes
 *     are plaintext either way, so max_pending counts plaintext.  After a
 *     short TLS write the queue keeps its bytes in order and the retry
 *     presents at least a record's worth of them again (sub_flush gathers
 *     chunks for it: OpenSSL has encrypted a record of them already); a
 *     subscriber past the bound is dropped, never its bytes.  A TLS
 *     stream ends with its last bytes, then close_notify, then the close
 *     (sub_close).
 *
 * Transports differ in how they read, keep alive and end (hub_ops, one
 * entry per transport) and in the shape of their shared batch; SSE,
 * stream and long-poll read and drop what a client sends, a WebSocket
 * reads frames (the "WebSocket transport" section).
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
#include <sys/uio.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <apr_atomic.h>
#include <apr_strings.h>
#include <apr_thread_mutex.h>

#include "comet_hub.h"
#include "comet_frame.h"
#include "comet_json.h"
#include "comet_render.h"
#include "comet_loop.h"
#include "comet_tls.h"
#include "comet_ws.h"

/* How much one store read may bring for one channel before the hub turns
 * to other work. */
#define HUB_READ_MSGS       256
#define HUB_READ_BYTES      (1024 * 1024)
/* Shared reads of one channel per wakeup, and reads of a subscriber's own
 * per turn of the loop, before the hub turns to others. */
#define HUB_ROUNDS          64
#define HUB_REFILL_READS    8
#define HUB_NOTE_BATCH      256
#define HUB_DRAIN_BATCH     1024
#define HUB_LINGER          apr_time_from_sec(5)
/* A lingering close reads what the client still sends for this long. */
#define HUB_DRAIN           apr_time_from_sec(2)
/* A kept connection's next request head must fit in this many bytes to be
 * recognised as whole; a longer one is handed over as it is (httpd
 * answers it, 431 or 400). */
#define HUB_HEAD_PEEK       8192
#define HUB_MAINTAIN_EVERY  apr_time_from_sec(1)
#define HUB_DEFAULT_PENDING (1024 * 1024)
#define HUB_DEFAULT_BATCH   (256 * 1024)
/* Unsent output lives in chunks of HUB_CHUNK bytes (record included), from
 * a free list of at most HUB_SPARE_CHUNKS; what goes beyond it is freed.
 * Once HUB_TRIM_AFTER bytes were freed, the tick has the allocator give
 * its free pages back to the system: memory taken for slow readers comes
 * back when they are gone. */
#define HUB_CHUNK           (16 * 1024)
#define HUB_SPARE_CHUNKS    64
#define HUB_TRIM_AFTER      (4 * 1024 * 1024)
/* What a TLS retry must present again at least: one record's plaintext. */
#define HUB_TLS_RECORD      16384
/* A formatting buffer that grew past this is freed after use. */
#define HUB_BUF_KEEP        (1024 * 1024)
/* Formatting buffers are bounded by the frames they must hold (max_batch,
 * or one frame, which the configuration bounds), not here. */
#define HUB_BUF_MAX         (((apr_size_t)-1) / 4)
/* Shapes of a shared batch: SSE or ndjson, chunked or not, and
 * WebSocket (shape_of). */
#define HUB_SHAPES          5
/* WebSocket reading: one buffer for the hub (a TLS record's plaintext
 * fits), and how many of its fill one client may have per turn of the
 * loop before the others get theirs. */
#define HUB_RBUF_SIZE       (16 * 1024)
#define HUB_WS_READS        4

/* sub->flags */
#define SUB_MULTI     0x01   /* several channels                           */
#define SUB_CHUNKED   0x02   /* our frames are HTTP chunks                 */
#define SUB_ENDING    0x04   /* last bytes queued; close once they are out */
#define SUB_WANTWRITE 0x08   /* WRITE interest set                         */
#define SUB_LINKED    0x10   /* adopted on the hub thread                  */
#define SUB_WATCHED   0x20   /* its socket is in the loop                  */
#define SUB_READY     0x40   /* in the ready queue                         */
#define SUB_BEHIND    0x80   /* some member catches up                     */
#define SUB_DRAINED   0x100  /* WebSocket: our close is out, reading until
                                the client's (or the linger timer)         */
#define SUB_KEEP      0x200  /* long-poll: keep the connection after it    */
#define SUB_INPUT     0x400  /* SUB_KEEP: the client sent bytes (unread)   */
#define SUB_KEPT      0x800  /* kept: waits for the next request           */
#define SUB_DRAIN     0x1000 /* long-poll's lingering close: drops input
                                until EOF (never a WebSocket)              */
#define SUB_POLLWAIT  0x2000 /* long-poll: news came, waiting for more     */
#define SUB_ANSWER    0x4000 /* long-poll: the wait is over: answer        */

/* sub->noted, under hub->mu: what other threads asked for. */
#define NOTE_CANCEL   0x1
#define NOTE_ROOM     0x2

/* member->flags */
#define M_CATCHUP     0x1    /* served by reads of its own                 */
#define M_MISSED      0x2    /* its first read announces missed messages   */
#define M_FRESH       0x4    /* its first read: nothing the store dropped
                                before it is a loss (a backlog's start)    */
#define M_LATER       0x8    /* its position may be beyond what the store
                                holds yet (comet_hub_spec_t.later): it
                                waits until the store reaches it          */

typedef struct hub_chan_t hub_chan_t;
typedef struct hub_member_t hub_member_t;
typedef struct hub_tq_t hub_tq_t;
typedef struct hub_chunk_t hub_chunk_t;

struct hub_chunk_t {
    hub_chunk_t     *next;
    apr_uint32_t     off, len;      /* unsent: data[off, len)            */
    char             data[];
};

#define HUB_CHUNK_DATA  (HUB_CHUNK - sizeof(hub_chunk_t))

struct hub_member_t {
    comet_hub_sub_t *sub;
    hub_chan_t      *chan;
    hub_member_t    *prev, *next;
    apr_uint64_t     seq;
    unsigned         flags;         /* M_*                               */
};

struct comet_hub_sub_t {
    comet_loop_io_t  io;            /* io.fd is the socket (-1: sink)    */
    comet_hub_t     *hub;
    const comet_hub_sink_t *sink;
    void            *sink_baton;
    struct ssl_st   *ssl;           /* io.fd's TLS session, or NULL      */
    hub_chunk_t     *out_head, *out_tail;  /* socket: unsent bytes       */
    apr_size_t       unsent;        /* socket: in the chunks; sink: as it
                                       last said                         */
    comet_hub_sub_t *rprev, *rnext; /* in the ready queue                */
    comet_hub_sub_t *nprev, *nnext; /* in hub->notes, under hub->mu      */
    comet_hub_sub_t *tprev, *tnext; /* in tq                             */
    hub_tq_t        *tq;
    apr_time_t       deadline;
    unsigned short   flags;         /* SUB_*                             */
    unsigned char    transport;
    unsigned char    noted;         /* NOTE_*, under hub->mu             */
    unsigned short   nchan;
    unsigned short   cu;            /* the member to catch up next       */
    apr_uint32_t     tag;           /* for cfg.on_end                    */
    apr_uint32_t     head_len;      /* a long-poll's held-back head      */
    apr_uint32_t     served;        /* SUB_KEEP, SUB_KEPT: requests
                                       answered on the connection        */
    apr_uint32_t     linger_ms;     /* long-poll: wait for more news     */
    char            *head;          /* (after m[], in the same block)    */
    hub_member_t     m[];
    /* A WebSocket's hub_ws_t follows m[nchan] in the same allocation. */
};

struct hub_chan_t {
    comet_chanref_t  ref;
    hub_chan_t      *hnext;         /* hash chain                        */
    hub_member_t    *head;
    apr_uint32_t     members;
    apr_uint64_t     seq;
    int              busy;          /* delivering or queued: free later  */
    hub_chan_t      *qnext;         /* in hub->again                     */
    int              queued;
    apr_size_t       id_len;
    char             id[];
};

/* A subscriber waiting to be linked by the hub thread, with the channel
 * ids it came with (needed only to create hub_chan_t records) and, for a
 * WebSocket, the bytes its client sent past the handshake. */
typedef struct hub_handoff_t {
    struct hub_handoff_t *next;
    comet_hub_sub_t      *sub;
    comet_chanref_t      *refs;
    apr_size_t           *id_lens;
    char                **ids;
    char                 *preread;
    apr_size_t            preread_len;
} hub_handoff_t;

/* A WebSocket subscriber's state, after its members (sub_ws). */
typedef struct hub_ws_t {
    comet_ws_parser_t parser;
    apr_time_t   heard_at;      /* the client's last frame               */
    apr_time_t   ping_at;       /* our last ping; 0: none yet            */
    apr_time_t   bucket_at;     /* publish rate: last refill             */
    apr_uint32_t tokens;        /* ... thousandths of a publish          */
    apr_uint32_t rate, burst;
    unsigned char publish;
    unsigned char closing;      /* our close frame is queued             */
    unsigned char peer_closed;  /* the client's close frame came         */
    unsigned char shut;         /* our FIN (close_notify) is out         */
    unsigned char from_len;
    char         from[];
} hub_ws_t;

/* The kinds of timer queue. */
#define TQ_KEEPALIVE 1
#define TQ_TIMEOUT   2
#define TQ_LINGER    3
#define TQ_KEPT      4   /* kept, idle: cfg.keep_timeout                  */
#define TQ_HEAD      5   /* kept, part of a head came: cfg.head_timeout    */
#define TQ_DRAIN     6   /* lingering close: HUB_DRAIN                     */
#define TQ_POLLWAIT  7   /* long-poll with news, lingering: its linger_ms  */

struct hub_tq_t {
    hub_tq_t        *next;
    comet_hub_t     *hub;
    int              kind;
    apr_time_t       interval;
    comet_hub_sub_t *head, *tail;
    comet_timer_t    timer;
};

/* A shared batch: the frames of one read in one shape, formatted once.
 * It holds the first n messages of the read (fewer than the read when
 * max_batch was reached); the missed notice, when the read says so, is
 * [0, offs[0]). */
typedef struct hub_batch_t {
    int           built;
    int           n;
    comet_buf_t  *buf;
    apr_size_t   *offs;      /* start of message i; offs[n] = end          */
} hub_batch_t;

struct comet_hub_t {
    comet_hub_config_t cfg;
    apr_pool_t      *pool;
    apr_pool_t      *scratch;       /* cleared after each read's use      */
    comet_loop_t    *loop;
    comet_loop_io_t  wake_io;
    comet_timer_t    maintain;
    apr_uint32_t     epoch;

    /* mu guards the fields below, to tasks_closed, and each subscriber's
     * noted, nprev and nnext. */
    apr_thread_mutex_t *mu;
    hub_handoff_t   *handoff, *handoff_tail;
    comet_hub_sub_t *notes;         /* subscribers with noted set         */
    int              stopping;
    comet_hub_task_t *tasks, *tasks_tail;
    int              tasks_closed;  /* the thread is done: posts refused  */
    int              loop_done;     /* hub thread only: the loop has ended */

    hub_chan_t     **table;
    apr_size_t       table_size;    /* power of two                       */
    apr_size_t       nchans;
    hub_tq_t        *tqs;
    hub_chan_t      *again;         /* channels with more to deliver      */
    comet_hub_sub_t *ready, *ready_tail;  /* subscribers to refill        */
    apr_size_t       nready;

    comet_buf_t     *out;           /* one subscriber's frames            */
    comet_buf_t     *wrap;          /* a long-poll answer as a chunk      */
    comet_buf_t     *tmp;           /* a long-poll answer's messages      */
    comet_buf_t     *bbuf[HUB_SHAPES];  /* shared batches                 */
    apr_size_t      *boffs;         /* HUB_SHAPES x (HUB_READ_MSGS + 1)   */

    char            *tlsbuf;        /* HUB_TLS_RECORD: a retry gathered   */
    char            *rbuf;          /* WebSocket reads (HUB_RBUF_SIZE)    */
    hub_chunk_t     *spare;         /* free chunks                        */
    apr_size_t       nspare;
    apr_size_t       freed;         /* bytes freed since the last trim    */

    volatile apr_uint32_t count;
    volatile apr_uint32_t by_transport[4];
    volatile apr_uint32_t detached, tls;
    volatile apr_uint32_t kept;     /* kept and draining connections      */
    volatile apr_uint64_t adopted, deliveries, wakeups, dropped_slow,
                          closed_by_client, catchup_reads, ws_published,
                          ws_refused, ws_errors, ws_timeouts, kept_total,
                          handed_back;
};

/* ---- small helpers ------------------------------------------------------ */

static int tindex(int transport)
{
    return transport == COMET_T_SSE ? 0
           : transport == COMET_T_LONGPOLL ? 1
           : transport == COMET_T_STREAM ? 2 : 3;
}

static int shape_of(int transport, int chunked)
{
    if (transport == COMET_T_WS) {
        return 4;
    }
    return (transport == COMET_T_SSE ? 0 : 2) + !!chunked;
}

static hub_ws_t *sub_ws(comet_hub_sub_t *s)
{
    return (hub_ws_t *)(void *)(s->m + s->nchan);
}

static void stat_add(volatile apr_uint64_t *v, apr_uint64_t n)
{
    __atomic_add_fetch(v, n, __ATOMIC_RELAXED);
}

/* Messages of rd with a seq in (from, to]. */
static apr_uint64_t count_between(const comet_read_t *rd, apr_uint64_t from,
                                  apr_uint64_t to)
{
    apr_uint64_t n = 0;

    for (int i = 0; rd && i < rd->msgs->nelts; i++) {
        apr_uint64_t seq = APR_ARRAY_IDX(rd->msgs, i, comet_msg_t).id.seq;

        n += seq > from && seq <= to;
    }
    return n;
}

/* A formatting buffer that a large frame made big gives its memory back. */
static void buf_trim(comet_hub_t *hub, comet_buf_t *b)
{
    if (b->cap > HUB_BUF_KEEP) {
        hub->freed += b->cap;
        comet_buf_release(b);
    }
}

static void bufs_trim(comet_hub_t *hub)
{
    buf_trim(hub, hub->out);
    buf_trim(hub, hub->wrap);
    buf_trim(hub, hub->tmp);
    for (int i = 0; i < HUB_SHAPES; i++) {
        buf_trim(hub, hub->bbuf[i]);
    }
}

/* ---- channel table ------------------------------------------------------ */

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

/* The newest seq the store has for ref (0 when it cannot say): where a
 * new channel's shared batch starts. */
static apr_uint64_t store_newest(comet_hub_t *hub, const comet_chanref_t *ref)
{
    comet_read_t rd;
    comet_msgid_t after;

    after.epoch = hub->epoch;
    after.seq = ~(apr_uint64_t)0;
    if (comet_store_read(hub->cfg.store, ref, after, 1, 0, comet_now_mono(),
                         hub->scratch, &rd) != APR_SUCCESS) {
        return 0;
    }
    return rd.newest.seq;
}

static hub_chan_t *chan_get(comet_hub_t *hub, const comet_chanref_t *ref,
                            const char *id, apr_size_t id_len)
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
    /* Members join catching up: the shared batch starts at what is new. */
    c->seq = store_newest(hub, ref);
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

/* ---- the ready queue and the notes of other threads --------------------- */

/* Have s refilled in a coming turn of the loop.  Hub thread. */
static void ready_push(comet_hub_t *hub, comet_hub_sub_t *s)
{
    if (s->flags & SUB_READY) {
        return;
    }
    s->flags |= SUB_READY;
    s->rnext = NULL;
    s->rprev = hub->ready_tail;
    if (hub->ready_tail) {
        hub->ready_tail->rnext = s;
    }
    else {
        hub->ready = s;
    }
    hub->ready_tail = s;
    hub->nready++;
    /* on_wake runs the queue. */
    comet_loop_wake(hub->loop);
}

static void ready_remove(comet_hub_t *hub, comet_hub_sub_t *s)
{
    if (!(s->flags & SUB_READY)) {
        return;
    }
    if (s->rprev) {
        s->rprev->rnext = s->rnext;
    }
    else {
        hub->ready = s->rnext;
    }
    if (s->rnext) {
        s->rnext->rprev = s->rprev;
    }
    else {
        hub->ready_tail = s->rprev;
    }
    s->rprev = s->rnext = NULL;
    s->flags &= ~SUB_READY;
    hub->nready--;
}

/* Another thread asks something of s (NOTE_*).  Any thread, while s is
 * alive (a sink's owner: until its close callback has run). */
static void note(comet_hub_t *hub, comet_hub_sub_t *s, int what)
{
    apr_thread_mutex_lock(hub->mu);
    if ((s->noted & what) == what) {
        apr_thread_mutex_unlock(hub->mu);
        return;
    }
    if (!s->noted) {
        s->nprev = NULL;
        s->nnext = hub->notes;
        if (hub->notes) {
            hub->notes->nprev = s;
        }
        hub->notes = s;
    }
    s->noted |= (unsigned char)what;
    apr_thread_mutex_unlock(hub->mu);
    comet_loop_wake(hub->loop);
}

/* Under hub->mu. */
static void note_unlink(comet_hub_t *hub, comet_hub_sub_t *s)
{
    if (!s->noted) {
        return;
    }
    if (s->nprev) {
        s->nprev->nnext = s->nnext;
    }
    else {
        hub->notes = s->nnext;
    }
    if (s->nnext) {
        s->nnext->nprev = s->nprev;
    }
    s->nprev = s->nnext = NULL;
    s->noted = 0;
}

/* ---- unsent output: chunks ---------------------------------------------- */

static hub_chunk_t *chunk_get(comet_hub_t *hub)
{
    hub_chunk_t *ch = hub->spare;

    if (ch) {
        hub->spare = ch->next;
        hub->nspare--;
    }
    else if (!(ch = malloc(HUB_CHUNK))) {
        return NULL;
    }
    ch->next = NULL;
    ch->off = ch->len = 0;
    return ch;
}

static void chunk_put(comet_hub_t *hub, hub_chunk_t *ch)
{
    if (hub->nspare < HUB_SPARE_CHUNKS) {
        ch->next = hub->spare;
        hub->spare = ch;
        hub->nspare++;
        return;
    }
    free(ch);
    hub->freed += HUB_CHUNK;
}

static apr_status_t out_append(comet_hub_t *hub, comet_hub_sub_t *s,
                               const char *data, apr_size_t len)
{
    while (len) {
        hub_chunk_t *t = s->out_tail;
        apr_size_t n;

        if (!t || t->len == HUB_CHUNK_DATA) {
            if (!(t = chunk_get(hub))) {
                return APR_ENOMEM;
            }
            if (s->out_tail) {
                s->out_tail->next = t;
            }
            else {
                s->out_head = t;
            }
            s->out_tail = t;
        }
        n = HUB_CHUNK_DATA - t->len;
        if (n > len) {
            n = len;
        }
        memcpy(t->data + t->len, data, n);
        t->len += (apr_uint32_t)n;
        data += n;
        len -= n;
        s->unsent += n;
    }
    return APR_SUCCESS;
}

static void out_release(comet_hub_t *hub, comet_hub_sub_t *s)
{
    hub_chunk_t *ch, *next;

    for (ch = s->out_head; ch; ch = next) {
        next = ch->next;
        chunk_put(hub, ch);
    }
    s->out_head = s->out_tail = NULL;
    s->unsent = 0;
}

/* ---- the subscriber's socket: the only code that touches it ------------- */

/* Send what the socket takes now: the count (0 when it is full), or -1
 * when the connection is gone.  TLS: a short write must be followed by a
 * retry that starts with the same bytes and presents no fewer of them
 * (comet_tls_write). */
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

/* hub_io_send of a then b in one send, so that the client wakes once.
 * Plain sockets only (a long-poll's held-back head is never a TLS one's).
 */
static apr_ssize_t hub_io_send2(comet_hub_sub_t *s, const char *a,
                                apr_size_t alen, const char *b,
                                apr_size_t blen)
{
    struct iovec iov[2];
    struct msghdr mh;
    ssize_t n;

    memset(&mh, 0, sizeof(mh));
    iov[0].iov_base = (void *)a;
    iov[0].iov_len = alen;
    iov[1].iov_base = (void *)b;
    iov[1].iov_len = blen;
    mh.msg_iov = iov;
    mh.msg_iovlen = blen ? 2 : 1;
    n = sendmsg(s->io.fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR
               ? 0 : -1;
    }
    return n;
}

/* The socket is readable.  buf NULL: what comes is dropped (an HTTP
 * subscriber has nothing to say after its request; bounded by its
 * arrival); else up to cap bytes of it go to buf, *got says how many (0:
 * none now).  1: still there; 0: the client ended the connection (EOF,
 * close_notify); -1: failed.  *write_first: a TLS session must write
 * before it can read on (a key update's answer): call again when the
 * socket is writable. */
static int hub_io_recv(comet_hub_sub_t *s, char *buf, apr_size_t cap,
                       apr_size_t *got, int *write_first)
{
    char junk[512];
    ssize_t n;

    *write_first = 0;
    *got = 0;
    if (s->ssl) {
        switch (buf ? comet_tls_recv(s->ssl, buf, cap, got)
                    : comet_tls_read(s->ssl, NULL)) {
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
    n = buf ? recv(s->io.fd, buf, cap, MSG_DONTWAIT)
            : recv(s->io.fd, junk, sizeof(junk), MSG_DONTWAIT);
    if (n == 0) {
        return 0;
    }
    if (n > 0) {
        *got = (apr_size_t)n;
        return 1;
    }
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 1 : -1;
}

/* After the stream's last bytes: 1 when the connection may be closed
 * now, 0 when the socket must become writable first (TLS close_notify
 * still to go). */
static int hub_io_shutdown(comet_hub_sub_t *s)
{
    return !s->ssl || comet_tls_shutdown(s->ssl) != APR_EAGAIN;
}

/* Let the socket go (the watcher first: see comet_loop_io_remove). */
static void sub_close_fd(comet_hub_t *hub, comet_hub_sub_t *s)
{
    if (s->io.fd < 0) {
        return;
    }
    if (s->flags & SUB_WATCHED) {
        comet_loop_io_remove(hub->loop, &s->io);
        s->flags &= ~SUB_WATCHED;
    }
    close(s->io.fd);
    s->io.fd = -1;
}

/* ---- ending subscribers ------------------------------------------------- */

/* The subscriber's store subscriptions and channel memberships go. */
static void sub_release(comet_hub_t *hub, comet_hub_sub_t *s)
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
}

static void sub_free(comet_hub_t *hub, comet_hub_sub_t *s)
{
    if (s->flags & (SUB_KEPT | SUB_DRAIN)) {
        /* No longer a subscriber: a connection only. */
        tq_remove(s);
        sub_close_fd(hub, s);
        apr_atomic_dec32(&hub->kept);
        free(s);
        return;
    }
    sub_release(hub, s);
    tq_remove(s);
    ready_remove(hub, s);
    if (s->io.fd >= 0) {
        sub_close_fd(hub, s);
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
         * comet_hub_cancel and comet_hub_room no more, so the unlink
         * below is final.  What the sink held goes with it. */
        s->sink->close(s->sink_baton);
        hub->freed += s->unsent;
        apr_thread_mutex_lock(hub->mu);
        note_unlink(hub, s);
        apr_thread_mutex_unlock(hub->mu);
    }
    if (s->transport == COMET_T_WS) {
        comet_ws_parser_release(&sub_ws(s)->parser);
    }
    out_release(hub, s);
    apr_atomic_dec32(&hub->count);
    apr_atomic_dec32(&hub->by_transport[tindex(s->transport)]);
    free(s);
}

/* ---- transports --------------------------------------------------------- */

/* What differs between transports, besides the shape of their frames
 * (comet_render.h, shape_of). */
typedef struct hub_ops_t {
    /* The client's socket is readable (or a TLS session that had to
     * write first may read on).  1 while s lives; *write_first as for
     * hub_io_recv. */
    int  (*readable)(comet_hub_t *hub, comet_hub_sub_t *s, int *write_first);
    /* Its keepalive is due (s is queued for the next one already). */
    void (*keepalive)(comet_hub_t *hub, comet_hub_sub_t *s, apr_time_t now);
    /* End the stream the orderly way (its last bytes queued): at hub stop,
     * when a long-poll times out.  1 while s lives. */
    int  (*end)(comet_hub_t *hub, comet_hub_sub_t *s);
    /* Append what ends the stream after its last frame (a deleted
     * channel).  Marks s as ending. */
    void (*tail)(comet_hub_sub_t *s, comet_buf_t *b);
    /* The stream's last bytes have left: 1 while s lives (a TLS
     * close_notify still to go; a WebSocket waits for the client's
     * close). */
    int  (*done)(comet_hub_t *hub, comet_hub_sub_t *s);
} hub_ops_t;

static const hub_ops_t *ops_of(const comet_hub_sub_t *s);

/* ---- writing ------------------------------------------------------------ */

static void sub_io(comet_loop_t *loop, int fd, int events, void *baton);
static int sub_refill(comet_hub_t *hub, comet_hub_sub_t *s);
static void kept_io(comet_hub_t *hub, comet_hub_sub_t *s, int events);

/* What s holds unsent, as its sink says now (a socket's count is exact).
 * notify: ask the sink to call comet_hub_room once it is all gone. */
static apr_size_t sub_unsent(comet_hub_sub_t *s, int notify)
{
    apr_size_t held;

    if (s->sink && (s->unsent || notify)
        && s->sink->write(s->sink_baton, NULL, 0,
                          notify ? COMET_HUB_SINK_NOTIFY : 0, &held)
           == APR_SUCCESS) {
        s->unsent = held;
    }
    return s->unsent;
}

/* Whether all that s was given has left, so that it may be refilled; when
 * not, its drain calls sub_refill (EPOLLOUT is watched while chunks are
 * queued; a sink is asked for comet_hub_room). */
static int sub_room(comet_hub_t *hub, comet_hub_sub_t *s)
{
    if (s->sink) {
        return !s->unsent || !sub_unsent(s, 1);
    }
    return !s->out_head;
}

/* A member of s catches up: have s refilled now if it has room, else once
 * its output has drained. */
static void sub_behind(comet_hub_t *hub, comet_hub_sub_t *s)
{
    s->flags |= SUB_BEHIND;
    if (sub_room(hub, s)) {
        ready_push(hub, s);
    }
}

/* What the socket is watched for: input, unless the client of a
 * connection to keep has sent its next request (left unread for httpd:
 * watching it would report it again and again), and room while bytes
 * wait. */
static int sub_interest(const comet_hub_sub_t *s)
{
    return (s->flags & SUB_INPUT ? 0 : COMET_LOOP_READ)
           | (s->flags & SUB_WANTWRITE ? COMET_LOOP_WRITE : 0);
}

static void sub_want_write(comet_hub_t *hub, comet_hub_sub_t *s, int on)
{
    if (!!(s->flags & SUB_WANTWRITE) != !!on) {
        s->flags ^= SUB_WANTWRITE;
        comet_loop_io_modify(hub->loop, &s->io, sub_interest(s));
    }
}

static void sub_keep(comet_hub_t *hub, comet_hub_sub_t *s);

/* The stream's bytes are all out and it ends: close, once a TLS session
 * has sent its close_notify (bounded by the linger timer).  Returns 1
 * when the subscriber still exists afterwards. */
static int sub_close(comet_hub_t *hub, comet_hub_sub_t *s)
{
    if ((s->flags & SUB_KEEP) && !hub->loop_done && hub->cfg.handback
        && (!hub->cfg.max_kept
            || apr_atomic_read32(&hub->kept) < hub->cfg.max_kept)) {
        /* The subscriber ends; its record becomes the connection's. */
        sub_keep(hub, s);
        return 0;
    }
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

/* A long-poll's first bytes after its held-back head, in one send (the
 * client wakes once).  Advances *data and *len past what left; what the
 * socket did not take is queued, the head first.  APR_EOF: the client is
 * gone; another error: no memory. */
static apr_status_t sub_write_head(comet_hub_t *hub, comet_hub_sub_t *s,
                                   const char **data, apr_size_t *len)
{
    apr_size_t head_len = s->head_len;
    apr_ssize_t n;

    s->head_len = 0;
    n = hub_io_send2(s, s->head, head_len, *data, *len);
    if (n < 0) {
        stat_add(&hub->closed_by_client, 1);
        return APR_EOF;
    }
    if ((apr_size_t)n < head_len) {
        if (out_append(hub, s, s->head + n, head_len - (apr_size_t)n)
            != APR_SUCCESS) {
            return APR_ENOMEM;
        }
        sub_want_write(hub, s, 1);
        return APR_SUCCESS;
    }
    *data += (apr_size_t)n - head_len;
    *len -= (apr_size_t)n - head_len;
    return APR_SUCCESS;
}

/* The one way bytes reach a subscriber.  last: the stream ends after
 * them.  A subscriber that holds more than max_pending unsent bytes before
 * the write is dropped (it reconnects and resumes from its last id), so a
 * reader that keeps up is never dropped for the size of one write.
 * Returns 1 when the subscriber still exists afterwards, 0 when it was
 * freed (callers must not touch it then). */
static int sub_write(comet_hub_t *hub, comet_hub_sub_t *s, const char *data,
                     apr_size_t len, int last)
{
    if (s->unsent > hub->cfg.max_pending
        && sub_unsent(s, 0) > hub->cfg.max_pending) {
        comet_log(COMET_LOG_INFO, APR_SUCCESS, "channel=%s: subscriber "
                  "dropped, %" APR_SIZE_T_FMT " bytes unsent",
                  s->m[0].chan ? s->m[0].chan->id : "?", s->unsent);
        stat_add(&hub->dropped_slow, 1);
        sub_free(hub, s);
        return 0;
    }
    if (s->sink) {
        apr_size_t held = 0;
        int flags = (last ? COMET_HUB_SINK_LAST : 0)
                    | (s->flags & SUB_BEHIND ? COMET_HUB_SINK_NOTIFY : 0);
        apr_status_t rv = s->sink->write(s->sink_baton, data, len, flags,
                                         &held);

        if (rv != APR_SUCCESS) {
            stat_add(rv == APR_ENOSPC ? &hub->dropped_slow
                                      : &hub->closed_by_client, 1);
            sub_free(hub, s);
            return 0;
        }
        s->unsent = held;
        if (last) {
            sub_free(hub, s);
            return 0;
        }
        return 1;
    }
    if (s->head_len && sub_write_head(hub, s, &data, &len) != APR_SUCCESS) {
        sub_free(hub, s);
        return 0;
    }
    if (!s->out_head && len) {
        apr_ssize_t n = hub_io_send(s, data, len);

        if (n < 0) {
            stat_add(&hub->closed_by_client, 1);
            sub_free(hub, s);
            return 0;
        }
        data += n;
        len -= (apr_size_t)n;
    }
    if (len) {
        if (out_append(hub, s, data, len) != APR_SUCCESS) {
            sub_free(hub, s);
            return 0;
        }
        sub_want_write(hub, s, 1);
    }
    if (last) {
        if (s->out_head) {
            /* Give the tail a bounded time to leave. */
            tq_remove(s);
            tq_push(tq_get(hub, TQ_LINGER, HUB_LINGER), s,
                    comet_now_mono() + HUB_LINGER);
            return 1;
        }
        return ops_of(s)->done(hub, s);
    }
    return 1;
}

/* Drop the first n queued bytes (they have left). */
static void out_consume(comet_hub_t *hub, comet_hub_sub_t *s, apr_size_t n)
{
    while (n) {
        hub_chunk_t *ch = s->out_head;
        apr_size_t k = ch->len - ch->off;

        if (k > n) {
            k = n;
        }
        ch->off += (apr_uint32_t)k;
        s->unsent -= k;
        n -= k;
        if (ch->off == ch->len) {
            s->out_head = ch->next;
            if (!s->out_head) {
                s->out_tail = NULL;
            }
            chunk_put(hub, ch);
        }
    }
}

/* The socket has room: send what is queued; once all has left, refill a
 * subscriber that catches up, or close one that ends.  Returns 1 when the
 * subscriber still exists afterwards. */
static int sub_flush(comet_hub_t *hub, comet_hub_sub_t *s)
{
    hub_chunk_t *ch;

    while ((ch = s->out_head) != NULL) {
        const char *data = ch->data + ch->off;
        apr_size_t len = ch->len - ch->off;
        apr_ssize_t n;

        if (s->ssl && len < HUB_TLS_RECORD && ch->next) {
            /* A TLS retry presents at least the record it has encrypted
             * already: gather it from the chunks. */
            hub_chunk_t *c;

            len = 0;
            for (c = ch; c && len < HUB_TLS_RECORD; c = c->next) {
                apr_size_t k = c->len - c->off;

                if (k > HUB_TLS_RECORD - len) {
                    k = HUB_TLS_RECORD - len;
                }
                memcpy(hub->tlsbuf + len, c->data + c->off, k);
                len += k;
            }
            data = hub->tlsbuf;
        }
        n = hub_io_send(s, data, len);
        if (n < 0) {
            stat_add(&hub->closed_by_client, 1);
            sub_free(hub, s);
            return 0;
        }
        out_consume(hub, s, (apr_size_t)n);
        if ((apr_size_t)n < len) {
            return 1;
        }
    }
    if (s->flags & SUB_ENDING) {
        return ops_of(s)->done(hub, s);
    }
    sub_want_write(hub, s, 0);
    if (s->flags & SUB_BEHIND) {
        return sub_refill(hub, s);
    }
    return 1;
}

static int ws_shut_write(comet_hub_sub_t *s);

static void sub_io(comet_loop_t *loop, int fd, int events, void *baton)
{
    comet_hub_sub_t *s = baton;
    comet_hub_t *hub = s->hub;
    int write_first = 0, ending = s->flags & SUB_ENDING;

    if (s->flags & (SUB_KEPT | SUB_DRAIN)) {
        kept_io(hub, s, events);
        return;
    }
    if ((s->flags & SUB_KEEP) && (events & COMET_LOOP_READ)) {
        /* What the client of a connection to keep sends is its next
         * request: httpd's to read, once the answer is out. */
        char b;
        ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);

        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK
                       && errno != EINTR)) {
            stat_add(&hub->closed_by_client, 1);
            sub_free(hub, s);
            return;
        }
        if (n > 0) {
            s->flags |= SUB_INPUT;
            comet_loop_io_modify(hub->loop, &s->io, sub_interest(s));
        }
        events &= ~COMET_LOOP_READ;
    }

    /* A TLS session that had to write before reading on reads again once
     * it could (a WRITE with nothing queued and no end to send). */
    if ((events & COMET_LOOP_READ)
        || (s->ssl && (events & COMET_LOOP_WRITE) && !s->out_head
            && !ending)) {
        if (!ops_of(s)->readable(hub, s, &write_first)) {
            return;
        }
        /* What the client sent may have ended the stream (a WebSocket's
         * close). */
        ending = s->flags & SUB_ENDING;
    }
    if (events & (COMET_LOOP_HUP | COMET_LOOP_ERROR)) {
        stat_add(&hub->closed_by_client, 1);
        sub_free(hub, s);
        return;
    }
    if ((events & COMET_LOOP_WRITE) || s->ssl) {
        if (s->out_head) {
            if (!sub_flush(hub, s)) {
                return;
            }
        }
        else if (ending && s->ssl && (s->flags & SUB_DRAINED)) {
            /* A WebSocket reading until the client's close: our
             * close_notify, if it is still to go. */
            if (ws_shut_write(s)) {
                sub_want_write(hub, s, 0);
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

/* Wrap hub->out (one whole long-poll document) for s and send it as the
 * response's end. */
static int send_out(comet_hub_t *hub, comet_hub_sub_t *s, int end_chunked)
{
    comet_buf_t *cb = hub->wrap;
    apr_size_t mark;

    if (!end_chunked) {
        return sub_write(hub, s, hub->out->data, hub->out->len, 1);
    }
    comet_buf_truncate(cb, 0);
    if (comet_frame_chunk_begin(cb, &mark) != APR_SUCCESS
        || comet_buf_append(cb, hub->out->data, hub->out->len) != APR_SUCCESS
        || comet_frame_chunk_end(cb, mark) != APR_SUCCESS
        || comet_frame_chunk_last(cb) != APR_SUCCESS) {
        sub_free(hub, s);
        return 0;
    }
    return sub_write(hub, s, cb->data, cb->len, 1);
}

/* The subscription's channel ids and positions, for rendering. */
static void sub_positions(comet_hub_sub_t *s, const char **ids,
                          apr_uint64_t *seqs)
{
    for (unsigned i = 0; i < s->nchan; i++) {
        ids[i] = s->m[i].chan ? s->m[i].chan->id : "";
        seqs[i] = s->m[i].seq;
    }
}

/* Answer a long-poll with reads[0, nchan) (NULL: nothing for that
 * channel) and end it.  The answer holds at most max_pending bytes of
 * messages (at least one); its id is the position after the last one. */
static int poll_answer(comet_hub_t *hub, comet_hub_sub_t *s,
                       const comet_read_t *const *reads, int missed)
{
    const char *ids[1024];
    apr_uint64_t seqs[1024];

    sub_positions(s, ids, seqs);
    comet_buf_truncate(hub->out, 0);
    if (comet_render_poll(hub->out, hub->tmp, hub->epoch, ids, seqs,
                          s->nchan, reads, missed, hub->cfg.max_pending,
                          NULL) != APR_SUCCESS) {
        sub_free(hub, s);
        return 0;
    }
    for (unsigned i = 0; i < s->nchan; i++) {
        stat_add(&hub->deliveries, count_between(reads[i], s->m[i].seq,
                                                 seqs[i]));
        s->m[i].seq = seqs[i];
    }
    s->flags |= SUB_ENDING;
    return send_out(hub, s, !!(s->flags & SUB_CHUNKED));
}

/* End a subscriber the orderly way: its stream's end, then close once the
 * bytes are out (or after HUB_LINGER). */
static int sub_end(comet_hub_t *hub, comet_hub_sub_t *s)
{
    if (s->flags & SUB_ENDING) {
        return 1;
    }
    return ops_of(s)->end(hub, s);
}

/* SSE, stream and long-poll: an HTTP response's end. */
static int http_end(comet_hub_t *hub, comet_hub_sub_t *s)
{
    char buf[64];
    comet_buf_t b;

    if (s->transport == COMET_T_LONGPOLL) {
        /* A long-poll that ends without news answers with no messages and
         * the position the client already has. */
        const comet_read_t *none[1024];

        for (unsigned i = 0; i < s->nchan; i++) {
            none[i] = NULL;
        }
        return poll_answer(hub, s, none, 0);
    }
    s->flags |= SUB_ENDING;
    comet_buf_wrap(&b, buf, sizeof(buf));
    if (s->flags & SUB_CHUNKED) {
        comet_frame_chunk_last(&b);
    }
    return sub_write(hub, s, b.data, b.len, 1);
}

/* Channel m's was deleted: its notice, then the end of the stream. */
static int sub_deleted(comet_hub_t *hub, comet_hub_sub_t *s, hub_member_t *m)
{
    int chunked = !!(s->flags & SUB_CHUNKED);

    if (s->transport == COMET_T_LONGPOLL) {
        return sub_end(hub, s);
    }
    comet_buf_truncate(hub->out, 0);
    comet_render_notice(hub->out, s->transport, chunked, 1, m->chan->id);
    ops_of(s)->tail(s, hub->out);
    return sub_write(hub, s, hub->out->data, hub->out->len, 1);
}

/* ---- delivery: the shared batch ----------------------------------------- */

/* Whether m takes the channel's shared batch: a single-channel stream
 * in step. */
static int member_shared(const hub_member_t *m)
{
    const comet_hub_sub_t *s = m->sub;

    return s->nchan == 1 && s->transport != COMET_T_LONGPOLL
           && !(m->flags & M_CATCHUP) && !(s->flags & SUB_ENDING);
}

/* Render rd in one shape, once for every member of that shape: at most
 * max_batch bytes, at least one message; b->n says how many. */
static void batch_build(comet_hub_t *hub, hub_batch_t *b, int transport,
                        int chunked, hub_chan_t *c, const comet_read_t *rd)
{
    int shape = shape_of(transport, chunked), n = rd->msgs->nelts, i;
    const char *ids[1];

    b->built = 1;
    b->buf = hub->bbuf[shape];
    b->offs = hub->boffs + (apr_size_t)shape * (HUB_READ_MSGS + 1);
    comet_buf_truncate(b->buf, 0);
    ids[0] = c->id;
    if (rd->missed && comet_render_notice(b->buf, transport, chunked, 0,
                                          c->id) != APR_SUCCESS) {
        n = 0;
    }
    for (i = 0; i < n; i++) {
        const comet_msg_t *m = &APR_ARRAY_IDX(rd->msgs, i, comet_msg_t);
        apr_size_t before = b->buf->len;
        apr_uint64_t seq = m->id.seq;

        b->offs[i] = before;
        if (comet_render_msg(b->buf, transport, chunked, hub->epoch, ids,
                             &seq, 1, 0, m, hub->scratch) != APR_SUCCESS) {
            break;
        }
        if (i && b->buf->len > hub->cfg.max_batch) {
            /* The rest comes in the next round. */
            comet_buf_truncate(b->buf, before);
            break;
        }
    }
    b->n = i;
    b->offs[i] = b->buf->len;
}

/* News reached a long-poll with a linger: wait a little for more, so that
 * a burst leaves in one answer (tq_fire answers at the end). */
static void poll_linger(comet_hub_t *hub, comet_hub_sub_t *s)
{
    if (!(s->flags & SUB_POLLWAIT)) {
        apr_time_t t = apr_time_from_msec(s->linger_ms);

        s->flags |= SUB_POLLWAIT;
        tq_remove(s);
        tq_push(tq_get(hub, TQ_POLLWAIT, t), s, comet_now_mono() + t);
    }
}

/* Hand one round of channel c (rd: the messages of the round) to member
 * m.  Returns 1 when the subscriber still exists afterwards. */
static int deliver_member(comet_hub_t *hub, hub_chan_t *c, hub_member_t *m,
                          const comet_read_t *rd, hub_batch_t *batches)
{
    comet_hub_sub_t *s = m->sub;
    int n = rd->msgs->nelts, k = 0, chunked = !!(s->flags & SUB_CHUNKED);
    int anew;
    apr_uint64_t last;

    if (s->flags & SUB_ENDING) {
        return 1;
    }
    if (rd->deleted) {
        return sub_deleted(hub, s, m);
    }
    if (m->flags & M_CATCHUP) {
        return 1;
    }
    if (m->seq < c->seq || (rd->missed && m->seq > c->seq)) {
        /* Behind the round, or ahead of it when the read cannot tell what
         * this member lost: its own reads will. */
        m->flags |= M_CATCHUP;
        sub_behind(hub, s);
        return 1;
    }
    /* The channel's ids started anew below the member's position (see
     * restart_seq in comet_render.c): all of the round is due. */
    anew = rd->missed && rd->newest.seq < m->seq;
    while (!anew && k < n
           && APR_ARRAY_IDX(rd->msgs, k, comet_msg_t).id.seq <= m->seq) {
        k++;
    }
    if (k == n && !rd->missed) {
        return 1;
    }
    if (k < n) {
        m->flags &= ~M_LATER;
    }
    /* When all after the position was lost, the position moves past it,
     * so that the loss is told once. */
    last = n ? APR_ARRAY_IDX(rd->msgs, n - 1, comet_msg_t).id.seq
             : (rd->newest.seq > m->seq || anew ? rd->newest.seq : m->seq);

    if (s->transport == COMET_T_LONGPOLL) {
        const comet_read_t *reads[1024];

        if (s->linger_ms && !(s->flags & SUB_ANSWER)) {
            /* The member's own read gets all at the linger's end. */
            m->flags |= M_CATCHUP;
            poll_linger(hub, s);
            return 1;
        }
        for (unsigned i = 0; i < s->nchan; i++) {
            reads[i] = &s->m[i] == m ? rd : NULL;
        }
        return poll_answer(hub, s, reads, rd->missed);
    }
    if (s->nchan == 1) {
        hub_batch_t *b = &batches[shape_of(s->transport, chunked)];
        apr_size_t from;

        if (!b->built) {
            m->flags |= M_CATCHUP;
            sub_behind(hub, s);
            return 1;
        }
        from = rd->missed ? 0 : b->offs[k];
        stat_add(&hub->deliveries, (apr_uint64_t)(n - k));
        m->seq = last;
        return b->offs[n] <= from
               || sub_write(hub, s, b->buf->data + from, b->offs[n] - from,
                            0);
    }
    else {
        /* Subscriber-specific: ids that name all its channels. */
        const char *ids[1024];
        apr_uint64_t seqs[1024], before = m->seq;
        apr_size_t ci = (apr_size_t)(m - s->m);
        int complete;

        sub_positions(s, ids, seqs);
        comet_buf_truncate(hub->out, 0);
        if (comet_render_stream(hub->out, s->transport, chunked, hub->epoch,
                                ids, seqs, s->nchan, ci, rd,
                                hub->cfg.max_batch, &complete, hub->scratch)
            != APR_SUCCESS) {
            sub_free(hub, s);
            return 0;
        }
        m->seq = complete ? last : seqs[ci];
        stat_add(&hub->deliveries, count_between(rd, before, m->seq));
        if (!complete) {
            m->flags |= M_CATCHUP;
        }
        if (!sub_write(hub, s, hub->out->data, hub->out->len, 0)) {
            return 0;
        }
        if (!complete) {
            sub_behind(hub, s);
        }
        return 1;
    }
}

/* Read what is new in c and hand it to every member, one bounded round
 * at a time. */
static void deliver_chan(comet_hub_t *hub, hub_chan_t *c)
{
    int rounds = 0;

    c->busy++;
    while (c->head && rounds++ < HUB_ROUNDS) {
        comet_read_t rd, round;
        apr_array_header_t view;
        comet_msgid_t after;
        hub_batch_t batches[HUB_SHAPES];
        hub_member_t *m, *next;
        int n, nround, done;

        after.epoch = hub->epoch;
        after.seq = c->seq;
        if (comet_store_read(hub->cfg.store, &c->ref, after, HUB_READ_MSGS,
                             HUB_READ_BYTES, comet_now_mono(), hub->scratch,
                             &rd) != APR_SUCCESS) {
            break;
        }
        n = nround = rd.msgs->nelts;
        if (!n && !rd.missed && !rd.deleted) {
            apr_pool_clear(hub->scratch);
            break;
        }
        memset(batches, 0, sizeof(batches));
        for (m = c->head; m && !rd.deleted; m = m->next) {
            comet_hub_sub_t *s = m->sub;
            hub_batch_t *b = &batches[shape_of(s->transport,
                                               s->flags & SUB_CHUNKED)];

            if (member_shared(m) && !b->built) {
                batch_build(hub, b, s->transport, s->flags & SUB_CHUNKED, c,
                            &rd);
                if (b->n < nround) {
                    nround = b->n;
                }
            }
        }
        if (n && !nround) {
            /* Nothing could be rendered (no memory): the next wakeup
             * tries again. */
            apr_pool_clear(hub->scratch);
            break;
        }
        /* The round: what every shape holds. */
        view = *rd.msgs;
        view.nelts = nround;
        round = rd;
        round.msgs = &view;
        for (m = c->head; m; m = next) {
            /* Freeing m's subscriber never frees another member of c. */
            next = m->next;
            deliver_member(hub, c, m, &round, batches);
        }
        if (nround) {
            c->seq = APR_ARRAY_IDX(rd.msgs, nround - 1, comet_msg_t).id.seq;
        }
        else if (rd.missed) {
            /* Told; reading after the newest tells no more (it may be
             * below c->seq: ids that started anew). */
            c->seq = rd.newest.seq;
        }
        done = rd.deleted || (!rd.more && nround == n);
        apr_pool_clear(hub->scratch);
        if (done) {
            break;
        }
    }
    if (rounds > HUB_ROUNDS && c->head && !c->queued) {
        /* More is due: the next turn goes on, after others' work. */
        c->queued = 1;
        c->busy++;
        c->qnext = hub->again;
        hub->again = c;
        comet_loop_wake(hub->loop);
    }
    bufs_trim(hub);
    c->busy--;
    chan_release(hub, c);
}

/* Channels whose delivery stopped at HUB_ROUNDS go on. */
static void run_again(comet_hub_t *hub)
{
    hub_chan_t *c = hub->again, *next;

    hub->again = NULL;
    for (; c; c = next) {
        next = c->qnext;
        c->queued = 0;
        if (!hub->loop_done) {
            deliver_chan(hub, c);
        }
        c->busy--;
        chan_release(hub, c);
    }
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

/* ---- delivery: catching up ---------------------------------------------- */

/* What the first read of a member says about losses depends on where its
 * position came from (comet_hub_spec_t.start). */
static void member_first_read(hub_member_t *m, comet_read_t *rd)
{
    if (m->flags & M_MISSED) {
        rd->missed = 1;
    }
    else if (m->flags & M_FRESH) {
        rd->missed = 0;
    }
    m->flags &= ~(M_MISSED | M_FRESH);
}

/* Read the channel of m after its position, for m alone (into scratch).
 * APR_SUCCESS, or the store's error (the channel is gone). */
static apr_status_t member_read(comet_hub_t *hub, hub_member_t *m,
                                comet_read_t *rd)
{
    comet_msgid_t after;
    apr_size_t bytes = hub->cfg.max_batch < HUB_READ_BYTES
                       ? hub->cfg.max_batch : HUB_READ_BYTES;
    apr_status_t rv;

    after.epoch = hub->epoch;
    after.seq = m->seq;
    rv = comet_store_read(hub->cfg.store, &m->chan->ref, after,
                          HUB_READ_MSGS, bytes, comet_now_mono(),
                          hub->scratch, rd);
    if (rv != APR_SUCCESS) {
        m->flags &= ~(M_CATCHUP | M_MISSED | M_FRESH);
        return rv;
    }
    stat_add(&hub->catchup_reads, 1);
    member_first_read(m, rd);
    return APR_SUCCESS;
}

/* A member whose position the store has not reached yet (M_LATER) waits
 * for it: 1 (nothing to hand over, out of catch-up until the next
 * wakeup).  Once the store reaches the position, it reads as any other
 * member. */
static int member_later(hub_member_t *m, const comet_read_t *rd)
{
    if (!(m->flags & M_LATER)) {
        return 0;
    }
    if (rd->newest.seq < m->seq && !rd->deleted) {
        m->flags &= ~M_CATCHUP;
        return 1;
    }
    m->flags &= ~M_LATER;
    return 0;
}

/* One read of m's own, rendered and written.  Returns 1 when the
 * subscriber still exists afterwards. */
static int member_catch_up(comet_hub_t *hub, comet_hub_sub_t *s,
                           hub_member_t *m)
{
    const char *ids[1024];
    apr_uint64_t seqs[1024], before = m->seq;
    apr_size_t ci = (apr_size_t)(m - s->m);
    comet_read_t rd;
    int complete;

    if (member_read(hub, m, &rd) != APR_SUCCESS) {
        return 1;
    }
    if (rd.deleted) {
        apr_pool_clear(hub->scratch);
        return sub_deleted(hub, s, m);
    }
    if (member_later(m, &rd)) {
        apr_pool_clear(hub->scratch);
        return 1;
    }
    sub_positions(s, ids, seqs);
    comet_buf_truncate(hub->out, 0);
    if (comet_render_stream(hub->out, s->transport,
                            !!(s->flags & SUB_CHUNKED), hub->epoch, ids,
                            seqs, s->nchan, ci, &rd, hub->cfg.max_batch,
                            &complete, hub->scratch) != APR_SUCCESS) {
        apr_pool_clear(hub->scratch);
        sub_free(hub, s);
        return 0;
    }
    m->seq = seqs[ci];
    stat_add(&hub->deliveries, count_between(&rd, before, m->seq));
    if (complete && !rd.more) {
        /* In step: what the store holds has all been handed over. */
        if (rd.newest.seq > m->seq && !rd.msgs->nelts) {
            m->seq = rd.newest.seq;
        }
        m->flags &= ~M_CATCHUP;
    }
    apr_pool_clear(hub->scratch);
    return !hub->out->len
           || sub_write(hub, s, hub->out->data, hub->out->len, 0);
}

/* A long-poll's members catch up all at once: one answer (or, when
 * nothing is due, it waits in step). */
static int poll_refill(comet_hub_t *hub, comet_hub_sub_t *s)
{
    const comet_read_t *reads[1024];
    unsigned char fresh[1024];
    int missed = 0, due = 0, alive = 1, news = 0, deleted = 0;

    for (unsigned i = 0; i < s->nchan; i++) {
        hub_member_t *m = &s->m[i];
        comet_read_t *rd;

        reads[i] = NULL;
        fresh[i] = (unsigned char)(m->flags & M_FRESH);
        if (!(m->flags & M_CATCHUP)) {
            continue;
        }
        rd = apr_palloc(hub->scratch, sizeof(*rd));
        m->flags &= ~M_CATCHUP;
        if (member_read(hub, m, rd) != APR_SUCCESS || member_later(m, rd)) {
            continue;
        }
        if (!rd->msgs->nelts && rd->newest.seq > m->seq
            && (rd->missed || !rd->more)) {
            m->seq = rd->newest.seq;
        }
        reads[i] = rd;
        missed |= rd->missed;
        news |= rd->msgs->nelts > 0;
        deleted |= rd->deleted;
        due |= rd->msgs->nelts || rd->missed || rd->deleted;
    }
    s->flags &= ~SUB_BEHIND;
    if (news && !deleted && !missed && s->linger_ms
        && !(s->flags & SUB_ANSWER)) {
        /* Read again, with what comes meanwhile, at the linger's end (as
         * the first read, if this one was). */
        for (unsigned i = 0; i < s->nchan; i++) {
            if (reads[i] && reads[i]->msgs->nelts) {
                s->m[i].flags |= M_CATCHUP | fresh[i];
            }
        }
        poll_linger(hub, s);
        due = 0;
    }
    if (due) {
        alive = poll_answer(hub, s, reads, missed);
    }
    apr_pool_clear(hub->scratch);
    return alive;
}

static int sub_refill(comet_hub_t *hub, comet_hub_sub_t *s)
{
    int reads = 0;

    while ((s->flags & SUB_BEHIND) && !(s->flags & SUB_ENDING)) {
        hub_member_t *m = NULL;

        if (!sub_room(hub, s)) {
            return 1;
        }
        if (reads++ == HUB_REFILL_READS) {
            /* Others' turn first. */
            ready_push(hub, s);
            return 1;
        }
        if (s->transport == COMET_T_LONGPOLL) {
            return poll_refill(hub, s);
        }
        /* Channels take turns. */
        for (unsigned i = 0; i < s->nchan && !m; i++) {
            unsigned j = (s->cu + i) % s->nchan;

            if (s->m[j].flags & M_CATCHUP) {
                m = &s->m[j];
                s->cu = (unsigned short)((j + 1) % s->nchan);
            }
        }
        if (!m) {
            s->flags &= ~SUB_BEHIND;
            break;
        }
        if (!member_catch_up(hub, s, m)) {
            return 0;
        }
    }
    return 1;
}

/* Subscribers whose refill waits for its turn: those queued when this
 * turn began. */
static void run_ready(comet_hub_t *hub)
{
    apr_size_t n = hub->nready;

    while (n-- && hub->ready) {
        comet_hub_sub_t *s = hub->ready;

        ready_remove(hub, s);
        if (!hub->loop_done) {
            sub_refill(hub, s);
        }
    }
    bufs_trim(hub);
}

/* ---- timers ------------------------------------------------------------- */

static void tq_fire(comet_loop_t *loop, comet_timer_t *timer, void *baton)
{
    hub_tq_t *q = baton;
    comet_hub_t *hub = q->hub;
    apr_time_t now = comet_now_mono();
    comet_hub_sub_t *s;

    while ((s = q->head) && s->deadline <= now) {
        tq_remove(s);
        if (q->kind == TQ_LINGER || q->kind == TQ_KEPT
            || q->kind == TQ_HEAD || q->kind == TQ_DRAIN) {
            sub_free(hub, s);
        }
        else if (q->kind == TQ_TIMEOUT) {
            sub_end(hub, s);
        }
        else if (q->kind == TQ_POLLWAIT) {
            /* The linger is over: all that came, in one answer. */
            s->flags |= SUB_ANSWER | SUB_BEHIND;
            if (sub_refill(hub, s) && !(s->flags & SUB_ENDING)) {
                /* What came is gone (expired): the empty answer. */
                sub_end(hub, s);
            }
        }
        else {
            tq_push(q, s, now + q->interval);
            ops_of(s)->keepalive(hub, s, now);
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
    if (hub->freed >= HUB_TRIM_AFTER) {
        /* Slow readers' buffers are gone: without this the allocator
         * keeps their pages for good. */
        hub->freed = 0;
#ifdef __GLIBC__
        malloc_trim(0);
#endif
    }
    comet_timer_arm_in(loop, timer, HUB_MAINTAIN_EVERY);
}

/* ---- SSE, stream and long-poll ------------------------------------------ */

/* A subscriber has nothing to say after its request: what it sends is
 * dropped; EOF (or close_notify) means it left. */
static int http_readable(comet_hub_t *hub, comet_hub_sub_t *s,
                         int *write_first)
{
    apr_size_t got;
    int rc = hub_io_recv(s, NULL, 0, &got, write_first);

    if (rc <= 0) {
        stat_add(&hub->closed_by_client, 1);
        /* A TLS client's close_notify is answered, if it fits. */
        if (rc == 0 && s->ssl && !s->out_head) {
            hub_io_shutdown(s);
        }
        sub_free(hub, s);
        return 0;
    }
    return 1;
}

static void http_keepalive(comet_hub_t *hub, comet_hub_sub_t *s,
                           apr_time_t now)
{
    char buf[32];
    comet_buf_t b;
    apr_size_t mark = 0;
    int chunked = !!(s->flags & SUB_CHUNKED);

    (void)now;
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
    sub_write(hub, s, b.data, b.len, 0);
}

static void http_tail(comet_hub_sub_t *s, comet_buf_t *b)
{
    if (s->flags & SUB_CHUNKED) {
        comet_frame_chunk_last(b);
    }
    s->flags |= SUB_ENDING;
}

/* ---- WebSocket transport ------------------------------------------------
 *
 * The hub owns both directions of the connection: its parser reads the
 * client's frames straight from the hub's read buffer (nothing is kept
 * between reads but the parser's state), pings are answered with pongs,
 * text messages are published when the location allows it, and the close
 * handshake ends it.  Server to client, each message is one text frame
 * (comet_render, shape 4); pongs, pings and close frames are queued like
 * any other bytes and count against max_pending.
 *
 * Ending: when the client closes, we answer with its code and close once
 * that is out.  When we close (a protocol error, a refused message, a
 * deleted channel, the hub stopping), our close frame is the last thing
 * we send; then we shut our side down and read (and drop) until the
 * client's close frame or EOF, or the linger timer.  A client dropped
 * for not reading, or for not answering pings, just loses its TCP
 * connection (it sees 1006). */

/* Queue a whole frame built on the stack.  1 while s lives. */
static int ws_frame(comet_hub_t *hub, comet_hub_sub_t *s, int opcode,
                    const char *data, apr_size_t len)
{
    char buf[COMET_WS_SERVER_HEADER_MAX + 256];
    comet_buf_t b;

    comet_buf_wrap(&b, buf, sizeof(buf));
    if (comet_ws_frame(&b, opcode, data, len) != APR_SUCCESS) {
        sub_free(hub, s);
        return 0;
    }
    return sub_write(hub, s, b.data, b.len, 0);
}

/* The close frame as the last bytes of s (once).  1 while s lives. */
static int ws_close(comet_hub_t *hub, comet_hub_sub_t *s, int code,
                    const char *reason)
{
    hub_ws_t *ws = sub_ws(s);
    char buf[COMET_WS_CONTROL_MAX + COMET_WS_SERVER_HEADER_MAX];
    comet_buf_t b;

    if (ws->closing) {
        return 1;
    }
    ws->closing = 1;
    s->flags |= SUB_ENDING;
    comet_buf_wrap(&b, buf, sizeof(buf));
    comet_ws_close_frame(&b, code, reason, reason ? strlen(reason) : 0);
    comet_log(COMET_LOG_DEBUG, APR_SUCCESS, "channel=%s: WebSocket closed "
              "with %d (%s)", s->m[0].chan ? s->m[0].chan->id : "?", code,
              reason ? reason : "");
    return sub_write(hub, s, b.data, b.len, 1);
}

/* A JSON error frame: the client's message was refused, the connection
 * stays.  1 while s lives. */
static int ws_error(comet_hub_t *hub, comet_hub_sub_t *s, const char *text)
{
    char buf[512];
    comet_buf_t b;
    apr_size_t mark;

    comet_buf_wrap(&b, buf, sizeof(buf));
    if (comet_ws_frame_begin(&b, &mark) != APR_SUCCESS
        || comet_buf_puts(&b, "{\"error\":") != APR_SUCCESS
        || comet_frame_json_string(&b, text, strlen(text)) != APR_SUCCESS
        || comet_buf_putc(&b, '}') != APR_SUCCESS
        || comet_ws_frame_end(&b, mark, COMET_WS_OP_TEXT) != APR_SUCCESS) {
        return 1;
    }
    return sub_write(hub, s, b.data, b.len, 0);
}

/* One publish from the rate bucket, if there is one. */
static int ws_take_token(hub_ws_t *ws, apr_time_t now)
{
    if (!ws->rate) {
        return 1;
    }
    if (now > ws->bucket_at) {
        apr_uint64_t add = (apr_uint64_t)(now - ws->bucket_at) * ws->rate
                           / 1000;      /* thousandths: us * rate / 1000 */
        apr_uint64_t cap = (apr_uint64_t)ws->burst * 1000;

        ws->tokens = (apr_uint32_t)(ws->tokens + add > cap ? cap
                                                           : ws->tokens + add);
        ws->bucket_at = now;
    }
    if (ws->tokens < 1000) {
        return 0;
    }
    ws->tokens -= 1000;
    return 1;
}

/* A text message from the client: published like any other message, with
 * the sender's identity.  1 while s lives. */
static int ws_publish(comet_hub_t *hub, comet_hub_sub_t *s, const char *text,
                      apr_size_t len)
{
    hub_ws_t *ws = sub_ws(s);
    comet_publish_t msg;
    comet_json_envelope_t env;
    char *scratch = NULL, ebuf[128];
    apr_status_t rv;
    int alive;

    if (!ws->publish) {
        stat_add(&hub->ws_refused, 1);
        return ws_close(hub, s, COMET_WS_CLOSE_POLICY,
                        "publishing is not allowed here");
    }
    if (!ws_take_token(ws, comet_now_mono())) {
        stat_add(&hub->ws_refused, 1);
        return ws_close(hub, s, COMET_WS_CLOSE_POLICY,
                        "publishing too fast");
    }
    memset(&msg, 0, sizeof(msg));
    if (s->nchan == 1) {
        if (!s->m[0].chan) {
            return 1;
        }
        msg.channel = s->m[0].chan->id;
        msg.channel_len = s->m[0].chan->id_len;
        msg.data = text;
        msg.data_len = len;
    }
    else {
        const char *why;
        unsigned i;

        if (!(scratch = malloc(len + 1))) {
            return ws_error(hub, s, "out of memory");
        }
        if (comet_json_envelope(text, len, scratch, &env, &why)
            != APR_SUCCESS) {
            apr_snprintf(ebuf, sizeof(ebuf), "not a message envelope: %s",
                         why);
            free(scratch);
            return ws_error(hub, s, ebuf);
        }
        for (i = 0; i < s->nchan; i++) {
            hub_chan_t *c = s->m[i].chan;

            if (c && c->id_len == env.channel_len
                && !memcmp(c->id, env.channel, env.channel_len)) {
                break;
            }
        }
        if (i == s->nchan) {
            free(scratch);
            return ws_error(hub, s, "not a channel of this subscription");
        }
        msg.channel = s->m[i].chan->id;
        msg.channel_len = s->m[i].chan->id_len;
        msg.event = env.event;
        msg.event_len = env.event_len;
        msg.data = env.data;
        msg.data_len = env.data_len;
    }
    msg.from = ws->from_len ? ws->from : NULL;
    msg.from_len = ws->from_len;
    if (hub->cfg.publish) {
        const char *why = NULL;

        rv = hub->cfg.publish(hub->cfg.publish_baton, &msg, &why);
        free(scratch);
        if (rv == APR_SUCCESS) {
            stat_add(&hub->ws_published, 1);
            return 1;
        }
        if (why) {
            return ws_error(hub, s, why);
        }
    }
    else {
        rv = comet_store_publish(hub->cfg.store, &msg, comet_now_mono(),
                                 hub->cfg.wake, hub->cfg.wake_baton, NULL);
        free(scratch);
        if (rv == APR_SUCCESS) {
            stat_add(&hub->ws_published, 1);
            return 1;
        }
    }
    alive = ws_error(hub, s, rv == COMET_EPROTO
                             ? "event type refused (1 to 64 printable "
                               "characters, no space)"
                             : comet_strerror(rv, ebuf, sizeof(ebuf)));
    return alive;
}

/* Handle the client's bytes data[0, len) (scratch: unmasked in place).
 * 1 while s lives. */
static int ws_take(comet_hub_t *hub, comet_hub_sub_t *s, char *data,
                   apr_size_t len)
{
    hub_ws_t *ws = sub_ws(s);

    while (len) {
        comet_ws_event_t ev;
        apr_size_t used = 0;
        apr_status_t rv;
        int code;

        rv = comet_ws_parse(&ws->parser, data, len, &used, &ev);
        data += used;
        len -= used;
        if (rv == APR_INCOMPLETE || rv == APR_EOF) {
            return 1;
        }
        if (rv != APR_SUCCESS) {
            /* Broken framing: nothing more can be understood. */
            const char *why = comet_ws_parser_error(&ws->parser, &code);

            if (ws->closing) {
                return 1;
            }
            if (rv == APR_ENOMEM || !code) {
                code = COMET_WS_CLOSE_INTERNAL;
                why = "out of memory";
            }
            stat_add(&hub->ws_errors, 1);
            return ws_close(hub, s, code, why);
        }
        ws->heard_at = comet_now_mono();
        if (ev.type == COMET_WS_EV_CLOSE) {
            ws->peer_closed = 1;
            if (ws->closing) {
                /* The answer to ours: the handshake is complete. */
                sub_free(hub, s);
                return 0;
            }
            stat_add(&hub->closed_by_client, 1);
            return ws_close(hub, s, ev.code == COMET_WS_CLOSE_NO_STATUS
                                    ? COMET_WS_CLOSE_NORMAL : ev.code, NULL);
        }
        if (ws->closing) {
            continue;                   /* read and dropped */
        }
        switch (ev.type) {
        case COMET_WS_EV_PING:
            if (!ws_frame(hub, s, COMET_WS_OP_PONG, ev.data, ev.len)) {
                return 0;
            }
            break;
        case COMET_WS_EV_PONG:
            break;
        case COMET_WS_EV_BINARY:
            stat_add(&hub->ws_refused, 1);
            if (!ws_close(hub, s, COMET_WS_CLOSE_UNSUPPORTED,
                          "binary messages are not accepted")) {
                return 0;
            }
            break;
        default:
            if (!ws_publish(hub, s, ev.data, ev.len)) {
                return 0;
            }
            break;
        }
    }
    return 1;
}

static int ws_readable(comet_hub_t *hub, comet_hub_sub_t *s,
                       int *write_first)
{
    hub_ws_t *ws = sub_ws(s);

    /* A TLS session may hold the rest of a record that no poll reports:
     * it is read before the turn ends (one buffer holds a record). */
    for (int round = 0;
         round < HUB_WS_READS || (s->ssl && comet_tls_has_pending(s->ssl));
         round++) {
        apr_size_t got;
        int rc = hub_io_recv(s, hub->rbuf, HUB_RBUF_SIZE, &got,
                             write_first);

        if (rc <= 0) {
            if (!ws->closing) {
                stat_add(&hub->closed_by_client, 1);
            }
            /* A TLS client's close_notify is answered, if it fits. */
            if (rc == 0 && s->ssl && !s->out_head && !ws->shut) {
                hub_io_shutdown(s);
            }
            sub_free(hub, s);
            return 0;
        }
        if (!got) {
            return 1;
        }
        if (!ws_take(hub, s, hub->rbuf, got)) {
            return 0;
        }
        if (got < HUB_RBUF_SIZE && !(s->ssl && comet_tls_has_pending(s->ssl))) {
            return 1;
        }
    }
    /* Level-triggered: the rest is read on the loop's next turn. */
    return 1;
}

static void ws_keepalive(comet_hub_t *hub, comet_hub_sub_t *s,
                         apr_time_t now)
{
    static const char keepalive[] = "\x89\x00" "\x81\x02{}";
    hub_ws_t *ws = sub_ws(s);

    if (ws->closing) {
        return;
    }
    if (ws->ping_at && ws->heard_at < ws->ping_at) {
        /* Not a frame since our last ping, a whole interval ago. */
        stat_add(&hub->ws_timeouts, 1);
        comet_log(COMET_LOG_DEBUG, APR_SUCCESS, "channel=%s: WebSocket "
                  "client silent since the last ping; closing",
                  s->m[0].chan ? s->m[0].chan->id : "?");
        sub_free(hub, s);
        return;
    }
    ws->ping_at = now;
    /* A ping for the connection, and an empty object for a script: a
     * browser never shows pings to it, and it may watch for silence. */
    sub_write(hub, s, keepalive, sizeof(keepalive) - 1, 0);
}

static int ws_end(comet_hub_t *hub, comet_hub_sub_t *s)
{
    return ws_close(hub, s, COMET_WS_CLOSE_GOING_AWAY, "server going away");
}

static void ws_tail(comet_hub_sub_t *s, comet_buf_t *b)
{
    static const char reason[] = "channel deleted";

    if (comet_ws_close_frame(b, COMET_WS_CLOSE_NORMAL, reason,
                             sizeof(reason) - 1) == APR_SUCCESS) {
        sub_ws(s)->closing = 1;
    }
    s->flags |= SUB_ENDING;
}

/* Our side is done, the client's is still read: FIN, or close_notify.
 * 1 when it has gone, 0 when the socket must become writable first. */
static int ws_shut_write(comet_hub_sub_t *s)
{
    hub_ws_t *ws = sub_ws(s);

    if (ws->shut) {
        return 1;
    }
    if (!s->ssl) {
        shutdown(s->io.fd, SHUT_WR);
    }
    else if (!hub_io_shutdown(s)) {
        return 0;
    }
    ws->shut = 1;
    return 1;
}

static int ws_done(comet_hub_t *hub, comet_hub_sub_t *s)
{
    hub_ws_t *ws = sub_ws(s);

    if (ws->peer_closed || !ws->closing || (s->flags & SUB_DRAINED)) {
        return sub_close(hub, s);
    }
    /* Our close is out: say so at the TCP (or TLS) level too, then wait a
     * bounded time for the client's, reading and dropping whatever
     * comes. */
    s->flags |= SUB_DRAINED;
    tq_remove(s);
    tq_push(tq_get(hub, TQ_LINGER, HUB_LINGER), s,
            comet_now_mono() + HUB_LINGER);
    if (!ws_shut_write(s)) {
        sub_want_write(hub, s, 1);
    }
    return 1;
}

static const hub_ops_t hub_http_ops = {
    http_readable, http_keepalive, http_end, http_tail, sub_close
};
static const hub_ops_t hub_ws_ops = {
    ws_readable, ws_keepalive, ws_end, ws_tail, ws_done
};

static const hub_ops_t *ops_of(const comet_hub_sub_t *s)
{
    return s->transport == COMET_T_WS ? &hub_ws_ops : &hub_http_ops;
}

/* ---- adopting, on the hub thread ---------------------------------------- */

/* Give a handed-over subscriber its channels, its socket watcher and
 * timer, and then what it is due (from its positions on: a backlog too). */
/* ---- kept connections ----------------------------------------------------
 *
 * A plain HTTP/1.1 long-poll whose head allowed keep-alive (SUB_KEEP) is
 * not closed after its answer: once the answer has left, its record stays
 * as a connection (SUB_KEPT) that waits for the client's next request,
 * without its subscriptions, bounded by cfg.max_kept and timed by
 * cfg.keep_timeout.  Its input is only peeked at, never read: once a
 * whole request head waits (or HUB_HEAD_PEEK bytes of one), the socket
 * goes to cfg.handback, so that httpd reads and serves the request as any
 * other.  A head that stays partial is timed by cfg.head_timeout.  The
 * same records serve a lingering close (SUB_DRAIN): input read and
 * dropped until EOF, at most HUB_DRAIN. */

static void kept_push(comet_hub_t *hub, comet_hub_sub_t *s, int kind,
                      apr_time_t interval)
{
    tq_remove(s);
    tq_push(tq_get(hub, kind, interval), s, comet_now_mono() + interval);
}

/* Whether b[0, n) holds the end of a request head. */
static int head_complete(const char *b, apr_size_t n)
{
    const char *p = b, *end = b + n;

    while ((p = memchr(p, '\n', (apr_size_t)(end - p))) != NULL) {
        p++;
        if (p < end && *p == '\n') {
            return 1;
        }
        if (p + 1 < end && p[0] == '\r' && p[1] == '\n') {
            return 1;
        }
    }
    return 0;
}

/* The answer of a connection to keep has left: the subscriber ends, the
 * connection stays. */
static void sub_keep(comet_hub_t *hub, comet_hub_sub_t *s)
{
    sub_release(hub, s);
    ready_remove(hub, s);
    out_release(hub, s);
    apr_atomic_dec32(&hub->detached);
    apr_atomic_dec32(&hub->count);
    apr_atomic_dec32(&hub->by_transport[tindex(s->transport)]);
    apr_atomic_inc32(&hub->kept);
    stat_add(&hub->kept_total, 1);
    s->flags = (s->flags & (SUB_WATCHED | SUB_LINKED)) | SUB_KEPT;
    if (comet_loop_io_modify(hub->loop, &s->io,
                             COMET_LOOP_READ | COMET_LOOP_EDGE)
        != APR_SUCCESS) {
        sub_free(hub, s);
        return;
    }
    kept_push(hub, s, TQ_KEPT, hub->cfg.keep_timeout);
    /* A request that came meanwhile raises no new edge. */
    kept_io(hub, s, COMET_LOOP_READ);
}

static void kept_io(comet_hub_t *hub, comet_hub_sub_t *s, int events)
{
    char buf[HUB_HEAD_PEEK];
    ssize_t n;
    int fd;

    if (s->flags & SUB_DRAIN) {
        for (;;) {
            n = recv(s->io.fd, buf, sizeof(buf), MSG_DONTWAIT);
            if (n > 0) {
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)
                && !(events & (COMET_LOOP_HUP | COMET_LOOP_ERROR))) {
                return;
            }
            if (n < 0 && errno == EINTR) {
                continue;
            }
            sub_free(hub, s);
            return;
        }
    }
    n = recv(s->io.fd, buf, sizeof(buf), MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        && !(events & (COMET_LOOP_HUP | COMET_LOOP_ERROR))) {
        return;
    }
    if (n <= 0) {
        sub_free(hub, s);
        return;
    }
    if ((apr_size_t)n < sizeof(buf) && !head_complete(buf, (apr_size_t)n)) {
        if (events & (COMET_LOOP_HUP | COMET_LOOP_ERROR)) {
            sub_free(hub, s);
        }
        else if (!s->tq || s->tq->kind != TQ_HEAD) {
            kept_push(hub, s, TQ_HEAD, hub->cfg.head_timeout);
        }
        return;     /* the rest raises the next edge */
    }
    fd = s->io.fd;
    comet_loop_io_remove(hub->loop, &s->io);
    s->flags &= ~SUB_WATCHED;
    s->io.fd = -1;
    n = (ssize_t)s->served;
    sub_free(hub, s);
    stat_add(&hub->handed_back, 1);
    if (hub->cfg.handback(hub->cfg.handback_baton, fd, (apr_uint32_t)n)
        != APR_SUCCESS) {
        close(fd);
    }
}

/* A connection from comet_hub_keep, on the hub thread. */
static void link_kept(comet_hub_t *hub, comet_hub_sub_t *s)
{
    s->flags |= SUB_LINKED;
    if (hub->loop_done
        || comet_loop_io_add(hub->loop, &s->io, s->io.fd, COMET_LOOP_READ
                             | COMET_LOOP_EDGE, sub_io, s) != APR_SUCCESS) {
        sub_free(hub, s);
        return;
    }
    s->flags |= SUB_WATCHED;
    if (s->flags & SUB_DRAIN) {
        kept_push(hub, s, TQ_DRAIN, HUB_DRAIN);
        kept_io(hub, s, COMET_LOOP_READ);
        return;
    }
    kept_push(hub, s, TQ_KEPT, hub->cfg.keep_timeout);
    kept_io(hub, s, COMET_LOOP_READ);
}

static void kept_close_all(comet_hub_t *hub)
{
    for (hub_tq_t *q = hub->tqs; q; q = q->next) {
        if (q->kind == TQ_KEPT || q->kind == TQ_HEAD || q->kind == TQ_DRAIN) {
            while (q->head) {
                sub_free(hub, q->head);
            }
        }
    }
}

apr_status_t comet_hub_keep(comet_hub_t *hub, int fd, apr_uint32_t served,
                            int drain)
{
    comet_hub_sub_t *s = calloc(1, sizeof(*s));
    hub_handoff_t *h = malloc(sizeof(*h));

    if (!s || !h) {
        free(s);
        free(h);
        return APR_ENOMEM;
    }
    s->hub = hub;
    s->io.fd = fd;
    s->transport = COMET_T_LONGPOLL;
    s->served = served;
    s->flags = drain ? SUB_DRAIN : SUB_KEPT;
    memset(h, 0, sizeof(*h));
    h->sub = s;
    apr_thread_mutex_lock(hub->mu);
    if (hub->stopping || (!drain && !hub->cfg.handback)
        || (hub->cfg.max_kept && hub->kept >= hub->cfg.max_kept)) {
        apr_thread_mutex_unlock(hub->mu);
        free(s);
        free(h);
        return APR_EAGAIN;
    }
    apr_atomic_inc32(&hub->kept);
    if (hub->handoff_tail) {
        hub->handoff_tail->next = h;
    }
    else {
        hub->handoff = h;
    }
    hub->handoff_tail = h;
    apr_thread_mutex_unlock(hub->mu);
    if (!drain) {
        stat_add(&hub->kept_total, 1);
    }
    comet_loop_wake(hub->loop);
    return APR_SUCCESS;
}

static void link_sub(comet_hub_t *hub, hub_handoff_t *h)
{
    comet_hub_sub_t *s = h->sub;
    apr_time_t interval = s->deadline;
    unsigned i;

    if (s->flags & (SUB_KEPT | SUB_DRAIN)) {
        link_kept(hub, s);
        return;
    }
    s->deadline = 0;
    s->flags |= SUB_LINKED;
    for (i = 0; i < s->nchan; i++) {
        hub_member_t *m = &s->m[i];
        hub_chan_t *c = chan_get(hub, &h->refs[i], h->ids[i], h->id_lens[i]);

        if (!c) {
            apr_time_t now = comet_now_mono();

            for (unsigned j = i; j < s->nchan; j++) {
                comet_store_unsubscribe(hub->cfg.store, hub->cfg.slot,
                                        &h->refs[j], now);
            }
            sub_close_fd(hub, s);
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
    apr_pool_clear(hub->scratch);
    if (s->io.fd >= 0) {
        int fd = s->io.fd, fl = fcntl(fd, F_GETFL);

        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
        /* (Not for a connection to keep: a long-poll queues one answer,
         * and the cap would stay for every later response on it.) */
        if (hub->cfg.sndbuf > 0 && !(s->flags & SUB_KEEP)) {
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &hub->cfg.sndbuf,
                       sizeof(hub->cfg.sndbuf));
        }
        if (comet_loop_io_add(hub->loop, &s->io, fd, COMET_LOOP_READ, sub_io,
                              s) != APR_SUCCESS) {
            sub_close_fd(hub, s);
            sub_free(hub, s);
            return;
        }
        s->flags |= SUB_WATCHED;
    }
    if (interval > 0) {
        tq_push(tq_get(hub, s->transport == COMET_T_LONGPOLL ? TQ_TIMEOUT
                                                            : TQ_KEEPALIVE,
                       interval), s, comet_now_mono() + interval);
    }
    if (s->transport == COMET_T_WS) {
        hub_ws_t *ws = sub_ws(s);

        ws->heard_at = ws->bucket_at = comet_now_mono();
        /* What the client sent right after its handshake comes first. */
        if (h->preread_len
            && !ws_take(hub, s, h->preread, h->preread_len)) {
            return;
        }
    }
    /* Bytes the session read before it was ours: no poll reports them. */
    if (s->ssl && comet_tls_has_pending(s->ssl)) {
        int write_first;

        if (!ops_of(s)->readable(hub, s, &write_first)) {
            return;
        }
        if (write_first) {
            sub_want_write(hub, s, 1);
        }
    }
    /* Every member starts catching up: what was published after its
     * position, up to now, comes from reads of its own. */
    s->flags |= SUB_BEHIND;
    if (!hub->loop_done) {
        sub_refill(hub, s);
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
    comet_hub_sub_t *batch[HUB_NOTE_BATCH];
    unsigned char what[HUB_NOTE_BATCH];
    apr_size_t n;

    apr_thread_mutex_lock(hub->mu);
    h = hub->handoff;
    hub->handoff = hub->handoff_tail = NULL;
    apr_thread_mutex_unlock(hub->mu);
    for (; h; h = next) {
        next = h->next;
        link_sub(hub, h);
        free(h);
    }
    /* Notes are taken in bounded batches; sub_free unlinks a freed
     * subscriber under the same lock, and only this thread frees, so
     * every one taken here is alive until it is handled. */
    for (;;) {
        apr_thread_mutex_lock(hub->mu);
        for (n = 0; n < HUB_NOTE_BATCH && hub->notes; n++) {
            batch[n] = hub->notes;
            what[n] = batch[n]->noted;
            note_unlink(hub, batch[n]);
        }
        apr_thread_mutex_unlock(hub->mu);
        if (!n) {
            break;
        }
        for (apr_size_t i = 0; i < n; i++) {
            if (what[i] & NOTE_CANCEL) {
                stat_add(&hub->closed_by_client, 1);
                sub_free(hub, batch[i]);
            }
            else if (!hub->loop_done) {
                sub_refill(hub, batch[i]);
            }
        }
    }
    run_again(hub);
    run_ready(hub);
    run_tasks(hub, 0);
}

/* ---- life --------------------------------------------------------------- */

apr_status_t comet_hub_create(comet_hub_t **out, const comet_hub_config_t *cfg,
                              apr_pool_t *p)
{
    comet_hub_t *hub = apr_pcalloc(p, sizeof(*hub));
    apr_status_t rv;

    hub->cfg = *cfg;
    if (!hub->cfg.max_pending) {
        hub->cfg.max_pending = HUB_DEFAULT_PENDING;
    }
    if (!hub->cfg.max_batch) {
        hub->cfg.max_batch = HUB_DEFAULT_BATCH;
    }
    if (hub->cfg.max_batch > hub->cfg.max_pending) {
        hub->cfg.max_batch = hub->cfg.max_pending;
    }
    hub->pool = p;
    hub->epoch = comet_store_epoch(cfg->store);
    if ((rv = apr_pool_create(&hub->scratch, p)) != APR_SUCCESS
        || (rv = apr_thread_mutex_create(&hub->mu, APR_THREAD_MUTEX_DEFAULT,
                                         p)) != APR_SUCCESS
        || (rv = comet_loop_create(&hub->loop, 4096, p)) != APR_SUCCESS
        || (rv = comet_buf_create(&hub->out, p, 4096, HUB_BUF_MAX))
           != APR_SUCCESS
        || (rv = comet_buf_create(&hub->wrap, p, 0, HUB_BUF_MAX))
           != APR_SUCCESS
        || (rv = comet_buf_create(&hub->tmp, p, 0, HUB_BUF_MAX))
           != APR_SUCCESS) {
        return rv;
    }
    for (int i = 0; i < HUB_SHAPES; i++) {
        if ((rv = comet_buf_create(&hub->bbuf[i], p, 4096, HUB_BUF_MAX))
            != APR_SUCCESS) {
            return rv;
        }
    }
    hub->table_size = 64;
    hub->table = calloc(hub->table_size, sizeof(*hub->table));
    hub->boffs = malloc(sizeof(*hub->boffs) * HUB_SHAPES
                        * (HUB_READ_MSGS + 1));
    hub->tlsbuf = apr_palloc(p, HUB_TLS_RECORD);
    hub->rbuf = apr_palloc(p, HUB_RBUF_SIZE);
    if (!hub->table || !hub->boffs) {
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
    hub_chunk_t *ch;

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
     * waiting for slow readers or for those that catch up. */
    for (apr_size_t i = 0; i < hub->table_size; i++) {
        hub_chan_t *c;

        while ((c = hub->table[i]) != NULL) {
            comet_hub_sub_t *s = c->head->sub;

            s->flags &= ~SUB_BEHIND;
            if (sub_end(hub, s)) {
                sub_free(hub, s);
            }
        }
    }
    /* Kept connections close: no request comes to them any more. */
    kept_close_all(hub);
    if (hub->cfg.wake_fd >= 0) {
        comet_loop_io_remove(hub->loop, &hub->wake_io);
    }
    comet_timer_cancel(hub->loop, &hub->maintain);
    /* Tasks posted up to now run; later posts are refused. */
    run_tasks(hub, 1);
    free(hub->table);
    hub->table = NULL;
    free(hub->boffs);
    hub->boffs = NULL;
    while ((ch = hub->spare) != NULL) {
        hub->spare = ch->next;
        free(ch);
    }
    hub->nspare = 0;
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
    note(hub, handle, NOTE_CANCEL);
}

void comet_hub_room(comet_hub_t *hub, comet_hub_sub_t *handle)
{
    note(hub, handle, NOTE_ROOM);
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
    for (int i = 0; i < 4; i++) {
        out->by_transport[i] = apr_atomic_read32(&hub->by_transport[i]);
    }
    out->adopted = __atomic_load_n(&hub->adopted, __ATOMIC_RELAXED);
    out->deliveries = __atomic_load_n(&hub->deliveries, __ATOMIC_RELAXED);
    out->wakeups = __atomic_load_n(&hub->wakeups, __ATOMIC_RELAXED);
    out->dropped_slow = __atomic_load_n(&hub->dropped_slow, __ATOMIC_RELAXED);
    out->closed_by_client = __atomic_load_n(&hub->closed_by_client,
                                            __ATOMIC_RELAXED);
    out->catchup_reads = __atomic_load_n(&hub->catchup_reads,
                                         __ATOMIC_RELAXED);
    out->ws_published = __atomic_load_n(&hub->ws_published, __ATOMIC_RELAXED);
    out->ws_refused = __atomic_load_n(&hub->ws_refused, __ATOMIC_RELAXED);
    out->ws_errors = __atomic_load_n(&hub->ws_errors, __ATOMIC_RELAXED);
    out->ws_timeouts = __atomic_load_n(&hub->ws_timeouts, __ATOMIC_RELAXED);
    out->kept = apr_atomic_read32(&hub->kept);
    out->kept_total = __atomic_load_n(&hub->kept_total, __ATOMIC_RELAXED);
    out->handed_back = __atomic_load_n(&hub->handed_back, __ATOMIC_RELAXED);
}

struct comet_loop_t *comet_hub_loop(comet_hub_t *hub)
{
    return hub->loop;
}

/* ---- adopting ----------------------------------------------------------- */

apr_status_t comet_hub_adopt(comet_hub_t *hub, const comet_hub_spec_t *spec,
                             comet_hub_sub_t **handle)
{
    comet_hub_sub_t *s;
    hub_handoff_t *h;
    apr_size_t idbytes = 0, wsbytes = 0, preread = 0;
    const comet_hub_ws_spec_t *ws = spec->ws;
    unsigned mflags;
    char *p;

    if (!spec->nchan || spec->nchan > 1024
        || (spec->fd < 0 && !spec->sink)
        || (spec->head_len && (spec->fd < 0 || spec->ssl || !spec->head
                               || spec->transport != COMET_T_LONGPOLL
                               || spec->head_len > COMET_HUB_HEAD_MAX))
        || spec->start < COMET_HUB_START_EXACT
        || spec->start > COMET_HUB_START_LOST) {
        return APR_EINVAL;
    }
    if (spec->transport == COMET_T_WS) {
        /* The hub reads a WebSocket's frames from its socket itself. */
        if (spec->fd < 0 || !ws || !ws->max_message
            || ws->from_len > COMET_STORE_FROM_MAX
            || ws->preread_len > 64 * 1024) {
            return APR_EINVAL;
        }
        wsbytes = sizeof(hub_ws_t) + ws->from_len;
        preread = ws->preread_len;
    }
    mflags = M_CATCHUP | (spec->start == COMET_HUB_START_LOST ? M_MISSED
                          : spec->start == COMET_HUB_START_BACKLOG ? M_FRESH
                          : 0);
    for (apr_size_t i = 0; i < spec->nchan; i++) {
        idbytes += strlen(spec->ids[i]) + 1;
    }
    /* wsbytes and head_len never both: a head is a long-poll's. */
    s = calloc(1, sizeof(*s) + spec->nchan * sizeof(hub_member_t) + wsbytes
                  + spec->head_len);
    h = malloc(sizeof(*h) + spec->nchan * (sizeof(comet_chanref_t)
                                           + sizeof(char *)
                                           + sizeof(apr_size_t)) + idbytes
               + preread);
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
               | (spec->chunked ? SUB_CHUNKED : 0)
               | (spec->keep && spec->fd >= 0 && !spec->ssl && spec->chunked
                  && spec->transport == COMET_T_LONGPOLL ? SUB_KEEP : 0);
    s->served = spec->keep;
    s->linger_ms = spec->transport == COMET_T_LONGPOLL ? spec->linger_ms : 0;
    s->deadline = spec->interval;     /* the period, until linked */
    if (spec->head_len) {
        s->head = (char *)&s->m[spec->nchan];
        s->head_len = (apr_uint32_t)spec->head_len;
        memcpy(s->head, spec->head, spec->head_len);
    }
    h->sub = s;
    h->next = NULL;
    h->refs = (comet_chanref_t *)(h + 1);
    h->ids = (char **)(h->refs + spec->nchan);
    h->id_lens = (apr_size_t *)(h->ids + spec->nchan);
    p = (char *)(h->id_lens + spec->nchan);
    for (apr_size_t i = 0; i < spec->nchan; i++) {
        s->m[i].sub = s;
        s->m[i].seq = spec->seqs[i];
        s->m[i].flags = mflags
                        | (spec->later && spec->later[i] ? M_LATER : 0);
        h->refs[i] = spec->refs[i];
        h->id_lens[i] = strlen(spec->ids[i]);
        memcpy(p, spec->ids[i], h->id_lens[i] + 1);
        h->ids[i] = p;
        p += h->id_lens[i] + 1;
    }
    h->preread = preread ? p : NULL;
    h->preread_len = preread;
    if (wsbytes) {
        hub_ws_t *w = sub_ws(s);

        comet_ws_parser_init(&w->parser, ws->max_message);
        w->publish = !!ws->publish;
        w->rate = ws->rate;
        w->burst = ws->burst ? ws->burst : 1;
        w->tokens = w->burst * 1000;
        w->from_len = (unsigned char)ws->from_len;
        if (ws->from_len) {
            memcpy(w->from, ws->from, ws->from_len);
        }
        if (preread) {
            memcpy(h->preread, ws->preread, preread);
        }
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
