// Datasets: indexable collections of (u8 HWC image, label) with class names.
//
// Readers (CIFAR-10/100 binary, IDX, image folders) all produce a Dataset.
// Bad input is reported as a one-line IOError naming the file; with
// ReadOptions::skip_bad the reader prints a warning, drops the record and
// counts it in skipped().
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace kestrel::data {

// 8-bit image, rows of pixels, channels interleaved (HWC).
struct Image {
  int h = 0, w = 0, c = 0;
  std::vector<uint8_t> pixels;  // h*w*c
  uint8_t at(int y, int x, int ch) const { return pixels[(static_cast<size_t>(y) * w + x) * c + ch]; }
};

struct Example {
  Image image;
  int64_t label = 0;
};

enum class Split { Train, Test };

struct ReadOptions {
  bool skip_bad = false;                        // warn and count instead of throwing
  int64_t max_pixels = 8192LL * 8192LL;         // per image (w*h)
  int64_t max_file_bytes = 64LL * 1024 * 1024;  // per image file
  bool quiet = false;                           // no warnings on stderr (they are still kept)
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  // Thread-safe: loader workers call it concurrently.
  virtual Example get(int64_t index) const = 0;
  virtual int64_t label(int64_t index) const { return get(index).label; }

  const std::vector<std::string>& classes() const { return classes_; }
  int64_t num_classes() const { return static_cast<int64_t>(classes_.size()); }
  // Records dropped under skip_bad, and one warning line for each.
  int64_t skipped() const { return static_cast<int64_t>(warnings_.size()); }
  const std::vector<std::string>& warnings() const { return warnings_; }
  // Throws IOError(message), or under skip_bad records it as a warning
  // (printed to stderr unless opts.quiet). Readers call it.
  void bad_input(const std::string& message, const ReadOptions& opts);

 protected:
  void check_index(int64_t index) const;

  std::vector<std::string> classes_;
  std::vector<std::string> warnings_;
};

// Fixed-size images held in one buffer (CIFAR, IDX). n x h x w x c, u8.
class ArrayDataset : public Dataset {
 public:
  ArrayDataset(int h, int w, int c, std::vector<std::string> classes);
  int64_t size() const override { return static_cast<int64_t>(labels_.size()); }
  Example get(int64_t index) const override;
  int64_t label(int64_t index) const override;
  int height() const { return h_; }
  int width() const { return w_; }
  int channels() const { return c_; }
  const std::vector<uint8_t>& pixels() const { return pixels_; }
  const std::vector<int64_t>& labels() const { return labels_; }
  // Readers fill the dataset with these.
  void reserve(int64_t n);
  void append(const uint8_t* hwc, int64_t label);

 protected:
  int h_, w_, c_;
  std::vector<uint8_t> pixels_;
  std::vector<int64_t> labels_;
};

// A view of some entries of another dataset (for a seeded train/test split).
class SubsetDataset : public Dataset {
 public:
  SubsetDataset(std::shared_ptr<const Dataset> base, std::vector<int64_t> indices);
  int64_t size() const override { return static_cast<int64_t>(indices_.size()); }
  Example get(int64_t index) const override;
  int64_t label(int64_t index) const override;
  const std::vector<int64_t>& indices() const { return indices_; }

 private:
  std::shared_ptr<const Dataset> base_;
  std::vector<int64_t> indices_;
};

}  // namespace kestrel::data
