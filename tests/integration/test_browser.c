/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* A real browser (headless Chromium) subscribes with EventSource: it gets
 * live messages, and after the server ends its stream (graceful restart)
 * it reconnects by itself with Last-Event-ID and loses nothing; over TLS
 * on a host that speaks HTTP/2, each CometHTTP2 policy does what README
 * says.  With WebSocket (ws:// and wss://): it subscribes to two
 * channels, publishes in the envelope and gets its message back with the
 * identity the server gave it, and sees the close code of a graceful
 * restart (1001).  The page reports every event it sees by publishing it
 * to a second channel, which the test reads back. */

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

static const char page[] =
    "<!doctype html><meta charset=utf-8><title>comet</title>\n"
    "<script>\n"
    "function report(text) {\n"
    "  fetch('/pub/browser-ack', {method: 'POST', body: text});\n"
    "}\n"
    "const es = new EventSource('/sub/browser');\n"
    "es.onopen = () => report('open');\n"
    "es.onmessage = (e) => report('got ' + e.data + ' id=' + e.lastEventId);\n"
    "es.addEventListener('typing', (e) => report('typed ' + e.data));\n"
    "</script>\n";

static const char ws_page[] =
    "<!doctype html><meta charset=utf-8><title>comet ws</title>\n"
    "<script>\n"
    "function report(text) {\n"
    "  fetch('/pub/browser-ack', {method: 'POST', body: text});\n"
    "}\n"
    "const ws = new WebSocket((location.protocol === 'https:' ? 'wss://'\n"
    "                                                  : 'ws://')\n"
    "                         + location.host + '/wsb/bws,bws2');\n"
    "ws.onopen = () => {\n"
    "  report('open');\n"
    "  ws.send(JSON.stringify({channel: 'bws2', event: 'chat',\n"
    "                          data: 'from-page'}));\n"
    "};\n"
    "ws.onmessage = (e) => {\n"
    "  const o = JSON.parse(e.data);\n"
    "  if (o.channel) {\n"
    "    report('got ' + o.channel + ' ' + o.data + ' from=' + o.from);\n"
    "  }\n"
    "};\n"
    "ws.onclose = (e) => report('closed ' + e.code + ' ' + e.reason);\n"
    "</script>\n";

/* Chromium on url (the test's certificate is self-signed). */
static pid_t start_browser(const it_server_t *srv, const char *url)
{
    char profile[400], path[400];
    const char *list = getenv("COMET_IT_LIST");
    FILE *f;
    pid_t pid;

    snprintf(profile, sizeof(profile), "--user-data-dir=%s/chromium",
             srv->dir);
    snprintf(path, sizeof(path), "%s/chromium.log", srv->dir);
    pid = fork();
    if (pid == 0) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

        setsid();
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execlp(getenv("COMET_CHROMIUM") ? getenv("COMET_CHROMIUM")
                                        : "chromium", "chromium",
               "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--ignore-certificate-errors",
               "--remote-debugging-port=0", profile, url, (char *)NULL);
        _exit(127);
    }
    /* The runner kills whatever group is left if this test dies. */
    if (pid > 0 && list && (f = fopen(list, "a"))) {
        fprintf(f, "%d %s\n", (int)pid, srv->dir);
        fclose(f);
    }
    return pid;
}

static void stop_browser(pid_t pid)
{
    int status;

    if (pid > 0) {
        kill(-pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
}

typedef struct ack_t {
    int port;
    const char *want;
    char body[65536];
} ack_t;

/* What the page has reported so far: every kept message of browser-ack. */
static int acked(void *baton)
{
    ack_t *a = baton;
    it_response_t *res = malloc(sizeof(*res));
    int found = 0;

    if (it_http(a->port, "GET", "/sub/browser-ack?transport=longpoll"
                "&backlog=all", NULL, NULL, 0, res, 5000) == 0
        && res->status == 200) {
        size_t n = res->body_len < sizeof(a->body) - 1
                   ? res->body_len : sizeof(a->body) - 1;

        memcpy(a->body, res->body, n);
        a->body[n] = '\0';
        found = strstr(res->body, a->want) != NULL;
    }
    free(res);
    return found;
}

static int wait_ack(int port, const char *want, int ms, char *seen,
                    size_t seenlen)
{
    ack_t *a = malloc(sizeof(*a));
    int ok;

    a->port = port;
    a->want = want;
    a->body[0] = '\0';
    /* Long-polls that find nothing wait: give each a short timeout. */
    ok = it_wait_for(acked, a, ms);
    {
        size_t n = strlen(a->body);

        n = n < seenlen - 1 ? n : seenlen - 1;
        memcpy(seen, a->body, n);
        seen[n] = '\0';
    }
    free(a);
    return ok;
}

START_TEST(a_browser_receives_live_messages_and_resumes_after_a_restart)
{
    it_server_t srv;
    it_opts_t o;
    char path[400], seen[65536], want[128], id1[64], id2[64];
    FILE *f;
    pid_t browser;

    memset(&o, 0, sizeof(o));
    /* Long-polls of the test's own checks answer within a second. */
    o.extra = "<Location /sub/browser-ack>\n  CometSubscriberTimeout 1\n"
              "</Location>\n";
    ck_assert_int_eq(it_server_start(&srv, &o), 0);
    snprintf(path, sizeof(path), "%s/htdocs/browser.html", srv.dir);
    f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(page, f);
    fclose(f);

    snprintf(path, sizeof(path), "http://127.0.0.1:%d/browser.html",
             srv.port);
    browser = start_browser(&srv, path);
    ck_assert_int_gt(browser, 0);
    ck_assert_msg(wait_ack(srv.port, "\"data\":\"open\"", 30000, seen,
                           sizeof(seen)),
                  "the page never reported its EventSource open: %s", seen);

    /* Live: an untyped and a typed message. */
    ck_assert_int_eq(it_publish(srv.port, "browser", "hello-1", NULL, id1,
                             sizeof(id1)), 201);
    snprintf(want, sizeof(want), "got hello-1 id=%s", id1);
    ck_assert_msg(wait_ack(srv.port, want, 10000, seen, sizeof(seen)),
                  "wanted '%s', the page saw: %s", want, seen);
    ck_assert_int_eq(it_publish(srv.port, "browser", "alice", "typing", NULL,
                             0), 201);
    ck_assert_msg(wait_ack(srv.port, "typed alice", 10000, seen,
                           sizeof(seen)), "the page saw: %s", seen);

    /* The server ends the stream and the browser reconnects by itself.
     * A message published meanwhile arrives exactly once, whether the
     * browser was still away (resumed from its Last-Event-ID: 202) or
     * already back (live: 201). */
    ck_assert_int_eq(it_server_graceful(&srv), 0);
    {
        int st = it_publish(srv.port, "browser", "while-away", NULL, id2,
                         sizeof(id2));
        char *first;

        ck_assert_msg(st == 201 || st == 202, "publish answered %d", st);
        snprintf(want, sizeof(want), "got while-away id=%s", id2);
        ck_assert_msg(wait_ack(srv.port, want, 20000, seen, sizeof(seen)),
                      "wanted '%s' after the reconnect, the page saw: %s",
                      want, seen);
        first = strstr(seen, want);
        ck_assert_msg(!strstr(first + 1, want), "delivered twice: %s", seen);
        /* Nothing from before the restart came again either. */
        snprintf(want, sizeof(want), "got hello-1 id=%s", id1);
        first = strstr(seen, want);
        ck_assert_msg(first && !strstr(first + 1, want),
                      "hello-1 not exactly once: %s", seen);
    }

    stop_browser(browser);
    it_server_stop(&srv);
}
END_TEST


/* ---- HTTP/2 over TLS: the CometHTTP2 policies ----------------------------------- */

static const char h2page[] =
    "<!doctype html><meta charset=utf-8><title>comet h2</title>\n"
    "<script>\n"
    "function report(text) {\n"
    "  fetch('/pub/browser-ack', {method: 'POST', body: text});\n"
    "}\n"
    "const es = new EventSource('/sub/h2page');\n"
    "es.onopen = () => report('open');\n"
    "es.onmessage = (e) => report('got ' + e.data);\n"
    "es.onerror = () => report('error ' + es.readyState);\n"
    "</script>\n";

static int access_log_has(const it_server_t *s, const char *needle)
{
    char path[512], *log = malloc(1024 * 1024);
    int found;

    snprintf(path, sizeof(path), "%s/access_log", s->dir);
    found = it_read_file(path, log, 1024 * 1024) > 0 && strstr(log, needle);
    free(log);
    return found;
}

typedef struct held_t {
    int port;
    long want;
} held_t;

static int held_is(void *baton)
{
    held_t *h = baton;

    return it_status_value(h->port, "CometHeld") == h->want;
}

static int detached_tls_is(void *baton)
{
    held_t *h = baton;

    return it_status_value(h->port, "CometDetachedTLS") == h->want;
}

/* The page and its EventSource on one TLS origin whose Protocols include
 * h2 (so Chromium speaks HTTP/2 there), under CometHTTP2 downgrade (0),
 * hold (1) and refuse (2). */
START_TEST(chromium_eventsource_over_h2_enabled_tls_under_each_policy)
{
    static const char *const policy[] = { "downgrade", "hold", "refuse" };
    it_server_t srv;
    it_opts_t o;
    char path[400], seen[65536], vhost[256];
    FILE *f;
    pid_t browser;

    memset(&o, 0, sizeof(o));
    o.tls = 1;
    o.extra = "LoadModule http2_module @MODULES@/mod_http2.so\n"
              "<Location /sub/browser-ack>\n  CometSubscriberTimeout 1\n"
              "</Location>\n";
    snprintf(vhost, sizeof(vhost), "  Protocols h2 http/1.1\n"
             "  CometHTTP2 %s\n", policy[_i]);
    o.tls_vhost = vhost;
    ck_assert_int_eq(it_server_start(&srv, &o), 0);
    snprintf(path, sizeof(path), "%s/htdocs/h2.html", srv.dir);
    f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(h2page, f);
    fclose(f);
    snprintf(path, sizeof(path), "https://127.0.0.1:%d/h2.html",
             srv.tls_port);
    browser = start_browser(&srv, path);
    ck_assert_int_gt(browser, 0);

    if (_i == 2) {
        /* refuse: the EventSource fails for good (503 is final for it). */
        ck_assert_msg(wait_ack(srv.port, "\"data\":\"error 2\"", 30000, seen,
                               sizeof(seen)), "the page saw: %s", seen);
        ck_assert(access_log_has(&srv, "\"GET /sub/h2page HTTP/2.0\" 503"));
        ck_assert(!access_log_has(&srv, "\"GET /sub/h2page HTTP/1.1\""));
    }
    else {
        held_t h;

        ck_assert_msg(wait_ack(srv.port, "\"data\":\"open\"", 30000, seen,
                               sizeof(seen)),
                      "the page never reported its EventSource open: %s",
                      seen);
        ck_assert(it_wait_subscribers(srv.port, "h2page", 1));
        ck_assert_int_eq(it_publish(srv.port, "h2page", "hello-h2", NULL,
                                    NULL, 0), 201);
        ck_assert_msg(wait_ack(srv.port, "got hello-h2", 10000, seen,
                               sizeof(seen)), "the page saw: %s", seen);
        h.port = srv.port;
        h.want = _i == 1;
        ck_assert(it_wait_for(held_is, &h, 10000));
        if (_i == 0) {
            /* Asked for HTTP/1.1, retried over it, detached there. */
            ck_assert(access_log_has(&srv, "\"GET /sub/h2page HTTP/2.0\" "
                                     "403"));
            ck_assert(access_log_has(&srv, "\"GET /sub/h2page HTTP/1.1\" "
                                     "200"));
            h.want = 1;
            ck_assert_msg(it_wait_for(detached_tls_is, &h, 10000),
                          "detached TLS %ld, suspended %ld",
                          it_status_value(srv.port, "CometDetachedTLS"),
                          it_status_value(srv.port, "CometSuspended"));
        }
        else {
            ck_assert(!access_log_has(&srv, "\"GET /sub/h2page HTTP/1.1\""));
        }
        fprintf(stderr, "CometHTTP2 %s: the page's reports went over %s\n",
                policy[_i], access_log_has(&srv, "\"POST /pub/browser-ack "
                                           "HTTP/1.1\"")
                            ? access_log_has(&srv, "\"POST /pub/browser-ack "
                                             "HTTP/2.0\"")
                              ? "HTTP/2, then HTTP/1.1" : "HTTP/1.1"
                            : "HTTP/2");
    }
    stop_browser(browser);
    it_server_stop(&srv);
}
END_TEST

START_TEST(a_browser_websocket_listens_publishes_and_sees_1001_at_restart)
{
    it_server_t srv;
    it_opts_t o;
    char path[400], seen[65536];
    FILE *f;
    pid_t browser;

    memset(&o, 0, sizeof(o));
    /* 1: the page and its WebSocket over TLS (wss://, the session taken
     * over by the hub). */
    o.tls = _i;
    o.extra = "<Location /sub/browser-ack>\n  CometSubscriberTimeout 1\n"
              "</Location>\n"
              "<Location /wsb/>\n  SetHandler comet-subscriber\n"
              "  CometClientPublish on\n"
              "  CometClientIdentity \"page@%{REMOTE_ADDR}\"\n"
              "</Location>\n";
    ck_assert_int_eq(it_server_start(&srv, &o), 0);
    snprintf(path, sizeof(path), "%s/htdocs/ws.html", srv.dir);
    f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(ws_page, f);
    fclose(f);

    if (_i) {
        snprintf(path, sizeof(path), "https://127.0.0.1:%d/ws.html",
                 srv.tls_port);
    }
    else {
        snprintf(path, sizeof(path), "http://127.0.0.1:%d/ws.html",
                 srv.port);
    }
    browser = start_browser(&srv, path);
    ck_assert_int_gt(browser, 0);
    ck_assert_msg(wait_ack(srv.port, "\"data\":\"open\"", 30000, seen,
                           sizeof(seen)),
                  "the page never reported its WebSocket open: %s", seen);
    /* Its own message, back with the identity the server gave it. */
    ck_assert_msg(wait_ack(srv.port, "got bws2 from-page from=page@127.0.0.1",
                           10000, seen, sizeof(seen)),
                  "the page saw: %s", seen);
    ck_assert_int_eq(it_publish(srv.port, "bws", "hello-ws", NULL, NULL, 0),
                     201);
    ck_assert_msg(wait_ack(srv.port, "got bws hello-ws from=undefined", 10000,
                           seen, sizeof(seen)), "the page saw: %s", seen);
    ck_assert_int_eq(it_server_graceful(&srv), 0);
    ck_assert_msg(wait_ack(srv.port, "closed 1001 server going away", 20000,
                           seen, sizeof(seen)), "the page saw: %s", seen);
    stop_browser(browser);
    it_server_stop(&srv);
}
END_TEST

Suite *test_browser_suite(void)
{
    Suite *s = suite_create("browser");
    TCase *tc = tcase_create("eventsource");

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, a_browser_receives_live_messages_and_resumes_after_a_restart);
    tcase_add_loop_test(tc,
        chromium_eventsource_over_h2_enabled_tls_under_each_policy, 0, 3);
    tcase_add_loop_test(tc,
        a_browser_websocket_listens_publishes_and_sees_1001_at_restart, 0, 2);
    suite_add_tcase(s, tc);
    return s;
}
