#include "tools/lib/progress.h"

#include <unistd.h>

#include <cstdio>
#include <iostream>

namespace kestrel::tools {

std::string format_duration(double seconds) {
  const long s = static_cast<long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof(buf), "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  else
    std::snprintf(buf, sizeof(buf), "%ld:%02ld", s / 60, s % 60);
  return buf;
}

ProgressBar::ProgressBar(std::string label, int64_t total, bool enabled, int64_t first)
    : label_(std::move(label)),
      total_(total),
      first_(first),
      enabled_(enabled),
      tty_(isatty(fileno(stderr)) != 0),
      start_(std::chrono::steady_clock::now()),
      last_print_(start_) {}

double ProgressBar::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

std::string ProgressBar::render(int64_t done, const std::string& extra) const {
  const double frac = total_ > 0 ? static_cast<double>(done) / static_cast<double>(total_) : 1.0;
  const int width = 24;
  const int filled = static_cast<int>(frac * width);
  std::string bar(filled, '#');
  bar += std::string(width - filled, '.');
  const double elapsed = elapsed_seconds();
  const int64_t here = done - first_;  // done by this process
  const double eta = here > 0 ? elapsed * static_cast<double>(total_ - done) / static_cast<double>(here) : 0.0;
  char head[160];
  std::snprintf(head, sizeof(head), "%s [%s] %3.0f%% %lld/%lld %s<%s", label_.c_str(), bar.c_str(), 100.0 * frac,
                static_cast<long long>(done), static_cast<long long>(total_), format_duration(elapsed).c_str(),
                format_duration(eta).c_str());
  return extra.empty() ? std::string(head) : std::string(head) + " " + extra;
}

void ProgressBar::update(int64_t done, const std::string& extra) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  const double since = std::chrono::duration<double>(now - last_print_).count();
  if (tty_) {
    if (since < 0.1 && done < total_) return;
    const std::string line = render(done, extra);
    std::cerr << "\r" << line;
    if (line.size() < last_width_) std::cerr << std::string(last_width_ - line.size(), ' ');
    std::cerr << std::flush;
    last_width_ = line.size();
  } else {
    if (since < 10.0) return;
    std::cerr << render(done, extra) << "\n";
  }
  last_print_ = now;
}

void ProgressBar::finish(const std::string& extra, int64_t done) {
  if (!enabled_) return;
  if (tty_) {
    const std::string line = render(done < 0 ? total_ : done, extra);
    std::cerr << "\r" << line;
    if (line.size() < last_width_) std::cerr << std::string(last_width_ - line.size(), ' ');
    std::cerr << "\n";
  }
}

}  // namespace kestrel::tools
