// The --input flag of kestrel summary and kestrel bench: "C x H x W".
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace kestrel::cli {

// "3x32x32" -> {3, 32, 32}; anything else is a ValueError naming `command`.
std::vector<int64_t> parse_chw(const std::string& s, const std::string& command);

}  // namespace kestrel::cli
