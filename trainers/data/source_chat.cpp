// data.type chat: JSONL lines {"messages": [{"role", "content"}, ...]},
// rendered with the model's own chat template (trainers/text/chat_template.h).
//
// The loss counts the assistant's turns only. Which characters those are is
// read off the template itself, turn by turn: for assistant message i, the
// rendering of messages [0, i) with the generation prompt ends where the
// turn begins, and the rendering of [0, i] (no prompt) ends where it ends.
// Every rendering must extend the one before (templates that rewrite earlier
// turns are refused); the pieces between are not trained.
#include <stdexcept>

#include "trainers/data/sources.h"
#include "trainers/text/chat_template.h"

namespace qat::data {
namespace {

const char* const kRoles[] = {"system", "user", "assistant", "tool"};

class ChatSource final : public FileSource {
 public:
  ChatSource(const SourceOptions& o, std::shared_ptr<const Tokenizer> tokenizer)
      : FileSource("chat", o),
        template_(tokenizer->chat_template()),
        tokens_(tokenizer->template_tokens()) {
    if (template_.empty())
      throw std::runtime_error(
          "data.type chat: the model's tokenizer has no chat template "
          "(tokenizer_config.json chat_template, chat_template.jinja or GGUF "
          "tokenizer.chat_template)");
    program_ = std::make_shared<text::ChatTemplate>(
        text::ChatTemplate::parse(template_, "the model's chat template"));
  }

  void for_each(const std::function<void(Document&&)>& emit) const override {
    const bool replace = options_.replace_invalid_utf8;
    for (const auto& file : files_) {
      for_each_json_line(
          file,
          replace,
          [&](const nlohmann::json& j, const std::string& where) {
            emit(render(parse(j, where), where));
          });
    }
  }

  std::string fingerprint() const override {
    return fingerprint_of("\ntemplate=" + template_);
  }

 private:
  std::vector<text::ChatMessage> parse(
      const nlohmann::json& j,
      const std::string& where) const {
    const auto it = j.is_object() ? j.find("messages") : j.end();
    if (it == j.end() || !it->is_array() || it->empty())
      throw std::runtime_error(
          where + ": no 'messages' list of {role, content} objects");
    std::vector<text::ChatMessage> messages;
    for (size_t i = 0; i < it->size(); ++i) {
      const auto& m = (*it)[i];
      const std::string at = where + ": messages[" + std::to_string(i) + "]";
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string() ||
          !m.contains("content") || !m["content"].is_string())
        throw std::runtime_error(
            at + " must be an object with string 'role' and 'content'");
      const auto role = m["role"].get<std::string>();
      if (std::find(std::begin(kRoles), std::end(kRoles), role) ==
          std::end(kRoles))
        throw std::runtime_error(
            at + ": unknown role '" + role +
            "' (system, user, assistant, tool)");
      messages.push_back({role, m["content"].get<std::string>()});
    }
    return messages;
  }

  std::string render_checked(
      const std::vector<text::ChatMessage>& messages,
      bool prompt,
      const std::string& where) const {
    try {
      return program_->render(messages, prompt, tokens_);
    } catch (const std::exception& e) {
      throw std::runtime_error(where + ": the chat template: " + e.what());
    }
  }

  Document render(
      const std::vector<text::ChatMessage>& messages,
      const std::string& where) const {
    Document doc;
    doc.eos_trained = false;
    size_t done = 0;
    std::string text;
    const auto extend = [&](std::string next, bool trained) {
      if (next.compare(0, text.size(), text) != 0 || next.size() < text.size())
        throw std::runtime_error(
            where +
            ": the chat template renders earlier turns differently "
            "once later ones follow, so the assistant's tokens "
            "cannot be told apart");
      if (next.size() > done)
        doc.pieces.push_back({next.substr(done), trained});
      done = next.size();
      text = std::move(next);
    };
    for (size_t i = 0; i < messages.size(); ++i) {
      if (messages[i].role != "assistant")
        continue;
      const std::vector<text::ChatMessage> before(
          messages.begin(), messages.begin() + static_cast<long>(i));
      extend(render_checked(before, true, where), false);
      const std::vector<text::ChatMessage> through(
          messages.begin(), messages.begin() + static_cast<long>(i) + 1);
      extend(render_checked(through, false, where), true);
    }
    extend(render_checked(messages, false, where), false);
    return doc;
  }

  std::string template_;
  std::map<std::string, std::string> tokens_;
  std::shared_ptr<const text::ChatTemplate> program_;
};

} // namespace

std::unique_ptr<DocumentSource> make_chat_source(
    const SourceOptions& o,
    std::shared_ptr<const Tokenizer> tokenizer) {
  return std::make_unique<ChatSource>(o, std::move(tokenizer));
}

} // namespace qat::data
