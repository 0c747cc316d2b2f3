//! The real `epochgate` binary as a child process: started on a config, probed, signalled,
//! restarted and killed on drop.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::config::EdgeConfig;
use super::{eventually, sum_samples, TestOrigin, Upstream};

/// The real `epochgate` binary, configured for a test, killed on drop.
pub struct Edge {
    child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
}

impl Edge {
    /// Starts an edge with the test config in front of `upstream`, using `origin`, and waits
    /// until it is ready. For any other config: [`EdgeConfig`].
    pub async fn start(origin: &TestOrigin, upstream: &Upstream) -> Edge {
        EdgeConfig::new(origin, upstream).start().await
    }

    /// Starts the process with a hand-written config (`make` gets the temp dir), e.g. a broken
    /// one, without waiting for readiness. For the test config with changes: [`EdgeConfig`].
    pub fn spawn_config(
        dir: tempfile::TempDir,
        proxy: u16,
        admin: u16,
        make: impl FnOnce(&std::path::Path) -> String,
    ) -> Edge {
        Edge::spawn_config_env(dir, proxy, admin, &[], make)
    }

    /// [`Edge::spawn_config`], with extra environment variables for the process.
    pub fn spawn_config_env(
        dir: tempfile::TempDir,
        proxy: u16,
        admin: u16,
        env: &[(&str, String)],
        make: impl FnOnce(&std::path::Path) -> String,
    ) -> Edge {
        let config = make(dir.path());
        let config_path = dir.path().join("epochgate.yaml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("edge.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_epochgate"))
            .arg("-c")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run epochgate");
        Edge {
            child,
            proxy: SocketAddr::from(([127, 0, 0, 1], proxy)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            dir,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    pub async fn wait_ready(&self) {
        eventually(Duration::from_secs(15), "edge /readyz = 200", || async {
            (self.try_readiness().await?.0 == 200).then_some(())
        })
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    /// The JSON body of `/readyz`.
    pub async fn readiness(&self) -> Value {
        self.try_readiness().await.expect("/readyz answers").1
    }

    /// `/readyz`'s status and JSON body; `None` while the admin listener does not answer.
    pub async fn try_readiness(&self) -> Option<(u16, Value)> {
        let r = self
            .client
            .get(self.admin_url("/readyz"))
            .send()
            .await
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.json().await.ok()?))
    }

    /// Sends the token again and again until the edge answers `status` (10 s at most).
    pub async fn until_status(&self, token: &str, status: u16) {
        eventually(Duration::from_secs(10), &format!("HTTP {status}"), || async move {
            (self.get_with_token("/", token).await.status() == status).then_some(())
        })
        .await;
    }

    /// Waits until `/readyz` reports this feed state.
    pub async fn wait_feed(&self, state: &str) {
        eventually(
            Duration::from_secs(10),
            &format!("feed {state}"),
            || async move { (self.readiness().await["feed"] == state).then_some(()) },
        )
        .await;
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// GET through the edge with `Authorization: Bearer <token>`.
    pub async fn get_with_token(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request through the edge")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request through the edge")
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of a sample of `/metrics`, e.g. `epochgate_requests_total{decision="allowed"}`:
    /// the sum over every series of that name whose labels include the ones given (so
    /// `{decision="allowed"}` counts enforced and observed requests alike).
    pub async fn metric(&self, sample: &str) -> f64 {
        sum_samples(&self.metrics().await, sample)
    }

    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("edge.log")) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// Whether the edge process is still running.
    pub fn pid_alive(&self) -> bool {
        // A process that exited but is not yet reaped shows state `Z` here.
        std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `QUIT`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("epochgate.yaml")
    }

    /// Stops the process (SIGKILL) and starts a new one on the same config, ports and log,
    /// with empty caches, without waiting for it to be ready. The client is replaced too, so
    /// no connection to the old process is reused.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("edge.log"))
            .unwrap();
        self.child = Command::new(env!("CARGO_BIN_EXE_epochgate"))
            .arg("-c")
            .arg(self.config_path())
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run epochgate");
        self.client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
    }

    /// Waits for the process to exit by itself; `None` if it is still running after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
