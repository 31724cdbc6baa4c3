#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "qat/convert.h"
#include "trainers/checkpoint.h"
#include "trainers/job/stage.h"
#include "trainers/models/classifiers.h"
#include "trainers/models/llama_gguf.h"
#include "trainers/models/sources.h"

namespace qat::train {
namespace {
namespace fs = std::filesystem;

// One export format: its name in export.format / `qat export --format`, the
// extension of what it writes ("" for a folder), and its writer.
struct Exporter {
  const char* name;
  const char* extension;
  void (*write)(
      JobContext& job,
      torch::nn::Module& served,
      const std::string& path,
      const std::string& title);
};

models::LlamaForCausalLMImpl& decoder(
    torch::nn::Module& served,
    const char* format) {
  auto* lm = dynamic_cast<models::LlamaForCausalLMImpl*>(&served);
  if (!lm)
    throw std::invalid_argument(
        std::string("format ") + format +
        " exports the Llama-style decoder only");
  return *lm;
}

void write_native(
    JobContext&,
    torch::nn::Module& served,
    const std::string& path,
    const std::string&) {
  save_converted(served, path);
}

void write_gguf(
    JobContext& job,
    torch::nn::Module& served,
    const std::string& path,
    const std::string& title) {
  const auto* source = job.task().language_model();
  models::save_llama_gguf(
      decoder(served, "gguf"),
      path,
      title,
      source ? source->gguf_tokenizer() : models::GgufMetadata{});
}

// A Hugging Face checkpoint folder, with the model's tokenizer files
// (tokenizer.json, tokenizer_config.json, ...) so that transformers and vLLM
// load it from the folder alone.
void write_compressed_tensors(
    JobContext& job,
    torch::nn::Module& served,
    const std::string& path,
    const std::string&) {
  const int64_t shard_mb = job.recipe.get<int64_t>("export.max_shard_mb", 5000);
  if (shard_mb <= 0)
    job.recipe.fail_at("export.max_shard_mb", "must be positive");
  models::save_llama_compressed_tensors(
      decoder(served, "compressed-tensors"), path, shard_mb * 1'000'000);
  if (const auto* source = job.task().language_model()) {
    for (const auto& file : source->hf_files())
      fs::copy_file(
          file,
          fs::path(path) / fs::path(file).filename(),
          fs::copy_options::overwrite_existing);
  }
}

void write_onnx(
    JobContext& job,
    torch::nn::Module& served,
    const std::string& path,
    const std::string&) {
  const auto* classifier =
      dynamic_cast<const models::ImageClassifier*>(&served);
  if (!classifier)
    throw std::invalid_argument(
        "format onnx exports the image classifiers (mlp, resnet) only");
  const auto images = job.task().calibration_batch(0).inputs;
  models::save_onnx(*classifier, images.sizes().slice(1).vec(), path);
}

const std::vector<Exporter>& exporters() {
  static const std::vector<Exporter> table = {
      {"native", ".safetensors", write_native},
      {"gguf", ".gguf", write_gguf},
      {"onnx", ".onnx", write_onnx},
      {"compressed-tensors", "", write_compressed_tensors},
  };
  return table;
}

const Exporter* find_exporter(const std::string& format) {
  for (const auto& e : exporters()) {
    if (e.name == format)
      return &e;
  }
  return nullptr;
}

// A file's size, or the sizes of the files in a folder.
int64_t disk_bytes(const std::string& path) {
  if (!fs::is_directory(path))
    return static_cast<int64_t>(fs::file_size(path));
  int64_t bytes = 0;
  for (const auto& entry : fs::directory_iterator(path)) {
    if (entry.is_regular_file())
      bytes += static_cast<int64_t>(entry.file_size());
  }
  return bytes;
}

// export.format, one of export_formats().
std::string export_format(const recipe::Recipe& recipe) {
  const auto format = recipe.get<std::string>("export.format", "native");
  if (!find_exporter(format))
    recipe.fail_at(
        "export.format",
        "unknown format '" + format + "'; expected " +
            join_names(export_formats()));
  return format;
}

// Each of export.schemes, trained by this run's qat stage, converted to real
// low-precision weights and written by rank 0 under <run.dir>/export/.
class ExportStage : public Stage {
 public:
  std::vector<std::string> check(
      const recipe::Recipe& recipe,
      const std::vector<std::string>& stages) const override {
    export_format(recipe);
    const auto trained = runs(stages, "qat")
        ? recipe.get<std::vector<std::string>>("trainer.qat.schemes")
        : std::vector<std::string>{};
    for (const auto& name :
         recipe.get<std::vector<std::string>>("export.schemes")) {
      if (std::find(trained.begin(), trained.end(), name) == trained.end())
        recipe.fail_at(
            "export.schemes",
            "'" + name + "' is not trained by a qat stage of this run " +
                "(trainer.qat.schemes: " + join_names(trained) + ")");
    }
    return {};
  }

  void run(JobContext& job) const override {
    const auto format = export_format(job.recipe);
    for (const auto& name :
         job.recipe.get<std::vector<std::string>>("export.schemes")) {
      if (!job.qat_models.count(name)) {
        job.recipe.fail_at(
            "export.schemes",
            "'" + name + "' was not trained by the qat stage (trained: " +
                join_names(job.recipe.get<std::vector<std::string>>(
                    "trainer.qat.schemes")) +
                ")");
      }
      if (!job.ranks.is_main())
        continue; // rank 0 writes; the barrier below waits for it
      const auto path =
          (fs::path(job.run_dir) / "export" / (name + export_extension(format)))
              .string();
      auto served = job.copy_of_float(name);
      load_module_state(
          *served, module_state(*job.qat_models[name]), "the QAT model");
      convert(*served);
      ExportSizes sizes;
      try {
        sizes = write_export(
            job,
            *served,
            format,
            path,
            job.recipe.get<std::string>("run.name") + " " + name);
      } catch (const std::invalid_argument& e) {
        job.recipe.fail_at("export.format", e.what());
      }
      std::printf("export: %s\n", describe(sizes, path).c_str());
    }
    job.ranks.group().barrier(
        "export: waiting for rank 0 to write the exports");
  }
};

} // namespace

std::unique_ptr<Stage> make_export_stage() {
  return std::make_unique<ExportStage>();
}

std::vector<std::string> export_formats() {
  std::vector<std::string> names;
  for (const auto& e : exporters())
    names.push_back(e.name);
  return names;
}

std::string export_extension(const std::string& format) {
  const auto* e = find_exporter(format);
  return e ? e->extension : "";
}

std::string describe(const ExportSizes& sizes, const std::string& path) {
  return path + " (" + human_bytes(static_cast<double>(sizes.file_bytes)) +
      "; float " + human_bytes(static_cast<double>(sizes.float_bytes)) +
      "; theoretical " +
      human_bytes(static_cast<double>(sizes.theoretical_bytes)) +
      ": quantized weights at their bits with scales and zero points, the "
      "rest fp32)";
}

ExportSizes write_export(
    JobContext& job,
    torch::nn::Module& served,
    const std::string& format,
    const std::string& path,
    const std::string& title) {
  const auto* exporter = find_exporter(format);
  if (!exporter)
    throw std::invalid_argument(
        "unknown export format '" + format + "'; expected " +
        join_names(export_formats()));
  if (fs::path(path).has_parent_path())
    fs::create_directories(fs::path(path).parent_path());
  exporter->write(job, served, path, title);
  ExportSizes sizes;
  sizes.file_bytes = disk_bytes(path);
  sizes.float_bytes = job.weight_bytes(job.need_float(), "");
  sizes.theoretical_bytes = served_bytes(served);
  return sizes;
}

} // namespace qat::train
