//! `sluice-recv`: see the `sluice_receiver` library and README.md.

fn main() -> std::process::ExitCode {
    sluice_receiver::main_with_args(std::env::args_os().collect())
}
