#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "trainers/job/stage.h"

namespace qat::train {
namespace {
namespace fs = std::filesystem;

// The models the run evaluated side by side: a table on stdout and in
// summary.md, summary.json, and PNG plots of the training loss and the
// validation metric from metrics.jsonl.
class EvalStage : public Stage {
 public:
  void run(JobContext& job) const override {
    if (job.results.empty())
      throw TrainingError(
          "eval: no model was evaluated; run float (and ptq / qat) first");
    if (!job.ranks.is_main())
      return; // every rank has the results; rank 0 reports them
    write_table(job);
    write_plots(job);
  }

 private:
  // The summary: one row per model, its difference from the float model and
  // what QAT recovers of PTQ's loss, beside any extra metrics' columns.
  static void write_table(JobContext& job) {
    const ModelResult& base = job.results.front();
    const std::string metric = job.task().metric();
    const bool accuracy = job.task().higher_is_better();
    // "88.39%" or "5.123"; differences in points or in perplexity.
    const auto value = [&](double v) {
      char text[32];
      std::snprintf(text, sizeof text, accuracy ? "%.2f%%" : "%.3f", v);
      return std::string(text);
    };
    const double float_value = base.test.at(metric);
    std::map<std::string, double> ptq_value;
    // What QAT is measured against: the float model fine-tuned the same way
    // when there is one (QAT's gain over PTQ is then not adaptation to the
    // data), else the float model.
    double target_value = float_value;
    for (const auto& r : job.results) {
      if (r.stage.rfind("ptq.", 0) == 0)
        ptq_value[r.stage.substr(4)] = r.test.at(metric);
      if (r.stage == "float_tuned")
        target_value = r.test.at(metric);
    }

    const auto extra = job.task().extra_metrics();
    std::ostringstream table;
    table << "| model | test " << metric << " | vs float | validation "
          << metric << " | test loss | weights | QAT recovers |";
    for (const auto& name : extra)
      table << " " << name << " |";
    table << "\n|---|---|---|---|---|---|---|";
    for (size_t i = 0; i < extra.size(); ++i)
      table << "---|";
    table << "\n";
    nlohmann::ordered_json json = nlohmann::ordered_json::array();
    for (const auto& r : job.results) {
      const double v = r.test.at(metric);
      char row[256], delta[32] = "";
      if (&r != &base)
        std::snprintf(
            delta, sizeof delta, accuracy ? "%+.2f" : "%+.3f", v - float_value);
      std::string recovered;
      const std::string scheme = r.stage.substr(4);
      if (r.stage.rfind("qat.", 0) == 0 && ptq_value.count(scheme)) {
        // Only where PTQ lost something worth recovering (a point of accuracy,
        // 1% of perplexity): a ratio of noise is noise.
        const double lost = accuracy ? target_value - ptq_value.at(scheme)
                                     : ptq_value.at(scheme) - target_value;
        if (lost >= (accuracy ? 1.0 : 0.01 * target_value)) {
          const double gained =
              accuracy ? v - ptq_value.at(scheme) : ptq_value.at(scheme) - v;
          char text[32];
          std::snprintf(
              text, sizeof text, "%.0f%% of PTQ's loss", 100.0 * gained / lost);
          recovered = text;
        }
      }
      std::snprintf(
          row,
          sizeof row,
          "| %s | %s | %s | %s | %.4f | %s | %s |",
          r.name.c_str(),
          value(v).c_str(),
          delta,
          value(r.validation.at(metric)).c_str(),
          r.test.at("loss"),
          human_bytes(static_cast<double>(r.weight_bytes)).c_str(),
          recovered.c_str());
      table << row;
      for (const auto& name : extra) {
        const auto it = r.test.find(name);
        char cell[32] = " |";
        if (it != r.test.end())
          std::snprintf(cell, sizeof cell, " %.1f%% |", it->second);
        table << cell;
      }
      table << "\n";
      json.push_back(
          {{"name", r.name},
           {"stage", r.stage},
           {"test", r.test},
           {"validation", r.validation},
           {"weight_bytes", r.weight_bytes}});
    }
    std::printf("\n%s\n", table.str().c_str());
    std::ofstream(fs::path(job.run_dir) / "summary.md") << table.str();
    std::ofstream(fs::path(job.run_dir) / "summary.json")
        << json.dump(2) << "\n";
  }

  // Plots from metrics.jsonl, so a resumed run's curves are whole; a later
  // line for the same stage and step (written after a resume) wins.
  static void write_plots(JobContext& job) {
    const std::string metric = job.task().metric();
    const bool accuracy = job.task().higher_is_better();
    std::map<std::string, std::map<int64_t, double>> loss, evaluations;
    std::ifstream lines(fs::path(job.run_dir) / "metrics.jsonl");
    for (std::string line; std::getline(lines, line);) {
      const auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.contains("step") ||
          j["step"].get<int64_t>() < 0)
        continue;
      const auto stage = j["stage"].get<std::string>();
      const auto step = j["step"].get<int64_t>();
      if (j.contains("split") && j.contains(metric) && j[metric].is_number())
        evaluations[stage][step] = j[metric].get<double>();
      else if (j.contains("loss") && j["loss"].is_number())
        loss[stage][step] = j["loss"].get<double>();
    }
    const auto plot =
        [&](const std::map<std::string, std::map<int64_t, double>>& data,
            const std::string& file,
            const std::string& title,
            int64_t smooth) {
          std::vector<Series> series;
          for (const auto& [stage, points] : data) {
            Series s{stage, {}, {}};
            double window = 0;
            std::vector<double> recent;
            for (const auto& [step, value] : points) {
              recent.push_back(value);
              window += value;
              if (static_cast<int64_t>(recent.size()) > smooth) {
                window -= recent[recent.size() - 1 - smooth];
              }
              const auto n = std::min<int64_t>(smooth, recent.size());
              s.x.push_back(static_cast<double>(step));
              s.y.push_back(window / static_cast<double>(n));
            }
            series.push_back(std::move(s));
          }
          const auto path = (fs::path(job.run_dir) / file).string();
          write_line_plot(path, title, "step", series);
          std::printf("plot: %s\n", path.c_str());
        };
    plot(loss, "loss.png", "training loss (mean of 20 steps)", 20);
    plot(
        evaluations,
        metric + ".png",
        "validation " + metric + (accuracy ? " (%)" : " (per byte)"),
        1);
  }
};

} // namespace

std::unique_ptr<Stage> make_eval_stage() {
  return std::make_unique<EvalStage>();
}

} // namespace qat::train
