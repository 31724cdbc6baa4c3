// text_tool chat: renders a chat template as transformers' apply_chat_template(tokenize=False).
//
//   text_tool chat TEMPLATE MESSAGES_JSON OUT [--add-generation-prompt] [--token NAME=VALUE]...
//                  [--tools TOOLS_JSON] [--check]
//
//   TEMPLATE        a Jinja template file, or a tokenizer_config.json (its "chat_template", and
//                   its bos_token, eos_token, ... as the special-token variables)
//   MESSAGES_JSON   a JSON array of {"role": "...", "content": "..."}
//   OUT             where the rendered text goes ("-": stdout), byte for byte
//   --token N=V     sets special-token variable N (bos_token=<s>), over the config's; repeatable
//   --tools FILE    a JSON array of tool schemas (tools=None without it)
//   --check         parse only (MESSAGES_JSON and OUT are still named, and ignored)
//
// Exit status 0; 1 with one line on stderr for a bad template ("error: ORIGIN:LINE:COL: ..."),
// an error while rendering, or the template's own raise_exception ("error: template raised:
// MESSAGE"); 2 for bad usage.
#include "trainers/text/chat_template.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw std::runtime_error(path + ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int usage() {
  std::fprintf(
      stderr,
      "usage: text_tool chat TEMPLATE MESSAGES_JSON OUT [--add-generation-prompt] "
      "[--token NAME=VALUE]... [--tools TOOLS_JSON] [--check]\n");
  return 2;
}

// A tokenizer_config.json's special token: a string or an AddedToken object {"content": ...}.
bool token_text(const nlohmann::json& v, std::string& out) {
  if (v.is_string()) {
    out = v.get<std::string>();
    return true;
  }
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    out = v["content"].get<std::string>();
    return true;
  }
  return false;
}

} // namespace

int chat_command(int argc, char** argv) {
  std::vector<std::string> positional;
  bool add_generation_prompt = false, check_only = false;
  std::map<std::string, std::string> overrides;
  std::string tools_path;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--add-generation-prompt") {
      add_generation_prompt = true;
    } else if (a == "--check") {
      check_only = true;
    } else if (a == "--token" && i + 1 < argc) {
      const std::string kv = argv[++i];
      const size_t eq = kv.find('=');
      if (eq == std::string::npos || eq == 0)
        return usage();
      overrides[kv.substr(0, eq)] = kv.substr(eq + 1);
    } else if (a == "--tools" && i + 1 < argc) {
      tools_path = argv[++i];
    } else if (a.rfind("--", 0) == 0) {
      return usage();
    } else {
      positional.push_back(a);
    }
  }
  if (positional.size() != 3)
    return usage();
  const std::string& template_path = positional[0];
  try {
    std::string source = read_file(template_path), origin = template_path;
    std::map<std::string, std::string> tokens;
    if (template_path.size() >= 5 &&
        template_path.compare(template_path.size() - 5, 5, ".json") == 0) {
      const auto config = nlohmann::json::parse(source);
      if (!config.is_object() || !config.contains("chat_template"))
        throw std::runtime_error(template_path + ": no \"chat_template\"");
      const auto& ct = config["chat_template"];
      if (ct.is_string()) {
        source = ct.get<std::string>();
      } else if (
          ct.is_array()) { // [{"name": "default", "template": "..."}, ...]
        bool found = false;
        for (const auto& t : ct)
          if (t.value("name", "") == "default" && t.contains("template")) {
            source = t["template"].get<std::string>();
            found = true;
          }
        if (!found)
          throw std::runtime_error(
              template_path + ": no \"default\" chat_template");
      } else {
        throw std::runtime_error(
            template_path +
            ": \"chat_template\" is neither a string nor a list");
      }
      origin = template_path + ": chat_template";
      for (auto it = config.begin(); it != config.end(); ++it) {
        const std::string& key = it.key();
        std::string text;
        if (key.size() > 6 && key.compare(key.size() - 6, 6, "_token") == 0 &&
            token_text(*it, text))
          tokens[key] = text;
      }
    }
    for (const auto& [k, v] : overrides)
      tokens[k] = v;
    const auto tmpl = qat::text::ChatTemplate::parse(source, origin);
    if (check_only)
      return 0;

    const std::string& messages_path = positional[1];
    const auto j = nlohmann::json::parse(read_file(messages_path));
    if (!j.is_array())
      throw std::runtime_error(
          messages_path + ": expected a JSON array of messages");
    std::vector<qat::text::ChatMessage> messages;
    for (size_t k = 0; k < j.size(); ++k) {
      const auto& m = j[k];
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string() ||
          !m.contains("content") || !m["content"].is_string())
        throw std::runtime_error(
            messages_path + ": message " + std::to_string(k) +
            " needs string \"role\" and \"content\"");
      messages.push_back(
          {m["role"].get<std::string>(), m["content"].get<std::string>()});
    }
    const std::string tools = tools_path.empty() ? "" : read_file(tools_path);
    const std::string text =
        tmpl.render(messages, add_generation_prompt, tokens, tools);

    const std::string& out_path = positional[2];
    if (out_path == "-") {
      std::fwrite(text.data(), 1, text.size(), stdout);
    } else {
      std::ofstream out(out_path, std::ios::binary);
      out.write(text.data(), static_cast<std::streamsize>(text.size()));
      if (!out)
        throw std::runtime_error(out_path + ": cannot write");
    }
    return 0;
  } catch (const qat::text::ChatTemplateRaised& e) {
    std::fprintf(stderr, "error: template raised: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
