// kestrel: one command, many subcommands.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "engine/dist/process_group.h"
#include "engine/error.h"
#include "engine/text.h"
#include "tools/cli/usage_error.h"

namespace kestrel::cli {
void register_summary(CLI::App& app);  // summary.cpp
void register_train(CLI::App& app);    // train.cpp
void register_eval(CLI::App& app);     // eval.cpp
void register_predict(CLI::App& app);  // predict.cpp
void register_export(CLI::App& app);        // export.cpp
void register_scale_search(CLI::App& app);  // scale_search.cpp
void register_cam(CLI::App& app);           // cam.cpp
void register_bench(CLI::App& app);         // bench.cpp
void register_table(CLI::App& app);         // table.cpp
void register_average(CLI::App& app);       // average.cpp

namespace {
int g_exit_status = 0;
}  // namespace
void set_exit_status(int status) { g_exit_status = status; }
}  // namespace kestrel::cli

int main(int argc, char** argv) {
  CLI::App app{"Kestrel: efficient image classifiers, trained and measured"};
  app.require_subcommand(1);
#if defined(KESTREL_CUDA_EMULATOR)
  const char* backends = "CPU and the CUDA emulator (a test build)";
#elif defined(KESTREL_HAVE_CUDA)
  const char* backends = "CPU and CUDA";
#else
  const char* backends = "CPU only (built without CUDA)";
#endif
  app.set_version_flag("--version", std::string("kestrel ") + KESTREL_VERSION + ", " + backends);
  kestrel::cli::register_summary(app);
  kestrel::cli::register_train(app);
  kestrel::cli::register_eval(app);
  kestrel::cli::register_predict(app);
  kestrel::cli::register_export(app);
  kestrel::cli::register_scale_search(app);
  kestrel::cli::register_cam(app);
  kestrel::cli::register_bench(app);
  kestrel::cli::register_table(app);
  kestrel::cli::register_average(app);
  try {
    kestrel::dist::init();
    if (argc > 1 && argv[1][0] != '-') {  // CLI11 would only say "A subcommand is required"
      const std::vector<CLI::App*> commands = app.get_subcommands([](CLI::App*) { return true; });
      const bool known =
          std::any_of(commands.begin(), commands.end(), [&](const CLI::App* c) { return c->check_name(argv[1]); });
      KCHECK(known, ValueError, "unknown command '", argv[1], "' (commands: ",
             kestrel::join(commands, ", ", [](const CLI::App* c) { return c->get_name(); }), ")");
    }
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    // CLI11 prints two lines; a bad flag is one line here, like every other error.
    const std::string what = kestrel::cli::usage_error_message(e, app, std::vector<std::string>(argv + 1, argv + argc));
    if (kestrel::dist::is_main()) std::cerr << ("kestrel: error: " + what + " (see --help)\n") << std::flush;
    kestrel::dist::abort(2);  // a usage error, as argparse exits (CLI11's own codes run 101-125)
  } catch (const std::exception& e) {
    // A failing rank of a data-parallel job (mpirun) ends the whole job, so no
    // rank is left waiting in a collective. An error every rank meets (a bad
    // flag) is best reported once, by rank 0: the others give it a moment first.
    const bool many = kestrel::dist::world_size() > 1;
    if (many && !kestrel::dist::is_main()) std::this_thread::sleep_for(std::chrono::seconds(1));
    const std::string who = many ? " (rank " + std::to_string(kestrel::dist::rank()) + ")" : "";
    std::cerr << ("kestrel: error" + who + ": " + e.what() + "\n") << std::flush;  // one write: ranks share stderr
    kestrel::dist::abort(1);
  }
  kestrel::dist::finalize();  // before static destructors tear down the CUDA runtime
  return kestrel::cli::g_exit_status;
}
