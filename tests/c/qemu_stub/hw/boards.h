/* Stand-in for QEMU's hw/boards.h (with qemu/notify.h's Notifier, sysemu/sysemu.h's notifier list). */
#ifndef STUB_HW_BOARDS_H
#define STUB_HW_BOARDS_H
#include "exec/memory.h"
typedef struct Notifier Notifier;
struct Notifier {
    void (*notify)(Notifier *notifier, void *data);
};
typedef struct MachineState {
    MemoryRegion *ram;
} MachineState;
typedef struct Object Object;
Object *qdev_get_machine(void);
#define MACHINE(obj) ((MachineState *)(obj))
void qemu_add_machine_init_done_notifier(Notifier *notify);
#endif
