#include "trainers/trainer.h"

#include <ATen/autocast_mode.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>
#include <zlib.h>

#include "qat/convert.h"
#include "qat/fake_quant.h"
#include "qat/modules/conv.h"
#include "qat/prepare.h"
#include "trainers/checkpoint.h"
#include "trainers/distributed.h"
#include "trainers/error_text.h"
#include "trainers/models/classifiers.h"
#include "trainers/models/llama_gguf.h"
#include "trainers/models/sources.h"
#include "trainers/quant_config.h"
#include "trainers/report.h"
#include "trainers/task.h"

namespace qat::train {
namespace fs = std::filesystem;
namespace F = torch::nn::functional;
using recipe::Recipe;

namespace {

// Thrown when JobOptions::halt_after_step is reached.
struct Halted {
  int64_t step;
};

// One training stage's settings (trainer.float or trainer.qat).
struct LoopConfig {
  int64_t steps = 0, accumulate = 1, warmup = 0;
  std::string optimizer = "sgd";
  double lr = 0.1, momentum = 0.9, weight_decay = 0, min_lr_ratio = 0;
  bool nesterov = false;
  double beta1 = 0.9, beta2 = 0.999, clip = 0, quantizer_lr = 0;
  // QAT schedule: fake-quant from step fake_quant_after on, observers frozen
  // at freeze_observers_at, BN statistics at freeze_bn_at (-1: never).
  int64_t fake_quant_after = 0, freeze_observers_at = -1, freeze_bn_at = -1;
  // Distillation from the float model: ce * CE + kl * T^2 * KL(T) + mse *
  // MSE(features).
  double ce = 1, kl = 0, temperature = 1, mse = 0;
  int64_t eval_every = 0;
  bool autocast_bf16 = false;

  static LoopConfig read(const Recipe& r, const std::string& p) {
    LoopConfig c;
    c.steps = r.get<int64_t>(p + ".steps");
    c.accumulate = r.get<int64_t>(p + ".accumulate", 1);
    c.warmup = r.get<int64_t>(p + ".schedule.warmup", 0);
    c.min_lr_ratio = r.get<double>(p + ".schedule.min_lr_ratio", 0.0);
    c.optimizer = r.get<std::string>(p + ".optimizer.name", "sgd");
    if (c.optimizer != "sgd" && c.optimizer != "adamw")
      r.fail_at(
          p + ".optimizer.name",
          "expected sgd or adamw, got '" + c.optimizer + "'");
    c.lr = r.get<double>(p + ".optimizer.lr");
    c.momentum = r.get<double>(p + ".optimizer.momentum", 0.9);
    c.nesterov = r.get<bool>(p + ".optimizer.nesterov", false);
    c.weight_decay = r.get<double>(p + ".optimizer.weight_decay", 0.0);
    c.beta1 = r.get<double>(p + ".optimizer.beta1", 0.9);
    c.beta2 = r.get<double>(p + ".optimizer.beta2", 0.999);
    c.quantizer_lr = r.get<double>(p + ".optimizer.quantizer_lr", c.lr);
    c.clip = r.get<double>(p + ".clip_grad_norm", 0.0);
    c.fake_quant_after = r.get<int64_t>(p + ".fake_quant_after", 0);
    c.freeze_observers_at = r.get<int64_t>(p + ".freeze_observers_at", -1);
    c.freeze_bn_at = r.get<int64_t>(p + ".freeze_bn_at", -1);
    c.ce = r.get<double>(p + ".distill.ce", 1.0);
    c.kl = r.get<double>(p + ".distill.kl", 0.0);
    c.temperature = r.get<double>(p + ".distill.temperature", 1.0);
    c.mse = r.get<double>(p + ".distill.mse", 0.0);
    c.eval_every = r.get<int64_t>(p + ".eval_every", 0);
    c.autocast_bf16 = r.get<std::string>(p + ".autocast", "none") == "bf16";
    const auto positive = [&](const char* key, double v) {
      if (!(v > 0))
        r.fail_at(p + "." + key, "must be positive");
    };
    positive("steps", static_cast<double>(c.steps));
    positive("accumulate", static_cast<double>(c.accumulate));
    positive("optimizer.lr", c.lr);
    positive("distill.temperature", c.temperature);
    if (c.warmup < 0 || c.warmup >= c.steps)
      r.fail_at(
          p + ".schedule.warmup",
          "must be in [0, steps) = [0, " + std::to_string(c.steps) + "), got " +
              std::to_string(c.warmup));
    if (!(c.ce > 0) && !c.distills())
      r.fail_at(
          p + ".distill.ce",
          "ce, kl and mse are all 0: the loss would be 0, nothing to learn");
    if (c.optimizer == "sgd" && c.nesterov && !(c.momentum > 0))
      r.fail_at(p + ".optimizer.momentum", "Nesterov SGD needs a momentum > 0");
    return c;
  }

  // Linear warm-up, then cosine decay to min_lr_ratio.
  double lr_factor(int64_t step) const {
    if (step < warmup)
      return static_cast<double>(step + 1) / static_cast<double>(warmup);
    const double progress = static_cast<double>(step - warmup) /
        static_cast<double>(std::max<int64_t>(1, steps - warmup));
    return min_lr_ratio +
        (1 - min_lr_ratio) * 0.5 * (1 + std::cos(M_PI * progress));
  }
  bool distills() const {
    return kl > 0 || mse > 0;
  }
};

std::vector<FakeQuantizerImpl*> fake_quantizers(torch::nn::Module& model) {
  std::vector<FakeQuantizerImpl*> out;
  for (const auto& m : model.modules(/*include_self=*/false)) {
    if (auto* q = m->as<FakeQuantizerImpl>())
      out.push_back(q);
  }
  return out;
}

void freeze_bn(torch::nn::Module& model, bool frozen) {
  for (const auto& m : model.modules(/*include_self=*/false)) {
    if (auto* conv = m->as<QuantConv2dImpl>())
      conv->freeze_bn_stats(frozen);
  }
}

// Evaluation never moves an observer.
class ObserversPaused {
 public:
  explicit ObserversPaused(torch::nn::Module& model)
      : quantizers_(fake_quantizers(model)) {
    for (auto* q : quantizers_) {
      was_on_.push_back(q->observer_enabled());
      q->enable_observer(false);
    }
  }
  ~ObserversPaused() {
    for (size_t i = 0; i < quantizers_.size(); ++i)
      quantizers_[i]->enable_observer(was_on_[i]);
  }

 private:
  std::vector<FakeQuantizerImpl*> quantizers_;
  std::vector<bool> was_on_;
};

// bf16 autocast for CUDA forward passes (a no-op elsewhere).
class Autocast {
 public:
  explicit Autocast(bool on) : on_(on) {
    if (on_) {
      at::autocast::set_autocast_enabled(at::kCUDA, true);
      at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    }
  }
  ~Autocast() {
    if (on_) {
      at::autocast::set_autocast_enabled(at::kCUDA, false);
      at::autocast::clear_cache();
    }
  }

 private:
  bool on_;
};

std::string join_names(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names)
    out += (out.empty() ? "" : ", ") + n;
  return out;
}

std::string human_bytes(double bytes) {
  char text[32];
  if (bytes >= 1 << 20)
    std::snprintf(text, sizeof text, "%.2f MiB", bytes / (1 << 20));
  else
    std::snprintf(text, sizeof text, "%.1f KiB", bytes / 1024);
  return text;
}

// The served size of a model: quantized weights as converted (codes, scales,
// zero points), every other parameter fp32.
int64_t served_bytes(torch::nn::Module& model) {
  int64_t bytes = 0;
  std::set<std::string> quantized;
  for (const auto& [name, w] : quantized_weights(model)) {
    bytes += w->storage_bytes();
    quantized.insert(name + ".weight");
  }
  for (const auto& p : model.named_parameters()) {
    if (p.key().find("_quantizer.") == std::string::npos &&
        !quantized.count(p.key()))
      bytes += p.value().numel() * 4;
  }
  return bytes;
}

// A file's size, or the sizes of the files in a folder.
int64_t disk_bytes(const std::string& path) {
  if (!fs::is_directory(path))
    return static_cast<int64_t>(fs::file_size(path));
  int64_t bytes = 0;
  for (const auto& entry : fs::directory_iterator(path)) {
    if (entry.is_regular_file())
      bytes += static_cast<int64_t>(entry.file_size());
  }
  return bytes;
}

} // namespace

std::vector<std::string> export_formats() {
  return {"native", "gguf", "onnx", "compressed-tensors"};
}

std::string export_extension(const std::string& format) {
  return format == "gguf"  ? ".gguf"
      : format == "onnx"   ? ".onnx"
      : format == "native" ? ".safetensors"
                           : ""; // compressed-tensors: a checkpoint folder
}

std::string describe(const ExportSizes& sizes, const std::string& path) {
  return path + " (" + human_bytes(static_cast<double>(sizes.file_bytes)) +
      "; float " + human_bytes(static_cast<double>(sizes.float_bytes)) +
      "; theoretical " +
      human_bytes(static_cast<double>(sizes.theoretical_bytes)) +
      ": quantized weights at their bits with scales and zero points, the "
      "rest fp32)";
}

// ---------------------------------------------------------------------------

struct Job::State {
  Recipe recipe;
  JobOptions options;
  std::string run_dir, config_text;
  uint64_t seed = 0;
  torch::Device device = torch::kCPU;
  std::unique_ptr<Distributed> dist;
  bool sync_bn = false;
  // What the job is doing ("qat.w4a4: step 78", "calibration"), for the
  // errors of collectives that know nothing of steps.
  std::string activity = "starting";
  std::unique_ptr<Task> task_;
  std::unique_ptr<MetricsLog> metrics;

  Model float_model;
  std::map<std::string, Model> qat_models; // by scheme
  std::vector<ModelResult> results;

  State(Recipe r, JobOptions o) : recipe(std::move(r)), options(std::move(o)) {
    if (!options.warn) {
      options.warn = [](const std::string& m) {
        std::fprintf(stderr, "warning: %s\n", m.c_str());
      };
    }
    run_dir = recipe.get<std::string>("run.dir");
    seed = static_cast<uint64_t>(recipe.get<int64_t>("run.seed", 0));
    config_text = recipe.dump();
    const auto device_name = recipe.get<std::string>("run.device", "auto");
    if (device_name == "auto")
      device = torch::cuda::is_available() ? torch::kCUDA : torch::kCPU;
    else if (device_name == "cpu" || device_name == "cuda")
      device = torch::Device(device_name);
    else
      recipe.fail_at(
          "run.device",
          "expected auto, cpu or cuda, got '" + device_name + "'");
    if (device.is_cuda() && !torch::cuda::is_available())
      recipe.fail_at(
          "run.device", "cuda was asked for but no GPU is available");
    join_process_group();
    if (const auto threads = recipe.get<int64_t>("run.threads", 0); threads > 0)
      torch::set_num_threads(static_cast<int>(threads));
  }

  // The job torchrun or SLURM started this process in (none: one process).
  void join_process_group() {
    const auto launch = Launch::from_environment();
    DistributedOptions d;
    d.backend = recipe.get<std::string>("run.distributed.backend", "auto");
    if (d.backend != "auto" && d.backend != "gloo" && d.backend != "nccl")
      recipe.fail_at(
          "run.distributed.backend",
          "expected auto, gloo or nccl, got '" + d.backend + "'");
    const double timeout =
        recipe.get<double>("run.distributed.timeout_s", 300.0);
    if (!(timeout > 0))
      recipe.fail_at("run.distributed.timeout_s", "must be positive");
    d.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout * 1000));
    d.bucket_mb = recipe.get<int64_t>("run.distributed.bucket_mb", 25);
    if (d.bucket_mb <= 0)
      recipe.fail_at("run.distributed.bucket_mb", "must be positive");
    sync_bn = recipe.get<bool>("run.distributed.sync_bn", false);
    // One GPU per process, the LOCAL_RANK-th of its node, also the current
    // one (for tensors made on "cuda" without an index, and NCCL's barrier).
    if (device.is_cuda() && launch.world_size > 1) {
      if (launch.local_rank >=
          static_cast<int64_t>(torch::cuda::device_count()))
        throw DistributedError(
            "LOCAL_RANK " + std::to_string(launch.local_rank) +
            " but this node has " +
            std::to_string(torch::cuda::device_count()) +
            " GPUs: start at most one rank per GPU");
      device = torch::Device(
          torch::kCUDA, static_cast<c10::DeviceIndex>(launch.local_rank));
      c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->setDevice(device);
    }
    dist = std::make_unique<Distributed>(launch, device, d);
  }

  bool is_main() const {
    return dist->is_main();
  }

  void write_metrics(
      const std::string& stage,
      int64_t step,
      const Metrics& numbers,
      const std::map<std::string, std::string>& texts = {}) {
    if (metrics) // rank 0's alone
      metrics->write(stage, step, numbers, texts);
  }

  // Every quantizer that sees activations (weights are the same on every
  // rank) agrees with the other ranks on each batch's range, and with
  // run.distributed.sync_bn, Conv+BN normalises with the global batch.
  void make_data_parallel(torch::nn::Module& model) {
    if (dist->world_size() == 1)
      return;
    Distributed* d = dist.get();
    for (const auto& item : model.named_modules()) {
      if (auto* q = item.value()->as<FakeQuantizerImpl>()) {
        const auto& name = item.key();
        if (name.size() >= 16 &&
            name.compare(name.size() - 16, 16, "weight_quantizer") == 0)
          continue;
        q->observer()->set_range_reduction(
            [this, d, name](torch::Tensor& lo, torch::Tensor& hi, bool mean) {
              const auto what = activity + ": " + name + "'s observer";
              if (mean) {
                auto both = torch::stack({lo, hi});
                d->all_reduce(both, ReduceOp::sum, what);
                both.div_(static_cast<double>(d->world_size()));
                lo = both[0];
                hi = both[1];
              } else { // one MIN for both: max(hi) = -min(-hi)
                auto both = torch::stack({lo, -hi});
                d->all_reduce(both, ReduceOp::min, what);
                lo = both[0];
                hi = -both[1];
              }
            });
      } else if (auto* conv = item.value()->as<QuantConv2dImpl>()) {
        if (sync_bn)
          conv->set_batch_stats_gather([d](const torch::Tensor& local) {
            return d->gather_over_ranks(local);
          });
      }
    }
  }

  // Every rank's `value`, in rank order (exact for integers below 2^53).
  std::vector<double> values_over_ranks(double value, const std::string& what) {
    std::vector<double> values(static_cast<size_t>(dist->world_size()), 0.0);
    values[static_cast<size_t>(dist->rank())] = value;
    dist->all_reduce(values, ReduceOp::sum, what);
    return values;
  }

  static bool all_equal(const std::vector<double>& values) {
    return std::adjacent_find(
               values.begin(), values.end(), std::not_equal_to<>()) ==
        values.end();
  }

  // Every rank's CRC-32, in rank order, as "1a2b3c4d,1a2b3c4d"; `equal` says
  // whether they all are.
  std::string digests_over_ranks(
      uLong crc,
      const std::string& what,
      bool& equal) {
    const auto digests = values_over_ranks(static_cast<double>(crc), what);
    std::string text;
    for (const double d : digests) {
      char hex[16];
      std::snprintf(hex, sizeof hex, "%08lx", static_cast<unsigned long>(d));
      text += (text.empty() ? "" : ",") + std::string(hex);
    }
    equal = all_equal(digests);
    return text;
  }

  // Ranks started with different recipes (another override on one node)
  // would train different models in lockstep without noticing.
  void check_same_recipe() {
    if (dist->world_size() == 1)
      return;
    const uLong crc = crc32_z(
        crc32(0L, Z_NULL, 0),
        reinterpret_cast<const Bytef*>(config_text.data()),
        static_cast<z_size_t>(config_text.size()));
    bool equal = false;
    const auto text =
        digests_over_ranks(crc, "comparing the ranks' recipes", equal);
    if (!equal)
      throw DistributedError(
          "the ranks were started with different recipes (CRC-32 of the "
          "composed recipe per rank: " +
          text +
          "); start every rank with the same recipe and overrides (compare "
          "with --print-config)");
  }

  // Data parallelism keeps the ranks' models equal by construction; this
  // checks it at the end of each training stage. Each rank's digest is the
  // CRC-32 of its parameters and buffers (raw bytes, in name order); rank 0
  // logs them all, and any difference stops the run.
  void check_ranks_agree(const std::string& stage, torch::nn::Module& model) {
    if (dist->world_size() == 1)
      return;
    auto state = module_state(model);
    std::sort(state.begin(), state.end(), [](const auto& a, const auto& b) {
      return a.first < b.first;
    });
    uLong crc = crc32(0L, Z_NULL, 0);
    for (const auto& [name, tensor] : state) {
      const auto bytes = tensor.detach().cpu().contiguous();
      crc = crc32_z(
          crc,
          static_cast<const Bytef*>(bytes.data_ptr()),
          static_cast<z_size_t>(bytes.nbytes()));
    }
    bool equal = false;
    const auto text =
        digests_over_ranks(crc, stage + ": comparing the ranks' models", equal);
    write_metrics(stage, -1, {}, {{"rank_digests", text}});
    if (!equal)
      throw DistributedError(
          stage +
          ": the ranks' models differ after training (CRC-32 per rank: " +
          text + ")");
  }

  // -- data and models ------------------------------------------------------

  // The task, its data loaded on first use: this rank's shard of it.
  Task& task() {
    if (!task_) {
      Distributed* d = dist.get();
      Shard shard{
          d->rank(), d->world_size(), [this, d](std::vector<double>& v) {
            d->all_reduce(v, ReduceOp::sum, activity + ": evaluation");
          }};
      task_ = make_task(recipe, device, seed, std::move(shard));
    }
    return *task_;
  }

  Model build_model() {
    return task().build_model();
  }

  QuantConfig scheme(const std::string& name) {
    return recipe::quant_config(recipe, "quant." + name);
  }

  // A copy of the float model, prepared with `scheme` ("" for float).
  Model copy_of_float(const std::string& scheme_name) {
    auto model = build_model();
    load_module_state(*model, module_state(*float_model), "the float model");
    if (!scheme_name.empty())
      prepare(*model, scheme(scheme_name));
    make_data_parallel(*model);
    return model;
  }

  void calibrate_model(torch::nn::Module& model, int64_t batches = 0) {
    activity = "calibration";
    if (batches == 0)
      batches = recipe.get<int64_t>("trainer.calibration_batches", 16);
    model.eval();
    qat::calibrate(model, [&] {
      for (int64_t b = 0; b < batches; ++b)
        task().forward(model, task().calibration_batch(b).inputs);
    });
  }

  Metrics evaluate(torch::nn::Module& model, Split split) {
    torch::NoGradGuard no_grad;
    ObserversPaused paused(model);
    const bool was_training = model.is_training();
    model.eval();
    auto metrics = task().evaluate(model, split);
    model.train(was_training);
    return metrics;
  }

  // The served size of `model` (see served_bytes).
  int64_t weight_bytes(
      torch::nn::Module& model,
      const std::string& scheme_name) {
    auto served = copy_of_float(scheme_name);
    if (!scheme_name.empty()) {
      load_module_state(*served, module_state(model), "the quantized model");
      convert(*served);
    }
    return served_bytes(*served);
  }

  void record(
      const std::string& name,
      const std::string& stage,
      torch::nn::Module& model,
      const std::string& scheme_name) {
    ModelResult r;
    r.name = name;
    r.stage = stage;
    r.validation = evaluate(model, Split::validation);
    r.test = evaluate(model, Split::test);
    r.weight_bytes = weight_bytes(model, scheme_name);
    write_metrics(stage, -1, r.validation, {{"split", "validation"}});
    write_metrics(stage, -1, r.test, {{"split", "test"}});
    const char* metric = task().metric();
    std::printf(
        "%-12s validation %s %.4g  test %s %.4g  (loss %.4f)\n",
        name.c_str(),
        metric,
        r.validation.at(metric),
        metric,
        r.test.at(metric),
        r.test.at("loss"));
    if (const auto prompt =
            recipe.get<std::string>("trainer.sample.prompt", "");
        !prompt.empty() && is_main()) {
      torch::NoGradGuard no_grad;
      ObserversPaused paused(model);
      model.eval();
      std::printf(
          "  %s: %s|%s\n",
          name.c_str(),
          prompt.c_str(),
          task()
              .sample(
                  model,
                  prompt,
                  recipe.get<int64_t>("trainer.sample.tokens", 32))
              .c_str());
    }
    std::fflush(stdout);
    results.push_back(std::move(r));
  }

  // -- the training loop ----------------------------------------------------

  std::unique_ptr<torch::optim::Optimizer> make_optimizer(
      const LoopConfig& c,
      torch::nn::Module& model,
      std::vector<double>& base_lrs) {
    std::vector<torch::Tensor> weights, quantizer;
    for (const auto& p : model.named_parameters()) {
      if (!p.value().requires_grad())
        continue;
      (p.key().find("_quantizer.") != std::string::npos ? quantizer : weights)
          .push_back(p.value());
    }
    // Quantizer parameters (LSQ scales, PACT clips) get their own learning
    // rate and no weight decay: decay would shrink the scales.
    base_lrs = {c.lr};
    if (!quantizer.empty())
      base_lrs.push_back(c.quantizer_lr);
    const auto grouped = [&](auto options, auto* optimizer_type) {
      using Options = decltype(options);
      using Optimizer = std::remove_pointer_t<decltype(optimizer_type)>;
      std::vector<torch::optim::OptimizerParamGroup> groups;
      groups.emplace_back(weights, std::make_unique<Options>(options));
      if (!quantizer.empty()) {
        auto q = options;
        groups.emplace_back(
            quantizer,
            std::make_unique<Options>(q.lr(c.quantizer_lr).weight_decay(0)));
      }
      return std::unique_ptr<torch::optim::Optimizer>(
          std::make_unique<Optimizer>(groups, options));
    };
    if (c.optimizer == "sgd") {
      return grouped(
          torch::optim::SGDOptions(c.lr)
              .momentum(c.momentum)
              .nesterov(c.nesterov)
              .weight_decay(c.weight_decay),
          static_cast<torch::optim::SGD*>(nullptr));
    }
    return grouped(
        torch::optim::AdamWOptions(c.lr)
            .betas({c.beta1, c.beta2})
            .weight_decay(c.weight_decay),
        static_cast<torch::optim::AdamW*>(nullptr));
  }

  void apply_qat_schedule(
      torch::nn::Module& model,
      const LoopConfig& c,
      int64_t step) {
    set_fake_quant(model, step >= c.fake_quant_after);
    set_observers(
        model, c.freeze_observers_at < 0 || step < c.freeze_observers_at);
    freeze_bn(model, c.freeze_bn_at >= 0 && step >= c.freeze_bn_at);
  }

  // The training loss of one micro-batch: c.ce x cross-entropy, plus the
  // distillation terms when there is a teacher.
  torch::Tensor loss_of(
      torch::nn::Module& model,
      const Batch& batch,
      const LoopConfig& c,
      torch::nn::Module* teacher) {
    Autocast autocast(c.autocast_bf16 && device.is_cuda());
    const Output out = task().forward(model, batch.inputs);
    torch::Tensor loss = c.ce * task().loss(out, batch);
    if (!teacher || !c.distills())
      return loss;
    Output target;
    {
      torch::NoGradGuard no_grad;
      target = task().forward(*teacher, batch.inputs);
    }
    const auto logits = out.logits.to(torch::kFloat);
    const auto vocab = logits.size(-1);
    if (c.kl > 0) {
      const double t = c.temperature;
      loss = loss +
          c.kl * t * t *
              F::kl_div(
                  torch::log_softmax(logits.reshape({-1, vocab}) / t, 1),
                  torch::softmax(
                      target.logits.to(torch::kFloat).reshape({-1, vocab}) / t,
                      1),
                  F::KLDivFuncOptions().reduction(torch::kBatchMean));
    }
    if (c.mse > 0) {
      loss = loss +
          c.mse *
              F::mse_loss(
                  out.features.to(torch::kFloat),
                  target.features.to(torch::kFloat));
    }
    return loss;
  }

  void train_stage(
      const std::string& stage,
      torch::nn::Module& model,
      const LoopConfig& c,
      torch::nn::Module* teacher,
      bool quantized) {
    std::vector<double> base_lrs;
    auto optimizer = make_optimizer(c, model, base_lrs);
    const auto every = recipe.get<int64_t>("trainer.checkpoint.every", 0);
    Checkpoints checkpoints(
        (fs::path(run_dir) / "checkpoints" / stage).string(),
        static_cast<int>(recipe.get<int64_t>("trainer.checkpoint.keep", 3)));
    int64_t step = 0;
    bool finished = false;
    std::string last_good = "none was written yet";
    if (options.resume) {
      // Every rank reads the same file (run.dir is shared); rank 0 wrote it
      // before a barrier. Whatever the world size that wrote it: batches
      // depend on the step alone.
      if (auto found = checkpoints.latest(options.warn)) {
        found->restore(model, optimizer.get());
        step = found->step;
        finished = found->final;
        last_good = found->path;
        std::printf(
            "%s: resuming from %s (step %lld%s)\n",
            stage.c_str(),
            found->path.c_str(),
            static_cast<long long>(step),
            found->final ? ", finished" : "");
      }
      const auto steps = values_over_ranks(
          static_cast<double>(step), stage + ": agreeing on the checkpoint");
      if (!all_equal(steps)) {
        const auto [low, high] =
            std::minmax_element(steps.begin(), steps.end());
        throw DistributedError(
            stage + ": the ranks resume from different steps (" +
            std::to_string(static_cast<int64_t>(*low)) + " to " +
            std::to_string(static_cast<int64_t>(*high)) +
            "): run.dir must be one folder that every rank sees");
      }
    }
    // Rank 0's parameters and buffers (observer state, BN statistics,
    // quantizer flags) everywhere, as DDP's constructor does.
    {
      torch::NoGradGuard no_grad;
      std::vector<torch::Tensor> state;
      for (const auto& [name, tensor] : module_state(model))
        state.push_back(tensor);
      dist->broadcast(state, stage + ": broadcasting rank 0's model");
    }
    if (finished)
      return;
    if (teacher)
      teacher->eval();
    const auto log_every = recipe.get<int64_t>("trainer.log_every", 50);
    std::vector<torch::Tensor> parameters;
    for (const auto& p : model.parameters())
      if (p.requires_grad())
        parameters.push_back(p);
    // Quantizer parameters sit out the steps before fake-quant starts.
    const auto named = model.named_parameters();
    const bool some_unused =
        quantized && c.fake_quant_after > 0 &&
        std::any_of(named.begin(), named.end(), [](const auto& p) {
          return p.key().find("_quantizer.") != std::string::npos;
        });
    const auto sync = dist->data_parallel(parameters, some_unused);
    const bool several = dist->world_size() > 1;
    // Without synchronous BN each rank's running statistics follow its own
    // shard; as DDP (broadcast_buffers), rank 0's become everyone's, here
    // after each step so that checkpoints and the end agree.
    std::vector<torch::Tensor> bn_statistics;
    if (several && !sync_bn) {
      for (const auto& m : model.modules(/*include_self=*/false)) {
        if (auto* conv = m->as<QuantConv2dImpl>();
            conv && !conv->batch_norm.is_empty()) {
          bn_statistics.push_back(conv->batch_norm->running_mean);
          bn_statistics.push_back(conv->batch_norm->running_var);
        }
      }
    }
    const auto save = [&](bool final) {
      const std::string path = is_main()
          ? checkpoints.save(model, optimizer.get(), step, config_text, final)
          : "step " + std::to_string(step) + " in " + checkpoints.dir();
      // No rank goes on (or reads it) before the file is whole, nor calls it
      // good before rank 0 has said so.
      dist->barrier(
          stage + ": writing the checkpoint of step " + std::to_string(step));
      last_good = path;
    };

    Progress progress(stage, step, c.steps, log_every);
    const auto started = std::chrono::steady_clock::now();
    const double communication_at_start = dist->communication_seconds();
    model.train();
    try {
      while (step < c.steps) {
        activity = stage + ": step " + std::to_string(step + 1);
        if (quantized)
          apply_qat_schedule(model, c, step);
        const double factor = c.lr_factor(step);
        for (size_t g = 0; g < base_lrs.size(); ++g)
          optimizer->param_groups()[g].options().set_lr(base_lrs[g] * factor);
        optimizer->zero_grad();
        double loss_sum = 0;
        for (int64_t micro = 0; micro < c.accumulate; ++micro) {
          const Batch batch = task().train_batch(step * c.accumulate + micro);
          const torch::Tensor loss = loss_of(model, batch, c, teacher);
          loss_sum += loss.item<double>();
          // Gradients are averaged over the ranks in the last micro-batch's
          // backward only; the earlier ones accumulate locally.
          sync->before_backward(loss, micro == c.accumulate - 1);
          dist->guarded(
              activity + ": backward with the gradient all-reduce",
              [&] { (loss / static_cast<double>(c.accumulate)).backward(); });
        }
        // The mean over the ranks, one all-reduce per step however many
        // micro-batches: what is logged, and a NaN on any rank stops them
        // all at the same step, before the weights change.
        std::vector<double> total{loss_sum};
        dist->all_reduce(
            total, ReduceOp::sum, activity + ": averaging the loss");
        const double loss_mean =
            total[0] / static_cast<double>(c.accumulate * dist->world_size());
        if (!std::isfinite(loss_mean)) {
          throw TrainingError(
              stage + ": step " + std::to_string(step + 1) + ": the loss is " +
              (std::isnan(loss_mean) ? "nan" : "inf") +
              (several ? " (mean over the ranks)" : "") +
              "; stopped before updating the weights (last good checkpoint: " +
              last_good +
              "). Lower the learning rate or enable clip_grad_norm.");
        }
        const double grad_norm = torch::nn::utils::clip_grad_norm_(
            parameters,
            c.clip > 0 ? c.clip : std::numeric_limits<double>::infinity());
        if (!std::isfinite(grad_norm)) {
          throw TrainingError(
              stage + ": step " + std::to_string(step + 1) +
              ": the gradient norm is not finite; stopped before updating the weights (last "
              "good checkpoint: " +
              last_good + ")");
        }
        optimizer->step();
        if (!bn_statistics.empty()) {
          torch::NoGradGuard no_grad;
          dist->broadcast(bn_statistics, stage + ": rank 0's BN statistics");
        }
        ++step;
        Metrics logged{
            {"loss", loss_mean},
            {"lr", base_lrs[0] * factor},
            {"grad_norm", grad_norm}};
        // Seconds since this stage (re)started, and of them in c10d's
        // collectives: throughput and communication share per world size.
        logged["elapsed_s"] = std::chrono::duration<double>(
                                  std::chrono::steady_clock::now() - started)
                                  .count();
        if (several)
          logged["communication_s"] =
              dist->communication_seconds() - communication_at_start;
        write_metrics(stage, step, logged);
        progress.update(step, loss_mean, base_lrs[0] * factor);
        if (c.eval_every > 0 && step % c.eval_every == 0 && step < c.steps) {
          auto m = evaluate(model, Split::validation);
          write_metrics(stage, step, m, {{"split", "validation"}});
        }
        const bool halt =
            stage == options.halt_stage && step == options.halt_step;
        if ((every > 0 && step % every == 0 && step < c.steps) || halt)
          save(/*final=*/false);
        if (halt) {
          progress.finish();
          throw Halted{step};
        }
      }
    } catch (const DistributedError& e) {
      // What survives on disk, for --resume.
      throw DistributedError(
          std::string(e.what()) + "; last good checkpoint: " + last_good);
    }
    progress.finish();
    save(/*final=*/true);
    check_ranks_agree(stage, model);
    if (quantized) { // leave the schedule's end state: observers frozen
      set_observers(model, false);
      set_fake_quant(model, true);
    }
  }

  // -- stages ---------------------------------------------------------------

  // Everything a run of `stages` reads from the recipe alone, checked before
  // the first stage starts: a bad value for the last stage costs no training.
  // Returns the schemes the ptq and qat stages will prepare.
  std::set<std::string> preflight(const std::vector<std::string>& stages) {
    const std::vector<std::string> known = {
        "float", "ptq", "qat", "eval", "export"};
    for (const auto& stage : stages) {
      if (std::find(known.begin(), known.end(), stage) == known.end()) {
        const auto best = recipe::closest(stage, known);
        recipe.fail_at(
            "trainer.stages",
            "unknown stage '" + stage + "'" +
                (best.empty() ? "" : " (did you mean '" + best + "'?)") +
                "; stages: " + join_names(known));
      }
    }
    const auto runs = [&](const char* stage) {
      return std::find(stages.begin(), stages.end(), stage) != stages.end();
    };
    const auto load = recipe.get<std::string>("trainer.float.load", "");
    if (runs("float")) {
      if (!load.empty() && !fs::is_regular_file(load))
        recipe.fail_at("trainer.float.load", "no such file: " + load);
      if (load.empty() && recipe.get<int64_t>("trainer.float.steps") > 0)
        LoopConfig::read(recipe, "trainer.float");
    }
    std::set<std::string> schemes;
    for (const char* stage : {"ptq", "qat"}) {
      if (!runs(stage))
        continue;
      const std::string key = std::string("trainer.") + stage;
      if (std::string(stage) == "qat")
        LoopConfig::read(recipe, key);
      for (const auto& name :
           recipe.get<std::vector<std::string>>(key + ".schemes")) {
        scheme(name);
        schemes.insert(name);
      }
    }
    if (runs("export")) {
      export_format();
      const auto trained = runs("qat")
          ? recipe.get<std::vector<std::string>>("trainer.qat.schemes")
          : std::vector<std::string>{};
      for (const auto& name :
           recipe.get<std::vector<std::string>>("export.schemes")) {
        if (std::find(trained.begin(), trained.end(), name) == trained.end())
          recipe.fail_at(
              "export.schemes",
              "'" + name + "' is not trained by a qat stage of this run " +
                  "(trainer.qat.schemes: " + join_names(trained) + ")");
      }
    }
    return schemes;
  }

  void float_stage() {
    torch::manual_seed(seed);
    float_model = build_model();
    make_data_parallel(*float_model);
    const auto load = recipe.get<std::string>("trainer.float.load", "");
    if (!load.empty()) {
      load_module_state(*float_model, read_checkpoint(load).model, load);
      std::printf("float: loaded %s\n", load.c_str());
    } else if (recipe.get<int64_t>("trainer.float.steps") == 0) {
      std::printf("float: the model as built (pretrained), no training\n");
    } else {
      train_stage(
          "float",
          *float_model,
          LoopConfig::read(recipe, "trainer.float"),
          nullptr,
          false);
    }
    record("float", "float", *float_model, "");
  }

  void ensure_float() {
    if (!float_model)
      throw TrainingError(
          "the float model is needed first: put 'float' before the other stages");
  }

  void ptq_stage() {
    ensure_float();
    for (const auto& name :
         recipe.get<std::vector<std::string>>("trainer.ptq.schemes")) {
      auto model = copy_of_float(name);
      calibrate_model(*model);
      record("PTQ " + name, "ptq." + name, *model, name);
    }
  }

  void qat_stage() {
    ensure_float();
    const auto config = LoopConfig::read(recipe, "trainer.qat");
    // A pretrained model adapts to the data as it is fine-tuned: the float
    // model fine-tuned with the same steps on the same data is the baseline
    // that says what quantization-aware training itself recovers.
    // It learns from the data (cross-entropy), whatever QAT distils.
    if (recipe.get<bool>("trainer.qat.float_baseline", task().pretrained())) {
      auto tuned = copy_of_float("");
      LoopConfig on_data = config;
      on_data.ce = 1;
      on_data.kl = on_data.mse = 0;
      train_stage("float_tuned", *tuned, on_data, nullptr, false);
      record("float fine-tuned", "float_tuned", *tuned, "");
    }
    for (const auto& name :
         recipe.get<std::vector<std::string>>("trainer.qat.schemes")) {
      auto model = copy_of_float(name);
      calibrate_model(*model);
      train_stage(
          "qat." + name,
          *model,
          config,
          config.distills() ? float_model.get() : nullptr,
          true);
      record("QAT " + name, "qat." + name, *model, name);
      qat_models[name] = model;
    }
  }

  // The converted `served` model written to `path` as `format` (see
  // Job::export_checkpoint), with the sizes to print beside it.
  ExportSizes write_export(
      torch::nn::Module& served,
      const std::string& format,
      const std::string& path,
      const std::string& title) {
    if (fs::path(path).has_parent_path())
      fs::create_directories(fs::path(path).parent_path());
    if (format == "native") {
      save_converted(served, path);
    } else if (format == "gguf") {
      auto* lm = dynamic_cast<models::LlamaForCausalLMImpl*>(&served);
      if (!lm)
        throw std::invalid_argument(
            "format gguf exports the Llama-style decoder only");
      const auto* source = task().language_model();
      models::save_llama_gguf(
          *lm,
          path,
          title,
          source ? source->gguf_tokenizer() : models::GgufMetadata{});
    } else if (format == "compressed-tensors") {
      auto* lm = dynamic_cast<models::LlamaForCausalLMImpl*>(&served);
      if (!lm)
        throw std::invalid_argument(
            "format compressed-tensors exports the Llama-style decoder only");
      const int64_t shard_mb = recipe.get<int64_t>("export.max_shard_mb", 5000);
      if (shard_mb <= 0)
        recipe.fail_at("export.max_shard_mb", "must be positive");
      models::save_llama_compressed_tensors(*lm, path, shard_mb * 1'000'000);
      copy_tokenizer_files(path);
    } else if (format == "onnx") {
      const auto* classifier =
          dynamic_cast<const models::ImageClassifier*>(&served);
      if (!classifier)
        throw std::invalid_argument(
            "format onnx exports the image classifiers (mlp, resnet) only");
      const auto images = task().calibration_batch(0).inputs;
      models::save_onnx(*classifier, images.sizes().slice(1).vec(), path);
    } else {
      throw std::invalid_argument(
          "unknown export format '" + format + "'; expected " +
          join_names(export_formats()));
    }
    ExportSizes sizes;
    sizes.file_bytes = disk_bytes(path);
    sizes.float_bytes = weight_bytes(*float_model, "");
    sizes.theoretical_bytes = served_bytes(served);
    return sizes;
  }

  // The model's tokenizer files (tokenizer.json, tokenizer_config.json,
  // ...) into an exported folder, so that transformers and vLLM load it
  // from the folder alone.
  void copy_tokenizer_files(const std::string& folder) {
    const auto* source = task().language_model();
    if (!source)
      return;
    for (const auto& file : source->hf_files())
      fs::copy_file(
          file,
          fs::path(folder) / fs::path(file).filename(),
          fs::copy_options::overwrite_existing);
  }

  // export.format, one of export_formats().
  std::string export_format() const {
    const auto format = recipe.get<std::string>("export.format", "native");
    const auto formats = export_formats();
    if (std::find(formats.begin(), formats.end(), format) == formats.end())
      recipe.fail_at(
          "export.format",
          "unknown format '" + format + "'; expected " + join_names(formats));
    return format;
  }

  void export_stage() {
    const auto format = export_format();
    for (const auto& name :
         recipe.get<std::vector<std::string>>("export.schemes")) {
      if (!qat_models.count(name)) {
        recipe.fail_at(
            "export.schemes",
            "'" + name + "' was not trained by the qat stage (trained: " +
                join_names(recipe.get<std::vector<std::string>>(
                    "trainer.qat.schemes")) +
                ")");
      }
      if (!is_main())
        continue; // rank 0 writes; the barrier below waits for it
      const auto path =
          (fs::path(run_dir) / "export" / (name + export_extension(format)))
              .string();
      auto served = copy_of_float(name);
      load_module_state(
          *served, module_state(*qat_models[name]), "the QAT model");
      convert(*served);
      ExportSizes sizes;
      try {
        sizes = write_export(
            *served,
            format,
            path,
            recipe.get<std::string>("run.name") + " " + name);
      } catch (const std::invalid_argument& e) {
        recipe.fail_at("export.format", e.what());
      }
      std::printf("export: %s\n", describe(sizes, path).c_str());
    }
    dist->barrier("export: waiting for rank 0 to write the exports");
  }

  void eval_stage();
};

// The table, summary files and plots.
void Job::State::eval_stage() {
  if (results.empty())
    throw TrainingError(
        "eval: no model was evaluated; run float (and ptq / qat) first");
  if (!is_main())
    return; // every rank has the results; rank 0 reports them
  const ModelResult& base = results.front();
  const std::string metric = task().metric();
  const bool accuracy = task().higher_is_better();
  // "88.39%" or "5.123"; differences in points or in perplexity.
  const auto value = [&](double v) {
    char text[32];
    std::snprintf(text, sizeof text, accuracy ? "%.2f%%" : "%.3f", v);
    return std::string(text);
  };
  const double float_value = base.test.at(metric);
  std::map<std::string, double> ptq_value;
  // What QAT is measured against: the float model fine-tuned the same way
  // when there is one (QAT's gain over PTQ is then not adaptation to the
  // data), else the float model.
  double target_value = float_value;
  for (const auto& r : results) {
    if (r.stage.rfind("ptq.", 0) == 0)
      ptq_value[r.stage.substr(4)] = r.test.at(metric);
    if (r.stage == "float_tuned")
      target_value = r.test.at(metric);
  }

  const auto extra = task().extra_metrics();
  std::ostringstream table;
  table << "| model | test " << metric << " | vs float | validation " << metric
        << " | test loss | weights | QAT recovers |";
  for (const auto& name : extra)
    table << " " << name << " |";
  table << "\n|---|---|---|---|---|---|---|";
  for (size_t i = 0; i < extra.size(); ++i)
    table << "---|";
  table << "\n";
  nlohmann::ordered_json json = nlohmann::ordered_json::array();
  for (const auto& r : results) {
    const double v = r.test.at(metric);
    char row[256], delta[32] = "";
    if (&r != &base)
      std::snprintf(
          delta, sizeof delta, accuracy ? "%+.2f" : "%+.3f", v - float_value);
    std::string recovered;
    const std::string scheme = r.stage.substr(4);
    if (r.stage.rfind("qat.", 0) == 0 && ptq_value.count(scheme)) {
      // Only where PTQ lost something worth recovering (a point of accuracy,
      // 1% of perplexity): a ratio of noise is noise.
      const double lost = accuracy ? target_value - ptq_value.at(scheme)
                                   : ptq_value.at(scheme) - target_value;
      if (lost >= (accuracy ? 1.0 : 0.01 * target_value)) {
        const double gained =
            accuracy ? v - ptq_value.at(scheme) : ptq_value.at(scheme) - v;
        char text[32];
        std::snprintf(
            text, sizeof text, "%.0f%% of PTQ's loss", 100.0 * gained / lost);
        recovered = text;
      }
    }
    std::snprintf(
        row,
        sizeof row,
        "| %s | %s | %s | %s | %.4f | %s | %s |",
        r.name.c_str(),
        value(v).c_str(),
        delta,
        value(r.validation.at(metric)).c_str(),
        r.test.at("loss"),
        human_bytes(static_cast<double>(r.weight_bytes)).c_str(),
        recovered.c_str());
    table << row;
    for (const auto& name : extra) {
      const auto it = r.test.find(name);
      char cell[32] = " |";
      if (it != r.test.end())
        std::snprintf(cell, sizeof cell, " %.1f%% |", it->second);
      table << cell;
    }
    table << "\n";
    json.push_back(
        {{"name", r.name},
         {"stage", r.stage},
         {"test", r.test},
         {"validation", r.validation},
         {"weight_bytes", r.weight_bytes}});
  }
  std::printf("\n%s\n", table.str().c_str());
  std::ofstream(fs::path(run_dir) / "summary.md") << table.str();
  std::ofstream(fs::path(run_dir) / "summary.json") << json.dump(2) << "\n";

  // Plots from metrics.jsonl, so a resumed run's curves are whole; a later
  // line for the same stage and step (written after a resume) wins.
  std::map<std::string, std::map<int64_t, double>> loss, evaluations;
  std::ifstream lines(fs::path(run_dir) / "metrics.jsonl");
  for (std::string line; std::getline(lines, line);) {
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("step") || j["step"].get<int64_t>() < 0)
      continue;
    const auto stage = j["stage"].get<std::string>();
    const auto step = j["step"].get<int64_t>();
    if (j.contains("split") && j.contains(metric) && j[metric].is_number())
      evaluations[stage][step] = j[metric].get<double>();
    else if (j.contains("loss") && j["loss"].is_number())
      loss[stage][step] = j["loss"].get<double>();
  }
  const auto plot =
      [&](const std::map<std::string, std::map<int64_t, double>>& data,
          const std::string& file,
          const std::string& title,
          int64_t smooth) {
        std::vector<Series> series;
        for (const auto& [stage, points] : data) {
          Series s{stage, {}, {}};
          double window = 0;
          std::vector<double> recent;
          for (const auto& [step, value] : points) {
            recent.push_back(value);
            window += value;
            if (static_cast<int64_t>(recent.size()) > smooth) {
              window -= recent[recent.size() - 1 - smooth];
            }
            const auto n = std::min<int64_t>(smooth, recent.size());
            s.x.push_back(static_cast<double>(step));
            s.y.push_back(window / static_cast<double>(n));
          }
          series.push_back(std::move(s));
        }
        const auto path = (fs::path(run_dir) / file).string();
        write_line_plot(path, title, "step", series);
        std::printf("plot: %s\n", path.c_str());
      };
  plot(loss, "loss.png", "training loss (mean of 20 steps)", 20);
  plot(
      evaluations,
      metric + ".png",
      "validation " + metric + (accuracy ? " (%)" : " (per byte)"),
      1);
}

// ---------------------------------------------------------------------------

Job::Job(Recipe recipe, JobOptions options)
    : state_(std::make_unique<State>(std::move(recipe), std::move(options))) {}

Job::~Job() = default;

const std::string& Job::run_dir() const {
  return state_->run_dir;
}

std::vector<ModelResult> Job::run(const std::vector<std::string>& stages_in) {
  auto& s = *state_;
  const auto stages = stages_in.empty()
      ? s.recipe.get<std::vector<std::string>>("trainer.stages")
      : stages_in;
  s.preflight(stages);
  s.check_same_recipe();
  const fs::path dir(s.run_dir);
  if (!s.options.resume && fs::exists(dir / "checkpoints")) {
    throw TrainingError(
        "run directory " + s.run_dir +
        " already holds checkpoints: pass --resume to continue that run, or set run.dir to "
        "another directory");
  }
  if (s.is_main()) {
    fs::create_directories(dir);
    {
      std::ofstream config(dir / "config.yaml");
      config << s.config_text << "\n";
    }
    s.metrics = std::make_unique<MetricsLog>((dir / "metrics.jsonl").string());
  }
  if (s.dist->world_size() > 1)
    std::printf(
        "run: %s (%lld ranks over %s, device %s)\n",
        s.run_dir.c_str(),
        static_cast<long long>(s.dist->world_size()),
        s.dist->backend().c_str(),
        s.device.str().c_str());
  else
    std::printf(
        "run: %s (device %s)\n", s.run_dir.c_str(), s.device.str().c_str());
  try {
    for (const auto& stage : stages) {
      if (stage == "float")
        s.float_stage();
      else if (stage == "ptq")
        s.ptq_stage();
      else if (stage == "qat")
        s.qat_stage();
      else if (stage == "eval")
        s.eval_stage();
      else
        s.export_stage();
    }
  } catch (const Halted& h) {
    std::printf(
        "halted after step %lld as asked; continue with --resume\n",
        static_cast<long long>(h.step));
  } catch (const DistributedError&) {
    throw; // it names the ranks already
  } catch (const std::exception& e) {
    s.dist->announce_failure(error_text(e)); // so the others can say why
    throw;
  }
  return s.results;
}

ModelResult Job::evaluate_checkpoint(
    const std::string& checkpoint,
    const std::string& scheme) {
  auto& s = *state_;
  auto model = s.build_model();
  if (!scheme.empty())
    prepare(*model, s.scheme(scheme));
  load_module_state(*model, read_checkpoint(checkpoint).model, checkpoint);
  ModelResult r;
  r.name = scheme.empty() ? "float" : scheme;
  r.stage = "eval";
  r.validation = s.evaluate(*model, Split::validation);
  r.test = s.evaluate(*model, Split::test);
  return r;
}

ExportSizes Job::export_checkpoint(
    const std::string& checkpoint,
    const std::string& scheme,
    const std::string& path,
    const std::string& format) {
  auto& s = *state_;
  s.float_model = s.build_model();
  auto model = s.build_model();
  prepare(*model, s.scheme(scheme));
  load_module_state(*model, read_checkpoint(checkpoint).model, checkpoint);
  convert(*model);
  return s.write_export(
      *model,
      format,
      path,
      s.recipe.get<std::string>("run.name") + " " + scheme);
}

std::string Job::check() {
  auto& s = *state_;
  const auto stages = s.recipe.get<std::vector<std::string>>("trainer.stages");
  const auto schemes = s.preflight(stages);
  torch::manual_seed(s.seed);
  s.float_model = s.build_model();
  std::ostringstream out;
  out << "recipe: stages " << join_names(stages) << "; model "
      << s.recipe.get<std::string>("model.type") << "\n";
  for (const auto& name : schemes) {
    auto model = s.copy_of_float(name);
    s.calibrate_model(*model, 1); // the specs meet the layers' shapes
    out << "scheme " << name << ": prepared and calibrated on one batch\n";
  }
  return out.str();
}

std::string Job::info(const std::string& scheme) {
  auto& s = *state_;
  torch::manual_seed(s.seed);
  s.float_model = s.build_model();
  std::ostringstream out;
  int64_t parameters = 0;
  for (const auto& p : s.float_model->parameters())
    parameters += p.numel();
  out << "model: " << s.recipe.get<std::string>("model.type") << ", "
      << parameters << " parameters, "
      << human_bytes(static_cast<double>(s.weight_bytes(*s.float_model, "")))
      << " as fp32\n";
  if (!scheme.empty()) {
    auto model = s.copy_of_float("");
    const auto report = prepare(*model, s.scheme(scheme));
    s.calibrate_model(*model); // sizes the weight quantizers
    out << "scheme " << scheme << ":\n"
        << report.table() << "served weights: "
        << human_bytes(static_cast<double>(s.weight_bytes(*model, scheme)))
        << "\n";
  }
  return out.str();
}

} // namespace qat::train
