/*
 * emulator_legacy.c - a tiny Xen device model on xenmapcache, written against
 * QEMU's mapcache calls before QEMU 9.1 (XMC_QEMU_LEGACY_API); emulator.c is
 * the same device model on today's calls, with grant mappings.
 *
 * It plays the part of QEMU in a Xen guest's life, through QEMU's own mapcache
 * calls (xenmapcache_qemu.h): the VGA card maps its video RAM for good
 * (locked, not DMA), the disk model copies sectors into guest memory through a
 * locked DMA mapping, the CPU emulation peeks at guest memory through
 * transient mappings, and in the middle of the transfer the hypervisor asks
 * for every mapping to be dropped (after ballooning the guest).  The disk
 * transfer then completes and the data is checked in guest RAM.
 *
 * Guest RAM is the library's memfd backend; on a real Xen host the same code
 * runs over xmc_xen_new(domid, ...) instead.  Exit status 0 when all is well.
 *
 * Build (after `make -C csrc`), from the repository root:
 *   cc -std=c11 -Icsrc examples/emulator_legacy.c csrc/libxenmapcache.a -pthread -ldl -o emulator
 * or against an installed library:
 *   cc examples/emulator_legacy.c $(pkg-config --cflags --libs xenmapcache) -o emulator
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xenmapcache.h"
#define XMC_QEMU_LEGACY_API 1 /* QEMU's mapcache calls before 9.1 */
#include "xenmapcache_qemu.h"

#define MIB (UINT64_C(1) << 20)
#define GUEST_RAM (64 * MIB)
#define MMIO_HOLE_START (48 * MIB) /* PCI BARs live here: not RAM */
#define MMIO_HOLE_END (56 * MIB)
#define VRAM (32 * MIB)
#define VRAM_SIZE (4 * MIB)
#define SECTOR 512
#define DISK_SECTORS 64

/* What the hypervisor and the guest ask of the device model. */
enum request_kind { VGA_INIT, DISK_READ_START, CPU_PEEK, INVALIDATE, DISK_READ_DONE, MMIO_PROBE };

struct request {
    enum request_kind kind;
    hwaddr paddr;
    hwaddr size;
};

struct device_model {
    xmc_ram *ram;
    xmc_cache *cache;
    uint8_t *vram;        /* [a] device memory, locked for good */
    uint8_t *dma_buf;     /* [b] the disk transfer in flight */
    hwaddr dma_paddr;
    hwaddr dma_size;
    uint8_t disk[DISK_SECTORS * SECTOR]; /* the disk image */
    int failures;
};

static void check(struct device_model *dm, bool ok, const char *what)
{
    printf("  %-58s %s\n", what, ok ? "ok" : "FAILED");
    if (!ok)
        dm->failures++;
}

static void handle(struct device_model *dm, const struct request *rq)
{
    switch (rq->kind) {
    case VGA_INIT:
        /* Device memory: locked, dma = false; it stays across invalidations. */
        dm->vram = xen_map_cache(rq->paddr, rq->size, 1, false);
        check(dm, dm->vram != NULL, "VGA: video RAM mapped (locked, device memory)");
        if (dm->vram)
            memcpy(dm->vram, "Hello from the VGA card", 24);
        break;
    case DISK_READ_START:
        /* DMA: locked, dma = true; half of the sectors land before the pause. */
        dm->dma_buf = xen_map_cache(rq->paddr, rq->size, 1, true);
        dm->dma_paddr = rq->paddr;
        dm->dma_size = rq->size;
        check(dm, dm->dma_buf != NULL, "disk: DMA buffer mapped (locked, DMA)");
        if (dm->dma_buf)
            memcpy(dm->dma_buf, dm->disk, rq->size / 2);
        check(dm, xen_ram_addr_from_mapcache(dm->dma_buf) == rq->paddr,
              "disk: the DMA pointer maps back to its guest address");
        break;
    case CPU_PEEK: {
        /* Transient: unlocked, size 0 = one bucket; valid until the next call. */
        uint8_t *p = xen_map_cache(rq->paddr, 0, 0, false);

        check(dm, p != NULL && xen_ram_addr_from_mapcache(p + 100) == rq->paddr + 100,
              "CPU: a transient mapping, and an interior pointer back");
        break;
    }
    case INVALIDATE: {
        /*
         * QEMU's xen_invalidate_map_cache() would drop the list of DMA
         * mappings in flight; the native call hands it back to warn about.
         */
        xmc_record *in_flight = NULL;
        size_t n = 0;
        xmc_stats st;
        int rc = xmc_invalidate(dm->cache, &in_flight, &n);

        check(dm, rc == XMC_OK, "invalidate: every unlocked mapping dropped");
        for (size_t i = 0; i < n; i++)
            printf("  warning: DMA mapping of guest [0x%llx, +0x%llx) in flight across the "
                   "invalidation\n",
                   (unsigned long long)in_flight[i].paddr,
                   (unsigned long long)in_flight[i].size);
        check(dm, n == 1 && in_flight[0].paddr == dm->dma_paddr,
              "invalidate: exactly the disk transfer is reported");
        xmc_records_free(in_flight);
        check(dm, xmc_stats_get(dm->cache, &st) == XMC_OK && st.locked == 2 && st.entries == 2,
              "invalidate: VGA and DMA entries kept, nothing else");
        check(dm, dm->vram && memcmp(dm->vram, "Hello from the VGA card", 24) == 0,
              "invalidate: video RAM intact, no warning for it");
        break;
    }
    case DISK_READ_DONE: {
        uint8_t *check_buf = (uint8_t *)malloc(dm->dma_size);

        if (dm->dma_buf)
            memcpy(dm->dma_buf + dm->dma_size / 2, dm->disk + dm->dma_size / 2,
                   dm->dma_size / 2);
        xen_invalidate_map_cache_entry(dm->dma_buf); /* unlock */
        dm->dma_buf = NULL;
        check(dm, check_buf && xmc_ram_read(dm->ram, dm->dma_paddr, check_buf, dm->dma_size) ==
                                   XMC_OK && memcmp(check_buf, dm->disk, dm->dma_size) == 0,
              "disk: transfer complete, sectors verified in guest RAM");
        free(check_buf);
        xen_invalidate_map_cache(); /* no DMA in flight now: a quiet one */
        break;
    }
    case MMIO_PROBE:
        check(dm, xen_map_cache(rq->paddr, 4, 0, false) == NULL,
              "MMIO hole: not RAM, the map fails cleanly");
        check(dm, xen_ram_addr_from_mapcache(dm->disk) == RAM_ADDR_INVALID,
              "a pointer outside the cache is RAM_ADDR_INVALID");
        break;
    }
}

int main(void)
{
    static struct device_model dm;
    const struct request script[] = {
        { VGA_INIT, VRAM, VRAM_SIZE },
        { DISK_READ_START, 0x123400, DISK_SECTORS * SECTOR },
        { CPU_PEEK, 0x2654320, 0 },
        { INVALIDATE, 0, 0 },
        { CPU_PEEK, 0x200000, 0 },
        { DISK_READ_DONE, 0, 0 },
        { MMIO_PROBE, MMIO_HOLE_START + 0x1000, 0 },
    };
    int rc;

    for (size_t i = 0; i < sizeof(dm.disk); i++)
        dm.disk[i] = (uint8_t)(i * 7 + i / SECTOR);
    rc = xmc_ram_new(GUEST_RAM, &dm.ram);
    if (rc == XMC_OK)
        rc = xmc_ram_add_hole(dm.ram, MMIO_HOLE_START, MMIO_HOLE_END);
    if (rc == XMC_OK)
        rc = xmc_cache_new(xmc_ram_backend(dm.ram), 0, 0, &dm.cache);
    if (rc != XMC_OK) {
        fprintf(stderr, "emulator: cannot set up guest memory: %s\n", xmc_strerror(rc));
        xmc_ram_free(dm.ram);
        return 1;
    }
    xen_map_cache_use(dm.cache);
    printf("device model for a 64 MiB guest, MMIO hole at [0x%llx, 0x%llx)\n",
           (unsigned long long)MMIO_HOLE_START, (unsigned long long)MMIO_HOLE_END);
    for (size_t i = 0; i < sizeof(script) / sizeof(script[0]); i++)
        handle(&dm, &script[i]);

    xen_invalidate_map_cache_entry(dm.vram); /* the VGA card goes away */
    {
        xmc_stats st;

        check(&dm, xmc_stats_get(dm.cache, &st) == XMC_OK && st.locked == 0,
              "shutdown: no locked mapping left");
    }
    xen_map_cache_use(NULL);
    xmc_cache_free(dm.cache);
    xmc_ram_free(dm.ram);
    printf("emulator_legacy: %s\n", dm.failures ? "FAILED" : "OK");
    return dm.failures ? 1 : 0;
}
