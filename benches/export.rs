//! Export benchmarks (figures, not assertions). `make bench B=P1` runs one.
//!
//! - P1: Kong CP double push -> object written to MinIO (the export runner's report after
//!   a successful PUT; the object is then readable), for 10 KB, 1 MB and 20 MB configs,
//!   interleaved in one window with a bare aws-sdk-s3 PUT of the same bytes (ABCABC): an
//!   export round, with its history copy waited for (`with_history_p99_ms`), then a bare
//!   PUT, then the bare PUT again made conditional on the stored object's ETag as the
//!   export's fenced write is (`bare_if_match_*`: what fencing alone costs). 3 repetitions of 100-200 rounds; each figure is the median of the repetitions'
//!   figures, with its spread. The clock starts when the CP double has compressed the
//!   frame and handed it to its sessions, so the CP's own gzip time is not counted. The
//!   split of one export (`receive`, `decode`, `queue`, `put`, `report`: medians) comes
//!   from the runner's own report of when each step ended.
//! - P5: peak RSS and throughput of decode -> validate -> write for a 50 MB config, in a
//!   child process so the benchmark's own buffers do not count, through the export runner
//!   as the control-plane client feeds it (so the write is staged while the frame is
//!   checked, `staged_reps`); 3 children, each figure their median with its spread, and
//!   the split (`decode_ms`, `put_ms`: what remained of the write after the checks). `case=worst` is the most
//!   one exported version can hold: configurations of nearly `maxConfigSize` (64 MiB) pushed
//!   while the previous one is still being written (its PUT slowed to 10 MiB/s by
//!   Toxiproxy), so one is written, one waits and one is inflated at once; printed as the
//!   peak over the child's idle RSS, per MiB of `maxConfigSize`, which sizes the chart's
//!   memory limit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use kfo_testenv::configs::config_table;
use kfo_testenv::{KongCp, Mtls, Stream, Toxic, minio, toxiproxy};
use kong_fallback_operator::export::runner::Report;
use kong_fallback_operator::storage::s3::{PutExtras, S3Settings, S3Store, StaticCredentials};

#[path = "../tests/common/pipeline.rs"]
mod pipeline;
#[path = "../tests/common/stores.rs"]
mod stores;
#[path = "../tests/common/wait.rs"]
mod wait;
use pipeline::{CpAddress, Pipeline};
use stores::minio_store;

/// Repetitions of each P1 measurement: figures are their median, with the spread.
const REPS: usize = 3;

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The median of `figures` (one per repetition) and their spread (largest - smallest).
fn median_spread(mut figures: Vec<f64>) -> (f64, f64) {
    figures.sort_by(f64::total_cmp);
    (
        figures[figures.len() / 2],
        figures[figures.len() - 1] - figures[0],
    )
}

/// One P1 repetition's figures.
struct P1Rep {
    p50: f64,
    p99: f64,
    history_p99: f64,
    bare_p50: f64,
    bare_p99: f64,
    /// The bare PUT made conditional (`If-Match`), as the export's write is.
    if_match_p50: f64,
    if_match_p99: f64,
    /// Medians of the steps in [`STEPS`] (ms).
    stages: [f64; STEPS.len()],
    /// Their p99s, to tell which step a slow export was slow in.
    stages_p99: [f64; STEPS.len()],
}

/// The steps of one export, in P1's line: the frame received, decoded (of which inflating
/// and the checks), queued, put and reported.
const STEPS: [&str; 7] = [
    "receive", "decode", "inflate", "checks", "queue", "put", "report",
];

async fn p1() {
    let env = minio().await;
    // NB: rounds per repetition: enough for a p99 that is not the maximum (>= 100). At
    // 1 MB both arms' p99 ride on MinIO's own tail (a few ms on a 6 ms PUT): with 100
    // rounds the ratio's spread over three repetitions was about 1.0, with 500 about 0.3.
    // NB: `KFO_P1_SIZES=1MB,20MB` runs only those sizes (while working on one); 8MB, a
    // size between one and two S3 parts, runs only when named.
    let sizes = std::env::var("KFO_P1_SIZES").ok();
    let named = |label: &str| {
        sizes
            .as_deref()
            .is_some_and(|s| s.split(',').any(|l| l == label))
    };
    for (label, size, rounds) in [
        ("10KB", 10_000, 200),
        ("1MB", 1_000_000, 500),
        ("8MB", 8_000_000, 100),
        ("20MB", 20_000_000, 100),
    ] {
        if !named(label) && (sizes.is_some() || label == "8MB") {
            continue;
        }
        let bucket = env
            .bucket(&format!("bench-p1-{}", label.to_lowercase()))
            .await
            .unwrap();
        // NB: a CP of the DP's own version: a newer one rewrites each payload for the DP
        // (Kong's compat layer) after the push, which is the CP's time, not the operator's.
        let cp = KongCp::start(Mtls::Shared, "3.6.1.4").await.unwrap();
        // NB: the CP double debounces pushes like Kong's db_update_frequency (5 s); P1
        // measures the operator from the CP's send, so every push goes out at once.
        cp.set_push_debounce(Duration::ZERO);
        let first = config_table(size, 0);
        cp.push(&first, &format!("{:032x}", 1));
        let mut p = Pipeline::start(
            &cp,
            "3.6.1.4",
            minio_store(env, &bucket),
            &format!("s3://{bucket}/kong"),
            Duration::ZERO,
        );
        p.exported().await;
        // NB: two tables, alternated: a new hash each round is a new configuration to the
        // exporter, and the rounds do not wait for a 20 MB table to be generated.
        let tables = [config_table(size, 1), config_table(size, 2)];
        let client = env.root_client();
        let mut reps = Vec::with_capacity(REPS);
        let mut n = 1u64;
        // NB: rounds whose write was staged while the frame was checked (large frames).
        let mut staged = 0usize;
        let mut history_failed = 0usize;
        for _ in 0..REPS {
            let (mut export, mut history, mut bare, mut if_match) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let mut stages: [Vec<f64>; STEPS.len()] = Default::default();
            for _ in 0..rounds {
                n += 1;
                let table = &tables[n as usize % 2];
                let hash = format!("{n:032x}");
                // A: an export round with its history copy (the default), waited for.
                cp.push(table, &hash);
                let start = Instant::now();
                let (split, seen) = p
                    .until(120, |r| match r {
                        Report::Exported {
                            hash: ref h,
                            stages,
                            ..
                        } if *h == hash => Some((stages, Instant::now())),
                        _ => None,
                    })
                    .await;
                export.push(ms(seen - start));
                // NB: a copy that failed (a store hiccup) ends the round too: waiting for
                // `written: true` hung the bench once.
                let written = p
                    .until(120, |r| match r {
                        Report::History {
                            hash: ref h,
                            written,
                        } if *h == hash => Some(written),
                        _ => None,
                    })
                    .await;
                history_failed += usize::from(!written);
                history.push(ms(start.elapsed()));
                staged += usize::from(split.staged);
                let read = split
                    .read
                    .expect("a snapshot from the session has its arrival");
                let written = split.written.expect("an export has its write's end");
                for (i, d) in [
                    read.saturating_duration_since(start),
                    split.decode,
                    split.inflate,
                    split.checks,
                    split.queue,
                    split.put,
                    seen.saturating_duration_since(written),
                ]
                .into_iter()
                .enumerate()
                {
                    stages[i].push(ms(d));
                }
                // B: a bare PUT of the same bytes, over one key as the export writes one.
                let body = bytes::Bytes::copy_from_slice(table.as_bytes());
                let t = Instant::now();
                let etag = bare_put(&client, &bucket, body.clone(), None).await;
                bare.push(ms(t.elapsed()));
                // C: the same PUT, conditional on the stored ETag as the fenced write is.
                let t = Instant::now();
                bare_put(&client, &bucket, body, Some(etag)).await;
                if_match.push(ms(t.elapsed()));
            }
            reps.push(P1Rep {
                p50: percentile(&mut export, 0.5),
                p99: percentile(&mut export, 0.99),
                history_p99: percentile(&mut history, 0.99),
                bare_p50: percentile(&mut bare, 0.5),
                bare_p99: percentile(&mut bare, 0.99),
                if_match_p50: percentile(&mut if_match, 0.5),
                if_match_p99: percentile(&mut if_match, 0.99),
                stages_p99: stages.clone().map(|mut v| percentile(&mut v, 0.99)),
                stages: stages.map(|mut v| percentile(&mut v, 0.5)),
            });
        }
        let figure = |f: &dyn Fn(&P1Rep) -> f64| median_spread(reps.iter().map(f).collect());
        let (p50, _) = figure(&|r| r.p50);
        let (p99, p99_spread) = figure(&|r| r.p99);
        let (history_p99, _) = figure(&|r| r.history_p99);
        let (bare_p50, _) = figure(&|r| r.bare_p50);
        let (bare_p99, bare_spread) = figure(&|r| r.bare_p99);
        let (if_match_p50, _) = figure(&|r| r.if_match_p50);
        let (if_match_p99, _) = figure(&|r| r.if_match_p99);
        let (ratio, ratio_spread) = figure(&|r| r.p99 / r.bare_p99);
        let (extra, _) = figure(&|r| (r.p50 - r.bare_p50) / r.bare_p50);
        let stage = |i: usize| figure(&|r| r.stages[i]).0;
        let stage_p99 = |i: usize| figure(&|r| r.stages_p99[i]).0;
        // NB: the least any exporter could take that writes a configuration only once its
        // frame is inflated (the hash the write carries may come last in the envelope):
        // the frame's receipt, inflating, and a bare PUT, one after another.
        let floor_ratio = (stage(0) + stage(2) + bare_p50) / bare_p50;
        let steps: String = STEPS
            .iter()
            .enumerate()
            .map(|(i, step)| {
                format!(
                    " {step}_ms={:.2} {step}_p99_ms={:.2}",
                    stage(i),
                    stage_p99(i)
                )
            })
            .collect();
        println!(
            "bench: P1 size={label} rounds={rounds} reps={REPS} p50_ms={p50:.1} p99_ms={p99:.1} p99_spread_ms={p99_spread:.1} with_history_p99_ms={history_p99:.1} bare_put_p50_ms={bare_p50:.1} bare_put_p99_ms={bare_p99:.1} bare_put_p99_spread_ms={bare_spread:.1} bare_if_match_p50_ms={if_match_p50:.1} bare_if_match_p99_ms={if_match_p99:.1} ratio={ratio:.2} ratio_spread={ratio_spread:.2} extra_round_trips_p50={extra:.2} floor_ratio_p50={floor_ratio:.2} staged_rounds={staged} history_failed={history_failed}{steps} target_ratio=1.2 target_extra_round_trips_10KB=1",
        );
    }
}

/// P1's bare PUT of `body` to one key, as the export writes one; `If-Match` when given.
/// Returns the stored ETag.
async fn bare_put(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    body: bytes::Bytes,
    if_match: Option<String>,
) -> String {
    client
        .put_object()
        .bucket(bucket)
        .key("bare/config.json")
        .content_type("application/json")
        .set_if_match(if_match)
        .body(ByteStream::from(body))
        // NB: the same request as the exporter's (payload unsigned, CRC32), so the ratio
        // is what the operator adds, not a saving of its own.
        .customize()
        .disable_payload_signing()
        .send()
        .await
        .unwrap()
        .e_tag()
        .unwrap()
        .to_owned()
}

/// The `key=value` figures of a P5 child's `P5-CHILD` line, by key (0 when absent).
fn child_fields(out: &std::process::Output, what: &str) -> impl Fn(&str) -> f64 {
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().find(|l| l.starts_with("P5-CHILD")) else {
        panic!(
            "{what} child failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let fields: Vec<(String, f64)> = line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect();
    move |k: &str| fields.iter().find(|(f, _)| f == k).map_or(0.0, |(_, v)| *v)
}

fn vm_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn p5() {
    let env = minio().await;
    let bucket = env.bucket("bench-p5").await.unwrap();
    let table = config_table(50_000_000, 5);
    let frame = gzip_envelope(&table, 5);
    let path = std::env::temp_dir().join(format!("kfo-p5-{}.gz", std::process::id()));
    std::fs::write(&path, &frame).unwrap();
    // NB: one unit for the ratio (MiB over MiB); throughput in MB/s as the target says.
    let size_mib = table.len() as f64 / f64::from(1 << 20);
    let size_mb = table.len() as f64 / 1e6;
    // NB: as if a previous export of this size were stored: a runner taking the lead over
    // a large configuration checks the store's multipart commits at once (as the
    // operator's), so each child's 50 MB write can be staged.
    env.root_client()
        .put_object()
        .bucket(&bucket)
        .key("kong/3.6.1.4/config.json")
        .body(ByteStream::from(table.clone().into_bytes()))
        .send()
        .await
        .unwrap();
    drop((table, frame));
    // NB: each child starts its own MinIO client against the same server via the env.
    let mut children = Vec::with_capacity(REPS);
    for _ in 0..REPS {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .env("KFO_P5_CHILD", &path)
            .env("KFO_P5_BUCKET", &bucket)
            .env("KFO_P5_MINIO", &env.endpoint)
            .env("KFO_P5_USER", &env.root_user)
            .env("KFO_P5_PASSWORD", &env.root_password)
            .output()
            .unwrap();
        let field = child_fields(&out, "P5");
        children.push([
            field("hwm_kb") / 1024.0,
            size_mb / field("secs"),
            field("decode_secs") * 1000.0,
            field("put_secs") * 1000.0,
            field("staged"),
        ]);
    }
    let _ = std::fs::remove_file(&path);
    let figure = |i: usize| median_spread(children.iter().map(|c| c[i]).collect());
    let (peak_mib, peak_spread) = figure(0);
    let (mb_per_s, mb_per_s_spread) = figure(1);
    println!(
        "bench: P5 size_mib={size_mib:.1} reps={REPS} peak_rss_mib={peak_mib:.0} peak_rss_spread_mib={peak_spread:.0} rss_ratio={:.2} mb_per_s={mb_per_s:.1} mb_per_s_spread={mb_per_s_spread:.1} decode_ms={:.0} put_ms={:.0} staged_reps={} target_rss_ratio=1.5 target_mb_per_s=150",
        peak_mib / size_mib,
        figure(2).0,
        figure(3).0,
        children.iter().filter(|c| c[4] > 0.0).count(),
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::var("KFO_P5W_CP").is_ok() {
        rt.block_on(p5_worst_child());
        return;
    }
    if let Ok(frame) = std::env::var("KFO_P5_CHILD") {
        let bucket = std::env::var("KFO_P5_BUCKET").unwrap();
        rt.block_on(p5_child_with_env(&frame, &bucket));
        return;
    }
    let only: Option<String> = std::env::args().skip(1).find(|a| a.starts_with('P'));
    let run = |id: &str| only.as_deref().is_none_or(|o| o == id);
    if run("P1") {
        rt.block_on(p1());
    }
    if run("P5") {
        rt.block_on(p5());
        rt.block_on(p5_worst());
    }
}

/// The child of P5: decode -> validate -> write one frame through the export runner, as
/// the operator's control-plane client feeds it (the inflated envelope announced, then the
/// checked snapshot), so a large configuration takes the operator's own path (staged while
/// checked). A small frame goes first, so the runner has read the stored configuration
/// (large: the parent put one) and checked the store's multipart commits; then the
/// measured frame. It cannot share the parent's MinIO through `minio()` (that
/// would start another), so it builds its store from the parent's environment.
async fn p5_child_with_env(frame_path: &str, bucket: &str) {
    use kong_fallback_operator::cp_client::{Event, decode_announcing};
    use kong_fallback_operator::export::runner::{self, ExportTarget};
    let var = |k: &str| std::env::var(k).unwrap();
    let settings = S3Settings {
        region: "us-east-1".into(),
        endpoint: Some(var("KFO_P5_MINIO")),
        credentials: StaticCredentials {
            access_key_id: var("KFO_P5_USER"),
            secret_access_key: var("KFO_P5_PASSWORD"),
            session_token: None,
        }
        .into(),
        ca_pem: None,
    };
    let store = S3Store::new(&settings, bucket, PutExtras::default()).unwrap();
    let (events, rx) = tokio::sync::mpsc::channel(16);
    let (tx, mut reports) = tokio::sync::mpsc::channel(64);
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let target = ExportTarget {
        url: kong_fallback_operator::kong::StorageUrl::parse(&format!("s3://{bucket}/kong"))
            .unwrap(),
        version: "3.6.1.4".into(),
        uploader: "kfo-p5".into(),
        writer: "kfo-p5".into(),
        owner: "kong/p5".into(),
        plugins: None,
        min_interval: Duration::ZERO,
        // NB: no history copy: it would hold the body after the write.
        history_limit: 0,
    };
    tokio::spawn(runner::run(
        target,
        std::sync::Arc::new(store),
        rx,
        tx,
        kong_fallback_operator::election::Gate::always(),
        stop_rx,
    ));
    // One frame as the client hands it over: decoded off the runtime, the envelope
    // announced once inflated; waits for its export and says whether it was staged.
    let mut export = async |frame: Vec<u8>| {
        let early = events.clone();
        let snapshot = tokio::task::spawn_blocking(move || {
            decode_announcing(&frame, 1 << 30, |json| {
                let _ = early.try_send(Event::Inflated(json.clone()));
            })
        })
        .await
        .unwrap()
        .unwrap()
        .unwrap();
        let decoded = Instant::now();
        let (hash, bytes) = (snapshot.hash.clone(), snapshot.config.len());
        events.send(Event::Snapshot(snapshot)).await.unwrap();
        loop {
            match reports.recv().await.unwrap() {
                Report::Exported {
                    hash: h, stages, ..
                } if h == hash => return (decoded, bytes, stages.staged),
                Report::Failed { error, .. } => panic!("P5 child: {error}"),
                _ => {}
            }
        }
    };
    // NB: a first, small configuration: the runner reads the stored one and takes the lead.
    export(gzip_envelope(
        r#"{"_format_version":"3.0","services":[{"id":"s"}]}"#,
        6,
    ))
    .await;
    let frame = std::fs::read(frame_path).unwrap();
    let start = Instant::now();
    let (decoded, bytes, staged) = export(frame).await;
    let total = start.elapsed();
    println!(
        "P5-CHILD bytes={bytes} secs={} decode_secs={} put_secs={} staged={} hwm_kb={}",
        total.as_secs_f64(),
        (decoded - start).as_secs_f64(),
        (total - (decoded - start)).as_secs_f64(),
        u8::from(staged),
        vm_kb("VmHWM:")
    );
}

/// The gzip'd `reconfigure` frame of `table`, as the CP double sends it.
fn gzip_envelope(table: &str, hash: u64) -> Vec<u8> {
    let json = format!(
        r#"{{"type":"reconfigure","timestamp":1.0,"config_table":{table},"config_hash":"{hash:032x}"}}"#
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(json.as_bytes()).unwrap();
    gz.finish().unwrap()
}

/// The largest configuration a policy may make the operator hold by default.
const MAX_CONFIG: usize = 64 << 20;

/// P5 `case=worst`: three configurations of nearly [`MAX_CONFIG`] in flight for one version.
async fn p5_worst() {
    let env = minio().await;
    let bucket = env.bucket("bench-p5w").await.unwrap();
    let upstream = env.endpoint.trim_start_matches("http://").to_owned();
    let slow = toxiproxy()
        .await
        .proxy("p5-minio", &upstream)
        .await
        .unwrap();
    // NB: 10 MiB/s upstream: a PUT of 60 MB takes about 6 s, long enough for the next two
    // configurations to arrive while it is written.
    slow.add("slow-put", Stream::Upstream, Toxic::Bandwidth(10 * 1024))
        .await
        .unwrap();
    let cp = KongCp::start(Mtls::Shared, "3.10.0.0").await.unwrap();
    // NB: each push goes out at once, so three are in flight together.
    cp.set_push_debounce(Duration::ZERO);
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    let (cert, key) = (
        dir.join(format!("kfo-p5w-{pid}.crt")),
        dir.join(format!("kfo-p5w-{pid}.key")),
    );
    std::fs::write(&cert, &cp.certs.cert_pem).unwrap();
    std::fs::write(&key, &cp.certs.key_pem).unwrap();
    let tables: Vec<String> = (0..3)
        .map(|i| config_table(MAX_CONFIG - (4 << 20), 100 + i))
        .collect();
    let config_mb = tables[0].len() as f64 / f64::from(1 << 20);
    let last = format!("{:032x}", 103);
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .env("KFO_P5W_CP", &cp.endpoint)
        .env("KFO_P5W_SNI", &cp.certs.server_name)
        .env("KFO_P5W_CERT", &cert)
        .env("KFO_P5W_KEY", &key)
        .env("KFO_P5W_S3", slow.http())
        .env("KFO_P5_BUCKET", &bucket)
        .env("KFO_P5_USER", &env.root_user)
        .env("KFO_P5_PASSWORD", &env.root_password)
        .env("KFO_P5W_LAST", &last)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait::until("the child's DP connected", async || {
        (!cp.data_planes().is_empty()).then_some(())
    })
    .await;
    // The first is written (slowly); the second arrives and waits; the third is inflated.
    for (i, table) in tables.iter().enumerate() {
        cp.push(table, &format!("{:032x}", 101 + i));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    drop(tables);
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .expect("the P5 worst-case child finished within 300 s")
        .unwrap();
    let _ = (std::fs::remove_file(&cert), std::fs::remove_file(&key));
    let field = child_fields(&out, "P5 case=worst");
    let (idle_mib, peak_mib) = (field("idle_kb") / 1024.0, field("hwm_kb") / 1024.0);
    let max_mib = (MAX_CONFIG >> 20) as f64;
    println!(
        "bench: P5 case=worst max_config_mib={max_mib:.0} config_mib={config_mb:.1} pushed=3 idle_rss_mib={idle_mib:.0} peak_rss_mib={peak_mib:.0} per_version_mib={:.0} per_max_config={:.2}",
        peak_mib - idle_mib,
        (peak_mib - idle_mib) / max_mib
    );
}

/// The child of P5 `case=worst`: a DP session and an export runner to the slowed store,
/// until the last configuration is written; then its idle and peak RSS.
async fn p5_worst_child() {
    let var = |k: &str| std::env::var(k).unwrap();
    let settings = S3Settings {
        region: "us-east-1".into(),
        endpoint: Some(var("KFO_P5W_S3")),
        credentials: StaticCredentials {
            access_key_id: var("KFO_P5_USER"),
            secret_access_key: var("KFO_P5_PASSWORD"),
            session_token: None,
        }
        .into(),
        ca_pem: None,
    };
    let bucket = var("KFO_P5_BUCKET");
    let store = S3Store::new(&settings, &bucket, PutExtras::default()).unwrap();
    let cp = CpAddress {
        endpoint: var("KFO_P5W_CP"),
        server_name: var("KFO_P5W_SNI"),
        cert_pem: std::fs::read_to_string(var("KFO_P5W_CERT")).unwrap(),
        key_pem: std::fs::read_to_string(var("KFO_P5W_KEY")).unwrap(),
    };
    let idle_kb = vm_kb("VmRSS:");
    let mut p = Pipeline::connect(
        &cp,
        "3.6.1.4",
        std::sync::Arc::new(store),
        &format!("s3://{bucket}/kong"),
        Duration::ZERO,
    );
    let last = var("KFO_P5W_LAST");
    p.until(280, |r| {
        matches!(r, Report::Exported { hash: ref h, .. } if *h == last).then_some(())
    })
    .await;
    println!("P5-CHILD idle_kb={idle_kb} hwm_kb={}", vm_kb("VmHWM:"));
}
