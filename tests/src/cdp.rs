//! A headless Chromium driven over the DevTools protocol (a WebSocket; no driver binary, no
//! npm), for the dashboard's browser tests: launch Debian's Chromium, open a page, evaluate
//! JavaScript in it, wait for a condition, take a screenshot. Exceptions the page throws are
//! collected so that a test can assert there were none.
//!
//! Test support: failures panic with a message naming what was asked of the browser.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// How long one DevTools command may take, and [`Page::until`]'s default wait.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
const UNTIL_TIMEOUT: Duration = Duration::from_secs(20);

/// Where Chromium is: `SERIN_CHROMIUM` if set, else the first of Debian's and the usual paths
/// that exists; `None` when there is none.
pub fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SERIN_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// What to tell a person when [`chromium`] finds none.
pub const NO_CHROMIUM: &str = "no Chromium: install Debian's package (apt-get install chromium; \
     scripts/test does it when run as root) or set SERIN_CHROMIUM to its path";

/// A headless Chromium with a fresh profile, stopped (with every child) on drop.
pub struct Browser {
    child: Child,
    profile: tempfile::TempDir,
    ws_url: String,
}

impl Browser {
    /// Starts the Chromium at `chromium` headless with a 1920×1080 window and waits (30 s at
    /// most) until its DevTools port is open.
    pub fn launch(chromium: &Path) -> Browser {
        let profile = tempfile::tempdir().expect("a temporary profile directory for chromium");
        let child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1920,1080",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
        let mut browser = Browser {
            child,
            profile,
            ws_url: String::new(),
        };
        // Chromium writes its DevTools port and path here once it listens.
        let port_file = browser.profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    browser.ws_url = format!("ws://127.0.0.1:{port}{path}");
                    return browser;
                }
            }
            if let Ok(Some(status)) = browser.child.try_wait() {
                panic!("chromium exited at start with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not open its DevTools port in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A new tab (1920×1080, device scale 1) with the runtime and page domains enabled.
    pub async fn new_page(&self) -> Page {
        let (socket, _) = tokio_tungstenite::connect_async(&self.ws_url)
            .await
            .unwrap_or_else(|e| panic!("connect to chromium's DevTools at {}: {e}", self.ws_url));
        let mut page = Page {
            socket,
            next_id: 0,
            session: None,
            exceptions: Vec::new(),
        };
        let target = page
            .send("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = page
            .send(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        let session = attached["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("Target.attachToTarget gave no sessionId: {attached}"));
        page.session = Some(session.to_owned());
        page.send("Runtime.enable", json!({})).await;
        page.send("Page.enable", json!({})).await;
        page.send(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1920, "height": 1080, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ask first: Chromium then ends its own children and reaps them. A SIGKILL would leave
        // them to init.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A DevTools protocol session on one tab.
pub struct Page {
    socket: Socket,
    next_id: u64,
    session: Option<String>,
    /// The exceptions the page threw so far (text and description), as DevTools reported them.
    pub exceptions: Vec<String>,
}

impl Page {
    /// Sends DevTools command `method` with `params` to this tab; its result (panics on an
    /// error or after 30 s without an answer).
    pub async fn send(&mut self, method: &str, params: Value) -> Value {
        self.try_send(method, params)
            .await
            .unwrap_or_else(|error| panic!("{method} failed: {error}"))
    }

    /// [`Page::send`], with DevTools' error answer as the error.
    async fn try_send(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.socket
            .send(Message::text(msg.to_string()))
            .await
            .unwrap_or_else(|e| panic!("send {method} to chromium: {e}"));
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within {ANSWER_TIMEOUT:?}"))
                .unwrap_or_else(|| panic!("the DevTools socket closed waiting for {method}"))
                .unwrap_or_else(|e| panic!("the DevTools socket failed waiting for {method}: {e}"));
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("DevTools sent no JSON ({e}): {text}"));
            if v["method"] == "Runtime.exceptionThrown" {
                let d = &v["params"]["exceptionDetails"];
                self.exceptions
                    .push(format!("{} {}", d["text"], d["exception"]["description"]));
            }
            if v["id"] == id {
                return match v.get("error") {
                    Some(error) => Err(error.clone()),
                    None => Ok(v["result"].clone()),
                };
            }
        }
    }

    /// Adds `headers` (a JSON object of name → value) to every request the page makes from now
    /// on, e.g. a credential.
    pub async fn set_extra_headers(&mut self, headers: Value) {
        self.send("Network.enable", json!({})).await;
        self.send("Network.setExtraHTTPHeaders", json!({"headers": headers}))
            .await;
    }

    /// Loads `url` in the tab and waits (20 s at most) until its document has loaded, so that
    /// what is evaluated next runs in it.
    pub async fn navigate(&mut self, url: &str) {
        let r = self.send("Page.navigate", json!({"url": url})).await;
        assert!(
            r.get("errorText").is_none(),
            "navigate to {url}: {}",
            r["errorText"]
        );
        let loaded = format!(
            "location.href === {} && document.readyState === 'complete'",
            json!(url)
        );
        let deadline = Instant::now() + UNTIL_TIMEOUT;
        loop {
            // While the old document goes, evaluating may fail (its context is destroyed).
            let answer = self
                .try_send(
                    "Runtime.evaluate",
                    json!({"expression": loaded, "returnByValue": true}),
                )
                .await;
            if answer.is_ok_and(|r| r["result"]["value"] == json!(true)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{url} did not load within {UNTIL_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Evaluates `expr` in the page (promises awaited); returns its value.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .send(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            r.get("exceptionDetails").is_none(),
            "{expr}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Evaluates `expr` until it is truthy (not null, false, "" or 0) and returns that value,
    /// failing with `what` after 20 s.
    pub async fn until(&mut self, what: &str, expr: &str) -> Value {
        self.until_within(what, UNTIL_TIMEOUT, expr).await
    }

    /// [`Page::until`] with a deadline of `timeout`.
    pub async fn until_within(&mut self, what: &str, timeout: Duration, expr: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.eval(expr).await;
            if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG screenshot of the visible page at `path` (creating its directory).
    pub async fn screenshot(&mut self, path: &Path) {
        let shot = self
            .send("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let data = shot["data"]
            .as_str()
            .unwrap_or_else(|| panic!("Page.captureScreenshot gave no data: {shot}"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        }
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap_or_else(|e| panic!("Page.captureScreenshot's data is not base64: {e}"));
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Asks Chromium to close itself (it ends its children); [`Browser`]'s drop then only waits.
    pub async fn close_browser(mut self) {
        self.next_id += 1;
        let msg = json!({"id": self.next_id, "method": "Browser.close", "params": {}});
        // The browser may close the socket before it answers: the answer is not awaited.
        let _ = self.socket.send(Message::text(msg.to_string())).await;
    }
}
