// The user's data, one DocumentSource per data.type (each in its own file):
//
//   text    files, folders (recursively) or globs of UTF-8 text; a document
//           per file, or per blank-line-separated paragraph
//           (source_text.cpp)
//   jsonl   a JSON object a line, plain or .gz; the document is the string
//           at `text_field` (source_jsonl.cpp)
//   chat    JSONL lines {"messages": [{"role", "content"}, ...]} rendered
//           with the model's chat template; the loss counts the assistant's
//           turns (source_chat.cpp)
//
// (data.type tokens, pre-tokenized files, needs no documents: corpus.h.)
// Errors name the file and line; nothing is written before the whole input
// is read.
#pragma once

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "trainers/data/corpus.h"

namespace qat::data {

struct SourceOptions {
  std::string path; // a file, folder or glob
  // text: a document per blank-line-separated paragraph, not per file.
  bool paragraphs = false;
  std::string text_field = "text"; // jsonl
  // Invalid UTF-8 becomes U+FFFD instead of an error naming file:line.
  bool replace_invalid_utf8 = false;

  // The options' part of a cache key.
  std::string key() const;
};

// The types make_document_source accepts.
std::vector<std::string> document_source_types();

// Throws std::invalid_argument for an unknown type, std::runtime_error for
// paths that match nothing.
std::unique_ptr<DocumentSource> make_document_source(
    const std::string& type,
    const SourceOptions& options,
    std::shared_ptr<const Tokenizer> tokenizer);

// --- shared by the sources ------------------------------------------------

// The files `path` names: itself, the regular files under a folder (sorted,
// hidden ones skipped), or a glob's matches (sorted). Throws naming the path
// when there are none.
std::vector<std::string> input_files(const std::string& path);

// "<name>:<size>:<hash of contents>" for each file, for cache keys.
std::string files_fingerprint(const std::vector<std::string>& files);
uint64_t files_bytes(const std::vector<std::string>& files);

// `text` checked as UTF-8: invalid bytes throw "<file>:<line>: invalid UTF-8
// ..." or, with replace, become U+FFFD.
std::string checked_utf8(
    std::string text,
    const std::string& file,
    int64_t first_line,
    bool replace);

// Each non-blank line of a plain or gzip JSONL file, checked as UTF-8
// (checked_utf8) and parsed, with "<file>:<line>" for the caller's errors;
// a line that is not JSON throws "<file>:<line>: not a JSON line: ...".
void for_each_json_line(
    const std::string& file,
    bool replace_invalid_utf8,
    const std::function<void(const nlohmann::json&, const std::string& where)>&
        line);

// What the three sources share: the files data.path names, read in order.
class FileSource : public DocumentSource {
 public:
  FileSource(std::string kind, const SourceOptions& options);
  uint64_t total_bytes() const override;
  std::string fingerprint() const override {
    return fingerprint_of();
  }
  // "<kind>: N file(s) at <data.path>"
  std::string describe() const override;

 protected:
  // The kind, the options (and `extra`) and the files' fingerprint: the
  // cache key.
  std::string fingerprint_of(const std::string& extra = "") const;
  std::string kind_;
  SourceOptions options_;
  std::vector<std::string> files_;
};

std::unique_ptr<DocumentSource> make_text_source(const SourceOptions& o);
std::unique_ptr<DocumentSource> make_jsonl_source(const SourceOptions& o);
std::unique_ptr<DocumentSource> make_chat_source(
    const SourceOptions& o,
    std::shared_ptr<const Tokenizer> tokenizer);

} // namespace qat::data
