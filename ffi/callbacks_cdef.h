/*
 * callbacks_cdef.h - cffi declarations of the callbacks from C into Python:
 * translate hooks, Python-side backends (backends.CallbackBackend), trace
 * hooks.  Defined in xenmapcache/_callbacks.py with @ffi.def_extern().
 * Read by build_ffi.py; C syntax, but cffi's, not the compiler's.
 */
extern "Python" int _xmc_py_translate(void *, uint64_t, uint64_t, uint64_t *);
extern "Python" int _xmc_py_map(void *, void *, uint64_t, size_t, int *, void **);
extern "Python" int _xmc_py_unmap(void *, void *, size_t);
extern "Python" void _xmc_py_retain(void *);
extern "Python" void _xmc_py_release(void *);
extern "Python" int _xmc_py_trace(void *, const xmc_event *);
