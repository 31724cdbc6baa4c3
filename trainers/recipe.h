// YAML recipes, composed the way Hydra composes configs:
//
//   defaults:            # config groups, merged in order, then the recipe's
//     - model: cnn       # own keys (`_self_`, implicitly last): recipes/model/
//     - trainer: short   # cnn.yaml becomes the `model:` section, and so on
//   trainer:
//     lr: 0.01           # overrides what trainer/short.yaml says
//     warmup: ${trainer.steps}   # interpolation; ${env:VAR,default} too
//
// Command-line overrides, applied after composition:
//   a.b=c     set an existing key; c must fit its type (int, float, bool,
//             string, list, map)
//   group=x   pick another option of a config group in `defaults`
//   +a.b=c    add a key that does not exist
//   ~a.b      delete a key
//
// Every value remembers where it was set ("recipes/quickstart.yaml:12:5" or
// "override 'trainer.lr=0.1'"), and every error names that place: a
// malformed file by line and column, an unknown key with a "did you mean",
// a wrong type with the value that was expected.
//
// Example:
//   auto recipe = qat::recipe::Recipe::load("recipes/quickstart.yaml",
//                                          {"trainer.lr=0.05"});
//   recipe.check(qat::recipe::Recipe::load_schema("recipes/schema.yaml"));
//   double lr = recipe.get<double>("trainer.lr");
#pragma once

#include <yaml-cpp/yaml.h>

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace qat::recipe {

// Every recipe problem: the message starts with the place that caused it.
class RecipeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Recipe {
 public:
  // Loads and composes `path`, applies `overrides`, resolves interpolations.
  static Recipe load(
      const std::string& path,
      const std::vector<std::string>& overrides = {});
  // A schema is YAML of the same shape as a recipe whose leaves are type
  // names: int, float, bool, string, list, map (a map of anything), any;
  // numbers may add their range, lists their items' type ("int >= 1",
  // "float in (0, 1]", "list of int in [1, 65536]").
  static YAML::Node load_schema(const std::string& path);
  // Unknown keys, values of the wrong type and numbers out of their range are
  // errors naming where they were set, with the closest known key suggested.
  void check(const YAML::Node& schema) const;
  // The value at `key` against one rule in the schema's notation ("int in
  // [2, 8]"), for keys the schema cannot reach (inside a quant: map).
  void check(const std::string& key, const std::string& rule) const;

  bool has(const std::string& key) const;
  // The keys of the map at `key`, or "0".."n-1" for a list (items are
  // addressed by index: "quant.w4a4.rules.0.match").
  std::vector<std::string> keys(const std::string& key) const;
  bool is_scalar(const std::string& key) const;
  // The value at the dotted `key`, converted to T; throws RecipeError naming
  // the key, where it was set and the expected type.
  template <typename T>
  T get(const std::string& key) const;
  template <typename T>
  T get(const std::string& key, const T& fallback) const {
    return has(key) ? get<T>(key) : fallback;
  }
  const YAML::Node& root() const {
    return root_;
  }
  // Where `key` was set ("file:line:column", "file: override '...'", or the
  // recipe file for a key set nowhere).
  std::string origin(const std::string& key) const;
  // The composed recipe as YAML text (what --print-config shows and each run
  // saves).
  std::string dump() const;
  // Throws RecipeError "<where key was set>: <key>: <why>".
  [[noreturn]] void fail_at(const std::string& key, const std::string& why)
      const;

 private:
  void apply_override(const std::string& text);
  void resolve_interpolations();
  std::string resolve_text(
      const std::string& key,
      const std::string& text,
      std::vector<std::string>& visiting);
  YAML::Node node(const std::string& key) const;
  // origin(key), and the recipe file when the key was set in a config group.
  std::string place(const std::string& key) const;
  std::string file_; // the recipe file that was loaded
  YAML::Node root_;
  std::map<std::string, std::string> origins_;
};

// The known name closest to `name` by edit distance, or "" when none is close.
std::string closest(
    const std::string& name,
    const std::vector<std::string>& known);

} // namespace qat::recipe
