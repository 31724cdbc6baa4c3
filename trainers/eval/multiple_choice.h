// Multiple-choice benchmark tasks in lm-eval-harness' convention: a JSONL
// file of {"context": str, "choices": [str, ...], "label": int}, so that the
// HellaSwag / ARC / PIQA files a user has (converted to these three fields)
// evaluate any language model qat trains.
//
// Each choice scores the sum of its tokens' log-likelihoods given the context
// (ids = encode(context) + encode(choice), the context cut from the left to
// fit the window); accuracy picks the highest sum, length-normalised accuracy
// (acc_norm) the highest sum per byte of the choice, as lm-eval does.
#pragma once

#include <torch/types.h>

#include <functional>
#include <string>
#include <vector>

#include "trainers/data/tokenizer.h"
#include "trainers/task.h"

namespace qat::train {

class MultipleChoiceTask {
 public:
  // Throws std::runtime_error naming file:line for invalid lines, a missing
  // or mistyped field, a label outside the choices, or an empty file.
  static MultipleChoiceTask load(
      const std::string& path,
      const data::Tokenizer& tokenizer,
      int64_t window = 2048);

  // The file's stem ("hellaswag" for hellaswag.jsonl).
  const std::string& name() const {
    return name_;
  }
  int64_t size() const {
    return static_cast<int64_t>(examples_.size());
  }

  // int64 ids [1, time] -> logits [1, time, vocab] (on the CPU).
  using Logits = std::function<torch::Tensor(const torch::Tensor&)>;

  // Each example's choices' log-likelihoods.
  std::vector<std::vector<double>> log_likelihoods(const Logits& logits) const;

  struct Scores {
    double accuracy = 0, accuracy_norm = 0; // %
  };
  // This rank takes every world-th example; the totals are summed over the
  // ranks.
  Scores evaluate(const Logits& logits, const Shard& shard) const;

 private:
  struct Example {
    std::vector<int64_t> context;
    std::vector<std::vector<int64_t>> choices;
    std::vector<int64_t> choice_bytes;
    int64_t label = 0;
  };
  std::vector<double> score(const Example& e, const Logits& logits) const;

  std::string name_;
  std::vector<Example> examples_;
  int64_t window_ = 2048;
};

} // namespace qat::train
