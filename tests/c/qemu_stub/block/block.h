/* Stand-in for QEMU's block/block.h (block-global-state.h's bdrv_drain_all). */
#ifndef STUB_BLOCK_BLOCK_H
#define STUB_BLOCK_BLOCK_H
void bdrv_drain_all(void);
#endif
