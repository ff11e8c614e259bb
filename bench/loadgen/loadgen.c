/*
 * loadgen.c - single-threaded epoll WebSocket fan-out load generator.
 *
 * Opens N TCP connections to 127.0.0.1:PORT, performs the WebSocket
 * handshake for one of three protocol modes, then reads frames and counts
 * "bench" messages, computing publish-to-receive latency from the "t" field
 * (integer ns since the epoch, CLOCK_REALTIME) carried by every message.
 *
 * Modes:
 *   livepush  GET /rest/push?pushRef=..&token=..&channels=workflow:bench
 *   plain     GET /ws                        (node ws peer, bare aiohttp peer)
 *   socketio  GET /socket.io/?EIO=4&transport=websocket, then "40" connect
 *
 * Output: JSON lines on stdout.  {"event":"ready",...} once every connection
 * attempt has finished (connected or failed), and {"event":"report",...} at
 * exit.  With --control, commands are read from stdin, one per line:
 *   stat    -> {"event":"stat",...}    cheap counters (for closed-loop publishers)
 *   reset   -> {"event":"reset",...}   zero all measurement state
 *   report  -> {"event":"report",...}  full statistics since the last reset
 *   quit    -> final report and exit
 *
 * Build: gcc -O2 -Wall -o loadgen loadgen.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { M_LIVEPUSH, M_PLAIN, M_SOCKETIO };
enum { S_NEW, S_CONNECTING, S_HANDSHAKE, S_EIO_OPEN, S_EIO_NS, S_OPEN, S_CLOSED, S_FAILED };

#define RBUF_SIZE (256 * 1024)
#define MAX_FRAME (64u * 1024u * 1024u)
#define HANDSHAKE_TIMEOUT_NS (15LL * 1000000000LL)
#define STDIN_TAG UINT32_MAX

/* latency histogram: log-linear over microseconds, ~0.1% relative precision */
#define SUB_BITS 10
#define SUB (1 << SUB_BITS)
#define HIST_BUCKETS (SUB * 46)

typedef struct {
    int fd;
    uint8_t state;
    uint8_t frag_op;
    uint8_t want_out;
    char *buf; /* unparsed inbound bytes */
    uint32_t len, cap;
    char *frag; /* fragmented message assembly */
    uint32_t flen, fcap;
    char *out; /* pending outbound bytes (rare) */
    uint32_t olen, ocap;
    uint32_t bench; /* bench messages since last reset */
    int64_t last_seq;
    int64_t started_ns;
} conn_t;

/* options */
static int opt_port = 0;
static int opt_conns = 100;
static int opt_mode = M_PLAIN;
static const char *opt_mode_name = "plain";
static const char *opt_token = "";
static const char *opt_channels = "workflow:bench";
static const char *opt_host = "127.0.0.1";
static const char *opt_origin = "";
static double opt_duration = 60.0;
static double opt_ramp = 0.0; /* new connections per second, 0 = unlimited */
static int opt_batch = 200;   /* max concurrent handshakes in progress */
static long opt_expect = 0;
static int opt_idle = 0;
static int opt_control = 0;
static int opt_coalesce_us = 0; /* sleep after a light epoll round so events batch up */

/* state */
static conn_t *conns;
static int epfd;
static char *rbuf;
static volatile sig_atomic_t stop_flag = 0;
static int next_conn = 0, pending = 0, n_connected = 0, n_failed = 0, n_closed = 0;
static int ready_printed = 0;
static int64_t t_start_ns, t_ready_ns;
static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;
static char ctl_buf[4096];
static size_t ctl_len = 0;
static int ctl_eof = 0;

/* measurement state (reset by "reset") */
static uint64_t hist[HIST_BUCKETS];
static uint64_t lat_count, lat_sum_us, lat_max_us, lat_min_us;
static uint64_t m_frames, m_bench, m_bytes, m_no_ts, m_out_of_order, m_pings, m_reads, m_wakeups;
static uint64_t expect_done;
static int64_t m_first_ns, m_last_ns, m_reset_ns;
static struct rusage ru_reset, ru_first, ru_last, ru_iter_pre;
static int iter_got_bench;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double ru_secs(const struct rusage *a, const struct rusage *b, int sys) {
    const struct timeval *x = sys ? &a->ru_stime : &a->ru_utime;
    const struct timeval *y = sys ? &b->ru_stime : &b->ru_utime;
    return (double)(y->tv_sec - x->tv_sec) + (double)(y->tv_usec - x->tv_usec) / 1e6;
}

static uint64_t xorshift(void) {
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static inline uint32_t hist_index(uint64_t v) {
    if (v < 2 * SUB) return (uint32_t)v;
    int mag = 63 - __builtin_clzll(v);
    int shift = mag - SUB_BITS;
    uint64_t idx = (uint64_t)(shift + 1) * SUB + (v >> shift) - SUB;
    return idx >= HIST_BUCKETS ? HIST_BUCKETS - 1 : (uint32_t)idx;
}

static inline double hist_value(uint32_t idx) {
    if (idx < 2 * SUB) return (double)idx;
    int shift = (int)(idx / SUB) - 1;
    uint64_t base = ((uint64_t)(idx % SUB) + SUB) << shift;
    return (double)base + (double)(1ULL << shift) / 2.0;
}

static double hist_quantile(double q) {
    if (lat_count == 0) return -1;
    uint64_t target = (uint64_t)(q * (double)lat_count);
    if (target >= lat_count) target = lat_count - 1;
    uint64_t acc = 0;
    for (uint32_t i = 0; i < HIST_BUCKETS; i++) {
        acc += hist[i];
        if (acc > target) {
            double v = hist_value(i);
            if (v > (double)lat_max_us) v = (double)lat_max_us;
            if (v < (double)lat_min_us) v = (double)lat_min_us;
            return v;
        }
    }
    return (double)lat_max_us;
}

static void reset_stats(void) {
    memset(hist, 0, sizeof(hist));
    lat_count = lat_sum_us = lat_max_us = 0;
    lat_min_us = UINT64_MAX;
    m_frames = m_bench = m_bytes = m_no_ts = m_out_of_order = m_pings = m_reads = m_wakeups = 0;
    expect_done = 0;
    m_first_ns = m_last_ns = 0;
    m_reset_ns = now_ns();
    getrusage(RUSAGE_SELF, &ru_reset);
    ru_first = ru_last = ru_reset;
    for (int i = 0; i < opt_conns; i++) conns[i].bench = 0;
}

/* ------------------------------------------------------------------ output */

static void print_report(const char *event) {
    int64_t t = now_ns();
    struct rusage ru_now;
    getrusage(RUSAGE_SELF, &ru_now);
    double window = m_last_ns > m_first_ns ? (double)(m_last_ns - m_first_ns) / 1e9 : 0.0;
    double rate = window > 0 ? (double)m_bench / window : 0.0;
    double w_user = ru_secs(&ru_first, &ru_last, 0), w_sys = ru_secs(&ru_first, &ru_last, 1);
    double t_user = ru_secs(&ru_reset, &ru_now, 0), t_sys = ru_secs(&ru_reset, &ru_now, 1);
    double since_reset = (double)(t - m_reset_ns) / 1e9;
    uint32_t min_pc = UINT32_MAX, max_pc = 0;
    int open = 0;
    for (int i = 0; i < opt_conns; i++) {
        if (conns[i].state != S_OPEN) continue;
        open++;
        if (conns[i].bench < min_pc) min_pc = conns[i].bench;
        if (conns[i].bench > max_pc) max_pc = conns[i].bench;
    }
    if (open == 0) min_pc = 0;
    printf("{\"event\":\"%s\",\"mode\":\"%s\",\"conns_target\":%d,\"connected\":%d,"
           "\"failed\":%d,\"closed\":%d,\"open\":%d,\"connect_s\":%.3f,"
           "\"frames\":%llu,\"bytes\":%llu,\"reads\":%llu,\"epoll_wakeups\":%llu,"
           "\"bench_msgs\":%llu,\"pings\":%llu,"
           "\"no_ts\":%llu,\"out_of_order\":%llu,\"per_conn_min\":%u,\"per_conn_max\":%u,"
           "\"first_recv_ns\":%lld,\"last_recv_ns\":%lld,\"window_s\":%.6f,"
           "\"msgs_per_s\":%.1f,",
           event, opt_mode_name, opt_conns, n_connected, n_failed, n_closed, open,
           t_ready_ns ? (double)(t_ready_ns - t_start_ns) / 1e9 : -1.0,
           (unsigned long long)m_frames, (unsigned long long)m_bytes,
           (unsigned long long)m_reads, (unsigned long long)m_wakeups, (unsigned long long)m_bench, (unsigned long long)m_pings,
           (unsigned long long)m_no_ts, (unsigned long long)m_out_of_order, min_pc, max_pc,
           (long long)m_first_ns, (long long)m_last_ns, window, rate);
    printf("\"lat_ms\":{\"samples\":%llu,\"min\":%.3f,\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,"
           "\"p999\":%.3f,\"max\":%.3f,\"mean\":%.3f},",
           (unsigned long long)lat_count, lat_count ? (double)lat_min_us / 1000.0 : -1.0,
           hist_quantile(0.50) / 1000.0, hist_quantile(0.90) / 1000.0,
           hist_quantile(0.99) / 1000.0, hist_quantile(0.999) / 1000.0,
           lat_count ? (double)lat_max_us / 1000.0 : -1.0,
           lat_count ? (double)lat_sum_us / (double)lat_count / 1000.0 : -1.0);
    printf("\"cpu\":{\"window_user_s\":%.4f,\"window_sys_s\":%.4f,\"window_pct\":%.1f,"
           "\"total_user_s\":%.4f,\"total_sys_s\":%.4f,\"since_reset_s\":%.3f,"
           "\"total_pct\":%.1f,\"maxrss_kb\":%ld}}\n",
           w_user, w_sys, window > 0 ? 100.0 * (w_user + w_sys) / window : 0.0, t_user, t_sys,
           since_reset, since_reset > 0 ? 100.0 * (t_user + t_sys) / since_reset : 0.0,
           ru_now.ru_maxrss);
    fflush(stdout);
}

static void print_stat(void) {
    printf("{\"event\":\"stat\",\"connected\":%d,\"failed\":%d,\"closed\":%d,"
           "\"bench_msgs\":%llu,\"frames\":%llu,\"first_recv_ns\":%lld,\"last_recv_ns\":%lld,"
           "\"now_ns\":%lld}\n",
           n_connected, n_failed, n_closed, (unsigned long long)m_bench,
           (unsigned long long)m_frames, (long long)m_first_ns, (long long)m_last_ns,
           (long long)now_ns());
    fflush(stdout);
}

static void maybe_ready(void) {
    if (ready_printed || n_connected + n_failed < opt_conns) return;
    ready_printed = 1;
    t_ready_ns = now_ns();
    printf("{\"event\":\"ready\",\"connected\":%d,\"failed\":%d,\"connect_s\":%.3f}\n",
           n_connected, n_failed, (double)(t_ready_ns - t_start_ns) / 1e9);
    fflush(stdout);
}

/* --------------------------------------------------------------- connections */

static void buf_append(char **b, uint32_t *len, uint32_t *cap, const char *d, uint32_t n) {
    if (*len + n > *cap) {
        uint32_t nc = *cap ? *cap : 1024;
        while (nc < *len + n) nc *= 2;
        char *nb = realloc(*b, nc);
        if (!nb) {
            perror("realloc");
            exit(2);
        }
        *b = nb;
        *cap = nc;
    }
    memcpy(*b + *len, d, n);
    *len += n;
}

static void conn_free_bufs(conn_t *c) {
    free(c->buf);
    free(c->frag);
    free(c->out);
    c->buf = c->frag = c->out = NULL;
    c->len = c->cap = c->flen = c->fcap = c->olen = c->ocap = 0;
}

static void conn_close(conn_t *c, int new_state) {
    if (c->fd >= 0) {
        struct linger lg = {1, 0}; /* RST on close: no TIME_WAIT pile-up between runs */
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        close(c->fd);
        c->fd = -1;
    }
    int was = c->state;
    c->state = (uint8_t)new_state;
    conn_free_bufs(c);
    if (was == S_OPEN) {
        n_closed++;
    } else if (was >= S_CONNECTING && was < S_OPEN) {
        pending--;
        if (new_state == S_FAILED) n_failed++;
    }
    maybe_ready();
}

static void update_events(conn_t *c, int idx) {
    struct epoll_event ev = {0};
    ev.events = EPOLLIN | EPOLLRDHUP | EPOLLET | (c->want_out ? EPOLLOUT : 0);
    ev.data.u32 = (uint32_t)idx;
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static int conn_write(conn_t *c, int idx, const char *d, uint32_t n) {
    if (c->olen == 0) {
        ssize_t w = write(c->fd, d, n);
        if (w == (ssize_t)n) return 0;
        if (w < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
            w = 0;
        }
        d += w;
        n -= (uint32_t)w;
    }
    buf_append(&c->out, &c->olen, &c->ocap, d, n);
    if (!c->want_out) {
        c->want_out = 1;
        update_events(c, idx);
    }
    return 0;
}

static int flush_out(conn_t *c, int idx) {
    while (c->olen > 0) {
        ssize_t w = write(c->fd, c->out, c->olen);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            return -1;
        }
        memmove(c->out, c->out + w, c->olen - (uint32_t)w);
        c->olen -= (uint32_t)w;
    }
    if (c->want_out) {
        c->want_out = 0;
        update_events(c, idx);
    }
    return 0;
}

/* send one masked client frame */
static int send_frame(conn_t *c, int idx, int opcode, const char *payload, uint32_t n) {
    char hdr[14 + 125];
    char *big = NULL;
    char *f = hdr;
    uint32_t hl;
    if (n > 125) {
        big = malloc(14 + n);
        if (!big) return -1;
        f = big;
    }
    f[0] = (char)(0x80 | opcode);
    if (n < 126) {
        f[1] = (char)(0x80 | n);
        hl = 2;
    } else if (n < 65536) {
        f[1] = (char)(0x80 | 126);
        f[2] = (char)(n >> 8);
        f[3] = (char)(n & 0xff);
        hl = 4;
    } else {
        f[1] = (char)(0x80 | 127);
        uint64_t n64 = n;
        for (int i = 0; i < 8; i++) f[2 + i] = (char)(n64 >> (56 - 8 * i));
        hl = 10;
    }
    uint32_t key = (uint32_t)xorshift();
    unsigned char mk[4] = {key & 0xff, (key >> 8) & 0xff, (key >> 16) & 0xff, key >> 24};
    memcpy(f + hl, mk, 4);
    hl += 4;
    for (uint32_t i = 0; i < n; i++) f[hl + i] = (char)(payload[i] ^ mk[i & 3]);
    int r = conn_write(c, idx, f, hl + n);
    free(big);
    return r;
}

static int start_connect(int idx) {
    conn_t *c = &conns[idx];
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        c->state = S_FAILED;
        n_failed++;
        maybe_ready();
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)opt_port);
    inet_pton(AF_INET, opt_host, &sa.sin_addr);
    c->fd = fd;
    c->state = S_CONNECTING;
    c->started_ns = now_ns();
    c->last_seq = -1;
    pending++;
    int r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    if (r < 0 && errno != EINPROGRESS) {
        conn_close(c, S_FAILED);
        return -1;
    }
    struct epoll_event ev = {0};
    ev.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP | EPOLLET;
    ev.data.u32 = (uint32_t)idx;
    c->want_out = 1;
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    return 0;
}

static void send_handshake(conn_t *c, int idx) {
    char path[4096], req[8192], origin[512] = "";
    int n;
    if (opt_mode == M_LIVEPUSH) {
        n = snprintf(path, sizeof(path), "/rest/push?pushRef=lg%d-%d&token=%s&channels=%s",
                     (int)getpid(), idx, opt_token, opt_channels);
    } else if (opt_mode == M_SOCKETIO) {
        n = snprintf(path, sizeof(path), "/socket.io/?EIO=4&transport=websocket");
    } else {
        n = snprintf(path, sizeof(path), "/ws");
    }
    if (opt_origin[0]) snprintf(origin, sizeof(origin), "Origin: %s\r\n", opt_origin);
    if (n > 0 && n < (int)sizeof(path))
        n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\n%sSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     path, opt_host, opt_port, origin);
    if (n <= 0 || n >= (int)sizeof(req)) {
        conn_close(c, S_FAILED);
        return;
    }
    c->state = S_HANDSHAKE;
    if (conn_write(c, idx, req, (uint32_t)n) < 0) conn_close(c, S_FAILED);
}

static void mark_open(conn_t *c) {
    c->state = S_OPEN;
    pending--;
    n_connected++;
    maybe_ready();
}

/* --------------------------------------------------------------- messages */

static inline int64_t parse_int_after(const char *d, uint32_t n, const char *key, size_t klen,
                                      int *ok) {
    const char *p = memmem(d, n, key, klen);
    *ok = 0;
    if (!p) return 0;
    p += klen;
    const char *end = d + n;
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    int64_t v = 0;
    int digits = 0;
    while (p < end && *p >= '0' && *p <= '9') {
        v = v * 10 + (*p - '0');
        p++;
        digits++;
    }
    *ok = digits > 0;
    return v;
}

static void on_bench(conn_t *c, const char *d, uint32_t n, int64_t t_recv) {
    m_bench++;
    c->bench++;
    if (opt_expect > 0 && c->bench == (uint32_t)opt_expect) expect_done++;
    if (m_first_ns == 0) {
        m_first_ns = t_recv;
        ru_first = ru_iter_pre;
    }
    m_last_ns = t_recv;
    iter_got_bench = 1;
    int ok;
    int64_t t = parse_int_after(d, n, "\"t\":", 4, &ok);
    if (!ok) {
        m_no_ts++;
    } else {
        int64_t lat = t_recv - t;
        uint64_t us = lat > 0 ? (uint64_t)(lat / 1000) : 0;
        hist[hist_index(us)]++;
        lat_count++;
        lat_sum_us += us;
        if (us > lat_max_us) lat_max_us = us;
        if (us < lat_min_us) lat_min_us = us;
    }
    int64_t seq = parse_int_after(d, n, "\"seq\":", 6, &ok);
    if (ok) {
        if (seq <= c->last_seq) m_out_of_order++;
        c->last_seq = seq;
    }
}

/* does the JSON object have "type" : "bench" (any whitespace around the colon)? */
static int is_bench_type(const char *d, uint32_t n) {
    const char *p = d, *end = d + n;
    while (p < end) {
        const char *k = memmem(p, (size_t)(end - p), "\"type\"", 6);
        if (!k) return 0;
        const char *v = k + 6;
        while (v < end && (*v == ' ' || *v == '\t' || *v == '\n' || *v == '\r')) v++;
        if (v < end && *v == ':') {
            v++;
            while (v < end && (*v == ' ' || *v == '\t' || *v == '\n' || *v == '\r')) v++;
            if (end - v >= 7 && memcmp(v, "\"bench\"", 7) == 0) return 1;
        }
        p = k + 6;
    }
    return 0;
}

/* returns -1 if the connection must be closed */
static int on_message(conn_t *c, int idx, const char *d, uint32_t n, int64_t t_recv) {
    if (opt_mode == M_SOCKETIO) {
        if (c->state == S_EIO_OPEN) {
            if (n >= 1 && d[0] == '0') {
                c->state = S_EIO_NS;
                return send_frame(c, idx, 0x1, "40", 2);
            }
            return 0;
        }
        if (c->state == S_EIO_NS) {
            if (n >= 2 && d[0] == '4' && d[1] == '0') {
                mark_open(c);
            } else if (n >= 2 && d[0] == '4' && d[1] == '4') {
                return -1; /* connect_error */
            }
            return 0;
        }
        if (n == 1 && d[0] == '2') {
            m_pings++;
            return send_frame(c, idx, 0x1, "3", 1);
        }
        if (n >= 10 && d[0] == '4' && d[1] == '2' && memmem(d, n < 16 ? n : 16, "\"bench\"", 7))
            on_bench(c, d, n, t_recv);
        return 0;
    }
    if (is_bench_type(d, n)) on_bench(c, d, n, t_recv);
    return 0;
}

/* parse as many complete frames as possible; returns bytes consumed or -1 */
static long parse_frames(conn_t *c, int idx, char *p, uint32_t avail, int64_t t_recv) {
    uint32_t off = 0;
    while (avail - off >= 2) {
        unsigned char *h = (unsigned char *)p + off;
        int fin = h[0] & 0x80;
        int op = h[0] & 0x0f;
        int masked = h[1] & 0x80;
        uint64_t plen = h[1] & 0x7f;
        uint32_t hl = 2;
        if (plen == 126) {
            if (avail - off < 4) break;
            plen = ((uint64_t)h[2] << 8) | h[3];
            hl = 4;
        } else if (plen == 127) {
            if (avail - off < 10) break;
            plen = 0;
            for (int i = 0; i < 8; i++) plen = (plen << 8) | h[2 + i];
            hl = 10;
        }
        if (plen > MAX_FRAME) return -1;
        uint32_t mhl = hl + (masked ? 4 : 0);
        if ((uint64_t)(avail - off) < mhl + plen) break;
        char *payload = p + off + mhl;
        uint32_t n = (uint32_t)plen;
        if (masked) {
            unsigned char *mk = h + hl;
            for (uint32_t i = 0; i < n; i++) payload[i] ^= (char)mk[i & 3];
        }
        off += mhl + n;
        m_frames++;
        switch (op) {
        case 0x9: /* ping -> pong with the same payload */
            m_pings++;
            if (send_frame(c, idx, 0xA, payload, n) < 0) return -1;
            break;
        case 0xA:
            break;
        case 0x8: {
            char code[2] = {0x03, (char)0xE8}; /* 1000 */
            send_frame(c, idx, 0x8, n >= 2 ? payload : code, 2);
            return -1;
        }
        case 0x1:
        case 0x2:
            if (fin) {
                if (on_message(c, idx, payload, n, t_recv) < 0) return -1;
            } else {
                c->flen = 0;
                c->frag_op = (uint8_t)op;
                buf_append(&c->frag, &c->flen, &c->fcap, payload, n);
            }
            break;
        case 0x0:
            buf_append(&c->frag, &c->flen, &c->fcap, payload, n);
            if (fin) {
                int r = on_message(c, idx, c->frag, c->flen, t_recv);
                c->flen = 0;
                if (r < 0) return -1;
            }
            break;
        default:
            return -1;
        }
        if (c->state == S_CLOSED || c->state == S_FAILED) return -1;
    }
    return off;
}

static int handle_handshake(conn_t *c, int idx, int64_t t_recv) {
    char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (!end) return c->len > 16384 ? -1 : 0;
    if (c->len < 12 || memcmp(c->buf + 9, "101", 3) != 0) return -1;
    uint32_t hdr = (uint32_t)(end - c->buf) + 4;
    memmove(c->buf, c->buf + hdr, c->len - hdr);
    c->len -= hdr;
    if (opt_mode == M_SOCKETIO) {
        c->state = S_EIO_OPEN;
    } else {
        mark_open(c);
    }
    if (c->len > 0) {
        long used = parse_frames(c, idx, c->buf, c->len, t_recv);
        if (used < 0) return -1;
        memmove(c->buf, c->buf + used, c->len - (uint32_t)used);
        c->len -= (uint32_t)used;
    }
    return 0;
}

static void on_readable(conn_t *c, int idx) {
    for (;;) {
        ssize_t r = read(c->fd, rbuf, RBUF_SIZE);
        if (r == 0) {
            conn_close(c, c->state == S_OPEN ? S_CLOSED : S_FAILED);
            return;
        }
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            if (errno == EINTR) continue;
            conn_close(c, c->state == S_OPEN ? S_CLOSED : S_FAILED);
            return;
        }
        int64_t t_recv = now_ns();
        m_bytes += (uint64_t)r;
        m_reads++;

        if (c->state == S_HANDSHAKE) {
            buf_append(&c->buf, &c->len, &c->cap, rbuf, (uint32_t)r);
            if (handle_handshake(c, idx, t_recv) < 0) {
                conn_close(c, c->state == S_OPEN ? S_CLOSED : S_FAILED);
                return;
            }
        } else if (c->len > 0) {
            buf_append(&c->buf, &c->len, &c->cap, rbuf, (uint32_t)r);
            long used = parse_frames(c, idx, c->buf, c->len, t_recv);
            if (used < 0) {
                conn_close(c, c->state == S_OPEN ? S_CLOSED : S_FAILED);
                return;
            }
            memmove(c->buf, c->buf + used, c->len - (uint32_t)used);
            c->len -= (uint32_t)used;
        } else {
            long used = parse_frames(c, idx, rbuf, (uint32_t)r, t_recv);
            if (used < 0) {
                conn_close(c, c->state == S_OPEN ? S_CLOSED : S_FAILED);
                return;
            }
            if ((uint32_t)used < (uint32_t)r)
                buf_append(&c->buf, &c->len, &c->cap, rbuf + used, (uint32_t)r - (uint32_t)used);
        }
        /* edge-triggered: a short read means the socket was drained; data arriving later
         * raises a new edge.  A full buffer means there may be more: read again. */
        if (r < RBUF_SIZE) return;
    }
}

static void on_event(int idx, uint32_t events) {
    conn_t *c = &conns[idx];
    if (c->fd < 0) return;
    if (c->state == S_CONNECTING) {
        if (events & (EPOLLERR | EPOLLHUP)) {
            conn_close(c, S_FAILED);
            return;
        }
        if (events & EPOLLOUT) {
            int err = 0;
            socklen_t el = sizeof(err);
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
            if (err) {
                conn_close(c, S_FAILED);
                return;
            }
            c->want_out = 0;
            update_events(c, idx);
            send_handshake(c, idx);
        }
        return;
    }
    if ((events & EPOLLOUT) && flush_out(c, idx) < 0) {
        conn_close(c, c->state == S_OPEN ? S_CLOSED : S_FAILED);
        return;
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) on_readable(c, idx);
}

/* ------------------------------------------------------------------ control */

static void handle_command(const char *line) {
    if (strcmp(line, "stat") == 0) {
        print_stat();
    } else if (strcmp(line, "reset") == 0) {
        reset_stats();
        printf("{\"event\":\"reset\",\"now_ns\":%lld}\n", (long long)m_reset_ns);
        fflush(stdout);
    } else if (strcmp(line, "report") == 0) {
        print_report("report");
    } else if (strcmp(line, "quit") == 0) {
        stop_flag = 1;
    } else if (line[0]) {
        printf("{\"event\":\"error\",\"message\":\"unknown command\"}\n");
        fflush(stdout);
    }
}

static void on_stdin(void) {
    ssize_t r = read(0, ctl_buf + ctl_len, sizeof(ctl_buf) - 1 - ctl_len);
    if (r <= 0) {
        if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
            ctl_eof = 1; /* harness went away: stop */
            stop_flag = 1;
            epoll_ctl(epfd, EPOLL_CTL_DEL, 0, NULL);
        }
        return;
    }
    ctl_len += (size_t)r;
    ctl_buf[ctl_len] = 0;
    char *start = ctl_buf, *nl;
    while ((nl = memchr(start, '\n', ctl_len - (size_t)(start - ctl_buf)))) {
        *nl = 0;
        if (nl > start && nl[-1] == '\r') nl[-1] = 0;
        handle_command(start);
        start = nl + 1;
    }
    ctl_len -= (size_t)(start - ctl_buf);
    memmove(ctl_buf, start, ctl_len);
    if (ctl_len >= sizeof(ctl_buf) - 1) ctl_len = 0;
}

/* --------------------------------------------------------------------- main */

static void on_signal(int sig) {
    (void)sig;
    stop_flag = 1;
}

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s --port P [--conns N] [--mode livepush|plain|socketio] [--token JWT]\n"
            "          [--channels C] [--duration S] [--ramp CPS] [--batch B] [--expect K]\n"
            "          [--idle] [--control] [--host 127.0.0.1] [--origin URL] [--coalesce-us US]\n",
            argv0);
}

int main(int argc, char **argv) {
    static struct option longopts[] = {
        {"port", required_argument, 0, 'p'},     {"conns", required_argument, 0, 'n'},
        {"mode", required_argument, 0, 'm'},     {"token", required_argument, 0, 't'},
        {"channels", required_argument, 0, 'c'}, {"duration", required_argument, 0, 'd'},
        {"ramp", required_argument, 0, 'r'},     {"batch", required_argument, 0, 'b'},
        {"expect", required_argument, 0, 'e'},   {"idle", no_argument, 0, 'i'},
        {"control", no_argument, 0, 'C'},        {"host", required_argument, 0, 'H'},
        {"origin", required_argument, 0, 'O'},   {"coalesce-us", required_argument, 0, 'W'},
        {"help", no_argument, 0, 'h'},           {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "p:n:m:t:c:d:r:b:e:iCH:O:W:h", longopts, NULL)) != -1) {
        switch (o) {
        case 'p': opt_port = atoi(optarg); break;
        case 'n': opt_conns = atoi(optarg); break;
        case 'm':
            opt_mode_name = optarg;
            if (!strcmp(optarg, "livepush")) opt_mode = M_LIVEPUSH;
            else if (!strcmp(optarg, "plain")) opt_mode = M_PLAIN;
            else if (!strcmp(optarg, "socketio")) opt_mode = M_SOCKETIO;
            else {
                usage(argv[0]);
                return 2;
            }
            break;
        case 't': opt_token = optarg; break;
        case 'c': opt_channels = optarg; break;
        case 'd': opt_duration = atof(optarg); break;
        case 'r': opt_ramp = atof(optarg); break;
        case 'b': opt_batch = atoi(optarg); break;
        case 'e': opt_expect = atol(optarg); break;
        case 'i': opt_idle = 1; break;
        case 'C': opt_control = 1; break;
        case 'H': opt_host = optarg; break;
        case 'O': opt_origin = optarg; break;
        case 'W': opt_coalesce_us = atoi(optarg); break;
        default: usage(argv[0]); return o == 'h' ? 0 : 2;
        }
    }
    if (opt_port <= 0 || opt_conns <= 0 || opt_batch <= 0 || opt_duration <= 0) {
        usage(argv[0]);
        return 2;
    }
    if (opt_idle) opt_expect = 0;

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rlim_t want = (rlim_t)opt_conns + 64;
    if (rl.rlim_cur < want) {
        rl.rlim_cur = want < rl.rlim_max ? want : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < want)
        fprintf(stderr, "loadgen: warning: RLIMIT_NOFILE %llu < %llu needed\n",
                (unsigned long long)rl.rlim_cur, (unsigned long long)want);

    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    rng_state ^= (uint64_t)now_ns() ^ ((uint64_t)getpid() << 32);

    conns = calloc((size_t)opt_conns, sizeof(conn_t));
    rbuf = malloc(RBUF_SIZE);
    if (!conns || !rbuf) {
        perror("alloc");
        return 2;
    }
    for (int i = 0; i < opt_conns; i++) conns[i].fd = -1;
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (opt_control) {
        fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = STDIN_TAG};
        epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev);
    }

    t_start_ns = now_ns();
    reset_stats();
    int64_t deadline = t_start_ns + (int64_t)(opt_duration * 1e9);
    int64_t last_scan = t_start_ns;
    struct epoll_event events[1024];

    while (!stop_flag) {
        int64_t t = now_ns();
        if (t >= deadline) break;
        /* start new connections, respecting the concurrency cap and ramp rate */
        while (next_conn < opt_conns && pending < opt_batch) {
            if (opt_ramp > 0) {
                double allowed = (double)(t - t_start_ns) / 1e9 * opt_ramp + 1;
                if ((double)next_conn >= allowed) break;
            }
            start_connect(next_conn++);
        }
        /* time out stuck handshakes */
        if (pending > 0 && t - last_scan > 250000000LL) {
            last_scan = t;
            for (int i = 0; i < next_conn; i++) {
                conn_t *c = &conns[i];
                if (c->state >= S_CONNECTING && c->state < S_OPEN &&
                    t - c->started_ns > HANDSHAKE_TIMEOUT_NS)
                    conn_close(c, S_FAILED);
            }
        }
        int timeout = (next_conn < opt_conns || pending > 0) ? 10 : 200;
        int n = epoll_wait(epfd, events, 1024, timeout);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("epoll_wait");
            break;
        }
        getrusage(RUSAGE_SELF, &ru_iter_pre);
        iter_got_bench = 0;
        if (n > 0) m_wakeups++;
        for (int i = 0; i < n; i++) {
            if (events[i].data.u32 == STDIN_TAG) {
                on_stdin();
                continue;
            }
            on_event((int)events[i].data.u32, events[i].events);
        }
        if (iter_got_bench) getrusage(RUSAGE_SELF, &ru_last);
        if (opt_coalesce_us > 0 && n > 0 && n < 256 && ready_printed) {
            struct timespec ts = {0, (long)opt_coalesce_us * 1000L};
            nanosleep(&ts, NULL);
        }
        if (opt_expect > 0 && ready_printed && n_connected > 0 &&
            expect_done >= (uint64_t)(n_connected - n_closed))
            break;
        if (!opt_control && !opt_idle && ready_printed && n_connected - n_closed <= 0 &&
            opt_expect > 0)
            break;
    }
    maybe_ready();
    print_report("report");
    for (int i = 0; i < opt_conns; i++)
        if (conns[i].fd >= 0) conn_close(&conns[i], S_CLOSED);
    return 0;
}
