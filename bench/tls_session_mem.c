/*
 * tls_session_mem -- where an idle, detached server TLS session's memory
 * goes (the OpenSSL linked here: Debian 12's 3.0).
 *
 * Makes N server/client pairs over socketpairs in one process: a P-256
 * certificate, a full handshake, one request and one response record,
 * then the server session detached as the hub detaches it (comet_tls.c:
 * released record buffers).  All client sessions are then freed, so what
 * OpenSSL still has allocated beyond the baseline belongs to the N server
 * sessions.  Prints the bytes per session and the call sites that hold
 * them (CRYPTO_set_mem_functions).
 *
 *   tls_session_mem [N] [2|3]      (default 500 sessions, TLS 1.3)
 */

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "comet_tls.h"

#define SITES 2048

typedef struct site_t {
    const char *file;
    int line;
    long bytes, count;
} site_t;

typedef struct hdr_t {
    size_t size;
    int site;
    int pad;
} hdr_t;

static site_t sites[SITES];
static int nsites;
static long live;

static int site_of(const char *file, int line)
{
    for (int i = 0; i < nsites; i++) {
        if (sites[i].line == line && sites[i].file == file) {
            return i;
        }
    }
    if (nsites == SITES) {
        return SITES - 1;
    }
    sites[nsites].file = file;
    sites[nsites].line = line;
    return nsites++;
}

static void account(hdr_t *h, const char *file, int line)
{
    h->site = site_of(file, line);
    sites[h->site].bytes += (long)h->size;
    sites[h->site].count++;
    live += (long)h->size;
}

static void unaccount(hdr_t *h)
{
    sites[h->site].bytes -= (long)h->size;
    sites[h->site].count--;
    live -= (long)h->size;
}

static void *m_malloc(size_t n, const char *file, int line)
{
    hdr_t *h = malloc(sizeof(*h) + n);

    if (!h) {
        return NULL;
    }
    h->size = n;
    account(h, file, line);
    return h + 1;
}

static void m_free(void *p, const char *file, int line)
{
    (void)file;
    (void)line;
    if (p) {
        hdr_t *h = (hdr_t *)p - 1;

        unaccount(h);
        free(h);
    }
}

static void *m_realloc(void *p, size_t n, const char *file, int line)
{
    hdr_t *h;

    if (!p) {
        return m_malloc(n, file, line);
    }
    h = (hdr_t *)p - 1;
    unaccount(h);
    h = realloc(h, sizeof(*h) + n);
    if (!h) {
        return NULL;
    }
    h->size = n;
    account(h, file, line);
    return h + 1;
}

static SSL_CTX *server_ctx(int version)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();

    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                               (const unsigned char *)"127.0.0.1", -1, -1,
                               0);
    X509_set_issuer_name(x, X509_get_subject_name(x));
    X509_sign(x, key, EVP_sha256());
    SSL_CTX_use_certificate(ctx, x);
    SSL_CTX_use_PrivateKey(ctx, key);
    X509_free(x);
    EVP_PKEY_free(key);
    /* As mod_ssl with the default MaxMemFree. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (version == 2) {
        SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
    }
    return ctx;
}

static int by_bytes(const void *a, const void *b)
{
    long x = ((const site_t *)a)->bytes, y = ((const site_t *)b)->bytes;

    return x < y ? 1 : x > y ? -1 : 0;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 500;
    int version = argc > 2 ? atoi(argv[2]) : 3;
    SSL **srv, **cli;
    SSL_CTX *sctx, *cctx;
    char buf[256];

    if (n < 1 || (version != 2 && version != 3)) {
        fprintf(stderr, "usage: tls_session_mem [N] [2|3]\n");
        return 2;
    }
    CRYPTO_set_mem_functions(m_malloc, m_realloc, m_free);
    srv = calloc((size_t)n, sizeof(*srv));
    cli = calloc((size_t)n, sizeof(*cli));
    sctx = server_ctx(version);
    cctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(cctx, SSL_VERIFY_NONE, NULL);
    /* One pair made and freed first: lazily made tables are not counted. */
    for (int round = 0; round < 2; round++) {
        int count = round ? n : 1;

        if (round) {
            memset(sites, 0, sizeof(sites));
            nsites = 0;
            live = 0;
        }
        for (int i = 0; i < count; i++) {
            int sv[2], sdone = 0, cdone = 0;

            if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
                perror("socketpair");
                return 1;
            }
            fcntl(sv[0], F_SETFL, O_NONBLOCK);
            fcntl(sv[1], F_SETFL, O_NONBLOCK);
            srv[i] = SSL_new(sctx);
            cli[i] = SSL_new(cctx);
            SSL_set_fd(srv[i], sv[0]);
            SSL_set_fd(cli[i], sv[1]);
            SSL_set_accept_state(srv[i]);
            SSL_set_connect_state(cli[i]);
            while (!sdone || !cdone) {
                cdone = cdone || SSL_do_handshake(cli[i]) == 1;
                sdone = sdone || SSL_do_handshake(srv[i]) == 1;
            }
            SSL_write(cli[i], "GET / HTTP/1.1\r\n\r\n", 18);
            SSL_read(srv[i], buf, sizeof(buf));
            SSL_write(srv[i], "HTTP/1.1 200 OK\r\n\r\n", 19);
            SSL_read(cli[i], buf, sizeof(buf));
            ERR_clear_error();
            if (comet_tls_detach(srv[i], sv[0]) != APR_SUCCESS) {
                fprintf(stderr, "detach failed\n");
                return 1;
            }
            SSL_free(cli[i]);
            close(sv[1]);
            if (!round) {
                SSL_free(srv[i]);
                close(sv[0]);
            }
        }
    }
    qsort(sites, (size_t)nsites, sizeof(*sites), by_bytes);
    printf("TLS 1.%d, %d idle detached server sessions: %ld bytes each "
           "(OpenSSL's live allocations; malloc's own overhead not "
           "counted)\n", version == 2 ? 2 : 3, n, live / n);
    printf("%8s  %6s  %s\n", "B/sess", "allocs", "call site");
    for (int i = 0; i < nsites && i < 16 && sites[i].bytes > 0; i++) {
        printf("%8ld  %6.1f  %s:%d\n", sites[i].bytes / n,
               (double)sites[i].count / n, sites[i].file, sites[i].line);
    }
    return 0;
}
