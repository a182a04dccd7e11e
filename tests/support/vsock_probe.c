/* Guest side of the virtio-vsock end-to-end tests (tests/vm_devices.rs).
 * Built by the test with `gcc -static` and put in the test initramfs.
 *
 *   vsock_probe stream PORT SIZE   accept one connection; read SIZE bytes,
 *                                  then write SIZE bytes of the shared
 *                                  pseudo-random stream, then one line with
 *                                  the FNV-1a hash of what was read
 *   vsock_probe echo PORT N        accept N connections, echo each until EOF
 *                                  (served concurrently, one child each)
 *   vsock_probe dial PORT TEXT     connect to the host (CID 2) port PORT and
 *                                  write TEXT
 */
#include <errno.h>
#include <inttypes.h>
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what) {
    fprintf(stderr, "vsock_probe: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int listen_on(unsigned port) {
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_port = port, .svm_cid = VMADDR_CID_ANY};
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (listen(fd, 64) < 0) die("listen");
    printf("vsock_probe: listening on %u\n", port);
    fflush(stdout);
    return fd;
}

static void write_all(int fd, const unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) die("write");
        p += w;
        n -= (size_t)w;
    }
}

/* The stream both sides generate: xorshift64 from a fixed seed. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static unsigned char next_byte(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (unsigned char)(rng_state >> 32);
}

static int stream(unsigned port, size_t size) {
    int l = listen_on(port);
    int c = accept(l, NULL, NULL);
    if (c < 0) die("accept");
    static unsigned char buf[1 << 16];
    uint64_t h = 0xcbf29ce484222325ull;
    size_t got = 0;
    while (got < size) {
        size_t want = size - got < sizeof buf ? size - got : sizeof buf;
        ssize_t r = read(c, buf, want);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) die("read");
        if (r == 0) break;
        for (ssize_t i = 0; i < r; i++) h = (h ^ buf[i]) * 0x100000001b3ull;
        got += (size_t)r;
    }
    for (size_t sent = 0; sent < size;) {
        size_t n = size - sent < sizeof buf ? size - sent : sizeof buf;
        for (size_t i = 0; i < n; i++) buf[i] = next_byte();
        write_all(c, buf, n);
        sent += n;
    }
    char line[64];
    int n = snprintf(line, sizeof line, "%zu %016" PRIx64 "\n", got, h);
    write_all(c, (unsigned char *)line, (size_t)n);
    /* write() returns once the kernel holds the bytes, not once the host has
       them: wait for the host to close its end before the caller reboots,
       or the tail of the stream dies with the guest. */
    shutdown(c, SHUT_WR);
    for (;;) {
        ssize_t r = read(c, buf, sizeof buf);
        if (r > 0 || (r < 0 && errno == EINTR)) continue;
        break;
    }
    close(c);
    printf("vsock_probe: stream read %zu bytes\n", got);
    return got == size ? 0 : 1;
}

static int echo(unsigned port, int conns) {
    int l = listen_on(port);
    for (int i = 0; i < conns; i++) {
        int c = accept(l, NULL, NULL);
        if (c < 0) die("accept");
        pid_t pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) {
            static unsigned char buf[1 << 16];
            for (;;) {
                ssize_t r = read(c, buf, sizeof buf);
                if (r < 0 && errno == EINTR) continue;
                if (r < 0) die("read");
                if (r == 0) break;
                write_all(c, buf, (size_t)r);
            }
            _exit(0);
        }
        close(c);
    }
    int failed = 0, status;
    while (wait(&status) > 0) failed |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    printf("vsock_probe: echoed %d connections%s\n", conns, failed ? " (some failed)" : "");
    return failed;
}

static int dial(unsigned port, const char *text) {
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_port = port, .svm_cid = VMADDR_CID_HOST};
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
    write_all(fd, (const unsigned char *)text, strlen(text));
    close(fd);
    printf("vsock_probe: dialed %u\n", port);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 4 && !strcmp(argv[1], "stream")) return stream((unsigned)atoi(argv[2]), strtoull(argv[3], NULL, 10));
    if (argc == 4 && !strcmp(argv[1], "echo")) return echo((unsigned)atoi(argv[2]), atoi(argv[3]));
    if (argc == 4 && !strcmp(argv[1], "dial")) return dial((unsigned)atoi(argv[2]), argv[3]);
    fprintf(stderr, "usage: vsock_probe stream PORT SIZE | echo PORT N | dial PORT TEXT\n");
    return 2;
}
