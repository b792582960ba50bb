/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet_config.h -- the Comet* directives (mod_comet_config.c): the
 * configuration records, their defaults, and the values in effect.
 */
#ifndef MOD_COMET_CONFIG_H
#define MOD_COMET_CONFIG_H

#include <httpd.h>
#include <http_config.h>
#include <ap_expr.h>

#include "comet_redis.h"
#include "comet_store.h"

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
    int           existing_only;       /* CometSubscribeExistingOnly; -1
                                          unset                          */
    int           tls_detach;          /* CometTLSDetach; -1 unset       */
    int           lp_keepalive;        /* CometLongPollKeepAlive; -1     */
    long          lp_linger;           /* CometLongPollLinger ms; -1     */
    int           http2;               /* CometHTTP2 (COMET_H2_*); 0 unset */
    int           client_publish;      /* CometClientPublish; -1 unset   */
    ap_expr_info_t *client_identity;   /* CometClientIdentity; NULL none */
    int           client_identity_set;
    apr_int64_t   publish_rate;        /* CometClientPublishRate, per
                                          second; -1 unset               */
    apr_int64_t   publish_burst;       /* ... and the burst; -1 unset    */
} comet_dir_conf_t;

/* CometHTTP2: what a subscription on an HTTP/2 stream gets. */
#define COMET_H2_DOWNGRADE  1   /* 403 that makes the client retry over
                                   HTTP/1.1 (mod_http2: RST_STREAM with
                                   HTTP_1_1_REQUIRED)                   */
#define COMET_H2_HOLD       2   /* held on its h2 worker, bounded        */
#define COMET_H2_REFUSE     3   /* 503                                   */

/* The directives, and the module record's configuration functions.
 * Configuration time: the parent reading its configuration (or
 * `apache2 -t`). */
extern const command_rec comet_cmds[];
void *comet_create_srv_conf(apr_pool_t *p, server_rec *s);
void *comet_merge_srv_conf(apr_pool_t *p, void *base, void *add);
void *comet_create_dir_conf(apr_pool_t *p, char *dir);
void *comet_merge_dir_conf(apr_pool_t *p, void *base, void *add);

/* The per-directory record of r.  Request thread. */
const comet_dir_conf_t *comet_config_dir(const request_rec *r);

/* Per-directory values in effect (defaults applied).  Any thread. */
int comet_dir_transports(const comet_dir_conf_t *dc);
apr_time_t comet_dir_keepalive(const comet_dir_conf_t *dc);
apr_time_t comet_dir_subscriber_timeout(const comet_dir_conf_t *dc);
int comet_dir_max_channels(const comet_dir_conf_t *dc);
int comet_dir_existing_only(const comet_dir_conf_t *dc);
int comet_dir_tls_detach(const comet_dir_conf_t *dc);
int comet_dir_longpoll_keepalive(const comet_dir_conf_t *dc);
apr_uint32_t comet_dir_longpoll_linger(const comet_dir_conf_t *dc);
int comet_dir_http2(const comet_dir_conf_t *dc);
/* The name of a COMET_H2_* value, as CometHTTP2 takes it. */
const char *comet_config_http2_name(int policy);
int comet_dir_client_publish(const comet_dir_conf_t *dc);
/* Publishes per second a WebSocket client may make, and the burst. */
void comet_dir_publish_rate(const comet_dir_conf_t *dc, apr_uint32_t *rate,
                            apr_uint32_t *burst);

/* The sender identity of r (CometClientIdentity), NULL when the location
 * has none or it comes out empty.  APR_SUCCESS; APR_EGENERAL when the
 * expression failed or gave more than COMET_STORE_FROM_MAX bytes (logged
 * here).  Request thread. */
apr_status_t comet_config_identity(request_rec *r,
                                   const comet_dir_conf_t *dc,
                                   const char **from);

/* Server-wide values in effect (defaults applied), the way mod_http2's
 * h2_config_sgeti gives them: only the main server's record counts (a
 * virtual host shares it), so any server_rec of this httpd will do.  Any
 * thread. */
apr_size_t comet_config_max_message(const server_rec *s);
apr_size_t comet_config_max_channel_id(const server_rec *s);
/* CometMaxPendingBytes; unset: 2M, or the largest frame a message of
 * CometMaxMessageSize can become when that is more. */
apr_size_t comet_config_max_pending(const server_rec *s);
/* 0: no limit. */
apr_uint32_t comet_config_max_subscribers(const server_rec *s);
/* CometMaxNewChannelsPerClient; 0: off. */
apr_uint32_t comet_config_max_new_per_client(const server_rec *s);
int comet_config_socket_mode(const server_rec *s);
/* The publish socket's bounds: connections per child, idle timeout (0:
 * none), unfinished-command timeout, bytes of unfinished commands per
 * child. */
apr_uint32_t comet_config_socket_clients(const server_rec *s);
apr_time_t comet_config_socket_timeout(const server_rec *s);
apr_time_t comet_config_socket_cmd_timeout(const server_rec *s);
apr_size_t comet_config_socket_max_input(const server_rec *s);
/* Settings of the publish socket that contradict each other: the error
 * text (in p), or NULL.  post_config. */
const char *comet_config_check_socket(const server_rec *s, apr_pool_t *p);
/* The publish socket's path; "" when CometPublishSocket is off, NULL when
 * the default path (in the runtime directory, made in p) cannot be made. */
const char *comet_config_publish_socket(const server_rec *s, apr_pool_t *p);

/* Settings that contradict each other (CometMaxPendingBytes below the
 * largest frame of a CometMaxMessageSize message; the publish socket's,
 * comet_config_check_socket, when it is on): NULL, or a message naming
 * the directives (in p).  Every such check is reached from here.
 * check_config (the parent, also for `apache2 -t`). */
const char *comet_config_check(const server_rec *s, apr_pool_t *p);
/* CometRedis (with CometRedisPasswordFile's password), or NULL: off.  Any
 * thread. */
const comet_redis_url_t *comet_config_redis(const server_rec *s);
/* Read CometRedisPasswordFile (as root, at start): the error text (in p),
 * or NULL.  post_config. */
const char *comet_config_check_redis(const server_rec *s, apr_pool_t *p);

/* Fill a store config from the server-wide settings, for procs process
 * slots.  post_config. */
void comet_config_store(const server_rec *s, comet_store_config_t *cfg,
                        apr_uint32_t procs);

#endif /* MOD_COMET_CONFIG_H */
