//! Where a large configuration's decode time goes: `cargo run --release --example
//! decode_split [MB]` (default 20) prints, per round, inflating the frame into a fresh
//! buffer and into one already touched, checking the configuration, serde_json's bare skip
//! of the same text (the least any scan that finds `config_table` would cost), and the whole
//! `cp_client::decode`. The benches' P1 and P5 lines give the same split end to end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed())
}

fn main() {
    let mb: usize = std::env::args()
        .nth(1)
        .map_or(20, |a| a.parse().expect("a size in MB"));
    let table = kfo_testenv::configs::config_table(mb * 1_000_000, 1);
    let json = format!(
        r#"{{"type":"reconfigure","timestamp":1.0,"config_table":{table},"config_hash":"{:032x}"}}"#,
        5
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(json.as_bytes()).unwrap();
    let frame = gz.finish().unwrap();
    println!("frame_bytes={} json_bytes={}", frame.len(), json.len());
    // NB: inflated into once before the rounds, so its pages are already mapped.
    let mut touched = Vec::with_capacity(json.len() + 1);
    flate2::read::GzDecoder::new(&frame[..])
        .read_to_end(&mut touched)
        .unwrap();
    for _ in 0..5 {
        let (_, fresh) = time(|| {
            let mut out = Vec::with_capacity(json.len() + 1);
            flate2::read::GzDecoder::new(&frame[..])
                .read_to_end(&mut out)
                .unwrap();
        });
        let (_, reused) = time(|| {
            touched.clear();
            flate2::read::GzDecoder::new(&frame[..])
                .read_to_end(&mut touched)
                .unwrap();
        });
        let (_, check) =
            time(|| kong_fallback_operator::kong::config::validate_config_text(&table).unwrap());
        let (_, skip) = time(|| serde_json::from_str::<serde::de::IgnoredAny>(&table).unwrap());
        let (_, decode) = time(|| {
            kong_fallback_operator::cp_client::decode(&frame, 1 << 30)
                .unwrap()
                .unwrap()
        });
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "inflate_fresh_ms={:.1} inflate_reused_ms={:.1} check_ms={:.1} skip_ms={:.1} decode_ms={:.1}",
            ms(fresh),
            ms(reused),
            ms(check),
            ms(skip),
            ms(decode)
        );
    }
}
