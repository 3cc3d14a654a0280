//! `sluice-send`: see the `sluice_sender` library and README.md.

fn main() -> std::process::ExitCode {
    sluice_sender::main_with_args(std::env::args_os().collect())
}
