//! Bytes as one Fluent Bit chunk: the router's streaming decoder (`check_chunk`, then
//! `events` rendered one by one, as the file sink does). When the check passes, every
//! event renders, each line is a JSON object with the output record's fields, and
//! there are as many lines as the check counted records.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logferry_backend::router::decode::{Origin, Renderer, check_chunk, events};

/// Checks each complete line of `out` and keeps only the unfinished rest.
fn check_lines(out: &mut Vec<u8>, lines: &mut usize) {
    let end = out.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    for line in out[..end].split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let mut de = serde_json::Deserializer::from_slice(line);
        de.disable_recursion_limit();
        let value: serde_json::Value = serde::Deserialize::deserialize(&mut de)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(line)));
        de.end().expect("one value per line");
        let object = value.as_object().expect("a JSON object per line");
        for field in ["time", "tag", "tenant", "agent", "metadata", "record"] {
            assert!(object.contains_key(field), "no `{field}` in {value}");
        }
        assert!(object["time"].is_string() && object["record"].is_object());
        *lines += 1;
    }
    out.drain(..end);
}

fuzz_target!(init: logferry_fuzz::seed_corpus(logferry_fuzz::chunk_seeds), |data: &[u8]| {
    let checked = check_chunk(data);
    let mut renderer = Renderer::default();
    renderer.start(Origin {
        tag: "fuzz.tag",
        tenant: "fuzz",
        agent: "07070707070707070707070707070707",
    });
    let mut out = Vec::new();
    let (mut records, mut lines) = (0, 0);
    for event in events(data) {
        let Ok(event) = event else {
            assert!(checked.is_err(), "events failed where check_chunk passed");
            break;
        };
        match renderer.event(&event, &mut out) {
            Ok(wrote) => records += usize::from(wrote),
            Err(e) => {
                assert!(checked.is_err(), "a checked chunk does not render: {e}");
                break;
            }
        }
        if out.len() > 64 << 10 {
            if checked.is_ok() {
                check_lines(&mut out, &mut lines);
            } else {
                out.clear();
            }
        }
    }
    if let Ok(counted) = checked {
        check_lines(&mut out, &mut lines);
        assert!(out.is_empty(), "an unfinished line");
        assert_eq!(records, counted);
        assert_eq!(lines, counted);
    }
});
