/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* A fake Redis server on the test's own comet_loop, for what a real one
 * will not do on demand: be older than HELLO or CLUSTER SHARDS, never
 * answer, answer garbage or answer twice.  It parses requests with the
 * publisher socket's own RESP parser and records them in seen. */
#ifndef COMET_REDIS_FAKE_H
#define COMET_REDIS_FAKE_H

#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <check.h>
#include <apr_pools.h>

#include "comet_loop.h"
#include "comet_resp.h"


#define FAKE_OLD      1     /* no HELLO: "unknown command", with its args    */
#define FAKE_SILENT   2     /* GET is never answered                         */
#define FAKE_GARBAGE  3     /* GET gets bytes that are no RESP               */
#define FAKE_EXTRA    4     /* GET gets two replies                          */
#define FAKE_CLUSTER6 5     /* a cluster node without CLUSTER SHARDS: the
                               whole map (CLUSTER SLOTS) is itself         */

typedef struct fake_t {
    comet_loop_t        *loop;
    int                  mode;
    int                  lfd;
    int                  cfd;
    int                  port;
    comet_loop_io_t      lio;
    comet_loop_io_t      cio;
    comet_resp_parser_t *parser;
    char                 buf[65536];
    apr_size_t           len;
    int                  accepts;
    int                  silent;    /* FAKE_SILENT after its GET         */
    char                 seen[2048];
} fake_t;

static APR_INLINE void fake_reply(fake_t *f, const char *s)
{
    ck_assert_int_eq(write(f->cfd, s, strlen(s)), (ssize_t)strlen(s));
}

static APR_INLINE void fake_drop(fake_t *f)
{
    comet_loop_io_remove(f->loop, &f->cio);
    close(f->cfd);
    f->cfd = -1;
}

static APR_INLINE void fake_read(comet_loop_t *loop, int fd, int events,
                                 void *baton)
{
    fake_t *f = baton;
    ssize_t n = read(fd, f->buf + f->len, sizeof(f->buf) - f->len);
    comet_resp_cmd_t cmd;
    apr_size_t used;

    if (n <= 0) {
        fake_drop(f);
        return;
    }
    f->len += (apr_size_t)n;
    while (comet_resp_parse(f->parser, f->buf, f->len, &used, &cmd)
           == APR_SUCCESS) {
        apr_size_t i, sl = strlen(f->seen);

        for (i = 0; i < cmd.argc && sl + cmd.argv_len[i] + 2 < sizeof(f->seen);
             i++) {
            memcpy(f->seen + sl, cmd.argv[i], cmd.argv_len[i]);
            sl += cmd.argv_len[i];
            f->seen[sl++] = i + 1 < cmd.argc ? ' ' : '|';
        }
        f->seen[sl] = '\0';
        if (f->silent) {
            /* stuck: reads, never answers */
        }
        else if (strcasecmp(cmd.argv[0], "HELLO") == 0) {
            if (f->mode == FAKE_OLD) {
                char line[512];

                /* What Redis 5 says, the password among the args. */
                snprintf(line, sizeof(line), "-ERR unknown command `HELLO`, "
                         "with args beginning with: `3`, `AUTH`, `%s`, "
                         "`%s`, \r\n", cmd.argc > 3 ? cmd.argv[3] : "",
                         cmd.argc > 4 ? cmd.argv[4] : "");
                fake_reply(f, line);
            }
            else {
                fake_reply(f, "%1\r\n+proto\r\n:3\r\n");
            }
        }
        else if (strcasecmp(cmd.argv[0], "AUTH") == 0) {
            fake_reply(f, strcmp(cmd.argv[cmd.argc - 1], "good") == 0
                          ? "+OK\r\n"
                          : "-WRONGPASS invalid username-password pair\r\n");
        }
        else if (strcasecmp(cmd.argv[0], "CLUSTER") == 0 && cmd.argc == 2
                 && f->mode == FAKE_CLUSTER6) {
            if (strcasecmp(cmd.argv[1], "SHARDS") == 0) {
                fake_reply(f, "-ERR unknown subcommand 'SHARDS'. Try "
                           "CLUSTER HELP.\r\n");
            }
            else {
                char map[256];

                /* An empty address: the node that was asked. */
                snprintf(map, sizeof(map), "*1\r\n*3\r\n:0\r\n:16383\r\n"
                         "*3\r\n$0\r\n\r\n:%d\r\n$2\r\nid\r\n", f->port);
                fake_reply(f, map);
            }
        }
        else if (strcasecmp(cmd.argv[0], "GET") == 0) {
            if (f->mode == FAKE_GARBAGE) {
                fake_reply(f, "@garbage\r\n");
            }
            else if (f->mode == FAKE_EXTRA) {
                fake_reply(f, "+one\r\n+two\r\n");
            }
            else if (f->mode == FAKE_SILENT) {
                f->silent = 1;
            }
            else {
                fake_reply(f, "$1\r\nv\r\n");
            }
        }
        else {
            fake_reply(f, "+OK\r\n");
        }
        memmove(f->buf, f->buf + used, f->len - used);
        f->len -= used;
    }
}

static APR_INLINE void fake_accept(comet_loop_t *loop, int fd, int events,
                                   void *baton)
{
    fake_t *f = baton;
    int cfd = accept(fd, NULL, NULL);

    if (cfd < 0) {
        return;
    }
    if (f->cfd >= 0) {
        fake_drop(f);
    }
    f->cfd = cfd;
    f->len = 0;
    f->silent = 0;
    f->accepts++;
    comet_resp_parser_reset(f->parser);
    ck_assert_int_eq(comet_loop_io_add(loop, &f->cio, cfd, COMET_LOOP_READ,
                                       fake_read, f), APR_SUCCESS);
}

static APR_INLINE fake_t *fake_start(comet_loop_t *loop, int mode,
                                      apr_pool_t *pool)
{
    fake_t *f = apr_pcalloc(pool, sizeof(*f));
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);

    f->loop = loop;
    f->mode = mode;
    f->cfd = -1;
    ck_assert_int_eq(comet_resp_parser_create(&f->parser, NULL,
                                              pool), APR_SUCCESS);
    f->lfd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(f->lfd, 8), 0);
    getsockname(f->lfd, (struct sockaddr *)&sa, &len);
    f->port = ntohs(sa.sin_port);
    ck_assert_int_eq(comet_loop_io_add(loop, &f->lio, f->lfd, COMET_LOOP_READ,
                                       fake_accept, f), APR_SUCCESS);
    return f;
}

#endif /* COMET_REDIS_FAKE_H */
