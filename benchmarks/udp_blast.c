/*
 * udp_blast: send small UDP datagrams at a target rate, for benchmarks/capture_cpu.py.
 *
 *   udp_blast SRC_IP DST_IP RATE_PPS SECONDS FLOWS PAYLOAD DST_PORT
 *
 * RATE_PPS 0 means as fast as possible. Datagrams go out of one raw IPv4 socket (IP_HDRINCL)
 * with source ports 20000..20000+FLOWS-1 in turn, so the traffic is FLOWS distinct flows, and
 * sendmmsg() sends them in small bursts (at most 100 us of traffic at the target rate, 64 at
 * most). The run is bounded by SECONDS and by RATE_PPS * SECONDS packets. On exit it prints
 * "sent N elapsed S" on stdout.
 *
 * Compiled at run time by capture_cpu.py (gcc -O2); run only inside a lab network namespace.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 64
#define BASE_SPORT 20000

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_until(double t) {
    struct timespec ts;
    ts.tv_sec = (time_t)t;
    ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR && !stop) {}
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: %s SRC_IP DST_IP RATE_PPS SECONDS FLOWS PAYLOAD DST_PORT\n", argv[0]);
        return 2;
    }
    struct in_addr src, dst;
    if (inet_pton(AF_INET, argv[1], &src) != 1 || inet_pton(AF_INET, argv[2], &dst) != 1) {
        fprintf(stderr, "bad address\n");
        return 2;
    }
    double rate = atof(argv[3]);
    double seconds = atof(argv[4]);
    int flows = atoi(argv[5]);
    int payload = atoi(argv[6]);
    int dport = atoi(argv[7]);
    if (seconds <= 0 || seconds > 600 || flows < 1 || flows > 40000 || payload < 0 || payload > 1400) {
        fprintf(stderr, "argument out of range\n");
        return 2;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);

    int fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
    if (fd < 0) {
        perror("socket");
        return 1;
    }
    int batch = MAX_BATCH;
    if (rate > 0) {
        batch = (int)(rate / 10000.0);
        if (batch < 1) batch = 1;
        if (batch > MAX_BATCH) batch = MAX_BATCH;
    }
    uint64_t limit = rate > 0 ? (uint64_t)(rate * seconds) : UINT64_MAX;

    size_t plen = sizeof(struct iphdr) + sizeof(struct udphdr) + (size_t)payload;
    static unsigned char bufs[MAX_BATCH][1500];
    struct iovec iov[MAX_BATCH];
    struct mmsghdr msgs[MAX_BATCH];
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_addr = dst};
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < MAX_BATCH; i++) {
        struct iphdr *ip = (struct iphdr *)bufs[i];
        struct udphdr *udp = (struct udphdr *)(bufs[i] + sizeof *ip);
        memset(bufs[i], 0, sizeof bufs[i]);
        ip->version = 4;
        ip->ihl = 5;
        ip->ttl = 64;
        ip->protocol = IPPROTO_UDP;
        ip->tot_len = htons((uint16_t)plen); /* the kernel fills tot_len, id and the checksum */
        ip->saddr = src.s_addr;
        ip->daddr = dst.s_addr;
        udp->dest = htons((uint16_t)dport);
        udp->len = htons((uint16_t)(sizeof *udp + (size_t)payload));
        udp->check = 0; /* no UDP checksum (allowed for IPv4) */
        memset(bufs[i] + sizeof *ip + sizeof *udp, 'k', (size_t)payload);
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = plen;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &to;
        msgs[i].msg_hdr.msg_namelen = sizeof to;
    }

    uint64_t sent = 0, errors = 0;
    double start = now(), end = start + seconds, t = start;
    while (!stop && sent < limit) {
        t = now();
        if (t >= end) break;
        int n = batch;
        if (rate > 0) {
            double due = start + (double)(sent + (uint64_t)n) / rate;
            if (due > t) {
                sleep_until(due < end ? due : end);
                continue;
            }
        }
        if ((uint64_t)n > limit - sent) n = (int)(limit - sent);
        for (int i = 0; i < n; i++) {
            struct udphdr *udp = (struct udphdr *)(bufs[i] + sizeof(struct iphdr));
            udp->source = htons((uint16_t)(BASE_SPORT + (int)((sent + (uint64_t)i) % (uint64_t)flows)));
        }
        int r = sendmmsg(fd, msgs, (unsigned)n, 0);
        if (r < 0) {
            if (errno == ENOBUFS || errno == EAGAIN || errno == EINTR) {
                errors++;
                continue;
            }
            perror("sendmmsg");
            break;
        }
        sent += (uint64_t)r;
    }
    double elapsed = now() - start;
    close(fd);
    printf("sent %llu elapsed %.6f errors %llu\n", (unsigned long long)sent, elapsed,
           (unsigned long long)errors);
    return 0;
}
