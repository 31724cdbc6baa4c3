#include "qat/export/onnx.h"

#include <torch/torch.h>

#include <stdexcept>

#include "qat/convert.h"
#include "qat/export/atomic_file.h"
#include "qat/fake_quant.h"
#include "qat/format.h"
#include "qat/modules/activation.h"
#include "qat/modules/conv.h"
#include "qat/modules/linear.h"

namespace qat::onnx {
namespace {

// Field numbers of the messages qat writes, from onnx/onnx.proto.
struct ModelProto {
  static constexpr int ir_version = 1, producer_name = 2, graph = 7,
                       opset_import = 8;
};
struct OperatorSetIdProto {
  static constexpr int version = 2;
};
struct GraphProto {
  static constexpr int node = 1, name = 2, initializer = 5, input = 11,
                       output = 12;
};
struct NodeProto {
  static constexpr int input = 1, output = 2, name = 3, op_type = 4,
                       attribute = 5;
};
struct AttributeProto {
  static constexpr int name = 1, i = 3, ints = 8, type = 20;
  // AttributeProto.AttributeType
  static constexpr int64_t type_int = 2, type_ints = 7;
};
struct TensorProto {
  static constexpr int dims = 1, data_type = 2, name = 8, raw_data = 9;
};
struct ValueInfoProto {
  static constexpr int name = 1, type = 2;
};
struct TypeProto {
  static constexpr int tensor_type = 1;
  struct Tensor {
    static constexpr int elem_type = 1, shape = 2;
  };
};
struct TensorShapeProto {
  static constexpr int dim = 1;
  struct Dimension {
    static constexpr int dim_value = 1, dim_param = 2;
  };
};

// One protobuf message being encoded: each field is a tag (field number and
// wire type) then a varint, or a length and bytes. Repeated fields are written
// one element at a time, which every parser reads.
class Message {
 public:
  Message& integer(int field, int64_t value) {
    tag(field, /*wire type varint*/ 0);
    varint(static_cast<uint64_t>(value));
    return *this;
  }
  Message& bytes(int field, const std::string& value) {
    tag(field, /*wire type length-delimited*/ 2);
    varint(value.size());
    out_ += value;
    return *this;
  }
  Message& message(int field, const Message& value) {
    return bytes(field, value.out_);
  }
  const std::string& encoded() const {
    return out_;
  }

 private:
  void tag(int field, int wire_type) {
    varint((static_cast<uint64_t>(field) << 3) | wire_type);
  }
  void varint(uint64_t value) {
    while (value >= 0x80) {
      out_ += static_cast<char>((value & 0x7F) | 0x80);
      value >>= 7;
    }
    out_ += static_cast<char>(value);
  }
  std::string out_;
};

// The IR version that defines the types of an opset: 7 for opset 13, 10
// (int4 / uint4) for opset 21.
int64_t ir_version_for(int64_t opset) {
  return opset >= 21 ? 10 : 7;
}

const char* type_name(DataType type) {
  switch (type) {
    case DataType::float32:
      return "float32";
    case DataType::uint8:
      return "uint8";
    case DataType::int8:
      return "int8";
    case DataType::int32:
      return "int32";
    case DataType::int64:
      return "int64";
    case DataType::uint4:
      return "uint4";
    case DataType::int4:
      return "int4";
  }
  return "?";
}

struct IntegerRange {
  int64_t min, max;
};

IntegerRange integer_range(DataType type) {
  switch (type) {
    case DataType::uint8:
      return {0, 255};
    case DataType::int8:
      return {-128, 127};
    case DataType::int32:
      return {INT32_MIN, INT32_MAX};
    case DataType::int64:
      return {INT64_MIN, INT64_MAX};
    case DataType::uint4:
      return {0, 15};
    case DataType::int4:
      return {-8, 7};
    case DataType::float32:
      break;
  }
  throw std::logic_error("integer_range: not an integer type");
}

// Little-endian bytes of `values` as `type` (the hosts qat runs on are
// little-endian, as raw_data is).
std::string raw_data(const torch::Tensor& values, DataType type) {
  const torch::Tensor t = values.detach().cpu().contiguous();
  const auto bytes_of = [](const torch::Tensor& x) {
    return std::string(
        static_cast<const char*>(x.const_data_ptr()),
        x.numel() * x.element_size());
  };
  if (type == DataType::float32)
    return bytes_of(t.to(torch::kFloat));
  const torch::Tensor v = t.to(torch::kLong);
  const IntegerRange range = integer_range(type);
  if (t.is_floating_point() ||
      (v.numel() > 0 &&
       (v.min().item<int64_t>() < range.min ||
        v.max().item<int64_t>() > range.max))) {
    throw std::invalid_argument(
        std::string("values do not fit ONNX type ") + type_name(type));
  }
  switch (type) {
    case DataType::uint8:
      return bytes_of(v.to(torch::kByte));
    case DataType::int8:
      return bytes_of(v.to(torch::kChar));
    case DataType::int32:
      return bytes_of(v.to(torch::kInt));
    case DataType::int64:
      return bytes_of(v);
    case DataType::uint4:
    case DataType::int4: {
      // Two 4-bit two's-complement values a byte, the first in the low nibble.
      torch::Tensor nibbles = v.reshape(-1).bitwise_and(0x0F);
      if (nibbles.numel() % 2 != 0)
        nibbles = torch::cat({nibbles, torch::zeros({1}, torch::kLong)});
      const torch::Tensor pairs = nibbles.view({-1, 2});
      return bytes_of(
          (pairs.select(1, 0) + pairs.select(1, 1) * 16).to(torch::kByte));
    }
    case DataType::float32:
      break;
  }
  throw std::logic_error("raw_data: unknown type");
}

Message value_info(
    const std::string& name,
    DataType type,
    const std::vector<Dim>& shape) {
  Message dims;
  for (const Dim& d : shape) {
    Message dim;
    if (const auto* size = std::get_if<int64_t>(&d))
      dim.integer(TensorShapeProto::Dimension::dim_value, *size);
    else
      dim.bytes(
          TensorShapeProto::Dimension::dim_param, std::get<std::string>(d));
    dims.message(TensorShapeProto::dim, dim);
  }
  Message tensor_type;
  tensor_type.integer(TypeProto::Tensor::elem_type, static_cast<int>(type))
      .message(TypeProto::Tensor::shape, dims);
  Message type_proto;
  type_proto.message(TypeProto::tensor_type, tensor_type);
  Message info;
  info.bytes(ValueInfoProto::name, name)
      .message(ValueInfoProto::type, type_proto);
  return info;
}

std::vector<int64_t> ints(at::IntArrayRef values) {
  return values.vec();
}

} // namespace

GraphBuilder::GraphBuilder(std::string name) : name_(std::move(name)) {}

void GraphBuilder::define(const std::string& value) {
  if (value.empty() || !values_.insert(value).second) {
    throw std::invalid_argument(
        "ONNX graph '" + name_ + "': value name '" + value +
        "' is empty or defined twice");
  }
}

void GraphBuilder::check_defined(const std::string& value) const {
  if (!values_.count(value)) {
    throw std::invalid_argument(
        "ONNX graph '" + name_ + "': value '" + value +
        "' is used before it is defined");
  }
}

std::string GraphBuilder::add_input(
    const std::string& name,
    DataType type,
    const std::vector<Dim>& shape) {
  define(name);
  inputs_.push_back(value_info(name, type, shape).encoded());
  return name;
}

std::string GraphBuilder::add_initializer(
    const std::string& name,
    const torch::Tensor& values,
    DataType type) {
  define(name);
  if (type == DataType::int4 || type == DataType::uint4)
    require_opset(21);
  Message tensor;
  for (const int64_t d : values.sizes())
    tensor.integer(TensorProto::dims, d);
  try {
    tensor.integer(TensorProto::data_type, static_cast<int>(type))
        .bytes(TensorProto::name, name)
        .bytes(TensorProto::raw_data, raw_data(values, type));
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(
        "ONNX graph '" + name_ + "': initializer '" + name + "': " + e.what());
  }
  initializers_.push_back(tensor.encoded());
  return name;
}

std::string GraphBuilder::add_node(
    const std::string& op_type,
    const std::vector<std::string>& inputs,
    const std::string& output,
    const std::vector<Attribute>& attributes) {
  Message node;
  for (const auto& input : inputs) {
    check_defined(input);
    node.bytes(NodeProto::input, input);
  }
  define(output);
  node.bytes(NodeProto::output, output)
      .bytes(NodeProto::name, output)
      .bytes(NodeProto::op_type, op_type);
  for (const Attribute& a : attributes) {
    Message attribute;
    attribute.bytes(AttributeProto::name, a.name);
    if (const auto* value = std::get_if<int64_t>(&a.value)) {
      attribute.integer(AttributeProto::type, AttributeProto::type_int)
          .integer(AttributeProto::i, *value);
    } else {
      attribute.integer(AttributeProto::type, AttributeProto::type_ints);
      for (const int64_t v : std::get<std::vector<int64_t>>(a.value))
        attribute.integer(AttributeProto::ints, v);
    }
    node.message(NodeProto::attribute, attribute);
  }
  nodes_.push_back(node.encoded());
  return output;
}

void GraphBuilder::add_output(
    const std::string& value,
    const std::string& name,
    DataType type,
    const std::vector<Dim>& shape) {
  if (value != name)
    add_node("Identity", {value}, name);
  check_defined(name);
  outputs_.push_back(value_info(name, type, shape).encoded());
}

void GraphBuilder::require_opset(int64_t version) {
  opset_ = std::max(opset_, version);
}

std::string GraphBuilder::serialize() const {
  Message graph;
  for (const auto& node : nodes_)
    graph.bytes(GraphProto::node, node);
  graph.bytes(GraphProto::name, name_);
  for (const auto& tensor : initializers_)
    graph.bytes(GraphProto::initializer, tensor);
  for (const auto& input : inputs_)
    graph.bytes(GraphProto::input, input);
  for (const auto& output : outputs_)
    graph.bytes(GraphProto::output, output);
  // The default domain (ai.onnx): no domain field.
  Message opset;
  opset.integer(OperatorSetIdProto::version, opset_);
  Message model;
  model.integer(ModelProto::ir_version, ir_version_for(opset_))
      .bytes(ModelProto::producer_name, "qat")
      .message(ModelProto::graph, graph)
      .message(ModelProto::opset_import, opset);
  return model.encoded();
}

void GraphBuilder::save(const std::string& path) const {
  const std::string bytes = serialize();
  write_string_atomically(path, "ONNX file '" + path + "'", bytes);
}

// ---------------------------------------------------------------------------
// QDQ

namespace {

[[noreturn]] void unsupported(
    const std::string& name,
    const QuantSpec& spec,
    const std::string& why) {
  throw std::invalid_argument(
      "ONNX export of '" + name + "' (" + spec.to_string() + "): " + why);
}

// The ONNX integer type that holds the spec's codes: 8-bit types, or 4-bit
// ones (opset 21) for specs of 4 bits or fewer.
DataType code_type(const QuantSpec& spec) {
  if (spec.bits() <= 4)
    return spec.is_signed() ? DataType::int4 : DataType::uint4;
  return spec.is_signed() ? DataType::int8 : DataType::uint8;
}

// Where the scales run, as QuantizeLinear / DequantizeLinear attributes:
// none per tensor, `axis` per channel, `axis` and `block_size` (opset 21) for
// groups. `dims` is the rank of the tensor they apply to.
std::vector<Attribute> scale_layout(
    GraphBuilder& graph,
    const QuantSpec& spec,
    int64_t last_size,
    int64_t dims) {
  const auto axis = spec.op_axis();
  if (!axis)
    return {};
  const int64_t dim = *axis < 0 ? *axis + dims : *axis;
  const int64_t block = spec.op_group_size(last_size);
  if (block == 0)
    return {{"axis", dim}};
  graph.require_opset(21);
  return {{"axis", dim}, {"block_size", block}};
}

void check_integer(const std::string& name, const QuantSpec& spec) {
  if (spec.is_fp8())
    unsupported(name, spec, "FP8 is not exported to ONNX yet");
  if (spec.gguf() != GgufRule::none)
    unsupported(name, spec, "GGUF blocks have no ONNX form; export GGUF");
  if (spec.is_microscale()) {
    unsupported(
        name,
        spec,
        "microscaling formats are exported as compressed-tensors "
        "(--format compressed-tensors)");
  }
}

// The weight of a layer as the forward computes with it: the converted
// weight dequantized, or the float one for a layer without a weight
// quantizer.
std::string layer_weight(
    GraphBuilder& graph,
    const std::string& name,
    const QuantizedLayer& layer,
    const torch::Tensor& float_weight) {
  if (layer.quantized_weight) {
    return add_quantized_weight(
        graph,
        name + ".weight",
        *layer.quantized_weight,
        float_weight.sizes().vec());
  }
  if (!layer.quantizers.weight.is_empty()) {
    throw std::invalid_argument(
        "ONNX export of '" + name +
        "': the layer has a weight quantizer but no converted weight; call "
        "qat::convert(model) first");
  }
  return graph.add_initializer(
      name + ".weight", float_weight, DataType::float32);
}

std::string input_of(
    GraphBuilder& graph,
    const std::string& name,
    const QuantizedLayer& layer,
    const std::string& x) {
  const FakeQuantizer& input = layer.quantizers.input;
  return input.is_empty()
      ? x
      : add_fake_quant(graph, name + ".input_quantizer", *input, x);
}

std::string output_of(
    GraphBuilder& graph,
    const std::string& name,
    const QuantizedLayer& layer,
    const std::string& y) {
  const FakeQuantizer& output = layer.quantizers.output;
  return output.is_empty()
      ? y
      : add_fake_quant(graph, name + ".output_quantizer", *output, y);
}

} // namespace

std::string add_fake_quant(
    GraphBuilder& graph,
    const std::string& name,
    const FakeQuantizerImpl& quantizer,
    const std::string& x) {
  if (!quantizer.fake_quant_enabled())
    return x;
  const QuantSpec& spec = quantizer.options().spec();
  check_integer(name, spec);
  if (spec.dynamic()) {
    unsupported(
        name,
        spec,
        "dynamic scales are computed from each input, QuantizeLinear needs a "
        "static (calibrated) one");
  }
  if (quantizer.options().estimator() == Estimator::pact)
    unsupported(name, spec, "PACT's clipping is not exported to ONNX yet");
  if (spec.granularity() != Granularity::per_tensor &&
      spec.granularity() != Granularity::per_channel) {
    unsupported(name, spec, "static activations per tensor or per channel");
  }
  const bool per_tensor = spec.granularity() == Granularity::per_tensor;
  const DataType type = code_type(spec);
  torch::Tensor scale = quantizer.scale().detach().to(torch::kFloat).cpu();
  torch::Tensor zero_point =
      integer_zero_point(quantizer.zero_point().detach().cpu(), spec);
  if (per_tensor) {
    scale = scale.reshape({});
    zero_point = zero_point.reshape({});
  }
  // Per channel: `axis` of the activation, whose rank the spec does not
  // know; a negative axis counts from the end, as in the spec.
  const std::vector<Attribute> layout = per_tensor
      ? std::vector<Attribute>{}
      : std::vector<Attribute>{{"axis", spec.axis()}};
  const auto s =
      graph.add_initializer(name + ".scale", scale, DataType::float32);
  const auto z = graph.add_initializer(name + ".zero_point", zero_point, type);
  const auto q =
      graph.add_node("QuantizeLinear", {x, s, z}, name + ".quantized", layout);
  const IntegerRange range = integer_range(type);
  if (spec.quant_min() == range.min && spec.quant_max() == range.max)
    return graph.add_node("DequantizeLinear", {q, s, z}, name, layout);
  // Fewer codes than the type holds (6 bits in int8, a narrow range):
  // QuantizeLinear saturates to the type, so clip the dequantized value to
  // the spec's codes, computed as DequantizeLinear computes (q - z) * s.
  if (!per_tensor)
    unsupported(name, spec, "a per-channel code range narrower than its type");
  const auto dq = graph.add_node(
      "DequantizeLinear", {q, s, z}, name + ".dequantized", layout);
  const auto bound = [&](int64_t code, const char* which) {
    const float value =
        static_cast<float>(code - zero_point.item<int>()) * scale.item<float>();
    return graph.add_initializer(
        name + "." + which, torch::tensor(value), DataType::float32);
  };
  return graph.add_node(
      "Clip",
      {dq, bound(spec.quant_min(), "min"), bound(spec.quant_max(), "max")},
      name);
}

std::string add_quantized_weight(
    GraphBuilder& graph,
    const std::string& name,
    const QuantizedWeight& weight,
    const std::vector<int64_t>& shape) {
  const QuantSpec& spec = weight.spec;
  check_integer(name, spec);
  const int64_t stored_dims = static_cast<int64_t>(weight.shape.size());
  const auto layout =
      scale_layout(graph, spec, weight.shape.back(), stored_dims);
  // Scales per tensor or along axis 0 apply to the served shape as they are;
  // along another axis or in blocks they apply to the stored (flattened)
  // codes, which are reshaped after dequantization.
  const auto axis = spec.op_axis();
  const bool along_axis_0 =
      layout.size() == 1 && std::get<int64_t>(layout.front().value) == 0;
  const bool reshaped = axis && !along_axis_0 &&
      static_cast<int64_t>(shape.size()) != stored_dims;
  const torch::Tensor codes =
      weight.codes().reshape(reshaped ? weight.shape : shape);
  torch::Tensor scale = weight.scale, zero_point = weight.zero_point;
  if (!axis) {
    scale = scale.reshape({});
    zero_point = zero_point.reshape({});
  } else if (layout.size() == 1) {
    scale = scale.reshape({-1});
    zero_point = zero_point.reshape({-1});
  }
  const DataType type = code_type(spec);
  const auto q = graph.add_initializer(name + ".quantized", codes, type);
  const auto s =
      graph.add_initializer(name + ".scale", scale, DataType::float32);
  const auto z = graph.add_initializer(name + ".zero_point", zero_point, type);
  if (!reshaped)
    return graph.add_node("DequantizeLinear", {q, s, z}, name, layout);
  const auto dq = graph.add_node(
      "DequantizeLinear", {q, s, z}, name + ".dequantized", layout);
  const auto target = graph.add_initializer(
      name + ".shape", torch::tensor(shape), DataType::int64);
  return graph.add_node("Reshape", {dq, target}, name);
}

std::string add_linear(
    GraphBuilder& graph,
    const std::string& name,
    const QuantLinearImpl& layer,
    const std::string& x) {
  std::vector<std::string> inputs{
      input_of(graph, name, layer, x),
      layer_weight(graph, name, layer, layer.weight)};
  if (layer.bias.defined()) {
    inputs.push_back(
        graph.add_initializer(name + ".bias", layer.bias, DataType::float32));
  }
  const auto y = graph.add_node("Gemm", inputs, name, {{"transB", 1}});
  return output_of(graph, name, layer, y);
}

std::string add_conv2d(
    GraphBuilder& graph,
    const std::string& name,
    const QuantConv2dImpl& layer,
    const std::string& x) {
  const auto& options = layer.options;
  std::vector<int64_t> pads(4, 0); // [top, left, bottom, right]
  if (const auto* padding =
          std::get_if<torch::ExpandingArray<2>>(&options.padding())) {
    const auto p = ints(*padding);
    pads = {p[0], p[1], p[0], p[1]};
  } else if (std::holds_alternative<torch::enumtype::kSame>(
                 options.padding())) {
    throw std::invalid_argument(
        "ONNX export of '" + name + "': padding 'same' is not exported yet");
  }
  // The served conv: BatchNorm folded into its weight and bias.
  const torch::nn::Conv2d served = layer.to_float();
  std::vector<std::string> inputs{
      input_of(graph, name, layer, x),
      layer_weight(graph, name, layer, served->weight)};
  if (served->bias.defined()) {
    inputs.push_back(
        graph.add_initializer(name + ".bias", served->bias, DataType::float32));
  }
  const auto y = graph.add_node(
      "Conv",
      inputs,
      name,
      {{"kernel_shape", ints(options.kernel_size())},
       {"strides", ints(options.stride())},
       {"pads", pads},
       {"dilations", ints(options.dilation())},
       {"group", options.groups()}});
  return output_of(graph, name, layer, y);
}

std::string add_activation(
    GraphBuilder& graph,
    const std::string& name,
    const QuantActivationImpl& layer,
    const std::string& x) {
  const auto input = input_of(graph, name, layer, x);
  std::string y;
  switch (layer.kind) {
    case ActivationKind::identity:
      y = input;
      break;
    case ActivationKind::relu:
      y = graph.add_node("Relu", {input}, name);
      break;
    case ActivationKind::gelu:
    case ActivationKind::silu:
      throw std::invalid_argument(
          "ONNX export of '" + name +
          "': only relu and identity are exported yet");
  }
  return output_of(graph, name, layer, y);
}

} // namespace qat::onnx
