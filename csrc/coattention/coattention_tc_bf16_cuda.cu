// Tensor-core co-attention forward, BFloat16 instantiation (see coattention_tc.cuh).
#include "coattention/coattention_tc.cuh"

namespace pathgen {
namespace coattn {
namespace tc {

template void run<at::BFloat16>(int, int, bool, bool, dim3, cudaStream_t, const at::BFloat16*, const at::BFloat16*, const at::BFloat16*, const int32_t*,
                       void*, void*, void*, const Dims&);

}  // namespace tc
}  // namespace coattn
}  // namespace pathgen
