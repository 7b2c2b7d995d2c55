/*
 * special.h - __enter__ and __exit__ of Mapping and MappingGroup: one
 * mechanism in two types, the descriptor (special_method) and the bound
 * method it makes (bound_method).
 *
 * CPython before 3.14 looks both up at every with statement and binds each
 * to the object in a new builtin method object, made for the GC and freed
 * at the end of the statement: most of what a with statement costs.  These
 * descriptors bind with a method object of their own instead, from a free
 * list.
 */
#ifndef XMC_PY_SPECIAL_H
#define XMC_PY_SPECIAL_H

#include "freelist.h"

typedef struct {
    PyObject_HEAD
    PyObject *(*fn)(PyObject *self, PyObject *unused); /* release, or enter */
    PyTypeObject *owner; /* the type whose dict holds it (borrowed: lives as long) */
    Py_ssize_t nargs;    /* 0 for __enter__; -1: any (__exit__ ignores them) */
    PyObject *name;
} xmc_py_special;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    xmc_py_special *descr;
    PyObject *self;
} xmc_py_bound;

static PyTypeObject *xmc_py_special_type;
static PyTypeObject *xmc_py_bound_type;

static xmc_py_freelist xmc_py_bound_free;

static PyObject *xmc_py_special_call(xmc_py_special *d, PyObject *self, Py_ssize_t nargs,
                                     PyObject *kw)
{
    if ((d->nargs >= 0 && nargs != d->nargs) || kw) {
        PyErr_Format(PyExc_TypeError, "%U() takes no %sarguments", d->name,
                     d->nargs ? "keyword " : "");
        return NULL;
    }
    return d->fn(self, NULL);
}

static PyObject *xmc_py_bound_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                                         PyObject *kwnames)
{
    xmc_py_bound *b = (xmc_py_bound *)op;

    (void)args;
    if (!b->self) { /* cleared by the GC */
        PyErr_SetString(PyExc_ReferenceError, "the method's object is gone");
        return NULL;
    }
    return xmc_py_special_call(b->descr, b->self, PyVectorcall_NARGS(nargsf),
                               kwnames && PyTuple_Size(kwnames) ? kwnames : NULL);
}

static int xmc_py_bound_traverse(PyObject *op, visitproc visit, void *arg)
{
    xmc_py_bound *b = (xmc_py_bound *)op;

    Py_VISIT(Py_TYPE(op));
    Py_VISIT(b->self);
    return 0;
}

static int xmc_py_bound_clear(PyObject *op)
{
    xmc_py_bound *b = (xmc_py_bound *)op;

    XMC_PY_CLEAR(b->self);
    XMC_PY_CLEAR(b->descr);
    return 0;
}

static void xmc_py_bound_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    xmc_py_bound_clear(op);
    xmc_py_fl_free(&xmc_py_bound_free, op);
}

static PyObject *xmc_py_bound_repr(PyObject *op)
{
    xmc_py_bound *b = (xmc_py_bound *)op;

    if (!b->descr || !b->self)
        return PyUnicode_FromString("<bound method, cleared>");
    return PyUnicode_FromFormat("<bound method %U of %R>", b->descr->name, b->self);
}

/* The TypeError of d given an object that is not of its type. */
static PyObject *xmc_py_special_misapplied(const xmc_py_special *d)
{
    PyObject *owner = PyType_GetName(d->owner);

    if (owner) {
        PyErr_Format(PyExc_TypeError, "%U() needs a %U object", d->name, owner);
        Py_DECREF(owner);
    }
    return NULL;
}

/* descr.__get__(obj, type): bound to obj, or the descriptor itself from the class */
static PyObject *xmc_py_special_get(PyObject *op, PyObject *obj, PyObject *type)
{
    xmc_py_special *d = (xmc_py_special *)op;
    xmc_py_bound *b;

    (void)type;
    if (!obj || obj == Py_None)
        return Py_NewRef(op);
    if (!PyObject_TypeCheck(obj, d->owner))
        return xmc_py_special_misapplied(d);
    b = (xmc_py_bound *)xmc_py_fl_new(&xmc_py_bound_free, xmc_py_bound_type, sizeof(*b), 1);
    if (!b)
        return NULL;
    b->vectorcall = xmc_py_bound_vectorcall;
    b->descr = (xmc_py_special *)xmc_py_ref(op);
    b->self = xmc_py_ref(obj);
    return (PyObject *)b;
}

/* Mapping.__exit__(m, None, None, None): called from the class */
static PyObject *xmc_py_special_tpcall(PyObject *op, PyObject *args, PyObject *kwargs)
{
    xmc_py_special *d = (xmc_py_special *)op;
    Py_ssize_t n = PyTuple_Size(args);
    PyObject *self = n >= 1 ? PyTuple_GetItem(args, 0) : NULL;

    if (!self || !PyObject_TypeCheck(self, d->owner))
        return xmc_py_special_misapplied(d);
    return xmc_py_special_call(d, self, n - 1, kwargs && PyDict_Size(kwargs) ? kwargs : NULL);
}

static void xmc_py_special_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);

    Py_XDECREF(((xmc_py_special *)op)->name);
    PyObject_Free(op);
    Py_DECREF(tp);
}

static PyMemberDef xmc_py_bound_members[] = {
    { "__vectorcalloffset__", Py_T_PYSSIZET, offsetof(xmc_py_bound, vectorcall), Py_READONLY,
      NULL },
    { "__self__", Py_T_OBJECT_EX, offsetof(xmc_py_bound, self), Py_READONLY, NULL },
    { NULL, 0, 0, 0, NULL },
};

static PyType_Slot xmc_py_bound_slots[] = {
    { Py_tp_dealloc, xmc_py_bound_dealloc },
    { Py_tp_traverse, xmc_py_bound_traverse },
    { Py_tp_clear, xmc_py_bound_clear },
    { Py_tp_call, PyVectorcall_Call },
    { Py_tp_repr, xmc_py_bound_repr },
    { Py_tp_members, xmc_py_bound_members },
    { 0, NULL },
};

static PyType_Spec xmc_py_bound_spec = {
    "xenmapcache._core.bound_method", sizeof(xmc_py_bound), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL |
        Py_TPFLAGS_DISALLOW_INSTANTIATION,
    xmc_py_bound_slots,
};

static PyMemberDef xmc_py_special_members[] = {
    { "__name__", Py_T_OBJECT_EX, offsetof(xmc_py_special, name), Py_READONLY, NULL },
    { NULL, 0, 0, 0, NULL },
};

static PyType_Slot xmc_py_special_slots[] = {
    { Py_tp_dealloc, xmc_py_special_dealloc },
    { Py_tp_descr_get, xmc_py_special_get },
    { Py_tp_call, xmc_py_special_tpcall },
    { Py_tp_members, xmc_py_special_members },
    { 0, NULL },
};

static PyType_Spec xmc_py_special_spec = {
    "xenmapcache._core.special_method", sizeof(xmc_py_special), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION, xmc_py_special_slots,
};

/* owner.<name> = a descriptor calling fn(self, NULL), given nargs positional arguments (-1: any). */
static int xmc_py_add_special(PyTypeObject *owner, const char *name,
                              PyObject *(*fn)(PyObject *, PyObject *), Py_ssize_t nargs)
{
    xmc_py_special *d = PyObject_Malloc(sizeof(*d));
    int rc;

    if (!d) {
        PyErr_NoMemory();
        return -1;
    }
    PyObject_Init((PyObject *)d, xmc_py_special_type);
    d->fn = fn;
    d->owner = owner;
    d->nargs = nargs;
    d->name = PyUnicode_InternFromString(name);
    rc = d->name ? PyObject_SetAttrString((PyObject *)owner, name, (PyObject *)d) : -1;
    Py_DECREF((PyObject *)d);
    return rc;
}

#endif /* XMC_PY_SPECIAL_H */
