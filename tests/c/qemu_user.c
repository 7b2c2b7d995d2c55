/*
 * qemu_user.c - a device model written only against QEMU's mapcache calls of
 * today (QEMU 9.1 and later), as QEMU's own code calls them, plus the set-up
 * xmc_qemu_configure() that takes the place of QEMU's xen_map_cache_init()
 * internals.  It is "done when" of issue 10: tests/test_qemu_api.py builds it
 * as C11 and as C++ (-x c++), links it statically and dynamically, and runs
 * it with the fake libxengnttab (tests/c/fake_xengnttab.c) as argv[1]; it
 * prints "qemu_user: OK" and exits 0.
 *
 * Guest RAM is a memfd (xmc_ram) with an MMIO hole; the grant caches map
 * through the fake grant library, read-only and read-write.  What it shows,
 * as QEMU's mapcache does, without its pitfalls: foreign and grant requests,
 * is_write choosing the grant cache, ram_addr_offset giving the grant
 * reference, reverse lookup (interior pointers too), unlock, an invalidate
 * with DMA in flight, replace, the translate hook; and where QEMU would abort
 * (an unlocked grant request, an unknown pointer, a lock-count wrap) a NULL,
 * RAM_ADDR_INVALID or nothing at all.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "qemu_types.h" /* QEMU's hwaddr, ram_addr_t, MemoryRegion */
#include "xenmapcache_qemu.h"

#define MIB (UINT64_C(1) << 20)
#define PAGE UINT64_C(4096)
#define GUEST_RAM (64 * MIB)
#define HOLE_START (48 * MIB)
#define HOLE_END (56 * MIB)
#define FAKE_DOMID 7u
#define FAKE_MARK UINT64_C(0x4752414e54000000)
#define GRANT_BLOCK_OFFSET (UINT64_C(1) << 40) /* the grant region's RAM block */

static int failures;

#define EXPECT(cond)                                                                     \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond);          \
            failures++;                                                                  \
        }                                                                                \
    } while (0)

static MemoryRegion ram_region = { true, false, GUEST_RAM, "xen.ram" };
static MemoryRegion grant_region = { true, false, UINT64_C(1) << 32, "xen.grants" };
static int *live_grant_pages; /* the fake library's count */
static int translations;

/* Moves requests into the MMIO hole to the RAM 40 MiB below it. */
static hwaddr phys_offset_to_gaddr(hwaddr phys_offset, ram_addr_t size)
{
    (void)size;
    translations++;
    if (phys_offset >= HOLE_START && phys_offset < HOLE_END)
        return phys_offset - 40 * MIB;
    return phys_offset;
}

static uint64_t head(const uint8_t *p)
{
    uint64_t v = 0;

    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* A request on the grant region for grant reference `ref`, as QEMU makes it. */
static uint8_t *map_grant(uint32_t ref, hwaddr offset, hwaddr size, uint8_t lock,
                          bool is_write)
{
    return xen_map_cache(&grant_region, GRANT_BLOCK_OFFSET + ((hwaddr)ref << 12) + offset,
                         size, GRANT_BLOCK_OFFSET, lock, true, is_write);
}

static uint64_t live_entries(unsigned which)
{
    xmc_stats st;

    return xmc_stats_get(xmc_qemu_cache(which), &st) == XMC_OK ? st.entries : UINT64_MAX;
}

static void foreign_memory(void)
{
    uint8_t *vram, *dma, *peek, *moved;
    xmc_record *in_flight = NULL;
    size_t n = 0;

    /* [a] device memory, [b] a DMA transfer, a transient CPU access. */
    vram = xen_map_cache(&ram_region, 32 * MIB, 4 * MIB, 0, 1, false, true);
    dma = xen_map_cache(&ram_region, 0x123400, 0x8000, 0, 1, true, true);
    peek = xen_map_cache(&ram_region, 0x2654320, 0, 0, 0, false, false);
    EXPECT(vram && dma && peek);
    if (!vram || !dma || !peek)
        return;
    memcpy(vram, "VGA", 4);
    memcpy(dma, "disk sectors", 13);
    /* ram_addr_offset plays no part in foreign memory. */
    EXPECT(xen_map_cache(&ram_region, 0x123400, 0, 12345, 0, false, false) == dma);
    EXPECT(xen_ram_addr_from_mapcache(vram) == 32 * MIB);
    EXPECT(xen_ram_addr_from_mapcache(dma + 0x10) == 0x123410); /* interior */
    EXPECT(xen_ram_addr_from_mapcache(peek + 1) == 0x2654321);

    /* The translate hook: one try for pages that cannot be mapped. */
    {
        uint8_t *moved_req = xen_map_cache(&ram_region, HOLE_START + 0x10, 8, 0, 1, false, false);

        EXPECT(translations == 1 && moved_req != NULL);
        EXPECT(xen_ram_addr_from_mapcache(moved_req) == HOLE_START + 0x10 - 40 * MIB);
        xen_invalidate_map_cache_entry(moved_req);
        EXPECT(xen_map_cache(&ram_region, GUEST_RAM + 0x10, 8, 0, 1, false, false) == NULL);
        EXPECT(translations == 2);
    }

    /* Invalidate with DMA in flight: unlocked entries go (chained ones too),
     * locked ones stay with their data; the native call lists the DMA. */
    xen_invalidate_map_cache();
    EXPECT(live_entries(XMC_QEMU_FOREIGN) == 2);
    EXPECT(memcmp(vram, "VGA", 4) == 0 && memcmp(dma, "disk sectors", 13) == 0);
    EXPECT(xen_ram_addr_from_mapcache(peek) == RAM_ADDR_INVALID);
    EXPECT(xmc_invalidate(xmc_qemu_cache(XMC_QEMU_FOREIGN), &in_flight, &n) == XMC_OK);
    EXPECT(n == 1 && in_flight && in_flight[0].paddr == 0x123400 && in_flight[0].dma);
    xmc_records_free(in_flight);

    /* Replace: the same host address, the new guest memory; the lock follows. */
    moved = xen_replace_cache_entry(0x100000, 0x500000, 0x23400 + 0x8000);
    EXPECT(moved == dma - 0x23400);
    EXPECT(xen_ram_addr_from_mapcache(dma) == 0x523400);
    xen_invalidate_map_cache_entry(dma); /* QEMU's would miss the moved entry */
    xen_invalidate_map_cache_entry(dma); /* a second time: nothing */
    xen_invalidate_map_cache_entry(vram);
    EXPECT(xmc_locked(xmc_qemu_cache(XMC_QEMU_FOREIGN), &in_flight, &n) == XMC_OK && n == 0);
    xmc_records_free(in_flight);
    EXPECT(xen_replace_cache_entry(60 * MIB, 0, 8) == NULL); /* no such entry */
}

static void grant_mappings(void)
{
    int live = *live_grant_pages;
    uint8_t *ro, *rw, *ro_again, *two;

    /* Grants are mapped for a transfer: an unlocked request maps nothing. */
    EXPECT(map_grant(3, 0, 8, 0, false) == NULL);
    EXPECT(*live_grant_pages == live);

    ro = map_grant(3, 0x10, 8, 1, false);
    rw = map_grant(3, 0x10, 8, 1, true); /* is_write: the other cache, its own map */
    EXPECT(ro && rw && ro != rw);
    if (!ro || !rw)
        return;
    EXPECT(head(ro - 0x10) == FAKE_MARK + 3 && head(rw - 0x10) == FAKE_MARK + 3);
    EXPECT(live_entries(XMC_QEMU_GRANTS_RO) == 1 && live_entries(XMC_QEMU_GRANTS_RW) == 1);
    memcpy(rw, "virtio", 7); /* the guest's page itself: both mappings see it */
    EXPECT(memcmp(ro, "virtio", 7) == 0);
    /* Reverse lookup answers the request's phys_addr, from any of the caches. */
    EXPECT(xen_ram_addr_from_mapcache(ro) == GRANT_BLOCK_OFFSET + 3 * PAGE + 0x10);
    EXPECT(xen_ram_addr_from_mapcache(rw + 1) == GRANT_BLOCK_OFFSET + 3 * PAGE + 0x11);

    /* A ring of two pages: references 4 and 5 in one entry. */
    two = map_grant(4, 0, 2 * PAGE, 1, true);
    EXPECT(two && head(two) == FAKE_MARK + 4 && head(two + PAGE) == FAKE_MARK + 5);

    /* Invalidate keeps grant mappings (they are all locked). */
    xen_invalidate_map_cache();
    EXPECT(memcmp(ro, "virtio", 7) == 0);

    /* The last unlock of a grant entry unmaps it: never kept for a later hit. */
    ro_again = map_grant(3, 0x20, 8, 1, false);
    EXPECT(ro_again == ro + 0x10); /* a second lock on the same entry */
    xen_invalidate_map_cache_entry(ro);
    EXPECT(live_entries(XMC_QEMU_GRANTS_RO) == 1);
    xen_invalidate_map_cache_entry(ro_again);
    EXPECT(live_entries(XMC_QEMU_GRANTS_RO) == 0);
    EXPECT(xen_ram_addr_from_mapcache(rw) != RAM_ADDR_INVALID);
    xen_invalidate_map_cache_entry(rw);
    xen_invalidate_map_cache_entry(two);
    EXPECT(*live_grant_pages == live);

    /* Not granted, below the block, an unaligned block: NULL, nothing mapped. */
    EXPECT(map_grant(999, 0, 2 * PAGE, 1, true) == NULL);
    EXPECT(xen_map_cache(&grant_region, 0x1000, 8, GRANT_BLOCK_OFFSET, 1, true, true) == NULL);
    EXPECT(xen_map_cache(&grant_region, GRANT_BLOCK_OFFSET + 0x800, 8, 0x800, 1, true, true) ==
           NULL);
    EXPECT(*live_grant_pages == live);
}

int main(int argc, char **argv)
{
    xmc_ram *ram = NULL;
    xmc_gnttab *ro = NULL, *rw = NULL;
    char why[256];
    void *fake;

    if (argc != 2 || !(fake = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL)) ||
        !(live_grant_pages = (int *)dlsym(fake, "fake_live_pages"))) {
        fprintf(stderr, "usage: qemu_user /path/to/fake/libxengnttab.so\n");
        return 2;
    }
    EXPECT(xmc_ram_new(GUEST_RAM, &ram) == XMC_OK);
    EXPECT(xmc_ram_add_hole(ram, HOLE_START, HOLE_END) == XMC_OK);
    EXPECT(xmc_gnttab_open(FAKE_DOMID, false, argv[1], why, sizeof why, &ro) == XMC_OK);
    EXPECT(xmc_gnttab_open(FAKE_DOMID, true, argv[1], why, sizeof why, &rw) == XMC_OK);

    /* Before xen_map_cache_init(): disabled, and every call fails softly. */
    EXPECT(!xen_map_cache_enabled());
    EXPECT(xen_map_cache(&ram_region, 0, 0, 0, 0, false, false) == NULL);
    EXPECT(xen_ram_addr_from_mapcache(&ram) == RAM_ADDR_INVALID);
    xen_invalidate_map_cache_entry(NULL);
    xen_invalidate_map_cache();
    EXPECT(xmc_qemu_configure(NULL, NULL, NULL, NULL) == XMC_EINVAL);
    EXPECT(xmc_qemu_configure(xmc_ram_backend(ram), xmc_gnttab_backend(ro),
                              xmc_gnttab_backend(rw), &grant_region) == XMC_OK);
    EXPECT(xmc_qemu_configure(xmc_ram_backend(ram), NULL, NULL, NULL) == XMC_EINVAL);
    xmc_ram_free(ram); /* the caches keep their backends alive */
    xmc_gnttab_free(ro);
    xmc_gnttab_free(rw);
    EXPECT(!xen_map_cache_enabled());

    xen_map_cache_init(phys_offset_to_gaddr, NULL);
    EXPECT(xen_map_cache_enabled());
    foreign_memory();
    grant_mappings();
    EXPECT(xen_ram_addr_from_mapcache(&failures) == RAM_ADDR_INVALID);
    EXPECT(xen_map_cache(&ram_region, UINT64_MAX - 10, 100, 0, 1, true, true) == NULL);

    xmc_qemu_shutdown();
    EXPECT(!xen_map_cache_enabled() && xmc_qemu_cache(XMC_QEMU_FOREIGN) == NULL);
    EXPECT(xen_map_cache(&ram_region, 0, 0, 0, 0, false, false) == NULL);
    EXPECT(*live_grant_pages == 0);
    printf("qemu_user: %s\n", failures ? "FAILED" : "OK");
    return failures ? 1 : 0;
}
