/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * The integration harness: starts the real apache2 (event MPM, at least two
 * children) with a configuration generated from tests/integration/
 * httpd.conf.in into a temporary directory on a free 127.0.0.1 port, talks
 * to it over sockets, and stops it by PID.  Every server started is also
 * recorded for the runner (main.c), which kills whatever is left at the end
 * and prints the tail of each error log when a test failed.
 */
#ifndef COMET_IT_HARNESS_H
#define COMET_IT_HARNESS_H

#include <sys/types.h>
#include <check.h>

typedef struct it_opts_t {
    const char *mpm;        /* "event" (default), "prefork", "worker"      */
    int servers;            /* children (StartServers = ServerLimit); 2    */
    int threads;            /* ThreadsPerChild; 5                          */
    int async_factor;       /* AsyncRequestWorkerFactor; 0 = httpd default */
    const char *extra;      /* appended to the generated httpd.conf        */
    const char *loglevel;   /* LogLevel for comet; "info"                  */
    int tls;                /* also listen with TLS on tls_port            */
    const char *tls_vhost;  /* more lines inside the TLS virtual host      */
    int tls_client_ca;      /* a CA (<dir>/ca.pem, which the TLS host
                               trusts for client certificates) and a
                               client certificate it signed
                               (<dir>/client.pem, <dir>/client-key.pem)    */
} it_opts_t;

typedef struct it_server_t {
    char dir[256];
    char socket_path[300];  /* the publish socket: <dir>/comet.sock       */
    int port;
    int tls_port;
    pid_t pid;
    int children_wanted;
} it_server_t;

/* Generate the config and start apache2; waits (polling) until it answers
 * and all children run.  0 on success; on failure the error log's tail has
 * been printed and srv->pid is 0. */
int it_server_start(it_server_t *srv, const it_opts_t *opts);

/* Start a server stopped by it_server_stop* again: the same directory,
 * config and port (a new store, so a new epoch).  0 on success. */
int it_server_start_again(it_server_t *srv);

/* Graceful stop (SIGWINCH; the config's GracefulShutdownTimeout bounds
 * it), wait for exit (bounded), SIGKILL the whole process group if it did
 * not go.  Safe to call twice.  Graceful, because httpd 2.4's event MPM
 * may crash when stopped ungracefully while a worker is closing a
 * connection (close_worker_sockets() can read a socket whose pool the
 * worker has just freed), which would hide the crashes the runner looks
 * for. */
void it_server_stop(it_server_t *srv);

/* The same with SIGTERM (apachectl -k stop): children end at once.  For
 * tests of that very path; best with no request in flight. */
void it_server_stop_now(it_server_t *srv);

/* apachectl -k graceful: SIGUSR1, then wait until a new generation of
 * children answers.  0 on success. */
int it_server_graceful(it_server_t *srv);

/* Write the config only and run `apache2 -t` (or a real start when
 * start is set, which must fail): returns the exit status and copies
 * stderr + error log into out. */
int it_server_try(const it_opts_t *opts, int start, char *out,
                  size_t outlen);

/* Pids of the server's child processes (at most max); returns the count. */
int it_server_children(const it_server_t *srv, pid_t *pids, int max);

/* Sum of private resident memory (RssAnon, kB) and of open descriptors
 * over the server's children.  Shared memory is left out on purpose: the
 * store segment's pages count once touched, which is growth towards its
 * fixed size, not a leak. */
void it_children_usage(const it_server_t *s, long *rss_kb, long *fds);

/* SIGKILL one child on purpose: noted in the server's directory first, so
 * that the runner does not count its "exit signal" as a crash; then waits
 * (bounded) until the process is dead (gone or a zombie).  1 when it died,
 * 0 otherwise. */
int it_kill_child(const it_server_t *srv, pid_t pid);

/* The children server-status lists (CometProcessN lines): pid and
 * subscribers of each, at most max; returns the count (-1 on error). */
int it_status_processes(int port, pid_t *pids, long *subs, int max);

/* Print the last lines of the server's error log to stderr. */
void it_server_log_tail(const it_server_t *srv, int lines);

/* Read a whole file (at most max-1 bytes) into buf; returns length or -1. */
long it_read_file(const char *path, char *buf, size_t max);

/* ---- sockets and HTTP ------------------------------------------------------ */

/* Connected TCP socket to 127.0.0.1:port (blocking), or -1. */
int it_connect(int port);
int it_connect_unix(const char *path);
/* The same with the receive buffer set to rcvbuf bytes before connecting
 * (a client that reads little holds little). */
int it_connect_rcvbuf(int port, int rcvbuf);

/* Send all of buf. 0 or -1. */
int it_send(int fd, const char *buf, size_t len);
int it_sendf(int fd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Read into buf (appending at *len, NUL-terminated) until needle appears
 * after offset 'from', the peer closes, or timeout_ms passes.  Returns 1
 * found, 0 closed/timeout without it, -1 error. */
int it_read_until(int fd, char *buf, size_t max, size_t *len, size_t from,
                  const char *needle, int timeout_ms);

/* Read until the peer closes or timeout; returns 1 closed, 0 timeout. */
int it_read_to_close(int fd, char *buf, size_t max, size_t *len,
                     int timeout_ms);

typedef struct it_response_t {
    int status;
    char head[8192];          /* status line + headers                  */
    char body[256 * 1024];    /* de-chunked body                         */
    size_t body_len;
    int chunked_complete;     /* saw the terminating chunk               */
} it_response_t;

/* One request with "Connection: close" (added), read to the end.
 * extra_headers: "Name: value\r\n..." or NULL.  0 or -1. */
int it_http(int port, const char *method, const char *path,
            const char *extra_headers, const char *body, size_t body_len,
            it_response_t *res, int timeout_ms);

/* Value of a response header (case-insensitive name), copied; NULL. */
const char *it_header(const it_response_t *res, const char *name,
                      char *buf, size_t len);

/* Parse a raw HTTP response held in raw[0..len) into res (de-chunking). */
int it_parse_response(const char *raw, size_t len, it_response_t *res);

/* ---- subscribers and publishes ---------------------------------------- */

#define IT_SUB_BUFSZ (256 * 1024)

/* A subscriber connection: buf holds everything read so far, the body
 * starting at buf + body. */
typedef struct it_sub_t {
    int fd;
    char *buf;
    size_t len;
    size_t body;
} it_sub_t;

/* GET path with the extra headers ("Name: value\r\n"... or NULL) and wait
 * for the response head.  0, or -1 (s is closed by it_sub_close). */
int it_sub_open(it_sub_t *s, int port, const char *path, const char *hdrs);

/* GET path without waiting for the response head (a parked long-poll's
 * head comes with its answer): s->body is 0 until it_sub_head.  0 or -1. */
int it_sub_send(it_sub_t *s, int port, const char *path, const char *hdrs);

/* Read until the response head is in (s->body set): 1, else 0/-1. */
int it_sub_head(it_sub_t *s, int timeout_ms);

/* Read until needle shows up in the body: 1 found, else 0/-1. */
int it_sub_wait(it_sub_t *s, const char *needle, int timeout_ms);

void it_sub_close(it_sub_t *s);

/* POST data to /pub/<channel> (with a Comet-Event header when event);
 * returns the HTTP status (-1 on a transport error) and copies the
 * Comet-Message-Id header into id when id is not NULL. */
int it_publish(int port, const char *channel, const char *data,
               const char *event, char *id, size_t idlen);

/* Subscribers the store counts on channel, over all processes (0 for an
 * unknown channel, -1 on error); and a bounded wait until it is want. */
int it_subscribers(int port, const char *channel);
int it_wait_subscribers(int port, const char *channel, int want);
int it_wait_subscribers_ms(int port, const char *channel, int want,
                           int timeout_ms);

/* ---- an EventSource-like client ---------------------------------------- */

/* One SSE subscription over HTTP/1.1 that behaves like a browser's
 * EventSource: it parses the stream (chunked or not) by the event-stream
 * rules, remembers the last event id, and when the stream ends it can
 * connect again with Last-Event-ID.  Non-blocking: many are served by
 * it_es_poll. */
typedef struct it_es_t it_es_t;

/* Called for each dispatched event (type "message" when unnamed); data is
 * NUL-terminated (len excludes the NUL). */
typedef void it_es_event_fn(it_es_t *es, const char *type, const char *data,
                            size_t len, void *baton);

struct it_es_t {
    int             port;
    char            path[256];
    int             fd;            /* -1 when not connected               */
    int             connected;     /* response head 200 read              */
    int             status;        /* status of the last response         */
    char            last_id[256];  /* the last event id, as EventSource   */
    long            events;        /* dispatched                          */
    long            connects;      /* successful connects (1 + resumes)   */
    it_es_event_fn *on_event;
    void           *baton;
    /* parser state (private) */
    char           *in;
    size_t          in_len, in_cap;
    int             chunked, chunk_state;
    size_t          chunk_left;
    char            id_buf[256], type[128];
    char           *data;
    size_t          data_len, data_cap;
};

/* Set es up for GET path (no connection yet). */
void it_es_init(it_es_t *es, int port, const char *path,
                it_es_event_fn *on_event, void *baton);

/* Connect and send the request (Accept: text/event-stream, and
 * Last-Event-ID when there is one).  0, or -1 (not connected). */
int it_es_connect(it_es_t *es);

/* Read what the socket has (without blocking) and dispatch events.
 * 1 still open, 0 the stream ended (es->fd closed). */
int it_es_read(it_es_t *es);

void it_es_close(it_es_t *es);

/* Serve n clients for up to timeout_ms: read whatever arrives and, when
 * reconnect is set, connect again at once each one whose stream ended
 * (as EventSource does, with Last-Event-ID).  Returns when done_fn(baton)
 * is true (1) or at the timeout (0).  done_fn may be NULL (serve until
 * the timeout). */
int it_es_poll(it_es_t *es, int n, int timeout_ms, int reconnect,
               int (*done_fn)(void *), void *baton);

/* ---- a publisher on the publish socket --------------------------------- */

/* A RESP client of the publish socket that connects again when its
 * connection goes (a child killed or restarted). */
typedef struct it_rpub_t {
    char path[300];
    int  fd;
    char err[256];     /* the last -ERR line */
} it_rpub_t;

void it_rpub_init(it_rpub_t *p, const char *socket_path);

/* PUBLISH channel data.  Returns the receivers (>= 0); -1 when the
 * connection broke after the command was sent (the message may or may not
 * be stored: uncertain); -2 on an error reply (p->err); -3 when no
 * connection could be made within timeout_ms (certainly not sent). */
long it_rpub_publish(it_rpub_t *p, const char *channel, const char *data,
                     size_t len, int timeout_ms);

void it_rpub_close(it_rpub_t *p);

/* Run a command line through sh; capture stdout+stderr into out.
 * Returns the exit status (or -1). */
int it_run(const char *cmd, char *out, size_t outlen, int timeout_ms);

/* A number from GET /server-status?auto ("Key: N"), or -1. */
long it_status_value(int port, const char *key);
/* Wait (bounded: 10 s) until it_status_value(port, key) is want: 1, else 0. */
int it_wait_status(int port, const char *key, long want);

/* Occurrences of needle in the server's error log. */
int it_log_count(const it_server_t *srv, const char *needle);

/* Milliseconds on a monotonic clock. */
long long it_now_ms(void);

/* Wait (polling every few ms) until cond_fn(baton) is true or timeout. */
int it_wait_for(int (*cond_fn)(void *), void *baton, int timeout_ms);

#endif
