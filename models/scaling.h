// EfficientNet compound scaling (Tan & Le 2019, eq. 3): depth d = alpha^phi,
// width w = beta^phi, resolution r = gamma^phi, subject to
// alpha * beta^2 * gamma^2 ~= 2 so each step of phi roughly doubles the FLOPs.
#pragma once

namespace kestrel::models {

struct CompoundCoefficients {
  double alpha = 1.2;   // depth
  double beta = 1.1;    // width
  double gamma = 1.15;  // resolution
};

struct ScalingMultipliers {
  double depth, width, resolution;
  double flops_factor;  // (alpha * beta^2 * gamma^2)^phi
};

// alpha * beta^2 * gamma^2: the FLOPs growth per unit of phi.
double flops_per_phi(const CompoundCoefficients& c);
// True when flops_per_phi is within `tolerance` of 2 (the paper's 1.2/1.1/1.15 give 1.920).
bool satisfies_constraint(const CompoundCoefficients& c, double tolerance = 0.1);
// Throws ValueError when phi < 0, a coefficient is < 1, or the constraint fails.
ScalingMultipliers compound_scaling(double phi, const CompoundCoefficients& c = {}, double tolerance = 0.1);

}  // namespace kestrel::models
