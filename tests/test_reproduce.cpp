// tools/reproduce.sh and `kestrel table`: a seed table's recipes trained,
// evaluated and tabulated in one command, continued where a rerun finds them,
// and their bad input named in one line. Data: a generated image folder.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "test_util.h"

using kestrel::testing::expect_one_line_error;
using kestrel::testing::kestrel_cli;
using kestrel::testing::read_text;
using kestrel::testing::source_path;
using kestrel::testing::temp_path;
namespace fs = std::filesystem;

namespace {

struct ScriptResult {
  int rc = 0;
  std::string out;  // stdout and stderr together, in order
};

ScriptResult reproduce(const std::string& args) {
  const std::string log = temp_path("reproduce_log");
  const std::string cmd = std::string("OMP_NUM_THREADS=2 KESTREL_BIN=") + KESTREL_BINARY_DIR + "/tools/kestrel bash " +
                          source_path("tools/reproduce.sh") + " " + args + " >" + log + " 2>&1";
  const int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, read_text(log)};
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST(Reproduce, TrainsEvaluatesTabulatesAndContinuesWhereItStopped) {
  const std::string data = kestrel::testing::write_pattern_folder_dataset("reproduce_data");
  const std::string runs = temp_path("reproduce_runs");
  fs::remove_all(runs);
  const std::string args = "fashion_mnist --runs " + runs + " --epochs 1 --device cpu --data-dir " + data +
                           " -- --dataset folder --batch-size 6 --workers 0 --no-progress";
  const ScriptResult first = reproduce(args);
  ASSERT_EQ(first.rc, 0) << first.out;
  const std::string run = runs + "/cifar10_200k_fashion_mnist";
  EXPECT_TRUE(fs::is_regular_file(run + "/eval/report.json")) << first.out;
  const std::string md = read_text(runs + "/fashion_mnist.md");
  EXPECT_TRUE(contains(md, "| Run | Model | Input | Params | MACs |")) << md;
  EXPECT_TRUE(contains(md, "| cifar10_200k_fashion_mnist | cifar10_200k | 12x12 |")) << md;
  EXPECT_TRUE(contains(md, "| folder | 1 |")) << "one epoch, from the run's state.json: " << md;
  const std::string csv = read_text(runs + "/fashion_mnist.csv");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 2) << csv;
  EXPECT_TRUE(contains(csv, "cifar10_200k_fashion_mnist,cifar10_200k,1,12,12,")) << csv;

  // A rerun finds the report and trains nothing.
  const ScriptResult again = reproduce(args);
  ASSERT_EQ(again.rc, 0) << again.out;
  EXPECT_TRUE(contains(again.out, "cifar10_200k_fashion_mnist: done")) << again.out;
  EXPECT_FALSE(contains(again.out, " train --config")) << again.out;

  // Killed between training and evaluation: the checkpoint is kept, the run resumes (nothing left) and is evaluated.
  fs::remove_all(run + "/eval");
  const ScriptResult resumed = reproduce(args);
  ASSERT_EQ(resumed.rc, 0) << resumed.out;
  EXPECT_TRUE(contains(resumed.out, "resuming " + run)) << resumed.out;
  EXPECT_TRUE(contains(resumed.out, "nothing left to train")) << resumed.out;
  EXPECT_TRUE(fs::is_regular_file(run + "/eval/report.json"));

  // Another pass over the same runs (here 2 epochs where they trained 1) is refused, not mixed in.
  std::string longer = args;
  longer.replace(longer.find("--epochs 1"), 10, "--epochs 2");
  const ScriptResult other = reproduce(longer);
  EXPECT_EQ(other.rc, 1) << other.out;
  EXPECT_TRUE(contains(other.out, "reproduce: " + run + " was trained by another command")) << other.out;

  // kestrel table reads a run folder, an eval folder or a report, alike, and
  // refuses one report given twice.
  std::string first_row;
  for (const std::string& form : {run, run + "/eval", run + "/eval/report.json"}) {
    const auto t = kestrel_cli("table " + form);
    ASSERT_EQ(t.rc, 0) << t.err;
    EXPECT_EQ(std::count(t.out.begin(), t.out.end(), '\n'), 3) << t.out;
    if (first_row.empty()) first_row = t.out;
    EXPECT_EQ(t.out, first_row) << form;
  }
  expect_one_line_error(kestrel_cli("table " + run + " " + run + "/eval/report.json"), "are the same report",
                        "one report twice");
}

TEST(Reproduce, TheDistillTableTrainsTeachersThenStudentsThenInt8) {
  const std::string runs = temp_path("reproduce_dry");
  const ScriptResult r = reproduce("distill --runs " + runs + " --dry-run");
  ASSERT_EQ(r.rc, 0) << r.out;
  const size_t teacher = r.out.find("--config " + source_path("tools/recipes/teacher_densenet121_cifar10.toml"));
  const size_t distill = r.out.find(
      "distill --teacher " + runs + "/teacher_resnet18_cifar10/best.safetensors," + runs +
      "/teacher_mobilenet_v2_cifar10/best.safetensors," + runs + "/teacher_densenet121_cifar10/best.safetensors");
  const size_t qat = r.out.find("qat --checkpoint " + runs + "/distill_mobilenet_v3_small_w0.5_cifar10/best.safetensors");
  ASSERT_NE(teacher, std::string::npos) << r.out;
  ASSERT_NE(distill, std::string::npos) << r.out;
  ASSERT_NE(qat, std::string::npos) << r.out;
  EXPECT_LT(teacher, distill);
  EXPECT_LT(distill, qat);
  EXPECT_TRUE(contains(r.out, "table " + runs + "/teacher_resnet18_cifar10")) << r.out;
  EXPECT_TRUE(contains(r.out, "--out " + runs + "/distill.csv")) << "both table commands listed: " << r.out;
  EXPECT_FALSE(fs::exists(runs)) << "a dry run writes nothing";
  const ScriptResult help = reproduce("--help");
  EXPECT_EQ(help.rc, 0) << help.out;
  EXPECT_TRUE(contains(help.out, "Tables: emn (seed 1)")) << help.out;
}

TEST(Reproduce, BadUsageIsOneLineAndNonZero) {
  for (const std::string& args : {std::string("nosuchtable"), std::string("emn --epochs x"),
                                  std::string("emn --bogus"), std::string("")}) {
    const ScriptResult r = reproduce(args);
    EXPECT_EQ(r.rc, 1) << args << ": " << r.out;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << args << ": " << r.out;
    EXPECT_EQ(r.out.rfind("reproduce: ", 0), 0u) << args << ": " << r.out;
  }
}

TEST(Table, MissingReportsAndBadOutputsAreOneLineErrors) {
  const std::string empty = temp_path("table_no_report");
  fs::create_directories(empty);
  expect_one_line_error(kestrel_cli("table " + empty), "no eval report in " + empty, "a folder without a report");
  const std::string junk = temp_path("table_junk.json");
  std::ofstream(junk) << "{\"model\": 3}";
  expect_one_line_error(kestrel_cli("table " + junk), "is not a kestrel eval report", "a JSON file of another kind");
  expect_one_line_error(kestrel_cli("table " + junk + " --out t.txt"), "--out must end in .md or .csv", "bad --out");
  expect_one_line_error(kestrel_cli("table " + temp_path("nope")), temp_path("nope") + ": no such file or folder",
                        "a missing path");
  expect_one_line_error(kestrel_cli("table " + junk + " --out " + temp_path("nowhere") + "/t.md"),
                        "folder " + temp_path("nowhere") + " does not exist", "--out in a missing folder");
  // A run with only a part-set report: named in the message, not taken for the run's eval.
  fs::create_directories(empty + "/eval-first10");
  fs::copy_file(junk, empty + "/eval-first10/report.json");
  expect_one_line_error(kestrel_cli("table " + empty), "its other reports: " + empty + "/eval-first10; name one",
                        "a run with another report only");
}
