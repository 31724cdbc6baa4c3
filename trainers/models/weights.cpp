#include "trainers/models/weights.h"

#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
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

std::string first_line(const std::string& text) {
  return text.substr(0, text.find('\n'));
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

WeightFiles WeightFiles::open(const std::string& path) {
  namespace fs = std::filesystem;
  WeightFiles files;
  if (!fs::is_directory(path)) {
    files.files_.push_back(safetensors::File::read(path));
    files.origin_ = path;
  } else {
    const auto single = fs::path(path) / "model.safetensors";
    const auto index = fs::path(path) / "model.safetensors.index.json";
    if (fs::exists(index)) {
      files.origin_ = index.string();
      std::ifstream in(index);
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(in);
      } catch (const nlohmann::json::exception& e) {
        throw std::runtime_error(
            index.string() + ": not valid JSON: " + first_line(e.what()));
      }
      if (!j.is_object() || !j.contains("weight_map") ||
          !j["weight_map"].is_object())
        throw std::runtime_error(
            index.string() + ": 'weight_map' must be an object of shard names");
      std::map<std::string, size_t> shard_of_file;
      for (const auto& [name, shard] : j["weight_map"].items()) {
        if (!shard.is_string() ||
            fs::path(shard.get<std::string>()).has_parent_path())
          throw std::runtime_error(
              index.string() + ": weight_map['" + name +
              "'] must be a file name in the folder, got " + shard.dump());
        const auto file = shard.get<std::string>();
        if (!shard_of_file.count(file)) {
          const auto shard_path = fs::path(path) / file;
          if (!fs::exists(shard_path))
            throw std::runtime_error(
                index.string() + ": weight_map['" + name +
                "'] names the missing shard " + shard_path.string());
          shard_of_file[file] = files.files_.size();
          files.files_.push_back(safetensors::File::read(shard_path.string()));
        }
        const auto& holder = files.files_[shard_of_file[file]];
        if (!holder.contains(name))
          throw std::runtime_error(
              index.string() + ": weight_map['" + name + "'] says " + file +
              ", which has no tensor of that name");
      }
    } else if (fs::exists(single)) {
      files.origin_ = single.string();
      files.files_.push_back(safetensors::File::read(single.string()));
    } else {
      throw std::runtime_error(
          path + ": no model.safetensors or model.safetensors.index.json");
    }
  }
  for (size_t f = 0; f < files.files_.size(); ++f) {
    for (const auto& name : files.files_[f].names()) {
      if (!files.where_.emplace(name, f).second)
        throw std::runtime_error(
            files.files_[f].path() + ": tensor '" + name + "' is also in " +
            files.files_[files.where_[name]].path());
      files.names_.push_back(name);
    }
  }
  return files;
}

const safetensors::File& WeightFiles::file_of(const std::string& name) const {
  return files_.at(where_.at(name));
}

void load_weights(
    torch::nn::Module& model,
    const WeightFiles& files,
    const std::function<bool(const std::string&)>& ignore) {
  const NamedTensors targets = float_weights(model);
  std::vector<std::string> missing, unexpected, mismatched;
  std::set<std::string> wanted;
  for (const auto& [name, t] : targets) {
    wanted.insert(name);
    if (!files.contains(name)) {
      missing.push_back(name);
      continue;
    }
    const auto& info = files.info(name);
    if (info.shape != t.sizes().vec()) {
      mismatched.push_back(
          name + " " + shape_text(info.shape) + " (model " +
          shape_text(t.sizes()) + ")");
    } else if (t.is_floating_point() != c10::isFloatingType(info.dtype)) {
      mismatched.push_back(
          name + " of dtype " + safetensors::dtype_name(info.dtype) +
          " (model " + c10::toString(t.scalar_type()) +
          "; a quantized checkpoint is not a float one)");
    }
  }
  for (const auto& name : files.names()) {
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
      why += "; mismatches: " + list(mismatched);
    throw std::runtime_error(files.origin() + ": does not fit the model" + why);
  }
  // Each tensor straight from the mapped file into its parameter (copy_
  // converts bf16 / fp16 on the way), then its pages are dropped: the peak
  // is the model plus one tensor's pages, not the model plus the file.
  torch::NoGradGuard no_grad;
  for (const auto& [name, t] : targets) {
    torch::Tensor target = t;
    const auto& file = files.file_of(name);
    target.copy_(file.mapped(name));
    file.release(name);
  }
}

void load_weights(
    torch::nn::Module& model,
    const std::string& path,
    const std::function<bool(const std::string&)>& ignore) {
  load_weights(model, WeightFiles::open(path), ignore);
}

} // namespace qat::models
