"""qat's ONNX export (QuantizeLinear / DequantizeLinear graphs) against onnx and ONNX Runtime.

For an MLP and a small ResNet, each at W8A8 (int8 per-channel weights, int8
static per-tensor inputs, uint8 ReLU outputs; opset 13) and at 4 bits (int4
per-channel and blocked weights, int4 inputs, 6-bit ReLU outputs; opset 21),
`conformance_tool onnx` calibrates and fine-tunes the fake-quantized model for
a few steps, writes its logits on fixed images and its fake-quantized weights,
converts it and exports ONNX. Then:

- onnx.checker.check_model(full_check=True) accepts the file, with the opset
  the format needs;
- every Conv / Gemm weight is an integer initializer through DequantizeLinear,
  of the expected type, and ONNX Runtime's dequantized weights equal qat's
  fake-quantized weights bit for bit;
- ONNX Runtime's logits (the graph run as written, optimizations off) match
  the fake-quantized model's: `matches` below. Most logits agree to float
  rounding; QuantizeLinear divides by the scale where fake-quant multiplies by
  its reciprocal, so an activation within an ulp of a rounding tie can take
  the neighbouring code, which moves the logits downstream of it by about one
  quantization step times the weights (seen: 1.4e-4 on 10 of 640 logits);
- with a wrong activation scale or a wrong weight scale the logits do not
  match: the comparison can fail.

usage: test_onnx.py PATH/TO/conformance_tool
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from conformance import report
from onnx import TensorProto, numpy_helper
from safetensors.numpy import load_file

CASES = [("mlp", "int8"), ("resnet", "int8"), ("mlp", "int4"), ("resnet", "int4")]
OPSET = {"int8": 13, "int4": 21}


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # The graph as written: QDQ in float, as the fake-quantized model computes.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, images: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
    """Runs `model` with the values named in `outputs` added as graph outputs."""
    extended = onnx.ModelProto()
    extended.CopyFrom(model)
    known = {o.name for o in extended.graph.output}
    for name in outputs:
        if name not in known:
            extended.graph.output.append(onnx.ValueInfoProto(name=name))
    return session(extended).run(outputs, {"images": images})


# At most this share of the logits may differ by more than float rounding
# (CLOSE), and none by more than MAX_DIFF (see the docstring).
CLOSE, TIE_SHARE, MAX_DIFF = 1e-5, 0.02, 5e-4


def matches(diff: np.ndarray) -> bool:
    return (diff > CLOSE).mean() <= TIE_SHARE and diff.max() <= MAX_DIFF


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def main(tool: str) -> int:
    checks, failures = 0, []

    def check(ok: bool, what: str) -> None:
        nonlocal checks
        checks += 1
        if not ok:
            failures.append(what)

    with tempfile.TemporaryDirectory() as tmp:
        for model_name, scheme in CASES:
            case = f"{model_name} {scheme}"
            path = os.path.join(tmp, f"{model_name}_{scheme}.onnx")
            ref_path = os.path.join(tmp, f"{model_name}_{scheme}.safetensors")
            subprocess.run([tool, "onnx", model_name, scheme, path, ref_path], check=True)
            ref = load_file(ref_path)
            model = onnx.load(path)
            try:
                onnx.checker.check_model(model, full_check=True)
                check(True, "")
            except onnx.checker.ValidationError as e:
                check(False, f"{case}: onnx.checker: {e}")
            opset = {o.domain: o.version for o in model.opset_import}.get("", 0)
            check(opset == OPSET[scheme], f"{case}: opset {opset}, expected {OPSET[scheme]}")

            # Served weights: integer codes through DequantizeLinear.
            by_output = producers(model)
            initializers = {t.name: t for t in model.graph.initializer}
            weights = [n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
            for weight in weights:
                node = by_output.get(weight)
                if node is not None and node.op_type == "Reshape":
                    node = by_output.get(node.input[0])
                codes = initializers.get(node.input[0]) if node is not None else None
                first = weight.split(".")[0] in ("fc0", "stem")
                want = TensorProto.INT8 if scheme == "int8" or first else TensorProto.INT4
                check(node is not None and node.op_type == "DequantizeLinear" and codes is not None
                      and codes.data_type == want,
                      f"{case}: {weight} is {TensorProto.DataType.Name(want)} codes -> DequantizeLinear")
            names = [w for w in weights if w in ref]
            check(len(names) == len(weights), f"{case}: every weight quantized ({names} of {weights})")
            images = ref["images"]
            served = run(model, images, names)
            for name, got in zip(names, served):
                want = ref[name]
                check(np.array_equal(got.reshape(want.shape), want),
                      f"{case}: {name} dequantized by ONNX Runtime equals qat's fake-quantized weight "
                      f"(max diff {np.abs(got.reshape(want.shape) - want).max()})")

            logits = ref["logits"]
            got = run(model, images, ["logits"])[0]
            diff = np.abs(got - logits)
            print(f"{case}: max |ORT - qat| {diff.max():.3g}, mean {diff.mean():.3g}, "
                  f"elements over 1e-5: {(diff > 1e-5).sum()} of {diff.size}, |logits| max {np.abs(logits).max():.3g}")
            check(matches(diff), f"{case}: ONNX Runtime's logits match qat's (max diff {diff.max():.3g})")
            for probe, scale in (("activation", "fc0.input_quantizer.scale" if model_name == "mlp" else "stem.input_quantizer.scale"),
                                 ("weight", "head.weight.scale")):
                wrong = onnx.ModelProto()
                wrong.CopyFrom(model)
                for t in wrong.graph.initializer:
                    if t.name == scale:
                        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(1.05), t.name))
                d = np.abs(run(wrong, images, ["logits"])[0] - logits)
                print(f"  wrong {probe} scale: max diff {d.max():.3g}, over 1e-5: {(d > 1e-5).sum()}")
                check(not matches(d), f"{case}: a 5% wrong {probe} scale is detected")
    return report(checks, failures)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
