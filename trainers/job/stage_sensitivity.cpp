#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <sstream>

#include "qat/convert.h"
#include "qat/export/atomic_file.h"
#include "qat/fake_quant.h"
#include "qat/modules/quantizers.h"
#include "trainers/checkpoint.h"
#include "trainers/job/stage.h"
#include "trainers/mixed_precision.h"
#include "trainers/quant_config.h"
#include "trainers/report.h"

namespace qat::train {
namespace {

namespace fs = std::filesystem;

// Per-layer sensitivity (`qat sensitivity RECIPE`): for each candidate in
// trainer.sensitivity.candidates (quant schemes), every layer the candidate
// quantizes is quantized alone, round to nearest, and
//
//   measured   the mean loss over the first trainer.sensitivity.batches
//              calibration batches minus the float model's (each layer's
//              quantizers on, all others off: the calibrated observers saw
//              float inputs, as they would with that layer alone quantized);
//   estimate   1/2 sum_i F_ii (Q(w)_i - w_i)^2, the second-order term with
//              the empirical Fisher diagonal F = tokens x mean over batches
//              of the squared batch gradient (the loss is a mean over tokens;
//              the first-order term vanishes in expectation at a trained
//              model): one backward pass per batch for all layers and
//              candidates.
//
// It writes sensitivity.md (the table, most sensitive layers first),
// sensitivity.tsv (every number) and sensitivity.png (loss increase per
// layer) in the run directory, and with trainer.sensitivity.budget_bits the
// mixed-precision scheme mixed_precision.yaml (trainers/mixed_precision.h): a
// quant scheme whose rules name each layer with its candidate's rule, usable
// as `quant@quant.NAME=<run dir>/mixed_precision`.
struct LayerRow {
  std::string name;
  int64_t weights = 0;
  std::vector<double> bits, measured, estimate;
  std::vector<YAML::Node> rule; // the candidate's rule that quantizes it
};

class SensitivityStage : public Stage {
 public:
  std::vector<std::string> check(
      const recipe::Recipe& recipe,
      const std::vector<std::string>&) const override {
    const auto candidates =
        checked_schemes(recipe, "trainer.sensitivity.candidates");
    if (candidates.empty())
      recipe.fail_at("trainer.sensitivity.candidates", "names no scheme");
    for (const auto& name : candidates) {
      if (!recipe::gguf_mix_preset(recipe, "quant." + name).empty()) {
        recipe.fail_at(
            "trainer.sensitivity.candidates",
            name +
                " is a gguf_mix; candidates are uniform schemes (rules such "
                "as gguf: q4_k) that the choice can name per layer");
      }
    }
    const auto by = recipe.get<std::string>("trainer.sensitivity.by", "");
    if (!by.empty() && by != "measured" && by != "estimate")
      recipe.fail_at(
          "trainer.sensitivity.by",
          "expected measured or estimate, got '" + by + "'");
    if (by == "measured" &&
        !recipe.get<bool>("trainer.sensitivity.measure", true))
      recipe.fail_at(
          "trainer.sensitivity.by",
          "measured needs trainer.sensitivity.measure: true");
    return candidates;
  }

  void run(JobContext& job) const override {
    const auto& recipe = job.recipe;
    job.need_float();
    const auto candidates =
        recipe.get<std::vector<std::string>>("trainer.sensitivity.candidates");
    const int64_t batches =
        recipe.get<int64_t>("trainer.sensitivity.batches", 4);
    const bool measure = recipe.get<bool>("trainer.sensitivity.measure", true);
    const auto start = std::chrono::steady_clock::now();

    // The float loss and the Fisher diagonal of every weight.
    auto model = job.copy_of_float("");
    model->eval();
    std::map<std::string, torch::Tensor> fisher;
    double float_loss = 0;
    for (int64_t b = 0; b < batches; ++b) {
      const Batch batch = job.task().calibration_batch(b);
      model->zero_grad();
      const auto loss =
          job.task().loss(job.task().forward(*model, batch.inputs), batch);
      loss.backward();
      float_loss += loss.item<double>() / batches;
      const double tokens = static_cast<double>(batch.targets.numel());
      for (const auto& p : model->named_parameters()) {
        if (!p.value().grad().defined())
          continue;
        const torch::Tensor g2 =
            p.value().grad().detach().pow(2) * (tokens / batches);
        auto& f = fisher[p.key()];
        f = f.defined() ? f + g2 : g2;
      }
    }
    model->zero_grad();

    std::vector<LayerRow> rows;
    std::map<std::string, size_t> row_of;
    for (size_t c = 0; c < candidates.size(); ++c) {
      const std::string& name = candidates[c];
      auto q = job.build_model();
      load_module_state(*q, module_state(*model), "the float model");
      const auto report = prepare(*q, job.scheme(name, *q));
      job.calibrate(*q, batches);
      set_fake_quant(*q, false);
      const YAML::Node rules = recipe.root()["quant"][name]["rules"];
      std::vector<std::string> seen;
      for (const auto& layer : report.layers) {
        auto* quantized = find_layer(*q, layer.name);
        if (!quantized || quantized->quantizers.weight.is_empty())
          continue;
        seen.push_back(layer.name);
        if (c == 0) {
          row_of[layer.name] = rows.size();
          rows.push_back(LayerRow{layer.name, 0, {}, {}, {}, {}});
          rows.back().weights = quantized->weight_to_quantize().numel();
        }
        const auto found = row_of.find(layer.name);
        if (found == row_of.end()) {
          recipe.fail_at(
              "trainer.sensitivity.candidates",
              name + " quantizes " + layer.name + ", which " +
                  candidates.front() +
                  " does not: candidates must quantize the same layers");
        }
        LayerRow& row = rows[found->second];
        row.rule.push_back(YAML::Clone(rules[layer.rule]));
        measure_layer(
            job,
            *q,
            *quantized,
            fisher[layer.name + ".weight"],
            row,
            measure ? batches : 0,
            float_loss);
        if (job.ranks.is_main() && rows.size() > 20 &&
            row_of[layer.name] % 20 == 19) {
          std::printf(
              "sensitivity: %s %zu/%zu layers (%.0f s)\n",
              name.c_str(),
              row_of[layer.name] + 1,
              rows.size(),
              std::chrono::duration<double>(
                  std::chrono::steady_clock::now() - start)
                  .count());
          std::fflush(stdout);
        }
      }
      if (seen.size() != rows.size()) {
        recipe.fail_at(
            "trainer.sensitivity.candidates",
            name + " quantizes " + std::to_string(seen.size()) + " layers, " +
                candidates.front() + " " + std::to_string(rows.size()) +
                ": candidates must quantize the same layers");
      }
    }
    if (rows.empty())
      recipe.fail_at(
          "trainer.sensitivity.candidates", "no candidate quantizes a weight");

    const bool by_measured =
        recipe.get<std::string>(
            "trainer.sensitivity.by", measure ? "measured" : "estimate") ==
        "measured";
    if (job.ranks.is_main())
      write_outputs(job, candidates, rows, by_measured, float_loss, batches);
  }

 private:
  static QuantizedLayer* find_layer(
      torch::nn::Module& model,
      const std::string& name) {
    for (const auto& [n, layer] : quantized_layers(model))
      if (n == name)
        return layer;
    return nullptr;
  }

  static void set_layer_fake_quant(QuantizedLayer& layer, bool enabled) {
    for (FakeQuantizer* q :
         {&layer.quantizers.weight,
          &layer.quantizers.input,
          &layer.quantizers.output}) {
      if (!q->is_empty())
        (*q)->enable_fake_quant(enabled);
    }
  }

  // One candidate's columns of one layer's row.
  static void measure_layer(
      JobContext& job,
      torch::nn::Module& model,
      QuantizedLayer& layer,
      const torch::Tensor& fisher,
      LayerRow& row,
      int64_t batches,
      double float_loss) {
    torch::NoGradGuard no_grad;
    auto& fq = *layer.quantizers.weight;
    const torch::Tensor w = layer.weight_to_quantize();
    fq.enable_fake_quant(true);
    const torch::Tensor delta = fq.forward(w) - w;
    fq.enable_fake_quant(false);
    row.estimate.push_back(
        fisher.defined() ? 0.5 * (fisher * delta.pow(2)).sum().item<double>()
                         : 0.0);
    layer.convert_weight();
    row.bits.push_back(
        8.0 * layer.quantized_weight->storage_bytes() / w.numel());
    layer.quantized_weight.reset();
    if (batches == 0) {
      row.measured.push_back(0);
      return;
    }
    set_layer_fake_quant(layer, true);
    double loss = 0;
    for (int64_t b = 0; b < batches; ++b) {
      const Batch batch = job.task().calibration_batch(b);
      loss += job.task()
                  .loss(job.task().forward(model, batch.inputs), batch)
                  .item<double>() /
          batches;
    }
    set_layer_fake_quant(layer, false);
    row.measured.push_back(loss - float_loss);
  }

  static void write_outputs(
      JobContext& job,
      const std::vector<std::string>& candidates,
      const std::vector<LayerRow>& rows,
      bool by_measured,
      double float_loss,
      int64_t batches) {
    const auto metric = [&](const LayerRow& r, size_t c) {
      return by_measured ? r.measured[c] : r.estimate[c];
    };
    // Most sensitive first, by the first (smallest, as listed) candidate.
    std::vector<size_t> order(rows.size());
    for (size_t i = 0; i < order.size(); ++i)
      order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return metric(rows[a], 0) > metric(rows[b], 0);
    });
    std::ostringstream md, tsv;
    md << "# Layer sensitivity: " << recipe_name(job) << "\n\n"
       << "Loss increase when the layer alone is quantized (round to nearest), "
       << "on " << batches << " calibration batches; float loss " << float_loss
       << ". measured: the loss with that layer quantized "
       << "minus the float loss; estimate: 1/2 sum F (Q(w) - w)^2 with the "
       << "empirical Fisher diagonal. Sorted by the "
       << (by_measured ? "measured" : "estimated") << " increase at "
       << candidates.front() << ".\n\n| layer | weights |";
    tsv << "layer\tweights\tcandidate\tbits\tmeasured\testimate\n";
    for (const auto& c : candidates)
      md << ' ' << c << " bits | " << c << " measured | " << c << " estimate |";
    md << "\n|---|---|";
    for (size_t c = 0; c < candidates.size(); ++c)
      md << "---|---|---|";
    md << '\n';
    char cell[64];
    for (size_t i : order) {
      const auto& r = rows[i];
      md << "| " << r.name << " | " << r.weights << " |";
      for (size_t c = 0; c < candidates.size(); ++c) {
        std::snprintf(
            cell,
            sizeof cell,
            " %.3f | %.5f | %.5f |",
            r.bits[c],
            r.measured[c],
            r.estimate[c]);
        md << cell;
        tsv << r.name << '\t' << r.weights << '\t' << candidates[c] << '\t'
            << r.bits[c] << '\t' << r.measured[c] << '\t' << r.estimate[c]
            << '\n';
      }
      md << '\n';
    }
    const fs::path dir(job.run_dir);
    write_string_atomically(
        (dir / "sensitivity.md").string(), "the sensitivity table", md.str());
    write_string_atomically(
        (dir / "sensitivity.tsv").string(), "the sensitivity table", tsv.str());
    std::vector<Series> series;
    for (size_t c = 0; c < candidates.size(); ++c) {
      Series s{
          candidates[c] + (by_measured ? " (measured)" : " (estimate)"),
          {},
          {}};
      for (size_t i = 0; i < rows.size(); ++i) {
        s.x.push_back(static_cast<double>(i));
        s.y.push_back(metric(rows[i], c));
      }
      series.push_back(std::move(s));
    }
    write_line_plot(
        (dir / "sensitivity.png").string(),
        "loss increase with one layer quantized",
        "layer (model order)",
        series);
    std::printf(
        "sensitivity: %zu layers x %zu candidates; most sensitive at %s: %s "
        "(%.5f), %s\nsensitivity: wrote %s\n",
        rows.size(),
        candidates.size(),
        candidates.front().c_str(),
        rows[order[0]].name.c_str(),
        metric(rows[order[0]], 0),
        rows.size() > 1 ? rows[order[1]].name.c_str() : "",
        (dir / "sensitivity.md").c_str());

    if (!job.recipe.has("trainer.sensitivity.budget_bits"))
      return;
    const double budget =
        job.recipe.get<double>("trainer.sensitivity.budget_bits");
    std::vector<LayerChoices> layers;
    for (const auto& r : rows) {
      LayerChoices choices{r.name, r.weights, r.bits, {}};
      for (size_t c = 0; c < candidates.size(); ++c)
        choices.loss.push_back(metric(r, c));
      layers.push_back(std::move(choices));
    }
    MixedPrecision mix;
    try {
      mix = choose_mixed_precision(layers, budget);
    } catch (const std::invalid_argument& e) {
      job.recipe.fail_at("trainer.sensitivity.budget_bits", e.what());
    }
    write_scheme(job, candidates, rows, mix, budget, by_measured);
  }

  static std::string recipe_name(const JobContext& job) {
    return job.recipe.get<std::string>("run.name", "run");
  }

  static void write_scheme(
      JobContext& job,
      const std::vector<std::string>& candidates,
      const std::vector<LayerRow>& rows,
      const MixedPrecision& mix,
      double budget,
      bool by_measured) {
    std::map<std::string, int64_t> weights_at;
    YAML::Node scheme;
    char text[400];
    std::snprintf(
        text,
        sizeof text,
        "mixed precision chosen by qat sensitivity for %s: %.3f bits per "
        "weight on average (budget %.3f) over %zu layers, from %s, by the %s "
        "loss increase (%.5f summed)",
        recipe_name(job).c_str(),
        mix.average_bits,
        budget,
        rows.size(),
        join_names(candidates).c_str(),
        by_measured ? "measured" : "estimated",
        mix.loss);
    scheme["description"] = std::string(text);
    for (size_t i = 0; i < rows.size(); ++i) {
      YAML::Node rule = YAML::Clone(rows[i].rule[mix.choice[i]]);
      rule["match"] = rows[i].name;
      scheme["rules"].push_back(rule);
      weights_at[candidates[mix.choice[i]]] += rows[i].weights;
    }
    YAML::Emitter out;
    out << scheme;
    const fs::path path = fs::path(job.run_dir) / "mixed_precision.yaml";
    write_string_atomically(
        path.string(),
        "the mixed-precision scheme",
        "# Written by qat sensitivity; use it as a scheme:\n"
        "#   qat train RECIPE quant@quant.NAME=" +
            (fs::absolute(path).parent_path() / "mixed_precision").string() +
            "\n" + std::string(out.c_str()) + "\n");
    std::printf("mixed precision: %s\n", text);
    for (const auto& [name, count] : weights_at)
      std::printf("  %s: %lld weights\n", name.c_str(), (long long)count);
    std::printf("mixed precision: wrote %s\n", path.c_str());
  }
};

} // namespace

std::unique_ptr<Stage> make_sensitivity_stage() {
  return std::make_unique<SensitivityStage>();
}

} // namespace qat::train
