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

#include "comet_store.h"

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

#endif /* MOD_COMET_CONFIG_H */
