//! What a sender run opens and starts, shared by the one-shot sender and the watch daemon:
//! the [`Ends`] (keys, the link, the `/metrics` port) and the [`Session`] (a session id, the
//! encoder's settings, the send loop and its outcome subscribers, the audit log).

use std::sync::Arc;
use std::time::Duration;

use sluice_common::audit::{AuditLog, Event};
use sluice_common::keys::{self, SigningKey};
use sluice_common::link::FrameTx;
use sluice_common::outcome::Outcomes;
use sluice_common::units::Bytes;
use sluice_protocol::wire::{self, LinkKey, SessionId};

use crate::cli::Options;
use crate::counters::{self, Counters};
use crate::encode;
use crate::error::{self, Error};
use crate::outcome;
use crate::send_loop;

/// What the one-shot sender and the watch daemon open at start: keys, the link, and the
/// `/metrics` port (bound at start, so a busy port is a start-up error).
pub(crate) struct Ends {
    pub(crate) recipients: Vec<age::x25519::Recipient>,
    pub(crate) signer: SigningKey,
    pub(crate) link_key: LinkKey,
    pub(crate) link: Box<dyn FrameTx>,
    pub(crate) metrics: Option<tokio::net::TcpListener>,
}

impl Ends {
    pub(crate) async fn open(options: &Options) -> Result<Ends, Error> {
        let mut recipients = Vec::new();
        for path in &options.recipients {
            recipients.append(&mut keys::load_recipients(path).map_err(error::key("recipient"))?);
        }
        let signer = SigningKey::load(&options.sign_key).map_err(error::key("sign-key"))?;
        let link_key =
            keys::load_link_key(&options.shared.link_key).map_err(error::key("link-key"))?;
        let link = options
            .shared
            .link
            .open_tx()
            .await
            .map_err(|source| Error::Link {
                link: options.shared.link.to_string(),
                source,
            })?;
        let metrics = match options.shared.metrics {
            None => None,
            Some(addr) => Some(
                sluice_common::metrics::bind(addr)
                    .await
                    .map_err(|source| Error::Metrics { addr, source })?,
            ),
        };
        Ok(Ends {
            recipients,
            signer,
            link_key,
            link,
            metrics,
        })
    }
}

/// A running session: one random session id, the encoder's settings, the send loop (the one
/// place outcomes are emitted) and the counters `/metrics` serves.
pub(crate) struct Session {
    pub(crate) config: encode::EncodeConfig,
    pub(crate) send_loop: send_loop::SendLoop,
    pub(crate) counters: Arc<Counters>,
    pub(crate) overhead: u32,
    /// The audit log (the outcomes' subscriber holds it too).
    pub(crate) audit: Arc<AuditLog>,
    /// Served until dropped.
    pub(crate) _metrics: Option<sluice_common::metrics::Endpoint>,
}

impl Session {
    /// Starts a session showing progress over a number of plaintext bytes, and how.
    pub(crate) fn start(
        options: &Options,
        recipients: Vec<age::x25519::Recipient>,
        signer: SigningKey,
        link_key: LinkKey,
        metrics: Option<tokio::net::TcpListener>,
        (progress, progress_total): (crate::progress::Show, u64),
    ) -> Result<Session, Error> {
        let mut session_bytes = [0u8; 8];
        getrandom::getrandom(&mut session_bytes).map_err(|e| Error::Random(e.to_string()))?;
        let session = SessionId(u64::from_le_bytes(session_bytes));
        let symbol_size = wire::max_symbol_size(options.shared.link.max_frame_len());
        let audit_path = options.audit_log_path();
        let retention = options.shared.audit_retention;
        let audit = Arc::new(
            AuditLog::open_with_retention(&audit_path, retention).map_err(|source| {
                Error::Audit {
                    path: audit_path.clone(),
                    source,
                }
            })?,
        );
        audit.record(
            Event::new("start")
                .with("program", "sluice-send")
                .with("version", env!("CARGO_PKG_VERSION"))
                .with("config_sha256", sluice_common::audit::digest_of(&options))
                .with("link", options.shared.link.to_string())
                .with("session", format!("{:016x}", session.0))
                .with("signer", signer.id().to_string())
                .with(
                    "recipients",
                    recipients
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>(),
                ),
        );
        let config = encode::EncodeConfig {
            session,
            symbol_size,
            segment_size: options.segment_size,
            pack_under: options.pack_under,
            repair_permille: options.repair_permille,
            passes: options.passes,
            recipients,
            signer,
            spool: None,
            workers: options.shared.workers,
            first_object: 0,
            approval: None,
            watched: None,
        };
        let counters = Arc::new(Counters::default());
        let mut outcomes = Outcomes::default();
        outcomes.subscribe(outcome::LogLine);
        outcomes.subscribe(counters::Count(counters.clone()));
        outcomes.subscribe(outcome::AuditTrail(audit.clone()));
        let overhead = options.shared.link.frame_overhead();
        let metrics = metrics.map(|listener| {
            let counters = counters.clone();
            sluice_common::metrics::spawn(listener, Arc::new(move || counters.metrics(overhead)))
        });
        let settings = send_loop::Settings {
            rate: options.rate,
            wire_frame: (options.shared.link.max_frame_len() + overhead as usize) as u64,
            frame_overhead: overhead,
            interleave: options.interleave,
            session,
            link_key,
            passes: options.passes,
            heartbeat_interval: Duration::from_secs(1),
            linger: Duration::from_secs(1),
            progress_total,
            progress,
            progress_every: options.progress_every,
            audit: Some(audit.clone()),
        };
        let send_loop = send_loop::SendLoop::new(settings, outcomes, counters.clone());
        Ok(Session {
            config,
            send_loop,
            counters,
            overhead,
            audit,
            _metrics: metrics,
        })
    }

    /// "rate" for log lines.
    pub(crate) fn rate_text(options: &Options) -> String {
        if options.rate == 0 {
            "unpaced".to_string()
        } else {
            format!("{}/s", Bytes(options.rate))
        }
    }
}
