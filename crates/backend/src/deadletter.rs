//! `logferry dead-letter list|show`: what the router could not deliver, and why.
//!
//! Dead letters are JSON lines in `<data-dir>/dead-letter/<destination>/
//! dead-letter.jsonl` (README, "Data directory"). Entries are numbered from 1 per
//! destination, in the order they were written, so `show DESTINATION N` names one.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

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
        for (n, entry) in entries(&file)?.iter().enumerate() {
            total += 1;
            println!(
                "{name} #{} {} tenant={} access_key={} agent={} {} {}: {}",
                n + 1,
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
