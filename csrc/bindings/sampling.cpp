// Bindings of the Poisson and binomial-thinning kernels. User-facing validation lives in
// galguard/kernels.py; the checks here only protect the kernels from malformed calls.
#include <cstdint>

#include "common.h"

namespace galguard {
namespace bind {

namespace {

void check_rows(const Imported& x, const Imported& out, const Imported* index) {
  dl::require(x.ndim() >= 1, std::string(x.name()) + " must have at least 1 dimension, got 0");
  dl::require_contiguous(x);
  dl::require_contiguous(out);
  dl::require_shape(out, x.shape());
  dl::require(out.dtype() == x.dtype(), "out must have the dtype of " + std::string(x.name()));
  dl::require_same_device(out, x);
  require_device_supported(x);
  if (index) {
    dl::require_dtype(*index, DType::kInt64);
    dl::require_contiguous(*index);
    dl::require_shape(*index, {x.shape(0)});
    dl::require_same_device(*index, x);
  }
}

template <typename T>
void run_poisson(const Imported& mean, Imported& out, const Imported* index, uint64_t seed,
                 uint32_t realisation, std::uintptr_t stream) {
  const int64_t rows = mean.shape(0);
  const int64_t row_size = rows ? mean.numel() / rows : 0;
  const int64_t* idx = index ? index->data<int64_t>() : nullptr;
  dispatch(
      mean, "poisson", stream,
      [&](void* s) {
        return cuda::poisson<T>(mean.data<T>(), out.data<T>(), rows, row_size, idx, seed,
                                realisation, s);
      },
      [&] {
        cpu::poisson<T>(mean.data<T>(), out.data<T>(), rows, row_size, idx, seed, realisation);
      });
}

void poisson(py::object mean_o, py::object out_o, py::object index_o, uint64_t seed,
             uint32_t realisation, std::uintptr_t stream) {
  Imported mean(mean_o, "mean", false);
  Imported out(out_o, "out", true);
  auto index = optional_import(index_o, "index", false);
  check_rows(mean, out, index.get());
  switch (mean.dtype()) {
    case DType::kFloat32:
      return run_poisson<float>(mean, out, index.get(), seed, realisation, stream);
    case DType::kFloat64:
      return run_poisson<double>(mean, out, index.get(), seed, realisation, stream);
    default:
      throw py::value_error(std::string("mean must have dtype float32 or float64, got ") +
                            dl::dtype_name(mean.dtype()));
  }
}

template <typename T>
void run_binomial(const Imported& counts, const Imported* p, double p_scalar, Imported& out,
                  const Imported* index, uint64_t seed, uint32_t realisation,
                  std::uintptr_t stream) {
  const int64_t rows = counts.shape(0);
  const int64_t row_size = rows ? counts.numel() / rows : 0;
  const int64_t* idx = index ? index->data<int64_t>() : nullptr;
  const double* pp = p ? p->data<double>() : nullptr;
  dispatch(
      counts, "binomial_thin", stream,
      [&](void* s) {
        return cuda::binomial_thin<T>(counts.data<T>(), pp, p_scalar, out.data<T>(), rows, row_size,
                                      idx, seed, realisation, s);
      },
      [&] {
        cpu::binomial_thin<T>(counts.data<T>(), pp, p_scalar, out.data<T>(), rows, row_size, idx,
                              seed, realisation);
      });
}

void binomial_thin(py::object counts_o, py::object p_o, double p_scalar, py::object out_o,
                   py::object index_o, uint64_t seed, uint32_t realisation, std::uintptr_t stream) {
  Imported counts(counts_o, "counts", false);
  auto p = optional_import(p_o, "p", false);
  Imported out(out_o, "out", true);
  auto index = optional_import(index_o, "index", false);
  check_rows(counts, out, index.get());
  if (p) {
    dl::require_dtype(*p, DType::kFloat64);
    dl::require_contiguous(*p);
    dl::require_shape(*p, counts.shape());
    dl::require_same_device(*p, counts);
  } else {
    dl::require(p_scalar > 0.0 && p_scalar <= 1.0,
                "p must be in (0, 1], got " + std::to_string(p_scalar));
  }
  switch (counts.dtype()) {
    case DType::kFloat32:
      return run_binomial<float>(counts, p.get(), p_scalar, out, index.get(), seed, realisation,
                                 stream);
    case DType::kFloat64:
      return run_binomial<double>(counts, p.get(), p_scalar, out, index.get(), seed, realisation,
                                  stream);
    case DType::kInt32:
      return run_binomial<int32_t>(counts, p.get(), p_scalar, out, index.get(), seed, realisation,
                                   stream);
    case DType::kInt64:
      return run_binomial<int64_t>(counts, p.get(), p_scalar, out, index.get(), seed, realisation,
                                   stream);
    default:
      throw py::value_error(
          std::string("counts must have dtype float32, float64, int32 or int64, got ") +
          dl::dtype_name(counts.dtype()));
  }
}

}  // namespace

void register_sampling(py::module_& m) {
  m.def("poisson", &poisson, py::arg("mean"), py::arg("out"), py::arg("index"), py::arg("seed"),
        py::arg("realisation"), py::arg("stream"),
        "Poisson draws: DLPack capsules mean, out (same shape/dtype), index (int64 (N,) or "
        "None); seed, realisation, CUDA stream handle (0 on the CPU).");
  m.def("binomial_thin", &binomial_thin, py::arg("counts"), py::arg("p"), py::arg("p_scalar"),
        py::arg("out"), py::arg("index"), py::arg("seed"), py::arg("realisation"),
        py::arg("stream"),
        "Binomial thinning: DLPack capsules counts, p (float64, counts' shape, or None: use "
        "p_scalar), out, index (int64 (N,) or None).");
}

}  // namespace bind
}  // namespace galguard
