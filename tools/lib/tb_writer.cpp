#include "tools/lib/tb_writer.h"

#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>

#include "engine/error.h"

namespace kestrel::tools {

uint32_t crc32c(const uint8_t* data, size_t n) {
  static uint32_t table[256];
  static bool ready = false;
  if (!ready) {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      table[i] = c;
    }
    ready = true;
  }
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

namespace {

uint32_t masked_crc(const uint8_t* data, size_t n) {
  const uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

template <typename T>
void put_fixed(std::string& out, T v) {
  char buf[sizeof(T)];
  std::memcpy(buf, &v, sizeof(T));
  out.append(buf, sizeof(T));
}

void put_bytes_field(std::string& out, int field, const std::string& bytes) {
  put_varint(out, static_cast<uint64_t>(field << 3 | 2));
  put_varint(out, bytes.size());
  out += bytes;
}

// Event { wall_time = 1 (double); step = 2 (int64); file_version = 3 | summary = 5 | session_log = 7 }
std::string event_header(int64_t step) {
  std::string e;
  const double now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  put_varint(e, 1 << 3 | 1);
  put_fixed(e, now);
  put_varint(e, 2 << 3 | 0);
  put_varint(e, static_cast<uint64_t>(step));
  return e;
}

}  // namespace

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  std::filesystem::create_directories(dir);
  char host[256] = "localhost";
  gethostname(host, sizeof(host) - 1);
  const auto secs = std::chrono::duration_cast<std::chrono::seconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count();
  path_ = dir + "/events.out.tfevents." + std::to_string(secs) + "." + host;
  file_ = std::fopen(path_.c_str(), "ab");
  KCHECK(file_ != nullptr, IOError, "cannot open TensorBoard event file ", path_);
  std::string e = event_header(0);
  put_bytes_field(e, 3, "brain.Event:2");
  write_record(e);
}

TensorBoardWriter::~TensorBoardWriter() {
  if (file_) std::fclose(file_);
}

void TensorBoardWriter::add_scalar(const std::string& tag, double value, int64_t step) {
  std::string v;  // Summary.Value { tag = 1; simple_value = 2 (float) }
  put_bytes_field(v, 1, tag);
  put_varint(v, 2 << 3 | 5);
  put_fixed(v, static_cast<float>(value));
  std::string summary;  // Summary { repeated Value value = 1 }
  put_bytes_field(summary, 1, v);
  std::string e = event_header(step);
  put_bytes_field(e, 5, summary);
  write_record(e);
}

void TensorBoardWriter::restart_at(int64_t step) {
  std::string log;  // SessionLog { status = 1 (START = 1) }
  put_varint(log, 1 << 3 | 0);
  put_varint(log, 1);
  std::string e = event_header(step);
  put_bytes_field(e, 7, log);
  write_record(e);
}

void TensorBoardWriter::write_record(const std::string& data) {
  std::string rec;
  const uint64_t len = data.size();
  put_fixed(rec, len);
  put_fixed(rec, masked_crc(reinterpret_cast<const uint8_t*>(&len), 8));
  rec += data;
  put_fixed(rec, masked_crc(reinterpret_cast<const uint8_t*>(data.data()), data.size()));
  KCHECK(std::fwrite(rec.data(), 1, rec.size(), file_) == rec.size(), IOError, "write failed: ", path_);
}

void TensorBoardWriter::flush() {
  if (file_) std::fflush(file_);
}

}  // namespace kestrel::tools
