"""qat's GPTQ against a plain float64 GPTQ written here from the paper's equations.

GPTQ (Frantar et al. 2023, section 3 and Algorithm 1) quantizes a weight W
[out, in] one input column q at a time under fixed scales; with H = X^T X the
Hessian of the layer's squared output error over the calibration inputs X
(damped: H + damp * mean(diag H) * I, and H_qq = 1, W[:, q] = 0 for inputs
that are never nonzero), and H^-1 over the columns not yet quantized:

    e     = (w_q - quant(w_q)) / [H^-1]_qq
    W    -= e [H^-1]_q,:                        (the optimal update of the rest)
    H^-1 -= [H^-1]_:,q [H^-1]_q,: / [H^-1]_qq   (q leaves the set)

This is that recursion, unblocked and without the Cholesky reformulation qat
uses (lazy blocks over the upper Cholesky factor of H^-1): the two are equal
in exact arithmetic. quant() is qat's fake-quant arithmetic in float32 (zp +
round half to even of x * float32(1/s), clamped), with the scales qat reports.

Checks, for per-group int4 (in order and in act order), per-channel int8, a
rank-deficient Hessian (fewer calibration rows than inputs) and a dead input:
1. qat's weight equals the reference's within 1e-6 (both are on the same grid,
   so in practice bit for bit: a code can differ only where a value lies within
   float64 rounding of a rounding boundary, which random inputs do not hit);
2. the check can fail: round to nearest is not within 1e-6 of it, and GPTQ's
   output error tr(E H E^T) is below round to nearest's;
3. the latent weight qat keeps (each column as GPTQ rounded it) rounds to
   GPTQ's weight exactly, and is not that weight itself.

usage: test_gptq.py PATH/TO/conformance_tool
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
from conformance import report
from safetensors.numpy import load_file, save_file


def quantize_f32(w, scale, zero_point, qmin, qmax):
    """qat's affine fake-quant of one column, float32 throughout."""
    w = w.astype(np.float32)
    s = scale.astype(np.float32)
    inv = (np.float32(1) / s).astype(np.float32)
    zp = zero_point.astype(np.float32)
    q = zp + np.rint((w * inv).astype(np.float32))
    return ((np.clip(q, qmin, qmax) - zp) * s).astype(np.float32)


def gptq_reference(weight, hessian, scale, zero_point, bits, group, damp, act_order):
    w = weight.astype(np.float64).copy()
    h = hessian.astype(np.float64).copy()
    n = w.shape[1]
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += damp * np.mean(np.diag(h)) * np.eye(n)
    hinv = np.linalg.inv(h)
    order = np.argsort(-np.diag(hessian_fixed(hessian)), kind="stable") if act_order else np.arange(n)
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    out = np.zeros_like(weight, dtype=np.float32)
    for q in order:
        s = scale.reshape(w.shape[0], -1)[:, q // group] if group else scale.reshape(-1)
        z = zero_point.reshape(w.shape[0], -1)[:, q // group] if group else zero_point.reshape(-1)
        quantized = quantize_f32(w[:, q], s, z, qmin, qmax)
        out[:, q] = quantized
        e = (w[:, q] - quantized.astype(np.float64)) / hinv[q, q]
        w -= np.outer(e, hinv[q, :])
        hinv -= np.outer(hinv[:, q], hinv[q, :]) / hinv[q, q]
    return out


def hessian_fixed(h):
    h = h.copy()
    d = np.diag(h) == 0
    h[d, d] = 1
    return h


def output_error(a, b, h):
    e = a.astype(np.float64) - b.astype(np.float64)
    return float(np.sum((e @ h) * e))


def main(tool: str) -> int:
    checks, failures = 0, []

    def check(ok, what):
        nonlocal checks
        checks += 1
        if not ok:
            failures.append(what)

    rng = np.random.default_rng(0)
    cases = [
        # name, out, in, calibration rows, bits, group, act_order, block_size
        ("int4 g32", 24, 96, 400, 4, 32, False, 32),
        ("int4 g32 act order", 24, 96, 400, 4, 32, True, 40),
        ("int8 per channel", 16, 64, 300, 8, 0, False, 128),
        ("int4 g16 rank-deficient, a dead input", 12, 64, 20, 4, 16, False, 16),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, rows, cols, tokens, bits, group, act_order, block in cases:
            weight = rng.standard_normal((rows, cols)).astype(np.float32) * 0.05
            # Correlated inputs, as a layer's activations are.
            mix = rng.standard_normal((cols, cols)) / np.sqrt(cols) + np.eye(cols)
            x = rng.standard_normal((tokens, cols)) @ mix
            if "dead" in name:
                x[:, 5] = 0
            hessian = x.T @ x
            damp = 0.01
            src, dst = os.path.join(tmp, "in.safetensors"), os.path.join(tmp, "out.safetensors")
            save_file({"weight": weight, "hessian": hessian}, src,
                      metadata={"bits": str(bits), "group_size": str(group), "damp": str(damp),
                                "block_size": str(block), "act_order": str(int(act_order))})
            subprocess.run([tool, "gptq", src, dst], check=True)
            got = load_file(dst)
            want = gptq_reference(weight, hessian, got["scale"], got["zero_point"], bits, group,
                                  damp, act_order)
            diff = np.abs(got["weight"] - want).max()
            rtn_diff = np.abs(got["rtn"] - want).max()
            h = hessian_fixed(hessian)
            gptq_err, rtn_err = output_error(weight, got["weight"], h), output_error(weight, got["rtn"], h)
            print(f"{name}: max |qat - reference| {diff:.2e} ({np.mean(got['weight'] != want):.2%} of "
                  f"values differ); round to nearest is {rtn_diff:.3g} away; output error "
                  f"{gptq_err / rtn_err:.3f} of rtn's")
            check(diff <= 1e-6, f"{name}: qat's GPTQ is {diff:.2e} from the float64 reference")
            check(rtn_diff > 1e-6, f"{name}: round to nearest equals GPTQ; the check sees nothing")
            check(gptq_err < rtn_err, f"{name}: GPTQ's output error {gptq_err:.4g} is not below "
                                      f"rtn's {rtn_err:.4g}")
            # The latent weight qat keeps for QAT rounds to GPTQ's weight.
            qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
            cols_scale = (np.repeat(got["scale"].reshape(rows, -1), group, axis=1) if group
                          else np.repeat(got["scale"].reshape(rows, 1), cols, axis=1))
            cols_zp = (np.repeat(got["zero_point"].reshape(rows, -1), group, axis=1) if group
                       else np.repeat(got["zero_point"].reshape(rows, 1), cols, axis=1))
            rounded = quantize_f32(got["latent"], cols_scale, cols_zp, qmin, qmax)
            check(np.array_equal(rounded, got["weight"]),
                  f"{name}: the latent weight does not round to GPTQ's weight")
            check(not np.array_equal(got["latent"], got["weight"]),
                  f"{name}: the latent weight is GPTQ's weight itself")
            if "dead" in name:
                check(np.all(got["weight"][:, 5] == 0), f"{name}: the dead input's weights are not 0")
    return report(checks, failures)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
