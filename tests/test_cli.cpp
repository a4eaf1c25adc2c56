// The kestrel command's bad-input behaviour: one line, non-zero exit, the file named.
#include <stb_image_write.h>

#include <filesystem>
#include <fstream>

#include "cuda_parity.h"
#include "engine/io/safetensors.h"
#include "test_util.h"

using kestrel::testing::expect_one_line_error;
using kestrel::testing::kestrel_cli;
using kestrel::testing::read_text;
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

// A one-epoch CPU training run on an image folder, into out.
std::string one_epoch_on(const std::string& folder, const std::string& out) {
  return "train --dataset folder --data-dir " + folder +
         " --batch-size 4 --epochs 1 --workers 0 --device cpu --no-progress --out " + out;
}

}  // namespace

TEST(Cli, MissingDataPathIsOneLineError) {
  expect_one_line_error(kestrel_cli("train --dataset fashion-mnist --data-dir /nonexistent/fm --out " +
                                    temp_path("r1") + " --no-progress"),
                        "/nonexistent/fm", "missing data path");
  const std::string jpegs = make_folder("folders_not_cifar");
  expect_one_line_error(kestrel_cli("train --dataset cifar10 --data-dir " + jpegs + " --out " + temp_path("r1b") +
                                    " --no-progress"),
                        "holds image folders (train/<class>/...), not the cifar10 files; pass --dataset folder",
                        "image folders read as CIFAR binaries");
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

  // eval skips what the run skipped, a copied checkpoint with --skip-bad.
  std::ofstream(root + "/test/b/bad_test.png") << "this is not a png either";
  const auto inherited = kestrel_cli("eval -c " + out + "/best.safetensors --latency-iters 0 --workers 0 --no-progress");
  ASSERT_EQ(inherited.rc, 0) << inherited.err;
  EXPECT_NE(inherited.err.find("bad_test.png"), std::string::npos) << inherited.err;
  const nlohmann::json report = nlohmann::json::parse(read_text(out + "/eval/report.json"));
  EXPECT_EQ(report["skipped_images"].get<int64_t>(), 1);
  EXPECT_EQ(report["images"].get<int64_t>(), 8);
  const std::string copied = temp_path("r3_copy.safetensors");
  fs::copy_file(out + "/best.safetensors", copied, fs::copy_options::overwrite_existing);
  const std::string eval_copy = "eval -c " + copied + " --dataset folder --data-dir " + root +
                                " --latency-iters 0 --workers 0 --no-progress --out " + temp_path("r3_eval");
  expect_one_line_error(kestrel_cli(eval_copy), "bad_test.png", "corrupt test image, no --skip-bad");
  EXPECT_EQ(kestrel_cli(eval_copy + " --skip-bad").rc, 0);
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
  expect_one_line_error(kestrel_cli("train --auto-augment true --out " + temp_path("r9")),
                        "train: unexpected argument 'true' after --auto-augment (a flag: it takes no value)",
                        "stray value");
  expect_one_line_error(kestrel_cli("train --nesterov true --auto-augment true --out " + temp_path("r9")),
                        "train: unexpected argument 'true' (see --help)", "stray value, its place ambiguous");
  expect_one_line_error(kestrel_cli("qat --model resnet18 --checkpoint x.safetensors"), "qat: unknown option --model",
                        "an option the command does not take");
  expect_one_line_error(kestrel_cli("train --epochs 1 --epochs 2 --out " + temp_path("r9")),
                        "train: --epochs given 2 times; give it once", "a flag given twice");
  expect_one_line_error(kestrel_cli("summary -m resnet18 --num-classes 0"), "--num-classes", "no classes");
  expect_one_line_error(kestrel_cli("summary --list -m resnet18"), "--list prints the whole zoo", "--list with a model");
  const auto non_numeric = kestrel_cli("train --epochs ten --out " + temp_path("r10"));
  expect_one_line_error(non_numeric, "--epochs", "non-numeric value");
  EXPECT_EQ(non_numeric.rc, 2) << "a usage error exits 2, as argparse's do";
  EXPECT_EQ(kestrel_cli("predict image.png").rc, 2) << "a required flag left out";
  expect_one_line_error(kestrel_cli("frobnicate"), "unknown command 'frobnicate' (commands: summary, train,",
                        "unknown subcommand");
  const auto version = kestrel_cli("--version");
  EXPECT_EQ(version.rc, 0) << version.err;
  EXPECT_EQ(version.out.rfind("kestrel 0.1.0, CPU", 0), 0u) << version.out;
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
  const std::string args = one_epoch_on(root, out);
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

// --overwrite deletes a run only once the new one has everything it reads,
// never a folder no run wrote, and never the checkpoint it starts from.
TEST(Cli, OverwriteNeverLosesWhatItCannotReplace) {
  const std::string root = make_folder("overwrite_data");
  const std::string out = temp_path("overwrite_run");
  const std::string args = one_epoch_on(root, out);
  ASSERT_EQ(kestrel_cli(args).rc, 0);
  // A run that fails before it starts leaves the old one as it was.
  expect_one_line_error(kestrel_cli("train --dataset folder --data-dir " + root + "/nowhere --out " + out +
                                    " --overwrite --no-progress"),
                        "nowhere", "missing data on --overwrite");
  EXPECT_TRUE(fs::exists(out + "/best.safetensors"));
  expect_one_line_error(kestrel_cli("qat -c " + out + "/best.safetensors --dataset folder --data-dir " + root +
                                    " --epochs 0 --batch-size 4 --out " + out + " --overwrite --no-progress"),
                        "--overwrite would delete --checkpoint", "qat into its own float run");
  EXPECT_TRUE(fs::exists(out + "/best.safetensors"));
  expect_one_line_error(kestrel_cli("export -c " + out + "/best.safetensors -o " + out + "/best.safetensors --overwrite"),
                        "is the checkpoint itself", "export onto its checkpoint");
  EXPECT_TRUE(fs::exists(out + "/last.safetensors"));
  // A replaced run takes its reports along, and keeps the user's own files, saying so.
  fs::create_directories(out + "/eval-first10");
  std::ofstream(out + "/eval-first10/report.json") << "{}";
  std::ofstream(out + "/my_notes.txt") << "keep me";
  const auto replaced = kestrel_cli(args + " --overwrite");
  ASSERT_EQ(replaced.rc, 0) << replaced.err;
  EXPECT_FALSE(fs::exists(out + "/eval-first10")) << "a report of the replaced run";
  EXPECT_EQ(read_text(out + "/my_notes.txt"), "keep me");
  EXPECT_NE(replaced.err.find("--overwrite kept what no run writes in " + out + ": my_notes.txt"), std::string::npos)
      << replaced.err;

  const std::string notes = temp_path("overwrite_notes");
  fs::create_directories(notes);
  std::ofstream(notes + "/thesis.tex") << "important";
  const std::string no_run = "holds files no Kestrel run wrote (it has no run's config.json); give an empty or new";
  expect_one_line_error(kestrel_cli(args.substr(0, args.find(" --out ")) + " --out " + notes + " --overwrite"),
                        no_run, "a folder no run wrote, --overwrite");
  expect_one_line_error(kestrel_cli(args.substr(0, args.find(" --out ")) + " --out " + notes), no_run,
                        "a folder no run wrote: no advice to --overwrite it");
  EXPECT_TRUE(fs::exists(notes + "/thesis.tex"));
  expect_one_line_error(kestrel_cli(args + " --resume --overwrite"), "pass one of them", "--resume with --overwrite");
  expect_one_line_error(kestrel_cli(args.substr(0, args.find(" --out ")) + " --out " + notes + "/gone --resume"),
                        "run folder " + notes + "/gone does not exist; nothing to resume", "--resume of no folder");
  EXPECT_TRUE(fs::exists(out + "/last.safetensors"));
  expect_one_line_error(kestrel_cli(args.substr(0, args.find(" --out ")) + " --out " + notes + "/thesis.tex"),
                        "is a file, not a folder", "--out naming a file");
  expect_one_line_error(kestrel_cli(args.substr(0, args.find(" --out ")) + " --out " + root + "/run"),
                        "lies inside --data-dir", "--out inside the image folder");

  // The data and the recipe a run reads are inputs too, kept when they lie in the run folder.
  fs::copy(root, out + "/data", fs::copy_options::recursive);
  std::ofstream(out + "/recipe.toml") << "epochs = 1\n";
  expect_one_line_error(kestrel_cli(one_epoch_on(out + "/data", out) + " --overwrite"),
                        "--overwrite would delete --data-dir", "data inside the run folder");
  expect_one_line_error(kestrel_cli(args + " --config " + out + "/recipe.toml --overwrite"),
                        "--overwrite would delete --config", "recipe inside the run folder");
  EXPECT_TRUE(fs::exists(out + "/data/train/a/0.png"));
  EXPECT_TRUE(fs::exists(out + "/recipe.toml"));
}

// A CIFAR run on its default folder (datasets/, relative to where it ran)
// saves that folder absolute, so eval finds the data from anywhere.
TEST(Cli, TheDefaultDataFolderIsSavedAbsolute) {
  const std::string work = temp_path("default_data_work");
  const std::string batches = work + "/datasets/cifar-10-batches-bin";
  fs::create_directories(batches);
  auto write_batch = [&](const std::string& name) {
    std::ofstream f(batches + "/" + name, std::ios::binary);
    for (int r = 0; r < 8; ++r) {
      f.put(static_cast<char>(r % 2));
      for (int i = 0; i < 3072; ++i) f.put(static_cast<char>((r % 2 ? i : 3 * i) % 251));
    }
  };
  for (int b = 1; b <= 5; ++b) write_batch("data_batch_" + std::to_string(b) + ".bin");
  write_batch("test_batch.bin");
  const auto trained = kestrel_cli("train --dataset cifar10 --epochs 1 -b 8 --workers 0 --device cpu --no-progress "
                                   "--out run", "env -C " + work);
  ASSERT_EQ(trained.rc, 0) << trained.err;
  std::ifstream config(work + "/run/config.json");
  const std::string text((std::istreambuf_iterator<char>(config)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("\"data_dir\": \"" + fs::weakly_canonical(work).string() + "/datasets\""), std::string::npos)
      << text;
  const auto evaluated = kestrel_cli("eval -c " + work + "/run/best.safetensors --limit 8 --latency-iters 0 --no-progress");
  EXPECT_EQ(evaluated.rc, 0) << evaluated.err;
}

// --dataset cifar100-coarse trains on CIFAR-100's 20 superclasses (the first
// label byte of each record) under their names.
TEST(Cli, Cifar100CoarseTrainsOnTheTwentySuperclasses) {
  const std::string dir = temp_path("cifar100_coarse") + "/cifar-100-binary";
  fs::create_directories(dir);
  for (const char* name : {"train.bin", "test.bin"}) {
    std::ofstream f(dir + "/" + name, std::ios::binary);
    for (int r = 0; r < 8; ++r) {
      f.put(static_cast<char>(r % 20));        // coarse
      f.put(static_cast<char>(99 - r % 100));  // fine
      for (int i = 0; i < 3072; ++i) f.put(static_cast<char>((r * 7 + i) % 251));
    }
  }
  std::ofstream coarse(dir + "/coarse_label_names.txt");
  for (int k = 0; k < 20; ++k) coarse << "super" << k << "\n";
  coarse.close();
  const std::string out = temp_path("cifar100_coarse_run");
  const auto r = kestrel_cli("train --dataset cifar100-coarse --data-dir " + dir + " --epochs 1 -b 4 --workers 0 "
                             "--device cpu --no-progress --out " + out);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("8 train / 8 test images, 20 classes"), std::string::npos) << r.err;
  std::ifstream config(out + "/config.json");
  const std::string text((std::istreambuf_iterator<char>(config)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("\"dataset\": \"cifar100-coarse\""), std::string::npos) << text;
}

// Ctrl-C from outside, as a user or a scheduler (SIGTERM) sends it: the run
// saves where it is, says how to go on, and exits 128 + the signal; --resume
// takes it up at that batch.
TEST(Cli, CtrlCSavesTheRunWhereItIsAndResumeTakesItUp) {
  const std::string root = make_folder("ctrl_c");
  for (const char* sig : {"INT", "TERM"}) {
    const std::string out = temp_path(std::string("ctrl_c_out_") + sig), err = out + ".err";
    const std::string args = " train --dataset folder --data-dir " + root +
                             " --batch-size 2 --epochs 500 --workers 1 --device cpu --no-progress --overwrite --out " +
                             out;
    // Signalled once the run folder exists (the handler is in place by then).
    const std::string script = temp_path(std::string("ctrl_c_") + sig + ".sh");
    // Job control on (set -m): a non-interactive shell starts background jobs with SIGINT ignored.
    std::ofstream(script) << "set -m\nOMP_NUM_THREADS=2 " << KESTREL_BINARY_DIR << "/tools/kestrel" << args << " 2>" << err
                          << " &\npid=$!\ni=0\nwhile [ ! -f " << out << "/config.json ] && [ $i -lt 1200 ]; do sleep 0.05; "
                          << "i=$((i+1)); done\nkill -" << sig << " $pid\nwait $pid\n";
    const int status = std::system(("bash " + script).c_str());
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), std::string(sig) == "INT" ? 130 : 143) << read_text(err);
    const std::string said = read_text(err);
    // "at epoch E/500, batch B/4" mid-epoch, "after epoch E/500" when it came during an evaluation.
    EXPECT_NE(said.find(std::string("interrupted (SIG") + sig + ") "), std::string::npos) << said;
    EXPECT_NE(said.find("saved " + out + "/last.safetensors; the same command with --resume continues"),
              std::string::npos)
        << said;
    const nlohmann::json state = nlohmann::json::parse(read_text(out + "/state.json"));
    const int64_t step = state["global_step"].get<int64_t>();
    const int64_t batch = state.value("resume_batch", int64_t{0});
    // Resumed for one more step (then stopped the same way): it starts at the saved batch.
    const auto r = kestrel_cli("train --resume --no-progress --out " + out + " --interrupt-after-steps " +
                               std::to_string(step + 1));
    EXPECT_EQ(r.rc, 130) << r.err;
    EXPECT_NE(r.err.find("resuming " + out + " at epoch " +
                         std::to_string(state["next_epoch"].get<int64_t>() + 1) +
                         (batch > 0 ? ", batch " + std::to_string(batch + 1) : "") + " (step " + std::to_string(step) +
                         ")"),
              std::string::npos)
        << r.err;
  }
}

// --resume continues the run as it was set up: asking for something else is
// refused rather than ignored; a run that stopped early stays stopped.
TEST(Cli, ResumeRefusesChangesAndKeepsAnEarlyStop) {
  const std::string root = make_folder("resume_changes");
  const std::string out = temp_path("resume_changes_out");
  const std::string args = one_epoch_on(root, out);
  ASSERT_EQ(kestrel_cli(args).rc, 0);
  std::string more = args;
  more.replace(more.find("--epochs 1"), 10, "--epochs 3");
  expect_one_line_error(kestrel_cli(more + " --resume"), "changes --epochs 3 (the run's: 1)",
                        "resume with more epochs");
  // A flag given is a request even at its default value (the run's lr is 0.05).
  ASSERT_EQ(kestrel_cli(args + " --lr 0.05 --overwrite").rc, 0);
  expect_one_line_error(kestrel_cli("train --resume --lr 0.1 --no-progress --out " + out),
                        "changes --lr 0.1 (the run's: 0.05)", "resume with the default lr given");
  const auto plain = kestrel_cli("train --resume --no-progress --out " + out);  // flags default, not set
  EXPECT_EQ(plain.rc, 0) << plain.err;
  EXPECT_NE(plain.out.find("already holds its 1 epochs"), std::string::npos) << plain.out;

  // lr 0: nothing improves after the first epoch, so patience 1 stops at epoch 2 of 4.
  const std::string early = temp_path("resume_early_out");
  const std::string early_args = "train --dataset folder --data-dir " + root +
                                 " --batch-size 4 --epochs 4 --early-stop 1 --lr 1e-12 --workers 0 --device cpu "
                                 "--no-progress --out " + early;
  const auto first = kestrel_cli(early_args);
  ASSERT_EQ(first.rc, 0) << first.err;
  ASSERT_NE(first.err.find("early stop"), std::string::npos) << first.err;
  const auto again = kestrel_cli(early_args + " --resume");
  EXPECT_EQ(again.rc, 0) << again.err;
  EXPECT_NE(again.out.find("stopped early"), std::string::npos) << again.out;
  EXPECT_EQ(again.err.find("epoch 3/4"), std::string::npos) << again.err;
}

// Recipe files: a comment may follow any value; a key set twice or a value
// that does not convert is named with its file and line.
TEST(Cli, RecipeCommentsDuplicatesAndBadValues) {
  const std::string root = make_folder("recipe_data");
  const auto recipe = [&](const std::string& name, const std::string& text) {
    const std::string path = temp_path(name + ".toml");
    std::ofstream(path) << text;
    return path;
  };
  const std::string base = "dataset = \"folder\"   # an image folder\nbatch-size = 4  # small\nepochs = 1\n";
  const auto ok = kestrel_cli("train --config " + recipe("commented", base) + " --data-dir " + root +
                              " --workers 0 --device cpu --no-progress --out " + temp_path("recipe_run"));
  EXPECT_EQ(ok.rc, 0) << ok.err;
  const std::string twice = recipe("twice", base + "epochs = 2\n");
  expect_one_line_error(kestrel_cli("train --config " + twice + " --out " + temp_path("recipe_r2")),
                        twice + ":4: 'epochs' is set twice", "duplicate key");
  const std::string bad = recipe("bad_value", "epochs = 1.5\n");
  expect_one_line_error(kestrel_cli("train --config " + bad + " --out " + temp_path("recipe_r3")), bad + ":1: epochs",
                        "value that does not convert");
  const std::string sections = recipe("sections", "[train]\nepochs = 1\n");
  expect_one_line_error(kestrel_cli("train --config " + sections + " --out " + temp_path("recipe_r4")),
                        sections + ":1: '[train]': a recipe is flat key = value lines, without [sections]",
                        "a TOML section");
  // Without --out (nor an out key) a recipe's run folder is runs/<its name>.
  expect_one_line_error(kestrel_cli("train --config " + recipe("named_run", base) + " --data-dir " + root + " --resume"),
                        "--resume: run folder runs/named_run does not exist", "a recipe's own run folder");
}

// Values the run would fail on later, or silently ignore, are refused before
// anything is read: non-finite numbers, negative class counts and gammas,
// seeds outside 64 bits, a folder given as the recipe, stochastic depth on a
// model without it, fewer classes than the data, mixed image sizes.
TEST(Cli, ValuesThatCannotWorkAreRefusedUpFront) {
  expect_one_line_error(kestrel_cli("train --mixup 1 --mix-alpha inf --out " + temp_path("v1")),
                        "--mix-alpha must be a finite number", "infinite alpha");
  expect_one_line_error(kestrel_cli("train --lr nan --out " + temp_path("v2")), "--lr must be a finite number",
                        "nan lr");
  expect_one_line_error(kestrel_cli("train --loss focal --focal-gamma -1 --out " + temp_path("v3")),
                        "--focal-gamma must be >= 0", "negative gamma");
  expect_one_line_error(kestrel_cli("train --momentum 5 --out " + temp_path("v3b")), "--momentum must be in [0, 1)",
                        "a momentum that diverges");
  expect_one_line_error(kestrel_cli("train --auto-augment --randaugment 2,9 --out " + temp_path("v3c")),
                        "--auto-augment and --randaugment are two policies for one step; pick one", "two policies");
  expect_one_line_error(kestrel_cli("train --num-classes -7 --out " + temp_path("v4")),
                        "--num-classes must be positive", "negative class count");
  for (const char* seed : {"-1", "18446744073709551616", "1e23"})
    expect_one_line_error(kestrel_cli(std::string("train --seed ") + seed + " --out " + temp_path("v5")),
                          "must be a whole number from 0 to 18446744073709551615", seed);
  const std::string recipes = kestrel::testing::source_path("tools/recipes");
  expect_one_line_error(kestrel_cli("train --config " + recipes + " --out " + temp_path("v6")),
                        "is a folder, not a recipe file", "a folder as --config");
  const std::string root = make_folder("values_data");
  expect_one_line_error(kestrel_cli(one_epoch_on(root, temp_path("v7")) + " --drop-path 0.3"),
                        "--drop-path: cifar10_200k has no stochastic depth", "drop path on cifar10_200k");
  expect_one_line_error(kestrel_cli(one_epoch_on(root, temp_path("v8")) + " --num-classes 1"),
                        "--num-classes 1 is fewer than the data set's 2 classes", "too few classes");
  EXPECT_FALSE(fs::exists(temp_path("v8"))) << "refused before the run folder was made";
  {
    unsigned char px[20 * 30] = {};
    stbi_write_png((root + "/train/a/00_wide.png").c_str(), 30, 20, 1, px, 30);
  }
  expect_one_line_error(kestrel_cli(one_epoch_on(root, temp_path("v9"))),
                        "differ in size (the first is 8x8, number 2 is 30x20); pass --image-size N", "mixed sizes");
  const auto resized = kestrel_cli(one_epoch_on(root, temp_path("v10")) + " --image-size 8");
  EXPECT_EQ(resized.rc, 0) << resized.err;
}

// The size check samples the training set; an odd-sized image it missed is
// resized to the first's size, with one warning.
TEST(Cli, AnOddSizedImageTheSizeCheckMissedIsResizedWithAWarning) {
  const std::string root = make_folder("sampled_sizes");
  for (int i = 0; i < 40; ++i) {  // 49 training images: the samples land on 1, 3, 4, 6, ...
    unsigned char px[64] = {};
    stbi_write_png((root + "/train/a/x" + std::to_string(10 + i) + ".png").c_str(), 8, 8, 1, px, 8);
  }
  unsigned char wide[20 * 30] = {};
  stbi_write_png((root + "/train/a/1a.png").c_str(), 30, 20, 1, wide, 30);  // sorted third: index 2
  const auto r = kestrel_cli(one_epoch_on(root, temp_path("sampled_sizes_run")));
  ASSERT_EQ(r.rc, 0) << r.err;
  const std::string warning = "warning: a training image is 30x20, not 8x8 as the first: resized";
  const size_t at = r.err.find(warning);
  ASSERT_NE(at, std::string::npos) << r.err;
  EXPECT_EQ(r.err.find(warning, at + 1), std::string::npos) << "said once:\n" << r.err;
}

// The albumentations / torchvision style flags: read from the command line
// or a recipe, saved with the run, refused in one line when they cannot work.
TEST(Cli, ImageAugmentationFlagsTrainAndAreSavedWithTheRun) {
  const std::string root = make_folder("augment_flags");
  const std::string recipe = temp_path("augment.toml");
  std::ofstream(recipe) << "shift-scale-rotate = 0.5\nssr-limits = \"0.1,0.1,15\"\ncolor-jitter = \"0.3,0.3,0\"\n";
  const std::string out = temp_path("augment_run");
  const auto r = kestrel_cli(one_epoch_on(root, out) + " --config " + recipe +
                             " --rotation 10 --brightness-contrast 0.5 --hsv-shift 0.5");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("augmentation: crop (pad 2), flip, shift-scale-rotate p 0.5 (0.1, 0.1, 15 deg), rotation 10 "
                       "deg, color jitter 0.3,0.3,0, brightness/contrast p 0.5, HSV shift p 0.5\n"),
            std::string::npos)
      << r.err;
  const nlohmann::json config = nlohmann::json::parse(read_text(out + "/config.json"));
  EXPECT_EQ(config.at("shift_scale_rotate"), 0.5);
  EXPECT_EQ(config.at("ssr_limits"), "0.1,0.1,15");
  EXPECT_EQ(config.at("color_jitter"), "0.3,0.3,0");
  EXPECT_EQ(config.at("rotation"), 10.0);
  EXPECT_EQ(config.at("brightness_contrast"), 0.5);
  EXPECT_EQ(config.at("hsv_shift"), 0.5);
  // Batch mixing for the first epochs only (timm's --mixup-off-epoch).
  const std::string mixed = temp_path("mix_off_run");
  const auto mix_off = kestrel_cli(one_epoch_on(root, mixed) + " --cutmix 1 --mixup-off-epoch 3");
  ASSERT_EQ(mix_off.rc, 0) << mix_off.err;
  EXPECT_NE(mix_off.err.find("augmentation: crop (pad 2), flip; cutmix 1 (first 3 epochs)\n"), std::string::npos)
      << mix_off.err;
  EXPECT_EQ(nlohmann::json::parse(read_text(mixed + "/config.json")).at("mixup_off_epoch"), 3);
  expect_one_line_error(kestrel_cli("train --mixup-off-epoch 2 --out " + temp_path("a8")),
                        "--mixup-off-epoch ends --mixup, --cutmix and --ricap, and this run uses none of them",
                        "nothing to end");

  expect_one_line_error(kestrel_cli("train --color-jitter 0.4,0.4 --out " + temp_path("a1")),
                        "--color-jitter expects B,C,S or B,C,S,H", "two jitter amounts");
  expect_one_line_error(kestrel_cli("train --ssr-limits 0.1,0.1,400 --out " + temp_path("a2")),
                        "--ssr-limits expects SHIFT,SCALE,DEGREES", "rotation limit over 180");
  expect_one_line_error(kestrel_cli("train --hsv-shift 1.5 --out " + temp_path("a3")),
                        "--hsv-shift is a probability: it must be in [0, 1], got 1.5", "probability over 1");
  expect_one_line_error(kestrel_cli("train --rotation -3 --out " + temp_path("a4")), "--rotation must be in [0, 180]",
                        "negative rotation");
  // The rate is named itself, not through --min-lr, which compares to it.
  expect_one_line_error(kestrel_cli("train --lr -1 --out " + temp_path("a6")), "--lr must be positive, got -1",
                        "negative rate");
  expect_one_line_error(kestrel_cli("train --lr 0 --out " + temp_path("a7")), "--lr must be positive, got 0",
                        "zero rate");
  expect_one_line_error(kestrel_cli(one_epoch_on(root, temp_path("a5")) + " --loader resident --rotation 5"),
                        "--loader resident cannot be used: --rotation runs on the host", "resident refusal");
}

// --schedule plateau and --checkpoint-hist from the command line (or a
// recipe): saved with the run, the kept epochs named at the end, then averaged.
TEST(Cli, PlateauAndCheckpointHistTrainAndAreSavedWithTheRun) {
  const std::string root = make_folder("plateau_hist");
  const std::string recipe = temp_path("plateau.toml");
  std::ofstream(recipe) << "schedule = \"plateau\"\nplateau-patience = 0\n";
  const std::string out = temp_path("plateau_hist_run");
  const auto r = kestrel_cli("train --dataset folder --data-dir " + root + " --batch-size 4 --epochs 3 --workers 0 "
                             "--device cpu --no-progress --model cifar10_200k --width-mult 0.25 --step-gamma 0.5 "
                             "--checkpoint-hist 2 --config " + recipe + " --out " + out);
  ASSERT_EQ(r.rc, 0) << r.err;
  const nlohmann::json config = nlohmann::json::parse(read_text(out + "/config.json"));
  EXPECT_EQ(config.at("schedule"), "plateau");
  EXPECT_EQ(config.at("plateau_patience"), 0);
  EXPECT_EQ(config.at("step_gamma"), 0.5);
  EXPECT_EQ(config.at("checkpoint_hist"), 2);
  EXPECT_NE(r.out.find("kept the 2 best epochs as checkpoint-E.safetensors: kestrel average " + out +
                       " writes their mean\n"),
            std::string::npos)
      << r.out;
  const auto averaged = kestrel_cli("average " + out);
  EXPECT_EQ(averaged.rc, 0) << averaged.err;
  EXPECT_TRUE(std::filesystem::exists(out + "/average.safetensors"));
  // --precise-bn: the same weights, batch-norm statistics of their own from
  // the run's training images (the folder and batch size from its config).
  const std::string precise = out + "/average_pbn.safetensors";
  const auto recomputed = kestrel_cli("average " + out + " --precise-bn 5 --device cpu -o " + precise);
  ASSERT_EQ(recomputed.rc, 0) << recomputed.err;
  EXPECT_NE(recomputed.out.find("batch-norm statistics from 2 training batches"), std::string::npos)
      << recomputed.out;
  const kestrel::io::SafetensorsContents plain = kestrel::io::load_safetensors(out + "/average.safetensors");
  const kestrel::io::SafetensorsContents own = kestrel::io::load_safetensors(precise);
  EXPECT_EQ(own.metadata.at("kestrel.precise_bn_batches"), "2") << "8 images, 4 a batch";
  EXPECT_EQ(own.metadata.at("kestrel.averaged_from"), plain.metadata.at("kestrel.averaged_from"));
  int statistics = 0;
  for (const auto& [name, t] : plain.tensors) {
    const bool statistic = name.find("running_") != std::string::npos;
    statistics += statistic;
    if (t.dtype() == kestrel::DType::F32)
      EXPECT_EQ(t.to_vector() == own.at(name).to_vector(), !statistic) << name;
    else
      EXPECT_EQ(t.to_vector_i64(), own.at(name).to_vector_i64()) << name;
  }
  EXPECT_GT(statistics, 0);
  const std::string again = out + "/average_pbn2.safetensors";
  ASSERT_EQ(kestrel_cli("average " + out + " --precise-bn 5 --device cpu -o " + again).rc, 0);
  for (const auto& [name, t] : own.tensors)
    EXPECT_EQ(kestrel::io::load_safetensors(again).at(name).to_vector_f64(), t.to_vector_f64()) << name;
  expect_one_line_error(kestrel_cli("average " + out + " --data-dir " + root + " -o " + temp_path("p9.safetensors")),
                        "average: --data-dir, --batch-size and --device serve --precise-bn; add --precise-bn N",
                        "data without --precise-bn");
  expect_one_line_error(kestrel_cli("average " + out + " --precise-bn 2 -b 1000 -o " + temp_path("p10.safetensors")),
                        "average: --precise-bn needs a full batch of 1000 images", "batch over the data");
  const std::string other = make_folder("other_classes");
  for (const char* split : {"/train/", "/test/"}) fs::rename(other + split + "a", other + split + "c");
  expect_one_line_error(kestrel_cli("average " + out + " --precise-bn 2 --data-dir " + other + " -o " +
                                    temp_path("p11.safetensors")),
                        "average: class 0 of folder at " + other + " is 'b' but the checkpoint's class 0 is 'a' (the "
                        "classes must be the same, in the same order); pass the --data-dir it was trained on",
                        "other classes");
  expect_one_line_error(kestrel_cli("average " + out + " --precise-bn 2 -b 0 -o " + temp_path("p12.safetensors")),
                        "average: --batch-size must be >= 1, got 0", "an empty batch");
  expect_one_line_error(kestrel_cli("train --schedule plateau --step-gamma 2 --out " + temp_path("p1")),
                        "--schedule plateau needs --step-gamma in (0, 1)", "growth factor");
  expect_one_line_error(kestrel_cli("train --plateau-patience 3 --out " + temp_path("p2")),
                        "--plateau-patience is --schedule plateau's; this run's schedule is cosine", "wrong schedule");
  expect_one_line_error(kestrel_cli("train --lr 0.1 --lr-base 0.2 --out " + temp_path("p4")),
                        "--lr and --lr-base both set the learning rate; give one", "two rates");
  // A rate on the command line wins over the recipe's, in either form.
  const std::string base_recipe = temp_path("lr_base.toml"), lr_recipe = temp_path("lr.toml");
  std::ofstream(base_recipe) << "lr-base = 0.4\nlr-base-size = 8\n";
  std::ofstream(lr_recipe) << "lr = 0.3\n";
  const std::string quick = "train --dataset folder --data-dir " + root + " --batch-size 4 --epochs 1 --workers 0 "
                            "--device cpu --no-progress --model cifar10_200k --width-mult 0.25 --schedule step ";
  const auto saved_lr = [&](const std::string& args, const std::string& out) {
    const auto run = kestrel_cli(quick + args + " --out " + out);
    EXPECT_EQ(run.rc, 0) << args << ": " << run.err;
    return nlohmann::json::parse(read_text(out + "/config.json"));
  };
  nlohmann::json saved = saved_lr("--config " + base_recipe + " --lr 0.02", temp_path("p5"));
  EXPECT_EQ(saved["lr"], 0.02);
  EXPECT_EQ(saved["lr_base"], 0.0) << "the recipe's --lr-base gave way to --lr";
  saved = saved_lr("--config " + lr_recipe + " --lr-base 0.1 --lr-base-size 8", temp_path("p6"));
  EXPECT_EQ(saved["lr"], 0.05) << "0.1 x 4 / 8";
  saved = saved_lr("--config " + base_recipe, temp_path("p7"));
  EXPECT_EQ(saved["lr"], 0.2) << "0.4 x 4 / 8";
  std::ofstream(lr_recipe, std::ios::app) << "lr-base = 0.1\n";
  expect_one_line_error(kestrel_cli(quick + "--config " + lr_recipe + " --out " + temp_path("p8")),
                        "--lr and --lr-base both set the learning rate; give one (on the command line, or in the "
                        "recipe)",
                        "two rates in one recipe");
  expect_one_line_error(kestrel_cli("train --checkpoint-hist -1 --out " + temp_path("p3")),
                        "--checkpoint-hist must be >= 0", "negative history");
  expect_one_line_error(kestrel_cli("qat --checkpoint " + out + "/best.safetensors --checkpoint-hist 2"),
                        "qat: unknown option --checkpoint-hist", "qat keeps no epochs");
}

// Defaults that follow other settings, unless a flag or the recipe sets them:
// AdamW takes PyTorch's rate and decay, and digits are not mirrored.
TEST(Cli, OptimizersMnistAndResizedCropTakeTheirOwnDefaultsUnlessSet) {
  const std::string root = make_folder("dependent_defaults");
  const auto config_of = [](const std::string& out) { return nlohmann::json::parse(read_text(out + "/config.json")); };
  const std::string adamw = temp_path("adamw_defaults");
  ASSERT_EQ(kestrel_cli(one_epoch_on(root, adamw) + " --optimizer adamw").rc, 0);
  EXPECT_EQ(config_of(adamw).at("lr"), 1e-3);
  EXPECT_EQ(config_of(adamw).at("weight_decay"), 0.01);
  const std::string recipe = temp_path("adamw.toml");
  std::ofstream(recipe) << "optimizer = \"adamw\"\nlr = 0.004\n";
  const std::string set = temp_path("adamw_set");
  ASSERT_EQ(kestrel_cli(one_epoch_on(root, set) + " --config " + recipe + " --weight-decay 0.05").rc, 0);
  EXPECT_EQ(config_of(set).at("lr"), 0.004);
  EXPECT_EQ(config_of(set).at("weight_decay"), 0.05);
  const std::string rmsprop = temp_path("rmsprop_defaults");
  ASSERT_EQ(kestrel_cli(one_epoch_on(root, rmsprop) + " --optimizer rmsprop").rc, 0);
  EXPECT_EQ(config_of(rmsprop).at("lr"), 1e-3);
  EXPECT_EQ(config_of(rmsprop).at("weight_decay"), 5e-4);
  const std::string sgd = temp_path("sgd_defaults");
  ASSERT_EQ(kestrel_cli(one_epoch_on(root, sgd)).rc, 0);
  EXPECT_EQ(config_of(sgd).at("lr"), 0.1);
  EXPECT_EQ(config_of(sgd).at("weight_decay"), 5e-4);
  EXPECT_EQ(config_of(sgd).at("hflip"), 0.5);
  // --hflip is a probability, as timm's; true and false still read as before.
  const std::string rare_flip = temp_path("rare_flip");
  const auto rare = kestrel_cli(one_epoch_on(root, rare_flip) + " --hflip 0.3");
  ASSERT_EQ(rare.rc, 0) << rare.err;
  EXPECT_EQ(config_of(rare_flip).at("hflip"), 0.3);
  EXPECT_NE(rare.err.find("augmentation: crop (pad 2), flip p 0.3\n"), std::string::npos) << rare.err;
  const std::string flip_recipe = temp_path("no_flip.toml");
  std::ofstream(flip_recipe) << "hflip = false\n";
  ASSERT_EQ(kestrel_cli(one_epoch_on(root, temp_path("no_flip")) + " --config " + flip_recipe).rc, 0);
  EXPECT_EQ(config_of(temp_path("no_flip")).at("hflip"), 0.0);
  ASSERT_EQ(kestrel_cli(one_epoch_on(root, temp_path("flip_word")) + " --hflip True").rc, 0);
  EXPECT_EQ(config_of(temp_path("flip_word")).at("hflip"), 0.5) << "words in any case, as before";
  const auto always = kestrel_cli(one_epoch_on(root, temp_path("flip_always")) + " --hflip 1");
  ASSERT_EQ(always.rc, 0) << always.err;
  EXPECT_NE(always.err.find("note: --hflip 1 mirrors every image (it is a probability; true = 0.5)\n"),
            std::string::npos)
      << always.err;
  expect_one_line_error(kestrel_cli(one_epoch_on(root, temp_path("bad_flip")) + " --hflip 1.5"),
                        "--hflip: expects a probability in [0, 1] (true = 0.5, false = 0), got '1.5'", "flip over 1");
  EXPECT_EQ(config_of(sgd).at("random_crop"), true);
  // A random resized crop is not cropped again with padding, unless asked.
  const std::string rrc = temp_path("rrc_defaults");
  const auto resized = kestrel_cli(one_epoch_on(root, rrc) + " --random-resized-crop 0.5,1");
  ASSERT_EQ(resized.rc, 0) << resized.err;
  EXPECT_EQ(config_of(rrc).at("random_crop"), false);
  EXPECT_NE(resized.err.find("augmentation: random resized crop (area 0.5 to 1), flip\n"), std::string::npos)
      << resized.err;
  const std::string both = temp_path("rrc_and_crop");
  ASSERT_EQ(kestrel_cli(one_epoch_on(root, both) + " --random-resized-crop 0.5,1 --random-crop true").rc, 0);
  EXPECT_EQ(config_of(both).at("random_crop"), true);

  // The IDX files of Fashion-MNIST read as MNIST's (the same format).
  if (!fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"))
    GTEST_SKIP() << "mnist part: no Fashion-MNIST files (apt-get install dataset-fashion-mnist)";
  const std::string digits = "train --dataset mnist --data-dir /usr/share/datasets/fashion-mnist --limit-train 64 "
                             "--limit-test 32 --batch-size 32 --epochs 1 --workers 0 --device cpu --no-progress --out ";
  const auto unmirrored = kestrel_cli(digits + temp_path("mnist_defaults"));
  ASSERT_EQ(unmirrored.rc, 0) << unmirrored.err;
  EXPECT_NE(unmirrored.err.find("augmentation: crop (pad 3)\n"), std::string::npos) << unmirrored.err;
  EXPECT_EQ(config_of(temp_path("mnist_defaults")).at("hflip"), 0.0);
  const auto mirrored = kestrel_cli(digits + temp_path("mnist_flip") + " --hflip true");
  ASSERT_EQ(mirrored.rc, 0) << mirrored.err;
  EXPECT_NE(mirrored.err.find("augmentation: crop (pad 3), flip\n"), std::string::npos) << mirrored.err;
}

// --mean/--std set the input normalization; without them a run started from
// a Kestrel checkpoint takes the checkpoint's (the inputs its weights learned).
TEST(Cli, NormalizationFromTheFlagsOrTheInitialCheckpoint) {
  const std::string root = make_folder("normalization");
  const auto config_of = [](const std::string& out) { return nlohmann::json::parse(read_text(out + "/config.json")); };
  const std::string measured = temp_path("norm_measured");
  ASSERT_EQ(kestrel_cli(one_epoch_on(root, measured)).rc, 0);
  const std::string data_mean = config_of(measured).at("mean");
  EXPECT_EQ(std::count(data_mean.begin(), data_mean.end(), ','), 2) << "one mean per channel: " << data_mean;

  const std::string set = temp_path("norm_set");
  ASSERT_EQ(kestrel_cli(one_epoch_on(root, set) + " --mean 0.5,0.5,0.5 --std 0.25,0.25,0.25").rc, 0);
  EXPECT_EQ(config_of(set).at("mean"), "0.5,0.5,0.5");
  EXPECT_EQ(config_of(set).at("std"), "0.25,0.25,0.25");

  const std::string tuned = temp_path("norm_tuned");
  const auto from_checkpoint = kestrel_cli(one_epoch_on(root, tuned) + " --initial-checkpoint " + set +
                                           "/best.safetensors");
  ASSERT_EQ(from_checkpoint.rc, 0) << from_checkpoint.err;
  EXPECT_EQ(config_of(tuned).at("mean"), "0.5,0.5,0.5");
  EXPECT_NE(from_checkpoint.err.find("input normalization from " + set + "/best.safetensors (mean 0.5,0.5,0.5, std "
                                     "0.25,0.25,0.25), not the data set's"),
            std::string::npos)
      << from_checkpoint.err;
  const std::string chosen = temp_path("norm_chosen");
  ASSERT_EQ(kestrel_cli(one_epoch_on(root, chosen) + " --initial-checkpoint " + set + "/best.safetensors --mean " +
                        data_mean + " --std " + config_of(measured).at("std").get<std::string>()).rc,
            0);
  EXPECT_EQ(config_of(chosen).at("mean"), data_mean);

  // The command that started a run resumes it, --mean and all (kept as given).
  const std::string again = "train --dataset folder --data-dir " + root + " --batch-size 4 --epochs 2 --workers 0 "
                            "--device cpu --no-progress --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --out " +
                            temp_path("norm_resume");
  kestrel_cli(again + " --stop-after-steps 3");  // killed in epoch 2
  const auto resumed = kestrel_cli(again + " --resume");
  EXPECT_EQ(resumed.rc, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("resuming"), std::string::npos) << resumed.err;

  expect_one_line_error(kestrel_cli(one_epoch_on(root, temp_path("norm_bad1")) + " --mean 0.5,0.5,0.5"),
                        "--mean and --std go together", "a mean without a std");
  expect_one_line_error(kestrel_cli(one_epoch_on(root, temp_path("norm_bad2")) + " --mean 0.5 --std 0.2"),
                        "--mean and --std give 1 value, but the images have 3 channels", "one value for RGB");
  expect_one_line_error(kestrel_cli(one_epoch_on(root, temp_path("norm_bad3")) + " --mean 0.5,0.5,0.5 --std 0.2,0,0.2"),
                        "--std expects one positive number per channel", "a zero std");
}

TEST(Cli, LossAndScheduleCombinationsThatCannotWorkAreRefused) {
  expect_one_line_error(kestrel_cli("train --loss focal --label-smoothing 0.1 --out " + temp_path("combo1")),
                        "--loss focal takes hard labels", "focal with smoothing");
  expect_one_line_error(kestrel_cli("train --randaugment 2,9x --out " + temp_path("combo2")), "--randaugment expects N,M",
                        "trailing junk in --randaugment");
  expect_one_line_error(kestrel_cli("train --early-stop -3 --out " + temp_path("combo3")), "--early-stop must be >= 0",
                        "negative patience");
  const std::string root = make_folder("onecycle_data");  // 8 images, batch 4: 2 steps
  expect_one_line_error(kestrel_cli("train --dataset folder --data-dir " + root + " --batch-size 4 --epochs 1 "
                                    "--schedule onecycle --workers 0 --device cpu --no-progress --out " +
                                    temp_path("combo4")),
                        "--schedule onecycle needs at least 4 optimizer steps", "onecycle on 2 steps");
  const auto step = kestrel_cli("train --dataset folder --data-dir " + root + " --batch-size 4 --epochs 4 "
                                "--schedule step --step-size 1 --warmup-epochs 2 --workers 0 --device cpu "
                                "--no-progress --out " + temp_path("combo5"));
  EXPECT_EQ(step.rc, 0) << step.err;
  EXPECT_NE(step.err.find("warning: --step-size 1 decays the rate inside the 2-epoch warmup"), std::string::npos)
      << step.err;
}

// A float run split a folder of class folders; qat on another folder, which
// has its own train/ and test/, does not carry that split over.
TEST(Cli, QatOnAnotherFolderKeepsThatFoldersOwnSplit) {
  const std::string root = make_folder("qat_split_data");
  const std::string float_run = temp_path("qat_split_float");
  ASSERT_EQ(kestrel_cli("train --dataset folder --data-dir " + root + "/train --test-split 0.5 --batch-size 2 "
                        "--epochs 1 --workers 0 --device cpu --no-progress --out " + float_run).rc,
            0);
  const auto q = kestrel_cli("qat -c " + float_run + "/best.safetensors --data-dir " + root + " --batch-size 2 "
                             "--epochs 0 --workers 0 --device cpu --no-progress --out " + temp_path("qat_split_q"));
  EXPECT_EQ(q.rc, 0) << q.err;
}

// qat and distill feed their batches to an existing model: a subset of its
// training folder works (its normalization is the model's), and a folder whose
// classes are named or ordered otherwise is refused.
TEST(Cli, QatAndDistillFitTheirReferenceModelsClasses) {
  const std::string root = make_folder("reference_data");
  const std::string teacher = temp_path("reference_teacher");
  ASSERT_EQ(kestrel_cli("train --dataset folder --data-dir " + root + " --batch-size 4 --epochs 1 --workers 0 "
                        "--device cpu --no-progress --out " + teacher).rc,
            0);
  const auto subset = kestrel_cli("qat -c " + teacher + "/best.safetensors --dataset folder --data-dir " + root +
                                  " --limit-train 4 --batch-size 2 --epochs 0 --workers 0 --device cpu --no-progress "
                                  "--out " + temp_path("reference_qat"));
  EXPECT_EQ(subset.rc, 0) << subset.err;
  const std::string renamed = temp_path("reference_renamed");
  fs::create_directories(renamed);
  fs::copy(root, renamed, fs::copy_options::recursive);
  for (const char* split : {"/train/", "/test/"}) fs::rename(renamed + split + "a", renamed + split + "z");  // b, z
  expect_one_line_error(kestrel_cli("distill --teacher " + teacher + "/best.safetensors --dataset folder --data-dir " +
                                    renamed + " --batch-size 4 --epochs 1 --workers 0 --device cpu --no-progress "
                                    "--out " + temp_path("reference_distill")),
                        "class 0 is 'a' but the student's is 'b'", "teacher with other class names");
}
