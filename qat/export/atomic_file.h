// Writing a file so that readers see the old file or the complete new one,
// never a half-written one: the content goes to a temporary file in the same
// folder, is flushed to disk, and only then renamed over the target.
#pragma once

#include <cstdio>
#include <functional>
#include <string>

namespace qat {

// `write_content` writes everything to the open file and returns false when a
// write failed. On any failure the temporary file is removed and
// std::runtime_error says "<what>: ..." with the file and the reason.
void write_file_atomically(
    const std::string& path,
    const std::string& what,
    const std::function<bool(std::FILE*)>& write_content);

// `content` (text or bytes) as the whole file, atomically as above.
void write_string_atomically(
    const std::string& path,
    const std::string& what,
    const std::string& content);

} // namespace qat
