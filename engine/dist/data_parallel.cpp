#include "engine/dist/data_parallel.h"

#include <algorithm>

#include "engine/autograd.h"
#include "engine/dist/process_group.h"
#include "engine/ops/elementwise.h"

namespace kestrel::dist {

void broadcast_module(nn::Module& module, int root) {
  for (auto& [name, t] : module.named_parameters()) broadcast_(t, root);
  broadcast_buffers(module, root);
}

void broadcast_buffers(nn::Module& module, int root) {
  for (auto& [name, t] : module.named_buffers()) broadcast_(t, root);
}

namespace {
// PyTorch's DDP caps its first bucket likewise: the first reduction starts
// after the last layers' gradients instead of a quarter of the model's.
constexpr size_t kFirstBucketBytes = size_t{1} << 20;
}  // namespace

struct GradientAverager::State {
  // Consecutive parameters (in bucket order) of one device and dtype, so the
  // layout is a function of the model alone and the same on every rank.
  struct Bucket {
    std::vector<size_t> members;  // indices into params
    int64_t numel = 0;
    size_t bytes = 0;
    Tensor flat;                  // the reduced gradients; kept between steps
    int64_t waiting = 0;          // members the armed backward has not finished
    bool started = false;
  };
  std::vector<Tensor> params;
  std::vector<size_t> bucket_of;  // per parameter
  std::vector<bool> finished;     // per parameter, in the armed backward
  std::vector<Bucket> buckets;
  size_t next_to_start = 0;       // all-reduces start in bucket order on every rank
  bool armed = false;
  int64_t started_in_backward = 0;

  void reset() {
    for (Bucket& b : buckets) {
      b.waiting = static_cast<int64_t>(b.members.size());
      b.started = false;
    }
    std::fill(finished.begin(), finished.end(), false);
    next_to_start = 0;
    started_in_backward = 0;
  }

  void grad_ready(size_t param) {
    if (!armed) return;
    Bucket& b = buckets[bucket_of[param]];
    KCHECK(!b.started, AutogradError, "GradientAverager: a second backward reached parameter ", param,
           " after its bucket's all-reduce started; call prepare_for_backward() before the last backward only");
    if (finished[param]) return;
    finished[param] = true;
    if (--b.waiting > 0) return;
    while (next_to_start < buckets.size() && buckets[next_to_start].waiting == 0) {
      start(buckets[next_to_start++]);
      ++started_in_backward;
    }
  }

  // Gathers the bucket's gradients (zeros for a missing one), divides by the
  // world size first (as DDP: the sum of halves cannot overflow where the sum
  // could), starts the sum, and leaves each gradient a view of its slot.
  void start(Bucket& b) {
    NoGradGuard no_grad;
    const Tensor& first = params[b.members.front()];
    if (!b.flat.defined()) b.flat = Tensor::empty({b.numel}, first.dtype(), first.device());
    int64_t offset = 0;
    for (size_t i : b.members) {
      Tensor& p = params[i];
      KCHECK(p.device() == b.flat.device(), ValueError, "GradientAverager: parameter ", i, " moved to ",
             p.device().str(), " after the averager was made for ", b.flat.device().str());
      const int64_t n = p.numel();
      Tensor slot = b.flat.narrow(0, offset, n);
      const Tensor g = p.grad();
      if (!g.defined())
        slot.zero_();
      else if (g.data_ptr() != slot.data_ptr())
        slot.copy_(g.reshape({n}));
      p.set_grad(slot.view(p.shape()));
      offset += n;
    }
    mul_(b.flat, 1.0 / world_size());
    start_all_reduce_sum_(b.flat);
    b.started = true;
  }
};

GradientAverager::GradientAverager(std::vector<Tensor> params, size_t bucket_bytes)
    : state_(std::make_shared<State>()) {
  State& s = *state_;
  s.params = std::move(params);
  s.bucket_of.assign(s.params.size(), 0);
  s.finished.assign(s.params.size(), false);
  size_t cap = std::min(kFirstBucketBytes, bucket_bytes);
  for (size_t i = s.params.size(); i-- > 0;) {
    const Tensor& p = s.params[i];
    if (!p.requires_grad()) continue;
    const size_t bytes = p.nbytes();
    if (!s.buckets.empty()) {
      const State::Bucket& open = s.buckets.back();
      const Tensor& head = s.params[open.members.front()];
      if (head.device() != p.device() || head.dtype() != p.dtype() || open.bytes + bytes > cap) {
        s.buckets.emplace_back();
        cap = bucket_bytes;
      }
    } else {
      s.buckets.emplace_back();
    }
    State::Bucket& b = s.buckets.back();
    b.members.push_back(i);
    b.numel += p.numel();
    b.bytes += bytes;
    s.bucket_of[i] = s.buckets.size() - 1;
    std::weak_ptr<State> weak = state_;
    s.params[i].register_grad_ready_hook([weak, i](Tensor&) {
      if (auto state = weak.lock()) state->grad_ready(i);
    });
  }
}

GradientAverager::~GradientAverager() = default;

void GradientAverager::prepare_for_backward() {
  if (world_size() == 1) return;
  state_->reset();
  state_->armed = true;
}

void GradientAverager::average() {
  if (world_size() == 1) return;
  State& s = *state_;
  if (!s.armed) s.reset();
  s.armed = false;
  while (s.next_to_start < s.buckets.size()) s.start(s.buckets[s.next_to_start++]);
  finish_all_reduces();
}

int64_t GradientAverager::buckets() const { return static_cast<int64_t>(state_->buckets.size()); }
int64_t GradientAverager::buckets_started_in_backward() const { return state_->started_in_backward; }

}  // namespace kestrel::dist
