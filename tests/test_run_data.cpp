// run_data_beside (tools/lib/run_data.h): which images eval and average read
// for a checkpoint, from the run's config.json beside it.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "test_util.h"
#include "tools/lib/run_data.h"

namespace fs = std::filesystem;
using kestrel::testing::temp_path;
using kestrel::tools::run_data_beside;

namespace {

// A folder of class sub-folders (a/, b/), without train/ and test/.
std::string flat_folder(const std::string& name) {
  const std::string root = temp_path(name);
  for (const char* c : {"a", "b"}) fs::create_directories(root + "/" + c);
  return root;
}

// A run folder whose config.json says it trained on `dataset` at `data_dir`
// holding out `test_split`; returns its checkpoint's path (the file itself is not read).
std::string run_on(const std::string& name, const std::string& dataset, const std::string& data_dir,
                   double test_split) {
  const std::string run = temp_path(name);
  fs::create_directories(run);
  std::ofstream(run + "/config.json") << nlohmann::json{
      {"dataset", dataset}, {"data_dir", data_dir}, {"test_split", test_split}, {"skip_bad", true}}.dump();
  return run + "/best.safetensors";
}

}  // namespace

TEST(RunData, TheRunsOwnFolderKeepsItsSplitByAnyPath) {
  const std::string flat = flat_folder("own_flat");
  const std::string checkpoint = run_on("own_run", "folder", flat, 0.25);
  const auto own = run_data_beside(checkpoint, "folder", "", false);
  EXPECT_EQ(own.data_dir, flat);
  EXPECT_EQ(own.test_split, 0.25);
  EXPECT_TRUE(own.skip_bad) << "as the run did";
  EXPECT_EQ(own.note, "");
  fs::create_directory_symlink(flat, temp_path("own_flat_link"));
  EXPECT_EQ(run_data_beside(checkpoint, "folder", temp_path("own_flat_link"), false).test_split, 0.25);
  EXPECT_EQ(run_data_beside(checkpoint, "folder", flat + "/", false).test_split, 0.25);
}

TEST(RunData, AFolderTheRunNeverReadIsReadWholeWithANote) {
  const std::string flat = flat_folder("never_read");
  const std::string checkpoint = run_on("other_run", "folder", flat_folder("trained_on"), 0.25);
  const auto other = run_data_beside(checkpoint, "folder", flat, false);
  EXPECT_EQ(other.test_split, 0.0);
  EXPECT_NE(other.note.find(flat + " is not the folder the run beside " + checkpoint + " trained on"),
            std::string::npos)
      << other.note;
  EXPECT_NE(other.note.find("--test-split 0.25 takes the run's split"), std::string::npos) << other.note;
  // A run on another data set never read this folder either.
  const std::string cifar = run_on("cifar_run", "cifar10", "/somewhere/cifar", 0.1);
  EXPECT_EQ(run_data_beside(cifar, "folder", flat, false).test_split, 0.0);
  EXPECT_FALSE(run_data_beside(cifar, "folder", flat, false).skip_bad) << "another data set's setting";
  EXPECT_EQ(run_data_beside(cifar, "folder", flat, false).note,
            "the run beside " + cifar + " trained on cifar10, so all of " + flat + " is read");
}

TEST(RunData, WithNoRunBesideAFolderIsSplitAsTrainSplitsIt) {
  const std::string flat = flat_folder("no_run_flat");
  const std::string checkpoint = temp_path("lone") + "/best.safetensors";
  const auto guessed = run_data_beside(checkpoint, "folder", flat, false);
  EXPECT_EQ(guessed.test_split, 0.1);
  EXPECT_NE(guessed.note.find("no training run beside " + checkpoint + " says how " + flat + " was split"),
            std::string::npos)
      << guessed.note;
  const auto chosen = run_data_beside(checkpoint, "folder", flat, false, 0.0);
  EXPECT_EQ(chosen.test_split, 0.0);
  EXPECT_EQ(chosen.note, "") << "the user said";
  EXPECT_EQ(kestrel::testing::expect_message_of([&] { run_data_beside(checkpoint, "folder", "", false); }),
            checkpoint + " was trained on an image folder, and no run config.json beside it names the folder; "
                         "pass --data-dir");
}

TEST(RunData, ASplitIsRefusedWhereThereIsNothingToSplit) {
  const std::string split = temp_path("has_split");
  for (const char* s : {"train/a", "test/a"}) fs::create_directories(split + "/" + s);
  const std::string checkpoint = temp_path("lone2") + "/best.safetensors";
  EXPECT_EQ(kestrel::testing::expect_message_of([&] { run_data_beside(checkpoint, "folder", split, false, 0.2); }),
            "--test-split splits an image folder without train/ and test/; folder at " + split +
                " has its own test set");
  EXPECT_THROW(run_data_beside(checkpoint, "cifar10", "/x", false, 0.2), kestrel::ValueError);
  EXPECT_THROW(run_data_beside(checkpoint, "folder", flat_folder("f"), false, 1.0), kestrel::ValueError);
  EXPECT_EQ(run_data_beside(checkpoint, "folder", split, false).note, "") << "its own split: nothing to say";
  EXPECT_EQ(run_data_beside(checkpoint, "folder", temp_path("not_there"), false, 0.2).test_split, 0.2)
      << "a missing folder is named by whoever opens it";
}
