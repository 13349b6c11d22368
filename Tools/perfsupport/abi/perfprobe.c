/*
 * perfprobe: a tiny extension module for Tools/perfsupport/abi-check.sh.
 *
 * It is compiled against the headers of a STOCK CPython 3.11 build and then
 * imported by the PATCHED interpreter: if the perf support changed the
 * layout of an object the stock headers expose (PyObject, PyTypeObject,
 * PyFunctionObject, PyCodeObject, PyThreadState, ...), the values this
 * module reads through stock offsets come out wrong.
 *
 *   perfprobe.call_each(func, n) -> str
 *       calls func(i) for i in range(n) from C (PyObject_CallObject), sums
 *       the int results; "calls=N sum=S type=T".  Under -X perf, func gets
 *       a trampoline although no Python frame called it.
 *   perfprobe.code_info(func) -> (co_argcount, co_firstlineno, co_name)
 *       read straight from the function and code structs (stock layout).
 *   perfprobe.tstate_check() -> bool
 *       fields of PyThreadState (stock layout) agree with the API.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *
perfprobe_call_each(PyObject *module, PyObject *args)
{
    PyObject *func;
    long n;
    if (!PyArg_ParseTuple(args, "Ol:call_each", &func, &n)) {
        return NULL;
    }
    if (!PyCallable_Check(func)) {
        PyErr_SetString(PyExc_TypeError, "call_each: func is not callable");
        return NULL;
    }
    long sum = 0;
    const char *type_name = "none";
    for (long i = 0; i < n; i++) {
        PyObject *arg = PyLong_FromLong(i);
        if (arg == NULL) {
            return NULL;
        }
        PyObject *call_args = PyTuple_Pack(1, arg);
        Py_DECREF(arg);
        if (call_args == NULL) {
            return NULL;
        }
        PyObject *result = PyObject_CallObject(func, call_args);
        Py_DECREF(call_args);
        if (result == NULL) {
            return NULL;
        }
        /* tp_name through the stock PyTypeObject layout. */
        type_name = Py_TYPE(result)->tp_name;
        long value = PyLong_AsLong(result);
        Py_DECREF(result);
        if (value == -1 && PyErr_Occurred()) {
            return NULL;
        }
        sum += value;
    }
    return PyUnicode_FromFormat("calls=%ld sum=%ld type=%s",
                                n, sum, type_name);
}

static PyObject *
perfprobe_code_info(PyObject *module, PyObject *func)
{
    if (!PyFunction_Check(func)) {
        PyErr_SetString(PyExc_TypeError, "code_info: expected a function");
        return NULL;
    }
    /* Both macros and the field reads use the stock struct offsets. */
    PyCodeObject *code = (PyCodeObject *)PyFunction_GET_CODE(func);
    return Py_BuildValue("(iiO)", code->co_argcount, code->co_firstlineno,
                         code->co_name);
}

static PyObject *
perfprobe_tstate_check(PyObject *module, PyObject *unused)
{
    PyObject *dict = PyThreadState_GetDict();   /* creates tstate->dict */
    PyThreadState *tstate = PyThreadState_Get();
    int ok = dict != NULL
             && tstate->dict == dict
             && tstate->interp == PyInterpreterState_Get()
             && tstate->thread_id == PyThread_get_thread_ident();
    return PyBool_FromLong(ok);
}

static PyMethodDef perfprobe_methods[] = {
    {"call_each", perfprobe_call_each, METH_VARARGS,
     "call_each(func, n): call func(i) for i in range(n) from C."},
    {"code_info", perfprobe_code_info, METH_O,
     "code_info(func): (co_argcount, co_firstlineno, co_name)."},
    {"tstate_check", perfprobe_tstate_check, METH_NOARGS,
     "tstate_check(): PyThreadState fields agree with the API."},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef perfprobe_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "perfprobe",
    .m_doc = "ABI probe built against stock CPython 3.11 headers.",
    .m_size = -1,
    .m_methods = perfprobe_methods,
};

PyMODINIT_FUNC
PyInit_perfprobe(void)
{
    return PyModule_Create(&perfprobe_module);
}
