// kestrel: one command, many subcommands.
#include <CLI/CLI.hpp>
#include <iostream>

#include "engine/error.h"

namespace kestrel::cli {
void register_summary(CLI::App& app);  // summary.cpp
void register_train(CLI::App& app);    // train.cpp
void register_eval(CLI::App& app);     // eval.cpp
void register_predict(CLI::App& app);  // predict.cpp
}  // namespace kestrel::cli

int main(int argc, char** argv) {
  CLI::App app{"Kestrel: efficient image classifiers, trained and measured"};
  app.require_subcommand(1);
  kestrel::cli::register_summary(app);
  kestrel::cli::register_train(app);
  kestrel::cli::register_eval(app);
  kestrel::cli::register_predict(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const kestrel::Error& e) {
    std::cerr << "kestrel: error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "kestrel: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
