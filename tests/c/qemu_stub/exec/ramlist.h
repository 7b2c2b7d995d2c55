/* Stand-in for QEMU's exec/ramlist.h: the RAM-block notifiers. */
#ifndef STUB_EXEC_RAMLIST_H
#define STUB_EXEC_RAMLIST_H
void ram_block_notify_add(void *host, size_t size, size_t max_size);
void ram_block_notify_remove(void *host, size_t size, size_t max_size);
#endif
