//! An image origin for the lab: Python's HTTP server in a namespace of the test, serving a
//! folder's files with `Range`/`If-Range` (ETag and Last-Modified as validators), as an OS
//! vendor's mirror does, and able to cut a download half-way once (a file `.cut-<name>` in
//! the folder: the next full GET of `<name>` sends half its body and drops the connection).
//! Every request is logged (`<method> <path> <Range or ->`) for the test to read.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use crate::{wait_for, KillOnDrop, LabError, Netns};

const SERVER: &str = r#"
import http.server, os, socket, sys
root, host, port, log = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        name = self.path.split("?")[0].lstrip("/")
        with open(log, "a") as f:
            f.write("%s %s %s\n" % (self.command, self.path, self.headers.get("Range", "-")))
        path = os.path.join(root, name)
        if "/" in name or name.startswith(".") or not os.path.isfile(path):
            self.send_error(404)
            return
        with open(path, "rb") as f:
            data = f.read()
        st = os.stat(path)
        etag = '"%x-%x"' % (st.st_mtime_ns, st.st_size)
        modified = self.date_time_string(int(st.st_mtime))
        start, status = 0, 200
        want = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if want and want.startswith("bytes=") and want.endswith("-") and if_range in (None, etag, modified):
            start = int(want[6:-1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", "bytes */%d" % len(data))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", modified)
        if status == 206:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        cut = os.path.join(root, ".cut-" + name)
        if status == 200 and os.path.exists(cut):
            os.remove(cut)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer((host, port), Handler).serve_forever()
"#;

/// A running origin; killed by PID when dropped.
pub struct Origin {
    _process: KillOnDrop,
    /// The folder it serves.
    pub dir: PathBuf,
    log: PathBuf,
    /// `http://<addr>/`.
    pub base: String,
}

impl Origin {
    /// Serves `dir` on `addr` inside `ns`; returns once it accepts connections.
    pub fn start(ns: &Netns, addr: SocketAddr, dir: &Path) -> Result<Self, LabError> {
        let log = dir.with_extension("requests.log");
        let script = dir.with_extension("origin.py");
        std::fs::write(&script, SERVER).map_err(|e| format!("{}: {e}", script.display()))?;
        let child = ns
            .command("python3")
            .arg(&script)
            .arg(dir)
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("python3: {e}"))?;
        let process = KillOnDrop(child);
        wait_for(Duration::from_secs(20), || {
            ns.run(move || std::net::TcpStream::connect(addr).is_ok())
                .ok()
                .filter(|ok| *ok)
        })
        .ok_or_else(|| format!("the origin on {addr} did not come up"))?;
        Ok(Self {
            _process: process,
            dir: dir.to_owned(),
            log,
            base: format!("http://{addr}/"),
        })
    }

    /// The requests so far, one line each: `GET /<name> <Range or ->`.
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Cuts the next full download of `name` half-way.
    pub fn cut_once(&self, name: &str) -> Result<(), LabError> {
        let p = self.dir.join(format!(".cut-{name}"));
        std::fs::write(&p, b"").map_err(|e| format!("{}: {e}", p.display()))
    }
}
