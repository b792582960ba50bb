/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * A small TLS client for the integration tests (OpenSSL, no certificate
 * checks): many connections in one process, reads with timeouts, and a
 * choice of how to leave (with or without close_notify).  Optionally a
 * protocol version, a client certificate, and a trace of the raw stream:
 * every TLS record read from the socket, every alert, and what comes
 * after the server's close_notify.
 */
#ifndef COMET_IT_TLS_CLIENT_H
#define COMET_IT_TLS_CLIENT_H

#include <stddef.h>

typedef struct it_tls_t {
    int    fd;
    void  *ssl;            /* SSL *                                      */
    char  *buf;            /* what was read, NUL-terminated              */
    size_t len, cap;
    size_t body;           /* offset of the body once the head is in     */
    int    eof;            /* the server closed (cleanly or not)         */
    /* How it ended: */
    int    notified;       /* with close_notify (the read saw its end)   */
    int    failed;         /* with an error of the TLS layer (a record
                              that did not decrypt, a fatal alert)       */
    /* With trace (it_tls_opts_t): */
    int    records;        /* raw TLS records read                       */
    int    records_after;  /* ... of them after the server's close_notify */
    int    close_notifies; /* close_notify alerts received               */
    int    other_alerts;   /* any other alert received                   */
    int    key_updates;    /* KeyUpdate messages received                */
    long   bytes_after;    /* raw bytes after the TLS stream's end       */
    unsigned char rh[5];   /* the record header being read               */
    size_t rh_have, rbody_left;
} it_tls_t;

typedef struct it_tls_opts_t {
    int         version;   /* 2: TLS 1.2 only, 3: TLS 1.3, 0: either     */
    const char *cert;      /* client certificate and key (PEM files)     */
    const char *key;
    int         rcvbuf;    /* receive buffer before connecting (0: as is) */
    int         trace;     /* count records and alerts (see above)       */
} it_tls_opts_t;

/* it_tls_open with options (NULL: none). */
int it_tls_open_opts(it_tls_t *t, int port, const char *request,
                     const it_tls_opts_t *o);

/* After the server's close_notify: read the raw socket until EOF (at most
 * timeout_ms), counting in bytes_after what still comes.  1 at EOF. */
int it_tls_raw_to_eof(it_tls_t *t, int timeout_ms);

/* The protocol version of the connection (e.g. "TLSv1.3"). */
const char *it_tls_version(const it_tls_t *t);

/* Connect to 127.0.0.1:port, handshake, send request (whole, as is).
 * 0, or -1 (everything released). */
int it_tls_open(it_tls_t *t, int port, const char *request);

/* The same with the socket's receive buffer set to rcvbuf bytes before
 * connecting (a client that reads little holds little). */
int it_tls_open_rcvbuf(it_tls_t *t, int port, const char *request,
                       int rcvbuf);

/* Read until needle appears at or after offset from, the server closes,
 * or timeout_ms passes: 1 found, 0 not. */
int it_tls_read_until(it_tls_t *t, const char *needle, size_t from,
                      int timeout_ms);

/* Read until the server closes: 1 closed, 0 timeout. */
int it_tls_read_to_close(it_tls_t *t, int timeout_ms);

/* Leave: notify sends close_notify first; otherwise the socket just
 * closes.  Frees everything; safe on a failed open. */
void it_tls_close(it_tls_t *t, int notify);

#endif
