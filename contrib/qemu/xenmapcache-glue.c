/*
 * xenmapcache-glue.c - QEMU's side of the seam that swaps hw/xen/xen-mapcache.c
 * for libxenmapcache.
 *
 * Compiled inside QEMU's tree (in place of xen-mapcache.c, by the meson option
 * of contrib/qemu/xenmapcache-meson.patch), so it sees QEMU's globals; the
 * library never does.  The seam: QEMU is linked with
 * -Wl,--wrap=xen_map_cache_init, so QEMU's own call to xen_map_cache_init()
 * (hw/xen/xen-hvm-common.c, unchanged) lands in __wrap_xen_map_cache_init()
 * below, which builds our three caches with xmc_qemu_configure() from
 * xen_domid and &xen_grants, then calls the library's xen_map_cache_init().
 * Every other mapcache call of QEMU goes straight to the library.
 *
 * QEMU's declarations (sysemu/xen-mapcache.h, which QEMU's callers include)
 * and ours (xenmapcache_qemu.h with XMC_HAVE_QEMU_TYPES) meet in this one
 * translation unit: a prototype, typedef or RAM_ADDR_INVALID that differs is
 * a compile error here, not a silent mismatch at link time.
 */
#include "qemu/osdep.h"
#include "qemu/error-report.h"
#include "exec/memory.h"
#include "hw/xen/xen-hvm-common.h"
#include "sysemu/runstate.h"
#include "sysemu/xen-mapcache.h"

/* Declaring QEMU's functions a second time is the point: QEMU's -Werror builds
 * would refuse it under -Wredundant-decls, while conflicting types stay errors. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wredundant-decls"
#define XMC_HAVE_QEMU_TYPES
#include "../../csrc/xenmapcache_qemu.h" /* no -I: nothing else recompiles */
#pragma GCC diagnostic pop

void __real_xen_map_cache_init(phys_offset_to_gaddr_t f, void *opaque);
void __wrap_xen_map_cache_init(phys_offset_to_gaddr_t f, void *opaque);

/*
 * QEMU maps anonymous memory in place of guest pages it cannot map while an
 * incoming migration fills them in (RUN_STATE_INMIGRATE): our dummy mode.
 */
static void xmc_glue_runstate(void *opaque, bool running, RunState state)
{
    (void)opaque;
    (void)running;
    (void)state;
    xmc_cache_set_dummy(xmc_qemu_cache(XMC_QEMU_FOREIGN),
                        runstate_check(RUN_STATE_INMIGRATE));
}

/* As QEMU's own mapcache does, a device model without its backends exits. */
static void xmc_glue_check(int rc, const char *what, const char *why)
{
    if (rc != XMC_OK) {
        error_report("mapcache: %s: %s%s%s", what, xmc_strerror(rc),
                     why[0] ? ": " : "", why);
        exit(EXIT_FAILURE);
    }
}

void __wrap_xen_map_cache_init(phys_offset_to_gaddr_t f, void *opaque)
{
    char why[256] = "";
    xmc_xen *foreign = NULL;
    xmc_gnttab *grants_ro = NULL, *grants_rw = NULL;
    int rc;

    rc = xmc_xen_open(xen_domid, NULL, why, sizeof(why), &foreign);
    xmc_glue_check(rc, "foreign memory", why);
    rc = xmc_gnttab_open(xen_domid, false, NULL, why, sizeof(why), &grants_ro);
    xmc_glue_check(rc, "read-only grants", why);
    rc = xmc_gnttab_open(xen_domid, true, NULL, why, sizeof(why), &grants_rw);
    xmc_glue_check(rc, "read-write grants", why);
    rc = xmc_qemu_configure(xmc_xen_backend(foreign),
                            xmc_gnttab_backend(grants_ro),
                            xmc_gnttab_backend(grants_rw), &xen_grants);
    /* The caches hold their own references to the backends. */
    xmc_xen_free(foreign);
    xmc_gnttab_free(grants_ro);
    xmc_gnttab_free(grants_rw);
    xmc_glue_check(rc, "configure", "");

    xmc_glue_runstate(NULL, false, RUN_STATE_INMIGRATE);
    qemu_add_vm_change_state_handler(xmc_glue_runstate, NULL);
    __real_xen_map_cache_init(f, opaque);
}
