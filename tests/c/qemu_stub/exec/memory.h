/* Stand-in for QEMU's exec/memory.h (and exec/hwaddr.h, exec/cpu-common.h). */
#ifndef STUB_EXEC_MEMORY_H
#define STUB_EXEC_MEMORY_H
typedef uint64_t hwaddr;
typedef uint64_t ram_addr_t;
#define RAM_ADDR_INVALID (~(ram_addr_t)0)
typedef struct MemoryRegion MemoryRegion;
struct MemoryRegion {
    const char *name; /* QEMU's has many more fields: only the address matters */
};
#endif
