// What a run shows and leaves behind: a progress bar on a terminal (plain
// periodic lines in a log), metrics as JSON lines, and PNG plots of them.
// Torch-free.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace qat::train {

// One stage's progress:
//   qat.w4a4 [#########.........] 120/400 loss 0.4123 lr 9.5e-03 12.3 it/s ETA 0:23
// redrawn in place on a terminal, or printed every `every` steps otherwise.
class Progress {
 public:
  Progress(std::string stage, int64_t first_step, int64_t total, int64_t every);
  void update(int64_t step, double loss, double lr);
  void finish();

 private:
  std::string line(int64_t step, double loss, double lr) const;
  std::string stage_;
  int64_t first_step_, total_, every_;
  bool terminal_;
  std::chrono::steady_clock::time_point start_, last_draw_;
  int64_t last_step_ = -1;
  double last_loss_ = 0, last_lr_ = 0;
};

// Appends one JSON object per line to <run dir>/metrics.jsonl, flushed at
// each line so a crash loses nothing written before it.
class MetricsLog {
 public:
  explicit MetricsLog(const std::string& path);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  // {"stage": ..., "step": ..., <numbers>..., <texts>...}
  void write(
      const std::string& stage,
      int64_t step,
      const std::map<std::string, double>& numbers,
      const std::map<std::string, std::string>& texts = {});

 private:
  std::FILE* file_;
};

// A line chart written as an RGB PNG: one line per series, axes with tick
// labels, a legend. Series are x (ascending) and y of the same length.
struct Series {
  std::string name;
  std::vector<double> x, y;
};
void write_line_plot(
    const std::string& path,
    const std::string& title,
    const std::string& x_label,
    const std::vector<Series>& series);

// "0:23", "1:02:03".
std::string format_duration(double seconds);

} // namespace qat::train
