"""qat's microscaling references (kernels/ref/microscale_ref.h, kernels/microscale_math.h) for
NVFP4, MXFP4 and MXFP8 against compressed-tensors 0.20.0 itself, the library llm-compressor
writes these checkpoints with and vLLM loads them with.

The same float32 tensors go through `microscale_tool quant` and through compressed-tensors with
the weights' QuantizationArgs of its NVFP4 / MXFP4 / MXFP8 presets (preset_name_to_scheme):
- the scales a min-max observer gives a weight: generate_gparam of the tensor's aminmax (NVFP4's
  global scale), then compute_dynamic_scales_and_zp (per-block amin / amax, calculate_qparams);
- fake_quantize with those scales (and with given scales, taken from other tensors or drawn at
  random), and the straight-through mask, |x / scale + zero_point| <= max in compressed-tensors'
  own float operations;
- the compressor that infer_module_format picks (NVFP4PackedCompressor, MXFP4PackedCompressor,
  MXFP8QuantizationCompressor): its compress() tensors and the safetensors bytes they serialize
  to (dtype, shape, data), its decompress() (a bfloat16 weight), and dequantize() of the stored
  bytes in float32.
Every value must be bit-identical (signed zeros included); NaN matches NaN whatever its payload.
One exception by design: the scale of a block that holds a NaN, which compressed-tensors on a CPU
computes one of two ways by the block's position (nan_block_scales); it is checked to be one of
the two, qat's to be the scalar loop's, and the rest of that tensor is compared under qat's
scales.

`microscale_tool codecs` checks the scalar codecs on every code and on a sweep of floats: e2m1
against ml_dtypes.float4_e2m1fn and compressed-tensors' cast_to_fp4 / pack_fp4_to_uint8 /
unpack_fp4_from_uint8; e8m0 against ml_dtypes.float8_e8m0fnu and torch.float8_e8m0fnu; the MX
scale exponents and the NVFP4 global scale against generate_mx_scales, maybe_convert_from_mx_exp,
compress_mx_scale, decompress_mx_scale and generate_gparam.

usage: test_microscale.py PATH/TO/microscale_tool
"""
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

import ml_dtypes
import numpy as np
import torch
from compressed_tensors.compressors.base import BaseCompressor
from compressed_tensors.compressors.format import infer_module_format
from compressed_tensors.compressors.mx_utils import compress_mx_scale, decompress_mx_scale
from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8, unpack_fp4_from_uint8
from compressed_tensors.quantization import preset_name_to_scheme
from compressed_tensors.quantization.lifecycle.forward import dequantize, fake_quantize
from compressed_tensors.quantization.quant_args import (
    round_to_quantized_type_args,
    round_to_quantized_type_dtype,
)
from compressed_tensors.quantization.utils.helpers import (
    calculate_range,
    compute_dynamic_scales_and_zp,
    generate_gparam,
)
from compressed_tensors.quantization.utils.mxfp_utils import (
    generate_mx_scales,
    maybe_convert_from_mx_exp,
)
from conformance import ggml, ggml_quantize, report
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from safetensors.torch import save as safetensors_save

FORMATS = {
    # name: preset, block, element max, compressor class, values tensor, its dtype, scale dtype
    "nvfp4": ("NVFP4", 16, 6.0, "NVFP4PackedCompressor", "weight_packed", "U8", "F8_E4M3"),
    "mxfp4": ("MXFP4", 32, 6.0, "MXFP4PackedCompressor", "weight_packed", "U8", "U8"),
    "mxfp8": ("MXFP8", 32, 448.0, "MXFP8QuantizationCompressor", "weight", "F8_E4M3", "U8"),
}
F32 = np.float32
NAN, INF = F32(np.nan), F32(np.inf)
FLT_MAX = np.finfo(F32).max


class Checks:
    def __init__(self):
        self.count = 0
        self.values = 0
        self.failures: list[str] = []

    def equal(self, case: str, what: str, got, want, kind: str = "bits"):
        """got, want: arrays; kind 'bits' (floats: equal bits or both NaN), 'bf16' (uint16
        bfloat16 bits, NaN-aware) or 'exact' (integers, strings, shapes)."""
        self.count += 1
        got, want = np.asarray(got), np.asarray(want)
        if got.shape != want.shape and kind != "exact":
            got, want = got.reshape(-1), want.reshape(-1)
        if got.shape != want.shape:
            self.failures.append(f"{case}: {what}: shape {got.shape} vs {want.shape}")
            return
        if kind == "bits" and got.dtype.kind == "f":
            bits = {2: np.uint16, 4: np.uint32, 8: np.uint64}[got.dtype.itemsize]
            same = (got.view(bits) == want.astype(got.dtype).view(bits)) | (
                np.isnan(got) & np.isnan(want))
        elif kind == "bf16":
            got, want = got.astype(np.uint16), want.astype(np.uint16)
            nan = lambda b: (b & 0x7FFF) > 0x7F80  # noqa: E731
            same = (got == want) | (nan(got) & nan(want))
        else:
            same = got == want
        same = np.asarray(same)
        self.values += same.size
        if not same.all():
            bad = np.argwhere(~same.reshape(got.shape)) if got.ndim else np.zeros((1, 0), int)
            i = tuple(int(v) for v in bad[0])
            self.failures.append(f"{case}: {what}: {int((~same).sum())} of {same.size} differ, "
                                 f"first at {i}: qat {got[i]!r} vs reference {want[i]!r}")


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------

E2M1_GRID = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], F32)
E2M1_TIES = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], F32)


def e4m3_values() -> np.ndarray:
    """The 126 positive finite e4m3fn values (codes 1..126)."""
    return np.arange(1, 127, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(F32)


def e4m3_midpoints() -> np.ndarray:
    v = np.concatenate([[0.0], e4m3_values()]).astype(np.float64)
    return ((v[:-1] + v[1:]) / 2).astype(F32)  # exact: each has at most 5 significant bits


def blocks_to_tensor(blocks: list[np.ndarray], cols: int) -> np.ndarray:
    x = np.concatenate(blocks).astype(F32)
    return x.reshape(-1, cols)


def nvfp4_ties(rng, k: int) -> np.ndarray:
    """Global scale 2^k (the tensor's amax is 2688 * 2^-k), one block per positive e4m3 scale s
    (subnormal ones included) with amax 6 * s * 2^-k and every other value a tie (or a grid
    value) times s * 2^-k, so that x / (s / 2^k) lands exactly on .25, .75, 1.25, ... ."""
    unit = np.ldexp(F32(1), -k)
    points = np.concatenate([E2M1_TIES, E2M1_GRID])
    blocks = []
    for s in np.concatenate([e4m3_values(), e4m3_values()[-2:]]):  # 128 blocks
        block = rng.choice(points, 16) * rng.choice([-1, 1], 16)
        block[rng.integers(16)] = 6 * rng.choice([-1, 1])
        blocks.append((block.astype(F32) * s).astype(F32) * unit)
    return blocks_to_tensor(blocks, 256)


def mx_ties(rng, fmt: str) -> np.ndarray:
    """One block per scale exponent 2^e from 2^-127 up: amax 6 * 2^e (MXFP4) or 440 * 2^e
    (MXFP8, which rounds to the scale 2^e since 440 / 256 < 1.75), the other values ties of the
    element grid (or grid values) times 2^e."""
    if fmt == "mxfp4":
        points, top, emax = np.concatenate([E2M1_TIES, E2M1_GRID]), F32(6), 125
    else:
        points = np.concatenate([e4m3_midpoints(), e4m3_values()])
        points, top, emax = points[points < 440], F32(440), 119
    blocks = []
    for b in range(256):
        e = -127 + b % (emax + 128)
        block = rng.choice(points, 32) * rng.choice([-1, 1], 32)
        block[rng.integers(32)] = top * rng.choice([-1, 1])
        blocks.append(np.ldexp(block.astype(F32), e).astype(F32))
    return blocks_to_tensor(blocks, 256)


def overflow(rng, fmt: str) -> np.ndarray:
    """Blocks whose largest values lie just past what their scale can represent: MXFP4 amax in
    [6, 7) * 2^e (the exponent rounds down below 1.75); NVFP4 amax 6 * s * (1 + d) with an
    e4m3 scale s that (1 + d) does not move (global scale 1: the tensor's amax is 2688)."""
    x = rng.uniform(-1, 1, (32, 256)).astype(F32)
    blocks = x.reshape(-1, FORMATS[fmt][1])
    if fmt == "nvfp4":
        scales = rng.choice(e4m3_values()[40:100], len(blocks))
        amax = 6 * scales * rng.uniform(1.0, 1.03, len(blocks))
        blocks *= amax[:, None].astype(F32)
        blocks[0, 0] = 2688.0
        blocks[0, 1:] = np.clip(blocks[0, 1:], -2600, 2600)
    else:
        amax = rng.uniform(6.0, 7.0, len(blocks)) * np.exp2(rng.integers(-20, 20, len(blocks)))
        blocks *= (amax / np.abs(blocks).max(axis=1))[:, None].astype(F32)
    return blocks.reshape(x.shape).astype(F32)


def inputs(fmt: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng({"nvfp4": 1, "mxfp4": 2, "mxfp8": 3}[fmt])
    normal = lambda *shape: rng.standard_normal(shape).astype(F32)  # noqa: E731
    cases = {
        "normal": normal(64, 256),
        "heavy_tailed": rng.standard_t(2, (64, 256)).astype(F32),
        "cauchy": rng.standard_cauchy((16, 256)).astype(F32),
        "lognormal_magnitudes": (normal(32, 256) * np.exp(3 * normal(32, 256))).astype(F32),
        "rows_1e-30_to_1e30": (normal(61, 256) * np.logspace(-30, 30, 61)[:, None]).astype(F32),
        # NVFP4: block scales from normal e4m3 down through subnormal ones to 0 (-> 0.125).
        "rows_down_to_1e-8": (normal(64, 256) * np.logspace(0, -8, 64)[:, None]).astype(F32),
        "one_block_per_row": normal(8, FORMATS[fmt][1]),
    }
    for e in range(-30, 31, 10):  # each scale its own tensor (NVFP4: its own global scale)
        cases[f"tensor_scale_1e{e}"] = (normal(8, 256) * F32(10.0 ** e)).astype(F32)
    zeros = normal(32, 256)
    blocks = zeros.reshape(-1, 32)
    blocks[rng.random(len(blocks)) < 0.3] = 0.0
    blocks[rng.random(len(blocks)) < 0.2] = -0.0
    cases["zero_blocks"] = zeros
    cases["all_zero"] = np.zeros((4, 64), F32)
    cases["negative_zeros_and_tiny_negatives"] = np.where(
        rng.random((16, 256)) < 0.5, F32(-0.0),
        normal(16, 256) * np.where(rng.random((16, 256)) < 0.5, F32(1e-4), F32(1))).astype(F32)
    one = np.zeros((32, 256), F32)
    b = one.reshape(-1, 16)
    b[np.arange(len(b)), rng.integers(16, size=len(b))] = (
        rng.choice([-1, 1], len(b)) * np.exp(rng.uniform(-40, 40, len(b)))).astype(F32)
    cases["one_value_per_block"] = one
    if fmt == "nvfp4":
        for k in (-114, -64, -12, -3, 0, 1, 7, 30, 77, 127):
            cases[f"ties_global_scale_2^{k}"] = nvfp4_ties(rng, k)
        # amax 2688 * 2^116: its reciprocal is subnormal, so the global scale is not 2^-116.
        cases["global_scale_from_a_subnormal_reciprocal"] = nvfp4_ties(rng, -116)
    else:
        cases["ties_every_scale"] = mx_ties(rng, fmt)
    cases["overflow_the_scale"] = overflow(rng, fmt)
    cases["near_flt_max"] = rng.uniform(-FLT_MAX, FLT_MAX, (8, 256)).astype(F32)
    nan = normal(16, 256)
    nan.reshape(-1)[rng.choice(nan.size, 12, replace=False)] = NAN
    nan.reshape(-1)[rng.choice(nan.size, 4, replace=False)] = -NAN
    cases["nan"] = nan
    inf = normal(8, 256)
    inf[1, 5], inf[3, 40], inf[3, 41] = INF, -INF, INF
    cases["inf"] = inf
    return cases


# --------------------------------------------------------------------------------------------
# compressed-tensors
# --------------------------------------------------------------------------------------------

def scheme_of(fmt: str):
    return preset_name_to_scheme(FORMATS[fmt][0], ["Linear"])


def ct_scale_from_codes(fmt: str, codes: np.ndarray, shape) -> torch.Tensor:
    """The float scale compressed-tensors would hold for qat's codes (a bijection, so equal
    scales mean equal codes)."""
    t = torch.from_numpy(codes.copy()).reshape(shape)
    if fmt == "nvfp4":
        return t.view(torch.float8_e4m3fn).to(torch.float32)
    return maybe_convert_from_mx_exp(scheme_of(fmt).weights, t.to(torch.float32))


def nan_block_scales(fmt: str) -> tuple[float, list[float]]:
    """The scale of a block that holds a NaN: qat's, and compressed-tensors' two on x86-64.
    calculate_qparams' torch.min / torch.max / torch.abs pass the NaN on: ATen's scalar loop
    (a tensor's last few elements, and the CUDA kernels) keeps it a positive quiet NaN, while
    its AVX2 / AVX-512 loop (the rest) makes it the all-ones NaN 0xFFFFFFFF. For MX,
    round_to_power_2 turns the first into inf (exponent code 255) and the second, whose int32
    bits wrap, into 0 (code 0: 2^-127); for NVFP4 both are a NaN scale (stored 0x7F or
    0xFF)."""
    if fmt == "nvfp4":
        return NAN, [NAN]
    return INF, [INF, np.ldexp(F32(1), -127)]


def parse_safetensors(blob: bytes) -> dict:
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    header.pop("__metadata__", None)
    data = blob[8 + n:]
    return {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items()}


def compare_case(checks: Checks, case: str, fmt: str, x: np.ndarray, ours: dict,
                 given: tuple | None = None):
    """given: (scale codes, global scale) the tool was run with; else the dynamic scales."""
    preset, block, qmax, compressor, values_name, values_dtype, scale_dtype = FORMATS[fmt]
    scheme = scheme_of(fmt)
    args = scheme.weights
    xt = torch.from_numpy(x)
    rows, cols = x.shape
    nvfp4 = fmt == "nvfp4"

    g = generate_gparam(*torch.aminmax(xt)) if nvfp4 else None
    scale, zp = compute_dynamic_scales_and_zp(xt, args, None, global_scale=g)
    if given is None:
        if nvfp4:
            checks.equal(case, "global scale (generate_gparam)", ours["global"], g.numpy())
        qat_scale = ct_scale_from_codes(fmt, ours["scales"], scale.shape)
        nan_block = np.isnan(x).reshape(-1, block).any(axis=1)
        checks.equal(case, "scales (calculate_qparams)", qat_scale.numpy().reshape(-1)[~nan_block],
                     scale.numpy().reshape(-1)[~nan_block])
        if nan_block.any():
            # A block with a NaN: compressed-tensors' scale depends on where the block falls in
            # ATen's elementwise loops (see nan_block_scales); qat takes the scalar loop's
            # result, and the rest of the comparison runs under qat's scales.
            theirs = scale.numpy().reshape(-1)[nan_block]
            rule, either = nan_block_scales(fmt)
            checks.equal(case, "NaN blocks: qat's scale is the scalar loop's",
                         qat_scale.numpy().reshape(-1)[nan_block],
                         np.full(theirs.shape, rule, F32))
            checks.equal(case, "NaN blocks: compressed-tensors' scale is one of its two",
                         np.isin(theirs.view(np.uint32), np.array(either, F32).view(np.uint32)) |
                         (np.isnan(theirs) & np.isnan(rule)), np.ones(theirs.shape, bool), "exact")
            scale = qat_scale
    else:
        codes, global_scale = given
        scale = ct_scale_from_codes(fmt, codes, scale.shape)
        g = torch.tensor([global_scale], dtype=torch.float32) if nvfp4 else None
    fq = fake_quantize(xt, scale, zp, args, global_scale=g)
    checks.equal(case, "fake-quant (fake_quantize)", ours["fq"], fq.numpy())

    effective = scale / g if nvfp4 else scale
    scaled = xt.unflatten(-1, (-1, block)) / effective.unsqueeze(-1) + zp.unsqueeze(-1).to(
        torch.float32)
    checks.equal(case, "mask (|x / scale + zp| <= max)", ours["mask"],
                 (scaled.abs() <= qmax).reshape(x.shape).numpy().astype(np.uint8), "exact")

    fmt_ct = infer_module_format(torch.nn.Linear, scheme)
    cls = BaseCompressor.get_value_from_registry(fmt_ct.value)
    checks.equal(case, "compressor", cls.__name__, compressor, "exact")
    state = {"weight": xt, "weight_scale": scale, "weight_zero_point": zp}
    if nvfp4:
        state["weight_global_scale"] = g
    stored = cls.compress(state, scheme)
    values = stored[values_name]
    values_u8 = values.view(torch.uint8) if values.dtype != torch.uint8 else values
    checks.equal(case, f"{values_name} (compress)", ours["values"], values_u8.numpy().reshape(-1),
                 "exact")
    ws = stored["weight_scale"]
    ws_u8 = ws.view(torch.uint8) if ws.dtype != torch.uint8 else ws
    checks.equal(case, "weight_scale (compress)", ours["stored_scales"], ws_u8.numpy().reshape(-1),
                 "exact")
    if nvfp4:
        checks.equal(case, "weight_global_scale (compress)", ours["global"],
                     stored["weight_global_scale"].numpy())

    # The checkpoint: safetensors' dtypes, shapes and bytes.
    tensors = parse_safetensors(safetensors_save(stored))
    expected = {values_name: (values_dtype, [rows, cols // 2 if values_dtype == "U8" else cols],
                              ours["values"].tobytes()),
                "weight_scale": (scale_dtype, [rows, cols // block],
                                 ours["stored_scales"].tobytes())}
    if nvfp4:
        expected["weight_global_scale"] = ("F32", [1], ours["global"].tobytes())
    checks.equal(case, "safetensors tensor names", sorted(tensors), sorted(expected), "exact")
    for name, (dtype, shape, data) in expected.items():
        if name in tensors:
            checks.equal(case, f"safetensors {name} dtype/shape/bytes",
                         np.array([dtype, str(shape), data.hex()]),
                         np.array([str(tensors[name][0]), str(tensors[name][1]),
                                   tensors[name][2].hex()]), "exact")

    decompressed = cls.decompress(stored, scheme)["weight"]
    checks.equal(case, "decompress() bfloat16 weight", ours["unpacked_bf16"],
                 decompressed.view(torch.int16).numpy().view(np.uint16), "bf16")

    # dequantize() of the stored bytes in float32.
    if fmt == "mxfp8":
        deq = dequantize(x_q=values, scale=decompress_mx_scale(ws).to(torch.float32), args=args,
                         dtype=torch.float32)
    else:
        unpacked = unpack_fp4_from_uint8(values, rows, cols, dtype=torch.float32)
        scale_f = ws.to(torch.float32) if nvfp4 else decompress_mx_scale(ws).to(torch.float32)
        deq = dequantize(x_q=unpacked, scale=scale_f, args=args, global_scale=g,
                         dtype=torch.float32)
    checks.equal(case, "dequantize() float32 of the stored bytes", ours["unpacked"], deq.numpy())


# --------------------------------------------------------------------------------------------
# qat's tool
# --------------------------------------------------------------------------------------------

def run_quant(tool: str, tmp: str, fmt: str, x: np.ndarray, given=None) -> dict:
    rows, cols = x.shape
    src = os.path.join(tmp, "x.f32")
    x.astype("<f4").tofile(src)
    out = os.path.join(tmp, "out")
    os.makedirs(out, exist_ok=True)
    command = [tool, "quant", fmt, str(rows), str(cols), src, out]
    if given is not None:
        codes, global_scale = given
        codes.astype(np.uint8).tofile(os.path.join(tmp, "scales.u8"))
        np.array([global_scale], "<f4").tofile(os.path.join(tmp, "global.f32"))
        command += [os.path.join(tmp, "scales.u8"), os.path.join(tmp, "global.f32")]
    subprocess.run(command, check=True)
    read = lambda name, dtype: np.fromfile(os.path.join(out, name), dtype)  # noqa: E731
    return {
        "global": read("global.f32", "<f4"),
        "scales": read("scales.u8", np.uint8),
        "fq": read("fq.f32", "<f4").reshape(x.shape),
        "mask": read("mask.u8", np.uint8).reshape(x.shape),
        "values": read("values.u8", np.uint8),
        "stored_scales": read("stored_scales.u8", np.uint8),
        "unpacked": read("unpacked.f32", "<f4").reshape(x.shape),
        "unpacked_bf16": read("unpacked.bf16", "<u2").reshape(x.shape),
        **({"gguf": read("gguf.u8", np.uint8).reshape(-1, 17),
            "gguf_unpacked": read("gguf_unpacked.f32", "<f4").reshape(x.shape)}
           if fmt == "mxfp4" else {}),
    }


def given_scales(rng, tool: str, tmp: str, fmt: str) -> dict:
    """(b) fake-quant under scales that are not the tensor's own: another tensor's (tighter:
    many values clip; looser) and random codes (MX: the whole exponent range with 0 and the
    inf scale 255; NVFP4: every finite positive e4m3 code, subnormal ones included)."""
    block = FORMATS[fmt][1]
    x = rng.standard_normal((32, 256)).astype(F32)
    out = {}
    for name, other in (("tighter", x * F32(0.4)), ("looser", x * F32(3) + F32(0.5))):
        theirs = run_quant(tool, tmp, fmt, other.astype(F32))
        out[f"given_scales_{name}"] = (x, (theirs["scales"], theirs["global"][0]))
    n = x.size // block
    if fmt == "nvfp4":
        codes = rng.integers(1, 127, n).astype(np.uint8)
        global_scale = run_quant(tool, tmp, fmt, x)["global"][0]
    else:
        codes = rng.integers(110, 140, n).astype(np.uint8)
        codes[:8] = [0, 1, 2, 254, 255, 127, 200, 60]
        global_scale = F32(1)
    out["given_scales_random_codes"] = (x * F32(3), (codes, global_scale))
    return out


# --------------------------------------------------------------------------------------------
# Scalar codecs
# --------------------------------------------------------------------------------------------

def codec_inputs(rng) -> np.ndarray:
    e2m1 = np.concatenate([E2M1_GRID, E2M1_TIES])
    e2m1 = np.concatenate([e2m1, np.nextafter(e2m1, F32(np.inf)), np.nextafter(e2m1, F32(0))])
    e2m1 = np.concatenate([e2m1, -e2m1, rng.uniform(-8, 8, 2000).astype(F32)])
    mantissas = np.array([1, 1.25, 1.5, 1.75, 1.999], F32)
    powers = np.ldexp(F32(1), np.arange(-149, 128)).astype(F32)
    amax = (powers[:, None] * mantissas[None, :]).astype(F32).reshape(-1)
    amax = np.concatenate([amax, np.nextafter(amax, F32(np.inf)), np.nextafter(amax, F32(0))])
    special = np.array([0.0, -0.0, NAN, -NAN, INF, -INF, FLT_MAX, np.finfo(F32).tiny,
                        np.finfo(F32).smallest_subnormal, 1e-36, 7.9e-36, 2688.0, -1.0], F32)
    return np.concatenate([e2m1, amax, -amax[::7], special]).astype(F32)


def compare_codecs(checks: Checks, tool: str, tmp: str, rng):
    x = codec_inputs(rng)
    src, out = os.path.join(tmp, "codecs.f32"), os.path.join(tmp, "codecs")
    os.makedirs(out, exist_ok=True)
    x.astype("<f4").tofile(src)
    subprocess.run([tool, "codecs", src, str(x.size), out], check=True)
    read = lambda name, dtype: np.fromfile(os.path.join(out, name), dtype)  # noqa: E731
    case = "codecs"

    # e2m1 decode: every code.
    value = read("e2m1_value.f32", "<f4")
    checks.equal(case, "e2m1 value of codes 0..15 vs ml_dtypes.float4_e2m1fn", value,
                 np.arange(16, dtype=np.uint8).view(ml_dtypes.float4_e2m1fn).astype(F32))
    byte = torch.arange(256, dtype=torch.uint8).reshape(1, 256)
    nibbles = np.stack([np.arange(256) & 15, np.arange(256) >> 4], axis=1).reshape(-1)
    checks.equal(case, "e2m1 value of both nibbles of bytes 0..255 vs unpack_fp4_from_uint8",
                 value[nibbles], unpack_fp4_from_uint8(byte, 1, 512, torch.float32).numpy())

    # e2m1 encode / round: compressed-tensors' own path (clamp, cast_to_fp4, pack_fp4_to_uint8).
    fp4_args = scheme_of("mxfp4").weights
    q_min, q_max = calculate_range(fp4_args, "cpu")
    xt = torch.from_numpy(x)
    rounded = round_to_quantized_type_args(xt, fp4_args, q_min, q_max)
    checks.equal(case, "e2m1 round vs cast_to_fp4(clamp(x))", read("e2m1_round.f32", "<f4"),
                 rounded.numpy())
    pairs = torch.stack([rounded, torch.zeros_like(rounded)], dim=1)
    packed = pack_fp4_to_uint8(pairs).reshape(-1)
    code = read("e2m1_code.u8", np.uint8)
    checks.equal(case, "e2m1 code vs pack_fp4_to_uint8(cast_to_fp4(clamp(x)))", code,
                 packed.numpy(), "exact")
    plain = ~np.isnan(x) & ~((x == 0) & np.signbit(x))  # ml_dtypes: -0.0 -> 8, NaN -> 8
    checks.equal(case, "e2m1 code vs ml_dtypes.float4_e2m1fn cast (not -0.0, NaN)", code[plain],
                 x[plain].astype(ml_dtypes.float4_e2m1fn).view(np.uint8), "exact")

    # e8m0 decode: every code.
    e8m0 = read("e8m0_decode.f32", "<f4")
    codes = np.arange(256, dtype=np.uint8)
    checks.equal(case, "e8m0 decode of codes 0..255 vs ml_dtypes.float8_e8m0fnu", e8m0,
                 codes.view(ml_dtypes.float8_e8m0fnu).astype(F32))
    checks.equal(case, "e8m0 decode of codes 0..255 vs torch.float8_e8m0fnu", e8m0,
                 torch.from_numpy(codes).view(torch.float8_e8m0fnu).to(torch.float32).numpy())
    # e8m0 encode.
    e8 = read("e8m0_encode.u8", np.uint8)
    checks.equal(case, "e8m0 encode vs torch .to(float8_e8m0fnu)", e8,
                 xt.to(torch.float8_e8m0fnu).view(torch.uint8).numpy(), "exact")
    positive = x > 0
    checks.equal(case, "e8m0 encode vs ml_dtypes.float8_e8m0fnu cast (x > 0)", e8[positive],
                 x[positive].astype(ml_dtypes.float8_e8m0fnu).view(np.uint8), "exact")

    # MX scales: exponent codes from a block amax, their float scales, the stored bytes.
    mx = scheme_of("mxfp4").weights
    all_codes = torch.arange(256, dtype=torch.float32)
    checks.equal(case, "MX scale of codes 0..255 vs maybe_convert_from_mx_exp",
                 read("mx_scale_value.f32", "<f4"), maybe_convert_from_mx_exp(mx, all_codes).numpy())
    checks.equal(case, "MX scale of bytes 0..255 vs decompress_mx_scale (bfloat16)",
                 read("mx_scale_value.f32", "<f4"),
                 decompress_mx_scale(torch.arange(256, dtype=torch.uint8)).float().numpy())
    checks.equal(case, "MX stored byte of codes 0..255 vs compress_mx_scale",
                 read("mx_stored_scale.u8", np.uint8),
                 compress_mx_scale(maybe_convert_from_mx_exp(mx, all_codes), torch.uint8).numpy(),
                 "exact")
    amax = torch.from_numpy(np.abs(x))
    for bits, name in ((4, "mx_code_e2m1.u8"), (8, "mx_code_e4m3.u8")):
        want = round_to_quantized_type_dtype(generate_mx_scales(amax, num_bits=bits),
                                             torch.uint8, cast_to_original_dtype=False)
        checks.equal(case, f"MX exponent code of |x| vs generate_mx_scales(num_bits={bits})",
                     read(name, np.uint8), want.numpy(), "exact")

    # NVFP4 global scale of a tensor's amax (the non-negative inputs; generate_gparam takes a
    # tensor's min and max, so one call per value).
    global_scale = read("nvfp4_global.f32", "<f4")
    keep = np.flatnonzero((x >= 0) | np.isnan(x))[::3]
    want = np.array([generate_gparam(torch.tensor(0.0), torch.tensor(float(v))).item()
                     if not np.isnan(v) else
                     generate_gparam(torch.tensor(0.0), torch.tensor(np.nan)).item()
                     for v in x[keep]], F32)
    checks.equal(case, "NVFP4 global scale vs generate_gparam(0, amax)", global_scale[keep], want)


# --------------------------------------------------------------------------------------------
# GGUF MXFP4: the same blocks for llama.cpp
# --------------------------------------------------------------------------------------------

def gguf_codes(blocks: np.ndarray) -> np.ndarray:
    """The e2m1 codes of ggml's block_mxfp4 rows in element order: element j in the low nibble
    of qs[j], element j + 16 in its high nibble; -0 (code 8) read as 0, as ggml reads it."""
    qs = blocks[:, 1:]
    codes = np.concatenate([qs & 0xF, qs >> 4], axis=1)
    return np.where(codes == 8, 0, codes)


def compare_gguf_mxfp4(checks: Checks, case: str, x: np.ndarray, ours: dict, lib, stats: dict):
    """qat's GGUF MXFP4 blocks (the stored codes and scale bytes, rearranged into ggml's
    block_mxfp4) against gguf-py's dequantize, and qat's scale rule (compressed-tensors')
    against llama.cpp's own MXFP4 quantizer, on where and why they differ."""
    blocks = ours["gguf"]
    theirs = gguf_dequantize(blocks, GGMLQuantizationType.MXFP4).reshape(-1)
    # What compressed-tensors' decompress reads in float32; ggml has no -0.
    checks.equal(case, "GGUF MXFP4: gguf-py reads the compressed-tensors weight (zeros unsigned)",
                 theirs + F32(0), ours["unpacked"].reshape(-1) + F32(0))
    checks.equal(case, "GGUF MXFP4: qat's reader is gguf-py's", ours["gguf_unpacked"], theirs)
    if not np.isfinite(x).all():
        return
    # llama.cpp's quantize_row_mxfp4_ref: e = floor(log2f(amax)) - 2 + 127 (OCP's rule),
    # codes by nearest value, ties to the smaller magnitude. compressed-tensors rounds amax to a
    # power of two first, up from 1.75 * 2^e, and its e2m1 ties go to even. So the scale bytes
    # are equal below 1.75, one higher in qat's from 1.75 (unless log2f itself rounds up, just
    # below a power of two); under equal scales the codes are equal but at exact ties.
    ggml_blocks = ggml_quantize(lib, x, GGMLQuantizationType.MXFP4).reshape(-1, 17)
    amax = np.abs(x.reshape(-1, 32)).max(axis=1)
    e_ours, e_ggml = blocks[:, 0].astype(int), ggml_blocks[:, 0].astype(int)
    # ggml's byte wraps below amax 2^-125; compressed-tensors' scale is inf from 1.75 * 2^127
    # (code 255, stored as the byte 127).
    usable = (amax >= F32(2.0 ** -125)) & (ours["scales"].reshape(-1) < 255)
    high = (amax.view(np.uint32) & 0x7FFFFF) >= 0x600000
    equal = e_ours == e_ggml
    checks.equal(case, "llama.cpp MXFP4: qat's scale byte where amax's mantissa is below 1.75",
                 equal[usable & ~high], np.ones((usable & ~high).sum(), bool), "exact")
    checks.equal(case, "llama.cpp MXFP4: qat's scale byte is one higher where they differ",
                 (high & (e_ours == e_ggml + 1))[usable & ~equal],
                 np.ones((usable & ~equal).sum(), bool), "exact")
    same = usable & equal
    ours_codes, ggml_codes = gguf_codes(blocks[same]), gguf_codes(ggml_blocks[same])
    differ = ours_codes != ggml_codes
    y = np.abs(np.ldexp(x.reshape(-1, 32)[same].astype(np.float64), 127 - e_ours[same, None]))
    tie = np.isin(y, E2M1_TIES.astype(np.float64))
    smaller = E2M1_GRID[ggml_codes & 7] < E2M1_GRID[ours_codes & 7]
    checks.equal(case, "llama.cpp MXFP4: under the same scale, codes differ only at ties, "
                 "where llama.cpp's magnitude is the smaller", (tie & smaller)[differ],
                 np.ones(int(differ.sum()), bool), "exact")
    stats["blocks"] += int(usable.sum())
    stats["other_scale"] += int((usable & ~equal).sum())
    stats["ties"] += int(differ.sum())


def main(tool: str) -> int:
    start = time.time()
    np.seterr(all="ignore")
    checks = Checks()
    rng = np.random.default_rng(0)
    lib, mxfp4_stats = ggml(), {"blocks": 0, "other_scale": 0, "ties": 0}
    with tempfile.TemporaryDirectory() as tmp:
        compare_codecs(checks, tool, tmp, rng)
        cases = 0
        for fmt in FORMATS:
            for name, x in inputs(fmt).items():
                ours = run_quant(tool, tmp, fmt, x)
                compare_case(checks, f"{fmt} {name}", fmt, x, ours)
                if fmt == "mxfp4":
                    compare_gguf_mxfp4(checks, f"{fmt} {name}", x, ours, lib, mxfp4_stats)
                cases += 1
            for name, (x, given) in given_scales(rng, tool, tmp, fmt).items():
                compare_case(checks, f"{fmt} {name}", fmt, x, run_quant(tool, tmp, fmt, x, given),
                             given)
                cases += 1
    print(f"{cases} tensors in 3 formats and the codecs: {checks.values} values compared "
          f"in {time.time() - start:.1f} s")
    print(f"GGUF MXFP4 against llama.cpp's own quantizer: {mxfp4_stats['blocks']} blocks, "
          f"{mxfp4_stats['other_scale']} with llama.cpp's scale one lower (amax's mantissa from "
          f"1.75), {mxfp4_stats['ties']} codes that differ at ties under the same scale")
    return report(checks.count, checks.failures)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
