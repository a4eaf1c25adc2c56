#include "engine/io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

#include "engine/autograd.h"
#include "engine/io/atomic_file.h"
#include "engine/io/fd.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors I/O assumes a little-endian host"
#endif

namespace kestrel::io {

namespace {

using json = nlohmann::json;

constexpr int kMaxJsonDepth = 8;  // a valid header nests 3 deep
constexpr size_t kMaxRank = 64;

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

struct Header {
  std::vector<Entry> entries;  // sorted by data offset
  Metadata metadata;
};

bool dtype_from_safetensors(const std::string& s, DType& out) {
  static const std::pair<const char*, DType> table[] = {
      {"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16}, {"F64", DType::F64},
      {"I32", DType::I32}, {"I64", DType::I64}, {"U8", DType::U8},     {"I8", DType::I8}};
  for (const auto& [name, t] : table)
    if (s == name) {
      out = t;
      return true;
    }
  return false;
}

[[noreturn]] void fail(const std::string& source, const std::string& problem) {
  throw IOError("safetensors file " + source + ": " + problem);
}

std::string errno_text() { return std::strerror(errno); }

// Rejects nesting deeper than any valid header before the JSON parser sees it.
void check_nesting(const char* p, size_t n, const std::string& source) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (size_t i = 0; i < n; ++i) {
    const char c = p[i];
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    if (c == '{' || c == '[') {
      if (++depth > kMaxJsonDepth) fail(source, "header JSON nests deeper than " + std::to_string(kMaxJsonDepth));
    }
    if (c == '}' || c == ']') --depth;
  }
}

bool non_negative_integer(const json& j, uint64_t& out) {
  if (j.is_number_unsigned()) {
    out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer() && j.get<int64_t>() >= 0) {
    out = static_cast<uint64_t>(j.get<int64_t>());
    return true;
  }
  return false;
}

std::string shape_json(const json& j) { return j.dump(); }

Header parse_header(const char* text, size_t n, uint64_t data_len, const std::string& source) {
  if (n < 2 || text[0] != '{') fail(source, "header does not start with '{' (not a safetensors file?)");
  check_nesting(text, n, source);

  // Duplicate keys at any level are an error; nlohmann would keep one silently.
  std::vector<std::set<std::string>> keys;
  std::string duplicate;
  json::parser_callback_t cb = [&](int, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::object_start) keys.emplace_back();
    if (ev == json::parse_event_t::object_end && !keys.empty()) keys.pop_back();
    if (ev == json::parse_event_t::key && !keys.empty() && duplicate.empty()) {
      const std::string k = parsed.get<std::string>();
      if (!keys.back().insert(k).second) duplicate = k;
    }
    return true;
  };
  json h;
  try {
    h = json::parse(text, text + n, cb);
  } catch (const json::exception& e) {
    fail(source, std::string("header is not valid JSON (") + e.what() + ")");
  }
  if (!duplicate.empty()) fail(source, "header names '" + duplicate + "' more than once");
  if (!h.is_object()) fail(source, "header JSON is not an object");

  Header out;
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail(source, "__metadata__ is not an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) fail(source, "__metadata__ entry '" + m.key() + "' is not a string");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string what = "tensor '" + name + "'";
    if (!v.is_object()) fail(source, what + " is not described by an object");
    for (auto f = v.begin(); f != v.end(); ++f)
      if (f.key() != "dtype" && f.key() != "shape" && f.key() != "data_offsets")
        fail(source, what + " has an unknown field '" + f.key() + "'");
    if (!v.contains("dtype") || !v["dtype"].is_string()) fail(source, what + " has no dtype string");
    if (!v.contains("shape") || !v["shape"].is_array()) fail(source, what + " has no shape array");
    if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
      fail(source, what + " has no data_offsets [begin, end]");
    Entry e;
    e.name = name;
    const std::string dt = v["dtype"].get<std::string>();
    if (!dtype_from_safetensors(dt, e.dtype))
      fail(source, what + " has unsupported dtype '" + dt + "' (Kestrel reads F32, F16, BF16, F64, I32, I64, U8, I8)");
    const json& shape = v["shape"];
    if (shape.size() > kMaxRank)
      fail(source, what + " has " + std::to_string(shape.size()) + " dimensions (at most " + std::to_string(kMaxRank) +
                       ")");
    uint64_t numel = 1;
    for (const json& d : shape) {
      uint64_t dim = 0;
      if (!non_negative_integer(d, dim)) fail(source, what + " has shape " + shape_json(shape) +
                                                          " with a dimension that is not a non-negative integer");
      if (__builtin_mul_overflow(numel, dim, &numel))
        fail(source, what + " has shape " + shape_json(shape) + " whose element count overflows");
      e.shape.push_back(0);  // filled below once the size is known to be sane
    }
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(e.dtype)), &nbytes) ||
        numel > static_cast<uint64_t>(INT64_MAX))
      fail(source, what + " has shape " + shape_json(shape) + " whose size in bytes overflows");
    if (nbytes > data_len)
      fail(source, what + " has dtype " + dt + " and shape " + shape_json(shape) + " needing " +
                       std::to_string(nbytes) + " bytes, more than the file's " + std::to_string(data_len) +
                       "-byte data section holds");
    for (size_t i = 0; i < shape.size(); ++i) {
      uint64_t dim = 0;
      non_negative_integer(shape[i], dim);
      e.shape[i] = static_cast<int64_t>(dim);
    }
    const json& off = v["data_offsets"];
    if (!non_negative_integer(off[0], e.begin) || !non_negative_integer(off[1], e.end))
      fail(source, what + " has data_offsets " + off.dump() + " that are not non-negative integers");
    if (e.begin > e.end) fail(source, what + " has data_offsets " + off.dump() + " with begin after end");
    if (e.end > data_len)
      fail(source, what + " has data_offsets " + off.dump() + " beyond the " + std::to_string(data_len) +
                       "-byte data section");
    if (e.end - e.begin != nbytes)
      fail(source, what + " has data_offsets " + off.dump() + " spanning " + std::to_string(e.end - e.begin) +
                       " bytes but dtype " + dt + " and shape " + shape_json(shape) + " need " +
                       std::to_string(nbytes));
    out.entries.push_back(std::move(e));
  }
  std::sort(out.entries.begin(), out.entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected = 0;
  const Entry* prev = nullptr;
  for (const Entry& e : out.entries) {
    if (e.begin < expected)
      fail(source, "tensor '" + e.name + "' (bytes " + std::to_string(e.begin) + ".." + std::to_string(e.end) +
                       ") overlaps tensor '" + prev->name + "' (bytes " + std::to_string(prev->begin) + ".." +
                       std::to_string(prev->end) + ")");
    if (e.begin > expected)
      fail(source, "bytes " + std::to_string(expected) + ".." + std::to_string(e.begin) +
                       " of the data section belong to no tensor (before '" + e.name + "')");
    expected = e.end;
    prev = &e;
  }
  if (expected != data_len)
    fail(source, "the data section is " + std::to_string(data_len) + " bytes but the tensors cover only " +
                     std::to_string(expected));
  return out;
}

uint64_t read_le64(const unsigned char* b) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | b[i];
  return v;
}

uint64_t checked_header_length(uint64_t n, uint64_t file_size, const std::string& source) {
  if (n > kMaxSafetensorsHeader)
    fail(source, "header length " + std::to_string(n) + " is absurd (more than " +
                     std::to_string(kMaxSafetensorsHeader) + " bytes); the file is corrupt or not safetensors");
  if (n > file_size - 8)
    fail(source, "header length " + std::to_string(n) + " exceeds the " + std::to_string(file_size - 8) +
                     " bytes after the length field (truncated file?)");
  return n;
}

void pread_all(int fd, void* dst, size_t n, uint64_t offset, const std::string& source) {
  char* p = static_cast<char*>(dst);
  while (n > 0) {
    const ssize_t got = ::pread(fd, p, n, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) fail(source, "read failed: " + errno_text());
    if (got == 0) fail(source, "file ended early (truncated while reading?)");
    p += got;
    n -= static_cast<size_t>(got);
    offset += static_cast<uint64_t>(got);
  }
}

}  // namespace

const char* safetensors_dtype(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::F64: return "F64";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    case DType::U8: return "U8";
    case DType::I8: return "I8";
  }
  return "?";
}

const Tensor* SafetensorsContents::find(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return &t;
  return nullptr;
}

const Tensor& SafetensorsContents::at(const std::string& name) const {
  const Tensor* t = find(name);
  KCHECK(t != nullptr, ValueError, "safetensors: no tensor named '", name, "'");
  return *t;
}

void save_safetensors(const std::string& path, const nn::NamedTensors& tensors, const Metadata& metadata) {
  // Contiguous CPU copies, in file order.
  std::vector<std::pair<std::string, Tensor>> items;
  std::set<std::string> names;
  {
    NoGradGuard guard;
    for (const auto& [name, t] : tensors) {
      KCHECK(name != "__metadata__", ValueError, "save_safetensors ", path, ": '__metadata__' is a reserved name");
      KCHECK(names.insert(name).second, ValueError, "save_safetensors ", path, ": tensor name '", name,
             "' appears twice");
      KCHECK(t.defined(), ValueError, "save_safetensors ", path, ": tensor '", name, "' is undefined");
      items.emplace_back(name, t.detach().cpu().contiguous());
    }
  }
  std::stable_sort(items.begin(), items.end(), [](const auto& a, const auto& b) {
    const size_t sa = dtype_size(a.second.dtype()), sb = dtype_size(b.second.dtype());
    return sa != sb ? sa > sb : a.first < b.first;
  });
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : items) {
    const uint64_t n = t.nbytes();
    header[name] = {{"dtype", safetensors_dtype(t.dtype())}, {"shape", t.shape()}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {
    throw ValueError("save_safetensors " + path + ": a tensor name or metadata string is not valid UTF-8 (" +
                     e.what() + ")");
  }
  while (text.size() % 8 != 0) text += ' ';
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>((static_cast<uint64_t>(text.size()) >> (8 * i)) & 0xff);

  std::vector<ByteSpan> parts = {{len, 8}, {text.data(), text.size()}};
  for (const auto& [name, t] : items) parts.emplace_back(t.data_ptr(), t.nbytes());
  write_file_atomically(path, parts, "safetensors");
}

SafetensorsContents parse_safetensors(const std::string& bytes, const std::string& source) {
  const uint64_t size = bytes.size();
  if (size < 8) fail(source, "is " + std::to_string(size) + " bytes, too short for the 8-byte header length");
  const uint64_t n = checked_header_length(read_le64(reinterpret_cast<const unsigned char*>(bytes.data())), size,
                                           source);
  Header h = parse_header(bytes.data() + 8, n, size - 8 - n, source);
  SafetensorsContents out;
  out.metadata = std::move(h.metadata);
  for (const Entry& e : h.entries) {
    Tensor t = Tensor::empty(e.shape, e.dtype);
    if (t.nbytes() > 0) std::memcpy(t.data_ptr(), bytes.data() + 8 + n + e.begin, t.nbytes());
    out.tensors.emplace_back(e.name, t);
  }
  return out;
}

namespace {
// Opens `path` into fd and reads and checks its header, not the tensors' data.
Header read_header(const std::string& path, Fd& fd, uint64_t& header_length) {
  if (fd.get() < 0) throw IOError("safetensors file " + path + ": cannot open: " + errno_text());
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) fail(path, "cannot stat: " + errno_text());
  if (!S_ISREG(st.st_mode)) fail(path, "is not a regular file");
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) fail(path, "is " + std::to_string(size) + " bytes, too short for the 8-byte header length");
  unsigned char len[8];
  pread_all(fd.get(), len, 8, 0, path);
  header_length = checked_header_length(read_le64(len), size, path);
  std::string text(header_length, '\0');
  pread_all(fd.get(), text.data(), header_length, 8, path);
  return parse_header(text.data(), header_length, size - 8 - header_length, path);
}
}  // namespace

SafetensorsContents load_safetensors(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  uint64_t n = 0;
  Header h = read_header(path, fd, n);
  SafetensorsContents out;
  out.metadata = std::move(h.metadata);
  for (const Entry& e : h.entries) {
    Tensor t = Tensor::empty(e.shape, e.dtype);
    if (t.nbytes() > 0) pread_all(fd.get(), t.data_ptr(), t.nbytes(), 8 + n + e.begin, path);
    out.tensors.emplace_back(e.name, t);
  }
  return out;
}

Metadata load_safetensors_metadata(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  uint64_t n = 0;
  return read_header(path, fd, n).metadata;
}

void save_module(const std::string& path, const nn::Module& module, const Metadata& metadata) {
  save_safetensors(path, module.state_dict(), metadata);
}

Metadata load_module(const std::string& path, nn::Module& module, bool strict) {
  SafetensorsContents c = load_safetensors(path);
  try {
    module.load_state_dict(c.tensors, strict);
  } catch (const ValueError& e) {
    throw ValueError("loading " + path + " into " + module.type_name() + ": " + e.what());
  }
  return c.metadata;
}

}  // namespace kestrel::io
