// Typed errors: every failure a user can cause is one of these, and the CLI
// prints its message as a single line.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace kestrel {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
class ShapeError : public Error { public: using Error::Error; };
class DTypeError : public Error { public: using Error::Error; };
class ValueError : public Error { public: using Error::Error; };
class IOError : public Error { public: using Error::Error; };
class DeviceError : public Error { public: using Error::Error; };
class AutogradError : public Error { public: using Error::Error; };

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}
}  // namespace detail

}  // namespace kestrel

// KCHECK(cond, ShapeError, "conv2d: input has ", c, " channels");
#define KCHECK(cond, ErrorType, ...)                                  \
  do {                                                                \
    if (!(cond)) throw ::kestrel::ErrorType(::kestrel::detail::concat(__VA_ARGS__)); \
  } while (0)
