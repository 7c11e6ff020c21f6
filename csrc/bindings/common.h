// Helpers shared by the binding files: device dispatch, CUDA error checks, device guard.
#pragma once

#include <pybind11/pybind11.h>

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
    throw std::runtime_error(std::string("galguard CUDA kernel ") + what + " failed: " +
                             cuda::error_string(code));
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

void register_sampling(py::module_& m);
void register_de(py::module_& m);

}  // namespace bind
}  // namespace galguard
