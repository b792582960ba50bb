/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * A small TLS client for the integration tests (OpenSSL, no certificate
 * checks): many connections in one process, reads with timeouts, and a
 * choice of how to leave (with or without close_notify).
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
} it_tls_t;

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
