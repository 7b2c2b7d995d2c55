/*
 * parser.h - the arguments of the fast calls, by position or by keyword.
 *
 * A builtin takes the common case only: exact ints in range, known keywords
 * given once, buffers that export as asked.  Each parser answers 0 with no
 * error set for anything else, and the builtin hands the call, untouched, to
 * MapCache's checked method (fallback.h), which raises as documented.
 */
#ifndef XMC_PY_PARSER_H
#define XMC_PY_PARSER_H

#include "xenmapcache.h"

/* An int (the caller checked its type) in [0, 2**64) into *out; 0 (no
 * error set) for anything else.  PyLong_AsSsize_t reads an int of two or
 * three digits (an address past 1 GiB) in a loop, where
 * PyLong_AsUnsignedLongLong goes through a byte array at three times the
 * cost; only [2**63, 2**64) needs the second. */
static inline int xmc_py_u64_exact(PyObject *o, uint64_t *out)
{
    Py_ssize_t v = PyLong_AsSsize_t(o);
    unsigned long long u;

    if (v >= 0) {
        *out = (uint64_t)v;
        return 1;
    }
    if (v != -1 || !PyErr_Occurred())
        return 0; /* negative */
    PyErr_Clear();
    u = PyLong_AsUnsignedLongLong(o);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    *out = u;
    return 1;
}

/* An exact int in [0, 2**64) into *out; 0 (no error set) for anything else. */
static int xmc_py_u64(PyObject *o, uint64_t *out)
{
    return PyLong_CheckExact(o) && xmc_py_u64_exact(o, out);
}

/* The parameter names, interned by xmc_py_fast_install(): keyword names
 * written in Python code are the same objects, found without comparing. */
static const char *const xmc_py_names[] = { "paddr", "size", "lock", "dma", "n",
                                            "address", "tag", "buffer", "segments", "data" };
#define XMC_PY_NNAMES (sizeof(xmc_py_names) / sizeof(xmc_py_names[0]))
static PyObject *xmc_py_interned[XMC_PY_NNAMES];

/* The entry of xmc_py_names that name is (interned), or NULL for another string. */
static const char *xmc_py_known_name(PyObject *name)
{
    for (size_t i = 0; i < XMC_PY_NNAMES; i++)
        if (name == xmc_py_interned[i])
            return xmc_py_names[i];
    return NULL;
}

static int xmc_py_kwargs(PyObject *const *values, PyObject *kwnames,
                         const char *const *names, Py_ssize_t nnames, PyObject **slot)
{
    Py_ssize_t nkw = Py_SIZE(kwnames); /* a tuple, by the vectorcall protocol */

    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GetItem(kwnames, k);
        const char *known = xmc_py_known_name(name);
        Py_ssize_t i = 0;

        while (i < nnames && (known ? known != names[i]
                                    : PyUnicode_CompareWithASCIIString(name, names[i]) != 0))
            i++;
        if (i == nnames || slot[i])
            return 0;
        slot[i] = values[k];
    }
    return 1;
}

/*
 * The arguments of a vectorcall by parameter: slot[i] for names[i], NULL
 * where not given.  0 (no error set) for a keyword that is unknown or
 * repeats a parameter already given, or too many arguments: the checked
 * method then raises the TypeError.
 */
static inline int xmc_py_args(PyObject *const *args, Py_ssize_t n, PyObject *kwnames,
                              const char *const *names, Py_ssize_t nnames, PyObject **slot)
{
    if (n > nnames)
        return 0;
    for (Py_ssize_t i = 0; i < nnames; i++)
        slot[i] = i < n ? args[i] : NULL;
    return !kwnames || xmc_py_kwargs(args + n, kwnames, names, nnames, slot);
}

/* A truth value: the bools without a call; -1 with an error set. */
static int xmc_py_flag(PyObject *o)
{
    return o == Py_True ? 1 : o == Py_False ? 0 : PyObject_IsTrue(o);
}

/* The arguments of map_ptr(paddr, size=0, lock=False, dma=False) into
 * *paddr, *size, *flags; 0 (no error set) when the checked method must see them. */
static int xmc_py_map_ptr_args(PyObject *const *args, Py_ssize_t n, PyObject *kwnames,
                               uint64_t *paddr, uint64_t *size, unsigned *flags)
{
    int lock = 0, dma = 0;
    PyObject *a[4];

    *size = 0;
    if (!xmc_py_args(args, n, kwnames, xmc_py_names, 4, a) || !a[0] /* paddr size lock dma */ ||
        !xmc_py_u64(a[0], paddr) || (a[1] && !xmc_py_u64(a[1], size)) ||
        (a[2] && (lock = xmc_py_flag(a[2])) < 0) || (a[3] && (dma = xmc_py_flag(a[3])) < 0)) {
        PyErr_Clear();
        return 0;
    }
    *flags = lock ? XMC_LOCK | (dma ? XMC_DMA : 0u) : 0u;
    return 1;
}

/*
 * The (paddr, buffer) of readinto and write, the buffer exported with flags
 * into *view; 0 (nothing held, no error set) when the checked method must
 * see them: a missing or unknown argument, not an int, not such a buffer, or
 * a range past 2**64.
 */
static int xmc_py_buffer_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                              const char *buffer_name, int flags, uint64_t *paddr,
                              Py_buffer *view)
{
    const char *const names[] = { xmc_py_names[0], buffer_name };
    PyObject *a[2];

    if (!xmc_py_args(args, nargs, kwnames, names, 2, a) || !a[0] || !a[1] ||
        !xmc_py_u64(a[0], paddr) || PyObject_GetBuffer(a[1], view, flags) < 0) {
        PyErr_Clear();
        return 0;
    }
    if (view->len && *paddr > UINT64_MAX - ((uint64_t)view->len - 1)) {
        PyBuffer_Release(view);
        return 0;
    }
    return 1;
}

/* The host address that is the one argument of ram_addr and unlock, or NULL
 * when it is not an exact int given once (the checked method then raises). */
static const void *xmc_py_address(PyObject *const *args, Py_ssize_t n, PyObject *kwnames)
{
    PyObject *arg;
    uint64_t addr;

    if (!xmc_py_args(args, n, kwnames, &xmc_py_names[5], 1, &arg) || !arg ||
        !xmc_py_u64(arg, &addr) || addr > UINTPTR_MAX)
        return NULL;
    return (const void *)(uintptr_t)addr;
}

/*
 * The n segments of `seq` (an exact list or tuple) into segs[]: each an
 * exact tuple of two exact ints, a (paddr, size) in range.  0 (no error
 * set) for anything else.
 */
static int xmc_py_segments(PyObject *seq, Py_ssize_t n, uint64_t max_size, xmc_sg *segs)
{
    PyObject *(*item)(PyObject *, Py_ssize_t) = PyList_CheckExact(seq) ? PyList_GetItem
                                                                       : PyTuple_GetItem;
    PyTypeObject *tuple = &PyTuple_Type, *int_ = &PyLong_Type;

    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = item(seq, i), *a, *b;
        xmc_sg *s = &segs[i];

        if (!o || Py_TYPE(o) != tuple || Py_SIZE(o) != 2 ||
            Py_TYPE(a = PyTuple_GetItem(o, 0)) != int_ ||
            Py_TYPE(b = PyTuple_GetItem(o, 1)) != int_ ||
            !xmc_py_u64_exact(a, &s->paddr) || !xmc_py_u64_exact(b, &s->size) ||
            s->size > max_size || (s->size && s->paddr > UINT64_MAX - (s->size - 1)))
            return 0;
    }
    return 1;
}

#endif /* XMC_PY_PARSER_H */
