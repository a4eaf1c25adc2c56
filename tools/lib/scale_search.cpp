#include "tools/lib/scale_search.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <sstream>

#include "engine/error.h"
#include "engine/host_cache.h"
#include "engine/io/atomic_file.h"
#include "models/registry.h"
#include "models/summary.h"
#include "tools/lib/datasets.h"
#include "tools/lib/progress.h"
#include "tools/lib/trainer.h"

namespace kestrel::tools {

namespace {

// Grid values 1.0, 1.0 + step, ... up to max (inclusive, despite rounding).
std::vector<double> axis(double max, double step) {
  std::vector<double> v;
  for (int64_t i = 0;; ++i) {
    const double x = 1.0 + static_cast<double>(i) * step;
    if (x > max + 1e-9) break;
    v.push_back(std::round(x * 1e6) / 1e6);
  }
  return v;
}

struct Measured {
  int64_t params, macs;
};

class Measurer {
 public:
  Measurer(const ScaleSearchOptions& o, bool cifar_stem) : o_(o), cifar_stem_(cifar_stem) {}

  // Parameters and multiply-adds of the model at these multipliers; one trace
  // per distinct architecture (many grid points round to the same one).
  Measured measure(double depth_mult, double width_mult, int64_t resolution) {
    models::ModelOptions mo;
    mo.num_classes = o_.num_classes;
    mo.in_channels = o_.in_channels;
    mo.width_mult = width_mult;
    mo.depth_mult = depth_mult;
    mo.cifar_stem = cifar_stem_;  // the base model's, at every candidate's size: MACs stay comparable
    nn::ModulePtr m = models::build_model(o_.model, mo);
    const int64_t params = m->num_parameters();
    const auto key = std::make_pair(params, resolution);
    auto it = macs_.find(key);
    if (it == macs_.end())
      it = macs_.emplace(key, models::summarize(*m, {1, resolution, resolution, o_.in_channels}).total_macs).first;
    return {params, it->second};
  }

 private:
  const ScaleSearchOptions& o_;
  const bool cifar_stem_;
  std::map<std::pair<int64_t, int64_t>, int64_t> macs_;
};

ScaleCandidate candidate(const std::string& name, const models::CompoundCoefficients& c) {
  ScaleCandidate r;
  r.name = name;
  r.coefficients = c;
  return r;
}

// MobileNetV3 and GhostNet list every block in their tables: no depth_mult.
bool supports_depth_scaling(const ScaleSearchOptions& o) {
  models::ModelOptions mo;
  mo.num_classes = o.num_classes;
  mo.in_channels = o.in_channels;
  mo.depth_mult = 2.0;
  try {
    models::build_model(o.model, mo);
    return true;
  } catch (const ValueError&) {
    return false;
  }
}

std::string coefficient_tag(const models::CompoundCoefficients& c) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "a%.3g_b%.3g_g%.3g", c.alpha, c.beta, c.gamma);
  return buf;
}

std::string csv(const std::vector<ScaleCandidate>& rows) {
  std::ostringstream s;
  s << "name,alpha,beta,gamma,flops_per_phi,depth_mult,width_mult,resolution,params,macs,macs_ratio,top1\n";
  for (const ScaleCandidate& r : rows)
    s << r.name << "," << r.coefficients.alpha << "," << r.coefficients.beta << "," << r.coefficients.gamma << ","
      << models::flops_per_phi(r.coefficients) << "," << r.depth_mult << "," << r.width_mult << "," << r.resolution
      << "," << r.params << "," << r.macs << "," << r.macs_ratio << "," << (r.top1 >= 0 ? std::to_string(r.top1) : "")
      << "\n";
  return s.str();
}

}  // namespace

std::vector<models::CompoundCoefficients> constrained_grid(const ScaleGrid& g) {
  KCHECK(g.step > 0, ValueError, "scale-search: the grid step must be positive, got ", g.step);
  KCHECK(g.alpha_max >= 1 && g.beta_max >= 1 && g.gamma_max >= 1, ValueError,
         "scale-search: grid maxima must be >= 1 (coefficients start at 1)");
  KCHECK(g.tolerance >= 0, ValueError, "scale-search: the tolerance must be >= 0, got ", g.tolerance);
  const double points = std::floor((g.alpha_max - 1) / g.step + 1) * std::floor((g.beta_max - 1) / g.step + 1) *
                        std::floor((g.gamma_max - 1) / g.step + 1);
  KCHECK(points <= 1e6, ValueError, "scale-search: --step ", g.step, " makes a grid of ", points,
         " points; at most a million (raise --step)");
  std::vector<models::CompoundCoefficients> out;
  for (double a : axis(g.alpha_max, g.step))
    for (double b : axis(g.beta_max, g.step))
      for (double c : axis(g.gamma_max, g.step))
        if (models::satisfies_constraint({a, b, c}, g.tolerance)) out.push_back({a, b, c});
  return out;
}

namespace {

// Classes and channels the candidates are built for: the proxy data's when
// they train (checked here, before minutes of measuring), else CIFAR-100's.
ScaleSearchOptions with_data_shape(ScaleSearchOptions o) {
  if (o.train_epochs <= 0) {
    if (o.num_classes == 0) o.num_classes = 100;
    if (o.in_channels == 0) o.in_channels = 3;
    return o;
  }
  const std::string dir = data_dir_or_default(o.train.dataset, o.train.data_dir);
  open_dataset(o.train.dataset, dir, data::Split::Test, o.train.skip_bad, 1, o.train.test_split);
  const auto train_set =
      open_dataset(o.train.dataset, dir, data::Split::Train, o.train.skip_bad, 1, o.train.test_split);
  const int64_t classes = train_set->num_classes(), channels = train_set->get(0).image.c;
  KCHECK(o.num_classes == 0 || o.num_classes >= classes, ValueError, "scale-search: --num-classes ", o.num_classes,
         " is fewer than the proxy data's ", classes, " classes (leave it out to take the data's)");
  KCHECK(o.in_channels == 0 || o.in_channels == channels, ValueError, "scale-search: --in-channels ", o.in_channels,
         " but the proxy data's images have ", channels, " (leave it out to take the data's)");
  if (o.num_classes == 0) o.num_classes = classes;
  o.in_channels = channels;
  return o;
}

void write_results(const std::vector<ScaleCandidate>& rows, const ScaleSearchOptions& o) {
  io::write_text_atomically(o.out + "/search.csv", csv(rows), "scale-search");
  io::write_text_atomically(o.out + "/search.md", scale_search_markdown(rows, o), "scale-search");
}

}  // namespace

std::vector<ScaleCandidate> scale_search(const ScaleSearchOptions& options) {
  KCHECK(options.train_epochs >= 0, ValueError, "scale-search: --train-epochs must be >= 0, got ",
         options.train_epochs);
  const ScaleSearchOptions o = with_data_shape(options);
  KCHECK(o.phi > 0, ValueError, "scale-search: --phi must be positive, got ", o.phi);
  KCHECK(o.base_resolution >= 8, ValueError, "scale-search: --base-resolution must be >= 8, got ", o.base_resolution);
  KCHECK(o.max_params >= 0 && o.max_macs >= 0, ValueError, "scale-search: --max-params and --max-macs must be >= 0 "
         "(0: no budget), got ", o.max_params, " and ", o.max_macs);
  models::find_model(o.model);  // names the valid models when this one is unknown
  namespace fs = std::filesystem;
  KCHECK(o.overwrite || !fs::exists(o.out) || fs::is_empty(o.out), IOError, "scale-search: ", o.out,
         " already exists; pass --overwrite to replace its search and proxy runs, or give another --out");
  const bool scales_depth = supports_depth_scaling(o);
  if (!scales_depth && o.progress)
    std::fprintf(stderr, "%s lists every block (no depth multiplier): candidates with alpha 1 only\n",
                 o.model.c_str());
  std::vector<ScaleCandidate> rows;
  const double root2 = std::sqrt(2.0);
  for (const auto& [name, c] : std::vector<std::pair<std::string, models::CompoundCoefficients>>{
           {"depth only", {2.0, 1.0, 1.0}},
           {"width only", {1.0, root2, 1.0}},
           {"resolution only", {1.0, 1.0, root2}},
           {"compound (paper)", {1.2, 1.1, 1.15}}})
    if (scales_depth || c.alpha == 1.0) rows.push_back(candidate(name, c));
  const auto already_listed = [&](const models::CompoundCoefficients& c) {
    return std::any_of(rows.begin(), rows.end(), [&](const ScaleCandidate& r) {
      return coefficient_tag(r.coefficients) == coefficient_tag(c);  // the same run folder
    });
  };
  for (const models::CompoundCoefficients& c : constrained_grid(o.grid))
    if ((scales_depth || c.alpha == 1.0) && !already_listed(c)) rows.push_back(candidate("grid", c));

  // The base model's stem at every candidate's size: MACs and proxy runs compare.
  const bool cifar_stem = models::cifar_stem_for_resolution(o.base_resolution);
  Measurer measurer(o, cifar_stem);
  const Measured base = measurer.measure(1.0, 1.0, o.base_resolution);
  std::vector<ScaleCandidate> kept;
  ProgressBar bar("measuring", static_cast<int64_t>(rows.size()), o.progress);
  for (size_t i = 0; i < rows.size(); ++i) {
    ScaleCandidate r = rows[i];
    const models::CompoundCoefficients& c = r.coefficients;
    r.depth_mult = std::pow(c.alpha, o.phi);
    r.width_mult = std::pow(c.beta, o.phi);
    r.resolution = std::lround(static_cast<double>(o.base_resolution) * std::pow(c.gamma, o.phi));
    const Measured m = measurer.measure(r.depth_mult, r.width_mult, r.resolution);
    r.params = m.params;
    r.macs = m.macs;
    r.macs_ratio = static_cast<double>(m.macs) / static_cast<double>(base.macs);
    bar.update(static_cast<int64_t>(i + 1));
    if (o.max_params > 0 && r.params > o.max_params) continue;
    if (o.max_macs > 0 && r.macs > o.max_macs) continue;
    kept.push_back(r);
  }
  bar.finish(std::to_string(kept.size()) + " of " + std::to_string(rows.size()) + " within budget");

  std::filesystem::create_directories(o.out);
  if (o.train_epochs > 0) {
    for (size_t i = 0; i < kept.size(); ++i) {
      ScaleCandidate& r = kept[i];
      TrainConfig t = o.train;
      t.model = o.model;
      t.num_classes = o.num_classes;
      t.width_mult = r.width_mult;
      t.depth_mult = r.depth_mult;
      t.image_size = r.resolution;
      t.stem = cifar_stem ? "cifar" : "model";  // as measured
      t.epochs = o.train_epochs;
      t.hflip = t.dataset == "mnist" ? 0.0 : 0.5;  // as kestrel train: digits are not mirrored
      t.out = o.out + "/" + coefficient_tag(r.coefficients);
      t.overwrite = true;
      t.resume = false;
      t.progress = o.progress;
      if (o.progress)
        std::fprintf(stderr, "candidate %zu/%zu: %s (alpha %.3g, beta %.3g, gamma %.3g)\n", i + 1, kept.size(),
                     r.name.c_str(), r.coefficients.alpha, r.coefficients.beta, r.coefficients.gamma);
      const TrainSummary s = train(t);
      empty_host_cache();  // the next candidate's sizes differ: its blocks would not fit these
      if (s.interrupted_by != 0) {  // Ctrl-C or SIGTERM: the finished candidates are written, then stop
        const size_t total = kept.size();
        kept.resize(i);
        write_results(kept, o);
        throw Error(detail::concat("scale-search: interrupted at candidate ", i + 1, "/", total, "; ", o.out,
                                   "/search.csv and search.md hold the ", i, " finished before it"));
      }
      r.top1 = s.best_top1;
      r.run_dir = t.out;
    }
  }
  write_results(kept, o);
  return kept;
}

std::string scale_search_markdown(const std::vector<ScaleCandidate>& rows, const ScaleSearchOptions& o) {
  const bool trained = std::any_of(rows.begin(), rows.end(), [](const ScaleCandidate& r) { return r.top1 >= 0; });
  std::ostringstream s;
  char line[256];
  std::snprintf(line, sizeof(line), "Compound scaling of %s at phi %g from %lldx%lld (alpha beta^2 gamma^2 within %g of 2)\n\n",
                o.model.c_str(), o.phi, static_cast<long long>(o.base_resolution),
                static_cast<long long>(o.base_resolution), o.grid.tolerance);
  s << line;
  s << "| strategy | alpha | beta | gamma | a*b^2*g^2 | depth x | width x | resolution | params | MMACs | MACs x |"
    << (trained ? " top-1 |" : "") << "\n";
  s << "|---|---|---|---|---|---|---|---|---|---|---|" << (trained ? "---|" : "") << "\n";
  for (const ScaleCandidate& r : rows) {
    std::snprintf(line, sizeof(line), "| %s | %.3g | %.3g | %.3g | %.3f | %.3f | %.3f | %lld | %lld | %.1f | %.2f |",
                  r.name.c_str(), r.coefficients.alpha, r.coefficients.beta, r.coefficients.gamma,
                  models::flops_per_phi(r.coefficients), r.depth_mult, r.width_mult,
                  static_cast<long long>(r.resolution), static_cast<long long>(r.params),
                  static_cast<double>(r.macs) / 1e6, r.macs_ratio);
    s << line;
    if (trained) {
      std::snprintf(line, sizeof(line), " %.2f%% |", 100.0 * r.top1);
      s << line;
    }
    s << "\n";
  }
  return s.str();
}

}  // namespace kestrel::tools
