#include "engine/io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "engine/error.h"
#include "engine/io/fd.h"

namespace kestrel::io {

namespace {

std::string errno_text() { return std::strerror(errno); }

void write_all(int fd, const void* src, size_t n, const std::string& tmp, const std::string& what) {
  const char* p = static_cast<const char*>(src);
  while (n > 0) {
    const ssize_t put = ::write(fd, p, n);
    if (put < 0 && errno == EINTR) continue;
    if (put < 0) throw IOError(what + ": writing " + tmp + " failed: " + errno_text());
    p += put;
    n -= static_cast<size_t>(put);
  }
}

}  // namespace

void write_file_atomically(const std::string& path, const std::vector<ByteSpan>& parts, const std::string& what) {
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) throw IOError(what + ": cannot create " + tmp + " to write " + path + ": " + errno_text());
  try {
    for (const auto& [data, n] : parts) write_all(fd.get(), data, n, tmp, what);
    if (::fsync(fd.get()) != 0) throw IOError(what + ": fsync of " + tmp + " failed: " + errno_text());
    if (::close(fd.release()) != 0) throw IOError(what + ": closing " + tmp + " failed: " + errno_text());
    if (::rename(tmp.c_str(), path.c_str()) != 0)
      throw IOError(what + ": renaming " + tmp + " to " + path + " failed: " + errno_text());
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  // Make the rename itself durable.
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  Fd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dfd.get() >= 0) ::fsync(dfd.get());
}

void check_folder_of(const std::string& path, const std::string& what) {
  const std::filesystem::path folder = std::filesystem::path(path).parent_path();
  KCHECK(folder.empty() || std::filesystem::is_directory(folder), IOError, what, ": folder ", folder.string(),
         " does not exist");
}

}  // namespace kestrel::io
