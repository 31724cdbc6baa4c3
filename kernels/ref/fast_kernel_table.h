// Internal to kernels/ref: the fast kernels of one instruction set, as a table
// of function pointers. fake_quant_fast.cpp is compiled once per instruction
// set and fills one table; fake_quant_dispatch.cpp picks the table at run time.
#pragma once

#include "kernels/ref/block_fast.h"
#include "kernels/ref/fake_quant_ref.h"

namespace qat::kernels {

template <typename T>
struct FastKernelsFor {
  decltype(&fake_quant_affine_ref<T>) affine;
  decltype(&fake_quant_fp8_ref<T>) fp8;
  decltype(&mask_backward_ref<T>) mask_backward;
  decltype(&lsq_backward_ref<T>) lsq_backward;
  // GGUF kernels take the type as its int: GgufType is declared in each
  // build's own ABI namespace (quant_math.h). gguf: the 32-value types only.
  void (*gguf)(const T*, T*, uint8_t*, int, int64_t, int64_t);
  void (*gguf_fixed)(
      const T*,
      T*,
      uint8_t*,
      const uint8_t*,
      int,
      int64_t,
      int64_t);
};

struct FastKernelTable {
  FastKernelsFor<float> f32;
  FastKernelsFor<BFloat16> bf16;
  decltype(&fake_quant_microscale_fast) microscale;
  decltype(&microscale_amax_fast) microscale_amax;

  template <typename T>
  const FastKernelsFor<T>& get() const {
    if constexpr (std::is_same_v<T, float>) {
      return f32;
    } else {
      return bf16;
    }
  }
};

const FastKernelTable& fast_kernels_baseline();
#if defined(QAT_KERNELS_X86_ISAS)
const FastKernelTable& fast_kernels_avx2();
const FastKernelTable& fast_kernels_avx512();
#endif

} // namespace qat::kernels
