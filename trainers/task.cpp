#include "trainers/task.h"

#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "trainers/data/bpe.h"
#include "trainers/data/datasets.h"
#include "trainers/data/text.h"
#include "trainers/error_text.h"
#include "trainers/models/classifiers.h"
#include "trainers/models/llama.h"
#include "trainers/models/llama_gguf.h"

namespace qat::train {
namespace F = torch::nn::functional;
using recipe::Recipe;

namespace {

torch::Tensor cross_entropy(
    const torch::Tensor& logits,
    const torch::Tensor& targets) {
  return F::cross_entropy(
      logits.reshape({-1, logits.size(-1)}).to(torch::kFloat),
      targets.reshape(-1));
}

// Evaluation in batches: the summed cross-entropy and the count of correct
// predictions over `count` examples.
struct Totals {
  double loss = 0, correct = 0, count = 0;

  // Over every rank of `shard`.
  void add_over(const Shard& shard) {
    if (shard.world == 1)
      return;
    std::vector<double> values{loss, correct, count};
    shard.sum(values);
    loss = values[0];
    correct = values[1];
    count = values[2];
  }
};

// This rank's contiguous slice of a global batch's rows.
torch::Tensor rows_of(const Shard& shard, const torch::Tensor& rows) {
  const int64_t each = rows.size(0) / shard.world;
  return rows.narrow(0, shard.rank * each, each);
}

bool evaluates(const Shard& shard, int64_t batch) {
  return batch % shard.world == shard.rank;
}

class ImageTask final : public Task {
 public:
  ImageTask(
      const Recipe& recipe,
      torch::Device device,
      uint64_t seed,
      Shard shard)
      : recipe_(recipe),
        device_(device),
        seed_(seed),
        shard_(std::move(shard)) {
    const auto name = recipe.get<std::string>("data.name");
    const auto validation_size = recipe.get<int64_t>("data.validation");
    batch_size_ = recipe.get<int64_t>("data.batch_size");
    eval_batch_size_ = recipe.get<int64_t>("data.eval_batch_size", 1000);
    // Held-out sizes leave at least one batch of training images.
    const auto hold_out = [&](const data::ImageDataset& from,
                              const char* key,
                              int64_t size,
                              uint64_t split_seed) {
      if (size >= from.size())
        recipe.fail_at(
            key,
            std::to_string(size) + " images held out of " +
                std::to_string(from.size()) + " leave none to train on");
      return data::split(from, size, split_seed);
    };
    if (name == "fashion_mnist") {
      auto fm = data::load_fashion_mnist();
      std::tie(train_, validation_) =
          hold_out(fm.train, "data.validation", validation_size, seed);
      test_ = std::move(fm.test);
    } else {
      // digits has no official test split: hold out data.test images first.
      auto [rest, held_out] = hold_out(
          data::load_digits(),
          "data.test",
          recipe.get<int64_t>("data.test"),
          seed);
      std::tie(train_, validation_) =
          hold_out(rest, "data.validation", validation_size, seed + 1);
      test_ = std::move(held_out);
    }
    for (auto* d : {&train_, &validation_, &test_}) {
      d->images = d->images.to(device);
      d->labels = d->labels.to(device);
    }
    per_epoch_ = train_.size() / batch_size_;
    if (per_epoch_ == 0)
      recipe.fail_at(
          "data.batch_size",
          std::to_string(batch_size_) + " is larger than the training set (" +
              std::to_string(train_.size()) + " images)");
    classes_ = train_.labels.max().item<int64_t>() + 1;
    std::printf(
        "data: %s, %lld train / %lld validation / %lld test images\n",
        name.c_str(),
        static_cast<long long>(train_.size()),
        static_cast<long long>(validation_.size()),
        static_cast<long long>(test_.size()));
  }

  Model build_model() const override {
    const auto type = recipe_.get<std::string>("model.type");
    const auto sizes = train_.images.sizes();
    const int64_t classes = recipe_.get<int64_t>("model.classes", 10);
    if (classes < classes_)
      recipe_.fail_at(
          "model.classes",
          std::to_string(classes) + " outputs for data with " +
              std::to_string(classes_) + " classes");
    Model model;
    if (type == "mlp") {
      model = std::make_shared<models::MlpImpl>(
          models::MlpOptions()
              .in_features(sizes[1] * sizes[2] * sizes[3])
              .hidden(recipe_.get<std::vector<int64_t>>("model.hidden"))
              .classes(classes));
    } else if (type == "resnet") {
      model = std::make_shared<models::ResNetImpl>(
          models::ResNetOptions()
              .in_channels(sizes[1])
              .widths(recipe_.get<std::vector<int64_t>>("model.widths"))
              .blocks_per_stage(
                  recipe_.get<int64_t>("model.blocks_per_stage", 1))
              .classes(classes));
    } else {
      recipe_.fail_at(
          "model.type",
          "'" + type + "' does not classify images; expected mlp or resnet");
    }
    model->to(device_);
    return model;
  }

  Output forward(torch::nn::Module& model, const torch::Tensor& inputs)
      const override {
    auto& classifier = dynamic_cast<models::ImageClassifier&>(model);
    Output out;
    out.features = classifier.features(inputs);
    out.logits = classifier.classify(out.features);
    return out;
  }

  torch::Tensor loss(const Output& output, const Batch& batch) const override {
    return cross_entropy(output.logits, batch.targets);
  }

  Batch train_batch(int64_t index) const override {
    const int64_t epoch = index / per_epoch_;
    if (epoch != cached_epoch_) {
      epoch_batches_ = data::batch_indices(
          train_.size(), batch_size_, true, seed_ * 1000003 + epoch, true);
      cached_epoch_ = epoch;
    }
    return take(train_, rows_of(shard_, epoch_batches_[index % per_epoch_]));
  }

  Batch calibration_batch(int64_t index) const override {
    if (calibration_order_.empty())
      calibration_order_ = data::batch_indices(
          train_.size(), batch_size_, true, seed_ + 7, true);
    return take(
        train_,
        rows_of(shard_, calibration_order_[index % calibration_order_.size()]));
  }

  Metrics evaluate(torch::nn::Module& model, Split split) const override {
    const auto& d = split == Split::test ? test_ : validation_;
    Totals t;
    const auto batches =
        data::batch_indices(d.size(), eval_batch_size_, false, 0);
    for (size_t i = 0; i < batches.size(); ++i) {
      if (!evaluates(shard_, static_cast<int64_t>(i)))
        continue;
      const Batch b = take(d, batches[i]);
      const auto logits = forward(model, b.inputs).logits.to(torch::kFloat);
      t.loss +=
          cross_entropy(logits, b.targets).item<double>() * b.targets.size(0);
      t.correct += logits.argmax(1).eq(b.targets).sum().item<double>();
      t.count += b.targets.size(0);
    }
    t.add_over(shard_);
    return {
        {"accuracy", 100.0 * t.correct / t.count}, {"loss", t.loss / t.count}};
  }

  const char* metric() const override {
    return "accuracy";
  }

 private:
  Batch take(const data::ImageDataset& d, const torch::Tensor& idx) const {
    const auto i = idx.to(device_);
    return {d.images.index_select(0, i), d.labels.index_select(0, i)};
  }

  const Recipe& recipe_;
  torch::Device device_;
  uint64_t seed_;
  Shard shard_;
  int64_t batch_size_, eval_batch_size_, per_epoch_, classes_ = 0;
  data::ImageDataset train_, validation_, test_;
  mutable std::vector<torch::Tensor> epoch_batches_, calibration_order_;
  mutable int64_t cached_epoch_ = -1;
};

class TextTask final : public Task {
 public:
  TextTask(
      const Recipe& recipe,
      torch::Device device,
      uint64_t seed,
      Shard shard)
      : recipe_(recipe),
        device_(device),
        seed_(seed),
        shard_(std::move(shard)) {
    batch_size_ = recipe.get<int64_t>("data.batch_size");
    context_ = recipe.get<int64_t>("data.context");
    eval_windows_ = recipe.get<int64_t>("data.eval_windows", 256);
    const double held_out = recipe.get<double>("data.held_out", 0.05);
    torch::Tensor train, held;
    if (recipe.get<std::string>("model.type") == "gguf") {
      // A pretrained model brings its own tokenizer.
      const auto path = model_path();
      pretrained_ = std::make_shared<gguf::File>(gguf::File::read(path));
      bpe_ = std::make_shared<data::BpeTokenizer>(
          data::BpeTokenizer::from_gguf(*pretrained_));
      const auto ids = bpe_->encode(data::kjv_text());
      const auto tokens = torch::tensor(ids, torch::kLong);
      const auto n_held =
          static_cast<int64_t>(static_cast<double>(tokens.numel()) * held_out);
      train = tokens.narrow(0, 0, tokens.numel() - n_held);
      held = tokens.narrow(0, tokens.numel() - n_held, n_held);
    } else {
      const auto kjv = data::load_kjv(held_out);
      train = kjv.train;
      held = kjv.validation;
    }
    // Held-out text: its first half validates, its second half tests.
    train_ = train.to(device);
    const int64_t half = held.numel() / 2;
    validation_ = held.narrow(0, 0, half).to(device);
    test_ = held.narrow(0, half, held.numel() - half).to(device);
    const int64_t shortest = std::min(train_.numel(), validation_.numel());
    if (context_ >= shortest)
      recipe.fail_at(
          "data.context",
          std::to_string(context_) + " tokens per window, but the " +
              (shortest == train_.numel() ? "training" : "validation") +
              " text has " + std::to_string(shortest) +
              " (data.held_out: " + std::to_string(held_out) + ")");
    std::printf(
        "data: kjv, %lld train / %lld validation / %lld test %s, context %lld\n",
        static_cast<long long>(train_.numel()),
        static_cast<long long>(validation_.numel()),
        static_cast<long long>(test_.numel()),
        bpe_ ? "tokens" : "bytes",
        static_cast<long long>(context_));
  }

  Model build_model() const override {
    const auto type = recipe_.get<std::string>("model.type");
    Model model;
    if (type == "gguf") {
      model = models::load_llama_gguf(*pretrained_).ptr();
    } else if (type == "llama") {
      auto config = models::LlamaConfig()
                        .vocab_size(data::ByteTokenizer::kVocabSize)
                        .hidden_size(recipe_.get<int64_t>("model.hidden_size"))
                        .intermediate_size(
                            recipe_.get<int64_t>("model.intermediate_size"))
                        .num_hidden_layers(
                            recipe_.get<int64_t>("model.num_hidden_layers"))
                        .num_attention_heads(
                            recipe_.get<int64_t>("model.num_attention_heads"))
                        .num_key_value_heads(
                            recipe_.get<int64_t>("model.num_key_value_heads"))
                        .max_position_embeddings(context_);
      try {
        config.validate();
      } catch (const std::exception& e) {
        recipe_.fail_at("model", error_text(e));
      }
      model = std::make_shared<models::LlamaForCausalLMImpl>(config);
    } else {
      recipe_.fail_at(
          "model.type",
          "'" + type + "' is no language model; expected llama or gguf");
    }
    model->to(device_);
    return model;
  }

  const gguf::File* gguf_source() const override {
    return pretrained_.get();
  }

  std::string sample(
      torch::nn::Module& model,
      const std::string& prompt,
      int64_t tokens) const override {
    auto& lm = dynamic_cast<models::LlamaForCausalLMImpl&>(model);
    const std::vector<int64_t> ids = bpe_ ? bpe_->encode(prompt) : [&] {
      const auto bytes = data::ByteTokenizer().encode(prompt);
      return std::vector<int64_t>(
          bytes.data_ptr<int64_t>(), bytes.data_ptr<int64_t>() + bytes.numel());
    }();
    const auto out =
        lm.generate(
              torch::tensor(ids, torch::kLong).unsqueeze(0).to(device_), tokens)
            .to(torch::kCPU)[0];
    const std::vector<int64_t> all(
        out.data_ptr<int64_t>(), out.data_ptr<int64_t>() + out.numel());
    const std::vector<int64_t> continuation(
        all.begin() + static_cast<int64_t>(ids.size()), all.end());
    return bpe_ ? bpe_->decode(continuation)
                : data::ByteTokenizer().decode(
                      torch::tensor(continuation, torch::kLong));
  }

  Output forward(torch::nn::Module& model, const torch::Tensor& inputs)
      const override {
    auto& lm = dynamic_cast<models::LlamaForCausalLMImpl&>(model);
    Output out;
    out.features = lm.model(inputs);
    out.logits = lm.head(out.features);
    return out;
  }

  torch::Tensor loss(const Output& output, const Batch& batch) const override {
    return cross_entropy(output.logits, batch.targets);
  }

  Batch train_batch(int64_t index) const override {
    return split_window(rows_of(
        shard_,
        data::sample_windows(
            train_,
            batch_size_,
            context_,
            seed_ * 1000003 + static_cast<uint64_t>(index))));
  }

  Batch calibration_batch(int64_t index) const override {
    return split_window(rows_of(
        shard_,
        data::sample_windows(
            train_,
            batch_size_,
            context_,
            seed_ + 7919 + static_cast<uint64_t>(index))));
  }

  // Perplexity per byte over consecutive windows of the split (each byte
  // predicted once, with up to `context` bytes before it in its window).
  Metrics evaluate(torch::nn::Module& model, Split split) const override {
    const auto& tokens = split == Split::test ? test_ : validation_;
    const int64_t windows =
        std::min(eval_windows_, (tokens.numel() - 1) / context_);
    Totals t;
    for (int64_t begin = 0; begin < windows; begin += batch_size_) {
      if (!evaluates(shard_, begin / batch_size_))
        continue;
      const int64_t n = std::min(batch_size_, windows - begin);
      const auto block = tokens.narrow(0, begin * context_, n * context_ + 1);
      const auto inputs = block.narrow(0, 0, n * context_).view({n, context_});
      const auto targets = block.narrow(0, 1, n * context_).view({n, context_});
      t.loss += loss(forward(model, inputs), {inputs, targets}).item<double>() *
          static_cast<double>(n * context_);
      t.count += static_cast<double>(n * context_);
    }
    t.add_over(shard_);
    const double mean = t.loss / t.count;
    return {{"perplexity", std::exp(mean)}, {"loss", mean}};
  }

  const char* metric() const override {
    return "perplexity";
  }

 private:
  Batch split_window(const torch::Tensor& windows) const {
    const auto w = windows.to(device_);
    return {w.narrow(1, 0, context_), w.narrow(1, 1, context_)};
  }

  // model.path as given, or in the models folder of qat's cache (where
  // scripts/setup.sh links SmolLM2's GGUF).
  std::string model_path() const {
    const auto path = recipe_.get<std::string>("model.path");
    if (std::filesystem::exists(path) ||
        std::filesystem::path(path).is_absolute())
      return path;
    return (std::filesystem::path(data::data_cache_dir()).parent_path() /
            "models" / path)
        .string();
  }

  const Recipe& recipe_;
  torch::Device device_;
  uint64_t seed_;
  Shard shard_;
  int64_t batch_size_, context_, eval_windows_;
  torch::Tensor train_, validation_, test_;
  std::shared_ptr<gguf::File> pretrained_;
  std::shared_ptr<data::BpeTokenizer> bpe_;
};

} // namespace

std::unique_ptr<Task> make_task(
    const Recipe& recipe,
    torch::Device device,
    uint64_t seed,
    Shard shard) {
  if (const auto batch = recipe.get<int64_t>("data.batch_size");
      batch % shard.world != 0) {
    recipe.fail_at(
        "data.batch_size",
        "the global batch of " + std::to_string(batch) +
            " does not split evenly over " + std::to_string(shard.world) +
            " ranks");
  }
  const auto name = recipe.get<std::string>("data.name");
  if (name == "fashion_mnist" || name == "digits")
    return std::make_unique<ImageTask>(recipe, device, seed, std::move(shard));
  if (name == "kjv")
    return std::make_unique<TextTask>(recipe, device, seed, std::move(shard));
  recipe.fail_at(
      "data.name",
      "unknown data set '" + name + "'; expected fashion_mnist, digits or kjv");
}

} // namespace qat::train
