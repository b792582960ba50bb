/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet_quota.c -- the per-client count behind
 * CometMaxNewChannelsPerClient (see mod_comet_quota.h).
 *
 * One table per child process, under one mutex: request threads take,
 * the hub thread (through the hub's on_end) and request threads give
 * back.  Entries exist only while their count is above zero, so the
 * table is as large as the number of clients holding such subscriptions
 * at its peak (24 bytes each).  A tag is the entry's index + 1 in its
 * high bits and the count taken in its low bits, so that the hub keeps
 * four bytes per subscriber for it.
 */

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <apr_general.h>
#include <apr_network_io.h>
#include <httpd.h>

#include "mod_comet_quota.h"

#define QUOTA_TAKE_BITS 11                    /* holds 0..2047 >= 1024 */
#define QUOTA_MAX_ENTS  ((1u << (32 - QUOTA_TAKE_BITS)) - 1)
#define QUOTA_NIL       0xffffffffu

typedef struct quota_ent_t {
    unsigned char key[8];       /* IPv4 address, or IPv6 /64 */
    apr_uint32_t  count;        /* 0: on the free list */
    apr_uint32_t  next;         /* hash chain, or free list */
    apr_uint32_t  hash;
    unsigned char klen;
} quota_ent_t;

static struct {
    pthread_mutex_t mu;
    quota_ent_t    *ents;
    apr_uint32_t    cap;        /* entries allocated: a power of two */
    apr_uint32_t    used;       /* entries ever handed out (< cap) */
    apr_uint32_t   *buckets;    /* cap of them */
    apr_uint32_t    free_head;
    apr_uint64_t    seed;       /* keyed hash: no offline collisions */
} quota = { PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0, NULL, QUOTA_NIL, 0 };

static apr_size_t quota_key(const request_rec *r, unsigned char *key)
{
    const apr_sockaddr_t *sa = r->useragent_addr ? r->useragent_addr
                                                 : r->connection->client_addr;
    const unsigned char *ip = sa ? sa->ipaddr_ptr : NULL;

    if (!ip) {
        return 0;
    }
#if APR_HAVE_IPV6
    if (sa->family == AF_INET6) {
        static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0,
                                                  0, 0, 0xff, 0xff };

        if (!memcmp(ip, mapped, sizeof(mapped))) {
            memcpy(key, ip + 12, 4);
            return 4;
        }
        memcpy(key, ip, 8);
        return 8;
    }
#endif
    memcpy(key, ip, 4);
    return 4;
}

static apr_uint32_t quota_hash(const unsigned char *key, apr_size_t len)
{
    apr_uint64_t h = quota.seed ^ (len * APR_UINT64_C(0x9e3779b97f4a7c15));

    for (apr_size_t i = 0; i < len; i++) {
        h = (h ^ key[i]) * APR_UINT64_C(0x100000001b3);
    }
    h ^= h >> 33;
    h *= APR_UINT64_C(0xff51afd7ed558ccd);
    h ^= h >> 29;
    return (apr_uint32_t)h;
}

/* Double the table (entries and buckets).  Under quota.mu. */
static int quota_grow(void)
{
    apr_uint32_t ncap = quota.cap ? quota.cap * 2 : 64;
    quota_ent_t *ne;
    apr_uint32_t *nb;

    if (quota.cap >= QUOTA_MAX_ENTS / 2 + 1) {
        return 0;
    }
    ne = realloc(quota.ents, sizeof(*ne) * ncap);
    if (!ne) {
        return 0;
    }
    quota.ents = ne;
    nb = malloc(sizeof(*nb) * ncap);
    if (!nb) {
        return 0;
    }
    for (apr_uint32_t i = 0; i < ncap; i++) {
        nb[i] = QUOTA_NIL;
    }
    for (apr_uint32_t i = 0; i < quota.used; i++) {
        if (quota.ents[i].count) {
            apr_uint32_t b = quota.ents[i].hash & (ncap - 1);

            quota.ents[i].next = nb[b];
            nb[b] = i;
        }
    }
    free(quota.buckets);
    quota.buckets = nb;
    quota.cap = ncap;
    return 1;
}

apr_status_t comet_quota_take(request_rec *r, apr_uint32_t n,
                              apr_uint32_t max, apr_uint32_t *tag,
                              apr_uint32_t *held)
{
    unsigned char key[8];
    apr_size_t klen = quota_key(r, key);
    apr_uint32_t h, i;
    quota_ent_t *e;
    apr_status_t rv = APR_SUCCESS;

    *tag = 0;
    *held = 0;
    if (n == 0 || n > COMET_QUOTA_MAX_TAKE || !klen) {
        return n == 0 ? APR_SUCCESS : APR_EINVAL;
    }
    pthread_mutex_lock(&quota.mu);
    if (!quota.seed) {
        if (apr_generate_random_bytes((unsigned char *)&quota.seed,
                                      sizeof(quota.seed)) != APR_SUCCESS
            || !quota.seed) {
            quota.seed = (apr_uint64_t)(apr_uintptr_t)&quota ^ apr_time_now();
        }
    }
    h = quota_hash(key, klen);
    i = quota.cap ? quota.buckets[h & (quota.cap - 1)] : QUOTA_NIL;
    for (; i != QUOTA_NIL; i = quota.ents[i].next) {
        e = &quota.ents[i];
        if (e->hash == h && e->klen == klen && !memcmp(e->key, key, klen)) {
            break;
        }
    }
    if (i != QUOTA_NIL) {
        e = &quota.ents[i];
        *held = e->count;
        if (e->count + n > max) {
            rv = APR_EAGAIN;
            goto out;
        }
        e->count += n;
    }
    else {
        if (n > max) {
            rv = APR_EAGAIN;
            goto out;
        }
        if (quota.free_head != QUOTA_NIL) {
            i = quota.free_head;
            quota.free_head = quota.ents[i].next;
        }
        else {
            if (quota.used == quota.cap && !quota_grow()) {
                rv = APR_ENOMEM;
                goto out;
            }
            i = quota.used++;
        }
        e = &quota.ents[i];
        memcpy(e->key, key, klen);
        e->klen = (unsigned char)klen;
        e->hash = h;
        e->count = n;
        e->next = quota.buckets[h & (quota.cap - 1)];
        quota.buckets[h & (quota.cap - 1)] = i;
    }
    *tag = ((i + 1) << QUOTA_TAKE_BITS) | n;
out:
    pthread_mutex_unlock(&quota.mu);
    return rv;
}

void comet_quota_release(void *baton, apr_uint32_t tag)
{
    apr_uint32_t i = (tag >> QUOTA_TAKE_BITS) - 1;
    apr_uint32_t n = tag & ((1u << QUOTA_TAKE_BITS) - 1);
    apr_uint32_t *pp;
    quota_ent_t *e;

    if (!tag) {
        return;
    }
    pthread_mutex_lock(&quota.mu);
    if (i >= quota.used || !quota.ents[i].count) {
        pthread_mutex_unlock(&quota.mu);
        return;
    }
    e = &quota.ents[i];
    e->count = e->count > n ? e->count - n : 0;
    if (!e->count) {
        for (pp = &quota.buckets[e->hash & (quota.cap - 1)];
             *pp != QUOTA_NIL; pp = &quota.ents[*pp].next) {
            if (*pp == i) {
                *pp = e->next;
                break;
            }
        }
        e->next = quota.free_head;
        quota.free_head = i;
    }
    pthread_mutex_unlock(&quota.mu);
}
