/* A hostile guest for tests/jail_vm.rs: put where hull's agent goes (the
 * initramfs's /init), it misbehaves instead. Built by the test with
 * `gcc -static -DMODE=N`; one binary per misbehaviour:
 *   1 garbage   answers the host with a frame of an unknown kind
 *   2 huge      answers with a frame that claims a 4 GiB length
 *   3 silent    accepts the host's connection and never says anything
 *   4 flood     accepts, never answers, and floods the console
 * Each announces itself ready on the console as the agent does, so hull
 * connects; each then sleeps (or floods) forever: hull must end the run.
 */
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef MODE
#error "build with -DMODE=1..4"
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
    } else if (MODE == 4) {
        char line[128];
        memset(line, 'x', sizeof line - 1);
        line[sizeof line - 1] = '\n';
        for (;;) write_all(1, line, sizeof line);
    }
    for (;;) pause();
}
