#include "tools/cli/usage_error.h"

#include <algorithm>

namespace kestrel::cli {

std::string usage_error_message(const CLI::ParseError& e, CLI::App& app, const std::vector<std::string>& args) {
  std::string what = e.what();
  std::replace(what.begin(), what.end(), '\n', ' ');
  const std::vector<CLI::App*> parsed = app.get_subcommands();
  const std::string command = parsed.empty() ? "" : parsed.front()->get_name() + ": ";

  if (dynamic_cast<const CLI::ExtrasError*>(&e) != nullptr) {
    // CLI11 joins the leftovers with spaces, last first: the first one given
    // ends the list. It is found among the command line's own tokens, which
    // may hold spaces; failing that, the list's last word.
    const std::string list = what.substr(what.find(": ") + 2);
    std::string first;
    for (const std::string& arg : args) {
      const size_t at = list.size() - std::min(list.size(), arg.size());
      if (arg.size() > first.size() && list.compare(at, std::string::npos, arg) == 0 && (at == 0 || list[at - 1] == ' '))
        first = arg;
    }
    if (first.empty()) first = list.substr(list.find_last_of(' ') + 1);
    if (first.size() > 1 && first[0] == '-') return command + "unknown option " + first;
    std::string message = command + "unexpected argument '" + first + "'";
    // After a flag (which takes no value), when it stands once: `--auto-augment true`.
    const auto at = std::find(args.begin(), args.end(), first);
    const CLI::Option* flag = nullptr;
    if (std::count(args.begin(), args.end(), first) == 1 && at != args.begin() && !parsed.empty())
      flag = parsed.front()->get_option_no_throw(*(at - 1));
    if (flag != nullptr && flag->get_expected_max() == 0)
      message += " after " + *(at - 1) + " (a flag: it takes no value)";
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
