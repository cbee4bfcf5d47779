// Chooses the kernel table: the best the CPU can run, or what LINLY_ISA forces.
#pragma once
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/kernel_table.h"

namespace linly {

// ISAs this build contains and this CPU can run, best last. "scalar" is always there.
std::vector<std::string> available_isas();
// Table for a named ISA; throws std::invalid_argument naming the valid choices when the
// name is unknown or the CPU can't run it.
const KernelTable& kernels_for(const std::string& isa);
// The process default: LINLY_ISA if set (validated as above), else the best available.
const KernelTable& default_kernels();

}  // namespace linly
