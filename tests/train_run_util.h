// Helpers for tests that run whole training jobs (tools::train): the small
// pattern-folder run, the kill-then-resume sequence, and checkpoint comparison.
#pragma once
#include <cstdint>
#include <string>

#include "tools/lib/checkpoint.h"
#include "tools/lib/train_config.h"

namespace kestrel::testing {

// Where the Debian package dataset-fashion-mnist puts the IDX files.
extern const char* const kFashionMnistDir;
// Empty when Fashion-MNIST is there, else the reason to skip, saying how to get it.
std::string fashion_mnist_skip_reason();

// cifar10_200k on the first 1024 Fashion-MNIST training images (500 test),
// 2 epochs of batch 64 at lr 0.05 with half an epoch of warmup, on the CPU
// (these runs pin down the CPU path, bit for bit, on any machine), one worker,
// no progress bar, out = temp_path(name), overwriting.
tools::TrainConfig fashion_mnist_config(const std::string& name);

// What a checkpoint of `model` trained on Fashion-MNIST records: 10 classes of
// 1x28x28 images, the CIFAR stem, the data set's normalization.
tools::ModelInfo fashion_mnist_model_info(const std::string& model);

// cifar10_200k on a write_pattern_folder_dataset folder: 2 epochs of batch 6
// (6 steps each), SGD at lr 0.05 clipped at 2, no dropout, one worker, no
// progress bar, out = temp_path(out), overwriting.
tools::TrainConfig pattern_folder_config(const std::string& data, const std::string& out, const std::string& device);

// Runs `full` under `killed_out` (a temp_path name) until it stops after
// `stop_after_steps` optimizer steps (expected not to complete), then resumes
// it there, on `resume_device` when not empty. Returns the run folder, whose
// last.safetensors a caller compares with the uninterrupted run's.
std::string kill_then_resume(const tools::TrainConfig& full, const std::string& killed_out, int64_t stop_after_steps,
                             const std::string& resume_device = "");

// Trains `c` at a learning rate of 1e12 (no clipping, no warmup), so the loss
// goes inf or nan after the first update, and expects the run to stop with
// "training diverged: loss is ... at epoch 1 batch N".
void expect_run_diverges(tools::TrainConfig c);

// Every tensor of checkpoint b equals a's (same names, same order): floating
// ones within atol + rtol * |a| (0, 0: bit for bit), the rest exactly.
void expect_checkpoints_match(const std::string& a_path, const std::string& b_path, double atol, double rtol,
                              const std::string& what);

}  // namespace kestrel::testing
