// Recipe composition, overrides and interpolation, and every error path with
// the place it names (file:line:column or the override).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "tests/test_helpers.h"
#include "trainers/recipe.h"

namespace qat::recipe {
namespace {
namespace fs = std::filesystem;

class RecipeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(dir_ / "model");
    fs::create_directories(dir_ / "trainer");
    write("model/cnn.yaml", "name: cnn\nwidths: [16, 32]\n");
    write("model/mlp.yaml", "name: mlp\nwidths: [256]\n");
    write(
        "trainer/short.yaml",
        "steps: 100\nlr: 0.1\nwarmup: 10\noptimizer: sgd\nclip: true\n");
    write(
        "main.yaml",
        "defaults:\n"
        "  - model: cnn\n"
        "  - trainer: short\n"
        "trainer:\n"
        "  lr: 0.05\n"
        "  warmup: ${trainer.steps}\n"
        "run_dir: ${env:QAT_TEST_RUNS,runs}/${model.name}\n");
  }
  void write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name) << text;
  }
  std::string path(const std::string& name) const {
    return (dir_ / name).string();
  }
  std::string error_of(
      const std::string& recipe,
      const std::vector<std::string>& overrides = {}) {
    return testing::error_message<RecipeError>(
        [&] { Recipe::load(path(recipe), overrides); });
  }
  testing::TempDir temp_;
  const fs::path& dir_ = temp_.path();
};

TEST_F(RecipeTest, DefaultsComposeAndTheRecipeHasTheLastWord) {
  const auto r = Recipe::load(path("main.yaml"));
  EXPECT_EQ(r.get<std::string>("model.name"), "cnn");
  EXPECT_EQ(
      r.get<std::vector<int64_t>>("model.widths"),
      (std::vector<int64_t>{16, 32}));
  EXPECT_EQ(r.get<double>("trainer.lr"), 0.05);     // the recipe's own
  EXPECT_EQ(r.get<int64_t>("trainer.steps"), 100);  // from the group
  EXPECT_EQ(r.get<int64_t>("trainer.warmup"), 100); // interpolated
  EXPECT_EQ(r.get<std::string>("run_dir"), "runs/cnn");
  EXPECT_EQ(r.origin("trainer.lr"), path("main.yaml") + ":5:7");
  EXPECT_EQ(r.origin("trainer.steps"), path("trainer/short.yaml") + ":1:8");
  EXPECT_FALSE(r.has("defaults"));
  EXPECT_EQ(r.get<int>("trainer.missing", 7), 7);
  // The dump reads back as the same recipe.
  EXPECT_EQ(YAML::Load(r.dump())["trainer"]["warmup"].as<int>(), 100);
}

TEST_F(RecipeTest, OverridesAreTypedAndCanPickAddAndDelete) {
  ::setenv("QAT_TEST_RUNS", "/scratch", 1);
  const auto r = Recipe::load(
      path("main.yaml"),
      {"model=mlp",
       "trainer.steps=300",
       "trainer.lr=1",
       "+trainer.seed=4",
       "~trainer.clip",
       "model.widths=[8, 8]"});
  ::unsetenv("QAT_TEST_RUNS");
  EXPECT_EQ(r.get<std::string>("model.name"), "mlp");
  EXPECT_EQ(r.get<int64_t>("trainer.steps"), 300);
  EXPECT_EQ(r.get<int64_t>("trainer.warmup"), 300); // resolved after overrides
  EXPECT_EQ(r.get<double>("trainer.lr"), 1.0);      // an int fits a float
  EXPECT_EQ(r.get<int>("trainer.seed"), 4);
  EXPECT_FALSE(r.has("trainer.clip"));
  EXPECT_EQ(
      r.get<std::vector<int64_t>>("model.widths"),
      (std::vector<int64_t>{8, 8}));
  EXPECT_EQ(r.get<std::string>("run_dir"), "/scratch/mlp");
  EXPECT_EQ(r.origin("trainer.steps"), "override 'trainer.steps=300'");
}

TEST_F(RecipeTest, PackagedGroupsFillOtherKeysAndListItemsHaveOrigins) {
  write(
      "packaged.yaml",
      "defaults:\n"
      "  - model@zoo.small: mlp\n"
      "  - model@zoo.big: cnn\n"
      "stages:\n"
      "  - {name: a, steps: 3}\n"
      "  - {name: b, steps: 4}\n");
  const auto r = Recipe::load(path("packaged.yaml"), {"model@zoo.big=mlp"});
  EXPECT_EQ(r.get<std::string>("zoo.small.name"), "mlp");
  EXPECT_EQ(
      r.get<std::string>("zoo.big.name"), "mlp"); // picked on the command line
  EXPECT_EQ(r.keys("zoo"), (std::vector<std::string>{"small", "big"}));
  EXPECT_EQ(r.keys("stages"), (std::vector<std::string>{"0", "1"}));
  EXPECT_EQ(r.get<int>("stages.1.steps"), 4);
  EXPECT_FALSE(r.has("stages.2.steps"));
  EXPECT_EQ(r.origin("stages.1.steps"), path("packaged.yaml") + ":6:22");
  EXPECT_EQ(r.origin("zoo.small.name"), path("model/mlp.yaml") + ":1:7");
  EXPECT_EQ(
      error_of("packaged.yaml", {"model@zoo.huge=cnn"}),
      "override 'model@zoo.huge=cnn': 'model@zoo.huge' is neither a key nor a "
      "config group of the recipe's defaults");
}

TEST_F(RecipeTest, BadOverridesNameTheOverride) {
  EXPECT_EQ(
      error_of("main.yaml", {"trainer.step=5"}),
      "override 'trainer.step=5': no key 'trainer.step' (did you mean "
      "'trainer.steps'?); add one with +trainer.step=5");
  EXPECT_EQ(
      error_of("main.yaml", {"trainer.steps=fast"}),
      "override 'trainer.steps=fast': 'trainer.steps' is an int (set at " +
          path("trainer/short.yaml") + ":1:8), but 'fast' is a string");
  EXPECT_EQ(
      error_of("main.yaml", {"+trainer.lr=3"}),
      "override '+trainer.lr=3': key 'trainer.lr' exists; set it with "
      "trainer.lr=...");
  EXPECT_EQ(
      error_of("main.yaml", {"~trainer.nothing"}),
      "override '~trainer.nothing': no key 'trainer.nothing' to delete");
  EXPECT_EQ(
      error_of("main.yaml", {"trainer.lr"}),
      "override 'trainer.lr': expected key=value, +key=value or ~key");
  const auto missing_option = error_of("main.yaml", {"model=vit"});
  EXPECT_NE(
      missing_option.find(
          path("main.yaml") + ":2:5: no option 'vit' in config group 'model'"),
      std::string::npos)
      << missing_option;
  EXPECT_NE(missing_option.find("options: cnn, mlp"), std::string::npos);
}

TEST_F(RecipeTest, FileErrorsNameFileLineAndColumn) {
  write("broken.yaml", "trainer:\n  lr: [0.1, 0.2\n  steps: 3\n");
  const auto malformed = error_of("broken.yaml");
  EXPECT_EQ(malformed.rfind(path("broken.yaml") + ":", 0), 0u) << malformed;
  EXPECT_NE(malformed.find("malformed YAML"), std::string::npos);
  EXPECT_EQ(
      error_of("absent.yaml"), path("absent.yaml") + ": no such recipe file");
  write("cycle.yaml", "a: ${b}\nb: x${a}\n");
  EXPECT_EQ(
      error_of("cycle.yaml"),
      path("cycle.yaml") + ":2:4: b: interpolation cycle: a -> b -> a");
  write("list.yaml", "n: 3\nl: [\"${n}\", 2]\n");
  EXPECT_EQ(
      Recipe::load(path("list.yaml")).get<std::vector<int64_t>>("l"),
      (std::vector<int64_t>{3, 2}));
  write("dangling.yaml", "a: ${nowhere.b}\n");
  EXPECT_EQ(
      error_of("dangling.yaml"),
      path("dangling.yaml") + ":1:4: a: ${nowhere.b}: no key 'nowhere.b'");
  write("env.yaml", "a: ${env:QAT_SURELY_UNSET_VARIABLE}\n");
  EXPECT_NE(
      error_of("env.yaml").find("QAT_SURELY_UNSET_VARIABLE is not set"),
      std::string::npos);
}

TEST_F(RecipeTest, TheSchemaRefusesUnknownKeysAndWrongTypes) {
  write(
      "schema.yaml",
      "model: {name: string, widths: list}\n"
      "trainer: {steps: int, lr: float, warmup: int, optimizer: string, "
      "clip: bool, seed: int}\n"
      "run_dir: string\n");
  const auto schema = Recipe::load_schema(path("schema.yaml"));
  Recipe::load(path("main.yaml")).check(schema);
  write("typo.yaml", "defaults:\n  - trainer: short\ntrainer:\n  warmpu: 3\n");
  try {
    Recipe::load(path("typo.yaml")).check(schema);
    ADD_FAILURE() << "unknown key accepted";
  } catch (const RecipeError& e) {
    EXPECT_EQ(
        std::string(e.what()),
        path("typo.yaml") +
            ":4:11: unknown key 'trainer.warmpu' (did you mean "
            "'trainer.warmup'?)");
  }
  try {
    Recipe::load(path("main.yaml"), {"+trainer.seed=four"}).check(schema);
    ADD_FAILURE() << "wrong type accepted";
  } catch (const RecipeError& e) {
    EXPECT_EQ(
        std::string(e.what()),
        "override '+trainer.seed=four': trainer.seed: expected an int, got "
        "string 'four'");
  }
  EXPECT_EQ(closest("optimiser", {"optimizer", "steps"}), "optimizer");
  EXPECT_EQ(closest("zzz", {"optimizer", "steps"}), "");
}

} // namespace
} // namespace qat::recipe
