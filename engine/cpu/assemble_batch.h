// CPU reference for assemble_batch (engine/ops/assemble_batch.h): arguments
// already checked, out f32 [views, H, W, C].
#pragma once
#include "engine/ops/assemble_batch.h"

namespace kestrel::cpu {

// Row = unmixed row p.base, p's tiles pasted over it, then the blend (see
// RowPlan); `unmixed` holds the batch's rows [*, h, w, c] before mixing. The
// host mix (data::apply_mix) composes its rows with this too, so both round alike.
void compose_row(const float* unmixed, int64_t h, int64_t w, int64_t c, const RowPlan& p, float* row);

void assemble_batch(const uint8_t* images, int64_t H, int64_t W, int64_t C, const std::vector<ImageView>& views,
                    const std::vector<RowPlan>& rows, const AssembleOptions& o, float* out);

}  // namespace kestrel::cpu
