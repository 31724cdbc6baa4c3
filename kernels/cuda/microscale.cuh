// CUDA kernels of the microscaling formats (NVFP4, MXFP4, MXFP8): the rules of
// kernels/microscale_math.h, which kernels/ref/microscale_ref.h runs on the
// CPU and which define the right answer. Torch-free launchers on raw device
// pointers; ops/cuda_impl.cpp checks, allocates and passes the stream.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/microscale_math.h"

namespace qat::kernels::cuda {

// The largest magnitude of n values as float bits (NaN bits, above every
// finite and infinite magnitude, as soon as one value is NaN), into
// *amax_bits, which the launch first sets to 0. Any NaN gives NVFP4's global
// scale of a NaN tensor (nvfp4_global_scale), whatever its payload.
cudaError_t microscale_amax_bits(
    const float* x,
    int64_t n,
    uint32_t* amax_bits,
    cudaStream_t stream);

// fake_quant_microscale_ref of `blocks` consecutive blocks with scales
// computed from each (microscale_scales_ref): y, and mask (may be null) = 1
// where nothing clipped. global_scale: NVFP4's (the MX formats ignore it).
cudaError_t fake_quant_microscale(
    const float* x,
    float* y,
    uint8_t* mask,
    int64_t blocks,
    MicroscaleFormat format,
    float global_scale,
    cudaStream_t stream);

} // namespace qat::kernels::cuda
