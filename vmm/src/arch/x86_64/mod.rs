//! x86_64: memory layout, boot parameters, e820, mptable, CPUID, registers.
