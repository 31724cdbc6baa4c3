#include "trainers/text/hf_tokenizer.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>

#include "trainers/text/utf8.h"

namespace qat::text {
namespace {

using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// Unicode classes

struct CodeRange {
  uint32_t first, last;
};
#include "trainers/text/unicode_tables.inc"

enum : uint8_t { kL = 1, kN = 2, kWS = 4, kW = 8, kRN = 16 };

// Two-stage table over all code points: block index per 256 code points, blocks deduplicated.
class ClassTable {
 public:
  ClassTable() {
    std::vector<uint8_t> flat(0x110000, 0);
    auto mark = [&](const CodeRange* r, size_t n, uint8_t bit) {
      for (size_t i = 0; i < n; ++i)
        for (uint32_t c = r[i].first; c <= r[i].last; ++c)
          flat[c] |= bit;
    };
    mark(kLetter, std::size(kLetter), kL);
    mark(kNumber, std::size(kNumber), kN);
    mark(kWhiteSpace, std::size(kWhiteSpace), kWS);
    mark(kWord, std::size(kWord), kW);
    mark(kRustNumber, std::size(kRustNumber), kRN);
    std::unordered_map<std::string, uint32_t> seen;
    stage1_.resize(0x110000 >> 8);
    for (uint32_t b = 0; b < (0x110000 >> 8); ++b) {
      std::string key(reinterpret_cast<const char*>(&flat[b << 8]), 256);
      auto it = seen.find(key);
      if (it == seen.end()) {
        it = seen.emplace(key, static_cast<uint32_t>(blocks_.size())).first;
        blocks_.insert(
            blocks_.end(),
            flat.begin() + (b << 8),
            flat.begin() + (b << 8) + 256);
      }
      stage1_[b] = it->second;
    }
  }
  uint8_t operator()(uint32_t cp) const {
    if (cp >= 0x110000)
      return 0;
    return blocks_[stage1_[cp >> 8] + (cp & 0xFF)];
  }

 private:
  std::vector<uint32_t> stage1_;
  std::vector<uint8_t> blocks_;
};

const ClassTable& classes() {
  static const ClassTable table;
  return table;
}

inline uint8_t cls(uint32_t cp) {
  return classes()(cp);
}

// Decodes the code point at s[i] (valid UTF-8 assumed); sets len.
inline uint32_t decode_at(std::string_view s, size_t i, size_t& len) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    len = 1;
    return b0;
  }
  if (b0 < 0xE0) {
    len = 2;
    return ((b0 & 0x1Fu) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3Fu);
  }
  if (b0 < 0xF0) {
    len = 3;
    return ((b0 & 0x0Fu) << 12) |
        ((static_cast<unsigned char>(s[i + 1]) & 0x3Fu) << 6) |
        (static_cast<unsigned char>(s[i + 2]) & 0x3Fu);
  }
  len = 4;
  return ((b0 & 0x07u) << 18) |
      ((static_cast<unsigned char>(s[i + 1]) & 0x3Fu) << 12) |
      ((static_cast<unsigned char>(s[i + 2]) & 0x3Fu) << 6) |
      (static_cast<unsigned char>(s[i + 3]) & 0x3Fu);
}

// Length of the valid UTF-8 sequence at s[i], or the length of its maximal invalid prefix
// (at least 1) negated: Rust's from_utf8_lossy replaces each such prefix by one U+FFFD.
int utf8_step(std::string_view s, size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80)
    return 1;
  int need;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    if (b0 == 0xE0)
      lo = 0xA0;
    if (b0 == 0xED)
      hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    if (b0 == 0xF0)
      lo = 0x90;
    if (b0 == 0xF4)
      hi = 0x8F;
  } else {
    return -1;
  }
  for (int k = 1; k <= need; ++k) {
    if (i + k >= s.size())
      return -k;
    const auto b = static_cast<unsigned char>(s[i + k]);
    if (b < lo || b > hi)
      return -k;
    lo = 0x80;
    hi = 0xBF;
  }
  return need + 1;
}

bool valid_utf8(std::string_view s, size_t& bad) {
  for (size_t i = 0; i < s.size();) {
    const int n = utf8_step(s, i);
    if (n < 0) {
      bad = i;
      return false;
    }
    i += static_cast<size_t>(n);
  }
  return true;
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const int n = utf8_step(s, i);
    if (n > 0) {
      out.append(s.substr(i, static_cast<size_t>(n)));
      i += static_cast<size_t>(n);
    } else {
      out += "\xEF\xBF\xBD";
      i += static_cast<size_t>(-n);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// GPT-2's byte <-> printable code point map

struct ByteMap {
  std::array<std::string, 256> byte_to_utf8;
  std::array<int, 0x200>
      cp_to_byte; // -1 when the code point is no byte's image
  ByteMap() {
    std::array<uint32_t, 256> cp{};
    std::array<bool, 256> direct{};
    for (int b = '!'; b <= '~'; ++b)
      direct[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b)
      direct[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b)
      direct[b] = true;
    uint32_t n = 0;
    for (int b = 0; b < 256; ++b)
      cp[b] = direct[b] ? static_cast<uint32_t>(b) : 256 + n++;
    cp_to_byte.fill(-1);
    for (int b = 0; b < 256; ++b) {
      append_utf8(byte_to_utf8[b], cp[b]);
      cp_to_byte[cp[b]] = b;
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap map;
  return map;
}

// ---------------------------------------------------------------------------------------------
// Hash maps keyed by strings (string_view lookups) and by id pairs

uint64_t hash_bytes(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s)
    h = (h ^ c) * 1099511628211ull;
  return h ^ (h >> 29);
}

// Open addressing from strings to int32 values; the keys live in `keys_`.
class StringMap {
 public:
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2)
      cap <<= 1;
    rehash(cap);
  }
  // Inserts or overwrites.
  void set(std::string_view key, int32_t value) {
    if ((count_ + 1) * 2 > slots_.size())
      rehash(std::max<size_t>(16, slots_.size() * 2));
    size_t i = hash_bytes(key) & (slots_.size() - 1);
    while (slots_[i] >= 0) {
      if (keys_[static_cast<size_t>(slots_[i])] == key) {
        values_[static_cast<size_t>(slots_[i])] = value;
        return;
      }
      i = (i + 1) & (slots_.size() - 1);
    }
    slots_[i] = static_cast<int32_t>(keys_.size());
    keys_.emplace_back(key);
    values_.push_back(value);
    ++count_;
  }
  const int32_t* find(std::string_view key) const {
    if (slots_.empty())
      return nullptr;
    size_t i = hash_bytes(key) & (slots_.size() - 1);
    while (slots_[i] >= 0) {
      const auto k = static_cast<size_t>(slots_[i]);
      if (keys_[k] == key)
        return &values_[k];
      i = (i + 1) & (slots_.size() - 1);
    }
    return nullptr;
  }
  size_t size() const {
    return count_;
  }
  const std::vector<std::string>& keys() const {
    return keys_;
  }
  const std::vector<int32_t>& values() const {
    return values_;
  }

 private:
  void rehash(size_t cap) {
    slots_.assign(cap, -1);
    for (size_t k = 0; k < keys_.size(); ++k) {
      size_t i = hash_bytes(keys_[k]) & (cap - 1);
      while (slots_[i] >= 0)
        i = (i + 1) & (cap - 1);
      slots_[i] = static_cast<int32_t>(k);
    }
  }
  std::vector<int32_t> slots_;
  std::vector<std::string> keys_;
  std::vector<int32_t> values_;
  size_t count_ = 0;
};

struct MergeEntry {
  uint64_t key = ~0ull;
  int32_t rank = 0;
  int32_t new_id = 0;
};

class MergeMap {
 public:
  static uint64_t key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) |
        static_cast<uint32_t>(b);
  }
  static size_t hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return static_cast<size_t>(k);
  }
  void init(size_t n) {
    size_t cap = 16;
    while (cap < n * 2)
      cap <<= 1;
    slots_.assign(cap, MergeEntry{});
  }
  void set(int32_t a, int32_t b, int32_t rank, int32_t new_id) {
    const uint64_t k = key(a, b);
    size_t i = hash(k) & (slots_.size() - 1);
    while (slots_[i].key != ~0ull && slots_[i].key != k)
      i = (i + 1) & (slots_.size() - 1);
    slots_[i] = MergeEntry{k, rank, new_id};
  }
  const MergeEntry* find(int32_t a, int32_t b) const {
    const uint64_t k = key(a, b);
    size_t i = hash(k) & (slots_.size() - 1);
    while (slots_[i].key != ~0ull) {
      if (slots_[i].key == k)
        return &slots_[i];
      i = (i + 1) & (slots_.size() - 1);
    }
    return nullptr;
  }

 private:
  std::vector<MergeEntry> slots_;
};

// ---------------------------------------------------------------------------------------------
// The known pre-tokenizer regular expressions, as hand-written matchers (onig semantics:
// leftmost-first alternation, greedy quantifiers with backtracking).

const char* const kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* const kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

enum class RegexKind { kGpt2, kLlama3, kQwen2 };

struct Span {
  size_t start, end;
};

// Contraction after an apostrophe at s[i]: returns its byte length (0 when none).
size_t contraction(std::string_view s, size_t i, bool fold) {
  auto ch = [&](size_t k, size_t& len) -> uint32_t {
    if (k >= s.size()) {
      len = 0;
      return 0xFFFFFFFF;
    }
    uint32_t c = decode_at(s, k, len);
    if (fold) {
      if (c == 0x17F)
        c = 's'; // LATIN SMALL LETTER LONG S folds to s
      if (c >= 'A' && c <= 'Z')
        c += 32;
    }
    return c;
  };
  size_t l1 = 0, l2 = 0;
  const uint32_t c1 = ch(i + 1, l1);
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd')
    return 1 + l1;
  if (c1 != 'r' && c1 != 'v' && c1 != 'l')
    return 0;
  const uint32_t c2 = ch(i + 1 + l1, l2);
  if ((c1 == 'r' || c1 == 'v') && c2 == 'e')
    return 1 + l1 + l2;
  if (c1 == 'l' && c2 == 'l')
    return 1 + l1 + l2;
  return 0;
}

inline bool is_other(uint8_t f) {
  return (f & (kL | kN | kWS)) == 0;
}

// End of the run of code points from i whose class satisfies pred; at most max_count of them.
template <class Pred>
size_t run_end(
    std::string_view s,
    size_t i,
    Pred pred,
    size_t max_count = SIZE_MAX) {
  size_t n = 0;
  while (i < s.size() && n < max_count) {
    size_t len;
    const uint32_t c = decode_at(s, i, len);
    if (!pred(c))
      break;
    i += len;
    ++n;
  }
  return i;
}

// Whitespace alternatives shared by all patterns: `\s+(?!\S)|\s+` at i (s[i] is \s).
size_t whitespace_tail(std::string_view s, size_t i) {
  size_t last = i; // start of the last whitespace code point of the run
  size_t j = i;
  size_t count = 0;
  while (j < s.size()) {
    size_t len;
    const uint32_t c = decode_at(s, j, len);
    if (!(cls(c) & kWS))
      break;
    last = j;
    j += len;
    ++count;
  }
  if (j == s.size() || count == 1)
    return j;  // (?!\S) holds at the end, or `\s+` alone
  return last; // give back the last one: followed by \s
}

size_t match_gpt2(std::string_view s, size_t i) {
  size_t len;
  const uint32_t c = decode_at(s, i, len);
  if (c == '\'') {
    const size_t n = contraction(s, i, false);
    if (n)
      return i + n;
  }
  auto letters = [](uint32_t x) { return (cls(x) & kL) != 0; };
  auto numbers = [](uint32_t x) { return (cls(x) & kN) != 0; };
  auto others = [](uint32_t x) { return is_other(cls(x)); };
  if (c == ' ' && i + 1 < s.size()) { // ` ?` consumed
    size_t l2;
    const uint8_t f2 = cls(decode_at(s, i + 1, l2));
    if (f2 & kL)
      return run_end(s, i + 1, letters);
    if (f2 & kN)
      return run_end(s, i + 1, numbers);
    if (is_other(f2))
      return run_end(s, i + 1, others);
  }
  const uint8_t f = cls(c);
  if (f & kL)
    return run_end(s, i, letters);
  if (f & kN)
    return run_end(s, i, numbers);
  if (is_other(f))
    return run_end(s, i, others);
  return whitespace_tail(s, i);
}

size_t match_llama3(std::string_view s, size_t i, size_t max_digits) {
  size_t len;
  const uint32_t c = decode_at(s, i, len);
  const uint8_t f = cls(c);
  if (c == '\'') {
    const size_t n = contraction(s, i, true);
    if (n)
      return i + n;
  }
  // [^\r\n\p{L}\p{N}]?\p{L}+
  auto letters = [](uint32_t x) { return (cls(x) & kL) != 0; };
  if (f & kL)
    return run_end(s, i, letters);
  if (c != '\r' && c != '\n' && !(f & kN) && i + len < s.size()) {
    size_t l2;
    const uint32_t c2 = decode_at(s, i + len, l2);
    if (cls(c2) & kL)
      return run_end(s, i + len, letters);
  }
  // \p{N}{1,3}
  if (f & kN)
    return run_end(
        s, i, [](uint32_t x) { return (cls(x) & kN) != 0; }, max_digits);
  // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
  size_t from = SIZE_MAX;
  if (is_other(f)) {
    from = i;
  } else if (c == ' ' && i + 1 < s.size()) {
    size_t l2;
    if (is_other(cls(decode_at(s, i + 1, l2))))
      from = i + 1;
  }
  if (from != SIZE_MAX) {
    const size_t e =
        run_end(s, from, [](uint32_t x) { return is_other(cls(x)); });
    return run_end(s, e, [](uint32_t x) { return x == '\r' || x == '\n'; });
  }
  // \s*[\r\n]+ : the whitespace run up to and including its last CR / LF
  size_t j = i, last_crlf = SIZE_MAX;
  while (j < s.size()) {
    size_t l;
    const uint32_t x = decode_at(s, j, l);
    if (!(cls(x) & kWS))
      break;
    if (x == '\r' || x == '\n')
      last_crlf = j;
    j += l;
  }
  if (last_crlf != SIZE_MAX)
    return last_crlf + 1;
  return whitespace_tail(s, i);
}

// All matches of the pattern in s, in order (non-empty, non-overlapping).
void find_spans(RegexKind kind, std::string_view s, std::vector<Span>& out) {
  out.clear();
  size_t i = 0;
  while (i < s.size()) {
    size_t e;
    switch (kind) {
      case RegexKind::kGpt2:
        e = match_gpt2(s, i);
        break;
      case RegexKind::kLlama3:
        e = match_llama3(s, i, 3);
        break;
      default:
        e = match_llama3(s, i, 1);
        break;
    }
    out.push_back(Span{i, e});
    i = e;
  }
}

// ---------------------------------------------------------------------------------------------
// Split behaviours (tokenizers' NormalizedString::split)

enum class Behavior {
  kRemoved,
  kIsolated,
  kMergedWithPrevious,
  kMergedWithNext,
  kContiguous
};

struct Piece {
  std::string text;
  bool at_start; // begins at offset 0 of the original text
};

struct Marked {
  size_t start, end;
  bool match;
};

// Turns matches into the kept (start, end) slices.
void apply_behavior(
    const std::vector<Marked>& m,
    Behavior b,
    std::vector<Marked>& out) {
  out.clear();
  switch (b) {
    case Behavior::kIsolated:
      for (const auto& x : m)
        out.push_back(Marked{x.start, x.end, false});
      break;
    case Behavior::kRemoved:
      for (const auto& x : m)
        if (!x.match)
          out.push_back(x);
      break;
    case Behavior::kContiguous: {
      bool prev = false;
      for (const auto& x : m) {
        if (x.match == prev && !out.empty())
          out.back().end = x.end;
        else
          out.push_back(Marked{x.start, x.end, false});
        prev = x.match;
      }
      break;
    }
    case Behavior::kMergedWithPrevious: {
      bool prev = false;
      for (const auto& x : m) {
        if (x.match && !prev && !out.empty())
          out.back().end = x.end;
        else
          out.push_back(Marked{x.start, x.end, false});
        prev = x.match;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool prev = false;
      for (auto it = m.rbegin(); it != m.rend(); ++it) {
        if (it->match && !prev && !out.empty())
          out.back().start = it->start;
        else
          out.push_back(Marked{it->start, it->end, false});
        prev = it->match;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
  }
}

// Spans -> marked list covering the whole string (pattern.rs's find_matches).
void mark_spans(
    const std::vector<Span>& spans,
    size_t n,
    bool invert,
    std::vector<Marked>& out) {
  out.clear();
  if (n == 0) {
    out.push_back(Marked{0, 0, invert});
    return;
  }
  size_t prev = 0;
  for (const auto& sp : spans) {
    if (prev != sp.start)
      out.push_back(Marked{prev, sp.start, invert});
    out.push_back(Marked{sp.start, sp.end, !invert});
    prev = sp.end;
  }
  if (prev != n)
    out.push_back(Marked{prev, n, invert});
}

// Per-character pattern (Fn(char) -> bool): every matching char is its own match.
template <class Pred>
void mark_chars(std::string_view s, Pred pred, std::vector<Marked>& out) {
  out.clear();
  if (s.empty()) {
    out.push_back(Marked{0, 0, false});
    return;
  }
  size_t last = 0, i = 0;
  while (i < s.size()) {
    size_t len;
    const uint32_t c = decode_at(s, i, len);
    if (pred(c)) {
      if (last < i)
        out.push_back(Marked{last, i, false});
      out.push_back(Marked{i, i + len, true});
      last = i + len;
    }
    i += len;
  }
  if (i > last)
    out.push_back(Marked{last, i, false});
}

// Literal (escaped-regex) pattern: leftmost non-overlapping occurrences.
void find_literal(
    std::string_view s,
    std::string_view pat,
    std::vector<Span>& out) {
  out.clear();
  if (pat.empty())
    return;
  size_t i = 0;
  while ((i = s.find(pat, i)) != std::string_view::npos) {
    out.push_back(Span{i, i + pat.size()});
    i += pat.size();
  }
}

std::string replace_all(
    std::string_view s,
    std::string_view pat,
    std::string_view with) {
  std::string out;
  if (pat.empty())
    return std::string(s);
  size_t i = 0;
  while (true) {
    const size_t j = s.find(pat, i);
    if (j == std::string_view::npos)
      break;
    out.append(s.substr(i, j - i));
    out.append(with);
    i = j + pat.size();
  }
  out.append(s.substr(i));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Components

struct Normalizer {
  enum Kind { kPrepend, kReplace } kind;
  std::string a, b; // prepend: a; replace: a -> b
};

struct PreTokenizer {
  enum Kind { kByteLevel, kSplit, kDigits, kMetaspace } kind;
  // ByteLevel
  bool add_prefix_space = false, use_regex = true;
  // Split
  bool is_regex = false;
  RegexKind regex = RegexKind::kGpt2;
  std::string literal;
  Behavior behavior = Behavior::kIsolated;
  bool invert = false;
  // Digits
  bool individual_digits = false;
  // Metaspace
  std::string replacement;
  uint32_t replacement_cp = 0;
  enum Prepend { kAlways, kFirst, kNever } prepend = kAlways;
  bool split = true;
};

struct Decoder {
  enum Kind {
    kByteLevel,
    kReplace,
    kByteFallback,
    kFuse,
    kStrip,
    kMetaspace
  } kind;
  std::string a, b; // replace: a -> b; strip: a = content (one char)
  uint32_t content_cp = 0;
  size_t start = 0, stop = 0;
  bool metaspace_prepend = true; // prepend_scheme != never
};

struct TemplatePiece {
  bool is_sequence; // $A (or $B, skipped for single sequences)
  bool is_a;
  std::vector<int32_t> ids; // special token ids
};

struct AddedToken {
  std::string content;
  std::string
      pattern; // what is matched (the normalized content when normalized)
  int32_t id;
  bool single_word, lstrip, rstrip, normalized, special;
};

// Byte trie over added-token patterns, for leftmost-longest matching.
class Trie {
 public:
  Trie() {
    nodes_.emplace_back();
  }
  void add(std::string_view s, int32_t value) {
    size_t n = 0;
    for (unsigned char c : s) {
      auto& e = nodes_[n].edges;
      auto it = std::lower_bound(
          e.begin(),
          e.end(),
          std::make_pair(c, int32_t{0}),
          [](const auto& x, const auto& y) { return x.first < y.first; });
      if (it != e.end() && it->first == c) {
        n = static_cast<size_t>(it->second);
      } else {
        const auto next = static_cast<int32_t>(nodes_.size());
        e.insert(it, std::make_pair(c, next));
        nodes_.emplace_back();
        n = static_cast<size_t>(next);
      }
    }
    nodes_[n].value = value;
    first_[static_cast<unsigned char>(s[0])] = true;
    empty_ = false;
  }
  bool empty() const {
    return empty_;
  }
  // Longest pattern starting at s[i]: sets len and returns its value, or -1.
  int32_t longest(std::string_view s, size_t i, size_t& len) const {
    if (!first_[static_cast<unsigned char>(s[i])])
      return -1;
    size_t n = 0;
    int32_t best = -1;
    for (size_t k = i; k < s.size(); ++k) {
      const auto& e = nodes_[n].edges;
      const auto c = static_cast<unsigned char>(s[k]);
      auto it = std::lower_bound(
          e.begin(),
          e.end(),
          std::make_pair(c, int32_t{0}),
          [](const auto& x, const auto& y) { return x.first < y.first; });
      if (it == e.end() || it->first != c)
        break;
      n = static_cast<size_t>(it->second);
      if (nodes_[n].value >= 0) {
        best = nodes_[n].value;
        len = k + 1 - i;
      }
    }
    return best;
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> edges;
    int32_t value = -1;
  };
  std::vector<Node> nodes_;
  std::array<bool, 256> first_{};
  bool empty_ = true;
};

// An id list per cached word, for one encode() call.
class WordCache {
 public:
  const int32_t* find(std::string_view w, size_t& n) const {
    const int32_t* v = map_.find(w);
    if (!v)
      return nullptr;
    const auto& r = ranges_[static_cast<size_t>(*v)];
    n = r.second;
    return ids_.data() + r.first;
  }
  void put(std::string_view w, const int32_t* ids, size_t n) {
    if (map_.size() >= 200000 || w.size() > 256)
      return;
    map_.set(w, static_cast<int32_t>(ranges_.size()));
    ranges_.emplace_back(ids_.size(), n);
    ids_.insert(ids_.end(), ids, ids + n);
  }

 private:
  StringMap map_;
  std::vector<std::pair<size_t, size_t>> ranges_;
  std::vector<int32_t> ids_;
};

struct Symbol {
  int32_t id;
  int32_t prev, next;
  bool alive;
};

struct QueueItem {
  int32_t rank;
  int32_t pos;
  int32_t new_id;
  bool operator<(
      const QueueItem& o) const { // std::priority_queue: "less" pops last
    if (rank != o.rank)
      return rank > o.rank;
    return pos > o.pos;
  }
};

struct Scratch {
  std::vector<Symbol> symbols;
  std::vector<QueueItem> heap;
  std::vector<int32_t> ids;
  std::vector<Span> spans;
  std::vector<Marked> marked, kept;
  WordCache cache;
};

std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r')
      c = ' ';
  return s;
}

} // namespace

// ---------------------------------------------------------------------------------------------

struct HfTokenizer::Impl {
  std::string file; // tokenizer.json, for messages

  // Model
  StringMap vocab;                  // model vocabulary
  std::vector<std::string> vocab_r; // id -> model token ("" when none)
  std::vector<bool> vocab_has;      // id has a model token
  MergeMap merge_map;
  std::vector<std::string> merges_text;
  std::optional<std::string> unk_token;
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;
  std::array<int32_t, 256> byte_ids{};

  // Added tokens
  std::vector<AddedToken> added;
  StringMap added_by_content; // content -> index in added
  std::unordered_map<int32_t, size_t> added_by_id;
  std::unordered_set<std::string> special_set;
  Trie raw_trie, normalized_trie;

  std::vector<Normalizer> normalizers;
  bool has_normalizer = false;
  std::vector<PreTokenizer> pretok;
  std::vector<Decoder> decoders;
  bool has_decoder = false;
  bool has_post = false;
  std::vector<TemplatePiece> single;

  // Config
  std::string bos_token, eos_token, chat_template;
  int32_t bos = -1, eos = -1, unk = -1, pad = -1;
  std::optional<bool> cfg_add_bos, cfg_add_eos;
  bool add_bos = false, add_eos = false;
  std::string ggml_model, ggml_pre;
  int32_t n_ids = 0;

  // -- encode ---------------------------------------------------------------------------------

  std::string normalize(std::string s) const {
    for (const auto& n : normalizers) {
      if (n.kind == Normalizer::kPrepend) {
        if (!s.empty())
          s.insert(0, n.a);
      } else {
        s = replace_all(s, n.a, n.b);
      }
    }
    return s;
  }

  // Splits `text` on the added tokens of `trie` (added_vocabulary.rs's find_matches); calls
  // on_text(start, end) for the pieces between tokens and on_token(index) for tokens.
  template <class OnText, class OnToken>
  void split_added(
      std::string_view text,
      const Trie& trie,
      OnText on_text,
      OnToken on_token) const {
    if (trie.empty() || text.empty()) {
      on_text(0, text.size());
      return;
    }
    size_t start_offset = 0;
    size_t i = 0;
    while (i < text.size()) {
      size_t len = 0;
      const int32_t idx = trie.longest(text, i, len);
      if (idx < 0) {
        ++i;
        continue;
      }
      const AddedToken& t = added[static_cast<size_t>(idx)];
      size_t start = i, stop = i + len;
      i = stop; // the matcher resumes after the match, whatever is decided below
      if (t.single_word) {
        bool start_space = true, stop_space = true;
        if (start > 0) {
          size_t p = start - 1;
          while (p > 0 && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80)
            --p;
          size_t l;
          start_space = !(cls(decode_at(text, p, l)) & kW);
        }
        if (stop < text.size()) {
          size_t l;
          stop_space = !(cls(decode_at(text, stop, l)) & kW);
        }
        if (!start_space || !stop_space)
          continue;
      }
      if (t.lstrip) {
        size_t p = start;
        while (p > 0) {
          size_t q = p - 1;
          while (q > 0 && (static_cast<unsigned char>(text[q]) & 0xC0) == 0x80)
            --q;
          size_t l;
          if (!(cls(decode_at(text, q, l)) & kWS))
            break;
          p = q;
        }
        start = std::max(p, start_offset);
      }
      if (t.rstrip) {
        stop =
            run_end(text, stop, [](uint32_t c) { return (cls(c) & kWS) != 0; });
      }
      if (start_offset < start)
        on_text(start_offset, start);
      on_token(static_cast<size_t>(idx), start, stop);
      start_offset = stop;
    }
    if (start_offset != text.size())
      on_text(start_offset, text.size());
  }

  void bpe_word(std::string_view w, Scratch& sc, std::vector<int32_t>& out)
      const {
    if (w.empty())
      return;
    if (ignore_merges) {
      if (const int32_t* id = vocab.find(w)) {
        out.push_back(*id);
        return;
      }
    }
    size_t n_cached = 0;
    if (const int32_t* hit = sc.cache.find(w, n_cached)) {
      out.insert(out.end(), hit, hit + n_cached);
      return;
    }
    auto& sym = sc.symbols;
    sym.clear();
    auto add = [&](int32_t id) {
      const auto k = static_cast<int32_t>(sym.size());
      sym.push_back(Symbol{id, k - 1, k + 1, true});
    };
    int32_t pending_unk = -1; // an unknown run not added yet
    for (size_t i = 0; i < w.size();) {
      const int n = std::max(1, utf8_step(w, i));
      const std::string_view ch = w.substr(i, static_cast<size_t>(n));
      i += static_cast<size_t>(n);
      if (const int32_t* id = vocab.find(ch)) {
        if (pending_unk >= 0) {
          add(pending_unk);
          pending_unk = -1;
        }
        add(*id);
        continue;
      }
      if (byte_fallback) {
        bool all = true;
        for (unsigned char b : ch)
          all = all && byte_ids[b] >= 0;
        if (all) {
          for (unsigned char b : ch)
            add(byte_ids[b]);
          continue;
        }
      }
      if (unk_token) {
        if (unk < 0)
          throw std::runtime_error(
              file + ": model.unk_token '" + *unk_token +
              "' is not in model.vocab");
        if (pending_unk >= 0 && !fuse_unk)
          add(pending_unk);
        if (pending_unk < 0 || !fuse_unk)
          pending_unk = unk;
      }
    }
    if (pending_unk >= 0)
      add(pending_unk);
    if (!sym.empty())
      sym.back().next = -1;

    auto& heap = sc.heap;
    heap.clear();
    for (size_t k = 0; k + 1 < sym.size(); ++k) {
      if (const MergeEntry* m = merge_map.find(sym[k].id, sym[k + 1].id))
        heap.push_back(QueueItem{m->rank, static_cast<int32_t>(k), m->new_id});
    }
    std::make_heap(heap.begin(), heap.end());
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end());
      const QueueItem top = heap.back();
      heap.pop_back();
      Symbol& cur = sym[static_cast<size_t>(top.pos)];
      if (!cur.alive || cur.next < 0)
        continue;
      const auto next_pos = static_cast<size_t>(cur.next);
      const Symbol right = sym[next_pos];
      const MergeEntry* m = merge_map.find(cur.id, right.id);
      if (!m || m->new_id != top.new_id)
        continue;
      cur.id = top.new_id;
      cur.next = right.next;
      sym[next_pos].alive = false;
      if (right.next >= 0)
        sym[static_cast<size_t>(right.next)].prev = top.pos;
      if (cur.prev >= 0) {
        const Symbol& p = sym[static_cast<size_t>(cur.prev)];
        if (const MergeEntry* pm = merge_map.find(p.id, cur.id)) {
          heap.push_back(QueueItem{pm->rank, cur.prev, pm->new_id});
          std::push_heap(heap.begin(), heap.end());
        }
      }
      if (cur.next >= 0) {
        const Symbol& nx = sym[static_cast<size_t>(cur.next)];
        if (const MergeEntry* nm = merge_map.find(cur.id, nx.id)) {
          heap.push_back(QueueItem{nm->rank, top.pos, nm->new_id});
          std::push_heap(heap.begin(), heap.end());
        }
      }
    }
    const size_t before = out.size();
    for (const auto& s : sym)
      if (s.alive)
        out.push_back(s.id);
    sc.cache.put(w, out.data() + before, out.size() - before);
  }

  // Applies pre-tokenizers [stage, end) to one piece, depth first; BPE on each final word.
  void pretokenize(
      size_t stage,
      Piece piece,
      Scratch& sc,
      std::vector<int32_t>& out) const {
    if (piece.text.empty())
      return;
    if (stage == pretok.size()) {
      bpe_word(piece.text, sc, out);
      return;
    }
    const PreTokenizer& p = pretok[stage];
    std::vector<Marked> kept;
    const std::string& s = piece.text;
    switch (p.kind) {
      case PreTokenizer::kByteLevel: {
        if (p.add_prefix_space && s[0] != ' ')
          piece.text.insert(0, " ");
        const auto& bm = byte_map();
        auto map_bytes = [&](std::string_view v) {
          std::string m;
          m.reserve(v.size() * 2);
          for (unsigned char b : v)
            m += bm.byte_to_utf8[b];
          return m;
        };
        if (!p.use_regex) {
          pretokenize(
              stage + 1, Piece{map_bytes(piece.text), piece.at_start}, sc, out);
          return;
        }
        std::vector<Span> spans;
        find_spans(RegexKind::kGpt2, piece.text, spans);
        for (const auto& sp : spans) {
          const std::string_view v =
              std::string_view(piece.text).substr(sp.start, sp.end - sp.start);
          pretokenize(
              stage + 1,
              Piece{map_bytes(v), piece.at_start && sp.start == 0},
              sc,
              out);
        }
        return;
      }
      case PreTokenizer::kSplit: {
        std::vector<Span> spans;
        if (p.is_regex)
          find_spans(p.regex, s, spans);
        else
          find_literal(s, p.literal, spans);
        std::vector<Marked> marked;
        mark_spans(spans, s.size(), p.invert, marked);
        apply_behavior(marked, p.behavior, kept);
        break;
      }
      case PreTokenizer::kDigits: {
        std::vector<Marked> marked;
        mark_chars(
            s, [](uint32_t c) { return (cls(c) & kRN) != 0; }, marked);
        apply_behavior(
            marked,
            p.individual_digits ? Behavior::kIsolated : Behavior::kContiguous,
            kept);
        break;
      }
      case PreTokenizer::kMetaspace: {
        std::string t = replace_all(s, " ", p.replacement);
        const bool starts =
            t.compare(0, p.replacement.size(), p.replacement) == 0;
        if (!starts &&
            (p.prepend == PreTokenizer::kAlways ||
             (p.prepend == PreTokenizer::kFirst && piece.at_start)))
          t.insert(0, p.replacement);
        piece.text = std::move(t);
        if (!p.split) {
          pretokenize(stage + 1, std::move(piece), sc, out);
          return;
        }
        std::vector<Marked> marked;
        const uint32_t rc = p.replacement_cp;
        mark_chars(
            piece.text, [rc](uint32_t c) { return c == rc; }, marked);
        apply_behavior(marked, Behavior::kMergedWithNext, kept);
        break;
      }
    }
    for (const auto& k : kept) {
      if (k.end <= k.start)
        continue;
      pretokenize(
          stage + 1,
          Piece{
              piece.text.substr(k.start, k.end - k.start),
              piece.at_start && k.start == 0},
          sc,
          out);
    }
  }

  void encode_normalized_piece(
      const std::string& s,
      bool at_start,
      Scratch& sc,
      std::vector<int32_t>& out) const {
    split_added(
        s,
        normalized_trie,
        [&](size_t a, size_t b) {
          if (b > a)
            pretokenize(
                0, Piece{s.substr(a, b - a), at_start && a == 0}, sc, out);
        },
        [&](size_t idx, size_t, size_t) { out.push_back(added[idx].id); });
  }

  std::vector<int32_t> encode(std::string_view text, bool add_special) const {
    size_t bad = 0;
    if (!valid_utf8(text, bad))
      throw std::invalid_argument(
          "encode: invalid UTF-8 at byte " + std::to_string(bad));
    Scratch sc;
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3 + 8);
    split_added(
        text,
        raw_trie,
        [&](size_t a, size_t b) {
          if (b <= a)
            return;
          std::string piece(text.substr(a, b - a));
          if (has_normalizer)
            piece = normalize(std::move(piece));
          encode_normalized_piece(piece, a == 0, sc, ids);
        },
        [&](size_t idx, size_t, size_t) { ids.push_back(added[idx].id); });
    if (!add_special)
      return ids;
    if (!has_post) {
      std::vector<int32_t> r;
      if (cfg_add_bos.value_or(false) && bos >= 0)
        r.push_back(bos);
      r.insert(r.end(), ids.begin(), ids.end());
      if (cfg_add_eos.value_or(false) && eos >= 0)
        r.push_back(eos);
      return r;
    }
    if (single.empty())
      return ids;
    std::vector<int32_t> r;
    r.reserve(ids.size() + 4);
    for (const auto& t : single) {
      if (t.is_sequence) {
        if (t.is_a)
          r.insert(r.end(), ids.begin(), ids.end());
      } else {
        r.insert(r.end(), t.ids.begin(), t.ids.end());
      }
    }
    return r;
  }

  // -- decode ---------------------------------------------------------------------------------

  std::optional<std::string> token_text(int32_t id) const {
    auto it = added_by_id.find(id);
    if (it != added_by_id.end()) {
      const AddedToken& t = added[it->second];
      return t.normalized && has_normalizer ? t.pattern : t.content;
    }
    if (id >= 0 && static_cast<size_t>(id) < vocab_r.size() &&
        vocab_has[static_cast<size_t>(id)])
      return vocab_r[static_cast<size_t>(id)];
    return std::nullopt;
  }

  std::string decode(const std::vector<int32_t>& ids, bool skip_special) const {
    std::vector<std::string> toks;
    toks.reserve(ids.size());
    for (int32_t id : ids) {
      auto t = token_text(id);
      if (!t)
        continue;
      if (skip_special && special_set.count(*t))
        continue;
      toks.push_back(std::move(*t));
    }
    if (!has_decoder) {
      std::string r;
      for (size_t i = 0; i < toks.size(); ++i) {
        if (i)
          r += ' ';
        r += toks[i];
      }
      return r;
    }
    for (const auto& d : decoders)
      toks = decode_chain(d, std::move(toks));
    std::string r;
    for (const auto& t : toks)
      r += t;
    return r;
  }

  static std::vector<std::string> decode_chain(
      const Decoder& d,
      std::vector<std::string> toks) {
    switch (d.kind) {
      case Decoder::kByteLevel: {
        const auto& bm = byte_map();
        std::string bytes;
        for (const auto& t : toks) {
          std::string mapped;
          bool ok = true;
          for (size_t i = 0; i < t.size();) {
            size_t len;
            const uint32_t c = decode_at(t, i, len);
            i += len;
            if (c >= bm.cp_to_byte.size() || bm.cp_to_byte[c] < 0) {
              ok = false;
              break;
            }
            mapped += static_cast<char>(bm.cp_to_byte[c]);
          }
          bytes += ok ? mapped : t;
        }
        return {utf8_lossy(bytes)};
      }
      case Decoder::kReplace:
        for (auto& t : toks)
          t = replace_all(t, d.a, d.b);
        return toks;
      case Decoder::kByteFallback: {
        std::vector<std::string> r;
        std::string pending;
        size_t pending_n = 0;
        auto flush = [&]() {
          if (!pending_n)
            return;
          size_t bad;
          if (valid_utf8(pending, bad)) {
            r.push_back(pending);
          } else {
            for (size_t k = 0; k < pending_n; ++k)
              r.emplace_back("\xEF\xBF\xBD");
          }
          pending.clear();
          pending_n = 0;
        };
        for (auto& t : toks) {
          int byte = -1;
          if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') {
            auto hex = [](char c) {
              if (c >= '0' && c <= '9')
                return c - '0';
              if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
              if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
              return -1;
            };
            const int h = hex(t[3]), l = hex(t[4]);
            if (h >= 0 && l >= 0)
              byte = h * 16 + l;
          }
          if (byte >= 0) {
            pending += static_cast<char>(byte);
            ++pending_n;
          } else {
            flush();
            r.push_back(std::move(t));
          }
        }
        flush();
        return r;
      }
      case Decoder::kFuse: {
        std::string all;
        for (const auto& t : toks)
          all += t;
        return {all};
      }
      case Decoder::kStrip: {
        for (auto& t : toks) {
          std::vector<std::pair<size_t, size_t>> chars; // byte offset, length
          for (size_t i = 0; i < t.size();) {
            size_t len;
            decode_at(t, i, len);
            chars.emplace_back(i, len);
            i += len;
          }
          size_t start_cut = 0;
          for (size_t i = 0; i < std::min(d.start, chars.size()); ++i) {
            size_t l;
            if (decode_at(t, chars[i].first, l) == d.content_cp)
              start_cut = i + 1;
            else
              break;
          }
          size_t stop_cut = chars.size();
          for (size_t i = 0; i < d.stop && i < chars.size(); ++i) {
            const size_t index = chars.size() - i - 1;
            size_t l;
            if (decode_at(t, chars[index].first, l) == d.content_cp)
              stop_cut = index;
            else
              break;
          }
          if (stop_cut < start_cut)
            stop_cut = start_cut;
          const size_t b0 =
              start_cut < chars.size() ? chars[start_cut].first : t.size();
          const size_t b1 =
              stop_cut < chars.size() ? chars[stop_cut].first : t.size();
          t = t.substr(b0, b1 - b0);
        }
        return toks;
      }
      case Decoder::kMetaspace: {
        for (size_t i = 0; i < toks.size(); ++i) {
          std::string r;
          const std::string& t = toks[i];
          for (size_t k = 0; k < t.size();) {
            size_t len;
            const uint32_t c = decode_at(t, k, len);
            if (c == d.content_cp) {
              if (!(i == 0 && d.metaspace_prepend))
                r += ' ';
            } else {
              r.append(t, k, len);
            }
            k += len;
          }
          toks[i] = std::move(r);
        }
        return toks;
      }
    }
    return toks;
  }
};

// ---------------------------------------------------------------------------------------------
// Loading

namespace {

std::string read_file(const std::string& path, const std::string& what) {
  std::ifstream f(path, std::ios::binary);
  if (!f)
    throw std::runtime_error(
        path + ": cannot open " + what + " (" + std::strerror(errno) + ")");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

json parse_json(const std::string& path, const std::string& text) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    throw std::runtime_error(one_line(path + ": malformed JSON: " + e.what()));
  }
}

struct Loader {
  const std::string& file;

  [[noreturn]] void fail(const std::string& key, const std::string& msg) const {
    throw std::runtime_error(one_line(file + ": " + key + " " + msg));
  }
  std::string dump(const json& j) const {
    std::string s = j.dump();
    if (s.size() > 200)
      s = s.substr(0, 200) + "...";
    return s;
  }
  const json& need(
      const json& obj,
      const std::string& key,
      const std::string& path) const {
    if (!obj.is_object() || !obj.contains(key))
      fail(path + "." + key, "is missing");
    return obj.at(key);
  }
  std::string str(
      const json& obj,
      const std::string& key,
      const std::string& path) const {
    const json& v = need(obj, key, path);
    if (!v.is_string())
      fail(path + "." + key, "must be a string, not " + dump(v));
    return v.get<std::string>();
  }
  bool boolean(
      const json& obj,
      const std::string& key,
      const std::string& path,
      std::optional<bool> dflt = std::nullopt) const {
    if (!obj.contains(key) || obj.at(key).is_null()) {
      if (dflt)
        return *dflt;
      fail(path + "." + key, "is missing");
    }
    const json& v = obj.at(key);
    if (!v.is_boolean())
      fail(path + "." + key, "must be true or false, not " + dump(v));
    return v.get<bool>();
  }
  std::string type(const json& obj, const std::string& path) const {
    if (!obj.is_object())
      fail(path, "must be an object, not " + dump(obj));
    return str(obj, "type", path);
  }
  uint32_t one_char(const std::string& s, const std::string& key) const {
    size_t bad;
    if (s.empty() || !valid_utf8(s, bad))
      fail(key, "must be one character");
    size_t len;
    const uint32_t c = decode_at(s, 0, len);
    if (len != s.size())
      fail(key, "must be one character, not '" + s + "'");
    return c;
  }
  // Split / Replace patterns: {"String": s} or {"Regex": r}.
  std::pair<bool, std::string> pattern(const json& obj, const std::string& path)
      const {
    const json& p = need(obj, "pattern", path);
    if (p.is_object() && p.contains("String") && p.at("String").is_string())
      return {false, p.at("String").get<std::string>()};
    if (p.is_object() && p.contains("Regex") && p.at("Regex").is_string())
      return {true, p.at("Regex").get<std::string>()};
    fail(
        path + ".pattern",
        "must be {\"String\": ...} or {\"Regex\": ...}, not " + dump(p));
  }

  void normalizer(
      const json& j,
      const std::string& path,
      std::vector<Normalizer>& out) const {
    if (j.is_null())
      return;
    const std::string t = type(j, path);
    if (t == "Sequence") {
      const json& list = need(j, "normalizers", path);
      if (!list.is_array())
        fail(path + ".normalizers", "must be a list");
      for (size_t i = 0; i < list.size(); ++i)
        normalizer(
            list[i], path + ".normalizers[" + std::to_string(i) + "]", out);
    } else if (t == "Prepend") {
      out.push_back(
          Normalizer{Normalizer::kPrepend, str(j, "prepend", path), ""});
    } else if (t == "Replace") {
      auto [is_regex, pat] = pattern(j, path);
      if (is_regex)
        fail(
            path + ".pattern",
            "Regex '" + pat + "' is not supported (String only)");
      out.push_back(
          Normalizer{Normalizer::kReplace, pat, str(j, "content", path)});
    } else {
      fail(
          path + ".type",
          "'" + t + "' is not supported (Sequence, Prepend, Replace only)");
    }
  }

  static Behavior behavior(
      const Loader& l,
      const json& j,
      const std::string& path) {
    const std::string b = l.str(j, "behavior", path);
    if (b == "Removed")
      return Behavior::kRemoved;
    if (b == "Isolated")
      return Behavior::kIsolated;
    if (b == "MergedWithPrevious")
      return Behavior::kMergedWithPrevious;
    if (b == "MergedWithNext")
      return Behavior::kMergedWithNext;
    if (b == "Contiguous")
      return Behavior::kContiguous;
    l.fail(path + ".behavior", "'" + b + "' is unknown");
  }

  void pre_tokenizer(
      const json& j,
      const std::string& path,
      std::vector<PreTokenizer>& out) const {
    if (j.is_null())
      return;
    const std::string t = type(j, path);
    PreTokenizer p{};
    if (t == "Sequence") {
      const json& list = need(j, "pretokenizers", path);
      if (!list.is_array())
        fail(path + ".pretokenizers", "must be a list");
      for (size_t i = 0; i < list.size(); ++i)
        pre_tokenizer(
            list[i], path + ".pretokenizers[" + std::to_string(i) + "]", out);
      return;
    }
    if (t == "ByteLevel") {
      p.kind = PreTokenizer::kByteLevel;
      p.add_prefix_space = boolean(j, "add_prefix_space", path, true);
      p.use_regex = boolean(j, "use_regex", path, true);
    } else if (t == "Split") {
      p.kind = PreTokenizer::kSplit;
      auto [is_regex, pat] = pattern(j, path);
      p.is_regex = is_regex;
      if (is_regex) {
        if (pat == kGpt2Pattern)
          p.regex = RegexKind::kGpt2;
        else if (pat == kLlama3Pattern)
          p.regex = RegexKind::kLlama3;
        else if (pat == kQwen2Pattern)
          p.regex = RegexKind::kQwen2;
        else
          fail(
              path + ".pattern.Regex",
              "'" + pat +
                  "' is not supported (only the GPT-2, Llama 3 and Qwen2 patterns)");
      } else {
        p.literal = pat;
      }
      p.behavior = behavior(*this, j, path);
      p.invert = boolean(j, "invert", path, false);
    } else if (t == "Digits") {
      p.kind = PreTokenizer::kDigits;
      p.individual_digits = boolean(j, "individual_digits", path, false);
    } else if (t == "Metaspace") {
      p.kind = PreTokenizer::kMetaspace;
      p.replacement = str(j, "replacement", path);
      p.replacement_cp = one_char(p.replacement, path + ".replacement");
      std::string scheme = "always";
      if (j.contains("prepend_scheme") && !j.at("prepend_scheme").is_null())
        scheme = str(j, "prepend_scheme", path);
      if (scheme == "always")
        p.prepend = PreTokenizer::kAlways;
      else if (scheme == "first")
        p.prepend = PreTokenizer::kFirst;
      else if (scheme == "never")
        p.prepend = PreTokenizer::kNever;
      else
        fail(path + ".prepend_scheme", "'" + scheme + "' is unknown");
      if (j.contains("add_prefix_space") &&
          j.at("add_prefix_space").is_boolean() &&
          !j.at("add_prefix_space").get<bool>()) {
        if (p.prepend != PreTokenizer::kNever)
          fail(
              path + ".add_prefix_space",
              "false does not match prepend_scheme '" + scheme + "'");
      }
      p.split = boolean(j, "split", path, true);
    } else {
      fail(
          path + ".type",
          "'" + t +
              "' is not supported (Sequence, ByteLevel, Split, Digits, Metaspace only)");
    }
    out.push_back(std::move(p));
  }

  void decoder(
      const json& j,
      const std::string& path,
      std::vector<Decoder>& out) const {
    if (j.is_null())
      return;
    const std::string t = type(j, path);
    Decoder d{};
    if (t == "Sequence") {
      const json& list = need(j, "decoders", path);
      if (!list.is_array())
        fail(path + ".decoders", "must be a list");
      for (size_t i = 0; i < list.size(); ++i)
        decoder(list[i], path + ".decoders[" + std::to_string(i) + "]", out);
      return;
    }
    if (t == "ByteLevel") {
      d.kind = Decoder::kByteLevel;
    } else if (t == "Replace") {
      d.kind = Decoder::kReplace;
      auto [is_regex, pat] = pattern(j, path);
      if (is_regex)
        fail(
            path + ".pattern",
            "Regex '" + pat + "' is not supported (String only)");
      d.a = pat;
      d.b = str(j, "content", path);
    } else if (t == "ByteFallback") {
      d.kind = Decoder::kByteFallback;
    } else if (t == "Fuse") {
      d.kind = Decoder::kFuse;
    } else if (t == "Strip") {
      d.kind = Decoder::kStrip;
      d.a = str(j, "content", path);
      d.content_cp = one_char(d.a, path + ".content");
      const json& s0 = need(j, "start", path);
      const json& s1 = need(j, "stop", path);
      if (!s0.is_number_unsigned() || !s1.is_number_unsigned())
        fail(path, "start and stop must be non-negative integers");
      d.start = s0.get<size_t>();
      d.stop = s1.get<size_t>();
    } else if (t == "Metaspace") {
      d.kind = Decoder::kMetaspace;
      d.a = str(j, "replacement", path);
      d.content_cp = one_char(d.a, path + ".replacement");
      std::string scheme = "always";
      if (j.contains("prepend_scheme") && !j.at("prepend_scheme").is_null())
        scheme = str(j, "prepend_scheme", path);
      if (j.contains("add_prefix_space") &&
          j.at("add_prefix_space").is_boolean() &&
          !j.at("add_prefix_space").get<bool>())
        scheme = "never";
      d.metaspace_prepend = scheme != "never";
    } else {
      fail(
          path + ".type",
          "'" + t +
              "' is not supported (Sequence, ByteLevel, Replace, ByteFallback, "
              "Fuse, Strip, Metaspace only)");
    }
    out.push_back(std::move(d));
  }
};

} // namespace

HfTokenizer::HfTokenizer(std::shared_ptr<const Impl> impl)
    : impl_(std::move(impl)) {}

HfTokenizer HfTokenizer::from_folder(const std::string& dir) {
  const std::string tj = dir + "/tokenizer.json";
  const std::string cj = dir + "/tokenizer_config.json";
  std::ifstream probe(cj);
  return from_file(tj, probe ? cj : "");
}

HfTokenizer HfTokenizer::from_file(
    const std::string& tokenizer_json,
    const std::string& tokenizer_config_json) {
  auto impl = std::make_shared<Impl>();
  Impl& t = *impl;
  t.file = tokenizer_json;
  const json root =
      parse_json(tokenizer_json, read_file(tokenizer_json, "tokenizer.json"));
  const Loader L{tokenizer_json};
  if (!root.is_object())
    L.fail("(top level)", "must be a JSON object");

  // -- model ------------------------------------------------------------------------------------
  const json& model = L.need(root, "model", "(top level)");
  if (!model.is_object())
    L.fail("model", "must be an object");
  std::string mtype = model.contains("type") && model.at("type").is_string()
      ? model.at("type").get<std::string>()
      : "BPE";
  if (mtype != "BPE")
    L.fail("model.type", "'" + mtype + "' is not supported (BPE only)");
  if (model.contains("dropout") && !model.at("dropout").is_null()) {
    const json& d = model.at("dropout");
    if (!d.is_number() || d.get<double>() != 0.0)
      L.fail("model.dropout", L.dump(d) + " is not supported (null only)");
  }
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(k) && !model.at(k).is_null() &&
        !(model.at(k).is_string() && model.at(k).get<std::string>().empty()))
      L.fail(
          std::string("model.") + k,
          L.dump(model.at(k)) + " is not supported (null only)");
  }
  if (model.contains("unk_token") && !model.at("unk_token").is_null())
    t.unk_token = L.str(model, "unk_token", "model");
  t.fuse_unk = L.boolean(model, "fuse_unk", "model", false);
  t.byte_fallback = L.boolean(model, "byte_fallback", "model", false);
  t.ignore_merges = L.boolean(model, "ignore_merges", "model", false);

  const json& vocab = L.need(model, "vocab", "model");
  if (!vocab.is_object())
    L.fail("model.vocab", "must be an object of token: id");
  t.vocab.reserve(vocab.size());
  int32_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() > INT32_MAX)
      L.fail(
          "model.vocab[\"" + it.key() + "\"]",
          "must be a non-negative integer id");
    const auto id = static_cast<int32_t>(it.value().get<int64_t>());
    t.vocab.set(it.key(), id);
    max_id = std::max(max_id, id);
  }
  t.vocab_r.assign(static_cast<size_t>(max_id + 1), "");
  t.vocab_has.assign(static_cast<size_t>(max_id + 1), false);
  for (size_t k = 0; k < t.vocab.keys().size(); ++k) {
    const auto id = static_cast<size_t>(t.vocab.values()[k]);
    if (!t.vocab_has[id]) {
      t.vocab_r[id] = t.vocab.keys()[k];
      t.vocab_has[id] = true;
    }
  }
  t.byte_ids.fill(-1);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    if (const int32_t* id = t.vocab.find(name))
      t.byte_ids[b] = *id;
  }
  if (t.unk_token)
    if (const int32_t* id = t.vocab.find(*t.unk_token))
      t.unk = *id;

  const json& merges = L.need(model, "merges", "model");
  if (!merges.is_array())
    L.fail("model.merges", "must be a list");
  t.merge_map.init(merges.size());
  int32_t rank = 0;
  std::string joined;
  for (size_t i = 0; i < merges.size(); ++i) {
    const json& m = merges[i];
    std::string a, b;
    const std::string key = "model.merges[" + std::to_string(i) + "]";
    if (m.is_string()) {
      const std::string line = m.get<std::string>();
      if (line.rfind("#version", 0) == 0)
        continue;
      const size_t sp = line.find(' ');
      if (sp == std::string::npos ||
          line.find(' ', sp + 1) != std::string::npos)
        L.fail(key, "'" + line + "' must be two tokens separated by one space");
      a = line.substr(0, sp);
      b = line.substr(sp + 1);
    } else if (
        m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      L.fail(key, "must be \"a b\" or [\"a\", \"b\"], not " + L.dump(m));
    }
    const int32_t* ia = t.vocab.find(a);
    const int32_t* ib = t.vocab.find(b);
    joined = a + b;
    const int32_t* in = t.vocab.find(joined);
    if (!ia || !ib || !in)
      L.fail(
          key,
          "refers to a token not in model.vocab: '" +
              (!ia       ? a
                   : !ib ? b
                         : joined) +
              "'");
    t.merge_map.set(*ia, *ib, rank, *in);
    t.merges_text.push_back(a + " " + b);
    ++rank;
  }

  // -- normalizer, pre-tokenizer, decoder, post-processor ---------------------------------------
  if (root.contains("normalizer"))
    L.normalizer(root.at("normalizer"), "normalizer", t.normalizers);
  t.has_normalizer =
      root.contains("normalizer") && !root.at("normalizer").is_null();
  if (root.contains("pre_tokenizer"))
    L.pre_tokenizer(root.at("pre_tokenizer"), "pre_tokenizer", t.pretok);
  if (root.contains("decoder"))
    L.decoder(root.at("decoder"), "decoder", t.decoders);
  t.has_decoder = root.contains("decoder") && !root.at("decoder").is_null();

  std::function<void(const json&, const std::string&)> post =
      [&](const json& j, const std::string& path) {
        if (j.is_null())
          return;
        const std::string ty = L.type(j, path);
        t.has_post = true;
        if (ty == "Sequence") {
          const json& list = L.need(j, "processors", path);
          if (!list.is_array())
            L.fail(path + ".processors", "must be a list");
          for (size_t i = 0; i < list.size(); ++i)
            post(list[i], path + ".processors[" + std::to_string(i) + "]");
        } else if (ty == "ByteLevel") {
          // offsets only
        } else if (ty == "TemplateProcessing") {
          const json& single = L.need(j, "single", path);
          const json& specials = j.contains("special_tokens")
              ? j.at("special_tokens")
              : json::object();
          if (!single.is_array())
            L.fail(path + ".single", "must be a list");
          t.single.clear();
          for (size_t i = 0; i < single.size(); ++i) {
            const std::string ip = path + ".single[" + std::to_string(i) + "]";
            const json& item = single[i];
            TemplatePiece tp{};
            if (item.is_object() && item.contains("Sequence")) {
              tp.is_sequence = true;
              tp.is_a =
                  L.str(item.at("Sequence"), "id", ip + ".Sequence") == "A";
            } else if (item.is_object() && item.contains("SpecialToken")) {
              const std::string name =
                  L.str(item.at("SpecialToken"), "id", ip + ".SpecialToken");
              if (!specials.is_object() || !specials.contains(name))
                L.fail(
                    ip + ".SpecialToken.id",
                    "'" + name + "' is not in " + path + ".special_tokens");
              const json& ids = L.need(
                  specials.at(name), "ids", path + ".special_tokens." + name);
              if (!ids.is_array())
                L.fail(
                    path + ".special_tokens." + name + ".ids",
                    "must be a list");
              for (const auto& v : ids) {
                if (!v.is_number_integer())
                  L.fail(
                      path + ".special_tokens." + name + ".ids",
                      "must be integers");
                tp.ids.push_back(v.get<int32_t>());
              }
            } else {
              L.fail(
                  ip, "must be {\"Sequence\": ...} or {\"SpecialToken\": ...}");
            }
            t.single.push_back(std::move(tp));
          }
        } else if (ty == "BertProcessing" || ty == "RobertaProcessing") {
          auto pair_id = [&](const char* k) {
            const json& v = L.need(j, k, path);
            if (!v.is_array() || v.size() != 2 || !v[1].is_number_integer())
              L.fail(path + "." + k, "must be [token, id]");
            return v[1].get<int32_t>();
          };
          t.single = {
              TemplatePiece{false, false, {pair_id("cls")}},
              TemplatePiece{true, true, {}},
              TemplatePiece{false, false, {pair_id("sep")}}};
        } else {
          L.fail(
              path + ".type",
              "'" + ty +
                  "' is not supported (Sequence, ByteLevel, TemplateProcessing, "
                  "BertProcessing, RobertaProcessing only)");
        }
      };
  if (root.contains("post_processor"))
    post(root.at("post_processor"), "post_processor");

  // -- added tokens (tokenizers' AddedVocabulary::add_tokens, ids assigned the same way) --------
  if (root.contains("added_tokens") && !root.at("added_tokens").is_null()) {
    const json& list = root.at("added_tokens");
    if (!list.is_array())
      L.fail("added_tokens", "must be a list");
    int32_t next_id = static_cast<int32_t>(t.vocab.size());
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string path = "added_tokens[" + std::to_string(i) + "]";
      const json& a = list[i];
      AddedToken tok{};
      tok.content = L.str(a, "content", path);
      tok.special = L.boolean(a, "special", path, false);
      tok.single_word = L.boolean(a, "single_word", path, false);
      tok.lstrip = L.boolean(a, "lstrip", path, false);
      tok.rstrip = L.boolean(a, "rstrip", path, false);
      tok.normalized = L.boolean(a, "normalized", path, !tok.special);
      if (tok.content.empty())
        continue;
      if (const int32_t* k = t.added_by_content.find(tok.content)) {
        const AddedToken& o = t.added[static_cast<size_t>(*k)];
        if (o.special == tok.special && o.single_word == tok.single_word &&
            o.lstrip == tok.lstrip && o.rstrip == tok.rstrip &&
            o.normalized == tok.normalized)
          continue;
      }
      int32_t id;
      if (const int32_t* k = t.added_by_content.find(tok.content))
        id = t.added[static_cast<size_t>(*k)].id;
      else if (const int32_t* v = t.vocab.find(tok.content))
        id = *v;
      else
        id = next_id++;
      tok.id = id;
      tok.pattern = tok.normalized && t.has_normalizer
          ? t.normalize(tok.content)
          : tok.content;
      if (tok.special)
        t.special_set.insert(tok.content);
      auto prev = t.added_by_id.find(id);
      if (prev != t.added_by_id.end()) {
        t.added[prev->second] = tok;
        t.added_by_content.set(tok.content, static_cast<int32_t>(prev->second));
      } else {
        t.added_by_id[id] = t.added.size();
        t.added_by_content.set(
            tok.content, static_cast<int32_t>(t.added.size()));
        t.added.push_back(tok);
      }
    }
    for (size_t k = 0; k < t.added.size(); ++k) {
      const AddedToken& a = t.added[k];
      if (a.pattern.empty())
        continue;
      (a.normalized ? t.normalized_trie : t.raw_trie)
          .add(a.pattern, static_cast<int32_t>(k));
    }
  }
  t.n_ids = static_cast<int32_t>(t.vocab_r.size());
  for (const auto& a : t.added)
    t.n_ids = std::max(t.n_ids, a.id + 1);

  // -- tokenizer_config.json --------------------------------------------------------------------
  auto lookup = [&](const std::string& s) -> int32_t {
    if (const int32_t* k = t.added_by_content.find(s))
      return t.added[static_cast<size_t>(*k)].id;
    if (const int32_t* v = t.vocab.find(s))
      return *v;
    return -1;
  };
  std::string pad_token;
  if (!tokenizer_config_json.empty()) {
    const json cfg = parse_json(
        tokenizer_config_json,
        read_file(tokenizer_config_json, "tokenizer_config.json"));
    const Loader C{tokenizer_config_json};
    if (!cfg.is_object())
      C.fail("(top level)", "must be a JSON object");
    auto token_name = [&](const char* key) -> std::string {
      if (!cfg.contains(key) || cfg.at(key).is_null())
        return "";
      const json& v = cfg.at(key);
      if (v.is_string())
        return v.get<std::string>();
      if (v.is_object() && v.contains("content") && v.at("content").is_string())
        return v.at("content").get<std::string>();
      C.fail(key, "must be a string or {\"content\": ...}, not " + C.dump(v));
    };
    t.bos_token = token_name("bos_token");
    t.eos_token = token_name("eos_token");
    pad_token = token_name("pad_token");
    for (const auto& [name, tokname] :
         {std::pair<const char*, std::string*>{"bos_token", &t.bos_token},
          {"eos_token", &t.eos_token}}) {
      if (!tokname->empty() && lookup(*tokname) < 0)
        C.fail(name, "'" + *tokname + "' is not a token of " + tokenizer_json);
    }
    if (cfg.contains("add_bos_token") && !cfg.at("add_bos_token").is_null())
      t.cfg_add_bos = C.boolean(cfg, "add_bos_token", "(top level)");
    if (cfg.contains("add_eos_token") && !cfg.at("add_eos_token").is_null())
      t.cfg_add_eos = C.boolean(cfg, "add_eos_token", "(top level)");
    if (cfg.contains("chat_template") && !cfg.at("chat_template").is_null()) {
      const json& ct = cfg.at("chat_template");
      if (ct.is_string()) {
        t.chat_template = ct.get<std::string>();
      } else if (ct.is_array()) {
        for (const auto& e : ct)
          if (e.is_object() && e.value("name", "") == "default" &&
              e.contains("template") && e.at("template").is_string())
            t.chat_template = e.at("template").get<std::string>();
        if (t.chat_template.empty())
          C.fail("chat_template", "has no template named 'default'");
      } else {
        C.fail(
            "chat_template", "must be a string or a list of {name, template}");
      }
    }
    const size_t slash = tokenizer_config_json.find_last_of('/');
    const std::string jinja =
        (slash == std::string::npos
             ? std::string()
             : tokenizer_config_json.substr(0, slash + 1)) +
        "chat_template.jinja";
    if (t.chat_template.empty()) {
      std::ifstream f(jinja, std::ios::binary);
      if (f) {
        std::ostringstream ss;
        ss << f.rdbuf();
        t.chat_template = ss.str();
      }
    }
  }
  // BOS / EOS: the config's names, else the template's first / last special token.
  const TemplatePiece* first_special = !t.single.empty() &&
          !t.single.front().is_sequence && t.single.front().ids.size() == 1
      ? &t.single.front()
      : nullptr;
  const TemplatePiece* last_special = t.single.size() > 1 &&
          !t.single.back().is_sequence && t.single.back().ids.size() == 1
      ? &t.single.back()
      : nullptr;
  t.bos = t.bos_token.empty() ? (first_special ? first_special->ids[0] : -1)
                              : lookup(t.bos_token);
  t.eos = t.eos_token.empty() ? (last_special ? last_special->ids[0] : -1)
                              : lookup(t.eos_token);
  if (t.bos_token.empty() && t.bos >= 0)
    t.bos_token = t.token_text(t.bos).value_or("");
  if (t.eos_token.empty() && t.eos >= 0)
    t.eos_token = t.token_text(t.eos).value_or("");
  t.pad = pad_token.empty() ? -1 : lookup(pad_token);
  // What encode(text, true) does.
  t.add_bos = t.has_post ? first_special != nullptr
                         : t.cfg_add_bos.value_or(false) && t.bos >= 0;
  t.add_eos = t.has_post ? last_special != nullptr
                         : t.cfg_add_eos.value_or(false) && t.eos >= 0;

  // -- GGUF naming ------------------------------------------------------------------------------
  bool byte_level = false, digits = false, gpt2_regex = false;
  std::optional<RegexKind> split_regex;
  for (const auto& p : t.pretok) {
    if (p.kind == PreTokenizer::kByteLevel) {
      byte_level = true;
      gpt2_regex = gpt2_regex || p.use_regex;
    }
    if (p.kind == PreTokenizer::kDigits && p.individual_digits)
      digits = true;
    if (p.kind == PreTokenizer::kSplit && p.is_regex)
      split_regex = p.regex;
  }
  for (const auto& d : t.decoders)
    byte_level = byte_level || d.kind == Decoder::kByteLevel;
  t.ggml_model = byte_level ? "gpt2" : "llama";
  if (!byte_level)
    t.ggml_pre = "default";
  else if (split_regex == RegexKind::kLlama3)
    t.ggml_pre = "llama-bpe";
  else if (split_regex == RegexKind::kQwen2)
    t.ggml_pre = "qwen2";
  else if (digits && gpt2_regex)
    t.ggml_pre = "smollm";
  else if (gpt2_regex || split_regex == RegexKind::kGpt2)
    t.ggml_pre = "gpt-2";
  else
    t.ggml_pre = "default";
  return HfTokenizer(std::move(impl));
}

std::vector<int32_t> HfTokenizer::encode(
    std::string_view text,
    bool add_special_tokens) const {
  return impl_->encode(text, add_special_tokens);
}

std::string HfTokenizer::decode(
    const std::vector<int32_t>& ids,
    bool skip_special_tokens) const {
  return impl_->decode(ids, skip_special_tokens);
}

int64_t HfTokenizer::vocab_size() const {
  return impl_->n_ids;
}
int32_t HfTokenizer::bos_id() const {
  return impl_->bos;
}
int32_t HfTokenizer::eos_id() const {
  return impl_->eos;
}
int32_t HfTokenizer::unk_id() const {
  return impl_->unk;
}
int32_t HfTokenizer::pad_id() const {
  return impl_->pad;
}
const std::string& HfTokenizer::bos_token() const {
  return impl_->bos_token;
}
const std::string& HfTokenizer::eos_token() const {
  return impl_->eos_token;
}
const std::string& HfTokenizer::chat_template() const {
  return impl_->chat_template;
}
bool HfTokenizer::add_bos() const {
  return impl_->add_bos;
}
bool HfTokenizer::add_eos() const {
  return impl_->add_eos;
}
const std::vector<std::string>& HfTokenizer::merges() const {
  return impl_->merges_text;
}
const std::string& HfTokenizer::ggml_model() const {
  return impl_->ggml_model;
}
const std::string& HfTokenizer::ggml_pre() const {
  return impl_->ggml_pre;
}

std::optional<int32_t> HfTokenizer::token_id(std::string_view token) const {
  if (const int32_t* k = impl_->added_by_content.find(token))
    return impl_->added[static_cast<size_t>(*k)].id;
  if (const int32_t* v = impl_->vocab.find(token))
    return *v;
  return std::nullopt;
}

std::optional<std::string> HfTokenizer::id_to_token(int32_t id) const {
  return impl_->token_text(id);
}

bool HfTokenizer::is_special(int32_t id) const {
  auto it = impl_->added_by_id.find(id);
  return it != impl_->added_by_id.end() && impl_->added[it->second].special;
}

std::vector<std::string> HfTokenizer::tokens() const {
  std::vector<std::string> out(static_cast<size_t>(impl_->n_ids));
  for (size_t i = 0; i < out.size(); ++i) {
    auto it = impl_->added_by_id.find(static_cast<int32_t>(i));
    if (it != impl_->added_by_id.end())
      out[i] = impl_->added[it->second].content;
    else if (i < impl_->vocab_has.size() && impl_->vocab_has[i])
      out[i] = impl_->vocab_r[i];
    else
      out[i] = "[PAD" + std::to_string(i) + "]";
  }
  return out;
}

std::vector<TokenType> HfTokenizer::token_types() const {
  const Impl& t = *impl_;
  std::vector<TokenType> out(static_cast<size_t>(t.n_ids), TokenType::kNormal);
  for (size_t i = 0; i < out.size(); ++i)
    if (i >= t.vocab_has.size() || !t.vocab_has[i])
      out[i] = TokenType::kUnused;
  if (t.byte_fallback)
    for (int32_t id : t.byte_ids)
      if (id >= 0)
        out[static_cast<size_t>(id)] = TokenType::kByte;
  if (t.unk >= 0)
    out[static_cast<size_t>(t.unk)] = TokenType::kUnknown;
  for (const auto& a : t.added)
    out[static_cast<size_t>(a.id)] =
        a.special ? TokenType::kControl : TokenType::kUserDefined;
  return out;
}

} // namespace qat::text
