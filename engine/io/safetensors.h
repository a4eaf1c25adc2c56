// safetensors files (https://github.com/huggingface/safetensors, format as in
// its README): 8-byte little-endian header length N, N bytes of JSON header
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
// "__metadata__": {"key": "value"}}, then the data bytes, offsets relative to
// the start of the data.
//
// Writing: tensors sorted by element size (largest first) then name, so every
// tensor is aligned to its element size; header padded with spaces to a
// multiple of 8; written to a temporary file in the same directory, fsync'd,
// renamed over the target and the directory fsync'd, so a crash leaves either
// the old file or the new one.
//
// Reading validates everything and throws IOError naming the file and the
// problem: the file is untrusted input.
#pragma once
#include <map>
#include <string>

#include "engine/nn/module.h"
#include "engine/tensor.h"

namespace kestrel::io {

using Metadata = std::map<std::string, std::string>;

struct SafetensorsContents {
  nn::NamedTensors tensors;  // in the order of their data in the file
  Metadata metadata;
  const Tensor* find(const std::string& name) const;  // nullptr when absent
  const Tensor& at(const std::string& name) const;    // throws ValueError when absent
};

// Tensors may be on any device and in any layout; they are written contiguous.
// Throws ValueError for duplicate names or the reserved name "__metadata__",
// IOError when the file cannot be written.
void save_safetensors(const std::string& path, const nn::NamedTensors& tensors, const Metadata& metadata = {});

// CPU tensors. Throws IOError for a missing, unreadable or malformed file.
SafetensorsContents load_safetensors(const std::string& path);
// The metadata alone: reads and checks the header, not the tensors' data.
Metadata load_safetensors_metadata(const std::string& path);
// Same checks on bytes already in memory; `source` names them in errors.
SafetensorsContents parse_safetensors(const std::string& bytes, const std::string& source);

// The header sizes a reader accepts.
constexpr uint64_t kMaxSafetensorsHeader = 100ull * 1000 * 1000;

// module.state_dict() (PyTorch names and layouts) to a file, and back.
void save_module(const std::string& path, const nn::Module& module, const Metadata& metadata = {});
// Throws IOError for a bad file and ValueError (naming the file and the first
// mismatching tensors) when the file does not fit the module.
Metadata load_module(const std::string& path, nn::Module& module, bool strict = true);

// safetensors dtype strings: F32, F16, BF16, F64, I32, I64, U8, I8.
const char* safetensors_dtype(DType t);

}  // namespace kestrel::io
