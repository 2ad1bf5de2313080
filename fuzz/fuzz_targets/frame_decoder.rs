//! Any bytes from the control plane: decoding never panics, and a snapshot it yields is
//! within the size bound and carries a 32-hex hash.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Raw input, and the same input as a gzip'd frame, to get past the header check.
    let max = 1 << 16;
    if let Ok(Some(s)) = kong_fallback_operator::cp_client::decode(data, max) {
        assert!(s.config.len() <= max);
        assert_eq!(s.hash.len(), 32);
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, data).expect("in memory");
    let frame = gz.finish().expect("in memory");
    if let Ok(Some(s)) = kong_fallback_operator::cp_client::decode(&frame, max) {
        assert!(s.config.len() <= max);
        assert_eq!(s.hash.len(), 32);
    }
});
