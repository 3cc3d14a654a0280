//! `sluice-send`, the low side of a Sluice data diode.
//!
//! ```text
//!  paths ─▶ objects ─▶ encode thread: read, SHA-256, age per segment, sign manifest, FEC
//!                         │ bounded channel (a few blocks)
//!                         ▼
//!                      send loop: tx::Scheduler (interleave, heartbeats, token-bucket pacing)
//!                         │
//!                         ▼
//!                      link (UDP datagrams or COBS on a serial line), never read from
//! ```
//!
//! The encoder and the send loop run on different threads so pacing never waits for
//! encryption; the channel between them keeps memory bounded whatever the file sizes.

pub mod cli;
pub mod encode;
pub mod objects;
mod transmit;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use sluice_common::keys::{self, SigningKey};
use sluice_common::logging;
use sluice_common::units::Bytes;
use sluice_protocol::wire::{self, SessionId};

pub use transmit::Summary;

/// Exit status: everything was sent.
pub const EXIT_OK: u8 = 0;
/// Exit status: a runtime failure, or some object could not be sent.
pub const EXIT_FAILED: u8 = 1;
/// Exit status: bad usage or configuration.
pub const EXIT_USAGE: u8 = 2;

/// Runs `sluice-send` with `args` (program name first) and returns its exit status.
pub fn main_with_args(args: Vec<OsString>) -> ExitCode {
    if args.get(1).is_some_and(|a| a == "keygen") {
        return keygen(&args[1..]);
    }
    let options = match cli::parse(args) {
        Ok(o) => o,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    logging::init(options.log_format, options.verbose, options.quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice-send: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    ExitCode::from(runtime.block_on(run(options)))
}

fn keygen(args: &[OsString]) -> ExitCode {
    let args = match <cli::KeygenArgs as clap::Parser>::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    match keys::generate_sender_keys(&args.dir) {
        Ok(id) => {
            println!(
                "wrote {0}/{1} (keep secret), {0}/{2} (give to the receiver's --trust) and \
                 {0}/{3} (copy to the receiver over a trusted path); signing key id {id}",
                args.dir.display(),
                keys::SENDER_KEY,
                keys::SENDER_PUB,
                keys::LINK_KEY
            );
            ExitCode::from(EXIT_OK)
        }
        Err(e) => {
            eprintln!("sluice-send keygen: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// One-line configuration errors (keys that do not load) exit 2, like bad option values.
macro_rules! usage_fail {
    ($($arg:tt)*) => {{
        eprintln!("sluice-send: {}", format!($($arg)*));
        return EXIT_USAGE;
    }};
}

/// Sends everything `options` names; returns the exit status.
pub async fn run(options: cli::Options) -> u8 {
    let mut recipients = Vec::new();
    for path in &options.recipients {
        match keys::load_recipients(path) {
            Ok(mut r) => recipients.append(&mut r),
            Err(e) => usage_fail!("--recipient {e}"),
        }
    }
    let signer = match SigningKey::load(&options.sign_key) {
        Ok(s) => s,
        Err(e) => usage_fail!("--sign-key {e}"),
    };
    let link_key = match keys::load_link_key(&options.link_key) {
        Ok(k) => k,
        Err(e) => usage_fail!("--link-key {e}"),
    };

    let (objects, skipped) = objects::enumerate(&options.paths, options.name.as_deref());
    let refused = skipped.iter().filter(|s| s.refused).count();
    for s in &skipped {
        if s.refused {
            tracing::error!(path = %s.path.display(), "{}", s.reason);
        } else {
            tracing::warn!(path = %s.path.display(), "{}", s.reason);
        }
    }
    if objects.is_empty() {
        eprintln!("sluice-send: nothing to send");
        return EXIT_FAILED;
    }

    let spool = if options.passes > 1 {
        match encode::Spool::create(options.spool.as_deref()) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("sluice-send: --spool: {e}");
                return EXIT_FAILED;
            }
        }
    } else {
        None
    };
    let mut session_bytes = [0u8; 8];
    if let Err(e) = getrandom::getrandom(&mut session_bytes) {
        eprintln!("sluice-send: no OS randomness for the session id: {e}");
        return EXIT_FAILED;
    }
    let session = SessionId(u64::from_le_bytes(session_bytes));
    let symbol_size = wire::max_symbol_size(options.link.max_frame_len());
    let config = encode::EncodeConfig {
        session,
        symbol_size,
        segment_size: options.segment_size,
        repair_permille: options.repair_permille,
        passes: options.passes,
        recipients,
        signer,
        spool: spool.as_ref().map(|s| s.path().to_path_buf()),
        workers: 0,
    };
    let total_plain: u64 =
        objects.iter().filter_map(|o| o.size).sum::<u64>() * u64::from(options.passes);
    tracing::info!(
        link = %options.link,
        session = format_args!("{:016x}", session.0),
        objects = objects.len(),
        bytes = total_plain / u64::from(options.passes),
        rate = %if options.rate == 0 { "unpaced".to_string() } else { format!("{}/s", Bytes(options.rate)) },
        passes = options.passes,
        repair = format_args!("{}%", f64::from(options.repair_permille) / 10.0),
        symbol_size,
        "sending"
    );

    let link = match sluice_common::link::LinkSender::open(&options.link).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sluice-send: cannot open {}: {e}", options.link);
            return EXIT_FAILED;
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let encoder = std::thread::Builder::new()
        .name("sluice-encode".into())
        .spawn(move || {
            let result = encode::run(&config, &objects, tx);
            (result, objects.len())
        });
    let encoder = match encoder {
        Ok(h) => h,
        Err(e) => {
            eprintln!("sluice-send: cannot start the encoder thread: {e}");
            return EXIT_FAILED;
        }
    };
    let progress = std::io::stderr().is_terminal() && !options.quiet;
    let settings = transmit::Settings {
        link: options.link.clone(),
        rate: options.rate,
        interleave: options.interleave,
        session,
        link_key,
        heartbeat_interval: Duration::from_secs(1),
        linger: Duration::from_secs(1),
        progress_total: progress.then_some(total_plain),
    };
    let sent = transmit::send_loop(settings, link, rx).await;
    let (encoded, object_count) = match encoder.join() {
        Ok(r) => r,
        Err(_) => {
            eprintln!("sluice-send: the encoder thread panicked");
            return EXIT_FAILED;
        }
    };
    drop(spool);
    let mut summary = match sent {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluice-send: link error: {e}");
            return EXIT_FAILED;
        }
    };
    summary.objects_refused = refused as u64;
    summary.passes = options.passes;
    if let Err(e) = encoded {
        eprintln!("sluice-send: {e}");
        summary.print(options.log_format);
        return EXIT_FAILED;
    }
    debug_assert!(summary.objects_queued + summary.objects_failed <= object_count as u64);
    summary.print(options.log_format);
    if summary.objects_failed > 0 || refused > 0 {
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}
