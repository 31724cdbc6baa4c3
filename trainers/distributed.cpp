#include "trainers/distributed.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/comm.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>
#ifdef QAT_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <torch/csrc/autograd/custom_function.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "trainers/error_text.h"

namespace qat::train {
namespace {

using Clock = std::chrono::steady_clock;

int64_t parse_int(const std::string& variable, const std::string& text) {
  try {
    size_t used = 0;
    const int64_t value = std::stoll(text, &used);
    if (used == text.size())
      return value;
  } catch (const std::exception&) {
  }
  throw DistributedError(
      "environment variable " + variable + "='" + text + "' is not an integer");
}

// How long a rank that saw a collective fail waits for the others to say
// whether they are still there.
constexpr std::chrono::milliseconds kPostMortem{3000};

// Runs `work` on a thread of its own and waits for it at most `limit`: a
// TCPStore request to a rank 0 that is stopped (not dead) never returns,
// whatever the store's timeout. Returns false when `work` did not finish in
// time; it is then left behind, owning what it captured.
bool finishes_within(
    std::chrono::milliseconds limit,
    std::function<void()> work) {
  struct Done {
    std::mutex mutex;
    std::condition_variable signal;
    bool done = false;
  };
  auto state = std::make_shared<Done>();
  std::thread([state, work = std::move(work)] {
    try {
      work();
    } catch (const std::exception&) {
      // The caller reads what `work` recorded before it threw.
    }
    std::lock_guard<std::mutex> lock(state->mutex);
    state->done = true;
    state->signal.notify_all();
  }).detach();
  std::unique_lock<std::mutex> lock(state->mutex);
  return state->signal.wait_for(lock, limit, [&] { return state->done; });
}

bool is_loopback(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

} // namespace

std::string first_slurm_host(const std::string& nodelist) {
  // The first entry: up to a comma outside brackets.
  size_t end = 0;
  for (int depth = 0; end < nodelist.size(); ++end) {
    const char c = nodelist[end];
    depth += c == '[' ? 1 : c == ']' ? -1 : 0;
    if (c == ',' && depth == 0)
      break;
  }
  const std::string entry = nodelist.substr(0, end);
  const auto open = entry.find('[');
  if (open == std::string::npos)
    return entry;
  const auto close = entry.find(']', open);
  if (close == std::string::npos)
    throw DistributedError(
        "SLURM_JOB_NODELIST='" + nodelist + "': unbalanced '['");
  // "007-009,012" -> "007" (its zero padding is part of the name).
  const std::string ranges = entry.substr(open + 1, close - open - 1);
  const std::string first = ranges.substr(0, ranges.find_first_of(",-"));
  return entry.substr(0, open) + first + entry.substr(close + 1);
}

Launch Launch::from_environment(
    const std::function<std::optional<std::string>(const std::string&)>&
        lookup) {
  Launch launch;
  const auto integer = [&](const std::string& name) {
    return parse_int(name, lookup(name).value());
  };
  if (lookup("RANK") && lookup("WORLD_SIZE")) {
    launch.launcher = "torchrun";
    launch.rank = integer("RANK");
    launch.world_size = integer("WORLD_SIZE");
    launch.local_rank = lookup("LOCAL_RANK") ? integer("LOCAL_RANK") : 0;
  } else if (lookup("SLURM_PROCID") && lookup("SLURM_NTASKS")) {
    launch.launcher = "slurm";
    launch.rank = integer("SLURM_PROCID");
    launch.world_size = integer("SLURM_NTASKS");
    launch.local_rank = lookup("SLURM_LOCALID") ? integer("SLURM_LOCALID") : 0;
    const auto nodes = lookup("SLURM_JOB_NODELIST")
        ? lookup("SLURM_JOB_NODELIST")
        : lookup("SLURM_NODELIST");
    if (nodes)
      launch.master_addr = first_slurm_host(*nodes);
  } else {
    return launch;
  }
  if (const auto addr = lookup("MASTER_ADDR"))
    launch.master_addr = *addr;
  else if (launch.launcher == "torchrun" && launch.world_size > 1)
    throw DistributedError(
        "RANK and WORLD_SIZE are set but MASTER_ADDR is not");
  if (lookup("MASTER_PORT"))
    launch.master_port = integer("MASTER_PORT");
  if (launch.world_size < 1 || launch.rank < 0 ||
      launch.rank >= launch.world_size)
    throw DistributedError(
        "rank " + std::to_string(launch.rank) + " is outside a world of " +
        std::to_string(launch.world_size) + " (" + launch.launcher +
        " environment)");
  if (launch.master_port <= 0 || launch.master_port > 65535)
    throw DistributedError(
        "MASTER_PORT " + std::to_string(launch.master_port) +
        " is not a TCP port");
  return launch;
}

Launch Launch::from_environment() {
  return from_environment([](const std::string& name) {
    const char* value = std::getenv(name.c_str());
    return value ? std::optional<std::string>(value) : std::nullopt;
  });
}

// ---------------------------------------------------------------------------

struct Distributed::Impl {
  Launch launch;
  DistributedOptions options;
  std::string backend = "none";
  c10::intrusive_ptr<c10d::TCPStore> tcp;
  c10::intrusive_ptr<c10d::Store>
      status; // our keys: failed/<rank>, error/<rank>
  c10::intrusive_ptr<c10d::ProcessGroup> group;
  bool agent_store = false; // the store is torchrun's, not rank 0's
  std::atomic<int64_t> communication_ns{0};
  Clock::time_point start = Clock::now();

  void add_time(Clock::time_point since) {
    communication_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(
                            Clock::now() - since)
                            .count();
  }
};

namespace {

// DDP's default all-reduce hook (the bucket divided by the world size, then
// summed over the ranks), timed from launch to completion.
class TimedAllReduce final : public c10d::CommHookInterface {
 public:
  explicit TimedAllReduce(Distributed::Impl& impl) : impl_(impl) {}

  c10::intrusive_ptr<c10::ivalue::Future> runHook(
      c10d::GradBucket& bucket) override {
    const auto start = Clock::now();
    auto& buffer = bucket.getBufferRef();
    buffer.div_(impl_.launch.world_size);
    std::vector<at::Tensor> tensors{buffer};
    auto future = impl_.group->allreduce(tensors)->getFuture();
    future->addCallback(
        [this, start](c10::ivalue::Future&) { impl_.add_time(start); });
    return future;
  }

  at::Tensor parseHookResult(const c10::IValue& result) override {
    return c10d::detail::parseCppCommHookResult(result);
  }

 private:
  Distributed::Impl& impl_;
};

class ReducerSync final : public GradientSync {
 public:
  ReducerSync(Distributed& owner, std::shared_ptr<c10d::Reducer> reducer)
      : owner_(owner), reducer_(std::move(reducer)) {}

  void before_backward(const torch::Tensor& loss, bool average) override {
    if (!average)
      return; // accumulate locally: the reducer's hooks stay idle
    try {
      // As DDP's forward: the buckets are rebuilt once, in the order the
      // first backward produced gradients, then each backward is expected.
      reducer_->rebuild_buckets();
      reducer_->prepare_for_forward();
      reducer_->prepare_for_backward({loss});
    } catch (const std::exception& e) {
      owner_.fail("preparing the gradient all-reduce", e);
    }
  }

 private:
  Distributed& owner_;
  std::shared_ptr<c10d::Reducer> reducer_;
};

// One process: gradients are already the whole batch's.
class LocalSync final : public GradientSync {
 public:
  void before_backward(const torch::Tensor&, bool) override {}
};

} // namespace

Distributed::Distributed() : impl_(std::make_unique<Impl>()) {}

Distributed::Distributed(
    const Launch& launch,
    torch::Device device,
    const DistributedOptions& options)
    : impl_(std::make_unique<Impl>()) {
  auto& s = *impl_;
  s.launch = launch;
  s.options = options;
  if (launch.world_size == 1)
    return;
  std::string backend = options.backend;
  if (backend == "auto")
    backend = device.is_cuda() ? "nccl" : "gloo";
  if (backend != "gloo" && backend != "nccl")
    throw DistributedError(
        "unknown backend '" + backend + "'; expected auto, gloo or nccl");
  if (backend == "nccl" && !device.is_cuda())
    throw DistributedError(
        "the nccl backend reduces CUDA tensors; this run is on " +
        device.str() + " (use gloo)");
  if (backend == "gloo" && device.is_cuda())
    throw DistributedError(
        "this run is on CUDA; qat's gloo path reduces CPU tensors (use nccl)");
  const std::string where = launch.master_addr + ":" +
      std::to_string(launch.master_port) + " (rank " +
      std::to_string(launch.rank) + " of " + std::to_string(launch.world_size) +
      ", " + launch.launcher + ")";
  try {
    c10d::TCPStoreOptions store_options;
    store_options.port = static_cast<std::uint16_t>(launch.master_port);
    // torchrun's agent already serves a store at MASTER_PORT and says so;
    // then every rank is a client of it, as in torch.distributed.
    const char* agent = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
    s.agent_store = agent && std::string(agent) == "True";
    store_options.isServer = launch.rank == 0 && !s.agent_store;
    store_options.numWorkers = static_cast<size_t>(launch.world_size);
    store_options.waitWorkers = true;
    store_options.timeout = options.timeout;
    s.tcp =
        c10::make_intrusive<c10d::TCPStore>(launch.master_addr, store_options);
  } catch (const std::exception& e) {
    throw DistributedError(
        "rendezvous at " + where + " failed within " +
        std::to_string(options.timeout.count() / 1000) +
        " s: " + error_text(e));
  }
  // The key namespaces torch.distributed uses: one per torchrun restart
  // (the agent's store outlives the workers it restarts), then the default
  // group's.
  const char* restarts = std::getenv("TORCHELASTIC_RESTART_COUNT");
  auto attempt = c10::make_intrusive<c10d::PrefixStore>(
      "/worker/attempt_" + std::string(restarts ? restarts : "0"), s.tcp);
  auto store = c10::make_intrusive<c10d::PrefixStore>("default_pg", attempt);
  s.status = c10::make_intrusive<c10d::PrefixStore>("qat", attempt);
  const int rank = static_cast<int>(launch.rank);
  const int world = static_cast<int>(launch.world_size);
  s.group = c10::make_intrusive<c10d::ProcessGroup>(store, rank, world);
  // The group's one backend, for the tensors of `device_type`.
  const auto attach = [&](c10::DeviceType device_type,
                          c10d::ProcessGroup::BackendType type,
                          c10::intrusive_ptr<c10d::Backend> engine) {
    s.group->setDefaultBackend(type);
    s.group->setBackend(device_type, type, engine);
    engine->setSequenceNumberForGroup();
  };
  try {
    if (backend == "gloo") {
      auto gloo_options =
          c10d::ProcessGroupGloo::Options::create(options.timeout);
      // Loopback jobs bind loopback; others the interface GLOO_SOCKET_IFNAME
      // names, or this host's own address (never MASTER_ADDR: that is
      // another machine's on every node but the first).
      const char* interface = std::getenv("GLOO_SOCKET_IFNAME");
      gloo_options->devices.push_back(
          interface ? c10d::ProcessGroupGloo::createDeviceForInterface(
                          interface)
              : is_loopback(launch.master_addr)
              ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
              : c10d::ProcessGroupGloo::createDefaultDevice());
      attach(
          c10::DeviceType::CPU,
          c10d::ProcessGroup::BackendType::GLOO,
          c10::make_intrusive<c10d::ProcessGroupGloo>(
              store, rank, world, gloo_options));
    } else {
#ifdef QAT_WITH_NCCL
      auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
      nccl_options->timeout = options.timeout;
      attach(
          c10::DeviceType::CUDA,
          c10d::ProcessGroup::BackendType::NCCL,
          c10::make_intrusive<c10d::ProcessGroupNCCL>(
              store, rank, world, nccl_options));
#else
      throw DistributedError(
          "this build of qat has no NCCL (it needs CUDA and nccl.h at build time)");
#endif
    }
  } catch (const DistributedError&) {
    throw;
  } catch (const std::exception& e) {
    throw DistributedError(
        "creating the " + backend + " process group at " + where +
        " failed: " + error_text(e));
  }
  s.backend = backend;
}

Distributed::~Distributed() = default;

int64_t Distributed::rank() const {
  return impl_->launch.rank;
}
int64_t Distributed::world_size() const {
  return impl_->launch.world_size;
}
const std::string& Distributed::backend() const {
  return impl_->backend;
}

double Distributed::communication_seconds() const {
  return static_cast<double>(impl_->communication_ns.load()) * 1e-9;
}

void Distributed::all_reduce(
    torch::Tensor& tensor,
    ReduceOp op,
    const std::string& what) {
  if (!impl_->group)
    return;
  const auto start = Clock::now();
  c10d::AllreduceOptions options;
  options.reduceOp = op == ReduceOp::sum ? c10d::ReduceOp::SUM
      : op == ReduceOp::min              ? c10d::ReduceOp::MIN
                                         : c10d::ReduceOp::MAX;
  std::vector<at::Tensor> tensors{
      tensor.is_contiguous() ? tensor : tensor.contiguous()};
  try {
    impl_->group->allreduce(tensors, options)->wait();
  } catch (const std::exception& e) {
    fail(what, e);
  }
  if (!tensor.is_same(tensors[0]))
    tensor.copy_(tensors[0]);
  impl_->add_time(start);
}

void Distributed::all_reduce(
    std::vector<double>& values,
    ReduceOp op,
    const std::string& what) {
  if (!impl_->group || values.empty())
    return;
  auto tensor = torch::tensor(values, torch::kDouble);
  if (impl_->backend == "nccl")
    tensor = tensor.to(torch::Device(torch::kCUDA, impl_->launch.local_rank));
  all_reduce(tensor, op, what);
  tensor = tensor.cpu();
  std::copy_n(tensor.data_ptr<double>(), values.size(), values.begin());
}

namespace {

/* y = sum_r x_r. Every rank's loss L_r depends on y, so the gradient of
 * sum_r L_r with respect to rank r's x is sum_r' dL_r'/dy: the backward is
 * the same all-reduce of the incoming gradients.
 */
struct SumOverRanks : torch::autograd::Function<SumOverRanks> {
  static torch::Tensor forward(
      torch::autograd::AutogradContext* ctx,
      const torch::Tensor& x,
      Distributed* dist) {
    // The pointer travels as an integer: saved_data holds IValues only.
    ctx->saved_data["dist"] = reinterpret_cast<int64_t>(dist);
    auto y = x.clone();
    dist->all_reduce(y, ReduceOp::sum, "synchronous BN statistics");
    return y;
  }
  static torch::autograd::variable_list backward(
      torch::autograd::AutogradContext* ctx,
      torch::autograd::variable_list grads) {
    auto* dist =
        reinterpret_cast<Distributed*>(ctx->saved_data["dist"].toInt());
    auto g = grads[0].contiguous().clone();
    dist->all_reduce(g, ReduceOp::sum, "synchronous BN gradients");
    return {g, torch::Tensor()};
  }
};

} // namespace

torch::Tensor Distributed::gather_over_ranks(const torch::Tensor& tensor) {
  if (!impl_->group)
    return tensor.unsqueeze(0);
  // This rank's slot filled, zeros elsewhere, summed over the ranks: an
  // all-gather whose backward is SumOverRanks's.
  auto zeros = [&](int64_t slots) {
    auto sizes = tensor.sizes().vec();
    sizes.insert(sizes.begin(), slots);
    return torch::zeros(sizes, tensor.options());
  };
  return SumOverRanks::apply(
      torch::cat(
          {zeros(rank()),
           tensor.unsqueeze(0),
           zeros(world_size() - rank() - 1)}),
      this);
}

void Distributed::broadcast(
    const std::vector<torch::Tensor>& tensors,
    const std::string& what) {
  if (!impl_->group || tensors.empty())
    return;
  const auto start = Clock::now();
  try {
    // Coalesced into buffers of up to 256 MiB per dtype, as DDP's
    // _sync_module_states.
    c10d::broadcast_coalesced(impl_->group, tensors, 256 << 20, 0);
  } catch (const std::exception& e) {
    fail(what, e);
  }
  impl_->add_time(start);
}

void Distributed::barrier(const std::string& what) {
  if (!impl_->group)
    return;
  const auto start = Clock::now();
  try {
    impl_->group->barrier()->wait();
  } catch (const std::exception& e) {
    fail(what, e);
  }
  impl_->add_time(start);
}

std::unique_ptr<GradientSync> Distributed::data_parallel(
    const std::vector<torch::Tensor>& parameters,
    bool find_unused) {
  if (!impl_->group)
    return std::make_unique<LocalSync>();
  const std::vector<bool> sparse(parameters.size(), false);
  const size_t cap = static_cast<size_t>(impl_->options.bucket_mb) << 20;
  // DDP's bucketing: parameters in reverse order (roughly the order backward
  // produces their gradients), the first bucket small so that its all-reduce
  // starts early.
  auto [buckets, limits] = c10d::compute_bucket_assignment_by_size(
      parameters, {size_t{1} << 20, cap}, sparse);
  std::reverse(buckets.begin(), buckets.end());
  auto reducer = std::make_shared<c10d::Reducer>(
      parameters,
      buckets,
      impl_->group,
      sparse,
      static_cast<int64_t>(cap),
      find_unused,
      /*gradient_as_bucket_view=*/false,
      std::unordered_map<size_t, std::string>{},
      /*first_bucket_bytes_cap=*/int64_t{1} << 20,
      /*skip_all_reduce_unused_params=*/false,
      /*use_python_reducer=*/false,
      std::vector<int64_t>{});
  reducer->register_comm_hook(std::make_unique<TimedAllReduce>(*impl_));
  return std::make_unique<ReducerSync>(*this, std::move(reducer));
}

void Distributed::guarded(
    const std::string& what,
    const std::function<void()>& body) {
  if (!impl_->group)
    return body();
  try {
    body();
  } catch (const std::exception& e) {
    fail(what, e);
  }
}

void Distributed::announce_failure(const std::string& reason) noexcept {
  if (!impl_->status)
    return;
  // Best effort: a store that is gone with rank 0 makes the others say so.
  auto status = impl_->status;
  const auto key = "error/" + std::to_string(rank());
  finishes_within(kPostMortem, [status, key, reason] {
    status->set(key, std::vector<uint8_t>(reason.begin(), reason.end()));
  });
}

void Distributed::fail(const std::string& during, const std::exception& e) {
  const auto& s = *impl_;
  const std::string head = "rank " + std::to_string(rank()) + " of " +
      std::to_string(world_size()) + ": " + during + " failed: ";
  const std::string cause = " [c10d: " + error_text(e) + "]";
  if (!s.status)
    throw DistributedError(head + error_text(e));
  // Ask the others. Each rank that sees the failure says so; one that
  // stopped on an error of its own has left the reason; one that says
  // nothing within kPostMortem is dead or hung. The questions run on a
  // thread of their own: a stopped rank 0 would hold its store's answers
  // for ever.
  struct Answers {
    std::mutex mutex;
    std::vector<std::string> stopped; // "rank 3 stopped with: ..."
    std::vector<bool> answered;
    bool store_reached = false;
  };
  auto answers = std::make_shared<Answers>();
  answers->answered.assign(static_cast<size_t>(world_size()), false);
  answers->answered[static_cast<size_t>(rank())] = true;
  auto status = s.status;
  const int64_t me = rank(), world = world_size();
  finishes_within(kPostMortem + std::chrono::seconds(1), [=] {
    status->set("failed/" + std::to_string(me), std::vector<uint8_t>{1});
    const auto deadline = Clock::now() + kPostMortem;
    for (;;) {
      bool all = true;
      for (int64_t r = 0; r < world; ++r) {
        const auto id = std::to_string(r);
        {
          std::lock_guard<std::mutex> lock(answers->mutex);
          if (answers->answered[static_cast<size_t>(r)])
            continue;
        }
        std::string stopped;
        bool answered = false;
        if (status->check({"error/" + id})) {
          const auto reason = status->get("error/" + id);
          stopped = "rank " + id +
              " stopped with: " + std::string(reason.begin(), reason.end());
          answered = true;
        } else {
          answered = status->check({"failed/" + id});
        }
        std::lock_guard<std::mutex> lock(answers->mutex);
        answers->store_reached = true; // it answered a question
        answers->answered[static_cast<size_t>(r)] = answered;
        if (!stopped.empty())
          answers->stopped.push_back(stopped);
        all = all && answered;
      }
      if (all || Clock::now() > deadline)
        return;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  std::lock_guard<std::mutex> lock(answers->mutex);
  if (!answers->store_reached)
    throw DistributedError(
        head +
        (s.agent_store ? "torchrun's agent, which hosts the store at "
                       : "rank 0, which hosts the store at ") +
        s.launch.master_addr + ":" + std::to_string(s.launch.master_port) +
        ", does not answer: it died or hangs" + cause);
  std::vector<std::string> findings;
  std::string silent;
  int64_t silent_count = 0;
  for (int64_t r = 0; r < world; ++r) {
    if (!answers->answered[static_cast<size_t>(r)]) {
      silent += (silent.empty() ? "" : ", ") + std::to_string(r);
      ++silent_count;
    }
  }
  if (silent_count > 0)
    findings.push_back(
        "rank" + std::string(silent_count > 1 ? "s " : " ") + silent +
        " did not answer within " + std::to_string(kPostMortem.count() / 1000) +
        " s: died or hung");
  findings.insert(
      findings.end(), answers->stopped.begin(), answers->stopped.end());
  if (findings.empty())
    throw DistributedError(head + error_text(e));
  std::string message = head;
  for (size_t i = 0; i < findings.size(); ++i)
    message += (i ? "; " : "") + findings[i];
  throw DistributedError(message + cause);
}

} // namespace qat::train
