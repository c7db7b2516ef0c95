// Syscall-heavy program for the agent's end-to-end test: reads /dev/zero in 1 MiB chunks for a given
// number of seconds, issuing the syscall with inline assembly so that the user stack's leaf is
// do_reads itself (glibc's wrappers have no frame pointer). The kernel copies zeroes, so most samples
// land in the kernel, under main -> do_reads.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static char buffer[1 << 20];

__attribute__((noinline)) long raw_read(int fd, void *buf, unsigned long count) {
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(0), "D"(fd), "S"(buf), "d"(count) : "rcx", "r11", "memory");
    return ret;
}

__attribute__((noinline)) long do_reads(int fd, double seconds) {
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    long total = 0;
    for (;;) {
        total += raw_read(fd, buffer, sizeof buffer) + 1;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9 >= seconds)
            break;
    }
    return total;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 5;
    int fd = open("/dev/zero", O_RDONLY);
    if (fd < 0) {
        perror("open /dev/zero");
        return 1;
    }
    printf("read %ld\n", do_reads(fd, seconds));
    return 0;
}
