// Data layer: readers on files written here in the official formats, the
// errors for bad input, transforms on hand-made images, and the loader's
// determinism.
#include <stb_image_write.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <functional>
#include <set>

#include "data/loader.h"
#include "data/readers.h"
#include "data/transforms.h"
#include "test_util.h"
#include "tools/lib/datasets.h"

using namespace kestrel;
using namespace kestrel::data;
namespace fs = std::filesystem;

namespace {

std::string fresh_dir(const std::string& name) {
  const std::string dir = kestrel::testing::temp_path(name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

void truncate_file(const std::string& path, size_t size) { fs::resize_file(path, size); }

// The pixel value a CIFAR test record carries at (plane ch, position p).
uint8_t cifar_px(int record, int ch, int p) { return static_cast<uint8_t>((record * 7 + ch * 50 + p) % 256); }

// A CIFAR file of records with the given label bytes (1 for CIFAR-10, 2 for CIFAR-100).
std::vector<uint8_t> cifar_records(const std::vector<std::vector<uint8_t>>& labels, int first_record = 0) {
  std::vector<uint8_t> out;
  for (size_t r = 0; r < labels.size(); ++r) {
    out.insert(out.end(), labels[r].begin(), labels[r].end());
    for (int ch = 0; ch < 3; ++ch)
      for (int p = 0; p < 1024; ++p) out.push_back(cifar_px(first_record + static_cast<int>(r), ch, p));
  }
  return out;
}

std::vector<uint8_t> be32(uint32_t v) {
  return {static_cast<uint8_t>(v >> 24), static_cast<uint8_t>(v >> 16), static_cast<uint8_t>(v >> 8),
          static_cast<uint8_t>(v)};
}

std::vector<uint8_t> idx_images(int n, int rows, int cols) {
  std::vector<uint8_t> out = be32(0x00000803);
  for (uint32_t v : {static_cast<uint32_t>(n), static_cast<uint32_t>(rows), static_cast<uint32_t>(cols)}) {
    auto b = be32(v);
    out.insert(out.end(), b.begin(), b.end());
  }
  for (int i = 0; i < n * rows * cols; ++i) out.push_back(static_cast<uint8_t>((i * 3) % 256));
  return out;
}

std::vector<uint8_t> idx_labels(const std::vector<uint8_t>& labels) {
  std::vector<uint8_t> out = be32(0x00000801);
  auto b = be32(static_cast<uint32_t>(labels.size()));
  out.insert(out.end(), b.begin(), b.end());
  out.insert(out.end(), labels.begin(), labels.end());
  return out;
}

void write_gz(const std::string& path, const std::vector<uint8_t>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
  gzclose(f);
}

// 24-bit uncompressed BMP, written by hand: bottom-up rows of BGR, padded to 4 bytes.
void write_bmp(const std::string& path, int w, int h, const std::vector<uint8_t>& rgb) {
  const int stride = (w * 3 + 3) / 4 * 4;
  const uint32_t data_size = static_cast<uint32_t>(stride * h), file_size = 54 + data_size;
  std::vector<uint8_t> b(file_size, 0);
  auto le32 = [&](size_t at, uint32_t v) {
    for (int k = 0; k < 4; ++k) b[at + k] = static_cast<uint8_t>(v >> (8 * k));
  };
  b[0] = 'B';
  b[1] = 'M';
  le32(2, file_size);
  le32(10, 54);
  le32(14, 40);
  le32(18, static_cast<uint32_t>(w));
  le32(22, static_cast<uint32_t>(h));
  b[26] = 1;
  b[28] = 24;
  le32(34, data_size);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int ch = 0; ch < 3; ++ch)
        b[54 + static_cast<size_t>(h - 1 - y) * stride + x * 3 + (2 - ch)] = rgb[(static_cast<size_t>(y) * w + x) * 3 + ch];
  write_bytes(path, b);
}

std::vector<uint8_t> pattern_rgb(int w, int h, int seed) {
  std::vector<uint8_t> px(static_cast<size_t>(w) * h * 3);
  for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<uint8_t>((i * 13 + seed * 31) % 256);
  return px;
}

void write_png(const std::string& path, int w, int h, const std::vector<uint8_t>& rgb) {
  fs::create_directories(fs::path(path).parent_path());
  ASSERT_NE(stbi_write_png(path.c_str(), w, h, 3, rgb.data(), w * 3), 0) << path;
}

// Expects `f` to throw IOError whose message mentions `needle` (a path).
template <typename F>
void expect_io_error(F f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected an IOError naming " << needle;
  } catch (const IOError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(needle), std::string::npos) << "message: " << msg << "\n does not name " << needle;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message is not one line: " << msg;
  }
}

FImage ramp(int h, int w, int c) {
  FImage img(h, w, c);
  for (size_t i = 0; i < img.data.size(); ++i) img.data[i] = static_cast<float>(i % 97) / 96.0f;
  return img;
}

ReadOptions skipping() {
  ReadOptions o;
  o.skip_bad = true;
  o.quiet = true;
  return o;
}

}  // namespace

// ====================================================================== CIFAR

TEST(Cifar10, ReadsTheOfficialBinaryLayoutAsHWC) {
  const std::string root = fresh_dir("cifar10_ok");
  const std::string dir = root + "/cifar-10-batches-bin";
  for (int b = 1; b <= 5; ++b)
    write_bytes(dir + "/data_batch_" + std::to_string(b) + ".bin", cifar_records({{uint8_t(b)}, {uint8_t(9)}}, 2 * (b - 1)));
  write_bytes(dir + "/test_batch.bin", cifar_records({{3}, {0}, {7}}));
  for (const std::string& path : {root, dir}) {  // the parent or the batches directory
    auto train = open_cifar10(path, Split::Train);
    ASSERT_EQ(train->size(), 10);
    EXPECT_EQ(train->num_classes(), 10);
    EXPECT_EQ(train->classes()[0], "airplane");
    EXPECT_EQ(train->label(0), 1);
    EXPECT_EQ(train->label(1), 9);
    EXPECT_EQ(train->label(8), 5);
    const Example ex = train->get(4);  // record 0 of data_batch_3
    ASSERT_EQ(ex.image.h, 32);
    ASSERT_EQ(ex.image.w, 32);
    ASSERT_EQ(ex.image.c, 3);
    for (int y : {0, 5, 31})
      for (int x : {0, 17, 31})
        for (int ch = 0; ch < 3; ++ch) EXPECT_EQ(ex.image.at(y, x, ch), cifar_px(4, ch, y * 32 + x));
  }
  auto test = open_cifar10(root, Split::Test);
  EXPECT_EQ(test->size(), 3);
  EXPECT_EQ(test->labels(), (std::vector<int64_t>{3, 0, 7}));
  EXPECT_EQ(test->skipped(), 0);
}

TEST(Cifar100, ReadsFineOrCoarseLabels) {
  const std::string root = fresh_dir("cifar100_ok");
  const std::string dir = root + "/cifar-100-binary";
  write_bytes(dir + "/train.bin", cifar_records({{4, 99}, {19, 0}}));
  write_bytes(dir + "/test.bin", cifar_records({{11, 42}}));
  auto fine = open_cifar100(root, Split::Train, true);
  auto coarse = open_cifar100(root, Split::Train, false);
  EXPECT_EQ(fine->num_classes(), 100);
  EXPECT_EQ(coarse->num_classes(), 20);
  EXPECT_EQ(fine->labels(), (std::vector<int64_t>{99, 0}));
  EXPECT_EQ(coarse->labels(), (std::vector<int64_t>{4, 19}));
  EXPECT_EQ(fine->classes()[99], "worm");
  EXPECT_EQ(coarse->classes()[19], "vehicles_2");
  EXPECT_EQ(fine->get(1).image.at(2, 3, 1), cifar_px(1, 1, 2 * 32 + 3));
  EXPECT_EQ(open_cifar100(dir, Split::Test)->label(0), 42);
}

TEST(Cifar, TruncatedFileIsAnIOErrorNamingTheFileOrSkipsThePartialRecord) {
  const std::string dir = fresh_dir("cifar_trunc");
  const std::string file = dir + "/test_batch.bin";
  write_bytes(file, cifar_records({{1}, {2}, {3}}));
  truncate_file(file, 2 * 3073 + 100);
  expect_io_error([&] { open_cifar10(dir, Split::Test); }, file);
  auto ds = open_cifar10(dir, Split::Test, skipping());
  EXPECT_EQ(ds->size(), 2);
  EXPECT_EQ(ds->skipped(), 1);
  EXPECT_NE(ds->warnings()[0].find("truncated"), std::string::npos) << ds->warnings()[0];
}

TEST(Cifar, LabelOutOfRangeIsAnIOErrorOrSkipped) {
  const std::string dir = fresh_dir("cifar_label");
  write_bytes(dir + "/test_batch.bin", cifar_records({{1}, {10}, {3}, {200}}));
  expect_io_error([&] { open_cifar10(dir, Split::Test); }, dir + "/test_batch.bin");
  auto ds = open_cifar10(dir, Split::Test, skipping());
  EXPECT_EQ(ds->labels(), (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(ds->skipped(), 2);
  // The kept records keep their own pixels.
  EXPECT_EQ(ds->get(1).image.at(0, 1, 2), cifar_px(2, 2, 1));

  const std::string dir100 = fresh_dir("cifar100_label");
  write_bytes(dir100 + "/test.bin", cifar_records({{20, 5}}));
  EXPECT_EQ(open_cifar100(dir100, Split::Test, true)->label(0), 5);  // fine label fine
  expect_io_error([&] { open_cifar100(dir100, Split::Test, false); }, dir100 + "/test.bin");  // coarse 20 is not
}

TEST(Cifar, MissingDirectoryOrBatchIsAnIOErrorNamingThePath) {
  expect_io_error([] { open_cifar10("/nonexistent/kestrel/cifar", Split::Train); }, "/nonexistent/kestrel/cifar");
  const std::string dir = fresh_dir("cifar_missing_batch");
  write_bytes(dir + "/test_batch.bin", cifar_records({{1}}));
  expect_io_error([&] { open_cifar10(dir, Split::Train); }, dir + "/data_batch_1.bin");
}

// ====================================================================== IDX

TEST(Idx, ReadsPlainAndGzipFilesAlike) {
  const std::string dir = fresh_dir("idx_ok");
  const std::vector<uint8_t> images = idx_images(5, 4, 3);
  const std::vector<uint8_t> labels = idx_labels({0, 9, 3, 3, 7});
  write_bytes(dir + "/plain/t10k-images-idx3-ubyte", images);
  write_bytes(dir + "/plain/t10k-labels-idx1-ubyte", labels);
  fs::create_directories(dir + "/gz");
  write_gz(dir + "/gz/t10k-images-idx3-ubyte.gz", images);
  write_gz(dir + "/gz/t10k-labels-idx1-ubyte.gz", labels);
  auto plain = open_fashion_mnist(dir + "/plain", Split::Test);
  auto gz = open_fashion_mnist(dir + "/gz", Split::Test);
  for (const auto& ds : {plain, gz}) {
    ASSERT_EQ(ds->size(), 5);
    EXPECT_EQ(ds->labels(), (std::vector<int64_t>{0, 9, 3, 3, 7}));
    const Example ex = ds->get(2);
    EXPECT_EQ(ex.image.h, 4);
    EXPECT_EQ(ex.image.w, 3);
    EXPECT_EQ(ex.image.c, 1);
    EXPECT_EQ(ex.image.at(1, 2, 0), static_cast<uint8_t>(((2 * 12 + 1 * 3 + 2) * 3) % 256));
    EXPECT_EQ(ds->classes()[9], "Ankle boot");
  }
  EXPECT_EQ(plain->pixels(), gz->pixels());
}

TEST(Idx, BadMagicTruncationAndCountMismatchAreIOErrors) {
  const std::string dir = fresh_dir("idx_bad");
  const std::string img = dir + "/images", lab = dir + "/labels";
  write_bytes(img, idx_images(4, 2, 2));
  write_bytes(lab, idx_labels({1, 2, 3, 4}));
  EXPECT_EQ(read_idx(img, lab, fashion_mnist_classes())->size(), 4);
  expect_io_error([&] { read_idx(lab, lab, fashion_mnist_classes()); }, lab);  // wrong magic for images

  truncate_file(img, 16 + 4 * 3 + 1);  // 3 whole images and a bit
  expect_io_error([&] { read_idx(img, lab, fashion_mnist_classes()); }, img);
  auto ds = read_idx(img, lab, fashion_mnist_classes(), skipping());
  EXPECT_EQ(ds->size(), 3);
  EXPECT_GE(ds->skipped(), 1);

  // A gzip stream cut short.
  const std::string gz = dir + "/images.gz";
  write_gz(gz, idx_images(200, 28, 28));
  truncate_file(gz, fs::file_size(gz) / 2);
  expect_io_error([&] { read_idx(gz, lab, fashion_mnist_classes()); }, gz);

  expect_io_error([&] { read_idx(dir + "/nope", lab, fashion_mnist_classes()); }, dir + "/nope");
  expect_io_error([&] { open_fashion_mnist(dir + "/nowhere", Split::Train); }, dir + "/nowhere");
}

TEST(Idx, LabelOutOfRangeIsAnIOErrorOrSkipped) {
  const std::string dir = fresh_dir("idx_label");
  write_bytes(dir + "/images", idx_images(3, 2, 2));
  write_bytes(dir + "/labels", idx_labels({1, 12, 4}));
  expect_io_error([&] { read_idx(dir + "/images", dir + "/labels", fashion_mnist_classes()); }, dir + "/labels");
  auto ds = read_idx(dir + "/images", dir + "/labels", fashion_mnist_classes(), skipping());
  EXPECT_EQ(ds->labels(), (std::vector<int64_t>{1, 4}));
  EXPECT_EQ(ds->skipped(), 1);
}

TEST(FashionMnist, RealTestSetLoadsWhenInstalled) {
  const std::string dir = "/usr/share/datasets/fashion-mnist";
  if (!fs::exists(dir + "/t10k-images-idx3-ubyte.gz"))
    GTEST_SKIP() << dir << " not present (Debian package dataset-fashion-mnist)";
  auto ds = open_fashion_mnist(dir, Split::Test);
  ASSERT_EQ(ds->size(), 10000);
  EXPECT_EQ(ds->height(), 28);
  EXPECT_EQ(ds->width(), 28);
  EXPECT_EQ(ds->channels(), 1);
  std::vector<int64_t> counts(10, 0);
  for (int64_t y : ds->labels()) ++counts[static_cast<size_t>(y)];
  for (int64_t c : counts) EXPECT_EQ(c, 1000);  // balanced test set
  EXPECT_EQ(ds->skipped(), 0);
}

// ====================================================================== image folders

TEST(ImageFolder, ReadsPngAndBmpWithSortedClassNames) {
  const std::string root = fresh_dir("folder_ok");
  write_png(root + "/train/dog/a.png", 5, 4, pattern_rgb(5, 4, 1));
  write_bmp(root + "/train/dog/b.bmp", 5, 4, pattern_rgb(5, 4, 2));
  write_bmp(root + "/train/cat/z.BMP", 5, 4, pattern_rgb(5, 4, 3));
  write_bytes(root + "/train/cat/notes.txt", {'h', 'i'});  // ignored: not an image name
  write_png(root + "/test/cat/c.png", 5, 4, pattern_rgb(5, 4, 4));
  write_png(root + "/test/dog/d.png", 5, 4, pattern_rgb(5, 4, 5));
  for (bool preload : {false, true}) {
    ImageFolderOptions opts;
    opts.preload = preload;
    auto train = open_image_folder(root, Split::Train, opts);
    ASSERT_EQ(train->size(), 3);
    EXPECT_EQ(train->classes(), (std::vector<std::string>{"cat", "dog"}));
    EXPECT_EQ(train->label(0), 0);
    EXPECT_EQ(train->label(1), 1);
    for (int i = 0; i < 3; ++i) {
      const int seed = i == 0 ? 3 : i;  // cat/z, dog/a, dog/b
      const Example ex = train->get(i);
      ASSERT_EQ(ex.image.h, 4);
      ASSERT_EQ(ex.image.w, 5);
      ASSERT_EQ(ex.image.c, 3);
      EXPECT_EQ(ex.image.pixels, pattern_rgb(5, 4, seed)) << train->entries()[static_cast<size_t>(i)].path;
    }
    EXPECT_EQ(open_image_folder(root, Split::Test, opts)->size(), 2);
  }
  ImageFolderOptions grey;
  grey.channels = 1;
  EXPECT_EQ(open_image_folder(root, Split::Test, grey)->get(0).image.c, 1);
}

TEST(ImageFolder, SplitFractionIsSeededPerClassAndDisjoint) {
  const std::string root = fresh_dir("folder_split");
  for (int k = 0; k < 10; ++k) {
    write_bmp(root + "/a/" + std::to_string(k) + ".bmp", 2, 2, pattern_rgb(2, 2, k));
    write_bmp(root + "/b/" + std::to_string(k) + ".bmp", 2, 2, pattern_rgb(2, 2, k));
  }
  ImageFolderOptions opts;
  opts.test_fraction = 0.3;
  opts.split_seed = 5;
  auto train = open_image_folder(root, Split::Train, opts);
  auto test = open_image_folder(root, Split::Test, opts);
  EXPECT_EQ(train->size(), 14);
  EXPECT_EQ(test->size(), 6);
  std::set<std::string> seen;
  for (const auto& e : train->entries()) seen.insert(e.path);
  for (const auto& e : test->entries()) EXPECT_TRUE(seen.insert(e.path).second) << e.path << " in both splits";
  EXPECT_EQ(seen.size(), 20u);
  int test_a = 0;
  for (const auto& e : test->entries()) test_a += e.label == 0;
  EXPECT_EQ(test_a, 3);
  auto again = open_image_folder(root, Split::Test, opts);
  for (int64_t i = 0; i < test->size(); ++i) EXPECT_EQ(again->entries()[i].path, test->entries()[i].path);
  opts.split_seed = 6;
  auto other = open_image_folder(root, Split::Test, opts);
  bool differs = false;
  for (int64_t i = 0; i < test->size(); ++i) differs |= other->entries()[i].path != test->entries()[i].path;
  EXPECT_TRUE(differs) << "split seed 5 and 6 chose the same files";
  opts.test_fraction = 0.0;
  EXPECT_THROW(open_image_folder(root, Split::Test, opts), ValueError);  // no test/ and no fraction
  opts.whole = true;  // an evaluation folder: all of it
  EXPECT_EQ(open_image_folder(root, Split::Test, opts)->size(), 20);
  opts.test_fraction = 0.3;
  EXPECT_THROW(open_image_folder(root, Split::Test, opts), ValueError);  // whole and split at once
}

TEST(ImageFolder, BadInputsAreIOErrorsNamingTheFileOrWarnedAndCounted) {
  const std::string root = fresh_dir("folder_bad");
  ImageFolderOptions strict;
  strict.preload = true;
  expect_io_error([&] { open_image_folder(root + "/missing", Split::Train, strict); }, root + "/missing");

  write_png(root + "/cls/good.png", 4, 4, pattern_rgb(4, 4, 1));
  fs::create_directories(root + "/empty_class");
  expect_io_error([&] { open_image_folder(root, Split::Train, strict); }, root + "/empty_class");
  fs::remove_all(root + "/empty_class");

  struct Case {
    std::string name;
    std::function<void(const std::string&)> make;
  };
  const std::vector<Case> cases = {
      {"corrupt.jpg", [](const std::string& p) { write_bytes(p, {'n', 'o', 't', ' ', 'a', 'n', ' ', 'i', 'm', 'g'}); }},
      {"truncated.png",
       [](const std::string& p) {
         write_png(p, 16, 16, pattern_rgb(16, 16, 7));
         truncate_file(p, fs::file_size(p) / 2);
       }},
      {"truncated.bmp",
       [](const std::string& p) {
         write_bmp(p, 8, 8, pattern_rgb(8, 8, 7));
         truncate_file(p, 54 + 40);
       }},
      {"huge.bmp",  // a header claiming 10000x10000 pixels, over the 8192x8192 limit
       [](const std::string& p) {
         write_bmp(p, 2, 2, pattern_rgb(2, 2, 7));
         std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
         const uint8_t dim[4] = {0x10, 0x27, 0, 0};  // 10000 little-endian
         f.seekp(18);
         f.write(reinterpret_cast<const char*>(dim), 4);
         f.write(reinterpret_cast<const char*>(dim), 4);
       }},
  };
  for (const Case& c : cases) {
    const std::string path = root + "/cls/" + c.name;
    c.make(path);
    expect_io_error([&] { open_image_folder(root, Split::Train, strict); }, path);
    fs::remove(path);
  }
  // All at once under skip_bad: each bad file warned and counted, the good one kept.
  for (const Case& c : cases) c.make(root + "/cls/" + c.name);
  ImageFolderOptions lenient = strict;
  lenient.read = skipping();
  auto ds = open_image_folder(root, Split::Train, lenient);
  EXPECT_EQ(ds->size(), 1);
  EXPECT_EQ(ds->skipped(), static_cast<int64_t>(cases.size()));
  EXPECT_EQ(ds->entries()[0].path, root + "/cls/good.png");
  // An empty class folder is not skipped: it would stay a class no image teaches.
  fs::create_directories(root + "/empty_class");
  expect_io_error([&] { open_image_folder(root, Split::Train, lenient); }, root + "/empty_class");

  // A file over the byte limit (here set low).
  ImageFolderOptions small = strict;
  small.read.max_file_bytes = 20;
  fs::remove_all(root + "/empty_class");
  for (const Case& c : cases) fs::remove(root + "/cls/" + c.name);
  expect_io_error([&] { open_image_folder(root, Split::Train, small); }, root + "/cls/good.png");
}

// Hidden entries (.ipynb_checkpoints, macOS ._ files) are no data; val/ is
// a test split (ImageNet's layout); a train/ alone, or a split that comes out
// empty, is a one-line error.
TEST(ImageFolder, LayoutsHiddenEntriesAndEmptySplits) {
  const std::string root = fresh_dir("folder_layouts");
  for (const std::string split : {"train", "val"})
    for (const std::string cls : {"a", "b"}) write_png(root + "/" + split + "/" + cls + "/1.png", 4, 4, pattern_rgb(4, 4, 3));
  fs::create_directories(root + "/train/.ipynb_checkpoints");
  write_bytes(root + "/train/a/._1.png", {'m', 'a', 'c'});
  ImageFolderOptions o;
  auto train = open_image_folder(root, Split::Train, o);
  auto test = open_image_folder(root, Split::Test, o);
  EXPECT_EQ(train->classes(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(train->size(), 2);
  EXPECT_EQ(test->size(), 2);
  EXPECT_EQ(test->entries()[0].path, root + "/val/a/1.png");
  EXPECT_EQ(list_image_files(root + "/train"), (std::vector<std::string>{root + "/train/a/1.png", root + "/train/b/1.png"}));

  fs::remove_all(root + "/val");
  expect_io_error([&] { open_image_folder(root, Split::Train, o); }, "has train/ but no test/ (or val/)");

  const std::string flat = fresh_dir("folder_flat_small");
  for (const std::string cls : {"a", "b"}) write_png(flat + "/" + cls + "/1.png", 4, 4, pattern_rgb(4, 4, 3));
  o.test_fraction = 0.1;  // round(0.1 * 1) = 0 test images per class
  expect_io_error([&] { open_image_folder(flat, Split::Test, o); }, "10% test split of 2 images in 2 classes is empty");
}

TEST(ImageFolder, WithoutPreloadADecodeFailureSurfacesFromGet) {
  const std::string root = fresh_dir("folder_lazy");
  write_png(root + "/cls/t.png", 16, 16, pattern_rgb(16, 16, 7));
  truncate_file(root + "/cls/t.png", fs::file_size(root + "/cls/t.png") - 30);  // header intact
  auto ds = open_image_folder(root, Split::Train, {});
  ASSERT_EQ(ds->size(), 1);
  expect_io_error([&] { ds->get(0); }, root + "/cls/t.png");
}

TEST(ImageFolder, SplitsWithDifferentClassFoldersAreAnErrorNamingTheClass) {
  // Labels are positions in each split's sorted class list: a class missing
  // from one split would shift every label after it.
  const std::string root = fresh_dir("folder_classes");
  for (const char* c : {"airplane", "bird", "cat"})
    write_png(root + "/train/" + c + "/0.png", 4, 4, pattern_rgb(4, 4, 1));
  for (const char* c : {"bird", "cat"}) write_png(root + "/test/" + c + "/0.png", 4, 4, pattern_rgb(4, 4, 2));
  for (Split split : {Split::Train, Split::Test})
    expect_io_error([&] { open_image_folder(root, split); }, "test/ lacks class 'airplane' that train/ has");
  write_png(root + "/test/airplane/0.png", 4, 4, pattern_rgb(4, 4, 3));
  write_png(root + "/test/dog/0.png", 4, 4, pattern_rgb(4, 4, 4));
  expect_io_error([&] { open_image_folder(root, Split::Train); }, "test/ has class 'dog' that train/ lacks");
  fs::rename(root + "/test/dog", root + "/test/cow");  // as many classes, one name differs
  fs::remove_all(root + "/test/cat");
  expect_io_error([&] { open_image_folder(root, Split::Test); }, "test/ lacks class 'cat' that train/ has");
  fs::rename(root + "/test/cow", root + "/test/cat");
  EXPECT_EQ(open_image_folder(root, Split::Test)->classes(), open_image_folder(root, Split::Train)->classes());
}

TEST(ImageFiles, TrainingAndPredictTakeTheSameFormatsAndFollowSymlinkedFolders) {
  for (const std::string& ext : image_extensions()) {
    std::string upper = ext;
    for (char& ch : upper) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    EXPECT_TRUE(is_image_file_name("dir/a." + ext)) << ext;
    EXPECT_TRUE(is_image_file_name("dir/a." + upper)) << upper;
  }
  for (const char* name : {"notes.txt", "gif", "a.jpg.bak", "png/readme"})
    EXPECT_FALSE(is_image_file_name(name)) << name;

  // train/cat holds one image of each format stb_image reads beyond jpg/png/bmp;
  // train/dog is a symlink to a folder elsewhere.
  const std::string root = fresh_dir("image_files"), elsewhere = fresh_dir("image_files_elsewhere");
  write_png(root + "/train/cat/a.png", 2, 2, pattern_rgb(2, 2, 1));
  std::vector<uint8_t> ppm = {'P', '6', '\n', '2', ' ', '2', '\n', '2', '5', '5', '\n'};
  for (uint8_t v : pattern_rgb(2, 2, 2)) ppm.push_back(v);
  write_bytes(root + "/train/cat/b.ppm", ppm);
  ASSERT_NE(stbi_write_tga((root + "/train/cat/c.tga").c_str(), 2, 2, 3, pattern_rgb(2, 2, 3).data()), 0);
  write_bytes(root + "/train/cat/d.gif",  // the classic 1x1 GIF89a
              {0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0xFF, 0xFF,
               0xFF, 0x00, 0x00, 0x00, 0x21, 0xF9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2C, 0x00, 0x00,
               0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3B});
  write_png(elsewhere + "/dogs/e.png", 2, 2, pattern_rgb(2, 2, 5));
  fs::create_directory_symlink(elsewhere + "/dogs", root + "/train/dog");
  fs::create_directory_symlink(root + "/train", root + "/train/cat/loop");  // a link back up: not followed
  for (const char* c : {"cat", "dog"}) write_png(root + "/test/" + c + "/0.png", 2, 2, pattern_rgb(2, 2, 6));

  ImageFolderOptions opts;
  opts.preload = true;
  auto train = open_image_folder(root, Split::Train, opts);
  ASSERT_EQ(train->size(), 5) << "4 images of cat (png, ppm, tga, gif) and dog's through the link";
  EXPECT_EQ(train->skipped(), 0);
  EXPECT_EQ(train->entries()[4].path, root + "/train/dog/e.png");
  EXPECT_EQ(train->get(2).image.pixels, pattern_rgb(2, 2, 3)) << "the TGA";
  EXPECT_EQ(train->get(3).image.h, 1) << "the GIF";

  const std::vector<std::string> listed = list_image_files(root + "/train");
  std::vector<std::string> expected;
  for (const auto& e : train->entries()) expected.push_back(e.path);
  EXPECT_EQ(listed, expected) << "predict lists what training takes";
  EXPECT_EQ(list_image_files(root + "/train/cat/a.png"), std::vector<std::string>{root + "/train/cat/a.png"});
  expect_io_error([&] { list_image_files(root + "/none"); }, root + "/none");
  fs::create_directories(root + "/empty");
  expect_io_error([&] { list_image_files(root + "/empty"); }, "no images in it (jpg, jpeg, png, bmp, gif, tga, ppm");
}

TEST(ImageFolder, PreloadsOnlyWithinItsLimitAndOtherwiseDecodesEachGet) {
  const std::string root = fresh_dir("folder_limit");
  for (int k = 0; k < 4; ++k) write_png(root + "/cls/" + std::to_string(k) + ".png", 8, 6, pattern_rgb(8, 6, k));
  ImageFolderOptions opts;
  opts.preload = true;
  opts.preload_limit_bytes = 4 * 8 * 6 * 3;  // exactly the decoded size
  auto fits = open_image_folder(root, Split::Train, opts);
  EXPECT_TRUE(fits->preloaded());
  EXPECT_EQ(fits->estimated_decoded_bytes(), 4 * 8 * 6 * 3);
  opts.preload_limit_bytes -= 1;
  auto over = open_image_folder(root, Split::Train, opts);
  EXPECT_FALSE(over->preloaded());
  ASSERT_EQ(over->size(), 4);
  for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(over->get(i).image.pixels, fits->get(i).image.pixels) << i;
  opts.channels = 1;  // the estimate counts the channels decoded to
  EXPECT_EQ(open_image_folder(root, Split::Train, opts)->estimated_decoded_bytes(), 4 * 8 * 6);
}

TEST(ImageFolder, DecodedOnAccessUnderSkipBadABadFileIsSkippedUpFront) {
  // The header of t.png is whole, so only decoding finds the damage; under
  // skip_bad that must happen here, since get() cannot skip a file.
  const std::string root = fresh_dir("folder_lazy_skip");
  write_png(root + "/cls/good.png", 16, 16, pattern_rgb(16, 16, 1));
  write_png(root + "/cls/t.png", 16, 16, pattern_rgb(16, 16, 7));
  truncate_file(root + "/cls/t.png", fs::file_size(root + "/cls/t.png") - 30);
  ImageFolderOptions opts;
  opts.preload = true;
  opts.preload_limit_bytes = 0;
  opts.read = skipping();
  auto ds = open_image_folder(root, Split::Train, opts);
  EXPECT_FALSE(ds->preloaded());
  ASSERT_EQ(ds->size(), 1);
  EXPECT_EQ(ds->skipped(), 1);
  EXPECT_NE(ds->warnings()[0].find(root + "/cls/t.png"), std::string::npos) << ds->warnings()[0];
  EXPECT_EQ(ds->get(0).image.pixels, pattern_rgb(16, 16, 1));
}

TEST(ImageFolder, OpenDatasetPreloadsUnlessOverTheLimitInTheEnvironment) {
  const std::string root = fresh_dir("folder_env_limit");
  for (const char* split : {"train", "test"})
    for (const char* c : {"a", "b"}) write_png(root + "/" + split + "/" + c + "/0.png", 4, 4, pattern_rgb(4, 4, 1));
  const char* saved = std::getenv("KESTREL_PRELOAD_LIMIT_MB");
  const std::string saved_value = saved ? saved : "";
  auto open = [&] {
    auto ds = std::dynamic_pointer_cast<const ImageFolderDataset>(
        tools::open_dataset("folder", root, Split::Train, false, 0));
    EXPECT_NE(ds, nullptr);
    return ds;
  };
  setenv("KESTREL_PRELOAD_LIMIT_MB", "0", 1);
  EXPECT_FALSE(open()->preloaded());
  setenv("KESTREL_PRELOAD_LIMIT_MB", "1", 1);
  EXPECT_TRUE(open()->preloaded());
  setenv("KESTREL_PRELOAD_LIMIT_MB", "lots", 1);
  EXPECT_THROW(open(), ValueError);
  unsetenv("KESTREL_PRELOAD_LIMIT_MB");
  const int64_t limit = tools::image_preload_limit_bytes();
  EXPECT_GT(limit, 0);
  EXPECT_LE(limit, int64_t{2} << 30);
  EXPECT_TRUE(open()->preloaded());
  if (saved) setenv("KESTREL_PRELOAD_LIMIT_MB", saved_value.c_str(), 1);
}

TEST(ImageFolder, RealCifar10JpegFoldersLoadWhenPresent) {
  const std::string archive = kestrel::testing::source_path("../shared/data/cifar10-jpeg.tar.xz");
  if (!fs::exists(archive)) GTEST_SKIP() << archive << " not present; skipping the real CIFAR-10 JPEG check";
  const std::string dest = std::string(KESTREL_BINARY_DIR) + "/data";
  const std::string root = dest + "/cifar10-jpeg";
  if (!fs::exists(root + "/test/truck")) {
    fs::create_directories(dest);
    const std::string cmd = "tar -xJf '" + archive + "' -C '" + dest + "'";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }
  ImageFolderOptions opts;
  opts.preload = true;
  auto test = open_image_folder(root, Split::Test, opts);
  ASSERT_EQ(test->size(), 10000);
  EXPECT_EQ(test->classes(), cifar10_classes());
  EXPECT_EQ(test->skipped(), 0);
  for (int64_t i : {int64_t{0}, int64_t{5000}, int64_t{9999}}) {
    const Example ex = test->get(i);
    EXPECT_EQ(ex.image.h, 32);
    EXPECT_EQ(ex.image.w, 32);
    EXPECT_EQ(ex.image.c, 3);
    EXPECT_EQ(ex.label, i / 1000);
  }
}

// ====================================================================== transforms

TEST(Transforms, HorizontalFlipMirrorsColumns) {
  const FImage img = ramp(3, 5, 2);
  const FImage f = hflip(img);
  for (int y = 0; y < 3; ++y)
    for (int x = 0; x < 5; ++x)
      for (int c = 0; c < 2; ++c) EXPECT_EQ(f.at(y, x, c), img.at(y, 4 - x, c));
  FImage g = img;
  Generator gen(1);
  random_hflip(1.0)(g, gen);
  EXPECT_EQ(g.data, f.data);
  g = img;
  random_hflip(0.0)(g, gen);
  EXPECT_EQ(g.data, img.data);
  const FImage v = vflip(img);
  for (int y = 0; y < 3; ++y)
    for (int x = 0; x < 5; ++x)
      for (int c = 0; c < 2; ++c) EXPECT_EQ(v.at(y, x, c), img.at(2 - y, x, c));
  g = img;
  random_vflip(1.0)(g, gen);
  EXPECT_EQ(g.data, v.data);
}

TEST(Transforms, CropWithPaddingShiftsTheImageAndZeroFillsTheBorder) {
  const FImage img = ramp(6, 6, 1);
  const FImage s = pad_crop(img, 0, 0, 6, 6, 2);  // top-left of the padded image: shift down-right by 2
  for (int y = 0; y < 6; ++y)
    for (int x = 0; x < 6; ++x)
      EXPECT_EQ(s.at(y, x, 0), (y < 2 || x < 2) ? 0.0f : img.at(y - 2, x - 2, 0)) << y << "," << x;
  EXPECT_EQ(pad_crop(img, 2, 2, 6, 6, 2).data, img.data);  // centred crop is the image
  const FImage r = pad_crop(img, 0, 0, 6, 6, 1, PadMode::Reflect);
  EXPECT_EQ(r.at(0, 0, 0), img.at(1, 1, 0));
  // A random crop is some shift of the image by at most the padding.
  FImage c = img;
  Generator gen(3);
  random_crop(6, 6, 2)(c, gen);
  ASSERT_EQ(c.h, 6);
  ASSERT_EQ(c.w, 6);
  bool found = false;
  for (int top = 0; top <= 4 && !found; ++top)
    for (int left = 0; left <= 4 && !found; ++left) found = pad_crop(img, top, left, 6, 6, 2).data == c.data;
  EXPECT_TRUE(found) << "random_crop output is not a padded shift of the input";
}

TEST(Transforms, CutoutZeroesOneSquareAndCoarseDropoutStaysInBounds) {
  FImage img(10, 10, 3, 1.0f);
  fill_rect(img, 2, 3, 4, 4);
  int zeros = 0;
  for (int y = 0; y < 10; ++y)
    for (int x = 0; x < 10; ++x) {
      const bool inside = y >= 2 && y < 6 && x >= 3 && x < 7;
      for (int c = 0; c < 3; ++c) EXPECT_EQ(img.at(y, x, c), inside ? 0.0f : 1.0f);
      zeros += inside;
    }
  EXPECT_EQ(zeros, 16);
  for (uint64_t seed = 0; seed < 20; ++seed) {
    FImage im(10, 10, 1, 1.0f);
    Generator gen(seed);
    cutout(4)(im, gen);
    int n = 0, y0 = 10, y1 = -1, x0 = 10, x1 = -1;
    for (int y = 0; y < 10; ++y)
      for (int x = 0; x < 10; ++x)
        if (im.at(y, x, 0) == 0.0f) {
          ++n;
          y0 = std::min(y0, y);
          y1 = std::max(y1, y);
          x0 = std::min(x0, x);
          x1 = std::max(x1, x);
        }
    ASSERT_GT(n, 0);
    EXPECT_LE(n, 16);
    EXPECT_EQ(n, (y1 - y0 + 1) * (x1 - x0 + 1)) << "cutout zeroed a non-rectangular region";
    FImage cd(10, 10, 1, 1.0f);
    coarse_dropout(3, 3, 3, 1.0)(cd, gen);
    const auto dropped = std::count(cd.data.begin(), cd.data.end(), 0.0f);
    EXPECT_GE(dropped, 1);
    EXPECT_LE(dropped, 27);
  }
}

TEST(Transforms, RotationByNinetyDegreesPermutesPixelsExactly) {
  const FImage img = ramp(5, 5, 1);
  const FImage r = rotate(img, 90.0);
  // Counter-clockwise on screen: the right edge becomes the top edge.
  for (int y = 0; y < 5; ++y)
    for (int x = 0; x < 5; ++x) EXPECT_NEAR(r.at(y, x, 0), img.at(x, 4 - y, 0), 1e-6) << y << "," << x;
  const FImage z = rotate(img, 0.0);
  EXPECT_EQ(z.data, img.data);
  const FImage back = rotate(rotate(img, 30.0, 0.0f), -30.0, 0.0f);
  EXPECT_NEAR(back.at(2, 2, 0), img.at(2, 2, 0), 1e-6);  // the centre is fixed
  const FImage t = translate(img, 1.0, 0.0);
  EXPECT_EQ(t.at(3, 0, 0), 0.0f);
  EXPECT_FLOAT_EQ(t.at(3, 2, 0), img.at(3, 1, 0));
  const FImage ssr = shift_scale_rotate(img, 0, 0, 1.0, 0.0);
  EXPECT_EQ(ssr.data, img.data);
}

TEST(Transforms, BilinearResizeKeepsConstantsAndInterpolates) {
  FImage flat(3, 4, 2, 0.25f);
  const FImage up = resize_bilinear(flat, 7, 9);
  EXPECT_EQ(up.h, 7);
  EXPECT_EQ(up.w, 9);
  for (float v : up.data) EXPECT_FLOAT_EQ(v, 0.25f);
  FImage two(1, 2, 1);
  two.data = {0.0f, 1.0f};
  const FImage four = resize_bilinear(two, 1, 4);  // half-pixel centres: 0, .25, .75, 1
  EXPECT_FLOAT_EQ(four.data[0], 0.0f);
  EXPECT_FLOAT_EQ(four.data[1], 0.25f);
  EXPECT_FLOAT_EQ(four.data[2], 0.75f);
  EXPECT_FLOAT_EQ(four.data[3], 1.0f);
  const FImage down = resize_bilinear(ramp(8, 8, 3), 4, 4);
  EXPECT_EQ(down.data.size(), 4u * 4u * 3u);
}

// RandomResizedCrop: a w x h region of the drawn area and aspect ratio, wholly
// inside the image, resized; the centre at the nearest allowed ratio when no
// draw fits.
TEST(Transforms, RandomResizedCropTakesARegionOfTheDrawnAreaInsideTheImage) {
  FImage columns(40, 40, 1);  // each pixel holds its column
  for (int y = 0; y < 40; ++y)
    for (int x = 0; x < 40; ++x) columns.at(y, x, 0) = static_cast<float>(x);
  // A quarter of the area at aspect 1: a 20x20 region, at 20x20 so not resampled.
  const Transform quarter = random_resized_crop(20, 20, 0.25, 0.25, 1.0, 1.0);
  std::vector<int> lefts;
  for (uint64_t seed = 0; seed < 40; ++seed) {
    FImage img = columns;
    Generator gen(seed);
    quarter(img, gen);
    ASSERT_EQ(img.h, 20);
    ASSERT_EQ(img.w, 20);
    const int left = static_cast<int>(img.at(0, 0, 0));
    ASSERT_GE(left, 0);
    ASSERT_LE(left, 20);
    for (int y = 0; y < 20; ++y)
      for (int x = 0; x < 20; ++x) ASSERT_EQ(img.at(y, x, 0), static_cast<float>(left + x)) << "seed " << seed;
    lefts.push_back(left);
  }
  std::sort(lefts.begin(), lefts.end());
  EXPECT_GE(std::unique(lefts.begin(), lefts.end()) - lefts.begin(), 10) << "the place is drawn";

  // All of a square image at aspect 1 is the plain resize.
  const FImage img = ramp(12, 12, 3);
  FImage whole = img;
  Generator gen(3);
  random_resized_crop(8, 8, 1.0, 1.0, 1.0, 1.0)(whole, gen);
  EXPECT_EQ(whole.data, resize_image(img, 8, 8).data);

  // 10x100 at aspect 1 and at least 90% of the area: no square fits, so the
  // centre 10x10 (columns 45 to 54).
  FImage wide(10, 100, 1);
  for (int y = 0; y < 10; ++y)
    for (int x = 0; x < 100; ++x) wide.at(y, x, 0) = static_cast<float>(x);
  random_resized_crop(10, 10, 0.9, 1.0, 1.0, 1.0)(wide, gen);
  ASSERT_EQ(wide.w, 10);
  for (int x = 0; x < 10; ++x) EXPECT_EQ(wide.at(5, x, 0), static_cast<float>(45 + x));

  // Areas and ratios vary with the seed; the output size never does.
  const Transform usual = random_resized_crop(16, 16);
  std::vector<float> firsts;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    FImage a = ramp(30, 50, 3);
    Generator g(seed);
    usual(a, g);
    ASSERT_EQ(a.h, 16);
    ASSERT_EQ(a.w, 16);
    firsts.push_back(a.data[0]);
  }
  std::sort(firsts.begin(), firsts.end());
  EXPECT_GE(std::unique(firsts.begin(), firsts.end()) - firsts.begin(), 10);
  EXPECT_THROW(random_resized_crop(8, 8, 0.0, 1.0), ValueError);
  EXPECT_THROW(random_resized_crop(8, 8, 0.5, 0.4), ValueError);
  EXPECT_THROW(random_resized_crop(8, 8, 0.5, 1.5), ValueError);
  EXPECT_THROW(random_resized_crop(8, 8, 0.5, 1.0, 2.0, 1.0), ValueError);
}

// Random erasing fills one rectangle of 2% to 33% of the image with standard
// normal noise, with probability p.
TEST(Transforms, RandomErasingFillsOneRectangleWithNoise) {
  const Transform erase = random_erasing(1.0);
  double sum = 0.0, sum_sq = 0.0;
  int64_t noisy = 0;
  for (uint64_t seed = 0; seed < 50; ++seed) {
    FImage img(20, 30, 3, 5.0f);
    Generator gen(seed);
    erase(img, gen);
    int top = img.h, bottom = -1, left = img.w, right = -1, changed = 0;
    for (int y = 0; y < img.h; ++y)
      for (int x = 0; x < img.w; ++x)
        for (int ch = 0; ch < 3; ++ch) {
          const float v = img.at(y, x, ch);
          if (v == 5.0f) continue;
          ++changed;
          top = std::min(top, y), bottom = std::max(bottom, y), left = std::min(left, x), right = std::max(right, x);
          sum += v, sum_sq += static_cast<double>(v) * v, ++noisy;
        }
    ASSERT_GT(changed, 0) << "seed " << seed;
    const int box = (bottom - top + 1) * (right - left + 1);
    EXPECT_EQ(changed, box * 3) << "one solid rectangle, seed " << seed;
    EXPECT_GE(box, 0.02 * 600 * 0.7) << "seed " << seed;  // rounding of the sides
    EXPECT_LE(box, 600 / 3.0 * 1.3) << "seed " << seed;
  }
  const double mean = sum / noisy, var = sum_sq / noisy - mean * mean;
  EXPECT_NEAR(mean, 0.0, 0.05);
  EXPECT_NEAR(var, 1.0, 0.1);
  FImage untouched(20, 30, 3, 5.0f);
  Generator gen(1);
  random_erasing(0.0)(untouched, gen);
  for (float v : untouched.data) ASSERT_EQ(v, 5.0f);
  EXPECT_THROW(random_erasing(1.5), ValueError);
  EXPECT_THROW(random_erasing(0.5, 0.5, 0.4), ValueError);
}

// resize(h, w, crop_fraction) is resize_center_crop below 1 and resize_image at 1.
TEST(Transforms, ResizeWithACropFractionTakesTheCentre) {
  const FImage img = ramp(20, 30, 3);
  Generator gen(0);
  FImage cropped = img, plain = img;
  resize(10, 10, 0.8)(cropped, gen);
  resize(10, 10)(plain, gen);
  EXPECT_EQ(cropped.data, resize_center_crop(img, 10, 10, 0.8).data);
  EXPECT_EQ(plain.data, resize_image(img, 10, 10).data);
  EXPECT_NE(cropped.data, plain.data);
  EXPECT_THROW(resize(10, 10, 0.0), ValueError);
  EXPECT_THROW(resize(10, 10, 1.2), ValueError);
}

TEST(Transforms, ColourOperationsDoWhatTheyClaim) {
  FImage img = ramp(4, 4, 3);
  FImage b = img;
  adjust_brightness(b, 0.0f);
  for (float v : b.data) EXPECT_EQ(v, 0.0f);
  FImage s = img;
  adjust_saturation(s, 0.0f);  // grey: all channels equal
  for (int y = 0; y < 4; ++y) {
    EXPECT_FLOAT_EQ(s.at(y, 1, 0), s.at(y, 1, 1));
    EXPECT_FLOAT_EQ(s.at(y, 1, 1), s.at(y, 1, 2));
  }
  FImage c = img;
  adjust_contrast(c, 0.0f);  // every value the mean grey
  for (float v : c.data) EXPECT_FLOAT_EQ(v, c.data[0]);
  FImage red(1, 1, 3);
  red.data = {1.0f, 0.0f, 0.0f};
  shift_hsv(red, 120.0f, 0.0f, 0.0f);  // red + 120 degrees = green
  EXPECT_NEAR(red.data[0], 0.0f, 1e-5);
  EXPECT_NEAR(red.data[1], 1.0f, 1e-5);
  EXPECT_NEAR(red.data[2], 0.0f, 1e-5);
  FImage h = img;
  shift_hsv(h, 0.0f, 0.0f, 0.0f);
  for (size_t i = 0; i < h.data.size(); ++i) EXPECT_NEAR(h.data[i], img.data[i], 1e-5);
  FImage n = img;
  normalize(n, {0.5f, 0.25f, 0.0f}, {2.0f, 0.5f, 1.0f});
  EXPECT_FLOAT_EQ(n.at(1, 2, 0), (img.at(1, 2, 0) - 0.5f) / 2.0f);
  EXPECT_FLOAT_EQ(n.at(1, 2, 1), (img.at(1, 2, 1) - 0.25f) / 0.5f);
  EXPECT_THROW(normalize(n, {0.5f, 0.5f}, {1.0f, 1.0f}), ValueError);
  FImage sol(1, 2, 1);
  sol.data = {0.2f, 0.8f};
  solarize(sol, 0.5f);
  EXPECT_FLOAT_EQ(sol.data[0], 0.2f);
  EXPECT_FLOAT_EQ(sol.data[1], 0.2f);
  FImage halves(2, 256, 1);  // two grey levels, half the pixels each
  for (size_t i = 0; i < halves.data.size(); ++i) halves.data[i] = i < 256 ? 0.2f : 0.6f;
  equalize(halves);
  for (size_t i = 0; i < halves.data.size(); ++i) ASSERT_EQ(halves.data[i], i < 256 ? 0.0f : 1.0f) << i;
  FImage two(1, 4, 1);
  two.data = {0.2f, 0.2f, 0.6f, 0.6f};
  autocontrast(two);
  EXPECT_EQ(two.data, (std::vector<float>{0.0f, 0.0f, 1.0f, 1.0f}));
  FImage post(1, 1, 1);
  post.data = {200.0f / 255.0f};
  posterize(post, 2);
  EXPECT_FLOAT_EQ(post.data[0], 192.0f / 255.0f);
}

TEST(Transforms, EveryRandomTransformKeepsTheShapeAndIsReproducible) {
  const std::vector<std::pair<std::string, Transform>> all = {
      {"crop", random_crop(12, 12, 4)},
      {"flip", random_hflip()},
      {"vflip", random_vflip()},
      {"rotation", random_rotation(30)},
      {"jitter", color_jitter(0.4f, 0.4f, 0.4f, 0.1f)},
      {"ssr", random_shift_scale_rotate(0.1, 0.2, 30, 1.0)},
      {"brightness_contrast", random_brightness_contrast(0.2, 0.2, 1.0)},
      {"hsv", random_hsv_shift(20, 0.1, 0.1, 1.0)},
      {"coarse_dropout", coarse_dropout(4, 3, 3, 1.0)},
      {"cutout", cutout(6)},
      {"random_resized_crop", random_resized_crop(12, 12)},
      {"random_erasing", random_erasing(1.0)},
      {"rand_augment", rand_augment(2, 14)},
      {"auto_augment", auto_augment_cifar10()},
      {"normalize", normalize({0.5f, 0.5f, 0.5f}, {0.25f, 0.25f, 0.25f})},
      {"compose", compose({random_crop(12, 12, 2), random_hflip(), auto_augment_cifar10(), cutout(4)})},
  };
  const FImage img = ramp(12, 12, 3);
  for (const auto& [name, t] : all) {
    for (uint64_t seed = 0; seed < 30; ++seed) {
      FImage a = img, b = img;
      Generator g1(seed), g2(seed);
      t(a, g1);
      t(b, g2);
      ASSERT_EQ(a.h, 12) << name;
      ASSERT_EQ(a.w, 12) << name;
      ASSERT_EQ(a.c, 3) << name;
      ASSERT_EQ(a.data, b.data) << name << " is not reproducible for seed " << seed;
      for (float v : a.data) ASSERT_TRUE(std::isfinite(v)) << name;
    }
  }
  FImage r = img;
  Generator gen(0);
  resize(20, 16)(r, gen);
  EXPECT_EQ(r.h, 20);
  EXPECT_EQ(r.w, 16);
}

TEST(Transforms, AugmentPoliciesChangeImagesButNotAlways) {
  const FImage img = ramp(16, 16, 3);
  int changed = 0;
  for (uint64_t seed = 0; seed < 100; ++seed) {
    FImage a = img;
    Generator gen(seed);
    auto_augment_cifar10()(a, gen);
    changed += a.data != img.data;
  }
  EXPECT_GT(changed, 30);
  EXPECT_LT(changed, 100);  // each op has a probability below 1
  // Magnitude 0: geometry, enhancement and solarize-below-1 ops leave the
  // image as it is; only the magnitude-free ones (and posterize at 8 bits,
  // solarize at 1) can change it. One op per draw: the result is one of these.
  std::vector<std::pair<std::string, FImage>> allowed = {{"identity", img}};
  const std::pair<const char*, std::function<void(FImage&)>> free_ops[] = {
      {"autocontrast", [](FImage& f) { autocontrast(f); }}, {"equalize", [](FImage& f) { equalize(f); }},
      {"invert", [](FImage& f) { invert(f); }},           {"posterize 8", [](FImage& f) { posterize(f, 8); }},
      {"solarize 1", [](FImage& f) { solarize(f, 1.0f); }}};
  for (const auto& [name, op] : free_ops) {
    FImage f = img;
    op(f);
    allowed.emplace_back(name, f);
  }
  std::set<std::string> seen;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    FImage m0 = img;
    Generator gen(seed);
    rand_augment(1, 0)(m0, gen);
    ASSERT_EQ(m0.h, 16);
    ASSERT_EQ(m0.w, 16);
    std::string match;
    for (const auto& [name, f] : allowed) {
      bool same = true;
      for (size_t i = 0; i < f.data.size() && same; ++i) same = std::fabs(f.data[i] - m0.data[i]) <= 1e-6f;
      if (same) {
        match = name;
        break;
      }
    }
    EXPECT_FALSE(match.empty()) << "seed " << seed << ": magnitude 0 changed the image beyond a magnitude-free op";
    seen.insert(match);
  }
  EXPECT_GE(seen.size(), 3u) << "200 draws of 15 ops should hit the identity and magnitude-free ops alike";
}

// ====================================================================== batch mixing

namespace {
Batch toy_batch(int64_t n, int h, int w, const std::vector<int64_t>& labels) {
  Batch b;
  std::vector<float> px(static_cast<size_t>(n) * h * w);
  for (int64_t i = 0; i < n; ++i)
    for (int k = 0; k < h * w; ++k) px[static_cast<size_t>(i * h * w + k)] = static_cast<float>(i + 1);
  b.images = Tensor::from_vector(px, {n, h, w, 1});
  b.labels = Tensor::from_vector_i64(labels, {n});
  return b;
}
}  // namespace

TEST(BatchMixing, MixUpBlendsImagesAndLabelsByLambdaAndTargetsSumToOne) {
  Batch b = toy_batch(3, 2, 2, {0, 2, 1});
  mix_batch(b, {1, 2, 0}, 0.7, 4);
  const std::vector<float> t = b.targets.to_vector();
  ASSERT_EQ(b.targets.shape(), (Shape{3, 4}));
  // row 0: 0.7 * onehot(0) + 0.3 * onehot(2)
  EXPECT_NEAR(t[0], 0.7f, 1e-6);
  EXPECT_NEAR(t[2], 0.3f, 1e-6);
  EXPECT_NEAR(t[4 + 2], 0.7f, 1e-6);
  EXPECT_NEAR(t[4 + 1], 0.3f, 1e-6);
  const std::vector<float> x = b.images.to_vector();
  EXPECT_NEAR(x[0], 0.7f * 1 + 0.3f * 2, 1e-6);
  EXPECT_NEAR(x[2 * 4], 0.7f * 3 + 0.3f * 1, 1e-6);

  for (uint64_t seed = 0; seed < 10; ++seed) {
    Batch r = toy_batch(8, 3, 3, {0, 1, 2, 3, 4, 5, 6, 7});
    Generator gen(seed);
    mixup(0.4, 10)(r, gen);
    const std::vector<float> tt = r.targets.to_vector();
    for (int i = 0; i < 8; ++i) {
      float sum = 0;
      for (int k = 0; k < 10; ++k) sum += tt[i * 10 + k];
      EXPECT_NEAR(sum, 1.0f, 1e-5);
      // Row i's image is lambda-blend of the two labelled images: value i+1 weighted by target[i].
      const float lam = tt[i * 10 + i];
      if (lam < 1.0f - 1e-6f) {
        int other = -1;
        for (int k = 0; k < 10; ++k)
          if (k != i && tt[i * 10 + k] > 0) other = k;
        ASSERT_GE(other, 0);
        EXPECT_NEAR(r.images.to_vector()[i * 9], lam * (i + 1) + (1 - lam) * (other + 1), 1e-4);
      }
    }
  }
}

TEST(BatchMixing, CutMixPastesABoxAndWeightsTargetsByArea) {
  Batch b = toy_batch(2, 4, 4, {0, 1});
  paste_box(b, {1, 0}, 1, 1, 2, 2, 2);
  const std::vector<float> x = b.images.to_vector();
  for (int y = 0; y < 4; ++y)
    for (int xx = 0; xx < 4; ++xx) {
      const bool in = y >= 1 && y < 3 && xx >= 1 && xx < 3;
      EXPECT_EQ(x[y * 4 + xx], in ? 2.0f : 1.0f);
    }
  const std::vector<float> t = b.targets.to_vector();
  EXPECT_NEAR(t[0], 0.75f, 1e-6);
  EXPECT_NEAR(t[1], 0.25f, 1e-6);
  for (uint64_t seed = 0; seed < 10; ++seed) {
    Batch r = toy_batch(4, 8, 8, {0, 1, 2, 3});
    Generator gen(seed);
    cutmix(1.0, 4)(r, gen);
    const std::vector<float> tt = r.targets.to_vector();
    const std::vector<float> xx = r.images.to_vector();
    for (int i = 0; i < 4; ++i) {
      EXPECT_NEAR(tt[i * 4] + tt[i * 4 + 1] + tt[i * 4 + 2] + tt[i * 4 + 3], 1.0f, 1e-5);
      // The fraction of pixels that kept the row's own value is its own target weight (unless paired with itself).
      int own = 0;
      for (int p = 0; p < 64; ++p) own += xx[i * 64 + p] == static_cast<float>(i + 1);
      EXPECT_NEAR(tt[i * 4 + i], std::max(own / 64.0f, tt[i * 4 + i] > 0.999f ? 1.0f : 0.0f), 1e-5);
    }
  }
}

TEST(BatchMixing, RicapTargetsAreAreaWeightsThatSumToOne) {
  for (uint64_t seed = 0; seed < 10; ++seed) {
    Batch r = toy_batch(6, 8, 8, {0, 1, 2, 3, 4, 5});
    Generator gen(seed);
    ricap(0.3, 6)(r, gen);
    ASSERT_EQ(r.images.shape(), (Shape{6, 8, 8, 1}));
    const std::vector<float> tt = r.targets.to_vector();
    const std::vector<float> xx = r.images.to_vector();
    for (int i = 0; i < 6; ++i) {
      float sum = 0;
      for (int k = 0; k < 6; ++k) {
        sum += tt[i * 6 + k];
        int count = 0;  // pixels that came from image k
        for (int p = 0; p < 64; ++p) count += xx[i * 64 + p] == static_cast<float>(k + 1);
        EXPECT_NEAR(tt[i * 6 + k], count / 64.0f, 1e-5) << "row " << i << " class " << k;
      }
      EXPECT_NEAR(sum, 1.0f, 1e-5);
    }
  }
}

TEST(BatchMixing, BetaSamplesHaveTheRightMean) {
  Generator gen(11);
  double sum = 0;
  for (int i = 0; i < 4000; ++i) {
    const double v = sample_beta(2.0, 6.0, gen);
    ASSERT_GE(v, 0.0);
    ASSERT_LE(v, 1.0);
    sum += v;
  }
  EXPECT_NEAR(sum / 4000, 0.25, 0.01);
  double small = 0;
  for (int i = 0; i < 4000; ++i) small += sample_beta(0.2, 0.2, gen);
  EXPECT_NEAR(small / 4000, 0.5, 0.03);
}

TEST(TestTimeAugmentation, ViewsAreFlipsAndShiftsAndAveragesAreMeans) {
  Batch b = toy_batch(2, 3, 3, {0, 1});
  std::vector<float> px(18);
  std::iota(px.begin(), px.end(), 0.0f);
  const Tensor x = Tensor::from_vector(px, {2, 3, 3, 1});
  auto views = tta_views(x, {true, 0, {}});
  ASSERT_EQ(views.size(), 2u);
  const std::vector<float> f = views[1].to_vector();
  EXPECT_EQ(f[0], px[2]);
  EXPECT_EQ(f[9 + 3], px[9 + 5]);
  EXPECT_EQ(tta_views(x, {true, 1, {}}).size(), 10u);
  EXPECT_EQ(tta_views(x, {false, 1, {}}).size(), 5u);
  for (const TTAOptions& o : {TTAOptions{true, 0, {}}, TTAOptions{false, 0, {}}, TTAOptions{true, 2, {}},
                               TTAOptions{false, 3, {}}})
    EXPECT_EQ(static_cast<size_t>(tta_view_count(o)), tta_views(x, o).size());
  // A shift down and right by 1 brings in the fill along the top row and left column.
  const std::vector<Tensor> filled = tta_views(x, {false, 1, {-7.0f}});
  const std::vector<float> down_right = filled[4].to_vector();  // shifts (-1,-1), (-1,1), (1,-1), (1,1)
  EXPECT_EQ(down_right[0], -7.0f);
  EXPECT_EQ(down_right[2], -7.0f);
  EXPECT_EQ(down_right[3], -7.0f);
  EXPECT_EQ(down_right[4], px[0]);
  EXPECT_EQ(down_right[9 + 4], px[9]);
  EXPECT_THROW(tta_views(x, {false, 1, {0.0f, 0.0f}}), ShapeError) << "two fill values for one channel";
  const Tensor avg = tta_average({Tensor::from_vector({1.0f, 0.0f}, {1, 2}), Tensor::from_vector({0.0f, 1.0f}, {1, 2})});
  EXPECT_EQ(avg.to_vector(), (std::vector<float>{0.5f, 0.5f}));
}

// ====================================================================== loader

namespace {

// n single-pixel-per-channel 4x4 images whose pixels all equal their index.
std::shared_ptr<ArrayDataset> index_dataset(int n) {
  auto ds = std::make_shared<ArrayDataset>(4, 4, 3, std::vector<std::string>{"a", "b", "c", "d", "e"});
  std::vector<uint8_t> px(48);
  for (int i = 0; i < n; ++i) {
    std::fill(px.begin(), px.end(), static_cast<uint8_t>(i));
    ds->append(px.data(), i % 5);
  }
  return ds;
}

std::vector<Batch> run_epoch(DataLoader& loader, int64_t epoch, int64_t start = 0) {
  loader.start_epoch(epoch, start);
  std::vector<Batch> out;
  Batch b;
  while (loader.next(b)) out.push_back(b);
  return out;
}

void expect_same_batches(const std::vector<Batch>& a, const std::vector<Batch>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].index, b[i].index) << what;
    EXPECT_EQ(a[i].indices, b[i].indices) << what << " batch " << i;
    EXPECT_EQ(a[i].images.to_vector(), b[i].images.to_vector()) << what << " batch " << i;
    EXPECT_EQ(a[i].labels.to_vector_i64(), b[i].labels.to_vector_i64()) << what;
    ASSERT_EQ(a[i].targets.defined(), b[i].targets.defined()) << what;
    if (a[i].targets.defined()) {
      EXPECT_EQ(a[i].targets.to_vector(), b[i].targets.to_vector()) << what;
    }
  }
}

class ThrowingDataset : public Dataset {
 public:
  int64_t size() const override { return 20; }
  Example get(int64_t i) const override {
    if (i == 13) throw IOError("image: /data/bad/13.png: corrupt");
    Example ex;
    ex.image = {2, 2, 1, {0, 0, 0, 0}};
    return ex;
  }
};

}  // namespace

TEST(Loader, OrderIsAPermutationFixedBySeedAndEpochAndDiffersAcrossEpochs) {
  auto ds = index_dataset(50);
  LoaderOptions lo;
  lo.batch_size = 8;
  lo.seed = 7;
  DataLoader a(ds, lo), b(ds, lo);
  const auto o0 = a.epoch_order(0), o1 = a.epoch_order(1);
  EXPECT_EQ(o0, b.epoch_order(0));
  EXPECT_NE(o0, o1);
  std::vector<int64_t> sorted = o0;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int64_t> iota(50);
  std::iota(iota.begin(), iota.end(), 0);
  EXPECT_EQ(sorted, iota);
  lo.seed = 8;
  EXPECT_NE(DataLoader(ds, lo).epoch_order(0), o0);
  lo.shuffle = false;
  EXPECT_EQ(DataLoader(ds, lo).epoch_order(3), iota);
  // Batches carry the images of the indices they name.
  const auto batches = run_epoch(a, 0);
  ASSERT_EQ(batches.size(), 7u);
  std::vector<int64_t> seen;
  for (const Batch& bt : batches) {
    const std::vector<float> x = bt.images.to_vector();
    for (size_t i = 0; i < bt.indices.size(); ++i) {
      EXPECT_FLOAT_EQ(x[i * 48], static_cast<float>(bt.indices[i]) / 255.0f);
      EXPECT_EQ(bt.labels.to_vector_i64()[i], bt.indices[i] % 5);
    }
    seen.insert(seen.end(), bt.indices.begin(), bt.indices.end());
  }
  EXPECT_EQ(seen, o0);
}

TEST(Loader, SameBatchesWithZeroOneOrThreeWorkers) {
  auto ds = index_dataset(45);
  const Transform tf = compose({random_crop(4, 4, 1), random_hflip(), color_jitter(0.3f, 0.3f, 0.3f), cutout(2)});
  std::vector<std::vector<Batch>> runs;
  for (int workers : {0, 1, 3}) {
    LoaderOptions lo;
    lo.batch_size = 6;
    lo.seed = 99;
    lo.num_workers = workers;
    lo.prefetch = 2;
    DataLoader loader(ds, lo, tf, mixup(0.5, 5));
    runs.push_back(run_epoch(loader, 2));
  }
  expect_same_batches(runs[0], runs[1], "0 vs 1 workers");
  expect_same_batches(runs[0], runs[2], "0 vs 3 workers");
  ASSERT_EQ(runs[0].size(), 8u);
  EXPECT_EQ(runs[0].back().size(), 3);
  EXPECT_EQ(runs[0][0].targets.shape(), (Shape{6, 5}));
}

TEST(Loader, ImageFolderDecodedOnAccessGivesThePreloadedBatchesWithThreeWorkers) {
  const std::string root = fresh_dir("loader_lazy_folder");
  for (int k = 0; k < 20; ++k)
    write_png(root + "/" + (k % 2 ? "b" : "a") + "/" + std::to_string(k) + ".png", 6, 6, pattern_rgb(6, 6, k));
  ImageFolderOptions opts;
  opts.preload = true;
  auto preloaded = open_image_folder(root, Split::Train, opts);
  opts.preload_limit_bytes = 0;
  auto lazy = open_image_folder(root, Split::Train, opts);
  ASSERT_TRUE(preloaded->preloaded());
  ASSERT_FALSE(lazy->preloaded());
  std::vector<std::vector<Batch>> runs;
  for (const auto& ds : {preloaded, lazy}) {
    LoaderOptions lo;
    lo.batch_size = 4;
    lo.seed = 5;
    lo.num_workers = 3;
    DataLoader loader(ds, lo, compose({random_crop(6, 6, 1), random_hflip()}));
    runs.push_back(run_epoch(loader, 1));
  }
  expect_same_batches(runs[0], runs[1], "preloaded vs decoded on access");
  EXPECT_EQ(runs[1].size(), 5u);
}

TEST(Loader, DropLastDropsTheShortBatch) {
  auto ds = index_dataset(50);
  LoaderOptions lo;
  lo.batch_size = 16;
  lo.num_workers = 2;
  DataLoader keep(ds, lo);
  EXPECT_EQ(keep.num_batches(), 4);
  auto all = run_epoch(keep, 0);
  ASSERT_EQ(all.size(), 4u);
  EXPECT_EQ(all.back().size(), 2);
  lo.drop_last = true;
  DataLoader drop(ds, lo);
  EXPECT_EQ(drop.num_batches(), 3);
  auto full = run_epoch(drop, 0);
  ASSERT_EQ(full.size(), 3u);
  for (const Batch& b : full) EXPECT_EQ(b.size(), 16);
}

TEST(Loader, ShardsOfEachBatchTogetherAreTheWholeBatchWithTheSameAugmentation) {
  auto ds = index_dataset(50);
  const Transform tf = compose({random_crop(4, 4, 1), random_hflip(), cutout(2)});
  LoaderOptions lo;
  lo.batch_size = 12;
  lo.seed = 5;
  lo.num_workers = 2;
  DataLoader whole_loader(ds, lo, tf);
  const auto whole = run_epoch(whole_loader, 1);
  ASSERT_EQ(whole.size(), 5u);  // 4 x 12, then 2
  std::vector<std::vector<Batch>> parts;
  for (int r = 0; r < 3; ++r) {
    LoaderOptions so = lo;
    so.shard_rank = r;
    so.shard_count = 3;
    DataLoader shard(ds, so, tf);
    EXPECT_EQ(shard.num_batches(), whole_loader.num_batches());
    parts.push_back(run_epoch(shard, 1));
  }
  // The short last batch (2 images) leaves shard 0 with nothing: it skips it.
  EXPECT_EQ(parts[0].size(), 4u);
  EXPECT_EQ(parts[1].size(), 5u);
  EXPECT_EQ(parts[2].size(), 5u);
  for (size_t b = 0; b < whole.size(); ++b) {
    std::vector<int64_t> indices;
    std::vector<float> pixels;
    for (int r = 0; r < 3; ++r) {
      if (b >= parts[r].size() || parts[r][b].index != static_cast<int64_t>(b)) continue;
      const Batch& p = parts[r][b];
      EXPECT_EQ(p.size(), r == 0 || b < 4 ? 4 : 1) << "shard " << r << " batch " << b;
      indices.insert(indices.end(), p.indices.begin(), p.indices.end());
      const std::vector<float> x = p.images.to_vector();
      pixels.insert(pixels.end(), x.begin(), x.end());
    }
    EXPECT_EQ(indices, whole[b].indices) << "batch " << b;
    EXPECT_EQ(pixels, whole[b].images.to_vector()) << "batch " << b;
  }
  lo.shard_rank = 3;
  lo.shard_count = 3;
  EXPECT_THROW(DataLoader(ds, lo), ValueError);
}

TEST(Loader, ResumingFromBatchKMatchesTheUninterruptedRun) {
  auto ds = index_dataset(40);
  LoaderOptions lo;
  lo.batch_size = 5;
  lo.seed = 3;
  lo.num_workers = 3;
  const Transform tf = compose({random_crop(4, 4, 2), random_hflip()});
  DataLoader full(ds, lo, tf, cutmix(1.0, 5));
  const auto whole = run_epoch(full, 4);
  ASSERT_EQ(whole.size(), 8u);
  // A "new process": a fresh loader resumed at (epoch 4, batch 5).
  DataLoader resumed(ds, lo, tf, cutmix(1.0, 5));
  const auto rest = run_epoch(resumed, 4, 5);
  expect_same_batches(std::vector<Batch>(whole.begin() + 5, whole.end()), rest, "resume at batch 5");
  EXPECT_EQ(resumed.next_batch_index(), 8);
  // Interrupting mid-epoch and restarting the same loader also works.
  full.start_epoch(4);
  Batch b;
  ASSERT_TRUE(full.next(b));
  EXPECT_EQ(full.next_batch_index(), 1);
  expect_same_batches(std::vector<Batch>(whole.begin() + 2, whole.end()), run_epoch(full, 4, 2), "restart at 2");
  EXPECT_THROW(full.start_epoch(4, 9), ValueError);
}

TEST(Loader, WorkerErrorsReachTheCallerAndMismatchedSizesAreNamed) {
  LoaderOptions lo;
  lo.batch_size = 4;
  lo.shuffle = false;
  lo.num_workers = 2;
  DataLoader loader(std::make_shared<ThrowingDataset>(), lo);
  loader.start_epoch(0);
  Batch b;
  int ok = 0;
  try {
    while (loader.next(b)) ++ok;
    ADD_FAILURE() << "the bad example did not raise";
  } catch (const IOError& e) {
    EXPECT_NE(std::string(e.what()).find("/data/bad/13.png"), std::string::npos);
  }
  EXPECT_EQ(ok, 3);  // batches 0..2 fine, batch 3 holds index 13

  const std::string root = fresh_dir("loader_sizes");
  write_bmp(root + "/a/1.bmp", 4, 4, pattern_rgb(4, 4, 1));
  write_bmp(root + "/a/2.bmp", 5, 4, pattern_rgb(5, 4, 1));
  DataLoader mixed(open_image_folder(root, Split::Train), lo);
  mixed.start_epoch(0);
  EXPECT_THROW(mixed.next(b), ShapeError);
  DataLoader fixed(open_image_folder(root, Split::Train), lo, resize(4, 4));
  fixed.start_epoch(0);
  ASSERT_TRUE(fixed.next(b));
  EXPECT_EQ(b.images.shape(), (Shape{2, 4, 4, 3}));
}
