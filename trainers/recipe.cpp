#include "trainers/recipe.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <set>
#include <sstream>

namespace qat::recipe {
namespace fs = std::filesystem;
namespace {

std::string join(const std::string& prefix, const std::string& key) {
  return prefix.empty() ? key : prefix + "." + key;
}

std::vector<std::string> split_key(const std::string& key) {
  std::vector<std::string> parts;
  std::istringstream in(key);
  std::string part;
  while (std::getline(in, part, '.'))
    parts.push_back(part);
  return parts;
}

std::string at(const std::string& file, const YAML::Mark& mark) {
  return file + ":" + std::to_string(mark.line + 1) + ":" +
      std::to_string(mark.column + 1);
}

YAML::Node parse_file(const std::string& file) {
  if (!fs::is_regular_file(file))
    throw RecipeError(file + ": no such recipe file");
  try {
    YAML::Node doc = YAML::LoadFile(file);
    return doc.IsNull() ? YAML::Node(YAML::NodeType::Map) : doc;
  } catch (const YAML::ParserException& e) {
    throw RecipeError(at(file, e.mark) + ": malformed YAML: " + e.msg);
  }
}

// The kind of a scalar as YAML would read it: quoted scalars are strings.
std::string scalar_type(const YAML::Node& n) {
  if (n.Tag() == "!")
    return "string";
  const std::string& s = n.Scalar();
  long long i;
  double d;
  bool b;
  if (YAML::convert<long long>::decode(n, i))
    return "int";
  if (YAML::convert<double>::decode(n, d) && !s.empty())
    return "float";
  if (YAML::convert<bool>::decode(n, b))
    return "bool";
  return "string";
}

std::string kind(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map:
      return "map";
    case YAML::NodeType::Sequence:
      return "list";
    case YAML::NodeType::Scalar:
      return scalar_type(n);
    default:
      return "null";
  }
}

// Whether value `n` fits `type` (an int fits a float).
bool fits(const YAML::Node& n, const std::string& type) {
  if (type == "any")
    return true;
  if (type == "map")
    return n.IsMap();
  if (type == "list")
    return n.IsSequence();
  if (!n.IsScalar())
    return false;
  const std::string k = scalar_type(n);
  if (type == "string")
    return true;
  if (type == "float")
    return k == "float" || k == "int";
  return k == type;
}

// A schema leaf: "TYPE", "TYPE RANGE" or "list of TYPE [RANGE]", where RANGE
// is ">= a", "> a", "<= b", "< b" or "in [a, b]" (a round bracket for an open
// end): "int >= 1", "float in (0, 1]", "list of int in [1, 65536]".
struct Leaf {
  std::string type;      // int, float, bool, string, list, map, any
  std::string item_type; // "list of T": T, else empty
  double lo = -INFINITY, hi = INFINITY;
  bool lo_open = false, hi_open = false;
  std::string range; // as written, for messages ("" when unbounded)

  bool bounded() const {
    return !range.empty();
  }
  bool contains(double v) const {
    return (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
  }
};

// The leaf `rule` of the schema at `where` ("schema.yaml:5:10") for
// `schema_key`; a malformed one is an error naming both.
Leaf parse_leaf(
    const YAML::Node& rule,
    const std::string& schema_key,
    const std::string& where) {
  const std::string text = rule.Scalar();
  const auto bad = [&](const std::string& why) -> RecipeError {
    return RecipeError(where + ": " + schema_key + ": '" + text + "': " + why);
  };
  std::istringstream in(text);
  Leaf leaf;
  in >> leaf.type;
  std::string word;
  if (leaf.type == "list" && in >> word) {
    if (word != "of" || !(in >> leaf.item_type))
      throw bad("expected 'list of TYPE'");
  }
  std::string rest;
  std::getline(in, rest);
  rest.erase(0, rest.find_first_not_of(' '));
  if (rest.empty())
    return leaf;
  leaf.range = rest;
  const auto number = [&](const std::string& s) {
    char* end = nullptr;
    const double v = std::strtod(s.c_str(), &end);
    if (s.empty() || end == s.c_str() ||
        std::string(end).find_first_not_of(' ') != std::string::npos)
      throw bad("expected a number, got '" + s + "'");
    return v;
  };
  if (rest.rfind("in ", 0) == 0) {
    const std::string interval = rest.substr(3);
    const auto comma = interval.find(',');
    if (interval.size() < 5 || comma == std::string::npos ||
        (interval.front() != '[' && interval.front() != '(') ||
        (interval.back() != ']' && interval.back() != ')'))
      throw bad("expected 'in [a, b]'");
    leaf.lo = number(interval.substr(1, comma - 1));
    leaf.hi = number(interval.substr(comma + 1, interval.size() - comma - 2));
    leaf.lo_open = interval.front() == '(';
    leaf.hi_open = interval.back() == ')';
  } else {
    const auto space = rest.find(' ');
    const std::string op = rest.substr(0, space);
    const double v =
        number(space == std::string::npos ? "" : rest.substr(space + 1));
    if (op == ">=" || op == ">") {
      leaf.lo = v;
      leaf.lo_open = op == ">";
    } else if (op == "<=" || op == "<") {
      leaf.hi = v;
      leaf.hi_open = op == "<";
    } else {
      throw bad("expected >=, >, <=, < or in [a, b]");
    }
  }
  return leaf;
}

std::vector<std::string> map_keys(const YAML::Node& map) {
  std::vector<std::string> keys;
  if (map.IsMap()) {
    for (const auto& kv : map)
      keys.push_back(kv.first.as<std::string>());
  }
  return keys;
}

// Forgets where `path` and everything under it came from. The keys under it
// are exactly those in [path + ".", path + "/"): '/' follows '.'.
void forget_origins(
    std::map<std::string, std::string>& origins,
    const std::string& path) {
  origins.erase(path);
  origins.erase(
      origins.lower_bound(path + "."), origins.lower_bound(path + "/"));
}

// Loads a recipe and the config groups its defaults name, recording where
// each value comes from.
class Composer {
 public:
  Composer(
      fs::path root,
      std::map<std::string, std::string> choices,
      std::map<std::string, std::string>& origins)
      : root_(std::move(root)),
        choices_(std::move(choices)),
        origins_(origins) {}

  YAML::Node compose(const std::string& file, const std::string& prefix) {
    const YAML::Node doc = parse_file(file);
    if (!doc.IsMap()) {
      throw RecipeError(
          at(file, doc.Mark()) + ": a recipe must be a mapping of keys");
    }
    YAML::Node result(YAML::NodeType::Map);
    bool self_merged = false;
    const auto merge_self = [&] {
      for (const auto& kv : doc) {
        const std::string key = kv.first.as<std::string>();
        if (key == "defaults")
          continue;
        YAML::Node one(YAML::NodeType::Map);
        one[key] = kv.second;
        merge(result, one, prefix, file);
      }
      self_merged = true;
    };
    const YAML::Node defaults = doc["defaults"];
    if (defaults && !defaults.IsSequence()) {
      throw RecipeError(
          at(file, defaults.Mark()) +
          ": defaults must be a list of `group: option` entries");
    }
    std::map<std::string, std::string> packages_seen; // package -> place
    for (const auto& item : defaults) {
      if (item.IsScalar() && item.Scalar() == "_self_") {
        if (self_merged) {
          throw RecipeError(
              at(file, item.Mark()) + ": _self_ appears twice in defaults");
        }
        merge_self();
        continue;
      }
      if (!item.IsMap() || item.size() != 1 ||
          !item.begin()->second.IsScalar()) {
        throw RecipeError(
            at(file, item.Mark()) +
            ": a defaults entry is `group: option` or _self_");
      }
      // `group: option` lands at the group's own key ("a/b" at a.b);
      // `group@package: option` at `package`, so one group can fill several
      // keys (`quant@quant.int8: int8`, `quant@quant.w4a4: w4a4`).
      const std::string entry = item.begin()->first.as<std::string>();
      const auto at_sign = entry.find('@');
      const std::string group = entry.substr(0, at_sign);
      std::string package =
          at_sign == std::string::npos ? group : entry.substr(at_sign + 1);
      std::replace(package.begin(), package.end(), '/', '.');
      // Hydra refuses a group twice at one package: the second would silently
      // replace the first.
      const auto [seen, fresh] =
          packages_seen.emplace(join(prefix, package), at(file, item.Mark()));
      if (!fresh) {
        throw RecipeError(
            at(file, item.Mark()) + ": defaults name config group '" + group +
            "' a second time for '" + seen->first + "' (first at " +
            seen->second +
            "); keep one entry, or place the other elsewhere with " + group +
            "@<key>: <option>");
      }
      std::string option = item.begin()->second.Scalar();
      if (prefix.empty() && choices_.count(entry)) {
        option = choices_.at(entry);
        used_choices_.insert(entry);
      }
      const fs::path group_file = root_ / group / (option + ".yaml");
      if (!fs::is_regular_file(group_file)) {
        throw RecipeError(
            at(file, item.Mark()) + ": no option '" + option +
            "' in config group '" + group + "' (no " + group_file.string() +
            "); options: " + options(group));
      }
      YAML::Node wrapped(YAML::NodeType::Map);
      YAML::Node inner = compose(group_file.string(), join(prefix, package));
      // Nest "a/b" groups as a: {b: ...}.
      const auto parts = split_key(package);
      YAML::Node cursor = wrapped;
      for (size_t i = 0; i + 1 < parts.size(); ++i) {
        cursor[parts[i]] = YAML::Node(YAML::NodeType::Map);
        cursor.reset(cursor[parts[i]]); // rebind; `=` would rewrite `wrapped`
      }
      cursor[parts.back()] = inner;
      merge(result, wrapped, prefix, "");
    }
    if (!self_merged)
      merge_self();
    return result;
  }

  void check_choices_used(const std::string& file) const {
    for (const auto& [group, option] : choices_) {
      if (!used_choices_.count(group)) {
        throw RecipeError(
            file + ": override '" + group + "=" + option + "': '" + group +
            "' is neither a key nor a config group of the recipe's defaults");
      }
    }
  }

 private:
  std::string options(const std::string& group) const {
    std::vector<std::string> names;
    if (fs::is_directory(root_ / group)) {
      for (const auto& e : fs::directory_iterator(root_ / group)) {
        if (e.path().extension() == ".yaml")
          names.push_back(e.path().stem().string());
      }
    }
    std::sort(names.begin(), names.end());
    std::string out;
    for (const auto& n : names)
      out += (out.empty() ? "" : ", ") + n;
    return out.empty() ? "none" : out;
  }

  // dst <- src, maps merged key by key, anything else replaced; with `file`,
  // records where each written value came from.
  void merge(
      YAML::Node dst,
      const YAML::Node& src,
      const std::string& prefix,
      const std::string& file) {
    for (const auto& kv : src) {
      const std::string key = kv.first.as<std::string>();
      const std::string path = join(prefix, key);
      YAML::Node existing = dst[key];
      if (existing.IsMap() && kv.second.IsMap()) {
        merge(existing, kv.second, path, file);
        continue;
      }
      dst[key] = YAML::Clone(kv.second);
      if (!file.empty()) {
        forget_origins(origins_, path);
        record(kv.second, path, file);
      }
    }
  }

  void record(
      const YAML::Node& n,
      const std::string& path,
      const std::string& file) {
    origins_[path] = at(file, n.Mark());
    if (n.IsMap()) {
      for (const auto& kv : n)
        record(kv.second, join(path, kv.first.as<std::string>()), file);
    } else if (n.IsSequence()) {
      for (size_t i = 0; i < n.size(); ++i)
        record(n[i], join(path, std::to_string(i)), file);
    }
  }

  fs::path root_;
  std::map<std::string, std::string> choices_;
  std::set<std::string> used_choices_;
  std::map<std::string, std::string>& origins_;
};

// `value` at `key` against its schema leaf; errors through recipe.fail_at.
void check_leaf(
    const Recipe& recipe,
    const YAML::Node& value,
    const Leaf& leaf,
    const std::string& key) {
  const auto article = [](const std::string& type) {
    return std::string(type == "int" || type == "any" ? "an " : "a ") + type;
  };
  if (!fits(value, leaf.type)) {
    recipe.fail_at(
        key,
        "expected " + article(leaf.type) + ", got " + kind(value) +
            (value.IsScalar() ? " '" + value.Scalar() + "'" : ""));
  }
  if (!leaf.item_type.empty()) {
    Leaf item = leaf;
    item.type = item.item_type;
    item.item_type.clear();
    for (size_t i = 0; i < value.size(); ++i)
      check_leaf(recipe, value[i], item, join(key, std::to_string(i)));
    return;
  }
  if (!leaf.bounded())
    return;
  // fits() has made sure the scalar reads as a number. NaN is never in range.
  const double v = value.as<double>();
  if (!leaf.contains(v)) {
    recipe.fail_at(key, "must be " + leaf.range + ", got " + value.Scalar());
  }
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j)
    row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min(
          {row[j] + 1,
           row[j - 1] + 1,
           diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

std::string suggestion(
    const std::string& prefix,
    const std::string& name,
    const std::vector<std::string>& known) {
  const std::string best = closest(name, known);
  return best.empty() ? "" : " (did you mean '" + join(prefix, best) + "'?)";
}

} // namespace

std::string closest(
    const std::string& name,
    const std::vector<std::string>& known) {
  std::string best;
  size_t best_distance = std::max<size_t>(2, name.size() / 3) + 1;
  for (const auto& k : known) {
    const size_t d = edit_distance(name, k);
    if (d < best_distance) {
      best_distance = d;
      best = k;
    }
  }
  return best;
}

Recipe Recipe::load(
    const std::string& path,
    const std::vector<std::string>& overrides) {
  Recipe recipe;
  recipe.file_ = path;
  const fs::path root = fs::path(path).parent_path();
  // Group choices (`model=resnet`) change the defaults before composition.
  std::map<std::string, std::string> choices;
  std::vector<std::string> key_overrides;
  for (const auto& o : overrides) {
    const auto eq = o.find('=');
    const std::string key = o.substr(0, eq);
    const std::string group = key.substr(0, key.find('@'));
    const bool packaged = group.size() < key.size();
    if (eq != std::string::npos && !o.empty() && o[0] != '+' && o[0] != '~' &&
        (packaged || key.find('.') == std::string::npos) &&
        fs::is_directory(root / group)) {
      choices[key] = o.substr(eq + 1);
    } else {
      key_overrides.push_back(o);
    }
  }
  Composer composer(root, choices, recipe.origins_);
  recipe.root_ = composer.compose(path, "");
  composer.check_choices_used(path);
  for (const auto& o : key_overrides)
    recipe.apply_override(o);
  recipe.resolve_interpolations();
  return recipe;
}

// yaml-cpp: `a = b` on a bound Node writes b's value into a's node; reset()
// rebinds, which is what walking a path needs.
YAML::Node Recipe::node(const std::string& key) const {
  YAML::Node current;
  current.reset(root_);
  for (const auto& part : split_key(key)) {
    const YAML::Node& as_const = current;
    // List items by index: "quant.w4a4.rules.0.match".
    const bool is_index = !part.empty() &&
        part.find_first_not_of("0123456789") == std::string::npos;
    if (current.IsSequence() &&
        !(is_index && std::stoull(part) < current.size()))
      return YAML::Node(YAML::NodeType::Undefined);
    if (!current.IsSequence() && !current.IsMap())
      return YAML::Node(YAML::NodeType::Undefined);
    const YAML::Node next =
        current.IsSequence() ? as_const[std::stoull(part)] : as_const[part];
    if (!next)
      return YAML::Node(YAML::NodeType::Undefined);
    current.reset(next);
  }
  return current;
}

bool Recipe::has(const std::string& key) const {
  return node(key).IsDefined();
}

bool Recipe::is_scalar(const std::string& key) const {
  return node(key).IsScalar();
}

std::vector<std::string> Recipe::keys(const std::string& key) const {
  const YAML::Node n = node(key);
  std::vector<std::string> out;
  if (n.IsMap()) {
    for (const auto& kv : n)
      out.push_back(kv.first.as<std::string>());
  } else if (n.IsSequence()) {
    for (size_t i = 0; i < n.size(); ++i)
      out.push_back(std::to_string(i));
  } else {
    fail_at(key, n ? "expected a map or a list, got " + kind(n) : "missing");
  }
  return out;
}

std::string Recipe::origin(const std::string& key) const {
  // The closest enclosing key that has one.
  std::string k = key;
  while (true) {
    const auto it = origins_.find(k);
    if (it != origins_.end())
      return it->second;
    const auto dot = k.rfind('.');
    if (dot == std::string::npos)
      return file_;
    k = k.substr(0, dot);
  }
}

std::string Recipe::place(const std::string& key) const {
  const std::string where = origin(key);
  // A value from a config group: also the recipe the user gave.
  return where.rfind(file_, 0) == 0
      ? where
      : where + " (in the defaults of " + file_ + ")";
}

void Recipe::fail_at(const std::string& key, const std::string& why) const {
  throw RecipeError(place(key) + ": " + key + ": " + why);
}

void Recipe::apply_override(const std::string& text) {
  const auto fail = [&](const std::string& why) {
    throw RecipeError(file_ + ": override '" + text + "': " + why);
  };
  if (text.empty())
    fail("empty");
  if (text[0] == '~') {
    const std::string key = text.substr(1);
    if (!has(key))
      fail("no key '" + key + "' to delete");
    const auto parts = split_key(key);
    YAML::Node parent;
    parent.reset(
        parts.size() == 1 ? root_ : node(key.substr(0, key.rfind('.'))));
    parent.remove(parts.back());
    origins_.erase(key);
    return;
  }
  const bool add = text[0] == '+';
  const std::string body = add ? text.substr(1) : text;
  const auto eq = body.find('=');
  if (eq == std::string::npos || eq == 0)
    fail("expected key=value, +key=value or ~key");
  const std::string key = body.substr(0, eq);
  YAML::Node value;
  try {
    value = YAML::Load(body.substr(eq + 1));
  } catch (const YAML::ParserException& e) {
    fail("the value is not valid YAML: " + e.msg);
  }
  if (value.IsNull() && body.size() == eq + 1)
    value = YAML::Node(std::string());
  const auto parts = split_key(key);
  const std::string parent_key =
      parts.size() == 1 ? "" : key.substr(0, key.rfind('.'));
  if (add) {
    if (has(key))
      fail("key '" + key + "' exists; set it with " + key + "=...");
    // Create the missing parent maps; list items are reached by index.
    YAML::Node cursor;
    cursor.reset(root_);
    std::string walked;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      walked = join(walked, parts[i]);
      YAML::Node next;
      if (cursor.IsSequence()) {
        const YAML::Node item = node(walked);
        if (!item)
          fail("no list item '" + walked + "'");
        next.reset(item);
      } else {
        const YAML::Node& as_const = cursor;
        if (!as_const[parts[i]])
          cursor[parts[i]] = YAML::Node(YAML::NodeType::Map);
        next.reset(cursor[parts[i]]);
      }
      if (!next.IsMap() && !next.IsSequence())
        fail("'" + walked + "' is not a mapping");
      cursor.reset(next);
    }
    if (cursor.IsSequence())
      fail("'" + parent_key + "' is a list: set its items by index");
    cursor[parts.back()] = value;
  } else {
    const YAML::Node existing = node(key);
    if (!existing) {
      const YAML::Node parent = parent_key.empty() ? root_ : node(parent_key);
      fail(
          "no key '" + key + "'" +
          suggestion(parent_key, parts.back(), map_keys(parent)) +
          "; add one with +" + body);
    }
    const std::string want = kind(existing);
    if (!fits(value, want)) {
      fail(
          "'" + key + "' is " + (want == "int" ? "an " : "a ") + want +
          " (set at " + origin(key) + "), but '" + body.substr(eq + 1) +
          "' is " + (kind(value) == "int" ? "an " : "a ") + kind(value));
    }
    YAML::Node parent;
    parent.reset(parent_key.empty() ? root_ : node(parent_key));
    if (parent.IsSequence()) // a list item by index: rules.1.weight.bits=3
      parent[std::stoull(parts.back())] = value;
    else
      parent[parts.back()] = value;
  }
  forget_origins(origins_, key);
  origins_[key] = file_ + ": override '" + text + "'";
}

std::string Recipe::resolve_text(
    const std::string& key,
    const std::string& text,
    std::vector<std::string>& visiting) {
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t open = text.find("${", pos);
    if (open == std::string::npos) {
      out += text.substr(pos);
      return out;
    }
    const size_t close = text.find('}', open);
    if (close == std::string::npos)
      fail_at(key, "unterminated interpolation in '" + text + "'");
    out += text.substr(pos, open - pos);
    const std::string ref = text.substr(open + 2, close - open - 2);
    if (ref.rfind("env:", 0) == 0) {
      const std::string spec = ref.substr(4);
      const auto comma = spec.find(',');
      const std::string var = spec.substr(0, comma);
      if (const char* v = std::getenv(var.c_str())) {
        out += v;
      } else if (comma != std::string::npos) {
        out += spec.substr(comma + 1);
      } else {
        fail_at(
            key,
            "${" + ref + "}: environment variable " + var +
                " is not set and has no default (${env:" + var + ",default})");
      }
    } else {
      const YAML::Node target = node(ref);
      if (!target)
        fail_at(key, "${" + ref + "}: no key '" + ref + "'");
      if (!target.IsScalar())
        fail_at(key, "${" + ref + "}: '" + ref + "' is not a single value");
      if (std::find(visiting.begin(), visiting.end(), ref) != visiting.end()) {
        std::string cycle;
        for (const auto& v : visiting)
          cycle += v + " -> ";
        fail_at(key, "interpolation cycle: " + cycle + ref);
      }
      visiting.push_back(ref);
      const std::string value = resolve_text(ref, target.Scalar(), visiting);
      visiting.pop_back();
      out += value;
    }
    pos = close + 1;
  }
}

void Recipe::resolve_interpolations() {
  // A scalar holding "${" is replaced in place (assigning to a bound yaml-cpp
  // node rewrites it inside its parent) by its resolved text read as YAML, so
  // "${trainer.steps}" stays an int. List items resolve under the list's key.
  std::function<void(YAML::Node, const std::string&)> walk =
      [&](YAML::Node n, const std::string& key) {
        if (n.IsScalar() && n.Scalar().find("${") != std::string::npos) {
          std::vector<std::string> visiting{key};
          n = YAML::Load(resolve_text(key, n.Scalar(), visiting));
        } else if (n.IsMap()) {
          for (auto kv : n)
            walk(kv.second, join(key, kv.first.as<std::string>()));
        } else if (n.IsSequence()) {
          for (auto item : n)
            walk(item, key);
        }
      };
  walk(root_, "");
}

template <typename T>
T Recipe::get(const std::string& key) const {
  const YAML::Node n = node(key);
  if (!n)
    fail_at(key, "missing");
  try {
    return n.as<T>();
  } catch (const YAML::Exception&) {
    std::string want = "a value of another type";
    if constexpr (std::is_same_v<T, bool>)
      want = "a bool";
    else if constexpr (std::is_integral_v<T>)
      want = "an int";
    else if constexpr (std::is_floating_point_v<T>)
      want = "a float";
    else if constexpr (std::is_same_v<T, std::string>)
      want = "a string";
    else
      want = "a list";
    fail_at(key, "expected " + want + ", got " + kind(n));
  }
}

template int Recipe::get<int>(const std::string&) const;
template int64_t Recipe::get<int64_t>(const std::string&) const;
template double Recipe::get<double>(const std::string&) const;
template bool Recipe::get<bool>(const std::string&) const;
template std::string Recipe::get<std::string>(const std::string&) const;
template std::vector<std::string> Recipe::get<std::vector<std::string>>(
    const std::string&) const;
template std::vector<int64_t> Recipe::get<std::vector<int64_t>>(
    const std::string&) const;

std::string Recipe::dump() const {
  YAML::Emitter out;
  out << root_;
  return std::string(out.c_str()) + "\n";
}

YAML::Node Recipe::load_schema(const std::string& path) {
  YAML::Node schema = parse_file(path);
  // Every leaf parses, or the schema's own file and line say why.
  std::function<void(const YAML::Node&, const std::string&)> walk =
      [&](const YAML::Node& rule, const std::string& key) {
        if (rule.IsScalar())
          parse_leaf(rule, key, at(path, rule.Mark()));
        else if (rule.IsMap())
          for (const auto& kv : rule)
            walk(kv.second, join(key, kv.first.as<std::string>()));
      };
  walk(schema, "");
  return schema;
}

void Recipe::check(const std::string& key, const std::string& rule) const {
  const YAML::Node value = node(key);
  if (!value)
    fail_at(key, "missing");
  check_leaf(*this, value, parse_leaf(YAML::Node(rule), key, "rule"), key);
}

void Recipe::check(const YAML::Node& schema) const {
  std::function<void(const YAML::Node&, const YAML::Node&, const std::string&)>
      walk = [&](const YAML::Node& value,
                 const YAML::Node& rule,
                 const std::string& prefix) {
        if (rule.IsScalar()) {
          check_leaf(
              *this,
              value,
              parse_leaf(
                  rule,
                  prefix,
                  "schema line " + std::to_string(rule.Mark().line + 1)),
              prefix);
          return;
        }
        if (!value.IsMap())
          fail_at(prefix, "expected a mapping, got " + kind(value));
        const std::vector<std::string> known = map_keys(rule);
        for (const auto& kv : value) {
          const std::string name = kv.first.as<std::string>();
          const std::string key = join(prefix, name);
          const YAML::Node sub = rule[name];
          if (!sub) {
            throw RecipeError(
                place(key) + ": unknown key '" + key + "'" +
                suggestion(prefix, name, known));
          }
          walk(kv.second, sub, key);
        }
      };
  walk(root_, schema, "");
}

} // namespace qat::recipe
