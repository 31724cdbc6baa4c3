#include "trainers/mixed_precision.h"

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <stdexcept>

namespace qat::train {
namespace {

// The candidates on the lower convex hull of (bits, loss), by increasing bits
// (and so decreasing loss).
std::vector<int> hull(const LayerChoices& layer) {
  std::vector<int> order(layer.bits.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) {
    return layer.bits[a] != layer.bits[b] ? layer.bits[a] < layer.bits[b]
                                          : layer.loss[a] < layer.loss[b];
  });
  std::vector<int> points;
  for (int c : order) {
    if (!points.empty() && layer.loss[c] >= layer.loss[points.back()])
      continue; // more bits, no less loss
    // Drop the last point while it lies on or above the segment to c.
    while (points.size() >= 2) {
      const int a = points[points.size() - 2], b = points.back();
      const double cross =
          (layer.bits[b] - layer.bits[a]) * (layer.loss[c] - layer.loss[a]) -
          (layer.loss[b] - layer.loss[a]) * (layer.bits[c] - layer.bits[a]);
      if (cross > 0)
        break;
      points.pop_back();
    }
    points.push_back(c);
  }
  return points;
}

} // namespace

MixedPrecision choose_mixed_precision(
    const std::vector<LayerChoices>& layers,
    double budget_bits) {
  if (layers.empty())
    throw std::invalid_argument("mixed precision: no layers to choose for");
  const size_t candidates = layers.front().bits.size();
  double weights = 0, spent = 0;
  std::vector<std::vector<int>> hulls;
  MixedPrecision result;
  for (const auto& layer : layers) {
    if (layer.bits.size() != candidates || layer.loss.size() != candidates ||
        candidates == 0) {
      throw std::invalid_argument(
          "mixed precision: " + layer.name + " has " +
          std::to_string(layer.bits.size()) + " sizes and " +
          std::to_string(layer.loss.size()) + " losses for " +
          std::to_string(candidates) + " candidates");
    }
    hulls.push_back(hull(layer));
    result.choice.push_back(hulls.back().front());
    weights += static_cast<double>(layer.weights);
    spent += layer.bits[hulls.back().front()] * layer.weights;
  }
  const double budget = budget_bits * weights;
  if (spent > budget * (1 + 1e-12)) {
    char text[200];
    std::snprintf(
        text,
        sizeof text,
        "mixed precision: a budget of %.3f bits per weight is below the "
        "smallest choice, %.3f (every layer at its fewest bits)",
        budget_bits,
        spent / weights);
    throw std::invalid_argument(text);
  }
  // Every upgrade along every hull, most loss saved per bit first; a layer's
  // own upgrades come in hull order (their slopes decrease along it).
  struct Upgrade {
    size_t layer, step;
    double extra_bits, saved, efficiency;
  };
  std::vector<Upgrade> upgrades;
  for (size_t i = 0; i < layers.size(); ++i) {
    for (size_t k = 1; k < hulls[i].size(); ++k) {
      const int from = hulls[i][k - 1], to = hulls[i][k];
      const double extra =
          (layers[i].bits[to] - layers[i].bits[from]) * layers[i].weights;
      const double saved = layers[i].loss[from] - layers[i].loss[to];
      upgrades.push_back({i, k, extra, saved, saved / extra});
    }
  }
  std::stable_sort(
      upgrades.begin(), upgrades.end(), [](const Upgrade& a, const Upgrade& b) {
        return a.efficiency > b.efficiency;
      });
  std::vector<size_t> at(layers.size(), 0);
  std::vector<bool> stopped(layers.size(), false);
  for (const auto& u : upgrades) {
    if (stopped[u.layer] || at[u.layer] + 1 != u.step)
      continue;
    if (spent + u.extra_bits > budget * (1 + 1e-12)) {
      stopped[u.layer] = true; // its later upgrades build on this one
      continue;
    }
    spent += u.extra_bits;
    at[u.layer] = u.step;
    result.choice[u.layer] = hulls[u.layer][u.step];
  }
  result.average_bits = spent / weights;
  for (size_t i = 0; i < layers.size(); ++i)
    result.loss += layers[i].loss[result.choice[i]];
  return result;
}

} // namespace qat::train
