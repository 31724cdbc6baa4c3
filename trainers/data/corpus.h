// The user's text as training data: documents from a source (data.type text,
// jsonl, chat: trainers/data/source_*.cpp), tokenized once into token files in
// the cache and memory-mapped from there, or pre-tokenized files mapped as
// they are (data.type tokens). Torch-free; nothing holds the whole token
// stream in memory, so corpora larger than RAM train.
//
//   documents --tokenizer--> [BOS] ids EOS [BOS] ids EOS ...   per split
//
// Each document goes whole to train, validation or test, by a hash of
// (run seed, its index): no document is on both sides, and the same seed
// gives the same split. A cached corpus is keyed by the inputs' contents, the
// tokenizer and these options, and is written to a temporary folder that is
// renamed into place when complete: a crash leaves no half-written cache.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "trainers/data/tokenizer.h"

namespace qat {
class MappedFile;
}

namespace qat::data {

struct Document {
  // The text in pieces; the loss counts the tokens of pieces marked
  // `trained` (every piece of plain text, the assistant's turns of a chat).
  struct Piece {
    std::string text;
    bool trained = true;
  };
  std::vector<Piece> pieces;
  // Whether the EOS that ends the document is a training target.
  bool eos_trained = true;
};

class DocumentSource {
 public:
  virtual ~DocumentSource() = default;
  // Calls `emit` for every document, in a fixed order, reading as it goes.
  // Errors name the file and line.
  virtual void for_each(const std::function<void(Document&&)>& emit) const = 0;
  // The inputs' names and contents and the source's options (cache key).
  virtual std::string fingerprint() const = 0;
  // Total input bytes (for progress lines).
  virtual uint64_t total_bytes() const = 0;
  // "text: 12 files under /data/notes"
  virtual std::string describe() const = 0;
};

// Token ids (uint16 or uint32) and an optional loss mask (uint8, 1 = the
// token is a training target), mapped read-only from files.
class TokenArray {
 public:
  TokenArray() = default;
  // `width` 2 or 4 bytes per token; an empty mask path means every token
  // is a target. Throws naming the file when it is not a whole number of
  // tokens or the mask's length differs.
  static TokenArray map(
      const std::string& tokens_path,
      int width,
      const std::string& mask_path = "");
  // Ids held in memory (small corpora built in the process).
  static TokenArray owned(std::vector<uint32_t> ids);
  int64_t size() const {
    return size_;
  }
  int64_t token(int64_t i) const {
    return width_ == 2 ? reinterpret_cast<const uint16_t*>(tokens_)[i]
                       : reinterpret_cast<const uint32_t*>(tokens_)[i];
  }
  // 1 when there is no mask.
  uint8_t trained(int64_t i) const {
    return mask_ ? mask_[i] : 1;
  }
  // The largest id: a scan that drops the file's pages behind it, so that
  // checking a corpus larger than memory does not keep it resident.
  int64_t max_token() const;
  // The part [begin, begin + length) as a view (same mapping).
  TokenArray slice(int64_t begin, int64_t length) const;

 private:
  std::shared_ptr<const void> keep_;       // what the pointers point into
  std::shared_ptr<const MappedFile> file_; // the tokens' mapping, if mapped
  const unsigned char* tokens_ = nullptr;
  const uint8_t* mask_ = nullptr;
  int64_t size_ = 0;
  int width_ = 4;
};

struct Corpus {
  TokenArray train, validation, test;
  int64_t documents[3] = {0, 0, 0}; // train, validation, test
  std::string cache_dir;            // where the token files are ("" if none)
};

struct CorpusOptions {
  double held_out = 0.05; // of the documents: half validation, half test
  uint64_t seed = 0;
  std::string cache_dir; // the data cache (data_cache_dir())
  // Called with progress lines on long tokenizations.
  std::function<void(const std::string&)> progress;
};

// One document's ids and whether each is a target, as the corpus stores it:
// [BOS (if the tokenizer adds one; not a target)] pieces... EOS (a target
// if doc.eos_trained), each piece's ids encoded on their own.
void tokenize_document(
    const Document& doc,
    const Tokenizer& tokenizer,
    const std::function<void(int64_t id, bool trained)>& emit);

// The tokenized corpus of `source`, from the cache when it is there. Throws
// std::runtime_error when a split gets no document (naming data.held_out)
// or the source has no text.
Corpus tokenize_corpus(
    const DocumentSource& source,
    const Tokenizer& tokenizer,
    const CorpusOptions& options);

// data.type tokens: a pre-tokenized file (the nanoGPT / Megatron convention:
// a flat array of uint16 or uint32 ids). The validation and test tokens come
// from `validation_path` (its halves) when given, else from the file's last
// held_out fraction, cut at an EOS token so that no document straddles (the
// last EOS within that many tokens before the cut; none there: the cut
// stays).
Corpus map_token_files(
    const std::string& path,
    int width,
    const std::string& validation_path,
    double held_out,
    int64_t eos_id);

} // namespace qat::data
