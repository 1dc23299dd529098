// CPU kernel of op dcae_lite_mla, LiteMLA's ReLU linear attention (params and the maths:
// include/genaccel/autoencoder/dcae/params.h). Float32 only: the op converts 16-bit qkv first.
#pragma once
#include "genaccel/autoencoder/dcae/params.h"

namespace genaccel::cpu {

void dcae_lite_mla(const DcaeLiteMlaParams& p);

}  // namespace genaccel::cpu
