// A Jinja subset for Hugging Face chat templates; see chat_template.h.
//
// Three parts, in order: values (Python semantics: str(), repr(), ==, truthiness, json.dumps),
// the lexer and parser (template text -> tree, all syntax and subset checks), and the renderer
// (walks the tree). The behaviour copied is jinja2 3.1's ImmutableSandboxedEnvironment as
// transformers builds it (utils/chat_template_utils.py: trim_blocks=True, lstrip_blocks=True,
// the loopcontrols extension, its own tojson, raise_exception, strftime_now, namespace, dict).
//
// Supported:
//   tags       for (tuple targets, `if` filter, else, loop.index/index0/revindex/revindex0/
//              first/last/length/previtem/nextitem/depth, loop.cycle()), if/elif/else,
//              set (name, tuple, ns.attr, block set), break, continue, generation (body only)
//   expr       literals (str, int, float, true/false/none, lists, tuples, dicts), + - * / // %
//              ** ~, comparisons (chained), and/or/not, in/not in, a if c else b, x.attr,
//              x[i], x[a:b:c], calls of the globals and methods below
//   globals    raise_exception, strftime_now, namespace, dict, range
//   filters    abs capitalize count d default first float int items join last length list
//              lower map reject rejectattr replace reverse safe select selectattr string
//              title tojson trim unique upper
//   tests      defined undefined none boolean true false integer float number string mapping
//              iterable sequence callable odd even divisibleby eq equalto == ne != lt < le <=
//              gt > ge >= lessthan greaterthan in sameas lower upper
//   methods    str: strip lstrip rstrip startswith endswith split rsplit lower upper title
//              capitalize replace find rfind count join splitlines isspace isdigit isalpha
//              dict: items keys values get
// Refused at parse time, by name: tags macro, call, filter, include, import, from, extends,
// block, with, raw, autoescape, do, `for ... recursive`, other filters/tests/methods/functions.
// Known approximations: lower()/upper()/title() map ASCII, Latin-1, Greek and Cyrillic only;
// str() of a value inside a list uses a simplified repr for non-printable characters.
#include "trainers/text/chat_template.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <set>
#include <unordered_map>
#include <utility>

#include "trainers/text/utf8.h"

namespace qat::text {
namespace chat_detail {
namespace {

// ---------------------------------------------------------------------------------------------
// UTF-8

size_t cp_len(const std::string& s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  size_t n = c < 0x80  ? 1
      : (c >> 5) == 6  ? 2
      : (c >> 4) == 14 ? 3
      : (c >> 3) == 30 ? 4
                       : 1;
  return std::min(n, s.size() - i);
}

uint32_t cp_at(const std::string& s, size_t i, size_t n) {
  const auto c = static_cast<unsigned char>(s[i]);
  if (n == 1)
    return c;
  uint32_t v = c & (n == 2 ? 0x1f : n == 3 ? 0x0f : 0x07);
  for (size_t k = 1; k < n; ++k)
    v = (v << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3f);
  return v;
}

std::vector<uint32_t> to_cps(const std::string& s) {
  std::vector<uint32_t> out;
  for (size_t i = 0; i < s.size();) {
    const size_t n = cp_len(s, i);
    out.push_back(cp_at(s, i, n));
    i += n;
  }
  return out;
}

std::string from_cps(
    const std::vector<uint32_t>& cps,
    size_t begin,
    size_t end) {
  std::string out;
  for (size_t i = begin; i < end; ++i)
    append_utf8(out, cps[i]);
  return out;
}

// Python's str.isspace().
bool py_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 ||
      c == 0xa0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 ||
      c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

uint32_t cp_lower(uint32_t c) {
  if (c >= 'A' && c <= 'Z')
    return c + 32;
  if ((c >= 0xc0 && c <= 0xde && c != 0xd7) ||
      (c >= 0x391 && c <= 0x3a9 && c != 0x3a2) || (c >= 0x410 && c <= 0x42f))
    return c + 32;
  if (c >= 0x400 && c <= 0x40f)
    return c + 80;
  if (c == 0x178)
    return 0xff;
  return c;
}

uint32_t cp_upper(uint32_t c) {
  if (c >= 'a' && c <= 'z')
    return c - 32;
  if ((c >= 0xe0 && c <= 0xfe && c != 0xf7) ||
      (c >= 0x3b1 && c <= 0x3c9 && c != 0x3c2) || (c >= 0x430 && c <= 0x44f))
    return c - 32;
  if (c >= 0x450 && c <= 0x45f)
    return c - 80;
  if (c == 0xff)
    return 0x178;
  return c;
}

// Has case (what str.title() and the lower/upper tests look at), in the ranges above.
bool cp_cased(uint32_t c) {
  return cp_lower(c) != cp_upper(c) || c == 0xdf;
}

// str.isalpha(), approximately: the cased letters above and the CJK, kana and hangul blocks.
bool cp_alpha(uint32_t c) {
  return cp_cased(c) || (c >= 0x3040 && c <= 0x30ff) ||
      (c >= 0x3400 && c <= 0x9fff) || (c >= 0xac00 && c <= 0xd7a3);
}

// Upper case of one code point; 'ß' becomes "SS" (or "Ss" in title case), as in Python.
void put_upper(std::string& out, uint32_t c, bool title) {
  if (c == 0xdf)
    out += title ? "Ss" : "SS";
  else
    append_utf8(out, cp_upper(c));
}

std::string py_upper(const std::string& s) {
  std::string out;
  for (uint32_t c : to_cps(s))
    put_upper(out, c, false);
  return out;
}

std::string map_cps(const std::string& s, uint32_t (*f)(uint32_t)) {
  std::string out;
  for (uint32_t c : to_cps(s))
    append_utf8(out, f(c));
  return out;
}

// Python's str.strip / lstrip / rstrip, with `chars` (code points) or whitespace.
std::string py_strip(
    const std::string& s,
    bool left,
    bool right,
    const std::string* chars) {
  const auto cps = to_cps(s);
  const auto set = chars ? to_cps(*chars) : std::vector<uint32_t>{};
  auto strip = [&](uint32_t c) {
    return chars ? std::find(set.begin(), set.end(), c) != set.end()
                 : py_space(c);
  };
  size_t b = 0, e = cps.size();
  if (left)
    while (b < e && strip(cps[b]))
      ++b;
  if (right)
    while (e > b && strip(cps[e - 1]))
      --e;
  return from_cps(cps, b, e);
}

// ---------------------------------------------------------------------------------------------
// Values

struct Value;
using List = std::vector<Value>;

struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  const Value* find(const std::string& key) const;
  void set(const std::string& key, Value v);
};

struct Value {
  enum class Kind {
    Undefined,
    None,
    Bool,
    Int,
    Float,
    String,
    List,
    Tuple,
    Dict,
    Namespace,
    Loop,
    Function
  };
  Kind kind = Kind::Undefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s; // String; Function's name; Undefined's error hint
  std::shared_ptr<const List> list;
  std::shared_ptr<Dict> dict; // Dict, Namespace (mutable), Loop

  static Value undefined(std::string hint) {
    Value v;
    v.s = std::move(hint);
    return v;
  }
  static Value none() {
    Value v;
    v.kind = Kind::None;
    return v;
  }
  static Value boolean(bool x) {
    Value v;
    v.kind = Kind::Bool;
    v.b = x;
    return v;
  }
  static Value integer(int64_t x) {
    Value v;
    v.kind = Kind::Int;
    v.i = x;
    return v;
  }
  static Value real(double x) {
    Value v;
    v.kind = Kind::Float;
    v.f = x;
    return v;
  }
  static Value str(std::string x) {
    Value v;
    v.kind = Kind::String;
    v.s = std::move(x);
    return v;
  }
  static Value seq(List items, bool tuple = false) {
    Value v;
    v.kind = tuple ? Kind::Tuple : Kind::List;
    v.list = std::make_shared<const List>(std::move(items));
    return v;
  }
  static Value mapping(Dict d, Kind kind = Kind::Dict) {
    Value v;
    v.kind = kind;
    v.dict = std::make_shared<Dict>(std::move(d));
    return v;
  }
  static Value function(std::string name) {
    Value v;
    v.kind = Kind::Function;
    v.s = std::move(name);
    return v;
  }

  bool is_undefined() const {
    return kind == Kind::Undefined;
  }
  bool is_seq() const {
    return kind == Kind::List || kind == Kind::Tuple;
  }
  bool is_number() const {
    return kind == Kind::Bool || kind == Kind::Int || kind == Kind::Float;
  }
  bool is_int() const {
    return kind == Kind::Bool || kind == Kind::Int;
  }
  int64_t as_int() const {
    return kind == Kind::Bool ? (b ? 1 : 0) : i;
  }
  double as_float() const {
    return kind == Kind::Float ? f : static_cast<double>(as_int());
  }
};

const Value* Dict::find(const std::string& key) const {
  for (const auto& [k, v] : items)
    if (k == key)
      return &v;
  return nullptr;
}

void Dict::set(const std::string& key, Value v) {
  for (auto& [k, old] : items)
    if (k == key) {
      old = std::move(v);
      return;
    }
  items.emplace_back(key, std::move(v));
}

// An error while rendering; the renderer adds origin and position.
struct EvalError {
  std::string message;
};

[[noreturn]] void fail(std::string message) {
  throw EvalError{std::move(message)};
}

const char* type_name(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined:
      return "Undefined";
    case Value::Kind::None:
      return "NoneType";
    case Value::Kind::Bool:
      return "bool";
    case Value::Kind::Int:
      return "int";
    case Value::Kind::Float:
      return "float";
    case Value::Kind::String:
      return "str";
    case Value::Kind::List:
      return "list";
    case Value::Kind::Tuple:
      return "tuple";
    case Value::Kind::Dict:
      return "dict";
    case Value::Kind::Namespace:
      return "Namespace";
    case Value::Kind::Loop:
      return "LoopContext";
    case Value::Kind::Function:
      return "function";
  }
  return "object";
}

// Using an undefined value for anything but printing, testing or iterating is an error.
void check_defined(const Value& v) {
  if (v.is_undefined())
    fail(v.s.empty() ? "value is undefined" : v.s);
}

bool truthy(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined:
    case Value::Kind::None:
      return false;
    case Value::Kind::Bool:
      return v.b;
    case Value::Kind::Int:
      return v.i != 0;
    case Value::Kind::Float:
      return v.f != 0;
    case Value::Kind::String:
      return !v.s.empty();
    case Value::Kind::List:
    case Value::Kind::Tuple:
      return !v.list->empty();
    case Value::Kind::Dict:
      return !v.dict->items.empty();
    default:
      return true;
  }
}

// float.__repr__: the shortest digits that round-trip, in Python's layout.
std::string py_float(double d) {
  if (std::isnan(d))
    return "nan";
  if (std::isinf(d))
    return d < 0 ? "-inf" : "inf";
  char buf[64];
  for (int p = 1; p <= 17; ++p) {
    std::snprintf(buf, sizeof buf, "%.*e", p - 1, d);
    if (std::strtod(buf, nullptr) == d)
      break;
  }
  std::string m(buf);
  const bool neg = m[0] == '-';
  if (neg)
    m.erase(0, 1);
  const size_t e = m.find('e');
  const int exp = std::atoi(m.c_str() + e + 1);
  std::string digits;
  for (size_t k = 0; k < e; ++k)
    if (m[k] != '.')
      digits += m[k];
  while (digits.size() > 1 && digits.back() == '0')
    digits.pop_back();
  std::string out = neg ? "-" : "";
  if (exp >= -4 && exp < 16) {
    if (exp >= 0) {
      std::string ip = digits.substr(
          0, std::min(digits.size(), static_cast<size_t>(exp) + 1));
      while (ip.size() < static_cast<size_t>(exp) + 1)
        ip += '0';
      std::string fp =
          digits.size() > ip.size() ? digits.substr(ip.size()) : "0";
      out += ip + "." + fp;
    } else {
      out += "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
    }
  } else {
    out += digits.substr(0, 1);
    if (digits.size() > 1)
      out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    out += eb;
  }
  return out;
}

std::string py_str(const Value& v);

// Not str.isprintable(): control and format characters, separators other than ' ', private
// use (the common blocks; unassigned code points are not known here).
bool py_unprintable(uint32_t c) {
  return c < 0x20 || (c >= 0x7f && c <= 0xa0) || c == 0xad || c == 0x1680 ||
      (c >= 0x2000 && c <= 0x200f) || (c >= 0x2028 && c <= 0x202f) ||
      (c >= 0x205f && c <= 0x2064) || (c >= 0x2066 && c <= 0x206f) ||
      c == 0x3000 || (c >= 0x600 && c <= 0x605) || c == 0x61c || c == 0x6dd ||
      c == 0x70f || c == 0x180e || (c >= 0xd800 && c <= 0xf8ff) ||
      c == 0xfeff || (c >= 0xfff9 && c <= 0xfffb) || c >= 0xf0000;
}

// repr(str): Python's quote choice and escapes.
std::string py_repr_str(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos;
  const bool has_double = s.find('"') != std::string::npos;
  const char q = has_single && !has_double ? '"' : '\'';
  std::string out(1, q);
  for (size_t i = 0; i < s.size();) {
    const size_t n = cp_len(s, i);
    const uint32_t c = cp_at(s, i, n);
    if (c == '\\')
      out += "\\\\";
    else if (c == static_cast<uint32_t>(q))
      out += std::string("\\") + q;
    else if (c == '\n')
      out += "\\n";
    else if (c == '\r')
      out += "\\r";
    else if (c == '\t')
      out += "\\t";
    else if (py_unprintable(c)) {
      char b[16];
      std::snprintf(
          b,
          sizeof b,
          c < 0x100         ? "\\x%02x"
              : c < 0x10000 ? "\\u%04x"
                            : "\\U%08x",
          c);
      out += b;
    } else
      out.append(s, i, n);
    i += n;
  }
  return out + q;
}

std::string py_repr(const Value& v) {
  if (v.kind == Value::Kind::String)
    return py_repr_str(v.s);
  if (v.kind == Value::Kind::Undefined)
    return "Undefined";
  return py_str(v);
}

// str(value), which is what {{ }} prints.
std::string py_str(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined:
      return "";
    case Value::Kind::None:
      return "None";
    case Value::Kind::Bool:
      return v.b ? "True" : "False";
    case Value::Kind::Int:
      return std::to_string(v.i);
    case Value::Kind::Float:
      return py_float(v.f);
    case Value::Kind::String:
      return v.s;
    case Value::Kind::List:
    case Value::Kind::Tuple: {
      const bool tuple = v.kind == Value::Kind::Tuple;
      std::string out = tuple ? "(" : "[";
      for (size_t k = 0; k < v.list->size(); ++k)
        out += (k ? ", " : "") + py_repr((*v.list)[k]);
      if (tuple && v.list->size() == 1)
        out += ",";
      return out + (tuple ? ")" : "]");
    }
    case Value::Kind::Dict: {
      std::string out = "{";
      for (size_t k = 0; k < v.dict->items.size(); ++k)
        out += (k ? ", " : "") + py_repr_str(v.dict->items[k].first) + ": " +
            py_repr(v.dict->items[k].second);
      return out + "}";
    }
    case Value::Kind::Namespace: {
      std::string out = "<Namespace {";
      for (size_t k = 0; k < v.dict->items.size(); ++k)
        out += (k ? ", " : "") + py_repr_str(v.dict->items[k].first) + ": " +
            py_repr(v.dict->items[k].second);
      return out + "}>";
    }
    case Value::Kind::Loop:
      return "<LoopContext>";
    case Value::Kind::Function:
      return "<function " + v.s + ">";
  }
  return "";
}

bool py_eq(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.kind == Value::Kind::Float || b.kind == Value::Kind::Float)
      return a.as_float() == b.as_float();
    return a.as_int() == b.as_int();
  }
  if (a.kind != b.kind)
    return false;
  switch (a.kind) {
    case Value::Kind::Undefined:
    case Value::Kind::None:
      return true;
    case Value::Kind::String:
    case Value::Kind::Function:
      return a.s == b.s;
    case Value::Kind::List:
    case Value::Kind::Tuple:
      if (a.list->size() != b.list->size())
        return false;
      for (size_t k = 0; k < a.list->size(); ++k)
        if (!py_eq((*a.list)[k], (*b.list)[k]))
          return false;
      return true;
    case Value::Kind::Dict:
      if (a.dict->items.size() != b.dict->items.size())
        return false;
      for (const auto& [k, v] : a.dict->items) {
        const Value* o = b.dict->find(k);
        if (!o || !py_eq(v, *o))
          return false;
      }
      return true;
    default:
      return a.dict == b.dict;
  }
}

// a < b (or a <= b) with Python's rules for numbers, strings and sequences.
int py_cmp(const Value& a, const Value& b, const char* op) {
  check_defined(a);
  check_defined(b);
  if (a.is_number() && b.is_number()) {
    const double x = a.as_float(), y = b.as_float();
    if (a.is_int() && b.is_int())
      return a.as_int() < b.as_int() ? -1 : a.as_int() > b.as_int();
    return x < y ? -1 : x > y;
  }
  if (a.kind == Value::Kind::String && b.kind == Value::Kind::String)
    return a.s < b.s ? -1 : a.s > b.s; // UTF-8 byte order is code point order
  if (a.kind == b.kind && a.is_seq()) {
    const size_t n = std::min(a.list->size(), b.list->size());
    for (size_t k = 0; k < n; ++k)
      if (!py_eq((*a.list)[k], (*b.list)[k]))
        return py_cmp((*a.list)[k], (*b.list)[k], op);
    return a.list->size() < b.list->size() ? -1
                                           : a.list->size() > b.list->size();
  }
  fail(
      std::string("'") + op + "' not supported between instances of '" +
      type_name(a) + "' and '" + type_name(b) + "'");
}

// What `for x in value` iterates over.
List iterate(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined:
      return {};
    case Value::Kind::List:
    case Value::Kind::Tuple:
      return *v.list;
    case Value::Kind::Dict: {
      List out;
      for (const auto& kv : v.dict->items)
        out.push_back(Value::str(kv.first));
      return out;
    }
    case Value::Kind::String: {
      List out;
      for (size_t i = 0; i < v.s.size();) {
        const size_t n = cp_len(v.s, i);
        out.push_back(Value::str(v.s.substr(i, n)));
        i += n;
      }
      return out;
    }
    default:
      fail(std::string("'") + type_name(v) + "' object is not iterable");
  }
}

bool py_in(const Value& item, const Value& container) {
  switch (container.kind) {
    case Value::Kind::Undefined:
      return false;
    case Value::Kind::String:
      if (item.kind != Value::Kind::String)
        fail(
            std::string("'in <string>' requires string as left operand, not ") +
            type_name(item));
      return container.s.find(item.s) != std::string::npos;
    case Value::Kind::List:
    case Value::Kind::Tuple:
      for (const auto& x : *container.list)
        if (py_eq(item, x))
          return true;
      return false;
    case Value::Kind::Dict:
      return item.kind == Value::Kind::String && container.dict->find(item.s);
    default:
      fail(
          std::string("argument of type '") + type_name(container) +
          "' is not iterable");
  }
}

int64_t length_of(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined:
      return 0;
    case Value::Kind::String:
      return static_cast<int64_t>(to_cps(v.s).size());
    case Value::Kind::List:
    case Value::Kind::Tuple:
      return static_cast<int64_t>(v.list->size());
    case Value::Kind::Dict:
      return static_cast<int64_t>(v.dict->items.size());
    default:
      fail(std::string("object of type '") + type_name(v) + "' has no len()");
  }
}

// json.dumps(value, ensure_ascii, indent, separators, sort_keys), as transformers' tojson.
struct JsonStyle {
  bool ensure_ascii = false;
  bool indent = false;
  std::string indent_unit;
  std::string item_sep = ", ", key_sep = ": ";
  bool sort_keys = false;
};

void json_string(std::string& out, const std::string& s, bool ensure_ascii) {
  out += '"';
  for (size_t i = 0; i < s.size();) {
    const size_t n = cp_len(s, i);
    const uint32_t c = cp_at(s, i, n);
    char b[16];
    if (c == '"')
      out += "\\\"";
    else if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else if (c == '\r')
      out += "\\r";
    else if (c == '\t')
      out += "\\t";
    else if (c == '\b')
      out += "\\b";
    else if (c == '\f')
      out += "\\f";
    else if (c < 0x20 || (ensure_ascii && c >= 0x7f)) {
      if (c >= 0x10000) {
        const uint32_t x = c - 0x10000;
        std::snprintf(
            b,
            sizeof b,
            "\\u%04x\\u%04x",
            0xd800 + (x >> 10),
            0xdc00 + (x & 0x3ff));
      } else {
        std::snprintf(b, sizeof b, "\\u%04x", c);
      }
      out += b;
    } else
      out.append(s, i, n);
    i += n;
  }
  out += '"';
}

void to_json(std::string& out, const Value& v, const JsonStyle& st, int level) {
  auto newline = [&](int lvl) {
    if (!st.indent)
      return;
    out += '\n';
    for (int k = 0; k < lvl; ++k)
      out += st.indent_unit;
  };
  switch (v.kind) {
    case Value::Kind::None:
      out += "null";
      return;
    case Value::Kind::Bool:
      out += v.b ? "true" : "false";
      return;
    case Value::Kind::Int:
      out += std::to_string(v.i);
      return;
    case Value::Kind::Float:
      if (std::isnan(v.f))
        out += "NaN";
      else if (std::isinf(v.f))
        out += v.f < 0 ? "-Infinity" : "Infinity";
      else
        out += py_float(v.f);
      return;
    case Value::Kind::String:
      json_string(out, v.s, st.ensure_ascii);
      return;
    case Value::Kind::List:
    case Value::Kind::Tuple: {
      if (v.list->empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k)
          out += st.item_sep;
        newline(level + 1);
        to_json(out, (*v.list)[k], st, level + 1);
      }
      newline(level);
      out += ']';
      return;
    }
    case Value::Kind::Dict: {
      if (v.dict->items.empty()) {
        out += "{}";
        return;
      }
      std::vector<const std::pair<std::string, Value>*> items;
      for (const auto& kv : v.dict->items)
        items.push_back(&kv);
      if (st.sort_keys)
        std::stable_sort(items.begin(), items.end(), [](auto* x, auto* y) {
          return x->first < y->first;
        });
      out += '{';
      for (size_t k = 0; k < items.size(); ++k) {
        if (k)
          out += st.item_sep;
        newline(level + 1);
        json_string(out, items[k]->first, st.ensure_ascii);
        out += st.key_sep;
        to_json(out, items[k]->second, st, level + 1);
      }
      newline(level);
      out += '}';
      return;
    }
    default:
      fail(
          std::string("Object of type ") + type_name(v) +
          " is not JSON serializable");
  }
}

Value from_json(const nlohmann::ordered_json& j) {
  if (j.is_null())
    return Value::none();
  if (j.is_boolean())
    return Value::boolean(j.get<bool>());
  if (j.is_number_integer())
    return Value::integer(j.get<int64_t>());
  if (j.is_number())
    return Value::real(j.get<double>());
  if (j.is_string())
    return Value::str(j.get<std::string>());
  if (j.is_array()) {
    List l;
    for (const auto& x : j)
      l.push_back(from_json(x));
    return Value::seq(std::move(l));
  }
  Dict d;
  for (auto it = j.begin(); it != j.end(); ++it)
    d.items.emplace_back(it.key(), from_json(*it));
  return Value::mapping(std::move(d));
}

// Python slicing of n items: the indices taken.
std::vector<size_t> slice_indices(
    int64_t n,
    const Value* start,
    const Value* stop,
    const Value* step) {
  auto num = [](const Value* v) -> const Value* {
    if (!v || v->kind == Value::Kind::None)
      return nullptr;
    if (!v->is_int())
      fail("slice indices must be integers or None");
    return v;
  };
  start = num(start);
  stop = num(stop);
  step = num(step);
  const int64_t st = step ? step->as_int() : 1;
  if (st == 0)
    fail("slice step cannot be zero");
  auto clamp = [&](const Value* v, int64_t dflt) {
    if (!v)
      return dflt;
    int64_t x = v->as_int();
    if (x < 0)
      x += n;
    if (st > 0)
      return std::clamp<int64_t>(x, 0, n);
    return std::clamp<int64_t>(x, -1, n - 1);
  };
  const int64_t b = clamp(start, st > 0 ? 0 : n - 1),
                e = clamp(stop, st > 0 ? n : -1);
  std::vector<size_t> out;
  for (int64_t k = b; st > 0 ? k < e : k > e; k += st)
    out.push_back(static_cast<size_t>(k));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Syntax tree

struct Expr;
using ExprP = std::unique_ptr<Expr>;

struct Expr {
  enum class K {
    Const,
    Name,
    List,
    Tuple,
    Dict,
    Attr,
    Item,
    Slice,
    Call,
    Filter,
    Test,
    Neg,
    Pos,
    Not,
    And,
    Or,
    Bin,
    Compare,
    Cond,
    Concat
  };
  K k;
  int line = 0, col = 0;
  Value value;      // Const
  std::string name; // Name, Attr, Filter, Test, Bin's operator
  std::vector<ExprP>
      a; // operands; Call: callee then arguments; Slice: obj, start, stop, step
  std::vector<std::string> ops; // Compare
  std::vector<std::pair<std::string, ExprP>> kwargs;
  bool negate = false; // Test
};

struct Stmt;
using StmtP = std::unique_ptr<Stmt>;
using Body = std::vector<StmtP>;

struct Stmt {
  enum class K { Text, Print, If, For, Set, SetBlock, Break, Continue, Block };
  K k;
  int line = 0, col = 0;
  std::string text; // Text
  std::vector<ExprP>
      exprs; // Print/Set: [value]; If: conditions; For: [iter, filter?]
  std::vector<Body> bodies; // If: one per condition (+ else); For: [body, else]
  std::vector<std::string> targets; // Set / For names
  std::string attr;                 // Set ns.attr
};

} // namespace

struct Program {
  std::string origin;
  Body body;
};

namespace {

// ---------------------------------------------------------------------------------------------
// Lexer

struct Token {
  enum class T {
    Data,
    BlockBegin,
    BlockEnd,
    VarBegin,
    VarEnd,
    Name,
    String,
    Int,
    Float,
    Op,
    Eof
  };
  T t;
  std::string text;
  int64_t ival = 0;
  double fval = 0;
  size_t pos = 0;
};

struct Source {
  std::string text; // newlines normalised, one trailing newline dropped
  std::string origin;
  std::vector<size_t> line_starts;

  Source(const std::string& raw, std::string org) : origin(std::move(org)) {
    for (size_t i = 0; i < raw.size(); ++i) {
      if (raw[i] == '\r') {
        text += '\n';
        if (i + 1 < raw.size() && raw[i + 1] == '\n')
          ++i;
      } else
        text += raw[i];
    }
    if (!text.empty() && text.back() == '\n')
      text.pop_back();
    line_starts.push_back(0);
    for (size_t i = 0; i < text.size(); ++i)
      if (text[i] == '\n')
        line_starts.push_back(i + 1);
  }

  std::string where(size_t pos) const {
    const auto [line, col] = line_col(pos);
    return origin + ":" + std::to_string(line) + ":" + std::to_string(col);
  }
  std::pair<int, int> line_col(size_t pos) const {
    const size_t line =
        std::upper_bound(line_starts.begin(), line_starts.end(), pos) -
        line_starts.begin();
    size_t col = 1;
    for (size_t i = line_starts[line - 1]; i < pos && i < text.size();
         i += cp_len(text, i))
      ++col;
    return {static_cast<int>(line), static_cast<int>(col)};
  }
  [[noreturn]] void error(size_t pos, const std::string& message) const {
    throw std::runtime_error(where(pos) + ": " + message);
  }
};

bool ascii_space(char c) {
  return c == ' ' || (c >= '\t' && c <= '\r');
}
bool name_start(char c) {
  return std::isalpha(static_cast<unsigned char>(c)) || c == '_';
}
bool name_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
}
bool digit(char c) {
  return c >= '0' && c <= '9';
}

class Lexer {
 public:
  explicit Lexer(const Source& src) : src_(src), s_(src.text) {}

  std::vector<Token> run() {
    size_t pos = 0;
    bool line_starting = true;
    while (pos < s_.size()) {
      size_t open = pos;
      while (open + 1 < s_.size() &&
             !(s_[open] == '{' &&
               (s_[open + 1] == '{' || s_[open + 1] == '%' ||
                s_[open + 1] == '#')))
        ++open;
      if (open + 1 >= s_.size()) {
        push(Token::T::Data, s_.substr(pos), pos);
        break;
      }
      const char kind = s_[open + 1];
      const char sign =
          open + 2 < s_.size() && (s_[open + 2] == '-' || s_[open + 2] == '+')
          ? s_[open + 2]
          : 0;
      std::string text = s_.substr(pos, open - pos);
      if (sign == '-') {
        text = py_strip(text, false, true, nullptr);
      } else if (sign != '+' && kind != '{') { // lstrip_blocks
        const size_t nl = text.rfind('\n');
        const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
        if ((l_pos > 0 || line_starting) && l_pos < text.size() &&
            py_strip(text.substr(l_pos), true, false, nullptr).empty())
          text.resize(l_pos);
      }
      if (!text.empty())
        push(Token::T::Data, text, pos);
      pos = open + 2 + (sign ? 1 : 0);
      if (kind == '#') {
        const size_t end = s_.find("#}", pos);
        if (end == std::string::npos)
          src_.error(open, "missing end of comment tag '#}'");
        const char mod = end > pos && (s_[end - 1] == '-' || s_[end - 1] == '+')
            ? s_[end - 1]
            : 0;
        pos = end + 2;
        line_starting = after_end(pos, mod, true);
        continue;
      }
      push(kind == '%' ? Token::T::BlockBegin : Token::T::VarBegin, "", open);
      line_starting = tag(pos, kind == '%', open);
    }
    push(Token::T::Eof, "", s_.size());
    return std::move(out_);
  }

 private:
  const Source& src_;
  const std::string& s_;
  std::vector<Token> out_;

  void push(Token::T t, std::string text, size_t pos) {
    Token tok;
    tok.t = t;
    tok.text = std::move(text);
    tok.pos = pos;
    out_.push_back(std::move(tok));
  }

  bool starts(size_t pos, const char* lit) const {
    return s_.compare(pos, std::strlen(lit), lit) == 0;
  }

  // After a block or comment end: '-' strips all whitespace, '+' nothing, else trim_blocks
  // takes one newline. Returns whether the consumed text ends with a newline.
  bool after_end(size_t& pos, char mod, bool block) {
    if (mod == '-') {
      const size_t from = pos;
      while (pos < s_.size() && py_space(cp_at(s_, pos, cp_len(s_, pos))))
        pos += cp_len(s_, pos);
      return pos > from && s_[pos - 1] == '\n';
    }
    if (mod == 0 && block && pos < s_.size() && s_[pos] == '\n') {
      ++pos;
      return true;
    }
    return false;
  }

  bool tag(size_t& pos, bool block, size_t open) {
    std::vector<char> balance;
    while (true) {
      if (pos >= s_.size())
        src_.error(
            open,
            std::string("unexpected end of template: missing '") +
                (block ? "%}" : "}}") + "'");
      if (balance.empty()) {
        if (block) {
          for (const char mod : {'+', '-', '\0'}) {
            const std::string end = mod ? std::string(1, mod) + "%}" : "%}";
            if (starts(pos, end.c_str())) {
              push(Token::T::BlockEnd, "", pos);
              pos += end.size();
              return after_end(pos, mod, true);
            }
          }
        } else if (starts(pos, "-}}") || starts(pos, "}}")) {
          push(Token::T::VarEnd, "", pos);
          const bool strip = s_[pos] == '-';
          pos += strip ? 3 : 2;
          return after_end(pos, strip ? '-' : '+', false);
        }
      }
      const char c = s_[pos];
      if (ascii_space(c)) {
        ++pos;
      } else if (digit(c)) {
        number(pos);
      } else if (name_start(c)) {
        const size_t b = pos;
        while (pos < s_.size() && name_char(s_[pos]))
          ++pos;
        push(Token::T::Name, s_.substr(b, pos - b), b);
      } else if (c == '\'' || c == '"') {
        string(pos);
      } else {
        static const char* ops[] = {"//", "**", "==", "!=", ">=", "<=", "+",
                                    "-",  "*",  "/",  "%",  "~",  "[",  "]",
                                    "(",  ")",  "{",  "}",  ">",  "<",  "=",
                                    ".",  ":",  "|",  ",",  ";"};
        const char* op = nullptr;
        for (const char* o : ops)
          if (starts(pos, o)) {
            op = o;
            break;
          }
        if (!op)
          src_.error(pos, std::string("unexpected char '") + c + "'");
        const std::string o(op);
        if (o == "(" || o == "[" || o == "{") {
          balance.push_back(o == "(" ? ')' : o == "[" ? ']' : '}');
        } else if (o == ")" || o == "]" || o == "}") {
          if (balance.empty())
            src_.error(pos, "unexpected '" + o + "'");
          if (balance.back() != o[0])
            src_.error(
                pos,
                "unexpected '" + o + "', expected '" +
                    std::string(1, balance.back()) + "'");
          balance.pop_back();
        }
        push(Token::T::Op, o, pos);
        pos += o.size();
      }
    }
  }

  void number(size_t& pos) {
    const size_t b = pos;
    auto digits = [&] {
      const size_t from = pos;
      while (pos < s_.size() &&
             (digit(s_[pos]) ||
              (s_[pos] == '_' && pos + 1 < s_.size() && digit(s_[pos + 1]))))
        ++pos;
      return pos > from;
    };
    digits();
    bool is_float = false;
    const bool after_dot =
        b > 0 && s_[b - 1] == '.'; // x.0.1 is two attribute lookups
    if (!after_dot && pos + 1 < s_.size() && s_[pos] == '.' &&
        digit(s_[pos + 1])) {
      ++pos;
      digits();
      is_float = true;
    }
    if (!after_dot && pos < s_.size() && (s_[pos] == 'e' || s_[pos] == 'E')) {
      size_t save = pos++;
      if (pos < s_.size() && (s_[pos] == '+' || s_[pos] == '-'))
        ++pos;
      if (digits())
        is_float = true;
      else
        pos = save;
    }
    std::string text;
    for (size_t k = b; k < pos; ++k)
      if (s_[k] != '_')
        text += s_[k];
    Token tok;
    tok.pos = b;
    tok.text = text;
    if (is_float) {
      tok.t = Token::T::Float;
      tok.fval = std::strtod(text.c_str(), nullptr);
    } else {
      tok.t = Token::T::Int;
      tok.ival = std::strtoll(text.c_str(), nullptr, 10);
    }
    out_.push_back(std::move(tok));
  }

  // Python's unicode-escape decoding of a string literal's body.
  void string(size_t& pos) {
    const size_t b = pos;
    const char q = s_[pos++];
    std::string v;
    while (true) {
      if (pos >= s_.size())
        src_.error(b, "unterminated string literal");
      const char c = s_[pos];
      if (c == q) {
        ++pos;
        break;
      }
      if (c != '\\') {
        v += c;
        ++pos;
        continue;
      }
      if (pos + 1 >= s_.size())
        src_.error(b, "unterminated string literal");
      const char e = s_[pos + 1];
      pos += 2;
      auto hex = [&](int n) {
        uint32_t x = 0;
        for (int k = 0; k < n; ++k, ++pos) {
          if (pos >= s_.size() ||
              !std::isxdigit(static_cast<unsigned char>(s_[pos])))
            src_.error(b, "truncated \\x, \\u or \\U escape in string literal");
          x = x * 16 +
              static_cast<uint32_t>(
                  std::stoi(std::string(1, s_[pos]), nullptr, 16));
        }
        append_utf8(v, x);
      };
      switch (e) {
        case 'n':
          v += '\n';
          break;
        case 't':
          v += '\t';
          break;
        case 'r':
          v += '\r';
          break;
        case '\\':
          v += '\\';
          break;
        case '\'':
          v += '\'';
          break;
        case '"':
          v += '"';
          break;
        case 'a':
          v += '\a';
          break;
        case 'b':
          v += '\b';
          break;
        case 'f':
          v += '\f';
          break;
        case 'v':
          v += '\v';
          break;
        case '\n':
          break;
        case 'x':
          hex(2);
          break;
        case 'u':
          hex(4);
          break;
        case 'U':
          hex(8);
          break;
        default:
          if (e >= '0' && e <= '7') {
            uint32_t x = static_cast<uint32_t>(e - '0');
            for (int k = 0;
                 k < 2 && pos < s_.size() && s_[pos] >= '0' && s_[pos] <= '7';
                 ++k)
              x = x * 8 + static_cast<uint32_t>(s_[pos++] - '0');
            append_utf8(v, x);
          } else {
            v += '\\';
            v += e;
          }
      }
    }
    push(Token::T::String, v, b);
  }
};

// ---------------------------------------------------------------------------------------------
// Parser

const std::set<std::string> kFilters = {
    "abs",     "capitalize", "count",  "d",          "default",    "first",
    "float",   "int",        "items",  "join",       "last",       "length",
    "list",    "lower",      "map",    "reject",     "rejectattr", "replace",
    "reverse", "safe",       "select", "selectattr", "string",     "title",
    "tojson",  "trim",       "unique", "upper"};
const std::set<std::string> kTests = {
    "defined",  "undefined",   "none",   "boolean", "true",        "false",
    "integer",  "float",       "number", "string",  "mapping",     "iterable",
    "sequence", "callable",    "odd",    "even",    "divisibleby", "eq",
    "equalto",  "==",          "ne",     "!=",      "lt",          "<",
    "le",       "<=",          "gt",     ">",       "ge",          ">=",
    "lessthan", "greaterthan", "in",     "sameas",  "lower",       "upper"};
const std::set<std::string> kMethods = {
    "strip",      "lstrip",     "rstrip",  "startswith", "endswith",
    "split",      "rsplit",     "lower",   "upper",      "title",
    "capitalize", "replace",    "find",    "rfind",      "count",
    "join",       "splitlines", "isspace", "isdigit",    "isalpha",
    "items",      "keys",       "values",  "get",        "cycle"};
const std::set<std::string> kFunctions =
    {"raise_exception", "strftime_now", "namespace", "dict", "range"};
const std::set<std::string> kRefusedTags = {
    "macro",
    "call",
    "filter",
    "include",
    "import",
    "from",
    "extends",
    "block",
    "with",
    "raw",
    "autoescape",
    "do",
    "print"};

class Parser {
 public:
  Parser(const Source& src, std::vector<Token> toks)
      : src_(src), t_(std::move(toks)) {}

  Body parse() {
    Body body = subparse({});
    if (cur().t != Token::T::Eof)
      error(cur(), "unexpected tag '" + cur().text + "'");
    return body;
  }

 private:
  const Source& src_;
  std::vector<Token> t_;
  size_t p_ = 0;
  int loops_ = 0;
  struct Open {
    std::string tag, ends;
    size_t pos;
  };
  std::vector<Open> open_; // blocks being parsed, innermost last

  const Token& cur() const {
    return t_[p_];
  }
  const Token& peek(size_t k = 1) const {
    return t_[std::min(p_ + k, t_.size() - 1)];
  }
  const Token& next() {
    return t_[p_ < t_.size() - 1 ? p_++ : p_];
  }
  bool is_op(const char* o) const {
    return cur().t == Token::T::Op && cur().text == o;
  }
  bool is_name(const char* n) const {
    return cur().t == Token::T::Name && cur().text == n;
  }

  [[noreturn]] void error(const Token& tok, const std::string& message) const {
    src_.error(tok.pos, message);
  }

  static std::string describe(const Token& tok) {
    switch (tok.t) {
      case Token::T::BlockEnd:
        return "end of statement block";
      case Token::T::VarEnd:
        return "end of print statement";
      case Token::T::Eof:
        return "end of template";
      case Token::T::String:
        return "string";
      case Token::T::Int:
      case Token::T::Float:
        return "number";
      default:
        return "'" + tok.text + "'";
    }
  }
  void expect_op(const char* o) {
    if (!is_op(o))
      error(cur(), std::string("expected '") + o + "', got " + describe(cur()));
    next();
  }
  void expect(Token::T t, const char* what) {
    if (cur().t != t)
      error(
          cur(), std::string("expected ") + what + ", got " + describe(cur()));
    next();
  }
  std::string expect_name() {
    if (cur().t != Token::T::Name)
      error(cur(), "expected a name, got " + describe(cur()));
    return next().text;
  }

  template <class N>
  std::unique_ptr<N> node(typename N::K k, const Token& at) const {
    auto n = std::make_unique<N>();
    n->k = k;
    std::tie(n->line, n->col) = src_.line_col(at.pos);
    return n;
  }

  // Statements until a block tag named in `ends` (left current, just after '{%') or the end.
  Body subparse(
      const std::set<std::string>& ends,
      const Token* opener = nullptr,
      const char* closer = nullptr) {
    if (opener) {
      std::string names;
      for (const auto& e : ends)
        names += (names.empty() ? "'" : " or '") + e + "'";
      open_.push_back({opener->text, names, opener->pos});
    }
    struct Pop {
      std::vector<Open>* v;
      bool on;
      ~Pop() {
        if (on)
          v->pop_back();
      }
    } pop{&open_, opener != nullptr};
    Body body;
    while (true) {
      const Token& tok = cur();
      if (tok.t == Token::T::Eof) {
        if (opener)
          error(
              *opener,
              std::string("unclosed tag '") + opener->text + "' (no '" +
                  closer + "')");
        return body;
      }
      if (tok.t == Token::T::Data) {
        auto s = node<Stmt>(Stmt::K::Text, tok);
        s->text = tok.text;
        body.push_back(std::move(s));
        next();
      } else if (tok.t == Token::T::VarBegin) {
        next();
        auto s = node<Stmt>(Stmt::K::Print, tok);
        s->exprs.push_back(parse_tuple());
        expect(Token::T::VarEnd, "'}}'");
        body.push_back(std::move(s));
      } else if (tok.t == Token::T::BlockBegin) {
        next();
        if (cur().t == Token::T::Name && ends.count(cur().text))
          return body;
        body.push_back(statement());
        expect(Token::T::BlockEnd, "'%}'");
      } else {
        error(tok, "unexpected " + describe(tok));
      }
    }
  }

  StmtP statement() {
    const Token& tok = cur();
    if (tok.t != Token::T::Name)
      error(tok, "expected a tag name, got " + describe(tok));
    const std::string& n = tok.text;
    if (n == "for")
      return parse_for();
    if (n == "if")
      return parse_if();
    if (n == "set")
      return parse_set();
    if (n == "break" || n == "continue") {
      if (loops_ == 0)
        error(tok, "'" + n + "' outside of a loop");
      next();
      return node<Stmt>(n == "break" ? Stmt::K::Break : Stmt::K::Continue, tok);
    }
    if (n == "generation") {
      const Token opener = next();
      expect(Token::T::BlockEnd, "'%}'");
      auto s = node<Stmt>(Stmt::K::Block, opener);
      s->bodies.push_back(
          subparse({"endgeneration"}, &opener, "endgeneration"));
      next();
      return s;
    }
    if (kRefusedTags.count(n))
      error(tok, "unsupported tag '" + n + "'");
    if (n.rfind("end", 0) == 0 || n == "elif" || n == "else") {
      if (open_.empty())
        error(tok, "unexpected tag '" + n + "'");
      const Open& o = open_.back();
      error(
          tok,
          "unexpected tag '" + n + "': the innermost open block is '" + o.tag +
              "' at " + src_.where(o.pos).substr(src_.origin.size() + 1) +
              ", expecting " + o.ends);
    }
    error(tok, "unknown tag '" + n + "'");
  }

  std::vector<std::string> assign_names() {
    std::vector<std::string> names{expect_name()};
    while (is_op(",")) {
      next();
      if (cur().t != Token::T::Name || is_name("in"))
        break;
      names.push_back(expect_name());
    }
    return names;
  }

  StmtP parse_for() {
    const Token opener = next();
    auto s = node<Stmt>(Stmt::K::For, opener);
    s->targets = assign_names();
    if (!is_name("in"))
      error(cur(), "expected 'in', got " + describe(cur()));
    next();
    s->exprs.push_back(parse_tuple(false, "recursive"));
    if (is_name("if")) {
      next();
      s->exprs.push_back(parse_expression());
    }
    if (is_name("recursive"))
      error(cur(), "unsupported loop 'recursive'");
    expect(Token::T::BlockEnd, "'%}'");
    ++loops_;
    s->bodies.push_back(subparse({"endfor", "else"}, &opener, "endfor"));
    --loops_;
    if (is_name("else")) {
      next();
      expect(Token::T::BlockEnd, "'%}'");
      s->bodies.push_back(subparse({"endfor"}, &opener, "endfor"));
    }
    next();
    return s;
  }

  StmtP parse_if() {
    const Token opener = next();
    auto s = node<Stmt>(Stmt::K::If, opener);
    s->exprs.push_back(parse_tuple(false));
    expect(Token::T::BlockEnd, "'%}'");
    while (true) {
      s->bodies.push_back(
          subparse({"elif", "else", "endif"}, &opener, "endif"));
      if (is_name("elif")) {
        next();
        s->exprs.push_back(parse_tuple(false));
        expect(Token::T::BlockEnd, "'%}'");
      } else if (is_name("else")) {
        next();
        expect(Token::T::BlockEnd, "'%}'");
        s->bodies.push_back(subparse({"endif"}, &opener, "endif"));
        next();
        return s;
      } else {
        next();
        return s;
      }
    }
  }

  StmtP parse_set() {
    const Token opener = next();
    auto s = node<Stmt>(Stmt::K::Set, opener);
    s->targets.push_back(expect_name());
    if (is_op(".")) {
      next();
      s->attr = expect_name();
    } else {
      while (is_op(",")) {
        next();
        s->targets.push_back(expect_name());
      }
    }
    if (is_op("=")) {
      next();
      s->exprs.push_back(parse_tuple());
      return s;
    }
    if (cur().t != Token::T::BlockEnd)
      error(cur(), "expected '=', got " + describe(cur()));
    if (!s->attr.empty() || s->targets.size() != 1)
      error(opener, "a block 'set' assigns one name");
    s->k = Stmt::K::SetBlock;
    next();
    s->bodies.push_back(subparse({"endset"}, &opener, "endset"));
    next();
    return s;
  }

  // ---- expressions

  bool tuple_end(const char* extra) const {
    return cur().t == Token::T::VarEnd || cur().t == Token::T::BlockEnd ||
        is_op(")") || (extra && is_name(extra));
  }

  ExprP parse_tuple(
      bool with_condexpr = true,
      const char* extra_end = nullptr,
      bool explicit_parens = false) {
    const Token start = cur();
    std::vector<ExprP> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty())
        expect_op(",");
      if (tuple_end(extra_end))
        break;
      items.push_back(with_condexpr ? parse_expression() : parse_or());
      if (is_op(","))
        is_tuple = true;
      else
        break;
    }
    if (!is_tuple && items.size() == 1)
      return std::move(items[0]);
    if (items.empty() && !explicit_parens)
      error(cur(), "expected an expression, got " + describe(cur()));
    auto t = node<Expr>(Expr::K::Tuple, start);
    t->a = std::move(items);
    return t;
  }

  ExprP parse_expression() {
    ExprP e = parse_or();
    while (is_name("if")) {
      const Token tok = next();
      auto c = node<Expr>(Expr::K::Cond, tok);
      ExprP cond = parse_or();
      ExprP other;
      if (is_name("else")) {
        next();
        other = parse_expression();
      }
      c->a.push_back(std::move(cond));
      c->a.push_back(std::move(e));
      c->a.push_back(std::move(other));
      e = std::move(c);
    }
    return e;
  }

  ExprP binary(
      Expr::K k,
      ExprP l,
      ExprP r,
      const Token& tok,
      std::string op = "") {
    auto n = node<Expr>(k, tok);
    n->name = std::move(op);
    n->a.push_back(std::move(l));
    n->a.push_back(std::move(r));
    return n;
  }

  ExprP parse_or() {
    ExprP l = parse_and();
    while (is_name("or")) {
      const Token tok = next();
      l = binary(Expr::K::Or, std::move(l), parse_and(), tok);
    }
    return l;
  }
  ExprP parse_and() {
    ExprP l = parse_not();
    while (is_name("and")) {
      const Token tok = next();
      l = binary(Expr::K::And, std::move(l), parse_not(), tok);
    }
    return l;
  }
  ExprP parse_not() {
    if (is_name("not")) {
      const Token tok = next();
      auto n = node<Expr>(Expr::K::Not, tok);
      n->a.push_back(parse_not());
      return n;
    }
    return parse_compare();
  }
  ExprP parse_compare() {
    const Token start = cur();
    ExprP first = parse_math1();
    std::vector<std::string> ops;
    std::vector<ExprP> rest;
    while (true) {
      if (cur().t == Token::T::Op &&
          (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
           cur().text == "<=" || cur().text == ">" || cur().text == ">=")) {
        ops.push_back(next().text);
      } else if (is_name("in")) {
        next();
        ops.push_back("in");
      } else if (
          is_name("not") && peek().t == Token::T::Name && peek().text == "in") {
        next();
        next();
        ops.push_back("notin");
      } else
        break;
      rest.push_back(parse_math1());
    }
    if (ops.empty())
      return first;
    auto c = node<Expr>(Expr::K::Compare, start);
    c->a.push_back(std::move(first));
    for (auto& r : rest)
      c->a.push_back(std::move(r));
    c->ops = std::move(ops);
    return c;
  }
  ExprP parse_math1() {
    ExprP l = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token tok = next();
      l = binary(Expr::K::Bin, std::move(l), parse_concat(), tok, tok.text);
    }
    return l;
  }
  ExprP parse_concat() {
    const Token start = cur();
    ExprP first = parse_math2();
    if (!is_op("~"))
      return first;
    auto c = node<Expr>(Expr::K::Concat, start);
    c->a.push_back(std::move(first));
    while (is_op("~")) {
      next();
      c->a.push_back(parse_math2());
    }
    return c;
  }
  ExprP parse_math2() {
    ExprP l = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token tok = next();
      l = binary(Expr::K::Bin, std::move(l), parse_pow(), tok, tok.text);
    }
    return l;
  }
  ExprP parse_pow() {
    ExprP l = parse_unary();
    while (is_op("**")) {
      const Token tok = next();
      l = binary(Expr::K::Bin, std::move(l), parse_unary(), tok, "**");
    }
    return l;
  }
  ExprP parse_unary(bool with_filter = true) {
    const Token tok = cur();
    ExprP e;
    if (is_op("-") || is_op("+")) {
      next();
      e = node<Expr>(tok.text == "-" ? Expr::K::Neg : Expr::K::Pos, tok);
      e->a.push_back(parse_unary(false));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter)
      e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprP parse_primary() {
    const Token tok = cur();
    switch (tok.t) {
      case Token::T::Name: {
        next();
        auto e = node<Expr>(Expr::K::Const, tok);
        if (tok.text == "true" || tok.text == "True")
          e->value = Value::boolean(true);
        else if (tok.text == "false" || tok.text == "False")
          e->value = Value::boolean(false);
        else if (tok.text == "none" || tok.text == "None")
          e->value = Value::none();
        else {
          e->k = Expr::K::Name;
          e->name = tok.text;
        }
        return e;
      }
      case Token::T::String: {
        std::string s;
        while (cur().t == Token::T::String)
          s += next().text;
        auto e = node<Expr>(Expr::K::Const, tok);
        e->value = Value::str(s);
        return e;
      }
      case Token::T::Int:
      case Token::T::Float: {
        next();
        auto e = node<Expr>(Expr::K::Const, tok);
        e->value = tok.t == Token::T::Int ? Value::integer(tok.ival)
                                          : Value::real(tok.fval);
        return e;
      }
      case Token::T::Op:
        if (tok.text == "(") {
          next();
          ExprP e = parse_tuple(true, nullptr, true);
          expect_op(")");
          return e;
        }
        if (tok.text == "[") {
          next();
          auto e = node<Expr>(Expr::K::List, tok);
          while (!is_op("]")) {
            if (!e->a.empty())
              expect_op(",");
            if (is_op("]"))
              break;
            e->a.push_back(parse_expression());
          }
          next();
          return e;
        }
        if (tok.text == "{") {
          next();
          auto e = node<Expr>(Expr::K::Dict, tok);
          while (!is_op("}")) {
            if (!e->a.empty())
              expect_op(",");
            if (is_op("}"))
              break;
            e->a.push_back(parse_expression());
            expect_op(":");
            e->a.push_back(parse_expression());
          }
          next();
          return e;
        }
        break;
      default:
        break;
    }
    error(tok, "unexpected " + describe(tok));
  }

  ExprP parse_postfix(ExprP e) {
    while (true) {
      const Token tok = cur();
      if (is_op(".")) {
        next();
        if (cur().t == Token::T::Int) {
          auto n = node<Expr>(Expr::K::Item, tok);
          auto idx = node<Expr>(Expr::K::Const, cur());
          idx->value = Value::integer(next().ival);
          n->a.push_back(std::move(e));
          n->a.push_back(std::move(idx));
          e = std::move(n);
        } else {
          auto n = node<Expr>(Expr::K::Attr, tok);
          n->name = expect_name();
          n->a.push_back(std::move(e));
          e = std::move(n);
        }
      } else if (is_op("[")) {
        next();
        e = parse_subscript(std::move(e), tok);
        expect_op("]");
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprP parse_subscript(ExprP obj, const Token& tok) {
    ExprP parts[3];
    bool slice = false;
    int k = 0;
    if (!is_op(":"))
      parts[0] = parse_expression();
    while (is_op(":") && k < 2) {
      next();
      slice = true;
      ++k;
      if (!is_op(":") && !is_op("]") && !is_op(","))
        parts[k] = parse_expression();
    }
    if (is_op(","))
      error(cur(), "unsupported subscript with several indices");
    auto n = node<Expr>(slice ? Expr::K::Slice : Expr::K::Item, tok);
    n->a.push_back(std::move(obj));
    if (slice)
      for (auto& part : parts)
        n->a.push_back(std::move(part));
    else
      n->a.push_back(std::move(parts[0]));
    return n;
  }

  ExprP parse_call(ExprP callee) {
    const Token tok = cur();
    if (callee->k == Expr::K::Attr) {
      if (!kMethods.count(callee->name))
        error(tok, "unsupported method '" + callee->name + "'");
    } else if (callee->k == Expr::K::Name) {
      if (!kFunctions.count(callee->name))
        error(tok, "unsupported function '" + callee->name + "'");
    } else {
      error(tok, "unsupported call");
    }
    auto n = node<Expr>(Expr::K::Call, tok);
    n->a.push_back(std::move(callee));
    Expr args;
    parse_args_into(args);
    for (auto& x : args.a)
      n->a.push_back(std::move(x));
    n->kwargs = std::move(args.kwargs);
    return n;
  }

  void parse_args_into(Expr& n) {
    expect_op("(");
    bool first = true;
    while (!is_op(")")) {
      if (!first)
        expect_op(",");
      first = false;
      if (is_op(")"))
        break;
      if (is_op("*") || is_op("**"))
        error(cur(), "unsupported argument unpacking");
      if (cur().t == Token::T::Name && peek().t == Token::T::Op &&
          peek().text == "=") {
        std::string key = next().text;
        next();
        n.kwargs.emplace_back(key, parse_expression());
      } else {
        if (!n.kwargs.empty())
          error(cur(), "positional argument after a keyword argument");
        n.a.push_back(parse_expression());
      }
    }
    next();
  }

  ExprP parse_filter_expr(ExprP e) {
    while (true) {
      if (is_op("|")) {
        next();
        const Token tok = cur();
        std::string name = expect_name();
        while (is_op(".")) {
          next();
          name += "." + expect_name();
        }
        if (!kFilters.count(name))
          error(tok, "unsupported filter '" + name + "'");
        auto n = node<Expr>(Expr::K::Filter, tok);
        n->name = name;
        Expr args;
        if (is_op("("))
          parse_args_into(args);
        n->a.push_back(std::move(e));
        for (auto& x : args.a)
          n->a.push_back(std::move(x));
        n->kwargs = std::move(args.kwargs);
        e = std::move(n);
      } else if (is_name("is")) {
        next();
        bool negate = false;
        if (is_name("not")) {
          next();
          negate = true;
        }
        const Token tok = cur();
        std::string name = expect_name();
        if (!kTests.count(name))
          error(tok, "unsupported test '" + name + "'");
        auto n = node<Expr>(Expr::K::Test, tok);
        n->name = name;
        n->negate = negate;
        n->a.push_back(std::move(e));
        if (is_op("(")) {
          Expr args;
          parse_args_into(args);
          for (auto& x : args.a)
            n->a.push_back(std::move(x));
          n->kwargs = std::move(args.kwargs);
        } else if (
            (cur().t == Token::T::Name && !is_name("else") && !is_name("or") &&
             !is_name("and")) ||
            cur().t == Token::T::String || cur().t == Token::T::Int ||
            cur().t == Token::T::Float || is_op("[") || is_op("{")) {
          ExprP arg = parse_primary();
          arg = parse_postfix(std::move(arg));
          n->a.push_back(std::move(arg));
        }
        e = std::move(n);
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Renderer

enum class Flow { Normal, Break, Continue };

struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;

  // The argument at `index` or named `name`; nullptr when absent.
  const Value* get(size_t index, const char* name) const {
    for (const auto& [k, v] : kw)
      if (k == name)
        return &v;
    return index < pos.size() ? &pos[index] : nullptr;
  }
  void check(
      size_t max_pos,
      std::initializer_list<const char*> names,
      const std::string& what) const {
    if (pos.size() > max_pos)
      fail(
          what + " takes at most " + std::to_string(max_pos) +
          " positional argument(s)");
    for (const auto& kv : kw)
      if (std::none_of(names.begin(), names.end(), [&](const char* n) {
            return kv.first == n;
          }))
        fail(what + " got an unexpected keyword argument '" + kv.first + "'");
  }
};

const std::string& need_str(const Value& v, const char* what) {
  check_defined(v);
  if (v.kind != Value::Kind::String)
    fail(std::string(what) + " expects a string, got '" + type_name(v) + "'");
  return v.s;
}

int64_t need_int(const Value& v, const char* what) {
  check_defined(v);
  if (!v.is_int())
    fail(std::string(what) + " expects an integer, got '" + type_name(v) + "'");
  return v.as_int();
}

Value attr_of(const Value& obj, const std::string& name) {
  check_defined(obj);
  if (obj.kind == Value::Kind::Dict || obj.kind == Value::Kind::Namespace ||
      obj.kind == Value::Kind::Loop) {
    if (const Value* v = obj.dict->find(name))
      return *v;
    return Value::undefined(
        "'" + std::string(type_name(obj)) + " object' has no attribute '" +
        name + "'");
  }
  return Value::undefined(
      "'" + std::string(type_name(obj)) + " object' has no attribute '" + name +
      "'");
}

Value item_of(const Value& obj, const Value& key) {
  check_defined(obj);
  if (obj.is_seq() || obj.kind == Value::Kind::String) {
    if (key.is_int()) {
      int64_t idx = key.as_int();
      if (obj.kind == Value::Kind::String) {
        const auto cps = to_cps(obj.s);
        const auto n = static_cast<int64_t>(cps.size());
        if (idx < 0)
          idx += n;
        if (idx >= 0 && idx < n)
          return Value::str(from_cps(
              cps, static_cast<size_t>(idx), static_cast<size_t>(idx) + 1));
      } else {
        const auto n = static_cast<int64_t>(obj.list->size());
        if (idx < 0)
          idx += n;
        if (idx >= 0 && idx < n)
          return (*obj.list)[static_cast<size_t>(idx)];
      }
      return Value::undefined(
          std::string(type_name(obj)) + " object has no element " +
          std::to_string(key.as_int()));
    }
  } else if (
      obj.kind == Value::Kind::Dict || obj.kind == Value::Kind::Namespace ||
      obj.kind == Value::Kind::Loop) {
    if (key.kind == Value::Kind::String) {
      if (const Value* v = obj.dict->find(key.s))
        return *v;
      return Value::undefined(
          "'" + std::string(type_name(obj)) + " object' has no attribute '" +
          key.s + "'");
    }
  }
  if (key.kind == Value::Kind::String)
    return attr_of(obj, key.s);
  return Value::undefined(
      "'" + std::string(type_name(obj)) + " object' has no element " +
      py_repr(key));
}

Value attr_path(const Value& obj, const std::string& path) {
  Value v = obj;
  size_t b = 0;
  while (true) {
    const size_t e = path.find('.', b);
    const std::string part =
        path.substr(b, e == std::string::npos ? std::string::npos : e - b);
    if (!part.empty() && std::all_of(part.begin(), part.end(), digit))
      v = item_of(v, Value::integer(std::stoll(part)));
    else
      v = item_of(v, Value::str(part));
    if (e == std::string::npos)
      return v;
    b = e + 1;
  }
}

std::vector<std::string> py_split(
    const std::string& s,
    const Value* sep,
    int64_t maxsplit,
    bool from_right) {
  std::vector<std::string> out;
  if (!sep || sep->kind == Value::Kind::None) {
    const auto cps = to_cps(s);
    std::vector<std::pair<size_t, size_t>> words;
    for (size_t i = 0; i < cps.size();) {
      while (i < cps.size() && py_space(cps[i]))
        ++i;
      if (i == cps.size())
        break;
      size_t j = i;
      while (j < cps.size() && !py_space(cps[j]))
        ++j;
      words.emplace_back(i, j);
      i = j;
    }
    if (maxsplit < 0 || static_cast<size_t>(maxsplit) >= words.size()) {
      for (auto [b, e] : words)
        out.push_back(from_cps(cps, b, e));
      return out;
    }
    if (!from_right) {
      for (size_t k = 0; k < static_cast<size_t>(maxsplit); ++k)
        out.push_back(from_cps(cps, words[k].first, words[k].second));
      size_t rest = words[static_cast<size_t>(maxsplit)].first;
      size_t end = cps.size();
      out.push_back(from_cps(
          cps, rest, end)); // the rest keeps its whitespace, as in Python
    } else {
      const size_t first = words.size() - static_cast<size_t>(maxsplit);
      out.push_back(from_cps(cps, 0, words[first - 1].second));
      for (size_t k = first; k < words.size(); ++k)
        out.push_back(from_cps(cps, words[k].first, words[k].second));
    }
    return out;
  }
  const std::string& d = need_str(*sep, "split");
  if (d.empty())
    fail("empty separator");
  std::vector<std::string> parts;
  size_t b = 0;
  while (true) {
    const size_t e = s.find(d, b);
    if (e == std::string::npos)
      break;
    parts.push_back(s.substr(b, e - b));
    b = e + d.size();
  }
  parts.push_back(s.substr(b));
  if (maxsplit < 0 || static_cast<size_t>(maxsplit) + 1 >= parts.size())
    return parts;
  const auto m = static_cast<size_t>(maxsplit);
  auto join = [&](size_t from, size_t to) {
    std::string r;
    for (size_t k = from; k < to; ++k)
      r += (k > from ? d : "") + parts[k];
    return r;
  };
  if (!from_right) {
    out.assign(parts.begin(), parts.begin() + static_cast<std::ptrdiff_t>(m));
    out.push_back(join(m, parts.size()));
  } else {
    out.push_back(join(0, parts.size() - m));
    out.insert(
        out.end(), parts.end() - static_cast<std::ptrdiff_t>(m), parts.end());
  }
  return out;
}

Value str_list(const std::vector<std::string>& parts) {
  List l;
  for (const auto& p : parts)
    l.push_back(Value::str(p));
  return Value::seq(std::move(l));
}

std::string py_title(const std::string& s) {
  std::string out;
  bool prev_cased = false;
  for (uint32_t c : to_cps(s)) {
    const bool cased = cp_cased(c);
    if (cased && !prev_cased)
      put_upper(out, c, true);
    else
      append_utf8(out, cased ? cp_lower(c) : c);
    prev_cased = cased;
  }
  return out;
}

std::string py_capitalize(const std::string& s) {
  auto cps = to_cps(s);
  std::string out;
  for (size_t k = 0; k < cps.size(); ++k) {
    if (k == 0)
      put_upper(out, cps[k], true);
    else
      append_utf8(out, cp_lower(cps[k]));
  }
  return out;
}

// str.lower() / upper() / title() / capitalize(), which are also the filters
// of those names; false for any other name.
bool py_case(const std::string& name, const std::string& s, std::string& out) {
  if (name == "lower")
    out = map_cps(s, cp_lower);
  else if (name == "upper")
    out = py_upper(s);
  else if (name == "title")
    out = py_title(s);
  else if (name == "capitalize")
    out = py_capitalize(s);
  else
    return false;
  return true;
}

std::string py_replace(
    const std::string& s,
    const std::string& old,
    const std::string& repl,
    int64_t count) {
  std::string out;
  if (old.empty()) {
    // Python inserts `repl` between code points (and at both ends).
    const auto cps = to_cps(s);
    int64_t done = 0;
    for (size_t k = 0; k <= cps.size(); ++k) {
      if (count < 0 || done < count) {
        out += repl;
        ++done;
      }
      if (k < cps.size())
        append_utf8(out, cps[k]);
    }
    return out;
  }
  size_t b = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    const size_t e = s.find(old, b);
    if (e == std::string::npos)
      break;
    out += s.substr(b, e - b) + repl;
    b = e + old.size();
    ++done;
  }
  return out + s.substr(b);
}

class Renderer {
 public:
  Renderer(const Program& prog, std::unordered_map<std::string, Value> context)
      : prog_(prog) {
    scopes_.emplace_back();
    for (const char* f :
         {"raise_exception", "strftime_now", "namespace", "dict", "range"})
      scopes_.back()[f] = Value::function(f);
    scopes_.push_back(std::move(context));
  }

  std::string run() {
    exec(prog_.body);
    return std::move(out_);
  }

 private:
  const Program& prog_;
  std::vector<std::unordered_map<std::string, Value>> scopes_;
  std::string out_;
  int line_ = 0, col_ = 0;

  [[noreturn]] void error(const std::string& message) const {
    throw std::runtime_error(
        prog_.origin + ":" + std::to_string(line_) + ":" +
        std::to_string(col_) + ": " + message);
  }

  template <class N>
  void at(const N& n) {
    line_ = n.line;
    col_ = n.col;
  }

  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end())
        return f->second;
    }
    return Value::undefined("'" + name + "' is undefined");
  }

  void assign(const std::vector<std::string>& names, const Value& v) {
    if (names.size() == 1) {
      scopes_.back()[names[0]] = v;
      return;
    }
    List items;
    if (v.is_seq())
      items = *v.list;
    else if (v.kind == Value::Kind::String)
      items = iterate(v);
    else
      fail(
          std::string("cannot unpack non-iterable ") + type_name(v) +
          " object");
    if (items.size() != names.size())
      fail(
          "cannot unpack " + std::to_string(items.size()) + " values into " +
          std::to_string(names.size()) + " names");
    for (size_t k = 0; k < names.size(); ++k)
      scopes_.back()[names[k]] = items[k];
  }

  Flow exec(const Body& body) {
    for (const auto& s : body) {
      const Flow f = exec(*s);
      if (f != Flow::Normal)
        return f;
    }
    return Flow::Normal;
  }

  Flow exec(const Stmt& s) {
    try {
      return exec_stmt(s);
    } catch (const EvalError& e) {
      error(e.message);
    }
  }

  Flow exec_stmt(const Stmt& s) {
    at(s);
    switch (s.k) {
      case Stmt::K::Text:
        out_ += s.text;
        return Flow::Normal;
      case Stmt::K::Print:
        out_ += py_str(eval(*s.exprs[0]));
        return Flow::Normal;
      case Stmt::K::Break:
        return Flow::Break;
      case Stmt::K::Continue:
        return Flow::Continue;
      case Stmt::K::Block:
        return exec(s.bodies[0]);
      case Stmt::K::If:
        for (size_t k = 0; k < s.exprs.size(); ++k)
          if (truthy(eval(*s.exprs[k])))
            return exec(s.bodies[k]);
        if (s.bodies.size() > s.exprs.size())
          return exec(s.bodies.back());
        return Flow::Normal;
      case Stmt::K::Set: {
        Value v = eval(*s.exprs[0]);
        at(s);
        if (!s.attr.empty()) {
          Value ns = lookup(s.targets[0]);
          if (ns.kind != Value::Kind::Namespace)
            fail("cannot assign attribute on non-namespace object");
          if (s.attr[0] == '_')
            fail(
                "Chat templates cannot store underscore-prefixed attributes on a namespace, but got '" +
                s.attr + "'");
          ns.dict->set(s.attr, std::move(v));
        } else {
          assign(s.targets, v);
        }
        return Flow::Normal;
      }
      case Stmt::K::SetBlock: {
        std::string saved = std::move(out_);
        out_.clear();
        exec(s.bodies[0]);
        std::string captured = std::move(out_);
        out_ = std::move(saved);
        scopes_.back()[s.targets[0]] = Value::str(std::move(captured));
        return Flow::Normal;
      }
      case Stmt::K::For:
        return exec_for(s);
    }
    return Flow::Normal;
  }

  Flow exec_for(const Stmt& s) {
    List items = iterate(eval(*s.exprs[0]));
    if (s.exprs.size() > 1) {
      List kept;
      for (const auto& item : items) {
        scopes_.emplace_back();
        assign(s.targets, item);
        const bool keep = truthy(eval(*s.exprs[1]));
        scopes_.pop_back();
        if (keep)
          kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      if (s.bodies.size() > 1) {
        scopes_.emplace_back();
        exec(s.bodies[1]);
        scopes_.pop_back();
      }
      return Flow::Normal;
    }
    const int depth =
        1; // loop.depth counts recursive loops only, which are refused
    const auto n = static_cast<int64_t>(items.size());
    for (int64_t k = 0; k < n; ++k) {
      Dict loop;
      loop.set("index0", Value::integer(k));
      loop.set("index", Value::integer(k + 1));
      loop.set("revindex0", Value::integer(n - k - 1));
      loop.set("revindex", Value::integer(n - k));
      loop.set("first", Value::boolean(k == 0));
      loop.set("last", Value::boolean(k == n - 1));
      loop.set("length", Value::integer(n));
      loop.set("depth", Value::integer(depth));
      loop.set("depth0", Value::integer(depth - 1));
      loop.set(
          "previtem",
          k > 0 ? items[static_cast<size_t>(k - 1)]
                : Value::undefined("there is no previous item"));
      loop.set(
          "nextitem",
          k + 1 < n ? items[static_cast<size_t>(k + 1)]
                    : Value::undefined("there is no next item"));
      scopes_.emplace_back();
      scopes_.back()["loop"] =
          Value::mapping(std::move(loop), Value::Kind::Loop);
      assign(s.targets, items[static_cast<size_t>(k)]);
      const Flow f = exec(s.bodies[0]);
      scopes_.pop_back();
      if (f == Flow::Break)
        break;
    }
    return Flow::Normal;
  }

  Args eval_args(const Expr& e, size_t first) {
    Args args;
    for (size_t k = first; k < e.a.size(); ++k)
      args.pos.push_back(eval(*e.a[k]));
    for (const auto& [name, x] : e.kwargs)
      args.kw.emplace_back(name, eval(*x));
    return args;
  }

  Value eval(const Expr& e) {
    at(e);
    switch (e.k) {
      case Expr::K::Const:
        return e.value;
      case Expr::K::Name:
        return lookup(e.name);
      case Expr::K::List:
      case Expr::K::Tuple: {
        List l;
        for (const auto& x : e.a)
          l.push_back(eval(*x));
        return Value::seq(std::move(l), e.k == Expr::K::Tuple);
      }
      case Expr::K::Dict: {
        Dict d;
        for (size_t k = 0; k + 1 < e.a.size(); k += 2) {
          Value key = eval(*e.a[k]);
          if (key.kind != Value::Kind::String)
            fail(
                "unsupported dict key of type '" + std::string(type_name(key)) +
                "'");
          d.set(key.s, eval(*e.a[k + 1]));
        }
        return Value::mapping(std::move(d));
      }
      case Expr::K::Attr: {
        Value obj = eval(*e.a[0]);
        at(e);
        return attr_of(obj, e.name);
      }
      case Expr::K::Item: {
        Value obj = eval(*e.a[0]);
        Value key = eval(*e.a[1]);
        at(e);
        return item_of(obj, key);
      }
      case Expr::K::Slice: {
        Value obj = eval(*e.a[0]);
        Value parts[3];
        const Value* ptr[3] = {nullptr, nullptr, nullptr};
        for (int k = 0; k < 3; ++k)
          if (e.a[static_cast<size_t>(k) + 1]) {
            parts[k] = eval(*e.a[static_cast<size_t>(k) + 1]);
            ptr[k] = &parts[k];
          }
        at(e);
        check_defined(obj);
        if (obj.is_seq()) {
          List l;
          for (size_t idx : slice_indices(
                   static_cast<int64_t>(obj.list->size()),
                   ptr[0],
                   ptr[1],
                   ptr[2]))
            l.push_back((*obj.list)[idx]);
          return Value::seq(std::move(l), obj.kind == Value::Kind::Tuple);
        }
        if (obj.kind == Value::Kind::String) {
          const auto cps = to_cps(obj.s);
          std::string out;
          for (size_t idx : slice_indices(
                   static_cast<int64_t>(cps.size()), ptr[0], ptr[1], ptr[2]))
            append_utf8(out, cps[idx]);
          return Value::str(out);
        }
        return Value::undefined(
            "'" + std::string(type_name(obj)) + " object' cannot be sliced");
      }
      case Expr::K::Neg:
      case Expr::K::Pos: {
        Value v = eval(*e.a[0]);
        at(e);
        check_defined(v);
        if (!v.is_number())
          fail(
              std::string("bad operand type for unary ") +
              (e.k == Expr::K::Neg ? "-" : "+") + ": '" + type_name(v) + "'");
        if (e.k == Expr::K::Pos)
          return v.kind == Value::Kind::Bool ? Value::integer(v.as_int()) : v;
        return v.kind == Value::Kind::Float ? Value::real(-v.f)
                                            : Value::integer(-v.as_int());
      }
      case Expr::K::Not:
        return Value::boolean(!truthy(eval(*e.a[0])));
      case Expr::K::And: {
        Value l = eval(*e.a[0]);
        return truthy(l) ? eval(*e.a[1]) : l;
      }
      case Expr::K::Or: {
        Value l = eval(*e.a[0]);
        return truthy(l) ? l : eval(*e.a[1]);
      }
      case Expr::K::Cond:
        if (truthy(eval(*e.a[0])))
          return eval(*e.a[1]);
        if (e.a[2])
          return eval(*e.a[2]);
        return Value::undefined(
            "the inline if-expression evaluated to false and no else section was defined");
      case Expr::K::Concat: {
        std::string s;
        for (const auto& x : e.a)
          s += py_str(eval(*x));
        return Value::str(s);
      }
      case Expr::K::Compare: {
        Value l = eval(*e.a[0]);
        for (size_t k = 0; k < e.ops.size(); ++k) {
          Value r = eval(*e.a[k + 1]);
          at(e);
          const std::string& op = e.ops[k];
          bool ok;
          if (op == "==")
            ok = py_eq(l, r);
          else if (op == "!=")
            ok = !py_eq(l, r);
          else if (op == "in")
            ok = py_in(l, r);
          else if (op == "notin")
            ok = !py_in(l, r);
          else if (op == "<")
            ok = py_cmp(l, r, "<") < 0;
          else if (op == "<=")
            ok = py_cmp(l, r, "<=") <= 0;
          else if (op == ">")
            ok = py_cmp(l, r, ">") > 0;
          else
            ok = py_cmp(l, r, ">=") >= 0;
          if (!ok)
            return Value::boolean(false);
          l = std::move(r);
        }
        return Value::boolean(true);
      }
      case Expr::K::Bin: {
        Value l = eval(*e.a[0]);
        Value r = eval(*e.a[1]);
        at(e);
        return binop(e.name, l, r);
      }
      case Expr::K::Filter: {
        Value input = eval(*e.a[0]);
        Args args = eval_args(e, 1);
        at(e);
        return filter(e.name, input, args);
      }
      case Expr::K::Test: {
        Value input = eval(*e.a[0]);
        Args args = eval_args(e, 1);
        at(e);
        return Value::boolean(test(e.name, input, args) != e.negate);
      }
      case Expr::K::Call:
        return call(e);
    }
    return Value();
  }

  static Value binop(const std::string& op, const Value& l, const Value& r) {
    check_defined(l);
    check_defined(r);
    auto unsupported = [&]() -> Value {
      fail(
          "unsupported operand type(s) for " + op + ": '" + type_name(l) +
          "' and '" + type_name(r) + "'");
    };
    if (op == "+") {
      if (l.kind == Value::Kind::String && r.kind == Value::Kind::String)
        return Value::str(l.s + r.s);
      if (l.is_seq() && r.kind == l.kind) {
        List x = *l.list;
        x.insert(x.end(), r.list->begin(), r.list->end());
        return Value::seq(std::move(x), l.kind == Value::Kind::Tuple);
      }
    }
    if (op == "*") {
      const Value* seq = l.kind == Value::Kind::String || l.is_seq() ? &l
          : r.kind == Value::Kind::String || r.is_seq()              ? &r
                                                                     : nullptr;
      const Value* cnt = seq == &l ? &r : &l;
      if (seq && cnt->is_int()) {
        const int64_t n = std::max<int64_t>(0, cnt->as_int());
        if (seq->kind == Value::Kind::String) {
          std::string s;
          for (int64_t k = 0; k < n; ++k)
            s += seq->s;
          return Value::str(s);
        }
        List x;
        for (int64_t k = 0; k < n; ++k)
          x.insert(x.end(), seq->list->begin(), seq->list->end());
        return Value::seq(std::move(x), seq->kind == Value::Kind::Tuple);
      }
    }
    if (op == "%" && l.kind == Value::Kind::String)
      fail("string formatting with '%' is not supported");
    if (!l.is_number() || !r.is_number())
      return unsupported();
    const bool ints = l.is_int() && r.is_int();
    const int64_t a = l.as_int(), b = r.as_int();
    const double x = l.as_float(), y = r.as_float();
    if (op == "+")
      return ints ? Value::integer(a + b) : Value::real(x + y);
    if (op == "-")
      return ints ? Value::integer(a - b) : Value::real(x - y);
    if (op == "*")
      return ints ? Value::integer(a * b) : Value::real(x * y);
    if (op == "/") {
      if (y == 0)
        fail("division by zero");
      return Value::real(x / y);
    }
    if (op == "//" || op == "%") {
      if (ints ? b == 0 : y == 0)
        fail(
            op == "//" ? "integer division or modulo by zero"
                       : "modulo by zero");
      if (ints) {
        int64_t q = a / b, m = a % b;
        if (m != 0 && ((m < 0) != (b < 0))) {
          --q;
          m += b;
        }
        return op == "//" ? Value::integer(q) : Value::integer(m);
      }
      double m = std::fmod(x, y);
      if (m != 0 && ((m < 0) != (y < 0)))
        m += y;
      return op == "//" ? Value::real(std::floor(x / y)) : Value::real(m);
    }
    if (op == "**") {
      if (ints && b >= 0) {
        int64_t p = 1;
        for (int64_t k = 0; k < b; ++k)
          p *= a;
        return Value::integer(p);
      }
      return Value::real(std::pow(x, y));
    }
    return unsupported();
  }

  bool test(const std::string& name, const Value& v, const Args& args) {
    auto arg = [&](size_t k) -> const Value& {
      if (k >= args.pos.size())
        fail("test '" + name + "' needs an argument");
      return args.pos[k];
    };
    using K = Value::Kind;
    if (name == "defined")
      return !v.is_undefined();
    if (name == "undefined")
      return v.is_undefined();
    if (name == "none")
      return v.kind == K::None;
    if (name == "boolean")
      return v.kind == K::Bool;
    if (name == "true")
      return v.kind == K::Bool && v.b;
    if (name == "false")
      return v.kind == K::Bool && !v.b;
    if (name == "integer")
      return v.kind == K::Int;
    if (name == "float")
      return v.kind == K::Float;
    if (name == "number")
      return v.is_number();
    if (name == "string")
      return v.kind == K::String;
    if (name == "mapping")
      return v.kind == K::Dict;
    if (name == "iterable")
      return v.kind == K::Undefined || v.kind == K::String || v.is_seq() ||
          v.kind == K::Dict;
    if (name == "sequence")
      return v.kind == K::Undefined || v.kind == K::String || v.is_seq() ||
          v.kind == K::Dict;
    if (name == "callable")
      return v.kind == K::Function;
    if (name == "odd" || name == "even") {
      const int64_t x = need_int(v, name.c_str());
      return ((x % 2 != 0) == (name == "odd"));
    }
    if (name == "divisibleby") {
      const int64_t d = need_int(arg(0), "divisibleby");
      if (d == 0)
        fail("integer division or modulo by zero");
      return need_int(v, "divisibleby") % d == 0;
    }
    if (name == "eq" || name == "equalto" || name == "==")
      return py_eq(v, arg(0));
    if (name == "ne" || name == "!=")
      return !py_eq(v, arg(0));
    if (name == "lt" || name == "<" || name == "lessthan")
      return py_cmp(v, arg(0), "<") < 0;
    if (name == "le" || name == "<=")
      return py_cmp(v, arg(0), "<=") <= 0;
    if (name == "gt" || name == ">" || name == "greaterthan")
      return py_cmp(v, arg(0), ">") > 0;
    if (name == "ge" || name == ">=")
      return py_cmp(v, arg(0), ">=") >= 0;
    if (name == "in")
      return py_in(v, arg(0));
    if (name == "sameas") {
      const Value& o = arg(0);
      if (v.kind != o.kind)
        return false;
      if (v.kind == K::None || v.kind == K::Undefined)
        return true;
      if (v.kind == K::Bool)
        return v.b == o.b;
      if (v.dict || v.list)
        return v.dict == o.dict && v.list == o.list;
      return py_eq(v, o);
    }
    if (name == "lower" || name == "upper") {
      if (v.kind != K::String)
        return false;
      const bool lower = name == "lower";
      bool cased = false;
      for (uint32_t c : to_cps(v.s)) {
        if (cp_lower(c) == cp_upper(c))
          continue;
        cased = true;
        if ((lower ? cp_lower(c) : cp_upper(c)) != c)
          return false;
      }
      return cased;
    }
    fail("unsupported test '" + name + "'");
  }

  // Applies filter or test `name` (with `extra` arguments) to `x`, for map / select / reject.
  Value apply_named(
      const std::string& name,
      const Value& x,
      const Args& extra,
      bool is_test) {
    if (is_test) {
      if (!kTests.count(name))
        fail("unsupported test '" + name + "'");
      return Value::boolean(test(name, x, extra));
    }
    if (!kFilters.count(name))
      fail("unsupported filter '" + name + "'");
    return filter(name, x, extra);
  }

  Value filter(const std::string& name, const Value& v, const Args& args) {
    using K = Value::Kind;
    if (name == "default" || name == "d") {
      args.check(2, {"default_value", "boolean"}, name);
      const Value* dflt = args.get(0, "default_value");
      const Value* boolean = args.get(1, "boolean");
      const bool use =
          v.is_undefined() || (boolean && truthy(*boolean) && !truthy(v));
      return use ? (dflt ? *dflt : Value::str("")) : v;
    }
    if (name == "safe")
      return v;
    if (name == "string")
      return Value::str(py_str(v));
    if (name == "length" || name == "count")
      return Value::integer(length_of(v));
    if (name == "tojson") {
      args.check(
          4, {"ensure_ascii", "indent", "separators", "sort_keys"}, "tojson");
      JsonStyle st;
      if (const Value* a = args.get(0, "ensure_ascii"))
        st.ensure_ascii = truthy(*a);
      if (const Value* a = args.get(1, "indent"); a && a->kind != K::None) {
        st.indent = true;
        if (a->kind == K::String)
          st.indent_unit = a->s;
        else
          st.indent_unit = std::string(
              static_cast<size_t>(
                  std::max<int64_t>(0, need_int(*a, "tojson indent"))),
              ' ');
        st.item_sep = ",";
      }
      if (const Value* a = args.get(2, "separators"); a && a->kind != K::None) {
        if (!a->is_seq() || a->list->size() != 2)
          fail("tojson separators must be a pair of strings");
        st.item_sep = need_str((*a->list)[0], "tojson separators");
        st.key_sep = need_str((*a->list)[1], "tojson separators");
      }
      if (const Value* a = args.get(3, "sort_keys"))
        st.sort_keys = truthy(*a);
      std::string out;
      to_json(out, v, st, 0);
      return Value::str(out);
    }
    if (name == "items") {
      if (v.is_undefined())
        return Value::seq({});
      if (v.kind != K::Dict)
        fail("Can only get item pairs from a mapping.");
      List l;
      for (const auto& [k, x] : v.dict->items)
        l.push_back(Value::seq({Value::str(k), x}, true));
      return Value::seq(std::move(l));
    }
    if (name == "list")
      return Value::seq(iterate(v));
    if (name == "first") {
      List l = iterate(v);
      return l.empty() ? Value::undefined("No first item, sequence was empty.")
                       : l.front();
    }
    if (name == "last") {
      check_defined(v);
      List l = iterate(v);
      return l.empty() ? Value::undefined("No last item, sequence was empty.")
                       : l.back();
    }
    if (name == "reverse") {
      check_defined(v);
      if (v.kind == K::String) {
        auto cps = to_cps(v.s);
        std::reverse(cps.begin(), cps.end());
        return Value::str(from_cps(cps, 0, cps.size()));
      }
      List l = iterate(v);
      std::reverse(l.begin(), l.end());
      return Value::seq(std::move(l));
    }
    if (name == "join") {
      args.check(2, {"d", "attribute"}, "join");
      const Value* d = args.get(0, "d");
      const Value* attr = args.get(1, "attribute");
      std::string sep = d ? py_str(*d) : "", out;
      List l = iterate(v);
      for (size_t k = 0; k < l.size(); ++k) {
        const Value x = attr ? attr_path(l[k], py_str(*attr)) : l[k];
        out += (k ? sep : "") + py_str(x);
      }
      return Value::str(out);
    }
    if (name == "unique") {
      args.check(2, {"case_sensitive", "attribute"}, "unique");
      const Value* cs = args.get(0, "case_sensitive");
      const Value* attr = args.get(1, "attribute");
      const bool sensitive = cs && truthy(*cs);
      List out, seen;
      for (const auto& x : iterate(v)) {
        Value key = attr ? attr_path(x, py_str(*attr)) : x;
        if (!sensitive && key.kind == K::String)
          key = Value::str(map_cps(key.s, cp_lower));
        if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) {
              return py_eq(s, key);
            })) {
          seen.push_back(key);
          out.push_back(x);
        }
      }
      return Value::seq(std::move(out));
    }
    if (name == "map") {
      List out;
      if (const Value* attr = args.get(99, "attribute")) {
        const Value* dflt = args.get(99, "default");
        for (const auto& x : iterate(v)) {
          Value y = attr_path(x, py_str(*attr));
          out.push_back(y.is_undefined() && dflt ? *dflt : y);
        }
        return Value::seq(std::move(out));
      }
      if (args.pos.empty())
        fail("map needs a filter name or attribute=");
      Args extra{
          std::vector<Value>(args.pos.begin() + 1, args.pos.end()), args.kw};
      const std::string& f = need_str(args.pos[0], "map");
      for (const auto& x : iterate(v))
        out.push_back(apply_named(f, x, extra, false));
      return Value::seq(std::move(out));
    }
    if (name == "select" || name == "reject" || name == "selectattr" ||
        name == "rejectattr") {
      const bool attr = name.size() > 6;
      const bool want = name.rfind("select", 0) == 0;
      size_t k = 0;
      std::string attr_name;
      if (attr) {
        if (args.pos.empty())
          fail(name + " needs an attribute name");
        attr_name = py_str(args.pos[k++]);
      }
      std::string test_name;
      if (k < args.pos.size())
        test_name = need_str(args.pos[k++], name.c_str());
      Args extra{
          std::vector<Value>(
              args.pos.begin() + static_cast<std::ptrdiff_t>(k),
              args.pos.end()),
          args.kw};
      List out;
      for (const auto& x : iterate(v)) {
        const Value y = attr ? attr_path(x, attr_name) : x;
        const bool t = test_name.empty()
            ? truthy(y)
            : truthy(apply_named(test_name, y, extra, true));
        if (t == want)
          out.push_back(x);
      }
      return Value::seq(std::move(out));
    }
    if (name == "int") {
      const Value* dflt = args.get(0, "default");
      const Value fallback = dflt ? *dflt : Value::integer(0);
      if (v.is_int())
        return Value::integer(v.as_int());
      if (v.kind == K::Float)
        return Value::integer(static_cast<int64_t>(v.f));
      if (v.kind == K::String) {
        const std::string t = py_strip(v.s, true, true, nullptr);
        char* end = nullptr;
        const long long x = std::strtoll(t.c_str(), &end, 10);
        if (!t.empty() && end && *end == 0)
          return Value::integer(x);
        const double f = std::strtod(t.c_str(), &end);
        if (!t.empty() && end && *end == 0)
          return Value::integer(static_cast<int64_t>(f));
      }
      return fallback;
    }
    if (name == "float") {
      const Value* dflt = args.get(0, "default");
      if (v.is_number())
        return Value::real(v.as_float());
      if (v.kind == K::String) {
        const std::string t = py_strip(v.s, true, true, nullptr);
        char* end = nullptr;
        const double f = std::strtod(t.c_str(), &end);
        if (!t.empty() && end && *end == 0)
          return Value::real(f);
      }
      return dflt ? *dflt : Value::real(0);
    }
    if (name == "abs") {
      check_defined(v);
      if (!v.is_number())
        fail(std::string("bad operand type for abs(): '") + type_name(v) + "'");
      return v.kind == K::Float ? Value::real(std::fabs(v.f))
                                : Value::integer(std::llabs(v.as_int()));
    }
    // The string filters convert their input with str() first, as Jinja's soft_str does.
    check_defined(v);
    const std::string s = py_str(v);
    if (name == "trim") {
      const Value* chars = args.get(0, "chars");
      if (chars && chars->kind != K::None)
        return Value::str(py_strip(s, true, true, &need_str(*chars, "trim")));
      return Value::str(py_strip(s, true, true, nullptr));
    }
    if (std::string cased; py_case(name, s, cased))
      return Value::str(std::move(cased));
    if (name == "replace") {
      if (args.pos.size() < 2)
        fail("replace needs old and new");
      const Value* count = args.get(2, "count");
      return Value::str(py_replace(
          s,
          py_str(args.pos[0]),
          py_str(args.pos[1]),
          count && count->kind != K::None ? need_int(*count, "replace") : -1));
    }
    fail("unsupported filter '" + name + "'");
  }

  Value call(const Expr& e) {
    const Expr& callee = *e.a[0];
    if (callee.k == Expr::K::Attr) {
      Value obj = eval(*callee.a[0]);
      Args args = eval_args(e, 1);
      at(e);
      return method(obj, callee.name, args);
    }
    Value fn = eval(callee);
    Args args = eval_args(e, 1);
    at(e);
    check_defined(fn);
    if (fn.kind != Value::Kind::Function)
      fail(std::string("'") + type_name(fn) + "' object is not callable");
    const std::string& name = fn.s;
    if (name == "raise_exception") {
      const Value* msg = args.get(0, "message");
      throw ChatTemplateRaised(msg ? py_str(*msg) : "");
    }
    if (name == "strftime_now") {
      const Value* fmt = args.get(0, "format");
      if (!fmt)
        fail("strftime_now() needs a format");
      const std::time_t now = std::time(nullptr);
      std::tm tm{};
      localtime_r(&now, &tm);
      const std::string& f = need_str(*fmt, "strftime_now");
      if (f.empty())
        return Value::str("");
      std::vector<char> buf(256 + f.size() * 16);
      const size_t n = std::strftime(buf.data(), buf.size(), f.c_str(), &tm);
      return Value::str(std::string(buf.data(), n));
    }
    if (name == "namespace" || name == "dict") {
      Dict d;
      if (args.pos.size() > 1)
        fail(name + "() takes at most one positional argument");
      if (!args.pos.empty()) {
        const Value& init = args.pos[0];
        if (init.kind == Value::Kind::Dict ||
            init.kind == Value::Kind::Namespace)
          d = *init.dict;
        else
          for (const auto& item : iterate(init)) {
            if (!item.is_seq() || item.list->size() != 2)
              fail(name + "() needs a mapping or key/value pairs");
            d.set(need_str((*item.list)[0], name.c_str()), (*item.list)[1]);
          }
      }
      for (const auto& [k, x] : args.kw)
        d.set(k, x);
      if (name == "namespace")
        for (const auto& kv : d.items)
          if (!kv.first.empty() && kv.first[0] == '_')
            fail(
                "Chat templates cannot store underscore-prefixed attributes on a namespace, but got '" +
                kv.first + "'");
      return Value::mapping(
          std::move(d),
          name == "namespace" ? Value::Kind::Namespace : Value::Kind::Dict);
    }
    if (name == "range") {
      if (args.pos.empty() || args.pos.size() > 3)
        fail("range expected 1 to 3 arguments");
      int64_t start = 0, stop, step = 1;
      if (args.pos.size() == 1)
        stop = need_int(args.pos[0], "range");
      else {
        start = need_int(args.pos[0], "range");
        stop = need_int(args.pos[1], "range");
        if (args.pos.size() == 3)
          step = need_int(args.pos[2], "range");
      }
      if (step == 0)
        fail("range() arg 3 must not be zero");
      List l;
      for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
        l.push_back(Value::integer(k));
        if (l.size() > 100000)
          fail("range too big");
      }
      return Value::seq(std::move(l));
    }
    fail("unsupported function '" + name + "'");
  }

  Value method(const Value& obj, const std::string& name, const Args& args) {
    using K = Value::Kind;
    check_defined(obj);
    auto no_method = [&]() -> Value {
      fail(
          "'" + std::string(type_name(obj)) + " object' has no attribute '" +
          name + "'");
    };
    if (obj.kind == K::String) {
      const std::string& s = obj.s;
      if (name == "strip" || name == "lstrip" || name == "rstrip") {
        const Value* chars = args.get(0, "chars");
        const std::string* cs = chars && chars->kind != K::None
            ? &need_str(*chars, name.c_str())
            : nullptr;
        return Value::str(py_strip(s, name != "rstrip", name != "lstrip", cs));
      }
      if (name == "startswith" || name == "endswith") {
        if (args.pos.empty())
          fail(name + "() takes at least 1 argument");
        const Value& a = args.pos[0];
        std::vector<std::string> cands;
        if (a.kind == K::Tuple)
          for (const auto& x : *a.list)
            cands.push_back(need_str(x, name.c_str()));
        else
          cands.push_back(need_str(a, name.c_str()));
        for (const auto& c : cands) {
          if (c.size() > s.size())
            continue;
          if (name == "startswith"
                  ? s.compare(0, c.size(), c) == 0
                  : s.compare(s.size() - c.size(), c.size(), c) == 0)
            return Value::boolean(true);
        }
        return Value::boolean(false);
      }
      if (name == "split" || name == "rsplit") {
        const Value* sep = args.get(0, "sep");
        const Value* maxsplit = args.get(1, "maxsplit");
        return str_list(py_split(
            s,
            sep,
            maxsplit ? need_int(*maxsplit, name.c_str()) : -1,
            name == "rsplit"));
      }
      if (name == "splitlines") {
        std::vector<std::string> lines;
        size_t b = 0;
        for (size_t k = 0; k < s.size(); ++k) {
          if (s[k] == '\n' || s[k] == '\r') {
            lines.push_back(s.substr(b, k - b));
            if (s[k] == '\r' && k + 1 < s.size() && s[k + 1] == '\n')
              ++k;
            b = k + 1;
          }
        }
        if (b < s.size())
          lines.push_back(s.substr(b));
        return str_list(lines);
      }
      if (std::string cased; py_case(name, s, cased))
        return Value::str(std::move(cased));
      if (name == "replace") {
        if (args.pos.size() < 2)
          fail("replace() needs old and new");
        const Value* count = args.get(2, "count");
        return Value::str(py_replace(
            s,
            need_str(args.pos[0], "replace"),
            need_str(args.pos[1], "replace"),
            count ? need_int(*count, "replace") : -1));
      }
      if (name == "find" || name == "rfind" || name == "count") {
        if (args.pos.empty())
          fail(name + "() takes at least 1 argument");
        const std::string& sub = need_str(args.pos[0], name.c_str());
        auto cp_index = [&](size_t byte) {
          int64_t n = 0;
          for (size_t k = 0; k < byte; k += cp_len(s, k))
            ++n;
          return n;
        };
        if (name == "count") {
          if (sub.empty())
            return Value::integer(static_cast<int64_t>(to_cps(s).size()) + 1);
          int64_t n = 0;
          for (size_t at = s.find(sub); at != std::string::npos;
               at = s.find(sub, at + sub.size()))
            ++n;
          return Value::integer(n);
        }
        const size_t at = name == "find" ? s.find(sub) : s.rfind(sub);
        return Value::integer(at == std::string::npos ? -1 : cp_index(at));
      }
      if (name == "join") {
        if (args.pos.size() != 1)
          fail("join() takes exactly one argument");
        std::string out;
        List l = iterate(args.pos[0]);
        for (size_t k = 0; k < l.size(); ++k)
          out += (k ? s : "") + need_str(l[k], "join");
        return Value::str(out);
      }
      if (name == "isspace" || name == "isdigit" || name == "isalpha") {
        const auto cps = to_cps(s);
        if (cps.empty())
          return Value::boolean(false);
        for (uint32_t c : cps) {
          const bool ok = name == "isspace" ? py_space(c)
              : name == "isdigit"           ? (c >= '0' && c <= '9')
                                            : cp_alpha(c);
          if (!ok)
            return Value::boolean(false);
        }
        return Value::boolean(true);
      }
      return no_method();
    }
    if (obj.kind == K::Dict) {
      if (name == "items" || name == "keys" || name == "values") {
        List l;
        for (const auto& [k, x] : obj.dict->items)
          l.push_back(
              name == "items"      ? Value::seq({Value::str(k), x}, true)
                  : name == "keys" ? Value::str(k)
                                   : x);
        return Value::seq(std::move(l));
      }
      if (name == "get") {
        if (args.pos.empty())
          fail("get() takes at least 1 argument");
        const Value& key = args.pos[0];
        if (key.kind == K::String)
          if (const Value* x = obj.dict->find(key.s))
            return *x;
        return args.pos.size() > 1 ? args.pos[1] : Value::none();
      }
    }
    if (obj.kind == K::Loop && name == "cycle") {
      if (args.pos.empty())
        fail("no items for cycling given");
      const int64_t k = obj.dict->find("index0")->i;
      return args
          .pos[static_cast<size_t>(k % static_cast<int64_t>(args.pos.size()))];
    }
    // Namespaces and dicts may hold a value under the name, but values cannot be called.
    const Value attr = attr_of(obj, name);
    if (attr.is_undefined())
      check_defined(attr);
    fail("'" + std::string(type_name(attr)) + "' object is not callable");
  }
};

} // namespace
} // namespace chat_detail

ChatTemplate ChatTemplate::parse(
    const std::string& source,
    const std::string& origin) {
  using namespace chat_detail;
  Source src(source, origin);
  auto prog = std::make_shared<Program>();
  prog->origin = origin;
  prog->body = Parser(src, Lexer(src).run()).parse();
  ChatTemplate t;
  t.program_ = std::move(prog);
  return t;
}

const std::string& ChatTemplate::origin() const {
  return program_->origin;
}

std::string ChatTemplate::render(
    const std::vector<ChatMessage>& messages,
    bool add_generation_prompt,
    const std::map<std::string, std::string>& special_tokens) const {
  return render(messages, add_generation_prompt, special_tokens, "");
}

std::string ChatTemplate::render(
    const std::vector<ChatMessage>& messages,
    bool add_generation_prompt,
    const std::map<std::string, std::string>& special_tokens,
    const std::string& tools_json) const {
  using namespace chat_detail;
  if (!program_)
    throw std::runtime_error("ChatTemplate::render: no template parsed");
  std::unordered_map<std::string, Value> ctx;
  for (const auto& [k, v] : special_tokens)
    ctx[k] = Value::str(v);
  List msgs;
  for (const auto& m : messages) {
    Dict d;
    d.set("role", Value::str(m.role));
    d.set("content", Value::str(m.content));
    msgs.push_back(Value::mapping(std::move(d)));
  }
  ctx["messages"] = Value::seq(std::move(msgs));
  ctx["add_generation_prompt"] = Value::boolean(add_generation_prompt);
  ctx["documents"] = Value::none();
  ctx["tools"] = Value::none();
  if (!tools_json.empty()) {
    nlohmann::ordered_json j;
    try {
      j = nlohmann::ordered_json::parse(tools_json);
    } catch (const std::exception& e) {
      throw std::runtime_error(
          program_->origin + ": tools: invalid JSON: " + e.what());
    }
    if (!j.is_array() && !j.is_null())
      throw std::runtime_error(
          program_->origin + ": tools: expected a JSON array of tool schemas");
    ctx["tools"] = from_json(j);
  }
  return Renderer(*program_, std::move(ctx)).run();
}

} // namespace qat::text
