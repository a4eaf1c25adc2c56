// A progress bar for long loops: redraws in place on a terminal, prints a
// line every few seconds otherwise (CI logs stay readable).
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace kestrel::tools {

class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total, bool enabled = true);
  // Advances to `done` items; `extra` is appended ("loss 0.41 acc 87.2% lr 0.05").
  void update(int64_t done, const std::string& extra = "");
  void finish(const std::string& extra = "");
  double elapsed_seconds() const;

 private:
  std::string render(int64_t done, const std::string& extra) const;
  std::string label_;
  int64_t total_;
  bool enabled_, tty_;
  std::chrono::steady_clock::time_point start_, last_print_;
  size_t last_width_ = 0;
};

std::string format_duration(double seconds);  // "1:05" or "1:02:03"

}  // namespace kestrel::tools
