/* Stand-in for QEMU's exec/memory.h (and exec/hwaddr.h, exec/cpu-common.h, qemu/typedefs.h). */
#ifndef STUB_EXEC_MEMORY_H
#define STUB_EXEC_MEMORY_H
typedef uint64_t hwaddr;
typedef uint64_t ram_addr_t;
#define RAM_ADDR_INVALID (~(ram_addr_t)0)
typedef struct MemoryRegion MemoryRegion;
typedef struct RAMBlock RAMBlock;
struct MemoryRegion {
    const char *name; /* QEMU's has many more fields: the glue uses these two */
    RAMBlock *ram_block;
};
int memory_region_get_fd(MemoryRegion *mr);
uint64_t memory_region_size(MemoryRegion *mr);
bool qemu_ram_is_shared(RAMBlock *rb);
#endif
