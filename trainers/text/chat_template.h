// Hugging Face chat templates (the Jinja in tokenizer_config.json's "chat_template" or a GGUF's
// tokenizer.chat_template), rendered as transformers' apply_chat_template(messages,
// tokenize=False, add_generation_prompt=...) renders them, without Python or Torch.
//
// The template is parsed once into a tree; render() walks it. The Jinja subset is what chat
// templates use: {{ }}, {% %}, {# #}, whitespace control (-, +) with transformers' settings
// (trim_blocks, lstrip_blocks, no trailing newline), for / if / set / break / continue /
// generation, namespace(), raise_exception(), strftime_now(), Python-like values, and a fixed
// list of filters, tests and methods. Anything else (macro, call, include, an unknown filter...)
// is refused by name when the template is parsed. See chat_template.cpp for the full list.
#pragma once

#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace qat::text {

struct ChatMessage {
  std::string role, content;
};

// What render() throws when the template itself raises (raise_exception('...')): what() is the
// template's message, verbatim, as transformers' TemplateError carries it.
class ChatTemplateRaised : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace chat_detail {
struct Program;
}

class ChatTemplate {
 public:
  // Parses the template once. Throws std::runtime_error with one line,
  // "ORIGIN:LINE:COLUMN: message", for a syntax error or a construct outside the subset
  // (named: "unsupported tag 'macro'", "unsupported filter 'xyz'", ...).
  static ChatTemplate parse(
      const std::string& source,
      const std::string& origin);

  // Renders with the variables transformers provides: messages, add_generation_prompt,
  // tools=None, documents=None, and each of `special_tokens` (bos_token, eos_token, ...).
  // Throws ChatTemplateRaised for raise_exception(), std::runtime_error
  // ("ORIGIN:LINE:COLUMN: message") for other errors while rendering (e.g. an undefined value
  // used in arithmetic).
  std::string render(
      const std::vector<ChatMessage>& messages,
      bool add_generation_prompt,
      const std::map<std::string, std::string>& special_tokens = {}) const;

  // The same with `tools`: a JSON array of tool schemas, as apply_chat_template(tools=...)
  // takes them ("" means tools=None).
  std::string render(
      const std::vector<ChatMessage>& messages,
      bool add_generation_prompt,
      const std::map<std::string, std::string>& special_tokens,
      const std::string& tools_json) const;

  const std::string& origin() const;

 private:
  std::shared_ptr<const chat_detail::Program> program_;
};

} // namespace qat::text
