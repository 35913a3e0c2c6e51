// Tensor-core co-attention forward, float instantiation (see coattention_tc.cuh).
#include "coattention/coattention_tc.cuh"

namespace pathgen {
namespace coattn {
namespace tc {

template void run<float>(int, int, bool, bool, dim3, cudaStream_t, const float*, const float*, const float*, const int32_t*,
                       void*, void*, void*, const Dims&);
// float64 never takes the tensor-core path (pick_nct returns 0); this instance only refuses.
template void run<double>(int, int, bool, bool, dim3, cudaStream_t, const double*, const double*, const double*,
                          const int32_t*, void*, void*, void*, const Dims&);

}  // namespace tc
}  // namespace coattn
}  // namespace pathgen
