#include "data/dataset.h"

#include <cstdio>
#include <cstring>

#include "engine/error.h"

namespace kestrel::data {

void Dataset::check_index(int64_t index) const {
  KCHECK(index >= 0 && index < size(), ValueError, "dataset: index ", index, " out of range for a dataset of ",
         size(), " examples");
}

void Dataset::bad_input(const std::string& message, const ReadOptions& opts) {
  if (!opts.skip_bad) throw IOError(message);
  if (!opts.quiet) std::fprintf(stderr, "warning: %s (skipped)\n", message.c_str());
  warnings_.push_back(message);
}

ArrayDataset::ArrayDataset(int h, int w, int c, std::vector<std::string> classes) : h_(h), w_(w), c_(c) {
  classes_ = std::move(classes);
}

void ArrayDataset::reserve(int64_t n) {
  pixels_.reserve(static_cast<size_t>(n) * h_ * w_ * c_);
  labels_.reserve(static_cast<size_t>(n));
}

void ArrayDataset::append(const uint8_t* hwc, int64_t label) {
  pixels_.insert(pixels_.end(), hwc, hwc + static_cast<size_t>(h_) * w_ * c_);
  labels_.push_back(label);
}

Example ArrayDataset::get(int64_t index) const {
  check_index(index);
  Example ex;
  ex.image.h = h_;
  ex.image.w = w_;
  ex.image.c = c_;
  const size_t n = static_cast<size_t>(h_) * w_ * c_;
  ex.image.pixels.assign(pixels_.begin() + static_cast<ptrdiff_t>(n * index),
                         pixels_.begin() + static_cast<ptrdiff_t>(n * (index + 1)));
  ex.label = labels_[static_cast<size_t>(index)];
  return ex;
}

int64_t ArrayDataset::label(int64_t index) const {
  check_index(index);
  return labels_[static_cast<size_t>(index)];
}

SubsetDataset::SubsetDataset(std::shared_ptr<const Dataset> base, std::vector<int64_t> indices)
    : base_(std::move(base)), indices_(std::move(indices)) {
  KCHECK(base_ != nullptr, ValueError, "SubsetDataset: no base dataset");
  for (int64_t i : indices_)
    KCHECK(i >= 0 && i < base_->size(), ValueError, "SubsetDataset: index ", i, " out of range for a dataset of ",
           base_->size(), " examples");
  classes_ = base_->classes();
}

Example SubsetDataset::get(int64_t index) const {
  check_index(index);
  return base_->get(indices_[static_cast<size_t>(index)]);
}

int64_t SubsetDataset::label(int64_t index) const {
  check_index(index);
  return base_->label(indices_[static_cast<size_t>(index)]);
}

}  // namespace kestrel::data
