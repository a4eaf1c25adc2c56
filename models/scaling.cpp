#include "models/scaling.h"

#include <cmath>

#include "engine/error.h"

namespace kestrel::models {

double flops_per_phi(const CompoundCoefficients& c) { return c.alpha * c.beta * c.beta * c.gamma * c.gamma; }

bool satisfies_constraint(const CompoundCoefficients& c, double tolerance) {
  return std::abs(flops_per_phi(c) - 2.0) <= tolerance;
}

ScalingMultipliers compound_scaling(double phi, const CompoundCoefficients& c, double tolerance) {
  KCHECK(phi >= 0.0 && std::isfinite(phi), ValueError, "compound_scaling: phi must be >= 0, got ", phi);
  KCHECK(c.alpha >= 1.0 && c.beta >= 1.0 && c.gamma >= 1.0, ValueError,
         "compound_scaling: alpha, beta, gamma must be >= 1 (got ", c.alpha, ", ", c.beta, ", ", c.gamma, ")");
  KCHECK(satisfies_constraint(c, tolerance), ValueError, "compound_scaling: alpha * beta^2 * gamma^2 = ",
         flops_per_phi(c), " is not within ", tolerance, " of 2 (alpha=", c.alpha, ", beta=", c.beta,
         ", gamma=", c.gamma, ")");
  return {std::pow(c.alpha, phi), std::pow(c.beta, phi), std::pow(c.gamma, phi), std::pow(flops_per_phi(c), phi)};
}

}  // namespace kestrel::models
