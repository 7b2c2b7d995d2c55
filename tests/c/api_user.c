/*
 * api_user.c - a C11 program written only against the two public headers:
 * the names docs/contract.md, section 7 fixes, the QEMU-compatible calls and the Xen
 * constructor.  tests/test_c_library.py links it statically and dynamically
 * (and through pkg-config) and runs it; it prints "api_user: OK" and exits 0.
 */
#include <stdio.h>
#include <string.h>

#include "xenmapcache.h"
#define XMC_QEMU_LEGACY_API 1 /* QEMU's mapcache calls before 9.1 */
#include "xenmapcache_qemu.h"

static int failures;

#define EXPECT(cond)                                                                     \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond);          \
            failures++;                                                                  \
        }                                                                                \
    } while (0)

int main(void)
{
    xmc_ram *ram = NULL;
    xmc_cache *cache = NULL;
    xmc_xen *xen = NULL;
    uint8_t *p, *locked, *moved;
    int rc;

    EXPECT(xmc_ram_new(16u << 20, &ram) == XMC_OK);
    EXPECT(xmc_cache_new(xmc_ram_backend(ram), 0, 0, &cache) == XMC_OK);
    xmc_ram_free(ram); /* the cache keeps it alive */
    xen_map_cache_use(cache);

    p = xen_map_cache(0x1000, 0, 0, false);
    EXPECT(p != NULL);
    memcpy(p, "xen", 4);
    EXPECT(xen_ram_addr_from_mapcache(p) == 0x1000);

    locked = xen_map_cache(0x1000, 64, 1, true);
    EXPECT(locked != NULL && memcmp(locked, "xen", 4) == 0);
    xen_invalidate_map_cache(); /* keeps the locked DMA mapping */
    EXPECT(xen_ram_addr_from_mapcache(locked) == 0x1000);
    moved = xen_replace_cache_entry(0x1000, 0x201000, 64);
    EXPECT(moved != NULL && xen_ram_addr_from_mapcache(moved) == 0x201000);
    xen_invalidate_map_cache_entry(moved);
    EXPECT(xen_ram_addr_from_mapcache((void *)&failures) == RAM_ADDR_INVALID);
    EXPECT(xen_map_cache(UINT64_MAX - 10, 100, 0, false) == NULL);

    /* No Xen here: XMC_EUNAVAIL; on a Xen host it may well open. */
    rc = xmc_xen_new(0, &xen);
    EXPECT(rc == XMC_OK || rc == XMC_EUNAVAIL);
    EXPECT((rc == XMC_OK) == (xmc_xen_backend(xen) != NULL));
    xmc_xen_free(xen);
    EXPECT(strcmp(xmc_strerror(XMC_EUNAVAIL), "backend not available") == 0);

    xen_map_cache_use(NULL);
    xmc_cache_free(cache);
    printf("api_user: %s\n", failures ? "FAILED" : "OK");
    return failures != 0;
}
