// kestrel scale-search: EfficientNet's constrained grid search over depth,
// width and resolution coefficients, measured in parameters and multiply-adds,
// optionally with a short proxy training of every candidate.
#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>

#include "tools/lib/scale_search.h"

namespace kestrel::cli {

void register_scale_search(CLI::App& app) {
  auto o = std::make_shared<tools::ScaleSearchOptions>();
  auto no_progress = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand(
      "scale-search", "Search compound-scaling coefficients (alpha beta^2 gamma^2 ~ 2) by params, MACs and accuracy");
  cmd->add_option("--model,-m", o->model, "the base model to scale")->capture_default_str();
  cmd->add_option("--phi", o->phi, "compound coefficient the candidates are built at")->capture_default_str();
  cmd->add_option("--base-resolution", o->base_resolution, "input size of the unscaled model")->capture_default_str();
  cmd->add_option("--num-classes", o->num_classes,
                  "classifier outputs (default: the proxy data's with --train-epochs, else 100)");
  cmd->add_option("--in-channels", o->in_channels,
                  "input channels (default: the proxy data's with --train-epochs, else 3)");
  cmd->add_option("--alpha-max", o->grid.alpha_max, "largest depth coefficient of the grid")->capture_default_str();
  cmd->add_option("--beta-max", o->grid.beta_max, "largest width coefficient of the grid")->capture_default_str();
  cmd->add_option("--gamma-max", o->grid.gamma_max, "largest resolution coefficient of the grid")
      ->capture_default_str();
  cmd->add_option("--step", o->grid.step, "grid spacing of every coefficient")->capture_default_str();
  cmd->add_option("--tolerance", o->grid.tolerance, "allowed distance of alpha beta^2 gamma^2 from 2")
      ->capture_default_str();
  cmd->add_option("--max-params", o->max_params, "drop candidates with more parameters (0: no budget)");
  cmd->add_option("--max-macs", o->max_macs, "drop candidates with more multiply-adds per image (0: no budget)");
  cmd->add_option("--train-epochs", o->train_epochs, "proxy-train every candidate for this many epochs (0: measure only)")
      ->capture_default_str();
  cmd->add_option("--dataset", o->train.dataset, "proxy training data (with --train-epochs)")->capture_default_str();
  cmd->add_option("--data-dir", o->train.data_dir, "data location (default: the data set's standard place)");
  cmd->add_option("--limit-train", o->train.limit_train, "use only N training images (the first; an image folder's spread over its classes)");
  cmd->add_option("--limit-test", o->train.limit_test, "use only N test images (the first; an image folder's spread over its classes)");
  cmd->add_option("--test-split", o->train.test_split,
                  "--dataset folder without train/ and test/: the fraction of each class held out for testing")
      ->capture_default_str();
  cmd->add_option("--batch-size,-b", o->train.batch_size, "proxy training batch size")->capture_default_str();
  cmd->add_option("--lr", o->train.lr, "proxy training peak learning rate")->capture_default_str();
  cmd->add_option("--device", o->train.device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--seed", o->train.seed, "random seed of every proxy run")->capture_default_str();
  cmd->add_option("--out,-o", o->out, "folder for search.csv, search.md and the proxy runs")->capture_default_str();
  cmd->add_flag("--overwrite", o->overwrite, "replace an existing search (and its proxy runs) in --out");
  cmd->add_flag("--no-progress", *no_progress, "no progress bars");
  cmd->callback([o, no_progress] {
    o->progress = !*no_progress;
    const std::vector<tools::ScaleCandidate> rows = tools::scale_search(*o);
    std::cout << tools::scale_search_markdown(rows, *o);
    std::cerr << "written to " << o->out << "/ (search.csv, search.md)\n";
  });
}

}  // namespace kestrel::cli
