// DWARF unwinding test program: a PIE executable and a shared library (dwarfchain_lib.c), both built
// with `-O2 -fomit-frame-pointer`, calling 5 deep across the library boundary and back:
//   main -> chain_one (exe) -> chain_two (lib) -> chain_three (lib) -> chain_four (exe, a callback)
//        -> chain_five (lib, the leaf that burns CPU)
//
//   dwarfchain spin SECONDS     burn CPU in chain_five for SECONDS
//   dwarfchain capture FILE     write registers, maps and stack at chain_five (unit tests)
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AFTER_CALL() __asm__ volatile("" ::: "memory")

uint64_t chain_two(uint64_t (*callback)(double, const char *), double seconds, const char *capture_path);
uint64_t chain_five(double seconds, const char *capture_path);
extern volatile uint64_t kiln_chain_sink;

__attribute__((noinline)) static uint64_t chain_four(double seconds, const char *capture_path) {
    uint64_t result = chain_five(seconds, capture_path);
    AFTER_CALL();
    return result + 4;
}

__attribute__((noinline)) static uint64_t chain_one(double seconds, const char *capture_path) {
    uint64_t result = chain_two(chain_four, seconds, capture_path);
    AFTER_CALL();
    return result + 1;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: dwarfchain spin SECONDS | capture FILE\n");
        return 2;
    }
    uint64_t result;
    if (strcmp(argv[1], "capture") == 0)
        result = chain_one(0, argv[2]);
    else
        result = chain_one(atof(argv[2]), NULL);
    AFTER_CALL();
    kiln_chain_sink = result;
    return 0;
}
