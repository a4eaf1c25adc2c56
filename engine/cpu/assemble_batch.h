// CPU reference for assemble_batch (engine/ops/assemble_batch.h): arguments
// already checked, out f32 [views, H, W, C].
#pragma once
#include "engine/ops/assemble_batch.h"

namespace kestrel::cpu {

void assemble_batch(const uint8_t* images, int64_t H, int64_t W, int64_t C, const std::vector<ImageView>& views,
                    const std::vector<RowPlan>& rows, const AssembleOptions& o, float* out);

}  // namespace kestrel::cpu
