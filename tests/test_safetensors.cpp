#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include "engine/io/safetensors.h"
#include "engine/nn/module.h"
#include "test_util.h"

using namespace kestrel;
using kestrel::io::load_module;
using kestrel::io::load_safetensors;
using kestrel::io::save_module;
using kestrel::io::save_safetensors;
using kestrel::testing::expect_close;
using kestrel::testing::random_tensor;
using kestrel::testing::temp_path;

namespace {

// The interop pattern of tests/interop/safetensors_interop.py, flat index i:
// ((7 i) mod 23) - 11 for signed ints, that over 4 for floats, ((7 i) mod 23) * 10 for U8.
Tensor pattern(DType dtype, const Shape& shape) {
  const int64_t n = shape_numel(shape);
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const double k = static_cast<double>((i * 7) % 23);
    v[static_cast<size_t>(i)] = dtype == DType::U8 ? k * 10 : is_floating(dtype) ? (k - 11) / 4.0 : k - 11;
  }
  return Tensor::from_vector_f64(v, shape).to(dtype);
}

struct Spec {
  const char* name;
  DType dtype;
  Shape shape;
};
const std::vector<Spec>& interop_specs() {
  static const std::vector<Spec> specs = {
      {"block.weight", DType::F32, {3, 4, 5}}, {"half", DType::F16, {7}},  {"bf", DType::BF16, {2, 3}},
      {"dbl", DType::F64, {4, 1}},             {"i32", DType::I32, {5}},   {"i64", DType::I64, {2, 2}},
      {"u8", DType::U8, {6}},                  {"i8", DType::I8, {3, 3}},  {"scalar", DType::F64, {}},
      {"empty", DType::F32, {0, 3}}};
  return specs;
}

nn::NamedTensors interop_tensors() {
  nn::NamedTensors out;
  for (const Spec& s : interop_specs()) out.emplace_back(s.name, pattern(s.dtype, s.shape));
  return out;
}

void expect_same_tensor(const Tensor& actual, const Tensor& expected, const std::string& name) {
  EXPECT_EQ(actual.dtype(), expected.dtype()) << name;
  EXPECT_EQ(shape_str(actual.shape()), shape_str(expected.shape())) << name;
  if (actual.dtype() != expected.dtype() || actual.shape() != expected.shape()) return;
  EXPECT_EQ(actual.to_vector_f64(), expected.contiguous().to_vector_f64()) << name;
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[static_cast<size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

// A file from a literal header and data; the length field is the header's
// unless overridden.
std::string make_file(const std::string& header, size_t data_bytes, int64_t length_override = -1) {
  const uint64_t len = length_override >= 0 ? static_cast<uint64_t>(length_override) : header.size();
  return le64(len) + header + std::string(data_bytes, '\x01');
}

// Loading must throw IOError naming the file and containing `needle`.
void expect_rejected(const std::string& bytes, const std::string& needle, const std::string& label) {
  const std::string path = temp_path("bad_" + label + ".safetensors");
  write_bytes(path, bytes);
  try {
    load_safetensors(path);
    ADD_FAILURE() << label << ": a malformed file was accepted";
  } catch (const IOError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << label << ": message does not name the file: " << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << label << ": expected '" << needle << "' in: " << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << label << ": threw a non-IOError: " << e.what();
  }
  EXPECT_THROW(io::parse_safetensors(bytes, label), IOError) << label;
  EXPECT_THROW(io::load_safetensors_metadata(path), IOError) << label << ": the metadata reader checks the header too";
}

std::string python_with_safetensors() {
  for (const char* py : {"/usr/bin/python3", "python3"}) {
    const std::string cmd = std::string(py) + " -c 'import safetensors, numpy' >/dev/null 2>&1";
    if (std::system(cmd.c_str()) == 0) return py;
  }
  return "";
}

// A small module tree: a conv weight (OHWI inside, OIHW in files), a bias, a
// float buffer and an integer buffer, under a child prefix.
class Block : public nn::Module {
 public:
  explicit Block(uint64_t seed) {
    weight = register_parameter("weight", random_tensor({4, 3, 3, 2}, seed, DType::F32), /*conv_weight=*/true);
    bias = register_parameter("bias", random_tensor({4}, seed + 1, DType::F32));
    running_mean = register_buffer("running_mean", random_tensor({4}, seed + 2, DType::F32));
    num_batches_tracked = register_buffer("num_batches_tracked", Tensor::scalar(static_cast<double>(seed), DType::I64));
  }
  Tensor forward(const Tensor& x) override { return x; }
  std::string type_name() const override { return "Block"; }
  Tensor weight, bias, running_mean, num_batches_tracked;
};

class Net : public nn::Module {
 public:
  explicit Net(uint64_t seed, bool with_head = true) {
    block = register_module("block", std::make_shared<Block>(seed));
    if (with_head) head = register_parameter("head", random_tensor({2, 4}, seed + 10, DType::F64));
  }
  Tensor forward(const Tensor& x) override { return x; }
  std::string type_name() const override { return "Net"; }
  std::shared_ptr<Block> block;
  Tensor head;
};

}  // namespace

TEST(Safetensors, EveryDtypeRoundTripsExactlyWithMetadata) {
  const std::string path = temp_path("all_dtypes.safetensors");
  save_safetensors(path, interop_tensors(), {{"format", "pt"}, {"producer", "kestrel"}});
  io::SafetensorsContents c = load_safetensors(path);
  EXPECT_EQ(c.metadata, (io::Metadata{{"format", "pt"}, {"producer", "kestrel"}}));
  EXPECT_EQ(io::load_safetensors_metadata(path), c.metadata);
  ASSERT_EQ(c.tensors.size(), interop_specs().size());
  for (const Spec& s : interop_specs()) {
    ASSERT_NE(c.find(s.name), nullptr) << s.name;
    expect_same_tensor(c.at(s.name), pattern(s.dtype, s.shape), s.name);
  }
}

TEST(Safetensors, FileLayoutFollowsTheSpec) {
  const std::string path = temp_path("layout.safetensors");
  // Non-contiguous input is written contiguous; element sizes mixed on purpose.
  Tensor t = Tensor::arange(6, DType::F32).reshape({2, 3}).transpose(0, 1);
  save_safetensors(path, {{"z_f64", Tensor::ones({3}, DType::F64)}, {"a_u8", Tensor::ones({3}, DType::U8)}, {"t", t}});
  const std::string bytes = read_bytes(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<size_t>(i)]);
  EXPECT_EQ(n % 8, 0u) << "header must be padded to a multiple of 8";
  EXPECT_EQ(bytes[8], '{');
  const std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.find_last_not_of(' ') + 1, header.find_last_of('}') + 1) << "padding must be trailing spaces";
  // Largest elements first, so each tensor is aligned to its element size.
  EXPECT_NE(header.find("\"z_f64\":{\"data_offsets\":[0,24]"), std::string::npos) << header;
  EXPECT_NE(header.find("\"t\":{\"data_offsets\":[24,48]"), std::string::npos) << header;
  EXPECT_NE(header.find("\"a_u8\":{\"data_offsets\":[48,51]"), std::string::npos) << header;
  EXPECT_EQ(bytes.size(), 8 + n + 51);
  expect_same_tensor(load_safetensors(path).at("t"), t.contiguous(), "t");
}

TEST(Safetensors, WriteReplacesTheFileAtomicallyAndLeavesNoTemporaries) {
  const std::string dir = temp_path("atomic_dir");
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/ckpt.safetensors";
  save_safetensors(path, {{"x", Tensor::full({4}, 1.0)}});
  save_safetensors(path, {{"x", Tensor::full({4}, 2.0)}, {"y", Tensor::zeros({1})}});
  EXPECT_EQ(load_safetensors(path).at("x").to_vector(), (std::vector<float>{2, 2, 2, 2}));
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    ++files;
    EXPECT_EQ(e.path().filename().string(), "ckpt.safetensors");
  }
  EXPECT_EQ(files, 1);
  EXPECT_THROW(save_safetensors(dir + "/no/such/dir/x.safetensors", {{"x", Tensor::zeros({1})}}), IOError);
  EXPECT_THROW(save_safetensors(path, {{"x", Tensor::zeros({1})}, {"x", Tensor::zeros({1})}}), ValueError);
  EXPECT_THROW(save_safetensors(path, {{"__metadata__", Tensor::zeros({1})}}), ValueError);
  EXPECT_EQ(load_safetensors(path).at("x").to_vector(), (std::vector<float>{2, 2, 2, 2})) << "failed writes keep the old file";
}

TEST(Safetensors, ModuleRoundTripUsesPyTorchNamesAndOihwConvWeights) {
  const std::string path = temp_path("module.safetensors");
  Net src(1);
  save_module(path, src, {{"arch", "net"}});
  io::SafetensorsContents c = load_safetensors(path);
  EXPECT_EQ(c.metadata.at("arch"), "net");
  ASSERT_NE(c.find("block.weight"), nullptr);
  EXPECT_EQ(c.at("block.weight").shape(), (Shape{4, 2, 3, 3})) << "conv weight must be OIHW in the file";
  expect_same_tensor(c.at("block.weight"), src.block->weight.permute({0, 3, 1, 2}).contiguous(), "OIHW values");
  EXPECT_EQ(c.at("block.num_batches_tracked").dtype(), DType::I64);
  EXPECT_EQ(c.at("head").dtype(), DType::F64);

  Net dst(99);
  EXPECT_EQ(load_module(path, dst).at("arch"), "net");
  expect_same_tensor(dst.block->weight, src.block->weight, "weight");
  expect_same_tensor(dst.block->bias, src.block->bias, "bias");
  expect_same_tensor(dst.block->running_mean, src.block->running_mean, "running_mean");
  expect_same_tensor(dst.block->num_batches_tracked, src.block->num_batches_tracked, "num_batches_tracked");
  expect_same_tensor(dst.head, src.head, "head");
  EXPECT_TRUE(dst.block->weight.requires_grad());
}

TEST(Safetensors, LoadModuleMismatchNamesTheFileAndTheTensors) {
  const std::string path = temp_path("module_nohead.safetensors");
  save_module(path, Net(1, /*with_head=*/false));
  Net dst(2);
  try {
    load_module(path, dst);
    FAIL() << "expected ValueError for the missing head";
  } catch (const ValueError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find("missing head"), std::string::npos) << msg;
  }
  EXPECT_NO_THROW(load_module(path, dst, /*strict=*/false));
  expect_same_tensor(dst.block->bias, Net(1).block->bias, "non-strict load still loads what matches");

  const std::string wrong = temp_path("module_wrongshape.safetensors");
  nn::NamedTensors sd = Net(1).state_dict();
  for (auto& [n, t] : sd)
    if (n == "block.bias") t = Tensor::zeros({5});
  save_safetensors(wrong, sd);
  try {
    load_module(wrong, dst);
    FAIL() << "expected ValueError for the wrong shape";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("block.bias has shape [5]"), std::string::npos) << e.what();
  }
}

TEST(Safetensors, MalformedFilesAreRejectedWithClearIOErrors) {
  const std::string ok = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  ASSERT_NO_THROW(io::parse_safetensors(make_file(ok, 8), "ok"));

  expect_rejected("", "too short", "empty");
  expect_rejected(le64(8).substr(0, 5), "too short", "short_length");
  expect_rejected(make_file(ok, 8).substr(0, 30), "exceeds", "truncated_header");
  expect_rejected(make_file(ok, 5), "more than the file's 5-byte data section", "truncated_data");
  expect_rejected(make_file(ok, 8, 1000), "exceeds", "length_past_end");
  expect_rejected(make_file(ok, 8, int64_t{1} << 40), "absurd", "length_absurd");
  expect_rejected(make_file(R"({"a":{"dtype":"F32",)", 8), "not valid JSON", "bad_json");
  expect_rejected(make_file("[1,2]", 0), "does not start with '{'", "not_object");
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}} x)", 8), "not valid JSON",
                  "trailing_garbage");
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,400]}})", 8), "beyond",
                  "offsets_out_of_range");
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8), "begin after end",
                  "offsets_reversed");
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 16), "need 12",
                  "offsets_vs_shape");
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                            12),
                  "overlaps", "overlap");
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
                            20),
                  "belong to no tensor", "gap");
  expect_rejected(make_file(ok, 16), "cover only 8", "trailing_data");
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", 8),
                  "overflows", "shape_overflow");
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[1000000000000],"data_offsets":[0,8]}})", 8),
                  "needing 4000000000000 bytes", "shape_absurd");
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), "non-negative integer",
                  "shape_negative");
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8),
                  "non-negative integer", "shape_fraction");
  expect_rejected(make_file(R"({"a":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}})", 8),
                  "unsupported dtype 'F8_E4M3'", "unknown_dtype");
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                            R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                            8),
                  "more than once", "duplicate_name");
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[2]}})", 8), "data_offsets", "missing_offsets");
  expect_rejected(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}})", 8),
                  "unknown field 'extra'", "extra_field");
  expect_rejected(make_file(R"({"__metadata__":{"k":1},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8),
                  "is not a string", "metadata_not_string");
  expect_rejected(make_file("{\"a\":" + std::string(100000, '[') + std::string(100000, ']') + "}", 0),
                  "nests deeper", "deep_nesting");
  EXPECT_THROW(load_safetensors(temp_path("does_not_exist.safetensors")), IOError);
}

TEST(Safetensors, EveryTruncationAndHeaderByteFlipIsRejectedOrParsedNeverACrash) {
  const std::string path = temp_path("fuzz_src.safetensors");
  save_safetensors(path, {{"w", random_tensor({3, 2}, 5, DType::F32)}, {"n", Tensor::arange(3, DType::I64)}},
                   {{"k", "v"}});
  const std::string good = read_bytes(path);
  for (size_t len = 0; len < good.size(); ++len)
    EXPECT_THROW(io::parse_safetensors(good.substr(0, len), "truncated"), IOError) << "length " << len;
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(good[static_cast<size_t>(i)]);
  const char replacements[] = {'\0', '"', '{', '}', '[', ']', ',', ':', '9', '-', 'x', '\\', '\xff'};
  int parsed = 0, rejected = 0;
  for (size_t pos = 0; pos < 8 + n; ++pos)
    for (char r : replacements) {
      std::string bad = good;
      bad[pos] = r;
      try {
        io::parse_safetensors(bad, "flipped");
        ++parsed;
      } catch (const IOError&) {
        ++rejected;
      } catch (const std::exception& e) {
        ADD_FAILURE() << "byte " << pos << " -> " << int(r) << ": non-IOError " << e.what();
      }
    }
  EXPECT_GT(rejected, 0);
  std::cout << "header byte flips: " << rejected << " rejected, " << parsed << " still valid\n";
}

TEST(Safetensors, PythonSafetensorsReadsKestrelFilesAndKestrelReadsPythonFiles) {
  const std::string py = python_with_safetensors();
  if (py.empty())
    GTEST_SKIP() << "no python with safetensors and numpy; install with: python3 -m pip install safetensors numpy";
  const std::string ours = temp_path("to_python.safetensors");
  save_safetensors(ours, interop_tensors(), {{"format", "pt"}, {"producer", "kestrel"}});
  EXPECT_EQ(kestrel::testing::run_python(py, "tests/interop/safetensors_interop.py", "check " + ours), 0);

  const std::string theirs = temp_path("from_python.safetensors");
  ASSERT_EQ(kestrel::testing::run_python(py, "tests/interop/safetensors_interop.py", "write " + theirs), 0);
  io::SafetensorsContents c = load_safetensors(theirs);
  EXPECT_EQ(c.metadata.at("producer"), "python");
  size_t expected = 0;
  for (const Spec& s : interop_specs()) {
    if (s.dtype == DType::BF16) continue;  // numpy has no bfloat16
    ++expected;
    ASSERT_NE(c.find(s.name), nullptr) << s.name;
    expect_same_tensor(c.at(s.name), pattern(s.dtype, s.shape), s.name);
  }
  EXPECT_EQ(c.tensors.size(), expected);
}
