#include "trainers/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fcntl.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <mutex>
#include <regex>
#include <sstream>

#include "qat/export/safetensors.h"
#include "trainers/error_text.h"

namespace qat::train {
namespace fs = std::filesystem;
namespace {

constexpr const char* kModelPrefix = "model/";

torch::Tensor bytes_tensor(const std::string& bytes) {
  auto t = torch::empty({static_cast<int64_t>(bytes.size())}, torch::kByte);
  std::copy(bytes.begin(), bytes.end(), t.data_ptr<uint8_t>());
  return t;
}

std::string tensor_bytes(const torch::Tensor& t) {
  const auto c = t.contiguous();
  const auto* p = static_cast<const char*>(c.data_ptr());
  return std::string(p, p + c.nbytes());
}

// CRC-32 over names, raw bytes and metadata, in file order: any flipped bit
// in the data section or the header changes it.
std::string checksum(
    const NamedTensors& tensors,
    const std::map<std::string, std::string>& metadata) {
  uLong crc = crc32(0L, Z_NULL, 0);
  const auto add = [&](const void* p, size_t n) {
    crc = crc32_z(crc, static_cast<const Bytef*>(p), n);
  };
  for (const auto& [name, t] : tensors) {
    add(name.data(), name.size());
    const auto c = t.contiguous();
    add(c.data_ptr(), c.nbytes());
  }
  for (const auto& [key, value] : metadata) {
    if (key == "qat.crc32")
      continue;
    add(key.data(), key.size());
    add(value.data(), value.size());
  }
  char hex[9];
  std::snprintf(hex, sizeof hex, "%08lx", static_cast<unsigned long>(crc));
  return hex;
}

void fsync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

int64_t step_of(const fs::path& p) {
  static const std::regex pattern(R"(step-(\d+)\.safetensors)");
  std::smatch m;
  const std::string name = p.filename().string();
  return std::regex_match(name, m, pattern) ? std::stoll(m[1]) : -1;
}

} // namespace

NamedTensors module_state(const torch::nn::Module& model) {
  NamedTensors state;
  for (const auto& p : model.named_parameters())
    state.emplace_back(p.key(), p.value().detach());
  for (const auto& b : model.named_buffers())
    state.emplace_back(b.key(), b.value().detach());
  return state;
}

void load_module_state(
    torch::nn::Module& model,
    const NamedTensors& state,
    const std::string& source) {
  std::map<std::string, torch::Tensor> given(state.begin(), state.end());
  std::map<std::string, std::pair<torch::Tensor, bool>> targets;
  for (const auto& p : model.named_parameters())
    targets[p.key()] = {p.value(), true};
  for (const auto& b : model.named_buffers())
    targets[b.key()] = {b.value(), false};
  std::string problems;
  const auto problem = [&](const std::string& what) {
    problems += "\n  " + what;
  };
  for (const auto& [name, target] : targets) {
    const auto it = given.find(name);
    if (it == given.end()) {
      problem("missing: " + name);
      continue;
    }
    const auto& [tensor, is_parameter] = target;
    // Quantizer parameters start as [1] (scales) or empty (a K-quant's
    // learned halves) and take their shape on the first batch; buffers
    // (observer ranges, K-quant representations) start empty.
    const bool resizable = !is_parameter || tensor.numel() <= 1;
    if (tensor.sizes() != it->second.sizes() && !resizable) {
      std::ostringstream s;
      s << "shape of " << name << ": model " << tensor.sizes() << ", file "
        << it->second.sizes();
      problem(s.str());
    }
  }
  for (const auto& [name, tensor] : given) {
    if (!targets.count(name))
      problem("unexpected: " + name);
  }
  if (!problems.empty()) {
    throw CheckpointError(source + ": does not match the model:" + problems);
  }
  torch::NoGradGuard no_grad;
  for (auto& [name, target] : targets) {
    auto& tensor = target.first;
    const auto& value = given.at(name);
    if (tensor.sizes() == value.sizes())
      tensor.copy_(value);
    else
      tensor.set_data(value.to(tensor.device(), tensor.scalar_type()).clone());
  }
}

void Checkpoint::restore(
    torch::nn::Module& module,
    torch::optim::Optimizer* optimizer_to_load) const {
  load_module_state(module, model, path);
  if (optimizer_to_load && !optimizer.empty()) {
    torch::serialize::InputArchive archive;
    std::istringstream stream(optimizer);
    archive.load_from(stream);
    optimizer_to_load->load(archive);
  }
  if (rng.defined()) {
    auto generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(rng);
  }
}

void write_checkpoint(const Checkpoint& c) {
  NamedTensors tensors;
  for (const auto& [name, t] : c.model)
    tensors.emplace_back(kModelPrefix + name, t.detach().cpu().contiguous());
  if (!c.optimizer.empty())
    tensors.emplace_back("optimizer", bytes_tensor(c.optimizer));
  if (c.rng.defined())
    tensors.emplace_back("rng", c.rng.contiguous());
  std::map<std::string, std::string> metadata{
      {"qat.checkpoint", "1"},
      {"qat.step", std::to_string(c.step)},
      {"qat.final", c.final ? "1" : "0"},
      {"qat.config", c.config}};
  metadata["qat.crc32"] = checksum(tensors, metadata);
  const fs::path dir = fs::path(c.path).parent_path();
  if (!dir.empty())
    fs::create_directories(dir);
  safetensors::write(c.path, tensors, metadata);
  fsync_directory(dir.empty() ? "." : dir.string());
}

Checkpoint read_checkpoint(const std::string& path) {
  const auto fail = [&](const std::string& why) -> CheckpointError {
    return CheckpointError("checkpoint " + path + ": " + why);
  };
  safetensors::File file;
  try {
    file = safetensors::File::read(path);
  } catch (const std::exception& e) {
    throw fail(error_text(e));
  }
  const auto& metadata = file.metadata();
  for (const char* key : {"qat.checkpoint", "qat.step", "qat.crc32"}) {
    if (!metadata.count(key))
      throw fail(std::string("not a qat checkpoint (no ") + key + ")");
  }
  NamedTensors tensors;
  for (const auto& name : file.names())
    tensors.emplace_back(name, file.tensor(name));
  const std::string expected = metadata.at("qat.crc32");
  const std::string actual = checksum(tensors, metadata);
  if (actual != expected) {
    throw fail(
        "checksum mismatch (stored " + expected + ", computed " + actual +
        "): the file is corrupt");
  }
  Checkpoint c;
  c.path = path;
  c.step = std::stoll(metadata.at("qat.step"));
  c.final = metadata.count("qat.final") && metadata.at("qat.final") == "1";
  c.config = metadata.count("qat.config") ? metadata.at("qat.config") : "";
  const std::string prefix = kModelPrefix;
  for (auto& [name, t] : tensors) {
    if (name.rfind(prefix, 0) == 0)
      c.model.emplace_back(name.substr(prefix.size()), t);
    else if (name == "optimizer")
      c.optimizer = tensor_bytes(t);
    else if (name == "rng")
      c.rng = t;
    else
      throw fail("unexpected tensor '" + name + "'");
  }
  return c;
}

Checkpoints::Checkpoints(std::string dir, int keep)
    : dir_(std::move(dir)), keep_(std::max(1, keep)) {}

std::vector<std::string> Checkpoints::step_files() const {
  std::vector<std::pair<int64_t, std::string>> found;
  if (fs::is_directory(dir_)) {
    for (const auto& e : fs::directory_iterator(dir_)) {
      const int64_t step = step_of(e.path());
      if (step >= 0)
        found.emplace_back(step, e.path().string());
    }
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> paths;
  for (auto& [step, path] : found)
    paths.push_back(std::move(path));
  return paths;
}

std::string Checkpoints::save(
    const torch::nn::Module& model,
    const torch::optim::Optimizer* optimizer,
    int64_t step,
    const std::string& config,
    bool final) const {
  Checkpoint c;
  char name[64];
  std::snprintf(
      name,
      sizeof name,
      "step-%09lld.safetensors",
      static_cast<long long>(step));
  c.path = (fs::path(dir_) / (final ? "final.safetensors" : name)).string();
  c.step = step;
  c.final = final;
  c.config = config;
  c.model = module_state(model);
  if (optimizer) {
    torch::serialize::OutputArchive archive;
    optimizer->save(archive);
    std::ostringstream stream;
    archive.save_to(stream);
    c.optimizer = stream.str();
  }
  {
    auto generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    c.rng = generator.get_state();
  }
  write_checkpoint(c);
  if (!final) {
    const auto files = step_files();
    for (size_t i = 0; i + keep_ < files.size(); ++i)
      fs::remove(files[i]);
  }
  // A writer killed mid-write leaves its temporary file behind (never under
  // a checkpoint's name). This directory has one writer, whose own file is
  // renamed by now: any temporary file left is such a leftover.
  for (const auto& e : fs::directory_iterator(dir_)) {
    if (e.path().filename().string().find(".safetensors.tmp.") !=
        std::string::npos)
      fs::remove(e.path());
  }
  return c.path;
}

std::optional<Checkpoint> Checkpoints::latest(
    const std::function<void(const std::string&)>& warn) const {
  std::vector<std::string> candidates = step_files();
  const fs::path final = fs::path(dir_) / "final.safetensors";
  if (fs::exists(final))
    candidates.push_back(final.string());
  for (auto it = candidates.rbegin(); it != candidates.rend(); ++it) {
    try {
      return read_checkpoint(*it);
    } catch (const CheckpointError& e) {
      warn(std::string(e.what()) + "; trying the one before");
    }
  }
  return std::nullopt;
}

} // namespace qat::train
