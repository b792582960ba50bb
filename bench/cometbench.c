/*
 * cometbench -- load generator for Comet / server-push servers.
 *
 * Opens N subscriber connections (EventSource, long-poll, a newline-
 * delimited JSON stream, a WebSocket, or SUBSCRIBE on the Redis protocol's
 * Unix socket) spread over C channels, publishes messages over HTTP POST,
 * the Redis protocol on a Unix socket or client WebSockets, and measures
 * what every subscriber receives.  Each payload carries its own per-channel
 * sequence number and send time:
 *
 *     "<seq> <send_time_ns> xxxxxxxx..."      (padded with 'x' to --size)
 *
 * so the generator needs nothing from the server under test beyond its wire
 * formats: loss, duplicates and reordering come from the sequence numbers,
 * latency from the send time (CLOCK_MONOTONIC, same machine).
 *
 * With --tls the subscribers speak TLS (OpenSSL, no certificate checks,
 * non-blocking handshakes counted in the connect time) to --sub-port;
 * publishers stay on plain HTTP or the Unix socket.
 *
 * One thread, one epoll loop, libc and OpenSSL only.  Every per-connection buffer is
 * bounded (--max-event); every phase has a deadline and the whole run ends
 * by --timeout at the latest.  Only loopback addresses and Unix sockets are
 * accepted as targets.
 *
 * Phases:  CONNECT  open the subscribers, at most --concurrency pending
 *          HOLD     keep them idle --hold seconds ("READY" is printed first)
 *          WARMUP   --warmup seconds for subscriptions to settle in the server
 *          PUBLISH  --messages / --duration at --rate
 *          SETTLE   until every subscriber has every acknowledged message,
 *                   or --settle seconds after the last acknowledgement
 *
 * Human-readable results go to stderr, one JSON line to stdout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define NS_PER_S        1000000000ULL
#define NS_PER_MS       1000000ULL
#define HEAD_MAX        16384           /* largest response head accepted */
#define READ_CHUNK      65536           /* one recv() at most */
#define ID_MAX          96              /* last event id kept for resuming */
#define LM_MAX          48              /* Last-Modified value (Nchan long-poll) */
#define ETAG_MAX        64              /* Etag value (Nchan long-poll) */
#define CONNECT_TRIES   3               /* initial connect attempts per subscriber */
#define SAMPLE_EVERY_NS (250 * NS_PER_MS)
#define WS_PUB_WINDOW   8192            /* unsent bytes of a WebSocket publisher */

/* ------------------------------------------------------------------ */
/* Time                                                                */
/* ------------------------------------------------------------------ */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

static uint64_t sec_to_ns(double s)
{
    return s <= 0 ? 0 : (uint64_t)(s * 1e9);
}

/* ------------------------------------------------------------------ */
/* Log-bucket histogram                                                */
/*                                                                     */
/* Values below 128 are exact; above, each power of two is split into  */
/* 64 buckets, so any reported value is within 1.6% of the truth.      */
/* Fixed size (about 30 KB) whatever the range of values.              */
/* ------------------------------------------------------------------ */

#define HIST_SUB_BITS 6
#define HIST_SUB      (1u << HIST_SUB_BITS)
#define HIST_BUCKETS  ((64 - HIST_SUB_BITS + 1) * HIST_SUB)

typedef struct {
    uint64_t count;
    uint64_t max;
    double   sum;
    uint64_t b[HIST_BUCKETS];
} hist_t;

static unsigned hist_index(uint64_t v)
{
    if (v < 2 * HIST_SUB)
        return (unsigned)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = e - HIST_SUB_BITS;
    return shift * HIST_SUB + (unsigned)(v >> shift);
}

/* Midpoint of a bucket. */
static uint64_t hist_value(unsigned idx)
{
    if (idx < 2 * HIST_SUB)
        return idx;
    unsigned shift = idx / HIST_SUB - 1;
    uint64_t m = idx - shift * HIST_SUB;
    return (m << shift) + ((1ULL << shift) >> 1);
}

static void hist_add(hist_t *h, uint64_t v)
{
    h->b[hist_index(v)]++;
    h->count++;
    h->sum += (double)v;
    if (v > h->max)
        h->max = v;
}

static uint64_t hist_pct(const hist_t *h, double q)
{
    if (h->count == 0)
        return 0;
    uint64_t rank = (uint64_t)ceil(q * (double)h->count);
    if (rank < 1)
        rank = 1;
    uint64_t acc = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        acc += h->b[i];
        if (acc >= rank) {
            uint64_t v = hist_value(i);
            return v > h->max ? h->max : v;
        }
    }
    return h->max;
}

static double hist_mean(const hist_t *h)
{
    return h->count ? h->sum / (double)h->count : 0;
}

/* ------------------------------------------------------------------ */
/* Options                                                             */
/* ------------------------------------------------------------------ */

enum { T_SSE, T_LONGPOLL, T_STREAM, T_WS, T_RESP };
enum { D_NCHAN, D_COMET };
enum { PUB_NONE, PUB_HTTP, PUB_RESP, PUB_WS };

#define MAX_WATCH 16

static struct {
    const char *host;
    int port;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char hosthdr[80];               /* value of the Host header */
    const char *server;             /* "nchan" or "comet": wire dialect */
    int dialect;
    const char *scenario;
    int transport;
    long subs;
    long channels;
    const char *prefix;
    char prefix_buf[32];
    const char *sub_url;
    const char *pub_url;
    const char *accept;
    char *headers;                  /* extra "Name: value\r\n" lines */
    size_t headers_len;
    int pub_mode;
    const char *socket_path;
    int pub_conns;
    int pipeline;
    double rate;
    long messages;
    double duration;
    long size;
    int concurrency;
    double hold;
    double settle;
    double warmup;
    double timeout;
    double connect_timeout;
    long max_buf;
    pid_t watch[MAX_WATCH];
    int nwatch;
    int tls;                        /* subscribers over TLS            */
    int tls_version;                /* 0 any, 2 TLS 1.2, 3 TLS 1.3     */
    int sub_port;                   /* subscribers' port (TLS)         */
    struct sockaddr_storage sub_addr;
    socklen_t sub_addrlen;
    int port2;                      /* a second server: odd subscribers
                                       and odd HTTP publishers            */
    const char *socket_path2;       /* its socket: odd RESP publishers   */
    int pub_alternate;              /* publishers take turns             */
    struct sockaddr_storage addr2;
    socklen_t addrlen2;
} opt;

static SSL_CTX *tls_ctx;

/* ------------------------------------------------------------------ */
/* Connections                                                         */
/* ------------------------------------------------------------------ */

enum { CK_SUB, CK_PUB };
enum { CS_IDLE, CS_CONNECTING, CS_HANDSHAKE, CS_OPEN, CS_RETRY, CS_FAILED };
enum { RP_HEAD, RP_BODY, RP_DONE };
enum { BM_LENGTH, BM_CHUNKED, BM_CLOSE };
enum {
    CH_SIZE, CH_EXT, CH_SIZE_LF, CH_DATA, CH_DATA_CR, CH_DATA_LF,
    CH_TRAILER_BOL, CH_TRAILER_LINE, CH_TRAILER_END_LF
};

/* State of one HTTP response being read. */
typedef struct {
    uint8_t  phase;                 /* RP_* */
    uint8_t  mode;                  /* BM_* */
    uint8_t  cstate;                /* CH_* while mode == BM_CHUNKED */
    uint8_t  ndigits;               /* hex digits seen in a chunk-size line */
    uint8_t  close;                 /* server will close after this response */
    uint16_t status;
    uint64_t remain;                /* body or chunk bytes still expected */
} http_resp_t;

/* Which sequence numbers one subscriber has seen: the highest, and a ring
 * of the SEEN_WIN below it, so that duplicates and late arrivals can be
 * told apart in bounded memory. */
#define SEEN_WIN   256
#define SEEN_WORDS (SEEN_WIN / 64)

typedef struct {
    uint64_t max_seq;
    uint64_t unique;
    uint64_t dups;
    uint64_t reorders;
    uint64_t seen[SEEN_WORDS];
} sub_acct_t;

typedef struct conn {
    int      fd;
    SSL     *ssl;                   /* subscriber with --tls           */
    uint8_t  kind;                  /* CK_* */
    uint8_t  state;                 /* CS_* */
    uint8_t  ready;                 /* subscriber: has been subscribed */
    uint8_t  out_armed;             /* EPOLLOUT is in the interest set */
    uint8_t  in_retry;              /* queued in the retry list */
    uint8_t  tries;                 /* failed initial connects */
    uint8_t  dirty;                 /* publisher: unflushed requests */
    uint32_t idx;
    uint32_t chan;                  /* subscriber: its channel */
    uint64_t t_start;               /* first connect attempt */
    uint64_t retry_at;
    char    *buf;                   /* head, then decoded body not yet consumed */
    uint32_t len, cap, scan;
    char    *wbuf;
    uint32_t wlen, woff, wcap;
    http_resp_t rs;
    sub_acct_t acct;
    char     last_id[ID_MAX];
    char     lm[LM_MAX];
    char     etag[ETAG_MAX];
    uint32_t *inflight;             /* publisher: channel of each unanswered request */
    uint64_t *inflight_seq;         /* ... its sequence number */
    uint64_t *inflight_t;           /* ... its send time (in the payload) */
    uint8_t  *inflight_tries;       /* ... how often it was sent */
    uint32_t inflight_head, inflight_n;
    uint32_t resend_n;              /* publisher: requests to send again */
} conn_t;

/* ------------------------------------------------------------------ */
/* Run state and statistics                                            */
/* ------------------------------------------------------------------ */

enum { P_CONNECT, P_HOLD, P_WARMUP, P_PUBLISH, P_SETTLE, P_DONE };

typedef struct {
    uint64_t rss_kb;
    uint64_t pss_kb;
    uint64_t cpu_ticks;
    int      nprocs;
} srv_sample_t;

static struct {
    uint64_t t0;
    int      phase;
    uint64_t phase_until;
    long     started, pending, ready, failed;
    uint64_t connect_end;
    uint64_t connect_errors, reconnects, disconnects, stream_ends;
    uint64_t sub_errors, oversize, bad, missed;
    uint64_t sent, acked, pub_errors, pub_lost, pub_reconnects, receivers;
    uint64_t pub_retries;
    uint64_t pub_t0, pub_last_ack, pub_sent_last;
    int      pubs_open;
    uint64_t deliveries, unique, expected;
    uint64_t first_delivery, last_delivery;
    uint64_t next_sample;
    int      timed_out, interrupted;
    hist_t   lat;                   /* publish -> delivery, ns */
    hist_t   conn;                  /* connect -> subscribed, ns */
    srv_sample_t s_base, s_ready, s_held, s_end;
    uint64_t rss_peak_kb;
} st;

static int epfd = -1;
static conn_t *subs;
static conn_t *pubs;
static uint64_t *ch_seq;            /* last sequence number sent per channel */
static uint64_t *ch_acked;          /* acknowledged publishes per channel */
static uint32_t *ch_subs;           /* subscribed connections per channel */
static conn_t **retryq;
static size_t nretry;
static char *evbuf;                 /* one event's data, --max-event bytes */
static char rbuf[READ_CHUNK];
static volatile sig_atomic_t got_signal;

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("cometbench: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void *xmalloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    if (!p)
        die("out of memory (%zu bytes)", n);
    return p;
}

/* ------------------------------------------------------------------ */
/* Names and URLs                                                      */
/* ------------------------------------------------------------------ */

static void chan_name(char *out, size_t cap, uint32_t ch)
{
    snprintf(out, cap, "%s%" PRIu32, opt.prefix, ch);
}

/* Expand a template whose only directives are %s (the channel) and %%. */
static int fill_template(char *out, size_t cap, const char *tmpl,
                         const char *chan)
{
    size_t o = 0, cl = strlen(chan);
    for (const char *p = tmpl; *p; p++) {
        if (*p == '%' && p[1] == 's') {
            if (o + cl >= cap)
                return -1;
            memcpy(out + o, chan, cl);
            o += cl;
            p++;
            continue;
        }
        if (*p == '%' && p[1] == '%')
            p++;
        if (o + 1 >= cap)
            return -1;
        out[o++] = *p;
    }
    out[o] = '\0';
    return (int)o;
}

static int template_ok(const char *tmpl)
{
    if (tmpl[0] != '/')
        return 0;
    for (const char *p = tmpl; *p; p++) {
        if (*p == '%') {
            if (p[1] != 's' && p[1] != '%')
                return 0;
            p++;
        } else if ((unsigned char)*p <= ' ') {
            return 0;
        }
    }
    return 1;
}

/* Percent-encode everything but unreserved characters and ':' ','. */
static size_t url_escape(char *out, size_t cap, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (isalnum(ch) || strchr("-._~:,", ch)) {
            if (o + 1 >= cap)
                break;
            out[o++] = (char)ch;
        } else {
            if (o + 3 >= cap)
                break;
            out[o++] = '%';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 15];
        }
    }
    out[o] = '\0';
    return o;
}

/* ------------------------------------------------------------------ */
/* Buffers and sockets                                                 */
/* ------------------------------------------------------------------ */

static int buf_reserve(conn_t *c, size_t need)
{
    if (need <= c->cap)
        return 0;
    if (need > (size_t)opt.max_buf + HEAD_MAX)
        return -1;
    size_t cap = c->cap ? c->cap : 2048;
    while (cap < need)
        cap *= 2;
    char *nb = realloc(c->buf, cap);
    if (!nb)
        return -1;
    c->buf = nb;
    c->cap = (uint32_t)cap;
    return 0;
}

static void wbuf_append(conn_t *c, const char *p, size_t n)
{
    if (c->woff > 0 && c->woff == c->wlen)
        c->woff = c->wlen = 0;
    if ((size_t)c->wlen + n > c->wcap) {
        size_t cap = c->wcap ? c->wcap : 1024;
        while (cap < (size_t)c->wlen + n)
            cap *= 2;
        char *nb = realloc(c->wbuf, cap);
        if (!nb)
            die("out of memory");
        c->wbuf = nb;
        c->wcap = (uint32_t)cap;
    }
    memcpy(c->wbuf + c->wlen, p, n);
    c->wlen += (uint32_t)n;
}

static void set_events(conn_t *c, int want_out)
{
    if (c->fd < 0 || (int)c->out_armed == want_out)
        return;
    struct epoll_event ev;
    ev.events = EPOLLIN | (want_out ? EPOLLOUT : 0);
    ev.data.ptr = c;
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) == 0)
        c->out_armed = (uint8_t)want_out;
}

static void resp_reset(conn_t *c)
{
    memset(&c->rs, 0, sizeof c->rs);
    c->len = 0;
    c->scan = 0;
}

static void conn_close(conn_t *c)
{
    if (c->ssl) {
        SSL_free(c->ssl);           /* no close_notify: as a plain close */
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    c->out_armed = 0;
    c->woff = c->wlen = 0;
    resp_reset(c);
    if (c->state != CS_FAILED && c->state != CS_RETRY)
        c->state = CS_IDLE;
}

/* Flush the write buffer.  1: all written, 0: the rest waits for EPOLLOUT,
 * -1: the connection failed. */
static int conn_flush(conn_t *c)
{
    while (c->ssl && c->woff < c->wlen) {
        size_t w = 0;
        if (SSL_write_ex(c->ssl, c->wbuf + c->woff, c->wlen - c->woff, &w)) {
            c->woff += (uint32_t)w;
            continue;
        }
        int e = SSL_get_error(c->ssl, 0);
        ERR_clear_error();
        if (e == SSL_ERROR_WANT_WRITE) {
            set_events(c, 1);
            return 0;
        }
        if (e == SSL_ERROR_WANT_READ)
            return 0;
        return -1;
    }
    while (c->woff < c->wlen) {
        ssize_t w = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff,
                         MSG_NOSIGNAL);
        if (w > 0) {
            c->woff += (uint32_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_events(c, 1);
            return 0;
        }
        return -1;
    }
    c->woff = c->wlen = 0;
    set_events(c, 0);
    return 1;
}

/* Start a non-blocking connect.  1: connected, 0: in progress, -1: failed. */
static int conn_connect(conn_t *c)
{
    int unix_sock = (c->kind == CK_PUB && opt.pub_mode == PUB_RESP)
                    || (c->kind == CK_SUB && opt.transport == T_RESP);
    int fam = unix_sock ? AF_UNIX : opt.addr.ss_family;
    int fd = socket(fam, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int rc;
    if (unix_sock) {
        struct sockaddr_un sun;
        const char *path = opt.socket_path2 && (c->idx & 1)
                           ? opt.socket_path2 : opt.socket_path;
        memset(&sun, 0, sizeof sun);
        sun.sun_family = AF_UNIX;
        memcpy(sun.sun_path, path, strlen(path));
        rc = connect(fd, (struct sockaddr *)&sun, sizeof sun);
    } else if (c->kind == CK_SUB && opt.tls) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        rc = connect(fd, (struct sockaddr *)&opt.sub_addr, opt.sub_addrlen);
    } else if (opt.port2 && (c->idx & 1)) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        rc = connect(fd, (struct sockaddr *)&opt.addr2, opt.addrlen2);
    } else {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        rc = connect(fd, (struct sockaddr *)&opt.addr, opt.addrlen);
    }
    if (rc < 0 && errno != EINPROGRESS && errno != EAGAIN) {
        close(fd);
        return -1;
    }
    c->fd = fd;
    c->out_armed = rc < 0;
    struct epoll_event ev;
    ev.events = EPOLLIN | (rc < 0 ? EPOLLOUT : 0);
    ev.data.ptr = c;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        close(fd);
        c->fd = -1;
        return -1;
    }
    c->state = rc < 0 ? CS_CONNECTING : CS_OPEN;
    return rc < 0 ? 0 : 1;
}

static void retry_at(conn_t *c, uint64_t when)
{
    conn_close(c);
    c->state = CS_RETRY;
    c->retry_at = when;
    if (!c->in_retry) {
        c->in_retry = 1;
        retryq[nretry++] = c;
    }
}

/* ------------------------------------------------------------------ */
/* HTTP response reading                                               */
/* ------------------------------------------------------------------ */

static int hdr_is(const char *name, size_t nlen, const char *want)
{
    return strlen(want) == nlen && strncasecmp(name, want, nlen) == 0;
}

static int has_token(const char *v, size_t vlen, const char *tok)
{
    size_t tl = strlen(tok);
    for (size_t i = 0; i + tl <= vlen; i++)
        if (strncasecmp(v + i, tok, tl) == 0)
            return 1;
    return 0;
}

static void copy_value(char *dst, size_t cap, const char *v, size_t vlen)
{
    if (vlen >= cap)
        vlen = cap - 1;
    memcpy(dst, v, vlen);
    dst[vlen] = '\0';
}

/* Parse a complete head in h[0..n).  -1 when malformed. */
static int parse_head(conn_t *c, const char *h, size_t n)
{
    http_resp_t *rs = &c->rs;
    if (n < 12 || memcmp(h, "HTTP/1.", 7) != 0 || h[8] != ' ')
        return -1;
    int http10 = h[7] == '0';
    if (!isdigit((unsigned char)h[9]) || !isdigit((unsigned char)h[10])
        || !isdigit((unsigned char)h[11]))
        return -1;
    rs->status = (uint16_t)((h[9] - '0') * 100 + (h[10] - '0') * 10
                            + (h[11] - '0'));
    int chunked = 0, keepalive = 0, close_ = 0;
    int64_t clen = -1;
    const char *p = memchr(h, '\n', n);
    const char *end = h + n;
    while (p && ++p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            break;
        const char *le = eol;
        if (le > p && le[-1] == '\r')
            le--;
        const char *colon = memchr(p, ':', (size_t)(le - p));
        if (colon) {
            size_t nl = (size_t)(colon - p);
            const char *v = colon + 1;
            while (v < le && (*v == ' ' || *v == '\t'))
                v++;
            const char *ve = le;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            size_t vl = (size_t)(ve - v);
            if (hdr_is(p, nl, "content-length")) {
                clen = 0;
                for (size_t i = 0; i < vl; i++) {
                    if (!isdigit((unsigned char)v[i]) || clen > (int64_t)1 << 40)
                        return -1;
                    clen = clen * 10 + (v[i] - '0');
                }
            } else if (hdr_is(p, nl, "transfer-encoding")) {
                chunked = has_token(v, vl, "chunked");
            } else if (hdr_is(p, nl, "connection")) {
                close_ = has_token(v, vl, "close");
                keepalive = has_token(v, vl, "keep-alive");
            } else if (hdr_is(p, nl, "last-modified")) {
                copy_value(c->lm, sizeof c->lm, v, vl);
            } else if (hdr_is(p, nl, "etag")) {
                copy_value(c->etag, sizeof c->etag, v, vl);
            }
        }
        p = eol;
    }
    rs->close = (uint8_t)(close_ || (http10 && !keepalive));
    rs->remain = 0;
    if (rs->status == 101 && ((c->kind == CK_SUB && opt.transport == T_WS)
                              || (c->kind == CK_PUB
                                  && opt.pub_mode == PUB_WS))) {
        /* Upgraded: frames until the connection ends. */
        rs->phase = RP_BODY;
        rs->mode = BM_CLOSE;
        rs->close = 1;
        return 0;
    }
    if (rs->status >= 100 && rs->status < 200) {
        rs->phase = RP_HEAD;            /* interim response: read the next head */
        return 0;
    }
    rs->phase = RP_BODY;
    if (rs->status == 204 || rs->status == 304) {
        rs->phase = RP_DONE;
    } else if (chunked) {
        rs->mode = BM_CHUNKED;
        rs->cstate = CH_SIZE;
        rs->ndigits = 0;
    } else if (clen >= 0) {
        rs->mode = BM_LENGTH;
        rs->remain = (uint64_t)clen;
        if (clen == 0)
            rs->phase = RP_DONE;
    } else {
        rs->mode = BM_CLOSE;
        rs->close = 1;
    }
    return 0;
}

/* Take head bytes from in.  Returns the bytes used (the head is complete
 * when rs.phase has left RP_HEAD), or -1 when malformed or too large. */
static long head_feed(conn_t *c, const char *in, size_t n)
{
    size_t old = c->len;
    size_t take = n;
    if (old + take > HEAD_MAX)
        take = HEAD_MAX - old;
    if (buf_reserve(c, old + take) < 0)
        return -1;
    memcpy(c->buf + old, in, take);
    c->len = (uint32_t)(old + take);
    const char *b = c->buf;
    for (size_t i = old >= 3 ? old - 3 : 0; i < c->len; i++) {
        if (b[i] != '\n' || i == 0)
            continue;
        if (b[i - 1] == '\n' || (i >= 2 && b[i - 1] == '\r' && b[i - 2] == '\n')) {
            size_t end = i + 1;
            if (parse_head(c, b, end) < 0)
                return -1;
            c->len = 0;
            c->scan = 0;
            return (long)(end - old);
        }
    }
    if (c->len >= HEAD_MAX)
        return -1;
    return (long)take;
}

/* Decode body bytes from in, appending them to c->buf (unless discard)
 * while room is left under --max-event.  Returns the bytes of in used
 * (0 only when the buffer is full) or -1 when the framing is malformed. */
static long body_feed(conn_t *c, const char *in, size_t n, int discard)
{
    http_resp_t *rs = &c->rs;
    size_t i = 0;
    while (i < n && rs->phase == RP_BODY) {
        if (rs->mode != BM_CHUNKED || rs->cstate == CH_DATA) {
            size_t want = n - i;
            if (rs->mode != BM_CLOSE && want > rs->remain)
                want = (size_t)rs->remain;
            if (!discard) {
                size_t space = (size_t)opt.max_buf > c->len
                                   ? (size_t)opt.max_buf - c->len : 0;
                if (want > space)
                    want = space;
                if (want == 0)
                    break;
                if (buf_reserve(c, c->len + want) < 0)
                    return -1;
                memcpy(c->buf + c->len, in + i, want);
                c->len += (uint32_t)want;
            }
            i += want;
            if (rs->mode != BM_CLOSE) {
                rs->remain -= want;
                if (rs->remain == 0) {
                    if (rs->mode == BM_LENGTH)
                        rs->phase = RP_DONE;
                    else
                        rs->cstate = CH_DATA_CR;
                }
            }
            continue;
        }
        char ch = in[i++];
        switch (rs->cstate) {
        case CH_SIZE:
            if (isxdigit((unsigned char)ch)) {
                if (rs->remain > ((uint64_t)1 << 40))
                    return -1;
                rs->remain = rs->remain * 16
                             + (uint64_t)(isdigit((unsigned char)ch)
                                          ? ch - '0' : (tolower(ch) - 'a' + 10));
                rs->ndigits++;
                break;
            }
            if (ch == ';' || ch == ' ' || ch == '\t')
                rs->cstate = CH_EXT;
            else if (ch == '\r')
                rs->cstate = CH_SIZE_LF;
            else if (ch == '\n')
                goto size_done;
            else
                return -1;
            break;
        case CH_EXT:
            if (ch == '\n')
                goto size_done;
            break;
        case CH_SIZE_LF:
            if (ch != '\n')
                return -1;
        size_done:
            if (rs->ndigits == 0)
                return -1;
            rs->ndigits = 0;
            rs->cstate = rs->remain ? CH_DATA : CH_TRAILER_BOL;
            break;
        case CH_DATA_CR:
            if (ch == '\r')
                rs->cstate = CH_DATA_LF;
            else if (ch == '\n')
                rs->cstate = CH_SIZE;
            else
                return -1;
            break;
        case CH_DATA_LF:
            if (ch != '\n')
                return -1;
            rs->cstate = CH_SIZE;
            break;
        case CH_TRAILER_BOL:
            if (ch == '\r')
                rs->cstate = CH_TRAILER_END_LF;
            else if (ch == '\n')
                rs->phase = RP_DONE;
            else
                rs->cstate = CH_TRAILER_LINE;
            break;
        case CH_TRAILER_LINE:
            if (ch == '\n')
                rs->cstate = CH_TRAILER_BOL;
            break;
        case CH_TRAILER_END_LF:
            if (ch != '\n')
                return -1;
            rs->phase = RP_DONE;
            break;
        default:
            return -1;
        }
    }
    return (long)i;
}

/* ------------------------------------------------------------------ */
/* Minimal JSON: strings with unescaping, skipping of any value        */
/* ------------------------------------------------------------------ */

static const char *jws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

static void jput(char *out, size_t cap, size_t *o, unsigned ch)
{
    if (out && *o < cap)
        out[*o] = (char)ch;
    (*o)++;
}

static int jhex4(const char *p, const char *e, unsigned *v)
{
    if (e - p < 4)
        return -1;
    *v = 0;
    for (int i = 0; i < 4; i++) {
        int ch = (unsigned char)p[i];
        if (!isxdigit(ch))
            return -1;
        *v = *v * 16 + (unsigned)(isdigit(ch) ? ch - '0' : tolower(ch) - 'a' + 10);
    }
    return 0;
}

/* p at the opening quote.  Unescapes into out (at most cap bytes; *olen gets
 * the full length, so *olen > cap means truncated).  Returns the position
 * after the closing quote, NULL when malformed. */
static const char *jstr(const char *p, const char *e, char *out, size_t cap,
                        size_t *olen)
{
    size_t o = 0;
    if (p >= e || *p != '"')
        return NULL;
    p++;
    while (p < e) {
        unsigned ch = (unsigned char)*p++;
        if (ch == '"') {
            if (olen)
                *olen = o;
            return p;
        }
        if (ch < 0x20)
            return NULL;
        if (ch != '\\') {
            jput(out, cap, &o, ch);
            continue;
        }
        if (p >= e)
            return NULL;
        switch (*p++) {
        case '"':  jput(out, cap, &o, '"'); break;
        case '\\': jput(out, cap, &o, '\\'); break;
        case '/':  jput(out, cap, &o, '/'); break;
        case 'b':  jput(out, cap, &o, '\b'); break;
        case 'f':  jput(out, cap, &o, '\f'); break;
        case 'n':  jput(out, cap, &o, '\n'); break;
        case 'r':  jput(out, cap, &o, '\r'); break;
        case 't':  jput(out, cap, &o, '\t'); break;
        case 'u': {
            unsigned cp, lo;
            if (jhex4(p, e, &cp) < 0)
                return NULL;
            p += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && e - p >= 6 && p[0] == '\\'
                && p[1] == 'u' && jhex4(p + 2, e, &lo) == 0
                && lo >= 0xDC00 && lo < 0xE000) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                p += 6;
            }
            if (cp < 0x80) {
                jput(out, cap, &o, cp);
            } else if (cp < 0x800) {
                jput(out, cap, &o, 0xC0 | (cp >> 6));
                jput(out, cap, &o, 0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                jput(out, cap, &o, 0xE0 | (cp >> 12));
                jput(out, cap, &o, 0x80 | ((cp >> 6) & 0x3F));
                jput(out, cap, &o, 0x80 | (cp & 0x3F));
            } else {
                jput(out, cap, &o, 0xF0 | (cp >> 18));
                jput(out, cap, &o, 0x80 | ((cp >> 12) & 0x3F));
                jput(out, cap, &o, 0x80 | ((cp >> 6) & 0x3F));
                jput(out, cap, &o, 0x80 | (cp & 0x3F));
            }
            break;
        }
        default:
            return NULL;
        }
    }
    return NULL;
}

static const char *jskip(const char *p, const char *e, int depth)
{
    p = jws(p, e);
    if (p >= e || depth > 32)
        return NULL;
    if (*p == '"')
        return jstr(p, e, NULL, 0, NULL);
    if (*p == '{' || *p == '[') {
        char close_ = *p == '{' ? '}' : ']';
        p = jws(p + 1, e);
        if (p < e && *p == close_)
            return p + 1;
        for (;;) {
            if (close_ == '}') {
                p = jstr(jws(p, e), e, NULL, 0, NULL);
                if (!p)
                    return NULL;
                p = jws(p, e);
                if (p >= e || *p != ':')
                    return NULL;
                p++;
            }
            p = jskip(p, e, depth + 1);
            if (!p)
                return NULL;
            p = jws(p, e);
            if (p >= e)
                return NULL;
            if (*p == ',') {
                p++;
                continue;
            }
            if (*p == close_)
                return p + 1;
            return NULL;
        }
    }
    const char *s = p;
    while (p < e && (isalnum((unsigned char)*p) || *p == '-' || *p == '+'
                     || *p == '.'))
        p++;
    return p > s ? p : NULL;
}

/* ------------------------------------------------------------------ */
/* Delivery accounting                                                 */
/* ------------------------------------------------------------------ */

static int seen_bit(const sub_acct_t *a, uint64_t s)
{
    unsigned b = (unsigned)(s % SEEN_WIN);
    return (int)((a->seen[b / 64] >> (b % 64)) & 1);
}

static void seen_set(sub_acct_t *a, uint64_t s, int on)
{
    unsigned b = (unsigned)(s % SEEN_WIN);
    if (on)
        a->seen[b / 64] |= 1ULL << (b % 64);
    else
        a->seen[b / 64] &= ~(1ULL << (b % 64));
}

/* Returns 1 when s is new to this subscriber, 0 for a duplicate. */
static int acct_record(sub_acct_t *a, uint64_t s)
{
    if (s > a->max_seq) {
        if (s - a->max_seq >= SEEN_WIN)
            memset(a->seen, 0, sizeof a->seen);
        else
            for (uint64_t q = a->max_seq + 1; q < s; q++)
                seen_set(a, q, 0);
        seen_set(a, s, 1);
        a->max_seq = s;
        a->unique++;
        return 1;
    }
    if (a->max_seq - s < SEEN_WIN) {
        if (seen_bit(a, s)) {
            a->dups++;
            return 0;
        }
        seen_set(a, s, 1);
    }
    /* Older than the window: cannot be told from a duplicate, counted as late. */
    a->unique++;
    a->reorders++;
    return 1;
}

/* One message as the subscriber received it. */
static void deliver(conn_t *c, const char *d, size_t n, uint64_t now)
{
    uint64_t seq = 0, sent = 0;
    size_t i = 0, j;
    while (i < n && i < 19 && isdigit((unsigned char)d[i]))
        seq = seq * 10 + (uint64_t)(d[i++] - '0');
    if (i == 0 || i >= n || d[i] != ' ' || seq == 0)
        goto bad;
    j = ++i;
    while (i < n && i - j < 20 && isdigit((unsigned char)d[i]))
        sent = sent * 10 + (uint64_t)(d[i++] - '0');
    if (i == j || i >= n || d[i] != ' ')
        goto bad;
    i++;
    if (n != (i > (size_t)opt.size ? i : (size_t)opt.size))
        goto bad;
    for (; i < n; i++)
        if (d[i] != 'x')
            goto bad;
    st.deliveries++;
    hist_add(&st.lat, now > sent ? now - sent : 0);
    if (!st.first_delivery)
        st.first_delivery = now;
    st.last_delivery = now;
    if (acct_record(&c->acct, seq) && c->ready)
        st.unique++;
    return;
bad:
    st.bad++;
}

/* ------------------------------------------------------------------ */
/* Subscriber body formats                                             */
/* ------------------------------------------------------------------ */

/* One EventSource event: the lines in [p, e), each ending in '\n'. */
static void sse_event(conn_t *c, const char *p, const char *e, uint64_t now)
{
    size_t dl = 0, cap = (size_t)opt.max_buf;
    int has_data = 0;
    char event[24] = "";
    while (p < e) {
        const char *nl = memchr(p, '\n', (size_t)(e - p));
        const char *le = nl ? nl : e;
        if (le > p && le[-1] == '\r')
            le--;
        if (le > p && *p != ':') {
            const char *colon = memchr(p, ':', (size_t)(le - p));
            const char *ne = colon ? colon : le;
            const char *v = colon ? colon + 1 : le;
            if (v < le && *v == ' ')
                v++;
            size_t vl = (size_t)(le - v);
            if (ne - p == 4 && memcmp(p, "data", 4) == 0) {
                if (has_data && dl < cap)
                    evbuf[dl++] = '\n';
                if (vl > cap - dl)
                    vl = cap - dl;
                memcpy(evbuf + dl, v, vl);
                dl += vl;
                has_data = 1;
            } else if (ne - p == 2 && memcmp(p, "id", 2) == 0) {
                copy_value(c->last_id, sizeof c->last_id, v, vl);
            } else if (ne - p == 5 && memcmp(p, "event", 5) == 0) {
                copy_value(event, sizeof event, v, vl);
            }
        }
        p = nl ? nl + 1 : e;
    }
    /* mod_comet's notices: messages evicted before this subscriber got
     * them, or the channel deleted; their data is the channel name. */
    if (strcmp(event, "comet-missed") == 0)
        st.missed++;
    else if (has_data && strcmp(event, "comet-deleted") != 0)
        deliver(c, evbuf, dl, now);
}

/* A message object {"channel":..,"id":..,"data":"..."}; other keys are
 * skipped; {"missed":true,..} (messages evicted before delivery) is
 * counted.  keep_id: record "id" as the subscriber's resume point. */
static const char *json_message(conn_t *c, const char *p, const char *e,
                                int keep_id, uint64_t now)
{
    size_t dl = 0;
    int has_data = 0;
    p = jws(p, e);
    if (p >= e || *p != '{')
        return NULL;
    p = jws(p + 1, e);
    if (p < e && *p == '}')
        return p + 1;
    for (;;) {
        char key[16];
        size_t kl;
        p = jstr(jws(p, e), e, key, sizeof key, &kl);
        if (!p)
            return NULL;
        p = jws(p, e);
        if (p >= e || *p != ':')
            return NULL;
        p = jws(p + 1, e);
        if (kl == 4 && memcmp(key, "data", 4) == 0 && p < e && *p == '"') {
            p = jstr(p, e, evbuf, (size_t)opt.max_buf, &dl);
            if (p && dl > (size_t)opt.max_buf) {
                st.oversize++;
                dl = (size_t)opt.max_buf;
            }
            has_data = 1;
        } else if (kl == 6 && memcmp(key, "missed", 6) == 0) {
            if (e - p >= 4 && memcmp(p, "true", 4) == 0)
                st.missed++;
            p = jskip(p, e, 1);
        } else if (keep_id && kl == 2 && memcmp(key, "id", 2) == 0
                   && p < e && *p == '"') {
            size_t il;
            p = jstr(p, e, c->last_id, sizeof c->last_id - 1, &il);
            if (p)
                c->last_id[il < sizeof c->last_id ? il : sizeof c->last_id - 1] = '\0';
        } else {
            p = jskip(p, e, 1);
        }
        if (!p)
            return NULL;
        p = jws(p, e);
        if (p >= e)
            return NULL;
        if (*p == ',') {
            p++;
            continue;
        }
        if (*p != '}')
            return NULL;
        p++;
        break;
    }
    if (has_data)
        deliver(c, evbuf, dl, now);
    return p;
}

/* mod_comet long-poll body:
 * {"id":"<next>","missed":false,"messages":[{..message..},...]} */
static int comet_longpoll_body(conn_t *c, const char *p, const char *e,
                               uint64_t now)
{
    p = jws(p, e);
    if (p >= e || *p != '{')
        return -1;
    p = jws(p + 1, e);
    if (p < e && *p == '}')
        return 0;
    for (;;) {
        char key[16];
        size_t kl;
        p = jstr(jws(p, e), e, key, sizeof key, &kl);
        if (!p)
            return -1;
        p = jws(p, e);
        if (p >= e || *p != ':')
            return -1;
        p = jws(p + 1, e);
        if (kl == 2 && memcmp(key, "id", 2) == 0 && p < e && *p == '"') {
            size_t il;
            p = jstr(p, e, c->last_id, sizeof c->last_id - 1, &il);
            if (p)
                c->last_id[il < sizeof c->last_id ? il : sizeof c->last_id - 1] = '\0';
        } else if (kl == 6 && memcmp(key, "missed", 6) == 0) {
            if (e - p >= 4 && memcmp(p, "true", 4) == 0)
                st.missed++;
            p = jskip(p, e, 1);
        } else if (kl == 8 && memcmp(key, "messages", 8) == 0 && p < e
                   && *p == '[') {
            p = jws(p + 1, e);
            if (p < e && *p == ']') {
                p++;
            } else {
                for (;;) {
                    p = json_message(c, p, e, 0, now);
                    if (!p)
                        return -1;
                    p = jws(p, e);
                    if (p < e && *p == ',') {
                        p++;
                        continue;
                    }
                    if (p < e && *p == ']') {
                        p++;
                        break;
                    }
                    return -1;
                }
            }
        } else {
            p = jskip(p, e, 1);
        }
        if (!p)
            return -1;
        p = jws(p, e);
        if (p < e && *p == ',') {
            p++;
            continue;
        }
        return p < e && *p == '}' ? 0 : -1;
    }
}

/* Consume complete events/lines from c->buf, keeping any partial tail. */
static int stream_consume(conn_t *c, uint64_t now)
{
    char *b = c->buf;
    size_t len = c->len, done = 0, ls = c->scan;
    if (len == 0)
        return 0;
    for (;;) {
        char *nl = memchr(b + ls, '\n', len - ls);
        if (!nl)
            break;
        size_t le = (size_t)(nl - b), ce = le;
        if (ce > ls && b[ce - 1] == '\r')
            ce--;
        if (opt.transport == T_SSE) {
            if (ce == ls) {             /* blank line: the event is complete */
                if (ls > done)
                    sse_event(c, b + done, b + ls, now);
                done = le + 1;
            }
        } else {
            if (ce > ls && !json_message(c, b + ls, b + ce, 1, now))
                st.bad++;
            done = le + 1;
        }
        ls = le + 1;
    }
    if (done > 0) {
        memmove(b, b + done, len - done);
        c->len = (uint32_t)(len - done);
        ls -= done;
    }
    c->scan = (uint32_t)ls;
    return 0;
}

static void sub_mark_ready(conn_t *c, uint64_t now);

/* One "$<len>\r\n<bytes>\r\n" at p: its bytes and the position after it;
 * NULL when incomplete, (char *)-1 when malformed. */
static const char *resp_bulk(const char *p, const char *e, const char **d,
                             size_t *n)
{
    size_t len = 0;
    const char *q = p + 1;
    if (p >= e)
        return NULL;
    if (*p != '$')
        return (const char *)-1;
    while (q < e && isdigit((unsigned char)*q) && q - p < 20)
        len = len * 10 + (size_t)(*q++ - '0');
    if (q + 2 > e)
        return NULL;
    if (q == p + 1 || q[0] != '\r' || q[1] != '\n')
        return (const char *)-1;
    q += 2;
    if ((size_t)(e - q) < len + 2)
        return NULL;
    if (q[len] != '\r' || q[len + 1] != '\n')
        return (const char *)-1;
    *d = q;
    *n = len;
    return q + len + 2;
}

/* --transport resp: the pushes in c->buf ("subscribe" marks the
 * subscription, "message" carries a payload).  -1 on a protocol error. */
static int resp_consume(conn_t *c, uint64_t now)
{
    const char *b = c->buf, *p = b, *e = b + c->len;
    while (p < e) {
        const char *q = p, *d[3];
        size_t n[3];
        int i;
        if (*q != '*' && *q != '>')
            return -1;
        if (e - q < 4)
            break;
        if (q[1] != '3' || q[2] != '\r' || q[3] != '\n')
            return -1;
        q += 4;
        for (i = 0; i < 2; i++) {
            q = resp_bulk(q, e, &d[i], &n[i]);
            if (!q)
                goto incomplete;
            if (q == (const char *)-1)
                return -1;
        }
        if (n[0] == 9 && !memcmp(d[0], "subscribe", 9)) {
            const char *nl = memchr(q, '\n', (size_t)(e - q));
            if (!nl)
                goto incomplete;
            q = nl + 1;
            sub_mark_ready(c, now);
        } else if (n[0] == 7 && !memcmp(d[0], "message", 7)) {
            q = resp_bulk(q, e, &d[2], &n[2]);
            if (!q)
                goto incomplete;
            if (q == (const char *)-1)
                return -1;
            deliver(c, d[2], n[2], now);
        } else {
            return -1;
        }
        p = q;
    }
incomplete:
    if (p > b) {
        memmove(c->buf, p, (size_t)(e - p));
        c->len = (uint32_t)(e - p);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* WebSocket (RFC 6455), client side                                   */
/* ------------------------------------------------------------------ */

static const char ws_upgrade[] =
    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n";

/* One client frame, FIN set, masked with the key 0 (masking is required;
 * the key's value is not the server's business). */
static void ws_frame(conn_t *c, int opcode, const char *p, size_t n)
{
    unsigned char h[14];
    size_t hl = 2;
    h[0] = (unsigned char)(0x80 | opcode);
    if (n < 126) {
        h[1] = (unsigned char)(0x80 | n);
    } else if (n < 65536) {
        h[1] = 0x80 | 126;
        h[2] = (unsigned char)(n >> 8);
        h[3] = (unsigned char)n;
        hl = 4;
    } else {
        h[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
        hl = 10;
    }
    memset(h + hl, 0, 4);
    wbuf_append(c, (const char *)h, hl + 4);
    if (n)
        wbuf_append(c, p, n);
}

/* Take the whole server frames in c->buf: messages go to deliver (Nchan:
 * the payload is the message) or json_message (mod_comet: the stream's
 * object; "{}" keepalives too), pings get their pong.  A close frame ends
 * the response.  Returns -1 on a frame no server may send. */
static int ws_consume(conn_t *c, uint64_t now, int deliver_it)
{
    const unsigned char *b = (const unsigned char *)c->buf;
    size_t len = c->len, pos = 0;
    int pong = 0;
    while (len - pos >= 2) {
        const unsigned char *h = b + pos;
        size_t hl = 2, pl = h[1] & 0x7f;
        if (h[1] & 0x80)
            return -1;
        if (pl == 126) {
            if (len - pos < 4)
                break;
            pl = (size_t)h[2] << 8 | h[3];
            hl = 4;
        } else if (pl == 127) {
            if (len - pos < 10)
                break;
            pl = 0;
            for (int i = 2; i < 10; i++)
                pl = pl << 8 | h[i];
            hl = 10;
        }
        if (len - pos < hl + pl)
            break;
        const char *d = (const char *)h + hl;
        switch (h[0] & 0x0f) {
        case 0x1:
            if (!deliver_it)
                break;
            if (opt.dialect == D_NCHAN)
                deliver(c, d, pl, now);
            else if (!json_message(c, d, d + pl, 1, now))
                st.bad++;
            break;
        case 0x9:
            ws_frame(c, 0xA, d, pl);
            pong = 1;
            break;
        case 0x8:
            c->rs.phase = RP_DONE;
            c->rs.close = 1;
            pos += hl + pl;
            goto out;
        default:
            break;
        }
        pos += hl + pl;
    }
out:
    memmove(c->buf, c->buf + pos, len - pos);
    c->len = (uint32_t)(len - pos);
    if (pong && conn_flush(c) < 0)
        return -1;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Subscribers                                                         */
/* ------------------------------------------------------------------ */

static void sub_start(conn_t *c, uint64_t now);

static int sub_request(conn_t *c)
{
    char chan[96], path[1024], esc[3 * ID_MAX + 1], req[4096];
    chan_name(chan, sizeof chan, c->chan);
    if (opt.transport == T_RESP) {
        /* A Redis subscriber of the publish socket: no resume (a lost
         * connection subscribes again, as client libraries do). */
        int n = snprintf(req, sizeof req, "*2\r\n$9\r\nSUBSCRIBE\r\n"
                         "$%zu\r\n%s\r\n", strlen(chan), chan);
        wbuf_append(c, req, (size_t)n);
        return conn_flush(c);
    }
    int pl = fill_template(path, sizeof path, opt.sub_url, chan);
    if (pl < 0)
        return -1;
    if (opt.dialect == D_COMET && opt.transport != T_SSE && c->last_id[0]) {
        url_escape(esc, sizeof esc, c->last_id);
        snprintf(path + pl, sizeof path - (size_t)pl, "%slast_event_id=%s",
                 strchr(path, '?') ? "&" : "?", esc);
    }
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\n",
                     path, opt.hosthdr);
    if (opt.accept && *opt.accept)
        n += snprintf(req + n, sizeof req - (size_t)n, "Accept: %s\r\n",
                      opt.accept);
    if (opt.transport == T_SSE && c->last_id[0])
        n += snprintf(req + n, sizeof req - (size_t)n,
                      "Last-Event-ID: %s\r\n", c->last_id);
    if (opt.transport == T_LONGPOLL && opt.dialect == D_NCHAN && c->lm[0])
        n += snprintf(req + n, sizeof req - (size_t)n,
                      "If-Modified-Since: %s\r\nIf-None-Match: %s\r\n",
                      c->lm, c->etag);
    if (opt.transport == T_WS)
        n += snprintf(req + n, sizeof req - (size_t)n, "%s", ws_upgrade);
    if (opt.headers_len && (size_t)n + opt.headers_len < sizeof req - 3) {
        memcpy(req + n, opt.headers, opt.headers_len);
        n += (int)opt.headers_len;
    }
    if ((size_t)n > sizeof req - 3)
        return -1;
    memcpy(req + n, "\r\n", 2);
    n += 2;
    wbuf_append(c, req, (size_t)n);
    return conn_flush(c);
}

static void sub_mark_ready(conn_t *c, uint64_t now)
{
    if (c->ready)
        return;
    c->ready = 1;
    st.ready++;
    st.pending--;
    ch_subs[c->chan]++;
    hist_add(&st.conn, now - c->t_start);
}

/* The connection broke or was refused. */
static void sub_broken(conn_t *c, uint64_t now)
{
    if (!c->ready) {
        st.connect_errors++;
        if (++c->tries < CONNECT_TRIES && st.phase == P_CONNECT) {
            retry_at(c, now + 50 * NS_PER_MS);
        } else {
            conn_close(c);
            c->state = CS_FAILED;
            st.failed++;
            st.pending--;
        }
        return;
    }
    if (st.phase == P_DONE) {
        conn_close(c);
        return;
    }
    /* A subscribed connection lost: resume where it was (long-poll resends
     * its request at once; streams resume with their last event id). */
    st.disconnects++;
    retry_at(c, now + (opt.transport == T_LONGPOLL ? 0 : 10 * NS_PER_MS));
}

static void sub_connected(conn_t *c, uint64_t now)
{
    int rc = sub_request(c);
    if (rc < 0) {
        sub_broken(c, now);
        return;
    }
    /* A long-poll subscriber is subscribed once its request is out;
     * streams once the response head arrives. */
    if (rc == 1 && opt.transport == T_LONGPOLL)
        sub_mark_ready(c, now);
}

/* --tls: drive the handshake; once done, the request goes out. */
static void sub_handshake(conn_t *c, uint64_t now)
{
    if (!c->ssl) {
        c->ssl = SSL_new(tls_ctx);
        if (!c->ssl || !SSL_set_fd(c->ssl, c->fd)) {
            sub_broken(c, now);
            return;
        }
        SSL_set_connect_state(c->ssl);
        c->state = CS_HANDSHAKE;
    }
    int rc = SSL_do_handshake(c->ssl);
    if (rc == 1) {
        c->state = CS_OPEN;
        set_events(c, 0);
        sub_connected(c, now);
        return;
    }
    int e = SSL_get_error(c->ssl, rc);
    ERR_clear_error();
    if (e == SSL_ERROR_WANT_READ) {
        set_events(c, 0);
    } else if (e == SSL_ERROR_WANT_WRITE) {
        set_events(c, 1);
    } else {
        sub_broken(c, now);
    }
}

static void sub_start(conn_t *c, uint64_t now)
{
    if (!c->t_start)
        c->t_start = now;
    int rc = conn_connect(c);
    if (rc < 0) {
        sub_broken(c, now);
        return;
    }
    if (rc == 1) {
        if (opt.tls)
            sub_handshake(c, now);
        else
            sub_connected(c, now);
    }
}

/* Response head read: for streams this is the subscription. */
static int sub_on_head(conn_t *c, uint64_t now)
{
    if (opt.transport == T_LONGPOLL)
        return 0;
    if ((c->rs.status >= 200 && c->rs.status < 300)
        || (opt.transport == T_WS && c->rs.status == 101)) {
        sub_mark_ready(c, now);
        return 0;
    }
    st.sub_errors++;
    if (c->ready)
        retry_at(c, now + 100 * NS_PER_MS);
    else
        sub_broken(c, now);
    return -1;
}

/* Whole response read. */
static int sub_on_done(conn_t *c, uint64_t now)
{
    if (opt.transport != T_LONGPOLL) {
        /* The server ended the stream cleanly. */
        st.stream_ends++;
        if (!c->ready) {
            sub_broken(c, now);
        } else if (st.phase == P_DONE) {
            conn_close(c);
        } else {
            retry_at(c, now + 10 * NS_PER_MS);
        }
        return -1;
    }
    uint16_t status = c->rs.status;
    if (status == 200) {
        if (opt.dialect == D_NCHAN) {
            deliver(c, c->buf, c->len, now);
        } else if (comet_longpoll_body(c, c->buf, c->buf + c->len, now) < 0) {
            st.bad++;
        }
    } else if (status != 304 && status != 408 && status != 204) {
        st.sub_errors++;
        retry_at(c, now + 100 * NS_PER_MS);
        return -1;
    }
    int close_ = c->rs.close;
    resp_reset(c);
    if (close_) {
        conn_close(c);
        sub_start(c, now);
        return -1;
    }
    if (sub_request(c) < 0) {
        sub_broken(c, now);
        return -1;
    }
    return 0;
}

static void sub_input(conn_t *c, const char *p, size_t n, uint64_t now)
{
    if (opt.transport == T_RESP) {
        if (buf_reserve(c, (size_t)c->len + n) < 0) {
            st.oversize++;
            sub_broken(c, now);
            return;
        }
        memcpy(c->buf + c->len, p, n);
        c->len += (uint32_t)n;
        if (resp_consume(c, now) < 0) {
            st.sub_errors++;
            sub_broken(c, now);
        }
        return;
    }
    while (n > 0 || c->rs.phase == RP_DONE) {
        if (c->rs.phase == RP_HEAD) {
            long u = head_feed(c, p, n);
            if (u < 0) {
                st.sub_errors++;
                sub_broken(c, now);
                return;
            }
            p += u;
            n -= (size_t)u;
            if (c->rs.phase == RP_HEAD)
                continue;
            if (sub_on_head(c, now) < 0)
                return;
            continue;
        }
        if (c->rs.phase == RP_BODY) {
            long u = body_feed(c, p, n, 0);
            if (u < 0) {
                st.sub_errors++;
                sub_broken(c, now);
                return;
            }
            p += u;
            n -= (size_t)u;
            if (opt.transport == T_WS) {
                if (ws_consume(c, now, 1) < 0) {
                    st.sub_errors++;
                    sub_broken(c, now);
                    return;
                }
            } else if (opt.transport != T_LONGPOLL)
                stream_consume(c, now);
            if (u == 0 && n > 0 && c->len >= (size_t)opt.max_buf) {
                st.oversize++;
                sub_broken(c, now);
                return;
            }
            continue;
        }
        if (sub_on_done(c, now) < 0)
            return;
    }
}

static void sub_eof(conn_t *c, uint64_t now)
{
    if (opt.transport == T_RESP) {
        c->len = 0;
        sub_broken(c, now);
        return;
    }
    if (c->rs.phase == RP_BODY && c->rs.mode == BM_CLOSE) {
        if (opt.transport == T_WS)
            ws_consume(c, now, 1);
        else if (opt.transport != T_LONGPOLL)
            stream_consume(c, now);
        c->rs.phase = RP_DONE;
        c->rs.close = 1;
        sub_on_done(c, now);
        return;
    }
    /* Closed between long-poll requests (keep-alive timeout) or mid-stream. */
    if (c->ready && opt.transport == T_LONGPOLL && c->rs.phase == RP_HEAD
        && c->len == 0) {
        st.reconnects++;
        conn_close(c);
        sub_start(c, now);
        return;
    }
    sub_broken(c, now);
}

/* ------------------------------------------------------------------ */
/* Publishers                                                          */
/* ------------------------------------------------------------------ */

static void pub_start(conn_t *c, uint64_t now);
static void pub_ack(conn_t *c, int ok, uint64_t now);

/* The upgrade request of a WebSocket publisher, to its channel's
 * --pub-url. */
static int pub_ws_request(conn_t *c)
{
    char chan[96], path[1024], req[2048];
    chan_name(chan, sizeof chan, c->chan);
    if (fill_template(path, sizeof path, opt.pub_url, chan) < 0)
        return -1;
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\n%s",
                     path, opt.hosthdr, ws_upgrade);
    if (opt.headers_len && (size_t)n + opt.headers_len < sizeof req - 3) {
        memcpy(req + n, opt.headers, opt.headers_len);
        n += (int)opt.headers_len;
    }
    memcpy(req + n, "\r\n", 2);
    n += 2;
    resp_reset(c);
    c->ready = 0;
    wbuf_append(c, req, (size_t)n);
    return conn_flush(c);
}

/* A WebSocket publisher's input: the 101, then frames (pings answered;
 * what mod_comet echoes and Nchan answers is dropped). */
static int ws_pub_input(conn_t *c, const char *p, size_t n, uint64_t now)
{
    while (n > 0) {
        if (c->rs.phase == RP_HEAD) {
            long u = head_feed(c, p, n);
            if (u < 0)
                return -1;
            p += u;
            n -= (size_t)u;
            if (c->rs.phase == RP_HEAD)
                continue;
            if (c->rs.status != 101)
                return -1;
            c->ready = 1;
            continue;
        }
        long u = body_feed(c, p, n, 0);
        if (u < 0)
            return -1;
        p += u;
        n -= (size_t)u;
        if (ws_consume(c, now, 0) < 0 || c->rs.phase == RP_DONE)
            return -1;
        if (u == 0 && n > 0)
            return -1;
    }
    return 0;
}

/* Format one message for channel ch into the publisher's write buffer. */
static void pub_format(conn_t *c, uint32_t ch, uint64_t seq, uint64_t t)
{
    char chan[96], path[1024], head[1400], hdr[48];
    int hl = snprintf(hdr, sizeof hdr, "%" PRIu64 " %" PRIu64 " ", seq, t);
    size_t plen = (size_t)hl > (size_t)opt.size ? (size_t)hl : (size_t)opt.size;
    chan_name(chan, sizeof chan, ch);
    int n;
    if (opt.pub_mode == PUB_WS) {
        /* One text frame: its header, then the payload below. */
        unsigned char h[14];
        size_t hl = 2;
        h[0] = 0x81;
        if (plen < 126) {
            h[1] = (unsigned char)(0x80 | plen);
        } else if (plen < 65536) {
            h[1] = 0x80 | 126;
            h[2] = (unsigned char)(plen >> 8);
            h[3] = (unsigned char)plen;
            hl = 4;
        } else {
            h[1] = 0x80 | 127;
            for (int i = 0; i < 8; i++)
                h[2 + i] = (unsigned char)((uint64_t)plen >> (56 - 8 * i));
            hl = 10;
        }
        memset(h + hl, 0, 4);
        memcpy(head, h, hl + 4);
        n = (int)(hl + 4);
    } else if (opt.pub_mode == PUB_HTTP) {
        fill_template(path, sizeof path, opt.pub_url, chan);
        n = snprintf(head, sizeof head,
                     "POST %s HTTP/1.1\r\nHost: %s\r\n"
                     "Content-Type: text/plain\r\nContent-Length: %zu\r\n\r\n",
                     path, opt.hosthdr, plen);
    } else {
        n = snprintf(head, sizeof head,
                     "*3\r\n$7\r\nPUBLISH\r\n$%zu\r\n%s\r\n$%zu\r\n",
                     strlen(chan), chan, plen);
    }
    wbuf_append(c, head, (size_t)n);
    wbuf_append(c, hdr, (size_t)hl);
    size_t pad = plen - (size_t)hl;
    while (pad > 0) {
        static const char xs[] =
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
        size_t k = pad < sizeof xs - 1 ? pad : sizeof xs - 1;
        wbuf_append(c, xs, k);
        pad -= k;
    }
    if (opt.pub_mode == PUB_RESP)
        wbuf_append(c, "\r\n", 2);
    c->dirty = 1;
}

static void pub_send(conn_t *c, uint32_t ch)
{
    uint64_t seq = ++ch_seq[ch];
    uint64_t t = now_ns();
    uint32_t k = (c->inflight_head + c->inflight_n) % (uint32_t)opt.pipeline;
    pub_format(c, ch, seq, t);
    c->inflight[k] = ch;
    c->inflight_seq[k] = seq;
    c->inflight_t[k] = t;
    c->inflight_tries[k] = 1;
    c->inflight_n++;
    st.sent++;
    st.pub_sent_last = t;
    /* A WebSocket publish has no answer: taken when written. */
    if (opt.pub_mode == PUB_WS)
        pub_ack(c, 1, t);
}

/* After a reconnect: send again, in order, the requests the broken
 * connection left unanswered (they keep their sequence numbers and send
 * times, so a retry shows in the latency, and a request that had been
 * carried out after all shows up as duplicate deliveries). */
static void pub_resend(conn_t *c)
{
    for (uint32_t i = 0; i < c->resend_n; i++) {
        uint32_t k = (c->inflight_head + i) % (uint32_t)opt.pipeline;
        pub_format(c, c->inflight[k], c->inflight_seq[k], c->inflight_t[k]);
        c->inflight_tries[k]++;
        st.pub_retries++;
    }
    c->inflight_n = c->resend_n;
    c->resend_n = 0;
}

static void pub_ack(conn_t *c, int ok, uint64_t now)
{
    if (c->inflight_n == 0) {
        st.pub_errors++;
        return;
    }
    uint32_t ch = c->inflight[c->inflight_head];
    c->inflight_head = (c->inflight_head + 1) % (uint32_t)opt.pipeline;
    c->inflight_n--;
    if (ok) {
        st.acked++;
        ch_acked[ch]++;
        st.expected += ch_subs[ch];
        st.pub_last_ack = now;
    } else {
        st.pub_errors++;
    }
}

/* A publisher connection broke.  When no byte of an answer to the requests
 * still outstanding had arrived (the server closed an idle keep-alive
 * connection just as the next request went out), they are sent again on a
 * fresh connection, up to PUB_TRIES times in all, as HTTP clients do for a
 * reused connection that closes without answering.  Otherwise, or when the
 * run is over, they count as unanswered. */
#define PUB_TRIES 3
static void pub_broken(conn_t *c, uint64_t now)
{
    uint32_t keep = 0;
    int answered_part = opt.pub_mode == PUB_RESP ? c->len > 0
                        : (c->rs.phase != RP_HEAD || c->len > 0);
    if (!answered_part && c->inflight_n > 0) {
        keep = c->inflight_n;
        for (uint32_t i = 0; i < c->inflight_n; i++)
            if (c->inflight_tries[(c->inflight_head + i) % (uint32_t)opt.pipeline]
                >= PUB_TRIES)
                keep = 0;
    }
    if (st.phase == P_DONE)
        keep = 0;
    if (keep) {
        c->resend_n = keep;
    } else {
        st.pub_lost += c->inflight_n;
        c->inflight_head = 0;
        c->resend_n = 0;
    }
    c->inflight_n = 0;
    if (c->state == CS_OPEN)
        st.pubs_open--;
    st.pub_reconnects++;
    if (st.phase == P_DONE)
        conn_close(c);
    else
        retry_at(c, now + (keep ? 0 : 50 * NS_PER_MS));
}

static void pub_start(conn_t *c, uint64_t now)
{
    int rc = conn_connect(c);
    if (rc < 0) {
        st.pub_reconnects++;
        retry_at(c, now + 100 * NS_PER_MS);
    } else if (rc == 1) {
        st.pubs_open++;
        if (opt.pub_mode == PUB_WS && pub_ws_request(c) < 0) {
            pub_broken(c, now);
            return;
        }
        if (c->resend_n) {
            pub_resend(c);
            if (conn_flush(c) < 0)
                pub_broken(c, now);
        }
    }
}

/* Redis-protocol replies: ":<n>" (receivers), "+OK", "-ERR ...". */
static int resp_input(conn_t *c, const char *p, size_t n, uint64_t now)
{
    if (buf_reserve(c, (size_t)c->len + n) < 0)
        return -1;
    memcpy(c->buf + c->len, p, n);
    c->len += (uint32_t)n;
    size_t pos = 0;
    for (;;) {
        char *nl = memchr(c->buf + pos, '\n', c->len - pos);
        if (!nl)
            break;
        char t = c->buf[pos];
        if (t == ':') {
            st.receivers += strtoull(c->buf + pos + 1, NULL, 10);
            pub_ack(c, 1, now);
        } else if (t == '+') {
            pub_ack(c, 1, now);
        } else if (t == '-') {
            pub_ack(c, 0, now);
        } else {
            return -1;
        }
        pos = (size_t)(nl - c->buf) + 1;
    }
    memmove(c->buf, c->buf + pos, c->len - pos);
    c->len -= (uint32_t)pos;
    return c->len > 4096 ? -1 : 0;
}

static int http_pub_input(conn_t *c, const char *p, size_t n, uint64_t now)
{
    while (n > 0 || c->rs.phase == RP_DONE) {
        if (c->rs.phase == RP_HEAD) {
            long u = head_feed(c, p, n);
            if (u < 0)
                return -1;
            p += u;
            n -= (size_t)u;
        } else if (c->rs.phase == RP_BODY) {
            long u = body_feed(c, p, n, 1);
            if (u < 0)
                return -1;
            p += u;
            n -= (size_t)u;
        } else {
            int close_ = c->rs.close;
            pub_ack(c, c->rs.status >= 200 && c->rs.status < 300, now);
            resp_reset(c);
            if (close_)
                return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Server process sampling (/proc)                                     */
/* ------------------------------------------------------------------ */

static int watched(pid_t pid, pid_t ppid)
{
    for (int i = 0; i < opt.nwatch; i++)
        if (opt.watch[i] == pid || opt.watch[i] == ppid)
            return 1;
    return 0;
}

/* Sum over the watched processes and their children.  PSS (proportional
 * set size) counts each shared page once across the processes; RSS counts
 * it in every process that maps it. */
static void srv_sample(srv_sample_t *s, int with_pss)
{
    memset(s, 0, sizeof *s);
    if (opt.nwatch == 0)
        return;
    DIR *d = opendir("/proc");
    if (!d)
        return;
    long page_kb = sysconf(_SC_PAGESIZE) / 1024;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!isdigit((unsigned char)de->d_name[0]))
            continue;
        char path[64], buf[1024];
        pid_t pid = (pid_t)atoi(de->d_name);
        snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t r = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (r <= 0)
            continue;
        buf[r] = '\0';
        char *q = strrchr(buf, ')');
        if (!q)
            continue;
        /* Fields after ")": 3 state, 4 ppid, ..., 14 utime, 15 stime,
         * 16 cutime, 17 cstime, ..., 24 rss. */
        unsigned long long f[25] = {0};
        char *tok = q + 2;
        for (int i = 3; i <= 24 && tok && *tok; i++) {
            f[i] = strtoull(tok, NULL, 10);
            tok = strchr(tok, ' ');
            if (tok)
                tok++;
        }
        if (!watched(pid, (pid_t)f[4]))
            continue;
        int root = 0;
        for (int i = 0; i < opt.nwatch; i++)
            root |= opt.watch[i] == pid;
        s->nprocs++;
        s->cpu_ticks += f[14] + f[15] + (root ? f[16] + f[17] : 0);
        s->rss_kb += f[24] * (unsigned long long)page_kb;
        if (with_pss) {
            snprintf(path, sizeof path, "/proc/%d/smaps_rollup", (int)pid);
            FILE *fp = fopen(path, "re");
            if (fp) {
                char line[256];
                while (fgets(line, sizeof line, fp))
                    if (strncmp(line, "Pss:", 4) == 0) {
                        s->pss_kb += strtoull(line + 4, NULL, 10);
                        break;
                    }
                fclose(fp);
            }
        }
    }
    closedir(d);
    if (s->rss_kb > st.rss_peak_kb)
        st.rss_peak_kb = s->rss_kb;
}

/* ------------------------------------------------------------------ */
/* Phases                                                              */
/* ------------------------------------------------------------------ */

static int pub_limit_reached(uint64_t now)
{
    if (opt.messages > 0 && st.sent >= (uint64_t)opt.messages)
        return 1;
    if (opt.duration > 0 && now >= st.pub_t0 + sec_to_ns(opt.duration))
        return 1;
    return opt.messages <= 0 && opt.duration <= 0;
}

/* The publisher of the next message: channel ch's own (ch % pub_conns),
 * or, with --pub-alternate, the next one in turn (messages of a channel
 * then take several paths: through two servers sharing it, say). */
static uint32_t pub_of(uint32_t ch)
{
    if (opt.pub_alternate)
        return (uint32_t)(st.sent % (uint64_t)opt.pub_conns);
    return ch % (uint32_t)opt.pub_conns;
}

/* Send what is due: paced by --rate, else as much as the windows allow.
 * Channel ch always goes through publisher ch % pub_conns, so messages of
 * one channel reach the server in order. */
static void pub_pump(uint64_t now)
{
    while (!pub_limit_reached(now)) {
        if (opt.rate > 0) {
            uint64_t due = (uint64_t)((double)(now - st.pub_t0) * opt.rate / 1e9) + 1;
            if (st.sent >= due)
                break;
        }
        uint32_t ch = (uint32_t)(st.sent % (uint64_t)opt.channels);
        conn_t *pc = &pubs[pub_of(ch)];
        /* A WebSocket publisher gets no answers: its window is what it
         * has not written yet. */
        if (pc->state != CS_OPEN || pc->inflight_n >= (uint32_t)opt.pipeline
            || (opt.pub_mode == PUB_WS
                && (!pc->ready || pc->wlen - pc->woff >= WS_PUB_WINDOW)))
            break;
        pub_send(pc, ch);
    }
    for (int i = 0; i < opt.pub_conns; i++) {
        conn_t *pc = &pubs[i];
        if (pc->dirty) {
            pc->dirty = 0;
            if (conn_flush(pc) < 0)
                pub_broken(pc, now);
        }
    }
}

static int pubs_idle(void)
{
    for (int i = 0; i < opt.pub_conns; i++)
        if (pubs[i].inflight_n || pubs[i].resend_n)
            return 0;
    return 1;
}

static void print_ready(void)
{
    fprintf(stderr, "READY subs=%ld failed=%ld\n", st.ready, st.failed);
    fflush(stderr);
}

static void enter(int phase, uint64_t now)
{
    st.phase = phase;
    switch (phase) {
    case P_HOLD:
        st.connect_end = now;
        srv_sample(&st.s_ready, 1);
        print_ready();
        st.phase_until = now + sec_to_ns(opt.hold);
        break;
    case P_WARMUP:
        for (int i = 0; i < opt.pub_conns; i++)
            pub_start(&pubs[i], now);
        st.phase_until = now + (opt.subs > 0 ? sec_to_ns(opt.warmup) : 0);
        break;
    case P_PUBLISH:
        st.pub_t0 = now;
        break;
    case P_SETTLE:
        st.phase_until = now + sec_to_ns(opt.settle);
        break;
    default:
        break;
    }
}

static void step(uint64_t now)
{
    switch (st.phase) {
    case P_CONNECT:
        while (st.started < opt.subs && st.pending < opt.concurrency) {
            conn_t *c = &subs[st.started++];
            st.pending++;
            sub_start(c, now);
        }
        if (now >= st.t0 + sec_to_ns(opt.connect_timeout)) {
            for (long i = 0; i < st.started; i++) {
                conn_t *c = &subs[i];
                if (!c->ready && c->state != CS_FAILED) {
                    conn_close(c);
                    c->state = CS_FAILED;
                    st.failed++;
                    st.pending--;
                }
            }
            st.failed += opt.subs - st.started;
            st.started = opt.subs;
        }
        if (st.started == opt.subs && st.pending == 0)
            enter(P_HOLD, now);
        break;
    case P_HOLD:
        if (now >= st.phase_until) {
            srv_sample(&st.s_held, 1);
            if (opt.pub_mode == PUB_NONE || (opt.messages <= 0 && opt.duration <= 0))
                enter(P_DONE, now);
            else
                enter(P_WARMUP, now);
        }
        break;
    case P_WARMUP:
        if (now >= st.phase_until && st.pubs_open == opt.pub_conns)
            enter(P_PUBLISH, now);
        break;
    case P_PUBLISH:
        pub_pump(now);
        if (pub_limit_reached(now) && pubs_idle())
            enter(P_SETTLE, now);
        break;
    case P_SETTLE:
        if (st.unique >= st.expected || now >= st.phase_until)
            enter(P_DONE, now);
        break;
    default:
        break;
    }
}

static void run_retries(uint64_t now)
{
    for (size_t i = 0; i < nretry;) {
        conn_t *c = retryq[i];
        if (c->retry_at > now) {
            i++;
            continue;
        }
        retryq[i] = retryq[--nretry];
        c->in_retry = 0;
        if (c->state != CS_RETRY)
            continue;                   /* given up on meanwhile */
        c->state = CS_IDLE;
        if (c->kind == CK_SUB) {
            if (c->ready)
                st.reconnects++;
            sub_start(c, now);
        } else if (st.phase != P_DONE) {
            pub_start(c, now);
        }
    }
}

static int next_timeout_ms(uint64_t now, uint64_t deadline)
{
    uint64_t next = deadline;
    if (st.next_sample && st.next_sample < next)
        next = st.next_sample;
    if ((st.phase == P_HOLD || st.phase == P_WARMUP || st.phase == P_SETTLE)
        && st.phase_until < next)
        next = st.phase_until;
    if (st.phase == P_CONNECT) {
        uint64_t cd = st.t0 + sec_to_ns(opt.connect_timeout);
        if (cd < next)
            next = cd;
    }
    if (st.phase == P_PUBLISH) {
        /* The pacing timer only matters when the next message has room:
         * otherwise the answer that makes room wakes the loop. */
        uint32_t ch = (uint32_t)(st.sent % (uint64_t)opt.channels);
        const conn_t *pc = &pubs[pub_of(ch)];
        if (opt.rate > 0 && pc->state == CS_OPEN
            && pc->inflight_n < (uint32_t)opt.pipeline) {
            uint64_t at = st.pub_t0 + (uint64_t)((double)st.sent * 1e9 / opt.rate);
            if (at < next)
                next = at;
        }
        if (opt.duration > 0) {
            uint64_t at = st.pub_t0 + sec_to_ns(opt.duration);
            if (at < next)
                next = at;
        }
    }
    for (size_t i = 0; i < nretry; i++)
        if (retryq[i]->retry_at < next)
            next = retryq[i]->retry_at;
    if (next <= now)
        return 0;
    uint64_t ms = (next - now + NS_PER_MS - 1) / NS_PER_MS;
    return ms > 1000 ? 1000 : (int)ms;
}

static void on_event(conn_t *c, uint32_t ev, uint64_t now)
{
    if (c->fd < 0)
        return;
    if (c->state == CS_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
            err = errno;
        if (err == 0 && !(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return;
        if (err || (ev & EPOLLERR)) {
            if (c->kind == CK_SUB) {
                sub_broken(c, now);
            } else {
                st.pub_reconnects++;
                retry_at(c, now + 100 * NS_PER_MS);
            }
            return;
        }
        c->state = CS_OPEN;
        set_events(c, 0);
        if (c->kind == CK_SUB && opt.tls) {
            sub_handshake(c, now);
        } else if (c->kind == CK_SUB) {
            sub_connected(c, now);
        } else {
            st.pubs_open++;
            if (opt.pub_mode == PUB_WS && pub_ws_request(c) < 0) {
                pub_broken(c, now);
                return;
            }
            if (c->resend_n) {
                pub_resend(c);
                if (conn_flush(c) < 0)
                    pub_broken(c, now);
            }
        }
        return;
    }
    if (c->state == CS_HANDSHAKE) {
        sub_handshake(c, now);
        return;
    }
    if (c->ssl) {
        /* Records already inside the session are not reported again:
         * read until the session wants more from the socket. */
        if (c->woff < c->wlen) {
            int rc = conn_flush(c);
            if (rc < 0) {
                sub_broken(c, now);
                return;
            }
            if (rc == 1 && opt.transport == T_LONGPOLL)
                sub_mark_ready(c, now);
        }
        while (c->ssl) {
            size_t n = 0;
            if (SSL_read_ex(c->ssl, rbuf, sizeof rbuf, &n)) {
                sub_input(c, rbuf, n, now);
                continue;
            }
            int e = SSL_get_error(c->ssl, 0);
            ERR_clear_error();
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                return;
            sub_eof(c, now);
            return;
        }
        return;
    }
    if ((ev & EPOLLOUT) && c->woff < c->wlen) {
        int rc = conn_flush(c);
        if (rc < 0) {
            if (c->kind == CK_SUB)
                sub_broken(c, now);
            else
                pub_broken(c, now);
            return;
        }
        if (rc == 1 && c->kind == CK_SUB && opt.transport == T_LONGPOLL)
            sub_mark_ready(c, now);
    }
    if (!(ev & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return;
    ssize_t r = recv(c->fd, rbuf, sizeof rbuf, 0);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (c->kind == CK_SUB) {
        if (r > 0)
            sub_input(c, rbuf, (size_t)r, now);
        else
            sub_eof(c, now);
        return;
    }
    int rc = -1;
    if (r > 0)
        rc = opt.pub_mode == PUB_RESP ? resp_input(c, rbuf, (size_t)r, now)
             : opt.pub_mode == PUB_WS ? ws_pub_input(c, rbuf, (size_t)r, now)
                                      : http_pub_input(c, rbuf, (size_t)r, now);
    if (rc < 0)
        pub_broken(c, now);
}

/* ------------------------------------------------------------------ */
/* Report                                                              */
/* ------------------------------------------------------------------ */

static double us(uint64_t ns)
{
    return (double)ns / 1e3;
}

static void report(uint64_t now)
{
    static const char *tnames[] = { "sse", "longpoll", "stream", "ws", "resp" };
    uint64_t loss = 0, dups = 0, reorders = 0;
    for (long i = 0; i < opt.subs; i++) {
        conn_t *c = &subs[i];
        if (!c->ready)
            continue;
        uint64_t want = ch_acked[c->chan];
        if (want > c->acct.unique)
            loss += want - c->acct.unique;
        dups += c->acct.dups;
        reorders += c->acct.reorders;
    }
    double elapsed = (double)(now - st.t0) / 1e9;
    double connect_s = st.connect_end ? (double)(st.connect_end - st.t0) / 1e9 : 0;
    double pub_s = st.pub_last_ack > st.pub_t0
                       ? (double)(st.pub_last_ack - st.pub_t0) / 1e9 : 0;
    double deliv_s = st.last_delivery > st.pub_t0 && st.pub_t0
                         ? (double)(st.last_delivery - st.pub_t0) / 1e9 : 0;
    double pub_rate = pub_s > 0 ? (double)st.acked / pub_s : 0;
    double deliv_rate = deliv_s > 0 ? (double)st.deliveries / deliv_s : 0;
    long hz = sysconf(_SC_CLK_TCK);
    double srv_cpu = opt.nwatch && st.s_end.cpu_ticks >= st.s_base.cpu_ticks
                         ? (double)(st.s_end.cpu_ticks - st.s_base.cpu_ticks) / (double)hz
                         : 0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cli_cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6
                     + (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    const srv_sample_t *held = st.s_held.nprocs ? &st.s_held : &st.s_ready;
    double mem_per_sub = 0, pss_per_sub = 0;
    if (opt.nwatch && st.ready > 0) {
        mem_per_sub = ((double)held->rss_kb - (double)st.s_base.rss_kb) * 1024.0
                      / (double)st.ready;
        pss_per_sub = ((double)held->pss_kb - (double)st.s_base.pss_kb) * 1024.0
                      / (double)st.ready;
    }

    fprintf(stderr,
            "scenario %s  server %s  transport %s%s  subs %ld  channels %ld\n"
            "  connect   %ld ok, %ld failed, %.3f s total; per connection "
            "p50 %.0f us  p99 %.0f us  max %.0f us\n",
            opt.scenario, opt.server, tnames[opt.transport],
            opt.tls ? " (TLS)" : "", opt.subs,
            opt.channels, st.ready, st.failed, connect_s,
            us(hist_pct(&st.conn, 0.50)), us(hist_pct(&st.conn, 0.99)),
            us(st.conn.max));
    if (opt.pub_mode != PUB_NONE)
        fprintf(stderr,
                "  publish   %" PRIu64 " sent, %" PRIu64 " acknowledged, %"
                PRIu64 " errors, %" PRIu64 " unanswered, %" PRIu64
                " sent again after a closed connection; %.0f/s over %.3f s\n",
                st.sent, st.acked, st.pub_errors, st.pub_lost, st.pub_retries,
                pub_rate, pub_s);
    if (st.expected || st.deliveries)
        fprintf(stderr,
                "  deliver   %" PRIu64 " of %" PRIu64 " expected; loss %" PRIu64
                "  dups %" PRIu64 "  reorders %" PRIu64 "  bad %" PRIu64
                "; %.0f/s\n"
                "  latency   p50 %.0f us  p90 %.0f us  p99 %.0f us  p99.9 %.0f us"
                "  max %.0f us  mean %.0f us\n",
                st.unique, st.expected, loss, dups, reorders, st.bad, deliv_rate,
                us(hist_pct(&st.lat, 0.50)), us(hist_pct(&st.lat, 0.90)),
                us(hist_pct(&st.lat, 0.99)), us(hist_pct(&st.lat, 0.999)),
                us(st.lat.max), us((uint64_t)hist_mean(&st.lat)));
    fprintf(stderr,
            "  events    reconnects %" PRIu64 "  disconnects %" PRIu64
            "  stream ends %" PRIu64 "  sub errors %" PRIu64 "  oversize %"
            PRIu64 "  missed %" PRIu64 "\n",
            st.reconnects, st.disconnects, st.stream_ends, st.sub_errors,
            st.oversize, st.missed);
    if (opt.nwatch)
        fprintf(stderr,
                "  server    %d processes; RSS %" PRIu64 " -> %" PRIu64
                " KB (peak %" PRIu64 "), PSS %" PRIu64 " -> %" PRIu64
                " KB; %.0f B RSS / %.0f B PSS per subscriber; CPU %.2f s\n",
                st.s_end.nprocs, st.s_base.rss_kb, held->rss_kb, st.rss_peak_kb,
                st.s_base.pss_kb, held->pss_kb, mem_per_sub, pss_per_sub, srv_cpu);
    fprintf(stderr, "  client    CPU %.2f s; elapsed %.2f s%s%s\n", cli_cpu,
            elapsed, st.timed_out ? "  TIMED OUT" : "",
            st.interrupted ? "  INTERRUPTED" : "");

    printf("{\"scenario\":\"%s\",\"server\":\"%s\",\"transport\":\"%s\","
           "\"tls\":%d,\"subs\":%ld,\"channels\":%ld,\"connected\":%ld,"
           "\"failed\":%ld,"
           "\"connect_s\":%.3f,\"connect_p50_us\":%.1f,\"connect_p99_us\":%.1f,"
           "\"connect_max_us\":%.1f,",
           opt.scenario, opt.server, tnames[opt.transport], opt.tls, opt.subs,
           opt.channels, st.ready, st.failed, connect_s,
           us(hist_pct(&st.conn, 0.50)), us(hist_pct(&st.conn, 0.99)),
           us(st.conn.max));
    printf("\"sent\":%" PRIu64 ",\"published\":%" PRIu64 ",\"pub_errors\":%"
           PRIu64 ",\"pub_lost\":%" PRIu64 ",\"pub_per_s\":%.1f,\"pub_s\":%.3f,"
           "\"receivers\":%" PRIu64 ",\"pub_retries\":%" PRIu64 ","
           "\"pub_reconnects\":%" PRIu64 ",",
           st.sent, st.acked, st.pub_errors, st.pub_lost, pub_rate, pub_s,
           st.receivers, st.pub_retries, st.pub_reconnects);
    printf("\"deliveries\":%" PRIu64 ",\"unique\":%" PRIu64 ",\"expected\":%"
           PRIu64 ",\"loss\":%" PRIu64 ",\"dups\":%" PRIu64 ",\"reorders\":%"
           PRIu64 ",\"bad\":%" PRIu64 ",\"missed\":%" PRIu64
           ",\"deliv_per_s\":%.1f,",
           st.deliveries, st.unique, st.expected, loss, dups, reorders, st.bad,
           st.missed, deliv_rate);
    printf("\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
           "\"max_us\":%.1f,\"mean_us\":%.1f,",
           us(hist_pct(&st.lat, 0.50)), us(hist_pct(&st.lat, 0.90)),
           us(hist_pct(&st.lat, 0.99)), us(hist_pct(&st.lat, 0.999)),
           us(st.lat.max), hist_mean(&st.lat) / 1e3);
    printf("\"reconnects\":%" PRIu64 ",\"disconnects\":%" PRIu64
           ",\"stream_ends\":%" PRIu64 ",\"sub_errors\":%" PRIu64
           ",\"oversize\":%" PRIu64 ",",
           st.reconnects, st.disconnects, st.stream_ends, st.sub_errors,
           st.oversize);
    printf("\"srv_procs\":%d,\"srv_rss_kb_base\":%" PRIu64 ",\"srv_rss_kb_held\":%"
           PRIu64 ",\"srv_rss_kb_peak\":%" PRIu64 ",\"srv_pss_kb_base\":%" PRIu64
           ",\"srv_pss_kb_held\":%" PRIu64 ",\"mem_per_sub_b\":%.0f,"
           "\"pss_per_sub_b\":%.0f,\"srv_cpu_s\":%.2f,\"client_cpu_s\":%.2f,"
           "\"elapsed_s\":%.3f,\"timed_out\":%s}\n",
           st.s_end.nprocs, st.s_base.rss_kb, held->rss_kb, st.rss_peak_kb,
           st.s_base.pss_kb, held->pss_kb, mem_per_sub, pss_per_sub, srv_cpu,
           cli_cpu, elapsed, st.timed_out || st.interrupted ? "true" : "false");
    fflush(stdout);
}

/* ------------------------------------------------------------------ */
/* Setup                                                               */
/* ------------------------------------------------------------------ */

static void usage(FILE *f)
{
    fputs(
"usage: cometbench [options]\n"
"target\n"
"  --host ADDR          127.0.0.1 (default), ::1 or localhost; loopback only\n"
"  --port N             TCP port of the server\n"
"  --server nchan|comet wire dialect for long-poll and resuming (default nchan)\n"
"  --scenario NAME      label for the JSON line\n"
"subscribers\n"
"  --subs N             subscriber connections (default 0)\n"
"  --channels C         channels; subscriber i uses channel i %% C (default 1)\n"
"  --prefix P           channel name prefix (default: unique per run)\n"
"  --transport T        sse | longpoll | stream | ws | resp (SUBSCRIBE on\n"
"                       --socket; default sse)\n"
"  --sub-url TMPL       subscriber path, %s = channel (default /sub/%s)\n"
"  --accept VALUE       Accept header (default by transport; \"\" for none)\n"
"  --header 'N: V'      extra subscriber request header (repeatable)\n"
"  --concurrency N      pending connects at most (default 200)\n"
"  --connect-timeout S  give up on unconnected subscribers after S (default 60)\n"
"  --max-event BYTES    largest event / long-poll body (default 65536)\n"
"  --tls                subscribers over TLS (no certificate checks)\n"
"  --tls-version 2|3    TLS 1.2 or 1.3 only (default: either)\n"
"  --sub-port N         the subscribers' port (default --port)\n"
"publishers\n"
"  --pub http|resp|ws|none  how to publish (default none); ws: each\n"
"                       publisher is a WebSocket to --pub-url of channel\n"
"                       i %% C that sends text frames (taken when written)\n"
"  --pub-url TMPL       POST or WebSocket path, %s = channel (default /pub/%s)\n"
"  --socket PATH        Unix socket for --pub resp\n"
"  --port2 N            a second server sharing the channels: odd-numbered\n"
"                       subscribers and HTTP publishers go to it\n"
"  --socket2 PATH       its Unix socket: odd-numbered RESP publishers\n"
"  --pub-alternate      publishers take turns (not one per channel)\n"
"  --pub-conns K        publisher connections (default 1)\n"
"  --pipeline D         unanswered requests per connection (default 1)\n"
"  --rate R             messages/s in total; 0 = as fast as answered (default 0)\n"
"  --messages M         messages in total (round-robin over the channels)\n"
"  --duration S         or publish for S seconds\n"
"  --size B             payload bytes (default 100)\n"
"timing\n"
"  --hold S             keep subscribers idle S seconds after READY (default 0)\n"
"  --warmup S           wait before publishing (default 0.5)\n"
"  --settle S           wait for stragglers after the last publish (default 5)\n"
"  --timeout S          hard limit for the whole run (default 300)\n"
"server sampling\n"
"  --watch-pid PID      sum RSS/PSS/CPU of PID and its children (repeatable)\n",
        f);
}

static void parse_host(const char *h)
{
    char tmp[64];
    size_t hl = strlen(h);
    if (hl >= sizeof tmp)
        die("bad --host");
    if (h[0] == '[' && hl > 2 && h[hl - 1] == ']') {
        memcpy(tmp, h + 1, hl - 2);
        tmp[hl - 2] = '\0';
    } else {
        memcpy(tmp, h, hl + 1);
    }
    if (strcmp(tmp, "localhost") == 0)
        strcpy(tmp, "127.0.0.1");
    memset(&opt.addr, 0, sizeof opt.addr);
    struct sockaddr_in *a4 = (struct sockaddr_in *)&opt.addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&opt.addr;
    if (inet_pton(AF_INET, tmp, &a4->sin_addr) == 1) {
        if ((ntohl(a4->sin_addr.s_addr) >> 24) != 127)
            die("only loopback targets (127.0.0.0/8, ::1) are allowed");
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)opt.port);
        opt.addrlen = sizeof *a4;
        snprintf(opt.hosthdr, sizeof opt.hosthdr, "%s:%d", tmp, opt.port);
    } else if (inet_pton(AF_INET6, tmp, &a6->sin6_addr) == 1) {
        if (!IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr))
            die("only loopback targets (127.0.0.0/8, ::1) are allowed");
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)opt.port);
        opt.addrlen = sizeof *a6;
        snprintf(opt.hosthdr, sizeof opt.hosthdr, "[%s]:%d", tmp, opt.port);
    } else {
        die("--host must be a numeric loopback address or localhost");
    }
}

static double num_arg(const char *name, const char *v, double lo, double hi)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || end == v || *end || d < lo || d > hi || d != d)
        die("bad value for --%s: %s", name, v);
    return d;
}

static void raise_nofile(long need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return;
    if (rl.rlim_max != RLIM_INFINITY && (long)rl.rlim_max < need) {
        struct rlimit hi = { (rlim_t)need, (rlim_t)need };
        if (setrlimit(RLIMIT_NOFILE, &hi) == 0)
            return;
    }
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur != RLIM_INFINITY && (long)rl.rlim_cur < need)
        fprintf(stderr, "cometbench: warning: open-file limit %ld is below the "
                "%ld descriptors wanted; some connections will fail\n",
                (long)rl.rlim_cur, need);
}

static void on_signal(int sig)
{
    got_signal = sig;
}

static void parse_args(int argc, char **argv)
{
    enum {
        O_HOST = 256, O_PORT, O_SERVER, O_SCENARIO, O_SUBS, O_CHANNELS,
        O_PREFIX, O_TRANSPORT, O_SUB_URL, O_ACCEPT, O_HEADER, O_CONC,
        O_CTIMEOUT, O_MAXEV, O_PUB, O_PUB_URL, O_SOCKET, O_PUB_CONNS,
        O_PIPELINE, O_RATE, O_MESSAGES, O_DURATION, O_SIZE, O_HOLD, O_WARMUP,
        O_SETTLE, O_TIMEOUT, O_WATCH, O_TLS, O_TLS_VERSION, O_SUB_PORT,
        O_PORT2, O_SOCKET2, O_PUB_ALT, O_HELP
    };
    static const struct option lo[] = {
        { "host", 1, NULL, O_HOST }, { "port", 1, NULL, O_PORT },
        { "server", 1, NULL, O_SERVER }, { "scenario", 1, NULL, O_SCENARIO },
        { "subs", 1, NULL, O_SUBS }, { "channels", 1, NULL, O_CHANNELS },
        { "prefix", 1, NULL, O_PREFIX }, { "transport", 1, NULL, O_TRANSPORT },
        { "sub-url", 1, NULL, O_SUB_URL }, { "accept", 1, NULL, O_ACCEPT },
        { "header", 1, NULL, O_HEADER }, { "concurrency", 1, NULL, O_CONC },
        { "connect-timeout", 1, NULL, O_CTIMEOUT },
        { "max-event", 1, NULL, O_MAXEV }, { "pub", 1, NULL, O_PUB },
        { "pub-url", 1, NULL, O_PUB_URL }, { "socket", 1, NULL, O_SOCKET },
        { "pub-conns", 1, NULL, O_PUB_CONNS },
        { "pipeline", 1, NULL, O_PIPELINE }, { "rate", 1, NULL, O_RATE },
        { "messages", 1, NULL, O_MESSAGES }, { "duration", 1, NULL, O_DURATION },
        { "size", 1, NULL, O_SIZE }, { "hold", 1, NULL, O_HOLD },
        { "warmup", 1, NULL, O_WARMUP }, { "settle", 1, NULL, O_SETTLE },
        { "timeout", 1, NULL, O_TIMEOUT }, { "watch-pid", 1, NULL, O_WATCH },
        { "tls", 0, NULL, O_TLS },
        { "tls-version", 1, NULL, O_TLS_VERSION },
        { "sub-port", 1, NULL, O_SUB_PORT },
        { "port2", 1, NULL, O_PORT2 }, { "socket2", 1, NULL, O_SOCKET2 },
        { "pub-alternate", 0, NULL, O_PUB_ALT },
        { "help", 0, NULL, O_HELP }, { NULL, 0, NULL, 0 }
    };
    const char *host = "127.0.0.1", *transport = "sse", *pub = "none";
    int accept_set = 0;
    opt.server = "nchan";
    opt.scenario = "custom";
    opt.channels = 1;
    opt.sub_url = "/sub/%s";
    opt.pub_url = "/pub/%s";
    opt.pub_conns = 1;
    opt.pipeline = 1;
    opt.size = 100;
    opt.concurrency = 200;
    opt.connect_timeout = 60;
    opt.max_buf = 65536;
    opt.warmup = 0.5;
    opt.settle = 5;
    opt.timeout = 300;
    int ch;
    while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (ch) {
        case O_HOST: host = optarg; break;
        case O_PORT: opt.port = (int)num_arg("port", optarg, 1, 65535); break;
        case O_SERVER: opt.server = optarg; break;
        case O_SCENARIO: opt.scenario = optarg; break;
        case O_SUBS: opt.subs = (long)num_arg("subs", optarg, 0, 5e6); break;
        case O_CHANNELS:
            opt.channels = (long)num_arg("channels", optarg, 1, 5e6);
            break;
        case O_PREFIX: opt.prefix = optarg; break;
        case O_TRANSPORT: transport = optarg; break;
        case O_SUB_URL: opt.sub_url = optarg; break;
        case O_ACCEPT: opt.accept = optarg; accept_set = 1; break;
        case O_HEADER: {
            size_t l = strlen(optarg);
            if (!strchr(optarg, ':') || strpbrk(optarg, "\r\n"))
                die("bad --header: %s", optarg);
            opt.headers = realloc(opt.headers, opt.headers_len + l + 3);
            if (!opt.headers)
                die("out of memory");
            memcpy(opt.headers + opt.headers_len, optarg, l);
            memcpy(opt.headers + opt.headers_len + l, "\r\n", 3);
            opt.headers_len += l + 2;
            break;
        }
        case O_CONC:
            opt.concurrency = (int)num_arg("concurrency", optarg, 1, 1e6);
            break;
        case O_CTIMEOUT:
            opt.connect_timeout = num_arg("connect-timeout", optarg, 0.1, 1e5);
            break;
        case O_MAXEV:
            opt.max_buf = (long)num_arg("max-event", optarg, 256, 1 << 26);
            break;
        case O_PUB: pub = optarg; break;
        case O_PUB_URL: opt.pub_url = optarg; break;
        case O_SOCKET: opt.socket_path = optarg; break;
        case O_PUB_CONNS:
            opt.pub_conns = (int)num_arg("pub-conns", optarg, 1, 100000);
            break;
        case O_PIPELINE:
            opt.pipeline = (int)num_arg("pipeline", optarg, 1, 4096);
            break;
        case O_RATE: opt.rate = num_arg("rate", optarg, 0, 1e8); break;
        case O_MESSAGES:
            opt.messages = (long)num_arg("messages", optarg, 0, 1e12);
            break;
        case O_DURATION: opt.duration = num_arg("duration", optarg, 0, 1e5); break;
        case O_SIZE: opt.size = (long)num_arg("size", optarg, 1, 1 << 24); break;
        case O_HOLD: opt.hold = num_arg("hold", optarg, 0, 1e5); break;
        case O_WARMUP: opt.warmup = num_arg("warmup", optarg, 0, 1e5); break;
        case O_SETTLE: opt.settle = num_arg("settle", optarg, 0, 1e5); break;
        case O_TIMEOUT: opt.timeout = num_arg("timeout", optarg, 0.1, 1e6); break;
        case O_WATCH:
            if (opt.nwatch == MAX_WATCH)
                die("too many --watch-pid");
            opt.watch[opt.nwatch++] = (pid_t)num_arg("watch-pid", optarg, 1, 1e9);
            break;
        case O_TLS: opt.tls = 1; break;
        case O_TLS_VERSION:
            opt.tls_version = (int)num_arg("tls-version", optarg, 2, 3);
            break;
        case O_SUB_PORT:
            opt.sub_port = (int)num_arg("sub-port", optarg, 1, 65535);
            break;
        case O_PORT2:
            opt.port2 = (int)num_arg("port2", optarg, 1, 65535);
            break;
        case O_SOCKET2: opt.socket_path2 = optarg; break;
        case O_PUB_ALT: opt.pub_alternate = 1; break;
        case O_HELP:
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            exit(1);
        }
    }
    if (optind < argc)
        die("unexpected argument: %s (see --help)", argv[optind]);

    if (strcmp(opt.server, "nchan") == 0)
        opt.dialect = D_NCHAN;
    else if (strcmp(opt.server, "comet") == 0)
        opt.dialect = D_COMET;
    else
        die("--server must be nchan or comet");
    if (strcmp(transport, "sse") == 0)
        opt.transport = T_SSE;
    else if (strcmp(transport, "longpoll") == 0)
        opt.transport = T_LONGPOLL;
    else if (strcmp(transport, "stream") == 0)
        opt.transport = T_STREAM;
    else if (strcmp(transport, "ws") == 0 || strcmp(transport, "websocket") == 0)
        opt.transport = T_WS;
    else if (strcmp(transport, "resp") == 0)
        opt.transport = T_RESP;
    else
        die("--transport must be sse, longpoll, stream, ws or resp");
    if (strcmp(pub, "none") == 0)
        opt.pub_mode = PUB_NONE;
    else if (strcmp(pub, "http") == 0)
        opt.pub_mode = PUB_HTTP;
    else if (strcmp(pub, "resp") == 0)
        opt.pub_mode = PUB_RESP;
    else if (strcmp(pub, "ws") == 0)
        opt.pub_mode = PUB_WS;
    else
        die("--pub must be http, resp, ws or none");
    if (!accept_set)
        opt.accept = opt.transport == T_SSE ? "text/event-stream"
                     : opt.transport == T_STREAM ? "application/x-ndjson"
                     : opt.transport == T_WS ? NULL
                     : opt.dialect == D_COMET ? "application/json" : NULL;
    if (!template_ok(opt.sub_url) || !template_ok(opt.pub_url))
        die("URL templates must start with '/', contain no spaces and only %%s");
    if ((opt.subs > 0 || opt.pub_mode == PUB_HTTP || opt.pub_mode == PUB_WS)
        && opt.port == 0)
        die("--port is required");
    if (opt.pub_mode == PUB_RESP || opt.transport == T_RESP) {
        struct sockaddr_un sun;
        if (!opt.socket_path || !*opt.socket_path)
            die("--pub resp and --transport resp need --socket PATH");
        if (strlen(opt.socket_path) >= sizeof sun.sun_path)
            die("--socket path too long");
    }
    if (opt.pub_mode == PUB_NONE && (opt.messages > 0 || opt.duration > 0))
        die("--messages/--duration need --pub http, resp or ws");
    if (opt.pub_mode == PUB_WS && opt.channels != opt.pub_conns)
        die("--pub ws: one WebSocket per channel (--pub-conns = --channels)");
    if (!opt.prefix) {
        snprintf(opt.prefix_buf, sizeof opt.prefix_buf, "b%ldx", (long)getpid());
        opt.prefix = opt.prefix_buf;
    }
    if (strlen(opt.prefix) > 64 || strpbrk(opt.prefix, " /?%#\r\n"))
        die("bad --prefix");
    parse_host(host);
    /* The subscribers' address: the same host, their own port. */
    opt.sub_addr = opt.addr;
    opt.sub_addrlen = opt.addrlen;
    if (opt.port2) {
        if (opt.tls)
            die("--port2 is for plain HTTP");
        opt.addr2 = opt.addr;
        opt.addrlen2 = opt.addrlen;
        if (opt.addr2.ss_family == AF_INET)
            ((struct sockaddr_in *)&opt.addr2)->sin_port =
                htons((uint16_t)opt.port2);
        else
            ((struct sockaddr_in6 *)&opt.addr2)->sin6_port =
                htons((uint16_t)opt.port2);
    }
    if (opt.socket_path2 && strlen(opt.socket_path2)
        >= sizeof(((struct sockaddr_un *)0)->sun_path))
        die("--socket2 path too long");
    if (opt.sub_port) {
        if (opt.sub_addr.ss_family == AF_INET)
            ((struct sockaddr_in *)&opt.sub_addr)->sin_port =
                htons((uint16_t)opt.sub_port);
        else
            ((struct sockaddr_in6 *)&opt.sub_addr)->sin6_port =
                htons((uint16_t)opt.sub_port);
    }
    if (opt.tls) {
        tls_ctx = SSL_CTX_new(TLS_client_method());
        if (!tls_ctx)
            die("cannot make a TLS context");
        SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL);
        /* Idle subscribers keep no record buffers: the client's memory
         * stays small at tens of thousands of connections. */
        SSL_CTX_set_mode(tls_ctx, SSL_MODE_RELEASE_BUFFERS
                         | SSL_MODE_ENABLE_PARTIAL_WRITE
                         | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        if (opt.tls_version == 2) {
            SSL_CTX_set_min_proto_version(tls_ctx, TLS1_2_VERSION);
            SSL_CTX_set_max_proto_version(tls_ctx, TLS1_2_VERSION);
        } else if (opt.tls_version == 3) {
            SSL_CTX_set_min_proto_version(tls_ctx, TLS1_3_VERSION);
        }
    }
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    raise_nofile(opt.subs + opt.pub_conns + 64);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1: %s", strerror(errno));
    subs = xmalloc(sizeof *subs * (size_t)(opt.subs ? opt.subs : 1));
    pubs = xmalloc(sizeof *pubs * (size_t)opt.pub_conns);
    retryq = xmalloc(sizeof *retryq * (size_t)(opt.subs + opt.pub_conns));
    ch_seq = xmalloc(sizeof *ch_seq * (size_t)opt.channels);
    ch_acked = xmalloc(sizeof *ch_acked * (size_t)opt.channels);
    ch_subs = xmalloc(sizeof *ch_subs * (size_t)opt.channels);
    evbuf = xmalloc((size_t)opt.max_buf + 1);
    for (long i = 0; i < opt.subs; i++) {
        subs[i].fd = -1;
        subs[i].kind = CK_SUB;
        subs[i].idx = (uint32_t)i;
        subs[i].chan = (uint32_t)(i % opt.channels);
    }
    for (int i = 0; i < opt.pub_conns; i++) {
        pubs[i].fd = -1;
        pubs[i].kind = CK_PUB;
        pubs[i].idx = (uint32_t)i;
        pubs[i].chan = (uint32_t)(i % opt.channels);
        pubs[i].inflight = xmalloc(sizeof *pubs[i].inflight * (size_t)opt.pipeline);
        pubs[i].inflight_seq = xmalloc(sizeof *pubs[i].inflight_seq * (size_t)opt.pipeline);
        pubs[i].inflight_t = xmalloc(sizeof *pubs[i].inflight_t * (size_t)opt.pipeline);
        pubs[i].inflight_tries = xmalloc((size_t)opt.pipeline);
    }

    st.t0 = now_ns();
    srv_sample(&st.s_base, 1);
    st.next_sample = opt.nwatch ? st.t0 + SAMPLE_EVERY_NS : 0;
    uint64_t deadline = st.t0 + sec_to_ns(opt.timeout);
    struct epoll_event evs[512];
    uint64_t now = st.t0;

    for (;;) {
        now = now_ns();
        if (got_signal) {
            st.interrupted = 1;
            break;
        }
        if (now >= deadline) {
            st.timed_out = 1;
            break;
        }
        if (st.next_sample && now >= st.next_sample) {
            srv_sample_t s;
            srv_sample(&s, 0);
            st.next_sample = now + SAMPLE_EVERY_NS;
        }
        if (nretry)
            run_retries(now);
        step(now);
        if (st.phase == P_DONE)
            break;
        int n = epoll_wait(epfd, evs, (int)(sizeof evs / sizeof evs[0]),
                           next_timeout_ms(now, deadline));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait: %s", strerror(errno));
        }
        now = now_ns();
        for (int i = 0; i < n; i++)
            on_event(evs[i].data.ptr, evs[i].events, now);
    }
    if (st.phase < P_HOLD)
        print_ready();                  /* never leave a waiting script hanging */
    srv_sample(&st.s_end, 1);
    now = now_ns();
    st.phase = P_DONE;
    for (int i = 0; i < opt.pub_conns; i++)
        st.pub_lost += pubs[i].resend_n;    /* never got to be sent again */
    report(now);
    for (long i = 0; i < opt.subs; i++)
        conn_close(&subs[i]);
    for (int i = 0; i < opt.pub_conns; i++)
        conn_close(&pubs[i]);
    for (long i = 0; i < opt.subs; i++) {
        free(subs[i].buf);
        free(subs[i].wbuf);
    }
    for (int i = 0; i < opt.pub_conns; i++) {
        free(pubs[i].buf);
        free(pubs[i].wbuf);
        free(pubs[i].inflight);
        free(pubs[i].inflight_seq);
        free(pubs[i].inflight_t);
        free(pubs[i].inflight_tries);
    }
    free(subs);
    free(pubs);
    free(retryq);
    free(ch_seq);
    free(ch_acked);
    free(ch_subs);
    free(evbuf);
    free(opt.headers);
    close(epfd);
    return st.timed_out || st.interrupted ? 3 : 0;
}
