// text_tool tokenize: the C++ half of tests/python/test_hf_tokenizer.py and
// bench/tokenizer_throughput.py. TOK is a folder (tokenizer.json + tokenizer_config.json) or
// a tokenizer.json file (then --config FILE names the config).
//
//   text_tool tokenize encode TOK [--config F] [--special] (--text S | --file F)
//       prints the ids, one line, space-separated
//   text_tool tokenize decode TOK [--config F] [--skip-special] ID...
//       prints the text
//   text_tool tokenize batch TOK [--config F] < requests.jsonl > answers.jsonl
//       each request {"text": s, "add_special_tokens": b, "skip_special_tokens": b} is
//       answered {"ids": [...], "decoded": decode(ids)}
//   text_tool tokenize bench TOK [--config F] FILE REPEAT
//       encodes FILE REPEAT times; prints {"bytes", "tokens", "seconds": [...]}
//   text_tool tokenize info TOK [--config F]
//       prints what the tokenizer says about itself (JSON)
//
// Errors: one line on stderr, exit code 1 (text_tool.cpp catches and prints).
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <sys/stat.h>
#include <vector>

#include "trainers/text/hf_tokenizer.h"

namespace {

using json = nlohmann::json;
using qat::text::HfTokenizer;

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f)
    throw std::runtime_error(path + ": cannot open");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

HfTokenizer load(const std::string& tok, const std::string& config) {
  struct stat st {};
  if (stat(tok.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
    return HfTokenizer::from_folder(tok);
  return HfTokenizer::from_file(tok, config);
}

int usage() {
  std::fprintf(
      stderr,
      "usage: text_tool tokenize encode|decode|batch|bench|info TOK [--config F] ...\n");
  return 2;
}

} // namespace

int tokenizer_command(int argc, char** argv) {
  if (argc < 3)
    return usage();
  const std::string cmd = argv[1];
  const std::string tok = argv[2];
  std::string config, text, file;
  bool special = false, skip_special = false, have_text = false;
  std::vector<std::string> rest;
  for (int i = 3; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--config" && i + 1 < argc) {
      config = argv[++i];
    } else if (a == "--special") {
      special = true;
    } else if (a == "--skip-special") {
      skip_special = true;
    } else if (a == "--text" && i + 1 < argc) {
      text = argv[++i];
      have_text = true;
    } else if (a == "--file" && i + 1 < argc) {
      file = argv[++i];
    } else {
      rest.push_back(a);
    }
  }
  const HfTokenizer t = load(tok, config);

  if (cmd == "encode") {
    if (!have_text) {
      if (file.empty())
        return usage();
      text = slurp(file);
    }
    const auto ids = t.encode(text, special);
    std::string line;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (i)
        line += ' ';
      line += std::to_string(ids[i]);
    }
    std::printf("%s\n", line.c_str());
    return 0;
  }
  if (cmd == "decode") {
    std::vector<int32_t> ids;
    for (const auto& r : rest)
      ids.push_back(static_cast<int32_t>(std::stol(r)));
    const std::string s = t.decode(ids, skip_special);
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::printf("\n");
    return 0;
  }
  if (cmd == "batch") {
    std::string line;
    size_t n = 0;
    while (std::getline(std::cin, line)) {
      ++n;
      if (line.empty())
        continue;
      json req;
      try {
        req = json::parse(line);
      } catch (const json::parse_error&) {
        throw std::runtime_error(
            "stdin line " + std::to_string(n) + ": malformed JSON");
      }
      const auto ids = t.encode(
          req.at("text").get<std::string>(),
          req.value("add_special_tokens", false));
      json ans;
      ans["ids"] = ids;
      ans["decoded"] = t.decode(ids, req.value("skip_special_tokens", false));
      std::cout << ans.dump(-1, ' ', false, json::error_handler_t::replace)
                << '\n';
    }
    std::cout.flush();
    return 0;
  }
  if (cmd == "bench") {
    if (rest.size() != 2)
      return usage();
    const std::string data = slurp(rest[0]);
    const int repeat = std::stoi(rest[1]);
    json out;
    out["bytes"] = data.size();
    std::vector<double> secs;
    size_t tokens = 0;
    for (int r = 0; r < repeat; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      const auto ids = t.encode(data, false);
      const auto t1 = std::chrono::steady_clock::now();
      tokens = ids.size();
      secs.push_back(std::chrono::duration<double>(t1 - t0).count());
    }
    out["tokens"] = tokens;
    out["seconds"] = secs;
    std::printf("%s\n", out.dump().c_str());
    return 0;
  }
  if (cmd == "info") {
    json out;
    out["vocab_size"] = t.vocab_size();
    out["bos_id"] = t.bos_id();
    out["eos_id"] = t.eos_id();
    out["unk_id"] = t.unk_id();
    out["pad_id"] = t.pad_id();
    out["bos_token"] = t.bos_token();
    out["eos_token"] = t.eos_token();
    out["add_bos"] = t.add_bos();
    out["add_eos"] = t.add_eos();
    out["ggml_model"] = t.ggml_model();
    out["ggml_pre"] = t.ggml_pre();
    out["n_merges"] = t.merges().size();
    out["first_merge"] = t.merges().empty() ? "" : t.merges().front();
    out["chat_template_chars"] = t.chat_template().size();
    std::vector<int32_t> types;
    for (auto ty : t.token_types())
      types.push_back(static_cast<int32_t>(ty));
    out["token_types"] = types;
    std::printf(
        "%s\n",
        out.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
    return 0;
  }
  return usage();
}
