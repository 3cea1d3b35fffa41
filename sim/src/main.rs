//! `qpon-sim`: planning, emulation, calculators and benchmarks for qpon.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    qpon_sim::cli::main()
}
