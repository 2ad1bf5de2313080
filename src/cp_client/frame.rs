//! Decoding the control plane's `reconfigure` frames (KONG-PROTOCOL.md §3): gunzip (gzip
//! or zlib, as Kong's DP auto-detects), bounded by the largest configuration we accept,
//! then the JSON envelope. The configuration itself (`config_table`) is kept as the exact
//! bytes the control plane encoded, so what we store is what the control plane sent.
//! Pure and fuzzable: bytes in, snapshot or error out.

use std::io::Read;

use bytes::Bytes;
use flate2::read::{GzDecoder, ZlibDecoder};
use std::ops::Range;

use serde::Deserialize;

use crate::kong::config::{
    CheckedConfig, ConfigError, ConfigSummary, EMPTY_CONFIG_HASH, config_hashes,
    validate_config_text,
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

/// When a snapshot's frame came off the socket, was inflated, was checked (on the
/// blocking thread that decodes it), and was back with the client: the first steps of an
/// export's latency split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    pub read: std::time::Instant,
    pub inflated: std::time::Instant,
    pub checked: std::time::Instant,
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

/// The fields of a frame's JSON envelope that matter here.
#[derive(Default)]
struct Envelope {
    kind: Option<String>,
    /// Where `config_table` sits in the JSON, and what its checks found.
    config_table: Option<(Range<usize>, Result<ConfigSummary, ConfigError>)>,
    config_hash: Option<String>,
    timestamp: Option<f64>,
}

/// Decodes one binary frame. `Ok(None)` for a well-formed message that is not a
/// `reconfigure` (Kong's DP ignores those too).
pub fn decode(frame: &[u8], max_config: usize) -> Result<Option<ConfigSnapshot>, FrameError> {
    decode_announcing(frame, max_config, |_| {})
}

/// [`decode`], handing the inflated JSON envelope to `announce` before it is read and
/// checked: the exporter may start writing a large configuration while the checks run
/// (see [`peek_envelope`]). The snapshot's configuration is a slice of that same buffer.
pub fn decode_announcing(
    frame: &[u8],
    max_config: usize,
    announce: impl FnOnce(&Bytes),
) -> Result<Option<ConfigSnapshot>, FrameError> {
    let json = Bytes::from(inflate(frame, max_config)?);
    announce(&json);
    let envelope = read_envelope(&json).map_err(|e| FrameError::Json(e.to_string()))?;
    if envelope.kind.as_deref() != Some("reconfigure") {
        return Ok(None);
    }
    let (range, checked) = envelope
        .config_table
        .ok_or_else(|| FrameError::Json("reconfigure without config_table".into()))?;
    let summary = checked?;
    let hash = match envelope.config_hash {
        Some(h) if h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()) => h,
        Some(h) => return Err(FrameError::Hash(h)),
        // NB: like Kong's DP, compute the hash when the control plane sent none.
        None => {
            let value: serde_json::Value = serde_json::from_slice(&json[range.clone()])
                .map_err(|e| FrameError::Json(e.to_string()))?;
            config_hashes(&value).config
        }
    };
    // NB: no copy: the configuration is a slice of the inflated buffer.
    Ok(Some(ConfigSnapshot {
        hash,
        config: json.slice(range),
        summary,
        timestamp: envelope.timestamp,
        arrival: None,
    }))
}

/// What an envelope appears to hold, read without checking it: where `config_table`
/// starts, and the `config_hash` and `timestamp` it appears to carry.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvelopePeek {
    /// The offset of `config_table`'s first byte in the envelope.
    pub config_start: usize,
    pub hash: Option<String>,
    pub timestamp: Option<f64>,
}

/// How far [`peek_envelope`] reads from either end of an envelope.
const PEEK_SPAN: usize = 64 << 10;

/// A guess at an inflated envelope's fields, in microseconds and without the checks: the
/// fields before `config_table` are read in order, those after it are looked for in the
/// envelope's last [`PEEK_SPAN`] bytes. A guess only: whatever uses it must confirm it
/// against the decoded snapshot ([`decode_announcing`]) before anything takes effect.
/// `None` when `config_table` does not start within [`PEEK_SPAN`].
pub fn peek_envelope(json: &[u8]) -> Option<EnvelopePeek> {
    use serde::de::IgnoredAny;
    let mut pos = 0;
    let (mut hash, mut timestamp) = (None, None);
    expect(json, &mut pos, b'{').ok()?;
    let config_start = loop {
        let key: std::borrow::Cow<'_, str> = value(json, &mut pos).ok()?;
        expect(json, &mut pos, b':').ok()?;
        match &*key {
            "config_table" => {
                peek(json, &mut pos)?;
                break pos;
            }
            "config_hash" => hash = value(json, &mut pos).ok()?,
            "timestamp" => timestamp = value(json, &mut pos).ok()?,
            _ => {
                value::<IgnoredAny>(json, &mut pos).ok()?;
            }
        }
        expect(json, &mut pos, b',').ok()?;
        if pos > PEEK_SPAN {
            return None;
        }
    };
    let tail_start = json.len().saturating_sub(PEEK_SPAN).max(config_start);
    let tail = &json[tail_start..];
    let after = |name: &str| {
        let pattern = format!("\"{name}\"");
        let at = tail
            .windows(pattern.len())
            .rposition(|w| w == pattern.as_bytes())?;
        let mut pos = tail_start + at + pattern.len();
        expect(json, &mut pos, b':').ok()?;
        Some(pos)
    };
    if hash.is_none() {
        hash = after("config_hash").and_then(|mut pos| value(json, &mut pos).ok());
    }
    if timestamp.is_none() {
        timestamp = after("timestamp").and_then(|mut pos| value(json, &mut pos).ok());
    }
    Some(EnvelopePeek {
        config_start,
        hash,
        timestamp,
    })
}

/// Reads the envelope in one pass: `config_table` is checked where it lies, not found by
/// one scan and checked by a second (a third of a 20 MB frame's decode time). serde_json
/// parses every value; this only walks the envelope's own `{ "key": value, ... }`.
fn read_envelope(json: &[u8]) -> Result<Envelope, serde_json::Error> {
    use serde::de::{Error, IgnoredAny};
    let mut pos = 0;
    let mut envelope = Envelope::default();
    let mut seen = [false; 4];
    expect(json, &mut pos, b'{')?;
    if peek(json, &mut pos) == Some(b'}') {
        pos += 1;
    } else {
        loop {
            let key: std::borrow::Cow<'_, str> = value(json, &mut pos)?;
            expect(json, &mut pos, b':')?;
            // NB: a field given twice is refused, as serde's derive does.
            let field = ["type", "config_table", "config_hash", "timestamp"]
                .iter()
                .position(|f| *f == key);
            if let Some(i) = field
                && std::mem::replace(&mut seen[i], true)
            {
                return Err(serde_json::Error::custom(format!(
                    "duplicate field `{key}`"
                )));
            }
            match field {
                Some(0) => envelope.kind = value(json, &mut pos)?,
                Some(1) => envelope.config_table = Some(config_table(json, &mut pos)?),
                Some(2) => envelope.config_hash = value(json, &mut pos)?,
                Some(_) => envelope.timestamp = value(json, &mut pos)?,
                None => {
                    value::<IgnoredAny>(json, &mut pos)?;
                }
            }
            match peek(json, &mut pos) {
                Some(b',') => pos += 1,
                Some(b'}') => {
                    pos += 1;
                    break;
                }
                _ => {
                    return Err(serde_json::Error::custom(
                        "expected `,` or `}` in the envelope",
                    ));
                }
            }
        }
    }
    match peek(json, &mut pos) {
        None => Ok(envelope),
        Some(_) => Err(serde_json::Error::custom(
            "trailing characters after the envelope",
        )),
    }
}

/// `config_table`'s range and checks. A configuration that fails them is still skipped
/// as JSON, so that a frame that is not a `reconfigure` is ignored whatever it carries.
fn config_table(
    json: &[u8],
    pos: &mut usize,
) -> Result<(Range<usize>, Result<ConfigSummary, ConfigError>), serde_json::Error> {
    peek(json, pos);
    let start = *pos;
    if let Ok(CheckedConfig(checked)) = value(json, pos) {
        return Ok((start..*pos, checked));
    }
    *pos = start;
    value::<serde::de::IgnoredAny>(json, pos)?;
    // NB: valid JSON of the wrong shape: the text check names what is wrong (rare path).
    let checked = match std::str::from_utf8(&json[start..*pos]) {
        Ok(text) => validate_config_text(text),
        Err(_) => Err(ConfigError::NotAnObject),
    };
    Ok((start..*pos, checked))
}

/// Parses one JSON value at `pos` (after any whitespace) and moves `pos` past it.
fn value<'a, T: Deserialize<'a>>(json: &'a [u8], pos: &mut usize) -> Result<T, serde_json::Error> {
    let mut values = serde_json::Deserializer::from_slice(&json[*pos..]).into_iter::<T>();
    let parsed = values
        .next()
        .unwrap_or_else(|| Err(serde::de::Error::custom("the envelope ends early")))?;
    *pos += values.byte_offset();
    Ok(parsed)
}

/// The byte at `pos` after skipping JSON whitespace, which `pos` then points at.
fn peek(json: &[u8], pos: &mut usize) -> Option<u8> {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = json.get(*pos) {
        *pos += 1;
    }
    json.get(*pos).copied()
}

/// Skips whitespace and one `byte`, or fails.
fn expect(json: &[u8], pos: &mut usize, byte: u8) -> Result<(), serde_json::Error> {
    if peek(json, pos) == Some(byte) {
        *pos += 1;
        Ok(())
    } else {
        Err(serde::de::Error::custom(format!(
            "expected `{}` in the envelope",
            char::from(byte)
        )))
    }
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
    // NB: a gzip member ends with its inflated size (mod 2^32, RFC 1952 ISIZE): room for
    // exactly that spares read_to_end's doubling and copying of a 20 MB buffer. It is only
    // a hint (the frame is not trusted): the read below is bounded by `max` whatever it says.
    let hint = match frame {
        [0x1f, 0x8b, .., a, b, c, d] if frame.len() >= 18 => {
            u32::from_le_bytes([*a, *b, *c, *d]) as usize
        }
        _ => frame.len().saturating_mul(4),
    };
    let mut out = Vec::with_capacity(hint.min(max).saturating_add(1));
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

    #[test]
    fn an_envelope_peek_finds_the_configuration_and_the_fields_on_either_side() {
        let hash = "a".repeat(32);
        for envelope in [
            format!(
                r#"{{"type":"reconfigure","timestamp":1.5,"config_table":{TABLE},"config_hash":"{hash}"}}"#
            ),
            format!(
                r#"{{ "config_hash" : "{hash}", "config_table" : {TABLE} , "timestamp":1.5 }}"#
            ),
            format!(
                r#"{{"config_table":{TABLE},"hashes":{{"routes":"{hash}"}},"timestamp":1.5,"config_hash":"{hash}"}}"#
            ),
        ] {
            let peek = peek_envelope(envelope.as_bytes()).expect(&envelope);
            assert!(
                envelope[peek.config_start..].starts_with(TABLE),
                "{envelope}"
            );
            assert_eq!(peek.hash.as_deref(), Some(hash.as_str()), "{envelope}");
            assert_eq!(peek.timestamp, Some(1.5), "{envelope}");
        }
        // Only a guess: what it finds in the tail is whatever comes last there.
        let odd = format!(r#"{{"config_table":{TABLE},"x":"\"config_hash\":\"b\""}}"#);
        assert!(peek_envelope(odd.as_bytes()).is_some());
        // Nothing when config_table does not start near the beginning, or is absent.
        let far = format!(
            r#"{{"x":"{}","config_table":{TABLE}}}"#,
            "y".repeat(PEEK_SPAN)
        );
        assert_eq!(peek_envelope(far.as_bytes()), None);
        assert_eq!(peek_envelope(br#"{"type":"ping"}"#), None);
        assert_eq!(peek_envelope(b"not json"), None);
    }

    #[test]
    fn the_announced_envelope_holds_the_snapshots_configuration() {
        let envelope = format!(
            r#"{{"type":"reconfigure","config_table":{TABLE},"config_hash":"{}"}}"#,
            "c".repeat(32)
        );
        let mut announced = None;
        let snapshot = decode_announcing(&gzip(envelope.as_bytes()), 1 << 20, |json| {
            announced = Some(json.clone());
        })
        .unwrap()
        .unwrap();
        let json = announced.unwrap();
        assert_eq!(&json[..], envelope.as_bytes());
        // NB: a slice of the announced buffer, not a copy: the exporter relies on it.
        let offset = snapshot.config.as_ptr() as usize - json.as_ptr() as usize;
        assert_eq!(
            &json[offset..offset + snapshot.config.len()],
            TABLE.as_bytes()
        );
    }

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
    fn a_gzip_size_trailer_that_lies_is_refused_and_only_bounds_the_buffer() {
        let good = gzip(&reconfigure(
            TABLE,
            Some("374d97a6cdede7dbe918d7e72c29e6c8"),
        ));
        for size in [0u32, 7, u32::MAX] {
            let mut frame = good.clone();
            let n = frame.len();
            frame[n - 4..].copy_from_slice(&size.to_le_bytes());
            assert!(
                matches!(decode(&frame, 1 << 20), Err(FrameError::Compression(_))),
                "{size}"
            );
        }
        assert!(decode(&good, 1 << 20).unwrap().is_some());
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

    /// The envelope as the derive read it before the one-pass reader: the reference.
    fn reference(json: &str) -> Result<Option<(String, String)>, String> {
        #[derive(Deserialize)]
        struct Envelope<'a> {
            #[serde(rename = "type")]
            kind: Option<String>,
            #[serde(borrow, default)]
            config_table: Option<&'a serde_json::value::RawValue>,
            #[serde(default)]
            config_hash: Option<String>,
        }
        let e: Envelope<'_> = serde_json::from_str(json).map_err(|_| "json")?;
        if e.kind.as_deref() != Some("reconfigure") {
            return Ok(None);
        }
        let raw = e.config_table.ok_or("json")?;
        validate_config_text(raw.get()).map_err(|e| format!("{e:?}"))?;
        Ok(Some((
            e.config_hash.unwrap_or_default(),
            raw.get().to_owned(),
        )))
    }

    fn label(
        r: Result<Option<ConfigSnapshot>, FrameError>,
    ) -> Result<Option<(String, String)>, String> {
        match r {
            Ok(None) => Ok(None),
            Ok(Some(s)) => Ok(Some((
                s.hash,
                String::from_utf8(s.config.to_vec()).unwrap(),
            ))),
            Err(FrameError::Json(_)) => Err("json".into()),
            Err(FrameError::Config(e)) => Err(format!("{e:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn the_one_pass_envelope_reader_agrees_with_serdes_derive() {
        let h = r#""374d97a6cdede7dbe918d7e72c29e6c8""#;
        let cases = [
            format!(r#"{{"type":"reconfigure","config_table":{TABLE},"config_hash":{h}}}"#),
            format!(r#"{{"config_hash":{h},"config_table":{TABLE},"type":"reconfigure"}}"#),
            format!(
                " \n{{ \"hashes\" : {{\"a\":[1,2,{{}}]}} ,\t\"config_table\"\r: {TABLE} , \"type\":\"reconfigure\",\"config_hash\":{h} , \"timestamp\": 1.5e3 }} \n"
            ),
            format!(
                r#"{{"type":"reconfigure","config_table":{TABLE},"config_hash":{h},"x":null,"y":-0.5,"z":true}}"#
            ),
            // The shape is wrong: the check names the entity set.
            format!(
                r#"{{"type":"reconfigure","config_table":{{"_format_version":"3.0","routes":[1]}},"config_hash":{h}}}"#
            ),
            format!(r#"{{"type":"reconfigure","config_table":[],"config_hash":{h}}}"#),
            format!(r#"{{"type":"reconfigure","config_table":"x","config_hash":{h}}}"#),
            // Not a reconfigure: ignored whatever its table.
            r#"{"config_table":{"routes":5},"type":"other"}"#.to_owned(),
            r#"{"type":null}"#.to_owned(),
            "{}".to_owned(),
            // Not JSON, or not an envelope.
            format!(r#"{{"type":"reconfigure","config_table":{TABLE},"type":"reconfigure"}}"#),
            format!(r#"{{"type":"reconfigure","config_table":{TABLE},"config_table":{TABLE}}}"#),
            format!(r#"{{"type":"reconfigure","config_table":{TABLE}}} x"#),
            format!(r#"{{"type":"reconfigure","config_table":{TABLE},}}"#),
            format!(r#"{{"type":"reconfigure" "config_table":{TABLE}}}"#),
            r#"{"type":"reconfigure","config_table":{"_format_version":"3.0","routes":[{]}}"#
                .to_owned(),
            format!(r#"{{"type":"reconfigure","config_table":{TABLE}"#),
            r#"{"type":"reconfigure"}"#.to_owned(),
            r#"{"type":5}"#.to_owned(),
            r#"["reconfigure"]"#.to_owned(),
            "".to_owned(),
        ];
        for json in cases {
            let ours = label(decode(&gzip(json.as_bytes()), 1 << 20));
            let theirs = reference(&json);
            // NB: a sent hash is ours as sent; the reference leaves a missing one empty.
            assert_eq!(ours, theirs, "{json}");
        }
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
