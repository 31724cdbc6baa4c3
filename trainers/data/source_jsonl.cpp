// data.type jsonl: a JSON object a line (plain or .gz), the document at a
// configurable string field.
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "trainers/data/sources.h"

namespace qat::data {
namespace {

class JsonlSource final : public DocumentSource {
 public:
  explicit JsonlSource(const SourceOptions& o)
      : options_(o), files_(input_files(o.path)) {}

  void for_each(const std::function<void(Document&&)>& emit) const override {
    const bool replace = options_.invalid_utf8 == "replace";
    for (const auto& file : files_) {
      for_each_line(file, [&](std::string& line, int64_t number) {
        if (line.find_first_not_of(" \t\r") == std::string::npos)
          return;
        const std::string where = file + ":" + std::to_string(number);
        line = checked_utf8(std::move(line), file, number, replace);
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(line);
        } catch (const nlohmann::json::exception& e) {
          const std::string what = e.what();
          throw std::runtime_error(
              where + ": not a JSON line: " + what.substr(what.find(' ') + 1));
        }
        const auto it = j.is_object() ? j.find(options_.text_field) : j.end();
        if (it == j.end() || !it->is_string())
          throw std::runtime_error(
              where + ": no string field '" + options_.text_field +
              "' (data.text_field)");
        emit(Document{{{it->get<std::string>(), true}}});
      });
    }
  }

  std::string fingerprint() const override {
    return "jsonl field=" + options_.text_field +
        " utf8=" + options_.invalid_utf8 + "\n" + files_fingerprint(files_);
  }
  uint64_t total_bytes() const override {
    return files_bytes(files_);
  }
  std::string describe() const override {
    return "jsonl: " + std::to_string(files_.size()) + " file(s) at " +
        options_.path;
  }

 private:
  SourceOptions options_;
  std::vector<std::string> files_;
};

} // namespace

std::unique_ptr<DocumentSource> make_jsonl_source(const SourceOptions& o) {
  return std::make_unique<JsonlSource>(o);
}

} // namespace qat::data
