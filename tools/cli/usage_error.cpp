#include "tools/cli/usage_error.h"

#include <algorithm>
#include <sstream>

namespace kestrel::cli {

std::string usage_error_message(const CLI::ParseError& e, CLI::App& app, const std::vector<std::string>& args) {
  std::string what = e.what();
  std::replace(what.begin(), what.end(), '\n', ' ');
  const std::vector<CLI::App*> parsed = app.get_subcommands();
  const std::string command = parsed.empty() ? "" : parsed.front()->get_name() + ": ";

  if (dynamic_cast<const CLI::ExtrasError*>(&e) != nullptr) {
    // CLI11 lists the leftovers last first; the first one given is the slip.
    std::vector<std::string> extras;
    std::istringstream in(what.substr(what.find(": ") + 2));
    for (std::string token; in >> token;) extras.push_back(token);
    std::reverse(extras.begin(), extras.end());
    if (extras.empty()) return what;
    const std::string& first = extras.front();
    if (first.size() > 1 && first[0] == '-') return command + "unknown option " + first;
    std::string message = command + "unexpected argument '" + first + "'";
    const auto at = std::find(args.begin(), args.end(), first);  // where it stands, when it stands once
    if (std::count(args.begin(), args.end(), first) == 1 && at != args.begin() && (at - 1)->rfind("--", 0) == 0)
      message += " after " + *(at - 1) + " (a flag that takes no value?)";
    return message;
  }
  // "--epochs: At Most 1 required but received 2"
  const std::string twice = ": At Most 1 required but received ";
  const size_t at = what.find(twice);
  if (at != std::string::npos)
    return command + what.substr(0, at) + " given " + what.substr(at + twice.size()) + " times; give it once";
  return what;
}

}  // namespace kestrel::cli
