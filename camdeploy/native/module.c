/* camdeploy._boxes: Python binding of cd_map_boxes and cd_cam_boxes (boxes.h), built by
 * setup.py when a C compiler is present; camdeploy.runtime.boxes and .map_boxes fall back to OpenCV
 * and NumPy without it.
 * The work runs without the GIL, so that threads boxing parts of a batch run side by side. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "boxes.h"

static int check_size(const Py_buffer *buffer, Py_ssize_t expected, const char *name) {
    if (buffer->len != expected) {
        PyErr_Format(PyExc_ValueError, "%s: got %zd bytes, expected %zd", name, buffer->len, expected);
        return 0;
    }
    return 1;
}

/* None, or MemoryError when the C code ran out of memory. */
static PyObject *outcome(int status) { return status != 0 ? PyErr_NoMemory() : Py_NewRef(Py_None); }

static PyObject *map_boxes(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer maps, boxes, decided;
    Py_ssize_t count;
    int h, w, out_h, out_w;
    double tau, margin_per_unit;
    if (!PyArg_ParseTuple(args, "y*niiiiddw*w*:map_boxes", &maps, &count, &h, &w, &out_h, &out_w, &tau,
                          &margin_per_unit, &boxes, &decided))
        return NULL;
    PyObject *result = NULL;
    if (count < 0 || h < 1 || w < 1 || out_h < 1 || out_w < 1) {
        PyErr_Format(PyExc_ValueError, "map_boxes: count %zd and sizes %dx%d -> %dx%d must be positive", count, h,
                     w, out_h, out_w);
        goto done;
    }
    if (!check_size(&maps, count * h * w * (Py_ssize_t)sizeof(float), "maps") ||
        !check_size(&boxes, count * 4 * (Py_ssize_t)sizeof(float), "boxes") ||
        !check_size(&decided, count, "decided"))
        goto done;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = cd_map_boxes((const float *)maps.buf, (size_t)count, h, w, out_h, out_w, tau, margin_per_unit,
                          (float *)boxes.buf, (uint8_t *)decided.buf);
    Py_END_ALLOW_THREADS
    result = outcome(status);
done:
    PyBuffer_Release(&maps);
    PyBuffer_Release(&boxes);
    PyBuffer_Release(&decided);
    return result;
}

static PyObject *cam_boxes(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer cams, boxes;
    Py_ssize_t count;
    int height, width;
    float tau;
    if (!PyArg_ParseTuple(args, "y*niifw*:cam_boxes", &cams, &count, &height, &width, &tau, &boxes)) return NULL;
    PyObject *result = NULL;
    if (count < 0 || height < 1 || width < 1) {
        PyErr_Format(PyExc_ValueError, "cam_boxes: count %zd and size %dx%d must be positive", count, height, width);
        goto done;
    }
    if (!check_size(&cams, count * height * width * (Py_ssize_t)sizeof(float), "cams") ||
        !check_size(&boxes, count * 4 * (Py_ssize_t)sizeof(float), "boxes"))
        goto done;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = cd_cam_boxes((const float *)cams.buf, (size_t)count, height, width, tau, (float *)boxes.buf);
    Py_END_ALLOW_THREADS
    result = outcome(status);
done:
    PyBuffer_Release(&cams);
    PyBuffer_Release(&boxes);
    return result;
}

static PyObject *upsample(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer map, out;
    int h, w, out_h, out_w;
    if (!PyArg_ParseTuple(args, "y*iiiiw*:upsample", &map, &h, &w, &out_h, &out_w, &out)) return NULL;
    PyObject *result = NULL;
    if (h < 1 || w < 1 || out_h < 1 || out_w < 1) {
        PyErr_Format(PyExc_ValueError, "upsample: sizes %dx%d -> %dx%d must be positive", h, w, out_h, out_w);
        goto done;
    }
    if (!check_size(&map, (Py_ssize_t)h * w * (Py_ssize_t)sizeof(float), "map") ||
        !check_size(&out, (Py_ssize_t)out_h * out_w * (Py_ssize_t)sizeof(float), "out"))
        goto done;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = cd_upsample((const float *)map.buf, h, w, out_h, out_w, (float *)out.buf);
    Py_END_ALLOW_THREADS
    result = outcome(status);
done:
    PyBuffer_Release(&map);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"upsample", upsample, METH_VARARGS,
     "upsample(map, h, w, out_h, out_w, out): the float32 bilinear upsampling map_boxes uses, of one "
     "float32 map [h, w] into float32 out [out_h, out_w]."},
    {"cam_boxes", cam_boxes, METH_VARARGS,
     "cam_boxes(cams, count, height, width, tau, boxes): the host rule's boxes of float32 CAMs "
     "[count, height, width] into float32 boxes [count, 4] (see camdeploy/native/boxes.h)."},
    {"map_boxes", map_boxes, METH_VARARGS,
     "map_boxes(maps, count, h, w, out_h, out_w, tau, margin_per_unit, boxes, decided): box float32 maps "
     "[count, h, w] upsampled to out_h x out_w into float32 boxes [count, 4] and uint8 decided [count] "
     "(see camdeploy/native/boxes.h)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_boxes", NULL, -1, methods};

PyMODINIT_FUNC PyInit__boxes(void) { return PyModule_Create(&module); }
