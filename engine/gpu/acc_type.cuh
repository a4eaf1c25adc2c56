#pragma once
#include "engine/gpu/device_scalar.cuh"  // merged there (acc_t -> MathT, to_acc/from_acc -> to_math/from_math)
