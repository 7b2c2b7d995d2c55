/* Stand-in for QEMU's hw/xen/xen-hvm-common.h (with hw/xen/xen.h's xen_domid). */
#ifndef STUB_HW_XEN_XEN_HVM_COMMON_H
#define STUB_HW_XEN_XEN_HVM_COMMON_H
#include "exec/memory.h"
extern uint32_t xen_domid;
extern MemoryRegion xen_memory, xen_grants;
#endif
