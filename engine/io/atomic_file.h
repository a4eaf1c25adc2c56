// Writing a file so that a kill at any moment leaves either the old file or
// the whole new one: a temporary file beside it, fsync, rename, fsync the folder.
#pragma once
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace kestrel::io {

using ByteSpan = std::pair<const void*, size_t>;

// Writes the concatenation of `parts` to `path`. Throws IOError naming `what`
// ("safetensors", "onnx") and the file when any step fails; no temporary is left.
void write_file_atomically(const std::string& path, const std::vector<ByteSpan>& parts, const std::string& what);
inline void write_text_atomically(const std::string& path, const std::string& text, const std::string& what) {
  write_file_atomically(path, {{text.data(), text.size()}}, what);
}
// Before the work whose result goes to `path`: IOError "<what>: folder F does
// not exist" when the folder it would be written in is missing.
void check_folder_of(const std::string& path, const std::string& what);

}  // namespace kestrel::io
