//! Headless Chromium (Debian's `chromium`) inside a lab namespace, driven over the DevTools
//! protocol: one page stays open while the test makes things happen on the fabric, and
//! the test reads that same page's DOM (`Runtime.evaluate`) and screenshots it
//! (`Page.captureScreenshot`). The DevTools port listens on the namespace's own loopback;
//! the websocket to it is a socket made inside the namespace ([`Netns::run`]).

use std::{
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    process::Stdio,
    time::Duration,
};

use serde_json::{json, Value};
use tungstenite::{protocol::WebSocket, Message};

use crate::{wait_for, KillOnDrop, LabError, Netns, TempDir};

/// Where DevTools listens, on the loopback of the browser's namespace (its own).
const DEVTOOLS: &str = "127.0.0.1:9222";
/// Bounds the browser's start and each DevTools answer (a bound, not a timing check).
const BOUND: Duration = Duration::from_secs(60);

/// A headless Chromium showing one page, in a process group of its own: on drop the group
/// (the browser and its helpers) is killed by its id and waited for, then the folder goes.
pub struct Browser {
    ws: WebSocket<TcpStream>,
    next_id: u64,
    /// The browser's profile and log folder.
    pub dir: TempDir,
    child: KillOnDrop,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium's helpers (zygote, renderer, network service) outlive the browser for a
        // moment and write into the profile meanwhile: removed before they went, the folder
        // came back with their cache in it. So the group goes first, and the folder (a field,
        // dropped after this) only once none of the group runs.
        let Ok(pid) = i32::try_from(self.child.0.id()) else {
            return;
        };
        let group = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.0.wait();
        let _ = wait_for(BOUND, || (!group_runs(pid)).then_some(()));
    }
}

/// Whether a process of group `pgid` runs (zombies left to be reaped do not count).
fn group_runs(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        // After the command's closing parenthesis: state, ppid, pgrp.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            return false;
        };
        let mut f = rest.split_whitespace();
        let state = f.next();
        let pgrp = f.nth(1).and_then(|g| g.parse::<i32>().ok());
        pgrp == Some(pgid) && state != Some("Z")
    })
}

impl Browser {
    /// Starts Chromium in `ns` on `url`, `width`×`height`, and attaches to its page.
    pub fn open(ns: &Netns, url: &str, width: u32, height: u32) -> Result<Browser, LabError> {
        let dir = TempDir::new()?;
        let log = std::fs::File::create(dir.path.join("chromium.log"))
            .map_err(|e| format!("chromium.log: {e}"))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let port = DEVTOOLS.rsplit(':').next().unwrap_or("9222");
        let child = ns
            .command("chromium")
            .args([
                "--headless=new",
                // Root in a lab: Chromium's sandbox needs an unprivileged user.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-address=127.0.0.1",
                &format!("--remote-debugging-port={port}"),
                &format!("--window-size={width},{height}"),
            ])
            .arg(format!(
                "--user-data-dir={}",
                dir.path.join("profile").display()
            ))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("chromium: {e}"))?;
        let child = KillOnDrop(child);
        let devtools: SocketAddr = DEVTOOLS.parse().map_err(|e| format!("{e}"))?;
        let log_text =
            || std::fs::read_to_string(dir.path.join("chromium.log")).unwrap_or_default();
        // The page target, once DevTools answers and the page is listed.
        let target = wait_for(BOUND, || {
            // DevTools keeps the connection open after its answer: the body is read by its
            // length, not to the connection's end.
            let r = crate::api::Api::new(ns, devtools, None)
                .get("/json/list")
                .ok()?;
            if r.status != 200 {
                return None;
            }
            let list: Value = r.json().ok()?;
            list.as_array()?
                .iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
        })
        .ok_or_else(|| format!("no DevTools page target in {DEVTOOLS}:\n{}", log_text()))?;
        let stream = ns
            .run(move || TcpStream::connect_timeout(&devtools, BOUND))?
            .map_err(|e| format!("connect {DEVTOOLS}: {e}"))?;
        stream
            .set_read_timeout(Some(BOUND))
            .map_err(|e| e.to_string())?;
        let (ws, _) = tungstenite::client::client(target.as_str(), stream)
            .map_err(|e| format!("DevTools websocket {target}: {e}"))?;
        Ok(Browser {
            ws,
            next_id: 1,
            dir,
            child,
        })
    }

    /// Sends one DevTools command and returns its `result` (events before it are skipped).
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, LabError> {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws
            .send(Message::text(msg))
            .map_err(|e| format!("{method}: {e}"))?;
        loop {
            let m = self.ws.read().map_err(|e| format!("{method}: {e}"))?;
            let Message::Text(text) = m else { continue };
            let v: Value = serde_json::from_str(text.as_str()).map_err(|e| e.to_string())?;
            if v["id"] != id {
                continue;
            }
            if v.get("error").is_some() {
                return Err(format!("{method}: {}", v["error"]));
            }
            return Ok(v["result"].clone());
        }
    }

    /// The value of `expression` in the page (JSON-able values only).
    pub fn eval(&mut self, expression: &str) -> Result<Value, LabError> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        )?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(format!("{expression}: {ex}"));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `expression` until it is truthy (JSON `true`, a non-empty string, a non-zero
    /// number), at most `bound`; the last value either way.
    pub fn wait_until(&mut self, expression: &str, bound: Duration) -> (bool, Value) {
        let deadline = std::time::Instant::now() + bound;
        loop {
            let v = self.eval(expression).unwrap_or(Value::Null);
            let truthy = match &v {
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
                _ => false,
            };
            if truthy || std::time::Instant::now() > deadline {
                return (truthy, v);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A PNG of the page as it is now.
    pub fn screenshot(&mut self) -> Result<Vec<u8>, LabError> {
        let r = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        )?;
        let data = r["data"].as_str().ok_or("no screenshot data")?;
        base64_decode(data).ok_or_else(|| "screenshot: bad base64".to_owned())
    }

    /// Chromium's own log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path.join("chromium.log")).unwrap_or_default()
    }
}

/// Standard base64 (with padding) to bytes; `None` on anything else.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        Some(u32::from(v))
    };
    let bytes: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for quad in bytes.chunks(4) {
        let pad = quad.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for c in &quad[..4 - pad] {
            n = (n << 6) | value(*c)?;
        }
        n <<= 6 * pad as u32;
        let three = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&three[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_base64() {
        assert_eq!(base64_decode("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64_decode("aGk=").as_deref(), Some(&b"hi"[..]));
        assert_eq!(base64_decode("YWJj").as_deref(), Some(&b"abc"[..]));
        assert_eq!(base64_decode("YWJ"), None);
        assert_eq!(base64_decode("Y$Jj"), None);
    }
}
