#include "qat/convert.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

#include "kernels/ref/gguf_ref.h"
#include "kernels/ref/microscale_ref.h"
#include "qat/export/safetensors.h"
#include "qat/modules/kv_cache.h"
#include "qat/modules/quantizers.h"
#include "qat/observer.h"

namespace qat {
namespace {

// scale / zero point (in the ops' layout for `spec`) broadcast to `shape`.
torch::Tensor expand_params(
    const torch::Tensor& p,
    const QuantSpec& spec,
    at::IntArrayRef shape) {
  const int64_t dim = static_cast<int64_t>(shape.size());
  const int64_t axis = spec.axis() < 0 ? spec.axis() + dim : spec.axis();
  switch (spec.granularity()) {
    case Granularity::per_tensor:
      return p.reshape({}).expand(shape);
    case Granularity::per_channel: {
      std::vector<int64_t> view(dim, 1);
      view[axis] = -1;
      return p.reshape(view).expand(shape);
    }
    case Granularity::per_group: {
      return p.repeat_interleave(spec.group_size(), axis);
    }
    case Granularity::per_token:
      return p.expand(shape);
  }
  throw std::logic_error("unknown granularity");
}

torch::ScalarType fp8_dtype(const QuantSpec& spec) {
  return spec.format() == NumberFormat::fp8_e5m2 ? torch::kFloat8_e5m2
                                                 : torch::kFloat8_e4m3fn;
}

bool packed(const QuantSpec& spec) {
  return !spec.is_fp8() && spec.bits() <= 4;
}

kernels::GgufType gguf_type(const QuantSpec& spec) {
  return static_cast<kernels::GgufType>(static_cast<int>(spec.gguf()) - 1);
}

// GGUF: ggml's block bytes, one row of blocks per row of the weight; the
// stored half scale d of each block as float for inspection.
QuantizedWeight quantize_gguf(
    const torch::Tensor& weight,
    const QuantSpec& spec,
    const torch::Tensor& representations) {
  const torch::Tensor w = weight.cpu();
  const auto& info = kernels::gguf_type_info(gguf_type(spec));
  const int64_t n = w.numel(), row_len = w.size(-1);
  if (row_len % info.block_size != 0) {
    throw std::invalid_argument(
        std::string("convert: GGUF ") + info.name + " blocks need a last " +
        "dimension that is a multiple of " + std::to_string(info.block_size) +
        ", got " + std::to_string(row_len));
  }
  const int64_t blocks = n / info.block_size;
  auto shape = w.sizes().vec();
  shape.back() = row_len / info.block_size * info.block_bytes;
  QuantizedWeight q{
      spec, w.sizes().vec(), torch::empty(shape, torch::kByte), {}, {}, {}};
  if (representations.defined() && representations.numel() > 0) {
    // A K-quant's kept representation: the codes of the weight under it.
    const torch::Tensor reps = representations.cpu().contiguous();
    if (reps.scalar_type() != torch::kByte ||
        reps.numel() != blocks * info.representation_bytes) {
      throw std::invalid_argument(
          std::string("convert: GGUF ") + info.name + " needs " +
          std::to_string(info.representation_bytes) +
          " representation bytes per block of 256, one block per 256 weights");
    }
    kernels::quantize_gguf_fixed_ref(
        w.const_data_ptr<float>(),
        n,
        info.type,
        reps.const_data_ptr<uint8_t>(),
        q.data.mutable_data_ptr<uint8_t>());
  } else {
    kernels::quantize_gguf_ref(
        w.const_data_ptr<float>(),
        n,
        info.type,
        q.data.mutable_data_ptr<uint8_t>());
  }
  const auto block_bytes = q.data.view({blocks, -1});
  q.scale = block_bytes.narrow(1, info.scale_offset, 2)
                .contiguous()
                .view(torch::kShort)
                .view(torch::kHalf)
                .to(torch::kFloat)
                .view([&] {
                  auto s = w.sizes().vec();
                  s.back() /= info.block_size;
                  return s;
                }());
  q.data = q.data.to(weight.device());
  q.scale = q.scale.to(weight.device());
  return q;
}

// Rows of the last dimension, as the kernels and the checkpoint lay them out.
std::pair<int64_t, int64_t> microscale_rows(
    const kernels::MicroscaleFormatInfo& info,
    at::IntArrayRef shape) {
  const int64_t cols = shape.empty() ? 1 : shape.back();
  if (cols % info.block_size != 0) {
    throw std::invalid_argument(
        std::string("convert: ") + info.name + " blocks need a last " +
        "dimension that is a multiple of " + std::to_string(info.block_size) +
        ", got " + std::to_string(cols));
  }
  return {cols == 0 ? 0 : c10::multiply_integers(shape) / cols, cols};
}

// The microscaling formats: compressed-tensors' stored bytes of the weight
// under its block scales (and NVFP4's global scale, given).
QuantizedWeight quantize_microscale(
    const torch::Tensor& weight,
    const QuantSpec& spec,
    const torch::Tensor& global_scale) {
  const torch::Tensor w = weight.cpu();
  const auto& info = *spec.microscale_info();
  const auto [rows, cols] = microscale_rows(info, w.sizes());
  const float g = info.global_scale ? global_scale.item<float>() : 1.0f;
  if (info.global_scale && !(std::isfinite(g) && g > 0.0f)) {
    throw std::invalid_argument(
        "convert: the NVFP4 global scale must be finite and positive, got " +
        std::to_string(g));
  }
  const int64_t blocks = rows * cols / info.block_size;
  std::vector<uint8_t> codes(blocks);
  kernels::microscale_scales_ref(
      w.const_data_ptr<float>(), rows, cols, info.format, g, codes.data());
  auto values_shape = w.sizes().vec(), scale_shape = w.sizes().vec();
  if (!values_shape.empty()) {
    values_shape.back() = info.element_bits == 4 ? cols / 2 : cols;
    scale_shape.back() = cols / info.block_size;
  }
  QuantizedWeight q{
      spec,
      w.sizes().vec(),
      torch::empty(values_shape, torch::kByte),
      torch::empty(scale_shape, torch::kByte),
      {},
      {}};
  kernels::pack_microscale_ref(
      w.const_data_ptr<float>(),
      rows,
      cols,
      info.format,
      codes.data(),
      g,
      q.data.mutable_data_ptr<uint8_t>(),
      q.scale.mutable_data_ptr<uint8_t>());
  if (info.element_bits == 8)
    q.data = q.data.view(torch::kFloat8_e4m3fn);
  if (info.global_scale) {
    q.scale = q.scale.view(torch::kFloat8_e4m3fn);
    q.global_scale = torch::full({1}, g);
  }
  q.data = q.data.to(weight.device());
  q.scale = q.scale.to(weight.device());
  return q;
}

} // namespace

QuantizedWeight QuantizedWeight::quantize(
    const torch::Tensor& weight,
    const QuantSpec& spec,
    const torch::Tensor& scale,
    const torch::Tensor& zero_point) {
  torch::NoGradGuard no_grad;
  const torch::Tensor w = weight.detach().to(torch::kFloat).contiguous();
  if (spec.gguf() != GgufRule::none)
    return quantize_gguf(w, spec, scale);
  if (spec.is_microscale())
    return quantize_microscale(w, spec, scale);
  QuantizedWeight q{
      spec,
      w.sizes().vec(),
      {},
      scale.detach().to(torch::kFloat).clone(),
      {},
      {}};
  const torch::Tensor s = expand_params(q.scale, spec, w.sizes());
  if (spec.is_fp8()) {
    // The FP8 kernel's rule: x / scale, saturated, rounded to nearest even.
    const double max = spec.format_max();
    q.data = (w / s).clamp(-max, max).to(fp8_dtype(spec));
    return q;
  }
  q.zero_point = zero_point.detach().to(torch::kInt).clone();
  const torch::Tensor zp =
      expand_params(q.zero_point, spec, w.sizes()).to(torch::kFloat);
  // The affine kernel's float arithmetic: zp + round_half_even(x * (1 / s)).
  const torch::Tensor codes = torch::clamp(
                                  torch::round(w * torch::reciprocal(s)) + zp,
                                  spec.quant_min(),
                                  spec.quant_max())
                                  .to(torch::kInt);
  if (!packed(spec)) {
    q.data = codes.to(spec.is_signed() ? torch::kChar : torch::kByte);
    return q;
  }
  if (w.size(-1) % 2 != 0) {
    throw std::invalid_argument(
        "convert: packing " + std::to_string(spec.bits()) +
        "-bit codes two per byte needs an even last dimension, got " +
        std::to_string(w.size(-1)));
  }
  const torch::Tensor u = (codes - spec.quant_min()).to(torch::kByte);
  const auto pairs = u.reshape({-1, 2});
  q.data = (pairs.select(1, 0) + pairs.select(1, 1) * 16).reshape([&] {
    auto shape = w.sizes().vec();
    shape.back() /= 2;
    return shape;
  }());
  return q;
}

torch::Tensor QuantizedWeight::codes() const {
  if (spec.gguf() != GgufRule::none) {
    const torch::Tensor bytes = data.cpu().contiguous();
    torch::Tensor out = torch::empty(shape, torch::kInt);
    kernels::gguf_codes_ref(
        bytes.const_data_ptr<uint8_t>(),
        out.numel(),
        gguf_type(spec),
        out.mutable_data_ptr<int32_t>());
    return out.to(data.device());
  }
  if (spec.is_microscale()) {
    const auto& info = *spec.microscale_info();
    const torch::Tensor bytes = data.cpu().contiguous().view(torch::kByte);
    torch::Tensor nibbles = bytes;
    if (info.element_bits == 4) {
      nibbles = torch::stack(
                    {bytes.bitwise_and(0x0F), bytes.bitwise_right_shift(4)}, -1)
                    .reshape(shape)
                    .contiguous();
    }
    torch::Tensor out = torch::empty(shape, torch::kFloat);
    const uint8_t* in = nibbles.const_data_ptr<uint8_t>();
    float* values = out.mutable_data_ptr<float>();
    for (int64_t i = 0; i < out.numel(); ++i)
      values[i] = kernels::microscale_element_value(info.format, in[i]);
    return out.to(data.device());
  }
  if (spec.is_fp8())
    return data.to(torch::kFloat);
  if (!packed(spec))
    return data.to(torch::kInt);
  const torch::Tensor low = data.bitwise_and(0x0F),
                      high = data.bitwise_right_shift(4);
  return torch::stack({low, high}, -1).reshape(shape).to(torch::kInt) +
      static_cast<int>(spec.quant_min());
}

torch::Tensor QuantizedWeight::dequantize() const {
  if (spec.gguf() != GgufRule::none) {
    const torch::Tensor bytes = data.cpu().contiguous();
    torch::Tensor out = torch::empty(shape, torch::kFloat);
    kernels::dequantize_gguf_ref(
        bytes.const_data_ptr<uint8_t>(),
        out.numel(),
        gguf_type(spec),
        out.mutable_data_ptr<float>());
    return out.to(data.device());
  }
  if (spec.is_microscale()) {
    const auto& info = *spec.microscale_info();
    const auto [rows, cols] = microscale_rows(info, shape);
    const torch::Tensor values = data.cpu().contiguous().view(torch::kByte);
    const torch::Tensor scales = scale.cpu().contiguous().view(torch::kByte);
    torch::Tensor out = torch::empty(shape, torch::kFloat);
    kernels::unpack_microscale_ref(
        values.const_data_ptr<uint8_t>(),
        scales.const_data_ptr<uint8_t>(),
        rows,
        cols,
        info.format,
        info.global_scale ? global_scale.item<float>() : 1.0f,
        out.mutable_data_ptr<float>());
    return out.to(data.device());
  }
  const torch::Tensor s = expand_params(scale, spec, shape);
  if (spec.is_fp8())
    return codes() * s;
  const torch::Tensor zp =
      expand_params(zero_point, spec, shape).to(torch::kFloat);
  return (codes().to(torch::kFloat) - zp) * s;
}

int64_t QuantizedWeight::storage_bytes() const {
  // GGUF blocks hold their own half scales; `scale` is a float32 view of them.
  if (spec.gguf() != GgufRule::none)
    return data.numel() * data.element_size();
  if (spec.is_microscale()) {
    return data.numel() * data.element_size() + scale.numel() +
        (global_scale.defined() ? 4 : 0);
  }
  return data.numel() * data.element_size() + scale.numel() * 4 +
      (zero_point.defined() ? zero_point.numel() * 4 : 0);
}

namespace {

const std::string kSpecKey = "qat.spec.";

std::vector<std::pair<std::string, QuantizedLayer*>> weight_quantized_layers(
    torch::nn::Module& model) {
  auto layers = quantized_layers(model);
  layers.erase(
      std::remove_if(
          layers.begin(),
          layers.end(),
          [](const auto& item) {
            return item.second->quantizers.weight.is_empty();
          }),
      layers.end());
  return layers;
}

// Everything the activation and KV cache quantizers hold (calibrated or learned scales,
// observer statistics, switches): they run at inference too.
std::vector<std::pair<std::string, torch::Tensor>> activation_quantizer_state(
    torch::nn::Module& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  const auto add = [&](const std::string& prefix, const FakeQuantizer& q) {
    for (auto& item : quantizer_state(prefix, q))
      out.push_back(std::move(item));
  };
  for (const auto& [name, layer] : quantized_layers(model)) {
    add(name + ".input_quantizer.", layer->quantizers.input);
    add(name + ".output_quantizer.", layer->quantizers.output);
  }
  for (const auto& [name, layer] : kv_cache_layers(model)) {
    add(name + ".k_cache_quantizer.", layer->k_cache_quantizer);
    add(name + ".v_cache_quantizer.", layer->v_cache_quantizer);
  }
  return out;
}

} // namespace

int64_t convert(torch::nn::Module& model) {
  const auto layers = weight_quantized_layers(model);
  for (const auto& [name, layer] : layers)
    layer->convert_weight();
  return static_cast<int64_t>(layers.size());
}

std::map<std::string, const QuantizedWeight*> quantized_weights(
    torch::nn::Module& model) {
  std::map<std::string, const QuantizedWeight*> out;
  for (const auto& [name, layer] : quantized_layers(model)) {
    if (layer->quantized_weight)
      out[name] = &*layer->quantized_weight;
  }
  return out;
}

void save_converted(torch::nn::Module& model, const std::string& path) {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  std::map<std::string, std::string> metadata{{"format", "pt"}};
  for (const auto& [name, layer] : weight_quantized_layers(model)) {
    if (!layer->quantized_weight) {
      throw std::invalid_argument(
          "save_converted: layer '" + name +
          "' has a weight quantizer but was not converted; call convert()");
    }
    const QuantizedWeight& q = *layer->quantized_weight;
    tensors.emplace_back(name + ".weight", q.data);
    tensors.emplace_back(name + ".weight_scale", q.scale);
    if (q.zero_point.defined())
      tensors.emplace_back(name + ".weight_zero_point", q.zero_point);
    if (q.global_scale.defined())
      tensors.emplace_back(name + ".weight_global_scale", q.global_scale);
    tensors.emplace_back(name + ".weight_shape", torch::tensor(q.shape));
    metadata[kSpecKey + name] = q.spec.to_string();
  }
  for (const auto& [name, tensor] : activation_quantizer_state(model))
    tensors.emplace_back(name, tensor.detach());
  safetensors::write(path, tensors, metadata);
}

void load_converted(torch::nn::Module& model, const std::string& path) {
  const auto file = safetensors::File::read(path);
  std::vector<std::pair<QuantizedLayer*, QuantizedWeight>> loaded;
  for (const auto& [name, layer] : weight_quantized_layers(model)) {
    const auto fail = [&, &name = name](const std::string& why) {
      throw std::runtime_error(path + ": layer '" + name + "': " + why);
    };
    const QuantSpec& spec = layer->quantizers.weight->options().spec();
    const auto saved = file.metadata().find(kSpecKey + name);
    if (saved == file.metadata().end())
      fail("not in the file");
    if (saved->second != spec.to_string()) {
      fail(
          "saved as " + saved->second + " but the model's spec is " +
          spec.to_string());
    }
    // What convert() would make of this layer: the shapes and dtypes to
    // expect.
    const torch::Tensor w = layer->weight_to_quantize().detach();
    const QParams params = dynamic_qparams(w, spec);
    const QuantizedWeight like =
        QuantizedWeight::quantize(w, spec, params.scale, params.zero_point);
    QuantizedWeight q{spec, like.shape, {}, {}, {}, {}};
    const auto take = [&](const std::string& suffix,
                          const torch::Tensor& want) {
      const std::string key = name + suffix;
      if (!file.contains(key))
        fail("missing tensor '" + key + "'");
      torch::Tensor t = file.tensor(key);
      if (t.sizes() != want.sizes() || t.scalar_type() != want.scalar_type()) {
        std::ostringstream why;
        why << "tensor '" << key << "' is " << t.scalar_type() << t.sizes()
            << ", expected " << want.scalar_type() << want.sizes();
        fail(why.str());
      }
      return t.to(want.device());
    };
    q.data = take(".weight", like.data);
    q.scale = take(".weight_scale", like.scale);
    if (like.zero_point.defined())
      q.zero_point = take(".weight_zero_point", like.zero_point);
    if (like.global_scale.defined())
      q.global_scale = take(".weight_global_scale", like.global_scale);
    if (!torch::equal(
            take(".weight_shape", torch::tensor(like.shape)),
            torch::tensor(like.shape)))
      fail("its weight shape differs from the model's");
    loaded.emplace_back(layer, std::move(q));
  }
  const auto activations = activation_quantizer_state(model);
  for (const auto& [name, tensor] : activations) {
    if (!file.contains(name)) {
      throw std::runtime_error(
          path + ": missing activation quantizer tensor '" + name + "'");
    }
  }
  for (auto& [layer, q] : loaded)
    layer->quantized_weight = std::move(q);
  torch::NoGradGuard no_grad;
  for (const auto& [name, tensor] : activations) {
    torch::Tensor target = tensor;
    target.set_data(file.tensor(name).to(tensor.device()));
  }
}

} // namespace qat
