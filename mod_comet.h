/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet.h -- what every httpd glue file needs: the module, and this
 * process's share of the store (set up by mod_comet.c, which runs the
 * module's lifecycle).  Each glue file has its own header for the rest.
 *
 * Threads: see event_bridge.h.
 */
#ifndef MOD_COMET_H
#define MOD_COMET_H

#include <httpd.h>
#include <http_config.h>
#include <apr_shm.h>

#include "comet_store.h"

/* Shown by HELLO/INFO, and kept with the store across graceful restarts:
 * a release that changes the store's layout or its handle must change it,
 * so that a graceful restart into it starts a new store. */
#define COMET_MODULE_VERSION     "0.1.0"

extern module AP_MODULE_DECLARE_DATA comet_module;

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

/* Store wakeup callback: kicks slot's eventfd.  Any thread. */
void comet_wake_slot(void *baton, apr_uint32_t slot);

#endif /* MOD_COMET_H */
