// kestrel summary: layer table, totals, multiply-adds and receptive field of a
// zoo model; --list prints the zoo and EfficientNet's compound-scaling table.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <memory>

#include "engine/error.h"
#include "tools/cli/input_size.h"
#include "models/efficientnet.h"
#include "models/registry.h"
#include "models/scaling.h"
#include "models/summary.h"

namespace kestrel::cli {

namespace {

struct SummaryArgs {
  std::string model;
  std::string input;  // "CxHxW"
  int64_t num_classes = 0;
  double width_mult = 1.0;
  double depth_mult = 1.0;
  bool cifar_stem = false;     // force the CIFAR stem
  bool no_cifar_stem = false;  // force the model's own stem
  bool list = false;
};

void print_list() {
  std::cout << "models:\n";
  for (const models::ModelEntry& e : models::model_registry())
    std::printf("  %-20s %-13s %4lld classes @ %lldpx  %s\n", e.name.c_str(), e.family.c_str(),
                static_cast<long long>(e.default_classes), static_cast<long long>(e.default_resolution),
                e.description.c_str());

  const models::CompoundCoefficients c;
  std::printf("\nEfficientNet compound scaling: depth alpha^phi, width beta^phi, resolution gamma^phi\n");
  std::printf("alpha=%.2f beta=%.2f gamma=%.2f; alpha*beta^2*gamma^2 = %.4f (constraint: close to 2, %s)\n\n", c.alpha,
              c.beta, c.gamma, models::flops_per_phi(c), models::satisfies_constraint(c) ? "holds" : "FAILS");
  std::printf("%-16s %4s | %7s %7s %7s | %6s %6s %5s %7s %12s\n", "model", "phi", "a^phi", "b^phi", "224g^phi", "width",
              "depth", "res", "dropout", "params");
  const auto& variants = models::efficientnet_variants();
  for (size_t i = 0; i < variants.size(); ++i) {
    const auto& v = variants[i];
    const models::ScalingMultipliers m = models::compound_scaling(static_cast<double>(i), c);
    const int64_t params = models::build_model(v.name)->num_parameters();
    std::printf("%-16s %4zu | %7.3f %7.3f %7.0f | %6.2f %6.2f %5d %7.1f %12lld\n", v.name, i, m.depth, m.width,
                224.0 * m.resolution, v.width, v.depth, v.resolution, v.dropout, static_cast<long long>(params));
  }
  std::printf("\nleft: the pure compound rule at phi = 0..7; right: the released B0-B7 coefficients\n"
              "(the paper grid-searched phi=1 and hand-picked the larger models).\n");
}

void run(const SummaryArgs& a) {
  if (a.list) {
    KCHECK(a.model.empty() && a.input.empty(), ValueError,
           "summary: --list prints the whole zoo; give it alone, or --model NAME for one model");
    print_list();
    return;
  }
  KCHECK(!a.model.empty(), ValueError, "summary: give --model NAME or --list");
  const models::ModelEntry& entry = models::find_model(a.model);
  std::vector<int64_t> chw;
  if (a.input.empty())
    chw = {3, entry.default_resolution, entry.default_resolution};
  else
    chw = parse_chw(a.input, "summary");
  models::ModelOptions o;
  if (a.num_classes != 0) o.num_classes = a.num_classes;
  o.width_mult = a.width_mult;
  o.depth_mult = a.depth_mult;
  KCHECK(!(a.cifar_stem && a.no_cifar_stem), ValueError, "summary: give --cifar-stem or --no-cifar-stem, not both");
  // By default the stem train and bench would build at this resolution.
  o.cifar_stem = a.cifar_stem || (!a.no_cifar_stem && models::cifar_stem_for_resolution(chw[1]));
  o.in_channels = chw[0];
  nn::ModulePtr model = models::build_model(a.model, o);
  const models::ModelSummary s = models::summarize(*model, {1, chw[1], chw[2], chw[0]});
  std::cout << models::format_summary(a.model, s);
  if (o.cifar_stem && entry.family != "cifar")  // the CIFAR net has only the one stem
    std::cout << "built with the CIFAR stem (stride 1, total stride 8), as train and bench build it at 64 px and below; "
                 "--no-cifar-stem for the model's own\n";
}

}  // namespace

void register_summary(CLI::App& app) {
  auto args = std::make_shared<SummaryArgs>();
  CLI::App* cmd = app.add_subcommand("summary", "Layer table, parameters, multiply-adds and receptive field of a model");
  cmd->add_option("--model,-m", args->model, "model name (see --list)");
  cmd->add_option("--input", args->input, "input C x H x W, e.g. 3x32x32 (default: the model's published size)");
  cmd->add_option("--num-classes", args->num_classes, "classifier outputs (default: the model's)")
      ->check(CLI::Range(int64_t{1}, int64_t{1000000}));
  cmd->add_option("--width-mult", args->width_mult, "channel multiplier");
  cmd->add_option("--depth-mult", args->depth_mult, "layer-count multiplier");
  cmd->add_flag("--cifar-stem", args->cifar_stem,
                "stride-1 stem, total stride 8 (default: at 64 px and below, as train and bench build)");
  cmd->add_flag("--no-cifar-stem", args->no_cifar_stem, "the model's own stem at any input size");
  cmd->add_flag("--list", args->list, "list the models and EfficientNet's B0-B7 compound-scaling table");
  cmd->callback([args] { run(*args); });
}

}  // namespace kestrel::cli
