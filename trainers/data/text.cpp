#include "trainers/data/text.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace qat::data {
namespace {

constexpr const char* kFirstVerse =
    "In the beginning God created the heaven and the earth.\n";
constexpr const char* kLastVerse =
    "The grace of our Lord Jesus Christ be with you all. Amen.\n";
constexpr int kVerses = 31102;

bool looks_complete(const std::string& text) {
  return text.rfind(kFirstVerse, 0) == 0 && text.size() > 4'000'000 &&
      text.compare(
          text.size() - std::strlen(kLastVerse),
          std::string::npos,
          kLastVerse) == 0;
}

// "Ge1:1 In the beginning..." -> "In the beginning...".
std::string strip_reference(const std::string& line) {
  const size_t space = line.find(' ');
  const size_t colon = line.find(':');
  if (space == std::string::npos || colon == std::string::npos || colon > space)
    throw std::runtime_error(
        "bible: unexpected line '" + line.substr(0, 60) + "'");
  return line.substr(space + 1);
}

std::string run_bible_program() {
  FILE* pipe = ::popen("bible -f gen1:1-rev22:21 2>/dev/null", "r");
  if (!pipe)
    throw std::runtime_error("cannot start the `bible` program");
  std::string raw;
  char buffer[1 << 16];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0)
    raw.append(buffer, n);
  const int status = ::pclose(pipe);
  if (status != 0 || raw.empty()) {
    throw std::runtime_error(
        "the `bible` program (Debian package bible-kjv) failed or is missing: "
        "run scripts/setup.sh");
  }
  std::istringstream lines(raw);
  std::string line, text;
  int verses = 0;
  while (std::getline(lines, line)) {
    if (line.empty())
      continue;
    text += strip_reference(line) + "\n";
    ++verses;
  }
  if (verses != kVerses || !looks_complete(text)) {
    throw std::runtime_error(
        "the `bible` program printed " + std::to_string(verses) +
        " verses, expected the " + std::to_string(kVerses) +
        " of the King James Bible from Genesis 1:1 to Revelation 22:21");
  }
  return text;
}

} // namespace

torch::Tensor ByteTokenizer::encode(std::string_view text) const {
  torch::Tensor bytes =
      torch::empty({static_cast<int64_t>(text.size())}, torch::kUInt8);
  std::memcpy(bytes.data_ptr(), text.data(), text.size());
  return bytes.to(torch::kLong);
}

std::string ByteTokenizer::decode(const torch::Tensor& tokens) const {
  const torch::Tensor bytes = tokens.to(torch::kUInt8).contiguous();
  return std::string(static_cast<const char*>(bytes.data_ptr()), bytes.numel());
}

std::string kjv_text(const std::string& cache_dir) {
  const std::string cache = cache_dir + "/kjv.txt";
  {
    std::ifstream in(cache, std::ios::binary);
    if (in) {
      std::string text(
          (std::istreambuf_iterator<char>(in)),
          std::istreambuf_iterator<char>());
      if (looks_complete(text))
        return text;
    }
  }
  std::string text = run_bible_program();
  std::error_code ignored;
  std::filesystem::create_directories(cache_dir, ignored);
  const std::string tmp = cache + ".tmp";
  if (std::ofstream out{tmp, std::ios::binary}) {
    out << text;
    out.close();
    if (out)
      std::filesystem::rename(tmp, cache, ignored);
  }
  return text;
}

TextSplits load_kjv(double validation_fraction, const std::string& cache_dir) {
  if (!(validation_fraction > 0.0 && validation_fraction < 1.0)) {
    throw std::invalid_argument(
        "load_kjv: validation_fraction must be in (0, 1), got " +
        std::to_string(validation_fraction));
  }
  const torch::Tensor tokens = ByteTokenizer().encode(kjv_text(cache_dir));
  const int64_t n = tokens.numel();
  const int64_t boundary =
      n - static_cast<int64_t>(static_cast<double>(n) * validation_fraction);
  return {tokens.slice(0, 0, boundary), tokens.slice(0, boundary)};
}

torch::Tensor sample_windows(
    const torch::Tensor& tokens,
    int64_t batch,
    int64_t length,
    uint64_t seed) {
  if (length < 1 || tokens.numel() < length + 1) {
    throw std::invalid_argument(
        "sample_windows: need at least length + 1 = " +
        std::to_string(length + 1) + " tokens, have " +
        std::to_string(tokens.numel()));
  }
  const auto starts = torch::randint(
      0,
      tokens.numel() - length,
      {batch, 1},
      at::detail::createCPUGenerator(seed),
      torch::kLong);
  return tokens.index({starts + torch::arange(length + 1)});
}

} // namespace qat::data
