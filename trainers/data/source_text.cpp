// data.type text: UTF-8 files, a document per file or per paragraph.
#include <fstream>
#include <stdexcept>

#include "trainers/data/sources.h"

namespace qat::data {
namespace {

class TextSource final : public FileSource {
 public:
  explicit TextSource(const SourceOptions& o) : FileSource("text", o) {}

  void for_each(const std::function<void(Document&&)>& emit) const override {
    const bool replace = options_.replace_invalid_utf8;
    for (const auto& file : files_) {
      std::ifstream in(file, std::ios::binary);
      if (!in)
        throw std::runtime_error(file + ": cannot read");
      std::string text(
          (std::istreambuf_iterator<char>(in)),
          std::istreambuf_iterator<char>());
      if (!options_.paragraphs) {
        text = checked_utf8(std::move(text), file, 1, replace);
        if (!text.empty())
          emit(Document{{{std::move(text), true}}});
        continue;
      }
      // Paragraphs: runs of lines between blank lines.
      int64_t line = 1, first = 1;
      std::string paragraph;
      size_t begin = 0;
      const auto flush = [&] {
        if (!paragraph.empty())
          emit(Document{
              {{checked_utf8(std::move(paragraph), file, first, replace),
                true}}});
        paragraph.clear();
      };
      while (begin <= text.size()) {
        size_t end = text.find('\n', begin);
        if (end == std::string::npos)
          end = text.size();
        const std::string_view row(text.data() + begin, end - begin);
        if (row.find_first_not_of(" \t\r") == std::string_view::npos) {
          flush();
          first = line + 1;
        } else {
          paragraph.append(row);
          paragraph += '\n';
        }
        ++line;
        begin = end + 1;
      }
      flush();
    }
  }
};

} // namespace

std::unique_ptr<DocumentSource> make_text_source(const SourceOptions& o) {
  return std::make_unique<TextSource>(o);
}

} // namespace qat::data
