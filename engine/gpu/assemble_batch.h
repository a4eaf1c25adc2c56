// CUDA side of assemble_batch (engine/ops/assemble_batch.h) on
// kernels/assemble_batch.h: the plan is packed into one int32 buffer, copied
// to the device, and read by one launch. Arguments already checked.
#pragma once
#include "engine/ops/assemble_batch.h"

namespace kestrel::gpu {

void assemble_batch(const Tensor& images, const std::vector<ImageView>& views, const std::vector<RowPlan>& rows,
                    const AssembleOptions& options, const Tensor& out);

}  // namespace kestrel::gpu
