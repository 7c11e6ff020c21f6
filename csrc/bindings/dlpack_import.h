// Minimal DLPack consumer (ABI of dlpack.h v0.8 and v1.x, written from the DLPack
// specification) for pybind11: takes "dltensor" and "dltensor_versioned" capsules from numpy,
// torch or any other producer, without linking any of them.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

namespace galguard {
namespace dl {

namespace py = pybind11;

enum DeviceType : int32_t { kCPU = 1, kCUDA = 2, kCUDAHost = 3, kCUDAManaged = 13 };
enum TypeCode : uint8_t { kInt = 0, kUInt = 1, kFloat = 2, kBfloat = 4, kComplex = 5, kBool = 6 };

struct Device {
  int32_t device_type;
  int32_t device_id;
};
struct DataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct Tensor {
  void* data;
  Device device;
  int32_t ndim;
  DataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct ManagedTensor {
  Tensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(ManagedTensor*);
};
struct Version {
  uint32_t major;
  uint32_t minor;
};
struct ManagedTensorVersioned {
  Version version;
  void* manager_ctx;
  void (*deleter)(ManagedTensorVersioned*);
  uint64_t flags;
  Tensor dl_tensor;
};
constexpr uint64_t kFlagReadOnly = 1ull << 0;

// dtype tags used by the bindings
enum class DType { kFloat32, kFloat64, kInt32, kInt64, kOther };

// An imported tensor: owns the producer's managed tensor until destroyed (GIL held).
class Imported {
 public:
  Imported(const py::handle& obj, const char* name, bool writable) : name_(name) {
    PyObject* cap = obj.ptr();
    if (!PyCapsule_CheckExact(cap)) {
      throw py::value_error(std::string(name) + " must be a DLPack capsule");
    }
    const char* cname = PyCapsule_GetName(cap);
    if (cname && std::string(cname) == "dltensor_versioned") {
      auto* m = static_cast<ManagedTensorVersioned*>(PyCapsule_GetPointer(cap, cname));
      if (!m) throw py::error_already_set();
      if (m->version.major != 1) {
        throw py::value_error(std::string(name) + ": unsupported DLPack major version " +
                              std::to_string(m->version.major));
      }
      if (writable && (m->flags & kFlagReadOnly)) {
        throw py::value_error(std::string(name) + " must be writable, got a read-only array");
      }
      versioned_ = m;
      t_ = &m->dl_tensor;
      PyCapsule_SetName(cap, "used_dltensor_versioned");
    } else if (cname && std::string(cname) == "dltensor") {
      auto* m = static_cast<ManagedTensor*>(PyCapsule_GetPointer(cap, cname));
      if (!m) throw py::error_already_set();
      legacy_ = m;
      t_ = &m->dl_tensor;
      PyCapsule_SetName(cap, "used_dltensor");
    } else {
      throw py::value_error(std::string(name) + " must be an unused DLPack capsule, got '" +
                            (cname ? cname : "") + "'");
    }
  }
  Imported(const Imported&) = delete;
  Imported& operator=(const Imported&) = delete;
  ~Imported() {
    if (versioned_ && versioned_->deleter) versioned_->deleter(versioned_);
    if (legacy_ && legacy_->deleter) legacy_->deleter(legacy_);
  }

  const char* name() const { return name_; }
  int ndim() const { return t_->ndim; }
  int64_t shape(int i) const { return t_->shape[i]; }
  std::vector<int64_t> shape() const { return std::vector<int64_t>(t_->shape, t_->shape + t_->ndim); }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < t_->ndim; ++i) n *= t_->shape[i];
    return n;
  }
  bool is_cuda() const {
    return t_->device.device_type == kCUDA || t_->device.device_type == kCUDAManaged;
  }
  bool is_cpu() const {
    return t_->device.device_type == kCPU || t_->device.device_type == kCUDAHost;
  }
  int device_id() const { return t_->device.device_id; }
  DType dtype() const {
    const DataType d = t_->dtype;
    if (d.lanes != 1) return DType::kOther;
    if (d.code == kFloat && d.bits == 32) return DType::kFloat32;
    if (d.code == kFloat && d.bits == 64) return DType::kFloat64;
    if (d.code == kInt && d.bits == 32) return DType::kInt32;
    if (d.code == kInt && d.bits == 64) return DType::kInt64;
    return DType::kOther;
  }
  bool contiguous() const {
    if (!t_->strides) return true;
    int64_t expected = 1;
    for (int i = t_->ndim - 1; i >= 0; --i) {
      if (t_->shape[i] != 1 && t_->strides[i] != expected) return false;
      expected *= t_->shape[i];
    }
    return true;
  }
  template <typename T>
  T* data() const {
    return reinterpret_cast<T*>(static_cast<char*>(t_->data) + t_->byte_offset);
  }

 private:
  const char* name_;
  Tensor* t_ = nullptr;
  ManagedTensor* legacy_ = nullptr;
  ManagedTensorVersioned* versioned_ = nullptr;
};

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
    default: return "another dtype";
  }
}

inline std::string shape_str(const Imported& t) {
  std::string s = "(";
  for (int i = 0; i < t.ndim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(t.shape(i));
  }
  if (t.ndim() == 1) s += ",";
  return s + ")";
}

// Checks shared by the bindings; messages name the argument, the expectation and what came.
inline void require(bool ok, const std::string& message) {
  if (!ok) throw py::value_error(message);
}
inline void require_contiguous(const Imported& t) {
  require(t.contiguous(), std::string(t.name()) + " must be C-contiguous");
}
inline void require_dtype(const Imported& t, DType d) {
  require(t.dtype() == d, std::string(t.name()) + " must have dtype " + dtype_name(d) + ", got " +
                              dtype_name(t.dtype()));
}
inline void require_shape(const Imported& t, const std::vector<int64_t>& shape) {
  bool ok = t.ndim() == static_cast<int>(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = t.shape(static_cast<int>(i)) == shape[i];
  if (!ok) {
    std::string s = "(";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    if (shape.size() == 1) s += ",";
    s += ")";
    throw py::value_error(std::string(t.name()) + " must have shape " + s + ", got " +
                          shape_str(t));
  }
}
inline void require_same_device(const Imported& t, const Imported& ref) {
  require(t.is_cuda() == ref.is_cuda() && (!t.is_cuda() || t.device_id() == ref.device_id()),
          std::string(t.name()) + " must be on the device of " + ref.name());
}

}  // namespace dl
}  // namespace galguard
