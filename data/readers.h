// Readers for the data sets Kestrel trains on. Each returns a Dataset.
//
//   auto train = data::open_cifar10("/data/cifar-10-batches-bin", data::Split::Train);
//   auto test  = data::open_cifar100("/data/cifar-100-binary", data::Split::Test, /*fine=*/true);
//   auto fm    = data::open_fashion_mnist("/usr/share/datasets/fashion-mnist", data::Split::Train);
//   auto imgs  = data::open_image_folder("/data/cifar10-jpeg", data::Split::Train);
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "data/dataset.h"

namespace kestrel::data {

// ---- CIFAR (Krizhevsky 2009), official binary release.
// CIFAR-10: cifar-10-batches-bin/data_batch_{1..5}.bin, test_batch.bin; records
// of 1 label byte + 3072 bytes (R plane, G plane, B plane, 32x32 each).
// CIFAR-100: cifar-100-binary/train.bin, test.bin; records of coarse label
// byte, fine label byte, 3072 bytes.
// `dir` may be the batches directory itself or its parent.
std::shared_ptr<ArrayDataset> open_cifar10(const std::string& dir, Split split, const ReadOptions& opts = {});
std::shared_ptr<ArrayDataset> open_cifar100(const std::string& dir, Split split, bool fine = true,
                                            const ReadOptions& opts = {});
// Explicit files (any number of batch files of one variant).
std::shared_ptr<ArrayDataset> read_cifar_files(const std::vector<std::string>& files, bool cifar100, bool fine,
                                               const ReadOptions& opts = {});
const std::vector<std::string>& cifar10_classes();
const std::vector<std::string>& cifar100_fine_classes();
const std::vector<std::string>& cifar100_coarse_classes();

// ---- IDX (LeCun's MNIST format, also Fashion-MNIST): plain or gzip (detected
// by content). Images: magic 0x00000803, n, rows, cols, u8 pixels. Labels:
// magic 0x00000801, n, u8 labels. Labels must be < classes.size().
std::shared_ptr<ArrayDataset> read_idx(const std::string& images_path, const std::string& labels_path,
                                       std::vector<std::string> classes, const ReadOptions& opts = {});
// Finds {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] in dir.
std::shared_ptr<ArrayDataset> open_fashion_mnist(const std::string& dir, Split split, const ReadOptions& opts = {});
std::shared_ptr<ArrayDataset> open_mnist(const std::string& dir, Split split, const ReadOptions& opts = {});
const std::vector<std::string>& fashion_mnist_classes();

// ---- Image files: the names that training's image folders and `kestrel
// predict` both take, formats stb_image decodes (of a GIF, its first frame).
const std::vector<std::string>& image_extensions();  // "jpg", "jpeg", ... (lower case, no dot)
bool is_image_file_name(const std::string& path);     // by extension, in any case
// Image files in `path` and every folder below it, symlinked folders included
// (a link back up the tree is not followed), sorted by path; `path` itself when
// it is a file. Throws IOError for a missing path or a folder with no images.
std::vector<std::string> list_image_files(const std::string& path);

// ---- Image folders: root/<class>/<image file>; classes are the sorted
// sub-folder names (symlinked folders too), files are taken in sorted order.
struct ImageFolderOptions {
  ReadOptions read;
  int channels = 3;        // decode to this many channels (1 or 3); 0 keeps each file's own
  bool preload = false;    // decode everything up front (fully validates; fast epochs)
  // With preload: preload only when the decoded images, estimated from their
  // count and a sample of their sizes, take at most this many bytes; decode on
  // access otherwise (preloaded() says which). Negative: no limit.
  int64_t preload_limit_bytes = -1;
  // When root has no train/ and test/ sub-folders: the fraction of each class
  // that goes to the test split, chosen with split_seed. 0 = use root whole.
  double test_fraction = 0.0;
  uint64_t split_seed = 0;
  // When root has no train/ and test/: either split is all of root (an
  // evaluation folder the model never trained on). test_fraction must be 0.
  bool whole = false;
};

class ImageFolderDataset : public Dataset {
 public:
  struct Entry {
    std::string path;
    int64_t label;
  };
  // Files are checked up front (size, header, dimensions); when preloaded or
  // under read.skip_bad they are also decoded, so every bad file is found
  // here. Otherwise a file that fails to decode later throws IOError from get().
  ImageFolderDataset(std::vector<Entry> entries, std::vector<std::string> classes, const ImageFolderOptions& opts);
  int64_t size() const override { return static_cast<int64_t>(entries_.size()); }
  Example get(int64_t index) const override;
  int64_t label(int64_t index) const override;
  const std::vector<Entry>& entries() const { return entries_; }
  // Whether the images are held decoded (else decoded by each get()).
  bool preloaded() const { return preloaded_; }
  // The decoded images' size estimated before loading (bytes).
  int64_t estimated_decoded_bytes() const { return estimated_decoded_bytes_; }

 private:
  std::vector<Entry> entries_;
  std::vector<Image> images_;  // when preloaded
  ImageFolderOptions opts_;
  bool preloaded_ = false;
  int64_t estimated_decoded_bytes_ = 0;
};

// Whether root holds train/ and test/ (or val/) sub-folders: its own split.
bool image_folder_has_split(const std::string& root);
// Uses root/train and root/test (or root/val, ImageNet's layout) when both
// exist (they must hold the same class folders, else IOError naming the first
// difference); otherwise root itself, split per class by opts.test_fraction.
// Names starting with a dot are skipped.
std::shared_ptr<ImageFolderDataset> open_image_folder(const std::string& root, Split split,
                                                      const ImageFolderOptions& opts = {});
// Lists root/<class>/* (no decoding). Throws IOError for a missing root, no
// class folders, or an empty class folder (even under skip_bad: the class
// would stay, with nothing to learn it from).
std::vector<ImageFolderDataset::Entry> list_image_folder(const std::string& root, std::vector<std::string>& classes);

// Decodes one image file (jpg/png/bmp/...), checking the file-size and pixel
// limits first. channels 0 keeps the file's own. Throws IOError naming the file.
Image decode_image_file(const std::string& path, int channels, const ReadOptions& opts = {});

}  // namespace kestrel::data
