/*
 * hot.h - MapCache's hot methods on MapCache itself (CPython): its base
 * FastCache, which holds each cache's NativeCache, and a method descriptor
 * of MapCache for each hot method.
 *
 * `cache.map_ptr(p)` must cost the builtin's call and no more.  CPython
 * specialises a method descriptor of the object's exact type on an object
 * without an instance dict (MapCache has __slots__): the lookup makes no
 * object and the call is the C function's, given the cache.  That function
 * calls the C function of the cache's builtin on its NativeCache; a cache
 * without one (the reference's, or one made without the builtins) gets
 * MapCache's method of the same name.  So every cache is of its own class
 * (`type(cache) is MapCache`), a subclass's own method wins as any method
 * does, and `cache.read`, like any bound method, holds its cache.
 */
#ifndef XMC_PY_HOT_H
#define XMC_PY_HOT_H

#include "objects.h"

typedef struct {
    PyObject_HEAD
    PyObject *native; /* the cache's NativeCache, or NULL: no builtins */
} xmc_py_fast;

typedef PyObject *(*xmc_py_fastfn)(PyObject *self, PyObject *const *args, Py_ssize_t n,
                                   PyObject *kwnames);

static PyTypeObject *xmc_py_fast_type;
static PyObject *xmc_py_hot_funcs[XMC_PY_NHOT]; /* MapCache's methods, by xmc_py_hot_names */
static xmc_py_fastfn xmc_py_hot_fns[XMC_PY_NHOT]; /* the builtins' C functions */
static PyMethodDef xmc_py_hot_defs[XMC_PY_NHOT];

/* MapCache's hot method i on self (a FastCache: the descriptor checked it) */
static PyObject *xmc_py_hot_call(int i, PyObject *self, PyObject *const *args, Py_ssize_t n,
                                 PyObject *kwnames)
{
    PyObject *native = ((xmc_py_fast *)self)->native; /* set once: lives as long as self */
    PyObject *stack[8], **buf = stack, *r;
    Py_ssize_t total;

    if (native)
        return xmc_py_hot_fns[i](native, args, n, kwnames);
    total = n + (kwnames ? PyTuple_Size(kwnames) : 0);
    if (total + 1 > (Py_ssize_t)(sizeof(stack) / sizeof(stack[0])) &&
        !(buf = PyMem_Malloc((size_t)(total + 1) * sizeof(*buf))))
        return PyErr_NoMemory();
    buf[0] = self;
    for (Py_ssize_t k = 0; k < total; k++)
        buf[k + 1] = args[k];
    r = PyObject_Vectorcall(xmc_py_hot_funcs[i], buf, (size_t)(n + 1), kwnames);
    if (buf != stack)
        PyMem_Free(buf);
    return r;
}

#define XMC_PY_HOT(i)                                                                      \
    static PyObject *xmc_py_hot_##i(PyObject *self, PyObject *const *args, Py_ssize_t n,  \
                                    PyObject *kwnames)                                    \
    {                                                                                      \
        return xmc_py_hot_call(i, self, args, n, kwnames);                                 \
    }
XMC_PY_HOT(0)
XMC_PY_HOT(1)
XMC_PY_HOT(2)
XMC_PY_HOT(3)
XMC_PY_HOT(4)
XMC_PY_HOT(5)
XMC_PY_HOT(6)
XMC_PY_HOT(7)
#undef XMC_PY_HOT

static const xmc_py_fastfn xmc_py_hot_entry[] = {
    xmc_py_hot_0, xmc_py_hot_1, xmc_py_hot_2, xmc_py_hot_3,
    xmc_py_hot_4, xmc_py_hot_5, xmc_py_hot_6, xmc_py_hot_7,
};
_Static_assert(sizeof(xmc_py_hot_entry) / sizeof(xmc_py_hot_entry[0]) == XMC_PY_NHOT,
               "one entry per hot method");

static int xmc_py_fast_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(((xmc_py_fast *)op)->native);
    return 0;
}

static int xmc_py_fast_clear(PyObject *op)
{
    Py_CLEAR(((xmc_py_fast *)op)->native);
    return 0;
}

static void xmc_py_fast_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    freefunc free_fn = (freefunc)PyType_GetSlot(tp, Py_tp_free);

    PyObject_GC_UnTrack(op);
    xmc_py_fast_clear(op);
    free_fn(op);
    Py_DECREF(tp);
}

/* cache._set_fast(native): the NativeCache whose builtins the hot methods call; once. */
static PyObject *xmc_py_fast_set(PyObject *op, PyObject *native)
{
    xmc_py_fast *self = (xmc_py_fast *)op;

    if (!PyObject_TypeCheck(native, xmc_py_cache_type)) {
        PyErr_SetString(PyExc_TypeError, "_set_fast() takes a NativeCache");
        return NULL;
    }
    if (self->native) {
        PyErr_SetString(PyExc_AttributeError, "the cache's NativeCache is set already");
        return NULL;
    }
    self->native = Py_NewRef(native);
    Py_RETURN_NONE;
}

static PyMethodDef xmc_py_fast_methods[] = {
    { "_set_fast", xmc_py_fast_set, METH_O,
      "_set_fast(native)\n--\n\nThe NativeCache whose builtins the hot methods call (once)." },
    { NULL, NULL, 0, NULL },
};

static PyType_Slot xmc_py_fast_slots[] = {
    { Py_tp_doc, "The base of MapCache on CPython: where a cache keeps its NativeCache (ffi/hot.h)." },
    { Py_tp_new, PyType_GenericNew },
    { Py_tp_dealloc, xmc_py_fast_dealloc },
    { Py_tp_traverse, xmc_py_fast_traverse },
    { Py_tp_clear, xmc_py_fast_clear },
    { Py_tp_methods, xmc_py_fast_methods },
    { 0, NULL },
};

static PyType_Spec xmc_py_fast_spec = {
    "xenmapcache._core.FastCache", sizeof(xmc_py_fast), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, xmc_py_fast_slots,
};

/*
 * make_hot(cls): replace each hot method of cls (MapCache, a FastCache) by
 * a method descriptor of cls calling the builtin's C function, documented
 * as the builtin is (its signature, then the method's docstring).  Once.
 */
static PyObject *xmc_py_make_hot(PyObject *unused, PyObject *cls)
{
    (void)unused;
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, xmc_py_fast_type)) {
        PyErr_SetString(PyExc_TypeError, "make_hot(cls): cls must subclass FastCache");
        return NULL;
    }
    if (xmc_py_hot_funcs[0]) {
        PyErr_SetString(PyExc_RuntimeError, "make_hot() was called already");
        return NULL;
    }
    for (int i = 0; i < XMC_PY_NHOT; i++)
        if (!(xmc_py_hot_funcs[i] = PyObject_GetAttrString(cls, xmc_py_hot_names[i])))
            goto fail;
    if (xmc_py_document_hot(xmc_py_hot_funcs) < 0)
        goto fail;
    for (int i = 0; i < XMC_PY_NHOT; i++) {
        PyMethodDef *def = xmc_py_cache_method(xmc_py_hot_names[i]);
        size_t name = strlen(def->ml_name) + 1, len = strlen(def->ml_doc);
        char *doc = PyMem_Malloc(len + 8); /* "name($self, " + the rest and its NUL: kept for good */
        PyObject *d;
        int rc;

        if (!doc)
            return PyErr_NoMemory();
        memcpy(doc, def->ml_doc, name);           /* "name(" */
        memcpy(doc + name, "$self, ", 7);          /* the signature of a method */
        memcpy(doc + name + 7, def->ml_doc + name, len - name + 1);
        xmc_py_hot_fns[i] = (xmc_py_fastfn)(void (*)(void))def->ml_meth;
        xmc_py_hot_defs[i] = (PyMethodDef){ def->ml_name,
                                            (PyCFunction)(void (*)(void))xmc_py_hot_entry[i],
                                            METH_FASTCALL | METH_KEYWORDS, doc };
        if (!(d = PyDescr_NewMethod((PyTypeObject *)cls, &xmc_py_hot_defs[i])))
            return NULL; /* half made: cls is unusable, and so is the import */
        rc = PyObject_SetAttrString(cls, def->ml_name, d);
        Py_DECREF(d);
        if (rc < 0)
            return NULL;
    }
    Py_RETURN_NONE;
fail:
    for (int i = 0; i < XMC_PY_NHOT; i++)
        Py_CLEAR(xmc_py_hot_funcs[i]);
    return NULL;
}

static PyMethodDef xmc_py_make_hot_def = {
    "make_hot", xmc_py_make_hot, METH_O,
    "make_hot(cls)\n--\n\nPut a method descriptor calling the builtin over each of MapCache's "
    "hot methods (once).",
};

#endif /* XMC_PY_HOT_H */
