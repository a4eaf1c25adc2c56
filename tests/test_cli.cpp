// The kestrel command's bad-input behaviour: one line, non-zero exit, the file named.
#include <stb_image_write.h>

#include <filesystem>
#include <fstream>

#include "cuda_parity.h"
#include "test_util.h"

using kestrel::testing::expect_one_line_error;
using kestrel::testing::kestrel_cli;
using kestrel::testing::temp_path;
namespace fs = std::filesystem;

namespace {

// root/train/{a,b}/N.png and root/test/{a,b}/N.png, 8x8 grey patterns.
std::string make_folder(const std::string& name) {
  const std::string root = temp_path(name);
  for (const char* split : {"train", "test"})
    for (int cls = 0; cls < 2; ++cls) {
      const std::string dir = root + "/" + split + "/" + (cls ? "b" : "a");
      fs::create_directories(dir);
      for (int i = 0; i < 4; ++i) {
        unsigned char px[64];
        for (int k = 0; k < 64; ++k) px[k] = static_cast<unsigned char>(cls ? (k % 8) * 30 : (k / 8) * 30);
        stbi_write_png((dir + "/" + std::to_string(i) + ".png").c_str(), 8, 8, 1, px, 8);
      }
    }
  return root;
}

}  // namespace

TEST(Cli, MissingDataPathIsOneLineError) {
  expect_one_line_error(kestrel_cli("train --dataset fashion-mnist --data-dir /nonexistent/fm --out " +
                                    temp_path("r1") + " --no-progress"),
                        "/nonexistent/fm", "missing data path");
}

TEST(Cli, EmptyClassFolderIsOneLineErrorNamingIt) {
  const std::string root = make_folder("empty_class");
  fs::create_directories(root + "/train/c");
  expect_one_line_error(kestrel_cli("train --dataset folder --data-dir " + root + " --batch-size 2 --out " +
                                    temp_path("r2") + " --no-progress"),
                        "train/c", "empty class folder");
}

TEST(Cli, CorruptImageIsOneLineErrorNamingTheFileOrSkippedWithSkipBad) {
  const std::string root = make_folder("corrupt");
  std::ofstream(root + "/train/a/bad.png") << "this is not a png";
  const std::string out = temp_path("r3");
  expect_one_line_error(
      kestrel_cli("train --dataset folder --data-dir " + root + " --batch-size 2 --epochs 1 --out " + out +
                  " --no-progress"),
      "bad.png", "corrupt image");
  const auto r = kestrel_cli("train --dataset folder --data-dir " + root +
                             " --batch-size 2 --epochs 1 --skip-bad --overwrite --workers 0 --out " + out +
                             " --no-progress");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("warning:"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("bad.png"), std::string::npos) << r.err;
}

TEST(Cli, TruncatedIdxFileIsOneLineErrorNamingIt) {
  const std::string dir = temp_path("idx");
  fs::create_directories(dir);
  // Header claims 100 images of 28x28 but holds none.
  const unsigned char header[16] = {0, 0, 8, 3, 0, 0, 0, 100, 0, 0, 0, 28, 0, 0, 0, 28};
  std::ofstream(dir + "/train-images-idx3-ubyte", std::ios::binary).write(reinterpret_cast<const char*>(header), 16);
  const unsigned char lheader[8] = {0, 0, 8, 1, 0, 0, 0, 100};
  std::ofstream(dir + "/train-labels-idx1-ubyte", std::ios::binary).write(reinterpret_cast<const char*>(lheader), 8);
  expect_one_line_error(
      kestrel_cli("train --dataset fashion-mnist --data-dir " + dir + " --out " + temp_path("r4") + " --no-progress"),
      "train-images-idx3-ubyte", "truncated IDX");
}

TEST(Cli, BadFlagValuesAreOneLineErrors) {
  expect_one_line_error(kestrel_cli("train --optimizer lbfgs --out " + temp_path("r5")), "sgd, adamw", "optimizer");
  expect_one_line_error(kestrel_cli("train --model nope --limit-train 256 --out " + temp_path("r6") + " --no-progress"),
                        "valid models", "model name");
  expect_one_line_error(kestrel_cli("train --loader gpu --out " + temp_path("r7")), "auto, threads, resident",
                        "loader name");
  const std::string folder = make_folder("loader_policy");
  expect_one_line_error(kestrel_cli("train --dataset folder --data-dir " + folder + " --loader resident --auto-augment" +
                                    " --epochs 1 --out " + temp_path("r8") + " --no-progress"),
                        "--loader resident cannot be used: --auto-augment runs on the host", "resident refusal");
  expect_one_line_error(kestrel_cli("train --initial-checkpoint " + temp_path("none.safetensors") + " --out " +
                                    temp_path("r11")),
                        "--initial-checkpoint not found", "missing initial checkpoint");
  expect_one_line_error(kestrel_cli("train --dataset folder --data-dir " + folder + " --epochs 1 --initial-checkpoint " +
                                    folder + "/train/a/0.png --out " + temp_path("r12") + " --no-progress"),
                        "0.png", "initial checkpoint that is not a safetensors file");
  // What the flag parser refuses is one line too.
  expect_one_line_error(kestrel_cli("train --auto-augment true --out " + temp_path("r9")), "not expected: true",
                        "stray value");
  expect_one_line_error(kestrel_cli("train --epochs ten --out " + temp_path("r10")), "--epochs", "non-numeric value");
  expect_one_line_error(kestrel_cli("frobnicate"), "unknown command 'frobnicate' (commands: summary, train,",
                        "unknown subcommand");
}

// Every recipe's keys are flags of the command it is for (distill_* for
// kestrel distill, qat_* for kestrel qat, the rest kestrel train): each is
// read to the end, and the run stops at the first check after it, before any
// data is touched (an --epochs of 0, or qat's float checkpoint, not trained here).
TEST(Cli, EveryRecipeReadsAsItsCommandsFlags) {
  int recipes = 0;
  for (const auto& entry : fs::directory_iterator(kestrel::testing::source_path("tools/recipes"))) {
    const std::string name = entry.path().filename().string();
    if (entry.path().extension() != ".toml") continue;
    const std::string command = name.rfind("distill_", 0) == 0 ? "distill" : name.rfind("qat_", 0) == 0 ? "qat" : "train";
    const kestrel::testing::CliResult r =
        kestrel_cli(command + " --config " + entry.path().string() + " --epochs 0 --out " + temp_path("recipe_" + name));
    const bool stopped_after_reading = r.err.find("--epochs must be positive, got 0") != std::string::npos ||
                                       r.err.find("float checkpoint not found: runs/") != std::string::npos;
    EXPECT_TRUE(r.rc != 0 && stopped_after_reading) << name << " (kestrel " << command << "): " << r.err;
    ++recipes;
  }
  EXPECT_GE(recipes, 26);
}

TEST(Cli, AmpOnTheCpuIsAOneLineError) {
  for (const char* amp : {"fp16", "bf16"})
    expect_one_line_error(kestrel_cli(std::string("train --amp ") + amp + " --device cpu --out " +
                                      temp_path(std::string("amp_") + amp) + " --no-progress"),
                          "mixed precision needs a CUDA device", "--amp on the CPU");
  expect_one_line_error(kestrel_cli("train --amp fp8 --device cpu --out " + temp_path("amp_fp8") + " --no-progress"),
                        "off, fp16, bf16", "bad --amp value");
}

TEST(Cli, DeviceFlagNamesWhatIsMissingInOneLine) {
  expect_one_line_error(kestrel_cli("train --device tpu --out " + temp_path("d1") + " --no-progress"),
                        "auto, cpu, cuda", "bad --device value");
  if (kestrel::testing::cuda_skip_reason().empty()) GTEST_SKIP() << "a CUDA device is present";
  expect_one_line_error(kestrel_cli("train --device cuda --out " + temp_path("d2") + " --no-progress"),
                        "--device cuda", "train --device cuda without a GPU");
  expect_one_line_error(kestrel_cli("eval --device cuda:1 --checkpoint " + temp_path("none.safetensors")),
                        "--device cuda:1", "eval --device cuda without a GPU");
}

TEST(Cli, DeviceAutoTrainsOnWhatTheMachineHas) {
  const std::string root = make_folder("auto_device");
  const auto r = kestrel_cli("train --dataset folder --data-dir " + root +
                             " --batch-size 4 --epochs 1 --workers 0 --overwrite --device auto --no-progress --out " +
                             temp_path("d3"));
  ASSERT_EQ(r.rc, 0) << r.err;
  const std::string expected = kestrel::testing::cuda_skip_reason().empty() ? "device cuda:0" : "device cpu";
  EXPECT_NE(r.err.find(expected), std::string::npos) << r.err;
}

// A scripted sweep may rerun every command: resuming a finished run trains
// nothing, says so, and exits 0.
TEST(Cli, ResumingAFinishedRunSaysNothingIsLeft) {
  const std::string root = make_folder("finished_run");
  const std::string out = temp_path("finished_run_out");
  const std::string args = "train --dataset folder --data-dir " + root +
                           " --batch-size 4 --epochs 1 --workers 0 --device cpu --no-progress --out " + out;
  ASSERT_EQ(kestrel_cli(args + " --overwrite").rc, 0);
  const auto r = kestrel_cli(args + " --resume");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("nothing left to train: run folder " + out + " already holds its 1 epochs"), std::string::npos)
      << r.out;
  EXPECT_EQ(r.out.find("ptq"), std::string::npos) << r.out;
}

// summary shows the network train and bench build at that size: the CIFAR stem
// at 64 px and below, unless told otherwise.
TEST(Cli, SummaryBuildsTheStemTrainingWouldAtThatSize) {
  const auto small = kestrel_cli("summary -m emn_tiny --input 3x32x32");
  ASSERT_EQ(small.rc, 0) << small.err;
  EXPECT_NE(small.out.find("[1,32,32,16]"), std::string::npos) << small.out;  // stride-1 stem
  EXPECT_NE(small.out.find("built with the CIFAR stem"), std::string::npos) << small.out;
  const auto own = kestrel_cli("summary -m emn_tiny --input 3x32x32 --no-cifar-stem");
  ASSERT_EQ(own.rc, 0) << own.err;
  EXPECT_NE(own.out.find("stem.0                               Conv2d               [1,16,16,16]"), std::string::npos)
      << own.out;
  EXPECT_EQ(own.out.find("built with the CIFAR stem"), std::string::npos) << own.out;
  const auto large = kestrel_cli("summary -m emn_tiny --input 3x96x96");
  ASSERT_EQ(large.rc, 0) << large.err;
  EXPECT_EQ(large.out.find("built with the CIFAR stem"), std::string::npos) << large.out;
  expect_one_line_error(kestrel_cli("summary -m emn_tiny --cifar-stem --no-cifar-stem"), "not both",
                        "contradictory stem flags");
}
