// CPU kernels of ops dcae_space_to_channel (to_channel) and dcae_channel_to_space (params and the index
// maps: include/genaccel/autoencoder/dcae/params.h). Float32 only: the op converts 16-bit tensors first.
#pragma once
#include "genaccel/autoencoder/dcae/params.h"

namespace genaccel::cpu {

void dcae_shuffle(const DcaeShuffleParams& p, bool to_channel);

}  // namespace genaccel::cpu
