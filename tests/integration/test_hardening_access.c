/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* What an anonymous client can do at the subscriber and publisher doors
 * of the real apache2: a flood of channel ids leaves publishing (and
 * subscribing to channels that exist) working; publishing is closed
 * unless the configuration opens it, also to .htaccess files and to web
 * pages of other sites; long channel lists, ids the server cannot place,
 * the server's own event names and impossible directive values each get
 * a defined, documented answer. */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

static it_server_t srv;

static void start(void)
{
    it_opts_t o;

    memset(&o, 0, sizeof(o));
    o.extra =
        "LimitRequestLine 70000\n"
        "LoadModule rewrite_module @MODULES@/mod_rewrite.so\n"
        "RewriteEngine on\n"
        "RewriteRule ^/pretty/(.*)$ /sub/$1 [PT]\n"
        "RewriteRule ^/sub/plain$ /index.html [PT]\n"
        "<Location /pub-open/>\n  SetHandler comet-publisher\n</Location>\n"
        "<Location /pub-cors/>\n  SetHandler comet-publisher\n"
        "  Require ip 127.0.0.1\n"
        "  CometAllowOrigin https://app.example\n</Location>\n"
        "<Directory \"@DIR@/htdocs/ht\">\n  AllowOverride FileInfo\n"
        "</Directory>\n"
        "<Directory \"@DIR@/htdocs/ht2\">\n  AllowOverride All\n"
        "</Directory>\n";
    ck_assert_int_eq(it_server_start(&srv, &o), 0);
}

static void stop(void)
{
    it_server_stop(&srv);
}

/* ---- helpers ------------------------------------------------------------ */

static void write_file(const it_server_t *s, const char *rel,
                       const char *text)
{
    char path[512];
    FILE *f;

    snprintf(path, sizeof(path), "%s/htdocs/%s", s->dir, rel);
    *strrchr(path, '/') = '\0';
    mkdir(path, 0755);
    snprintf(path, sizeof(path), "%s/htdocs/%s", s->dir, rel);
    f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

/* A GET of path (any length) with the extra headers; reads the head and
 * returns the status (-1 on error); the connection stays open in *fd
 * (or is closed when fd is NULL). */
static int get_head(int port, const char *path, const char *hdrs, int *fd,
                    char *head, size_t max)
{
    size_t need = strlen(path) + (hdrs ? strlen(hdrs) : 0) + 128, len = 0;
    char *req = malloc(need);
    int c = it_connect(port), status = -1;

    head[0] = '\0';
    snprintf(req, need, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n", path,
             hdrs ? hdrs : "");
    if (c >= 0 && it_send(c, req, strlen(req)) == 0
        && it_read_until(c, head, max, &len, 0, "\r\n\r\n", 10000) == 1) {
        status = atoi(head + 9);
    }
    free(req);
    if (fd && status > 0) {
        *fd = c;
    }
    else if (c >= 0) {
        close(c);
    }
    return status;
}

/* "/<loc>/" + n channel ids of idlen bytes, each unique to tag. */
static char *channel_path(const char *loc, const char *tag, int n,
                          int idlen)
{
    size_t len = strlen(loc) + (size_t)n * (size_t)(idlen + 1) + 1;
    char *p = malloc(len), *o = p;

    o += sprintf(o, "%s", loc);
    for (int i = 0; i < n; i++) {
        int k = sprintf(o, "%s%d-", tag, i);

        memset(o + k, 'x', idlen > k ? (size_t)(idlen - k) : 0);
        o += idlen > k ? idlen : k;
        *o++ = ',';
    }
    o[-1] = '\0';
    return p;
}

static int publish_status(int port, const char *path, const char *hdrs,
                          it_response_t *res)
{
    ck_assert_int_eq(it_http(port, "POST", path, hdrs, "x", 1, res, 5000),
                     0);
    return res->status;
}

typedef struct chans_t {
    int port;
    long max;
} chans_t;

static int channels_at_most(void *baton)
{
    chans_t *c = baton;
    long n = it_status_value(c->port, "CometChannels");

    return n >= 0 && n <= c->max;
}

/* ---- publishing is closed by default ------------------------------------ */

START_TEST(a_publisher_location_without_require_is_refused_saying_what_to_add)
{
    it_response_t *res = malloc(sizeof(*res));

    ck_assert_int_eq(publish_status(srv.port, "/pub-open/open1", NULL, res),
                     403);
    ck_assert_int_eq(it_http(srv.port, "DELETE", "/pub-open/open1", NULL,
                             NULL, 0, res, 5000), 0);
    ck_assert_int_eq(res->status, 403);
    ck_assert_int_eq(it_http(srv.port, "GET", "/pub/open1", NULL, NULL, 0,
                             res, 5000), 0);
    ck_assert_int_eq(res->status, 404);
    ck_assert_int_ge(it_log_count(&srv, "no access control applies to the "
                                  "publisher <Location /pub-open/>"), 2);
    ck_assert_int_ge(it_log_count(&srv, "add `Require ip 127.0.0.1 ::1`"), 2);
    /* With a Require it publishes. */
    ck_assert_int_eq(publish_status(srv.port, "/pub/open1", NULL, res), 202);
    free(res);
}
END_TEST

START_TEST(comet_handlers_and_directives_outside_a_location_are_refused)
{
    it_response_t *res = malloc(sizeof(*res));

    ck_assert_int_eq(publish_status(srv.port, "/pub/victim", NULL, res), 202);
    /* Whoever may write a .htaccess file must not reach every channel of
     * every virtual host. */
    write_file(&srv, "ht/.htaccess", "SetHandler comet-publisher\n");
    ck_assert_int_eq(publish_status(srv.port, "/ht/victim", NULL, res), 403);
    ck_assert_int_eq(it_http(srv.port, "DELETE", "/ht/victim", NULL, NULL, 0,
                             res, 5000), 0);
    ck_assert_int_eq(res->status, 403);
    write_file(&srv, "ht/.htaccess", "SetHandler comet-subscriber\n");
    ck_assert_int_eq(it_http(srv.port, "GET", "/ht/victim", NULL, NULL, 0,
                             res, 5000), 0);
    ck_assert_int_eq(res->status, 403);
    ck_assert_int_eq(it_http(srv.port, "GET", "/pub/victim", NULL, NULL, 0,
                             res, 5000), 0);
    ck_assert_int_eq(res->status, 200);
    ck_assert_msg(strstr(res->body, "\"messages\":1"), "body: %s", res->body);
    ck_assert_int_ge(it_log_count(&srv, "was not set by SetHandler in a "
                                  "<Location>"), 3);

    /* Comet* directives are not for .htaccess files (httpd: 500). */
    write_file(&srv, "ht2/f.txt", "static\n");
    ck_assert_int_eq(it_http(srv.port, "GET", "/ht2/f.txt", NULL, NULL, 0,
                             res, 5000), 0);
    ck_assert_int_eq(res->status, 200);
    write_file(&srv, "ht2/.htaccess", "CometKeepalive 5\n");
    ck_assert_int_eq(it_http(srv.port, "GET", "/ht2/f.txt", NULL, NULL, 0,
                             res, 5000), 0);
    ck_assert_int_eq(res->status, 500);
    ck_assert_int_ge(it_log_count(&srv, "CometKeepalive not allowed here"),
                     1);
    free(res);
}
END_TEST

START_TEST(browser_publishes_from_other_origins_are_refused_unless_allowed)
{
    it_response_t *res = malloc(sizeof(*res));
    char v[256];

    /* A CORS simple request: no preflight would stop it. */
    ck_assert_int_eq(publish_status(srv.port, "/pub/xo",
                                    "Origin: https://evil.example\r\n"
                                    "Content-Type: text/plain\r\n", res),
                     403);
    ck_assert_int_eq(publish_status(srv.port, "/pub/xo",
                                    "Sec-Fetch-Site: cross-site\r\n", res),
                     403);
    ck_assert_int_eq(it_http(srv.port, "DELETE", "/pub/xo",
                             "Origin: null\r\n", NULL, 0, res, 5000), 0);
    ck_assert_int_eq(res->status, 403);
    ck_assert_int_eq(it_http(srv.port, "GET", "/pub/xo", NULL, NULL, 0, res,
                             5000), 0);
    ck_assert_int_eq(res->status, 404);
    ck_assert_int_ge(it_log_count(&srv, "list the origin in "
                                  "CometAllowOrigin"), 3);
    /* The server's own origin, and no origin at all, publish. */
    ck_assert_int_eq(publish_status(srv.port, "/pub/xo",
                                    "Origin: http://127.0.0.1\r\n"
                                    "Sec-Fetch-Site: same-origin\r\n", res),
                     202);
    ck_assert_int_eq(publish_status(srv.port, "/pub/xo", NULL, res), 202);

    /* An origin CometAllowOrigin names: preflight and publish. */
    ck_assert_int_eq(it_http(srv.port, "OPTIONS", "/pub-cors/xo",
                             "Origin: https://app.example\r\n"
                             "Access-Control-Request-Method: POST\r\n"
                             "Access-Control-Request-Headers: comet-event\r\n",
                             NULL, 0, res, 5000), 0);
    ck_assert_int_eq(res->status, 200);
    ck_assert_str_eq(it_header(res, "Access-Control-Allow-Origin", v,
                               sizeof(v)), "https://app.example");
    ck_assert_ptr_nonnull(strstr(it_header(res, "Access-Control-Allow-Methods",
                                           v, sizeof(v)), "POST"));
    ck_assert_ptr_nonnull(strstr(it_header(res, "Access-Control-Allow-Headers",
                                           v, sizeof(v)), "Comet-Event"));
    ck_assert_int_eq(publish_status(srv.port, "/pub-cors/xo",
                                    "Origin: https://app.example\r\n", res),
                     202);
    ck_assert_str_eq(it_header(res, "Access-Control-Allow-Origin", v,
                               sizeof(v)), "https://app.example");
    ck_assert_ptr_nonnull(it_header(res, "Access-Control-Expose-Headers", v,
                                    sizeof(v)));
    /* Another one is not answered as allowed. */
    ck_assert_int_eq(it_http(srv.port, "OPTIONS", "/pub-cors/xo",
                             "Origin: https://evil.example\r\n"
                             "Access-Control-Request-Method: POST\r\n",
                             NULL, 0, res, 5000), 0);
    ck_assert_int_eq(res->status, 403);
    ck_assert_ptr_null(it_header(res, "Access-Control-Allow-Origin", v,
                                 sizeof(v)));
    free(res);
}
END_TEST

/* ---- long URLs, ids, reserved names ------------------------------------- */

START_TEST(long_channel_lists_reach_the_subscriber)
{
    char head[8192];
    char *p;
    int fd = -1;

    /* Past 4 KB, core would have mapped the URL onto DocumentRoot and
     * refused it (ENAMETOOLONG). */
    p = channel_path("/sub/", "long", 40, 150);
    ck_assert_int_gt((int)strlen(p), 6000);
    ck_assert_int_eq(get_head(srv.port, p, "Accept: text/event-stream\r\n",
                              &fd, head, sizeof(head)), 200);
    ck_assert_ptr_nonnull(strstr(head, "text/event-stream"));
    close(fd);
    free(p);
    /* The documented limits: CometMaxChannels (64) ids of
     * CometMaxChannelIdLength (1024) bytes, with LimitRequestLine raised
     * to fit them. */
    p = channel_path("/sub/", "max", 64, 1024);
    ck_assert_int_eq(get_head(srv.port, p, "Accept: text/event-stream\r\n",
                              &fd, head, sizeof(head)), 200);
    close(fd);
    free(p);
    ck_assert_int_eq(it_log_count(&srv, "AH00127"), 0);
}
END_TEST

START_TEST(urls_rewritten_into_or_out_of_a_comet_location_follow_the_rewrite)
{
    it_response_t *res = malloc(sizeof(*res));
    char head[4096];
    int fd = -1;

    /* Into one ([PT]): the location of the new URL decides. */
    ck_assert_int_eq(get_head(srv.port, "/pretty/rw",
                              "Accept: text/event-stream\r\n", &fd, head,
                              sizeof(head)), 200);
    ck_assert_ptr_nonnull(strstr(head, "text/event-stream"));
    close(fd);
    /* Out of one: an ordinary file again. */
    ck_assert_int_eq(it_http(srv.port, "GET", "/sub/plain", NULL, NULL, 0,
                             res, 5000), 0);
    ck_assert_msg(res->status == 200, "%s\n%s", res->head, res->body);
    ck_assert_str_eq(res->body, "hello from the document root\n");
    free(res);
}
END_TEST

/* Subscribe to path with Last-Event-ID id: the stream must start with the
 * missed signal, then what is kept ("data: kept"), then what comes. */
static void expect_fresh_start(const char *path, const char *id,
                               const char *chan)
{
    char hdrs[512], want[128];
    it_sub_t s;

    snprintf(hdrs, sizeof(hdrs), "Accept: text/event-stream\r\n"
             "Last-Event-ID: %s\r\n", id);
    ck_assert_int_eq(it_sub_open(&s, srv.port, path, hdrs), 0);
    ck_assert_msg(!strncmp(s.buf, "HTTP/1.1 200", 12), "%s: %.40s", id,
                  s.buf);
    snprintf(want, sizeof(want), "event: comet-missed\ndata: %s\n", chan);
    ck_assert_msg(it_sub_wait(&s, want, 5000), "%s: no missed signal in %s",
                  id, s.buf + s.body);
    ck_assert_msg(it_sub_wait(&s, "data: kept\n", 5000), "%s: %s", id,
                  s.buf + s.body);
    ck_assert(it_wait_subscribers(srv.port, chan, 1));
    ck_assert_int_eq(it_publish(srv.port, chan, "next", NULL, NULL, 0), 201);
    ck_assert_msg(it_sub_wait(&s, "data: next\n", 5000), "%s: silent: %s",
                  id, s.buf + s.body);
    it_sub_close(&s);
    ck_assert(it_wait_subscribers(srv.port, chan, 0));
}

START_TEST(ids_from_the_future_another_epoch_or_garbage_start_afresh)
{
    it_response_t *res = malloc(sizeof(*res));
    char id[64], bad[96];
    unsigned long long seq;
    unsigned epoch;

    ck_assert_int_eq(it_publish(srv.port, "fut", "kept", NULL, id,
                                sizeof(id)), 202);
    ck_assert_int_eq(sscanf(id, "%x:%llu", &epoch, &seq), 2);
    /* A seq this server never handed out: it used to wait for it. */
    snprintf(bad, sizeof(bad), "%08x:%llu", epoch, seq + 1000000);
    expect_fresh_start("/sub/fut", bad, "fut");
    snprintf(bad, sizeof(bad), "%08x:%llu", epoch ^ 1u, seq);
    expect_fresh_start("/sub/fut", bad, "fut");
    /* Garbage: a 400 would make EventSource give up for good. */
    expect_fresh_start("/sub/fut", "banana", "fut");
    /* Long-poll: answered at once with "missed" and what is kept. */
    ck_assert_int_eq(it_http(srv.port, "GET",
                             "/sub/fut?last_event_id=not:an:id", NULL, NULL,
                             0, res, 5000), 0);
    ck_assert_int_eq(res->status, 200);
    ck_assert_msg(strstr(res->body, "\"missed\":true"), "%s", res->body);
    ck_assert_msg(strstr(res->body, "\"data\":\"kept\""), "%s", res->body);
    /* One seq for two channels. */
    ck_assert_int_eq(it_http(srv.port, "GET", "/sub/fut,fut2",
                             "Last-Event-ID: 1f03a9c2:4\r\n", NULL, 0, res,
                             5000), 0);
    ck_assert_int_eq(res->status, 200);
    ck_assert_msg(strstr(res->body, "\"missed\":true"), "%s", res->body);
    free(res);
}
END_TEST

START_TEST(the_servers_own_event_names_cannot_be_published)
{
    it_response_t *res = malloc(sizeof(*res));
    char cmd[512], out[4096];

    ck_assert_int_eq(publish_status(srv.port, "/pub/sig",
                                    "Comet-Event: comet-missed\r\n", res),
                     400);
    ck_assert_msg(strstr(res->body, "reserved"), "%s", res->body);
    ck_assert_int_eq(publish_status(srv.port, "/pub/sig",
                                    "Comet-Event: COMET-deleted\r\n", res),
                     400);
    snprintf(cmd, sizeof(cmd), "redis-cli -s '%s' COMET.PUBLISH sig "
             "comet-deleted x", srv.socket_path);
    it_run(cmd, out, sizeof(out), 10000);
    ck_assert_msg(strstr(out, "ERR event types starting with comet- are "
                         "reserved"), "%s", out);
    ck_assert_int_eq(it_http(srv.port, "GET", "/pub/sig", NULL, NULL, 0, res,
                             5000), 0);
    ck_assert_int_eq(res->status, 404);
    ck_assert_int_eq(publish_status(srv.port, "/pub/sig",
                                    "Comet-Event: comet\r\n", res), 202);
    /* With several channels, a channel's name is an event name. */
    ck_assert_int_eq(it_http(srv.port, "GET", "/sub/sig,comet-missed", NULL,
                             NULL, 0, res, 5000), 0);
    ck_assert_int_eq(res->status, 400);
    ck_assert_msg(strstr(res->body, "comet-"), "%s", res->body);
    free(res);
}
END_TEST

/* ---- own servers: what subscribers may make the store create ------------ */

START_TEST(subscribing_to_existing_channels_only_answers_404_for_the_rest)
{
    it_response_t *res = malloc(sizeof(*res));
    it_server_t s;
    it_opts_t o;
    it_sub_t sub;

    memset(&o, 0, sizeof(o));
    o.extra = "<Location /exist/>\n  SetHandler comet-subscriber\n"
              "  CometSubscribeExistingOnly on\n</Location>\n";
    ck_assert_int_eq(it_server_start(&s, &o), 0);
    ck_assert_int_eq(it_http(s.port, "GET", "/exist/nothing", NULL, NULL, 0,
                             res, 5000), 0);
    ck_assert_int_eq(res->status, 404);
    ck_assert_msg(strstr(res->body, "no such channel: nothing"), "%s",
                  res->body);
    ck_assert_int_eq(it_publish(s.port, "there", "1", NULL, NULL, 0), 202);
    ck_assert_int_eq(it_http(s.port, "GET", "/exist/there,nothing", NULL,
                             NULL, 0, res, 5000), 0);
    ck_assert_int_eq(res->status, 404);
    ck_assert_int_eq(it_sub_open(&sub, s.port, "/exist/there",
                                 "Accept: text/event-stream\r\n"), 0);
    ck_assert(!strncmp(sub.buf, "HTTP/1.1 200", 12));
    ck_assert(it_wait_subscribers(s.port, "there", 1));
    ck_assert_int_eq(it_publish(s.port, "there", "2", NULL, NULL, 0), 201);
    ck_assert(it_sub_wait(&sub, "data: 2\n", 5000));
    it_sub_close(&sub);
    /* Elsewhere, subscribing first is fine. */
    ck_assert_int_eq(get_head(s.port, "/sub/nothing",
                              "Accept: text/event-stream\r\n", NULL,
                              res->head, sizeof(res->head)), 200);
    it_server_stop(&s);
    free(res);
}
END_TEST

#define FLOOD_HELD 60

START_TEST(a_flood_of_channel_ids_leaves_publishing_and_subscribing_working)
{
    it_response_t *res = malloc(sizeof(*res));
    char head[4096], cmd[1024], out[4096];
    int fds[FLOOD_HELD], held = 0, refused = 0, i;
    long base, max;
    it_server_t s;
    it_opts_t o;
    chans_t c;
    it_sub_t sub;

    memset(&o, 0, sizeof(o));
    o.extra = "CometSharedMemorySize 1M\n";
    ck_assert_int_eq(it_server_start(&s, &o), 0);
    ck_assert_int_eq(it_publish(s.port, "existing", "1", NULL, NULL, 0), 202);
    base = it_status_value(s.port, "CometChannels");
    max = it_status_value(s.port, "CometChannelsMax");
    ck_assert_int_gt(max, 100);

    /* Hit and run: 6,400 channel ids that nobody publishes to, each
     * request gone at once.  Their records go with them. */
    for (i = 0; i < 100; i++) {
        char tag[16], *p;

        snprintf(tag, sizeof(tag), "h%d.", i);
        p = channel_path("/sub/", tag, 64, 20);
        get_head(s.port, p, "Accept: text/event-stream\r\n", NULL, head,
                 sizeof(head));
        free(p);
    }
    c.port = s.port;
    c.max = base;
    it_wait_for(channels_at_most, &c, 5000);
    ck_assert_int_eq(it_publish(s.port, "new-after-hits", "1", NULL, NULL,
                                0), 202);

    /* Held: each connection names 64 new channels, until the store says
     * no; the subscribers' share is three quarters of the records. */
    for (i = 0; i < FLOOD_HELD && !refused; i++) {
        char tag[16], *p;
        int st;

        snprintf(tag, sizeof(tag), "k%d.", i);
        p = channel_path("/sub/", tag, 64, 20);
        st = get_head(s.port, p, "Accept: text/event-stream\r\n", &fds[held],
                      head, sizeof(head));
        free(p);
        if (st == 200) {
            held++;
        }
        else {
            ck_assert_int_eq(st, 503);
            ck_assert_ptr_nonnull(strstr(head, "Retry-After"));
            refused = 1;
        }
    }
    ck_assert_msg(refused, "%d floods of 64 held without refusal", held);
    ck_assert_int_le(it_status_value(s.port, "CometChannels"),
                     max - max / 4);
    ck_assert_int_ge(it_log_count(&s, "the subscribers' share of the store "
                                  "is used up"), 1);
    /* Publishers have their quarter, and subscribers to channels that
     * exist are still served. */
    for (i = 0; i < 10; i++) {
        char name[32];

        snprintf(name, sizeof(name), "new-%d", i);
        ck_assert_int_eq(it_publish(s.port, name, "1", NULL, NULL, 0), 202);
    }
    ck_assert_int_eq(it_sub_open(&sub, s.port, "/sub/existing",
                                 "Accept: text/event-stream\r\n"), 0);
    ck_assert(!strncmp(sub.buf, "HTTP/1.1 200", 12));
    ck_assert(it_wait_subscribers(s.port, "existing", 1));
    ck_assert_int_eq(it_publish(s.port, "existing", "2", NULL, NULL, 0), 201);
    ck_assert(it_sub_wait(&sub, "data: 2\n", 5000));
    it_sub_close(&sub);

    /* The flood's records go with its connections. */
    for (i = 0; i < held; i++) {
        close(fds[i]);
    }
    c.max = base + 11;
    ck_assert(it_wait_for(channels_at_most, &c, 10000));

    /* A store error from the core is logged with its own text. */
    snprintf(cmd, sizeof(cmd), "for i in 1 2 3 4 5 6; do head -c 200000 "
             "/dev/zero | tr '\\0' a | redis-cli -s '%s' -x PUBLISH big%d"
             "; done", s.socket_path, 0);
    it_run(cmd, out, sizeof(out), 30000);
    ck_assert_msg(strstr(out, "ERR the message store is full"), "%s", out);
    ck_assert_int_ge(it_log_count(&s, "the store is full: shared memory "
                                  "store is full"), 1);
    ck_assert_int_eq(it_log_count(&s, "APR does not understand"), 0);
    it_server_stop(&s);
    free(res);
}
END_TEST

START_TEST(one_client_may_hold_only_so_many_channels_nobody_published_to)
{
    char head[4096];
    int fds[16], held = 0, refused = 0, i, fd;
    it_server_t s;
    it_opts_t o;
    it_sub_t sub;

    memset(&o, 0, sizeof(o));
    o.extra = "CometMaxNewChannelsPerClient 100\n";
    ck_assert_int_eq(it_server_start(&s, &o), 0);
    ck_assert_int_eq(it_publish(s.port, "published", "1", NULL, NULL, 0),
                     202);
    /* 30 new channels a connection: at most 3 connections per process. */
    for (i = 0; i < 16 && !refused; i++) {
        char tag[16], *p;
        int st;

        snprintf(tag, sizeof(tag), "q%d.", i);
        p = channel_path("/sub/", tag, 30, 12);
        st = get_head(s.port, p, "Accept: text/event-stream\r\n", &fds[held],
                      head, sizeof(head));
        free(p);
        if (st == 200) {
            held++;
        }
        else {
            ck_assert_int_eq(st, 503);
            refused = 1;
        }
    }
    ck_assert_msg(refused, "%d connections of 30 held", held);
    ck_assert_int_le(held, 6);
    ck_assert_int_ge(it_log_count(&s, "CometMaxNewChannelsPerClient 100"), 1);
    /* The quota counts channels nobody published to, nothing else. */
    ck_assert_int_eq(it_sub_open(&sub, s.port, "/sub/published",
                                 "Accept: text/event-stream\r\n"), 0);
    ck_assert(!strncmp(sub.buf, "HTTP/1.1 200", 12));
    it_sub_close(&sub);
    /* What a client held is given back when it leaves. */
    for (i = 0; i < held; i++) {
        close(fds[i]);
    }
    for (i = 0; i < 200; i++) {
        char *p = channel_path("/sub/", "again.", 30, 12);
        int st = get_head(s.port, p, "Accept: text/event-stream\r\n", &fd,
                          head, sizeof(head));

        free(p);
        if (st == 200) {
            close(fd);
            break;
        }
        usleep(20000);
    }
    ck_assert_int_lt(i, 200);
    it_server_stop(&s);
}
END_TEST

START_TEST(directive_values_that_cannot_work_are_refused_at_config_time)
{
    char out[16384];
    it_server_t s;
    it_opts_t o;

    memset(&o, 0, sizeof(o));
    o.extra = "CometMaxChannelIdLength 64K\n";
    ck_assert_int_ne(it_server_try(&o, 0, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "CometMaxChannelIdLength: 64K is out of range "
                         "(1 to 65535 bytes)"), "%s", out);
    o.extra = "<Directory /tmp>\n  CometKeepalive 5\n</Directory>\n";
    ck_assert_int_ne(it_server_try(&o, 0, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "CometKeepalive cannot occur within "
                         "<Directory> section"), "%s", out);
    o.extra = "<Files x>\n  CometChannel x\n</Files>\n";
    ck_assert_int_ne(it_server_try(&o, 0, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "CometChannel cannot occur within <Files> "
                         "section"), "%s", out);
    /* The largest value the directive takes does start. */
    o.extra = "CometMaxChannelIdLength 65535\n";
    ck_assert_int_eq(it_server_start(&s, &o), 0);
    it_server_stop(&s);
}
END_TEST

Suite *test_hardening_access_suite(void)
{
    Suite *s = suite_create("hardening_access");
    TCase *doors = tcase_create("doors");
    TCase *own = tcase_create("own-server");

    tcase_add_unchecked_fixture(doors, start, stop);
    tcase_set_timeout(doors, 120);
    tcase_add_test(doors,
        a_publisher_location_without_require_is_refused_saying_what_to_add);
    tcase_add_test(doors,
        comet_handlers_and_directives_outside_a_location_are_refused);
    tcase_add_test(doors,
        browser_publishes_from_other_origins_are_refused_unless_allowed);
    tcase_add_test(doors, long_channel_lists_reach_the_subscriber);
    tcase_add_test(doors,
        urls_rewritten_into_or_out_of_a_comet_location_follow_the_rewrite);
    tcase_add_test(doors,
        ids_from_the_future_another_epoch_or_garbage_start_afresh);
    tcase_add_test(doors, the_servers_own_event_names_cannot_be_published);
    suite_add_tcase(s, doors);

    tcase_set_timeout(own, 180);
    tcase_add_test(own,
        subscribing_to_existing_channels_only_answers_404_for_the_rest);
    tcase_add_test(own,
        a_flood_of_channel_ids_leaves_publishing_and_subscribing_working);
    tcase_add_test(own,
        one_client_may_hold_only_so_many_channels_nobody_published_to);
    tcase_add_test(own,
        directive_values_that_cannot_work_are_refused_at_config_time);
    suite_add_tcase(s, own);
    return s;
}
