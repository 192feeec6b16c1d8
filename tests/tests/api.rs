//! `/api/v1` driven as a controller would: from another namespace, with the admin token.
//! Hosts and profiles are created, changed and deleted; every error is an RFC 9457 problem
//! naming the field; concurrent writers are kept apart by ETag / If-Match; the changes
//! survive a restart and a SIGHUP without the operator's inventory file being written; and
//! the OpenAPI document validates and describes what every route really answers.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::Command,
    time::Duration,
};

use bootfabric_lab::freeze::FreezableFs;
use bootfabric_lab::{
    bootfabric_bin, have_program, require, require_root, run, Daemon, Netns, PairLab, TempDir,
};
use serde_json::{json, Value};

/// One answer: status, headers (lower-case names), body.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{e}: not JSON ({}): {}", self.status, self.body))
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }

    fn media(&self) -> &str {
        self.header("content-type")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
    }

    /// The problem's `errors[].field`s, after checking it is a problem of `status`.
    fn problem(&self, status: u16) -> Vec<String> {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.media(), "application/problem+json", "{}", self.body);
        let p = self.json();
        assert_eq!(p["status"], status, "{}", self.body);
        assert!(
            p["title"].is_string() && p["type"].is_string(),
            "{}",
            self.body
        );
        p["errors"]
            .as_array()
            .map(|e| {
                e.iter()
                    .map(|f| f["field"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `method path` to `addr` from inside `ns`, with `headers` and `body`.
fn call(
    ns: &Netns,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        request.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or(""));
    let raw = ns
        .run(move || -> Result<Vec<u8>, String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                .map_err(|e| format!("connect {addr}: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))
                .map_err(|e| e.to_string())?;
            s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
            // An event stream does not end: its head and first frame are the answer.
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = s.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    return Ok(raw);
                }
                raw.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    if head.contains("content-type: text/event-stream") && body.contains("\n\n") {
                        return Ok(raw);
                    }
                }
            }
        })
        .expect("in namespace")
        .expect("request");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// A controller: the client namespace, the daemon's admin address and the token.
struct Controller<'a> {
    ns: &'a Netns,
    addr: SocketAddr,
    token: String,
}

impl Controller<'_> {
    /// A read with the token (hosts, profiles and events need it).
    fn get(&self, path: &str) -> Reply {
        self.read("GET", path)
    }

    fn read(&self, method: &str, path: &str) -> Reply {
        let auth = format!("Bearer {}", self.token);
        call(
            self.ns,
            self.addr,
            method,
            path,
            &[("Authorization", auth.as_str())],
            None,
        )
    }

    /// A write with the token: `if_match` when given, JSON (or `media`) body.
    fn write(
        &self,
        method: &str,
        path: &str,
        if_match: Option<&str>,
        media: &str,
        body: Option<&Value>,
    ) -> Reply {
        let auth = format!("Bearer {}", self.token);
        let mut headers = vec![("Authorization", auth.as_str())];
        if let Some(tag) = if_match {
            headers.push(("If-Match", tag));
        }
        let text = body.map(Value::to_string);
        if text.is_some() {
            headers.push(("Content-Type", media));
        }
        call(self.ns, self.addr, method, path, &headers, text.as_deref())
    }

    fn post(&self, path: &str, body: &Value) -> Reply {
        self.write("POST", path, None, "application/json", Some(body))
    }
}

fn create_token(dir: &TempDir) -> (String, String) {
    let file = dir.path.join("admin.token");
    let out = run(Command::new(bootfabric_bin())
        .args(["admin", "token", "create", "--print", "--file"])
        .arg(&file))
    .expect("token create");
    (
        out.trim().to_owned(),
        format!("token_file = \"{}\"", file.display()),
    )
}

const INVENTORY: &str = r#"# The operator's own file: comments and all, never written by the daemon.
[profiles.linux]
kernel = "linux/vmlinuz"

[[hosts]]
name = "node01"
mac = "52:54:00:b0:0f:01"
ip = "10.77.0.11"
profile = "linux"
"#;

fn daemon(lab: &PairLab, token_key: &str, inventory: &str) -> Daemon {
    let config = format!(
        r#"[daemon]
state_dir = "state"
inventory = "hosts.toml"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "10.77.0.1:0"
allow = ["10.77.0.0/24"]
{token_key}
[xdp]
mode = "off"
"#
    );
    Daemon::start(&lab.server, &config, &[("hosts.toml", inventory)]).expect("daemon")
}

fn lab(test: &str) -> Option<PairLab> {
    if !require_root(test) {
        return None;
    }
    Some(PairLab::new().expect("lab"))
}

#[test]
fn a_controller_manages_hosts_and_the_changes_outlive_restarts_and_reloads() {
    let Some(lab) = lab("a_controller_manages_hosts_and_the_changes_outlive_restarts_and_reloads")
    else {
        return;
    };
    let secret = TempDir::new().expect("tempdir");
    let (token, key) = create_token(&secret);
    let mut d = daemon(&lab, &key, INVENTORY);
    let toml_path = d.config_path().with_file_name("hosts.toml");
    let c = Controller {
        ns: &lab.client,
        addr: d.admin,
        token,
    };
    let node02 = json!({"name": "node02", "mac": "52:54:00:b0:0f:02", "ip": "10.77.0.12",
        "profile": "linux", "rack": "r1", "netboot": "once", "meta": {"role": "worker"}});

    // Without the token: refused, as a problem, before anything else is looked at.
    let anon = call(
        c.ns,
        c.addr,
        "POST",
        "/api/v1/hosts",
        &[("Content-Type", "application/json")],
        Some(&node02.to_string()),
    );
    anon.problem(401);
    assert_eq!(anon.header("www-authenticate"), "Bearer");
    let wrong = call(
        c.ns,
        c.addr,
        "DELETE",
        "/api/v1/hosts/node01",
        &[("Authorization", "Bearer nope"), ("If-Match", "*")],
        None,
    );
    wrong.problem(401);
    c.write("POST", "/api/v1/hosts", None, "text/plain", Some(&node02))
        .problem(415);
    // Hosts (meta, BMC references), profiles and the event stream are read with the token
    // too; status and the OpenAPI document stay open to admin.allow. Every /api/v1 answer,
    // a problem or the stream's head too, carries the generation.
    for path in [
        "/api/v1/hosts",
        "/api/v1/hosts/node01",
        "/api/v1/profiles",
        "/api/v1/profiles/linux",
        "/api/v1/events",
    ] {
        for method in ["GET", "HEAD"] {
            let r = call(c.ns, c.addr, method, path, &[], None);
            assert_eq!(r.status, 401, "{method} {path} without the token");
            assert_eq!(r.header("www-authenticate"), "Bearer");
            assert!(
                r.header("bootfabric-generation").parse::<u64>().is_ok(),
                "{method} {path}: {:?}",
                r.headers
            );
            if method == "GET" {
                r.problem(401);
            }
        }
    }
    for path in ["/api/v1/status", "/api/v1/openapi.json"] {
        let r = call(c.ns, c.addr, "GET", path, &[], None);
        assert_eq!(r.status, 200, "{path} without the token: {}", r.body);
    }
    let head = c.read("HEAD", "/api/v1/events");
    assert_eq!((head.status, head.media()), (200, "text/event-stream"));
    assert!(head.body.is_empty(), "{}", head.body);
    assert!(head.header("bootfabric-generation").parse::<u64>().is_ok());
    let bad = c.get("/api/v1/events?types=host.exploded");
    bad.problem(400);
    assert!(bad.header("bootfabric-generation").parse::<u64>().is_ok());
    let missing = c.get("/api/v1/hosts/node09");
    missing.problem(404);
    assert!(missing
        .header("bootfabric-generation")
        .parse::<u64>()
        .is_ok());

    // Create.
    let created = c.post("/api/v1/hosts", &node02);
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.header("location"), "/api/v1/hosts/node02");
    let tag = created.header("etag").to_owned();
    assert!(
        tag.starts_with('"') && !tag.starts_with("W/"),
        "a strong ETag: {tag}"
    );
    let generation: u64 = created
        .header("bootfabric-generation")
        .parse()
        .expect("generation");
    assert!(generation >= 2, "{generation}");
    let h = created.json();
    assert_eq!(h["source"], "api");
    assert_eq!(h["netboot"], "once");
    assert_eq!(h["netboot_state"], Value::Null);
    assert_eq!(h["meta"], json!({"role": "worker"}));
    let got = c.get("/api/v1/hosts/node02");
    assert_eq!((got.status, got.header("etag")), (200, tag.as_str()));
    assert_eq!(c.get("/api/v1/hosts/node01").json()["source"], "file");
    c.get("/api/v1/hosts/node09").problem(404);

    // Validation: the field is named inside the resource.
    for (body, status, field) in [
        (
            json!({"name": "node03", "mac": "52:54:00", "profile": "linux"}),
            422,
            "mac",
        ),
        (
            json!({"name": "node03", "mac": "52:54:00:b0:0f:03", "profile": "linux",
            "bmc": {"url": "ftp://10.0.9.1", "username": "u", "password_env": "BOOTFABRIC_BMC_NODE03_PASSWORD"}}),
            422,
            "bmc.url",
        ),
        (
            json!({"name": "node03", "mac": "52:54:00:b0:0f:03", "profile": "linux",
            "bmc": {"url": "https://10.0.9.1", "username": "u", "password_file": "/etc/shadow", "insecure": true}}),
            422,
            "bmc.password_file",
        ),
        (
            json!({"name": "node03", "mac": "52:54:00:b0:0f:03", "profile": "linux", "meta": {"role": "a\nb"}}),
            422,
            "meta.role",
        ),
        (
            json!({"name": "node03", "mac": "52:54:00:b0:0f:03", "profile": "nope"}),
            422,
            "profile",
        ),
        (
            json!({"name": "node03", "mac": "52:54:00:b0:0f:03", "profile": "linux", "macc": 1}),
            422,
            "macc",
        ),
        (
            json!({"name": "node03", "mac": "52:54:00:b0:0f:03", "ip": "10.77.0.11", "profile": "linux"}),
            409,
            "ip",
        ),
        (
            json!({"name": "node03", "mac": "52:54:00:B0:0F:01", "profile": "linux"}),
            409,
            "mac",
        ),
        (node02.clone(), 409, "name"),
    ] {
        let r = c.post("/api/v1/hosts", &body);
        assert_eq!(r.problem(status), [field], "{body}: {}", r.body);
    }
    let dup = c.post("/api/v1/hosts", &json!({"name": "node03", "mac": "52:54:00:b0:0f:03", "ip": "10.77.0.11", "profile": "linux"}));
    assert!(
        dup.json()["errors"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("node01"),
        "{}",
        dup.body
    );

    // Concurrency: no If-Match, 428; a stale one, 412; the current one passes.
    let patch = json!({"meta": {"role": "storage", "disks": ["sda"]}, "rack": null});
    c.write(
        "PATCH",
        "/api/v1/hosts/node02",
        None,
        "application/merge-patch+json",
        Some(&patch),
    )
    .problem(428);
    c.write(
        "PUT",
        "/api/v1/hosts/node02",
        None,
        "application/json",
        Some(&node02),
    )
    .problem(428);
    c.write(
        "DELETE",
        "/api/v1/hosts/node02",
        None,
        "application/json",
        None,
    )
    .problem(428);
    let patched = c.write(
        "PATCH",
        "/api/v1/hosts/node02",
        Some(&tag),
        "application/merge-patch+json",
        Some(&patch),
    );
    assert_eq!(patched.status, 200, "{}", patched.body);
    let h = patched.json();
    assert_eq!(h["meta"], json!({"role": "storage", "disks": ["sda"]}));
    assert_eq!(h["rack"], Value::Null, "null removes");
    assert_ne!(patched.header("etag"), tag);
    let stale = c.write(
        "PATCH",
        "/api/v1/hosts/node02",
        Some(&tag),
        "application/merge-patch+json",
        Some(&json!({"rack": "r2"})),
    );
    stale.problem(412);
    // A file host can be changed too: it then comes from the API.
    let n1 = c.get("/api/v1/hosts/node01");
    let r = c.write(
        "PATCH",
        "/api/v1/hosts/node01",
        Some(n1.header("etag")),
        "application/merge-patch+json",
        Some(&json!({"meta": {"role": "worker"}, "netboot": "deny"})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["source"], "api");

    // Lists filter.
    let names = |r: Reply| -> Vec<String> {
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|h| h["name"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert_eq!(names(c.get("/api/v1/hosts")), ["node01", "node02"]);
    assert_eq!(names(c.get("/api/v1/hosts?meta.role=storage")), ["node02"]);
    assert_eq!(
        names(c.get("/api/v1/hosts?netboot=deny&meta.role=worker")),
        ["node01"]
    );
    c.get("/api/v1/hosts?colour=red").problem(400);

    // Profiles: create, and a profile in use cannot go.
    let p = c.post(
        "/api/v1/profiles",
        &json!({"name": "rescue", "kernel": "rescue/vmlinuz", "cmdline": "console=ttyS0"}),
    );
    assert_eq!(p.status, 201, "{}", p.body);
    assert_eq!(
        c.post(
            "/api/v1/profiles",
            &json!({"name": "bad", "kernel": "../../etc/shadow"})
        )
        .problem(422),
        ["kernel"]
    );
    let linux = c.get("/api/v1/profiles/linux");
    let r = c.write(
        "DELETE",
        "/api/v1/profiles/linux",
        Some(linux.header("etag")),
        "application/json",
        None,
    );
    assert_eq!(r.problem(409).len(), 2, "both hosts are named: {}", r.body);

    // Restart: the API's hosts are back; the operator's file is byte for byte what it was.
    d.restart().expect("restart");
    let c = Controller { addr: d.admin, ..c };
    let h = c.get("/api/v1/hosts/node02").json();
    assert_eq!(h["meta"]["role"], "storage");
    assert_eq!(c.get("/api/v1/hosts/node01").json()["netboot"], "deny");
    assert_eq!(c.get("/api/v1/profiles/rescue").status, 200);
    assert_eq!(
        std::fs::read_to_string(&toml_path).expect("toml"),
        INVENTORY
    );

    // SIGHUP with a new file host: the API's hosts stay.
    let grown = format!("{INVENTORY}\n[[hosts]]\nname = \"node05\"\nmac = \"52:54:00:b0:0f:05\"\nprofile = \"linux\"\n");
    std::fs::write(&toml_path, &grown).expect("write toml");
    d.reload("SIGHUP: config reloaded").expect("reload");
    assert_eq!(
        names(c.get("/api/v1/hosts")),
        ["node01", "node02", "node05"]
    );
    assert_eq!(
        c.get("/api/v1/hosts/node02").json()["meta"]["role"],
        "storage"
    );
    // A file host that collides with an API host: refused, both named, nothing changes.
    let clash = format!(
        "{grown}\n[[hosts]]\nname = \"node06\"\nmac = \"52:54:00:b0:0f:02\"\nprofile = \"linux\"\n"
    );
    std::fs::write(&toml_path, &clash).expect("write toml");
    d.reload("SIGHUP: config not reloaded")
        .expect("refused reload");
    let log = d.log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("config not reloaded"))
        .unwrap_or("");
    assert!(
        line.contains("API host node02") && line.contains("hosts[2]"),
        "{line}"
    );
    assert_eq!(
        names(c.get("/api/v1/hosts")),
        ["node01", "node02", "node05"]
    );
    std::fs::write(&toml_path, &grown).expect("write toml");

    // Delete a file host: a tombstone, which a restart keeps; the file is untouched.
    let n1 = c.get("/api/v1/hosts/node01");
    let r = c.write(
        "DELETE",
        "/api/v1/hosts/node01",
        Some(n1.header("etag")),
        "application/json",
        None,
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert!(
        r.header("bootfabric-generation").parse::<u64>().is_ok(),
        "{:?}",
        r.headers
    );
    c.get("/api/v1/hosts/node01").problem(404);
    d.restart().expect("restart");
    let c = Controller { addr: d.admin, ..c };
    c.get("/api/v1/hosts/node01").problem(404);
    assert_eq!(names(c.get("/api/v1/hosts")), ["node02", "node05"]);
    assert_eq!(std::fs::read_to_string(&toml_path).expect("toml"), grown);
    let status = c.get("/api/v1/status").json();
    assert_eq!(status["hosts"]["api"], 1, "{status}");
    assert_eq!(status["hosts"]["file"], 1, "{status}");
}

#[test]
fn the_openapi_document_validates_and_every_route_answers_as_it_says() {
    let t = "the_openapi_document_validates_and_every_route_answers_as_it_says";
    let Some(lab) = lab(t) else { return };
    let validator = Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .status()
        .is_ok_and(|s| s.success());
    if !require(
        have_program("python3") && validator,
        t,
        "openapi-spec-validator is missing (cargo xtask setup)",
    ) {
        return;
    }
    let secret = TempDir::new().expect("tempdir");
    let (token, key) = create_token(&secret);
    let d = daemon(&lab, &key, INVENTORY);
    let c = Controller {
        ns: &lab.client,
        addr: d.admin,
        token,
    };

    let r = c.get("/api/v1/openapi.json");
    assert_eq!(
        (r.status, r.media()),
        (200, "application/json"),
        "{}",
        r.body
    );
    let doc = r.json();
    let dir = TempDir::new().expect("tempdir");
    let file = dir.path.join("openapi.json");
    std::fs::write(&file, &r.body).expect("write");
    let out = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("run the validator");
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every operation, in an order that creates before it reads and deletes last.
    let mut ops: Vec<(u8, String, String, Value)> = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("item") {
            let rank = match (method.as_str(), path.as_str()) {
                ("post", "/api/v1/profiles") => 0,
                ("post", "/api/v1/hosts") => 1,
                ("get", _) => 2,
                ("delete", "/api/v1/hosts/{name}") => 4,
                ("delete", "/api/v1/profiles/{name}") => 5,
                _ => 3,
            };
            ops.push((rank, method.clone(), path.clone(), op.clone()));
        }
    }
    ops.sort_by(|a, b| (a.0, &a.2, &a.1).cmp(&(b.0, &b.2, &b.1)));
    assert!(ops.len() >= 20, "{} operations", ops.len());
    for (_, method, path, op) in ops {
        let concrete = if path.starts_with("/api/v1/hosts/") {
            path.replace("{name}", "walk01")
        } else {
            path.replace("{name}", "walk")
        };
        let body = op["requestBody"]["content"]
            .as_object()
            .and_then(|c| c.iter().next());
        let (media, example) = match body {
            Some((m, content)) => (m.as_str(), Some(content["example"].clone())),
            None => ("application/json", None),
        };
        let r = c.write(
            &method.to_ascii_uppercase(),
            &concrete,
            Some("*"),
            media,
            example.as_ref(),
        );
        let listed = &op["responses"][r.status.to_string()];
        assert!(
            listed.is_object(),
            "{method} {concrete}: {} is not a documented status: {}",
            r.status,
            r.body
        );
        match listed["content"].as_object().and_then(|c| c.keys().next()) {
            Some(ct) => assert_eq!(r.media(), ct, "{method} {concrete} {}", r.status),
            None => assert!(r.body.is_empty(), "{method} {concrete}: {}", r.body),
        }
        // The resources the walk made really exist for the operations that follow.
        if method == "post" && (path == "/api/v1/hosts" || path == "/api/v1/profiles") {
            assert_eq!(r.status, 201, "{method} {path}: {}", r.body);
        }
        if method == "delete" && path.starts_with("/api/v1/") {
            assert_eq!(r.status, 204, "{method} {concrete}: {}", r.body);
        }
    }
}

/// The client machine, a `netboot = "once"` host, posts `booted` first without having
/// fetched its kernel (as a machine that did not netboot would): that is logged and spends
/// nothing. Then it fetches its kernel and posts `booted` again, which spends it.
fn booted_after_its_kernel(c: &Controller<'_>, d: &Daemon, http: SocketAddr, name: &str) {
    let booted = call(c.ns, http, "POST", "/booted", &[], Some(""));
    assert_eq!(booted.status, 204, "{}", booted.body);
    let refused = bootfabric_lab::wait_for(Duration::from_secs(30), || {
        d.log()
            .contains("fetched none of the host's kernels")
            .then_some(())
    });
    assert!(refused.is_some(), "no refusal logged:\n{}", d.log());
    assert_eq!(
        c.get(&format!("/api/v1/hosts/{name}")).json()["netboot_state"],
        Value::Null,
        "a booted without a kernel fetch spent the host"
    );
    let kernel = call(c.ns, http, "GET", "/linux/vmlinuz", &[], None);
    assert_eq!(kernel.status, 200, "{}", kernel.body);
    let booted = call(c.ns, http, "POST", "/booted", &[], Some(""));
    assert_eq!(booted.status, 204, "{}", booted.body);
}

#[test]
fn a_once_host_created_by_the_api_boots_once_then_from_disk_until_reset() {
    let Some(lab) = lab("a_once_host_created_by_the_api_boots_once_then_from_disk_until_reset")
    else {
        return;
    };
    let secret = TempDir::new().expect("tempdir");
    let (token, key) = create_token(&secret);
    let images = TempDir::new().expect("tempdir");
    std::fs::create_dir_all(images.path.join("linux")).expect("images");
    std::fs::write(images.path.join("linux/vmlinuz"), b"kernel").expect("kernel");
    let config = format!(
        r#"[daemon]
state_dir = "state"
inventory = "hosts.toml"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "10.77.0.1:0"
allow = ["10.77.0.0/24"]
{key}
[xdp]
mode = "off"
[http]
root = "{}"
backend = "epoll"
"#,
        images.path.display()
    );
    let mut d = Daemon::start(&lab.server, &config, &[("hosts.toml", INVENTORY)]).expect("daemon");
    let c = Controller {
        ns: &lab.client,
        addr: d.admin,
        token,
    };
    // The client machine (10.77.0.2) is added by the API, without a restart, to boot from
    // the network once.
    let r = c.post(
        "/api/v1/hosts",
        &json!({"name": "node02", "mac": "52:54:00:b0:0f:02",
        "ip": "10.77.0.2", "profile": "linux", "netboot": "once"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let state = |c: &Controller<'_>| c.get("/api/v1/hosts/node02").json()["netboot_state"].clone();
    let http: SocketAddr = "10.77.0.1:80".parse().expect("addr");
    let script = |c: &Controller<'_>| call(c.ns, http, "GET", "/boot.ipxe", &[], None);
    let first = script(&c);
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(
        first.body.contains("linux/vmlinuz"),
        "its first boot is a network boot: {}",
        first.body
    );

    booted_after_its_kernel(&c, &d, http, "node02");
    let consumed = bootfabric_lab::wait_for(Duration::from_secs(30), || {
        (state(&c) == "consumed").then_some(())
    });
    assert!(
        consumed.is_some(),
        "node02 booted but stays {}:\n{}",
        state(&c),
        d.log()
    );
    let second = script(&c);
    assert_eq!(second.status, 200, "{}", second.body);
    assert!(
        second.body.contains("exit") && !second.body.contains("vmlinuz"),
        "after its booted, the disk: {}",
        second.body
    );

    d.restart().expect("restart");
    let c = Controller { addr: d.admin, ..c };
    assert_eq!(
        state(&c),
        "consumed",
        "a restart keeps the used network boot"
    );
    assert!(script(&c).body.contains("exit"));
    let r = c.write(
        "POST",
        "/api/v1/hosts/node02/netboot-reset",
        None,
        "application/json",
        Some(&json!({})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["netboot_state"], Value::Null);
    assert!(
        script(&c).body.contains("linux/vmlinuz"),
        "reset: a network boot again"
    );
    d.restart().expect("restart");
    let c = Controller { addr: d.admin, ..c };
    assert_eq!(state(&c), Value::Null, "the reset is kept too");
}

#[test]
fn a_once_host_that_booted_is_consumed_until_reset_across_restarts() {
    let Some(lab) = lab("a_once_host_that_booted_is_consumed_until_reset_across_restarts") else {
        return;
    };
    let secret = TempDir::new().expect("tempdir");
    let (token, key) = create_token(&secret);
    let images = TempDir::new().expect("tempdir");
    std::fs::create_dir_all(images.path.join("linux")).expect("images");
    std::fs::write(images.path.join("linux/vmlinuz"), b"kernel").expect("kernel");
    // node01 is the client machine (10.77.0.2), and boots from the network once.
    let inventory = INVENTORY.replace("10.77.0.11", "10.77.0.2").replace(
        "profile = \"linux\"\n",
        "profile = \"linux\"\nnetboot = \"once\"\n",
    );
    let config = format!(
        r#"[daemon]
state_dir = "state"
inventory = "hosts.toml"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "10.77.0.1:0"
allow = ["10.77.0.0/24"]
{key}
[xdp]
mode = "off"
[http]
root = "{}"
backend = "epoll"
"#,
        images.path.display()
    );
    let mut d = Daemon::start(&lab.server, &config, &[("hosts.toml", &inventory)]).expect("daemon");
    let c = Controller {
        ns: &lab.client,
        addr: d.admin,
        token,
    };
    let state = |c: &Controller<'_>| c.get("/api/v1/hosts/node01").json()["netboot_state"].clone();
    assert_eq!(state(&c), Value::Null);

    let http: SocketAddr = "10.77.0.1:80".parse().expect("addr");
    booted_after_its_kernel(&c, &d, http, "node01");
    let consumed = bootfabric_lab::wait_for(Duration::from_secs(30), || {
        (state(&c) == "consumed").then_some(())
    });
    assert!(
        consumed.is_some(),
        "node01 booted but stays {}:\n{}",
        state(&c),
        d.log()
    );
    let status = c.get("/api/v1/status").json();
    assert_eq!(status["hosts"]["consumed"], 1, "{status}");
    // A controller's read-modify-write (the GET's body, `netboot` included, as a PUT) changes
    // meta and keeps the used network boot used.
    let got = c.get("/api/v1/hosts/node01");
    let mut body = got.json();
    body["meta"] = json!({"role": "installed"});
    let put = c.write(
        "PUT",
        "/api/v1/hosts/node01",
        Some(got.header("etag")),
        "application/json",
        Some(&body),
    );
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(put.json()["netboot_state"], "consumed", "{}", put.body);
    assert_eq!(state(&c), "consumed");

    d.restart().expect("restart");
    let c = Controller { addr: d.admin, ..c };
    assert_eq!(
        state(&c),
        "consumed",
        "a restart keeps the used network boot"
    );
    let r = c.write(
        "POST",
        "/api/v1/hosts/node01/netboot-reset",
        None,
        "application/json",
        Some(&json!({})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["netboot_state"], Value::Null);
    d.restart().expect("restart");
    let c = Controller { addr: d.admin, ..c };
    assert_eq!(state(&c), Value::Null, "the reset is kept too");
}

/// A write hangs on the state disk (its fsync, holding the API's writer lock): reads of
/// hosts, profiles and status are answered all the same, several at once (more than the
/// network runtime's workers), and DHCP keeps answering; the write completes once the disk
/// is back.
#[test]
fn reads_and_dhcp_answer_while_an_api_write_hangs_on_the_state_disk() {
    let t = "reads_and_dhcp_answer_while_an_api_write_hangs_on_the_state_disk";
    if !require_root(t)
        || !bootfabric_lab::require_programs(t, &["mkfs.ext4", "mount", "umount", "fsfreeze"])
    {
        return;
    }
    let fs = FreezableFs::new().expect("loop file system");
    let lab = PairLab::new().expect("lab");
    let secret = TempDir::new().expect("tempdir");
    let (token, key) = create_token(&secret);
    let config = format!(
        r#"[daemon]
state_dir = "{}"
inventory = "hosts.toml"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "10.77.0.1:0"
allow = ["10.77.0.0/24"]
{key}
[xdp]
mode = "off"
[dhcp]
[[dhcp.subnets]]
cidr = "10.77.0.0/24"
interface = "fabric0"
pools = ["10.77.0.100-10.77.0.199"]
"#,
        fs.mnt.display()
    );
    let d = Daemon::start(&lab.server, &config, &[("hosts.toml", INVENTORY)]).expect("daemon");
    let c = Controller {
        ns: &lab.client,
        addr: d.admin,
        token,
    };
    assert_eq!(c.get("/api/v1/hosts").status, 200);

    let frozen = fs.freeze().expect("fsfreeze");
    std::thread::scope(|scope| {
        let write = scope.spawn(|| {
            c.post(
                "/api/v1/hosts",
                &json!({"name": "node02", "mac": "52:54:00:b0:0f:02", "profile": "linux"}),
            )
        });
        // Let the write reach its fsync (it holds the writer lock from then on).
        std::thread::sleep(Duration::from_millis(500));
        let readers: Vec<_> = (0..6)
            .map(|i| {
                let c = &c;
                scope.spawn(move || {
                    let path = ["/api/v1/hosts", "/api/v1/hosts/node01", "/api/v1/profiles"][i % 3];
                    (path, c.get(path).status, c.get("/api/v1/status").status)
                })
            })
            .collect();
        for r in readers {
            let (path, status, of_status) = r.join().expect("reader");
            assert_eq!(
                (status, of_status),
                (200, 200),
                "{path} while a write hangs"
            );
        }
        assert!(
            !write.is_finished(),
            "the write did not hang on the frozen disk: the test proves nothing"
        );
        let offered = lab
            .client
            .run(|| {
                bootfabric_lab::dhcp_client::Client::bind()
                    .expect("bind 68")
                    .offer([0x52, 0x54, 0, 0x69, 0, 1], 0x5701, Duration::from_secs(5))
                    .expect("socket")
                    .map(|m| m.yiaddr())
            })
            .expect("client namespace");
        assert!(offered.is_some(), "DISCOVER unanswered while a write hangs");
        drop(frozen);
        let written = write.join().expect("writer");
        assert_eq!(written.status, 201, "{}", written.body);
    });
    assert_eq!(c.get("/api/v1/hosts/node02").status, 200);
}
