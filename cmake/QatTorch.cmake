# Finds LibTorch. In order: a user's Torch_DIR or CMAKE_PREFIX_PATH, then the torch wheel of
# QAT_PYTHON (default: the venv scripts/setup.sh makes).
#
# TorchConfig appends its own nvcc flags to the global CMAKE_CUDA_FLAGS (a -gencode for every
# architecture torch was built for, compute_50 among them, which CUDA 13 refuses, and ONNX
# defines). qat's CUDA kernels are Torch-free and carry their architectures per target, so the
# global flags are restored after find_package, and torch's architecture list is pinned to
# Hopper so that it does not probe for GPUs.
set(_qat_cuda_flags "${CMAKE_CUDA_FLAGS}")
if(NOT DEFINED TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  set(TORCH_CUDA_ARCH_LIST "9.0;9.0a")
endif()
set(_qat_user_torch_dir "${Torch_DIR}")
find_package(Torch QUIET CONFIG)
if(NOT Torch_FOUND AND _qat_user_torch_dir)
  message(FATAL_ERROR "No LibTorch at Torch_DIR=${_qat_user_torch_dir}: it must be the folder holding "
                      "TorchConfig.cmake (<libtorch>/share/cmake/Torch)")
endif()
if(NOT Torch_FOUND)
  set(_qat_default_python "$ENV{HOME}/.cache/qat/venv/bin/python")
  if(DEFINED ENV{QAT_VENV})
    set(_qat_default_python "$ENV{QAT_VENV}/bin/python")
  endif()
  set(QAT_PYTHON "${_qat_default_python}" CACHE FILEPATH "Python whose torch wheel provides LibTorch")
  execute_process(
    COMMAND "${QAT_PYTHON}" -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
    OUTPUT_VARIABLE _qat_torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE _qat_torch_rc ERROR_QUIET)
  if(NOT _qat_torch_rc EQUAL 0)
    message(FATAL_ERROR "LibTorch not found: run scripts/setup.sh, or pass -DTorch_DIR=<libtorch>/share/cmake/Torch "
                        "(tried Python '${QAT_PYTHON}')")
  endif()
  list(APPEND CMAKE_PREFIX_PATH "${_qat_torch_prefix}")
  find_package(Torch REQUIRED CONFIG)
endif()
set(CMAKE_CUDA_FLAGS "${_qat_cuda_flags}")
# TorchConfig puts its flags into TORCH_CXX_FLAGS (the ABI define); the imported target carries
# them, so nothing is added globally here.
message(STATUS "qat: LibTorch ${Torch_VERSION} from ${Torch_DIR}")
