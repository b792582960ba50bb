/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet.h -- what the httpd glue files share: configuration records,
 * the per-process state, and the entry points each glue file offers to
 * mod_comet.c (which registers the hooks).
 *
 * Threads: "request thread" = an MPM worker running a handler or hook;
 * "bridge thread" = the one event_bridge thread of a child process.
 */
#ifndef MOD_COMET_H
#define MOD_COMET_H

#include <httpd.h>
#include <http_config.h>
#include <ap_expr.h>
#include <apr_shm.h>

#include "comet_store.h"
#include "comet_hub.h"
#include "comet_loop.h"
#include "comet_pubsrv.h"

/* Shown by HELLO/INFO, and kept with the store across graceful restarts:
 * a release that changes the store's layout or its handle must change it,
 * so that a graceful restart into it starts a new store. */
#define COMET_MODULE_VERSION     "0.1.0"

#define COMET_SUBSCRIBER_HANDLER "comet-subscriber"
#define COMET_PUBLISHER_HANDLER  "comet-publisher"

/* Server-wide settings.  Only the main server's record counts: there is
 * one store and one publish socket for the whole httpd. */
typedef struct comet_srv_conf_t {
    apr_size_t    shm_size;            /* CometSharedMemorySize          */
    apr_int64_t   buffer_length;       /* CometMessageBufferLength       */
    apr_time_t    message_timeout;     /* CometMessageTimeout            */
    apr_size_t    max_message_size;    /* CometMaxMessageSize            */
    apr_size_t    max_channel_id;      /* CometMaxChannelIdLength        */
    apr_time_t    channel_idle;        /* CometChannelIdleTimeout        */
    const char   *publish_socket;      /* CometPublishSocket; "" = off   */
    int           socket_mode;         /* CometPublishSocketMode; -1 unset */
    apr_int64_t   max_subscribers;     /* CometMaxSubscribers, per child */
    apr_size_t    max_pending;         /* CometMaxPendingBytes           */
} comet_srv_conf_t;

/* Per-directory settings; "unset" values merge from the parent. */
typedef struct comet_dir_conf_t {
    const char   *location;            /* the <Location> path, or NULL   */
    ap_expr_info_t *channel_expr;      /* CometChannel; NULL: URL path   */
    int           channel_expr_set;
    int           transports;          /* CometTransports; -1 unset      */
    apr_time_t    keepalive;           /* CometKeepalive; -1 unset       */
    apr_time_t    subscriber_timeout;  /* CometSubscriberTimeout         */
    int           max_channels;        /* CometMaxChannels; -1 unset     */
    const char   *allow_origin;        /* CometAllowOrigin; NULL unset,
                                          "" = off                       */
} comet_dir_conf_t;

/* Defaults, documented in README's directive reference. */
#define COMET_DEFAULT_SHM_SIZE        (64 * 1024 * 1024)
#define COMET_DEFAULT_BUFFER_LENGTH   100
#define COMET_DEFAULT_MESSAGE_TIMEOUT apr_time_from_sec(3600)
#define COMET_DEFAULT_MAX_MESSAGE     (256 * 1024)
#define COMET_DEFAULT_CHANNEL_IDLE    apr_time_from_sec(60)
#define COMET_DEFAULT_SOCKET_NAME     "comet.sock"
#define COMET_DEFAULT_SOCKET_MODE     0660
#define COMET_DEFAULT_MAX_PENDING     (1024 * 1024)
#define COMET_DEFAULT_KEEPALIVE       apr_time_from_sec(15)
#define COMET_DEFAULT_SUB_TIMEOUT     apr_time_from_sec(30)
#define COMET_DEFAULT_MAX_CHANNELS    64

extern module AP_MODULE_DECLARE_DATA comet_module;

/* mod_comet_config.c */
extern const command_rec comet_cmds[];
void *comet_create_srv_conf(apr_pool_t *p, server_rec *s);
void *comet_merge_srv_conf(apr_pool_t *p, void *base, void *add);
void *comet_create_dir_conf(apr_pool_t *p, char *dir);
void *comet_merge_dir_conf(apr_pool_t *p, void *base, void *add);
/* Effective values (defaults applied). */
int comet_dir_transports(const comet_dir_conf_t *dc);
apr_time_t comet_dir_keepalive(const comet_dir_conf_t *dc);
apr_time_t comet_dir_subscriber_timeout(const comet_dir_conf_t *dc);
int comet_dir_max_channels(const comet_dir_conf_t *dc);
/* Fill a store config from the main server's settings. */
void comet_srv_store_config(const comet_srv_conf_t *sc,
                            comet_store_config_t *cfg, apr_uint32_t procs);

/* Per-process state, set up by mod_comet.c: in the parent by post_config
 * (inherited by every child at fork), completed in each child by
 * child_init. */
typedef struct comet_globals_t {
    server_rec     *server;        /* main server of this generation     */
    comet_store_t  *store;         /* NULL: module loaded but unused     */
    apr_shm_t      *shm;
    int            *wake_fds;      /* eventfd per process slot            */
    apr_uint32_t    nslots;
    apr_uint32_t    slot;          /* this child's slot                   */
    int             in_child;
    struct comet_bridge_t *bridge; /* this child's bridge thread          */
} comet_globals_t;

extern comet_globals_t comet_globals;

/* mod_comet_sub.c: the comet-subscriber handler.  Request thread. */
int comet_subscriber_handler(request_rec *r);

/* The channel ids a request names (CometChannel, else the URL path after
 * the <Location>), split at commas and checked; at most max.  OK, or an
 * HTTP status with the reason in r->notes "comet-error".  Request thread. */
int comet_request_channels(request_rec *r, const comet_dir_conf_t *dc,
                           int max, const char ***ids, int *n);

/* Answer status with the reason refuse() left in r->notes as a plain
 * text body (or httpd's own page when there is none).  Request thread. */
int comet_error_response(request_rec *r, int status);


/* mod_comet_susp.c: suspended subscribers (TLS, HTTP/1.0, transforming
 * filters: bytes through httpd's filters, no worker kept while waiting).
 *   register_hooks   the MPM hooks and the non-blocking filter.
 *   post_config      the per-process bound (parent, not the dry pass).
 *   child_init       per-thread state (child, before requests).
 *   possible         whether r may be suspended (request thread).
 *   reserve          take a place under the bound (0: none, 503);
 *                    unreserve gives it back when r is not parked after
 *                    all.
 *   prepare          writes on r's connection stop waiting for the
 *                    client; before the head is sent.
 *   park             hand r to the hub as a sink (spec from the
 *                    handler; sink fields are set here): SUSPENDED, or OK
 *                    when the hub refuses (the place is given back).
 *   hub_stopping     comet_hub_config_t.on_stop (hub thread).
 *   stopping/stopped child_stopping, before and after the hub stops.
 * Its numbers are in comet_status_live(). */
void comet_susp_register_hooks(apr_pool_t *p);
void comet_susp_post_config(server_rec *s);
void comet_susp_child_init(apr_pool_t *pchild);
int comet_susp_possible(request_rec *r);
int comet_susp_reserve(request_rec *r);
void comet_susp_unreserve(void);
void comet_susp_prepare(request_rec *r);
int comet_susp_park(request_rec *r, comet_hub_t *hub,
                    comet_hub_spec_t *spec, apr_size_t max_pending);
void comet_susp_hub_stopping(comet_hub_t *hub, void *baton);
void comet_susp_stopping(int graceful);
void comet_susp_stopped(int graceful);


/* mod_comet_pub.c: the comet-publisher handler.  Request thread. */
int comet_publisher_handler(request_rec *r);

/* Store wakeup callback: kicks slot's eventfd.  Any thread. */
void comet_wake_slot(void *baton, apr_uint32_t slot);

/* mod_comet_pubsock.c: the publish socket (CometPublishSocket).
 * post_config: the parent makes the listening socket (not in the dry
 * pass); OK or an HTTP error that stops the start.  child_init: serve it
 * on loop (the bridge's), before the bridge thread starts; p must be the
 * loop's pool or a pool destroyed before it.  stats: 0 (and zeros) when
 * this process serves no socket; any thread.  path: the socket file, or
 * NULL when off. */
int comet_pubsock_post_config(apr_pool_t *pconf, apr_pool_t *ptemp,
                              server_rec *s);
void comet_pubsock_child_init(apr_pool_t *p, server_rec *s,
                              comet_loop_t *loop);
int comet_pubsock_stats(comet_pubsrv_stats_t *out);
const char *comet_pubsock_path(void);

/* mod_comet_status.c: the server-status section.  post_config: the
 * per-process statistics segment (parent, not the dry pass, after the
 * store).  child_init: claim this slot's record; call before the bridge
 * registers its own pre-cleanup on pchild (this one must run after the
 * bridge thread is joined).  tick: comet_hub_config_t.tick, bridge
 * thread. */
int comet_status_post_config(apr_pool_t *pconf, server_rec *s);
/* Numbers that change with every connection, kept by this process right
 * in its server-status record (shared memory; a process-local record when
 * there is none), with atomic operations.  Any thread; never NULL. */
typedef struct comet_live_t {
    apr_uint32_t suspended;       /* suspended subscribers (places taken) */
    apr_uint32_t held;            /* held subscribers (HTTP/2)            */
    apr_uint32_t mpm_conns;       /* the MPM's connections, and those it  */
    apr_uint32_t mpm_suspended;   /* counts as suspended (as our hooks
                                     see them)                            */
    apr_uint32_t gate_waits;      /* callbacks the gate sent back         */
} comet_live_t;
comet_live_t *comet_status_live(void);
void comet_status_child_init(apr_pool_t *pchild, comet_hub_t *hub);
void comet_status_tick(comet_hub_t *hub, void *baton);
void comet_status_register_hooks(apr_pool_t *p);

#endif /* MOD_COMET_H */
