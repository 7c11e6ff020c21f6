// Placeholder module: replaced by the compiled-core work (issue 2).
#include <pybind11/pybind11.h>
namespace py = pybind11;
PYBIND11_MODULE(_core, m) {
  m.def("build_info", []() {
    py::dict d;
    d["cuda"] = false;
    d["openmp"] = false;
    d["version"] = GALGUARD_VERSION;
    return d;
  });
}
