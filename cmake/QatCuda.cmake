# QAT_CUDA=AUTO|ON|OFF -> QAT_WITH_CUDA; QAT_CUDA_ARCHITECTURES.
# The kernels are compiled for Hopper (sm_90, the arch-specific sm_90a, and compute_90 PTX) unless
# the user sets QAT_CUDA_ARCHITECTURES. A CPU-only build never needs nvcc.
string(TOUPPER "${QAT_CUDA}" _qat_cuda)
set(QAT_WITH_CUDA OFF)
if(NOT _qat_cuda MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "QAT_CUDA must be AUTO, ON or OFF, got '${QAT_CUDA}'")
endif()
if(NOT _qat_cuda STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(QAT_WITH_CUDA ON)
  elseif(_qat_cuda STREQUAL "ON")
    message(FATAL_ERROR "QAT_CUDA=ON but no CUDA compiler was found: install the CUDA toolkit "
                        "(nvcc), set CMAKE_CUDA_COMPILER, or configure with -DQAT_CUDA=OFF")
  endif()
endif()
set(QAT_CUDA_ARCHITECTURES "90-real;90a-real;90-virtual" CACHE STRING
    "CUDA architectures of qat's kernels (CMake CUDA_ARCHITECTURES syntax)")
# The targets carry their architectures; leaving the global default set would only make
# TorchConfig warn that it ignores it.
set(CMAKE_CUDA_ARCHITECTURES OFF)
message(STATUS "qat: CUDA kernels ${QAT_WITH_CUDA} (QAT_CUDA=${_qat_cuda}, archs ${QAT_CUDA_ARCHITECTURES})")
