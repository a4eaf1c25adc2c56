// A progress bar for long loops: redraws in place on a terminal, prints a
// line every few seconds otherwise (CI logs stay readable).
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace kestrel::tools {

class ProgressBar {
 public:
  // first: items already done before this bar started (a resumed epoch); the
  // rate behind the ETA counts only the ones after.
  ProgressBar(std::string label, int64_t total, bool enabled = true, int64_t first = 0);
  // Advances to `done` items; `extra` is appended ("loss 0.41 acc 87.2% lr 0.05").
  void update(int64_t done, const std::string& extra = "");
  // The last line, at `done` items (-1: all of them).
  void finish(const std::string& extra = "", int64_t done = -1);
  double elapsed_seconds() const;

 private:
  std::string render(int64_t done, const std::string& extra) const;
  std::string label_;
  int64_t total_, first_;
  bool enabled_, tty_;
  std::chrono::steady_clock::time_point start_, last_print_;
  size_t last_width_ = 0;
};

std::string format_duration(double seconds);  // "1:05" or "1:02:03"

}  // namespace kestrel::tools
