#include "data/readers.h"

#include <stb_image.h>
#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "engine/error.h"
#include "engine/random.h"
#include "engine/text.h"

namespace fs = std::filesystem;

namespace kestrel::data {

namespace {

std::vector<uint8_t> read_whole_file(const std::string& path, const char* what) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw IOError(detail::concat(what, ": ", path, ": no such file"));
  if (fs::is_directory(path, ec)) throw IOError(detail::concat(what, ": ", path, ": is a directory, expected a file"));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IOError(detail::concat(what, ": ", path, ": cannot open: ", std::strerror(errno)));
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  in.seekg(0, std::ios::beg);
  if (size < 0) throw IOError(detail::concat(what, ": ", path, ": cannot determine the file size"));
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  if (size > 0 && !in.read(reinterpret_cast<char*>(bytes.data()), size))
    throw IOError(detail::concat(what, ": ", path, ": read error after ", in.gcount(), " of ", size, " bytes"));
  return bytes;
}

// Class names from a text file (one per line), when present and of the expected count.
std::vector<std::string> names_from_file(const std::string& path, const std::vector<std::string>& fallback) {
  std::ifstream in(path);
  if (!in) return fallback;
  std::vector<std::string> names;
  std::string line;
  while (std::getline(in, line)) {
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
    size_t b = 0;
    while (b < line.size() && std::isspace(static_cast<unsigned char>(line[b]))) ++b;
    if (b < line.size()) names.push_back(line.substr(b));
  }
  return names.size() == fallback.size() ? names : fallback;
}

std::string first_existing_dir(const std::string& dir, const std::string& marker_file, const std::string& child) {
  std::error_code ec;
  if (fs::exists(fs::path(dir) / marker_file, ec)) return dir;
  if (fs::exists(fs::path(dir) / child / marker_file, ec)) return (fs::path(dir) / child).string();
  if (!fs::exists(dir, ec)) throw IOError(detail::concat("dataset directory ", dir, " does not exist"));
  throw IOError(detail::concat("dataset directory ", dir, " has no ", marker_file, " (nor ", child, "/", marker_file,
                               "); run tools/get_data.sh to download it"));
}

}  // namespace

// ------------------------------------------------------------------ CIFAR

const std::vector<std::string>& cifar10_classes() {
  static const std::vector<std::string> names = {"airplane", "automobile", "bird",  "cat",  "deer",
                                                 "dog",      "frog",       "horse", "ship", "truck"};
  return names;
}

const std::vector<std::string>& cifar100_coarse_classes() {
  static const std::vector<std::string> names = {
      "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
      "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
      "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
      "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees", "vehicles_1",
      "vehicles_2"};
  return names;
}

const std::vector<std::string>& cifar100_fine_classes() {
  static const std::vector<std::string> names = {
      "apple",       "aquarium_fish", "baby",      "bear",       "beaver",       "bed",        "bee",
      "beetle",      "bicycle",       "bottle",    "bowl",       "boy",          "bridge",     "bus",
      "butterfly",   "camel",         "can",       "castle",     "caterpillar",  "cattle",     "chair",
      "chimpanzee",  "clock",         "cloud",     "cockroach",  "couch",        "crab",       "crocodile",
      "cup",         "dinosaur",      "dolphin",   "elephant",   "flatfish",     "forest",     "fox",
      "girl",        "hamster",       "house",     "kangaroo",   "keyboard",     "lamp",       "lawn_mower",
      "leopard",     "lion",          "lizard",    "lobster",    "man",          "maple_tree", "motorcycle",
      "mountain",    "mouse",         "mushroom",  "oak_tree",   "orange",       "orchid",     "otter",
      "palm_tree",   "pear",          "pickup_truck", "pine_tree", "plain",      "plate",      "poppy",
      "porcupine",   "possum",        "rabbit",    "raccoon",    "ray",          "road",       "rocket",
      "rose",        "sea",           "seal",      "shark",      "shrew",        "skunk",      "skyscraper",
      "snail",       "snake",         "spider",    "squirrel",   "streetcar",    "sunflower",  "sweet_pepper",
      "table",       "tank",          "telephone", "television", "tiger",        "tractor",    "train",
      "trout",       "tulip",         "turtle",    "wardrobe",   "whale",        "willow_tree", "wolf",
      "woman",       "worm"};
  return names;
}

std::shared_ptr<ArrayDataset> read_cifar_files(const std::vector<std::string>& files, bool cifar100, bool fine,
                                               const ReadOptions& opts) {
  KCHECK(!files.empty(), ValueError, "read_cifar_files: no files given");
  const int64_t label_bytes = cifar100 ? 2 : 1;
  const int64_t record = label_bytes + 3072;
  const int64_t num_classes = cifar100 ? (fine ? 100 : 20) : 10;
  std::vector<std::string> classes = cifar100 ? (fine ? cifar100_fine_classes() : cifar100_coarse_classes())
                                              : cifar10_classes();
  const std::string dir = fs::path(files.front()).parent_path().string();
  if (cifar100)
    classes = names_from_file((fs::path(dir) / (fine ? "fine_label_names.txt" : "coarse_label_names.txt")).string(),
                              classes);
  else
    classes = names_from_file((fs::path(dir) / "batches.meta.txt").string(), classes);
  auto ds = std::make_shared<ArrayDataset>(32, 32, 3, classes);
  std::vector<uint8_t> hwc(3072);
  for (const std::string& path : files) {
    const std::vector<uint8_t> bytes = read_whole_file(path, "CIFAR");
    const int64_t size = static_cast<int64_t>(bytes.size());
    const int64_t whole = size / record;
    if (size == 0) {
      ds->bad_input(detail::concat("CIFAR: ", path, ": file is empty"), opts);
      continue;
    }
    if (size % record != 0)
      ds->bad_input(detail::concat("CIFAR: ", path, ": truncated: ", size, " bytes is not a whole number of ", record,
                                   "-byte records (", whole, " whole records, then ", size % record, " bytes)"),
                    opts);
    ds->reserve(ds->size() + whole);
    for (int64_t r = 0; r < whole; ++r) {
      const uint8_t* rec = bytes.data() + r * record;
      const int64_t label = cifar100 ? rec[fine ? 1 : 0] : rec[0];
      if (label >= num_classes) {
        ds->bad_input(detail::concat("CIFAR: ", path, ": record ", r, " has ", cifar100 ? (fine ? "fine " : "coarse ") : "",
                                     "label ", label, ", out of range for ", num_classes, " classes"),
                      opts);
        continue;
      }
      const uint8_t* planes = rec + label_bytes;  // CHW: R plane, G plane, B plane
      for (int p = 0; p < 1024; ++p)
        for (int ch = 0; ch < 3; ++ch) hwc[static_cast<size_t>(p) * 3 + ch] = planes[ch * 1024 + p];
      ds->append(hwc.data(), label);
    }
  }
  return ds;
}

std::shared_ptr<ArrayDataset> open_cifar10(const std::string& dir, Split split, const ReadOptions& opts) {
  const std::string root = first_existing_dir(dir, "test_batch.bin", "cifar-10-batches-bin");
  std::vector<std::string> files;
  if (split == Split::Train)
    for (int b = 1; b <= 5; ++b) files.push_back((fs::path(root) / ("data_batch_" + std::to_string(b) + ".bin")).string());
  else
    files.push_back((fs::path(root) / "test_batch.bin").string());
  return read_cifar_files(files, false, false, opts);
}

std::shared_ptr<ArrayDataset> open_cifar100(const std::string& dir, Split split, bool fine, const ReadOptions& opts) {
  const std::string root = first_existing_dir(dir, "test.bin", "cifar-100-binary");
  const std::string file = (fs::path(root) / (split == Split::Train ? "train.bin" : "test.bin")).string();
  return read_cifar_files({file}, true, fine, opts);
}

// ------------------------------------------------------------------ IDX

namespace {

// Reads a plain or gzip file whole (zlib reads plain files transparently).
std::vector<uint8_t> read_maybe_gz(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw IOError(detail::concat("IDX: ", path, ": no such file"));
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) throw IOError(detail::concat("IDX: ", path, ": cannot open: ", std::strerror(errno)));
  std::vector<uint8_t> out;
  std::vector<uint8_t> chunk(1 << 20);
  for (;;) {
    const int n = gzread(f, chunk.data(), static_cast<unsigned>(chunk.size()));
    if (n < 0) {
      int code = 0;
      const std::string msg = gzerror(f, &code);
      gzclose(f);
      throw IOError(detail::concat("IDX: ", path, ": corrupt gzip data (", msg, ")"));
    }
    if (n == 0) break;
    out.insert(out.end(), chunk.begin(), chunk.begin() + n);
  }
  int code = 0;
  const std::string msg = gzerror(f, &code);
  gzclose(f);
  if (code != Z_OK && code != Z_STREAM_END)
    throw IOError(detail::concat("IDX: ", path, ": truncated or corrupt gzip data (", msg, ")"));
  return out;
}

uint32_t be32(const uint8_t* p) {
  return (static_cast<uint32_t>(p[0]) << 24) | (static_cast<uint32_t>(p[1]) << 16) |
         (static_cast<uint32_t>(p[2]) << 8) | static_cast<uint32_t>(p[3]);
}

}  // namespace

const std::vector<std::string>& fashion_mnist_classes() {
  static const std::vector<std::string> names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                 "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return names;
}

std::shared_ptr<ArrayDataset> read_idx(const std::string& images_path, const std::string& labels_path,
                                       std::vector<std::string> classes, const ReadOptions& opts) {
  const std::vector<uint8_t> img = read_maybe_gz(images_path);
  const std::vector<uint8_t> lab = read_maybe_gz(labels_path);
  if (img.size() < 16 || be32(img.data()) != 0x00000803)
    throw IOError(detail::concat("IDX: ", images_path, ": not an IDX image file (expected magic 0x00000803 and a ",
                                 "16-byte header)"));
  if (lab.size() < 8 || be32(lab.data()) != 0x00000801)
    throw IOError(detail::concat("IDX: ", labels_path, ": not an IDX label file (expected magic 0x00000801 and an ",
                                 "8-byte header)"));
  const int64_t n_img = be32(img.data() + 4), rows = be32(img.data() + 8), cols = be32(img.data() + 12);
  const int64_t n_lab = be32(lab.data() + 4);
  if (rows <= 0 || cols <= 0 || rows * cols > opts.max_pixels)
    throw IOError(detail::concat("IDX: ", images_path, ": bad image size ", rows, "x", cols));
  const int64_t per = rows * cols;
  auto ds = std::make_shared<ArrayDataset>(static_cast<int>(rows), static_cast<int>(cols), 1, std::move(classes));
  int64_t n = n_img;
  const int64_t have_img = (static_cast<int64_t>(img.size()) - 16) / per;
  if (have_img < n_img || static_cast<int64_t>(img.size()) - 16 != n_img * per) {
    if (have_img < n_img)
      ds->bad_input(detail::concat("IDX: ", images_path, ": truncated: header says ", n_img, " images of ", rows, "x",
                                   cols, " but the file holds ", have_img),
                    opts);
    else
      ds->bad_input(detail::concat("IDX: ", images_path, ": ", static_cast<int64_t>(img.size()) - 16 - n_img * per,
                                   " unexpected bytes after ", n_img, " images"),
                    opts);
    n = std::min(n, have_img);
  }
  const int64_t have_lab = static_cast<int64_t>(lab.size()) - 8;
  if (have_lab < n_lab) {
    ds->bad_input(detail::concat("IDX: ", labels_path, ": truncated: header says ", n_lab, " labels but the file holds ",
                                 have_lab),
                  opts);
  }
  if (n_lab != n_img)
    ds->bad_input(detail::concat("IDX: ", labels_path, ": has ", n_lab, " labels but ", images_path, " has ", n_img,
                                 " images"),
                  opts);
  n = std::min({n, n_lab, have_lab});
  ds->reserve(n);
  const int64_t num_classes = ds->num_classes();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t label = lab[static_cast<size_t>(8 + i)];
    if (num_classes > 0 && label >= num_classes) {
      ds->bad_input(detail::concat("IDX: ", labels_path, ": label ", i, " is ", label, ", out of range for ",
                                   num_classes, " classes"),
                    opts);
      continue;
    }
    ds->append(img.data() + 16 + i * per, label);
  }
  return ds;
}

namespace {
std::string find_idx(const std::string& dir, const std::string& stem) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw IOError(detail::concat("IDX: dataset directory ", dir, " does not exist"));
  for (const std::string& name : {stem, stem + ".gz"}) {
    const fs::path p = fs::path(dir) / name;
    if (fs::exists(p, ec)) return p.string();
  }
  // MNIST mirrors also use "train-images.idx3-ubyte".
  std::string dotted = stem;
  const size_t dash = dotted.rfind("-idx");
  if (dash != std::string::npos) dotted[dash] = '.';
  for (const std::string& name : {dotted, dotted + ".gz"}) {
    const fs::path p = fs::path(dir) / name;
    if (fs::exists(p, ec)) return p.string();
  }
  throw IOError(detail::concat("IDX: ", (fs::path(dir) / stem).string(), "[.gz]: no such file"));
}

std::shared_ptr<ArrayDataset> open_idx_dir(const std::string& dir, Split split, std::vector<std::string> classes,
                                           const ReadOptions& opts) {
  const std::string prefix = split == Split::Train ? "train" : "t10k";
  return read_idx(find_idx(dir, prefix + "-images-idx3-ubyte"), find_idx(dir, prefix + "-labels-idx1-ubyte"),
                  std::move(classes), opts);
}
}  // namespace

std::shared_ptr<ArrayDataset> open_fashion_mnist(const std::string& dir, Split split, const ReadOptions& opts) {
  return open_idx_dir(dir, split, fashion_mnist_classes(), opts);
}

std::shared_ptr<ArrayDataset> open_mnist(const std::string& dir, Split split, const ReadOptions& opts) {
  return open_idx_dir(dir, split, {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"}, opts);
}

// ------------------------------------------------------------------ images

namespace {

uint32_t le32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}

// stb_image fills missing data of truncated JPEG and BMP files instead of
// failing; catch those here. Returns an empty string when the file looks whole.
std::string truncation_problem(const std::vector<uint8_t>& b, int64_t file_size) {
  if (b.size() >= 2 && b[0] == 0xFF && b[1] == 0xD8) {  // JPEG: needs an end-of-image marker near the end
    const size_t from = b.size() > 1024 ? b.size() - 1024 : 0;
    for (size_t i = b.size() - 1; i > from; --i)
      if (b[i - 1] == 0xFF && b[i] == 0xD9) return "";
    return "truncated JPEG (no end-of-image marker)";
  }
  if (b.size() >= 34 && b[0] == 'B' && b[1] == 'M') {
    const int64_t offset = le32(b.data() + 10);
    const int64_t w = static_cast<int32_t>(le32(b.data() + 18));
    const int64_t h = std::llabs(static_cast<int32_t>(le32(b.data() + 22)));
    const int64_t bpp = b[28] | (b[29] << 8);
    const int64_t compression = le32(b.data() + 30);
    if (compression == 0 && w > 0 && bpp > 0) {
      const int64_t stride = ((w * bpp + 31) / 32) * 4;
      const int64_t need = offset + stride * h;
      if (file_size < need)
        return detail::concat("truncated BMP (", file_size, " bytes, the header needs ", need, ")");
    }
  }
  return "";
}

std::string stb_reason() {
  const char* r = stbi_failure_reason();
  return r ? r : "unknown reason";
}

// Size and header checks shared by probing and decoding. Reads the file when
// bytes is empty. Throws IOError naming the file.
void check_image_bytes(const std::string& path, const std::vector<uint8_t>& bytes, const ReadOptions& opts, int* w,
                       int* h) {
  int comp = 0;
  if (!stbi_info_from_memory(bytes.data(), static_cast<int>(bytes.size()), w, h, &comp))
    throw IOError(detail::concat("image: ", path, ": not a readable image (stb_image: ", stb_reason(), ")"));
  if (static_cast<int64_t>(*w) * *h > opts.max_pixels)
    throw IOError(detail::concat("image: ", path, ": ", *w, "x", *h, " is over the limit of ", opts.max_pixels,
                                 " pixels"));
  const std::string trunc = truncation_problem(bytes, static_cast<int64_t>(bytes.size()));
  if (!trunc.empty()) throw IOError(detail::concat("image: ", path, ": ", trunc));
}

std::vector<uint8_t> read_image_bytes(const std::string& path, const ReadOptions& opts) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw IOError(detail::concat("image: ", path, ": no such file"));
  const auto size = static_cast<int64_t>(fs::file_size(path, ec));
  if (ec) throw IOError(detail::concat("image: ", path, ": cannot stat: ", ec.message()));
  if (size > opts.max_file_bytes)
    throw IOError(detail::concat("image: ", path, ": file is ", size, " bytes, over the limit of ", opts.max_file_bytes,
                                 " bytes"));
  if (size == 0) throw IOError(detail::concat("image: ", path, ": file is empty"));
  return read_whole_file(path, "image");
}

// "jpg, jpeg, png, ..." for messages.
std::string image_extensions_text() {
  return join(image_extensions(), ", ");
}

// Names starting with a dot (.ipynb_checkpoints, macOS ._ files) are no data.
bool is_hidden(const fs::path& p) { return p.filename().string().rfind('.', 0) == 0; }

// The sorted names of root's sub-folders (symlinks to folders count; hidden ones not).
std::vector<std::string> class_folder_names(const std::string& root) {
  std::error_code ec;
  if (!fs::exists(root, ec)) throw IOError(detail::concat("image folder: ", root, ": no such directory"));
  if (!fs::is_directory(root, ec)) throw IOError(detail::concat("image folder: ", root, ": not a directory"));
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(root, ec))
    if (e.is_directory() && !is_hidden(e.path())) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  if (names.empty())
    throw IOError(detail::concat("image folder: ", root, ": has no class sub-folders (expected ", root,
                                 "/<class>/<image>)"));
  return names;
}

// Labels are positions in the sorted class list, so train/ and test/ must
// hold the same class folders or every label after a difference shifts.
void check_same_classes(const std::string& root, const std::string& test_name, const std::vector<std::string>& train,
                        const std::vector<std::string>& test) {
  for (size_t i = 0; i < std::max(train.size(), test.size()); ++i) {
    if (i < train.size() && i < test.size() && train[i] == test[i]) continue;
    // Sorted lists: the smaller name at the first difference is the one the other split lacks.
    const bool test_lacks = i >= test.size() || (i < train.size() && train[i] < test[i]);
    if (test_lacks)
      throw IOError(detail::concat("image folder ", root, ": ", test_name, "/ lacks class '", train[i],
                                   "' that train/ has (both splits need the same class folders)"));
    throw IOError(detail::concat("image folder ", root, ": ", test_name, "/ has class '", test[i],
                                 "' that train/ lacks (both splits need the same class folders)"));
  }
}

// Decoded bytes of all entries, from the header sizes of up to 16 evenly spaced ones.
int64_t estimate_decoded_bytes(const std::vector<ImageFolderDataset::Entry>& entries, int channels) {
  const size_t n = entries.size(), samples = std::min<size_t>(n, 16);
  double sum = 0;
  size_t read = 0;
  for (size_t s = 0; s < samples; ++s) {
    int w = 0, h = 0, comp = 0;
    if (!stbi_info(entries[s * n / samples].path.c_str(), &w, &h, &comp)) continue;  // bad files are found later
    sum += static_cast<double>(w) * h * (channels > 0 ? channels : comp);
    ++read;
  }
  return read ? static_cast<int64_t>(sum / static_cast<double>(read) * static_cast<double>(n)) : 0;
}

}  // namespace

const std::vector<std::string>& image_extensions() {
  static const std::vector<std::string> extensions = {"jpg", "jpeg", "png", "bmp", "gif",
                                                      "tga", "ppm",  "pgm", "pnm"};
  return extensions;
}

bool is_image_file_name(const std::string& path) {
  std::string ext = fs::path(path).extension().string();
  if (ext.empty()) return false;
  ext.erase(0, 1);  // the dot
  for (char& ch : ext) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  const std::vector<std::string>& known = image_extensions();
  return std::find(known.begin(), known.end(), ext) != known.end();
}

std::vector<std::string> list_image_files(const std::string& path) {
  std::error_code ec;
  KCHECK(fs::exists(path, ec), IOError, "image: ", path, ": no such file or folder");
  if (!fs::is_directory(path, ec)) return {path};
  std::vector<std::string> files;
  fs::recursive_directory_iterator it(path, fs::directory_options::follow_directory_symlink, ec);
  for (; !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    std::error_code entry_ec;
    if (is_hidden(it->path())) {
      if (it->is_directory(entry_ec)) it.disable_recursion_pending();
    } else if (it->is_directory(entry_ec)) {
      // A link to this folder or one above it would be listed forever: skip it.
      std::error_code parent_ec;
      const fs::path real = fs::canonical(it->path(), entry_ec);
      const fs::path rel = fs::canonical(it->path().parent_path(), parent_ec).lexically_relative(real);
      if (entry_ec || parent_ec || (!rel.empty() && *rel.begin() != "..")) it.disable_recursion_pending();
    } else if (it->is_regular_file(entry_ec) && is_image_file_name(it->path().string())) {
      files.push_back(it->path().string());
    }
  }
  KCHECK(!ec, IOError, "image folder: ", path, ": cannot list: ", ec.message());
  std::sort(files.begin(), files.end());
  KCHECK(!files.empty(), IOError, "image folder: ", path, ": no images in it (", image_extensions_text(), ")");
  return files;
}

Image decode_image_file(const std::string& path, int channels, const ReadOptions& opts) {
  KCHECK(channels >= 0 && channels <= 4, ValueError, "decode_image_file: channels must be 0..4, got ", channels);
  const std::vector<uint8_t> bytes = read_image_bytes(path, opts);
  int w = 0, h = 0, comp = 0;
  check_image_bytes(path, bytes, opts, &w, &h);
  uint8_t* px = stbi_load_from_memory(bytes.data(), static_cast<int>(bytes.size()), &w, &h, &comp, channels);
  if (px == nullptr)
    throw IOError(detail::concat("image: ", path, ": corrupt or truncated image (stb_image: ", stb_reason(), ")"));
  Image img;
  img.h = h;
  img.w = w;
  img.c = channels == 0 ? comp : channels;
  img.pixels.assign(px, px + static_cast<size_t>(w) * h * img.c);
  stbi_image_free(px);
  return img;
}

std::vector<ImageFolderDataset::Entry> list_image_folder(const std::string& root, std::vector<std::string>& classes) {
  std::error_code ec;
  classes = class_folder_names(root);
  std::vector<ImageFolderDataset::Entry> entries;
  for (size_t k = 0; k < classes.size(); ++k) {
    const fs::path dir = fs::path(root) / classes[k];
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(dir, ec))
      if (e.is_regular_file() && !is_hidden(e.path()) && is_image_file_name(e.path().string()))
        files.push_back(e.path().string());
    std::sort(files.begin(), files.end());
    // Not skippable: the class would stay, a label no image teaches.
    if (files.empty())
      throw IOError(detail::concat("image folder: ", dir.string(), ": class folder has no images (",
                                   image_extensions_text(), "); add some or remove the folder"));
    for (auto& f : files) entries.push_back({std::move(f), static_cast<int64_t>(k)});
  }
  return entries;
}

ImageFolderDataset::ImageFolderDataset(std::vector<Entry> entries, std::vector<std::string> classes,
                                       const ImageFolderOptions& opts)
    : opts_(opts) {
  KCHECK(opts.channels >= 0 && opts.channels <= 4, ValueError, "image folder: channels must be 0..4, got ",
         opts.channels);
  classes_ = std::move(classes);
  if (opts.preload) estimated_decoded_bytes_ = estimate_decoded_bytes(entries, opts.channels);
  preloaded_ = opts.preload && (opts.preload_limit_bytes < 0 || estimated_decoded_bytes_ <= opts.preload_limit_bytes);
  // Under skip_bad a bad file must be skipped here: get() cannot skip it later.
  const bool decode_now = preloaded_ || opts.read.skip_bad;
  entries_.reserve(entries.size());
  for (Entry& e : entries) {
    KCHECK(e.label >= 0 && e.label < num_classes(), ValueError, "image folder: ", e.path, " has label ", e.label,
           ", out of range for ", num_classes(), " classes");
    try {
      if (decode_now) {
        Image img = decode_image_file(e.path, opts.channels, opts.read);
        if (preloaded_) images_.push_back(std::move(img));
      } else {
        const std::vector<uint8_t> bytes = read_image_bytes(e.path, opts.read);
        int w = 0, h = 0;
        check_image_bytes(e.path, bytes, opts.read, &w, &h);
      }
    } catch (const IOError& err) {
      bad_input(err.what(), opts.read);
      continue;
    }
    entries_.push_back(std::move(e));
  }
}

Example ImageFolderDataset::get(int64_t index) const {
  check_index(index);
  const Entry& e = entries_[static_cast<size_t>(index)];
  Example ex;
  ex.label = e.label;
  ex.image = preloaded_ ? images_[static_cast<size_t>(index)] : decode_image_file(e.path, opts_.channels, opts_.read);
  return ex;
}

int64_t ImageFolderDataset::label(int64_t index) const {
  check_index(index);
  return entries_[static_cast<size_t>(index)].label;
}

namespace {
fs::path test_folder_of(const std::string& root) {
  std::error_code ec;
  return fs::is_directory(fs::path(root) / "test", ec) ? fs::path(root) / "test" : fs::path(root) / "val";
}
}  // namespace

bool image_folder_has_split(const std::string& root) {
  std::error_code ec;
  return fs::is_directory(fs::path(root) / "train", ec) && fs::is_directory(test_folder_of(root), ec);
}

std::shared_ptr<ImageFolderDataset> open_image_folder(const std::string& root, Split split,
                                                      const ImageFolderOptions& opts) {
  std::error_code ec;
  const fs::path train = fs::path(root) / "train";
  const fs::path test = test_folder_of(root);
  std::vector<std::string> classes;
  std::vector<ImageFolderDataset::Entry> entries;
  if (image_folder_has_split(root)) {
    entries = list_image_folder((split == Split::Train ? train : test).string(), classes);
    // After the listing, so that a problem inside this split is reported first.
    const std::vector<std::string> other = class_folder_names((split == Split::Train ? test : train).string());
    const std::vector<std::string>& train_classes = split == Split::Train ? classes : other;
    const std::vector<std::string>& test_classes = split == Split::Train ? other : classes;
    check_same_classes(root, test.filename().string(), train_classes, test_classes);
  } else {
    // A train/ beside no test/ would be read as a class named "train".
    KCHECK(!fs::is_directory(train, ec), IOError, "image folder ", root,
           ": has train/ but no test/ (or val/) beside it; add one, or put the class folders in ", root, " itself");
    KCHECK(opts.test_fraction >= 0.0 && opts.test_fraction < 1.0, ValueError,
           "image folder: test_fraction must be in [0, 1), got ", opts.test_fraction);
    KCHECK(!opts.whole || opts.test_fraction == 0.0, ValueError,
           "image folder: a whole folder is not split; test_fraction must be 0, got ", opts.test_fraction);
    entries = list_image_folder(root, classes);
    if (opts.test_fraction > 0.0) {
      // Per class: a seeded shuffle of that class's files, the first
      // round(fraction * count) of them go to the test split.
      Generator gen(opts.split_seed);
      std::vector<std::vector<size_t>> by_class(classes.size());
      for (size_t i = 0; i < entries.size(); ++i) by_class[static_cast<size_t>(entries[i].label)].push_back(i);
      std::vector<char> is_test(entries.size(), 0);
      for (auto& idx : by_class) {
        for (size_t i = idx.size(); i > 1; --i)
          std::swap(idx[i - 1], idx[static_cast<size_t>(gen.randint(0, static_cast<int64_t>(i)))]);
        const auto n_test = static_cast<size_t>(std::llround(opts.test_fraction * static_cast<double>(idx.size())));
        for (size_t j = 0; j < n_test; ++j) is_test[idx[j]] = 1;
      }
      std::vector<ImageFolderDataset::Entry> chosen;
      for (size_t i = 0; i < entries.size(); ++i)
        if ((is_test[i] != 0) == (split == Split::Test)) chosen.push_back(entries[i]);
      KCHECK(!chosen.empty(), IOError, "image folder ", root, ": its ", std::llround(opts.test_fraction * 100),
             "% ", split == Split::Test ? "test" : "training", " split of ", entries.size(), " images in ",
             classes.size(), " classes is empty (too few images per class); give it train/ and test/ sub-folders");
      entries = std::move(chosen);
    } else {
      KCHECK(split == Split::Train || opts.whole, ValueError, "image folder: ", root,
             " has no train/ and test/ sub-folders; set test_fraction to split it (or whole to read all of it)");
    }
  }
  return std::make_shared<ImageFolderDataset>(std::move(entries), std::move(classes), opts);
}

}  // namespace kestrel::data
