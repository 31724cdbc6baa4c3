#include "trainers/job/training.h"

#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>

#include "qat/fake_quant.h"
#include "qat/modules/conv.h"
#include "trainers/checkpoint.h"
#include "trainers/report.h"

namespace qat::train {
namespace fs = std::filesystem;
namespace F = torch::nn::functional;

LoopConfig LoopConfig::read(const recipe::Recipe& r, const std::string& p) {
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

double LoopConfig::lr_factor(int64_t step) const {
  if (step < warmup)
    return static_cast<double>(step + 1) / static_cast<double>(warmup);
  const double progress = static_cast<double>(step - warmup) /
      static_cast<double>(std::max<int64_t>(1, steps - warmup));
  return min_lr_ratio +
      (1 - min_lr_ratio) * 0.5 * (1 + std::cos(M_PI * progress));
}

namespace {

void freeze_bn(torch::nn::Module& model, bool frozen) {
  for (const auto& m : model.modules(/*include_self=*/false)) {
    if (auto* conv = m->as<QuantConv2dImpl>())
      conv->freeze_bn_stats(frozen);
  }
}

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
    JobContext& job,
    torch::nn::Module& model,
    const Batch& batch,
    const LoopConfig& c,
    torch::nn::Module* teacher) {
  Autocast autocast(c.autocast_bf16 && job.device.is_cuda());
  const Output out = job.task().forward(model, batch.inputs);
  torch::Tensor loss = c.ce * job.task().loss(out, batch);
  if (!teacher || !c.distills())
    return loss;
  Output target;
  {
    torch::NoGradGuard no_grad;
    target = job.task().forward(*teacher, batch.inputs);
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

} // namespace

void train(
    JobContext& job,
    const std::string& stage,
    torch::nn::Module& model,
    const LoopConfig& c,
    torch::nn::Module* teacher,
    bool quantized) {
  std::vector<double> base_lrs;
  auto optimizer = make_optimizer(c, model, base_lrs);
  const auto every = job.recipe.get<int64_t>("trainer.checkpoint.every", 0);
  Checkpoints checkpoints(
      (fs::path(job.run_dir) / "checkpoints" / stage).string(),
      static_cast<int>(job.recipe.get<int64_t>("trainer.checkpoint.keep", 3)));
  int64_t step = 0;
  bool finished = false;
  std::string last_good = "none was written yet";
  if (job.options.resume) {
    // Every rank reads the same file (run.dir is shared); rank 0 wrote it
    // before a barrier. Whatever the world size that wrote it: batches
    // depend on the step alone.
    if (auto found = checkpoints.latest(job.options.warn)) {
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
    const auto steps = job.ranks.values(
        static_cast<double>(step), stage + ": agreeing on the checkpoint");
    if (!Ranks::all_equal(steps)) {
      const auto [low, high] = std::minmax_element(steps.begin(), steps.end());
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
    job.ranks.group().broadcast(state, stage + ": broadcasting rank 0's model");
  }
  if (finished)
    return;
  if (teacher)
    teacher->eval();
  const auto log_every = job.recipe.get<int64_t>("trainer.log_every", 50);
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
  const auto sync = job.ranks.group().data_parallel(parameters, some_unused);
  const bool several = job.ranks.group().world_size() > 1;
  // Without synchronous BN each rank's running statistics follow its own
  // shard; as DDP (broadcast_buffers), rank 0's become everyone's, here
  // after each step so that checkpoints and the end agree.
  std::vector<torch::Tensor> bn_statistics;
  if (several && !job.ranks.sync_bn()) {
    for (const auto& m : model.modules(/*include_self=*/false)) {
      if (auto* conv = m->as<QuantConv2dImpl>();
          conv && !conv->batch_norm.is_empty()) {
        bn_statistics.push_back(conv->batch_norm->running_mean);
        bn_statistics.push_back(conv->batch_norm->running_var);
      }
    }
  }
  const auto save = [&](bool final) {
    const std::string path = job.ranks.is_main()
        ? checkpoints.save(model, optimizer.get(), step, job.config_text, final)
        : "step " + std::to_string(step) + " in " + checkpoints.dir();
    // No rank goes on (or reads it) before the file is whole, nor calls it
    // good before rank 0 has said so.
    job.ranks.group().barrier(
        stage + ": writing the checkpoint of step " + std::to_string(step));
    last_good = path;
  };

  Progress progress(stage, step, c.steps, log_every);
  const auto started = std::chrono::steady_clock::now();
  const double communication_at_start =
      job.ranks.group().communication_seconds();
  model.train();
  try {
    while (step < c.steps) {
      job.ranks.set_activity(stage + ": step " + std::to_string(step + 1));
      if (quantized)
        apply_qat_schedule(model, c, step);
      const double factor = c.lr_factor(step);
      for (size_t g = 0; g < base_lrs.size(); ++g)
        optimizer->param_groups()[g].options().set_lr(base_lrs[g] * factor);
      optimizer->zero_grad();
      double loss_sum = 0;
      for (int64_t micro = 0; micro < c.accumulate; ++micro) {
        const Batch batch = job.task().train_batch(step * c.accumulate + micro);
        const torch::Tensor loss = loss_of(job, model, batch, c, teacher);
        loss_sum += loss.item<double>();
        // Gradients are averaged over the ranks in the last micro-batch's
        // backward only; the earlier ones accumulate locally.
        sync->before_backward(loss, micro == c.accumulate - 1);
        job.ranks.group().guarded(
            job.ranks.activity() + ": backward with the gradient all-reduce",
            [&] { (loss / static_cast<double>(c.accumulate)).backward(); });
      }
      // The mean over the ranks, one all-reduce per step however many
      // micro-batches: what is logged, and a NaN on any rank stops them
      // all at the same step, before the weights change.
      std::vector<double> total{loss_sum};
      job.ranks.group().all_reduce(
          total, ReduceOp::sum, job.ranks.activity() + ": averaging the loss");
      const double loss_mean = total[0] /
          static_cast<double>(c.accumulate * job.ranks.group().world_size());
      if (!std::isfinite(loss_mean)) {
        throw TrainingError(
            stage + ": step " + std::to_string(step + 1) + ": the loss is " +
            (std::isnan(loss_mean) ? "nan" : "inf") +
            (several ? " (mean over the ranks)" : "") +
            "; stopped before updating the weights (last good checkpoint: " +
            last_good + "). Lower the learning rate or enable clip_grad_norm.");
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
        job.ranks.group().broadcast(
            bn_statistics, stage + ": rank 0's BN statistics");
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
            job.ranks.group().communication_seconds() - communication_at_start;
      job.write_metrics(stage, step, logged);
      progress.update(step, loss_mean, base_lrs[0] * factor);
      if (c.eval_every > 0 && step % c.eval_every == 0 && step < c.steps) {
        auto m = job.evaluate(model, Split::validation);
        job.write_metrics(stage, step, m, {{"split", "validation"}});
      }
      const bool halt =
          stage == job.options.halt_stage && step == job.options.halt_step;
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
  job.ranks.check_models_agree(stage, model, [&](const std::string& digests) {
    job.write_metrics(stage, -1, {}, {{"rank_digests", digests}});
  });
  if (quantized) { // leave the schedule's end state: observers frozen
    set_observers(model, false);
    set_fake_quant(model, true);
  }
}

} // namespace qat::train
