//! `--floors`: what each unavoidable stage of the pipeline costs on this machine, one thread,
//! no daemons — the floor under the end-to-end CPU figures. Every stage runs over `size`
//! bytes in the daemons' own units (1 MiB segments, 1 408- and 8 896-byte symbols) and is
//! timed by the wall clock of one CPU-bound thread.
//!
//! The page cache is measured twice: writing a new file right after an equal file was deleted
//! (memory the kernel just used), and, after `COLD_WAIT` idle, two new files one after the
//! other, both kept (the second needs memory that was not just freed; the dearer of the two
//! is shown). On a virtual machine that hands freed memory back to its host (free page
//! reporting), the second is what a receiver pays for each new byte it writes when the
//! machine has not just freed as much.

use std::hint::black_box;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use sluice_common::envelope;
use sluice_protocol::fec::Geometry;
use sluice_protocol::rx::{Assembler, Event, RxConfig, VerifiedFrames};
use sluice_protocol::time::Instant as RxInstant;
use sluice_protocol::wire::{
    parse_frame, write_frame, BlockKey, BlockKind, Header, LinkKey, ObjectId, SessionId,
    SymbolHeader, MAX_FRAME_LEN,
};

const SEGMENT: usize = 1 << 20;
/// Idle time before the cold page-cache write.
const COLD_WAIT: Duration = Duration::from_secs(20);

/// One stage: where it runs and what it costs.
struct Floor {
    side: &'static str,
    stage: String,
    seconds_per_gb: f64,
}

/// Measures every stage over `size` bytes and prints the table.
pub fn print(size: u64) -> Result<()> {
    let segments = usize::try_from(size.div_ceil(SEGMENT as u64)).context("size")?;
    let bytes = (segments * SEGMENT) as f64;
    let per_gb = |t: Duration| t.as_secs_f64() * 1e9 / bytes;
    let plaintext: Vec<u8> = (0..SEGMENT).map(|i| (i * 31 + i / 4093) as u8).collect();
    let mut floors = Vec::new();

    let start = Instant::now();
    let mut hash = Sha256::new();
    for _ in 0..segments {
        hash.update(black_box(&plaintext));
    }
    black_box(hash.finalize());
    let sha = per_gb(start.elapsed());
    floors.push(floor("send", "SHA-256 of the plaintext", sha));
    floors.push(floor("recv", "SHA-256 of the plaintext", sha));

    let identity = age::x25519::Identity::generate();
    let recipients = [identity.to_public()];
    let start = Instant::now();
    let mut ciphertext = Vec::new();
    for _ in 0..segments {
        ciphertext = envelope::encrypt(black_box(&plaintext), &recipients)?;
    }
    floors.push(floor(
        "send",
        "age encrypt, 1 MiB segments (X25519, ChaCha20-Poly1305, age's copies)",
        per_gb(start.elapsed()),
    ));
    let mut out = vec![0u8; SEGMENT + 1];
    let start = Instant::now();
    for _ in 0..segments {
        let mut reader = envelope::decrypt(&ciphertext[..], std::slice::from_ref(&identity))?;
        let mut filled = 0;
        loop {
            let n = reader.read(&mut out[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        black_box(filled);
    }
    floors.push(floor(
        "recv",
        "age decrypt, 1 MiB segments",
        per_gb(start.elapsed()),
    ));

    for symbol_size in [1408u16, 8896] {
        let (write, parse) = frame_costs(symbol_size, size)?;
        floors.push(floor(
            "send",
            &format!("frame: header, POLYVAL-AES MAC, CRC-32C ({symbol_size}-byte symbols)"),
            write,
        ));
        floors.push(floor(
            "recv",
            &format!("frame: parse, MAC, CRC-32C ({symbol_size}-byte symbols)"),
            parse,
        ));
    }
    let (verify, assemble) = receive_split(1408, size)?;
    floors.push(floor(
        "recv",
        "frame check into batches, one flow (1408-byte symbols; a flow per link, in parallel)",
        verify,
    ));
    floors.push(floor(
        "recv",
        "assembly of checked batches, link task (1408-byte symbols; one for every link)",
        assemble,
    ));

    // Removed with the directory.
    let dir = tempfile::tempdir()?;
    let write_file = |name: &str, keep: bool| -> Result<f64> {
        let path = dir.path().join(name);
        let file = std::fs::File::create(&path)?;
        let start = Instant::now();
        for i in 0..segments {
            file.write_all_at(&plaintext, (i * SEGMENT) as u64)?;
        }
        let spent = per_gb(start.elapsed());
        drop(file);
        if !keep {
            std::fs::remove_file(&path)?;
        }
        Ok(spent)
    };
    write_file("prime", false)?;
    let warm = write_file("warm", false)?;
    std::thread::sleep(COLD_WAIT);
    let cold = write_file("cold-1", true)?.max(write_file("cold-2", true)?);
    floors.push(floor(
        "recv",
        "page cache: write into a new file, memory just freed",
        warm,
    ));
    floors.push(floor(
        "recv",
        &format!(
            "page cache: write into new files after {} s idle, memory not just freed",
            COLD_WAIT.as_secs()
        ),
        cold,
    ));

    println!("| side | stage (one thread) | s/GB |\n|---|---|---:|");
    for f in &floors {
        println!("| {} | {} | {:.2} |", f.side, f.stage, f.seconds_per_gb);
    }
    // At MTU 1500: the 1408-byte frames, and the page cache either way.
    let sum = |side: &str| -> f64 {
        floors
            .iter()
            .filter(|f| {
                f.side == side
                    && !f.stage.contains("8896")
                    && !f.stage.contains("page")
                    && !f.stage.contains("batches")
            })
            .map(|f| f.seconds_per_gb)
            .sum()
    };
    println!("send floor at MTU 1500: {:.2} s/GB", sum("send"));
    println!(
        "recv floor at MTU 1500: {:.2} s/GB with memory just freed, {:.2} with memory not just freed",
        sum("recv") + warm,
        sum("recv") + cold
    );
    Ok(())
}

fn floor(side: &'static str, stage: &str, seconds_per_gb: f64) -> Floor {
    Floor {
        side,
        stage: stage.to_string(),
        seconds_per_gb,
    }
}

/// Seconds per GB of symbol bytes to write and to parse (MAC and CRC checked) a frame.
fn frame_costs(symbol_size: u16, size: u64) -> Result<(f64, f64)> {
    let key = LinkKey::new(&[7u8; 32]);
    let geometry = Geometry::new(SEGMENT as u32, symbol_size, 64)
        .map_err(|e| anyhow::anyhow!("geometry: {e:?}"))?;
    let header = Header::Symbol(SymbolHeader {
        block: BlockKey {
            session: SessionId(0x5eed),
            object: ObjectId(12_345),
            kind: BlockKind::Data,
            index: 678,
        },
        geometry,
        symbol: 3,
        segment_size: SEGMENT as u32,
    });
    let payload = vec![0x5a; usize::from(symbol_size)];
    let frames = size / u64::from(symbol_size);
    let per_gb = |t: Duration| t.as_secs_f64() * 1e9 / (frames * u64::from(symbol_size)) as f64;
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let start = Instant::now();
    let mut len = 0;
    for _ in 0..frames {
        len = write_frame(black_box(&header), black_box(&payload), &key, &mut buf)
            .map_err(|e| anyhow::anyhow!("write_frame: {e:?}"))?;
    }
    let write = per_gb(start.elapsed());
    let frame = buf[..len].to_vec();
    let start = Instant::now();
    for _ in 0..frames {
        let parsed = parse_frame(black_box(&frame), &key)
            .map_err(|e| anyhow::anyhow!("parse_frame: {e:?}"))?;
        black_box(parsed.payload.len());
    }
    Ok((write, per_gb(start.elapsed())))
}

/// Seconds per GB of symbol bytes for the two halves of the receive path: checking frames
/// into batches (`VerifiedFrames::verify`: CRC, MAC, header; on each flow's task) and
/// assembling checked batches into 1 MiB blocks (`Assembler::handle_verified`, then the
/// ready block taken; on the link task).
fn receive_split(symbol_size: u16, size: u64) -> Result<(f64, f64)> {
    let key = LinkKey::new(&[7u8; 32]);
    let geometry = Geometry::new(SEGMENT as u32, symbol_size, 64)
        .map_err(|e| anyhow::anyhow!("geometry: {e:?}"))?;
    let block = BlockKey {
        session: SessionId(0x5eed),
        object: ObjectId(12_345),
        kind: BlockKind::Data,
        index: 678,
    };
    let payload = vec![0x5a; usize::from(symbol_size)];
    let mut frames = Vec::new();
    for symbol in 0..geometry.source_symbols {
        let header = Header::Symbol(SymbolHeader {
            block,
            geometry,
            symbol,
            segment_size: SEGMENT as u32,
        });
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        let n = write_frame(&header, &payload, &key, &mut buf)
            .map_err(|e| anyhow::anyhow!("write_frame: {e:?}"))?;
        buf.truncate(n);
        frames.push(buf);
    }
    let blocks = size.div_ceil(SEGMENT as u64).max(1);
    let symbol_bytes = (blocks * frames.len() as u64 * u64::from(symbol_size)) as f64;
    let per_gb = |t: Duration| t.as_secs_f64() * 1e9 / symbol_bytes;
    // As a flow does: 128 frames or 128 KiB a batch, emptied and reused.
    let batch_of = || VerifiedFrames::new(128, 128 << 10);
    let mut batch = batch_of();
    let start = Instant::now();
    for _ in 0..blocks {
        for frame in &frames {
            if batch.is_full() {
                black_box(batch.len());
                batch.clear();
            }
            let _ = batch.verify(black_box(frame), &key);
        }
    }
    let verify = per_gb(start.elapsed());
    // One block's batches, assembled again and again (nothing remembered as done).
    let mut batches = vec![batch_of()];
    for frame in &frames {
        if batches.last().is_some_and(VerifiedFrames::is_full) {
            batches.push(batch_of());
        }
        if let Some(last) = batches.last_mut() {
            last.verify(frame, &key)
                .map_err(|e| anyhow::anyhow!("verify: {e:?}"))?;
        }
    }
    let config = RxConfig {
        remembered_done: 0,
        // Every batch at one instant: decode each block as soon as it can be.
        source_grace: std::time::Duration::ZERO,
        ..RxConfig::default()
    };
    let mut assembler = Assembler::new(config, key);
    let mut decoded = 0u64;
    let start = Instant::now();
    for _ in 0..blocks {
        for batch in &batches {
            assembler.handle_verified(RxInstant::ZERO, batch);
        }
        while let Some(event) = assembler.poll_event() {
            if let Event::BlockReady(ready) = event {
                decoded += assembler
                    .take_ready(&ready)
                    .map_or(0, |b| b.geometry.padded_len());
            }
        }
    }
    let assemble = per_gb(start.elapsed());
    anyhow::ensure!(
        decoded == blocks * geometry.padded_len(),
        "assembled {decoded} bytes"
    );
    Ok((verify, assemble))
}
