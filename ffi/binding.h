/*
 * binding.h - the binding's own C, assembled: what build_ffi.py compiles into
 * the extension xenmapcache._core beside the C core (never part of the C
 * library).  Declared for cffi in binding_cdef.h.
 *
 * plain.h     the entry points cffi calls, plain integers in and out
 * On CPython (the stable ABI of 3.12), the hot path's Python types:
 * objects.h   the structs of the three types; XMC_PY_CALL, how a builtin calls the core
 * parser.h    the arguments of the fast calls, by position or keyword
 * fallback.h  back to Python: MapCache's checked method, fail() for a status code
 * freelist.h  a free list of GC objects
 * special.h   __enter__/__exit__ descriptors and their bound method
 * registry.h  the list of a NativeCache's live Mappings, and its methods
 * mapping.h   Mapping, and NativeCache.map
 * group.h     MappingGroup, and NativeCache.map_sg
 * cache.h     NativeCache: its other builtins, its life cycle, xmc_py_adopt()
 * and here, xmc_py_fast_install(), which makes the types at import.
 *
 * Why: cffi's own calls cost a Python frame around them, an argument tuple
 * and a cdata check per call, and release the GIL every time; a Mapping
 * written in Python costs a frame per method and per buffer export.
 *
 * - NativeCache owns one xmc_cache (xmc_py_adopt() hands it over from a
 *   typed cffi call: no entry point takes a raw address) and frees it when
 *   it goes.  Its hot methods (the enum of objects.h) are vectorcall
 *   builtins: the common case converts exact ints, given by position or by
 *   keyword, makes the core call (releasing the GIL only when it would wait,
 *   see XMC_PY_CALL) and builds the result.  Anything else (another type, an
 *   unknown or repeated keyword, a value out of range) goes straight to
 *   MapCache's checked method of the same name, which validates and raises
 *   as documented; a failed core call goes to a Python
 *   `fail(rc, what, paddr, size)` that raises, so nothing is done twice.  It
 *   also holds the registry of live Mappings.
 * - Mapping exports the host memory itself and counts its exports;
 *   MappingGroup holds the Mappings of one map_sg() call.
 *
 * Every state change of a Mapping or of the registry happens with the GIL
 * held and no core call in between, so the GIL is their lock; core calls
 * that may wait release it.
 */
#ifndef XMC_PY_BINDING_H
#define XMC_PY_BINDING_H

#include "plain.h"

/* The package version this module is built for (build_ffi.py defines it). */
static const char *xmc_py_build_version(void)
{
    return XMC_PY_VERSION;
}

#ifdef Py_PYTHON_H

#include "cache.h"
#include "special.h"

/*
 * Make the three types, Mapping and MappingGroup as subclasses of those of
 * xenmapcache.cache, and put them and adopted() on the module
 * xenmapcache._core; 0 on success.
 */
static int xmc_py_fast_install(void)
{
    PyGILState_STATE gil = PyGILState_Ensure(); /* cffi released it for this call */
    PyObject *module = NULL, *api = NULL, *base = NULL, *bases = NULL, *fn = NULL;
    PyObject *gbase = NULL, *gbases = NULL;
    PyObject *errors = NULL;
    int rc = -1;

    if (xmc_py_cache_type) {
        rc = 0;
        goto out;
    }
    if (!(module = PyImport_ImportModule("xenmapcache._core")) ||
        !(api = PyImport_ImportModule("xenmapcache.cache")) ||
        !(errors = PyImport_ImportModule("xenmapcache.errors")) ||
        !(base = PyObject_GetAttrString(api, "Mapping")) || !(bases = PyTuple_Pack(1, base)) ||
        !(gbase = PyObject_GetAttrString(api, "MappingGroup")) ||
        !(gbases = PyTuple_Pack(1, gbase)) ||
        !(xmc_py_closed_error = PyObject_GetAttrString(errors, "MapCacheError")))
        goto out;
    for (size_t i = 0; i < XMC_PY_NNAMES; i++)
        if (!xmc_py_interned[i] && !(xmc_py_interned[i] = PyUnicode_InternFromString(xmc_py_names[i])))
            goto out;
    xmc_py_mapping_type = (PyTypeObject *)PyType_FromSpecWithBases(&xmc_py_mapping_spec, bases);
    xmc_py_group_type = (PyTypeObject *)PyType_FromSpecWithBases(&xmc_py_group_spec, gbases);
    xmc_py_cache_type = (PyTypeObject *)PyType_FromSpec(&xmc_py_cache_spec);
    if (!xmc_py_special_type)
        xmc_py_special_type = (PyTypeObject *)PyType_FromSpec(&xmc_py_special_spec);
    if (!xmc_py_bound_type)
        xmc_py_bound_type = (PyTypeObject *)PyType_FromSpec(&xmc_py_bound_spec);
    if (!xmc_py_mapping_type || !xmc_py_group_type || !xmc_py_cache_type ||
        !xmc_py_special_type || !xmc_py_bound_type ||
        xmc_py_add_special(xmc_py_mapping_type, "__enter__", xmc_py_mapping_enter, 0) ||
        xmc_py_add_special(xmc_py_mapping_type, "__exit__", xmc_py_mapping_release, -1) ||
        xmc_py_add_special(xmc_py_group_type, "__enter__", xmc_py_mapping_enter, 0) ||
        xmc_py_add_special(xmc_py_group_type, "__exit__", xmc_py_group_release, -1) ||
        !(fn = PyCFunction_NewEx(&xmc_py_adopted_def, NULL, NULL)) ||
        PyObject_SetAttrString(module, "adopted", fn) < 0 ||
        PyObject_SetAttrString(module, "Mapping", (PyObject *)xmc_py_mapping_type) < 0 ||
        PyObject_SetAttrString(module, "MappingGroup", (PyObject *)xmc_py_group_type) < 0 ||
        PyObject_SetAttrString(module, "NativeCache", (PyObject *)xmc_py_cache_type) < 0) {
        Py_CLEAR(xmc_py_mapping_type);
        Py_CLEAR(xmc_py_group_type);
        Py_CLEAR(xmc_py_cache_type);
        goto out;
    }
    rc = 0;
out:
    if (rc)
        PyErr_Clear(); /* the caller falls back to cffi calls and the Python Mapping */
    Py_XDECREF(fn);
    Py_XDECREF(bases);
    Py_XDECREF(base);
    Py_XDECREF(gbases);
    Py_XDECREF(gbase);
    Py_XDECREF(errors);
    Py_XDECREF(api);
    Py_XDECREF(module);
    PyGILState_Release(gil);
    return rc;
}

#else /* not built by cffi for CPython */

static int xmc_py_fast_install(void)
{
    return -1;
}

static int xmc_py_adopt(xmc_cache *c)
{
    (void)c;
    return XMC_EUNAVAIL;
}

#endif /* Py_PYTHON_H */

#endif /* XMC_PY_BINDING_H */
