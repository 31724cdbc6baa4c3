"""qat's compressed-tensors export against compressed-tensors and transformers.

For each case `conformance_tool compressed-tensors` quantizes a small random
Llama-style decoder (PTQ: calibrated, converted) and exports it as a
compressed-tensors checkpoint folder; `compressed-tensors-gguf` does the same
for SmolLM2-135M at W8A8. Then:

1. compressed-tensors validates config.json's quantization_config with its own
   pydantic models, and its own matcher (targets, ignore) picks exactly the
   layers qat quantized;
2. compressed-tensors' own decompressor (the compressor registered for each
   group's format, as ModelCompressor and transformers use it) turns each
   layer's stored tensors back into its weight, which must equal qat's
   dequantized weight bit for bit;
3. transformers loads the folder (CPU, float32; compressed-tensors applies
   the scheme, activation quantization included) and its logits must equal
   those of qat's converted model up to float rounding (relative rms 1e-5).
   Dynamic int8 activations are the one exception: compressed-tensors'
   emulation takes each token's scale as amax / 127.5 and divides by it,
   where qat, like vLLM's dynamic int8 kernels that serve these checkpoints,
   takes amax / 127 and multiplies by its reciprocal (as ATen does). There
   the shipped logits must be within sqrt(2) times the float model's
   distance (two independent roundings on grids 0.4% apart),
   and with compressed-tensors' fake-quant doing vLLM's arithmetic they must
   be equal up to float rounding again;
4. the checks can fail: a weight_scale off in one layer (5%, or one step of
   the microscaling formats' scale codes) fails checks 2 and 3, and the
   float model's logits are outside the tolerance.

With an FP8 KV cache (kv_cache_scheme: compressed-tensors fake-quantizes
each attention layer's keys after RoPE and its values with the stored
k_scale / v_scale), every layer's scales must be there in vLLM's names and
shapes, and dropping the scheme must move the logits off qat's.

The microscaling formats (NVFP4, MXFP4, MXFP8) decompress to bfloat16
weights: check 2 compares them with qat's float32 weights rounded once to
bfloat16 (for MX that rounding is exact, and checked to be), and check 3,
where NVFP4's rounding changes the weights, runs transformers once more with
qat's float32 weights in place of the decompressed ones, which must then give
qat's logits up to float rounding (activation quantization and all).

usage: test_compressed_tensors.py PATH/TO/conformance_tool
"""
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

import torch
from compressed_tensors.compressors import BaseCompressor
from compressed_tensors.quantization import QuantizationConfig
from compressed_tensors.quantization.lifecycle import forward_helpers
from compressed_tensors.utils import match_named_modules
from conformance import report, smollm2_path
from safetensors.torch import load_file, save_file
from transformers import (AutoModelForCausalLM, CompressedTensorsConfig, LlamaConfig,
                          LlamaForCausalLM)

CASES = ["w8a8_dynamic", "w8a8_static", "w8a8_affine", "w4a16_g128",
         "w4a16_g32_affine", "fp8", "nvfp4", "nvfp4_a16", "mxfp4", "mxfp4_a16",
         "mxfp8", "fp8_kv", "w4a16_kv_heads", "mixed"]
FORMATS = {"w8a8_dynamic": "int-quantized", "w8a8_static": "int-quantized",
           "w8a8_affine": "int-quantized", "w4a16_g128": "pack-quantized",
           "w4a16_g32_affine": "pack-quantized", "fp8": "float-quantized",
           "nvfp4": "nvfp4-pack-quantized", "nvfp4_a16": "nvfp4-pack-quantized",
           "mxfp4": "mxfp4-pack-quantized", "mxfp4_a16": "mxfp4-pack-quantized",
           "mxfp8": "mxfp8-quantized",
           "fp8_kv": "float-quantized", "w4a16_kv_heads": "pack-quantized",
           "mixed": "mixed-precision", "smollm2_w8a8": "int-quantized"}
# Relative rms of the logit difference (over the standard deviation of
# qat's logits): float rounding alone.
TOLERANCE = 1e-5


def relative_rms(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).square().mean().sqrt() / want.double().std()).item()


def reciprocal_quantize_dequantize(x, scale, zero_point, q_min, q_max, args, global_scale=None):
    """compressed-tensors' fake-quant with vLLM's (and qat's) arithmetic: dynamic symmetric
    int8 scales amax / 127 where compressed-tensors takes amax / 127.5, and x * (1 / scale)
    where compressed-tensors divides."""
    if args.dynamic and args.type == "int" and args.symmetric and args.num_bits == 8:
        amax = x.abs().amax(dim=-1, keepdim=True).reshape(scale.shape)
        scale = torch.clamp_min(amax / 127, torch.finfo(torch.float32).eps).to(scale.dtype)
    if global_scale is not None:
        scale = scale / global_scale
    scaled = x * torch.reciprocal(scale)
    if zero_point is not None:
        scaled += zero_point.to(x.dtype)
    q = forward_helpers.round_to_quantized_type_args(tensor=scaled, args=args, min=q_min, max=q_max)
    q = q.to(scale.dtype)
    if zero_point is not None:
        q = q - zero_point.to(scale.dtype)
    return q * scale


@contextlib.contextmanager
def replaced_quantize_dequantize(replacement):
    original = forward_helpers._quantize_dequantize
    forward_helpers._quantize_dequantize = replacement or original
    try:
        yield
    finally:
        forward_helpers._quantize_dequantize = original


def checkpoint_tensors(folder: str) -> tuple[dict, list[str]]:
    """Every tensor of the folder (through the shard index if there is one)."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if not os.path.exists(index):
        return load_file(os.path.join(folder, "model.safetensors")), []
    with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    tensors, problems = {}, []
    for shard in sorted(set(weight_map.values())):
        for name, t in load_file(os.path.join(folder, shard)).items():
            if weight_map.get(name) != shard:
                problems.append(f"index puts {name} in {weight_map.get(name)}, found in {shard}")
            tensors[name] = t
    missing = set(weight_map) - set(tensors)
    if missing:
        problems.append(f"index names tensors no shard holds: {sorted(missing)[:4]}")
    return tensors, problems


def decompressed_weights(folder: str) -> tuple[dict, list[str]]:
    """Each quantized layer's weight as compressed-tensors decompresses it."""
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    qconfig = QuantizationConfig.model_validate(config["quantization_config"])
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(LlamaConfig.from_pretrained(folder))
    tensors, problems = checkpoint_tensors(folder)
    weights = {}
    for group_name, scheme in qconfig.config_groups.items():
        compressor = BaseCompressor.get_value_from_registry(scheme.format or qconfig.format)
        for layer, _ in match_named_modules(skeleton, scheme.targets, qconfig.ignore):
            if layer in weights:
                problems.append(f"{layer} matched by two groups")
            local = {k[len(layer) + 1:]: t for k, t in tensors.items()
                     if k.startswith(layer + ".") and "." not in k[len(layer) + 1:]}
            weights[layer] = compressor.decompress(local, scheme)["weight"]
    return weights, problems


def check_folder(name: str, folder: str, ours: dict) -> list[str]:
    failures = []
    weights, problems = decompressed_weights(folder)
    failures += [f"{name}: {p}" for p in problems]
    quantized = {k[:-len(".weight")] for k in ours if k.endswith(".weight")}
    if set(weights) != quantized:
        failures.append(f"{name}: compressed-tensors matches {sorted(set(weights) ^ quantized)} "
                        "differently from qat")
    rounded = 0
    for layer in sorted(quantized & set(weights)):
        got, want = weights[layer], ours[layer + ".weight"]
        # The microscaling decompressors return bfloat16 (unpack_fp4_from_uint8,
        # decompress_mx_scale): qat's float32 weight rounded once, half to
        # even. MX weights (a few bits times a power of two) are bfloat16
        # values already; NVFP4's (divided by the global scale) are not.
        served = want.to(got.dtype)
        if got.shape != want.shape or not torch.equal(got, served):
            diff = (got.float() - want).abs().max().item() if got.shape == want.shape else "shape"
            failures.append(f"{name}: {layer} decompressed != qat's weight (max |diff| {diff})")
        rounded += int((served.float() != want).sum())
    if name.startswith("mx") and rounded:
        failures.append(f"{name}: {rounded} MX weights are not bfloat16 values")

    with open(os.path.join(folder, "config.json")) as f:
        groups = json.load(f)["quantization_config"]["config_groups"].values()
    # transformers' default route (compressed layers, decompressed on the
    # first forward) sizes packed zero points unpacked and refuses the file
    # (vllm-project/llm-compressor#1618); its dequantize=True route reads
    # them through the same decompressor.
    affine_packed = any(g["format"] == "pack-quantized" and not g["weights"]["symmetric"]
                        for g in groups)

    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32,
        quantization_config=CompressedTensorsConfig(dequantize=affine_packed)).eval()
    # The microscaling layers decompress on the first forward (compressed-
    # tensors' ct_decompress_hook) to bfloat16 weights, which a float32 model
    # cannot multiply: a hook after it casts them, exactly.
    def float32_weights(module, args):
        for p in module.parameters():
            if p.dtype == torch.bfloat16:
                p.data = p.data.float()
    model.register_forward_pre_hook(float32_weights)
    int_dynamic = any((g.get("input_activations") or {}).get("dynamic")
                      and g["input_activations"]["type"] == "int" for g in groups)
    float_err = relative_rms(ours["float_logits"], ours["logits"])
    runs = [("as shipped", None)]
    if int_dynamic:
        runs.append(("with vLLM's dynamic int8 arithmetic", reciprocal_quantize_dequantize))
    if rounded:
        runs.append(("with qat's float32 weights", "float32 weights"))
    for how, replacement in runs:
        if replacement == "float32 weights":
            params = dict(model.named_parameters())
            with torch.no_grad():
                for layer in quantized & set(weights):
                    params[layer + ".weight"].copy_(ours[layer + ".weight"])
            replacement = None
        with torch.no_grad(), replaced_quantize_dequantize(replacement):
            logits = model(ours["tokens"]).logits
        err = relative_rms(logits, ours["logits"])
        top1 = (logits.argmax(-1) == ours["logits"].argmax(-1)).float().mean().item()
        print(f"{name}: transformers' logits {how}: relative rms {err:.2e}, max |diff| "
              f"{(logits - ours['logits']).abs().max().item():.3g}, top-1 {100 * top1:.1f}% "
              f"(float model: {float_err:.2e}){' [dequantize=True]' if affine_packed else ''}")
        # Dynamic int8 as shipped: compressed-tensors' own grid (amax / 127.5)
        # against qat's (amax / 127) rounds every activation independently,
        # two quantization noises of the size that separates the float model
        # from qat's: at most sqrt(2) times that.
        # NVFP4 as shipped: bfloat16 weights, each within 2^-9 relatively of
        # qat's, where FP4's grid is 2^-1 to 2^-2 coarse: at most 1/16 of the
        # quantization's own distance (measured: about 1/50). With FP4
        # activations that difference moves activations across rounding
        # thresholds, an independent quantization noise as for dynamic int8;
        # the exact check is then the one with qat's float32 weights.
        fp4_inputs = any((g.get("input_activations") or {}).get("num_bits") == 4 for g in groups)
        bound = TOLERANCE
        if how == "as shipped" and (int_dynamic or (rounded and fp4_inputs)):
            bound = math.sqrt(2) * float_err
        elif how == "as shipped" and rounded:
            bound = float_err / 16
        if not err < bound:
            failures.append(f"{name}: transformers' logits {how} off by {err:.2e} relative rms "
                            f"(bound {bound:.2e})")
    if float_err <= 10 * TOLERANCE:
        failures.append(f"{name}: the float model is within the tolerance; "
                        "the check would not see quantization")
    return failures


def check_kv_cache(name: str, folder: str, ours: dict) -> list[str]:
    """The KV cache scales are where vLLM and transformers look for them, and
    they matter: without the kv_cache_scheme the logits are not qat's."""
    failures = []
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    scheme = config["quantization_config"]["kv_cache_scheme"]
    tensors, _ = checkpoint_tensors(folder)
    layers = config["num_hidden_layers"]
    want_shape = [1] if scheme["strategy"] == "tensor" else [config["num_key_value_heads"], 1, 1]
    for i in range(layers):
        for which in ("k_scale", "v_scale"):
            key = f"model.layers.{i}.self_attn.{which}"
            t = tensors.get(key)
            if t is None or list(t.shape) != want_shape or t.dtype != torch.float32:
                failures.append(f"{name}: {key} is {None if t is None else (t.dtype, list(t.shape))}, "
                                f"expected float32 {want_shape}")
    plain = folder + ".no_kv"
    shutil.copytree(folder, plain)
    config["quantization_config"]["kv_cache_scheme"] = None
    with open(os.path.join(plain, "config.json"), "w") as f:
        json.dump(config, f)
    path = os.path.join(plain, "model.safetensors")
    save_file({k: t for k, t in load_file(path).items() if not k.endswith(("k_scale", "v_scale"))},
              path, metadata={"format": "pt"})
    caught = check_folder(name + " (no kv_cache_scheme)", plain, ours)
    if not any("transformers" in f for f in caught):
        failures.append(f"{name}: without its kv_cache_scheme the logits still equal qat's")
    else:
        print(f"{name}: without its kv_cache_scheme the logits differ: {len(caught)} failures")
    return failures


def corrupt_one_scale(folder: str) -> str:
    """A copy of the folder with one layer's weight_scale off: 5% (float32), one
    e8m0 step (MX: twice the scale), or 25% rounded to e4m3 (NVFP4)."""
    tensors, _ = checkpoint_tensors(folder)
    victim = sorted(k for k in tensors if k.endswith(".weight_scale"))[0]
    index = os.path.join(folder, "model.safetensors.index.json")
    shard = "model.safetensors"
    if os.path.exists(index):
        with open(index) as f:
            shard = json.load(f)["weight_map"][victim]
    path = os.path.join(folder, shard)
    stored = load_file(path)
    scale = stored[victim]
    if scale.dtype == torch.uint8:
        stored[victim] = scale + 1
    elif scale.dtype == torch.float8_e4m3fn:
        stored[victim] = (scale.float() * 1.25).clamp(max=448).to(scale.dtype)
    else:
        stored[victim] = scale * 1.05
    save_file(stored, path, metadata={"format": "pt"})
    return victim


def main(tool: str) -> int:
    failures, checks = [], 0
    runs = [(case, [tool, "compressed-tensors", case]) for case in CASES]
    runs.append(("smollm2_w8a8", [tool, "compressed-tensors-gguf", smollm2_path(), "w8a8_int8"]))
    with tempfile.TemporaryDirectory() as tmp:
        for name, command in runs:
            folder, out = os.path.join(tmp, name), os.path.join(tmp, name + ".safetensors")
            subprocess.run(command + [folder, out], check=True)
            ours = load_file(out)
            with open(os.path.join(folder, "config.json")) as f:
                fmt = json.load(f)["quantization_config"]["format"]
            checks += 1
            if fmt != FORMATS[name]:
                failures.append(f"{name}: format {fmt}, expected {FORMATS[name]}")
            if name == "mixed":
                checks += 1
                if not os.path.exists(os.path.join(folder, "model.safetensors.index.json")):
                    failures.append("mixed: expected a sharded checkpoint with an index")
            checks += 1
            failures += check_folder(name, folder, ours)

            if name.endswith(("_kv", "_kv_heads")):
                checks += 1
                failures += check_kv_cache(name, folder, ours)
            if name in ("w8a8_static", "w4a16_g32_affine", "fp8", "nvfp4_a16", "mxfp4"):
                broken = folder + ".broken"
                shutil.copytree(folder, broken)
                victim = corrupt_one_scale(broken)
                checks += 1
                caught = check_folder(name + " (corrupted)", broken, ours)
                if not any("decompressed" in f for f in caught) or \
                        not any("transformers" in f for f in caught):
                    failures.append(f"{name}: {victim} off was not caught by both checks: {caught}")
                else:
                    print(f"{name}: {victim} off caught: {len(caught)} failures")
    return report(checks, failures)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
