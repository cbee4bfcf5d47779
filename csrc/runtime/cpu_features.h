// What the CPU (and the OS, via XGETBV) lets us run.
#pragma once

namespace linly {

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512vnni = false, avx512bf16 = false;
  bool amx_tile = false, amx_int8 = false, amx_bf16 = false;
  bool os_avx = false, os_avx512 = false;  // the OS saves the YMM / ZMM state
  // The OS saves tile state (XCR0 bits 17-18) and granted this process tile data
  // (Linux: arch_prctl ARCH_REQ_XCOMP_PERM, asked for once at the probe).
  bool os_amx = false;
  bool can_avx2() const { return avx2 && fma && f16c && os_avx; }
  bool can_avx512() const {
    return can_avx2() && avx512f && avx512bw && avx512vl && avx512vnni && os_avx512;
  }
  bool can_amx() const { return can_avx512() && avx512bf16 && amx_tile && amx_int8 && amx_bf16 && os_amx; }
};

const CpuFeatures& cpu_features();  // probed once

}  // namespace linly
