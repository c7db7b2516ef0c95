// Shared library half of the DWARF unwinding test program (see dwarfchain.c). Built with
// `-O2 -fomit-frame-pointer -fPIC -shared`: no frame pointers anywhere.
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

// Keeps every call a real call with a return address on the stack: noinline, and work after each call
// so none becomes a tail call (a jump that would leave no frame).
#define AFTER_CALL() __asm__ volatile("" ::: "memory")

volatile uint64_t kiln_chain_sink;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

// Writes what the BPF program would capture at this point: registers, the process' maps, and the
// stack from sp up to the end of the [stack] mapping (at most 32 KiB). Layout: six little-endian u64
// (pid, ip, sp, bp, maps length, stack length), the maps text, the stack bytes.
__attribute__((noinline)) void kiln_capture(const char *path) {
    uint64_t ip, sp, bp;
    __asm__ volatile("lea 0(%%rip), %0\n\tmov %%rsp, %1\n\tmov %%rbp, %2" : "=r"(ip), "=r"(sp), "=r"(bp));
    static char maps[1 << 20];
    size_t maps_len = 0;
    int fd = open("/proc/self/maps", O_RDONLY);
    if (fd < 0)
        exit(3);
    ssize_t n;
    while ((n = read(fd, maps + maps_len, sizeof(maps) - maps_len)) > 0)
        maps_len += n;
    close(fd);
    // The end of the mapping holding sp.
    uint64_t stack_end = 0;
    for (char *line = maps; line < maps + maps_len;) {
        unsigned long start, end;
        if (sscanf(line, "%lx-%lx", &start, &end) == 2 && start <= sp && sp < end)
            stack_end = end;
        char *next = memchr(line, '\n', maps + maps_len - line);
        if (!next)
            break;
        line = next + 1;
    }
    if (stack_end == 0)
        exit(4);
    uint64_t stack_len = stack_end - sp;
    if (stack_len > 32768)
        stack_len = 32768;
    static unsigned char stack[32768];
    memcpy(stack, (void *)sp, stack_len);
    uint64_t header[6] = {(uint64_t)getpid(), ip, sp, bp, maps_len, stack_len};
    FILE *out = fopen(path, "wb");
    if (!out)
        exit(5);
    fwrite(header, sizeof(header), 1, out);
    fwrite(maps, 1, maps_len, out);
    fwrite(stack, 1, stack_len, out);
    fclose(out);
    AFTER_CALL();
}

// The leaf: burns CPU until `seconds` have passed (checking the clock rarely, so samples land here),
// or captures the stack.
__attribute__((noinline)) uint64_t chain_five(double seconds, const char *capture_path) {
    if (capture_path) {
        kiln_capture(capture_path);
        AFTER_CALL();
        return 1;
    }
    uint64_t x = 88172645463325252ULL;
    double start = now();
    while (now() - start < seconds) {
        for (int i = 0; i < 2000000; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        kiln_chain_sink = x;
    }
    AFTER_CALL();
    return x;
}

__attribute__((noinline)) uint64_t chain_three(uint64_t (*callback)(double, const char *), double seconds,
                                                const char *capture_path) {
    uint64_t result = callback(seconds, capture_path);
    AFTER_CALL();
    return result + 3;
}

__attribute__((noinline)) uint64_t chain_two(uint64_t (*callback)(double, const char *), double seconds,
                                              const char *capture_path) {
    uint64_t result = chain_three(callback, seconds, capture_path);
    AFTER_CALL();
    return result + 2;
}
