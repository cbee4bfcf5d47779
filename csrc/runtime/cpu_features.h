// What the CPU (and the OS, via XGETBV) lets us run.
#pragma once

namespace linly {

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512vnni = false, avx512bf16 = false;
  bool os_avx = false, os_avx512 = false;  // the OS saves the YMM / ZMM state
  bool can_avx2() const { return avx2 && fma && f16c && os_avx; }
  bool can_avx512() const {
    return can_avx2() && avx512f && avx512bw && avx512vl && avx512vnni && os_avx512;
  }
};

const CpuFeatures& cpu_features();  // probed once

}  // namespace linly
