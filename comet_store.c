/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_store.c -- the shared-memory channel store (API: comet_store.h).
 *
 * SEGMENT LAYOUT
 *
 * Every position inside the segment is an offset from its start or the
 * index of a record, never a pointer, so any process may map it anywhere.
 * Regions start at offsets that are multiples of 64; the segment itself
 * need only be 8-byte aligned (apr_shm puts its own size word first).
 *
 *   0            +--------------------------------------------------+
 *                | header: magic, version, layout signature, size,  |
 *                |   geometry (offsets and counts of the regions),  |
 *                |   limits, robust mutex, journal word, allocator  |
 *                |   heads, sequence counter, statistics, the set   |
 *                |   of slots that watch every channel              |
 *   slots_off    +--------------------------------------------------+
 *                | process slot x max_procs: pid, woken mark, drain |
 *                |   generation, pattern count, wakeup ring of 4096 |
 *                |   chanrefs                                       |
 *   buckets_off  +--------------------------------------------------+
 *                | hash buckets x nbuckets: index of first record   |
 *   chans_off    +--------------------------------------------------+
 *                | channel records x channels_max, 128 bytes each   |
 *   scratch_off  +--------------------------------------------------+
 *                | repair scratch: per-slot sums, one channel id,   |
 *                |   one mark bit per block                         |
 *   blocks_off   +--------------------------------------------------+
 *                | blocks x nblocks, 64 bytes each, chained by the  |
 *                |   index in their first word: messages, channel   |
 *                |   ids longer than 24 bytes, subscriber entries   |
 *   size         +--------------------------------------------------+
 *
 * A channel record (state FREE, LIVE or DELETED):
 *
 *   id (inline up to 24 bytes, else id_blk -> chain), hash, hnext
 *   msg_head -> [msg] -> [msg] -> ... -> [msg] <- msg_tail   (next_msg)
 *   subs_blk -> [3 x {slot, count, qgen}] -> ...
 *   last_seq, evicted_seq, floor_seq, published, last_publish, touched
 *
 * A message is a chain of blocks.  Its first block holds the header
 * (next_msg, index of its last block, lengths, seq, times, checksum,
 * magic) and the first 16 bytes of "event type, sender, then data"; each
 * further block holds 60 bytes.  A 100-byte message thus takes 3 blocks, 192
 * bytes; freeing any chain is O(1) (splice first..last onto the free list).
 *
 * LOCKING
 *
 * One process-shared robust mutex in the header serialises every access.
 * Critical sections are short and bounded: a lookup in the hash, the copy
 * of one payload, one step per subscribed slot.  Walks over the whole
 * channel table happen only when the segment is full (at most once per
 * instant at which something could become reclaimable, see sweep_due), on
 * a process slot's death and in the repair; comet_store_channels walks
 * it in slices, releasing the lock between them.
 * BENCHMARKS.md has the measurements behind choosing a single lock.
 *
 * CRASH SAFETY AND REPAIR
 *
 * A process may be killed at any instruction while it holds the lock; the
 * next locker gets EOWNERDEAD and repairs the store (store_scan in fix
 * mode) before it calls pthread_mutex_consistent.  The state is split in
 * two:
 *
 *   primary: record state/gen/id/hash, msg_head, every message's chain and
 *            header, next_msg links, subscriber entries and the chain of
 *            their blocks, seq fields, slot pids;
 *   derived: hash chains, the free lists of blocks and of records, tails,
 *            every count (messages, bytes, subscribers per channel, per
 *            slot and in total), the woken marks, the set of watching
 *            slots (rebuilt from each slot's pattern count, which is
 *            primary).
 *
 * The repair trusts only primary state, validates it structurally (range,
 * no block used twice, chain length exactly as the lengths say, magic,
 * checksum), cuts what fails, then rebuilds all derived state from it.  So
 * a mutation is crash safe when each of its primary stores, taken in
 * program order, leaves primary state meaningful; the code keeps these
 * rules, with a compiler barrier (STORE_ORDER) between the stores whose
 * order matters:
 *
 *   - a message is written completely (magic last) before a single store
 *     links it (tail's next_msg, or msg_head);
 *   - evicting first raises evicted_seq, then unlinks the head with one
 *     store, then frees the blocks (unreachable blocks go back to the
 *     free list in the repair);
 *   - a record becomes LIVE with one store after its id, gen and seq
 *     fields are written; it leaves with one store to FREE after the
 *     segment-wide reclaimed_seq was raised;
 *   - a subscriber entry gets its slot before its count; a new entry
 *     block is fully written before the single store that links it;
 *   - a new seq is stored in the header before any message carries it.
 *
 * The journal word "op" names the mutation in progress (for the log of the
 * repair); the repair does not depend on it.  The repair itself is
 * idempotent, so a process killed while repairing is repaired again.
 *
 * THE SUBSCRIBERS' SHARE
 *
 * Anyone who may subscribe may name channels that do not exist, and
 * subscribing creates their records.  So a record nobody ever published to
 * (last_seq 0, no message: chan_unpublished) is released with its last
 * subscriber instead of after channel_idle, and a subscription may not use
 * the last quarter of the records nor, for such records, the last eighth
 * of the blocks (sub_share): that much is always left for publishes.  No
 * count is kept for it: the rule reads the free counts the store keeps
 * anyway, so the repair has nothing more to rebuild.
 *
 * MISSED DETECTION: the rule is documented at comet_store_read in
 * comet_store.h.  evicted_seq is raised to each message's seq before the
 * message is unlinked (eviction by count or by age); floor_seq is copied
 * at creation from the header's reclaimed_seq, which every reclaim and
 * delete raises to the channel's last_seq first.  The repair may lower
 * evicted_seq to just below the oldest message still buffered (nothing
 * newer was dropped), and raises it to the newest seq of the segment when
 * it has to drop a damaged buffer.
 */

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>

#include <apr_general.h>
#include <apr_hash.h>
#include <apr_strings.h>

#include "comet_store.h"

/* ------------------------------------------------------------------ */
/* Constants and shared records                                        */
/* ------------------------------------------------------------------ */

#define STORE_MAGIC         APR_UINT64_C(0x31544d4f4354454d) /* "METCOMT1" */
#define STORE_VERSION       5    /* 3: a message's sender; 4: the extra
                                        slot that watches every channel;
                                        5: fed channels, the feed
                                        operation */
#define STORE_NIL           0xffffffffu
#define STORE_BLK_SIZE      64
#define STORE_BLK_DATA      (STORE_BLK_SIZE - 4)
#define STORE_MSG_DATA      16          /* payload bytes in a first block */
#define STORE_MSG_MAGIC     0xc0de
#define STORE_ID_INLINE     24
#define STORE_SUBS_PER_BLK  3
#define STORE_BYTES_PER_CHAN 1024       /* segment bytes per channel record */
#define STORE_MIN_CHANNELS  16
#define STORE_MIN_BLOCKS    64
#define STORE_ID_LIMIT      COMET_STORE_CHANNEL_ID_MAX
#define STORE_SWEEP_BUDGET  4096        /* records per maintain call */
#define STORE_WALK_RECORDS  256         /* records per lock hold of
                                           comet_store_channels           */
#define STORE_WALK_BYTES    (16 * 1024) /* id bytes copied per lock hold  */
#define STORE_REKICK        APR_USEC_PER_SEC  /* woken this long: kick again */
#define STORE_WATCH_DEDUP   16          /* queue entries a watching slot's
                                           new entry is compared with    */
#define STORE_TIME_MAX      APR_INT64_C(0x7fffffffffffffff)

#define CHAN_FREE           0
#define CHAN_LIVE           1
#define CHAN_DELETED        2

enum {
    STORE_OP_NONE = 0, STORE_OP_PUBLISH, STORE_OP_SUBSCRIBE,
    STORE_OP_UNSUBSCRIBE, STORE_OP_DELETE, STORE_OP_READ, STORE_OP_SLOT,
    STORE_OP_DRAIN, STORE_OP_SWEEP, STORE_OP_LIMITS, STORE_OP_REPAIR,
    STORE_OP_FEED
};

static const char *const store_op_names[] = {
    "none", "publish", "subscribe", "unsubscribe", "delete", "read",
    "slot change", "drain", "sweep", "limits", "repair", "feed"
};

/* The compiler must not move shared stores across this point: a process
 * killed between two stores leaves the earlier one done.  The CPU needs no
 * fence: the next locker's lock acquisition orders everything the dead
 * process stored before it died. */
#define STORE_ORDER()       __atomic_signal_fence(__ATOMIC_SEQ_CST)

#define STORE_HOOK(point) \
    do { if (comet_store_test_hook) comet_store_test_hook(point); } while (0)

comet_store_hook_fn *comet_store_test_hook;

/* Both lengths are kept in a byte of the message header. */
typedef char store_event_fits_a_byte[COMET_STORE_EVENT_MAX <= 255 ? 1 : -1];
typedef char store_from_fits_a_byte[COMET_STORE_FROM_MAX <= 255 ? 1 : -1];

typedef struct store_msg_t {
    apr_uint32_t next;          /* chain link, as in every block */
    apr_uint32_t next_msg;      /* first block of the channel's next msg */
    apr_uint32_t last;          /* last block of this message's chain */
    apr_uint32_t data_len;
    apr_uint64_t seq;
    apr_int64_t  mono;          /* publish time, monotonic, for expiry */
    apr_int64_t  wall;          /* publish time, wall clock, for people */
    apr_uint32_t sum;           /* checksum of event + from + data */
    unsigned char event_len;
    unsigned char from_len;     /* the sender's identity, 0: none */
    apr_uint16_t magic;         /* written last: the message is complete */
    unsigned char data[STORE_MSG_DATA];
} store_msg_t;

typedef struct store_subent_t {
    apr_uint32_t slot;
    apr_uint32_t count;         /* 0: entry free */
    apr_uint64_t qgen;          /* == slot's dgen: queued since last drain */
} store_subent_t;

typedef struct store_subblk_t {
    apr_uint32_t next;
    apr_uint32_t pad;
    store_subent_t ent[STORE_SUBS_PER_BLK];
} store_subblk_t;

typedef union store_blk_t {
    struct {
        apr_uint32_t next;
        unsigned char data[STORE_BLK_DATA];
    } raw;
    store_msg_t    msg;
    store_subblk_t subs;
} store_blk_t;

typedef struct store_chan_t {
    apr_uint32_t state;
    apr_uint32_t gen;           /* bumped at each creation: chanref check */
    apr_uint32_t hash;
    apr_uint32_t hnext;         /* hash chain, or free-record list */
    apr_uint32_t id_len;
    apr_uint32_t id_blk;        /* chain holding ids > STORE_ID_INLINE */
    apr_uint32_t msg_head;
    apr_uint32_t msg_tail;
    apr_uint32_t msg_count;
    apr_uint32_t subs_blk;
    apr_uint32_t subs_total;
    apr_uint32_t fed;           /* 1: its seqs come from comet_store_feed */
    apr_uint64_t bytes;         /* payload bytes stored */
    apr_uint64_t last_seq;      /* newest seq ever published here */
    apr_uint64_t evicted_seq;   /* highest seq dropped from the buffer */
    apr_uint64_t floor_seq;     /* header's reclaimed_seq at creation */
    apr_uint64_t published;
    apr_int64_t  last_publish;  /* wall clock */
    apr_int64_t  touched;       /* mono: last (un)subscribe/publish/expiry */
    char id[STORE_ID_INLINE];
} store_chan_t;

typedef struct store_slot_t {
    apr_int32_t  pid;           /* 0: free */
    apr_uint32_t woken;
    apr_uint32_t overflow;
    apr_uint32_t qhead;
    apr_uint32_t qlen;
    apr_uint32_t patterns;      /* > 0: queue every channel published to
                                   (comet_store_proc_watch)            */
    apr_uint64_t dgen;          /* drain generation */
    apr_uint64_t subscribers;
    apr_int64_t  woken_at;      /* mono: when woken went to 1 */
    comet_chanref_t queue[COMET_STORE_QUEUE_LEN];
} store_slot_t;

typedef struct store_hdr_t {
    apr_uint64_t magic;
    apr_uint32_t version;
    apr_uint32_t layout;
    apr_uint64_t size;
    apr_uint64_t seed;          /* hash key, random per segment */
    apr_uint32_t epoch;
    /* geometry, fixed at format */
    apr_uint32_t max_procs;
    apr_uint32_t channels_max;
    apr_uint32_t nbuckets;
    apr_uint32_t nblocks;
    apr_uint32_t pad0;
    apr_uint64_t slots_off, buckets_off, chans_off, scratch_off, blocks_off;
    /* limits, set_limits may change them */
    apr_uint32_t buffer_length;
    apr_uint32_t max_channel_id;
    apr_uint64_t max_message_size;
    apr_int64_t  message_timeout;
    apr_int64_t  channel_idle;
    /* the lock and the journal */
    pthread_mutex_t mutex;
    apr_uint32_t op;
    apr_uint32_t kick_all;      /* after a repair: kick all queued slots */
    /* allocators (derived) */
    apr_uint32_t free_head;
    apr_uint32_t free_blocks;
    apr_uint32_t chan_free;
    apr_uint32_t channels;
    apr_uint32_t sweep;         /* maintain cursor */
    apr_uint32_t fresh;         /* blocks [fresh, nblocks) were never used:
                                   free without being on the free list, so
                                   a new segment is not written through   */
    apr_int64_t  sweep_due;     /* mono: nothing reclaimable before */
    /* ids */
    apr_uint64_t seq;           /* last seq handed out */
    apr_uint64_t reclaimed_seq; /* highest last_seq of a channel gone */
    /* statistics */
    apr_uint64_t messages;
    apr_uint64_t subscribers;
    apr_uint64_t published;
    apr_uint64_t recoveries;
    /* slots whose patterns are not 0 (derived from the slots) */
    apr_uint32_t watching;
    apr_uint32_t pad1;
    apr_uint64_t watch_bits[COMET_STORE_MAX_PROCS / 64];
} store_hdr_t;

/* Layout signature: a segment formatted by a build whose records differ
 * (other version, other word size, other libc mutex) is refused. */
#define STORE_LAYOUT ((apr_uint32_t)(sizeof(store_hdr_t) * 131 \
    + sizeof(store_chan_t) * 31 + sizeof(store_slot_t) * 7 \
    + sizeof(store_blk_t) * 3 + sizeof(pthread_mutex_t)))

/* The process-local handle: copies of the geometry (bounds never come from
 * the segment itself once attached) and pointers to the regions. */
struct comet_store_t {
    char           *base;
    apr_size_t      size;
    store_hdr_t    *hdr;
    store_slot_t   *slots;
    apr_uint32_t   *buckets;
    store_chan_t   *chans;
    apr_uint64_t   *slot_sums;  /* scratch: subscribers per slot */
    apr_uint32_t   *slot_seen;  /* scratch: last record naming the slot */
    char           *idbuf;      /* scratch: one channel id */
    apr_uint64_t   *marks;      /* scratch: block in use */
    store_blk_t    *blks;
    apr_uint32_t    max_procs;
    apr_uint32_t    channels_max;
    apr_uint32_t    nbuckets;
    apr_uint32_t    nblocks;
    apr_uint32_t    epoch;
};

typedef struct store_geom_t {
    apr_uint32_t max_procs, channels_max, nbuckets, nblocks;
    apr_size_t   slots_off, buckets_off, chans_off, scratch_off, blocks_off;
} store_geom_t;

/* Wake list collected under the lock, called after it. */
typedef struct store_wake_t {
    apr_uint64_t bits[COMET_STORE_MAX_PROCS / 64];
    apr_uint32_t words;
    int any;
} store_wake_t;

/* Compile-time checks of the record sizes the layout comment promises. */
typedef char store_assert_blk[sizeof(store_blk_t) == STORE_BLK_SIZE ? 1 : -1];
typedef char store_assert_msg[sizeof(store_msg_t) == STORE_BLK_SIZE ? 1 : -1];
typedef char store_assert_chan[sizeof(store_chan_t) == 128 ? 1 : -1];
typedef char store_assert_subs[sizeof(store_subblk_t) <= STORE_BLK_SIZE
                               ? 1 : -1];

/* ------------------------------------------------------------------ */
/* Event types                                                         */
/* ------------------------------------------------------------------ */

/* An event type goes into an SSE "event:" line as it is: printable, no
 * space, bounded; and it must not pass for one of the server's own
 * signals.  Every publish path comes through here. */
static apr_status_t event_check(const char *ev, apr_size_t len)
{
    static const apr_size_t rlen = sizeof(COMET_STORE_EVENT_RESERVED) - 1;
    apr_size_t i;

    if (len == 0) {
        return APR_SUCCESS;
    }
    if (!ev || len > COMET_STORE_EVENT_MAX) {
        return COMET_EPROTO;
    }
    for (i = 0; i < len; i++) {
        if ((unsigned char)ev[i] <= 0x20 || (unsigned char)ev[i] >= 0x7f) {
            return COMET_EPROTO;
        }
    }
    if (len >= rlen && !strncasecmp(ev, COMET_STORE_EVENT_RESERVED, rlen)) {
        return COMET_ERESERVED;
    }
    return APR_SUCCESS;
}

/* ------------------------------------------------------------------ */
/* Hash and checksum                                                   */
/* ------------------------------------------------------------------ */

static apr_uint64_t mix64(apr_uint64_t h)
{
    h ^= h >> 33;
    h *= APR_UINT64_C(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h *= APR_UINT64_C(0xc4ceb9fe1a85ec53);
    h ^= h >> 33;
    return h;
}

/* Keyed by the segment's random seed, so that nobody can compute offline a
 * set of channel ids that all land in one bucket. */
static apr_uint32_t id_hash(apr_uint64_t seed, const char *s, apr_size_t len)
{
    apr_uint64_t h = seed ^ ((apr_uint64_t)len
                             * APR_UINT64_C(0x9e3779b97f4a7c15));
    apr_uint64_t w;

    while (len >= 8) {
        memcpy(&w, s, 8);
        h = mix64(h ^ w) + APR_UINT64_C(0x9e3779b97f4a7c15);
        s += 8;
        len -= 8;
    }
    w = 0;
    memcpy(&w, s, len);
    h = mix64(h ^ w ^ seed);
    return (apr_uint32_t)(h ^ (h >> 32));
}

/* Streaming checksum of a message's event + from + data, the same
 * whatever the chunking, so publish computes it over the caller's buffers
 * (outside the lock) and the verifier over the chain of blocks. */
typedef struct store_sum_t {
    apr_uint64_t h;
    apr_uint64_t total;
    unsigned char buf[8];
    unsigned n;
} store_sum_t;

static void sum_init(store_sum_t *s)
{
    s->h = APR_UINT64_C(0x243f6a8885a308d3);
    s->total = 0;
    s->n = 0;
}

static void sum_word(store_sum_t *s, apr_uint64_t w)
{
    s->h = (s->h ^ w) * APR_UINT64_C(0x100000001b3);
    s->h ^= s->h >> 29;
}

static void sum_update(store_sum_t *s, const void *data, apr_size_t len)
{
    const unsigned char *p = data;
    apr_uint64_t w;

    s->total += len;
    while (len && s->n) {
        s->buf[s->n++] = *p++;
        len--;
        if (s->n == 8) {
            memcpy(&w, s->buf, 8);
            sum_word(s, w);
            s->n = 0;
        }
    }
    while (len >= 8) {
        memcpy(&w, p, 8);
        sum_word(s, w);
        p += 8;
        len -= 8;
    }
    while (len--) {
        s->buf[s->n++] = *p++;
    }
}

static apr_uint32_t sum_final(store_sum_t *s)
{
    apr_uint64_t w = 0;

    memcpy(&w, s->buf, s->n);
    sum_word(s, w ^ s->total);
    s->h = mix64(s->h);
    return (apr_uint32_t)(s->h ^ (s->h >> 32));
}

/* ------------------------------------------------------------------ */
/* Geometry                                                            */
/* ------------------------------------------------------------------ */

static apr_size_t align64(apr_size_t v)
{
    return (v + 63) & ~(apr_size_t)63;
}

static apr_uint32_t msg_blocks(apr_size_t payload)
{
    if (payload <= STORE_MSG_DATA) {
        return 1;
    }
    return (apr_uint32_t)(1 + (payload - STORE_MSG_DATA + STORE_BLK_DATA - 1)
                              / STORE_BLK_DATA);
}

static apr_uint32_t id_blocks(apr_size_t len)
{
    if (len <= STORE_ID_INLINE) {
        return 0;
    }
    return (apr_uint32_t)((len + STORE_BLK_DATA - 1) / STORE_BLK_DATA);
}

/* Repair scratch: per-slot sums (8 bytes) and last record seen (4), one
 * channel id, one mark bit per block. */
static apr_size_t scratch_size(apr_uint32_t max_procs, apr_uint32_t nblocks)
{
    return align64((apr_size_t)max_procs * 12) + align64(STORE_ID_LIMIT + 1)
           + ((apr_size_t)nblocks + 63) / 64 * 8;
}

/* Where the regions of a segment of size bytes go; 0 when it is too
 * small to hold the fixed part and STORE_MIN_BLOCKS blocks. */
static int geom_compute(store_geom_t *g, apr_size_t size,
                        apr_uint32_t max_procs)
{
    apr_size_t off, rest, chans, nb, room;

    memset(g, 0, sizeof(*g));
    g->max_procs = max_procs;
    off = align64(sizeof(store_hdr_t));
    g->slots_off = off;
    off += align64((apr_size_t)max_procs * sizeof(store_slot_t));
    if (off >= size) {
        return 0;
    }
    rest = size - off;
    chans = rest / STORE_BYTES_PER_CHAN;
    if (chans < STORE_MIN_CHANNELS) {
        chans = STORE_MIN_CHANNELS;
    }
    if (chans > 0x40000000) {
        chans = 0x40000000;
    }
    g->channels_max = (apr_uint32_t)chans;
    for (nb = 16; nb < chans; nb <<= 1)
        ;
    g->nbuckets = (apr_uint32_t)nb;
    g->buckets_off = off;
    off += align64(nb * sizeof(apr_uint32_t));
    g->chans_off = off;
    off += align64(chans * sizeof(store_chan_t));
    g->scratch_off = off;
    off += align64(scratch_size(max_procs, 0)) + 64;
    if (off >= size) {
        return 0;
    }
    /* Each block costs its 64 bytes and one mark bit: room * 8 / 513,
     * without overflowing room * 8. */
    room = size - off;
    nb = room / (STORE_BLK_SIZE * 8 + 1) * 8
         + room % (STORE_BLK_SIZE * 8 + 1) * 8 / (STORE_BLK_SIZE * 8 + 1);
    if (nb > STORE_NIL - 1) {
        nb = STORE_NIL - 1;
    }
    for (;;) {
        g->blocks_off = align64(g->scratch_off
                                + scratch_size(max_procs, (apr_uint32_t)nb));
        if (nb == 0 || g->blocks_off + nb * STORE_BLK_SIZE <= size) {
            break;
        }
        nb--;
    }
    if (nb < STORE_MIN_BLOCKS) {
        return 0;
    }
    g->nblocks = (apr_uint32_t)nb;
    return 1;
}

void comet_store_config_default(comet_store_config_t *cfg, apr_size_t size)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->size = size;
    cfg->buffer_length = 100;
    cfg->message_timeout = apr_time_from_sec(3600);
    cfg->max_message_size = 256 * 1024;
    cfg->max_channel_id = COMET_CHANNEL_ID_MAX_DEFAULT;
    cfg->channel_idle = apr_time_from_sec(60);
    cfg->max_procs = 16;
}

/* Blocks the smallest segment must offer: one message of the largest size
 * with the longest event type and sender, plus room for a few channels. */
static apr_size_t min_blocks(const comet_store_config_t *cfg)
{
    apr_size_t b = msg_blocks(cfg->max_message_size + COMET_STORE_EVENT_MAX
                              + COMET_STORE_FROM_MAX)
                   + 4 * (id_blocks(cfg->max_channel_id) + 1);

    return b < STORE_MIN_BLOCKS ? STORE_MIN_BLOCKS : b;
}

apr_size_t comet_store_min_size(const comet_store_config_t *cfg)
{
    apr_uint32_t procs = cfg->max_procs ? cfg->max_procs : 1;
    apr_size_t want = min_blocks(cfg), size;
    store_geom_t g;

    if (procs > COMET_STORE_MAX_PROCS) {
        procs = COMET_STORE_MAX_PROCS;
    }
    /* A first guess from the parts, then grow: the channel table grows
     * with the size too. */
    size = align64(sizeof(store_hdr_t))
           + align64((apr_size_t)procs * sizeof(store_slot_t))
           + STORE_MIN_CHANNELS * (sizeof(store_chan_t) + 4)
           + want * STORE_BLK_SIZE + scratch_size(procs, (apr_uint32_t)want)
           + 1024;
    while (!geom_compute(&g, size, procs) || g.nblocks < want) {
        size += size / 64 + 4096;
    }
    return size;
}

/* ------------------------------------------------------------------ */
/* Handle, format, attach                                              */
/* ------------------------------------------------------------------ */

static void handle_init(comet_store_t *st, void *base, apr_size_t size,
                        const store_geom_t *g, apr_uint32_t epoch)
{
    st->base = base;
    st->size = size;
    st->hdr = base;
    st->slots = (store_slot_t *)(st->base + g->slots_off);
    st->buckets = (apr_uint32_t *)(st->base + g->buckets_off);
    st->chans = (store_chan_t *)(st->base + g->chans_off);
    st->slot_sums = (apr_uint64_t *)(st->base + g->scratch_off);
    st->slot_seen = (apr_uint32_t *)(st->slot_sums + g->max_procs);
    st->idbuf = st->base + g->scratch_off
                + align64((apr_size_t)g->max_procs * 12);
    st->marks = (apr_uint64_t *)(st->idbuf + align64(STORE_ID_LIMIT + 1));
    st->blks = (store_blk_t *)(st->base + g->blocks_off);
    st->max_procs = g->max_procs;
    st->channels_max = g->channels_max;
    st->nbuckets = g->nbuckets;
    st->nblocks = g->nblocks;
    st->epoch = epoch;
}

static apr_int64_t time_clamp(apr_time_t t)
{
    return t < 0 ? 0 : t;
}

static void limits_store(store_hdr_t *h, const comet_store_config_t *cfg)
{
    h->buffer_length = cfg->buffer_length ? cfg->buffer_length : 1;
    h->message_timeout = time_clamp(cfg->message_timeout);
    h->channel_idle = time_clamp(cfg->channel_idle);
    h->max_message_size = cfg->max_message_size > 0xffffffffu
                          ? 0xffffffffu : cfg->max_message_size;
}

apr_status_t comet_store_format(comet_store_t **pst, void *base,
                                const comet_store_config_t *cfg,
                                apr_pool_t *p)
{
    comet_store_t *st;
    store_hdr_t *h = base;
    store_geom_t g;
    pthread_mutexattr_t ma;
    apr_uint32_t i;
    apr_size_t min;
    apr_status_t rv;
    int rc;

    if (!base || ((apr_uintptr_t)base & 7) || !cfg) {
        comet_log(COMET_LOG_ERR, APR_EINVAL,
                  "store segment must be 8-byte aligned");
        return APR_EINVAL;
    }
    if (cfg->max_procs < 1 || cfg->max_procs > COMET_STORE_MAX_PROCS
        || cfg->max_channel_id < 1 || cfg->max_channel_id > STORE_ID_LIMIT) {
        comet_log(COMET_LOG_ERR, APR_EINVAL,
                  "store: max_procs must be 1..%d and max_channel_id 1..%d",
                  COMET_STORE_MAX_PROCS, STORE_ID_LIMIT);
        return APR_EINVAL;
    }
    min = comet_store_min_size(cfg);
    if (cfg->size < min || !geom_compute(&g, cfg->size, cfg->max_procs)) {
        comet_log(COMET_LOG_ERR, APR_EINVAL,
                  "store: a segment of %" APR_SIZE_T_FMT " bytes is too "
                  "small for %u process slots and messages of %"
                  APR_SIZE_T_FMT " bytes: it needs at least %" APR_SIZE_T_FMT,
                  cfg->size, cfg->max_procs, cfg->max_message_size, min);
        return APR_EINVAL;
    }

    memset(base, 0, g.blocks_off);
    h->size = cfg->size;
    h->max_procs = g.max_procs;
    h->channels_max = g.channels_max;
    h->nbuckets = g.nbuckets;
    h->nblocks = g.nblocks;
    h->slots_off = g.slots_off;
    h->buckets_off = g.buckets_off;
    h->chans_off = g.chans_off;
    h->scratch_off = g.scratch_off;
    h->blocks_off = g.blocks_off;
    h->max_channel_id = (apr_uint32_t)cfg->max_channel_id;
    limits_store(h, cfg);

    h->epoch = cfg->epoch;
    while (h->epoch == 0) {
        rv = apr_generate_random_bytes((unsigned char *)&h->epoch,
                                       sizeof(h->epoch));
        if (rv != APR_SUCCESS) {
            comet_log(COMET_LOG_ERR, rv, "store: no random epoch");
            return rv;
        }
    }
    rv = apr_generate_random_bytes((unsigned char *)&h->seed, sizeof(h->seed));
    if (rv != APR_SUCCESS) {
        return rv;
    }

    rc = pthread_mutexattr_init(&ma);
    if (rc == 0) {
        rc = pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
    }
    if (rc == 0) {
        rc = pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
    }
    if (rc == 0) {
        rc = pthread_mutex_init(&h->mutex, &ma);
    }
    pthread_mutexattr_destroy(&ma);
    if (rc != 0) {
        comet_log(COMET_LOG_ERR, rc, "store: cannot create the robust mutex");
        return rc;
    }

    st = apr_pcalloc(p, sizeof(*st));
    handle_init(st, base, cfg->size, &g, h->epoch);
    for (i = 0; i < g.nbuckets; i++) {
        st->buckets[i] = STORE_NIL;
    }
    for (i = 0; i < g.channels_max; i++) {
        st->chans[i].hnext = i + 1 < g.channels_max ? i + 1 : STORE_NIL;
    }
    h->chan_free = 0;
    /* Blocks are handed out from 'fresh' once the free list is empty: the
     * segment's pages are touched only as far as it is used. */
    h->free_head = STORE_NIL;
    h->fresh = 0;
    h->free_blocks = g.nblocks;

    /* Magic last: a segment whose format was cut short is refused. */
    h->version = STORE_VERSION;
    h->layout = STORE_LAYOUT;
    STORE_ORDER();
    h->magic = STORE_MAGIC;
    *pst = st;
    return APR_SUCCESS;
}

apr_status_t comet_store_attach(comet_store_t **pst, void *base,
                                apr_size_t size, apr_pool_t *p)
{
    store_hdr_t *h = base;
    store_geom_t g;
    comet_store_t *st;

    if (!base || ((apr_uintptr_t)base & 7) || size < sizeof(store_hdr_t)
        || h->magic != STORE_MAGIC || h->version != STORE_VERSION
        || h->layout != STORE_LAYOUT || h->size != size || h->epoch == 0
        || h->max_procs < 1 || h->max_procs > COMET_STORE_MAX_PROCS
        || !geom_compute(&g, size, h->max_procs)
        || g.channels_max != h->channels_max || g.nbuckets != h->nbuckets
        || g.nblocks != h->nblocks || g.slots_off != h->slots_off
        || g.buckets_off != h->buckets_off || g.chans_off != h->chans_off
        || g.scratch_off != h->scratch_off || g.blocks_off != h->blocks_off) {
        return COMET_ECORRUPT;
    }
    st = apr_pcalloc(p, sizeof(*st));
    handle_init(st, base, size, &g, h->epoch);
    *pst = st;
    return APR_SUCCESS;
}

/* ------------------------------------------------------------------ */
/* Locking                                                             */
/* ------------------------------------------------------------------ */

static int store_scan(comet_store_t *st, int fix, char *why, apr_size_t len);

static void store_repair(comet_store_t *st)
{
    store_hdr_t *h = st->hdr;
    apr_uint32_t op = h->op;

    comet_log(COMET_LOG_WARNING, APR_SUCCESS,
              "store: a process died holding the store lock (during %s); "
              "repairing", op < sizeof(store_op_names) / sizeof(char *)
                           ? store_op_names[op] : "?");
    h->op = STORE_OP_REPAIR;
    store_scan(st, 1, NULL, 0);
    h->recoveries++;
    STORE_ORDER();
    h->op = STORE_OP_NONE;
    comet_log(COMET_LOG_NOTICE, APR_SUCCESS,
              "store: repaired (%u channels, %" APR_UINT64_T_FMT " messages, "
              "%u free blocks)", h->channels, h->messages, h->free_blocks);
}

static apr_status_t store_lock(comet_store_t *st)
{
    int rc = pthread_mutex_lock(&st->hdr->mutex);

    if (rc == EOWNERDEAD) {
        store_repair(st);
        rc = pthread_mutex_consistent(&st->hdr->mutex);
    }
    if (rc != 0) {
        comet_log(COMET_LOG_ERR, rc, "store: cannot take the store lock");
        return rc;
    }
    STORE_HOOK(COMET_STORE_HOOK_LOCKED);
    return APR_SUCCESS;
}

static void store_unlock(comet_store_t *st)
{
    pthread_mutex_unlock(&st->hdr->mutex);
}

static void op_begin(comet_store_t *st, apr_uint32_t op)
{
    st->hdr->op = op;
    STORE_ORDER();
}

static void op_end(comet_store_t *st)
{
    STORE_ORDER();
    st->hdr->op = STORE_OP_NONE;
}

/* ------------------------------------------------------------------ */
/* Blocks                                                              */
/* ------------------------------------------------------------------ */

#define BLK(st, i)  (&(st)->blks[(i)])

/* Take n >= 1 blocks as a chain: from the free list while it has some,
 * then never used ones from 'fresh'.  Caller checked free_blocks >= n.
 * 'fresh' moves before a block is used, so a repair never finds a used
 * block at or past it. */
static apr_uint32_t blk_alloc(comet_store_t *st, apr_uint32_t n,
                              apr_uint32_t *plast)
{
    store_hdr_t *h = st->hdr;
    apr_uint32_t first = STORE_NIL, last = STORE_NIL, i, b;

    for (i = 0; i < n; i++) {
        if (h->free_head != STORE_NIL) {
            b = h->free_head;
            h->free_head = BLK(st, b)->raw.next;
        }
        else {
            b = h->fresh++;
            STORE_ORDER();
        }
        if (last == STORE_NIL) {
            first = b;
        }
        else {
            BLK(st, last)->raw.next = b;
        }
        last = b;
    }
    h->free_blocks -= n;
    BLK(st, last)->raw.next = STORE_NIL;
    *plast = last;
    return first;
}

static void blk_free(comet_store_t *st, apr_uint32_t first, apr_uint32_t last,
                     apr_uint32_t n)
{
    store_hdr_t *h = st->hdr;

    BLK(st, last)->raw.next = h->free_head;
    h->free_head = first;
    h->free_blocks += n;
}

/* Free a chain of unknown length (ids, subscriber blocks). */
static void blk_free_chain(comet_store_t *st, apr_uint32_t first)
{
    apr_uint32_t last = first, n = 1;

    if (first == STORE_NIL) {
        return;
    }
    while (BLK(st, last)->raw.next != STORE_NIL) {
        last = BLK(st, last)->raw.next;
        n++;
    }
    blk_free(st, first, last, n);
}

/* A cursor over the bytes of a chain: a message (its first block holds
 * STORE_MSG_DATA bytes after the header) or an id (60 per block). */
typedef struct store_cur_t {
    comet_store_t *st;
    apr_uint32_t   blk;
    unsigned char *p;
    apr_size_t     room;
} store_cur_t;

static void cur_init(store_cur_t *c, comet_store_t *st, apr_uint32_t first,
                     int is_msg)
{
    c->st = st;
    c->blk = first;
    if (is_msg) {
        c->p = BLK(st, first)->msg.data;
        c->room = STORE_MSG_DATA;
    }
    else {
        c->p = BLK(st, first)->raw.data;
        c->room = STORE_BLK_DATA;
    }
}

static void cur_next(store_cur_t *c)
{
    c->blk = BLK(c->st, c->blk)->raw.next;
    c->p = BLK(c->st, c->blk)->raw.data;
    c->room = STORE_BLK_DATA;
}

static void cur_write(store_cur_t *c, const void *src, apr_size_t n, int hook)
{
    const char *s = src;

    while (n) {
        apr_size_t k;

        if (c->room == 0) {
            if (hook) {
                STORE_HOOK(COMET_STORE_HOOK_COPY);
            }
            cur_next(c);
        }
        k = n < c->room ? n : c->room;
        memcpy(c->p, s, k);
        c->p += k;
        c->room -= k;
        s += k;
        n -= k;
    }
}

static void cur_read(store_cur_t *c, void *dst, apr_size_t n)
{
    char *d = dst;

    while (n) {
        apr_size_t k;

        if (c->room == 0) {
            cur_next(c);
        }
        k = n < c->room ? n : c->room;
        memcpy(d, c->p, k);
        c->p += k;
        c->room -= k;
        d += k;
        n -= k;
    }
}

static int cur_equal(store_cur_t *c, const char *s, apr_size_t n)
{
    while (n) {
        apr_size_t k;

        if (c->room == 0) {
            cur_next(c);
        }
        k = n < c->room ? n : c->room;
        if (memcmp(c->p, s, k)) {
            return 0;
        }
        c->p += k;
        c->room -= k;
        s += k;
        n -= k;
    }
    return 1;
}

/* ------------------------------------------------------------------ */
/* Channel records                                                     */
/* ------------------------------------------------------------------ */

#define CH(st, i)   (&(st)->chans[(i)])

static int chan_id_equal(comet_store_t *st, store_chan_t *ch,
                         const char *id, apr_size_t len)
{
    store_cur_t c;

    if (ch->id_len != len) {
        return 0;
    }
    if (len <= STORE_ID_INLINE) {
        return memcmp(ch->id, id, len) == 0;
    }
    cur_init(&c, st, ch->id_blk, 0);
    return cur_equal(&c, id, len);
}

static void chan_id_copy(comet_store_t *st, store_chan_t *ch, char *dst)
{
    store_cur_t c;

    if (ch->id_len <= STORE_ID_INLINE) {
        memcpy(dst, ch->id, ch->id_len);
    }
    else {
        cur_init(&c, st, ch->id_blk, 0);
        cur_read(&c, dst, ch->id_len);
    }
    dst[ch->id_len] = '\0';
}

static apr_uint32_t chan_lookup(comet_store_t *st, const char *id,
                                apr_size_t len, apr_uint32_t hash)
{
    apr_uint32_t i = st->buckets[hash & (st->nbuckets - 1)];
    apr_uint32_t steps = 0;

    /* The step bound only guards against a damaged chain. */
    while (i < st->channels_max && steps++ < st->channels_max) {
        store_chan_t *ch = CH(st, i);

        if (ch->hash == hash && ch->state == CHAN_LIVE
            && chan_id_equal(st, ch, id, len)) {
            return i;
        }
        i = ch->hnext;
    }
    return STORE_NIL;
}

static void chan_unlink(comet_store_t *st, apr_uint32_t idx)
{
    apr_uint32_t *pp = &st->buckets[CH(st, idx)->hash & (st->nbuckets - 1)];
    apr_uint32_t steps = 0;

    while (*pp < st->channels_max && steps++ < st->channels_max) {
        if (*pp == idx) {
            *pp = CH(st, idx)->hnext;
            return;
        }
        pp = &CH(st, *pp)->hnext;
    }
}

/* Create a LIVE record; the caller checked that a record and the id's
 * blocks are free. */
static apr_uint32_t chan_create(comet_store_t *st, const char *id,
                                apr_size_t len, apr_uint32_t hash,
                                apr_time_t now)
{
    store_hdr_t *h = st->hdr;
    apr_uint32_t idx = h->chan_free, nb, last, *bucket;
    store_chan_t *ch = CH(st, idx);
    store_cur_t c;

    h->chan_free = ch->hnext;
    ch->hash = hash;
    ch->id_len = (apr_uint32_t)len;
    ch->id_blk = STORE_NIL;
    nb = id_blocks(len);
    if (nb) {
        ch->id_blk = blk_alloc(st, nb, &last);
        cur_init(&c, st, ch->id_blk, 0);
        cur_write(&c, id, len, 0);
    }
    else {
        memcpy(ch->id, id, len);
    }
    ch->msg_head = ch->msg_tail = STORE_NIL;
    ch->msg_count = 0;
    ch->subs_blk = STORE_NIL;
    ch->subs_total = 0;
    ch->bytes = 0;
    ch->last_seq = 0;
    ch->evicted_seq = 0;
    ch->floor_seq = h->reclaimed_seq;
    ch->fed = 0;
    ch->published = 0;
    ch->last_publish = 0;
    ch->touched = now;
    ch->gen++;
    STORE_ORDER();
    ch->state = CHAN_LIVE;
    STORE_ORDER();
    bucket = &st->buckets[hash & (st->nbuckets - 1)];
    ch->hnext = *bucket;
    *bucket = idx;
    h->channels++;
    STORE_HOOK(COMET_STORE_HOOK_CREATED);
    return idx;
}

/* Give a record back.  A LIVE one must be empty of messages and
 * subscribers; its last seq becomes part of every later channel's floor. */
static void chan_release(comet_store_t *st, apr_uint32_t idx)
{
    store_hdr_t *h = st->hdr;
    store_chan_t *ch = CH(st, idx);
    apr_uint32_t id_blk = ch->id_blk, subs = ch->subs_blk;

    if (ch->last_seq > h->reclaimed_seq) {
        h->reclaimed_seq = ch->last_seq;
    }
    if (ch->state == CHAN_LIVE) {
        chan_unlink(st, idx);
    }
    STORE_ORDER();
    ch->state = CHAN_FREE;
    STORE_ORDER();
    STORE_HOOK(COMET_STORE_HOOK_RECLAIM);
    if (ch->id_len > STORE_ID_INLINE) {
        blk_free_chain(st, id_blk);
    }
    blk_free_chain(st, subs);
    ch->id_blk = ch->subs_blk = STORE_NIL;
    ch->hnext = h->chan_free;
    h->chan_free = idx;
    h->channels--;
}

static store_msg_t *MSG(comet_store_t *st, apr_uint32_t i)
{
    return &BLK(st, i)->msg;
}

static apr_uint64_t msg_payload(const store_msg_t *m)
{
    return (apr_uint64_t)m->event_len + m->from_len + m->data_len;
}

/* Drop the oldest message of the channel. */
static void chan_evict_head(comet_store_t *st, store_chan_t *ch)
{
    store_hdr_t *h = st->hdr;
    apr_uint32_t first = ch->msg_head;
    store_msg_t *m = MSG(st, first);

    if (m->seq > ch->evicted_seq) {
        ch->evicted_seq = m->seq;
    }
    STORE_ORDER();
    STORE_HOOK(COMET_STORE_HOOK_EVICT_SEQ);
    ch->msg_head = m->next_msg;
    STORE_ORDER();
    STORE_HOOK(COMET_STORE_HOOK_EVICT_UNLINK);
    if (ch->msg_head == STORE_NIL) {
        ch->msg_tail = STORE_NIL;
    }
    ch->msg_count--;
    ch->bytes -= m->data_len;
    h->messages--;
    blk_free(st, first, m->last, msg_blocks(msg_payload(m)));
}

static int msg_expired(const store_hdr_t *h, const store_msg_t *m,
                       apr_time_t now)
{
    return h->message_timeout > 0 && now - m->mono >= h->message_timeout;
}

/* Drop expired messages and those beyond keep (count).  When the last one
 * goes by age, the channel has been empty since that message's expiry. */
static void chan_trim(comet_store_t *st, store_chan_t *ch, apr_time_t now,
                      apr_uint32_t keep)
{
    store_hdr_t *h = st->hdr;

    while (ch->msg_head != STORE_NIL) {
        store_msg_t *m = MSG(st, ch->msg_head);

        if (ch->msg_count > keep) {
            chan_evict_head(st, ch);
        }
        else if (msg_expired(h, m, now)) {
            apr_time_t end = m->mono + h->message_timeout;

            chan_evict_head(st, ch);
            if (ch->msg_head == STORE_NIL && end > ch->touched) {
                ch->touched = end;
            }
        }
        else {
            break;
        }
    }
}

/* A record nobody ever published to is the subscribers': it goes with
 * its last subscriber (see COMET_STORE_CHAN_RESERVE), at once. */
static int chan_unpublished(const store_chan_t *ch)
{
    return ch->last_seq == 0 && ch->msg_head == STORE_NIL;
}

static int chan_idle(const store_hdr_t *h, const store_chan_t *ch,
                     apr_time_t now)
{
    return ch->subs_total == 0 && ch->msg_head == STORE_NIL
           && (chan_unpublished(ch) || now - ch->touched >= h->channel_idle);
}

static apr_int64_t time_add(apr_int64_t a, apr_int64_t b)
{
    return a > STORE_TIME_MAX - b ? STORE_TIME_MAX : a + b;
}

/* When could this channel next shrink or go: its oldest message's expiry,
 * or the end of its idle time. */
static apr_int64_t chan_due(comet_store_t *st, const store_chan_t *ch)
{
    const store_hdr_t *h = st->hdr;

    if (ch->msg_head != STORE_NIL) {
        return h->message_timeout > 0
               ? time_add(MSG(st, ch->msg_head)->mono, h->message_timeout)
               : STORE_TIME_MAX;
    }
    if (ch->subs_total == 0) {
        return chan_unpublished(ch) ? 0
                                    : time_add(ch->touched, h->channel_idle);
    }
    return STORE_TIME_MAX;
}

/* Expire and reclaim in records [from, from + n) (wrapping).  A full walk
 * also learns when the next one could free anything (sweep_due), so a
 * full store does not walk again and again in vain. */
static apr_uint32_t store_sweep(comet_store_t *st, apr_time_t now,
                                apr_uint32_t from, apr_uint32_t n)
{
    store_hdr_t *h = st->hdr;
    apr_uint32_t i, reclaimed = 0;
    apr_int64_t due = STORE_TIME_MAX;
    int full = n >= st->channels_max;

    if (full) {
        n = st->channels_max;
        from = 0;
    }
    for (i = 0; i < n; i++) {
        apr_uint32_t idx = (from + i) % st->channels_max;
        store_chan_t *ch = CH(st, idx);
        apr_int64_t d;

        if (ch->state == CHAN_LIVE) {
            chan_trim(st, ch, now, STORE_NIL);
            if (chan_idle(h, ch, now)) {
                chan_release(st, idx);
                reclaimed++;
                continue;
            }
        }
        else if (ch->state == CHAN_DELETED && ch->subs_total == 0) {
            chan_release(st, idx);
            reclaimed++;
            continue;
        }
        else {
            continue;
        }
        d = chan_due(st, ch);
        if (d < due) {
            due = d;
        }
    }
    if (full) {
        h->sweep_due = due;
    }
    return reclaimed;
}

/* Lower sweep_due when something will become reclaimable earlier than the
 * last full walk knew. */
static void due_lower(store_hdr_t *h, apr_int64_t t)
{
    if (t < h->sweep_due) {
        h->sweep_due = t;
    }
}

/* Make room: a full sweep, unless the last one said nothing can have
 * become free yet. */
static void store_make_room(comet_store_t *st, apr_time_t now)
{
    if (now >= st->hdr->sweep_due) {
        store_sweep(st, now, 0, st->channels_max);
    }
}

/* ------------------------------------------------------------------ */
/* Subscriber entries and wakeups                                      */
/* ------------------------------------------------------------------ */

static store_subent_t *sub_find(comet_store_t *st, store_chan_t *ch,
                                apr_uint32_t slot, store_subent_t **freeent)
{
    apr_uint32_t b = ch->subs_blk;

    if (freeent) {
        *freeent = NULL;
    }
    while (b != STORE_NIL) {
        store_subblk_t *sb = &BLK(st, b)->subs;
        int k;

        for (k = 0; k < STORE_SUBS_PER_BLK; k++) {
            store_subent_t *e = &sb->ent[k];

            if (e->count && e->slot == slot) {
                return e;
            }
            if (!e->count && freeent && !*freeent) {
                *freeent = e;
            }
        }
        b = sb->next;
    }
    return NULL;
}

static void sub_count(comet_store_t *st, store_chan_t *ch, apr_uint32_t slot,
                      int delta)
{
    if (delta > 0) {
        ch->subs_total++;
        st->slots[slot].subscribers++;
        st->hdr->subscribers++;
    }
    else {
        ch->subs_total--;
        st->slots[slot].subscribers--;
        st->hdr->subscribers--;
    }
}

/* Add one subscriber of slot; a new block is needed only when the chain
 * has neither an entry for slot nor a free one (the caller checked). */
static void sub_add(comet_store_t *st, store_chan_t *ch, apr_uint32_t slot)
{
    store_subent_t *free_e, *e = sub_find(st, ch, slot, &free_e);

    if (e) {
        e->count++;
    }
    else if (free_e) {
        free_e->slot = slot;
        free_e->qgen = st->slots[slot].dgen - 1;
        STORE_ORDER();
        free_e->count = 1;
    }
    else {
        apr_uint32_t last, b = blk_alloc(st, 1, &last);
        store_subblk_t *sb = &BLK(st, b)->subs;

        memset(sb->ent, 0, sizeof(sb->ent));
        sb->ent[0].slot = slot;
        sb->ent[0].qgen = st->slots[slot].dgen - 1;
        sb->ent[0].count = 1;
        sb->next = ch->subs_blk;
        STORE_ORDER();
        ch->subs_blk = b;
    }
    STORE_ORDER();
    sub_count(st, ch, slot, 1);
    STORE_HOOK(COMET_STORE_HOOK_SUBSCRIBE);
}

/* Free the entry blocks of a channel that hold no subscriber any more, so
 * an idle channel costs only its record. */
static void sub_compact(comet_store_t *st, store_chan_t *ch)
{
    apr_uint32_t *pp = &ch->subs_blk;

    while (*pp != STORE_NIL) {
        apr_uint32_t b = *pp;
        store_subblk_t *sb = &BLK(st, b)->subs;
        int k, used = 0;

        for (k = 0; k < STORE_SUBS_PER_BLK; k++) {
            used |= sb->ent[k].count != 0;
        }
        if (used) {
            pp = &sb->next;
            continue;
        }
        *pp = sb->next;
        STORE_ORDER();
        sb->next = STORE_NIL;
        blk_free(st, b, b, 1);
    }
}

static void wake_init(comet_store_t *st, store_wake_t *w)
{
    w->words = (st->max_procs + 63) / 64;
    w->any = 0;
    memset(w->bits, 0, w->words * sizeof(w->bits[0]));
}

static void wake_add(store_wake_t *w, apr_uint32_t slot)
{
    w->bits[slot / 64] |= APR_UINT64_C(1) << (slot % 64);
    w->any = 1;
}

static void wake_mark(store_slot_t *sl, store_wake_t *w, apr_uint32_t slot,
                      apr_time_t now)
{
    if (!sl->woken) {
        sl->woken = 1;
        sl->woken_at = now;
        wake_add(w, slot);
    }
}

static void wake_run(store_wake_t *w, comet_wake_fn *fn, void *baton)
{
    apr_uint32_t i;

    if (!w->any || !fn) {
        return;
    }
    for (i = 0; i < w->words; i++) {
        apr_uint64_t b = w->bits[i];

        while (b) {
            int k = __builtin_ctzll(b);

            fn(baton, i * 64 + (apr_uint32_t)k);
            b &= b - 1;
        }
    }
}

/* Queue the channel on every slot with subscribers on it (once per drain
 * period: qgen) and mark the slots to kick. */
static void chan_notify(comet_store_t *st, apr_uint32_t idx, store_wake_t *w,
                        apr_time_t now)
{
    store_chan_t *ch = CH(st, idx);
    apr_uint32_t b = ch->subs_blk;

    while (b != STORE_NIL) {
        store_subblk_t *sb = &BLK(st, b)->subs;
        int k;

        for (k = 0; k < STORE_SUBS_PER_BLK; k++) {
            store_subent_t *e = &sb->ent[k];
            store_slot_t *sl;

            if (!e->count || e->slot >= st->max_procs) {
                continue;
            }
            sl = &st->slots[e->slot];
            if (e->qgen != sl->dgen) {
                if (sl->qlen < COMET_STORE_QUEUE_LEN) {
                    comet_chanref_t *q = &sl->queue[(sl->qhead + sl->qlen)
                                                    % COMET_STORE_QUEUE_LEN];

                    q->index = idx;
                    q->gen = ch->gen;
                    STORE_ORDER();
                    sl->qlen++;
                }
                else {
                    sl->overflow = 1;
                }
                e->qgen = sl->dgen;
            }
            wake_mark(sl, w, e->slot, now);
            STORE_HOOK(COMET_STORE_HOOK_QUEUED);
        }
        b = sb->next;
    }
}

/* Queue the channel on every slot that watches every channel (its owner
 * listens to patterns), unless it is among the last few channels queued
 * there since the slot's last drain: a burst to one channel (or a few)
 * costs one entry, not one per publish.  A longer run of distinct
 * channels may queue one twice, which costs a duplicate; a full queue
 * sets the overflow mark, as for subscribers. */
static void chan_watch_notify(comet_store_t *st, apr_uint32_t idx,
                              store_wake_t *w, apr_time_t now)
{
    store_hdr_t *h = st->hdr;
    store_chan_t *ch = CH(st, idx);
    apr_uint32_t i, words = (st->max_procs + 63) / 64;

    for (i = 0; i < words; i++) {
        apr_uint64_t bits = h->watch_bits[i];

        while (bits) {
            apr_uint32_t s = i * 64 + (apr_uint32_t)__builtin_ctzll(bits);
            store_slot_t *sl = &st->slots[s];
            apr_uint32_t k, look;
            int queued = 0;

            bits &= bits - 1;
            if (s >= st->max_procs || !sl->patterns || !sl->pid) {
                continue;
            }
            look = sl->qlen < STORE_WATCH_DEDUP ? sl->qlen
                                                : STORE_WATCH_DEDUP;
            for (k = 1; k <= look && !queued; k++) {
                comet_chanref_t *q = &sl->queue[(sl->qhead + sl->qlen - k)
                                                % COMET_STORE_QUEUE_LEN];

                queued = q->index == idx && q->gen == ch->gen;
            }
            if (!queued) {
                if (sl->qlen < COMET_STORE_QUEUE_LEN) {
                    comet_chanref_t *q = &sl->queue[(sl->qhead + sl->qlen)
                                                    % COMET_STORE_QUEUE_LEN];

                    q->index = idx;
                    q->gen = ch->gen;
                    STORE_ORDER();
                    sl->qlen++;
                }
                else {
                    sl->overflow = 1;
                }
            }
            wake_mark(sl, w, s, now);
        }
    }
}

/* Set the derived watch set from a slot's pattern count. */
static void watch_set(store_hdr_t *h, apr_uint32_t slot, int on)
{
    apr_uint64_t bit = APR_UINT64_C(1) << (slot % 64);
    int was = (h->watch_bits[slot / 64] & bit) != 0;

    if (on && !was) {
        h->watch_bits[slot / 64] |= bit;
        h->watching++;
    }
    else if (!on && was) {
        h->watch_bits[slot / 64] &= ~bit;
        h->watching--;
    }
}

/* A kick can be lost: the publisher that set a slot's woken mark may die
 * before it kicks (inside the lock: the repair clears the marks and asks
 * for this pass; just after the lock: nobody knows).  So after a repair
 * every slot with something queued is kicked, and with stale set, also
 * every slot whose mark is older than STORE_REKICK (a slot that drains
 * clears its mark well within that). */
static void kick_pending(comet_store_t *st, store_wake_t *w, apr_time_t now,
                         int stale)
{
    apr_uint32_t s;
    int all = st->hdr->kick_all != 0;

    if (!all && !stale) {
        return;
    }
    st->hdr->kick_all = 0;
    for (s = 0; s < st->max_procs; s++) {
        store_slot_t *sl = &st->slots[s];

        if (!sl->pid) {
            continue;
        }
        if (sl->woken) {
            if (stale && now - sl->woken_at >= STORE_REKICK) {
                sl->woken_at = now;
                wake_add(w, s);
            }
        }
        else if (all && (sl->qlen || sl->overflow)) {
            wake_mark(sl, w, s, now);
        }
    }
}

/* ------------------------------------------------------------------ */
/* Config                                                              */
/* ------------------------------------------------------------------ */

void comet_store_get_config(comet_store_t *st, comet_store_config_t *cfg)
{
    store_hdr_t *h = st->hdr;

    memset(cfg, 0, sizeof(*cfg));
    if (store_lock(st) != APR_SUCCESS) {
        return;
    }
    cfg->size = st->size;
    cfg->buffer_length = h->buffer_length;
    cfg->message_timeout = h->message_timeout;
    cfg->max_message_size = (apr_size_t)h->max_message_size;
    cfg->max_channel_id = h->max_channel_id;
    cfg->channel_idle = h->channel_idle;
    cfg->max_procs = st->max_procs;
    cfg->epoch = st->epoch;
    store_unlock(st);
}

apr_uint32_t comet_store_epoch(comet_store_t *st)
{
    return st->epoch;
}

apr_uint64_t comet_store_last_seq(comet_store_t *st)
{
    return __atomic_load_n(&st->hdr->seq, __ATOMIC_ACQUIRE);
}

void comet_store_set_limits(comet_store_t *st,
                            const comet_store_config_t *cfg)
{
    if (store_lock(st) != APR_SUCCESS) {
        return;
    }
    op_begin(st, STORE_OP_LIMITS);
    limits_store(st->hdr, cfg);
    /* Shorter timeouts may make things reclaimable at once. */
    st->hdr->sweep_due = 0;
    op_end(st);
    store_unlock(st);
}

/* ------------------------------------------------------------------ */
/* Process slots                                                       */
/* ------------------------------------------------------------------ */

/* Remove every subscriber of slot and empty its queue.  Walks the table
 * only when the slot has subscribers.  pid is left to the caller. */
static void slot_clear(comet_store_t *st, apr_uint32_t slot)
{
    store_slot_t *sl = &st->slots[slot];
    apr_uint32_t i;

    if (sl->subscribers) {
        for (i = 0; i < st->channels_max; i++) {
            store_chan_t *ch = CH(st, i);
            store_subent_t *e;

            if (ch->state == CHAN_FREE) {
                continue;
            }
            e = sub_find(st, ch, slot, NULL);
            if (!e) {
                continue;
            }
            ch->subs_total -= e->count;
            st->hdr->subscribers -= e->count;
            sl->subscribers -= e->count;
            e->count = 0;
            sub_compact(st, ch);
            if (ch->subs_total == 0) {
                if (ch->state == CHAN_DELETED || chan_unpublished(ch)) {
                    chan_release(st, i);
                }
                else {
                    due_lower(st->hdr, chan_due(st, ch));
                }
            }
        }
    }
    sl->subscribers = 0;
    sl->qhead = sl->qlen = 0;
    sl->overflow = 0;
    sl->woken = 0;
    sl->patterns = 0;
    watch_set(st->hdr, slot, 0);
    sl->dgen++;
}

static int pid_alive(apr_int32_t pid)
{
    if (pid <= 0) {
        return 0;
    }
    return kill((pid_t)pid, 0) == 0 || errno == EPERM;
}

apr_status_t comet_store_proc_attach(comet_store_t *st, apr_int32_t pid,
                                     apr_uint32_t *slot)
{
    return comet_store_proc_attach_ex(st, pid, 0, slot);
}

apr_status_t comet_store_proc_attach_ex(comet_store_t *st, apr_int32_t pid,
                                        int flags, apr_uint32_t *slot)
{
    apr_uint32_t s, found = STORE_NIL;
    apr_status_t rv;

    if (pid <= 0) {
        return APR_EINVAL;
    }
    if ((rv = store_lock(st)) != APR_SUCCESS) {
        return rv;
    }
    op_begin(st, STORE_OP_SLOT);
    if (!(flags & COMET_STORE_SLOT_EXTRA)) {
        /* Slots already naming pid belonged to an earlier process with
         * the same pid, which is gone since the caller has it now: the
         * first is taken over, the others (its extra slots) freed. */
        for (s = 0; s < st->max_procs; s++) {
            if (st->slots[s].pid != pid) {
                continue;
            }
            slot_clear(st, s);
            if (found == STORE_NIL) {
                found = s;
            }
            else {
                STORE_ORDER();
                st->slots[s].pid = 0;
            }
        }
    }
    for (s = 0; s < st->max_procs && found == STORE_NIL; s++) {
        if (st->slots[s].pid == 0) {
            found = s;
        }
    }
    for (s = 0; s < st->max_procs && found == STORE_NIL; s++) {
        if (st->slots[s].pid != pid && !pid_alive(st->slots[s].pid)) {
            comet_log(COMET_LOG_INFO, APR_SUCCESS,
                      "store: slot %u of dead process %d taken over", s,
                      (int)st->slots[s].pid);
            found = s;
        }
    }
    if (found != STORE_NIL) {
        slot_clear(st, found);
        STORE_ORDER();
        st->slots[found].pid = pid;
        *slot = found;
    }
    op_end(st);
    store_unlock(st);
    return found != STORE_NIL ? APR_SUCCESS : COMET_ENOSLOT;
}

void comet_store_proc_detach(comet_store_t *st, apr_uint32_t slot)
{
    if (slot >= st->max_procs || store_lock(st) != APR_SUCCESS) {
        return;
    }
    op_begin(st, STORE_OP_SLOT);
    slot_clear(st, slot);
    STORE_ORDER();
    st->slots[slot].pid = 0;
    op_end(st);
    store_unlock(st);
}

apr_uint32_t comet_store_proc_reap(comet_store_t *st)
{
    apr_uint32_t s, n = 0;

    /* kill() is a system call: look without the lock, then clear only the
     * slots that still name the pid found dead. */
    for (s = 0; s < st->max_procs; s++) {
        apr_int32_t pid = __atomic_load_n(&st->slots[s].pid, __ATOMIC_RELAXED);

        if (pid == 0 || pid_alive(pid)) {
            continue;
        }
        if (store_lock(st) != APR_SUCCESS) {
            return n;
        }
        if (st->slots[s].pid == pid) {
            op_begin(st, STORE_OP_SLOT);
            slot_clear(st, s);
            STORE_ORDER();
            st->slots[s].pid = 0;
            op_end(st);
            n++;
            comet_log(COMET_LOG_INFO, APR_SUCCESS,
                      "store: reaped slot %u of dead process %d", s, (int)pid);
        }
        store_unlock(st);
    }
    return n;
}

apr_size_t comet_store_proc_drain(comet_store_t *st, apr_uint32_t slot,
                                  comet_chanref_t *refs, apr_size_t max,
                                  int *overflow)
{
    store_slot_t *sl;
    apr_size_t n = 0;

    *overflow = 0;
    if (slot >= st->max_procs || store_lock(st) != APR_SUCCESS) {
        return 0;
    }
    op_begin(st, STORE_OP_DRAIN);
    sl = &st->slots[slot];
    while (n < max && sl->qlen) {
        refs[n++] = sl->queue[sl->qhead];
        sl->qhead = (sl->qhead + 1) % COMET_STORE_QUEUE_LEN;
        sl->qlen--;
    }
    *overflow = sl->overflow != 0;
    sl->overflow = 0;
    /* Channels drained may be queued again; those still queued may be
     * queued twice, which costs a duplicate, never a lost wakeup. */
    sl->dgen++;
    if (sl->qlen == 0) {
        sl->woken = 0;
    }
    op_end(st);
    store_unlock(st);
    return n;
}

apr_status_t comet_store_proc_watch(comet_store_t *st, apr_uint32_t slot,
                                    apr_uint32_t patterns,
                                    apr_uint64_t *seq)
{
    store_slot_t *sl;
    apr_status_t rv;

    if (slot >= st->max_procs) {
        return APR_EINVAL;
    }
    if ((rv = store_lock(st)) != APR_SUCCESS) {
        return rv;
    }
    sl = &st->slots[slot];
    if (!sl->pid) {
        store_unlock(st);
        return COMET_ENOSLOT;
    }
    op_begin(st, STORE_OP_SLOT);
    sl->patterns = patterns;
    STORE_ORDER();
    watch_set(st->hdr, slot, patterns != 0);
    if (seq) {
        *seq = st->hdr->seq;
    }
    op_end(st);
    store_unlock(st);
    return APR_SUCCESS;
}

apr_uint64_t comet_store_patterns(comet_store_t *st)
{
    apr_uint64_t n = 0;
    apr_uint32_t s;

    if (store_lock(st) != APR_SUCCESS) {
        return 0;
    }
    if (st->hdr->watching) {
        for (s = 0; s < st->max_procs; s++) {
            if (st->slots[s].pid) {
                n += st->slots[s].patterns;
            }
        }
    }
    store_unlock(st);
    return n;
}

/* ------------------------------------------------------------------ */
/* Subscribe, publish, delete                                          */
/* ------------------------------------------------------------------ */

static int ref_valid(comet_store_t *st, const comet_chanref_t *ref)
{
    return ref->index < st->channels_max
           && CH(st, ref->index)->state != CHAN_FREE
           && CH(st, ref->index)->gen == ref->gen;
}

/* Blocks needed to add one subscriber of slot to an existing channel. */
static apr_uint32_t sub_need(comet_store_t *st, store_chan_t *ch,
                             apr_uint32_t slot)
{
    store_subent_t *free_e;

    return sub_find(st, ch, slot, &free_e) || free_e ? 0 : 1;
}

/* Whether a subscription that needs need blocks (and a new record when
 * idx is STORE_NIL) fits: *fits in the store at all, and the result in the
 * subscribers' share (COMET_STORE_CHAN_RESERVE). */
static int sub_share(comet_store_t *st, apr_uint32_t idx, apr_uint32_t need,
                     int *fits)
{
    store_hdr_t *h = st->hdr;
    apr_uint32_t blk_reserve = st->nblocks / COMET_STORE_BLOCK_RESERVE;

    if (idx == STORE_NIL) {
        *fits = h->chan_free != STORE_NIL && h->free_blocks >= need;
        return *fits
               && st->channels_max - h->channels
                  > st->channels_max / COMET_STORE_CHAN_RESERVE
               && h->free_blocks - need >= blk_reserve;
    }
    *fits = h->free_blocks >= need;
    /* A channel that was published to is the publishers' already: its
     * entries are bounded by their channels times the process slots. */
    return *fits && (need == 0 || CH(st, idx)->last_seq != 0
                     || h->free_blocks - need >= blk_reserve);
}

apr_status_t comet_store_subscribe(comet_store_t *st, apr_uint32_t slot,
                                   const char *channel, apr_size_t len,
                                   apr_time_t now, comet_chanref_t *ref,
                                   comet_msgid_t *newest)
{
    return comet_store_subscribe_ex(st, slot, channel, len, 0, now, ref,
                                    newest);
}

apr_status_t comet_store_subscribe_ex(comet_store_t *st, apr_uint32_t slot,
                                      const char *channel, apr_size_t len,
                                      int flags, apr_time_t now,
                                      comet_chanref_t *ref,
                                      comet_msgid_t *newest)
{
    store_hdr_t *h = st->hdr;
    apr_uint32_t hash, idx, need = 0;
    int pass, fits = 0;
    apr_status_t rv;

    if (comet_channel_id_check(channel, len, h->max_channel_id)
        != APR_SUCCESS) {
        return COMET_EBADCHAN;
    }
    if (slot >= st->max_procs) {
        return APR_EINVAL;
    }
    hash = id_hash(h->seed, channel, len);
    if ((rv = store_lock(st)) != APR_SUCCESS) {
        return rv;
    }
    if (st->slots[slot].pid == 0) {
        store_unlock(st);
        return COMET_ENOSLOT;
    }
    op_begin(st, STORE_OP_SUBSCRIBE);
    for (pass = 0; pass < 2; pass++) {
        idx = chan_lookup(st, channel, len, hash);
        if ((flags & COMET_STORE_SUB_EXISTING)
            && (idx == STORE_NIL || CH(st, idx)->last_seq == 0)) {
            op_end(st);
            store_unlock(st);
            return COMET_ENOCHAN;
        }
        need = idx == STORE_NIL ? id_blocks(len) + 1
                                : sub_need(st, CH(st, idx), slot);
        if (sub_share(st, idx, need, &fits)) {
            break;
        }
        if (pass == 0) {
            store_make_room(st, now);
        }
    }
    if (pass == 2) {
        op_end(st);
        store_unlock(st);
        return fits ? COMET_EQUOTA : COMET_EFULL;
    }
    if (idx == STORE_NIL) {
        idx = chan_create(st, channel, len, hash, now);
    }
    sub_add(st, CH(st, idx), slot);
    CH(st, idx)->touched = now;
    ref->index = idx;
    ref->gen = CH(st, idx)->gen;
    newest->epoch = st->epoch;
    newest->seq = CH(st, idx)->last_seq;
    op_end(st);
    store_unlock(st);
    return APR_SUCCESS;
}

void comet_store_unsubscribe(comet_store_t *st, apr_uint32_t slot,
                             const comet_chanref_t *ref, apr_time_t now)
{
    store_chan_t *ch;
    store_subent_t *e;

    if (slot >= st->max_procs || store_lock(st) != APR_SUCCESS) {
        return;
    }
    op_begin(st, STORE_OP_UNSUBSCRIBE);
    if (ref_valid(st, ref)) {
        ch = CH(st, ref->index);
        e = sub_find(st, ch, slot, NULL);
        if (e) {
            e->count--;
            STORE_ORDER();
            sub_count(st, ch, slot, -1);
            if (e->count == 0) {
                sub_compact(st, ch);
            }
            ch->touched = now;
            if (ch->subs_total == 0) {
                if (ch->state == CHAN_DELETED || chan_unpublished(ch)) {
                    chan_release(st, ref->index);
                }
                else if (ch->msg_head == STORE_NIL) {
                    due_lower(st->hdr, time_add(now, st->hdr->channel_idle));
                }
            }
        }
    }
    op_end(st);
    store_unlock(st);
}

/* Blocks the count eviction of a publish to ch will give back. */
static apr_uint32_t evict_gain(comet_store_t *st, store_chan_t *ch)
{
    apr_uint32_t keep = st->hdr->buffer_length - 1, gain = 0, n, b;

    if (ch->msg_count <= keep) {
        return 0;
    }
    n = ch->msg_count - keep;
    for (b = ch->msg_head; n && b != STORE_NIL; n--) {
        gain += msg_blocks(msg_payload(MSG(st, b)));
        b = MSG(st, b)->next_msg;
    }
    return gain;
}

apr_status_t comet_store_publish(comet_store_t *st,
                                 const comet_publish_t *msg, apr_time_t now,
                                 comet_wake_fn *wake, void *baton,
                                 comet_publish_result_t *res)
{
    store_hdr_t *h = st->hdr;
    apr_uint32_t hash, idx = STORE_NIL, need, first, last;
    apr_size_t payload;
    store_sum_t sum;
    store_chan_t *ch;
    store_msg_t *m;
    store_cur_t c;
    store_wake_t w;
    apr_time_t wall;
    apr_uint64_t seq;
    int pass;
    apr_status_t rv;

    if (!msg || (msg->data_len && !msg->data)) {
        return APR_EINVAL;
    }
    if (comet_channel_id_check(msg->channel, msg->channel_len,
                               h->max_channel_id) != APR_SUCCESS) {
        return COMET_EBADCHAN;
    }
    if ((rv = event_check(msg->event, msg->event_len)) != APR_SUCCESS) {
        return rv;
    }
    if (msg->from_len > COMET_STORE_FROM_MAX
        || (msg->from_len && !msg->from)) {
        return APR_EINVAL;
    }
    if (msg->data_len > h->max_message_size) {
        return COMET_ETOOBIG;
    }
    payload = msg->event_len + msg->from_len + msg->data_len;
    need = msg_blocks(payload);
    if (need > st->nblocks) {
        return COMET_EFULL;
    }
    /* Everything that needs no lock is done before taking it. */
    hash = id_hash(h->seed, msg->channel, msg->channel_len);
    sum_init(&sum);
    sum_update(&sum, msg->event, msg->event_len);
    sum_update(&sum, msg->from, msg->from_len);
    sum_update(&sum, msg->data, msg->data_len);
    wall = apr_time_now();
    wake_init(st, &w);

    if ((rv = store_lock(st)) != APR_SUCCESS) {
        return rv;
    }
    op_begin(st, STORE_OP_PUBLISH);
    for (pass = 0; pass < 2; pass++) {
        apr_uint32_t room;

        idx = chan_lookup(st, msg->channel, msg->channel_len, hash);
        if (idx != STORE_NIL) {
            /* Expired messages are invisible already: dropping them is no
             * change that EFULL would have to undo. */
            chan_trim(st, CH(st, idx), now, STORE_NIL);
            room = h->free_blocks + evict_gain(st, CH(st, idx));
            if (room >= need) {
                break;
            }
        }
        else if (h->chan_free != STORE_NIL
                 && h->free_blocks >= need + id_blocks(msg->channel_len)) {
            break;
        }
        if (pass == 0) {
            store_make_room(st, now);
        }
    }
    if (pass == 2) {
        op_end(st);
        store_unlock(st);
        return COMET_EFULL;
    }
    if (idx == STORE_NIL) {
        idx = chan_create(st, msg->channel, msg->channel_len, hash, now);
    }
    ch = CH(st, idx);
    chan_trim(st, ch, now, h->buffer_length - 1);

    seq = h->seq + 1;
    h->seq = seq;
    STORE_ORDER();
    first = blk_alloc(st, need, &last);
    STORE_HOOK(COMET_STORE_HOOK_ALLOC);
    m = MSG(st, first);
    m->magic = 0;
    m->next_msg = STORE_NIL;
    m->last = last;
    m->data_len = (apr_uint32_t)msg->data_len;
    m->event_len = (unsigned char)msg->event_len;
    m->from_len = (unsigned char)msg->from_len;
    m->seq = seq;
    m->mono = now;
    m->wall = wall;
    m->sum = sum_final(&sum);
    cur_init(&c, st, first, 1);
    cur_write(&c, msg->event, msg->event_len, 1);
    cur_write(&c, msg->from, msg->from_len, 1);
    cur_write(&c, msg->data, msg->data_len, 1);
    STORE_ORDER();
    m->magic = STORE_MSG_MAGIC;
    STORE_ORDER();
    if (ch->msg_tail != STORE_NIL) {
        MSG(st, ch->msg_tail)->next_msg = first;
    }
    else {
        ch->msg_head = first;
    }
    STORE_ORDER();
    STORE_HOOK(COMET_STORE_HOOK_LINKED);
    ch->msg_tail = first;
    ch->msg_count++;
    ch->bytes += msg->data_len;
    ch->last_seq = seq;
    ch->published++;
    ch->last_publish = wall;
    ch->touched = now;
    h->messages++;
    h->published++;
    if (h->message_timeout > 0) {
        due_lower(h, time_add(now, h->message_timeout));
    }

    chan_notify(st, idx, &w, now);
    if (h->watching) {
        chan_watch_notify(st, idx, &w, now);
    }
    kick_pending(st, &w, now, 0);
    if (res) {
        res->id.epoch = st->epoch;
        res->id.seq = seq;
        res->receivers = ch->subs_total;
    }
    op_end(st);
    store_unlock(st);
    wake_run(&w, wake, baton);
    return APR_SUCCESS;
}

/* Check a channel id, take the lock and find the channel: APR_SUCCESS with
 * the lock held and *idx set; otherwise the error with the lock not held
 * (COMET_EBADCHAN, COMET_ENOCHAN, or the lock's own). */
static apr_status_t lock_existing(comet_store_t *st, const char *channel,
                                  apr_size_t len, apr_uint32_t *idx)
{
    apr_uint32_t hash;
    apr_status_t rv;

    if (comet_channel_id_check(channel, len, st->hdr->max_channel_id)
        != APR_SUCCESS) {
        return COMET_EBADCHAN;
    }
    hash = id_hash(st->hdr->seed, channel, len);
    if ((rv = store_lock(st)) != APR_SUCCESS) {
        return rv;
    }
    *idx = chan_lookup(st, channel, len, hash);
    if (*idx == STORE_NIL) {
        store_unlock(st);
        return COMET_ENOCHAN;
    }
    return APR_SUCCESS;
}

apr_status_t comet_store_delete(comet_store_t *st, const char *channel,
                                apr_size_t len, comet_wake_fn *wake,
                                void *baton, apr_uint32_t *receivers)
{
    store_hdr_t *h = st->hdr;
    apr_uint32_t idx, b;
    store_chan_t *ch;
    store_wake_t w;
    apr_time_t now;
    apr_status_t rv;

    wake_init(st, &w);
    now = comet_now_mono();
    if ((rv = lock_existing(st, channel, len, &idx)) != APR_SUCCESS) {
        return rv;
    }
    op_begin(st, STORE_OP_DELETE);
    ch = CH(st, idx);
    if (ch->last_seq > h->reclaimed_seq) {
        h->reclaimed_seq = ch->last_seq;
    }
    chan_unlink(st, idx);
    STORE_ORDER();
    ch->state = CHAN_DELETED;
    STORE_ORDER();
    STORE_HOOK(COMET_STORE_HOOK_DELETE);
    b = ch->msg_head;
    ch->msg_head = ch->msg_tail = STORE_NIL;
    STORE_ORDER();
    while (b != STORE_NIL) {
        store_msg_t *m = MSG(st, b);
        apr_uint32_t next = m->next_msg;

        blk_free(st, b, m->last, msg_blocks(msg_payload(m)));
        b = next;
    }
    h->messages -= ch->msg_count;
    ch->msg_count = 0;
    ch->bytes = 0;
    if (receivers) {
        *receivers = ch->subs_total;
    }
    if (ch->subs_total == 0) {
        chan_release(st, idx);
    }
    else {
        chan_notify(st, idx, &w, now);
    }
    kick_pending(st, &w, now, 0);
    op_end(st);
    store_unlock(st);
    wake_run(&w, wake, baton);
    return APR_SUCCESS;
}

/* ------------------------------------------------------------------ */
/* Reading                                                             */
/* ------------------------------------------------------------------ */

static void msg_copy(comet_store_t *st, apr_uint32_t b, apr_pool_t *p,
                     comet_msg_t *out)
{
    store_msg_t *m = MSG(st, b);
    store_cur_t c;
    char *ev = NULL, *from = NULL, *data;

    out->id.epoch = st->epoch;
    out->id.seq = m->seq;
    out->published = m->wall;
    cur_init(&c, st, b, 1);
    if (m->event_len) {
        ev = apr_palloc(p, (apr_size_t)m->event_len + 1);
        cur_read(&c, ev, m->event_len);
        ev[m->event_len] = '\0';
    }
    if (m->from_len) {
        from = apr_palloc(p, (apr_size_t)m->from_len + 1);
        cur_read(&c, from, m->from_len);
        from[m->from_len] = '\0';
    }
    data = apr_palloc(p, (apr_size_t)m->data_len + 1);
    cur_read(&c, data, m->data_len);
    data[m->data_len] = '\0';
    out->event = ev;
    out->event_len = m->event_len;
    out->from = from;
    out->from_len = m->from_len;
    out->data = data;
    out->data_len = m->data_len;
}

static void read_locked(comet_store_t *st, apr_uint32_t idx,
                        comet_msgid_t after, apr_size_t max_msgs,
                        apr_size_t max_bytes, apr_time_t now, apr_pool_t *p,
                        comet_read_t *out)
{
    store_chan_t *ch = CH(st, idx);
    apr_uint64_t from;
    apr_size_t bytes = 0;
    apr_uint32_t b;

    out->msgs = apr_array_make(p, 4, sizeof(comet_msg_t));
    out->missed = out->deleted = out->more = 0;
    out->newest.epoch = st->epoch;
    out->newest.seq = ch->last_seq;
    if (ch->state == CHAN_DELETED) {
        out->deleted = 1;
        return;
    }
    chan_trim(st, ch, now, st->hdr->buffer_length);

    /* The rule documented at comet_store_read (and, for a fed channel,
     * at comet_store_feed). */
    if (after.epoch == 0 && after.seq == 0) {
        from = 0;
    }
    else if (after.epoch != st->epoch
             || after.seq > (ch->fed ? ch->last_seq : st->hdr->seq)) {
        out->missed = 1;
        from = 0;
    }
    else {
        from = after.seq;
        if (from && !ch->fed && from < ch->floor_seq) {
            out->missed = 1;
        }
    }
    if (ch->evicted_seq > from) {
        out->missed = 1;
    }

    for (b = ch->msg_head; b != STORE_NIL; b = MSG(st, b)->next_msg) {
        store_msg_t *m = MSG(st, b);

        if (m->seq <= from) {
            continue;
        }
        if (out->msgs->nelts
            && ((max_msgs && (apr_size_t)out->msgs->nelts >= max_msgs)
                || (max_bytes && bytes + m->data_len > max_bytes))) {
            out->more = 1;
            break;
        }
        msg_copy(st, b, p, apr_array_push(out->msgs));
        bytes += m->data_len;
    }
}

apr_status_t comet_store_read(comet_store_t *st, const comet_chanref_t *ref,
                              comet_msgid_t after, apr_size_t max_msgs,
                              apr_size_t max_bytes, apr_time_t now,
                              apr_pool_t *p, comet_read_t *out)
{
    apr_status_t rv;

    if ((rv = store_lock(st)) != APR_SUCCESS) {
        return rv;
    }
    if (!ref_valid(st, ref)) {
        store_unlock(st);
        return COMET_ENOCHAN;
    }
    op_begin(st, STORE_OP_READ);
    read_locked(st, ref->index, after, max_msgs, max_bytes, now, p, out);
    op_end(st);
    store_unlock(st);
    return APR_SUCCESS;
}

apr_status_t comet_store_backlog_start(comet_store_t *st,
                                       const comet_chanref_t *ref,
                                       apr_size_t n, apr_time_t now,
                                       apr_uint64_t *seq)
{
    store_chan_t *ch;
    apr_uint32_t b, skip;
    apr_status_t rv;

    if ((rv = store_lock(st)) != APR_SUCCESS) {
        return rv;
    }
    if (!ref_valid(st, ref)) {
        store_unlock(st);
        return COMET_ENOCHAN;
    }
    op_begin(st, STORE_OP_READ);
    ch = CH(st, ref->index);
    *seq = 0;
    if (ch->state != CHAN_DELETED) {
        chan_trim(st, ch, now, st->hdr->buffer_length);
        if (n < ch->msg_count) {
            /* Walk to the last message before the newest n. */
            skip = ch->msg_count - (apr_uint32_t)n;
            for (b = ch->msg_head; b != STORE_NIL && skip;
                 b = MSG(st, b)->next_msg) {
                *seq = MSG(st, b)->seq;
                skip--;
            }
        }
    }
    op_end(st);
    store_unlock(st);
    return APR_SUCCESS;
}

apr_status_t comet_store_read_by_id(comet_store_t *st, const char *channel,
                                    apr_size_t len, comet_msgid_t after,
                                    apr_size_t max_msgs, apr_size_t max_bytes,
                                    apr_time_t now, apr_pool_t *p,
                                    comet_read_t *out)
{
    apr_uint32_t idx;
    apr_status_t rv;

    if ((rv = lock_existing(st, channel, len, &idx)) != APR_SUCCESS) {
        return rv;
    }
    op_begin(st, STORE_OP_READ);
    read_locked(st, idx, after, max_msgs, max_bytes, now, p, out);
    op_end(st);
    store_unlock(st);
    return APR_SUCCESS;
}

/* ------------------------------------------------------------------ */
/* Statistics and housekeeping                                         */
/* ------------------------------------------------------------------ */

apr_status_t comet_store_channel_stats(comet_store_t *st, const char *channel,
                                       apr_size_t len,
                                       comet_channel_stats_t *out)
{
    apr_uint32_t idx;
    store_chan_t *ch;
    apr_status_t rv;

    if ((rv = lock_existing(st, channel, len, &idx)) != APR_SUCCESS) {
        return rv;
    }
    ch = CH(st, idx);
    memset(out, 0, sizeof(*out));
    out->messages = ch->msg_count;
    out->bytes = (apr_size_t)ch->bytes;
    out->subscribers = ch->subs_total;
    out->published = ch->published;
    out->last_publish = ch->last_publish;
    out->newest.epoch = st->epoch;
    out->newest.seq = ch->last_seq;
    store_unlock(st);
    return APR_SUCCESS;
}

void comet_store_stats(comet_store_t *st, comet_store_stats_t *out)
{
    store_hdr_t *h = st->hdr;

    memset(out, 0, sizeof(*out));
    if (store_lock(st) != APR_SUCCESS) {
        return;
    }
    out->channels = h->channels;
    out->channels_max = st->channels_max;
    out->messages = h->messages;
    out->bytes_free = (apr_size_t)h->free_blocks * STORE_BLK_SIZE;
    out->bytes_used = (apr_size_t)(st->nblocks - h->free_blocks)
                      * STORE_BLK_SIZE;
    out->published = h->published;
    out->subscribers = h->subscribers;
    out->recoveries = h->recoveries;
    store_unlock(st);
}

apr_uint64_t comet_store_proc_subscribers(comet_store_t *st,
                                          apr_uint32_t slot)
{
    apr_uint64_t n;

    if (slot >= st->max_procs || store_lock(st) != APR_SUCCESS) {
        return 0;
    }
    n = st->slots[slot].subscribers;
    store_unlock(st);
    return n;
}

apr_array_header_t *comet_store_channels(comet_store_t *st,
                                         const char *pattern,
                                         apr_size_t max, apr_pool_t *p)
{
    apr_array_header_t *arr = apr_array_make(p, 8, sizeof(char *));
    apr_hash_t *seen = apr_hash_make(p);
    apr_size_t plen = pattern ? strlen(pattern) : 0;
    apr_size_t id_max = st->hdr->max_channel_id;
    char *buf = apr_palloc(p, STORE_WALK_BYTES + id_max + 1);
    apr_uint32_t next = 0;

    /* A cursor over the table: each lock hold copies the ids of at most
     * STORE_WALK_RECORDS records (or STORE_WALK_BYTES of ids); the pattern
     * is matched with the lock released, so a costly pattern costs the
     * caller only. */
    while (next < st->channels_max && (apr_size_t)arr->nelts < max) {
        apr_uint32_t end = next + STORE_WALK_RECORDS;
        apr_size_t used = 0, off, len;

        if (store_lock(st) != APR_SUCCESS) {
            break;
        }
        for (; next < end && next < st->channels_max
               && used < STORE_WALK_BYTES; next++) {
            store_chan_t *ch = CH(st, next);

            if (ch->state != CHAN_LIVE || ch->subs_total == 0
                || ch->id_len > id_max) {
                continue;
            }
            chan_id_copy(st, ch, buf + used);
            used += ch->id_len + 1;
        }
        store_unlock(st);
        /* Ids never contain a NUL (comet_channel_id_check). */
        for (off = 0; off < used && (apr_size_t)arr->nelts < max;
             off += len + 1) {
            const char *id = buf + off;

            len = strlen(id);
            if ((!pattern || comet_glob_match(pattern, plen, id, len))
                && !apr_hash_get(seen, id, (apr_ssize_t)len)) {
                char *copy = apr_pstrmemdup(p, id, len);

                /* A channel removed and made again in a record further on
                 * during the walk is still listed once. */
                apr_hash_set(seen, copy, (apr_ssize_t)len, copy);
                APR_ARRAY_PUSH(arr, char *) = copy;
            }
        }
    }
    return arr;
}

apr_status_t comet_store_chan_id(comet_store_t *st, const comet_chanref_t *ref,
                                apr_pool_t *p, const char **id,
                                apr_size_t *len)
{
    store_chan_t *ch;
    char *copy;
    apr_status_t rv;

    if ((rv = store_lock(st)) != APR_SUCCESS) {
        return rv;
    }
    if (!ref_valid(st, ref)
        || CH(st, ref->index)->id_len > st->hdr->max_channel_id) {
        store_unlock(st);
        return COMET_ENOCHAN;
    }
    ch = CH(st, ref->index);
    copy = apr_palloc(p, (apr_size_t)ch->id_len + 1);
    chan_id_copy(st, ch, copy);
    *len = ch->id_len;
    store_unlock(st);
    *id = copy;
    return APR_SUCCESS;
}

apr_array_header_t *comet_store_published_since(comet_store_t *st,
                                                apr_uint64_t after,
                                                comet_store_match_fn *match,
                                                void *baton, apr_pool_t *p)
{
    apr_array_header_t *arr = apr_array_make(p, 8,
                                             sizeof(comet_store_chan_t));
    apr_size_t id_max = st->hdr->max_channel_id;
    char *buf = apr_palloc(p, STORE_WALK_BYTES + id_max + 1);
    comet_chanref_t refs[STORE_WALK_RECORDS];
    apr_uint32_t next = 0;

    /* The walk of comet_store_channels: slices under the lock, matching
     * with it released. */
    while (next < st->channels_max) {
        apr_uint32_t end = next + STORE_WALK_RECORDS, n = 0, k;
        apr_size_t used = 0, len;

        if (store_lock(st) != APR_SUCCESS) {
            break;
        }
        for (; next < end && next < st->channels_max
               && used < STORE_WALK_BYTES; next++) {
            store_chan_t *ch = CH(st, next);

            if (ch->state != CHAN_LIVE || ch->last_seq <= after
                || ch->id_len > id_max) {
                continue;
            }
            chan_id_copy(st, ch, buf + used);
            refs[n].index = next;
            refs[n].gen = ch->gen;
            n++;
            used += ch->id_len + 1;
        }
        store_unlock(st);
        for (k = 0, used = 0; k < n; k++, used += len + 1) {
            const char *id = buf + used;
            comet_store_chan_t *c;

            len = strlen(id);
            if (match && !match(baton, id, len)) {
                continue;
            }
            c = apr_array_push(arr);
            c->ref = refs[k];
            c->id = apr_pstrmemdup(p, id, len);
            c->len = len;
        }
    }
    return arr;
}

apr_uint32_t comet_store_maintain(comet_store_t *st, apr_time_t now,
                                  comet_wake_fn *wake, void *baton)
{
    store_hdr_t *h = st->hdr;
    apr_uint32_t n, from;
    store_wake_t w;

    wake_init(st, &w);
    if (store_lock(st) != APR_SUCCESS) {
        return 0;
    }
    op_begin(st, STORE_OP_SWEEP);
    from = h->sweep < st->channels_max ? h->sweep : 0;
    n = store_sweep(st, now, from, STORE_SWEEP_BUDGET);
    h->sweep = (apr_uint32_t)(((apr_uint64_t)from + STORE_SWEEP_BUDGET)
                              % st->channels_max);
    kick_pending(st, &w, now, 1);
    op_end(st);
    store_unlock(st);
    wake_run(&w, wake, baton);
    return n;
}

/* ------------------------------------------------------------------ */
/* Verification and repair                                             */
/* ------------------------------------------------------------------ */

/* In check mode: record the first problem and stop.  In fix mode: log it
 * at debug level and go on mending. */
typedef struct store_scan_t {
    comet_store_t *st;
    int   fix;
    int   bad;
    char *why;
    apr_size_t why_len;
} store_scan_t;

static void scan_bad(store_scan_t *sc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void scan_bad(store_scan_t *sc, const char *fmt, ...)
{
    va_list ap;
    char buf[200];

    va_start(ap, fmt);
    apr_vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (!sc->bad && sc->why && sc->why_len) {
        apr_cpystrn(sc->why, buf, sc->why_len);
    }
    sc->bad++;
    if (sc->fix) {
        comet_log(COMET_LOG_INFO, APR_SUCCESS, "store repair: %s", buf);
    }
}

static int mark_test(comet_store_t *st, apr_uint32_t b)
{
    return (st->marks[b / 64] >> (b % 64)) & 1;
}

static void mark_set(comet_store_t *st, apr_uint32_t b, int on)
{
    if (on) {
        st->marks[b / 64] |= APR_UINT64_C(1) << (b % 64);
    }
    else {
        st->marks[b / 64] &= ~(APR_UINT64_C(1) << (b % 64));
    }
}

/* Is first..  a chain of exactly n unmarked blocks ending in NIL?  *plast
 * receives its last block. */
static int chain_ok(comet_store_t *st, apr_uint32_t first, apr_uint32_t n,
                    apr_uint32_t *plast)
{
    apr_uint32_t b = first, i;

    for (i = 0; i < n; i++) {
        if (b >= st->nblocks || mark_test(st, b)) {
            return 0;
        }
        *plast = b;
        b = BLK(st, b)->raw.next;
    }
    return b == STORE_NIL;
}

static void chain_mark(comet_store_t *st, apr_uint32_t first, int on)
{
    apr_uint32_t b = first;

    while (b != STORE_NIL) {
        mark_set(st, b, on);
        b = BLK(st, b)->raw.next;
    }
}

/* A linked message is acceptable when its chain and header agree and its
 * bytes are those that were published. */
static int msg_ok(comet_store_t *st, apr_uint32_t b, apr_uint64_t prev_seq)
{
    store_msg_t *m;
    apr_uint32_t last = STORE_NIL, n;
    store_sum_t sum;
    store_cur_t c;
    apr_size_t left;

    if (b >= st->nblocks || mark_test(st, b)) {
        return 0;
    }
    m = MSG(st, b);
    if (m->magic != STORE_MSG_MAGIC || m->seq <= prev_seq
        || m->seq > st->hdr->seq || m->event_len > COMET_STORE_EVENT_MAX) {
        return 0;
    }
    n = msg_blocks(msg_payload(m));
    if (n > st->nblocks || !chain_ok(st, b, n, &last) || last != m->last) {
        return 0;
    }
    sum_init(&sum);
    cur_init(&c, st, b, 1);
    left = (apr_size_t)msg_payload(m);
    while (left) {
        apr_size_t k;

        if (c.room == 0) {
            cur_next(&c);
        }
        k = left < c.room ? left : c.room;
        sum_update(&sum, c.p, k);
        c.p += k;
        c.room -= k;
        left -= k;
    }
    return sum_final(&sum) == m->sum;
}

/* Validate one record's id; 0 when the record must go. */
static int scan_chan_id(store_scan_t *sc, apr_uint32_t i)
{
    comet_store_t *st = sc->st;
    store_chan_t *ch = CH(st, i);
    apr_uint32_t last, nb;
    int ok;

    if (ch->id_len < 1 || ch->id_len > st->hdr->max_channel_id) {
        return 0;
    }
    nb = id_blocks(ch->id_len);
    if (nb && !chain_ok(st, ch->id_blk, nb, &last)) {
        return 0;
    }
    chan_id_copy(st, ch, st->idbuf);
    ok = comet_channel_id_check(st->idbuf, ch->id_len,
                                st->hdr->max_channel_id) == APR_SUCCESS
         && ch->hash == id_hash(st->hdr->seed, st->idbuf, ch->id_len);
    if (ok && nb) {
        chain_mark(st, ch->id_blk, 1);
    }
    return ok;
}

/* Subscriber entries: mark their blocks, cut a damaged chain, drop
 * entries of free slots and duplicates; returns the sum of counts. */
static apr_uint64_t scan_chan_subs(store_scan_t *sc, apr_uint32_t i)
{
    comet_store_t *st = sc->st;
    store_chan_t *ch = CH(st, i);
    apr_uint32_t *pp = &ch->subs_blk;
    apr_uint64_t total = 0;

    while (*pp != STORE_NIL) {
        apr_uint32_t b = *pp;
        store_subblk_t *sb;
        int k;

        if (b >= st->nblocks || mark_test(st, b)) {
            scan_bad(sc, "channel %u: subscriber chain damaged at %u", i, b);
            if (sc->fix) {
                *pp = STORE_NIL;
            }
            break;
        }
        mark_set(st, b, 1);
        sb = &BLK(st, b)->subs;
        for (k = 0; k < STORE_SUBS_PER_BLK; k++) {
            store_subent_t *e = &sb->ent[k];

            if (!e->count) {
                continue;
            }
            if (e->slot >= st->max_procs || st->slots[e->slot].pid == 0
                || st->slot_seen[e->slot] == i + 1) {
                scan_bad(sc, "channel %u: bad subscriber entry (slot %u)",
                         i, e->slot);
                if (sc->fix) {
                    e->count = 0;
                }
                continue;
            }
            st->slot_seen[e->slot] = i + 1;
            st->slot_sums[e->slot] += e->count;
            total += e->count;
        }
        pp = &sb->next;
    }
    return total;
}

/* Messages: keep the longest valid prefix of the list, recount. */
static void scan_chan_msgs(store_scan_t *sc, apr_uint32_t i,
                           apr_uint64_t *messages)
{
    comet_store_t *st = sc->st;
    store_chan_t *ch = CH(st, i);
    apr_uint32_t *pp = &ch->msg_head, tail = STORE_NIL, count = 0;
    apr_uint64_t bytes = 0, prev = 0;

    if (ch->state == CHAN_DELETED && ch->msg_head != STORE_NIL) {
        scan_bad(sc, "channel %u: deleted but holds messages", i);
        if (sc->fix) {
            ch->msg_head = STORE_NIL;
        }
        else {
            return;
        }
    }
    while (*pp != STORE_NIL) {
        apr_uint32_t b = *pp;

        if (!msg_ok(st, b, prev)) {
            scan_bad(sc, "channel %u: message at block %u damaged", i, b);
            if (sc->fix) {
                /* Cannot happen when the ordering rules hold; if it does,
                 * drop the whole buffer (a valid prefix would hide the
                 * loss from a reader positioned inside it) and report a
                 * miss to everyone. */
                for (b = ch->msg_head; b != *pp; b = MSG(st, b)->next_msg) {
                    chain_mark(st, b, 0);
                }
                ch->msg_head = STORE_NIL;
                ch->evicted_seq = st->hdr->seq;
                tail = STORE_NIL;
                count = 0;
                bytes = 0;
            }
            break;
        }
        chain_mark(st, b, 1);
        prev = MSG(st, b)->seq;
        tail = b;
        count++;
        bytes += MSG(st, b)->data_len;
        pp = &MSG(st, b)->next_msg;
    }
    if (ch->msg_tail != tail || ch->msg_count != count
        || ch->bytes != bytes) {
        if (!sc->fix || ch->msg_count != count) {
            scan_bad(sc, "channel %u: tail/count/bytes %u/%u/%"
                     APR_UINT64_T_FMT " should be %u/%u/%" APR_UINT64_T_FMT,
                     i, ch->msg_tail,
                     ch->msg_count, ch->bytes, tail, count, bytes);
        }
        if (sc->fix) {
            ch->msg_tail = tail;
            ch->msg_count = count;
            ch->bytes = bytes;
        }
    }
    if (tail != STORE_NIL && ch->last_seq < MSG(st, tail)->seq) {
        scan_bad(sc, "channel %u: last_seq behind its newest message", i);
        if (sc->fix) {
            ch->last_seq = MSG(st, tail)->seq;
        }
    }
    if (ch->msg_head != STORE_NIL
        && ch->evicted_seq >= MSG(st, ch->msg_head)->seq) {
        scan_bad(sc, "channel %u: evicted_seq not below its oldest", i);
        if (sc->fix) {
            ch->evicted_seq = MSG(st, ch->msg_head)->seq - 1;
        }
    }
    *messages += count;
}

static int store_scan(comet_store_t *st, int fix, char *why, apr_size_t len)
{
    store_hdr_t *h = st->hdr;
    store_scan_t sc;
    apr_uint32_t i, in_use = 0, live = 0, nfree, b, steps, watching = 0;
    apr_uint64_t messages = 0, subscribers = 0, maxseq = h->seq;

    sc.st = st;
    sc.fix = fix;
    sc.bad = 0;
    sc.why = why;
    sc.why_len = len;

    if (fix) {
        if (h->buffer_length < 1) {
            h->buffer_length = 1;
        }
        if (h->max_channel_id < 1 || h->max_channel_id > STORE_ID_LIMIT) {
            h->max_channel_id = COMET_CHANNEL_ID_MAX_DEFAULT;
        }
    }
    else if (h->op != STORE_OP_NONE) {
        scan_bad(&sc, "journal names an unfinished %u", h->op);
    }
    memset(st->marks, 0, ((apr_size_t)st->nblocks + 63) / 64 * 8);
    memset(st->slot_sums, 0, (apr_size_t)st->max_procs * 8);
    memset(st->slot_seen, 0, (apr_size_t)st->max_procs * 4);

    /* Primary state, record by record. */
    for (i = 0; i < st->channels_max; i++) {
        store_chan_t *ch = CH(st, i);
        apr_uint64_t subs;

        if (ch->state == CHAN_FREE) {
            continue;
        }
        if (ch->state != CHAN_LIVE && ch->state != CHAN_DELETED) {
            scan_bad(&sc, "channel %u: state %u", i, ch->state);
            if (fix) {
                ch->state = CHAN_FREE;
            }
            continue;
        }
        if (!scan_chan_id(&sc, i)) {
            scan_bad(&sc, "channel %u: id damaged", i);
            if (fix) {
                ch->state = CHAN_FREE;
            }
            continue;
        }
        subs = scan_chan_subs(&sc, i);
        if (subs != ch->subs_total) {
            scan_bad(&sc, "channel %u: %u subscribers counted, %"
                     APR_UINT64_T_FMT " found", i, ch->subs_total, subs);
            if (fix) {
                ch->subs_total = (apr_uint32_t)subs;
            }
        }
        if (ch->last_seq > maxseq || ch->evicted_seq > maxseq) {
            scan_bad(&sc, "channel %u: seq beyond the counter", i);
            if (fix) {
                maxseq = ch->last_seq > maxseq ? ch->last_seq : maxseq;
                maxseq = ch->evicted_seq > maxseq ? ch->evicted_seq : maxseq;
            }
        }
        scan_chan_msgs(&sc, i, &messages);
        if (ch->state == CHAN_DELETED && ch->subs_total == 0) {
            scan_bad(&sc, "channel %u: deleted without subscribers", i);
            if (fix) {
                /* Give back what this record marked. */
                if (ch->id_len > STORE_ID_INLINE) {
                    chain_mark(st, ch->id_blk, 0);
                }
                chain_mark(st, ch->subs_blk, 0);
                if (ch->last_seq > h->reclaimed_seq) {
                    h->reclaimed_seq = ch->last_seq;
                }
                ch->state = CHAN_FREE;
                continue;
            }
        }
        if (ch->subs_total) {
            subscribers += ch->subs_total;
        }
        in_use++;
        live += ch->state == CHAN_LIVE;
        STORE_HOOK(COMET_STORE_HOOK_REPAIR);
    }
    if (h->reclaimed_seq > maxseq) {
        scan_bad(&sc, "reclaimed_seq beyond the counter");
        maxseq = h->reclaimed_seq;
    }

    /* Derived state: rebuild, or compare. */
    if (fix) {
        h->seq = maxseq;
        for (i = 0; i < st->nbuckets; i++) {
            st->buckets[i] = STORE_NIL;
        }
        h->chan_free = STORE_NIL;
        for (i = st->channels_max; i-- > 0;) {
            store_chan_t *ch = CH(st, i);

            if (ch->state == CHAN_LIVE) {
                apr_uint32_t *bucket = &st->buckets[ch->hash
                                                    & (st->nbuckets - 1)];
                ch->hnext = *bucket;
                *bucket = i;
            }
            else if (ch->state == CHAN_FREE) {
                ch->hnext = h->chan_free;
                h->chan_free = i;
            }
            else {
                ch->hnext = STORE_NIL;
            }
        }
        h->channels = in_use;
        h->free_head = STORE_NIL;
        /* Never past a used block (cannot happen: fresh moves first; but a
         * repair trusts nothing it can check). */
        for (b = st->nblocks; b-- > h->fresh;) {
            if (mark_test(st, b)) {
                h->fresh = b + 1;
                break;
            }
        }
        if (h->fresh > st->nblocks) {
            h->fresh = st->nblocks;
        }
        nfree = st->nblocks - h->fresh;
        for (b = h->fresh; b-- > 0;) {
            if (!mark_test(st, b)) {
                BLK(st, b)->raw.next = h->free_head;
                h->free_head = b;
                nfree++;
            }
        }
        h->free_blocks = nfree;
        for (i = 0; i < st->max_procs; i++) {
            store_slot_t *sl = &st->slots[i];

            sl->qhead %= COMET_STORE_QUEUE_LEN;
            if (sl->qlen > COMET_STORE_QUEUE_LEN) {
                sl->qlen = COMET_STORE_QUEUE_LEN;
            }
            sl->woken = 0;
            sl->subscribers = st->slot_sums[i];
            if (!sl->pid) {
                sl->patterns = 0;
            }
        }
        h->watching = 0;
        memset(h->watch_bits, 0, sizeof(h->watch_bits));
        for (i = 0; i < st->max_procs; i++) {
            watch_set(h, i, st->slots[i].patterns != 0);
        }
        h->kick_all = 1;
        h->messages = messages;
        h->subscribers = subscribers;
        h->sweep_due = 0;
        if (h->sweep >= st->channels_max) {
            h->sweep = 0;
        }
        return sc.bad;
    }

    /* Check mode: the hash holds exactly the LIVE records. */
    steps = 0;
    for (i = 0; i < st->nbuckets && !sc.bad; i++) {
        apr_uint32_t c = st->buckets[i];

        while (c != STORE_NIL && !sc.bad) {
            if (c >= st->channels_max || ++steps > live
                || CH(st, c)->state != CHAN_LIVE
                || (CH(st, c)->hash & (st->nbuckets - 1)) != i) {
                scan_bad(&sc, "hash bucket %u damaged", i);
                break;
            }
            c = CH(st, c)->hnext;
        }
    }
    if (!sc.bad && steps != live) {
        scan_bad(&sc, "hash holds %u of %u live channels", steps, live);
    }
    steps = 0;
    for (i = h->chan_free; i != STORE_NIL && !sc.bad; i = CH(st, i)->hnext) {
        if (i >= st->channels_max || CH(st, i)->state != CHAN_FREE
            || ++steps > st->channels_max - in_use) {
            scan_bad(&sc, "free record list damaged at %u", i);
        }
    }
    if (!sc.bad && (steps != st->channels_max - in_use
                    || h->channels != in_use)) {
        scan_bad(&sc, "%u channels counted, %u in use, %u free", h->channels,
                 in_use, steps);
    }
    nfree = 0;
    if (h->fresh > st->nblocks) {
        scan_bad(&sc, "fresh block index %u past %u blocks", h->fresh,
                 st->nblocks);
    }
    for (b = h->free_head; b != STORE_NIL && !sc.bad;
         b = BLK(st, b)->raw.next) {
        if (b >= h->fresh || mark_test(st, b)) {
            scan_bad(&sc, "free block list damaged at %u", b);
            break;
        }
        mark_set(st, b, 1);
        nfree++;
    }
    for (b = h->fresh; b < st->nblocks && !sc.bad; b++) {
        if (mark_test(st, b)) {
            scan_bad(&sc, "block %u past the fresh index is in use", b);
            break;
        }
        mark_set(st, b, 1);
        nfree++;
    }
    if (!sc.bad && nfree != h->free_blocks) {
        scan_bad(&sc, "%u free blocks counted, %u on the list",
                 h->free_blocks, nfree);
    }
    for (b = 0; b < st->nblocks && !sc.bad; b++) {
        if (!mark_test(st, b)) {
            scan_bad(&sc, "block %u neither used nor free", b);
        }
    }
    for (i = 0; i < st->max_procs && !sc.bad; i++) {
        store_slot_t *sl = &st->slots[i];

        if (sl->subscribers != st->slot_sums[i]
            || sl->qhead >= COMET_STORE_QUEUE_LEN
            || sl->qlen > COMET_STORE_QUEUE_LEN) {
            scan_bad(&sc, "slot %u: counts or queue damaged", i);
        }
        else if (((h->watch_bits[i / 64] >> (i % 64)) & 1)
                 != (sl->patterns != 0)) {
            scan_bad(&sc, "slot %u: watch set disagrees with its %u "
                     "patterns", i, sl->patterns);
        }
        else if (sl->patterns) {
            watching++;
        }
    }
    if (!sc.bad && watching != h->watching) {
        scan_bad(&sc, "%u watching slots counted, %u found", h->watching,
                 watching);
    }
    if (!sc.bad && (h->messages != messages
                    || h->subscribers != subscribers)) {
        scan_bad(&sc, "totals: %" APR_UINT64_T_FMT " messages, %"
                 APR_UINT64_T_FMT " subscribers counted; %" APR_UINT64_T_FMT
                 ", %" APR_UINT64_T_FMT " found", h->messages, h->subscribers,
                 messages, subscribers);
    }
    return sc.bad;
}

apr_status_t comet_store_check(comet_store_t *st, char *why, apr_size_t len)
{
    int bad;

    if (why && len) {
        why[0] = '\0';
    }
    if (store_lock(st) != APR_SUCCESS) {
        return COMET_ECORRUPT;
    }
    bad = store_scan(st, 0, why, len);
    store_unlock(st);
    return bad ? COMET_ECORRUPT : APR_SUCCESS;
}

/* ------------------------------------------------------------------ */
/* Feeding (see comet_store.h)                                         */
/* ------------------------------------------------------------------ */

/* Drop every message of ch and move it to seq: all up to seq counts as
 * evicted.  The order keeps a reader of a half-done move from being told
 * nothing: first the counter (the repair's bound), then fed and the
 * newest seq (a reader beyond it is told it missed some), then the
 * evicted mark (a reader below it is told so too). */
static void feed_move(comet_store_t *st, store_chan_t *ch, apr_uint64_t seq)
{
    store_hdr_t *h = st->hdr;

    while (ch->msg_head != STORE_NIL) {
        chan_evict_head(st, ch);
    }
    if (seq > h->seq) {
        h->seq = seq;
    }
    STORE_ORDER();
    ch->fed = 1;
    STORE_ORDER();
    ch->last_seq = seq;
    STORE_ORDER();
    ch->evicted_seq = seq;
    STORE_ORDER();
    STORE_HOOK(COMET_STORE_HOOK_FEED_MOVED);
}

/* Append a message with the feeder's seq (> ch->last_seq, and the
 * counter raised to it), as comet_store_publish appends. */
static void feed_append(comet_store_t *st, store_chan_t *ch,
                        const comet_store_feed_t *f, apr_uint32_t need,
                        apr_uint32_t sum, apr_time_t mono, apr_time_t wall)
{
    store_hdr_t *h = st->hdr;
    apr_uint32_t first, last;
    store_msg_t *m;
    store_cur_t c;

    if (f->seq > h->seq) {
        h->seq = f->seq;
    }
    STORE_ORDER();
    first = blk_alloc(st, need, &last);
    STORE_HOOK(COMET_STORE_HOOK_ALLOC);
    m = MSG(st, first);
    m->magic = 0;
    m->next_msg = STORE_NIL;
    m->last = last;
    m->data_len = (apr_uint32_t)f->data_len;
    m->event_len = (unsigned char)f->event_len;
    m->from_len = (unsigned char)f->from_len;
    m->seq = f->seq;
    m->mono = mono;
    m->wall = wall;
    m->sum = sum;
    cur_init(&c, st, first, 1);
    cur_write(&c, f->event, f->event_len, 1);
    cur_write(&c, f->from, f->from_len, 1);
    cur_write(&c, f->data, f->data_len, 1);
    STORE_ORDER();
    m->magic = STORE_MSG_MAGIC;
    STORE_ORDER();
    if (ch->msg_tail != STORE_NIL) {
        MSG(st, ch->msg_tail)->next_msg = first;
    }
    else {
        ch->msg_head = first;
    }
    STORE_ORDER();
    STORE_HOOK(COMET_STORE_HOOK_LINKED);
    ch->msg_tail = first;
    ch->msg_count++;
    ch->bytes += f->data_len;
    ch->last_seq = f->seq;
    ch->published++;
    ch->last_publish = wall;
    h->messages++;
    h->published++;
    if (h->message_timeout > 0) {
        due_lower(h, time_add(mono, h->message_timeout));
    }
}

static void pos_fill(const store_chan_t *ch, comet_store_pos_t *pos)
{
    if (pos) {
        pos->last = ch->last_seq;
        pos->fed = ch->fed != 0;
        pos->subscribers = ch->subs_total;
        pos->slot_subscribers = 0;
    }
}

apr_status_t comet_store_feed(comet_store_t *st, const comet_store_feed_t *f,
                              apr_time_t now, comet_wake_fn *wake,
                              void *baton, comet_store_pos_t *pos)
{
    store_hdr_t *h = st->hdr;
    apr_uint32_t hash, idx, need = 0, sum = 0;
    apr_interval_time_t age;
    apr_time_t wall;
    store_chan_t *ch;
    store_wake_t w;
    int contiguous, pass;
    apr_status_t rv;

    if (!f || (f->has_msg && (f->seq == 0 || (f->data_len && !f->data)))) {
        return APR_EINVAL;
    }
    if (comet_channel_id_check(f->channel, f->channel_len,
                               h->max_channel_id) != APR_SUCCESS) {
        return COMET_EBADCHAN;
    }
    if (f->has_msg) {
        store_sum_t ss;

        if ((rv = event_check(f->event, f->event_len)) != APR_SUCCESS
            && rv != COMET_ERESERVED) {
            /* Reserved names are refused where messages enter (the
             * publishers of the source); a copy takes what it is given. */
            return rv;
        }
        if (f->from_len > COMET_STORE_FROM_MAX
            || (f->from_len && !f->from)) {
            return APR_EINVAL;
        }
        if (f->data_len > h->max_message_size) {
            return COMET_ETOOBIG;
        }
        need = msg_blocks(f->event_len + f->from_len + f->data_len);
        sum_init(&ss);
        sum_update(&ss, f->event, f->event_len);
        sum_update(&ss, f->from, f->from_len);
        sum_update(&ss, f->data, f->data_len);
        sum = sum_final(&ss);
    }
    age = f->age > 0 ? f->age : 0;
    if (age > now) {
        age = now;
    }
    wall = apr_time_now() - age;
    hash = id_hash(h->seed, f->channel, f->channel_len);
    wake_init(st, &w);

    if ((rv = store_lock(st)) != APR_SUCCESS) {
        return rv;
    }
    op_begin(st, STORE_OP_FEED);
    idx = chan_lookup(st, f->channel, f->channel_len, hash);
    if (idx == STORE_NIL) {
        op_end(st);
        store_unlock(st);
        return COMET_ENOCHAN;
    }
    ch = CH(st, idx);
    if ((ch->fed != 0) != (f->expect_fed != 0)
        || (ch->fed && ch->last_seq != f->expect_last)) {
        pos_fill(ch, pos);
        op_end(st);
        store_unlock(st);
        return COMET_ESTALE;
    }
    rv = APR_SUCCESS;
    contiguous = ch->fed && (f->seq == ch->last_seq + 1
                             || (f->follows && f->seq > ch->last_seq));
    if (!f->has_msg) {
        if (!ch->fed || ch->last_seq != f->seq) {
            feed_move(st, ch, f->seq);
            chan_notify(st, idx, &w, now);
        }
    }
    else {
        for (pass = 0; pass < 2; pass++) {
            chan_trim(st, ch, now, STORE_NIL);
            if (h->free_blocks + (contiguous ? evict_gain(st, ch)
                                             : 0) >= need) {
                break;
            }
            if (!contiguous) {
                /* Its own messages go anyway: count them as room. */
                apr_uint32_t b, own = 0;

                for (b = ch->msg_head; b != STORE_NIL;
                     b = MSG(st, b)->next_msg) {
                    own += msg_blocks(msg_payload(MSG(st, b)));
                }
                if (h->free_blocks + own >= need) {
                    break;
                }
            }
            if (pass == 0) {
                store_make_room(st, now);
            }
        }
        if (pass == 2) {
            feed_move(st, ch, f->seq);
            rv = COMET_EFULL;
        }
        else {
            if (!contiguous) {
                feed_move(st, ch, f->seq - 1);
            }
            chan_trim(st, ch, now, h->buffer_length - 1);
            feed_append(st, ch, f, need, sum, now - age, wall);
        }
        ch->touched = now;
        chan_notify(st, idx, &w, now);
    }
    kick_pending(st, &w, now, 0);
    pos_fill(ch, pos);
    op_end(st);
    store_unlock(st);
    wake_run(&w, wake, baton);
    return rv;
}

apr_status_t comet_store_position(comet_store_t *st, apr_uint32_t slot,
                                  const char *channel, apr_size_t len,
                                  comet_store_pos_t *pos)
{
    apr_uint32_t idx;
    store_chan_t *ch;
    store_subent_t *e;
    apr_status_t rv;

    if ((rv = lock_existing(st, channel, len, &idx)) != APR_SUCCESS) {
        return rv;
    }
    ch = CH(st, idx);
    pos_fill(ch, pos);
    if (slot < st->max_procs && (e = sub_find(st, ch, slot, NULL)) != NULL) {
        pos->slot_subscribers = e->count;
    }
    store_unlock(st);
    return APR_SUCCESS;
}
