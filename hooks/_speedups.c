/* Compiled fast path of mlsm.hooks.log: a row buffer whose log() is a vectorcall.
 *
 * It takes only the plain call, log(step=<int or None>, [total_steps=<unchanged>,]
 * name=<float>, ...): it reads the clock and keeps step, time and values in C arrays, with no
 * Python object made or kept beyond a reference to the call's keyword-name tuple. Everything
 * else (ints, tensors, a new total_steps, odd steps, more than MAX_METRICS metrics, a full
 * buffer) goes to the Python log() with the same arguments, so one code path defines what a
 * call means. drain() formats the rows as metrics.jsonl lines exactly as the Python encoder
 * does (%.12g values, "t" with %.3f, NaN and infinities as the strings "nan", "inf", "-inf").
 *
 * Rows made by the Python path arrive through append() as (step, mono, metrics) tuples and
 * keep their place in the order. The GIL is held throughout. Python code can still run in the
 * middle: the slow path, tick() and quote() are called when the buffer is consistent, and any
 * allocation may run a finalizer that logs (and so grows the row array) or flushes. So drain()
 * and take() first move all rows out of the Recorder (detach), and a nested drain() or take()
 * takes nothing, so lines keep their order.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define MAX_METRICS 16

enum { ROW_FAST = 0, ROW_OBJECT = 1 };

typedef struct {
    long long step;
    double mono;
    PyObject *ref; /* FAST: the call's kwnames tuple; OBJECT: a (step, mono, metrics) tuple */
    Py_ssize_t off; /* FAST: index of the row's first value in the pool */
    unsigned char kind;
    unsigned char has_step;
    unsigned char n; /* FAST: how many values */
} Row;

typedef struct {
    PyObject_HEAD
    Row *rows;
    Py_ssize_t count;  /* rows kept */
    Py_ssize_t limit;  /* log() takes a row only below this; then tick() flushes */
    Py_ssize_t size;   /* rows allocated: append() may grow past limit */
    double *pool;      /* the values of compiled-path rows: limit * MAX_METRICS never fills */
    Py_ssize_t pool_len;
    double due;        /* tick() is called once the clock reaches it */
    long long total;   /* the total_steps the Python side remembers, if has_total */
    int has_total;
    int draining;      /* a drain() or take() is running: a nested one takes nothing */
    PyObject *slow;    /* the Python log(): called for every call this path does not take */
    PyObject *tick;    /* tick(step, now): a flush or a heartbeat is due, or the buffer full */
    PyObject *quote;   /* quote(name) -> the JSON string literal of a metric name */
    PyObject *names;   /* kwnames tuple -> tuple of quoted metric names (bytes) */
} Recorder;

static PyObject *str_step, *str_total_steps;

static int
is_name(PyObject *name, PyObject *interned, Py_ssize_t length)
{
    if (name == interned) {
        return 1;
    }
    return PyUnicode_GET_LENGTH(name) == length && PyUnicode_Compare(name, interned) == 0;
}

static int
is_metric(PyObject *name)
{
    /* A keyword of log() that names a metric, not one of its parameters. */
    return !is_name(name, str_step, 4) && !is_name(name, str_total_steps, 11);
}

static int
full(Recorder *self)
{
    return self->count >= self->limit;
}

static int
ready(Recorder *self)
{
    if (self->rows == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Recorder.__init__() was not called");
        return 0;
    }
    return 1;
}

static double
monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* what time.monotonic() reads on Linux */
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct {
    Row *rows;     /* rows taken out of a Recorder: their references are owned here */
    double *pool;  /* their values; the rows' offsets index this copy */
    Py_ssize_t n;
} Batch;

static int
detach(Recorder *self, Batch *batch)
{
    /* Move every row (and its values) out of the Recorder before any Python code can run:
     * whatever a finalizer, a signal handler or a fork handler then does to the Recorder
     * (log, append, clear, a nested drain) cannot touch these rows. */
    batch->n = self->count;
    batch->rows = PyMem_Malloc((size_t)(self->count + 1) * sizeof(Row));
    batch->pool = PyMem_Malloc((size_t)(self->pool_len + 1) * sizeof(double));
    if (batch->rows == NULL || batch->pool == NULL) {
        PyMem_Free(batch->rows);
        PyMem_Free(batch->pool);
        PyErr_NoMemory();
        return -1;
    }
    memcpy(batch->rows, self->rows, (size_t)self->count * sizeof(Row));
    memcpy(batch->pool, self->pool, (size_t)self->pool_len * sizeof(double));
    self->count = 0;
    self->pool_len = 0;
    return 0;
}

static void
release(Batch *batch)
{
    /* Drop the batch's references (finalizers may run: the Recorder is consistent). */
    Py_ssize_t i;
    for (i = 0; i < batch->n; i++) {
        Py_DECREF(batch->rows[i].ref);
    }
    PyMem_Free(batch->rows);
    PyMem_Free(batch->pool);
}

static int
begin_taking(Recorder *self, Batch *batch)
{
    /* drain() and take(): 1 with every row moved into `batch` (release it with end_taking),
     * 0 when nested in another one (it takes nothing: lines keep their order), -1 on error. */
    if (!ready(self)) {
        return -1;
    }
    if (self->draining) {
        return 0;
    }
    if (detach(self, batch) < 0) {
        return -1;
    }
    self->draining = 1;
    return 1;
}

static void
end_taking(Recorder *self, Batch *batch)
{
    self->draining = 0;
    release(batch);
}

static int
drop_all(Recorder *self)
{
    Batch batch;
    if (detach(self, &batch) < 0) {
        return -1;
    }
    release(&batch);
    return 0;
}

static int
same_total(Recorder *self, PyObject *value)
{
    int overflow = 0;
    long long total;
    if (value == Py_None) {
        return 1;
    }
    if (!PyLong_CheckExact(value) || !self->has_total) {
        return 0;
    }
    total = PyLong_AsLongLongAndOverflow(value, &overflow);
    return !overflow && !(total == -1 && PyErr_Occurred()) && total == self->total;
}

static PyObject *
Recorder_log(Recorder *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Py_ssize_t i, nk = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    PyObject *step = nargs == 1 ? args[0] : NULL;
    long long step_value = 0;
    int overflow = 0, n = 0;
    double *values, now;
    Row *row;

    if (!ready(self)) {
        return NULL;
    }
    if (nargs > 1 || full(self)) {
        goto slow;
    }
    values = self->pool + self->pool_len;
    for (i = 0; i < nk; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i), *value = args[nargs + i];
        if (is_name(name, str_step, 4)) {
            if (step != NULL) {
                goto slow; /* given twice: the Python call raises the TypeError */
            }
            step = value;
        }
        else if (is_name(name, str_total_steps, 11)) {
            if (!same_total(self, value)) {
                goto slow;
            }
        }
        else if (PyFloat_CheckExact(value) && n < MAX_METRICS) {
            values[n++] = PyFloat_AS_DOUBLE(value);
        }
        else {
            goto slow; /* an int, a tensor, anything else: the Python path coerces it */
        }
    }
    if (n == 0) {
        goto slow;
    }
    if (step != NULL && step != Py_None) {
        if (!PyLong_CheckExact(step)) {
            goto slow;
        }
        step_value = PyLong_AsLongLongAndOverflow(step, &overflow);
        if (overflow || (step_value == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            goto slow;
        }
    }
    now = monotonic();
    row = &self->rows[self->count];
    row->step = step_value;
    row->has_step = step != NULL && step != Py_None;
    row->mono = now;
    row->kind = ROW_FAST;
    row->n = (unsigned char)n;
    row->off = self->pool_len;
    Py_INCREF(kwnames);
    row->ref = kwnames;
    self->pool_len += n;
    self->count++;
    if (now >= self->due || full(self)) {
        PyObject *done = PyObject_CallFunction(self->tick, "Od", step == NULL ? Py_None : step,
                                               now);
        if (done == NULL) {
            return NULL;
        }
        Py_DECREF(done);
    }
    Py_RETURN_NONE;

slow:
    return PyObject_Vectorcall(self->slow, args, (size_t)nargs, kwnames);
}

static PyObject *
Recorder_append(Recorder *self, PyObject *row)
{
    /* A row of the Python path, (step, mono, metrics): kept in order; the buffer grows if
     * it must (the Python path checks the size and flushes). */
    if (!ready(self)) {
        return NULL;
    }
    if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != 3) {
        PyErr_Format(PyExc_TypeError, "append() takes a (step, mono, metrics) tuple, not %R",
                     row);
        return NULL;
    }
    if (self->count >= self->size) {
        Py_ssize_t size = self->size * 2;
        Row *rows = PyMem_Realloc(self->rows, (size_t)size * sizeof(Row));
        if (rows == NULL) {
            return PyErr_NoMemory();
        }
        self->rows = rows;
        self->size = size;
    }
    Py_INCREF(row);
    self->rows[self->count].ref = row;
    self->rows[self->count].kind = ROW_OBJECT;
    self->count++;
    Py_RETURN_NONE;
}

static PyObject *
quoted_names(Recorder *self, PyObject *kwnames)
{
    /* Borrowed: the quoted metric names of a call with these keyword names, cached. */
    PyObject *names = PyDict_GetItemWithError(self->names, kwnames), *list, *result;
    Py_ssize_t i;
    if (names != NULL || PyErr_Occurred()) {
        return names;
    }
    list = PyList_New(0);
    if (list == NULL) {
        return NULL;
    }
    for (i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i), *text, *data;
        if (!is_metric(name)) {
            continue;
        }
        text = PyObject_CallOneArg(self->quote, name);
        if (text == NULL) {
            goto error;
        }
        data = PyUnicode_AsASCIIString(text);
        Py_DECREF(text);
        if (data == NULL || PyList_Append(list, data) < 0) {
            Py_XDECREF(data);
            goto error;
        }
        Py_DECREF(data);
    }
    result = PyList_AsTuple(list);
    Py_DECREF(list);
    if (result == NULL || PyDict_SetItem(self->names, kwnames, result) < 0) {
        Py_XDECREF(result);
        return NULL;
    }
    Py_DECREF(result);
    return result; /* the dict holds it */
error:
    Py_DECREF(list);
    return NULL;
}

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Text;

static int
reserve(Text *text, Py_ssize_t more)
{
    if (text->len + more <= text->cap) {
        return 0;
    }
    Py_ssize_t cap = (text->len + more) * 2;
    char *data = PyMem_Realloc(text->data, (size_t)cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    text->data = data;
    text->cap = cap;
    return 0;
}

static int
put(Text *text, const char *data, Py_ssize_t len)
{
    if (reserve(text, len) < 0) {
        return -1;
    }
    memcpy(text->data + text->len, data, (size_t)len);
    text->len += len;
    return 0;
}

static int
put_number(Text *text, double value)
{
    if (isfinite(value)) {
        if (reserve(text, 32) < 0) {
            return -1;
        }
        text->len += snprintf(text->data + text->len, 32, "%.12g", value);
        return 0;
    }
    if (isnan(value)) {
        return put(text, "\"nan\"", 5);
    }
    return value > 0 ? put(text, "\"inf\"", 5) : put(text, "\"-inf\"", 6);
}

static int
put_row(Text *text, const double *pool, Row *row, double offset, PyObject *names)
{
    char head[96];
    int i, len;
    if (row->has_step) {
        len = snprintf(head, sizeof head, "{\"step\": %lld, \"t\": %.3f", row->step,
                       row->mono + offset);
    }
    else {
        len = snprintf(head, sizeof head, "{\"step\": null, \"t\": %.3f", row->mono + offset);
    }
    if (len < 0 || len >= (int)sizeof head) {
        PyErr_SetString(PyExc_ValueError, "a row's time is out of range for metrics.jsonl");
        return -1;
    }
    if (put(text, head, len) < 0) {
        return -1;
    }
    for (i = 0; i < row->n; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        if (put(text, ", ", 2) < 0 ||
            put(text, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name)) < 0 ||
            put(text, ": ", 2) < 0 || put_number(text, pool[row->off + i]) < 0) {
            return -1;
        }
    }
    return put(text, "}\n", 2);
}

static int
flush_text(Text *text, PyObject *out)
{
    PyObject *str;
    if (text->len == 0) {
        return 0;
    }
    str = PyUnicode_DecodeASCII(text->data, text->len, NULL);
    text->len = 0;
    if (str == NULL || PyList_Append(out, str) < 0) {
        Py_XDECREF(str);
        return -1;
    }
    Py_DECREF(str);
    return 0;
}

static PyObject *
Recorder_drain(Recorder *self, PyObject *arg)
{
    /* Take every row: a list of str (lines of compiled-path rows, formatted here) and
     * (step, mono, metrics) tuples (rows of the Python path, for its encoder), in order.
     * A drain nested in one (from quote(), a finalizer, a signal handler) takes nothing, so
     * lines are written in order; the rows it leaves go out with the next flush. */
    double offset = PyFloat_AsDouble(arg);
    Py_ssize_t i;
    Text text = {NULL, 0, 0};
    PyObject *out = NULL, *last = NULL, *names = NULL;
    Batch batch;
    int taking;

    if (offset == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    taking = begin_taking(self, &batch);
    if (taking <= 0) {
        return taking < 0 ? NULL : PyList_New(0);
    }
    for (i = 0; i < batch.n; i++) { /* first the names: quote() is Python code */
        Row *row = &batch.rows[i];
        if (row->kind == ROW_FAST && row->ref != last) {
            if (quoted_names(self, row->ref) == NULL) {
                goto error;
            }
            last = row->ref;
        }
    }
    last = NULL;
    out = PyList_New(0);
    if (out == NULL) {
        goto error;
    }
    for (i = 0; i < batch.n; i++) {
        Row *row = &batch.rows[i];
        if (row->kind == ROW_OBJECT) {
            if (flush_text(&text, out) < 0 || PyList_Append(out, row->ref) < 0) {
                goto error;
            }
            continue;
        }
        if (row->ref != last) { /* the rows of a loop share one kwnames tuple */
            names = PyDict_GetItemWithError(self->names, row->ref);
            if (names == NULL || !PyTuple_Check(names) || PyTuple_GET_SIZE(names) != row->n) {
                if (!PyErr_Occurred()) {
                    PyErr_SetString(PyExc_RuntimeError, "metric names out of step with values");
                }
                goto error;
            }
            last = row->ref;
        }
        if (put_row(&text, batch.pool, row, offset, names) < 0) {
            goto error;
        }
    }
    if (flush_text(&text, out) < 0) {
        goto error;
    }
    PyMem_Free(text.data);
    end_taking(self, &batch);
    return out;
error:
    /* The rows are lost with the error (as a failed write loses them on the Python path). */
    PyMem_Free(text.data);
    Py_XDECREF(out);
    end_taking(self, &batch);
    return NULL;
}

static PyObject *
Recorder_take(Recorder *self, PyObject *Py_UNUSED(ignored))
{
    /* Take every row as a (step, mono, metrics) tuple (for the TensorBoard mirror). */
    Py_ssize_t i, j;
    PyObject *out, *item, *metrics, *step, *mono, *value;
    Batch batch;
    int taking = begin_taking(self, &batch);
    if (taking <= 0) {
        return taking < 0 ? NULL : PyList_New(0);
    }
    out = PyList_New(0);
    if (out == NULL) {
        goto error;
    }
    for (i = 0; i < batch.n; i++) {
        Row *row = &batch.rows[i];
        Py_ssize_t k = 0;
        if (row->kind == ROW_OBJECT) {
            if (PyList_Append(out, row->ref) < 0) {
                goto error;
            }
            continue;
        }
        metrics = PyDict_New();
        if (metrics == NULL) {
            goto error;
        }
        for (j = 0; j < PyTuple_GET_SIZE(row->ref); j++) {
            PyObject *name = PyTuple_GET_ITEM(row->ref, j);
            if (!is_metric(name)) {
                continue;
            }
            value = PyFloat_FromDouble(batch.pool[row->off + k++]);
            if (value == NULL || PyDict_SetItem(metrics, name, value) < 0) {
                Py_XDECREF(value);
                Py_DECREF(metrics);
                goto error;
            }
            Py_DECREF(value);
        }
        step = row->has_step ? PyLong_FromLongLong(row->step) : Py_NewRef(Py_None);
        mono = PyFloat_FromDouble(row->mono);
        item = step == NULL || mono == NULL ? NULL : PyTuple_Pack(3, step, mono, metrics);
        Py_XDECREF(step);
        Py_XDECREF(mono);
        Py_DECREF(metrics);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            goto error;
        }
        Py_DECREF(item);
    }
    end_taking(self, &batch);
    return out;
error:
    Py_XDECREF(out);
    end_taking(self, &batch);
    return NULL;
}

static PyObject *
Recorder_clear(Recorder *self, PyObject *Py_UNUSED(ignored))
{
    /* Called in a forked child (no drain of the parent's threads goes on there), or from
     * Python code run inside a drain, whose own rows are already out of the Recorder. */
    if (!ready(self)) {
        return NULL;
    }
    if (drop_all(self) < 0) {
        return NULL;
    }
    self->draining = 0;
    Py_RETURN_NONE;
}

static PyObject *
Recorder_set_total(Recorder *self, PyObject *value)
{
    int overflow = 0;
    long long total;
    if (value == Py_None) {
        self->has_total = 0;
        Py_RETURN_NONE;
    }
    total = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (total == -1 && PyErr_Occurred()) {
        return NULL;
    }
    self->has_total = !overflow;
    self->total = total;
    Py_RETURN_NONE;
}

static Py_ssize_t
Recorder_len(Recorder *self)
{
    return self->count;
}

static int
Recorder_init(Recorder *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"capacity", "slow", "tick", "quote", NULL};
    Py_ssize_t cap;
    PyObject *slow, *tick, *quote;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nOOO", kwlist, &cap, &slow, &tick, &quote)) {
        return -1;
    }
    if (cap < 1 || cap > (1 << 24)) {
        PyErr_Format(PyExc_ValueError, "capacity must be 1 to %d rows, not %zd", 1 << 24, cap);
        return -1;
    }
    if (self->rows != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a Recorder is initialised once");
        return -1;
    }
    self->rows = PyMem_Calloc((size_t)cap, sizeof(Row));
    self->pool = PyMem_Calloc((size_t)cap * MAX_METRICS, sizeof(double));
    self->names = PyDict_New();
    if (self->rows == NULL || self->pool == NULL || self->names == NULL) {
        PyMem_Free(self->rows);
        PyMem_Free(self->pool);
        Py_CLEAR(self->names);
        self->rows = NULL; /* not ready: every method refuses, __init__ may be retried */
        self->pool = NULL;
        PyErr_NoMemory();
        return -1;
    }
    self->limit = self->size = cap;
    self->due = INFINITY;
    self->slow = Py_NewRef(slow);
    self->tick = Py_NewRef(tick);
    self->quote = Py_NewRef(quote);
    return 0;
}

static void
Recorder_dealloc(Recorder *self)
{
    Py_ssize_t i;
    for (i = 0; self->rows != NULL && i < self->count; i++) {
        Py_DECREF(self->rows[i].ref);
    }
    PyMem_Free(self->rows);
    PyMem_Free(self->pool);
    Py_XDECREF(self->slow);
    Py_XDECREF(self->tick);
    Py_XDECREF(self->quote);
    Py_XDECREF(self->names);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Recorder_methods[] = {
    {"log", (PyCFunction)(void (*)(void))Recorder_log, METH_FASTCALL | METH_KEYWORDS,
     "log($self, /, step=None, *, total_steps=None, **metrics)\n--\n\n"
     "Record metrics for `step` in metrics.jsonl; also a heartbeat. Cheap enough for every\n"
     "step. This is the compiled path of mlsm.hooks.log: plain float metrics are kept here;\n"
     "anything else goes to the Python log(), whose docstring says what a call means."},
    {"append", (PyCFunction)Recorder_append, METH_O,
     "Keep a (step, mono, metrics) row of the Python path, in order."},
    {"drain", (PyCFunction)Recorder_drain, METH_O,
     "drain(offset) -> [str | tuple]: take every row; text for the compiled ones."},
    {"take", (PyCFunction)Recorder_take, METH_NOARGS,
     "take() -> [(step, mono, metrics)]: take every row as tuples."},
    {"clear", (PyCFunction)Recorder_clear, METH_NOARGS, "Drop every row unwritten."},
    {"set_total", (PyCFunction)Recorder_set_total, METH_O,
     "The total_steps the Python side remembers (None: none)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Recorder_members[] = {
    {"due", T_DOUBLE, offsetof(Recorder, due), 0, "log() calls tick() once the clock reaches this"},
    {NULL, 0, 0, 0, NULL},
};

static PySequenceMethods Recorder_sequence = {
    .sq_length = (lenfunc)Recorder_len,
};

static PyTypeObject RecorderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mlsm.hooks._speedups.Recorder",
    .tp_doc = PyDoc_STR("Recorder(capacity, slow, tick, quote): the compiled row buffer."),
    .tp_basicsize = sizeof(Recorder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Recorder_init,
    .tp_dealloc = (destructor)Recorder_dealloc,
    .tp_methods = Recorder_methods,
    .tp_members = Recorder_members,
    .tp_as_sequence = &Recorder_sequence,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_speedups",
    .m_doc = "Compiled fast path of mlsm.hooks.log (optional: the pure-Python path writes the "
             "same lines).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *m;
    str_step = PyUnicode_InternFromString("step");
    str_total_steps = PyUnicode_InternFromString("total_steps");
    if (str_step == NULL || str_total_steps == NULL || PyType_Ready(&RecorderType) < 0) {
        return NULL;
    }
    m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "Recorder", (PyObject *)&RecorderType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
