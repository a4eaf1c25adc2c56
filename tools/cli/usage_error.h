// A flag parser error as one line in the tool's own terms.
#pragma once
#include <CLI/CLI.hpp>
#include <string>
#include <vector>

namespace kestrel::cli {

// CLI11's message, rewritten where its wording misleads: an unexpected token
// is named in command-line order with the command and the flag before it, a
// flag given twice says so. `args`: the command line after the program name.
std::string usage_error_message(const CLI::ParseError& e, CLI::App& app, const std::vector<std::string>& args);

}  // namespace kestrel::cli
