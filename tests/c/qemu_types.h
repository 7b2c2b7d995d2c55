/*
 * qemu_types.h - the types xenmapcache_qemu.h takes from QEMU, declared as
 * QEMU's own headers declare them, for tests that include our header the way
 * QEMU itself would (XMC_HAVE_QEMU_TYPES):
 *   hwaddr             include/exec/hwaddr.h
 *   ram_addr_t         include/exec/cpu-common.h (uint64_t with CONFIG_XEN_BACKEND)
 *   RAM_ADDR_INVALID   include/exec/cpu-common.h
 *   MemoryRegion       include/qemu/typedefs.h, defined in include/system/memory.h
 *                      (a large struct there; a few fields here, but complete)
 * With NARROW_HWADDR, a 32-bit hwaddr our header must refuse.
 */
#ifndef QEMU_TYPES_H
#define QEMU_TYPES_H

#include <stdbool.h>
#include <stdint.h>

#ifdef NARROW_HWADDR
typedef uint32_t hwaddr;
#else
typedef uint64_t hwaddr;
#endif
typedef uint64_t ram_addr_t;
#define RAM_ADDR_INVALID (~(ram_addr_t)0)

typedef struct MemoryRegion MemoryRegion;
struct MemoryRegion {
    bool ram;
    bool readonly;
    uint64_t size;
    const char *name;
};

#define XMC_HAVE_QEMU_TYPES 1

#endif /* QEMU_TYPES_H */
