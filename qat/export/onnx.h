// ONNX export of converted models as QuantizeLinear / DequantizeLinear (QDQ)
// graphs, the form ONNX Runtime and TensorRT serve as quantized models:
//
//   weights      integer initializers (int8 / uint8; int4 / uint4 with opset
//                21) -> DequantizeLinear, per tensor, per channel (`axis`) or
//                in blocks (opset 21), with the codes, scales and zero points
//                of qat::convert
//   activations  QuantizeLinear -> DequantizeLinear with the calibrated (or
//                learned) scale and zero point of the layer's input / output
//                quantizer, int8 or uint8 (int4 / uint4) as its spec says
//   operators    in float between them (Gemm, Conv with BatchNorm folded,
//                Relu, Add, ...), as the fake-quantized model computes them
//
// The writer is qat's own: the few protobuf messages a model needs
// (ModelProto, GraphProto, NodeProto, AttributeProto, TensorProto,
// ValueInfoProto) are encoded by hand, field numbers from onnx/onnx.proto, so
// no protobuf library is needed.
//
// Numerics: QuantizeLinear is saturate(round_half_even(x / scale) + zero
// point), fake-quant's formula, and DequantizeLinear's (q - zero point) *
// scale is the converted weight bit for bit. One difference remains: ATen's
// fake-quant (and so qat's) multiplies by 1 / scale where QuantizeLinear
// divides, so a value within an ulp of a rounding tie can land on the
// neighbouring code.
//
// Each model describes its own graph with the layer helpers below (see
// trainers/models/classifiers.h); qat/ knows nothing of the models.
//
// Example:
//   qat::convert(*model);
//   qat::onnx::GraphBuilder graph("mlp");
//   auto x = graph.add_input("images", qat::onnx::DataType::float32,
//                            {"batch", 64});
//   x = qat::onnx::add_linear(graph, "fc0", *fc0, x);
//   graph.add_output(x, "logits", qat::onnx::DataType::float32,
//                    {"batch", 10});
//   graph.save("mlp.onnx");
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <set>
#include <string>
#include <variant>
#include <vector>

namespace qat {

class FakeQuantizerImpl;
class QuantActivationImpl;
class QuantConv2dImpl;
class QuantLinearImpl;
struct QuantizedWeight;

namespace onnx {

// TensorProto.DataType values that qat writes.
enum class DataType : int32_t {
  float32 = 1,
  uint8 = 2,
  int8 = 3,
  int32 = 6,
  int64 = 7,
  uint4 = 21,
  int4 = 22,
};

// A dimension: a size, or a name for a size known at run time ("batch").
using Dim = std::variant<int64_t, std::string>;

struct Attribute {
  Attribute(std::string name_, int64_t value_)
      : name(std::move(name_)), value(value_) {}
  Attribute(std::string name_, std::vector<int64_t> value_)
      : name(std::move(name_)), value(std::move(value_)) {}

  std::string name;
  std::variant<int64_t, std::vector<int64_t>> value;
};

// One graph and the model around it. Every value (input, initializer, node
// output) has a unique name, and nodes may only read values defined before
// them, so the nodes are in topological order as ONNX requires; both are
// checked as the graph is built (std::invalid_argument naming the value).
class GraphBuilder {
 public:
  explicit GraphBuilder(std::string name);

  // Returns `name`, the value to feed the next node.
  std::string add_input(
      const std::string& name,
      DataType type,
      const std::vector<Dim>& shape);
  // A constant: `values` converted to `type` (integer values must fit it;
  // int4 / uint4 are packed two a byte, first element in the low nibble).
  std::string add_initializer(
      const std::string& name,
      const torch::Tensor& values,
      DataType type);
  // One operator of the default domain with one output, named `output`.
  std::string add_node(
      const std::string& op_type,
      const std::vector<std::string>& inputs,
      const std::string& output,
      const std::vector<Attribute>& attributes = {});
  // Makes `value` a graph output called `name` (through an Identity node when
  // the names differ).
  void add_output(
      const std::string& value,
      const std::string& name,
      DataType type,
      const std::vector<Dim>& shape);

  // The opset the model imports: 13 (per-channel QDQ) unless something
  // needs a newer one (int4 types and blocked scales need 21).
  void require_opset(int64_t version);
  int64_t opset() const {
    return opset_;
  }

  // The serialized ModelProto.
  std::string serialize() const;
  // Writes serialize() to `path` atomically (temporary file + rename).
  void save(const std::string& path) const;

 private:
  void define(const std::string& value);
  void check_defined(const std::string& value) const;

  std::string name_;
  int64_t opset_ = 13;
  std::set<std::string> values_;
  // Encoded NodeProto / TensorProto / ValueInfoProto messages.
  std::vector<std::string> nodes_, initializers_, inputs_, outputs_;
};

// `x` through `quantizer` as QuantizeLinear -> DequantizeLinear, named
// "<name>.scale", "<name>.zero_point", "<name>.quantized", "<name>"; returns
// the dequantized value. A quantizer with fake-quant switched off is left
// out, as the module leaves it out. Static integer quantizers only:
// dynamic, FP8 and PACT ones throw std::invalid_argument naming `name`.
std::string add_fake_quant(
    GraphBuilder& graph,
    const std::string& name,
    const FakeQuantizerImpl& quantizer,
    const std::string& x);

// A converted weight as integer initializer "<name>.quantized" (with
// "<name>.scale", "<name>.zero_point") and DequantizeLinear, in `shape` (the
// layer's weight shape; QuantizedWeight holds convolutions flattened to 2-D).
std::string add_quantized_weight(
    GraphBuilder& graph,
    const std::string& name,
    const QuantizedWeight& weight,
    const std::vector<int64_t>& shape);

// The layers, each with its input and output quantizers, named after `name`
// (the layer's name in the model: "fc0" gives "fc0.input_quantizer",
// "fc0.weight", "fc0.bias", "fc0"). A layer with a weight quantizer must be
// converted first (qat::convert); layers without one stay float.
//
// Gemm(x, W^T) + bias; `x` must be 2-D [batch, in_features].
std::string add_linear(
    GraphBuilder& graph,
    const std::string& name,
    const QuantLinearImpl& layer,
    const std::string& x);
// Conv with the layer's stride, padding, dilation and groups; a folded
// BatchNorm is in its weight and bias, as the converted layer serves it.
std::string add_conv2d(
    GraphBuilder& graph,
    const std::string& name,
    const QuantConv2dImpl& layer,
    const std::string& x);
// Relu or identity.
std::string add_activation(
    GraphBuilder& graph,
    const std::string& name,
    const QuantActivationImpl& layer,
    const std::string& x);

} // namespace onnx
} // namespace qat
