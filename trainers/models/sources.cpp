#include "trainers/models/sources.h"

#include <filesystem>

#include "trainers/data/datasets.h"

namespace qat::models {
namespace {

struct ModelType {
  const char* name;
  std::unique_ptr<LanguageModelSource> (*make)(const recipe::Recipe&, int64_t);
};

constexpr ModelType kModelTypes[] = {
    {"llama", make_scratch_llama},
    {"gguf", make_gguf_llama},
    {"hf", make_hf_llama},
};

} // namespace

std::vector<std::string> language_model_types() {
  std::vector<std::string> out;
  for (const auto& t : kModelTypes)
    out.emplace_back(t.name);
  return out;
}

std::unique_ptr<LanguageModelSource> make_language_model(
    const recipe::Recipe& recipe,
    int64_t context) {
  const auto type = recipe.get<std::string>("model.type");
  for (const auto& t : kModelTypes) {
    if (type == t.name)
      return t.make(recipe, context);
  }
  std::string known;
  for (const auto& t : kModelTypes)
    known += (known.empty() ? "" : ", ") + std::string(t.name);
  recipe.fail_at(
      "model.type", "'" + type + "' is no language model; expected " + known);
}

std::string model_path(const recipe::Recipe& recipe) {
  const auto path = recipe.get<std::string>("model.path");
  if (std::filesystem::exists(path) ||
      std::filesystem::path(path).is_absolute())
    return path;
  return (std::filesystem::path(data::data_cache_dir()).parent_path() /
          "models" / path)
      .string();
}

void check_context(
    const recipe::Recipe& recipe,
    const LlamaConfig& config,
    int64_t context) {
  if (context > config.max_position_embeddings())
    recipe.fail_at(
        "data.context",
        std::to_string(context) + " tokens is longer than the model's " +
            "max_position_embeddings (" +
            std::to_string(config.max_position_embeddings()) + ")");
  if (config.sliding_window() > 0 && context > config.sliding_window())
    recipe.fail_at(
        "data.context",
        std::to_string(context) + " tokens is longer than the model's " +
            "sliding_window (" + std::to_string(config.sliding_window()) +
            "), which this decoder does not compute; use a context of at " +
            "most the window");
}

} // namespace qat::models
