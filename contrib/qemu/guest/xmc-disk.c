/*
 * xmc-disk.c - the guest's disk workload of contrib/qemu/run-guest.sh, and the
 * host's check of the disk images: one program, so both sides generate the
 * very same bytes.
 *
 *   xmc-disk write  DEVICE SEED BYTES   write the pattern with O_DIRECT
 *   xmc-disk verify DEVICE SEED BYTES   read it back with O_DIRECT, compare
 *   xmc-disk check  IMAGE  SEED BYTES   the same compare, buffered (the host)
 *
 * The pattern: 8-byte little-endian words, word i of seed s being
 * splitmix64(s << 40 ^ i), so that any chunk can be generated on its own.
 * Prints "<verb> <DEVICE>: <BYTES> bytes ok" and exits 0, or names the first
 * byte that differs and exits 1 (2 for a usage or I/O error).  Built static
 * (gcc -static) for the guest's busybox initramfs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK (1u << 20) /* one request of 1 MiB: scatter-gather over guest pages */
#define ALIGN 4096

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static void fill(uint8_t *buf, uint64_t seed, uint64_t offset, size_t n)
{
    for (size_t k = 0; k < n; k += 8) {
        uint64_t w = splitmix64(seed << 40 ^ ((offset + k) / 8));

        for (int b = 0; b < 8; b++)
            buf[k + b] = (uint8_t)(w >> (8 * b));
    }
}

static int usage(void)
{
    fprintf(stderr, "usage: xmc-disk write|verify|check DEVICE SEED BYTES\n");
    return 2;
}

int main(int argc, char **argv)
{
    uint8_t *buf, *want;
    uint64_t seed, bytes;
    int fd, writing, direct;

    if (argc != 5)
        return usage();
    writing = strcmp(argv[1], "write") == 0;
    direct = writing || strcmp(argv[1], "verify") == 0;
    if (!direct && strcmp(argv[1], "check") != 0)
        return usage();
    seed = strtoull(argv[3], NULL, 0);
    bytes = strtoull(argv[4], NULL, 0);
    if (bytes == 0 || bytes % CHUNK)
        return usage();
    if (posix_memalign((void **)&buf, ALIGN, CHUNK) || posix_memalign((void **)&want, ALIGN, CHUNK))
        return 2;
    fd = open(argv[2], (writing ? O_WRONLY : O_RDONLY) | (direct ? O_DIRECT : 0));
    if (fd < 0) {
        fprintf(stderr, "%s: %s\n", argv[2], strerror(errno));
        return 2;
    }
    for (uint64_t off = 0; off < bytes; off += CHUNK) {
        ssize_t n;

        fill(want, seed, off, CHUNK);
        if (writing) {
            n = pwrite(fd, want, CHUNK, (off_t)off);
        } else {
            n = pread(fd, buf, CHUNK, (off_t)off);
        }
        if (n != (ssize_t)CHUNK) {
            fprintf(stderr, "%s: %s at %" PRIu64 ": %s\n", argv[2], argv[1], off,
                    n < 0 ? strerror(errno) : "short transfer");
            return 2;
        }
        if (!writing && memcmp(buf, want, CHUNK) != 0) {
            size_t i = 0;

            while (buf[i] == want[i])
                i++;
            fprintf(stderr, "%s: byte %" PRIu64 " is 0x%02x, not 0x%02x\n", argv[2], off + i,
                    buf[i], want[i]);
            printf("%s %s: MISMATCH\n", argv[1], argv[2]);
            return 1;
        }
    }
    if (writing && fsync(fd) != 0) {
        fprintf(stderr, "%s: fsync: %s\n", argv[2], strerror(errno));
        return 2;
    }
    close(fd);
    printf("%s %s: %" PRIu64 " bytes ok\n", argv[1], argv[2], bytes);
    return 0;
}
