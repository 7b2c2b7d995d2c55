/*
 * qemu_glue_main.c - plays QEMU around contrib/qemu/xenmapcache-glue.c, for
 * tests/test_qemu_build.py: QEMU's globals (xen_domid, xen_grants) and the
 * QEMU functions the glue calls (error_report, runstate_check,
 * qemu_add_vm_change_state_handler, bdrv_drain_all, the RAM-block notifiers,
 * coroutines and bottom halves), then the mapcache calls QEMU makes, in
 * QEMU's order: xen_map_cache_init() from xen-hvm-common.c (linked with
 * -Wl,--wrap= for xen_map_cache_init, xen_invalidate_map_cache and
 * xen_invalidate_map_cache_entry, as QEMU is), then map, reverse lookup,
 * unlock (once from a "coroutine") and invalidate as system/physmem.c does.
 *
 * Built with -DXMC_TEST_TCG (and the header of contrib/qemu/xenmapcache-tcg.patch
 * on the include path), "qemu tcg" plays the TCG mode instead: QEMU's machine
 * with a memfd as its RAM, machine-init-done, then physmem.c's hooks
 * (XENMAPCACHE_TCG=1 and XENMAPCACHE_TRACE set by the test).
 *
 * Run with tests/c/fake_xenforeignmemory.c and fake_xengnttab.c installed as
 * libxenforeignmemory.so.1 and libxengnttab.so.1 on LD_LIBRARY_PATH (domain
 * 7).  Environment: QEMU_INMIGRATE set: QEMU is in RUN_STATE_INMIGRATE until
 * the run-state handler is called.  Prints what it checked; exits 0 when
 * every check holds, 1 (through the glue's exit) when the glue cannot build
 * the caches, 3 on a failed check.
 */
#define _GNU_SOURCE /* memfd_create */
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/aio.h"
#include "block/block.h"
#include "exec/memory.h"
#include "exec/ramlist.h"
#include "sysemu/runstate.h"
#include "sysemu/xen-mapcache.h"

#define XMC_HAVE_QEMU_TYPES
#include "xenmapcache_qemu.h"

#ifdef XMC_TEST_TCG
#include <sys/mman.h>
#include <unistd.h>

#include "hw/boards.h"
#include "sysemu/xenmapcache-tcg.h"
#endif

uint32_t xen_domid = 7; /* FAKE_DOMID of the fake libraries */
MemoryRegion xen_memory = { "xen.ram", NULL }, xen_grants = { "xen.grants", NULL };

static RunState state = RUN_STATE_RUNNING;
static VMChangeStateHandler *handler;
static void *handler_opaque;

void error_report(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void warn_report(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* The block layer, the notifiers, one coroutine and its bottom half. */
static int drains, notified_add, notified_remove;
static bool in_coroutine;
static QEMUBHFunc *bh;
static void *bh_opaque;
static Coroutine *const the_coroutine = (Coroutine *)&in_coroutine;

void bdrv_drain_all(void)
{
    drains++;
}

void ram_block_notify_add(void *host, size_t size, size_t max_size)
{
    (void)host, (void)size, (void)max_size;
    notified_add++;
}

void ram_block_notify_remove(void *host, size_t size, size_t max_size)
{
    (void)host, (void)size, (void)max_size;
    notified_remove++;
}

bool qemu_in_coroutine(void)
{
    return in_coroutine;
}

Coroutine *qemu_coroutine_self(void)
{
    return the_coroutine;
}

AioContext *qemu_get_current_aio_context(void)
{
    return NULL;
}

void aio_bh_schedule_oneshot_full(AioContext *ctx, QEMUBHFunc *cb, void *opaque, const char *name)
{
    (void)ctx, (void)name;
    bh = cb;
    bh_opaque = opaque;
}

/* The coroutine yields: the main loop runs the bottom half, which wakes it. */
void qemu_coroutine_yield(void)
{
    in_coroutine = false;
    bh(bh_opaque);
    in_coroutine = true;
}

void aio_co_wake(Coroutine *co)
{
    (void)co;
    bh = NULL;
}

bool runstate_check(RunState s)
{
    return state == s;
}

VMChangeStateEntry *qemu_add_vm_change_state_handler(VMChangeStateHandler *cb, void *opaque)
{
    handler = cb;
    handler_opaque = opaque;
    return (VMChangeStateEntry *)&handler;
}

#define CHECK(cond)                                                         \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "check failed, line %d: %s\n", __LINE__, #cond); \
            exit(3);                                                        \
        }                                                                   \
    } while (0)

static uint64_t first_word(const uint8_t *p)
{
    uint64_t v;

    memcpy(&v, p, sizeof(v));
    return v;
}

#ifdef XMC_TEST_TCG
/* QEMU's side of the TCG mode: physmem.c's hook, the machine and its RAM. */
const XmcTcg *xmc_tcg;
struct RAMBlock {
    int fd;
};
static RAMBlock block;
static MemoryRegion ram_region = { "pc.ram", &block };
static MachineState machine = { &ram_region };
static Notifier *machine_done;
#define RAM_SIZE (16u << 20)

Object *qdev_get_machine(void)
{
    return (Object *)&machine;
}

void qemu_add_machine_init_done_notifier(Notifier *notify)
{
    machine_done = notify;
}

int memory_region_get_fd(MemoryRegion *mr)
{
    return mr->ram_block->fd;
}

uint64_t memory_region_size(MemoryRegion *mr)
{
    (void)mr;
    return RAM_SIZE;
}

bool qemu_ram_is_shared(RAMBlock *rb)
{
    (void)rb;
    return true;
}

static int tcg_main(void)
{
    uint64_t word = 0x1122334455667788ull, back = 0;
    ram_addr_t offset = 0;
    uint8_t *dma, *cpu;
    int stack_byte = 0;

    block.fd = memfd_create("guest-ram", 0);
    CHECK(block.fd >= 0 && ftruncate(block.fd, RAM_SIZE) == 0);
    CHECK(pwrite(block.fd, &word, 8, 0x3000) == 8);
    /* The glue's constructor saw XENMAPCACHE_TCG=1; QEMU's machine is done. */
    CHECK(machine_done != NULL && xmc_tcg == NULL);
    machine_done->notify(machine_done, NULL);
    CHECK(xmc_tcg != NULL && xmc_tcg->block == &block);

    /* address_space_map: a DMA mapping of the guest's page 3. */
    dma = xmc_tcg->map(0x3000, 4096, true, false);
    CHECK(first_word(dma) == word);
    CHECK(xmc_tcg->offset_of(dma + 8, &offset) && offset == 0x3008);
    CHECK(!xmc_tcg->offset_of(&stack_byte, &offset));
    /* flatview_write_continue: a transient write the emulated CPU then reads. */
    cpu = xmc_tcg->map(0x10000, 8, false, true);
    memcpy(cpu, &word, 8);
    CHECK(pread(block.fd, &back, 8, 0x10000) == 8 && back == word);
    /* A balloon inflation, the DMA still in flight: drained, then one warning. */
    xmc_tcg->balloon();
    CHECK(drains == 1);
    xmc_tcg->unmap(dma);
    xmc_tcg->balloon();
    CHECK(drains == 2);
    printf("TCG mode: DMA and transient mappings of the memfd, two invalidations\n");
    return 0; /* the glue's report and trace are written at exit */
}
#endif

int main(int argc, char **argv)
{
    bool dummy;

#ifdef XMC_TEST_TCG
    if (argc > 1 && strcmp(argv[1], "tcg") == 0)
        return tcg_main();
#endif
    (void)argc, (void)argv;

    if (getenv("QEMU_INMIGRATE"))
        state = RUN_STATE_INMIGRATE;
    CHECK(!xen_map_cache_enabled());

    /* hw/xen/xen-hvm-common.c; the glue builds the caches first. */
    xen_map_cache_init(NULL, NULL);
    CHECK(xen_map_cache_enabled());
    CHECK(handler != NULL);
    for (unsigned i = XMC_QEMU_FOREIGN; i <= XMC_QEMU_GRANTS_RW; i++)
        CHECK(xmc_qemu_cache(i) != NULL);
    /* Past the fake's 4000 pages nothing maps: but in dummy mode, anonymous memory. */
    dummy = xen_map_cache(&xen_memory, 5000 * 4096, 8, 0, 0, false, false) != NULL;
    CHECK(dummy == (state == RUN_STATE_INMIGRATE));
    printf("caches built for domain %u, dummy mode %s\n", xen_domid, dummy ? "on" : "off");

    /* system/physmem.c: guest RAM (page p of the fake starts with p)... */
    uint8_t *ram = xen_map_cache(&xen_memory, 5 * 4096 + 16, 64, 0, 1, true, false);
    CHECK(ram != NULL && first_word(ram - 16) == 5);
    CHECK(xen_ram_addr_from_mapcache(ram + 8) == 5 * 4096 + 24);
    /* ...and a grant: page p of the request is grant reference p. */
    uint8_t *grant = xen_map_cache(&xen_grants, 3 * 4096, 4096, 0, 1, true, true);
    CHECK(grant != NULL && first_word(grant) == 0x4752414e54000000ull + 3);
    CHECK(xen_ram_addr_from_mapcache(grant) == 3 * 4096);
    CHECK(xen_map_cache(&xen_grants, 0, 4096, 0, 0, false, false) == NULL);
    printf("foreign and grant mappings made, reverse lookups exact\n");
    CHECK(notified_add >= 1);
    xen_invalidate_map_cache_entry(grant);
    /* From a coroutine, the unlock waits for a bottom half. */
    in_coroutine = true;
    xen_invalidate_map_cache_entry(ram);
    in_coroutine = false;
    CHECK(bh == NULL);
    xen_invalidate_map_cache();
    CHECK(drains == 1);
    CHECK(xen_ram_addr_from_mapcache(ram) == RAM_ADDR_INVALID);
    CHECK(notified_remove == notified_add); /* every entry gone, dummies never announced */
    printf("drained before invalidating, unlock deferred out of a coroutine, %d entries notified\n",
           notified_add);

    /* The incoming migration ends: QEMU calls the run-state handlers. */
    state = RUN_STATE_RUNNING;
    handler(handler_opaque, true, state);
    CHECK(xen_map_cache(&xen_memory, 6000 * 4096, 8, 0, 0, false, false) == NULL);
    printf("dummy mode off once running\n");
    xmc_qemu_shutdown();
    return 0;
}
