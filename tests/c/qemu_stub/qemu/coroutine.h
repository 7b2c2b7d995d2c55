/* Stand-in for QEMU's qemu/coroutine.h. */
#ifndef STUB_QEMU_COROUTINE_H
#define STUB_QEMU_COROUTINE_H
typedef struct Coroutine Coroutine;
bool qemu_in_coroutine(void);
Coroutine *qemu_coroutine_self(void);
void qemu_coroutine_yield(void);
#endif
