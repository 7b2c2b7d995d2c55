/*
 * emulator.c - a tiny Xen device model on xenmapcache, through QEMU's
 * mapcache calls of today (QEMU 9.1 and later, xenmapcache_qemu.h).
 *
 * It plays the part of QEMU in a Xen guest's life: the VGA card maps its
 * video RAM for good (locked, not DMA), the disk model copies sectors into
 * guest memory through a locked DMA mapping, the CPU emulation peeks at guest
 * memory through transient mappings, and in the middle of the transfer the
 * hypervisor asks for every mapping to be dropped (after ballooning the
 * guest).  Meanwhile a virtio block device serves a request from a ring the
 * guest shared by grant references: it maps the ring read-only and the data
 * buffer read-write, through the grant caches, and unmaps both when done.
 *
 * Guest RAM is the library's memfd backend, and so are the granted pages
 * (page r standing for grant reference r) under the grant rules; on a real
 * Xen host the same code runs over xmc_xen_new(domid, ...) and two
 * xmc_gnttab_open(domid, writable, ...) instead.  Exit status 0 when all is
 * well.  emulator_legacy.c is the same device model on the pre-2024 calls.
 *
 * Build (after `make -C csrc`), from the repository root:
 *   cc -std=c11 -Icsrc examples/emulator.c csrc/libxenmapcache.a -pthread -ldl -o emulator
 * or against an installed library:
 *   cc examples/emulator.c $(pkg-config --cflags --libs xenmapcache) -o emulator
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xenmapcache.h"
#include "xenmapcache_qemu.h"

#define MIB (UINT64_C(1) << 20)
#define PAGE 4096
#define GUEST_RAM (64 * MIB)
#define MMIO_HOLE_START (48 * MIB) /* PCI BARs live here: not RAM */
#define MMIO_HOLE_END (56 * MIB)
#define VRAM (32 * MIB)
#define VRAM_SIZE (4 * MIB)
#define SECTOR 512
#define DISK_SECTORS 64
#define GRANTED_PAGES 64 /* the pages the guest shares with the virtio device */
#define RING_REF 10      /* the grant reference of the virtio ring */
#define BUFFER_REF 11    /* ... and of the data buffer it describes */

/*
 * QEMU tells requests apart by MemoryRegion: requests on the grant region
 * are grant references.  Only the addresses matter here.
 */
static char ram_block, grant_block;
#define RAM_REGION ((MemoryRegion *)(void *)&ram_block)
#define GRANT_REGION ((MemoryRegion *)(void *)&grant_block)
/* Where the grant region's RAM block sits in QEMU's ram_addr space. */
#define GRANT_BLOCK_OFFSET (UINT64_C(1) << 40)

/* A virtio-style descriptor, as the guest writes it into the ring page. */
struct descriptor {
    uint32_t buffer_ref; /* grant reference of the buffer */
    uint32_t len;
    uint32_t sector;
    uint32_t status; /* written by the device: 1 = done */
};

enum request_kind { VGA_INIT, DISK_READ_START, CPU_PEEK, INVALIDATE, VIRTIO_KICK,
                    DISK_READ_DONE, MMIO_PROBE };

struct request {
    enum request_kind kind;
    hwaddr paddr;
    hwaddr size;
};

struct device_model {
    xmc_ram *ram;
    xmc_ram *granted; /* the guest's granted pages: page r is grant reference r */
    uint8_t *vram;    /* [a] device memory, locked for good */
    uint8_t *dma_buf; /* [b] the disk transfer in flight */
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

/* A foreign-memory request: ram_addr_offset and is_write play no part. */
static uint8_t *map_ram(hwaddr paddr, hwaddr size, uint8_t lock, bool dma)
{
    return xen_map_cache(RAM_REGION, paddr, size, 0, lock, dma, true);
}

/* A grant request: page p of the grant region is grant reference p. */
static uint8_t *map_grant(uint32_t ref, hwaddr size, bool is_write)
{
    return xen_map_cache(GRANT_REGION, GRANT_BLOCK_OFFSET + (hwaddr)ref * PAGE, size,
                         GRANT_BLOCK_OFFSET, 1, true, is_write);
}

static uint64_t live_entries(unsigned which)
{
    xmc_stats st;

    return xmc_stats_get(xmc_qemu_cache(which), &st) == XMC_OK ? st.entries : UINT64_MAX;
}

static void virtio_kick(struct device_model *dm)
{
    struct descriptor d;
    uint8_t *ring, *buffer;

    check(dm, xen_map_cache(GRANT_REGION, GRANT_BLOCK_OFFSET + RING_REF * PAGE, sizeof(d),
                            GRANT_BLOCK_OFFSET, 0, false, false) == NULL,
          "virtio: an unlocked grant request fails, maps nothing");
    ring = map_grant(RING_REF, sizeof(d), false); /* read-only: the device reads the ring */
    if (!ring) {
        check(dm, false, "virtio: ring mapped read-only");
        return;
    }
    memcpy(&d, ring, sizeof(d));
    buffer = map_grant(d.buffer_ref, d.len, true); /* read-write: the device fills it */
    check(dm, buffer != NULL && live_entries(XMC_QEMU_GRANTS_RO) == 1 &&
                  live_entries(XMC_QEMU_GRANTS_RW) == 1,
          "virtio: ring read-only, buffer read-write, by grant");
    check(dm, xen_ram_addr_from_mapcache(ring) == GRANT_BLOCK_OFFSET + RING_REF * PAGE,
          "virtio: a grant pointer maps back to its ram address");
    if (buffer)
        memcpy(buffer, dm->disk + (size_t)d.sector * SECTOR, d.len);
    xen_invalidate_map_cache_entry(buffer);
    xen_invalidate_map_cache_entry(ring);
    check(dm, live_entries(XMC_QEMU_GRANTS_RO) == 0 && live_entries(XMC_QEMU_GRANTS_RW) == 0,
          "virtio: done; both grants unmapped at their last unlock");
}

static void handle(struct device_model *dm, const struct request *rq)
{
    switch (rq->kind) {
    case VGA_INIT:
        /* Device memory: locked, dma = false; it stays across invalidations. */
        dm->vram = map_ram(rq->paddr, rq->size, 1, false);
        check(dm, dm->vram != NULL, "VGA: video RAM mapped (locked, device memory)");
        if (dm->vram)
            memcpy(dm->vram, "Hello from the VGA card", 24);
        break;
    case DISK_READ_START:
        /* DMA: locked, dma = true; half of the sectors land before the pause. */
        dm->dma_buf = map_ram(rq->paddr, rq->size, 1, true);
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
        uint8_t *p = map_ram(rq->paddr, 0, 0, false);

        check(dm, p != NULL && xen_ram_addr_from_mapcache(p + 100) == rq->paddr + 100,
              "CPU: a transient mapping, and an interior pointer back");
        break;
    }
    case INVALIDATE: {
        /*
         * QEMU's xen_invalidate_map_cache() only traces the DMA mappings in
         * flight; the native call on the foreign cache hands them back.
         */
        xmc_record *in_flight = NULL;
        size_t n = 0;
        xmc_stats st;
        int rc = xmc_invalidate(xmc_qemu_cache(XMC_QEMU_FOREIGN), &in_flight, &n);

        check(dm, rc == XMC_OK, "invalidate: every unlocked mapping dropped");
        for (size_t i = 0; i < n; i++)
            printf("  warning: DMA mapping of guest [0x%llx, +0x%llx) in flight across the "
                   "invalidation\n",
                   (unsigned long long)in_flight[i].paddr,
                   (unsigned long long)in_flight[i].size);
        check(dm, n == 1 && in_flight[0].paddr == dm->dma_paddr,
              "invalidate: exactly the disk transfer is reported");
        xmc_records_free(in_flight);
        check(dm, xmc_stats_get(xmc_qemu_cache(XMC_QEMU_FOREIGN), &st) == XMC_OK &&
                      st.locked == 2 && st.entries == 2,
              "invalidate: VGA and DMA entries kept, nothing else");
        check(dm, dm->vram && memcmp(dm->vram, "Hello from the VGA card", 24) == 0,
              "invalidate: video RAM intact, no warning for it");
        break;
    }
    case VIRTIO_KICK:
        virtio_kick(dm);
        break;
    case DISK_READ_DONE: {
        uint8_t *check_buf = (uint8_t *)malloc(dm->dma_size);
        uint8_t sector[SECTOR];

        if (dm->dma_buf)
            memcpy(dm->dma_buf + dm->dma_size / 2, dm->disk + dm->dma_size / 2,
                   dm->dma_size / 2);
        xen_invalidate_map_cache_entry(dm->dma_buf); /* unlock */
        dm->dma_buf = NULL;
        check(dm, check_buf && xmc_ram_read(dm->ram, dm->dma_paddr, check_buf, dm->dma_size) ==
                                   XMC_OK && memcmp(check_buf, dm->disk, dm->dma_size) == 0,
              "disk: transfer complete, sectors verified in guest RAM");
        free(check_buf);
        check(dm, xmc_ram_read(dm->granted, (uint64_t)BUFFER_REF * PAGE, sector, SECTOR) ==
                          XMC_OK && memcmp(sector, dm->disk + 3 * SECTOR, SECTOR) == 0,
              "virtio: sector 3 verified in the granted buffer");
        xen_invalidate_map_cache(); /* no DMA in flight now: a quiet one */
        break;
    }
    case MMIO_PROBE:
        check(dm, map_ram(rq->paddr, 4, 0, false) == NULL,
              "MMIO hole: not RAM, the map fails cleanly");
        check(dm, xen_ram_addr_from_mapcache(dm->disk) == RAM_ADDR_INVALID,
              "a pointer outside the caches is RAM_ADDR_INVALID");
        break;
    }
}

/* The guest shares a ring page and a buffer page, and queues one request. */
static int guest_shares_a_ring(xmc_ram *granted)
{
    struct descriptor d = { BUFFER_REF, SECTOR, 3, 0 };

    return xmc_ram_write(granted, (uint64_t)RING_REF * PAGE, &d, sizeof(d));
}

int main(void)
{
    static struct device_model dm;
    const struct request script[] = {
        { VGA_INIT, VRAM, VRAM_SIZE },
        { DISK_READ_START, 0x123400, DISK_SECTORS * SECTOR },
        { CPU_PEEK, 0x2654320, 0 },
        { INVALIDATE, 0, 0 },
        { VIRTIO_KICK, 0, 0 },
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
        rc = xmc_ram_new((uint64_t)GRANTED_PAGES * PAGE, &dm.granted);
    if (rc == XMC_OK)
        rc = guest_shares_a_ring(dm.granted);
    /* On Xen: the domain's memory, and its grants read-only and read-write. */
    if (rc == XMC_OK)
        rc = xmc_qemu_configure(xmc_ram_backend(dm.ram), xmc_ram_backend(dm.granted),
                                xmc_ram_backend(dm.granted), GRANT_REGION);
    if (rc != XMC_OK) {
        fprintf(stderr, "emulator: cannot set up guest memory: %s\n", xmc_strerror(rc));
        xmc_ram_free(dm.ram);
        xmc_ram_free(dm.granted);
        return 1;
    }
    xen_map_cache_init(NULL, NULL);
    printf("device model for a 64 MiB guest, MMIO hole at [0x%llx, 0x%llx)\n",
           (unsigned long long)MMIO_HOLE_START, (unsigned long long)MMIO_HOLE_END);
    for (size_t i = 0; i < sizeof(script) / sizeof(script[0]); i++)
        handle(&dm, &script[i]);

    xen_invalidate_map_cache_entry(dm.vram); /* the VGA card goes away */
    {
        xmc_stats st;

        check(&dm, xmc_stats_get(xmc_qemu_cache(XMC_QEMU_FOREIGN), &st) == XMC_OK &&
                       st.locked == 0,
              "shutdown: no locked mapping left");
    }
    xmc_qemu_shutdown(); /* unmaps everything */
    xmc_ram_free(dm.ram);
    xmc_ram_free(dm.granted);
    printf("emulator: %s\n", dm.failures ? "FAILED" : "OK");
    return dm.failures ? 1 : 0;
}
