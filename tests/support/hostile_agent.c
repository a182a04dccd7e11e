/* A hostile guest for tests/jail_vm.rs: put where hull's agent goes (the
 * initramfs's /init), it misbehaves instead. Built by the test with
 * `gcc -static -DMODE=N`; one binary per misbehaviour:
 *   1 garbage   answers the host with a frame of an unknown kind
 *   2 huge      answers with a frame that claims a 4 GiB length
 *   3 silent    accepts the host's connection and never says anything
 *   4 flood     accepts, never answers, and floods the console
 *   5 tar       (tests/build_vm.rs) speaks the protocol as far as a build
 *               step's Exit, and sends as the step's changes a tar whose
 *               entry is named ../../escape
 * Each announces itself ready on the console as the agent does, so hull
 * connects; each then sleeps (or floods) forever: hull must end the run.
 */
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef MODE
#error "build with -DMODE=1..5"
#endif

#define AGENT_PORT 1024

static void write_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w <= 0) return;
        c += w;
        n -= (size_t)w;
    }
}

/* One frame: u32 big-endian length (kind + payload), kind, payload. */
static void frame(int fd, unsigned char kind, const void *p, size_t n) {
    unsigned char h[5] = {(unsigned char)((n + 1) >> 24), (unsigned char)((n + 1) >> 16),
                          (unsigned char)((n + 1) >> 8), (unsigned char)(n + 1), kind};
    write_all(fd, h, sizeof h);
    write_all(fd, p, n);
}

static void json(int fd, unsigned char kind, const char *s) { frame(fd, kind, s, strlen(s)); }

/* Reads and drops one frame (the host's Start). */
static void skip_frame(int fd) {
    unsigned char h[4];
    size_t got = 0;
    while (got < 4) {
        ssize_t r = read(fd, h + got, 4 - got);
        if (r <= 0) return;
        got += (size_t)r;
    }
    size_t n = ((size_t)h[0] << 24) | ((size_t)h[1] << 16) | ((size_t)h[2] << 8) | h[3];
    char buf[4096];
    while (n > 0) {
        ssize_t r = read(fd, buf, n < sizeof buf ? n : sizeof buf);
        if (r <= 0) return;
        n -= (size_t)r;
    }
}

/* A ustar tar of one 5-byte file named ../../escape, then the end blocks. */
static void escaping_tar(int fd) {
    static unsigned char t[2048];
    unsigned char *h = t;
    strcpy((char *)h, "../../escape");
    memcpy(h + 100, "0000644", 8);
    memcpy(h + 108, "0000000", 8);
    memcpy(h + 116, "0000000", 8);
    memcpy(h + 124, "00000000005", 12);
    memcpy(h + 136, "00000000000", 12);
    h[156] = '0';
    memcpy(h + 257, "ustar\0" "00", 8);
    memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < 512; i++) sum += h[i];
    snprintf((char *)h + 148, 8, "%06o", sum);
    memcpy(t + 512, "owned", 5);
    frame(fd, 13, t, sizeof t);
}

int main(void) {
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_port = AGENT_PORT, .svm_cid = VMADDR_CID_ANY};
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 4) < 0) {
        perror("hostile_agent: vsock");
        for (;;) pause();
    }
    /* What hull waits for on the console (hull_agent::protocol::READY_LINE). */
    printf("hull-agent: ready\n");
    fflush(stdout);
    int c = accept(fd, NULL, NULL);
    if (MODE == 1) {
        static const unsigned char garbage[] = {0, 0, 0, 5, 0xee, 'j', 'u', 'n', 'k'};
        write_all(c, garbage, sizeof garbage);
    } else if (MODE == 2) {
        static const unsigned char huge[] = {0xff, 0xff, 0xff, 0xff, 1, '{', '}'};
        write_all(c, huge, sizeof huge);
    } else if (MODE == 5) {
        json(c, 1, "{\"version\":1,\"marks\":{\"agent_start_ms\":0,\"rootfs_ms\":0,\"ready_ms\":0}}");
        skip_frame(c);
        json(c, 11, "{\"pid\":2,\"at_ms\":0}");
        escaping_tar(c);
        json(c, 9, "{\"code\":0,\"signal\":null,\"reason\":null,\"at_ms\":0}");
    } else if (MODE == 4) {
        char line[128];
        memset(line, 'x', sizeof line - 1);
        line[sizeof line - 1] = '\n';
        for (;;) write_all(1, line, sizeof line);
    }
    for (;;) pause();
}
