// Lists joined for messages and files: join(names, ", ") is "a, b, c".
#pragma once
#include <string>

namespace kestrel {

// text(item) for each item, `separator` between them (none before the first,
// even when an item's text is empty).
template <typename Items, typename Text>
std::string join(const Items& items, const std::string& separator, Text&& text) {
  std::string out;
  bool first = true;
  for (const auto& item : items) {
    if (!first) out += separator;
    out += text(item);
    first = false;
  }
  return out;
}

// Items that are text already (std::string, const char*).
template <typename Items>
std::string join(const Items& items, const std::string& separator) {
  return join(items, separator, [](const auto& item) { return std::string(item); });
}

}  // namespace kestrel
