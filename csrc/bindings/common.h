// Helpers shared by the binding files: device dispatch, CUDA error checks, device guard.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

#include "dlpack_import.h"
#include "galguard/kernels.h"

namespace galguard {
namespace bind {

namespace py = pybind11;
using dl::DType;
using dl::Imported;

inline std::unique_ptr<Imported> optional_import(const py::object& obj, const char* name,
                                                 bool writable) {
  if (obj.is_none()) return nullptr;
  return std::make_unique<Imported>(obj, name, writable);
}

inline void require_device_supported(const Imported& t) {
  if (t.is_cuda()) {
#ifndef GALGUARD_WITH_CUDA
    throw py::value_error(std::string(t.name()) +
                          " is a CUDA array but galguard._core was built without CUDA");
#endif
  } else if (!t.is_cpu()) {
    throw py::value_error(std::string(t.name()) + " must be on the CPU or a CUDA device");
  }
}

#ifdef GALGUARD_WITH_CUDA
inline void check_cuda(int code, const char* what) {
  if (code != 0) {
    throw std::runtime_error(std::string("galguard CUDA kernel ") + what +
                             " failed: " + cuda::error_string(code));
  }
}

class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check_cuda(cuda::get_device(&previous_), "cudaGetDevice");
    if (previous_ != device) check_cuda(cuda::set_device(device), "cudaSetDevice");
  }
  ~DeviceGuard() { cuda::set_device(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};
#endif

// Run one kernel where `like` lives: `on_cuda(stream)` (a CUDA launcher returning a CUDA error
// code) on its device, or `on_cpu()`; either way with the GIL released. Every binding goes
// through here, so device selection, the GIL and CUDA error checks are written once.
template <typename OnCuda, typename OnCpu>
void dispatch(const Imported& like, const char* what, std::uintptr_t stream, OnCuda&& on_cuda,
              OnCpu&& on_cpu) {
  if (like.is_cuda()) {
#ifdef GALGUARD_WITH_CUDA
    DeviceGuard guard(like.device_id());
    int code;
    {
      py::gil_scoped_release release;
      code = on_cuda(reinterpret_cast<void*>(stream));
    }
    check_cuda(code, what);
#else
    (void)on_cuda;
    (void)stream;
    throw py::value_error(std::string(what) + ": " + like.name() +
                          " is a CUDA array but galguard._core was built without CUDA");
#endif
    return;
  }
  py::gil_scoped_release release;
  on_cpu();
}

void register_sampling(py::module_& m);
void register_de(py::module_& m);

}  // namespace bind
}  // namespace galguard
