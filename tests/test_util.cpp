#include "test_util.h"

#include "engine/nn/layers.h"
#include "models/fuse.h"
#include "models/registry.h"

#include <stb_image_write.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <algorithm>
#include <sstream>

#include <unistd.h>

namespace kestrel {
void PrintTo(DType dtype, std::ostream* os) { *os << dtype_name(dtype); }
}  // namespace kestrel

namespace kestrel::testing {

void expect_close(const Tensor& actual, const Tensor& expected, double atol, double rtol, const std::string& what) {
  ASSERT_EQ(shape_str(actual.shape()), shape_str(expected.shape())) << what;
  const std::vector<double> a = actual.to_vector_f64(), e = expected.to_vector_f64();
  double worst_excess = -1.0, worst_err = 0.0;
  size_t worst = 0;
  bool bad = false;
  for (size_t i = 0; i < a.size(); ++i) {
    const double err = std::abs(a[i] - e[i]);
    const double allowed = atol + rtol * std::abs(e[i]);
    if (std::isnan(a[i]) != std::isnan(e[i]) || err > allowed) bad = true;
    if (std::isnan(a[i]) || err - allowed > worst_excess) {
      worst_excess = std::isnan(a[i]) ? 1e300 : err - allowed;
      worst_err = err;
      worst = i;
    }
  }
  if (bad) {
    ADD_FAILURE() << what << ": largest error " << worst_err << " at flat index " << worst << " (actual " << a[worst]
                  << ", expected " << e[worst] << "), tolerance atol=" << atol << " rtol=" << rtol << ", shape "
                  << shape_str(actual.shape());
  }
}

Tensor eval_logits(nn::Module& m, const Tensor& x) {
  m.eval();
  NoGradGuard g;
  return m(x);
}

models::ModelOptions zoo_options(int64_t classes, bool cifar_stem, int64_t in_channels, double width_mult) {
  models::ModelOptions o;
  o.num_classes = classes;
  o.cifar_stem = cifar_stem;
  o.in_channels = in_channels;
  o.width_mult = width_mult;
  return o;
}

nn::ModulePtr fused_cifar_stem_model(const std::string& name, int64_t size) {
  manual_seed(0);
  nn::ModulePtr model = models::build_model(name, zoo_options(10, /*cifar_stem=*/true));
  model->eval();
  models::fuse_for_inference(*model, {1, size, size, 3});
  return model;
}

int64_t count_ops(const TraceRecorder& trace, const std::string& op) {
  int64_t n = 0;
  for (const TraceEvent& ev : trace.events()) n += ev.op == op ? 1 : 0;
  return n;
}

Tensor random_tensor(const Shape& shape, uint64_t seed, DType dtype) {
  Generator g(seed);
  return add_scalar(mul_scalar(Tensor::rand(shape, g, DType::F64), 2.0), -1.0).to(dtype);
}

void expect_gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, std::vector<Tensor> inputs,
                      double eps, double atol, double rtol, uint64_t seed) {
  for (Tensor& t : inputs) {
    if (!t.defined()) continue;
    ASSERT_EQ(t.dtype(), DType::F64) << "gradcheck needs f64 inputs";
    t.zero_grad();
  }
  Tensor out = f(inputs);
  Tensor w = random_tensor(out.shape(), seed, DType::F64);
  Tensor loss = sum(mul(out, w));
  loss.backward();
  auto eval = [&]() {
    NoGradGuard g;
    return sum(mul(f(inputs), w)).item();
  };
  for (size_t k = 0; k < inputs.size(); ++k) {
    Tensor& x = inputs[k];
    if (!x.defined() || !x.requires_grad()) continue;
    ASSERT_TRUE(x.grad().defined()) << "input " << k << " received no gradient";
    const std::vector<double> analytic = x.grad().to_vector_f64();
    double* p = x.data<double>();
    ASSERT_TRUE(x.is_contiguous());
    double worst = 0.0;
    int64_t worst_i = -1;
    double worst_a = 0, worst_n = 0;
    for (int64_t i = 0; i < x.numel(); ++i) {
      const double orig = p[i];
      p[i] = orig + eps;
      const double plus = eval();
      p[i] = orig - eps;
      const double minus = eval();
      p[i] = orig;
      const double numeric = (plus - minus) / (2 * eps);
      const double excess = std::abs(analytic[i] - numeric) - (atol + rtol * std::abs(numeric));
      // A NaN on either side (a forward that yields NaN makes the difference NaN) fails.
      const bool nan = std::isnan(analytic[i]) || std::isnan(numeric);
      if (excess > worst || nan) {
        worst = nan ? 1e300 : excess;
        worst_i = i;
        worst_a = analytic[i];
        worst_n = numeric;
      }
    }
    EXPECT_LT(worst_i, 0) << "input " << k << " shape " << shape_str(x.shape()) << ": analytic gradient " << worst_a
                          << " vs finite difference " << worst_n << " at flat index " << worst_i << " (atol " << atol
                          << ", rtol " << rtol << ")";
  }
}

std::string python_with(const std::string& module) {
  for (const char* py : {"/usr/bin/python3", "python3"}) {
    const std::string cmd = std::string(py) + " -c 'import " + module + "' >/dev/null 2>&1";
    if (std::system(cmd.c_str()) == 0) return py;
  }
  return "";
}

void calibrate_batch_norms(nn::Module& model, const Tensor& x, uint64_t seed) {
  std::vector<std::pair<nn::BatchNorm2d*, double>> bns;
  std::function<void(nn::Module&)> visit = [&](nn::Module& mod) {
    if (auto* bn = dynamic_cast<nn::BatchNorm2d*>(&mod)) bns.emplace_back(bn, bn->momentum);
    for (auto& [n, c] : mod.named_children()) visit(*c);
  };
  visit(model);
  for (auto& [bn, mom] : bns) {
    bn->momentum = 1.0;
    NoGradGuard g;
    bn->weight.copy_(add_scalar(random_tensor(bn->weight.shape(), seed++, DType::F32), 1.0));
    bn->bias.copy_(mul_scalar(random_tensor(bn->bias.shape(), seed++, DType::F32), 0.1));
  }
  model.train();
  {
    NoGradGuard g;
    model(x);
  }
  for (auto& [bn, mom] : bns) bn->momentum = mom;
  model.eval();
}

int run_python(const std::string& python, const std::string& script, const std::string& args) {
  const std::string cmd = python + " " + source_path(script) + " " + args + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return -1;
  char buf[4096];
  std::string output;
  while (fgets(buf, sizeof(buf), pipe)) output += buf;
  const int rc = pclose(pipe);
  std::cout << output;
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

namespace {
// The scratch folder of this process; removed at exit so that thousands of
// test processes (a CI run makes ~1000) leave no data behind. A forked child
// that exits must not remove its parent's folder, hence the pid check.
std::filesystem::path scratch_dir;
pid_t scratch_owner = 0;

void remove_scratch_dir() {
  if (::getpid() != scratch_owner || std::getenv("KESTREL_KEEP_TEST_FILES") != nullptr) return;
  std::error_code ignored;
  std::filesystem::remove_all(scratch_dir, ignored);
}
}  // namespace

std::string temp_path(const std::string& name) {
  if (scratch_owner != ::getpid()) {
    scratch_dir = std::filesystem::temp_directory_path() / ("kestrel_test_" + std::to_string(::getpid()));
    scratch_owner = ::getpid();
    std::atexit(remove_scratch_dir);
  }
  std::filesystem::create_directories(scratch_dir);
  return (scratch_dir / name).string();
}

void save_npy(const std::string& path, const Tensor& t_in) {
  Tensor t = t_in.detach().cpu().contiguous();
  const char* descr = t.dtype() == DType::F64 ? "<f8" : t.dtype() == DType::I64 ? "<i8" : "<f4";
  if (t.dtype() != DType::F64 && t.dtype() != DType::I64) t = t.to(DType::F32);
  std::string shape = "(";
  for (int64_t d : t.shape()) shape += std::to_string(d) + ",";
  shape += ")";
  std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr) << path;
  const unsigned char magic[8] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
  std::fwrite(magic, 1, 8, f);
  const uint16_t len = static_cast<uint16_t>(header.size());
  std::fwrite(&len, 2, 1, f);
  std::fwrite(header.data(), 1, header.size(), f);
  std::fwrite(t.data_ptr(), 1, t.nbytes(), f);
  std::fclose(f);
}

Tensor load_npy(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) throw IOError("load_npy: cannot open " + path);
  char magic[8];
  uint16_t len = 0;
  if (std::fread(magic, 1, 8, f) != 8 || std::fread(&len, 2, 1, f) != 1) throw IOError("load_npy: bad file " + path);
  std::string header(len, ' ');
  if (std::fread(header.data(), 1, len, f) != len) throw IOError("load_npy: bad header " + path);
  DType dt = header.find("<f8") != std::string::npos   ? DType::F64
             : header.find("<i8") != std::string::npos ? DType::I64
                                                       : DType::F32;
  Shape shape;
  const size_t a = header.find("'shape': (") + 10, b = header.find(')', a);
  std::stringstream ss(header.substr(a, b - a));
  std::string item;
  while (std::getline(ss, item, ','))
    if (item.find_first_not_of(' ') != std::string::npos) shape.push_back(std::stoll(item));
  Tensor t = Tensor::empty(shape, dt);
  if (std::fread(t.data_ptr(), 1, t.nbytes(), f) != t.nbytes()) throw IOError("load_npy: truncated " + path);
  std::fclose(f);
  return t;
}

std::string source_path(const std::string& relative) { return std::string(KESTREL_SOURCE_DIR) + "/" + relative; }

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs the kestrel binary with stdout and stderr captured to files.
CliResult kestrel_cli(const std::string& args, const std::string& launcher) {
  static int n = 0;
  const std::string out = kestrel::testing::temp_path("cli_out_" + std::to_string(n));
  const std::string err = kestrel::testing::temp_path("cli_err_" + std::to_string(n++));
  const std::string cmd = std::string("OMP_NUM_THREADS=2 ") + launcher + (launcher.empty() ? "" : " ") +
                          KESTREL_BINARY_DIR + "/tools/kestrel " + args + " >" + out + " 2>" + err;
  const int status = std::system(cmd.c_str());
  CliResult r;
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = read_text(out);
  r.err = read_text(err);
  return r;
}

// A failing command prints exactly one line, "kestrel: error: ...", naming `expect`.
void expect_one_line_error(const CliResult& r, const std::string& expect, const std::string& what) {
  EXPECT_NE(r.rc, 0) << what << ": should fail";
  EXPECT_EQ(r.err.rfind("kestrel: error: ", 0), 0u) << what << ": stderr was: " << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << what << ": stderr was: " << r.err;
  EXPECT_NE(r.err.find(expect), std::string::npos) << what << ": expected '" << expect << "' in: " << r.err;
}

std::string write_pattern_folder_dataset(const std::string& name, int size) {
  namespace fs = std::filesystem;
  const std::string root = temp_path(name);
  fs::remove_all(root);
  const char* classes[] = {"a", "b", "c"};
  for (const char* split : {"train", "test"})
    for (int cls = 0; cls < 3; ++cls) {
      const std::string dir = root + "/" + split + "/" + classes[cls];
      fs::create_directories(dir);
      for (int i = 0; i < 12; ++i) {
        std::vector<unsigned char> px(static_cast<size_t>(size * size * 3));
        for (int y = 0; y < size; ++y)
          for (int x = 0; x < size; ++x)
            for (int c = 0; c < 3; ++c) {
              const int v = cls == 0 ? y * 20 : (cls == 1 ? x * 20 : ((x + y) % 2) * 200);
              px[(y * size + x) * 3 + c] = static_cast<unsigned char>((v + 7 * i + 13 * c) % 256);
            }
        const std::string file = dir + "/" + std::to_string(i) + ".png";
        KCHECK(stbi_write_png(file.c_str(), size, size, 3, px.data(), size * 3) != 0,
               IOError, "write_pattern_folder_dataset: cannot write into ", dir);
      }
    }
  return root;
}

std::vector<nlohmann::json> read_metrics_jsonl(const std::string& run_dir) {
  std::ifstream in(run_dir + "/metrics.jsonl");
  std::vector<nlohmann::json> rows;
  for (std::string line; std::getline(in, line);) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

}  // namespace kestrel::testing
