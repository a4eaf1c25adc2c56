#include "tools/cli/input_size.h"

#include <sstream>

#include "engine/error.h"

namespace kestrel::cli {

std::vector<int64_t> parse_chw(const std::string& s, const std::string& command) {
  std::vector<int64_t> dims;
  std::stringstream in(s);
  std::string part;
  bool ok = !s.empty() && s.back() != 'x';
  while (ok && std::getline(in, part, 'x')) {
    size_t used = 0;
    int64_t v = 0;
    try {
      v = std::stoll(part, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    ok = used == part.size() && !part.empty() && v > 0;
    dims.push_back(v);
  }
  KCHECK(ok && dims.size() == 3, ValueError, command, ": --input must look like 3x224x224 (C x H x W), got '", s,
         "'");
  return dims;
}

}  // namespace kestrel::cli
