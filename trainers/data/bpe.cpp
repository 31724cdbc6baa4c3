#include "trainers/data/bpe.h"

#include <algorithm>
#include <limits>
#include <stdexcept>

#include "trainers/text/utf8.h"

namespace qat::data {
namespace {

// GPT-2's reversible map from bytes to printable code points.
const std::vector<std::string>& byte_symbols() {
  static const std::vector<std::string> symbols = [] {
    std::vector<std::string> out(256);
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable =
          (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
      text::append_utf8(out[b], printable ? b : next++);
    }
    return out;
  }();
  return symbols;
}

const std::unordered_map<std::string, uint8_t>& symbol_bytes() {
  static const std::unordered_map<std::string, uint8_t> bytes = [] {
    std::unordered_map<std::string, uint8_t> out;
    for (int b = 0; b < 256; ++b)
      out[byte_symbols()[b]] = static_cast<uint8_t>(b);
    return out;
  }();
  return bytes;
}

struct CodePoint {
  uint32_t value;
  size_t begin, end; // byte range in the text
};

// Malformed UTF-8 bytes become one code point each (they stay bytes).
std::vector<CodePoint> decode_utf8(std::string_view text) {
  std::vector<CodePoint> out;
  for (size_t i = 0; i < text.size();) {
    const auto c = static_cast<uint8_t>(text[i]);
    const int extra = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC0 ? 1 : 0;
    uint32_t cp = extra == 0 ? c : c & (0x3F >> extra);
    bool ok = c < 0x80 || (c >= 0xC0 && c < 0xF8 && i + extra < text.size());
    for (int k = 1; ok && k <= extra; ++k) {
      const auto cc = static_cast<uint8_t>(text[i + k]);
      ok = (cc & 0xC0) == 0x80;
      cp = (cp << 6) | (cc & 0x3F);
    }
    const size_t length = ok ? static_cast<size_t>(extra) + 1 : 1;
    out.push_back({ok ? cp : c, i, i + length});
    i += length;
  }
  return out;
}

bool is_space(uint32_t c) {
  return c == ' ' || (c >= '\t' && c <= '\r') || c == 0x85 || c == 0xA0 ||
      c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
      c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}
bool is_digit(uint32_t c) {
  return c >= '0' && c <= '9';
}
bool is_letter(uint32_t c) {
  if (c < 0x80)
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  if (is_space(c))
    return false;
  const bool punctuation = (c >= 0xA1 && c <= 0xBF) || c == 0xD7 || c == 0xF7 ||
      (c >= 0x2000 && c <= 0x206F);
  return !punctuation;
}
enum class Class { letter, digit, space, other };
Class class_of(uint32_t c) {
  return is_letter(c) ? Class::letter
      : is_digit(c)   ? Class::digit
      : is_space(c)   ? Class::space
                      : Class::other;
}

// GPT-2's pattern over one segment; appends the pieces.
void gpt2_pieces(
    std::string_view text,
    const std::vector<CodePoint>& cps,
    size_t from,
    size_t to,
    std::vector<std::string>& out) {
  const auto emit = [&](size_t a, size_t b) {
    out.emplace_back(text.substr(cps[a].begin, cps[b - 1].end - cps[a].begin));
  };
  size_t i = from;
  while (i < to) {
    const uint32_t c = cps[i].value;
    if (c == '\'' && i + 1 < to) { // 's 't 're 've 'm 'll 'd
      const uint32_t a = cps[i + 1].value,
                     b = i + 2 < to ? cps[i + 2].value : 0;
      size_t n = 0;
      if (a == 's' || a == 't' || a == 'm' || a == 'd')
        n = 2;
      else if (
          (a == 'r' && b == 'e') || (a == 'v' && b == 'e') ||
          (a == 'l' && b == 'l'))
        n = 3;
      if (n) {
        emit(i, i + n);
        i += n;
        continue;
      }
    }
    const bool spaced = c == ' ' && i + 1 < to && !is_space(cps[i + 1].value);
    if (spaced || !is_space(c)) {
      const size_t start = i;
      const Class k = class_of(cps[i + (spaced ? 1 : 0)].value);
      i += spaced ? 1 : 0;
      while (i < to && class_of(cps[i].value) == k)
        ++i;
      emit(start, i);
      continue;
    }
    size_t end = i; // a run of spaces: all but the last if a word follows
    while (end < to && is_space(cps[end].value))
      ++end;
    if (end == to) {
      emit(i, end);
      i = end;
    } else if (end - i > 1) {
      emit(i, end - 1);
      i = end - 1;
    } else {
      emit(i, i + 1);
      ++i;
    }
  }
}

} // namespace

BpeTokenizer BpeTokenizer::from_gguf(const gguf::File& f) {
  const auto model = f.get("tokenizer.ggml.model").as_string();
  if (model != "gpt2") {
    throw gguf::GgufError(
        "GGUF file '" + f.path() + "': tokenizer model '" + model +
        "' is not byte-level BPE (gpt2)");
  }
  BpeTokenizer t;
  t.tokens_ = f.get("tokenizer.ggml.tokens").as_strings();
  for (size_t i = 0; i < t.tokens_.size(); ++i)
    t.ids_.emplace(t.tokens_[i], static_cast<int64_t>(i));
  const auto merges = f.get("tokenizer.ggml.merges").as_strings();
  for (size_t i = 0; i < merges.size(); ++i)
    t.merge_rank_.emplace(merges[i], static_cast<int64_t>(i));
  if (f.has("tokenizer.ggml.token_type")) {
    const auto& types = f.get("tokenizer.ggml.token_type").as_array();
    for (size_t i = 0; i < types.size() && i < t.tokens_.size(); ++i) {
      const auto type = types[i].as_int();
      if (type == 3 || type == 4) // control, user-defined
        t.control_.push_back(t.tokens_[i]);
    }
    std::sort(
        t.control_.begin(), t.control_.end(), [](const auto& a, const auto& b) {
          return a.size() > b.size();
        });
  }
  const auto pre = f.has("tokenizer.ggml.pre")
      ? f.get("tokenizer.ggml.pre").as_string()
      : "gpt2";
  if (pre != "gpt2" && pre != "smollm" && pre != "starcoder" &&
      pre != "default") {
    throw gguf::GgufError(
        "GGUF file '" + f.path() + "': pre-tokenizer '" + pre +
        "' is not supported (gpt2, smollm, starcoder)");
  }
  t.split_digits_ = pre == "smollm" || pre == "starcoder";
  if (f.has("tokenizer.ggml.bos_token_id"))
    t.bos_ = f.get("tokenizer.ggml.bos_token_id").as_int();
  if (f.has("tokenizer.ggml.eos_token_id"))
    t.eos_ = f.get("tokenizer.ggml.eos_token_id").as_int();
  return t;
}

std::vector<std::string> BpeTokenizer::pre_tokenize(
    std::string_view text) const {
  const auto cps = decode_utf8(text);
  std::vector<std::string> pieces;
  size_t start = 0;
  for (size_t i = 0; i <= cps.size(); ++i) {
    if (i < cps.size() && !(split_digits_ && is_digit(cps[i].value)))
      continue;
    gpt2_pieces(text, cps, start, i, pieces);
    if (i < cps.size())
      pieces.emplace_back(1, static_cast<char>(cps[i].value));
    start = i + 1;
  }
  return pieces;
}

void BpeTokenizer::encode_piece(
    const std::string& piece,
    std::vector<int64_t>& out) const {
  std::vector<std::string> word;
  for (unsigned char b : piece)
    word.push_back(byte_symbols()[b]);
  while (word.size() > 1) {
    int64_t best = std::numeric_limits<int64_t>::max();
    size_t at = 0;
    for (size_t i = 0; i + 1 < word.size(); ++i) {
      const auto it = merge_rank_.find(word[i] + " " + word[i + 1]);
      if (it != merge_rank_.end() && it->second < best) {
        best = it->second;
        at = i;
      }
    }
    if (best == std::numeric_limits<int64_t>::max())
      break;
    const std::string left = word[at], right = word[at + 1];
    std::vector<std::string> merged;
    for (size_t i = 0; i < word.size(); ++i) {
      if (i + 1 < word.size() && word[i] == left && word[i + 1] == right) {
        merged.push_back(left + right);
        ++i;
      } else {
        merged.push_back(word[i]);
      }
    }
    word = std::move(merged);
  }
  for (const auto& symbol : word) {
    const auto it = ids_.find(symbol);
    if (it == ids_.end())
      throw std::runtime_error(
          "BPE: symbol '" + symbol + "' is not in the vocabulary");
    out.push_back(it->second);
  }
}

std::vector<int64_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<int64_t> ids;
  size_t pos = 0;
  while (pos < text.size()) {
    // The next control token in the text, if any.
    size_t next = std::string_view::npos;
    const std::string* found = nullptr;
    for (const auto& c : control_) {
      const size_t at = text.find(c, pos);
      if (at < next) {
        next = at;
        found = &c;
      }
    }
    for (const auto& piece : pre_tokenize(text.substr(pos, next - pos)))
      encode_piece(piece, ids);
    if (!found)
      break;
    ids.push_back(ids_.at(*found));
    pos = next + found->size();
  }
  return ids;
}

std::string BpeTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string out;
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab_size())
      throw std::out_of_range(
          "BPE: token id " + std::to_string(id) + " out of range");
    const std::string& token = tokens_[id];
    if (std::find(control_.begin(), control_.end(), token) != control_.end()) {
      out += token;
      continue;
    }
    for (const auto& cp : decode_utf8(token)) {
      const auto it = symbol_bytes().find(
          std::string(token.substr(cp.begin, cp.end - cp.begin)));
      if (it != symbol_bytes().end())
        out += static_cast<char>(it->second);
    }
  }
  return out;
}

} // namespace qat::data
