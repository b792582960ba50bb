/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet_status.h -- mod_comet's section of server-status
 * (mod_comet_status.c) and the per-process statistics segment behind it.
 */
#ifndef MOD_COMET_STATUS_H
#define MOD_COMET_STATUS_H

#include <httpd.h>

#include "comet_hub.h"

/* Numbers that change with every connection, kept by this process right
 * in its server-status record (shared memory; a process-local record when
 * there is none), with atomic operations. */
typedef struct comet_live_t {
    apr_uint32_t suspended;       /* suspended subscribers (places taken) */
    apr_uint32_t held;            /* held subscribers (HTTP/2)            */
    apr_uint32_t mpm_conns;       /* the MPM's connections, and those it  */
    apr_uint32_t mpm_suspended;   /* counts as suspended (as our hooks
                                     see them)                            */
    apr_uint32_t gate_waits;      /* callbacks the gate sent back         */
} comet_live_t;

/* This process's live numbers.  Any thread; never NULL. */
comet_live_t *comet_status_live(void);

/* mod_status's status_hook: mod_comet's section.  Request thread. */
int comet_status_hook(request_rec *r, int flags);

/* post_config (the parent, not the dry pass, after the store): the
 * per-process statistics segment. */
int comet_status_post_config(apr_pool_t *pconf, server_rec *s);

/* child_init, once the process holds its store slot: claim the slot's
 * record. */
void comet_status_child_init(void);

/* The child pool's pre-cleanup, after the hub thread is joined: the last
 * numbers of hub, then the record's counters go to the retired totals. */
void comet_status_child_exit(comet_hub_t *hub);

/* comet_hub_config_t.tick: copy the hub's counters into this process's
 * record.  Hub thread. */
void comet_status_tick(comet_hub_t *hub, void *baton);

#endif /* MOD_COMET_STATUS_H */
