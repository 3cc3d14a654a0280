//! `sluice-approve`: see `sluice_sender::approve` and README.md.

fn main() -> std::process::ExitCode {
    sluice_sender::approve::main_with_args(std::env::args_os().collect())
}
