// Recipe composition, overrides and interpolation, and every error path with
// the place it names (file:line:column or the override).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
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
  EXPECT_EQ(
      r.origin("trainer.steps"),
      path("main.yaml") + ": override 'trainer.steps=300'");
  // A key set nowhere is the recipe file's.
  EXPECT_EQ(r.origin("no.such.key"), path("main.yaml"));
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
      path("packaged.yaml") +
          ": override 'model@zoo.huge=cnn': 'model@zoo.huge' is neither a key nor a "
          "config group of the recipe's defaults");
}

TEST_F(RecipeTest, BadOverridesNameTheOverride) {
  EXPECT_EQ(
      error_of("main.yaml", {"trainer.step=5"}),
      path("main.yaml") +
          ": override 'trainer.step=5': no key 'trainer.step' (did you mean "
          "'trainer.steps'?); add one with +trainer.step=5");
  EXPECT_EQ(
      error_of("main.yaml", {"trainer.steps=fast"}),
      path("main.yaml") +
          ": override 'trainer.steps=fast': 'trainer.steps' is an int (set at " +
          path("trainer/short.yaml") + ":1:8), but 'fast' is a string");
  EXPECT_EQ(
      error_of("main.yaml", {"+trainer.lr=3"}),
      path("main.yaml") +
          ": override '+trainer.lr=3': key 'trainer.lr' exists; set it with "
          "trainer.lr=...");
  EXPECT_EQ(
      error_of("main.yaml", {"~trainer.nothing"}),
      path("main.yaml") +
          ": override '~trainer.nothing': no key 'trainer.nothing' to delete");
  EXPECT_EQ(
      error_of("main.yaml", {"trainer.lr"}),
      path("main.yaml") +
          ": override 'trainer.lr': expected key=value, +key=value or ~key");
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
        path("main.yaml") +
            ": override '+trainer.seed=four': trainer.seed: expected an int, "
            "got string 'four'");
  }
  EXPECT_EQ(closest("optimiser", {"optimizer", "steps"}), "optimizer");
  EXPECT_EQ(closest("zzz", {"optimizer", "steps"}), "");
}

// Ranges in the schema: every bound and bracket, list items one by one, NaN
// refused, and a malformed range named by the schema's file and line.
TEST_F(RecipeTest, TheSchemaRefusesNumbersOutOfTheirRange) {
  write(
      "schema.yaml",
      "model:\n"
      "  name: string\n"
      "  widths: list of int in [1, 64]\n"
      "trainer:\n"
      "  steps: int >= 1\n"
      "  lr: float in (0, 1]\n"
      "  warmup: int < 1000\n"
      "  optimizer: string\n"
      "  clip: bool\n"
      "  seed: int > -1\n"
      "run_dir: string\n");
  const auto schema = Recipe::load_schema(path("schema.yaml"));
  const auto error = [&](const std::vector<std::string>& overrides) {
    return testing::error_message<RecipeError>(
        [&] { Recipe::load(path("main.yaml"), overrides).check(schema); });
  };
  EXPECT_EQ(error({"trainer.lr=0.5", "model.widths=[8,8]"}), "(no error)");
  EXPECT_EQ(
      error({"trainer.lr=1", "trainer.steps=1", "+trainer.seed=0"}),
      "(no error)");
  const auto override_of = [&](const std::string& o) {
    return path("main.yaml") + ": override '" + o + "': ";
  };
  EXPECT_EQ(
      error({"trainer.steps=0"}),
      override_of("trainer.steps=0") + "trainer.steps: must be >= 1, got 0");
  EXPECT_EQ(
      error({"trainer.lr=0"}),
      override_of("trainer.lr=0") + "trainer.lr: must be in (0, 1], got 0");
  EXPECT_EQ(
      error({"trainer.lr=1.5"}),
      override_of("trainer.lr=1.5") + "trainer.lr: must be in (0, 1], got 1.5");
  EXPECT_EQ(
      error({"trainer.lr=.nan"}),
      override_of("trainer.lr=.nan") +
          "trainer.lr: must be in (0, 1], got .nan");
  EXPECT_EQ(
      error({"+trainer.seed=-1"}),
      override_of("+trainer.seed=-1") + "trainer.seed: must be > -1, got -1");
  // The recipe's own value, by its line (warmup is ${trainer.steps})...
  EXPECT_EQ(
      error({"trainer.steps=1000"}),
      path("main.yaml") + ":6:11: trainer.warmup: must be < 1000, got 1000");
  // ...and list items by index.
  EXPECT_EQ(
      error({"model.widths=[8,0,8]"}),
      override_of("model.widths=[8,0,8]") +
          "model.widths.1: must be in [1, 64], got 0");
  EXPECT_EQ(
      error({"model.widths.1=65"}),
      override_of("model.widths.1=65") +
          "model.widths.1: must be in [1, 64], got 65");
  std::ifstream good(path("schema.yaml"));
  std::string text((std::istreambuf_iterator<char>(good)), {});
  text.replace(text.find("int >= 1"), 8, "int => 1");
  write("bad_schema.yaml", text);
  EXPECT_EQ(
      testing::error_message<RecipeError>(
          [&] { Recipe::load_schema(path("bad_schema.yaml")); }),
      path("bad_schema.yaml") +
          ":5:10: trainer.steps: 'int => 1': expected >=, >, <=, < or in [a, "
          "b]");
}

// Hydra refuses a config group twice at one package; so does qat, at the
// second entry's line.
TEST_F(RecipeTest, DefaultsNamingAGroupTwiceAreRefused) {
  write(
      "twice.yaml",
      "defaults:\n  - model: cnn\n  - trainer: short\n  - model: mlp\n");
  const auto message = error_of("twice.yaml");
  EXPECT_NE(
      message.find(
          path("twice.yaml") +
          ":4:5: defaults name config group 'model' a second time for "
          "'model' (first at " +
          path("twice.yaml") + ":2:5)"),
      std::string::npos)
      << message;
  // At another package it is another key: allowed.
  write("packages.yaml", "defaults:\n  - model: cnn\n  - model@other: mlp\n");
  EXPECT_EQ(
      Recipe::load(path("packages.yaml")).get<std::string>("other.name"),
      "mlp");
  EXPECT_EQ(closest("zzz", {"optimizer", "steps"}), "");
}

} // namespace
} // namespace qat::recipe
