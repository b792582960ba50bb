/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_tls.h -- a TLS session that the hub carries on by itself.
 *
 * A TLS subscriber's session is made and used first by the server's TLS
 * code (mod_ssl): the handshake, the request, the response head.  Then it
 * is taken over: comet_tls_detach cuts every tie to its first user and
 * moves it onto the hub's own descriptor of the socket; from then on the
 * hub writes the stream's bytes with non-blocking writes, reads to notice
 * the client's close_notify, EOF or key updates (and, for a WebSocket,
 * the client's frames), and ends the stream with close_notify.  Nothing else may touch the session after the
 * detach.
 *
 * Sessions are OpenSSL's (struct ssl_st is OpenSSL's SSL; callers that
 * make or inspect one include <openssl/ssl.h> themselves).  Plaintext in,
 * plaintext counted: the caller's unsent bytes are plaintext, and the
 * session holds at most one encrypted record of them.
 *
 * Server-independent: OpenSSL, APR and POSIX only.
 *
 * Threads: comet_tls_detach on the thread that holds the session alone
 * (a request thread, in the connection's cleanup); everything else on the
 * thread that owns the session after it (the hub thread).  No function
 * locks: one session, one thread at a time.
 */
#ifndef COMET_TLS_H
#define COMET_TLS_H

#include <apr.h>
#include <apr_errno.h>

struct ssl_st;

/* Make ssl the hub's, on socket fd (a descriptor of the socket the
 * session was made on; not owned, never closed by the session):
 *   - undo a quiet shutdown its first user ran on it (the flags only: a
 *     quiet shutdown writes nothing);
 *   - clear the application data, the info, message and verify callbacks
 *     (they point into the first user's freed records), forbid
 *     renegotiation;
 *   - partial writes, moving write buffers, released record buffers, no
 *     automatic retry;
 *   - a socket BIO on fd for both directions (the old BIOs are freed; a
 *     BIO's free must not write);
 *   - idle record buffers freed.
 * APR_SUCCESS, or APR_ENOMEM (the session is unchanged apart from the
 * steps before the BIO; free it).  The caller must already know that the
 * handshake is complete and nothing is pending (see the glue). */
apr_status_t comet_tls_detach(struct ssl_st *ssl, int fd);

/* Write up to len plaintext bytes without waiting.  APR_SUCCESS with
 * *written (0..len): what the session took.  When *written < len the
 * socket is full: wait until it is writable, and call again starting with
 * the same unwritten bytes (the buffer may move and grow, never shrink or
 * change: OpenSSL has encrypted a record of them already).  Any other
 * status: the session cannot go on (the client left, a protocol error, or
 * it would need to read first, which no detached session may: there is
 * no handshake after the detach); close without comet_tls_shutdown. */
apr_status_t comet_tls_write(struct ssl_st *ssl, const char *data,
                             apr_size_t len, apr_size_t *written);

/* Read what the client sent and drop it (a subscriber has nothing to say;
 * *stray, when not NULL, gets the bytes of application data dropped).
 * Processes close_notify, EOF and TLS 1.3 key updates.  At most
 * COMET_TLS_READ_MAX bytes a call: a socket still readable afterwards is
 * reported again by a level-triggered poll.
 *   APR_SUCCESS  nothing more to read now
 *   APR_EAGAIN   the session must write first (e.g. a key update's
 *                answer): call again when the socket is writable
 *   APR_EOF      the client ended the session (close_notify, or EOF where
 *                the context allows it): answer with comet_tls_shutdown
 *   other        failed: close without comet_tls_shutdown */
#define COMET_TLS_READ_MAX (256 * 1024)
apr_status_t comet_tls_read(struct ssl_st *ssl, apr_size_t *stray);

/* Read up to cap bytes of what the client sent into buf, without waiting
 * (a WebSocket's frames).  One record's plaintext at most a call: when
 * comet_tls_has_pending says more is inside the session, call again
 * before waiting for the socket.  Processes close_notify, EOF and key
 * updates as comet_tls_read does.
 *   APR_SUCCESS  *got bytes in buf (0: nothing now)
 *   APR_EAGAIN   the session must write first: call again when the
 *                socket is writable (*got is 0)
 *   APR_EOF      the client ended the session: answer with
 *                comet_tls_shutdown
 *   other        failed: close without comet_tls_shutdown */
apr_status_t comet_tls_recv(struct ssl_st *ssl, char *buf, apr_size_t cap,
                            apr_size_t *got);

/* Send close_notify without waiting.  APR_SUCCESS: sent (the caller then
 * closes the socket; the client's close_notify is not awaited);
 * APR_EAGAIN: the socket is full, call again when writable; other:
 * failed, close anyway. */
apr_status_t comet_tls_shutdown(struct ssl_st *ssl);

/* Whether ssl holds bytes already read from the socket (a poll would not
 * report them).  Call comet_tls_read when it does. */
int comet_tls_has_pending(struct ssl_st *ssl);

/* Give up the caller's reference on ssl (nothing is written). */
void comet_tls_free(struct ssl_st *ssl);

#endif /* COMET_TLS_H */
