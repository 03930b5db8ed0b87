//! `logferry dead-letter list|show|replay`: what the router could not deliver, and
//! why; and sending it again once the cause is fixed.
//!
//! Dead letters are JSON lines in `<data-dir>/dead-letter/<destination>/
//! dead-letter.jsonl` (README, "Data directory"). Entries are numbered from 1 per
//! destination, in the order they were written, so `show DESTINATION N` names one.
//! The file is never rewritten: the numbers `replay` delivered are kept in the
//! destination's checkpoint, which `list` reads to mark them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::router::{Checkpoint, Replay};
use crate::serve::ServeArgs;

fn destination_dirs(data_dir: &Path, only: Option<&str>) -> Result<Vec<(String, PathBuf)>> {
    let root = data_dir.join("dead-letter");
    let mut dirs = Vec::new();
    let entries = match std::fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(dirs),
        Err(e) => return Err(e).with_context(|| format!("listing `{}`", root.display())),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if only.is_none_or(|o| o == name) {
            dirs.push((name, entry.path().join("dead-letter.jsonl")));
        }
    }
    dirs.sort();
    Ok(dirs)
}

fn entries(file: &Path) -> Result<Vec<Value>> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading `{}`", file.display())),
    };
    text.lines()
        .enumerate()
        .map(|(n, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("`{}` line {}: not JSON", file.display(), n + 1))
        })
        .collect()
}

/// Where in the agent's stream an entry came from: `seq N` or `seqs A..B`.
fn position(entry: &Value) -> String {
    if let Some(seq) = entry["seq"].as_u64() {
        return format!("seq {seq}");
    }
    match (
        entry["seq_range"][0].as_u64(),
        entry["seq_range"][1].as_u64(),
    ) {
        (Some(a), Some(b)) => format!("seqs {a}..{b}"),
        _ => "-".into(),
    }
}

/// One line per dead letter: destination, number, time, tenant, agent, position,
/// reason. Returns how many there were.
pub fn list(data_dir: &Path, destination: Option<&str>) -> Result<usize> {
    let mut total = 0;
    for (name, file) in destination_dirs(data_dir, destination)? {
        let checkpoint = data_dir
            .join("router")
            .join(format!("{name}.checkpoint.json"));
        let replayed = Checkpoint::load(&checkpoint)?.replayed;
        for (n, entry) in entries(&file)?.iter().enumerate() {
            total += 1;
            let number = n as u64 + 1;
            println!(
                "{name} #{number}{} {} tenant={} access_key={} agent={} {} {}: {}",
                if replayed.contains(&number) {
                    " (replayed)"
                } else {
                    ""
                },
                entry["time"].as_str().unwrap_or("-"),
                entry["tenant"].as_str().unwrap_or("-"),
                entry["access_key"].as_str().unwrap_or("-"),
                entry["agent"].as_str().unwrap_or("-"),
                position(entry),
                entry["tag"].as_str().unwrap_or(""),
                entry["reason"].as_str().unwrap_or("-"),
            );
        }
    }
    eprintln!("{total} dead letter(s)");
    Ok(total)
}

/// Prints entry `number` of `destination` as pretty JSON, its payload replaced by
/// its size unless `with_payload`.
pub fn show(data_dir: &Path, destination: &str, number: usize, with_payload: bool) -> Result<()> {
    let dirs = destination_dirs(data_dir, Some(destination))?;
    let Some((_, file)) = dirs.first() else {
        bail!(
            "destination `{destination}` has no dead letters (no `{}`)",
            data_dir.join("dead-letter").join(destination).display()
        );
    };
    let all = entries(file)?;
    let Some(entry) = number.checked_sub(1).and_then(|i| all.get(i)) else {
        bail!(
            "destination `{destination}` has {} dead letter(s); #{number} is not one",
            all.len()
        );
    };
    let mut entry = entry.clone();
    if !with_payload && let Some(object) = entry.as_object_mut() {
        for key in ["payload_b64", "chunk_b64"] {
            if let Some(b64) = object.get(key).and_then(Value::as_str) {
                let bytes = b64.len() / 4 * 3;
                object.insert(
                    key.to_string(),
                    Value::String(format!("<about {bytes} bytes; --with-payload prints them>")),
                );
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&entry)?);
    Ok(())
}

/// `logferry dead-letter replay`: sends the dead letters of `destination` (those
/// numbered in `only`, or all) to its sink again, as the backend configured by
/// `args` would, in one step recorded in the destination's checkpoint. Entries
/// delivered before are skipped, so running it twice sends nothing twice. Fails
/// when a backend runs on the data directory, and when an entry still cannot be
/// delivered (it stays for a later replay).
pub fn replay(args: &ServeArgs, destination: &str, only: &[u64]) -> Result<()> {
    use std::sync::Arc;

    let data = &args.data_dir;
    let _lock = crate::fsutil::lock_router(data, true)?;
    let file = data
        .join("dead-letter")
        .join(destination)
        .join("dead-letter.jsonl");
    let all = entries(&file)?;
    if all.is_empty() {
        bail!(
            "destination `{destination}` has no dead letters (no `{}`)",
            file.display()
        );
    }
    let chosen: Vec<(u64, Value)> = if only.is_empty() {
        (1..).zip(all.iter().cloned()).collect()
    } else {
        // Each once, however often it is named.
        let only: std::collections::BTreeSet<u64> = only.iter().copied().collect();
        only.into_iter()
            .map(
                |n| match n.checked_sub(1).and_then(|i| all.get(i as usize)) {
                    Some(entry) => Ok((n, entry.clone())),
                    None => bail!(
                        "destination `{destination}` has {} dead letter(s); #{n} is not one",
                        all.len()
                    ),
                },
            )
            .collect::<Result<_>>()?
    };

    let (registry, _, _) = crate::serve::load_registry(data, args.tenants.as_deref())?;
    let plans = crate::serve::plan_destinations(args, &registry)?;
    // A Kafka router's destinations are per partition: `<name>.p<N>`.
    let (plan, partition) = match plans.iter().find(|p| p.name == destination) {
        Some(plan) => (plan, None),
        None => destination
            .rsplit_once(".p")
            .and_then(|(name, n)| Some((plans.iter().find(|p| p.name == name)?, n.parse().ok()?)))
            .map(|(plan, n)| (plan, Some(n)))
            .with_context(|| {
                format!(
                    "the registry has no destination `{destination}` any more; add it back to                      replay its dead letters"
                )
            })?,
    };
    let signer = Arc::new(crate::signing::CheckpointSigner::load_or_create(
        &data.join("keys"),
    )?);
    let keys = Arc::new(crate::keys::KeyRing::new(crate::keys::keys_dir(data)));
    let metrics = crate::metrics::Metrics::new()?;
    let mut opened = plan.open(args, &signer, &keys, &metrics, partition)?;
    eprintln!(
        "replaying {} dead letter(s) of `{destination}`...",
        chosen.len()
    );
    let outcomes = opened.replay(&chosen)?;
    let mut failing = 0;
    for (number, outcome) in &outcomes {
        match outcome {
            Replay::Delivered => println!("{destination} #{number}: delivered"),
            Replay::Already => println!("{destination} #{number}: delivered by an earlier replay"),
            Replay::Fails(reason) => {
                failing += 1;
                println!("{destination} #{number}: still fails: {reason}");
            }
        }
    }
    opened.close()?;
    let refused = entries(&file)?.len() - all.len();
    let delivered = outcomes
        .iter()
        .filter(|(_, o)| *o == Replay::Delivered)
        .count();
    eprintln!(
        "{delivered} delivered, {} delivered before, {failing} still failing",
        outcomes.len() - delivered - failing
    );
    if refused > 0 {
        bail!(
            "the sink refused {refused} record(s) again; they are new dead letters #{}..#{} \
             (`logferry dead-letter show {destination} N` says why)",
            all.len() + 1,
            all.len() + refused
        );
    }
    if failing > 0 {
        bail!("{failing} dead letter(s) still fail; they stay for a later replay");
    }
    Ok(())
}
