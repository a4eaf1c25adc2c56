// kestrel table: several runs' eval reports as one results table (Markdown on
// stdout, and a .md or .csv file with --out), as tools/reproduce.sh ends.
#include <CLI/CLI.hpp>
#include <filesystem>
#include <iostream>
#include <memory>

#include "engine/error.h"
#include "engine/io/atomic_file.h"
#include "tools/lib/results_table.h"

namespace kestrel::cli {

namespace {

struct TableArgs {
  std::vector<std::string> runs;
  std::string out;
};

void run_table(const TableArgs& a) {
  namespace fs = std::filesystem;
  const std::string ext = fs::path(a.out).extension().string();
  KCHECK(a.out.empty() || ext == ".md" || ext == ".csv", ValueError, "table: --out must end in .md or .csv, got ",
         a.out);
  io::check_folder_of(a.out, "table");
  std::vector<tools::ResultsRow> rows;
  for (size_t i = 0; i < a.runs.size(); ++i) {
    rows.push_back(tools::read_results_row(a.runs[i]));
    for (size_t j = 0; j < i; ++j)
      KCHECK(rows[j].report != rows[i].report, ValueError, "table: ", a.runs[j], " and ", a.runs[i],
             " are the same report (", rows[i].report, "); give each run once");
  }
  const std::string md = tools::results_table_markdown(rows);
  std::cout << md;
  if (a.out.empty()) return;
  io::write_text_atomically(a.out, ext == ".csv" ? tools::results_table_csv(rows) : md, "table");
  std::cerr << rows.size() << (rows.size() == 1 ? " run" : " runs") << " written to " << a.out << "\n";
}

}  // namespace

void register_table(CLI::App& app) {
  auto a = std::make_shared<TableArgs>();
  CLI::App* cmd = app.add_subcommand("table", "Put several runs' eval reports in one results table");
  cmd->add_option("runs", a->runs, "run folders (holding eval/report.json), eval folders or report.json files")
      ->required();
  cmd->add_option("--out,-o", a->out, "also write the table to this .md or .csv file");
  cmd->callback([a] { run_table(*a); });
}

}  // namespace kestrel::cli
