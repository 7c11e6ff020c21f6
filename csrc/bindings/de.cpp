// Bindings of the differential-evolution kernels. User-facing validation lives in
// galguard/kernels.py; the checks here only protect the kernels from malformed calls.
#include "galguard/de.h"

#include <cstdint>

#include "common.h"

namespace galguard {
namespace bind {

namespace {

void check_ids(const Imported& ids, int64_t B, const Imported& ref) {
  dl::require_dtype(ids, DType::kInt64);
  dl::require_contiguous(ids);
  dl::require_shape(ids, {B});
  dl::require_same_device(ids, ref);
}

void check_bounds(const Imported& b, int64_t B, int64_t C, const Imported& ref) {
  dl::require_dtype(b, DType::kFloat32);
  dl::require_contiguous(b);
  dl::require_shape(b, {B, C});
  dl::require_same_device(b, ref);
}

void check_f32(const Imported& t, int ndim) {
  dl::require_dtype(t, DType::kFloat32);
  dl::require_contiguous(t);
  dl::require(t.ndim() == ndim, std::string(t.name()) + " must have " + std::to_string(ndim) +
                                    " dimensions, got shape " + dl::shape_str(t));
  require_device_supported(t);
}

void de_init(py::object ids_o, py::object lo_o, py::object hi_o, py::object pop_o, int pixels,
             int channels, int height, int width, uint64_t seed, std::uintptr_t stream) {
  Imported ids(ids_o, "ids", false), lo(lo_o, "lo", false), hi(hi_o, "hi", false);
  Imported pop(pop_o, "pop", true);
  check_f32(pop, 3);
  const int64_t B = pop.shape(0), P = pop.shape(1);
  dl::require(pixels >= 1 && channels >= 1 && height >= 1 && width >= 1,
              "pixels, channels, height and width must be >= 1");
  dl::require(pop.shape(2) == static_cast<int64_t>(pixels) * (2 + channels),
              "pop must have pixels * (2 + channels) genes, got shape " + dl::shape_str(pop));
  check_ids(ids, B, pop);
  check_bounds(lo, B, channels, pop);
  check_bounds(hi, B, channels, pop);
  dispatch(
      pop, "de_init", stream,
      [&](void* s) {
        return cuda::de_init(ids.data<int64_t>(), lo.data<float>(), hi.data<float>(),
                             pop.data<float>(), B, P, pixels, channels, height, width, seed, s);
      },
      [&] {
        cpu::de_init(ids.data<int64_t>(), lo.data<float>(), hi.data<float>(), pop.data<float>(), B,
                     P, pixels, channels, height, width, seed);
      });
}

void de_mutate(py::object pop_o, py::object ids_o, py::object best_o, py::object lo_o,
               py::object hi_o, py::object trial_o, uint32_t generation, float F, float CR,
               int strategy, int oob, int height, int width, uint64_t seed, std::uintptr_t stream) {
  Imported pop(pop_o, "pop", false), ids(ids_o, "ids", false);
  auto best = optional_import(best_o, "best", false);
  Imported lo(lo_o, "lo", false), hi(hi_o, "hi", false), trial(trial_o, "trial", true);
  check_f32(pop, 3);
  check_f32(trial, 3);
  dl::require_shape(trial, pop.shape());
  dl::require_same_device(trial, pop);
  const int64_t B = pop.shape(0), P = pop.shape(1);
  const int64_t G = pop.shape(2);
  dl::require(lo.ndim() == 2, "lo must have shape (B, C), got " + dl::shape_str(lo));
  const int64_t C = lo.shape(1);
  dl::require(C >= 1 && G >= 1 && G % (2 + C) == 0,
              "pop must have G = pixels * (2 + C) genes, got shape " + dl::shape_str(pop));
  dl::require(height >= 1 && width >= 1, "height and width must be >= 1");
  dl::require(strategy == kRand1 || strategy == kBest1, "strategy must be 0 (rand1) or 1 (best1)");
  dl::require(oob == 0 || oob == 1, "oob must be 0 (redraw) or 1 (clip)");
  dl::require(P >= (strategy == kBest1 ? 3 : 4),
              "pop has too few members for the strategy, got shape " + dl::shape_str(pop));
  dl::require(strategy == kRand1 || best != nullptr, "best is required for best1");
  check_ids(ids, B, pop);
  if (best) check_ids(*best, B, pop);
  check_bounds(lo, B, C, pop);
  check_bounds(hi, B, C, pop);
  const int64_t* best_ptr = best ? best->data<int64_t>() : nullptr;
  dispatch(
      pop, "de_mutate", stream,
      [&](void* s) {
        return cuda::de_mutate(pop.data<float>(), ids.data<int64_t>(), best_ptr, lo.data<float>(),
                               hi.data<float>(), trial.data<float>(), B, P, (int)G, (int)C, height,
                               width, generation, F, CR, strategy, oob, seed, s);
      },
      [&] {
        cpu::de_mutate(pop.data<float>(), ids.data<int64_t>(), best_ptr, lo.data<float>(),
                       hi.data<float>(), trial.data<float>(), B, P, (int)G, (int)C, height, width,
                       generation, F, CR, strategy, oob, seed);
      });
}

void de_write_candidates(py::object images_o, py::object members_o, py::object out_o,
                         std::uintptr_t stream) {
  Imported images(images_o, "images", false), members(members_o, "members", false);
  Imported out(out_o, "out", true);
  check_f32(images, 4);
  check_f32(members, 3);
  check_f32(out, 4);
  dl::require_same_device(members, images);
  dl::require_same_device(out, images);
  const int64_t B = images.shape(0), C = images.shape(1), H = images.shape(2), W = images.shape(3);
  dl::require(members.shape(0) == B, "members must have B = " + std::to_string(B) +
                                         " rows, got shape " + dl::shape_str(members));
  const int64_t P = members.shape(1), G = members.shape(2);
  dl::require(C >= 1 && G >= 1 && G % (2 + C) == 0,
              "members must have G = pixels * (2 + C) genes, got shape " + dl::shape_str(members));
  dl::require_shape(out, {B * P, C, H, W});
  dispatch(
      images, "de_write_candidates", stream,
      [&](void* s) {
        return cuda::de_write_candidates(images.data<float>(), members.data<float>(),
                                         out.data<float>(), B, P, (int)G, (int)C, (int)H, (int)W,
                                         s);
      },
      [&] {
        cpu::de_write_candidates(images.data<float>(), members.data<float>(), out.data<float>(), B,
                                 P, (int)G, (int)C, (int)H, (int)W);
      });
}

template <typename T>
void run_select(const Imported& pop, const Imported& fit, const Imported& trial,
                const Imported& tfit, Imported& out_pop, Imported& out_fit, Imported& best,
                std::uintptr_t stream) {
  const int64_t B = pop.shape(0), P = pop.shape(1);
  const int G = static_cast<int>(pop.shape(2));
  dispatch(
      pop, "de_select", stream,
      [&](void* s) {
        return cuda::de_select<T>(pop.data<float>(), fit.data<T>(), trial.data<float>(),
                                  tfit.data<T>(), out_pop.data<float>(), out_fit.data<T>(),
                                  best.data<int64_t>(), B, P, G, s);
      },
      [&] {
        cpu::de_select<T>(pop.data<float>(), fit.data<T>(), trial.data<float>(), tfit.data<T>(),
                          out_pop.data<float>(), out_fit.data<T>(), best.data<int64_t>(), B, P, G);
      });
}

void de_select(py::object pop_o, py::object fit_o, py::object trial_o, py::object tfit_o,
               py::object out_pop_o, py::object out_fit_o, py::object best_o,
               std::uintptr_t stream) {
  Imported pop(pop_o, "pop", false), fit(fit_o, "fitness", false), trial(trial_o, "trial", false),
      tfit(tfit_o, "trial_fitness", false), out_pop(out_pop_o, "out_pop", true),
      out_fit(out_fit_o, "out_fitness", true), best(best_o, "best", true);
  check_f32(pop, 3);
  check_f32(trial, 3);
  check_f32(out_pop, 3);
  const int64_t B = pop.shape(0), P = pop.shape(1);
  dl::require_shape(trial, pop.shape());
  dl::require_shape(out_pop, pop.shape());
  for (const Imported* t : {&fit, &tfit, &out_fit}) {
    dl::require_contiguous(*t);
    dl::require_shape(*t, {B, P});
    dl::require(t->dtype() == fit.dtype(),
                std::string(t->name()) + " must have the dtype of fitness");
  }
  dl::require_dtype(best, DType::kInt64);
  dl::require_contiguous(best);
  dl::require_shape(best, {B});
  for (const Imported* t : {&fit, &trial, &tfit, &out_pop, &out_fit, &best}) {
    dl::require_same_device(*t, pop);
  }
  switch (fit.dtype()) {
    case DType::kFloat32:
      return run_select<float>(pop, fit, trial, tfit, out_pop, out_fit, best, stream);
    case DType::kFloat64:
      return run_select<double>(pop, fit, trial, tfit, out_pop, out_fit, best, stream);
    default:
      throw py::value_error(std::string("fitness must have dtype float32 or float64, got ") +
                            dl::dtype_name(fit.dtype()));
  }
}

}  // namespace

void register_de(py::module_& m) {
  m.def("de_init", &de_init, py::arg("ids"), py::arg("lo"), py::arg("hi"), py::arg("pop"),
        py::arg("pixels"), py::arg("channels"), py::arg("height"), py::arg("width"),
        py::arg("seed"), py::arg("stream"), "Fill pop (B, P, G) with uniform initial members.");
  m.def("de_mutate", &de_mutate, py::arg("pop"), py::arg("ids"), py::arg("best"), py::arg("lo"),
        py::arg("hi"), py::arg("trial"), py::arg("generation"), py::arg("F"), py::arg("CR"),
        py::arg("strategy"), py::arg("oob"), py::arg("height"), py::arg("width"), py::arg("seed"),
        py::arg("stream"),
        "Write trial members: strategy 0 rand/1, 1 best/1; oob 0 redraw, 1 clip.");
  m.def("de_write_candidates", &de_write_candidates, py::arg("images"), py::arg("members"),
        py::arg("out"), py::arg("stream"), "Write the B * P candidate images into out.");
  m.def("de_select", &de_select, py::arg("pop"), py::arg("fitness"), py::arg("trial"),
        py::arg("trial_fitness"), py::arg("out_pop"), py::arg("out_fitness"), py::arg("best"),
        py::arg("stream"), "Greedy one-to-one selection into out_pop, out_fitness, best.");
}

}  // namespace bind
}  // namespace galguard
