// Mixed precision under a bit budget: given, for each layer, the candidate
// formats' stored bits per weight (scales included) and the loss increase
// each would cost (qat sensitivity's estimate or measurement), choose one per
// layer so that the model's average bits per weight stays within the budget
// and the summed loss increase is smallest.
//
// This is a multiple-choice knapsack. Each layer's choices are reduced to
// the lower convex hull of (bits, loss) (a choice with more bits and no less
// loss is never worth it), every layer starts at its fewest bits, and the
// upgrades along the hulls are taken in order of loss saved per bit spent
// while they fit: the greedy solution of the LP relaxation, optimal up to the
// one upgrade per layer that the budget cuts (HAWQ and AIMET's AMP solve
// the same problem; an ILP gains little at these sizes). Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qat::train {

struct LayerChoices {
  std::string name;
  int64_t weights = 0;      // values in the layer's weight
  std::vector<double> bits; // per candidate: stored bits per weight
  std::vector<double> loss; // per candidate: its loss increase
};

struct MixedPrecision {
  std::vector<int> choice; // per layer: the candidate chosen
  double average_bits = 0; // over the layers' weights
  double loss = 0;         // summed over the layers
};

// Throws std::invalid_argument when a layer's lists differ in length from the
// candidates', and when the budget is below every layer at its fewest bits
// (saying what the smallest choice needs).
MixedPrecision choose_mixed_precision(
    const std::vector<LayerChoices>& layers,
    double budget_bits);

} // namespace qat::train
