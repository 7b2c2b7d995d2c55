/* Stand-in for QEMU's sysemu/runstate.h (RunState comes from QAPI there). */
#ifndef STUB_SYSEMU_RUNSTATE_H
#define STUB_SYSEMU_RUNSTATE_H
typedef enum RunState {
    RUN_STATE_DEBUG,
    RUN_STATE_INMIGRATE,
    RUN_STATE_PAUSED,
    RUN_STATE_RUNNING,
} RunState;
typedef struct VMChangeStateEntry VMChangeStateEntry;
typedef void VMChangeStateHandler(void *opaque, bool running, RunState state);
VMChangeStateEntry *qemu_add_vm_change_state_handler(VMChangeStateHandler *cb,
                                                     void *opaque);
bool runstate_check(RunState state);
#endif
