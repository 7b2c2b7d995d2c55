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
 * Around the calls, the glue does what QEMU's own mapcache does:
 * bdrv_drain_all() before a full invalidate (--wrap=xen_invalidate_map_cache),
 * an unlock from a coroutine deferred to a bottom half
 * (--wrap=xen_invalidate_map_cache_entry), ram_block_notify_add/_remove as
 * entries are mapped and unmapped (the cache's trace hook), and RLIMIT_AS
 * raised as far as it goes.
 *
 * The TCG mode (XENMAPCACHE_TCG=1, with contrib/qemu/xenmapcache-tcg.patch):
 * no Xen; the RAM of the machine's memory backend (a memfd shared with the
 * library: memory-backend-memfd,share=on) is served through the same foreign
 * cache, over the library's memfd backend, at the call points Xen takes in
 * system/physmem.c (include/sysemu/xenmapcache-tcg.h).  XENMAPCACHE_TRACE=FILE
 * records every call in the trace format of xenmapcache/replay.py.
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
#include "block/aio.h"
#include "block/block.h"
#include "exec/ramlist.h"
#include "qemu/coroutine.h"
#include <pthread.h>
#include <sys/resource.h>
#if __has_include("sysemu/xenmapcache-tcg.h") /* contrib/qemu/xenmapcache-tcg.patch */
#define XMC_GLUE_TCG
#include "hw/boards.h"
#include "sysemu/xenmapcache-tcg.h"
#endif

/* Declaring QEMU's functions a second time is the point: QEMU's -Werror builds
 * would refuse it under -Wredundant-decls, while conflicting types stay errors. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wredundant-decls"
#define XMC_HAVE_QEMU_TYPES
#if QEMU_VERSION_MAJOR >= 11 /* config-host.h: xen_map_cache() takes a const MemoryRegion * */
#define XMC_QEMU_MR_CONST const
#endif
#include "../../csrc/xenmapcache_qemu.h" /* no -I: nothing else recompiles */
#pragma GCC diagnostic pop

void __real_xen_map_cache_init(phys_offset_to_gaddr_t f, void *opaque);
void __wrap_xen_map_cache_init(phys_offset_to_gaddr_t f, void *opaque);
void __real_xen_invalidate_map_cache(void);
void __wrap_xen_invalidate_map_cache(void);
void __real_xen_invalidate_map_cache_entry(uint8_t *buffer);
void __wrap_xen_invalidate_map_cache_entry(uint8_t *buffer);

/* ---- what QEMU's own mapcache does around the calls -------------------- */

static pthread_mutex_t xmc_glue_lock = PTHREAD_MUTEX_INITIALIZER; /* the trace, the list */
static FILE *xmc_glue_trace;          /* XENMAPCACHE_TRACE, or NULL */
static xmc_event *xmc_glue_flight;    /* DMA in flight at this invalidate */
static size_t xmc_glue_nflight, xmc_glue_capflight;
static bool xmc_glue_collect;         /* an invalidate is under way */
static uint64_t xmc_glue_warnings, xmc_glue_invalidations;

/*
 * Host addresses of the dummy entries (anonymous memory, incoming migration
 * only), which QEMU does not announce to the RAM-block notifiers either.
 */
static uintptr_t *xmc_glue_dummies;
static size_t xmc_glue_ndummies, xmc_glue_capdummies;

static bool xmc_glue_forget_dummy(uintptr_t address)
{
    for (size_t i = 0; i < xmc_glue_ndummies; i++) {
        if (xmc_glue_dummies[i] == address) {
            xmc_glue_dummies[i] = xmc_glue_dummies[--xmc_glue_ndummies];
            return true;
        }
    }
    return false;
}

static void xmc_glue_keep_dummy(uintptr_t address)
{
    if (xmc_glue_forget_dummy(address)) {
        /* remapped in place: still one */
    } else if (xmc_glue_ndummies == xmc_glue_capdummies) {
        size_t cap = xmc_glue_capdummies ? 2 * xmc_glue_capdummies : 16;
        uintptr_t *more = realloc(xmc_glue_dummies, cap * sizeof(*more));

        if (!more) {
            return; /* its unmap is then announced: harmless for a no-op */
        }
        xmc_glue_dummies = more;
        xmc_glue_capdummies = cap;
    }
    xmc_glue_dummies[xmc_glue_ndummies++] = address;
}

static void xmc_glue_keep_in_flight(const xmc_event *ev)
{
    if (xmc_glue_nflight == xmc_glue_capflight) {
        size_t cap = xmc_glue_capflight ? 2 * xmc_glue_capflight : 64;
        xmc_event *more = realloc(xmc_glue_flight, cap * sizeof(*more));

        if (!more) {
            return; /* not warned about: the invalidation goes on */
        }
        xmc_glue_flight = more;
        xmc_glue_capflight = cap;
    }
    xmc_glue_flight[xmc_glue_nflight++] = *ev;
}

/*
 * The cache's trace hook, called under its mutex.  As QEMU's xen_remap_bucket
 * does, tell the RAM-block notifiers of each entry of guest memory mapped and
 * unmapped; keep the DMA mappings an invalidation reports.  Refuses nothing.
 */
static int xmc_glue_event(void *opaque, const xmc_event *ev)
{
    void *host = (void *)ev->address;

    (void)opaque;
    switch (ev->kind) {
    case XMC_EV_MAP:
        ram_block_notify_add(host, ev->size, ev->size);
        break;
    case XMC_EV_REMAP: /* the same host range, other guest pages */
        ram_block_notify_remove(host, ev->size, ev->size);
        ram_block_notify_add(host, ev->size, ev->size);
        break;
    case XMC_EV_UNMAP:
        if (!xmc_glue_forget_dummy(ev->address)) {
            ram_block_notify_remove(host, ev->size, ev->size);
        }
        break;
    case XMC_EV_DUMMY:
        xmc_glue_keep_dummy(ev->address);
        break;
    case XMC_EV_REPLACE: /* guest memory at last, where a dummy was */
        if (ev->rc == XMC_OK && xmc_glue_forget_dummy(ev->address)) {
            ram_block_notify_add(host, ev->size, ev->size);
        }
        break;
    case XMC_EV_DMA_IN_FLIGHT:
        if (xmc_glue_collect) {
            xmc_glue_keep_in_flight(ev);
        }
        break;
    default:
        break;
    }
    return 0;
}

/* QEMU's xen_map_cache_init() raises the address-space limit, as we do. */
static void xmc_glue_raise_rlimit_as(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_AS, &rl);
    }
}

static void xmc_glue_setup(void)
{
    xmc_glue_raise_rlimit_as();
    xmc_cache_set_trace(xmc_qemu_cache(XMC_QEMU_FOREIGN), xmc_glue_event, NULL);
}

/* ---- the trace file (format: xenmapcache/replay.py) -------------------- */

enum { XMC_T_MAP = 1, XMC_T_UNLOCK, XMC_T_RAM_ADDR, XMC_T_INVALIDATE, XMC_T_IN_FLIGHT };
#define XMC_T_HEADER 64
#define XMC_T_RECORD 40

static __thread uint16_t xmc_glue_thread_id;
static uint16_t xmc_glue_threads;

static uint8_t *xmc_glue_le(uint8_t *p, uint64_t v, unsigned bytes)
{
    for (unsigned i = 0; i < bytes; i++) {
        *p++ = (uint8_t)(v >> (8 * i));
    }
    return p;
}

/* With xmc_glue_lock held, so that the file keeps the order of the calls. */
static void xmc_glue_record(uint8_t op, uint8_t flags, int32_t status,
                            uint64_t a, uint64_t b, uint64_t c, uint64_t d)
{
    uint8_t r[XMC_T_RECORD], *p = r;

    if (!xmc_glue_trace) {
        return;
    }
    if (!xmc_glue_thread_id) {
        xmc_glue_thread_id = ++xmc_glue_threads;
    }
    p = xmc_glue_le(p, op, 1);
    p = xmc_glue_le(p, flags, 1);
    p = xmc_glue_le(p, xmc_glue_thread_id - 1u, 2);
    p = xmc_glue_le(p, (uint32_t)status, 4);
    p = xmc_glue_le(p, a, 8);
    p = xmc_glue_le(p, b, 8);
    p = xmc_glue_le(p, c, 8);
    xmc_glue_le(p, d, 8);
    fwrite(r, sizeof(r), 1, xmc_glue_trace);
}

/*
 * Invalidate every cache, after draining the block layer as QEMU's own
 * mapcache does; warn about each DMA mapping still in flight, by tag.
 */
void __wrap_xen_invalidate_map_cache(void)
{
    bdrv_drain_all();

    pthread_mutex_lock(&xmc_glue_lock);
    xmc_glue_nflight = 0;
    xmc_glue_collect = true;
    __real_xen_invalidate_map_cache();
    xmc_glue_collect = false;
    xmc_glue_invalidations++;
    xmc_glue_warnings += xmc_glue_nflight;
    xmc_glue_record(XMC_T_INVALIDATE, 0, XMC_OK, xmc_glue_nflight, 0, 0, 0);
    for (size_t i = 0; i < xmc_glue_nflight; i++) {
        const xmc_event *ev = &xmc_glue_flight[i];

        xmc_glue_record(XMC_T_IN_FLIGHT, XMC_DMA, XMC_OK, ev->address, ev->size,
                        ev->tag, ev->paddr);
        warn_report("mapcache: DMA mapping tag %" PRIu64 " of guest [0x%" PRIx64
                    ", +0x%" PRIx64 ") in flight across an invalidation",
                    ev->tag, ev->paddr, ev->size);
    }
    pthread_mutex_unlock(&xmc_glue_lock);
}

typedef struct XmcGlueUnlock {
    Coroutine *co;
    uint8_t *buffer;
    void (*unlock)(uint8_t *buffer);
} XmcGlueUnlock;

static void xmc_glue_unlock_bh(void *opaque)
{
    XmcGlueUnlock *u = opaque;

    u->unlock(u->buffer);
    aio_co_wake(u->co);
}

/*
 * An unlock asked for from a coroutine runs in a bottom half of the
 * coroutine's AioContext, as QEMU's xen_invalidate_map_cache_entry() does.
 */
static void xmc_glue_unlock_outside_coroutine(uint8_t *buffer,
                                              void (*unlock)(uint8_t *buffer))
{
    if (qemu_in_coroutine()) {
        XmcGlueUnlock u = { qemu_coroutine_self(), buffer, unlock };

        aio_bh_schedule_oneshot(qemu_get_current_aio_context(), xmc_glue_unlock_bh, &u);
        qemu_coroutine_yield();
    } else {
        unlock(buffer);
    }
}

void __wrap_xen_invalidate_map_cache_entry(uint8_t *buffer)
{
    xmc_glue_unlock_outside_coroutine(buffer, __real_xen_invalidate_map_cache_entry);
}

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
    xmc_glue_setup();
    __real_xen_map_cache_init(f, opaque);
}

#ifdef XMC_GLUE_TCG
/* ---- the TCG mode ------------------------------------------------------- */

/* The header: version 1, the guest RAM's size, the library's defaults. */
static void xmc_glue_trace_open(const char *path, uint64_t ram_size)
{
    uint8_t h[XMC_T_HEADER] = "XMCTRACE", *p = h + 8;

    p = xmc_glue_le(p, 1, 4);
    p = xmc_glue_le(p, XMC_T_RECORD, 4);
    xmc_glue_le(p, ram_size, 8); /* then max_size, bucket_shift, count: 0 */
    xmc_glue_trace = fopen(path, "wb");
    if (!xmc_glue_trace || fwrite(h, sizeof(h), 1, xmc_glue_trace) != 1) {
        error_report("mapcache: cannot write the trace %s: %s", path, strerror(errno));
        exit(EXIT_FAILURE);
    }
}

static xmc_cache *xmc_tcg_cache;
static uint64_t xmc_tcg_maps, xmc_tcg_dma_maps;

/* A locked mapping carries the number of its map call as its tag. */
static void *xmc_tcg_map(ram_addr_t offset, hwaddr size, bool lock, bool is_write)
{
    unsigned flags = lock ? XMC_LOCK | XMC_DMA : 0;
    void *p = NULL;
    uint64_t tag;
    int rc;

    (void)is_write; /* foreign memory is mapped read-write */
    pthread_mutex_lock(&xmc_glue_lock);
    tag = ++xmc_tcg_maps;
    xmc_tcg_dma_maps += lock;
    rc = xmc_map(xmc_tcg_cache, offset, size, flags, lock ? tag : 0, &p);
    xmc_glue_record(XMC_T_MAP, flags, rc, offset, size, lock ? tag : 0,
                    rc == XMC_OK ? (uintptr_t)p : 0);
    pthread_mutex_unlock(&xmc_glue_lock);
    if (rc != XMC_OK) {
        /* As QEMU's mapcache: a device model cannot go on without it. */
        error_report("mapcache: cannot map guest [0x%" PRIx64 ", +0x%" PRIx64 "): %s",
                     (uint64_t)offset, (uint64_t)size, xmc_strerror(rc));
        abort();
    }
    return p;
}

static void xmc_tcg_unlock(uint8_t *buffer)
{
    uint64_t tag = 0;
    int rc;

    pthread_mutex_lock(&xmc_glue_lock);
    rc = xmc_unlock(xmc_tcg_cache, buffer, &tag);
    xmc_glue_record(XMC_T_UNLOCK, 0, rc, (uintptr_t)buffer, 0, tag, 0);
    pthread_mutex_unlock(&xmc_glue_lock);
    if (rc != XMC_OK) {
        error_report("mapcache: unlock of %p, which is not locked: %s",
                     buffer, xmc_strerror(rc));
    }
}

static void xmc_tcg_unmap(void *buffer)
{
    xmc_glue_unlock_outside_coroutine(buffer, xmc_tcg_unlock);
}

static bool xmc_tcg_offset_of(void *ptr, ram_addr_t *offset)
{
    uint64_t paddr = RAM_ADDR_INVALID;
    int rc;

    pthread_mutex_lock(&xmc_glue_lock);
    rc = xmc_ram_addr(xmc_tcg_cache, ptr, &paddr);
    xmc_glue_record(XMC_T_RAM_ADDR, 0, rc, (uintptr_t)ptr, paddr, 0, 0);
    pthread_mutex_unlock(&xmc_glue_lock);
    if (rc != XMC_OK) {
        return false;
    }
    *offset = paddr;
    return true;
}

static void xmc_tcg_balloon(void)
{
    xen_invalidate_map_cache(); /* __wrap_: drain, invalidate, warn */
}

static XmcTcg xmc_tcg_hooks = {
    .map = xmc_tcg_map,
    .unmap = xmc_tcg_unmap,
    .offset_of = xmc_tcg_offset_of,
    .balloon = xmc_tcg_balloon,
};

/* The run's figures, on stderr when QEMU exits (run-guest.sh reads them). */
static void xmc_tcg_report(void)
{
    xmc_stats st = { 0 };

    xmc_stats_get(xmc_tcg_cache, &st);
    pthread_mutex_lock(&xmc_glue_lock);
    if (xmc_glue_trace) {
        fclose(xmc_glue_trace);
        xmc_glue_trace = NULL;
    }
    fprintf(stderr, "xenmapcache: %" PRIu64 " maps (%" PRIu64 " DMA), %" PRIu64
            " hits, %" PRIu64 " misses; %" PRIu64 " DMA warnings at %" PRIu64
            " invalidations\n", xmc_tcg_maps, xmc_tcg_dma_maps, st.hits, st.misses,
            xmc_glue_warnings, xmc_glue_invalidations);
    pthread_mutex_unlock(&xmc_glue_lock);
}

static void xmc_tcg_start(Notifier *n, void *data)
{
    MachineState *ms = MACHINE(qdev_get_machine());
    MemoryRegion *ram = ms->ram;
    const char *trace = getenv("XENMAPCACHE_TRACE");
    xmc_ram *r = NULL;
    uint64_t size;
    int rc;

    (void)n;
    (void)data;
    if (!ram || !ram->ram_block || memory_region_get_fd(ram) < 0 ||
        !qemu_ram_is_shared(ram->ram_block)) {
        error_report("mapcache: XENMAPCACHE_TCG needs -machine memory-backend=ID "
                     "of a memory-backend-memfd with share=on");
        exit(EXIT_FAILURE);
    }
    size = memory_region_size(ram);
    rc = xmc_ram_new_fd(memory_region_get_fd(ram), size, &r);
    xmc_glue_check(rc, "guest RAM", "");
    rc = xmc_qemu_configure(xmc_ram_backend(r), NULL, NULL, NULL);
    xmc_ram_free(r); /* the cache holds its own reference */
    xmc_glue_check(rc, "configure", "");
    xmc_glue_setup();
    __real_xen_map_cache_init(NULL, NULL);
    xmc_tcg_cache = xmc_qemu_cache(XMC_QEMU_FOREIGN);
    if (trace && *trace) {
        xmc_glue_trace_open(trace, size);
    }
    atexit(xmc_tcg_report);
    xmc_tcg_hooks.block = ram->ram_block;
    qatomic_store_release(&xmc_tcg, &xmc_tcg_hooks);
}

static Notifier xmc_tcg_machine_done = { .notify = xmc_tcg_start };

static void __attribute__((constructor)) xmc_tcg_init(void)
{
    const char *on = getenv("XENMAPCACHE_TCG");

    if (on && strcmp(on, "1") == 0) {
        qemu_add_machine_init_done_notifier(&xmc_tcg_machine_done);
    }
}
#endif /* XMC_GLUE_TCG */
