//! What each request gets: iPXE scripts rendered per host, provisioning configs templated
//! for (and only for) their host, the `/booted` callback, and files from the image root with
//! ranges and conditional requests. No sockets here: the transports call [`route`] and move
//! the bytes it names.

use std::{net::IpAddr, ops::Deref, os::unix::fs::MetadataExt as _, path::PathBuf, sync::Arc};

use tracing::{error, warn};

use super::{
    conditional::{self, Validators},
    configs::{self, Ask, Boots, Delivery},
    origin::{self, Origin, Waiter},
    range::{self, Plan},
    request::{Method, Request},
    response::{content_type, Body, Response},
    scripts::{self, Rendered},
};
use crate::{
    model::boot::BootSettings,
    model::files::{self, FileError},
    model::gate::{self, Gate},
    model::inventory::{BootAnswer, Host, Inventory, Mac},
    model::ledger::{unix_ms, ConfigRefusal, EventKind, Ledger},
    model::render::{self, Lookup, Templates},
    model::snapshot::{Live, Snapshot},
};

/// What the routes serve from.
pub struct Site {
    /// Image root (canonical), if any.
    pub root: Option<PathBuf>,
    /// Config templates (canonical), if any.
    pub configs: Option<PathBuf>,
    /// The configuration snapshot: hosts, profiles, `[boot]` and the paths iPXE scripts are
    /// served under. Loaded once per request ([`At`]).
    pub live: Arc<Live>,
    /// The ledger (leases for host lookup; boot events).
    pub ledger: Ledger,
    /// Hosts a reboot run holds until a download slot is theirs, and how long they wait.
    pub gate: Gate,
    /// Boots in progress and the configs delivered in each (one delivery per boot).
    pub boots: Boots,
    /// Config refusals by reason.
    pub config_metrics: configs::Metrics,
    /// `http.origin`: where profile files missing under `root` are fetched from.
    pub origin: Option<Arc<Origin>>,
    /// iPXE scripts as last rendered for each host.
    pub rendered: Rendered,
    /// Files under `root` kept open between requests.
    pub files: files::Kept,
}

/// A routed request: the response, a label for metrics, and the host and path when the
/// body is a download the ledger follows.
pub struct Routed {
    /// What to send.
    pub response: Response,
    /// `script`, `gate`, `config`, `booted`, `file`, `origin` (refused for a failed origin
    /// fetch) or `other`.
    pub route: &'static str,
    /// Host and path of an image download.
    pub fetch: Option<(Mac, String)>,
    /// The file is being fetched from the origin: the transport keeps the request and
    /// routes it again once this has landed (`response` is then not sent).
    pub wait: Option<Waiter>,
}

/// One request's view: the site and the snapshot loaded when the request arrived, so that
/// every lookup of one request answers from one generation (a reload in between changes the
/// next request, never half of this one). Field access falls through to the [`Site`].
pub struct At<'a> {
    site: &'a Site,
    /// The snapshot's generation.
    generation: u64,
    /// Hosts and profiles of this generation.
    inventory: &'a Inventory,
    /// `[boot]` of this generation.
    boot: &'a BootSettings,
    /// Paths iPXE scripts are served under in this generation.
    scripts: &'a [String],
    /// Config templates of this generation, compiled (no disk read per request).
    templates: &'a Templates,
}

impl<'a> At<'a> {
    fn new(site: &'a Site, snapshot: &'a Snapshot) -> Self {
        Self {
            site,
            generation: snapshot.generation,
            inventory: &snapshot.inventory,
            boot: &snapshot.boot,
            scripts: &snapshot.scripts,
            templates: &snapshot.templates,
        }
    }
}

impl Deref for At<'_> {
    type Target = Site;

    fn deref(&self) -> &Site {
        self.site
    }
}

impl At<'_> {
    fn host_at(&self, ip: IpAddr) -> Option<&Host> {
        self.ledger.host_at(self.inventory, ip)
    }

    fn address_of(&self, host: &Host, peer: IpAddr) -> Option<IpAddr> {
        self.ledger.address_of(host, peer)
    }

    fn target<'a>(
        &'a self,
        host: &'a Host,
        peer: IpAddr,
        server: IpAddr,
    ) -> Option<render::Target<'a>> {
        Some(render::Target {
            host,
            profile: self.inventory.profile(&host.profile)?,
            ip: self.address_of(host, peer),
            server: server.into(),
            global: self.boot,
            nonce: None,
        })
    }

    fn http_base(&self, server: IpAddr) -> String {
        self.boot
            .http_base
            .as_deref()
            .unwrap_or("http://{server}")
            .replace("{server}", &render::ServerAddr::from(server).to_string())
            .trim_end_matches('/')
            .to_owned()
    }
}

fn routed(response: Response, route: &'static str) -> Routed {
    Routed {
        response,
        route,
        fetch: None,
        wait: None,
    }
}

/// Answers one request from `peer`, received on the server address `server`.
pub fn route(site: &Site, req: &Request, peer: IpAddr, server: IpAddr) -> Routed {
    let snapshot = site.live.load();
    let site = &At::new(site, &snapshot);
    let head = req.method == Method::Head;
    let mut r = match (req.method, req.path.as_str()) {
        (Method::Post, "/booted") => booted(site, req, peer),
        (Method::Post, _) | (Method::Other, _) => {
            let mut resp = Response::text(405, "method not allowed");
            resp.headers.push(("Allow", "GET, HEAD".into()));
            routed(resp, "other")
        }
        (_, path)
            if site
                .scripts
                .iter()
                .any(|s| s.trim_start_matches('/') == &path[1..]) =>
        {
            script(site, req, peer, server)
        }
        (_, path) if path == "/configs" || path.starts_with("/configs/") => {
            config(site, req, path, peer, server)
        }
        (_, path) => file(site, req, path, peer),
    };
    if head {
        r.response = r.response.for_head();
    }
    if !req.keep_alive {
        r.response.close = true;
    }
    r
}

fn script(site: &At, req: &Request, peer: IpAddr, server: IpAddr) -> Routed {
    // The host is the one at the source address; `?mac=` names the script only for a peer
    // this server cannot place (another server's lease), and never queues at the gate:
    // anyone can claim any MAC (with `gate = always` such a host goes through unpaced).
    let at_peer = site.host_at(peer);
    let host = at_peer.or_else(|| {
        req.query("mac")
            .and_then(|m| m.parse::<Mac>().ok())
            .and_then(|m| site.inventory.host_by_mac(&m))
    });
    if let Some(answer) = host.and_then(|h| netboot(site, h, req, peer)) {
        return answer;
    }
    if let Some(h) = host {
        if let gate::Ask::Wait { retry_s, .. } = admission(site, h, at_peer.is_some()) {
            // Up before a download slot is free: wait here, where waiting costs one small
            // request every few seconds, rather than take bandwidth from hosts downloading.
            let wait = format!(
                "#!ipxe\n# bootfabric: {} waits for a download slot\necho Bootfabric: waiting for a download slot; asking again in {s} s\nsleep {s}\nchain --autofree {}{}?mac=${{net0/mac}}\n",
                h.name,
                site.http_base(server),
                req.path,
                s = retry_s,
            );
            return routed(
                Response::bytes(200, "text/plain; charset=utf-8", wait.into_bytes()),
                "gate",
            );
        }
    }
    if let Some(h) = host.filter(|h| site.inventory.profile(&h.profile).is_some()) {
        // Recorded first: the script opens the host's boot when none is in progress (DHCP
        // may be another server's), and the boot's nonce is drawn when it opens.
        let path = req.path.clone();
        site.ledger
            .record(h.mac, EventKind::IpxeScript { path }, Some(peer));
        // Boots takes its own lock inside the ledger's; nothing takes them the other way.
        let nonce = site.ledger.with_timeline(h.mac, |events| {
            site.boots
                .nonce(h.mac, events, unix_ms(), configs::os_nonce)
        });
        let key = scripts::Key {
            generation: site.generation,
            ip: site.address_of(h, peer),
            server,
            nonce: nonce.as_deref(),
        };
        let text = site.rendered.get(h.mac, &key, || {
            render::host_script_for_boot(
                site.inventory,
                h,
                key.ip,
                server.into(),
                site.boot,
                key.nonce,
            )
        });
        match text {
            Some(Ok(text)) => {
                return routed(
                    Response::bytes(200, "text/plain; charset=utf-8", text),
                    "script",
                )
            }
            // Every cmdline rendered for this host at load; one failing now differs by the
            // lease address or the nonce. A generic answer: the reason is the operator's.
            Some(Err(e)) => {
                error!(host = %h.name, error = %e, "cannot render the host's iPXE script");
                return routed(Response::text(500, "cannot render this script"), "script");
            }
            None => {}
        }
    }
    // Unknown hosts: the operator's file of that name, else a script that asks again, so a
    // machine added to the inventory later boots without a power cycle.
    if let Some(root) = &site.root {
        if let Ok(src) = site.files.open(root, req.path.trim_start_matches('/')) {
            let mut r = static_file(req, src, &req.path);
            r.route = "script";
            return r;
        }
    }
    let retry = format!(
        "#!ipxe\n# bootfabric: this machine is not in the inventory\necho Bootfabric does not know ${{net0/mac}}; asking again in 30 s\nsleep 30\nchain --autofree {}{}?mac=${{net0/mac}}\n",
        site.http_base(server),
        req.path
    );
    routed(
        Response::bytes(200, "text/plain; charset=utf-8", retry.into_bytes()),
        "script",
    )
}

/// Asks the gate for `host`: with its place in the queue when it asks from its own address
/// (`proven`), else only whether it must wait. Admissions the ask made are recorded.
fn admission(site: &At, host: &Host, proven: bool) -> gate::Ask {
    if site.inventory.boot_answer(host) != BootAnswer::Boot {
        // Told to boot from disk or refused: it downloads nothing, so it takes no slot.
        return gate::Ask::Go;
    }
    if !proven {
        return site.gate.ask_unproven(host.mac);
    }
    let now = unix_ms();
    let progress = |mac, since| gate::progress(&site.ledger, site.inventory, mac, since);
    let netboots = |mac: &Mac| gate::netboots(site.inventory, mac);
    let (ask, admitted) = site
        .gate
        .ask(host.mac, host.rack.as_deref(), now, progress, netboots);
    for a in admitted {
        site.ledger
            .record_at(a.mac, EventKind::Admitted, None, a.at_ms);
    }
    ask
}

/// The answer of a host that is not to boot its profile: `netboot = deny` is refused (403),
/// a used `netboot = once` gets iPXE's "boot from your disk". `None`: boot as usual.
fn netboot(site: &At, h: &Host, req: &Request, peer: IpAddr) -> Option<Routed> {
    match site.inventory.boot_answer(h) {
        BootAnswer::Boot => None,
        BootAnswer::Disk => {
            let path = req.path.clone();
            site.ledger
                .record(h.mac, EventKind::IpxeScript { path }, Some(peer));
            let text = render::ipxe_disk(h).into_bytes();
            let resp = Response::bytes(200, "text/plain; charset=utf-8", text);
            Some(routed(resp, "script"))
        }
        BootAnswer::Deny => {
            let why = "netboot = deny: this host is not booted from the network";
            Some(routed(Response::text(403, why), "script"))
        }
    }
}

/// `/configs/<file>` is the template rendered for the host asking; `/configs/<host>/<file>`
/// only for that host. A file `<configs>/<host>/<file>` overrides the shared template. Each
/// config is delivered once per boot of its host ([`configs`] decides).
fn config(site: &At, req: &Request, path: &str, peer: IpAddr, server: IpAddr) -> Routed {
    if site.configs.is_none() {
        return routed(Response::text(404, "not found"), "config");
    }
    if req.method == Method::Head {
        // A config is delivered once per boot: a HEAD would spend the delivery on no body.
        let mut resp = Response::text(405, "configs are delivered once per boot: use GET");
        resp.headers.push(("Allow", "GET".into()));
        return routed(resp, "config");
    }
    let refuse = |status: u16, reason: &'static str, why: &str| {
        site.config_metrics.refused(reason);
        routed(Response::text(status, why), "config")
    };
    let is_host = |name: &str| site.inventory.hosts().iter().any(|h| h.name == name);
    let rest = path.strip_prefix("/configs").unwrap_or(path);
    let asked = match configs::parse_path(rest, is_host) {
        Ok(p) => p,
        Err(e) => return refuse(400, "path", &format!("bad config path: {e}")),
    };
    let Some(host) = site.host_at(peer) else {
        return refuse(
            403,
            "unknown_host",
            "configs are served to known hosts only, from their own address",
        );
    };
    match site.inventory.boot_answer(host) {
        BootAnswer::Boot => {}
        // Configs are for installs: a host told to boot from its disk, or not from the
        // network at all, is given none (whoever wears its address).
        BootAnswer::Disk => {
            let why = "netboot = once, already used: this host boots from its disk";
            return routed(Response::text(409, why), "config");
        }
        BootAnswer::Deny => {
            let why = "netboot = deny: this host is not booted from the network";
            return routed(Response::text(403, why), "config");
        }
    }
    let name = asked.name.as_str();
    let record = |why: ConfigRefusal| {
        let name = name.to_owned();
        let refused = EventKind::ConfigRefused { name, why };
        site.ledger.record(host.mac, refused, Some(peer));
    };
    if let Some(owner) = asked.owner.filter(|o| *o != host.name) {
        record(ConfigRefusal::Owner(owner.to_owned()));
        return refuse(403, "owner", "this config belongs to another host");
    }
    // The template is looked up before the delivery is decided: a missing or unservable
    // file does not spend the host's one delivery. Its text is the snapshot's, compiled at
    // load: nothing is read from disk here.
    let templates = site.templates;
    let found = match templates.lookup(&host.name, name) {
        Lookup::Found(found) => found,
        Lookup::NotFound => return routed(Response::text(404, "not found"), "config"),
        Lookup::Unservable => {
            return routed(
                Response::text(500, "config template cannot be served"),
                "config",
            )
        }
    };
    let Some(mut t) = site.target(host, peer, server) else {
        return routed(Response::text(500, "host without profile"), "config");
    };
    let ask = Ask {
        name,
        peer,
        nonce: req.query("nonce"),
    };
    let events = site.ledger.timeline(host.mac);
    let nonce = match site
        .boots
        .deliver(host.mac, &events, unix_ms(), ask, configs::os_nonce)
    {
        Delivery::Granted { nonce } => nonce,
        Delivery::NoBoot => {
            record(ConfigRefusal::NoBoot);
            return refuse(
                409,
                "no_boot",
                "no boot of this host is in progress: configs are served from its reset or first DHCP request until it reports booted",
            );
        }
        Delivery::WrongNonce => {
            record(ConfigRefusal::WrongNonce);
            return refuse(403, "nonce", "wrong nonce for this boot");
        }
        Delivery::Again { first } => {
            // Two machines asked for one host's config in one boot: one of them wears the
            // host's address. The operator hears of it (ledger, metric, alert).
            warn!(host = %host.name, %peer, %first, config = name, "config asked for again in the same boot: refused");
            record(ConfigRefusal::Again { first });
            return refuse(
                409,
                "again",
                "this config was already delivered during this boot",
            );
        }
    };
    t.nonce = nonce.as_deref();
    // Rendered whole before anything is sent: a failure (fuel, a value that differs from
    // load time) is a generic 500, never a partial config; the reason goes to the log only
    // (it may quote the template, which holds secrets).
    let text = match templates.render(&found, &t) {
        Ok(text) => text,
        Err(e) => {
            error!(host = %host.name, error = %e, "config template failed to render: refused");
            record(ConfigRefusal::Template);
            return refuse(500, "template", "cannot render this config");
        }
    };
    let served = EventKind::ConfigServed {
        name: name.to_owned(),
    };
    site.ledger.record(host.mac, served, Some(peer));
    let mut resp = Response::bytes(200, content_type(name), text.into_bytes());
    // Configs carry secrets: never let a cache keep one.
    resp.headers.push(("Cache-Control", "no-store".into()));
    routed(resp, "config")
}

fn booted(site: &At, req: &Request, peer: IpAddr) -> Routed {
    let body = String::from_utf8_lossy(&req.body);
    let mac = req.query("mac").map(str::to_owned).or_else(|| {
        body.split('&')
            .find_map(|kv| kv.trim().strip_prefix("mac=").map(str::to_owned))
    });
    let host = match mac {
        Some(m) => match m.parse::<Mac>() {
            Ok(mac) => site.inventory.host_by_mac(&mac),
            Err(e) => return routed(Response::text(400, &e), "booted"),
        },
        None => site.host_at(peer),
    };
    let Some(host) = host else {
        return routed(Response::text(404, "unknown host"), "booted");
    };
    // Only from the host the ledger places at the source address: its reservation unless
    // another client still leases it (a moved reservation waits for the old holder's lease),
    // or the address it leases now. The old holder of a moved reservation posting the new
    // owner's MAC is refused, and a host with neither reservation nor lease cannot be
    // reported by anyone: a false `booted` frees its download slot, hides its failure and
    // spends a `netboot = once` host's one install.
    if site.host_at(peer).map(|h| h.mac) != Some(host.mac) {
        return routed(
            Response::text(
                403,
                "a host can only report its own boot, from its own address",
            ),
            "booted",
        );
    }
    tracing::info!(
        target: crate::util::logs::EXCHANGE_LOG,
        proto = "http",
        host = %host.name,
        mac = %host.mac,
        %peer,
        profile = %host.profile,
        "{} booted",
        host.name
    );
    site.ledger.record(host.mac, EventKind::Booted, Some(peer));
    site.boots.end(host.mac);
    routed(Response::empty(204), "booted")
}

fn file_error(e: &FileError) -> Response {
    match e {
        FileError::NotFound => Response::text(404, "not found"),
        FileError::Denied(why) => Response::text(403, &format!("forbidden: {why}")),
        FileError::Io(_) => Response::text(500, "cannot read the file"),
    }
}

fn file(site: &At, req: &Request, path: &str, peer: IpAddr) -> Routed {
    let Some(root) = &site.root else {
        return routed(Response::text(404, "not found"), "other");
    };
    let name = path.trim_start_matches('/');
    // An origin fetch's temporary file is not the image until it is renamed into place.
    if site.origin.is_some() && origin::is_partial(name) {
        return routed(Response::text(404, "not found"), "file");
    }
    // Paths are confined exactly as TFTP names are, the root being `/`.
    match site.files.open(root, name) {
        Ok(src) => {
            let mut r = static_file(req, src, path);
            if r.response.status == 200 || r.response.status == 206 {
                r.fetch = site.host_at(peer).map(|h| (h.mac, path.to_owned()));
            }
            r
        }
        Err(FileError::NotFound) => match &site.origin {
            Some(o) => from_origin(o, site.inventory, name),
            None => routed(file_error(&FileError::NotFound), "file"),
        },
        Err(e) => routed(file_error(&e), "file"),
    }
}

/// A file missing under the root: a profile's file is fetched from the origin (the request
/// waits for it), anything else is a 404 that costs the origin nothing.
fn from_origin(o: &Arc<Origin>, inventory: &Inventory, name: &str) -> Routed {
    match o.ask(inventory, name) {
        origin::Answer::NotOurs => routed(file_error(&FileError::NotFound), "file"),
        origin::Answer::Wait(w) => Routed {
            wait: Some(w),
            ..routed(Response::empty(503), "file")
        },
        origin::Answer::Refuse {
            status,
            retry_after_s,
            failure,
        } => {
            let why = match retry_after_s {
                Some(s) => format!("fetching this file from the origin failed ({failure}); the next try is in {s} s"),
                None => format!("this file cannot be fetched from the origin: {failure}"),
            };
            let mut resp = Response::text(status, &why);
            if let Some(s) = retry_after_s {
                resp.headers.push(("Retry-After", s.to_string()));
            }
            routed(resp, "origin")
        }
    }
}

fn static_file(req: &Request, src: files::Source, path: &str) -> Routed {
    let size = src.size();
    let m = src.metadata();
    let v = Validators::for_file(m.ino(), size, m.modified().unwrap_or(std::time::UNIX_EPOCH));
    let validators = |resp: &mut Response| {
        resp.headers.push(("ETag", v.etag.clone()));
        resp.headers.push(("Last-Modified", v.last_modified()));
    };
    if conditional::not_modified(
        req.header("if-none-match"),
        req.header("if-modified-since"),
        &v,
    ) {
        let mut resp = Response::empty(304);
        validators(&mut resp);
        return routed(resp, "file");
    }
    let plan = if conditional::range_applies(req.header("if-range"), &v) {
        range::plan(req.header("range"), size)
    } else {
        Plan::Full
    };
    let in_memory = src.in_memory();
    let file = src.into_file();
    let mut resp = match plan {
        Plan::Full => Response {
            status: 200,
            headers: Vec::new(),
            content_length: size,
            body: Body::File {
                file,
                offset: 0,
                len: size,
                in_memory,
            },
            close: false,
        },
        Plan::Partial { first, last } => Response {
            status: 206,
            headers: vec![("Content-Range", format!("bytes {first}-{last}/{size}"))],
            content_length: last - first + 1,
            body: Body::File {
                file,
                offset: first,
                len: last - first + 1,
                in_memory,
            },
            close: false,
        },
        Plan::Unsatisfiable => {
            let mut r = Response::text(416, "range not satisfiable");
            r.headers.push(("Content-Range", format!("bytes */{size}")));
            r
        }
    };
    if resp.status != 416 {
        resp.headers
            .push(("Content-Type", content_type(path).into()));
    }
    resp.headers.push(("Accept-Ranges", "bytes".into()));
    validators(&mut resp);
    routed(resp, "file")
}

#[cfg(test)]
mod tests {
    //! [`route`] on a real ledger and gate, without sockets: who may report a host booted.

    use std::{path::Path, time::Duration};

    use prometheus::Registry;

    use super::*;
    use crate::model::snapshot::Next;

    /// `old` (MAC …:01) held 10.77.0.11 before the reservation moved to `node07` (MAC …:02).
    const HOSTS: &str = r#"
        [profiles.p]
        kernel = "vmlinuz"
        cmdline = "ip={{ ip }} nonce={{ nonce }}"

        [[hosts]]
        name = "old"
        mac = "52:54:00:00:00:01"
        profile = "p"

        [[hosts]]
        name = "node07"
        mac = "52:54:00:00:00:02"
        ip = "10.77.0.11"
        profile = "p"
    "#;

    use std::net::Ipv4Addr;

    const OLD: Mac = Mac([0x52, 0x54, 0, 0, 0, 1]);
    const NODE07: Mac = Mac([0x52, 0x54, 0, 0, 0, 2]);
    const RESERVED: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 11);
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

    fn site() -> Site {
        let registry = Registry::new();
        let wire = toml::from_str(HOSTS).expect("toml");
        let inventory = Inventory::from_wire(Path::new("hosts.toml"), wire).expect("inventory");
        let ledger = Ledger::new(&registry).expect("ledger");
        ledger.set_inventory(&inventory);
        Site {
            root: None,
            configs: None,
            live: Live::unregistered(Next::new(inventory, BootSettings::defaults())),
            ledger,
            gate: Gate::default(),
            boots: Boots::new(Duration::from_secs(60)),
            config_metrics: configs::Metrics::register(&registry).expect("metrics"),
            origin: None,
            rendered: Rendered::default(),
            files: Default::default(),
        }
    }

    fn post_booted(site: &Site, mac: Option<Mac>, peer: Ipv4Addr) -> u16 {
        let peer = IpAddr::V4(peer);
        let req = Request {
            method: Method::Post,
            path: "/booted".into(),
            query: mac
                .map(|m| ("mac".into(), m.to_string()))
                .into_iter()
                .collect(),
            headers: Vec::new(),
            keep_alive: false,
            body: Vec::new(),
        };
        route(site, &req, peer, SERVER.into()).response.status
    }

    /// The iPXE script `peer` is served, asked for on `server`.
    fn script_at(site: &Site, peer: Ipv4Addr, server: Ipv4Addr) -> String {
        let req = Request {
            method: Method::Get,
            path: "/boot.ipxe".into(),
            query: Vec::new(),
            headers: Vec::new(),
            keep_alive: true,
            body: Vec::new(),
        };
        let r = route(site, &req, peer.into(), server.into());
        assert_eq!((r.route, r.response.status), ("script", 200));
        match r.response.body {
            Body::Bytes(b) => String::from_utf8(b).expect("utf-8"),
            other => panic!("not bytes: {other:?}"),
        }
    }

    fn booted(site: &Site, mac: Mac) -> usize {
        site.ledger
            .timeline(mac)
            .iter()
            .filter(|e| e.kind == EventKind::Booted)
            .count()
    }

    /// Scripts are kept once rendered ([`Rendered`]); what they were rendered from changing
    /// must still change the next one: the lease address, the server address asked, the
    /// boot's nonce and the configuration generation.
    #[test]
    fn a_kept_script_follows_its_lease_server_boot_and_generation() {
        let site = site();
        // `old` holds node07's reservation: node07 boots on a pool address until it ends.
        site.ledger
            .record(OLD, EventKind::DhcpAck, Some(RESERVED.into()));
        let pool = Ipv4Addr::new(10, 77, 0, 100);
        site.ledger
            .record(NODE07, EventKind::DhcpAck, Some(pool.into()));
        let first = script_at(&site, pool, SERVER);
        assert!(first.contains("ip=10.77.0.100 nonce="), "{first}");
        assert_eq!(script_at(&site, pool, SERVER), first, "same boot");
        let other_server = Ipv4Addr::new(10, 77, 1, 1);
        let there = script_at(&site, pool, other_server);
        assert!(there.contains("http://10.77.1.1/vmlinuz"), "{there}");
        assert_eq!(script_at(&site, pool, SERVER), first);

        // The reservation is free: node07's address is its reservation from now on.
        site.ledger
            .record(OLD, EventKind::DhcpRelease, Some(RESERVED.into()));
        let moved = script_at(&site, pool, SERVER);
        assert!(moved.contains("ip=10.77.0.11 "), "{moved}");

        // The boot ends and the next opens with a fresh nonce.
        let nonce = |s: &str| {
            s.split("nonce=")
                .nth(1)
                .and_then(|t| t.split_whitespace().next())
                .map(str::to_owned)
        };
        assert_eq!(post_booted(&site, Some(NODE07), pool), 204);
        // Boots are told apart by their first event's millisecond.
        std::thread::sleep(Duration::from_millis(3));
        let next_boot = script_at(&site, pool, SERVER);
        assert_ne!(nonce(&next_boot), nonce(&moved), "{moved}\n{next_boot}");

        // A new generation with another cmdline: rendered from it at once.
        let changed = HOSTS.replace("nonce={{ nonce }}", "generation-two");
        let wire = toml::from_str(&changed).expect("toml");
        let inventory = Inventory::from_wire(Path::new("hosts.toml"), wire).expect("inventory");
        site.live
            .publish(|_| {
                Ok::<_, std::convert::Infallible>(Next::new(inventory, BootSettings::defaults()))
            })
            .expect("publish");
        let published = script_at(&site, pool, SERVER);
        assert!(
            published.contains("ip=10.77.0.11 generation-two"),
            "{published}"
        );
    }

    #[test]
    fn the_old_holder_of_a_moved_reservation_cannot_report_the_new_owner_booted() {
        let site = site();
        // `old` still leases node07's reservation: the address is old's, not node07's.
        site.ledger
            .record(OLD, EventKind::DhcpAck, Some(RESERVED.into()));
        assert_eq!(post_booted(&site, Some(NODE07), RESERVED), 403);
        assert_eq!(
            booted(&site, NODE07),
            0,
            "node07 reported by its old holder"
        );
        // The holder reports itself, by MAC or by address alone.
        assert_eq!(post_booted(&site, Some(OLD), RESERVED), 204);
        assert_eq!(post_booted(&site, None, RESERVED), 204);
        assert_eq!(booted(&site, OLD), 2);
        // node07, waiting on a pool address it leases, reports itself from there.
        let pool = Ipv4Addr::new(10, 77, 0, 100);
        assert_eq!(post_booted(&site, Some(NODE07), pool), 403, "no lease yet");
        site.ledger
            .record(NODE07, EventKind::DhcpAck, Some(pool.into()));
        assert_eq!(post_booted(&site, Some(NODE07), pool), 204);
        // Once the old lease ends the reservation is node07's, and `old` is nobody there.
        site.ledger
            .record(OLD, EventKind::DhcpRelease, Some(RESERVED.into()));
        assert_eq!(post_booted(&site, Some(OLD), RESERVED), 403);
        assert_eq!(post_booted(&site, Some(NODE07), RESERVED), 204);
        assert_eq!(booted(&site, NODE07), 2);
    }
}
