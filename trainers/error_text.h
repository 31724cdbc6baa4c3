// The text of an error as the user reads it: LibTorch's c10::Error carries a
// C++ backtrace in what(); messages built from it must not.
#pragma once

#include <c10/util/Exception.h>

#include <exception>
#include <string>

namespace qat::train {

// e.what() without LibTorch's backtrace, on one line (newlines become "; ").
inline std::string error_text(const std::exception& e) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
  std::string text = c10_error ? c10_error->what_without_backtrace() : e.what();
  if (const auto trace = text.find("\nException raised from ");
      trace != std::string::npos)
    text.erase(trace);
  while (!text.empty() && (text.back() == '\n' || text.back() == ' '))
    text.pop_back();
  for (size_t at = text.find('\n'); at != std::string::npos;
       at = text.find('\n', at))
    text.replace(at, 1, "; ");
  return text;
}

} // namespace qat::train
