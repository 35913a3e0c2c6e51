#pragma once
// One spelling for code that runs on both host and device, so CPU and CUDA kernels
// share their arithmetic (*_math.h) and can differ only in where it runs.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define PATHGEN_HOST_DEVICE __host__ __device__
#define PATHGEN_HOST_DEVICE_INLINE __host__ __device__ __forceinline__
#else
#define PATHGEN_HOST_DEVICE
#define PATHGEN_HOST_DEVICE_INLINE inline __attribute__((always_inline))
#endif
