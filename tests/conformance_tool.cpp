// The C++ half of the Python conformance tests (tests/python/): each command
// reads inputs a reference implementation wrote, runs qat on them, and writes
// what qat computed for the Python side to compare.
//
//   roundtrip IN OUT   read IN with qat's safetensors reader and write it again
//                      with qat's writer (same names, order, metadata)
//   gguf IN OUT        for every float32 tensor NAME in IN (last dimension a
//                      multiple of 32), write NAME.q8_0 / NAME.q4_0 (the
//                      stored GGUF blocks, uint8) and NAME.fq_q8_0 /
//                      NAME.fq_q4_0 (qat::fake_quant_gguf of it)
//   llama DIR IN OUT   load the Hugging Face checkpoint folder DIR (Llama,
//                      Mistral, Qwen2, Qwen3; sharded or not) into qat's decoder;
//                      for IN's int64 "tokens" [batch, time] write "logits"
//                      (one forward), "cached_logits" (the first half in one
//                      forward, then one token at a time through the KV cache)
//                      and "generated" (8 greedy tokens after the tokens)
//   gguf-read IN OUT   read the GGUF file IN with qat's reader; write each
//                      tensor NAME dequantized (float32) and its stored bytes
//                      as NAME.raw, and its type in the metadata
//   gguf-export TOKENIZER_GGUF PRESET OUT_GGUF OUT
//                      a small random decoder, Linear layers prepared as
//                      PRESET (gguf_q4_0, mxfp4_a16, ...) and the embedding as
//                      gguf_q8_0, converted and
//                      saved as GGUF (with TOKENIZER_GGUF's tokenizer); OUT
//                      holds every weight as the converted model serves it,
//                      by Hugging Face name, and "tokens" / "logits" of one
//                      forward
//   tokenize GGUF TEXT OUT
//                      qat's BPE ids of each line of the file TEXT ("line.N",
//                      int64) and of the whole text ("all")
//   onnx MODEL SCHEME OUT_ONNX OUT
//                      a small MLP (images 1x8x8) or ResNet (3x11x11), MODEL
//                      mlp | resnet, prepared with SCHEME (onnx_scheme()),
//                      calibrated and fine-tuned 5 QAT steps on random data,
//                      then converted and exported as ONNX to OUT_ONNX; OUT
//                      holds "images", the fake-quantized model's "logits"
//                      on them (eval mode) and every fake-quantized weight
//                      "LAYER.weight" as its quantizer sees it (convolutions
//                      flattened, BatchNorm folded)
//   gguf-quantize IN_GGUF OUT_GGUF TYPE
//                      the GGUF llama model IN_GGUF (SmolLM2) with every
//                      Linear layer quantized to TYPE (q8_0, q4_0, a GGUF
//                      block type; mxfp4: the preset mxfp4_a16) by rounding
//                      to nearest, or at a type mix, or kept float (f32),
//                      exported as GGUF
//   evaluate-gguf GGUF TEXT CONTEXT OUT
//                      the GGUF llama model read as served on TEXT, tokenized
//                      with its BPE and cut into windows of CONTEXT tokens:
//                      "tokens" [windows, CONTEXT], "nll" [windows, CONTEXT -
//                      1] (each token's negative log-likelihood given the
//                      tokens before it in its window) and "logits" of the
//                      first window
//   compressed-tensors CASE OUT_DIR OUT
//                      a small random decoder prepared with the scheme CASE
//                      (compressed_tensors_case()), calibrated on random
//                      tokens, converted and exported as a compressed-tensors
//                      checkpoint folder OUT_DIR (sharded for "mixed"); OUT
//                      holds "tokens", the converted model's "logits" on
//                      them, the float model's "float_logits", and every
//                      quantized layer's dequantized weight "LAYER.weight"
//   compressed-tensors-gguf GGUF PRESET OUT_DIR OUT
//                      the same for the GGUF llama model GGUF (SmolLM2) with
//                      every Linear layer at PRESET (w8a8_int8, fp8_e4m3),
//                      "tokens" a tokenized English sentence
//   tokenize-data TYPE PATH MODEL_DIR OUT
//                      the documents of data.type TYPE (text, jsonl, chat) at
//                      PATH, tokenized with the Hugging Face folder MODEL_DIR's
//                      tokenizer as the corpus stores them: OUT is JSONL of
//                      {"ids": [...], "trained": [0/1...]} per document
//   multiple-choice MODEL_DIR JSONL OUT
//                      each example's per-choice log-likelihoods under the
//                      Hugging Face model MODEL_DIR (JSON list of lists)
//   gptq IN OUT        qat::gptq_quantize of IN's float32 "weight" [out, in]
//                      with float64 "hessian" [in, in] under a signed
//                      symmetric integer spec of metadata "bits", per group of
//                      "group_size" inputs (0: per output channel), scales
//                      from the weight's range, "damp", "block_size",
//                      "act_order" (0/1); OUT holds "weight" (GPTQ's),
//                      "latent" (each column as GPTQ rounded it), "scale",
//                      "zero_point" and "rtn" (round to nearest)
#include <torch/nn/functional/loss.h>
#include <torch/optim/sgd.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "kernels/ref/gguf_ref.h"
#include "ops/ops.h"
#include "qat/calibration/gptq.h"
#include "qat/convert.h"
#include "qat/export/gguf.h"
#include "qat/export/safetensors.h"
#include "qat/format.h"
#include "qat/prepare.h"
#include "trainers/data/bpe.h"
#include "trainers/data/sources.h"
#include "trainers/eval/multiple_choice.h"
#include "trainers/models/classifiers.h"
#include "trainers/models/gguf_mix.h"
#include "trainers/models/hf_architectures.h"
#include "trainers/models/llama.h"
#include "trainers/models/llama_gguf.h"
#include "trainers/models/weights.h"

namespace {

using Tensors = std::vector<std::pair<std::string, torch::Tensor>>;

void roundtrip(const char* in_path, const char* out_path) {
  const auto in = qat::safetensors::File::read(in_path);
  Tensors tensors;
  for (const auto& name : in.names())
    tensors.emplace_back(name, in.tensor(name));
  qat::safetensors::write(out_path, tensors, in.metadata());
}

// Each tensor in every GGUF block type whose block divides its rows: the
// stored bytes ("NAME.TYPE") and the qat::fake_quant_gguf op's values
// ("NAME.fq_TYPE").
void gguf(const char* in_path, const char* out_path) {
  const auto in = qat::safetensors::File::read(in_path);
  Tensors out;
  int count = 0;
  const auto* types = qat::kernels::gguf_types(&count);
  for (const auto& name : in.names()) {
    const torch::Tensor x = in.tensor(name).contiguous();
    for (int t = 0; t < count; ++t) {
      const auto& info = types[t];
      if (x.size(-1) % info.block_size != 0)
        continue;
      torch::Tensor bytes = torch::empty(
          {x.numel() / info.block_size * info.block_bytes}, torch::kByte);
      qat::kernels::quantize_gguf_ref(
          x.const_data_ptr<float>(),
          x.numel(),
          info.type,
          bytes.mutable_data_ptr<uint8_t>());
      out.emplace_back(name + "." + info.name, bytes);
      out.emplace_back(
          name + ".fq_" + info.name, qat::ops::fake_quant_gguf(x, info.name));
    }
  }
  qat::safetensors::write(out_path, out);
}

void llama(const std::string& dir, const char* in_path, const char* out_path) {
  using namespace qat::models;
  LlamaForCausalLM lm = load_hf_model(dir);
  lm->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor tokens =
      qat::safetensors::File::read(in_path).tensor("tokens");
  const int64_t time = tokens.size(1), first = time / 2;
  KvCache cache;
  std::vector<torch::Tensor> steps{lm(tokens.narrow(1, 0, first), &cache)};
  for (int64_t t = first; t < time; ++t)
    steps.push_back(lm(tokens.narrow(1, t, 1), &cache));
  qat::safetensors::write(
      out_path,
      {{"logits", lm(tokens)},
       {"cached_logits", torch::cat(steps, 1)},
       {"generated", lm->generate(tokens, 8)}});
}

void gguf_read(const char* in_path, const char* out_path) {
  const auto file = qat::gguf::File::read(in_path);
  Tensors out;
  std::map<std::string, std::string> types;
  for (const auto& t : file.tensors()) {
    out.emplace_back(t.name, file.dequantize(t.name));
    out.emplace_back(t.name + ".raw", file.raw(t.name));
    types[t.name] = qat::gguf::type_name(t.type);
  }
  qat::safetensors::write(out_path, out, types);
}

void gguf_export(
    const char* tokenizer_path,
    const char* linear_preset,
    const char* gguf_path,
    const char* out_path) {
  using namespace qat::models;
  const auto tokenizer = qat::gguf::File::read(tokenizer_path);
  torch::manual_seed(0);
  const auto config =
      LlamaConfig()
          .vocab_size(tokenizer.get("tokenizer.ggml.tokens").as_array().size())
          .hidden_size(64)
          .intermediate_size(160)
          .num_hidden_layers(2)
          .num_attention_heads(4)
          .num_key_value_heads(2)
          .max_position_embeddings(128);
  LlamaForCausalLM lm(config);
  qat::prepare(
      *lm,
      {{qat::QuantRule::quantize("*", qat::preset(linear_preset), "Linear"),
        qat::QuantRule::quantize("*", qat::preset("gguf_q8_0"), "Embedding")}});
  qat::convert(*lm);
  save_llama_gguf(*lm, gguf_path, "qat conformance", &tokenizer);
  Tensors out;
  for (const auto& p : lm->named_parameters()) {
    const std::string layer = p.key().substr(0, p.key().rfind('.'));
    const auto quantized = qat::quantized_weights(*lm);
    const auto it = quantized.find(layer);
    out.emplace_back(
        p.key(),
        it != quantized.end() && p.key().size() > 7 &&
                p.key().compare(p.key().size() - 7, 7, ".weight") == 0
            ? it->second->dequantize().view(p.value().sizes())
            : p.value().detach());
  }
  torch::NoGradGuard no_grad;
  lm->eval();
  const auto tokens =
      torch::randint(config.vocab_size(), {1, 12}, torch::kLong);
  out.emplace_back("tokens", tokens);
  out.emplace_back("logits", lm(tokens));
  qat::safetensors::write(out_path, out);
}

void tokenize(
    const char* gguf_path,
    const char* text_path,
    const char* out_path) {
  const auto tokenizer =
      qat::data::BpeTokenizer::from_gguf(qat::gguf::File::read(gguf_path));
  std::ifstream in(text_path);
  std::stringstream all;
  all << in.rdbuf();
  const std::string text = all.str();
  const auto to_tensor = [](const std::vector<int64_t>& ids) {
    return torch::tensor(ids, torch::kLong);
  };
  Tensors out{{"all", to_tensor(tokenizer.encode(text))}};
  std::istringstream lines(text);
  int n = 0;
  for (std::string line; std::getline(lines, line); ++n)
    out.emplace_back(
        "line." + std::to_string(n), to_tensor(tokenizer.encode(line)));
  qat::safetensors::write(out_path, out);
}

// int8: int8 per-channel weights and int8 per-tensor static inputs on every
// Conv2d / Linear, uint8 ReLU outputs (W8A8, opset 13).
// int4: 4-bit per-channel weights (LSQ) and int4 inputs, the first layer at
// 8 bits, the head's weights in blocks of 8 and its input with an LSQ+ zero
// point, 6-bit unsigned ReLU outputs (opset 21).
qat::QuantConfig onnx_scheme(const std::string& name) {
  using qat::FakeQuantizerOptions;
  using qat::Granularity;
  using qat::QuantRule;
  using qat::QuantSpec;
  const auto weights = [](int bits) {
    return QuantSpec().bits(bits).granularity(Granularity::per_channel);
  };
  const auto inputs = [](int bits) {
    return QuantSpec().bits(bits).symmetric(false);
  };
  const auto relu_outputs = [](int bits) {
    return qat::LayerQuantSpecs{
        {}, {}, QuantSpec().bits(bits).is_signed(false).symmetric(false)};
  };
  if (name == "int8") {
    return {
        {QuantRule::quantize("*", {weights(8), inputs(8), {}}, "Conv2d|Linear"),
         QuantRule::quantize("*", relu_outputs(8), "Activation")}};
  }
  if (name == "int4") {
    const auto head_weights = QuantSpec()
                                  .bits(4)
                                  .granularity(Granularity::per_group)
                                  .axis(-1)
                                  .group_size(8);
    return {
        {QuantRule::quantize("re:stem|fc0", {weights(8), inputs(8), {}}),
         QuantRule::quantize(
             "head",
             {head_weights,
              FakeQuantizerOptions(inputs(4)).estimator(
                  qat::Estimator::lsq_plus),
              {}}),
         QuantRule::quantize(
             "*",
             {FakeQuantizerOptions(weights(4)).estimator(qat::Estimator::lsq),
              inputs(4),
              {}},
             "Conv2d|Linear"),
         QuantRule::quantize("*", relu_outputs(6), "Activation")}};
  }
  throw std::invalid_argument(
      "unknown scheme '" + name + "'; expected int8 or int4");
}

void export_onnx_model(
    const std::string& model_name,
    const std::string& scheme,
    const char* onnx_path,
    const char* out_path) {
  using namespace qat::models;
  torch::manual_seed(0);
  std::shared_ptr<ImageClassifier> model;
  std::vector<int64_t> image_shape;
  if (model_name == "mlp") {
    image_shape = {1, 8, 8};
    model = std::make_shared<MlpImpl>(
        MlpOptions().in_features(64).hidden({32, 16}).classes(10));
  } else if (model_name == "resnet") {
    image_shape = {3, 11, 11};
    model = std::make_shared<ResNetImpl>(
        ResNetOptions().in_channels(3).widths({8, 16}).classes(10));
  } else {
    throw std::invalid_argument(
        "unknown model '" + model_name + "'; expected mlp or resnet");
  }
  const auto images = [&](int64_t count) {
    std::vector<int64_t> shape{count};
    shape.insert(shape.end(), image_shape.begin(), image_shape.end());
    return torch::randn(shape);
  };
  qat::prepare(*model, onnx_scheme(scheme));
  model->eval();
  qat::calibrate(*model, [&] {
    for (int batch = 0; batch < 4; ++batch)
      model->forward(images(32));
  });
  // A few QAT steps: learned scales, BatchNorm statistics and weights that
  // the observers never saw.
  model->train();
  torch::optim::SGD optimizer(
      model->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
  for (int step = 0; step < 5; ++step) {
    const auto loss = torch::nn::functional::cross_entropy(
        model->forward(images(32)), torch::randint(10, {32}));
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
  }
  model->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor x = images(64);
  Tensors out{{"images", x}, {"logits", model->forward(x)}};
  for (const auto& [name, layer] : qat::quantized_layers(*model)) {
    if (!layer->quantizers.weight.is_empty()) {
      out.emplace_back(
          name + ".weight",
          layer->quantizers.weight->forward(layer->weight_to_quantize()));
    }
  }
  qat::convert(*model);
  save_onnx(*model, image_shape, onnx_path);
  qat::safetensors::write(out_path, out);
}

// The GGUF model at `in_path` with every Linear layer quantized to `type`
// (a GGUF block type, round to nearest as PTQ does; the tied embedding stays
// float), or with llama.cpp's type mix `type` (q4_k_m, q5_k_m, q6_k: each
// tensor as llama-quantize types it, the K-quants by ggml's search); f32 keeps
// the float model. Exported to `gguf_path`.
void gguf_quantize(
    const char* in_path,
    const char* gguf_path,
    const std::string& type) {
  using namespace qat::models;
  const auto source = qat::gguf::File::read(in_path);
  LlamaForCausalLM lm = load_llama_gguf(source);
  const auto mixes = gguf_mix_presets();
  if (std::find(mixes.begin(), mixes.end(), type) != mixes.end()) {
    qat::prepare(*lm, gguf_mix_scheme(*lm, type));
    qat::convert(*lm);
  } else if (type != "f32") {
    std::string preset = "gguf_" + type;
    if (type == "mxfp4")
      preset = "mxfp4_a16";
    else if (!qat::kernels::find_gguf_type(type))
      throw std::invalid_argument(
          "gguf-quantize: type '" + type +
          "'; expected f32, a GGUF block type, mxfp4 or a type mix");
    qat::prepare(
        *lm, {{qat::QuantRule::quantize("*", qat::preset(preset), "Linear")}});
    qat::convert(*lm);
  }
  save_llama_gguf(*lm, gguf_path, "qat conformance", &source);
}

// The GGUF llama model at `path` (read as served: every tensor dequantized)
// in eval mode, with its tokenizer.
std::pair<qat::models::LlamaForCausalLM, qat::data::BpeTokenizer>
load_gguf_model(const char* path) {
  const auto file = qat::gguf::File::read(path);
  qat::models::LlamaForCausalLM lm = qat::models::load_llama_gguf(file);
  lm->eval();
  return {lm, qat::data::BpeTokenizer::from_gguf(file)};
}

// What qat's evaluator computes for the model in `gguf_path` (read as
// served: every tensor dequantized) on the text in `text_path`: its tokens,
// cut into windows of `context`, each token's negative log-likelihood given
// the tokens before it in its window, and the logits of the first window.
void evaluate_gguf(
    const char* gguf_path,
    const char* text_path,
    const char* context_arg,
    const char* out_path) {
  auto [lm, tokenizer] = load_gguf_model(gguf_path);
  std::ifstream in(text_path);
  std::stringstream text;
  text << in.rdbuf();
  const auto ids = tokenizer.encode(text.str());
  const int64_t context = std::stoll(context_arg);
  const int64_t windows = static_cast<int64_t>(ids.size()) / context;
  if (windows == 0)
    throw std::invalid_argument("evaluate-gguf: text shorter than a window");
  torch::NoGradGuard no_grad;
  const auto tokens = torch::tensor(ids, torch::kLong)
                          .narrow(0, 0, windows * context)
                          .view({windows, context});
  std::vector<torch::Tensor> nll;
  torch::Tensor first_logits;
  for (int64_t w = 0; w < windows; ++w) {
    const auto window = tokens.narrow(0, w, 1);
    const auto logits = lm(window)[0];
    if (w == 0)
      first_logits = logits;
    nll.push_back(torch::nn::functional::cross_entropy(
        logits.narrow(0, 0, context - 1),
        window[0].narrow(0, 1, context - 1),
        torch::nn::functional::CrossEntropyFuncOptions().reduction(
            torch::kNone)));
  }
  qat::safetensors::write(
      out_path,
      {{"tokens", tokens},
       {"logits", first_logits},
       {"nll", torch::stack(nll)}});
}

// The schemes of the compressed-tensors conformance test, each a format (and
// a corner of it) that vLLM and transformers load.
struct CompressedTensorsCase {
  qat::QuantConfig scheme;
  bool tied = false;
  int64_t max_shard_bytes = 5'000'000'000;
};

CompressedTensorsCase compressed_tensors_case(const std::string& name) {
  using qat::FakeQuantizerOptions;
  using qat::Granularity;
  using qat::QuantRule;
  using qat::QuantSpec;
  const auto linear = [](qat::LayerQuantSpecs specs) {
    return qat::QuantConfig{{QuantRule::quantize("*", specs, "Linear")}};
  };
  const auto int4_groups = [](int64_t group) {
    return QuantSpec()
        .bits(4)
        .granularity(Granularity::per_group)
        .axis(-1)
        .group_size(group);
  };
  if (name == "w8a8_dynamic") // int-quantized, per-token dynamic inputs
    return {linear(qat::preset("w8a8_int8"))};
  if (name == "w8a8_static") // int-quantized, calibrated inputs; tied head
    return {linear(qat::preset("w8a8_int8_static")), true};
  if (name == "w8a8_affine") { // affine LSQ weights and affine inputs
    return {linear(
        {FakeQuantizerOptions(
             QuantSpec().granularity(Granularity::per_channel).symmetric(false))
             .estimator(qat::Estimator::lsq),
         QuantSpec().symmetric(false),
         {}})};
  }
  if (name == "w4a16_g128") // pack-quantized, symmetric
    return {linear(qat::preset("w4a16_g128"))};
  if (name == "w4a16_g32_affine") // pack-quantized, unsigned affine codes
    return {
        linear({int4_groups(32).is_signed(false).symmetric(false), {}, {}})};
  if (name == "fp8") // float-quantized, per-token dynamic e4m3 inputs
    return {linear(qat::preset("fp8_e4m3"))};
  // nvfp4-pack-quantized (calibrated NVFP4 input global scales, or none),
  // mxfp4-pack-quantized, mxfp8-quantized (dynamic MX inputs)
  for (const char* microscale :
       {"nvfp4", "nvfp4_a16", "mxfp4", "mxfp4_a16", "mxfp8"}) {
    if (name == microscale)
      return {linear(qat::preset(name))};
  }
  // An FP8 KV cache (kv_cache_scheme): one scale per tensor, or per head
  // ([batch, heads, time, head_dim]: axis 1).
  const auto fp8_kv_cache = [](bool per_head) {
    auto spec = QuantSpec().format(qat::NumberFormat::fp8_e4m3);
    if (per_head)
      spec.granularity(Granularity::per_channel).axis(1);
    return FakeQuantizerOptions(spec);
  };
  if (name == "fp8_kv") {
    auto scheme = linear(qat::preset("fp8_e4m3"));
    scheme.kv_cache = fp8_kv_cache(false);
    return {scheme};
  }
  if (name == "w4a16_kv_heads") {
    auto scheme = linear(qat::preset("w4a16_g128"));
    scheme.kv_cache = fp8_kv_cache(true);
    return {scheme};
  }
  if (name == "mixed") { // mixed-precision, a float layer, sharded
    return {
        {{QuantRule::skip("model.layers.1.mlp.down_proj"),
          QuantRule::quantize("*self_attn*", qat::preset("w8a8_int8")),
          QuantRule::quantize("*mlp*", {int4_groups(32), {}, {}}),
          QuantRule::quantize("lm_head", qat::preset("fp8_e4m3"))}},
        false,
        60'000};
  }
  throw std::invalid_argument(
      "unknown compressed-tensors case '" + name +
      "'; expected w8a8_dynamic, w8a8_static, w8a8_affine, w4a16_g128, "
      "w4a16_g32_affine, fp8, nvfp4, nvfp4_a16, mxfp4, mxfp4_a16, mxfp8, "
      "fp8_kv, w4a16_kv_heads or mixed");
}

// Converts the prepared, calibrated `lm`, exports it to `dir` and writes
// what the test compares to `out_path`.
void export_compressed_tensors(
    qat::models::LlamaForCausalLMImpl& lm,
    const torch::Tensor& tokens,
    const torch::Tensor& float_logits,
    const std::string& dir,
    int64_t max_shard_bytes,
    const char* out_path) {
  qat::convert(lm);
  lm.eval();
  torch::NoGradGuard no_grad;
  const auto report =
      qat::models::save_llama_compressed_tensors(lm, dir, max_shard_bytes);
  std::printf(
      "compressed-tensors: %s, %lld layers, %zu files, %lld bytes\n",
      report.format.c_str(),
      static_cast<long long>(report.quantized_layers),
      report.files.size(),
      static_cast<long long>(report.file_bytes));
  Tensors out{
      {"tokens", tokens},
      {"logits", lm.forward(tokens)},
      {"float_logits", float_logits}};
  for (const auto& [name, weight] : qat::quantized_weights(lm))
    out.emplace_back(name + ".weight", weight->dequantize());
  qat::safetensors::write(out_path, out);
}

void compressed_tensors(
    const std::string& case_name,
    const char* dir,
    const char* out_path) {
  using namespace qat::models;
  const CompressedTensorsCase c = compressed_tensors_case(case_name);
  torch::manual_seed(0);
  LlamaForCausalLM lm(LlamaConfig()
                          .vocab_size(256)
                          .hidden_size(128)
                          .intermediate_size(256)
                          .num_hidden_layers(2)
                          .num_attention_heads(4)
                          .num_key_value_heads(2)
                          .max_position_embeddings(128)
                          .tie_word_embeddings(c.tied));
  // Larger weights than the 0.02 initialisation, so that quantization shows
  // in the logits.
  {
    torch::NoGradGuard no_grad;
    for (auto& p : lm->parameters()) {
      if (p.dim() == 2)
        p.normal_(0.0, 0.15);
    }
  }
  lm->eval();
  const auto tokens = torch::randint(256, {2, 24}, torch::kLong);
  torch::Tensor float_logits;
  {
    torch::NoGradGuard no_grad;
    float_logits = lm(tokens);
  }
  qat::prepare(*lm, c.scheme);
  qat::calibrate(*lm, [&] {
    for (int batch = 0; batch < 4; ++batch)
      lm(torch::randint(256, {4, 32}, torch::kLong));
  });
  export_compressed_tensors(
      *lm, tokens, float_logits, dir, c.max_shard_bytes, out_path);
}

void compressed_tensors_gguf(
    const char* gguf_path,
    const std::string& preset,
    const char* dir,
    const char* out_path) {
  auto [lm, tokenizer] = load_gguf_model(gguf_path);
  const auto tokens =
      torch::tensor(
          tokenizer.encode(
              "In the beginning God created the heaven and the earth. And the "
              "earth was without form, and void; and darkness was upon the "
              "face of the deep."),
          torch::kLong)
          .unsqueeze(0);
  torch::Tensor float_logits;
  {
    torch::NoGradGuard no_grad;
    float_logits = lm(tokens);
  }
  qat::prepare(
      *lm, {{qat::QuantRule::quantize("*", qat::preset(preset), "Linear")}});
  export_compressed_tensors(
      *lm, tokens, float_logits, dir, 5'000'000'000, out_path);
}

} // namespace

void tokenize_data(
    const std::string& type,
    const std::string& path,
    const std::string& model_dir,
    const char* out_path) {
  const auto tokenizer = qat::data::hf_tokenizer(model_dir);
  qat::data::SourceOptions options;
  options.path = path;
  options.paragraphs = true;
  const auto source = qat::data::make_document_source(type, options, tokenizer);
  std::ofstream out(out_path);
  source->for_each([&](qat::data::Document&& doc) {
    std::string ids, trained;
    qat::data::tokenize_document(doc, *tokenizer, [&](int64_t id, bool t) {
      ids += (ids.empty() ? "" : ",") + std::to_string(id);
      trained += (trained.empty() ? "" : ",") + std::string(t ? "1" : "0");
    });
    out << "{\"ids\": [" << ids << "], \"trained\": [" << trained << "]}\n";
  });
}

void multiple_choice(
    const std::string& model_dir,
    const std::string& path,
    const char* out_path) {
  const auto tokenizer = qat::data::hf_tokenizer(model_dir);
  auto lm = qat::models::load_hf_model(model_dir);
  lm->eval();
  const auto task = qat::train::MultipleChoiceTask::load(path, *tokenizer);
  const auto ll =
      task.log_likelihoods([&](const torch::Tensor& ids) { return lm(ids); });
  std::ofstream out(out_path);
  out << "[";
  for (size_t i = 0; i < ll.size(); ++i) {
    out << (i ? ", [" : "[");
    for (size_t c = 0; c < ll[i].size(); ++c) {
      char v[40];
      std::snprintf(v, sizeof v, "%.17g", ll[i][c]);
      out << (c ? ", " : "") << v;
    }
    out << "]";
  }
  out << "]\n";
}

void gptq(const char* in_path, const char* out_path) {
  const auto in = qat::safetensors::File::read(in_path);
  const auto& meta = in.metadata();
  const auto number = [&](const std::string& key) {
    const auto it = meta.find(key);
    if (it == meta.end())
      throw std::runtime_error(std::string(in_path) + ": no metadata " + key);
    return std::stod(it->second);
  };
  const auto group = static_cast<int64_t>(number("group_size"));
  auto spec = qat::QuantSpec().bits(static_cast<int>(number("bits")));
  if (group > 0)
    spec.granularity(qat::Granularity::per_group).axis(-1).group_size(group);
  else
    spec.granularity(qat::Granularity::per_channel).axis(0);
  spec.validate();
  const torch::Tensor weight = in.tensor("weight");
  const qat::QParams q = qat::dynamic_qparams(weight, spec);
  const auto result = qat::gptq_quantize(
      weight,
      in.tensor("hessian"),
      spec,
      q,
      qat::GptqOptions()
          .damp(number("damp"))
          .block_size(static_cast<int64_t>(number("block_size")))
          .act_order(number("act_order") != 0));
  const torch::Tensor rtn = qat::format_of(spec).fake_quantize(
      weight,
      q.scale,
      q.zero_point,
      spec.op_axis(),
      spec.op_group_size(weight.size(-1)),
      spec);
  qat::safetensors::write(
      out_path,
      {{"weight", result.weight},
       {"latent", result.latent},
       {"scale", q.scale},
       {"zero_point", q.zero_point},
       {"rtn", rtn}});
}

int main(int argc, char** argv) {
  const std::string command = argc > 1 ? argv[1] : "";
  const std::map<std::string, int> arguments = {
      {"roundtrip", 2},
      {"gguf", 2},
      {"llama", 3},
      {"gguf-read", 2},
      {"gguf-export", 4},
      {"tokenize", 3},
      {"onnx", 4},
      {"gguf-quantize", 3},
      {"evaluate-gguf", 4},
      {"compressed-tensors", 3},
      {"compressed-tensors-gguf", 4},
      {"tokenize-data", 4},
      {"multiple-choice", 3},
      {"gptq", 2}};
  const auto it = arguments.find(command);
  if (it == arguments.end() || argc != it->second + 2) {
    std::fprintf(
        stderr,
        "usage: %s roundtrip|gguf|gguf-read IN OUT\n"
        "       %s llama CHECKPOINT_DIR IN.safetensors OUT.safetensors\n"
        "       %s gguf-export TOKENIZER_GGUF PRESET OUT_GGUF OUT.safetensors\n"
        "       %s tokenize GGUF TEXT OUT.safetensors\n"
        "       %s onnx mlp|resnet int8|int4 OUT.onnx OUT.safetensors\n"
        "       %s gguf-quantize IN.gguf OUT.gguf f32|q8_0|q4_0|mxfp4|q4_k_m\n"
        "       %s evaluate-gguf GGUF TEXT CONTEXT OUT.safetensors\n"
        "       %s compressed-tensors CASE OUT_DIR OUT.safetensors\n"
        "       %s compressed-tensors-gguf GGUF PRESET OUT_DIR OUT.safetensors\n"
        "       %s gptq IN.safetensors OUT.safetensors\n",
        argv[0],
        argv[0],
        argv[0],
        argv[0],
        argv[0],
        argv[0],
        argv[0],
        argv[0],
        argv[0],
        argv[0]);
    return 2;
  }
  try {
    if (command == "roundtrip")
      roundtrip(argv[2], argv[3]);
    else if (command == "gguf")
      gguf(argv[2], argv[3]);
    else if (command == "llama")
      llama(argv[2], argv[3], argv[4]);
    else if (command == "gguf-read")
      gguf_read(argv[2], argv[3]);
    else if (command == "gguf-export")
      gguf_export(argv[2], argv[3], argv[4], argv[5]);
    else if (command == "tokenize")
      tokenize(argv[2], argv[3], argv[4]);
    else if (command == "onnx")
      export_onnx_model(argv[2], argv[3], argv[4], argv[5]);
    else if (command == "gguf-quantize")
      gguf_quantize(argv[2], argv[3], argv[4]);
    else if (command == "evaluate-gguf")
      evaluate_gguf(argv[2], argv[3], argv[4], argv[5]);
    else if (command == "tokenize-data")
      tokenize_data(argv[2], argv[3], argv[4], argv[5]);
    else if (command == "multiple-choice")
      multiple_choice(argv[2], argv[3], argv[4]);
    else if (command == "compressed-tensors")
      compressed_tensors(argv[2], argv[3], argv[4]);
    else if (command == "gptq")
      gptq(argv[2], argv[3]);
    else
      compressed_tensors_gguf(argv[2], argv[3], argv[4], argv[5]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
