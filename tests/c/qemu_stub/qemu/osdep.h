/* Stand-in for QEMU's qemu/osdep.h: the C library headers QEMU code relies on. */
#ifndef STUB_QEMU_OSDEP_H
#define STUB_QEMU_OSDEP_H
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
/* config-host.h, which osdep.h includes (STUB_QEMU11: the QEMU of 2026) */
#ifndef QEMU_VERSION_MAJOR
#ifdef STUB_QEMU11
#define QEMU_VERSION_MAJOR 11
#else
#define QEMU_VERSION_MAJOR 9
#endif
#endif
/* qemu/atomic.h, which osdep.h includes */
#define qatomic_store_release(ptr, i) __atomic_store_n(ptr, i, __ATOMIC_RELEASE)
#endif
