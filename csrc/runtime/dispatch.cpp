#include "runtime/dispatch.h"

#include <cstdlib>
#include <stdexcept>

#include "runtime/cpu_features.h"

namespace linly {

namespace {
struct Row {
  const char* name;
  const KernelTable& (*table)();
  bool (*runs_here)();
};

const Row kRows[] = {
    {"scalar", kernels_scalar, [] { return true; }},
#if defined(LINLY_X86)
    {"avx2", kernels_avx2, [] { return cpu_features().can_avx2(); }},
    {"avx512", kernels_avx512, [] { return cpu_features().can_avx512(); }},
#endif
#if defined(LINLY_AMX)
    {"amx", kernels_amx, [] { return cpu_features().can_amx(); }},
#endif
};

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}
}  // namespace

std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  for (const Row& r : kRows)
    if (r.runs_here()) out.push_back(r.name);
  return out;
}

const KernelTable& kernels_for(const std::string& isa) {
  for (const Row& r : kRows) {
    if (isa != r.name) continue;
    if (!r.runs_here())
      throw std::invalid_argument("ISA '" + isa + "' is not supported by this CPU (available: " +
                                  joined(available_isas()) + ")");
    return r.table();
  }
  throw std::invalid_argument("unknown ISA '" + isa + "'; choose one of: " + joined(available_isas()) +
                              " (or 'auto')");
}

const KernelTable& default_kernels() {
  static const KernelTable* t = [] {
    const char* env = std::getenv("LINLY_ISA");
    if (env && *env && std::string(env) != "auto") {
      try {
        return &kernels_for(env);
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(std::string("LINLY_ISA: ") + e.what());
      }
    }
    return &kernels_for(available_isas().back());
  }();
  return *t;
}

}  // namespace linly
