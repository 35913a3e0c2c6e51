// Tensor-core co-attention forward, Half instantiation (see coattention_tc.cuh).
#include "coattention/coattention_tc.cuh"

namespace pathgen {
namespace coattn {
namespace tc {

template void run<at::Half>(int, int, bool, bool, dim3, cudaStream_t, const at::Half*, const at::Half*, const at::Half*, const int32_t*,
                       void*, void*, void*, const Dims&);

}  // namespace tc
}  // namespace coattn
}  // namespace pathgen
