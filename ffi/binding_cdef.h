/*
 * binding_cdef.h - cffi declarations of the binding's own entry points
 * (binding.h).  Read by build_ffi.py after the public header's declarations.
 */

/* plain.h: plain integers in and out */
int xmc_py_last_error(void);
uint64_t xmc_py_map_ptr(xmc_cache *c, uint64_t paddr, uint64_t size, int lock, int dma);
uint64_t xmc_py_map(xmc_cache *c, uint64_t paddr, uint64_t size, unsigned flags, uint64_t tag);
int xmc_py_unlock(xmc_cache *c, uintptr_t addr, uint64_t tag);
int64_t xmc_py_invalidate(xmc_cache *c);
size_t xmc_py_records_count(void);
xmc_record *xmc_py_records_take(void);

/* binding.h and cache.h: the CPython types (-1 and XMC_EUNAVAIL elsewhere) */
int xmc_py_fast_install(void);
int xmc_py_adopt(xmc_cache *c);

/* binding.h: the package version the module was built for, compared at
 * import (a stale module fails) */
const char *xmc_py_build_version(void);
