//! Building, starting and reaping the test environment's processes.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The repository root (where `tools/ensure-bin` lives).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testenv sits in the repo")
        .to_path_buf()
}

/// The path of a test-environment binary, building it first if this machine lacks it.
/// Blocking; progress of a first build goes to stderr.
pub fn binary(name: &str) -> Result<PathBuf> {
    static CACHE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(p) = cache.lock().unwrap().get(name) {
        return Ok(p.clone());
    }
    let script = repo_root().join("tools/ensure-bin");
    let out = Command::new(&script)
        .arg(name)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} {name} failed ({})", script.display(), out.status);
    }
    let path = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    cache.lock().unwrap().insert(name.to_owned(), path.clone());
    Ok(path)
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Runs `start` with `N` loopback ports free a moment ago, and again with new ones when
/// it fails because one was taken in the meantime (by a test running in parallel, or
/// another test binary). NB: the Go servers bind their ports themselves and cannot be
/// handed a bound socket, so a collision is retried instead of prevented.
pub(crate) async fn on_free_ports<const N: usize, T>(
    mut start: impl AsyncFnMut([u16; N]) -> Result<T>,
) -> Result<T> {
    const TRIES: usize = 5;
    for attempt in 1.. {
        let mut ports = [0; N];
        for p in &mut ports {
            *p = free_port()?;
        }
        match start(ports).await {
            Err(e) if attempt < TRIES && is_port_collision(&e) => {
                tracing::warn!(?ports, error = %format!("{e:#}"), "a port was taken; retrying with others");
            }
            r => return r,
        }
    }
    unreachable!("the loop returns by its last attempt")
}

/// Whether `e` (with the log tail [`wait_until`] adds) says that a port was in use: Go's
/// "bind: address already in use", MinIO's "port is already in use".
fn is_port_collision(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}").to_ascii_lowercase();
    text.contains("address already in use") || text.contains("already in use")
}

/// A directory for this test binary's processes, removed at the next run if this run
/// could not remove it (statics are never dropped). Directories of dead runs are swept.
pub(crate) fn run_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::env::temp_dir().join("kfo-testenv");
        std::fs::create_dir_all(&base).expect("create the testenv temp dir");
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                let pid = e.file_name().to_string_lossy().parse::<u32>().ok();
                if let Some(pid) = pid
                    && !Path::new(&format!("/proc/{pid}")).exists()
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = base.join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).expect("create the run dir");
        dir
    })
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `job` on the spawner thread: the one thread that starts every process and never
/// exits, because a parent-death signal fires when the *thread* that forked the child
/// ends, not the process.
fn on_spawner_thread<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> T {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("testenv-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
                // NB: the sender lives in a static, so the loop never ends and the children
                // live as long as the test binary.
            })
            .expect("spawn the testenv spawner thread");
        Mutex::new(tx)
    });
    let (done_tx, done_rx) = mpsc::channel();
    let job: Job = Box::new(move || {
        let _ = done_tx.send(job());
    });
    tx.lock()
        .unwrap()
        .send(job)
        .expect("the spawner thread is alive");
    done_rx.recv().expect("the spawner thread answers")
}

/// A process of the test environment. Killed when dropped and, through its parent-death
/// signal, when the test binary exits for any reason.
pub struct Proc {
    name: String,
    child: Mutex<Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts `bin args...` with `env`, logging to `<run dir>/<name>.log`.
    pub fn start(name: &str, bin: &Path, args: &[String], env: &[(&str, &str)]) -> Result<Proc> {
        let log = run_dir().join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new("setpriv");
        cmd.arg("--pdeathsig")
            .arg("KILL")
            .arg("--")
            .arg(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = on_spawner_thread(move || cmd.spawn())
            .with_context(|| format!("starting {name} ({})", bin.display()))?;
        Ok(Proc {
            name: name.to_owned(),
            child: Mutex::new(child),
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// Fails with the tail of the log if the process has exited.
    pub fn check_alive(&self) -> Result<()> {
        if let Some(status) = self.child.lock().unwrap().try_wait()? {
            bail!(
                "{} exited ({status}); last log lines:\n{}",
                self.name,
                self.log_tail(30)
            );
        }
        Ok(())
    }

    /// Sends `signal` (`TERM`, `KILL`, `STOP`, `CONT`...) to the process.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg("-s")
            .arg(signal)
            .arg(self.pid().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -s {signal} {} failed: {status}", self.name);
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit; whether it did.
    // NB: async: a blocking sleep here would freeze the test's runtime, and with it the
    // servers (the CP double) that the test runs on it.
    pub async fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if matches!(self.child.lock().unwrap().try_wait(), Ok(Some(_))) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Polls `check` until it returns true, failing with `proc`'s log if it exits or `timeout` passes.
pub(crate) async fn wait_until<F, Fut>(proc: &Proc, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        proc.check_alive()?;
        if check().await {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!(
                "{} not ready after {timeout:?}; last log lines:\n{}",
                proc.name,
                proc.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_port_taken_in_the_meantime_is_tried_again_with_another() {
        let mut tried = Vec::new();
        let port = on_free_ports(async |[port]| {
            tried.push(port);
            if tried.len() == 1 {
                // Another test took the port between the check and the bind.
                let _other = TcpListener::bind(("127.0.0.1", port))?;
                TcpListener::bind(("127.0.0.1", port)).context("serving")?;
            }
            Ok(port)
        })
        .await
        .unwrap();
        assert_eq!(tried.len(), 2, "{tried:?}");
        assert_eq!(port, tried[1]);
    }

    #[tokio::test]
    async fn other_failures_are_not_tried_again() {
        let mut tries = 0;
        let e = on_free_ports(async |[_, _]| -> Result<()> {
            tries += 1;
            bail!("etcd exited: no such flag")
        })
        .await
        .unwrap_err();
        assert_eq!(tries, 1);
        assert!(e.to_string().contains("no such flag"), "{e}");
    }
}
