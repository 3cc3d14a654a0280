//! Exit statuses, the same for both daemons (and every `sluice-*` tool).

/// How a program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitStatus {
    /// Everything asked for was done (also `--help`).
    Success = 0,
    /// A runtime error; for `sluice-send`, also an object that could not be read or was refused.
    Failure = 1,
    /// Bad usage or configuration: an option, a config file, a key file.
    Usage = 2,
    /// `sluice-recv --exit-after-idle`: some object failed or stayed incomplete.
    ObjectsFailed = 3,
    /// `sluice-recv --exit-after-idle`: no valid frame arrived at all — nothing came, or every
    /// frame failed the link's checks (a wrong `--link-key`, most often) — and nothing was
    /// delivered (not even from the state directory).
    NothingValid = 4,
}

impl ExitStatus {
    /// The numeric status.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<ExitStatus> for std::process::ExitCode {
    fn from(status: ExitStatus) -> Self {
        std::process::ExitCode::from(status.code())
    }
}
