#include "trainers/data/sources.h"

#include <glob.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "trainers/data/gz_file.h"

namespace qat::data {
namespace fs = std::filesystem;

std::vector<std::string> document_source_types() {
  return {"text", "jsonl", "chat"};
}

std::unique_ptr<DocumentSource> make_document_source(
    const std::string& type,
    const SourceOptions& options,
    std::shared_ptr<const Tokenizer> tokenizer) {
  if (type == "text")
    return make_text_source(options);
  if (type == "jsonl")
    return make_jsonl_source(options);
  if (type == "chat")
    return make_chat_source(options, std::move(tokenizer));
  throw std::invalid_argument("unknown data type '" + type + "'");
}

std::vector<std::string> input_files(const std::string& path) {
  std::vector<std::string> files;
  if (fs::is_directory(path)) {
    for (const auto& entry : fs::recursive_directory_iterator(path)) {
      const auto name = entry.path().filename().string();
      if (entry.is_regular_file() && !name.empty() && name[0] != '.')
        files.push_back(entry.path().string());
    }
  } else if (fs::is_regular_file(path)) {
    files.push_back(path);
  } else if (path.find_first_of("*?[") != std::string::npos) {
    glob_t matches{};
    if (glob(path.c_str(), 0, nullptr, &matches) == 0) {
      for (size_t i = 0; i < matches.gl_pathc; ++i) {
        if (fs::is_regular_file(matches.gl_pathv[i]))
          files.emplace_back(matches.gl_pathv[i]);
      }
    }
    globfree(&matches);
  }
  if (files.empty())
    throw std::runtime_error(
        "'" + path + "' names no file (a file, a folder or a glob)");
  std::sort(files.begin(), files.end());
  return files;
}

std::string files_fingerprint(const std::vector<std::string>& files) {
  std::string out;
  std::vector<char> buffer(1 << 20);
  for (const auto& file : files) {
    std::ifstream in(file, std::ios::binary);
    uint64_t h = fnv1a("");
    uint64_t size = 0;
    while (in) {
      in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
      const auto n = static_cast<size_t>(in.gcount());
      h = fnv1a(std::string_view(buffer.data(), n), h);
      size += n;
    }
    out += fs::absolute(file).string() + ":" + std::to_string(size) + ":" +
        hex64(h) + "\n";
  }
  return out;
}

uint64_t files_bytes(const std::vector<std::string>& files) {
  uint64_t total = 0;
  for (const auto& file : files)
    total += fs::file_size(file);
  return total;
}

std::string SourceOptions::key() const {
  return std::string("paragraphs=") + (paragraphs ? "1" : "0") +
      " field=" + text_field +
      " replace_utf8=" + (replace_invalid_utf8 ? "1" : "0");
}

FileSource::FileSource(std::string kind, const SourceOptions& options)
    : kind_(std::move(kind)),
      options_(options),
      files_(input_files(options.path)) {}

uint64_t FileSource::total_bytes() const {
  return files_bytes(files_);
}

std::string FileSource::describe() const {
  return kind_ + ": " + std::to_string(files_.size()) + " file(s) at " +
      options_.path;
}

std::string FileSource::fingerprint_of(const std::string& extra) const {
  return kind_ + " " + options_.key() + extra + "\n" +
      files_fingerprint(files_);
}

std::string checked_utf8(
    std::string text,
    const std::string& file,
    int64_t first_line,
    bool replace) {
  std::string out;
  int64_t line = first_line;
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  bool clean = true;
  for (size_t i = 0; i < n;) {
    const unsigned char b = s[i];
    size_t length = b < 0x80 ? 1
        : (b >> 5) == 0x6    ? 2
        : (b >> 4) == 0xE    ? 3
        : (b >> 3) == 0x1E   ? 4
                             : 0;
    bool ok = length > 0 && i + length <= n;
    for (size_t k = 1; ok && k < length; ++k)
      ok = (s[i + k] & 0xC0) == 0x80;
    if (ok && length > 1) {
      // Overlong forms, surrogates and code points past U+10FFFF.
      uint32_t cp = b & (0xFF >> (length + 1));
      for (size_t k = 1; k < length; ++k)
        cp = (cp << 6) | (s[i + k] & 0x3F);
      ok = !(length == 2 && cp < 0x80) && !(length == 3 && cp < 0x800) &&
          !(length == 4 && (cp < 0x10000 || cp > 0x10FFFF)) &&
          !(cp >= 0xD800 && cp <= 0xDFFF);
    }
    if (!ok) {
      if (!replace) {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02X", b);
        throw std::runtime_error(
            file + ":" + std::to_string(line) + ": invalid UTF-8 (byte " + hex +
            "); data.invalid_utf8: replace substitutes U+FFFD");
      }
      if (clean) {
        out.assign(text, 0, i);
        clean = false;
      }
      out += "\xEF\xBF\xBD";
      ++i;
      continue;
    }
    if (b == '\n')
      ++line;
    if (!clean)
      out.append(text, i, length);
    i += length;
  }
  return clean ? text : out;
}

namespace {

// Each line of a plain or gzip file, with its 1-based number.
void for_each_line(
    const std::string& file,
    const std::function<void(std::string&, int64_t)>& line) {
  GzFile in(file, "data file");
  std::string pending;
  char buffer[1 << 16];
  int64_t number = 0;
  size_t n;
  while ((n = in.read(buffer, sizeof buffer)) > 0) {
    pending.append(buffer, n);
    size_t begin = 0;
    for (size_t end; (end = pending.find('\n', begin)) != std::string::npos;
         begin = end + 1) {
      std::string text = pending.substr(begin, end - begin);
      line(text, ++number);
    }
    pending.erase(0, begin);
  }
  if (!pending.empty())
    line(pending, ++number);
}

} // namespace

void for_each_json_line(
    const std::string& file,
    bool replace_invalid_utf8,
    const std::function<void(const nlohmann::json&, const std::string&)>& fn) {
  for_each_line(file, [&](std::string& line, int64_t number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos)
      return;
    const std::string where = file + ":" + std::to_string(number);
    line = checked_utf8(std::move(line), file, number, replace_invalid_utf8);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      const std::string what = e.what();
      throw std::runtime_error(
          where + ": not a JSON line: " + what.substr(what.find(' ') + 1));
    }
    fn(j, where);
  });
}

} // namespace qat::data
