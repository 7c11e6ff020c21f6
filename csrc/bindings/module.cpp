// galguard._core: pybind11 module of the compiled core. Thin: one file per topic
// (sampling.cpp, de.cpp); arrays arrive as DLPack capsules (see dlpack_import.h).
#include <pybind11/pybind11.h>

#include "common.h"
#include "galguard/philox.h"

namespace py = pybind11;

#ifndef GALGUARD_VERSION
#define GALGUARD_VERSION "0.0.0"
#endif
#ifndef GALGUARD_CUDA_ARCHITECTURES
#define GALGUARD_CUDA_ARCHITECTURES ""
#endif

PYBIND11_MODULE(_core, m) {
  m.doc() = "galguard compiled core: Philox-driven exact Poisson/binomial samplers and batched "
            "one-pixel differential evolution (C++/OpenMP and CUDA twins).";
  m.def(
      "build_info",
      []() {
        py::dict d;
#ifdef GALGUARD_WITH_CUDA
        d["cuda"] = true;
        d["cuda_architectures"] = std::string(GALGUARD_CUDA_ARCHITECTURES);
        d["cuda_version"] = std::string(GALGUARD_CUDA_VERSION);
#else
        d["cuda"] = false;
        d["cuda_architectures"] = std::string();
        d["cuda_version"] = std::string();
#endif
        d["openmp"] = galguard::cpu::have_openmp();
        d["version"] = std::string(GALGUARD_VERSION);
        d["compiler"] = std::string(GALGUARD_COMPILER);
        d["rng"] = std::string("philox4x32-10");
        d["dlpack"] = std::string("versioned and unversioned capsules");
        return d;
      },
      "What was compiled in: cuda, cuda_architectures, cuda_version, openmp, version, compiler.");
  m.def("set_num_threads", &galguard::cpu::set_num_threads, py::arg("n"),
        "Set the OpenMP thread count of the CPU kernels (shared with torch's OpenMP runtime).");
  m.def("get_max_threads", &galguard::cpu::get_max_threads,
        "OpenMP threads the CPU kernels will use.");
  m.def(
      "philox4x32_10",
      [](uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
        const galguard::U32x4 r = galguard::philox4x32_10(c0, c1, c2, c3, k0, k1);
        return py::make_tuple(r.v[0], r.v[1], r.v[2], r.v[3]);
      },
      py::arg("c0"), py::arg("c1"), py::arg("c2"), py::arg("c3"), py::arg("k0"), py::arg("k1"),
      "One Philox4x32-10 block (for known-answer tests).");
  galguard::bind::register_sampling(m);
  galguard::bind::register_de(m);
}
