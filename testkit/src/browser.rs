//! A headless Chromium driven over W3C WebDriver (chromedriver on a free port), for browser tests
//! of the web console: navigate, find elements by CSS, read, click and type, run JavaScript, take
//! screenshots, read the browser's console. Everything it starts is stopped on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::{free_port, wait_port, ChildGuard};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The key of a W3C web element reference (`{"element-6066-…": "<id>"}`).
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long one WebDriver command may take (a page load included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the `wait_*` methods look again.
const POLL: Duration = Duration::from_millis(50);

/// An error answer of the WebDriver server: its W3C error code and message.
#[derive(Debug)]
struct Failure {
    error: String,
    message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error, self.message)
    }
}

/// One HTTP/1.1 request to 127.0.0.1:`port` (chromedriver refuses HTTP/1.0, and keeps an
/// HTTP/1.1 connection open, so the body is read by its Content-Length); returns
/// (status, body).
fn http11(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(COMMAND_TIMEOUT))?;
    stream.set_write_timeout(Some(COMMAND_TIMEOUT))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut length = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
        }
    }
    let mut bytes = Vec::new();
    match length {
        Some(n) => {
            bytes.resize(n, 0);
            reader.read_exact(&mut bytes)?;
        }
        None => {
            reader.read_to_end(&mut bytes)?;
        }
    }
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// chromedriver in a process group of its own (the Chromium it launches joins that group), with
/// its log and Chromium's profile in a temporary directory: all of it killed and removed on drop.
struct Driver {
    port: u16,
    log: PathBuf,
    guard: ChildGuard,
    dir: tempfile::TempDir,
}

impl Driver {
    fn start() -> Driver {
        for (path, package) in [(CHROMEDRIVER, "chromium-driver"), (CHROMIUM, "chromium")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: run scripts/setup.sh (Debian package {package})"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("chromedriver.log");
        let port = free_port();
        let mut guard = ChildGuard::spawn(
            "chromedriver",
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .process_group(0),
            &log,
        );
        wait_port(port, &mut guard, &log, Duration::from_secs(20));
        Driver {
            port,
            log,
            guard,
            dir,
        }
    }

    fn profile(&self) -> PathBuf {
        self.dir.path().join("profile")
    }

    /// One command: the answer's `value`, or the server's error.
    fn command(&self, method: &str, path: &str, body: &Value) -> Result<Value, Failure> {
        let body = if method == "POST" {
            body.to_string()
        } else {
            String::new()
        };
        let (status, text) = http11(self.port, method, path, &body).unwrap_or_else(|e| {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("WebDriver {method} {path}: {e}; chromedriver log:\n{log}")
        });
        let mut answer: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("WebDriver {method} {path}: answer {status} is not JSON ({e}): {text}")
        });
        let value = answer["value"].take();
        match value.get("error").and_then(Value::as_str) {
            Some(error) if status != 200 => Err(Failure {
                error: error.to_owned(),
                message: value["message"].as_str().unwrap_or_default().to_owned(),
            }),
            _ => Ok(value),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.guard.stop_with(libc::SIGTERM, Duration::from_secs(2));
        // Whatever Chromium processes outlived chromedriver share its process group.
        // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
        unsafe {
            libc::kill(-(self.guard.id() as i32), libc::SIGKILL);
        }
    }
}

/// A headless Chromium session (1400x900 CSS pixels, scale factor 1) driven by chromedriver.
pub struct Browser {
    session: String,
    chromium_pid: Option<u32>,
    /// The browser's console entries read so far (chromedriver hands each out once).
    console: Mutex<Vec<String>>,
    driver: Driver,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session; panics with a clear
    /// message when Chromium or chromedriver is not installed, or with chromedriver's log when
    /// the session cannot start.
    pub fn start() -> Browser {
        let driver = Driver::start();
        let options = json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1400,900",
                "--force-device-scale-factor=1",
                format!("--user-data-dir={}", driver.profile().display()),
            ],
        });
        let with_logs = json!({"capabilities": {"alwaysMatch": {
            "goog:chromeOptions": options,
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let without_logs = json!({"capabilities": {"alwaysMatch": {
            "goog:chromeOptions": options,
        }}});
        let created = driver
            .command("POST", "/session", &with_logs)
            .or_else(|_| driver.command("POST", "/session", &without_logs));
        let value = created.unwrap_or_else(|e| {
            let log = std::fs::read_to_string(&driver.log).unwrap_or_default();
            panic!("starting a Chromium session: {e}; chromedriver log:\n{log}")
        });
        let session = value["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("new session without a sessionId: {value}"))
            .to_owned();
        let chromium_pid = value["capabilities"]["goog:processID"]
            .as_u64()
            .map(|p| p as u32);
        Browser {
            session,
            chromium_pid,
            console: Mutex::new(Vec::new()),
            driver,
        }
    }

    /// The process id of the Chromium browser process, when chromedriver reports it.
    pub fn chromium_pid(&self) -> Option<u32> {
        self.chromium_pid
    }

    fn try_call(&self, method: &str, path: &str, body: Value) -> Result<Value, Failure> {
        let path = format!("/session/{}{path}", self.session);
        self.driver.command(method, &path, &body)
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    fn elements(&self, path: &str, css: &str) -> Vec<Element<'_>> {
        let found = self.call("POST", path, json!({"using": "css selector", "value": css}));
        found
            .as_array()
            .unwrap_or_else(|| panic!("{path} `{css}` answered {found}"))
            .iter()
            .map(|reference| Element::new(self, reference))
            .collect()
    }

    /// Opens `url` and waits for the page to load.
    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url }));
    }

    pub fn current_url(&self) -> String {
        self.call("GET", "/url", Value::Null)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The first element matching `css`; panics naming the selector when there is none.
    pub fn find(&self, css: &str) -> Element<'_> {
        let body = json!({"using": "css selector", "value": css});
        match self.try_call("POST", "/element", body) {
            Ok(reference) => Element::new(self, &reference),
            Err(e) if e.error == "no such element" => {
                panic!("no element matches `{css}` on {}", self.current_url())
            }
            Err(e) => panic!("finding `{css}`: {e}"),
        }
    }

    /// Every element matching `css`, in document order.
    pub fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        self.elements("/elements", css)
    }

    /// Waits until an element matches `css`; panics after `timeout` with the URL and the
    /// browser console.
    pub fn wait_for(&self, css: &str, timeout: Duration) -> Element<'_> {
        let start = Instant::now();
        loop {
            if let Some(element) = self.find_all(css).into_iter().next() {
                return element;
            }
            if start.elapsed() >= timeout {
                panic!(
                    "no element matches `{css}` after {timeout:?} on {}; browser console:\n{}",
                    self.current_url(),
                    self.console_log().join("\n")
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until the first element matching `css` has the text `expected`; panics after
    /// `timeout` with its last text (or "absent"), the URL and the browser console.
    pub fn wait_text(&self, css: &str, expected: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            // The element may be replaced between finding and reading it (a stale reference):
            // that counts as absent for this round.
            let text = self
                .find_all(css)
                .first()
                .and_then(|element| element.try_text().ok());
            if text.as_deref() == Some(expected) {
                return;
            }
            if start.elapsed() >= timeout {
                let text = text.map_or_else(|| "absent".to_owned(), |t| format!("{t:?}"));
                panic!(
                    "`{css}` never read {expected:?} in {timeout:?}: its text is {text}, on {}; \
                     browser console:\n{}",
                    self.current_url(),
                    self.console_log().join("\n")
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Runs `js` as a function body (`arguments[i]` are `args`; elements come back as W3C
    /// element references) and returns what it returns (a returned promise is awaited).
    pub fn execute(&self, js: &str, args: Vec<Value>) -> Value {
        self.call("POST", "/execute/sync", json!({"script": js, "args": args}))
    }

    /// Writes a PNG of the viewport to `path`.
    pub fn screenshot(&self, path: &Path) {
        let encoded = self.call("GET", "/screenshot", Value::Null);
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("screenshot is not base64: {e}"));
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// The browser console's entries since the session started ("LEVEL message"), when
    /// chromedriver gives them; else empty.
    pub fn console_log(&self) -> Vec<String> {
        let body = json!({"type": "browser"});
        let fresh = self
            .try_call("POST", "/se/log", body.clone())
            .or_else(|_| self.try_call("POST", "/log", body))
            .unwrap_or_default();
        let mut console = self.console.lock().unwrap();
        for entry in fresh.as_array().into_iter().flatten() {
            console.push(format!(
                "{} {}",
                entry["level"].as_str().unwrap_or("?"),
                entry["message"].as_str().unwrap_or_default()
            ));
        }
        console.clone()
    }
}

impl Drop for Browser {
    /// Ends the session (chromedriver closes Chromium); the driver then stops chromedriver and
    /// kills any Chromium process left.
    fn drop(&mut self) {
        let path = format!("/session/{}", self.session);
        let _ = http11(self.driver.port, "DELETE", &path, "");
    }
}

/// An element of the current page (a W3C element reference).
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl<'a> Element<'a> {
    fn new(browser: &'a Browser, reference: &Value) -> Element<'a> {
        let id = reference[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("not an element reference: {reference}"))
            .to_owned();
        Element { browser, id }
    }

    fn path(&self, what: &str) -> String {
        format!("/element/{}{what}", self.id)
    }

    fn try_text(&self) -> Result<String, Failure> {
        let text = self
            .browser
            .try_call("GET", &self.path("/text"), Value::Null)?;
        Ok(text.as_str().unwrap_or_default().to_owned())
    }

    /// The rendered text (SVG `<text>` elements included).
    pub fn text(&self) -> String {
        self.try_text()
            .unwrap_or_else(|e| panic!("text of element {}: {e}", self.id))
    }

    /// The attribute `name` as written in the DOM (not the property), `None` when absent.
    pub fn attr(&self, name: &str) -> Option<String> {
        let path = self.path(&format!("/attribute/{name}"));
        match self.browser.call("GET", &path, Value::Null) {
            Value::Null => None,
            Value::String(s) => Some(s),
            other => Some(other.to_string()),
        }
    }

    pub fn click(&self) {
        self.browser.call("POST", &self.path("/click"), json!({}));
    }

    pub fn clear(&self) {
        self.browser.call("POST", &self.path("/clear"), json!({}));
    }

    /// Types `keys` into the element (WebDriver key codes such as "\u{E007}" for Enter work).
    pub fn send_keys(&self, keys: &str) {
        self.browser
            .call("POST", &self.path("/value"), json!({ "text": keys }));
    }

    /// Every element under this one matching `css`, in document order.
    pub fn find_all(&self, css: &str) -> Vec<Element<'a>> {
        self.browser.elements(&self.path("/elements"), css)
    }
}
