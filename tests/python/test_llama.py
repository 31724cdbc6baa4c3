"""qat's Llama-style decoder against Hugging Face transformers' LlamaForCausalLM.

transformers builds randomly initialised Llama models (grouped-query attention,
tied and untied embeddings, a non-default head_dim and rope_theta) and saves
them as a checkpoint folder (config.json + model.safetensors), the way real
checkpoints ship. `conformance_tool llama` loads each into qat's decoder by its
Hugging Face tensor names and computes logits in one forward and through the KV
cache, and a greedy continuation. All must agree with transformers.

usage: test_llama.py PATH/TO/conformance_tool
"""
import os
import subprocess
import sys
import tempfile

import torch
from conformance import report
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

CASES = {
    "gqa_tied": dict(vocab_size=256, hidden_size=64, intermediate_size=160,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     tie_word_embeddings=True),
    "mha_untied": dict(vocab_size=300, hidden_size=96, intermediate_size=256,
                       num_hidden_layers=3, num_attention_heads=3, num_key_value_heads=3,
                       tie_word_embeddings=False, rope_theta=100000.0),
    "head_dim_32": dict(vocab_size=128, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=1,
                        head_dim=32, tie_word_embeddings=False, rms_norm_eps=1e-6),
}


def main(tool: str) -> int:
    failures, checks = [], 0
    for name, kwargs in CASES.items():
        torch.manual_seed(0)
        config = LlamaConfig(max_position_embeddings=128, **kwargs)
        model = LlamaForCausalLM(config).eval()
        # Larger weights than the 0.02 initialisation, so that attention and
        # RoPE matter to the logits.
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, 0.2)
        tokens = torch.randint(0, config.vocab_size, (2, 13))
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            src, dst = os.path.join(tmp, "in.safetensors"), os.path.join(tmp, "out.safetensors")
            save_file({"tokens": tokens}, src)
            subprocess.run([tool, "llama", tmp, src, dst], check=True)
            ours = load_file(dst)
        with torch.no_grad():
            reference = model(tokens).logits
            generated = model.generate(tokens, max_new_tokens=8, do_sample=False,
                                       attention_mask=torch.ones_like(tokens))
        for what, got, want in (("logits", ours["logits"], reference),
                                ("cached_logits", ours["cached_logits"], reference)):
            checks += 1
            err = (got - want).abs().max().item()
            if got.shape != want.shape or not torch.allclose(got, want, atol=1e-4, rtol=1e-4):
                failures.append(f"{name} {what}: max |diff| {err:.3g}")
            else:
                print(f"{name} {what}: max |diff| {err:.3g}")
        checks += 1
        if not torch.equal(ours["generated"], generated):
            failures.append(f"{name} generated {ours['generated'].tolist()} != {generated.tolist()}")

    return report(checks, failures)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
