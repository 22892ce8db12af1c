// certseg_rt._ext: thin nanobind bindings over the C API (include/certseg.h).
//
// Arrays arrive zero-copy through DLPack / the buffer protocol and are never converted: a wrong
// dtype raises TypeError, a wrong shape or a non-contiguous array ValueError, a read-only output
// TypeError.  The GIL is released while the loops run.  The CUDA kernels take either raw device
// pointers (cuda_*) or DLPack arrays on a CUDA device (cuda_*_array: a torch CUDA tensor's capsule,
// CuPy), checked like the host arrays before anything is launched.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>

#include <cstdint>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "certseg.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using InArray = nb::ndarray<nb::ro, nb::device::cpu>;  // any dtype, read-only access is enough
using OutArray = nb::ndarray<nb::device::cpu>;         // any dtype, must be writable
using CudaInArray = nb::ndarray<nb::ro, nb::device::cuda>;
using CudaOutArray = nb::ndarray<nb::device::cuda>;

std::string dtype_name(nb::dlpack::dtype dt) {
  std::string kind;
  switch (static_cast<nb::dlpack::dtype_code>(dt.code)) {
    case nb::dlpack::dtype_code::Int: kind = "int"; break;
    case nb::dlpack::dtype_code::UInt: kind = "uint"; break;
    case nb::dlpack::dtype_code::Float: kind = "float"; break;
    case nb::dlpack::dtype_code::Bfloat: kind = "bfloat"; break;
    case nb::dlpack::dtype_code::Complex: kind = "complex"; break;
    case nb::dlpack::dtype_code::Bool: return "bool";
    default: kind = "dtype(code=" + std::to_string(dt.code) + ")"; break;
  }
  return kind + std::to_string(dt.bits) + (dt.lanes != 1 ? "x" + std::to_string(dt.lanes) : "");
}

template <class Array>
std::string shape_str(const Array& a) {
  std::string s = "(";
  for (size_t i = 0; i < a.ndim(); ++i) {
    s += std::to_string(a.shape(i));
    if (a.ndim() == 1 || i + 1 < a.ndim()) s += a.ndim() == 1 ? "," : ", ";
  }
  return s + ")";
}

// C order; like numpy, the stride of a dimension of extent 1 does not matter.
template <class Array>
bool c_contiguous(const Array& a) {
  for (size_t i = 0; i < a.ndim(); ++i) {
    if (a.shape(i) == 0) return true;  // empty: nothing to address
  }
  int64_t expected = 1;
  for (size_t i = a.ndim(); i-- > 0;) {
    if (a.shape(i) != 1 && a.stride(i) != expected) return false;
    expected *= static_cast<int64_t>(a.shape(i));
  }
  return true;
}

template <class Array>
void require(const Array& a, const char* name, nb::dlpack::dtype dt, size_t min_ndim) {
  if (a.dtype() != dt) {
    throw nb::type_error((std::string(name) + " must be a " + dtype_name(dt) + " array, got " + dtype_name(a.dtype()) +
                          " (convert it with .astype(np." + dtype_name(dt) + "))").c_str());
  }
  if (a.ndim() < min_ndim) {
    throw nb::value_error((std::string(name) + " must have at least " + std::to_string(min_ndim) +
                           " dimensions, got shape " + shape_str(a)).c_str());
  }
  if (!c_contiguous(a)) {
    throw nb::value_error((std::string(name) + " must be C-contiguous (use np.ascontiguousarray), got shape " +
                           shape_str(a) + " with non-contiguous strides").c_str());
  }
}

// Product of the extents from dimension `first` on.
template <class Array>
size_t extent_from(const Array& a, size_t first) {
  size_t n = 1;
  for (size_t i = first; i < a.ndim(); ++i) n *= a.shape(i);
  return n;
}

template <class A, class B>
bool same_trailing_shape(const A& a, const B& b) {  // a.shape[1:] == b.shape[1:]
  if (a.ndim() != b.ndim()) return false;
  for (size_t i = 1; i < a.ndim(); ++i) {
    if (a.shape(i) != b.shape(i)) return false;
  }
  return true;
}

void check(int rc) {
  if (rc == CERTSEG_OK) return;
  const std::string message = certseg_last_error();
  if (rc == CERTSEG_ERR_ARGUMENT || rc == CERTSEG_ERR_LABEL) throw nb::value_error(message.c_str());
  if (rc == CERTSEG_ERR_MEMORY) throw std::bad_alloc();
  throw std::runtime_error(message);
}

template <class T>
nb::ndarray<nb::numpy, T> new_array(const std::vector<size_t>& shape, T** data) {
  size_t size = 1;
  for (size_t s : shape) size *= s;
  T* buffer = new T[size > 0 ? size : 1];
  nb::capsule owner(buffer, [](void* p) noexcept { delete[] static_cast<T*>(p); });
  *data = buffer;
  return nb::ndarray<nb::numpy, T>(buffer, shape.size(), shape.data(), owner);
}

nb::tuple philox4x32(InArray counter, InArray key) {
  require(counter, "counter", nb::dtype<uint32_t>(), 1);
  require(key, "key", nb::dtype<uint32_t>(), 1);
  if (counter.ndim() != 1 || counter.shape(0) != 4) {
    throw nb::value_error(("counter must have shape (4,), got " + shape_str(counter)).c_str());
  }
  if (key.ndim() != 1 || key.shape(0) != 2) {
    throw nb::value_error(("key must have shape (2,), got " + shape_str(key)).c_str());
  }
  uint32_t out[4];
  certseg_philox4x32(static_cast<const uint32_t*>(counter.data()), static_cast<const uint32_t*>(key.data()), out);
  return nb::make_tuple(out[0], out[1], out[2], out[3]);
}

// x float32 (any shape, E elements) and out float32 (B, E) or (B, *x.shape), both C-contiguous.
template <class In, class Out>
void check_noisy_arrays(const In& x, const Out& out) {
  require(x, "x", nb::dtype<float>(), 1);
  require(out, "out", nb::dtype<float>(), 1);
  const size_t elements = x.size();
  bool ok = extent_from(out, 1) == elements;
  if (ok && !(out.ndim() == 2 && out.shape(1) == elements)) {  // else out.shape[1:] must equal x.shape
    ok = out.ndim() == x.ndim() + 1;
    for (size_t i = 0; ok && i < x.ndim(); ++i) ok = out.shape(i + 1) == x.shape(i);
  }
  if (!ok) {
    throw nb::value_error(("out must have shape (B, " + std::to_string(elements) + ") or (B, *x.shape) for x of shape " +
                           shape_str(x) + ", got " + shape_str(out)).c_str());
  }
}

// labels uint8 (B, *S) and counts int32 (C, *S), both C-contiguous.
template <class In, class Out>
void check_vote_arrays(const In& labels, const Out& counts) {
  require(labels, "labels", nb::dtype<uint8_t>(), 2);
  require(counts, "counts", nb::dtype<int32_t>(), 2);
  if (!same_trailing_shape(labels, counts)) {
    throw nb::value_error(("labels (B, *S) and counts (C, *S) must agree after the first axis, got labels " +
                           shape_str(labels) + " and counts " + shape_str(counts)).c_str());
  }
}

void fill_noisy(InArray x, double sigma, uint64_t seed, uint64_t first_sample, OutArray out, double scale,
                double shift) {
  check_noisy_arrays(x, out);
  const size_t elements = x.size();
  const size_t batch = out.shape(0);
  int rc;
  {
    nb::gil_scoped_release release;
    rc = certseg_fill_noisy(static_cast<const float*>(x.data()), elements, static_cast<float>(sigma), seed,
                            first_sample, batch, static_cast<float>(scale), static_cast<float>(shift),
                            static_cast<float*>(out.data()));
  }
  check(rc);
}

void gaussian_noise(uint64_t seed, uint64_t first_sample, OutArray out) {
  require(out, "out", nb::dtype<float>(), 2);
  const size_t batch = out.shape(0);
  const size_t elements = extent_from(out, 1);
  int rc;
  {
    nb::gil_scoped_release release;
    rc = certseg_gaussian_noise(seed, first_sample, batch, elements, static_cast<float*>(out.data()));
  }
  check(rc);
}

void accumulate_votes(InArray labels, OutArray counts) {
  check_vote_arrays(labels, counts);
  const size_t batch = labels.shape(0);
  const size_t pixels = extent_from(labels, 1);
  const size_t num_classes = counts.shape(0);
  int rc;
  {
    nb::gil_scoped_release release;
    rc = certseg_accumulate_votes(static_cast<const uint8_t*>(labels.data()), batch, pixels,
                                  static_cast<int32_t*>(counts.data()), num_classes);
  }
  check(rc);
}

// ---- packed batches with the counter in memory (a replayed CUDA graph reads it) ------------------------------

// counter: uint64 or int64 (torch has no uint64 arithmetic; the bits are the same) (3,) = {seed, next, end}.
template <class Array>
void check_counter(const Array& counter) {
  const bool word = counter.dtype() == nb::dtype<uint64_t>() || counter.dtype() == nb::dtype<int64_t>();
  if (!word) {
    throw nb::type_error(("counter must be a uint64 or int64 array, got " + dtype_name(counter.dtype())).c_str());
  }
  if (counter.ndim() != 1 || counter.shape(0) != 3 || !c_contiguous(counter)) {
    throw nb::value_error(("counter must have shape (3,) = (seed, next, end), got " + shape_str(counter)).c_str());
  }
}

// x float32 (P, *S), out float32 (P * m, *S): returns m, the rows per image.
template <class In, class Out>
size_t check_packed_noisy(const In& x, const Out& out) {
  require(x, "x", nb::dtype<float>(), 2);
  require(out, "out", nb::dtype<float>(), 2);
  const size_t images = x.shape(0);
  if (!same_trailing_shape(x, out) || images == 0 || out.shape(0) % images != 0) {
    throw nb::value_error(("x (P, *S) and out (P * m, *S) must agree after the first axis, with out's rows a multiple "
                           "of x's images, got x " + shape_str(x) + " and out " + shape_str(out)).c_str());
  }
  return out.shape(0) / images;
}

// labels uint8 (P * m, *S), counts int32 (P, C, *S): returns m.
template <class In, class Out>
size_t check_packed_votes(const In& labels, const Out& counts) {
  require(labels, "labels", nb::dtype<uint8_t>(), 2);
  require(counts, "counts", nb::dtype<int32_t>(), 3);
  bool ok = counts.ndim() == labels.ndim() + 1 && counts.shape(0) > 0 && labels.shape(0) % counts.shape(0) == 0;
  for (size_t i = 1; ok && i < labels.ndim(); ++i) ok = labels.shape(i) == counts.shape(i + 1);
  if (!ok) {
    throw nb::value_error(("labels (P * m, *S) and counts (P, C, *S) must agree, got labels " + shape_str(labels) +
                           " and counts " + shape_str(counts)).c_str());
  }
  return labels.shape(0) / counts.shape(0);
}

void fill_noisy_packed(InArray x, double sigma, InArray counter, OutArray out) {
  check_counter(counter);
  const size_t per_image = check_packed_noisy(x, out);
  int rc;
  {
    nb::gil_scoped_release release;
    rc = certseg_fill_noisy_packed(static_cast<const float*>(x.data()), x.shape(0), extent_from(x, 1),
                                   static_cast<float>(sigma), static_cast<const uint64_t*>(counter.data()), per_image,
                                   static_cast<float*>(out.data()));
  }
  check(rc);
}

void accumulate_votes_packed(InArray labels, OutArray counts, InArray counter) {
  check_counter(counter);
  const size_t per_image = check_packed_votes(labels, counts);
  int rc;
  {
    nb::gil_scoped_release release;
    rc = certseg_accumulate_votes_packed(static_cast<const uint8_t*>(labels.data()), counts.shape(0), per_image,
                                         extent_from(labels, 1), static_cast<int32_t*>(counts.data()), counts.shape(1),
                                         static_cast<const uint64_t*>(counter.data()));
  }
  check(rc);
}

nb::tuple certify_counts(InArray counts0, InArray counts, int64_t n, double tau, double alpha,
                         const std::string& correction) {
  require(counts0, "counts0", nb::dtype<int32_t>(), 2);
  require(counts, "counts", nb::dtype<int32_t>(), 2);
  if (counts0.ndim() != counts.ndim() || counts0.shape(0) != counts.shape(0) ||
      !same_trailing_shape(counts0, counts)) {
    throw nb::value_error(("counts0 " + shape_str(counts0) + " and counts " + shape_str(counts) +
                           " must have the same shape (C, *S)").c_str());
  }
  certseg_correction corr;
  if (correction == "holm") {
    corr = CERTSEG_HOLM;
  } else if (correction == "bonferroni") {
    corr = CERTSEG_BONFERRONI;
  } else {
    throw nb::value_error(("correction must be 'holm' or 'bonferroni', got '" + correction + "'").c_str());
  }
  const size_t num_classes = counts.shape(0);
  const size_t pixels = extent_from(counts, 1);
  std::vector<size_t> shape;
  for (size_t i = 1; i < counts.ndim(); ++i) shape.push_back(counts.shape(i));
  uint8_t* labels_data = nullptr;
  double* pvalues_data = nullptr;
  auto labels = new_array<uint8_t>(shape, &labels_data);
  auto pvalues = new_array<double>(shape, &pvalues_data);
  int rc;
  {
    nb::gil_scoped_release release;
    rc = certseg_certify_counts(static_cast<const int32_t*>(counts0.data()), static_cast<const int32_t*>(counts.data()),
                                num_classes, pixels, n, tau, alpha, corr, labels_data, pvalues_data);
  }
  check(rc);
  return nb::make_tuple(labels, pvalues);
}

void set_num_threads(int n) { check(certseg_set_num_threads(n)); }

// Raw device pointers (for example a TensorRT engine's input binding) and a cudaStream_t as int.
void cuda_check(int rc) {
  if (rc == CERTSEG_OK) return;
  if (rc == CERTSEG_ERR_ARGUMENT) throw nb::value_error(certseg_last_error());
  throw std::runtime_error(certseg_last_error());
}

void cuda_gaussian_noise(uint64_t seed, uint64_t first_sample, size_t batch, size_t elements, uintptr_t out_ptr,
                         uintptr_t stream) {
  int rc;
  {
    nb::gil_scoped_release release;
    rc = certseg_cuda_gaussian_noise(seed, first_sample, batch, elements, reinterpret_cast<float*>(out_ptr),
                                     reinterpret_cast<void*>(stream));
  }
  cuda_check(rc);
}

void cuda_fill_noisy(uintptr_t x_ptr, size_t elements, double sigma, uint64_t seed, uint64_t first_sample,
                     size_t batch, uintptr_t out_ptr, double scale, double shift, uintptr_t stream) {
  int rc;
  {
    nb::gil_scoped_release release;
    rc = certseg_cuda_fill_noisy(reinterpret_cast<const float*>(x_ptr), elements, static_cast<float>(sigma), seed,
                                 first_sample, batch, static_cast<float>(scale), static_cast<float>(shift),
                                 reinterpret_cast<float*>(out_ptr), reinterpret_cast<void*>(stream));
  }
  cuda_check(rc);
}

void cuda_accumulate_votes(uintptr_t labels_ptr, size_t batch, size_t pixels, uintptr_t counts_ptr,
                           size_t num_classes, uintptr_t bad_label_ptr, uintptr_t stream) {
  int rc;
  {
    nb::gil_scoped_release release;
    rc = certseg_cuda_accumulate_votes(reinterpret_cast<const uint8_t*>(labels_ptr), batch, pixels,
                                       reinterpret_cast<int32_t*>(counts_ptr), num_classes,
                                       reinterpret_cast<int32_t*>(bad_label_ptr), reinterpret_cast<void*>(stream));
  }
  cuda_check(rc);
}

// The same kernels on DLPack arrays of a CUDA device: shapes, dtypes and contiguity checked as for host arrays,
// and every array on one device.  No copy, no synchronisation: launched on `stream` like the pointer forms.
template <class A, class B>
void require_same_device(const A& a, const char* a_name, const B& b, const char* b_name) {
  if (a.device_id() != b.device_id()) {
    throw nb::value_error((std::string(a_name) + " is on CUDA device " + std::to_string(a.device_id()) + " and " +
                           b_name + " on CUDA device " + std::to_string(b.device_id()) + "; put both on one device")
                              .c_str());
  }
}

void cuda_fill_noisy_array(CudaInArray x, double sigma, uint64_t seed, uint64_t first_sample, CudaOutArray out,
                           double scale, double shift, uintptr_t stream) {
  check_noisy_arrays(x, out);
  require_same_device(x, "x", out, "out");
  cuda_fill_noisy(reinterpret_cast<uintptr_t>(x.data()), x.size(), sigma, seed, first_sample, out.shape(0),
                  reinterpret_cast<uintptr_t>(out.data()), scale, shift, stream);
}

void cuda_accumulate_votes_array(CudaInArray labels, CudaOutArray counts, std::optional<CudaOutArray> bad_label,
                                 uintptr_t stream) {
  check_vote_arrays(labels, counts);
  require_same_device(labels, "labels", counts, "counts");
  uintptr_t bad = 0;
  if (bad_label) {
    require(*bad_label, "bad_label", nb::dtype<int32_t>(), 1);
    if (bad_label->size() != 1) {
      throw nb::value_error(("bad_label must hold one int32, got shape " + shape_str(*bad_label)).c_str());
    }
    require_same_device(*bad_label, "bad_label", counts, "counts");
    bad = reinterpret_cast<uintptr_t>(bad_label->data());
  }
  cuda_accumulate_votes(reinterpret_cast<uintptr_t>(labels.data()), labels.shape(0), extent_from(labels, 1),
                        reinterpret_cast<uintptr_t>(counts.data()), counts.shape(0), bad, stream);
}

void cuda_fill_noisy_packed_array(CudaInArray x, double sigma, CudaInArray counter, CudaOutArray out,
                                  uintptr_t stream) {
  check_counter(counter);
  const size_t per_image = check_packed_noisy(x, out);
  require_same_device(x, "x", out, "out");
  require_same_device(counter, "counter", out, "out");
  int rc;
  {
    nb::gil_scoped_release release;
    rc = certseg_cuda_fill_noisy_packed(static_cast<const float*>(x.data()), x.shape(0), extent_from(x, 1),
                                        static_cast<float>(sigma), static_cast<const uint64_t*>(counter.data()),
                                        per_image, static_cast<float*>(out.data()), reinterpret_cast<void*>(stream));
  }
  cuda_check(rc);
}

void cuda_accumulate_votes_packed_array(CudaInArray labels, CudaOutArray counts, CudaOutArray bad_label,
                                        CudaInArray counter, uintptr_t stream) {
  check_counter(counter);
  const size_t per_image = check_packed_votes(labels, counts);
  require(bad_label, "bad_label", nb::dtype<int32_t>(), 1);
  if (bad_label.size() != 1) {
    throw nb::value_error(("bad_label must hold one int32, got shape " + shape_str(bad_label)).c_str());
  }
  require_same_device(labels, "labels", counts, "counts");
  require_same_device(bad_label, "bad_label", counts, "counts");
  require_same_device(counter, "counter", counts, "counts");
  int rc;
  {
    nb::gil_scoped_release release;
    rc = certseg_cuda_accumulate_votes_packed(static_cast<const uint8_t*>(labels.data()), counts.shape(0), per_image,
                                              extent_from(labels, 1), static_cast<int32_t*>(counts.data()),
                                              counts.shape(1), static_cast<int32_t*>(bad_label.data()),
                                              static_cast<const uint64_t*>(counter.data()),
                                              reinterpret_cast<void*>(stream));
  }
  cuda_check(rc);
}

void cuda_advance_counter_array(CudaOutArray counter, size_t samples, uintptr_t stream) {
  check_counter(counter);
  int rc;
  {
    nb::gil_scoped_release release;
    rc = certseg_cuda_advance_counter(static_cast<uint64_t*>(counter.data()), samples, reinterpret_cast<void*>(stream));
  }
  cuda_check(rc);
}

}  // namespace

NB_MODULE(_ext, m) {
  m.doc() =
      "Compiled kernels of certseg-rt (cpp_ext/): Philox4x32-10 Gaussian noise, noisy inputs and vote counting on "
      "the CPU (OpenMP) and, when compiled with CUDA, on device pointers; and the certify step from vote counts. "
      "Same numbers as the numpy reference certseg_rt.kernels, bit for bit.";

  m.def("philox4x32", &philox4x32, "counter"_a.noconvert(), "key"_a.noconvert(),
        "Philox4x32-10 of one counter (uint32 (4,)) under one key (uint32 (2,)) -> 4 ints.");
  m.def("fill_noisy", &fill_noisy, "x"_a.noconvert(), "sigma"_a, "seed"_a, "first_sample"_a, "out"_a.noconvert(),
        "scale"_a = 1.0, "shift"_a = 0.0,
        "out[b] = (x + sigma * eps(seed, first_sample + b)) * scale + shift, float32, in place.\n\n"
        "x: float32 C-contiguous, any shape (E elements); out: writable float32 C-contiguous (B, E) or (B, *x.shape). "
        "With scale=1 and shift=0 the affine is skipped (out = x + sigma * eps exactly).");
  m.def("gaussian_noise", &gaussian_noise, "seed"_a, "first_sample"_a, "out"_a.noconvert(),
        "out[b] = eps(seed, first_sample + b): the standard normals of the noise contract, float32 (B, ...), "
        "in place.");
  m.def("accumulate_votes", &accumulate_votes, "labels"_a.noconvert(), "counts"_a.noconvert(),
        "counts[c, p] += #{b : labels[b, p] == c}; labels uint8 (B, *S), counts int32 (C, *S), in place.\n\n"
        "A label >= C raises ValueError naming it and leaves counts unchanged.");
  m.def("fill_noisy_packed", &fill_noisy_packed, "x"_a.noconvert(), "sigma"_a, "counter"_a.noconvert(),
        "out"_a.noconvert(),
        "A packed noisy batch: out[r] = x[r // m] + sigma * eps(seed, next + r % m) with counter = (seed, next, end) "
        "(uint64 or int64 (3,)), x float32 (P, *S), out float32 (P * m, *S). Each image keeps its own noise stream, "
        "as fill_noisy gives it alone; the host form of what the torch-cuda fused graph runs.");
  m.def("accumulate_votes_packed", &accumulate_votes_packed, "labels"_a.noconvert(), "counts"_a.noconvert(),
        "counter"_a.noconvert(),
        "counts[i, c, p] += #{j < min(m, end - next) : labels[i * m + j, p] == c}; labels uint8 (P * m, *S), counts "
        "int32 (P, C, *S), counter (seed, next, end). Padding rows (sample index >= end) do not vote. A label >= C "
        "among the voting rows raises ValueError naming it and leaves counts unchanged.");
  m.def("certify_counts", &certify_counts, "counts0"_a.noconvert(), "counts"_a.noconvert(), "n"_a, "tau"_a,
        "alpha"_a, "correction"_a = "holm",
        "The certify step: (labels uint8 *S with 255 = abstain, pvalues float64 *S) from int32 counts (C, *S).\n\n"
        "candidate = argmax counts0 (ties to the lowest class), p = P(Binom(n, tau) >= counts[candidate]), "
        "Holm or Bonferroni over all pixels at level alpha; same decisions as certseg_rt.stats.");
  m.def("set_num_threads", &set_num_threads, "n"_a,
        "Threads of the CPU loops: n >= 1, or 0 for the OpenMP default. Results do not depend on it.");
  m.def("get_num_threads", &certseg_get_num_threads, "Threads the CPU loops use (1 without OpenMP).");
  m.def("cuda_compiled", []() { return certseg_cuda_compiled() != 0; },
        "True if the CUDA kernels were compiled in (does not touch the CUDA runtime).");
  m.def("cuda_device_count", &certseg_cuda_device_count,
        "Usable CUDA devices (0 without CUDA support, a driver or a GPU). Initialises the CUDA runtime.");
  m.def("cuda_gaussian_noise", &cuda_gaussian_noise, "seed"_a, "first_sample"_a, "batch"_a, "elements"_a,
        "out_ptr"_a, "stream"_a = 0,
        "gaussian_noise on a device pointer (float32 (batch, elements)), launched asynchronously on the stream "
        "(a cudaStream_t as int, 0 = default). RuntimeError without CUDA.");
  m.def("cuda_fill_noisy", &cuda_fill_noisy, "x_ptr"_a, "elements"_a, "sigma"_a, "seed"_a, "first_sample"_a,
        "batch"_a, "out_ptr"_a, "scale"_a = 1.0, "shift"_a = 0.0, "stream"_a = 0,
        "fill_noisy on device pointers (x float32 (elements,), out float32 (batch, elements)), for example straight "
        "into an inference engine's input buffer; asynchronous on the stream. RuntimeError without CUDA.");
  m.def("cuda_accumulate_votes", &cuda_accumulate_votes, "labels_ptr"_a, "batch"_a, "pixels"_a, "counts_ptr"_a,
        "num_classes"_a, "bad_label_ptr"_a = 0, "stream"_a = 0,
        "accumulate_votes on device pointers; bad_label_ptr (int32 on the device, set to -1 by the caller) receives "
        "the largest out-of-range label. Asynchronous on the stream. RuntimeError without CUDA.");
  m.def("cuda_fill_noisy_array", &cuda_fill_noisy_array, "x"_a.noconvert(), "sigma"_a, "seed"_a, "first_sample"_a,
        "out"_a.noconvert(), "scale"_a = 1.0, "shift"_a = 0.0, "stream"_a = 0,
        "fill_noisy on DLPack arrays of a CUDA device (x float32, out float32 (B, E) or (B, *x.shape), C-contiguous, "
        "one device), e.g. a torch CUDA tensor's __dlpack__(stream=-1) capsule; no copy, asynchronous on the stream. "
        "A host array raises TypeError; RuntimeError without CUDA.");
  m.def("cuda_accumulate_votes_array", &cuda_accumulate_votes_array, "labels"_a.noconvert(), "counts"_a.noconvert(),
        "bad_label"_a.noconvert() = nb::none(), "stream"_a = 0,
        "accumulate_votes on DLPack arrays of a CUDA device (labels uint8 (B, *S), counts int32 (C, *S), bad_label "
        "int32 (1,) set to -1 by the caller, or None); asynchronous on the stream. RuntimeError without CUDA.");
  m.def("cuda_fill_noisy_packed_array", &cuda_fill_noisy_packed_array, "x"_a.noconvert(), "sigma"_a,
        "counter"_a.noconvert(), "out"_a.noconvert(), "stream"_a = 0,
        "fill_noisy_packed on DLPack arrays of a CUDA device; the counter (uint64/int64 (3,), device memory) is read "
        "when the kernel runs, so a captured CUDA graph draws the samples the counter points at on each replay. "
        "Asynchronous on the stream; RuntimeError without CUDA.");
  m.def("cuda_accumulate_votes_packed_array", &cuda_accumulate_votes_packed_array, "labels"_a.noconvert(),
        "counts"_a.noconvert(), "bad_label"_a.noconvert(), "counter"_a.noconvert(), "stream"_a = 0,
        "accumulate_votes_packed on DLPack arrays of a CUDA device; bad_label int32 (1,) (set to -1 by the caller) "
        "receives the largest out-of-range label. Asynchronous on the stream; RuntimeError without CUDA.");
  m.def("cuda_advance_counter_array", &cuda_advance_counter_array, "counter"_a.noconvert(), "samples"_a,
        "stream"_a = 0,
        "counter[1] += samples on the device (one thread), captured after a batch so the next replay draws the next "
        "samples. Asynchronous on the stream; RuntimeError without CUDA.");
}
