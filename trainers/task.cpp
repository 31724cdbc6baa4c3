#include "trainers/task.h"

#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "trainers/data/corpus.h"
#include "trainers/data/datasets.h"
#include "trainers/data/sources.h"
#include "trainers/data/text.h"
#include "trainers/error_text.h"
#include "trainers/eval/multiple_choice.h"
#include "trainers/models/classifiers.h"
#include "trainers/models/llama.h"
#include "trainers/models/sources.h"

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

// A data file as given, or in qat's data cache (where scripts/setup.sh puts
// the packaged text).
std::string data_path(const std::string& path) {
  if (std::filesystem::exists(path) ||
      std::filesystem::path(path).is_absolute() ||
      path.find_first_of("*?[") != std::string::npos)
    return path;
  const auto cached = std::filesystem::path(data::data_cache_dir()) / path;
  return std::filesystem::exists(cached) ? cached.string() : path;
}

// The windows of length + 1 tokens at `starts` [batch, 1] as inputs and
// next-token targets [batch, length]; targets the data does not train (its
// mask) are -100, which cross_entropy ignores.
Batch windows_at(
    const data::TokenArray& tokens,
    const torch::Tensor& starts,
    int64_t length) {
  const int64_t batch = starts.size(0);
  torch::Tensor inputs = torch::empty({batch, length}, torch::kLong);
  torch::Tensor targets = torch::empty({batch, length}, torch::kLong);
  auto* in = inputs.data_ptr<int64_t>();
  auto* out = targets.data_ptr<int64_t>();
  const auto* s = starts.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t i = 0; i < length; ++i) {
      const int64_t at = s[b] + i;
      in[b * length + i] = tokens.token(at);
      out[b * length + i] =
          tokens.trained(at + 1) ? tokens.token(at + 1) : -100;
    }
  }
  return {inputs, targets};
}

// The text tasks: a language model from model.type (trainers/models/
// sources.h) on the King James Bible (data.name kjv) or on the user's data
// (data.type text | jsonl | chat | tokens at data.path); next-token
// cross-entropy over the targets the data marks (all, or the assistant's
// turns of a chat), perplexity per token (per byte for the byte model), and
// the multiple-choice tasks of eval.multiple_choice.
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
    model_ = models::make_language_model(recipe, context_);
    tokenizer_ = model_->tokenizer();
    load_data(held_out);
    const int64_t shortest = std::min(train_.size(), validation_.size());
    if (context_ >= shortest)
      recipe.fail_at(
          "data.context",
          std::to_string(context_) + " tokens per window, but the " +
              (shortest == train_.size() ? "training" : "validation") +
              " data has " + std::to_string(shortest) +
              " (data.held_out: " + std::to_string(held_out) + ")");
    for (const auto& path :
         recipe.get<std::vector<std::string>>("eval.multiple_choice", {})) {
      try {
        choice_tasks_.push_back(
            MultipleChoiceTask::load(data_path(path), *tokenizer_, context_));
      } catch (const std::exception& e) {
        recipe.fail_at("eval.multiple_choice", error_text(e));
      }
    }
    std::printf(
        "data: %s, %lld train / %lld validation / %lld test %s, context %lld; "
        "model %s\n",
        data_name_.c_str(),
        static_cast<long long>(train_.size()),
        static_cast<long long>(validation_.size()),
        static_cast<long long>(test_.size()),
        tokenizer_->vocab_size() == 256 ? "bytes" : "tokens",
        static_cast<long long>(context_),
        model_->describe().c_str());
  }

  Model build_model() const override {
    Model model = model_->build().ptr();
    model->to(device_);
    return model;
  }

  bool pretrained() const override {
    return model_->pretrained();
  }

  const models::LanguageModelSource* language_model() const override {
    return model_.get();
  }

  std::string sample(
      torch::nn::Module& model,
      const std::string& prompt,
      int64_t tokens) const override {
    auto& lm = dynamic_cast<models::LlamaForCausalLMImpl&>(model);
    const std::vector<int64_t> ids = tokenizer_->encode(prompt);
    const auto out =
        lm.generate(
              torch::tensor(ids, torch::kLong).unsqueeze(0).to(device_), tokens)
            .to(torch::kCPU)[0];
    const std::vector<int64_t> all(
        out.data_ptr<int64_t>(), out.data_ptr<int64_t>() + out.numel());
    return tokenizer_->decode(std::vector<int64_t>(
        all.begin() + static_cast<int64_t>(ids.size()), all.end()));
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
    // Targets of -100 (untrained) are ignored, as cross_entropy's default.
    return cross_entropy(output.logits, batch.targets);
  }

  Batch train_batch(int64_t index) const override {
    return windows(train_, seed_ * 1000003 + static_cast<uint64_t>(index));
  }

  Batch calibration_batch(int64_t index) const override {
    return windows(train_, seed_ + 7919 + static_cast<uint64_t>(index));
  }

  // Perplexity over consecutive windows of the split (each trained target
  // predicted once, with up to `context` tokens before it in its window).
  Metrics evaluate(torch::nn::Module& model, Split split) const override {
    const auto& tokens = split == Split::test ? test_ : validation_;
    const int64_t windows =
        std::min(eval_windows_, (tokens.size() - 1) / context_);
    Totals t;
    for (int64_t begin = 0; begin < windows; begin += batch_size_) {
      if (!evaluates(shard_, begin / batch_size_))
        continue;
      const int64_t n = std::min(batch_size_, windows - begin);
      const auto starts = torch::arange(begin, begin + n, torch::kLong)
                              .mul(context_)
                              .unsqueeze(1);
      const Batch b = to_batch(tokens, starts);
      const auto counted = b.targets.ne(-100).sum().item<double>();
      if (counted == 0)
        continue;
      t.loss += loss(forward(model, b.inputs), b).item<double>() * counted;
      t.count += counted;
    }
    t.add_over(shard_);
    const double mean = t.loss / t.count;
    Metrics m{{"perplexity", std::exp(mean)}, {"loss", mean}};
    if (split == Split::test) {
      for (const auto& task : choice_tasks_) {
        const auto scores = task.evaluate(
            [&](const torch::Tensor& ids) {
              return forward(model, ids.to(device_)).logits.to(torch::kCPU);
            },
            shard_);
        m[task.name() + " acc"] = scores.accuracy;
        m[task.name() + " acc_norm"] = scores.accuracy_norm;
      }
    }
    return m;
  }

  std::vector<std::string> extra_metrics() const override {
    std::vector<std::string> out;
    for (const auto& task : choice_tasks_) {
      out.push_back(task.name() + " acc");
      out.push_back(task.name() + " acc_norm");
    }
    return out;
  }

  const char* metric() const override {
    return "perplexity";
  }

 private:
  void load_data(double held_out) {
    if (recipe_.has("data.name")) {
      // The built-in corpus: the KJV text; its last held_out fraction (a
      // contiguous tail, so no verse is on both sides) is held out.
      const auto name = recipe_.get<std::string>("data.name");
      if (name != "kjv")
        recipe_.fail_at(
            "data.name", "'" + name + "' is no text data set; expected kjv");
      data_name_ = "kjv";
      const auto ids = tokenizer_->encode(data::kjv_text());
      const auto n = static_cast<int64_t>(ids.size());
      const auto n_held =
          static_cast<int64_t>(static_cast<double>(n) * held_out);
      const auto slice = [&](int64_t begin, int64_t end) {
        return data::TokenArray::owned(
            std::vector<uint32_t>(ids.begin() + begin, ids.begin() + end));
      };
      train_ = slice(0, n - n_held);
      const int64_t half = n_held / 2;
      validation_ = slice(n - n_held, n - n_held + half);
      test_ = slice(n - n_held + half, n);
      return;
    }
    const auto type = recipe_.get<std::string>("data.type");
    data_name_ = type + " " + recipe_.get<std::string>("data.path");
    // The options' words, read (and refused by key) before any file is.
    const auto choice =
        [&](const char* key, const char* first, const char* second) {
          const auto value = recipe_.get<std::string>(key, first);
          if (value != first && value != second)
            recipe_.fail_at(
                key, "'" + value + "' is neither " + first + " nor " + second);
          return value == second;
        };
    const bool wide = choice("data.dtype", "uint16", "uint32");
    data::SourceOptions o;
    o.path = data_path(recipe_.get<std::string>("data.path"));
    o.paragraphs = choice("data.documents", "file", "paragraphs");
    o.text_field = recipe_.get<std::string>("data.text_field", o.text_field);
    o.replace_invalid_utf8 = choice("data.invalid_utf8", "error", "replace");
    data::Corpus corpus;
    try {
      if (type == "tokens") {
        corpus = data::map_token_files(
            o.path,
            wide ? 4 : 2,
            recipe_.get<std::string>("data.validation_path", ""),
            held_out,
            tokenizer_->eos_id());
      } else {
        const auto source = data::make_document_source(type, o, tokenizer_);
        data::CorpusOptions c;
        c.held_out = held_out;
        c.seed = recipe_.get<int64_t>("data.split_seed", 0);
        c.cache_dir = data::data_cache_dir();
        c.progress = [](const std::string& line) {
          std::printf("%s\n", line.c_str());
          std::fflush(stdout);
        };
        corpus = data::tokenize_corpus(*source, *tokenizer_, c);
      }
    } catch (const std::invalid_argument& e) {
      recipe_.fail_at("data.type", error_text(e));
    } catch (const std::runtime_error& e) {
      recipe_.fail_at("data.path", error_text(e));
    }
    train_ = corpus.train;
    validation_ = corpus.validation;
    test_ = corpus.test;
    if (type == "tokens") {
      // Ids past the vocabulary would index past the embedding table.
      const int64_t largest = std::max(
          {train_.max_token(), validation_.max_token(), test_.max_token()});
      if (largest >= tokenizer_->vocab_size())
        recipe_.fail_at(
            "data.path",
            "token id " + std::to_string(largest) +
                " is outside the model's vocabulary of " +
                std::to_string(tokenizer_->vocab_size()));
    }
  }

  Batch windows(const data::TokenArray& tokens, uint64_t seed) const {
    const auto starts = torch::randint(
        0,
        tokens.size() - context_,
        {batch_size_, 1},
        at::detail::createCPUGenerator(seed),
        torch::kLong);
    return to_batch(tokens, rows_of(shard_, starts).contiguous());
  }

  Batch to_batch(const data::TokenArray& tokens, const torch::Tensor& starts)
      const {
    const Batch b = windows_at(tokens, starts, context_);
    return {b.inputs.to(device_), b.targets.to(device_)};
  }

  const Recipe& recipe_;
  torch::Device device_;
  uint64_t seed_;
  Shard shard_;
  int64_t batch_size_, context_, eval_windows_;
  std::unique_ptr<models::LanguageModelSource> model_;
  std::shared_ptr<const data::Tokenizer> tokenizer_;
  data::TokenArray train_, validation_, test_;
  std::vector<MultipleChoiceTask> choice_tasks_;
  std::string data_name_;
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
  if (recipe.has("data.type")) {
    if (recipe.has("data.name"))
      recipe.fail_at(
          "data.type",
          "give data.name (a built-in data set) or data.type (your data), "
          "not both");
    const auto type = recipe.get<std::string>("data.type");
    auto types = data::document_source_types();
    types.push_back("tokens");
    if (std::find(types.begin(), types.end(), type) == types.end()) {
      std::string known;
      for (const auto& t : types)
        known += (known.empty() ? "" : ", ") + t;
      recipe.fail_at(
          "data.type", "unknown data type '" + type + "'; expected " + known);
    }
    return std::make_unique<TextTask>(recipe, device, seed, std::move(shard));
  }
  const auto name = recipe.get<std::string>("data.name");
  if (name == "fashion_mnist" || name == "digits")
    return std::make_unique<ImageTask>(recipe, device, seed, std::move(shard));
  if (name == "kjv")
    return std::make_unique<TextTask>(recipe, device, seed, std::move(shard));
  recipe.fail_at(
      "data.name",
      "unknown data set '" + name +
          "'; expected fashion_mnist, digits or kjv (or data.type for your "
          "own data: text, jsonl, chat, tokens)");
}

} // namespace qat::train
