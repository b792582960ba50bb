/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet_status.c -- mod_comet's section of server-status.
 *
 * Store-wide numbers come from the store.  What happens in each child's
 * hub (connections held, deliveries, slow subscribers dropped) is known
 * only inside that process, so every child's hub thread copies its
 * counters once a second (the hub's tick) into its record of a small
 * shared array, one record per store process slot; any child answering
 * server-status reads them all.  When a process ends, its counters are
 * added to "retired" totals so that the "since start" sums do not shrink.
 *
 * The array lives in its own anonymous shared memory in the process pool,
 * found again after a graceful restart through the pool's user data, like
 * the store (see mod_comet.c): plain data only, no cleanup of ours.
 *
 * Threads: tick on the hub thread; the status hook on a request thread;
 * the live numbers from any thread; the rest in post_config, child_init
 * and the child pool's pre-cleanup.
 */

#include <errno.h>
#include <signal.h>
#include <unistd.h>

#include <apr_shm.h>
#include <apr_strings.h>
#include <httpd.h>
#include <http_config.h>
#include <http_log.h>
#include <http_protocol.h>
#include <ap_mpm.h>
#include <mod_status.h>
#include <scoreboard.h>

#include "mod_comet.h"
#include "mod_comet_status.h"
#include "mod_comet_pubsock.h"
#include "mod_comet_redis.h"

APLOG_USE_MODULE(comet);

#define STATUS_KEY "mod_comet.status"

/* One process slot's counters; written by that process only.  Fields are
 * stored and loaded one by one with relaxed atomics: a reader may see a
 * mix of two ticks, which is fine for a status page. */
typedef struct status_slot_t {
    apr_int32_t  pid;               /* 0: no process                     */
    apr_uint32_t connections;       /* subscribers held by the hub       */
    apr_uint32_t by_transport[4];   /* sse, long-poll, stream, websocket */
    apr_uint32_t detached;          /* of them, on a socket of the hub's */
    apr_uint32_t tls;               /* ... with a TLS session taken over */
    apr_uint32_t pub_clients;       /* publish socket connections        */
    apr_uint32_t pub_subscribers;   /* of them, in subscribed mode       */
    apr_uint32_t kept;              /* long-poll connections kept idle   */
    comet_live_t live;              /* kept live (comet_status_live)     */
    apr_uint64_t adopted;
    apr_uint64_t deliveries;
    apr_uint64_t dropped_slow;
    apr_uint64_t pub_commands;
    apr_uint64_t pub_publishes;
    apr_uint64_t pub_refused;
    apr_uint64_t ws_published;      /* by WebSocket clients              */
    apr_uint64_t pub_pushes;
    apr_uint64_t pub_dropped_slow;
    apr_uint64_t kept_total;        /* connections kept after an answer  */
    apr_uint64_t handed_back;       /* next requests served on them      */
    comet_bus_stats_t redis;        /* CometRedis: this process's bus      */
} status_slot_t;

typedef struct status_shm_t {
    apr_uint32_t  nslots;
    apr_uint32_t  slot_size;        /* sizeof(status_slot_t) of its maker */
    /* Sums of the processes that have ended since the server started. */
    apr_uint64_t  retired_adopted;
    apr_uint64_t  retired_deliveries;
    apr_uint64_t  retired_dropped_slow;
    apr_uint64_t  retired_pub_commands;
    apr_uint64_t  retired_pub_publishes;
    apr_uint64_t  retired_pub_refused;
    apr_uint64_t  retired_pub_pushes;
    apr_uint64_t  retired_pub_dropped_slow;
    status_slot_t slot[1];          /* [nslots] */
} status_shm_t;

static status_shm_t *status;

#define LOAD(x)     __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)
#define ADD(x, v)   __atomic_add_fetch(&(x), (v), __ATOMIC_RELAXED)

int comet_status_post_config(apr_pool_t *pconf, server_rec *s)
{
    apr_pool_t *pp = s->process->pool;
    apr_uint32_t n = comet_proc_nslots();
    apr_size_t size = sizeof(status_shm_t) + sizeof(status_slot_t) * n;
    apr_shm_t *shm = NULL;
    apr_status_t rv;

    status = NULL;
    if (!comet_proc_store() || !n) {
        return OK;
    }
    apr_pool_userdata_get((void **)&shm, STATUS_KEY, pp);
    if (shm) {
        status = apr_shm_baseaddr_get(shm);
        if (status->nslots == n && apr_shm_size_get(shm) == size
            && status->slot_size == sizeof(status_slot_t)) {
            return OK;
        }
        /* The store kept its slot count; so must we.  Cannot happen
         * unless the store was made anew (or another version of the
         * module, with other records, made the segment): start counting
         * again. */
        status = NULL;
    }
    rv = apr_shm_create(&shm, size, NULL, pp);
    if (rv != APR_SUCCESS) {
        /* Not worth refusing to start for: the section shows less. */
        ap_log_error(APLOG_MARK, APLOG_WARNING, rv, s, COMET_LOGNO(0301)
                     "no shared memory for per-process statistics; "
                     "server-status will show store-wide numbers only");
        return OK;
    }
    status = apr_shm_baseaddr_get(shm);
    memset(status, 0, size);
    status->nslots = n;
    status->slot_size = sizeof(status_slot_t);
    apr_pool_userdata_set(shm, STATUS_KEY, NULL, pp);
    return OK;
}

/* Add a record's counters to the retired totals and free it, once: the
 * pid is taken with a compare-and-swap, so that the ending process and a
 * reader that found it dead cannot both count it. */
static void retire(status_slot_t *sl, apr_int32_t pid)
{
    if (!pid || !__atomic_compare_exchange_n(&sl->pid, &pid, 0, 0,
                                             __ATOMIC_ACQ_REL,
                                             __ATOMIC_RELAXED)) {
        return;
    }
    ADD(status->retired_adopted, LOAD(sl->adopted));
    ADD(status->retired_deliveries, LOAD(sl->deliveries));
    ADD(status->retired_dropped_slow, LOAD(sl->dropped_slow));
    ADD(status->retired_pub_commands, LOAD(sl->pub_commands));
    ADD(status->retired_pub_publishes, LOAD(sl->pub_publishes));
    ADD(status->retired_pub_refused, LOAD(sl->pub_refused));
    ADD(status->retired_pub_pushes, LOAD(sl->pub_pushes));
    ADD(status->retired_pub_dropped_slow, LOAD(sl->pub_dropped_slow));
}

/* This process's record; NULL when there is no segment or the process
 * holds no store slot. */
static status_slot_t *my_slot(void)
{
    apr_uint32_t slot;

    if (!status || !comet_proc_slot(&slot) || slot >= status->nslots) {
        return NULL;
    }
    return &status->slot[slot];
}

comet_live_t *comet_status_live(void)
{
    static comet_live_t local;
    status_slot_t *sl = my_slot();

    return sl ? &sl->live : &local;
}

static void write_slot(status_slot_t *sl, comet_hub_t *hub)
{
    comet_pubsrv_stats_t ps;
    comet_hub_stats_t hs;
    comet_bus_stats_t bs;
    int i;

    comet_hub_stats(hub, &hs);
    comet_pubsock_stats(&ps);
    STORE(sl->connections, hs.subscribers);
    STORE(sl->detached, hs.detached);
    STORE(sl->tls, hs.tls);
    for (i = 0; i < 4; i++) {
        STORE(sl->by_transport[i], hs.by_transport[i]);
    }
    STORE(sl->ws_published, hs.ws_published);
    STORE(sl->pub_clients, ps.clients);
    STORE(sl->pub_subscribers, ps.subscribers);
    STORE(sl->kept, hs.kept);
    STORE(sl->kept_total, hs.kept_total);
    STORE(sl->handed_back, hs.handed_back);

    STORE(sl->adopted, hs.adopted);
    STORE(sl->deliveries, hs.deliveries);
    STORE(sl->dropped_slow, hs.dropped_slow);
    STORE(sl->pub_commands, ps.commands);
    STORE(sl->pub_publishes, ps.publishes);
    STORE(sl->pub_refused, ps.refused);
    STORE(sl->pub_pushes, ps.pushes);
    STORE(sl->pub_dropped_slow, ps.dropped_slow);
    comet_shared_stats(&bs);
    STORE(sl->redis.up, bs.up);
    STORE(sl->redis.channels, bs.channels);
    STORE(sl->redis.published, bs.published);
    STORE(sl->redis.publish_failed, bs.publish_failed);
    STORE(sl->redis.received, bs.received);
    STORE(sl->redis.duplicates, bs.duplicates);
    STORE(sl->redis.fetches, bs.fetches);
    STORE(sl->redis.gaps, bs.gaps);
    STORE(sl->redis.rollbacks, bs.rollbacks);
}

void comet_status_tick(comet_hub_t *hub, void *baton)
{
    status_slot_t *sl = my_slot();

    if (sl) {
        write_slot(sl, hub);
    }
}

void comet_status_child_exit(comet_hub_t *hub)
{
    status_slot_t *sl = my_slot();

    if (sl) {
        /* The hub thread has been joined: the last numbers, then retire. */
        write_slot(sl, hub);
        retire(sl, (apr_int32_t)getpid());
    }
}

void comet_status_child_init(void)
{
    status_slot_t *sl = my_slot();
    apr_int32_t old;

    if (!sl) {
        return;
    }
    /* The store hands a slot out again only once its process is gone. */
    old = LOAD(sl->pid);
    retire(sl, old);
    memset((char *)sl + sizeof(sl->pid), 0, sizeof(*sl) - sizeof(sl->pid));
    STORE(sl->pid, (apr_int32_t)getpid());
}

/* ---- the server-status section ---------------------------------------------------- */

typedef struct status_sums_t {
    apr_uint64_t adopted, deliveries, dropped_slow, pub_commands,
                 pub_publishes, pub_refused, pub_pushes, pub_dropped_slow;
    apr_uint32_t pub_clients, pub_subscribers, connections, processes,
                 detached, tls, kept;
    apr_uint64_t kept_total, handed_back;
    apr_uint32_t suspended, held, mpm_conns, mpm_suspended, gate_waits;
    apr_uint32_t sb_conns, sb_suspended, sb_lingering;
    comet_bus_stats_t redis;        /* live processes only */
} status_sums_t;

/* The MPM's own record of process pid: the numbers its listener copies
 * there when it maintains its queues (so they may be old). */
static process_score *sb_process(apr_int32_t pid)
{
    int servers = 0;

    ap_mpm_query(AP_MPMQ_HARD_LIMIT_DAEMONS, &servers);
    for (int i = 0; ap_scoreboard_image && i < servers; i++) {
        if (ap_scoreboard_image->parent[i].pid == (pid_t)pid) {
            return &ap_scoreboard_image->parent[i];
        }
    }
    return NULL;
}

static int slot_alive(status_slot_t *sl, apr_int32_t *pid)
{
    *pid = LOAD(sl->pid);
    if (!*pid) {
        return 0;
    }
    if (kill((pid_t)*pid, 0) != 0 && errno == ESRCH) {
        /* Killed outright: count what it did, forget it. */
        retire(sl, *pid);
        return 0;
    }
    return 1;
}

static void sum_slots(status_sums_t *sum)
{
    apr_uint32_t i;

    memset(sum, 0, sizeof(*sum));
    sum->adopted = LOAD(status->retired_adopted);
    sum->deliveries = LOAD(status->retired_deliveries);
    sum->dropped_slow = LOAD(status->retired_dropped_slow);
    sum->pub_commands = LOAD(status->retired_pub_commands);
    sum->pub_publishes = LOAD(status->retired_pub_publishes);
    sum->pub_refused = LOAD(status->retired_pub_refused);
    sum->pub_pushes = LOAD(status->retired_pub_pushes);
    sum->pub_dropped_slow = LOAD(status->retired_pub_dropped_slow);
    for (i = 0; i < status->nslots; i++) {
        status_slot_t *sl = &status->slot[i];
        process_score *ps;
        apr_int32_t pid;

        if (!slot_alive(sl, &pid)) {
            continue;
        }
        sum->processes++;
        sum->adopted += LOAD(sl->adopted);
        sum->deliveries += LOAD(sl->deliveries);
        sum->dropped_slow += LOAD(sl->dropped_slow);
        sum->pub_commands += LOAD(sl->pub_commands);
        sum->pub_publishes += LOAD(sl->pub_publishes);
        sum->pub_refused += LOAD(sl->pub_refused);
        sum->pub_pushes += LOAD(sl->pub_pushes);
        sum->pub_dropped_slow += LOAD(sl->pub_dropped_slow);
        sum->pub_clients += LOAD(sl->pub_clients);
        sum->pub_subscribers += LOAD(sl->pub_subscribers);
        sum->connections += LOAD(sl->connections);
        sum->detached += LOAD(sl->detached);
        sum->tls += LOAD(sl->tls);
        sum->kept += LOAD(sl->kept);
        sum->kept_total += LOAD(sl->kept_total);
        sum->handed_back += LOAD(sl->handed_back);
        sum->suspended += LOAD(sl->live.suspended);
        sum->held += LOAD(sl->live.held);
        sum->mpm_conns += LOAD(sl->live.mpm_conns);
        sum->mpm_suspended += LOAD(sl->live.mpm_suspended);
        sum->gate_waits += LOAD(sl->live.gate_waits);
        sum->redis.up += LOAD(sl->redis.up);
        sum->redis.channels += LOAD(sl->redis.channels);
        sum->redis.published += LOAD(sl->redis.published);
        sum->redis.publish_failed += LOAD(sl->redis.publish_failed);
        sum->redis.received += LOAD(sl->redis.received);
        sum->redis.duplicates += LOAD(sl->redis.duplicates);
        sum->redis.fetches += LOAD(sl->redis.fetches);
        sum->redis.gaps += LOAD(sl->redis.gaps);
        sum->redis.rollbacks += LOAD(sl->redis.rollbacks);
        if ((ps = sb_process(pid)) != NULL) {
            sum->sb_conns += ps->connections;
            sum->sb_suspended += ps->suspended;
            sum->sb_lingering += ps->lingering_close;
        }
    }
}

int comet_status_hook(request_rec *r, int flags)
{
    comet_store_t *st = comet_proc_store();
    comet_store_config_t cfg;
    comet_store_stats_t ss;
    status_sums_t sum;
    const char *sock = comet_pubsock_path();
    int brief = flags & AP_STATUS_SHORT;
    apr_uint32_t i, n = 0;

    if (!st) {
        return OK;
    }
    comet_store_stats(st, &ss);
    comet_store_get_config(st, &cfg);
    if (status) {
        sum_slots(&sum);
    }
    else {
        memset(&sum, 0, sizeof(sum));
    }

    if (brief) {
        ap_rprintf(r,
                   "CometChannels: %u\n"
                   "CometChannelsMax: %u\n"
                   "CometMessages: %" APR_UINT64_T_FMT "\n"
                   "CometSharedMemorySize: %" APR_SIZE_T_FMT "\n"
                   "CometSharedMemoryUsed: %" APR_SIZE_T_FMT "\n"
                   "CometSharedMemoryFree: %" APR_SIZE_T_FMT "\n"
                   "CometSubscribers: %" APR_UINT64_T_FMT "\n"
                   "CometConnections: %u\n"
                   "CometDetached: %u\n"
                   "CometDetachedTLS: %u\n"
                   "CometPublishes: %" APR_UINT64_T_FMT "\n"
                   "CometDeliveries: %" APR_UINT64_T_FMT "\n"
                   "CometDroppedSlow: %" APR_UINT64_T_FMT "\n"
                   "CometSocketClients: %u\n"
                   "CometSocketPublishes: %" APR_UINT64_T_FMT "\n"
                   "CometSocketRefused: %" APR_UINT64_T_FMT "\n"
                   "CometSocketSubscribers: %u\n"
                   "CometSocketPushes: %" APR_UINT64_T_FMT "\n"
                   "CometSocketDroppedSlow: %" APR_UINT64_T_FMT "\n"
                   "CometProcesses: %u\n"
                   "CometSuspended: %u\n"
                   "CometHeld: %u\n"
                   "CometMpmConnections: %u\n"
                   "CometMpmSuspended: %u\n"
                   "CometSuspendGateWaits: %u\n"
                   "CometScoreboardConnections: %u\n"
                   "CometScoreboardSuspended: %u\n"
                   "CometScoreboardLingering: %u\n"
                   "CometStoreRecoveries: %" APR_UINT64_T_FMT "\n"
                   "CometKept: %u\n"
                   "CometKeptTotal: %" APR_UINT64_T_FMT "\n"
                   "CometKeptRequests: %" APR_UINT64_T_FMT "\n",
                   ss.channels, ss.channels_max, ss.messages, cfg.size,
                   ss.bytes_used, ss.bytes_free, ss.subscribers,
                   sum.connections, sum.detached, sum.tls, ss.published,
                   sum.deliveries, sum.dropped_slow, sum.pub_clients,
                   sum.pub_publishes, sum.pub_refused, sum.pub_subscribers,
                   sum.pub_pushes, sum.pub_dropped_slow, sum.processes,
                   sum.suspended, sum.held, sum.mpm_conns,
                   sum.mpm_suspended, sum.gate_waits, sum.sb_conns,
                   sum.sb_suspended, sum.sb_lingering, ss.recoveries,
                   sum.kept, sum.kept_total, sum.handed_back);
#ifdef COMET_FAULT_INJECTION
        /* Test builds only: every invariant of the store, checked under
         * its lock (O(segment)). */
        {
            char why[256];

            ap_rprintf(r, "CometStoreCheck: %s\n",
                       comet_store_check(st, why, sizeof(why)) == APR_SUCCESS
                       ? "ok" : why);
        }
#endif
        ap_rprintf(r,
                   "CometRedisUp: %u\n"
                   "CometRedisChannels: %u\n"
                   "CometRedisPublishes: %" APR_UINT64_T_FMT "\n"
                   "CometRedisPublishFailures: %" APR_UINT64_T_FMT "\n"
                   "CometRedisReceived: %" APR_UINT64_T_FMT "\n"
                   "CometRedisDuplicates: %" APR_UINT64_T_FMT "\n"
                   "CometRedisSyncs: %" APR_UINT64_T_FMT "\n"
                   "CometRedisGaps: %" APR_UINT64_T_FMT "\n"
                   "CometRedisNewGenerations: %" APR_UINT64_T_FMT "\n",
                   sum.redis.up, sum.redis.channels, sum.redis.published,
                   sum.redis.publish_failed, sum.redis.received,
                   sum.redis.duplicates, sum.redis.fetches, sum.redis.gaps,
                   sum.redis.rollbacks);
    }
    else {
        ap_rputs("<hr />\n<h2>mod_comet</h2>\n<dl>\n", r);
        ap_rprintf(r,
                   "<dt>Channels: %u (room for %u)</dt>\n"
                   "<dt>Stored messages: %" APR_UINT64_T_FMT "</dt>\n"
                   "<dt>Shared memory: %" APR_SIZE_T_FMT " bytes; message "
                   "area %" APR_SIZE_T_FMT " used, %" APR_SIZE_T_FMT
                   " free</dt>\n"
                   "<dt>Subscribers: %" APR_UINT64_T_FMT " (subscriptions "
                   "counted per channel), %u connections</dt>\n"
                   "<dt>Publishes since start: %" APR_UINT64_T_FMT
                   "</dt>\n"
                   "<dt>Deliveries since start: %" APR_UINT64_T_FMT
                   "; slow subscribers dropped: %" APR_UINT64_T_FMT
                   "</dt>\n"
                   "<dt>Detached (no worker, no MPM connection): %u, of "
                   "which %u over TLS</dt>\n"
                   "<dt>Through httpd's filters: %u suspended (no worker "
                   "kept; HTTP/1.0, TLS not taken over), %u held (HTTP/2, "
                   "a worker each)</dt>\n"
                   "<dt>Event MPM connections: %u, of which %u suspended"
                   "</dt>\n"
                   "<dt>Store repairs (a process died holding the store's "
                   "lock): %" APR_UINT64_T_FMT "</dt>\n"
                   "<dt>Long-poll connections kept idle for the next "
                   "request (not the MPM's): %u; kept after an answer: %"
                   APR_UINT64_T_FMT ", next requests served on them: %"
                   APR_UINT64_T_FMT "</dt>\n",
                   ss.channels, ss.channels_max, ss.messages, cfg.size,
                   ss.bytes_used, ss.bytes_free, ss.subscribers,
                   sum.connections, ss.published, sum.deliveries,
                   sum.dropped_slow, sum.detached, sum.tls, sum.suspended,
                   sum.held, sum.mpm_conns, sum.mpm_suspended, ss.recoveries,
                   sum.kept, sum.kept_total, sum.handed_back);
        if (sock) {
            ap_rprintf(r, "<dt>Publish socket %s: %u clients, %"
                       APR_UINT64_T_FMT " publishes since start, %"
                       APR_UINT64_T_FMT " connections refused (every "
                       "child full)</dt>\n"
                       "<dt>Publish socket subscribers: %u; messages "
                       "pushed since start: %" APR_UINT64_T_FMT "; slow "
                       "ones dropped: %" APR_UINT64_T_FMT "</dt>\n",
                       ap_escape_html(r->pool, sock), sum.pub_clients,
                       sum.pub_publishes, sum.pub_refused,
                       sum.pub_subscribers, sum.pub_pushes,
                       sum.pub_dropped_slow);
        }
        if (comet_shared_enabled()) {
            ap_rprintf(r, "<dt>Redis: up in %u of %u processes, %u "
                       "subscriptions; %" APR_UINT64_T_FMT " publishes "
                       "stored, %" APR_UINT64_T_FMT " failed; %"
                       APR_UINT64_T_FMT " messages received, %"
                       APR_UINT64_T_FMT " syncs, %" APR_UINT64_T_FMT
                       " losses told, %" APR_UINT64_T_FMT " new "
                       "generations</dt>\n", sum.redis.up, sum.processes,
                       sum.redis.channels, sum.redis.published,
                       sum.redis.publish_failed, sum.redis.received,
                       sum.redis.fetches, sum.redis.gaps,
                       sum.redis.rollbacks);
        }
        ap_rputs("</dl>\n", r);
    }

    if (!status) {
        return OK;
    }
    if (!brief && !(flags & AP_STATUS_NOTABLE)) {
        ap_rputs("<table border=\"0\"><tr><th>PID</th><th>Slot</th>"
                 "<th>Subscribers</th><th>Connections</th><th>SSE</th>"
                 "<th>Long-poll</th><th>Stream</th><th>WebSocket</th>"
                 "<th>Client publishes</th><th>Deliveries</th>"
                 "<th>Dropped (slow)</th><th>Socket clients</th>"
                 "<th>Suspended</th><th>Held</th></tr>\n", r);
    }
    for (i = 0; i < status->nslots; i++) {
        status_slot_t *sl = &status->slot[i];
        apr_uint64_t subs;
        apr_int32_t pid;

        if (!slot_alive(sl, &pid)) {
            continue;
        }
        subs = comet_store_proc_subscribers(st, i);
        if (brief) {
            ap_rprintf(r, "CometProcess%u: pid=%d slot=%u subscribers=%"
                       APR_UINT64_T_FMT " connections=%u detached=%u tls=%u "
                       "sse=%u longpoll=%u stream=%u websocket=%u "
                       "client_publishes=%" APR_UINT64_T_FMT
                       " deliveries=%" APR_UINT64_T_FMT
                       " dropped_slow=%" APR_UINT64_T_FMT
                       " socket_clients=%u socket_subscribers=%u "
                       "suspended=%u held=%u "
                       "mpm_connections=%u mpm_suspended=%u\n", n, (int)pid,
                       i, subs, LOAD(sl->connections), LOAD(sl->detached),
                       LOAD(sl->tls), LOAD(sl->by_transport[0]),
                       LOAD(sl->by_transport[1]), LOAD(sl->by_transport[2]),
                       LOAD(sl->by_transport[3]), LOAD(sl->ws_published),
                       LOAD(sl->deliveries), LOAD(sl->dropped_slow),
                       LOAD(sl->pub_clients), LOAD(sl->pub_subscribers),
                       LOAD(sl->live.suspended),
                       LOAD(sl->live.held), LOAD(sl->live.mpm_conns),
                       LOAD(sl->live.mpm_suspended));
        }
        else if (!(flags & AP_STATUS_NOTABLE)) {
            ap_rprintf(r, "<tr><td>%d</td><td>%u</td><td>%" APR_UINT64_T_FMT
                       "</td><td>%u</td><td>%u</td><td>%u</td><td>%u</td>"
                       "<td>%u</td><td>%" APR_UINT64_T_FMT "</td>"
                       "<td>%" APR_UINT64_T_FMT "</td><td>%" APR_UINT64_T_FMT
                       "</td><td>%u</td><td>%u</td><td>%u</td></tr>\n",
                       (int)pid, i, subs,
                       LOAD(sl->connections), LOAD(sl->by_transport[0]),
                       LOAD(sl->by_transport[1]), LOAD(sl->by_transport[2]),
                       LOAD(sl->by_transport[3]), LOAD(sl->ws_published),
                       LOAD(sl->deliveries), LOAD(sl->dropped_slow),
                       LOAD(sl->pub_clients), LOAD(sl->live.suspended),
                       LOAD(sl->live.held));
        }
        n++;
    }
    if (!brief && !(flags & AP_STATUS_NOTABLE)) {
        ap_rputs("</table>\n", r);
    }
    return OK;
}
