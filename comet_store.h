/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_store.h -- the shared-memory channel store.
 *
 * One segment, created by httpd's parent process and inherited by every
 * child, holds the channel table, each channel's buffer of recent messages,
 * the per-process subscriber counts and the per-process wakeup queues.  Any
 * process and any thread may publish or read.  The segment holds offsets,
 * never pointers, so it does not matter where it is mapped.
 *
 * Server-independent: APR and POSIX only.  The glue owns the memory
 * (apr_shm) and the wakeup file descriptors; the store only says which
 * process slots must be woken.
 *
 * Robustness: a process may die at any instant (SIGKILL), also while it
 * holds a lock.  The next locker finds out (robust mutex, EOWNERDEAD) and
 * repairs the store before it goes on; no call ever deadlocks on a dead
 * process and no repaired store ever hands out a torn message.
 *
 * Threads: unless a function says otherwise, any thread of any process
 * attached to the segment (request threads, MPM callbacks, the hub thread
 * and the publish thread all use the store); a call takes the store lock
 * for a short, bounded time (no I/O, no allocation outside the segment
 * except in the caller's pool).
 */
#ifndef COMET_STORE_H
#define COMET_STORE_H

#include <apr_pools.h>
#include <apr_tables.h>

#include "comet_core.h"
#include "comet_ids.h"

/* ------------------------------------------------------------------ */
/* The store                                                           */
/* ------------------------------------------------------------------ */

typedef struct comet_store_t comet_store_t;   /* process-local handle */

/* Hard limits of the layout: process slots, wakeup queue entries per slot,
 * bytes of a message's event type (1..64 printable ASCII bytes other than
 * space; anything else is refused with COMET_EPROTO), bytes of a channel
 * id (max_channel_id may be at most this). */
#define COMET_STORE_MAX_PROCS        4096
#define COMET_STORE_QUEUE_LEN        4096
#define COMET_STORE_EVENT_MAX        64
#define COMET_STORE_CHANNEL_ID_MAX   65535

/* Event types that start with this (in any case) name the server's own
 * signals (comet-missed, comet-deleted): a publish with one is refused
 * with COMET_ERESERVED, so that no publisher can forge them. */
#define COMET_STORE_EVENT_RESERVED   "comet-"

/* The subscribers' share.  A channel record that only subscriptions made
 * (never published to) goes as soon as its last subscriber leaves, and a
 * subscription may not take the last COMET_STORE_CHAN_RESERVE-th of the
 * channel records, nor the last COMET_STORE_BLOCK_RESERVE-th of the block
 * area for a new channel or for a channel never published to (its id and
 * its subscriber entries).  Those are kept for publishes, so that no
 * number of subscriptions can stop a publish to a new channel. */
#define COMET_STORE_CHAN_RESERVE     4     /* a quarter of the records    */
#define COMET_STORE_BLOCK_RESERVE    8     /* an eighth of the blocks     */

/* Bytes of a message's sender identity (any bytes; shown JSON-escaped). */
#define COMET_STORE_FROM_MAX         255

typedef struct comet_store_config_t {
    apr_size_t   size;              /* bytes of the segment                */
    apr_uint32_t buffer_length;     /* max messages kept per channel (100) */
    apr_time_t   message_timeout;   /* max age of a kept message (3600 s);
                                       0: messages never expire            */
    apr_size_t   max_message_size;  /* payload bytes (256K)                */
    apr_size_t   max_channel_id;    /* bytes (1024)                        */
    apr_time_t   channel_idle;      /* reclaim a channel this long after
                                       its last subscriber/message (60 s)  */
    apr_uint32_t max_procs;         /* process slots (httpd ServerLimit),
                                       1..COMET_STORE_MAX_PROCS (16)       */
    apr_uint32_t epoch;             /* 0: drawn at random when formatted
                                       (the embedded store); else this one
                                       (stores fed by comet_store_feed
                                       that must agree on ids, see there) */
} comet_store_config_t;

/* Fill cfg with the documented defaults for a segment of size bytes.  Any
 * thread (no segment involved). */
void comet_store_config_default(comet_store_config_t *cfg, apr_size_t size);

/* Smallest segment that can hold the fixed part for cfg, so that the glue
 * can refuse a too small CometSharedMemorySize at config time.  Any
 * thread (no segment involved). */
apr_size_t comet_store_min_size(const comet_store_config_t *cfg);

/* The segment holds about size / 1024 channel records and 64-byte blocks
 * for the rest: a message takes 1 + ceil((event + from + data - 16) / 60)
 * blocks
 * (a 100-byte message 192 bytes), a channel id longer than 24 bytes
 * ceil(len / 60) blocks, a channel with subscribers one block per three
 * process slots subscribed. */

/* Format a new store in [base, base + cfg->size) (base 8-byte aligned, as
 * apr_shm_baseaddr_get gives it): draws a new epoch, unless cfg->epoch
 * names one.
 * Caller: the start-up code of the one process that creates the segment
 * (httpd's parent), before any other process or thread uses it.  The
 * handle lives in p. */
apr_status_t comet_store_format(comet_store_t **st, void *base,
                                const comet_store_config_t *cfg,
                                apr_pool_t *p);

/* A handle on an already formatted segment (after fork, the child gets the
 * parent's handle for free; this is for a process that maps it anew, and for
 * tests).  COMET_ECORRUPT when base does not hold a store of this layout.
 * Any thread. */
apr_status_t comet_store_attach(comet_store_t **st, void *base,
                                apr_size_t size, apr_pool_t *p);

/* The limits the segment was formatted with (read-only copy).  Any
 * thread. */
void comet_store_get_config(comet_store_t *st, comet_store_config_t *cfg);

/* The segment's epoch (see comet_ids.h).  Any thread; no lock. */
apr_uint32_t comet_store_epoch(comet_store_t *st);

/* The newest seq the store has handed out, on any channel: a message id of
 * this epoch with a greater seq was never given to anyone.  Any thread; no
 * lock (an atomic read). */
apr_uint64_t comet_store_last_seq(comet_store_t *st);

/* Update the limits that may change on a graceful restart (buffer length,
 * timeouts, max message size); size, max_procs and max_channel_id stay as
 * formatted.  Channels holding more messages than the new buffer length
 * are trimmed on their next publish or read.  Any thread (the glue: its
 * start-up code, on a graceful restart). */
void comet_store_set_limits(comet_store_t *st,
                            const comet_store_config_t *cfg);

/* ---- process slots ------------------------------------------------------ */

/* Claim a slot for process pid (a free one, or one whose process is gone;
 * a dead owner's subscriber counts and queue are cleared first).
 * COMET_ENOSLOT when all max_procs slots hold live processes.  Any thread
 * (the glue: a child's start-up code). */
apr_status_t comet_store_proc_attach(comet_store_t *st, apr_int32_t pid,
                                     apr_uint32_t *slot);

/* Flags of comet_store_proc_attach_ex. */
#define COMET_STORE_SLOT_EXTRA   0x01   /* one more slot for a process that
                                           holds one already (a second
                                           thread that drains wakeups of
                                           its own): slots naming pid are
                                           left alone                     */

/* comet_store_proc_attach with flags.  Without COMET_STORE_SLOT_EXTRA
 * every slot naming pid is taken as an earlier process's (the first is
 * taken over, the others freed).  Any thread (the glue: a child's
 * start-up code). */
apr_status_t comet_store_proc_attach_ex(comet_store_t *st, apr_int32_t pid,
                                        int flags, apr_uint32_t *slot);

/* Give the slot back: its subscriber counts go to zero everywhere.  Any
 * thread, once the thread that drains the slot no longer runs. */
void comet_store_proc_detach(comet_store_t *st, apr_uint32_t slot);

/* Clear the slots whose process no longer exists (kill(pid, 0) says
 * ESRCH).  Cheap enough to call once a second.  Returns how many.  Any
 * thread (the glue: each hub thread, once a second). */
apr_uint32_t comet_store_proc_reap(comet_store_t *st);

/* Watch every channel: while patterns is not 0, every publish queues its
 * channel on the slot's wakeup queue (and kicks the slot) whether the slot
 * has subscribers on it or not, so that its owner can match the channel
 * against patterns.  patterns is the number of distinct patterns the
 * owner listens to (comet_store_patterns sums them); 0 ends the watch.
 * *seq (may be NULL) receives the newest seq at that instant: every
 * message with a greater seq is queued.  A publish compares the channel
 * with the last few the slot has queued since its drain, so that a burst
 * to one channel takes one entry; more distinct channels than the queue
 * holds between two drains set the overflow mark (then see
 * comet_store_published_since).  Cost to every publish while any slot
 * watches: one step per watching slot.  COMET_ENOSLOT when the slot is
 * not attached.  The slot's owner (in the module: the publish thread). */
apr_status_t comet_store_proc_watch(comet_store_t *st, apr_uint32_t slot,
                                    apr_uint32_t patterns,
                                    apr_uint64_t *seq);

/* Patterns watched for, summed over the attached slots (PUBSUB NUMPAT;
 * a pattern listened to in two processes counts twice).  Any thread. */
apr_uint64_t comet_store_patterns(comet_store_t *st);

/* ---- channels and subscribers ------------------------------------------- */

/* A reference to a channel record that stays valid while the holder keeps
 * a subscription on it (a channel with subscribers is never reclaimed). */
typedef struct comet_chanref_t {
    apr_uint32_t index;
    apr_uint32_t gen;
} comet_chanref_t;

/* Count one subscriber of process slot on the channel (created if absent).
 * *newest receives the channel's newest message id (seq 0 when it has
 * none), the position a subscriber without an id starts from.  "Newest" is
 * the last id published to the channel even if that message has since
 * expired, so that reading after it never reports a miss.  newest->seq 0
 * also tells that the channel was never published to: its record is the
 * subscribers' (see COMET_STORE_CHAN_RESERVE).  Errors: COMET_EBADCHAN,
 * APR_EINVAL (slot out of range), COMET_ENOSLOT (slot not attached),
 * COMET_EFULL (no room for the channel or the count), COMET_EQUOTA (only
 * the publishers' reserve is left).  Any thread (a request thread, before
 * it parks the subscriber). */
apr_status_t comet_store_subscribe(comet_store_t *st, apr_uint32_t slot,
                                   const char *channel, apr_size_t len,
                                   apr_time_t now, comet_chanref_t *ref,
                                   comet_msgid_t *newest);

/* Flags of comet_store_subscribe_ex. */
#define COMET_STORE_SUB_EXISTING  0x01   /* COMET_ENOCHAN unless the channel
                                            was published to (and is not
                                            yet reclaimed or deleted)     */

/* comet_store_subscribe with flags.  Any thread. */
apr_status_t comet_store_subscribe_ex(comet_store_t *st, apr_uint32_t slot,
                                      const char *channel, apr_size_t len,
                                      int flags, apr_time_t now,
                                      comet_chanref_t *ref,
                                      comet_msgid_t *newest);

/* Uncount one subscriber counted by comet_store_subscribe; ref is not to
 * be used afterwards.  The last subscriber of a channel never published to
 * takes its record with it.  Any thread (whoever owns the subscription
 * then: a request thread, or the hub thread once it has adopted it). */
void comet_store_unsubscribe(comet_store_t *st, apr_uint32_t slot,
                             const comet_chanref_t *ref, apr_time_t now);

/* ---- publishing --------------------------------------------------------- */

typedef struct comet_publish_t {
    const char *channel;  apr_size_t channel_len;
    const char *data;     apr_size_t data_len;
    const char *event;    apr_size_t event_len;  /* NULL/0: no event type */
    /* Who sent it, as the server established it (a WebSocket client's or
     * an HTTP publisher's CometClientIdentity); NULL/0: nobody said. */
    const char *from;     apr_size_t from_len;
} comet_publish_t;

typedef struct comet_publish_result_t {
    comet_msgid_t id;           /* the new message's id                   */
    apr_uint32_t  receivers;    /* subscribers of the channel, all slots  */
} comet_publish_result_t;

/* Called after the lock is released, once per process slot that has
 * subscribers on the channel and was not already marked for wakeup: the
 * glue kicks that process's wakeup fd.  Many publishes between two wakeups
 * of a process thus cost one kick.  Runs on the thread that published or
 * deleted (or on the hub thread, for the kicks comet_store_maintain
 * repeats). */
typedef void comet_wake_fn(void *baton, apr_uint32_t slot);

/* Append a message to the channel (created if absent), evicting the oldest
 * beyond buffer_length, and queue the channel on the wakeup queue of every
 * slot with subscribers on it.  Errors: COMET_EBADCHAN, COMET_ETOOBIG,
 * COMET_EPROTO (event type refused, see COMET_STORE_EVENT_MAX),
 * COMET_ERESERVED (see COMET_STORE_EVENT_RESERVED), APR_EINVAL (a sender
 * longer than COMET_STORE_FROM_MAX), and
 * COMET_EFULL when no room is left after reclaiming expired messages and
 * idle channels (nothing was changed then).  Cost: the copy of the payload
 * plus one step per subscribed slot; only when the segment is full, one
 * walk over the channel table (at most once per expiry instant).  Any
 * thread (a request thread for HTTP POST, the publish thread for the
 * publish socket). */
apr_status_t comet_store_publish(comet_store_t *st,
                                 const comet_publish_t *msg, apr_time_t now,
                                 comet_wake_fn *wake, void *baton,
                                 comet_publish_result_t *res);

/* Delete a channel: its messages are freed at once; it stays marked
 * deleted (so that its slots' subscribers learn of it through their wakeup
 * queue and end) until its last subscriber is gone.  COMET_ENOCHAN when it
 * does not exist.  *receivers: subscribers it had.  Any thread. */
apr_status_t comet_store_delete(comet_store_t *st, const char *channel,
                                apr_size_t len, comet_wake_fn *wake,
                                void *baton, apr_uint32_t *receivers);

/* ---- feeding: messages whose ids come from elsewhere ---------------------
 *
 * A store may also be a copy of channels kept somewhere else (in the
 * module: Redis, shared by several servers).  The ids of such a channel are
 * not drawn from the store's counter: they come with the messages, the
 * same on every server, and a copy must hold them in order, each once,
 * and say when it lost some.  comet_store_feed is that one operation; a
 * channel that got a message or a position from it is "fed" from then on.
 *
 * It works like a compare-and-set on the channel's position (its newest
 * seq, and whether it is fed), so that several feeders (a process each)
 * can feed one store without a lock of their own: each says what position
 * it believes the channel has; if another feeder moved it since, nothing
 * changes and COMET_ESTALE returns the position as it is, to decide anew
 * (most often: the message is there already).
 *
 * What a feed does, given the position it expected:
 *   - a message with seq = newest + 1 of a fed channel is appended, as a
 *     publish would (evicting beyond buffer_length, waking the slots that
 *     have subscribers on it);
 *   - any other message (a gap: messages between were lost; or the first
 *     message of a channel not yet fed; or a seq lower than the newest:
 *     the ids started anew) first drops every message the channel holds
 *     and moves the channel to seq - 1, with everything up to it counted
 *     as evicted, then appends;
 *   - a position without a message (has_msg 0) does the same drop and
 *     move to seq itself, unless the channel is fed and there already.
 * Readers of a fed channel (comet_store_read) are told they missed
 * messages when their position is below what was dropped, or beyond the
 * channel's newest (an id the copy cannot place: from before the ids
 * started anew, or not yet fed).  The epoch of every id is the store's:
 * give the stores that feed from one source the same cfg->epoch.
 */
typedef struct comet_store_feed_t {
    const char  *channel;  apr_size_t channel_len;
    int          has_msg;           /* 0: only the position (seq)        */
    apr_uint64_t seq;               /* the message's, or the position    */
    const char  *data;     apr_size_t data_len;
    const char  *event;    apr_size_t event_len;  /* NULL/0: none       */
    const char  *from;     apr_size_t from_len;   /* sender; NULL/0: none */
    apr_interval_time_t age;        /* since it was published, >= 0: its
                                       expiry counts from then           */
    int          follows;           /* the message follows the expected
                                       position with nothing lost between
                                       although its seq is not the next
                                       (the first of new ids after a
                                       position of 0: nothing was there) */
    int          expect_fed;        /* the position the feeder believes  */
    apr_uint64_t expect_last;       /* (ignored when expect_fed is 0)    */
} comet_store_feed_t;

/* A channel's position and counts, as comet_store_position reads them. */
typedef struct comet_store_pos_t {
    apr_uint64_t last;              /* newest seq (0: none)              */
    int          fed;
    apr_uint32_t subscribers;       /* all slots                         */
    apr_uint32_t slot_subscribers;  /* of the slot asked about           */
} comet_store_pos_t;

/* Feed one message or position (above) into an existing channel; a feed
 * never creates one (the store copies only channels that have
 * subscribers).  *pos (may be NULL) receives the position afterwards.
 * Errors: COMET_ENOCHAN (no such channel, or deleted), COMET_ESTALE (the
 * position is not the expected one: nothing changed), COMET_EBADCHAN,
 * COMET_ETOOBIG, COMET_EPROTO, APR_EINVAL (a message with seq 0), and
 * COMET_EFULL when no room can be made for the message: then the channel
 * is moved to seq without it (readers learn that they missed it).  Cost
 * as comet_store_publish, plus one step per dropped message.  Any
 * thread. */
apr_status_t comet_store_feed(comet_store_t *st, const comet_store_feed_t *f,
                              apr_time_t now, comet_wake_fn *wake,
                              void *baton, comet_store_pos_t *pos);

/* The channel's position, its subscribers, and those of slot (slot out of
 * range: 0).  COMET_ENOCHAN when it does not exist.  Any thread. */
apr_status_t comet_store_position(comet_store_t *st, apr_uint32_t slot,
                                  const char *channel, apr_size_t len,
                                  comet_store_pos_t *pos);

/* ---- reading ------------------------------------------------------------ */

typedef struct comet_msg_t {
    comet_msgid_t id;
    apr_time_t    published;        /* wall clock, for people */
    const char   *event;  apr_size_t event_len;   /* NULL when none */
    const char   *from;   apr_size_t from_len;    /* NULL when none */
    const char   *data;   apr_size_t data_len;
} comet_msg_t;

typedef struct comet_read_t {
    apr_array_header_t *msgs;   /* of comet_msg_t, oldest first, in p      */
    comet_msgid_t newest;       /* channel's newest id (even if not read)  */
    int missed;                 /* messages after 'after' were evicted or
                                   'after' is of another epoch (see the
                                   rule at comet_store_read)              */
    int deleted;                /* the channel was deleted                 */
    int more;                   /* stopped at max_msgs/max_bytes          */
} comet_read_t;

/* Messages of the channel with id > after (after.seq 0: all buffered),
 * at most max_msgs messages and about max_bytes payload (always at least
 * one message when one is there; 0: no limit), copied into p (data and
 * event are NUL-terminated).  COMET_ENOCHAN when ref no longer names the
 * channel.
 *
 * missed is set when
 *   - after names another epoch, or a seq beyond the newest this store has
 *     handed out (comet_store_last_seq), which no id of this store can
 *     hold: then every buffered message is returned ({0, 0}, the zero id,
 *     counts as "no position" of this epoch), or
 *   - a message with seq > after.seq was evicted or expired from this
 *     channel (the channel keeps the highest seq it ever dropped), or
 *   - 0 < after.seq < the channel's floor: the channel was reclaimed (or
 *     deleted) and created again, and the old incarnation may have held
 *     messages after 'after'.  The floor is the highest seq of any channel
 *     reclaimed before this one was created, so the rule errs on the side
 *     of reporting a miss, never of hiding one.
 * Any thread (the hub thread, and request threads answering at once). */
apr_status_t comet_store_read(comet_store_t *st, const comet_chanref_t *ref,
                              comet_msgid_t after, apr_size_t max_msgs,
                              apr_size_t max_bytes, apr_time_t now,
                              apr_pool_t *p, comet_read_t *out);

/* The position after which the newest n messages the channel keeps
 * follow (0 when it keeps n or fewer: all of them), in *seq: where a
 * subscriber asking for a backlog of n starts, without copying it.
 * COMET_ENOCHAN when ref no longer names the channel.  Any thread (a
 * request thread subscribing); O(messages kept), one lock. */
apr_status_t comet_store_backlog_start(comet_store_t *st,
                                       const comet_chanref_t *ref,
                                       apr_size_t n, apr_time_t now,
                                       apr_uint64_t *seq);

/* The same by channel id, for a subscriber not yet subscribed (long-poll
 * answering at once); COMET_ENOCHAN when the channel does not exist.  Any
 * thread. */
apr_status_t comet_store_read_by_id(comet_store_t *st, const char *channel,
                                    apr_size_t len, comet_msgid_t after,
                                    apr_size_t max_msgs, apr_size_t max_bytes,
                                    apr_time_t now, apr_pool_t *p,
                                    comet_read_t *out);

/* Take the channels queued for wakeup of this slot (and clear its "woken"
 * mark, so the next publish kicks again).  Fills at most max refs, returns
 * the count; *overflow set when the queue had overflowed since the last
 * drain: then the caller must look at all its channels.  When it returns
 * max, more may be queued and the mark stays set: call again.  A channel
 * is queued at most once between two drains.  Caller: the one thread that
 * owns the slot (in the module: the hub thread for a process's slot, the
 * publish thread for its extra slot). */
apr_size_t comet_store_proc_drain(comet_store_t *st, apr_uint32_t slot,
                                  comet_chanref_t *refs, apr_size_t max,
                                  int *overflow);

/* ---- statistics --------------------------------------------------------- */

/* Counts as stored: messages past their timeout count until the next
 * publish, read or maintain pass drops them (this call has no clock). */
typedef struct comet_channel_stats_t {
    apr_uint32_t  messages;         /* stored now                    */
    apr_size_t    bytes;            /* payload bytes stored now      */
    apr_uint32_t  subscribers;      /* all slots                     */
    apr_uint64_t  published;        /* since the channel was created */
    apr_time_t    last_publish;     /* wall clock; 0 when never      */
    comet_msgid_t newest;
} comet_channel_stats_t;

/* One channel's counts; COMET_ENOCHAN when it does not exist.  Any
 * thread. */
apr_status_t comet_store_channel_stats(comet_store_t *st, const char *channel,
                                       apr_size_t len,
                                       comet_channel_stats_t *out);

typedef struct comet_store_stats_t {
    apr_uint32_t channels;          /* records in use (deleted ones still
                                       subscribed included)              */
    apr_uint32_t channels_max;
    apr_uint64_t messages;          /* stored, expired ones not yet
                                       reclaimed included                */
    apr_size_t   bytes_used;        /* of the message area: blocks in use */
    apr_size_t   bytes_free;        /* bytes_used + bytes_free is the
                                       constant size of the block area   */
    apr_uint64_t published;         /* since the segment was formatted */
    apr_uint64_t subscribers;       /* all slots */
    apr_uint64_t recoveries;        /* repairs after a dead lock owner */
} comet_store_stats_t;

/* The whole segment's counts.  Any thread. */
void comet_store_stats(comet_store_t *st, comet_store_stats_t *out);

/* Subscribers counted for one slot (server-status per process).  Any
 * thread. */
apr_uint64_t comet_store_proc_subscribers(comet_store_t *st,
                                          apr_uint32_t slot);

/* Channels with at least one subscriber whose id matches the glob pattern
 * (comet_glob_match; NULL matches all), at most max, copied into p.  The
 * array holds NUL-terminated char *, in table order, each id once.
 *
 * Like Redis' SCAN, the walk is a cursor over the channel table that
 * takes the lock for one slice of records at a time (a few hundred
 * records or 16 KiB of ids, whichever comes first: well under a
 * millisecond) and matches with the lock released.  So it never stalls
 * publishers for long, and a channel that exists, subscribed, for the
 * whole walk is listed; one created, removed or left by its last
 * subscriber during the walk may or may not be.  Costs O(table) time on
 * the calling thread plus the matching (at most O(pattern x id) per
 * channel): for status pages and PUBSUB CHANNELS, not a hot path.  Any
 * thread. */
apr_array_header_t *comet_store_channels(comet_store_t *st,
                                         const char *pattern,
                                         apr_size_t max, apr_pool_t *p);

/* The id of the channel ref names, copied into p (NUL-terminated):
 * COMET_ENOCHAN when ref names no channel any more (a stale ref is
 * harmless: records carry a generation).  Any thread. */
apr_status_t comet_store_chan_id(comet_store_t *st, const comet_chanref_t *ref,
                                 apr_pool_t *p, const char **id,
                                 apr_size_t *len);

/* A channel found by comet_store_published_since. */
typedef struct comet_store_chan_t {
    comet_chanref_t ref;
    const char     *id;           /* NUL-terminated, in the caller's pool */
    apr_size_t      len;
} comet_store_chan_t;

/* Keep a channel (non-zero) or not; called with no lock held. */
typedef int comet_store_match_fn(void *baton, const char *id,
                                 apr_size_t len);

/* Live channels whose newest message has a seq greater than after and
 * that match (all when match is NULL), copied into p, in table order: for
 * a watching slot whose queue overflowed (comet_store_proc_watch).  The
 * walk of comet_store_channels: slices under the lock, match called with
 * it released.  O(table) on the calling thread.  Any thread. */
apr_array_header_t *comet_store_published_since(comet_store_t *st,
                                                apr_uint64_t after,
                                                comet_store_match_fn *match,
                                                void *baton, apr_pool_t *p);

/* ---- housekeeping ------------------------------------------------------- */

/* Expire old messages and reclaim idle channels in the next part of the
 * channel table (a bounded number of records per call, so the lock is
 * held briefly), and kick again every slot whose kick may have been lost:
 * after a repair, each slot with queued channels; always, each slot
 * marked woken for a second or more without a drain (its publisher may
 * have died between the lock and the kick).  Caller: the hub thread of
 * each process, about once a second.  Returns the number of channels
 * reclaimed. */
apr_uint32_t comet_store_maintain(comet_store_t *st, apr_time_t now,
                                  comet_wake_fn *wake, void *baton);

/* Verify every invariant of the segment without changing it: the lists
 * and counts the store keeps against a full walk, every message's chain
 * and checksum, the free lists.  APR_SUCCESS, or COMET_ECORRUPT with the
 * first problem written to why.  O(segment) under the lock: for tests and
 * debugging.  Any thread. */
apr_status_t comet_store_check(comet_store_t *st, char *why, apr_size_t len);

/* ---- testing ------------------------------------------------------------ */

/* When set (tests only; NULL otherwise, which costs one load and branch
 * per point), called with the lock held at the named points inside the
 * critical sections, so that a test can kill the process at a chosen
 * instant and prove the repair. */
typedef void comet_store_hook_fn(int point);
extern comet_store_hook_fn *comet_store_test_hook;

#define COMET_STORE_HOOK_LOCKED        1   /* any call, lock just taken     */
#define COMET_STORE_HOOK_CREATED       2   /* channel record live, linked   */
#define COMET_STORE_HOOK_EVICT_SEQ     3   /* evict: floor raised, still in */
#define COMET_STORE_HOOK_EVICT_UNLINK  4   /* evict: unlinked, not yet free */
#define COMET_STORE_HOOK_ALLOC         5   /* blocks taken from free list   */
#define COMET_STORE_HOOK_COPY          6   /* after each block of payload   */
#define COMET_STORE_HOOK_LINKED        7   /* message linked, counts stale  */
#define COMET_STORE_HOOK_QUEUED        8   /* after queueing one slot       */
#define COMET_STORE_HOOK_DELETE        9   /* delete: marked, msgs not free */
#define COMET_STORE_HOOK_SUBSCRIBE    10   /* subscriber count changed      */
#define COMET_STORE_HOOK_RECLAIM      11   /* channel record freed, blocks
                                              not yet                       */
#define COMET_STORE_HOOK_REPAIR       12   /* in the middle of a repair     */
#define COMET_STORE_HOOK_FEED_MOVED   13   /* feed: messages dropped, the
                                              position moved, not yet the
                                              new message                   */

#endif /* COMET_STORE_H */
