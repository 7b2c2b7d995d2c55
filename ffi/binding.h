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
 * registry.h  the list of a NativeCache's live Mappings and groups, and its methods
 * mapping.h   Mapping, and NativeCache.map
 * group.h     MappingGroup, and NativeCache.map_sg
 * cache.h     NativeCache: its other builtins, its life cycle, xmc_py_adopt()
 * hot.h       MapCache's base FastCache and its hot methods' method descriptors
 * and here, install(), which checks Python's table of hot methods and makes
 * the types at import.
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
 *   MappingGroup keeps the state of the mappings of one map_sg() call and
 *   makes their Mappings only when they are asked for (group.h).
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
#include "hot.h"
#include "special.h"

/* 0 when names (Python's table) are the hot methods, each once; else -1
 * with an ImportError: a binding built for another table. */
static int xmc_py_check_hot(PyObject *names)
{
    PyObject *ours = PyTuple_New(XMC_PY_NHOT), *theirs = NULL, *mine = NULL;
    int same = -1;

    for (int i = 0; ours && i < XMC_PY_NHOT; i++) {
        PyObject *name = PyUnicode_FromString(xmc_py_hot_names[i]);

        if (!name || PyTuple_SetItem(ours, i, name) < 0) /* steals name */
            goto out;
        if (!xmc_py_cache_method(xmc_py_hot_names[i])) {
            PyErr_Format(PyExc_SystemError, "xenmapcache: no builtin for %s", xmc_py_hot_names[i]);
            goto out;
        }
    }
    if (ours && (theirs = PyFrozenSet_New(names)) && (mine = PyFrozenSet_New(ours)))
        same = PyObject_RichCompareBool(theirs, mine, Py_EQ);
    if (same == 1 && PyObject_Length(names) != XMC_PY_NHOT)
        same = 0; /* a name twice */
    if (same == 0) {
        PyErr_Format(PyExc_ImportError,
                     "xenmapcache: the hot methods %R are not the binding's builtins %R: "
                     "rebuild the binding with 'pip install .'", names, ours);
        same = -1;
    }
out:
    Py_XDECREF(mine);
    Py_XDECREF(theirs);
    Py_XDECREF(ours);
    return same == 1 ? 0 : -1;
}

/* Make the types, Mapping and MappingGroup as subclasses of mapping and
 * group, and put them on module with FastCache and make_hot(); 0, or -1
 * with an error set. */
static int xmc_py_make_types(PyObject *module, PyObject *mapping, PyObject *group)
{
    PyObject *bases = PyTuple_Pack(1, mapping), *gbases = PyTuple_Pack(1, group);
    static PyObject *make_hot;

    for (size_t i = 0; i < XMC_PY_NNAMES; i++)
        if (!xmc_py_interned[i] && !(xmc_py_interned[i] = PyUnicode_InternFromString(xmc_py_names[i])))
            goto fail;
    if (!bases || !gbases)
        goto fail;
    xmc_py_mapping_type = (PyTypeObject *)PyType_FromSpecWithBases(&xmc_py_mapping_spec, bases);
    xmc_py_group_type = (PyTypeObject *)PyType_FromSpecWithBases(&xmc_py_group_spec, gbases);
    xmc_py_cache_type = (PyTypeObject *)PyType_FromSpec(&xmc_py_cache_spec);
    if (!xmc_py_special_type)
        xmc_py_special_type = (PyTypeObject *)PyType_FromSpec(&xmc_py_special_spec);
    if (!xmc_py_bound_type)
        xmc_py_bound_type = (PyTypeObject *)PyType_FromSpec(&xmc_py_bound_spec);
    if (!xmc_py_fast_type)
        xmc_py_fast_type = (PyTypeObject *)PyType_FromSpec(&xmc_py_fast_spec);
    if (!make_hot)
        make_hot = PyCFunction_NewEx(&xmc_py_make_hot_def, NULL, NULL);
    if (!xmc_py_mapping_type || !xmc_py_group_type || !xmc_py_cache_type ||
        !xmc_py_special_type || !xmc_py_bound_type || !xmc_py_fast_type ||
        !make_hot ||
        xmc_py_add_special(xmc_py_mapping_type, "__enter__", xmc_py_mapping_enter, 0) ||
        xmc_py_add_special(xmc_py_mapping_type, "__exit__", xmc_py_mapping_release, -1) ||
        xmc_py_add_special(xmc_py_group_type, "__enter__", xmc_py_mapping_enter, 0) ||
        xmc_py_add_special(xmc_py_group_type, "__exit__", xmc_py_group_release, -1) ||
        PyObject_SetAttrString(module, "Mapping", (PyObject *)xmc_py_mapping_type) < 0 ||
        PyObject_SetAttrString(module, "MappingGroup", (PyObject *)xmc_py_group_type) < 0 ||
        PyObject_SetAttrString(module, "NativeCache", (PyObject *)xmc_py_cache_type) < 0 ||
        PyObject_SetAttrString(module, "FastCache", (PyObject *)xmc_py_fast_type) < 0 ||
        PyObject_SetAttrString(module, "make_hot", make_hot) < 0)
        goto fail;
    Py_DECREF(bases);
    Py_DECREF(gbases);
    return 0;
fail:
    Py_CLEAR(xmc_py_mapping_type);
    Py_CLEAR(xmc_py_group_type);
    Py_CLEAR(xmc_py_cache_type);
    Py_XDECREF(bases);
    Py_XDECREF(gbases);
    return -1;
}

/*
 * install(hot_methods, Mapping, MappingGroup): check Python's
 * table of hot methods against the builtins (ImportError when they differ),
 * then, the first time, make the types.  Python hands over what the types
 * need from the package: the base classes.
 */
static PyObject *xmc_py_install(PyObject *unused, PyObject *const *args, Py_ssize_t n)
{
    PyObject *module;
    int rc;

    (void)unused;
    if (n != 3 || !PyType_Check(args[1]) || !PyType_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "install(hot_methods, Mapping, MappingGroup)");
        return NULL;
    }
    if (xmc_py_check_hot(args[0]) < 0)
        return NULL;
    if (xmc_py_cache_type)
        Py_RETURN_NONE;
    if (!(module = PyImport_ImportModule("xenmapcache._core")))
        return NULL;
    rc = xmc_py_make_types(module, args[1], args[2]);
    Py_DECREF(module);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef xmc_py_install_def = {
    "install", (PyCFunction)(void (*)(void))xmc_py_install, METH_FASTCALL,
    "install(hot_methods, Mapping, MappingGroup)\n--\n\n"
    "Check the table of hot methods (ImportError when it is not the builtins'), make the types.",
};

/* Put install() and adopted() on the module xenmapcache._core; 0 on success
 * (-1: no types, the caller runs on cffi calls and the Python Mapping). */
static int xmc_py_fast_install(void)
{
    PyGILState_STATE gil = PyGILState_Ensure(); /* cffi released it for this call */
    PyObject *module = PyImport_ImportModule("xenmapcache._core"), *install = NULL, *adopted = NULL;
    int rc = module && (install = PyCFunction_NewEx(&xmc_py_install_def, NULL, NULL)) &&
                     (adopted = PyCFunction_NewEx(&xmc_py_adopted_def, NULL, NULL)) &&
                     PyObject_SetAttrString(module, "install", install) == 0 &&
                     PyObject_SetAttrString(module, "adopted", adopted) == 0
                 ? 0 : -1;

    if (rc)
        PyErr_Clear();
    Py_XDECREF(adopted);
    Py_XDECREF(install);
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
