#include "trainers/eval/multiple_choice.h"

#include <torch/torch.h>

#include <filesystem>
#include <stdexcept>

#include "trainers/data/sources.h"

namespace qat::train {

MultipleChoiceTask MultipleChoiceTask::load(
    const std::string& path,
    const data::Tokenizer& tokenizer,
    int64_t window) {
  MultipleChoiceTask task;
  task.name_ = std::filesystem::path(path).stem().string();
  task.window_ = window;
  if (!std::filesystem::is_regular_file(path))
    throw std::runtime_error(path + ": no such file");
  data::for_each_json_line(
      path, false, [&](const nlohmann::json& j, const std::string& where) {
        if (!j.is_object() || !j.contains("context") ||
            !j["context"].is_string())
          throw std::runtime_error(where + ": no string field 'context'");
        if (!j.contains("choices") || !j["choices"].is_array() ||
            j["choices"].size() < 2)
          throw std::runtime_error(
              where + ": 'choices' must be a list of at least two strings");
        if (!j.contains("label") || !j["label"].is_number_integer())
          throw std::runtime_error(where + ": no integer field 'label'");
        Example e;
        e.context = tokenizer.encode(j["context"].get<std::string>());
        if (e.context.empty()) {
          if (tokenizer.bos_id() < 0)
            throw std::runtime_error(
                where + ": an empty context needs a tokenizer with BOS");
          e.context.push_back(tokenizer.bos_id());
        }
        for (const auto& choice : j["choices"]) {
          if (!choice.is_string() || choice.get<std::string>().empty())
            throw std::runtime_error(
                where + ": every choice must be a non-empty string");
          const auto text = choice.get<std::string>();
          e.choices.push_back(tokenizer.encode(text));
          e.choice_bytes.push_back(static_cast<int64_t>(text.size()));
        }
        e.label = j["label"].get<int64_t>();
        if (e.label < 0 || e.label >= static_cast<int64_t>(e.choices.size()))
          throw std::runtime_error(
              where + ": label " + std::to_string(e.label) +
              " is not one of the " + std::to_string(e.choices.size()) +
              " choices");
        task.examples_.push_back(std::move(e));
      });
  if (task.examples_.empty())
    throw std::runtime_error(path + ": no examples");
  return task;
}

std::vector<double> MultipleChoiceTask::score(
    const Example& e,
    const Logits& logits) const {
  std::vector<double> out;
  for (const auto& choice : e.choices) {
    std::vector<int64_t> ids = e.context;
    ids.insert(ids.end(), choice.begin(), choice.end());
    // Inputs are ids[:-1]; keep the last window of them.
    const int64_t inputs = static_cast<int64_t>(ids.size()) - 1;
    const int64_t drop = std::max<int64_t>(0, inputs - window_);
    const auto t =
        torch::tensor(ids, torch::kLong).narrow(0, drop, inputs - drop + 1);
    const auto log_probs = torch::log_softmax(
        logits(t.narrow(0, 0, t.size(0) - 1).unsqueeze(0)).to(torch::kDouble),
        -1)[0];
    const int64_t n = static_cast<int64_t>(choice.size());
    const int64_t first = log_probs.size(0) - n;
    const auto targets = t.narrow(0, t.size(0) - n, n);
    out.push_back(log_probs.narrow(0, first, n)
                      .gather(1, targets.unsqueeze(1))
                      .sum()
                      .item<double>());
  }
  return out;
}

std::vector<std::vector<double>> MultipleChoiceTask::log_likelihoods(
    const Logits& logits) const {
  torch::NoGradGuard no_grad;
  std::vector<std::vector<double>> out;
  for (const auto& e : examples_)
    out.push_back(score(e, logits));
  return out;
}

MultipleChoiceTask::Scores MultipleChoiceTask::evaluate(
    const Logits& logits,
    const Shard& shard) const {
  torch::NoGradGuard no_grad;
  std::vector<double> totals{0, 0, 0}; // correct, correct per byte, examples
  for (size_t i = 0; i < examples_.size(); ++i) {
    if (static_cast<int64_t>(i) % shard.world != shard.rank)
      continue;
    const Example& e = examples_[i];
    const auto ll = score(e, logits);
    size_t best = 0, best_norm = 0;
    for (size_t c = 1; c < ll.size(); ++c) {
      if (ll[c] > ll[best])
        best = c;
      if (ll[c] / e.choice_bytes[c] > ll[best_norm] / e.choice_bytes[best_norm])
        best_norm = c;
    }
    totals[0] += static_cast<int64_t>(best) == e.label;
    totals[1] += static_cast<int64_t>(best_norm) == e.label;
    totals[2] += 1;
  }
  if (shard.world > 1)
    shard.sum(totals);
  return {100.0 * totals[0] / totals[2], 100.0 * totals[1] / totals[2]};
}

} // namespace qat::train
