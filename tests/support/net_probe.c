/* The peer of tests/bench/net.py: a TCP server on port 5001 that, per
 * connection, takes one command byte:
 *   'U'  receive until EOF, then answer the byte count (8 bytes, big endian)
 *   'D'  then 4 bytes of milliseconds (big endian): send for that long, close
 *   'P'  echo every byte back at once (1-byte ping-pong) until EOF
 *   'Q'  exit 0
 * Built static; runs as a guest's program or in a network namespace. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int read_full(int fd, void *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static char buf[1 << 16];

static void serve(int c) {
    char cmd;
    if (read_full(c, &cmd, 1) < 0) return;
    if (cmd == 'U') {
        uint64_t total = 0;
        ssize_t r;
        while ((r = read(c, buf, sizeof buf)) > 0 || (r < 0 && errno == EINTR))
            if (r > 0) total += (uint64_t)r;
        unsigned char out[8];
        for (int i = 0; i < 8; i++) out[i] = (unsigned char)(total >> (56 - 8 * i));
        if (write(c, out, 8) != 8) perror("net_probe: answer");
    } else if (cmd == 'D') {
        unsigned char ms[4];
        if (read_full(c, ms, 4) < 0) return;
        double secs = ((uint32_t)ms[0] << 24 | ms[1] << 16 | ms[2] << 8 | ms[3]) / 1000.0;
        double end = now() + secs;
        while (now() < end)
            if (write(c, buf, sizeof buf) < 0 && errno != EINTR) return;
    } else if (cmd == 'P') {
        int one = 1;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        char b;
        while (read_full(c, &b, 1) == 0)
            if (write(c, &b, 1) != 1) return;
    } else if (cmd == 'Q') {
        close(c);
        _exit(0);
    }
}

int main(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(5001)};
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 4) < 0) {
        perror("net_probe: listen");
        return 1;
    }
    memset(buf, 'x', sizeof buf);
    fprintf(stderr, "net_probe: listening\n");
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        serve(c);
        close(c);
    }
}
