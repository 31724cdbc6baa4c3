#include "trainers/report.h"

#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace qat::train {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t)
      .count();
}

} // namespace

std::string format_duration(double seconds) {
  const auto s = static_cast<long long>(std::max(0.0, std::round(seconds)));
  char out[32];
  if (s >= 3600)
    std::snprintf(
        out, sizeof out, "%lld:%02lld:%02lld", s / 3600, s / 60 % 60, s % 60);
  else
    std::snprintf(out, sizeof out, "%lld:%02lld", s / 60, s % 60);
  return out;
}

// ---------------------------------------------------------------------------
// Progress

Progress::Progress(
    std::string stage,
    int64_t first_step,
    int64_t total,
    int64_t every)
    : stage_(std::move(stage)),
      first_step_(first_step),
      total_(total),
      every_(std::max<int64_t>(1, every)),
      terminal_(::isatty(::fileno(stderr)) == 1),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

std::string Progress::line(int64_t step, double loss, double lr) const {
  const double elapsed = seconds_since(start_);
  const int64_t done = step - first_step_;
  const double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0;
  const double eta = rate > 0 ? static_cast<double>(total_ - step) / rate : 0;
  std::string bar;
  if (terminal_) {
    constexpr int kWidth = 24;
    const int filled = total_ > 0
        ? static_cast<int>(kWidth * static_cast<double>(step) / total_)
        : kWidth;
    bar = "[" + std::string(filled, '#') + std::string(kWidth - filled, '.') +
        "] ";
  }
  // Slow steps (a pretrained LLM on a CPU) read better as seconds a step.
  char speed[32];
  if (rate >= 1 || rate == 0)
    std::snprintf(speed, sizeof speed, "%.1f it/s", rate);
  else
    std::snprintf(speed, sizeof speed, "%.1f s/it", 1 / rate);
  char text[256];
  std::snprintf(
      text,
      sizeof text,
      "%s %s%lld/%lld loss %.4f lr %.2e %s ETA %s",
      stage_.c_str(),
      bar.c_str(),
      static_cast<long long>(step),
      static_cast<long long>(total_),
      loss,
      lr,
      speed,
      format_duration(eta).c_str());
  return text;
}

void Progress::update(int64_t step, double loss, double lr) {
  last_step_ = step;
  last_loss_ = loss;
  last_lr_ = lr;
  if (terminal_) {
    if (seconds_since(last_draw_) < 0.2 && step != total_)
      return;
    last_draw_ = std::chrono::steady_clock::now();
    std::fprintf(stderr, "\r\033[K%s", line(step, loss, lr).c_str());
  } else if (step % every_ == 0 || step == total_) {
    std::fprintf(stderr, "%s\n", line(step, loss, lr).c_str());
  }
  std::fflush(stderr);
}

void Progress::finish() {
  if (terminal_ && last_step_ >= 0) {
    std::fprintf(
        stderr, "\r\033[K%s\n", line(last_step_, last_loss_, last_lr_).c_str());
  }
  std::fflush(stderr);
}

// ---------------------------------------------------------------------------
// MetricsLog

MetricsLog::MetricsLog(const std::string& path)
    : file_(std::fopen(path.c_str(), "a")) {
  if (!file_)
    throw std::runtime_error(
        "cannot open metrics file " + path + ": " + std::strerror(errno));
}

MetricsLog::~MetricsLog() {
  std::fclose(file_);
}

void MetricsLog::write(
    const std::string& stage,
    int64_t step,
    const std::map<std::string, double>& numbers,
    const std::map<std::string, std::string>& texts) {
  nlohmann::ordered_json line;
  line["stage"] = stage;
  line["step"] = step;
  for (const auto& [k, v] : texts)
    line[k] = v;
  for (const auto& [k, v] : numbers)
    line[k] = std::isfinite(v) ? nlohmann::ordered_json(v)
                               : nlohmann::ordered_json(nullptr);
  const std::string text = line.dump() + "\n";
  std::fwrite(text.data(), 1, text.size(), file_);
  std::fflush(file_);
}

// ---------------------------------------------------------------------------
// PNG line plots

namespace {

struct Rgb {
  uint8_t r, g, b;
};

// A 3x5 pixel font (drawn at 2x), enough for labels and numbers; letters are
// drawn as small capitals.
const std::map<char, std::array<const char*, 5>>& glyphs() {
  static const std::map<char, std::array<const char*, 5>> font = {
      {'0', {"###", "#.#", "#.#", "#.#", "###"}},
      {'1', {".#.", "##.", ".#.", ".#.", "###"}},
      {'2', {"###", "..#", "###", "#..", "###"}},
      {'3', {"###", "..#", ".##", "..#", "###"}},
      {'4', {"#.#", "#.#", "###", "..#", "..#"}},
      {'5', {"###", "#..", "###", "..#", "###"}},
      {'6', {"###", "#..", "###", "#.#", "###"}},
      {'7', {"###", "..#", ".#.", ".#.", ".#."}},
      {'8', {"###", "#.#", "###", "#.#", "###"}},
      {'9', {"###", "#.#", "###", "..#", "###"}},
      {'a', {".#.", "#.#", "###", "#.#", "#.#"}},
      {'b', {"##.", "#.#", "##.", "#.#", "##."}},
      {'c', {".##", "#..", "#..", "#..", ".##"}},
      {'d', {"##.", "#.#", "#.#", "#.#", "##."}},
      {'e', {"###", "#..", "##.", "#..", "###"}},
      {'f', {"###", "#..", "##.", "#..", "#.."}},
      {'g', {".##", "#..", "#.#", "#.#", ".##"}},
      {'h', {"#.#", "#.#", "###", "#.#", "#.#"}},
      {'i', {"###", ".#.", ".#.", ".#.", "###"}},
      {'j', {"..#", "..#", "..#", "#.#", ".#."}},
      {'k', {"#.#", "#.#", "##.", "#.#", "#.#"}},
      {'l', {"#..", "#..", "#..", "#..", "###"}},
      {'m', {"#.#", "###", "###", "#.#", "#.#"}},
      {'n', {"##.", "#.#", "#.#", "#.#", "#.#"}},
      {'o', {".#.", "#.#", "#.#", "#.#", ".#."}},
      {'p', {"##.", "#.#", "##.", "#..", "#.."}},
      {'q', {".#.", "#.#", "#.#", "##.", ".##"}},
      {'r', {"##.", "#.#", "##.", "#.#", "#.#"}},
      {'s', {".##", "#..", ".#.", "..#", "##."}},
      {'t', {"###", ".#.", ".#.", ".#.", ".#."}},
      {'u', {"#.#", "#.#", "#.#", "#.#", "###"}},
      {'v', {"#.#", "#.#", "#.#", "#.#", ".#."}},
      {'w', {"#.#", "#.#", "###", "###", "#.#"}},
      {'x', {"#.#", "#.#", ".#.", "#.#", "#.#"}},
      {'y', {"#.#", "#.#", ".#.", ".#.", ".#."}},
      {'z', {"###", "..#", ".#.", "#..", "###"}},
      {'.', {"...", "...", "...", "...", ".#."}},
      {',', {"...", "...", "...", ".#.", "#.."}},
      {'-', {"...", "...", "###", "...", "..."}},
      {'+', {"...", ".#.", "###", ".#.", "..."}},
      {'%', {"#.#", "..#", ".#.", "#..", "#.#"}},
      {':', {"...", ".#.", "...", ".#.", "..."}},
      {'(', {".#.", "#..", "#..", "#..", ".#."}},
      {')', {".#.", "..#", "..#", "..#", ".#."}},
      {'/', {"..#", "..#", ".#.", "#..", "#.."}},
      {'_', {"...", "...", "...", "...", "###"}},
      {'=', {"...", "###", "...", "###", "..."}},
      {' ', {"...", "...", "...", "...", "..."}},
  };
  return font;
}

class Canvas {
 public:
  Canvas(int width, int height)
      : width_(width),
        height_(height),
        pixels_(width * height, {255, 255, 255}) {}

  void set(int x, int y, Rgb c) {
    if (x >= 0 && x < width_ && y >= 0 && y < height_)
      pixels_[y * width_ + x] = c;
  }
  void rect(int x0, int y0, int x1, int y1, Rgb c) {
    for (int y = y0; y <= y1; ++y)
      for (int x = x0; x <= x1; ++x)
        set(x, y, c);
  }
  // Bresenham, `thickness` pixels wide.
  void line(int x0, int y0, int x1, int y1, Rgb c, int thickness = 1) {
    const int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0);
    const int sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    int err = dx + dy;
    while (true) {
      rect(x0, y0, x0 + thickness - 1, y0 + thickness - 1, c);
      if (x0 == x1 && y0 == y1)
        break;
      const int e2 = 2 * err;
      if (e2 >= dy) {
        err += dy;
        x0 += sx;
      }
      if (e2 <= dx) {
        err += dx;
        y0 += sy;
      }
    }
  }
  static int text_width(const std::string& text) {
    return static_cast<int>(text.size()) * 8;
  }
  void text(int x, int y, const std::string& text, Rgb c) {
    for (char ch : text) {
      const auto it = glyphs().find(static_cast<char>(std::tolower(ch)));
      if (it != glyphs().end()) {
        for (int row = 0; row < 5; ++row)
          for (int col = 0; col < 3; ++col)
            if (it->second[row][col] == '#')
              rect(
                  x + 2 * col,
                  y + 2 * row,
                  x + 2 * col + 1,
                  y + 2 * row + 1,
                  c);
      }
      x += 8;
    }
  }

  void write_png(const std::string& path) const {
    std::vector<uint8_t> raw;
    raw.reserve(height_ * (1 + 3 * width_));
    for (int y = 0; y < height_; ++y) {
      raw.push_back(0); // filter: none
      for (int x = 0; x < width_; ++x) {
        const Rgb& p = pixels_[y * width_ + x];
        raw.insert(raw.end(), {p.r, p.g, p.b});
      }
    }
    uLongf packed_size = compressBound(raw.size());
    std::vector<uint8_t> packed(packed_size);
    if (compress2(packed.data(), &packed_size, raw.data(), raw.size(), 9) !=
        Z_OK)
      throw std::runtime_error("write_line_plot: zlib failed for " + path);
    packed.resize(packed_size);

    std::vector<uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    const auto be32 = [&](uint32_t v) {
      for (int shift = 24; shift >= 0; shift -= 8)
        png.push_back(static_cast<uint8_t>(v >> shift));
    };
    const auto chunk = [&](const char* type, const std::vector<uint8_t>& data) {
      be32(static_cast<uint32_t>(data.size()));
      const size_t start = png.size();
      png.insert(png.end(), type, type + 4);
      png.insert(png.end(), data.begin(), data.end());
      be32(static_cast<uint32_t>(
          crc32(0, png.data() + start, png.size() - start)));
    };
    std::vector<uint8_t> header;
    for (uint32_t v :
         {static_cast<uint32_t>(width_), static_cast<uint32_t>(height_)})
      for (int shift = 24; shift >= 0; shift -= 8)
        header.push_back(static_cast<uint8_t>(v >> shift));
    header.insert(header.end(), {8, 2, 0, 0, 0}); // 8-bit RGB
    chunk("IHDR", header);
    chunk("IDAT", packed);
    chunk("IEND", {});

    const std::string tmp = path + ".tmp";
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f)
      throw std::runtime_error(
          "cannot write " + tmp + ": " + std::strerror(errno));
    const bool ok = std::fwrite(png.data(), 1, png.size(), f) == png.size();
    if (std::fclose(f) != 0 || !ok ||
        std::rename(tmp.c_str(), path.c_str()) != 0)
      throw std::runtime_error(
          "cannot write " + path + ": " + std::strerror(errno));
  }

 private:
  int width_, height_;
  std::vector<Rgb> pixels_;
};

// Ticks at 1, 2 or 5 times a power of ten, about `count` of them.
std::vector<double> nice_ticks(double lo, double hi, int count) {
  const double raw = (hi - lo) / count;
  const double power = std::pow(10.0, std::floor(std::log10(raw)));
  double step = power * 10;
  for (double m : {1.0, 2.0, 5.0}) {
    if (raw <= m * power) {
      step = m * power;
      break;
    }
  }
  std::vector<double> ticks;
  for (double t = std::ceil(lo / step) * step; t <= hi + step * 1e-9; t += step)
    ticks.push_back(std::abs(t) < step * 1e-9 ? 0.0 : t);
  return ticks;
}

std::string tick_label(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", v);
  return text;
}

} // namespace

void write_line_plot(
    const std::string& path,
    const std::string& title,
    const std::string& x_label,
    const std::vector<Series>& series) {
  constexpr int kWidth = 900, kHeight = 540;
  constexpr int kLeft = 80, kRight = 20, kTop = 40, kBottom = 60;
  static const std::array<Rgb, 8> palette = {
      {{31, 119, 180},
       {255, 127, 14},
       {44, 160, 44},
       {214, 39, 40},
       {148, 103, 189},
       {140, 86, 75},
       {227, 119, 194},
       {127, 127, 127}}};
  double x_lo = std::numeric_limits<double>::infinity(), x_hi = -x_lo;
  double y_lo = x_lo, y_hi = -x_lo;
  for (const auto& s : series) {
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.y[i]))
        continue;
      x_lo = std::min(x_lo, s.x[i]);
      x_hi = std::max(x_hi, s.x[i]);
      y_lo = std::min(y_lo, s.y[i]);
      y_hi = std::max(y_hi, s.y[i]);
    }
  }
  if (!std::isfinite(x_lo)) { // nothing to draw: an empty frame
    x_lo = 0, x_hi = 1, y_lo = 0, y_hi = 1;
  }
  if (x_hi == x_lo)
    x_hi = x_lo + 1;
  if (y_hi == y_lo)
    y_hi = y_lo + 1;
  const double y_pad = (y_hi - y_lo) * 0.05;
  y_lo -= y_pad;
  y_hi += y_pad;

  Canvas canvas(kWidth, kHeight);
  const int plot_w = kWidth - kLeft - kRight, plot_h = kHeight - kTop - kBottom;
  const auto px = [&](double x) {
    return kLeft +
        static_cast<int>(std::lround((x - x_lo) / (x_hi - x_lo) * plot_w));
  };
  const auto py = [&](double y) {
    return kTop + plot_h -
        static_cast<int>(std::lround((y - y_lo) / (y_hi - y_lo) * plot_h));
  };
  const Rgb grid{225, 225, 225}, ink{40, 40, 40};
  for (double t : nice_ticks(x_lo, x_hi, 8)) {
    canvas.line(px(t), kTop, px(t), kTop + plot_h, grid);
    const std::string label = tick_label(t);
    canvas.text(
        px(t) - Canvas::text_width(label) / 2, kTop + plot_h + 8, label, ink);
  }
  for (double t : nice_ticks(y_lo, y_hi, 6)) {
    canvas.line(kLeft, py(t), kLeft + plot_w, py(t), grid);
    const std::string label = tick_label(t);
    canvas.text(kLeft - 8 - Canvas::text_width(label), py(t) - 5, label, ink);
  }
  canvas.line(kLeft, kTop, kLeft, kTop + plot_h, ink);
  canvas.line(kLeft, kTop + plot_h, kLeft + plot_w, kTop + plot_h, ink);
  canvas.text((kWidth - Canvas::text_width(title)) / 2, 12, title, ink);
  canvas.text(
      kLeft + (plot_w - Canvas::text_width(x_label)) / 2,
      kHeight - 24,
      x_label,
      ink);

  for (size_t k = 0; k < series.size(); ++k) {
    const auto& s = series[k];
    const Rgb color = palette[k % palette.size()];
    bool have_last = false;
    int lx = 0, ly = 0;
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.y[i])) {
        have_last = false;
        continue;
      }
      const int x = px(s.x[i]), y = py(s.y[i]);
      if (have_last)
        canvas.line(lx, ly, x, y, color, 2);
      else
        canvas.rect(x - 1, y - 1, x + 1, y + 1, color);
      lx = x, ly = y, have_last = true;
    }
    // Legend, top right.
    const int ly0 = kTop + 10 + 16 * static_cast<int>(k);
    const int lx0 = kLeft + plot_w - 16 - Canvas::text_width(s.name) - 28;
    canvas.rect(lx0, ly0 + 3, lx0 + 20, ly0 + 5, color);
    canvas.text(lx0 + 28, ly0, s.name, ink);
  }
  canvas.write_png(path);
}

} // namespace qat::train
