// Internal to kernels/ref: the fast kernels of one instruction set, as a table
// of function pointers. fake_quant_fast.cpp is compiled once per instruction
// set and fills one table; fake_quant_dispatch.cpp picks the table at run time.
#pragma once

#include "kernels/ref/fake_quant_ref.h"

namespace qat::kernels {

template <typename T>
struct FastKernelsFor {
  decltype(&fake_quant_affine_ref<T>) affine;
  decltype(&fake_quant_fp8_ref<T>) fp8;
  decltype(&mask_backward_ref<T>) mask_backward;
  decltype(&lsq_backward_ref<T>) lsq_backward;
};

struct FastKernelTable {
  FastKernelsFor<float> f32;
  FastKernelsFor<BFloat16> bf16;

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
