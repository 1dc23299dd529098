// CPU kernel of op dcae_chunk_causal_conv3d (params and the maths: include/genaccel/autoencoder/dcae/
// params.h). Float32 only: the op registration converts 16-bit tensors first.
#pragma once
#include "genaccel/autoencoder/dcae/params.h"

namespace genaccel::cpu {

void dcae_chunk_causal_conv3d(const DcaeChunkConvParams& p);

}  // namespace genaccel::cpu
