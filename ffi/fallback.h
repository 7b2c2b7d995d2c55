/*
 * fallback.h - the way from a builtin back to Python: MapCache's checked
 * method for arguments the builtin does not take, and fail() for a status
 * code of the core, which raises the exception of the table.
 */
#ifndef XMC_PY_FALLBACK_H
#define XMC_PY_FALLBACK_H

#include "objects.h"

/* Raise through Python's fail(): the exception of the table, with its cause. */
static PyObject *xmc_py_fail(xmc_py_cache *self, int rc, const char *what, uint64_t paddr,
                             uint64_t size)
{
    PyObject *r;

    if (!self->fail) { /* not bound yet, or cleared by the GC */
        PyErr_SetString(PyExc_ReferenceError, "the cache is gone");
        return NULL;
    }
    r = PyObject_CallFunction(self->fail, "isKK", rc, what, (unsigned long long)paddr,
                              (unsigned long long)size);
    Py_XDECREF(r); /* it always raises; a None would be a bug, not a result */
    if (r)
        PyErr_SetString(PyExc_SystemError, "xenmapcache: fail() returned");
    return NULL;
}

/* The end of a release (one Mapping's or a group's): a failure of the core
 * (`failed`, status rc) or an interrupt a trace hook raised meanwhile becomes
 * the exception; else None.  Takes over the caller's reference to cache. */
static PyObject *xmc_py_released(xmc_py_cache *cache, int failed, int rc, const char *what,
                                 uint64_t arg)
{
    PyObject *r = NULL;

    if (failed)
        (void)xmc_py_fail(cache, rc, what, arg, 0);
    else if (!(cache->take_interrupt && xmc_py_interrupted(cache, NULL, NULL, NULL)))
        r = xmc_py_ref(Py_None);
    xmc_py_unref((PyObject *)cache);
    return r;
}

/* MapCache's checked method `which`, called with owner(self) prepended: the
 * MapCache, or what stands in for it once it is gone (a kept builtin). */
static PyObject *xmc_py_checked(xmc_py_cache *self, int which, PyObject *const *args,
                                Py_ssize_t n, PyObject *kwnames)
{
    Py_ssize_t total = n + (kwnames ? PyTuple_Size(kwnames) : 0);
    PyObject *stack[8], **buf = stack, *owner, *out;

    if (!self->owner || !self->checked[which])
        return xmc_py_fail(self, XMC_ECLOSED, "call", 0, 0);
    owner = PyObject_CallFunctionObjArgs(self->owner, (PyObject *)self, NULL);
    if (!owner)
        return NULL;
    if (total + 1 > (Py_ssize_t)(sizeof(stack) / sizeof(stack[0])) &&
        !(buf = PyMem_Malloc((size_t)(total + 1) * sizeof(*buf)))) {
        Py_DECREF(owner);
        return PyErr_NoMemory();
    }
    buf[0] = owner;
    for (Py_ssize_t i = 0; i < total; i++)
        buf[i + 1] = args[i];
    out = PyObject_Vectorcall(self->checked[which], buf, (size_t)n + 1, kwnames);
    if (buf != stack)
        PyMem_Free(buf);
    Py_DECREF(owner);
    return out;
}

#endif /* XMC_PY_FALLBACK_H */
