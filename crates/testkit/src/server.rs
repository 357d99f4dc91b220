//! A real `tessera serve` process on a random loopback port, killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running server.
pub struct TestServer {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub address: String,
    /// Everything the server has logged so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

/// `tessera ARGS` in `dir`, with only the given configuration variables (inherited `A__B`
/// variables are removed so a developer's environment cannot change a test), and the index of
/// [`SERVER_INDEX_ENV`] when that asks for one and the test names none.
pub fn command(binary: &Path, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(binary);
    command.current_dir(dir).args(args);
    for (name, _) in std::env::vars().filter(|(n, _)| n.contains("__")) {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    if !env.iter().any(|(name, _)| *name == "Tessera__Index")
        && let Some(index) = server_index(dir)
    {
        command.env("Tessera__Index", index);
    }
    command
}

/// Set to `postgres` to run every server a test starts on PostgreSQL instead of its default
/// SQLite file, unless the test names an index itself: a database per server directory (kept
/// for the servers restarted in it) on the server of [`crate::index::POSTGRES_URL_ENV`]. The
/// test command runs the main end-to-end suites once this way.
pub const SERVER_INDEX_ENV: &str = "TESSERA_TEST_SERVER_INDEX";

/// The index URL for servers in `dir` when [`SERVER_INDEX_ENV`] asks for PostgreSQL.
fn server_index(dir: &Path) -> Option<String> {
    if std::env::var(SERVER_INDEX_ENV).as_deref() != Ok("postgres") {
        return None;
    }
    static DATABASES: Mutex<Vec<(PathBuf, crate::index::FreshDatabase)>> = Mutex::new(Vec::new());
    let mut databases = DATABASES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, database)) = databases.iter().find(|(d, _)| d == dir) {
        return Some(database.url.clone());
    }
    // Called from tests' runtimes, which cannot be blocked on: a runtime on a thread of its own.
    let database = std::thread::spawn(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(crate::IndexEngine::Postgres.fresh_database())
    })
    .join()
    .expect("creating a PostgreSQL database")
    .unwrap_or_else(|| {
        panic!(
            "{SERVER_INDEX_ENV}=postgres needs {}",
            crate::index::POSTGRES_URL_ENV
        )
    });
    let url = database.url.clone();
    // Kept for the rest of the test process (a restarted server finds its index again) and
    // never dropped: the test command's private PostgreSQL goes with its data at the end.
    databases.push((dir.to_owned(), database));
    Some(url)
}

impl TestServer {
    /// Starts `binary serve` in `dir` and waits until it listens.
    pub fn start(binary: &Path, dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = command(binary, dir, &["serve", "--listen", "127.0.0.1:0"], env)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tessera");
        let stdout = child.stdout.take().expect("stdout");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some((_, address)) = line.split_once("listening on ") {
                    let _ = tx.send(
                        address
                            .split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
                // Shown with the output of a test that fails (the test harness captures it).
                if line.contains(" ERROR ") {
                    eprintln!("server: {line}");
                }
                if let Ok(mut lines) = lines.lock() {
                    lines.push(line);
                }
            }
        });
        let address = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server announced its address");
        Self {
            child,
            address,
            log,
        }
    }

    /// `http://ADDRESS` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// STOW-RS of `parts` to `path` as one multipart/related request: the status and the
    /// response dataset (`Null` when there is none).
    pub async fn stow(&self, path: &str, parts: &[Vec<u8>]) -> (u16, serde_json::Value) {
        let (body, content_type) = dicom_multipart("tessera-test-boundary", parts);
        let response = reqwest::Client::new()
            .post(self.url(path))
            .header("Content-Type", content_type)
            .header("Accept", "application/dicom+json")
            .body(body)
            .send()
            .await
            .expect("STOW request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("STOW response");
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// GETs `path` and parses the body as JSON (`Null` when it is not).
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let response = reqwest::get(self.url(path)).await.expect("GET request");
        response.json().await.unwrap_or(serde_json::Value::Null)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's peak resident set so far (VmHWM), in KiB; 0 where /proc cannot tell.
    pub fn peak_rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM (a graceful shutdown request) without waiting.
    pub fn send_sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits up to `timeout` for the process to exit; its exit status, or `None` if it is
    /// still running (it is then killed).
    pub fn wait_exit(mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGTERM, then the exit status (`None` if it did not exit within `timeout`).
    pub fn terminate(self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.send_sigterm();
        self.wait_exit(timeout)
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every file under `root`, as paths relative to it, sorted.
pub fn files_under(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if let Ok(relative) = path.strip_prefix(root) {
                out.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// The shared sample files (`../shared/testdata` beside the repository).
pub fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata")
}

/// Waits up to 10 seconds for `done` to hold, checking every 50 ms; panics naming `what`.
pub async fn eventually(what: &str, done: impl FnMut() -> bool) {
    eventually_within(what, Duration::from_secs(10), done).await;
}

/// Waits up to `limit` for `done` to hold, checking every 50 ms; panics naming `what`. For
/// background work whose pace depends on the machine (a migration under concurrent traffic).
pub async fn eventually_within(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

/// A `multipart/related; type="application/dicom"` body of `parts` with `boundary`, as STOW
/// clients send it; returns the body and its `Content-Type`.
pub fn dicom_multipart(boundary: &str, parts: &[Vec<u8>]) -> (Vec<u8>, String) {
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(part);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let content_type =
        format!("multipart/related; type=\"application/dicom\"; boundary={boundary}");
    (body, content_type)
}
