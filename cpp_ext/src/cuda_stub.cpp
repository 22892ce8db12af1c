// Stand-in for src/cuda.cu when the library is built without CUDA: every launch reports kNoCuda.
#include "certseg/cuda.hpp"

#if defined(CERTSEG_WITH_CUDA)
#error "cuda_stub.cpp is for builds without CUDA; compile src/cuda.cu instead"
#endif

namespace certseg {
namespace cuda {

bool compiled() { return false; }
int device_count() { return 0; }
const char* error_string(int) { return "certseg was built without CUDA"; }

int gaussian_noise(uint64_t, uint64_t, uint64_t, uint64_t, float*, void*) { return kNoCuda; }
int fill_noisy(const float*, uint64_t, const NoisyParams&, uint64_t, uint64_t, uint64_t, float*, void*) {
  return kNoCuda;
}
int accumulate_votes(const uint8_t*, uint64_t, uint64_t, int32_t*, int, int32_t*, void*) { return kNoCuda; }
int fill_noisy_packed(const float*, uint64_t, uint64_t, const NoisyParams&, const uint64_t*, uint64_t, float*, void*) {
  return kNoCuda;
}
int accumulate_votes_packed(const uint8_t*, uint64_t, uint64_t, uint64_t, int32_t*, int, int32_t*, const uint64_t*,
                            void*) {
  return kNoCuda;
}
int advance_counter(uint64_t*, uint64_t, void*) { return kNoCuda; }

}  // namespace cuda
}  // namespace certseg
