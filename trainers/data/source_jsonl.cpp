// data.type jsonl: a JSON object a line (plain or .gz), the document at a
// configurable string field.
#include <stdexcept>

#include "trainers/data/sources.h"

namespace qat::data {
namespace {

class JsonlSource final : public FileSource {
 public:
  explicit JsonlSource(const SourceOptions& o) : FileSource("jsonl", o) {}

  void for_each(const std::function<void(Document&&)>& emit) const override {
    const bool replace = options_.replace_invalid_utf8;
    for (const auto& file : files_) {
      for_each_json_line(
          file,
          replace,
          [&](const nlohmann::json& j, const std::string& where) {
            const auto it =
                j.is_object() ? j.find(options_.text_field) : j.end();
            if (it == j.end() || !it->is_string())
              throw std::runtime_error(
                  where + ": no string field '" + options_.text_field +
                  "' (data.text_field)");
            emit(Document{{{it->get<std::string>(), true}}});
          });
    }
  }
};

} // namespace

std::unique_ptr<DocumentSource> make_jsonl_source(const SourceOptions& o) {
  return std::make_unique<JsonlSource>(o);
}

} // namespace qat::data
