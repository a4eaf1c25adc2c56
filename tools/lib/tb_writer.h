// Writes TensorBoard event files (scalars) so `tensorboard --logdir` shows curves.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>

namespace kestrel::tools {

class TensorBoardWriter {
 public:
  explicit TensorBoardWriter(const std::string& dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;
  void add_scalar(const std::string& tag, double value, int64_t step);
  // A resumed run logs again from `step`: TensorBoard then hides what an
  // earlier event file holds at that step and later (a SessionLog START, as
  // PyTorch's SummaryWriter(purge_step=...) writes), so an epoch logged just
  // before a kill and logged again after --resume shows once.
  void restart_at(int64_t step);
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& data);
  std::string path_;
  FILE* file_ = nullptr;
};

uint32_t crc32c(const uint8_t* data, size_t n);

}  // namespace kestrel::tools
