//! Decoding the control plane's `reconfigure` frames (KONG-PROTOCOL.md §3): gunzip (gzip
//! or zlib, as Kong's DP auto-detects), bounded by the largest configuration we accept,
//! then the JSON envelope. The configuration itself (`config_table`) is kept as the exact
//! bytes the control plane encoded, so what we store is what the control plane sent.
//! Pure and fuzzable: bytes in, snapshot or error out.

use std::io::Read;

use bytes::Bytes;
use flate2::read::{GzDecoder, ZlibDecoder};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::kong::config::{
    ConfigError, ConfigSummary, EMPTY_CONFIG_HASH, config_hashes, validate_config_text,
};

/// A configuration received from the control plane.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigSnapshot {
    /// `config_hash` as the control plane sent it (or Kong's hash if it sent none).
    pub hash: String,
    /// The `config_table` JSON, byte-for-byte as the control plane encoded it.
    pub config: Bytes,
    pub summary: ConfigSummary,
    /// The control plane's `timestamp`, if any.
    pub timestamp: Option<f64>,
    /// When the frame was read and decoded: set by the client, `None` from [`decode`].
    pub arrival: Option<Arrival>,
}

/// When a snapshot's frame came off the socket and when it had been decoded and
/// validated: the first two steps of an export's latency split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    pub read: std::time::Instant,
    pub decoded: std::time::Instant,
}

impl ConfigSnapshot {
    /// True when a data plane loading it would serve nothing.
    pub fn is_empty(&self) -> bool {
        self.hash == EMPTY_CONFIG_HASH || self.summary.is_empty()
    }
}

/// Why a frame was refused. The last good snapshot stays in use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("the frame is not gzip or zlib data: {0}")]
    Compression(String),
    #[error("the configuration exceeds the maximum of {max} bytes decompressed")]
    TooLarge { max: usize },
    #[error("the frame is not valid JSON: {0}")]
    Json(String),
    #[error("the configuration is unusable: {0}")]
    Config(#[from] ConfigError),
    #[error("config_hash {0:?} is not 32 hex characters")]
    Hash(String),
}

impl FrameError {
    /// A stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            FrameError::Compression(_) => "compression",
            FrameError::TooLarge { .. } => "too_large",
            FrameError::Json(_) => "json",
            FrameError::Config(_) => "config",
            FrameError::Hash(_) => "hash",
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(borrow, default)]
    config_table: Option<&'a RawValue>,
    #[serde(default)]
    config_hash: Option<String>,
    #[serde(default)]
    timestamp: Option<f64>,
}

/// Decodes one binary frame. `Ok(None)` for a well-formed message that is not a
/// `reconfigure` (Kong's DP ignores those too).
pub fn decode(frame: &[u8], max_config: usize) -> Result<Option<ConfigSnapshot>, FrameError> {
    let json = inflate(frame, max_config)?;
    let envelope: Envelope<'_> =
        serde_json::from_slice(&json).map_err(|e| FrameError::Json(e.to_string()))?;
    if envelope.kind.as_deref() != Some("reconfigure") {
        return Ok(None);
    }
    let raw = envelope
        .config_table
        .ok_or_else(|| FrameError::Json("reconfigure without config_table".into()))?;
    let summary = validate_config_text(raw.get())?;
    let hash = match envelope.config_hash {
        Some(h) if h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()) => h,
        Some(h) => return Err(FrameError::Hash(h)),
        // NB: like Kong's DP, compute the hash when the control plane sent none.
        None => {
            let value: serde_json::Value =
                serde_json::from_str(raw.get()).map_err(|e| FrameError::Json(e.to_string()))?;
            config_hashes(&value).config
        }
    };
    // NB: no copy: the configuration is a slice of the inflated buffer.
    let start = raw.get().as_ptr() as usize - json.as_ptr() as usize;
    let range = start..start + raw.get().len();
    let timestamp = envelope.timestamp;
    Ok(Some(ConfigSnapshot {
        hash,
        config: Bytes::from(json).slice(range),
        summary,
        timestamp,
        arrival: None,
    }))
}

/// Gunzips (or un-zlibs) `frame`, reading at most `max + 1` bytes.
fn inflate(frame: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    let reader: Box<dyn Read + '_> = match frame {
        [0x1f, 0x8b, ..] => Box::new(GzDecoder::new(frame)),
        [b0, b1, ..] if b0 & 0x0f == 8 && (u16::from(*b0) << 8 | u16::from(*b1)) % 31 == 0 => {
            Box::new(ZlibDecoder::new(frame))
        }
        _ => return Err(FrameError::Compression("unknown header".into())),
    };
    let mut out = Vec::with_capacity(frame.len().saturating_mul(4).min(max));
    reader
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| FrameError::Compression(e.to_string()))?;
    if out.len() > max {
        return Err(FrameError::TooLarge { max });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::{GzEncoder, ZlibEncoder};
    use std::io::Write;

    const TABLE: &str = r#"{"_format_version":"3.0","_transform":false,"services":[{"id":"s","path":"\/x"}],"routes":[{"id":"r","service":"s"}]}"#;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn reconfigure(table: &str, hash: Option<&str>) -> Vec<u8> {
        let hash = hash
            .map(|h| format!(r#","config_hash":"{h}""#))
            .unwrap_or_default();
        format!(r#"{{"type":"reconfigure","timestamp":1719750771.23,"config_table":{table}{hash},"hashes":{{}}}}"#).into_bytes()
    }

    #[test]
    fn a_reconfigure_frame_yields_the_exact_config_table_bytes_and_hash() {
        let h = "374d97a6cdede7dbe918d7e72c29e6c8";
        let s = decode(&gzip(&reconfigure(TABLE, Some(h))), 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(s.hash, h);
        assert_eq!(
            &s.config[..],
            TABLE.as_bytes(),
            "kept verbatim, \\/ escapes included"
        );
        assert_eq!(s.summary.count("routes"), 1);
        assert_eq!(s.timestamp, Some(1719750771.23));
        assert!(!s.is_empty());
    }

    #[test]
    fn zlib_frames_are_accepted_like_kong_does() {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(&reconfigure(
            TABLE,
            Some("374d97a6cdede7dbe918d7e72c29e6c8"),
        ))
        .unwrap();
        assert!(decode(&e.finish().unwrap(), 1 << 20).unwrap().is_some());
    }

    #[test]
    fn a_missing_hash_is_computed_like_a_data_plane_does() {
        let s = decode(&gzip(&reconfigure(TABLE, None)), 1 << 20)
            .unwrap()
            .unwrap();
        // NB: computed outside this code (a Python re-implementation of Kong's
        // config_helper.lua that reproduces Kong's spec vectors), not with config_hashes.
        assert_eq!(s.hash, "34f127de578c99431298c4a592ba9372");
    }

    /// A frame compressed by zlib itself (Python's `zlib.compressobj(wbits=31)`, the gzip
    /// wrapper Kong's lua-ffi-zlib writes with `deflateInit2` windowBits 31), not by the
    /// encoder these tests use elsewhere.
    #[test]
    fn a_frame_compressed_by_zlib_like_kongs_decodes() {
        let frame = include_bytes!("testdata/reconfigure.json.gz");
        let s = decode(frame, 1 << 20).unwrap().unwrap();
        assert_eq!(s.hash, "374d97a6cdede7dbe918d7e72c29e6c8");
        assert_eq!(&s.config[..], TABLE.as_bytes());
        assert_eq!(s.timestamp, Some(1719750771.23));
    }

    #[test]
    fn other_message_types_are_ignored() {
        assert_eq!(
            decode(&gzip(br#"{"type":"something_new"}"#), 1024),
            Ok(None)
        );
    }

    #[test]
    fn oversized_configs_are_refused_without_inflating_them_whole() {
        let big = format!(
            r#"{{"_format_version":"3.0","services":[{{"id":"{}"}}]}}"#,
            "x".repeat(100_000)
        );
        let frame = gzip(&reconfigure(&big, Some("374d97a6cdede7dbe918d7e72c29e6c8")));
        assert!(frame.len() < 2_000, "compresses well");
        assert_eq!(
            decode(&frame, 50_000),
            Err(FrameError::TooLarge { max: 50_000 })
        );
    }

    #[test]
    fn truncated_garbage_and_bad_json_are_refused_with_a_reason() {
        let good = gzip(&reconfigure(
            TABLE,
            Some("374d97a6cdede7dbe918d7e72c29e6c8"),
        ));
        assert!(matches!(
            decode(&good[..good.len() / 2], 1 << 20),
            Err(FrameError::Compression(_))
        ));
        assert!(matches!(
            decode(b"hello world", 1 << 20),
            Err(FrameError::Compression(_))
        ));
        assert!(matches!(
            decode(&[], 1 << 20),
            Err(FrameError::Compression(_))
        ));
        assert!(matches!(
            decode(&gzip(b"{not json"), 1 << 20),
            Err(FrameError::Json(_))
        ));
        assert!(matches!(
            decode(
                &gzip(&reconfigure(
                    r#"{"services":[]}"#,
                    Some("374d97a6cdede7dbe918d7e72c29e6c8")
                )),
                1 << 20
            ),
            Err(FrameError::Config(ConfigError::MissingFormatVersion))
        ));
        assert!(matches!(
            decode(&gzip(&reconfigure(TABLE, Some("xyz"))), 1 << 20),
            Err(FrameError::Hash(_))
        ));
    }

    #[test]
    fn an_empty_configuration_is_flagged() {
        let table = r#"{"_format_version":"3.0","workspaces":[{"id":"w"}]}"#;
        let s = decode(
            &gzip(&reconfigure(
                table,
                Some("0123456789abcdef0123456789abcdef"),
            )),
            1 << 20,
        )
        .unwrap()
        .unwrap();
        assert!(s.is_empty());
        let s = decode(&gzip(&reconfigure(TABLE, Some(EMPTY_CONFIG_HASH))), 1 << 20)
            .unwrap()
            .unwrap();
        assert!(s.is_empty());
    }
}
