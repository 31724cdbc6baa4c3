#include "trainers/data/corpus.h"

#include "qat/export/mapped_file.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include <dirent.h>
#include <unistd.h>

namespace qat::data {
namespace fs = std::filesystem;
namespace {

// Bumped whenever the files' layout or the split rule changes.
constexpr const char* kCacheVersion = "qat-corpus-2";

// A read-only mapping of a whole file, released with its last user; windows
// are read at random places.
std::shared_ptr<const MappedFile> map_file(const std::string& path) {
  auto file = std::make_shared<const MappedFile>(path, path);
  file->advise_random();
  return file;
}

// Appends tokens and mask bytes of one split to its two files.
struct SplitWriter {
  std::ofstream tokens, mask;
  int64_t count = 0, documents = 0;

  void open(const fs::path& dir, const char* name) {
    tokens.open(dir / (std::string(name) + ".tokens"), std::ios::binary);
    mask.open(dir / (std::string(name) + ".mask"), std::ios::binary);
    if (!tokens || !mask)
      throw std::runtime_error(
          (dir / name).string() + ": cannot write the token cache");
  }
  void add(int64_t id, bool trained) {
    const auto v = static_cast<uint32_t>(id);
    tokens.write(reinterpret_cast<const char*>(&v), sizeof v);
    mask.put(trained ? 1 : 0);
    ++count;
  }
};

// Which split a document goes to: 0 train, 1 validation, 2 test. Held-out
// documents are spread evenly (every 1/held_out-th, from an offset the seed
// picks), alternately validation and test: N documents hold out
// round(N * held_out) of them, whatever N, and both splits get one as soon as
// N * held_out >= 2.
int split_of(uint64_t seed, int64_t index, double held_out) {
  uint64_t h = fnv1a(
      std::string_view(reinterpret_cast<const char*>(&seed), sizeof seed));
  h ^= h >> 31;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 29;
  const double offset = static_cast<double>(h >> 11) * 0x1.0p-53;
  const auto before = static_cast<int64_t>(
      std::floor(offset + static_cast<double>(index) * held_out));
  const auto after = static_cast<int64_t>(
      std::floor(offset + static_cast<double>(index + 1) * held_out));
  if (after == before)
    return 0;
  return after % 2 == 0 ? 1 : 2;
}

// Removes a folder of files (the temporary cache). Not fs::remove_all: the
// process binds libtorch.so's exported copy of it (another libstdc++ build),
// which crashes on a non-empty folder.
void remove_flat(const fs::path& dir) {
  if (DIR* d = opendir(dir.c_str())) {
    while (const dirent* e = readdir(d)) {
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0)
        ::unlink((dir / e->d_name).c_str());
    }
    closedir(d);
  }
  ::rmdir(dir.c_str());
}

const char* const kSplitNames[3] = {"train", "validation", "test"};

Corpus map_cached(const fs::path& dir) {
  Corpus c;
  c.cache_dir = dir.string();
  TokenArray* arrays[3] = {&c.train, &c.validation, &c.test};
  std::ifstream meta(dir / "documents");
  for (int s = 0; s < 3; ++s) {
    const auto base = dir / kSplitNames[s];
    *arrays[s] =
        TokenArray::map(base.string() + ".tokens", 4, base.string() + ".mask");
    meta >> c.documents[s];
  }
  return c;
}

} // namespace

uint64_t fnv1a(std::string_view bytes, uint64_t h) {
  for (const unsigned char b : bytes) {
    h ^= b;
    h *= 0x100000001b3ull;
  }
  return h;
}

std::string hex64(uint64_t value) {
  char text[17];
  std::snprintf(
      text, sizeof text, "%016llx", static_cast<unsigned long long>(value));
  return text;
}

TokenArray TokenArray::map(
    const std::string& tokens_path,
    int width,
    const std::string& mask_path) {
  if (width != 2 && width != 4)
    throw std::invalid_argument("TokenArray: width must be 2 or 4 bytes");
  TokenArray t;
  t.width_ = width;
  auto tokens = map_file(tokens_path);
  const uint64_t bytes = tokens->size();
  if (bytes % width != 0)
    throw std::runtime_error(
        tokens_path + ": " + std::to_string(bytes) +
        " bytes is not a whole number of " + std::to_string(width * 8) +
        "-bit tokens");
  t.size_ = static_cast<int64_t>(bytes / width);
  t.tokens_ = tokens->data();
  std::shared_ptr<const MappedFile> mask;
  if (!mask_path.empty()) {
    mask = map_file(mask_path);
    const uint64_t mask_bytes = mask->size();
    if (mask_bytes != static_cast<uint64_t>(t.size_))
      throw std::runtime_error(
          mask_path + ": " + std::to_string(mask_bytes) + " mask bytes for " +
          std::to_string(t.size_) + " tokens");
    t.mask_ = mask->data();
  }
  t.file_ = tokens;
  t.keep_ = mask;
  return t;
}

TokenArray TokenArray::owned(std::vector<uint32_t> ids) {
  auto held = std::make_shared<std::vector<uint32_t>>(std::move(ids));
  TokenArray t;
  t.width_ = 4;
  t.size_ = static_cast<int64_t>(held->size());
  t.tokens_ = reinterpret_cast<const unsigned char*>(held->data());
  t.keep_ = held;
  return t;
}

int64_t TokenArray::max_token() const {
  constexpr int64_t kChunk = int64_t{1} << 24; // tokens
  int64_t best = -1;
  for (int64_t begin = 0; begin < size_; begin += kChunk) {
    const int64_t end = std::min(size_, begin + kChunk);
    for (int64_t i = begin; i < end; ++i)
      best = std::max(best, token(i));
    if (file_)
      file_->release(tokens_ + begin * width_, tokens_ + end * width_);
  }
  return best;
}

TokenArray TokenArray::slice(int64_t begin, int64_t length) const {
  if (begin < 0 || length < 0 || begin + length > size_)
    throw std::out_of_range("TokenArray::slice outside the array");
  TokenArray t = *this;
  t.tokens_ += begin * width_;
  if (t.mask_)
    t.mask_ += begin;
  t.size_ = length;
  return t;
}

void tokenize_document(
    const Document& doc,
    const Tokenizer& tokenizer,
    const std::function<void(int64_t, bool)>& emit) {
  if (tokenizer.adds_bos() && tokenizer.bos_id() >= 0)
    emit(tokenizer.bos_id(), false);
  if (doc.pieces.size() == 1) {
    for (const int64_t id : tokenizer.encode(doc.pieces[0].text))
      emit(id, doc.pieces[0].trained);
  } else if (!doc.pieces.empty()) {
    // The whole text is tokenized at once (pieces tokenized apart would
    // split differently where whitespace meets a boundary); a token is a
    // target when its bytes lie inside a trained piece. Its end is where the
    // decoded prefix ends.
    std::string text;
    std::vector<std::pair<size_t, size_t>> trained;
    for (const auto& piece : doc.pieces) {
      if (piece.trained)
        trained.emplace_back(text.size(), text.size() + piece.text.size());
      text += piece.text;
    }
    const auto ids = tokenizer.encode(text);
    size_t begin = 0;
    std::vector<int64_t> prefix;
    for (const int64_t id : ids) {
      prefix.push_back(id);
      const size_t end = std::min(tokenizer.decode(prefix).size(), text.size());
      bool inside = false;
      for (const auto& [b, e] : trained)
        inside = inside || (b <= begin && end <= e);
      emit(id, inside);
      begin = end;
    }
  }
  if (tokenizer.eos_id() >= 0)
    emit(tokenizer.eos_id(), doc.eos_trained);
}

Corpus tokenize_corpus(
    const DocumentSource& source,
    const Tokenizer& tokenizer,
    const CorpusOptions& options) {
  const std::string key_text = std::string(kCacheVersion) + "\n" +
      source.fingerprint() + "\n" + tokenizer.fingerprint() + "\n" +
      std::to_string(options.held_out) + "\n" + std::to_string(options.seed);
  const fs::path dir =
      fs::path(options.cache_dir) / "tokens" / hex64(fnv1a(key_text));
  const auto say = [&](const std::string& line) {
    if (options.progress)
      options.progress(line);
  };
  if (fs::exists(dir / "documents")) {
    say("data: tokenized " + source.describe() + " from the cache " +
        dir.string());
    return map_cached(dir);
  }
  const fs::path tmp = dir.string() + ".tmp-" + std::to_string(::getpid());
  remove_flat(tmp);
  fs::create_directories(tmp);
  SplitWriter writers[3];
  for (int s = 0; s < 3; ++s)
    writers[s].open(tmp, kSplitNames[s]);

  const uint64_t total = source.total_bytes();
  uint64_t done = 0, next_report = 64ull << 20;
  int64_t index = 0;
  const auto start = std::chrono::steady_clock::now();
  try {
    source.for_each([&](Document&& doc) {
      SplitWriter& w =
          writers[split_of(options.seed, index++, options.held_out)];
      tokenize_document(doc, tokenizer, [&](int64_t id, bool trained) {
        w.add(id, trained);
      });
      for (const auto& piece : doc.pieces)
        done += piece.text.size();
      ++w.documents;
      if (done >= next_report) {
        next_report += 64ull << 20;
        const double seconds = std::chrono::duration<double>(
                                   std::chrono::steady_clock::now() - start)
                                   .count();
        char line[160];
        std::snprintf(
            line,
            sizeof line,
            "data: tokenized %.0f of %.0f MB (%.1f MB/s), %lld documents",
            done / 1e6,
            total / 1e6,
            done / 1e6 / std::max(seconds, 1e-9),
            static_cast<long long>(index));
        say(line);
      }
    });
    for (auto& w : writers) {
      w.tokens.close();
      w.mask.close();
      if (!w.tokens || !w.mask)
        throw std::runtime_error(
            tmp.string() + ": writing the token cache failed (disk full?)");
    }
  } catch (...) {
    remove_flat(tmp);
    throw;
  }
  if (index == 0) {
    remove_flat(tmp);
    throw std::runtime_error(source.describe() + ": no documents");
  }
  for (int s = 1; s < 3; ++s) {
    if (writers[s].documents == 0) {
      remove_flat(tmp);
      throw std::runtime_error(
          "data.held_out: " + std::to_string(options.held_out) + " of " +
          std::to_string(index) + " documents (" + source.describe() +
          ") holds none out for " + kSplitNames[s] +
          "; give more documents (data.documents: paragraphs splits files at "
          "blank lines) or raise data.held_out");
    }
  }
  {
    std::ofstream meta(tmp / "documents");
    meta << writers[0].documents << " " << writers[1].documents << " "
         << writers[2].documents << "\n";
    meta << key_text << "\n";
    if (!meta)
      throw std::runtime_error(tmp.string() + ": cannot write the token cache");
  }
  std::error_code error;
  fs::rename(tmp, dir, error);
  if (error) {
    // Another process finished the same cache first: use theirs.
    remove_flat(tmp);
    if (!fs::exists(dir / "documents"))
      throw std::runtime_error(
          dir.string() +
          ": cannot move the token cache into place: " + error.message());
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  char line[200];
  std::snprintf(
      line,
      sizeof line,
      "data: tokenized %s in %.1f s: %lld documents, %lld tokens",
      source.describe().c_str(),
      seconds,
      static_cast<long long>(index),
      static_cast<long long>(
          writers[0].count + writers[1].count + writers[2].count));
  say(line);
  return map_cached(dir);
}

Corpus map_token_files(
    const std::string& path,
    int width,
    const std::string& validation_path,
    double held_out,
    int64_t eos_id) {
  Corpus c;
  const TokenArray all = TokenArray::map(path, width);
  TokenArray held;
  if (!validation_path.empty()) {
    c.train = all;
    held = TokenArray::map(validation_path, width);
  } else {
    int64_t cut = all.size() -
        static_cast<int64_t>(static_cast<double>(all.size()) * held_out);
    // Back to the end of a document, so that none straddles the cut; looked
    // for within the held-out length only (a file without EOS tokens would
    // otherwise be read whole at start-up), else the cut stays.
    if (eos_id >= 0) {
      const int64_t limit = std::max<int64_t>(0, cut - (all.size() - cut));
      int64_t at = cut;
      while (at > limit && all.token(at - 1) != eos_id)
        --at;
      if (at > limit)
        cut = at;
    }
    c.train = all.slice(0, cut);
    held = all.slice(cut, all.size() - cut);
  }
  const int64_t half = held.size() / 2;
  c.validation = held.slice(0, half);
  c.test = held.slice(half, held.size() - half);
  return c;
}

} // namespace qat::data
