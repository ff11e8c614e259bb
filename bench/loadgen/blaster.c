/*
 * blaster.c - loadgen calibration source (not a contender).
 *
 * Accepts N WebSocket connections on 127.0.0.1:PORT (answers any upgrade request with 101,
 * no validation), then writes K "bench" text frames to every connection as fast as the
 * kernel accepts them: one write() per frame per socket, exactly like a server fanning out
 * one message at a time.  Each round's frame carries "t" (CLOCK_REALTIME ns) and "seq".
 * Used by bench/run.py to measure how many messages per second the load generator can
 * receive on its core - its ceiling - so we can show the servers stay well below it.
 *
 *   blaster --port P --conns N --msgs K [--timeout S]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void on_alarm(int sig) {
    (void)sig;
    const char msg[] = "{\"event\":\"blaster\",\"error\":\"timeout\"}\n";
    ssize_t r = write(1, msg, sizeof(msg) - 1);
    (void)r;
    _exit(3);
}

int main(int argc, char **argv) {
    int port = 0, conns = 0, timeout_s = 120;
    long msgs = 0;
    static struct option lo[] = {{"port", required_argument, 0, 'p'},
                                 {"conns", required_argument, 0, 'n'},
                                 {"msgs", required_argument, 0, 'k'},
                                 {"timeout", required_argument, 0, 'T'},
                                 {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "p:n:k:T:", lo, NULL)) != -1) {
        if (o == 'p') port = atoi(optarg);
        else if (o == 'n') conns = atoi(optarg);
        else if (o == 'k') msgs = atol(optarg);
        else if (o == 'T') timeout_s = atoi(optarg);
        else return 2;
    }
    if (port <= 0 || conns <= 0 || msgs <= 0) {
        fprintf(stderr, "usage: blaster --port P --conns N --msgs K [--timeout S]\n");
        return 2;
    }
    signal(SIGALRM, on_alarm);
    signal(SIGPIPE, SIG_IGN);
    alarm((unsigned)timeout_s);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);

    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(ls, 4096) < 0) {
        perror("bind/listen");
        return 1;
    }
    printf("{\"event\":\"listening\",\"port\":%d}\n", port);
    fflush(stdout);

    int *fds = calloc((size_t)conns, sizeof(int));
    char req[8192];
    const char resp[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n";
    for (int i = 0; i < conns; i++) {
        int fd = accept(ls, NULL, NULL);
        if (fd < 0) {
            perror("accept");
            return 1;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        size_t got = 0;
        while (!memmem(req, got, "\r\n\r\n", 4)) {
            ssize_t r = read(fd, req + got, sizeof(req) - got);
            if (r <= 0 || got + (size_t)r >= sizeof(req)) {
                fprintf(stderr, "bad handshake\n");
                return 1;
            }
            got += (size_t)r;
        }
        if (write(fd, resp, sizeof(resp) - 1) != (ssize_t)(sizeof(resp) - 1)) return 1;
        fds[i] = fd;
    }
    usleep(500000);

    char frame[256];
    int64_t t0 = now_ns();
    long writes = 0;
    for (long seq = 1; seq <= msgs; seq++) {
        int n = snprintf(frame + 2, sizeof(frame) - 2,
                         "{\"type\":\"bench\",\"data\":{\"t\":%lld,\"seq\":%ld}}",
                         (long long)now_ns(), seq);
        frame[0] = (char)0x81;
        frame[1] = (char)n;
        for (int i = 0; i < conns; i++) {
            if (write(fds[i], frame, (size_t)n + 2) == n + 2) writes++;
        }
    }
    int64_t t1 = now_ns();
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"event\":\"blaster\",\"writes\":%ld,\"elapsed_s\":%.4f,\"writes_per_s\":%.1f,"
           "\"cpu_s\":%.3f}\n",
           writes, (double)(t1 - t0) / 1e9, (double)writes * 1e9 / (double)(t1 - t0),
           (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
               (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
    fflush(stdout);
    usleep(2000000); /* let the loadgen drain before closing */
    for (int i = 0; i < conns; i++) close(fds[i]);
    return 0;
}
