#include "trainers/models/weights.h"

#include <torch/torch.h>

#include <set>
#include <sstream>
#include <stdexcept>
#include <string_view>

#include "qat/export/safetensors.h"

namespace qat::models {
namespace {

// Quantizer state sits under a child named "*_quantizer".
bool quantizer_state(const std::string& name) {
  std::istringstream parts(name);
  std::string part;
  while (std::getline(parts, part, '.')) {
    constexpr std::string_view kSuffix = "_quantizer";
    if (part.size() > kSuffix.size() &&
        part.compare(part.size() - kSuffix.size(), kSuffix.size(), kSuffix) ==
            0)
      return true;
  }
  return false;
}

std::string shape_text(at::IntArrayRef shape) {
  std::ostringstream s;
  s << shape;
  return s.str();
}

std::string list(const std::vector<std::string>& names) {
  std::string out;
  const size_t shown = std::min<size_t>(names.size(), 8);
  for (size_t i = 0; i < shown; ++i)
    out += (i ? ", " : "") + names[i];
  if (names.size() > shown)
    out += " (and " + std::to_string(names.size() - shown) + " more)";
  return out;
}

} // namespace

NamedTensors float_weights(const torch::nn::Module& model) {
  NamedTensors out;
  for (const auto& item : model.named_parameters()) {
    if (!quantizer_state(item.key()))
      out.emplace_back(item.key(), item.value());
  }
  for (const auto& item : model.named_buffers()) {
    if (!quantizer_state(item.key()))
      out.emplace_back(item.key(), item.value());
  }
  return out;
}

void save_weights(
    const torch::nn::Module& model,
    const std::string& path,
    const std::map<std::string, std::string>& metadata) {
  NamedTensors tensors;
  for (const auto& [name, t] : float_weights(model))
    tensors.emplace_back(name, t.detach());
  safetensors::write(path, tensors, metadata);
}

void load_weights(
    torch::nn::Module& model,
    const std::string& path,
    const std::function<bool(const std::string&)>& ignore) {
  const auto file = safetensors::File::read(path);
  const NamedTensors targets = float_weights(model);
  std::vector<std::string> missing, unexpected, mismatched;
  std::set<std::string> wanted;
  for (const auto& [name, t] : targets) {
    wanted.insert(name);
    if (!file.contains(name)) {
      missing.push_back(name);
    } else if (file.info(name).shape != t.sizes().vec()) {
      mismatched.push_back(
          name + " " + shape_text(file.info(name).shape) + " (model " +
          shape_text(t.sizes()) + ")");
    }
  }
  for (const auto& name : file.names()) {
    if (!wanted.count(name) && !(ignore && ignore(name)))
      unexpected.push_back(name);
  }
  if (!missing.empty() || !unexpected.empty() || !mismatched.empty()) {
    std::string why;
    if (!missing.empty())
      why += "; missing tensors: " + list(missing);
    if (!unexpected.empty())
      why += "; unexpected tensors: " + list(unexpected);
    if (!mismatched.empty())
      why += "; shape mismatches: " + list(mismatched);
    throw std::runtime_error(path + ": does not fit the model" + why);
  }
  torch::NoGradGuard no_grad;
  for (const auto& [name, t] : targets) {
    torch::Tensor target = t;
    target.copy_(file.tensor(name).to(t.scalar_type()));
  }
}

} // namespace qat::models
