// The `qat` command: runs recipes.
//
//   qat train RECIPE [KEY=VALUE ...] [--resume] [--print-config] [--check]
//   qat calibrate RECIPE [KEY=VALUE ...]      float model + PTQ + the table
//   qat eval RECIPE --checkpoint FILE [--scheme NAME] [KEY=VALUE ...]
//   qat export RECIPE --checkpoint FILE --scheme NAME --out FILE
//              [--format native|gguf|onnx|compressed-tensors]
//   qat info RECIPE [--scheme NAME]
//   qat sensitivity RECIPE [KEY=VALUE ...]    float model + per-layer
//              sensitivity (and a mixed-precision scheme under a budget)
//
// Data-parallel training runs the same command in every process:
//   torchrun --no-python --nproc-per-node 8 build/qat train RECIPE ...
//   srun build/qat train RECIPE ...          (scripts/launch_slurm.sh)
//
// Exit codes: 0 done, 1 the job failed (bad recipe, bad data, NaN loss, a
// rank lost, ...; the message says where), 2 wrong arguments.
#include <CLI/CLI.hpp>
#include <torch/cuda.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <regex>
#include <string>
#include <vector>

#include "trainers/distributed.h"
#include "trainers/error_text.h"
#include "trainers/trainer.h"

namespace {

namespace fs = std::filesystem;
using qat::recipe::Recipe;

struct Command {
  std::string recipe;
  std::vector<std::string> overrides;
  bool print_config = false;
  bool check = false;
  bool resume = false;
  std::string halt_at;
  std::string checkpoint, scheme, out, format = "native";
};

// The recipe, composed, overridden and checked against the schema.yaml of
// its directory (recipes/schema.yaml for the shipped ones).
Recipe load(const Command& c) {
  Recipe recipe = Recipe::load(c.recipe, c.overrides);
  const fs::path schema = fs::path(c.recipe).parent_path() / "schema.yaml";
  if (fs::exists(schema))
    recipe.check(Recipe::load_schema(schema.string()));
  return recipe;
}

void add_recipe_arguments(CLI::App* app, Command& c) {
  app->add_option(
         "recipe", c.recipe, "YAML recipe (e.g. recipes/quickstart.yaml)")
      ->required()
      ->check(CLI::ExistingFile);
  app->add_option(
      "overrides",
      c.overrides,
      "a.b=c sets a key (typed), group=option picks a config group, +a.b=c adds a "
      "key, ~a.b deletes one");
  app->add_flag(
      "--print-config", c.print_config, "print the composed recipe and exit");
}

void print_result(const qat::train::ModelResult& r) {
  for (const auto& [split, metrics] :
       {std::pair{"validation", &r.validation}, {"test", &r.test}}) {
    std::printf("%s %s:", r.name.c_str(), split);
    for (const auto& [k, v] : *metrics)
      std::printf(" %s %.4f", k.c_str(), v);
    std::printf("\n");
  }
}

} // namespace

int main(int argc, char** argv) {
  // Lines, not blocks: results interleave with the progress on stderr.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  CLI::App app{"qat: quantization-aware training from YAML recipes"};
  app.require_subcommand(1);
  Command c;

  auto* train =
      app.add_subcommand("train", "run the recipe's stages (trainer.stages)");
  add_recipe_arguments(train, c);
  train->add_flag(
      "--resume", c.resume, "continue from the newest checkpoint in run.dir");
  train->add_flag(
      "--check",
      c.check,
      "check the recipe, its data, model and schemes, then exit without "
      "training");
  train
      ->add_option(
          "--halt-at",
          c.halt_at,
          "STAGE:STEP: stop after checkpointing that step (e.g. qat.w4a4:200); --resume "
          "continues")
      ->check(CLI::Validator(
          [](std::string& text) -> std::string {
            static const std::regex pattern(R"(.+:[1-9][0-9]{0,17})");
            return std::regex_match(text, pattern)
                ? ""
                : "expected STAGE:STEP with STEP > 0";
          },
          "STAGE:STEP"));

  auto* calibrate = app.add_subcommand(
      "calibrate", "float model, PTQ of trainer.ptq.schemes, table");
  add_recipe_arguments(calibrate, c);
  calibrate->add_flag(
      "--resume", c.resume, "reuse the float model's checkpoints in run.dir");

  auto* sensitivity = app.add_subcommand(
      "sensitivity",
      "float model, each layer's loss increase at each of "
      "trainer.sensitivity.candidates (table and plot in run.dir), and with "
      "trainer.sensitivity.budget_bits a mixed-precision scheme");
  add_recipe_arguments(sensitivity, c);
  sensitivity->add_flag(
      "--resume", c.resume, "reuse the float model's checkpoints in run.dir");
  auto* eval =
      app.add_subcommand("eval", "evaluate a checkpoint on the recipe's data");
  add_recipe_arguments(eval, c);
  eval->add_option(
          "--checkpoint", c.checkpoint, "checkpoint file (.safetensors)")
      ->required()
      ->check(CLI::ExistingFile);
  eval->add_option(
      "--scheme",
      c.scheme,
      "quantization scheme of the checkpoint (quant.<name>)");

  auto* exporter = app.add_subcommand(
      "export", "convert a QAT checkpoint to low-precision weights");
  add_recipe_arguments(exporter, c);
  exporter->add_option("--checkpoint", c.checkpoint, "QAT checkpoint file")
      ->required()
      ->check(CLI::ExistingFile);
  exporter
      ->add_option(
          "--scheme", c.scheme, "its quantization scheme (quant.<name>)")
      ->required();
  exporter
      ->add_option(
          "--out", c.out, "output file (folder for compressed-tensors)")
      ->required();
  exporter
      ->add_option(
          "--format",
          c.format,
          "native (safetensors), gguf (llama.cpp; the Llama-style decoder), "
          "onnx (QuantizeLinear / DequantizeLinear graph; mlp and resnet) or "
          "compressed-tensors (vLLM / transformers checkpoint folder; the "
          "Llama-style decoder)")
      ->check(CLI::IsMember(qat::train::export_formats()));

  auto* info = app.add_subcommand(
      "info", "model, per-layer quantization, parameter counts, sizes");
  add_recipe_arguments(info, c);
  info->add_option(
      "--scheme", c.scheme, "quantization scheme to show (quant.<name>)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 2;
  }

  std::string who; // "rank 1: " on ranks that are not rank 0
  try {
    // Under torchrun or srun, rank 0 reports; the others write only errors.
    if (const auto launch = qat::train::Launch::from_environment();
        launch.rank > 0) {
      who = "rank " + std::to_string(launch.rank) + ": ";
      if (!std::getenv("QAT_LOG_ALL_RANKS") &&
          !std::freopen("/dev/null", "w", stdout))
        std::perror("qat: quieting stdout");
    }
    const Recipe recipe = load(c);
    if (c.print_config) {
      std::printf("%s\n", recipe.dump().c_str());
      return 0;
    }
    qat::train::JobOptions options;
    options.resume = c.resume;
    if (!c.halt_at.empty()) {
      const auto colon = c.halt_at.rfind(':');
      options.halt_stage = c.halt_at.substr(0, colon);
      options.halt_step = std::stoll(c.halt_at.substr(colon + 1));
    }
    qat::train::Job job(recipe, options);
    if (train->parsed() && c.check) {
      std::printf("%sok\n", job.check().c_str());
    } else if (train->parsed()) {
      job.run();
    } else if (calibrate->parsed()) {
      job.run({"float", "ptq", "eval"});
    } else if (sensitivity->parsed()) {
      job.run({"float", "sensitivity"});
    } else if (eval->parsed()) {
      print_result(job.evaluate_checkpoint(c.checkpoint, c.scheme));
    } else if (exporter->parsed()) {
      const auto sizes =
          job.export_checkpoint(c.checkpoint, c.scheme, c.out, c.format);
      std::printf("%s\n", qat::train::describe(sizes, c.out).c_str());
    } else {
      std::printf("%s", job.info(c.scheme).c_str());
    }
  } catch (const std::exception& e) {
    // A collective's error names its rank already ("rank 1 of 8: ...").
    const std::string message = qat::train::error_text(e);
    std::fprintf(
        stderr,
        "error: %s%s\n",
        message.rfind("rank ", 0) == 0 ? "" : who.c_str(),
        message.c_str());
    return 1;
  } catch (...) { // not a std::exception: still one line, never a terminate()
    std::fprintf(
        stderr, "error: %san unknown error stopped the job\n", who.c_str());
    return 1;
  }
  return 0;
}
