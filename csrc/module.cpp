// The genaccel._C extension module. Loading it runs the static TORCH_LIBRARY initialisers in
// csrc/ops/*.cpp, which register torch.ops.genaccel.*. Written against the limited C API so one abi3
// binary serves every Python >= 3.10; its only function reports how the binary was built.
#include <Python.h>

#ifndef GENACCEL_WITH_CUDA
#define GENACCEL_WITH_CUDA 0
#endif

namespace {

int set_item(PyObject* dict, const char* key, PyObject* value) {
  if (value == nullptr) return -1;
  int rc = PyDict_SetItemString(dict, key, value);
  Py_DECREF(value);
  return rc;
}

PyObject* build_info(PyObject*, PyObject*) {
  PyObject* d = PyDict_New();
  if (d == nullptr) return nullptr;
  if (set_item(d, "version", PyUnicode_FromString(GENACCEL_VERSION)) ||
      set_item(d, "torch_version", PyUnicode_FromString(GENACCEL_TORCH_VERSION)) ||
      set_item(d, "cuda", PyBool_FromLong(GENACCEL_WITH_CUDA)) ||
      set_item(d, "cuda_archs", PyUnicode_FromString(GENACCEL_WITH_CUDA ? GENACCEL_CUDA_ARCHS : "")) ||
      set_item(d, "cpu_capability", PyUnicode_FromString(GENACCEL_CPU_CAPABILITY))) {
    Py_DECREF(d);
    return nullptr;
  }
  return d;
}

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS, "How this binary was built (version, torch, CUDA, CPU capability)."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "genaccel kernels (registers torch.ops.genaccel)", -1, methods};

}  // namespace

extern "C" PyObject* PyInit__C(void) { return PyModule_Create(&module_def); }
