/* Stand-in for QEMU's block/aio.h: bottom halves and coroutine wake-ups. */
#ifndef STUB_BLOCK_AIO_H
#define STUB_BLOCK_AIO_H
#include "qemu/coroutine.h"
typedef struct AioContext AioContext;
typedef void QEMUBHFunc(void *opaque);
AioContext *qemu_get_current_aio_context(void);
void aio_bh_schedule_oneshot_full(AioContext *ctx, QEMUBHFunc *cb, void *opaque, const char *name);
#define aio_bh_schedule_oneshot(ctx, cb, opaque) aio_bh_schedule_oneshot_full((ctx), (cb), (opaque), (stringify(cb)))
#define stringify(s) tostring(s)
#define tostring(s) #s
void aio_co_wake(Coroutine *co);
#endif
