//! Config templates (`http.configs`) and profile `cmdline`s on minijinja, compiled once from
//! the snapshot and rendered for every host at load, so that a mistake is a configuration
//! error naming host, file and line rather than a failed boot.
//!
//! [`Templates::compile`] is the one place that reads `http.configs` (through the confined
//! opener HTTP and TFTP use) and parses every file; everything else here is pure: a
//! [`Target`] (inventory and server data, never anything from a packet) in, text out.
//!
//! The engine is set up for provisioning files, not HTML: strict undefined values (a typo or
//! a host without `meta.role` is an error, not an empty string), no auto-escaping, the
//! trailing newline kept, a fuel limit per render, and no loader or `include`: a template
//! cannot reach another file (another host's override holds that host's secrets).
//!
//! A file with neither `{{` nor `{%` is a legacy one: its `{host}`-style tokens are
//! translated and the rest is kept verbatim, so configs written for the old substitution
//! (and shell scripts with `${#x}`) serve as before.

use std::{
    collections::BTreeMap,
    fmt,
    io::Read as _,
    path::{Path, PathBuf},
};

use minijinja::{Environment, UndefinedBehavior, Value};
use serde::Serialize;

use super::Target;
use crate::{
    model::boot::BootSettings,
    model::files,
    model::inventory::{Host, Inventory},
};

/// Largest config template read (bytes).
pub const CONFIG_MAX: u64 = 1 << 20;

/// Most files `http.configs` may hold: compile reads them all, and check renders each for
/// every host.
pub const MAX_FILES: usize = 10_000;

/// Deepest folder nesting walked under `http.configs`.
const MAX_DEPTH: usize = 8;

/// Instructions one render may run: far above any real config (a loop over a host's meta,
/// a few conditionals), far below a template that would spin a request thread.
const FUEL: u64 = 200_000;

/// Largest rendered text: a template that multiplies a string cannot make the daemon hold
/// more than this per request.
const OUTPUT_MAX: usize = 4 << 20;

/// Errors shown at most in one message (check, a refused reload); the count says the rest.
pub const ERRORS_SHOWN: usize = 20;

/// The seven tokens of the old substitution and what each becomes.
const LEGACY: [(&str, &str); 7] = [
    ("{host}", "{{ hostname }}"),
    ("{mac}", "{{ host.mac }}"),
    ("{ip}", "{{ ip }}"),
    ("{server}", "{{ server }}"),
    ("{http_base}", "{{ http_base }}"),
    ("{profile}", "{{ profile.name }}"),
    ("{nonce}", "{{ nonce }}"),
];

/// `file:line`, or `file` when the engine gave no line.
fn at(file: &str, line: Option<usize>) -> String {
    match line {
        Some(l) => format!("{file}:{l}"),
        None => file.to_owned(),
    }
}

/// A template that cannot be read, parsed or rendered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The configs folder cannot be walked, or holds too much.
    #[error("{dir}: {reason}")]
    Folder {
        /// The folder.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// A syntax error.
    #[error("{}: {reason}", at(file, *line))]
    Parse {
        /// `configs/<name>` or `profiles.<name>.cmdline`.
        file: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// The engine's message.
        reason: String,
    },
    /// Rendering for one host failed (an undefined value, fuel exhausted, a cmdline that
    /// is not one line).
    #[error("{}: host {host}: {reason}", at(file, *line))]
    Render {
        /// `configs/<name>` or `profiles.<name>.cmdline`.
        file: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// The host it was rendered for.
        host: String,
        /// The engine's message.
        reason: String,
    },
}

impl TemplateError {
    /// The template it is about (`configs/<name>`, `profiles.<name>.cmdline`), or the
    /// configs folder.
    pub fn template(&self) -> String {
        match self {
            Self::Folder { dir, .. } => dir.display().to_string(),
            Self::Parse { file, .. } | Self::Render { file, .. } => file.clone(),
        }
    }
}

/// Several template errors, as a refused load or change reports them: one per line, the
/// first [`ERRORS_SHOWN`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct TemplateErrors(pub Vec<TemplateError>);

impl fmt::Display for TemplateErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} template error(s)")?;
        for e in self.0.iter().take(ERRORS_SHOWN) {
            write!(f, "\n  {e}")?;
        }
        if n > ERRORS_SHOWN {
            write!(f, "\n  ... and {} more", n - ERRORS_SHOWN)?;
        }
        Ok(())
    }
}

/// The engine every template runs in; one setup, so that a cmdline and a config behave
/// alike.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    // Configs are YAML, JSON, shell, kickstart: HTML escaping would corrupt them.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build();
    // The default delimiters always build; keep the default syntax if that ever changes.
    if let Ok(s) = syntax {
        env.set_syntax(s);
    }
    env
}

/// Whether `text` is written for the engine (else it is a legacy file).
fn is_jinja(text: &str) -> bool {
    text.contains("{{") || text.contains("{%")
}

/// A legacy text as a template: each of the seven tokens becomes its variable, the rest is
/// kept verbatim inside `raw` blocks (it may hold `{#`, which the engine would take for a
/// comment). No newline is added, so lines keep their numbers. Returns the template and
/// whether any token was found.
pub fn translate_legacy(text: &str) -> (String, bool) {
    let mut out = String::with_capacity(text.len() + 64);
    let mut literal = String::new();
    let mut found = false;
    let flush = |literal: &mut String, out: &mut String| {
        if literal.contains('{') {
            out.push_str("{% raw %}");
            out.push_str(literal);
            out.push_str("{% endraw %}");
        } else {
            out.push_str(literal);
        }
        literal.clear();
    };
    let mut rest = text;
    while !rest.is_empty() {
        if let Some((token, var)) = LEGACY.iter().find(|(t, _)| rest.starts_with(t)) {
            flush(&mut literal, &mut out);
            out.push_str(var);
            rest = &rest[token.len()..];
            found = true;
            continue;
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            literal.push(c);
        }
        rest = chars.as_str();
    }
    flush(&mut literal, &mut out);
    (out, found)
}

/// Whether `text` is a legacy one that uses any of the seven tokens (check warns).
pub fn uses_legacy_tokens(text: &str) -> bool {
    !is_jinja(text) && translate_legacy(text).1
}

/// `text` as template source: itself when written for the engine, else translated.
fn source_of(text: &str) -> (String, bool) {
    if is_jinja(text) {
        (text.to_owned(), false)
    } else {
        translate_legacy(text)
    }
}

/// The variables a template sees. Inventory and server data only: nothing a machine on the
/// network sent (no DHCP hostname, no query string) becomes a value here. Absent fields are
/// left out, not `none`, so that strict mode reports `host.rack` on a host without a rack
/// and `{% if host.rack is defined %}` guards it.
#[derive(Serialize)]
struct Context<'a> {
    host: HostVars<'a>,
    hostname: &'a str,
    meta: &'a BTreeMap<String, serde_json::Value>,
    profile: ProfileVars<'a>,
    /// The address the host has now (reservation or lease); empty when unknown, as the
    /// old `{ip}` was.
    ip: String,
    server: String,
    http_base: String,
    /// The boot's nonce; empty outside a boot, so that no braces reach a client.
    nonce: &'a str,
}

#[derive(Serialize)]
struct HostVars<'a> {
    name: &'a str,
    mac: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rack: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    netboot: String,
    profile: &'a str,
}

#[derive(Serialize)]
struct ProfileVars<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel: Option<&'a str>,
    initrd: &'a [String],
}

/// The render context of `t`.
fn context(t: &Target<'_>) -> Value {
    let h: &Host = t.host;
    Value::from(minijinja::value::Serde(Context {
        host: HostVars {
            name: &h.name,
            mac: h.mac.to_string(),
            ip: h.ip.map(|i| i.to_string()),
            rack: h.rack.as_deref(),
            model: h.model.as_deref(),
            netboot: h.netboot.to_string(),
            profile: &h.profile,
        },
        hostname: &h.name,
        meta: &h.meta,
        profile: ProfileVars {
            name: &t.profile.name,
            kernel: t.profile.kernel.as_deref(),
            initrd: &t.profile.initrd,
        },
        ip: t.ip.map(|i| i.to_string()).unwrap_or_default(),
        server: t.server.to_string(),
        http_base: t.image_base(),
        nonce: t.nonce.unwrap_or(""),
    }))
}

/// The engine's error as ours, for `file` (the engine's own name for it may be absent).
fn render_error(e: &minijinja::Error, file: &str, host: &str) -> TemplateError {
    TemplateError::Render {
        file: file.to_owned(),
        line: e.line(),
        host: host.to_owned(),
        reason: reason(e),
    }
}

/// The engine's message without its location (ours names file and line).
fn reason(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    }
}

/// Renders the compiled template `name` of `env` for `t`, bounded in output.
fn render_in(
    env: &Environment<'_>,
    name: &str,
    file: &str,
    t: &Target<'_>,
) -> Result<String, TemplateError> {
    let tmpl = env.get_template(name).map_err(|e| TemplateError::Parse {
        file: file.to_owned(),
        line: e.line(),
        reason: reason(&e),
    })?;
    let text = tmpl
        .render(context(t))
        .map_err(|e| render_error(&e, file, &t.host.name))?;
    if text.len() > OUTPUT_MAX {
        return Err(TemplateError::Render {
            file: file.to_owned(),
            line: None,
            host: t.host.name.clone(),
            reason: format!("renders {} bytes, more than {OUTPUT_MAX}", text.len()),
        });
    }
    Ok(text)
}

/// The name a profile's cmdline has in messages (its TOML key).
pub fn cmdline_file(profile: &str) -> String {
    format!("profiles.{profile}.cmdline")
}

/// Compiled cmdlines kept per thread (the HTTP rings render one per script request), by
/// profile name with the text they were compiled from: a profile changed through the API
/// compiles again, so nothing goes stale. Bounded: past this many profiles the thread's
/// cache starts over.
const CMDLINE_CACHE: usize = 256;

/// A compiled cmdline.
enum Cmdline {
    /// Text and plain variables only ([`plain`]): filled in without the engine.
    Plain(Vec<Piece>),
    /// Anything else, run by the engine.
    Engine(Box<Environment<'static>>),
}

/// A part of a plain template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(Var),
}

/// The variables a plain template may name: those always defined and always a string, so
/// the engine could neither fail on them nor print them otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Var {
    Hostname,
    HostName,
    HostMac,
    Ip,
    Server,
    HttpBase,
    ProfileName,
    Nonce,
}

impl Var {
    fn named(name: &str) -> Option<Self> {
        Some(match name {
            "hostname" => Self::Hostname,
            "host.name" => Self::HostName,
            "host.mac" => Self::HostMac,
            "ip" => Self::Ip,
            "server" => Self::Server,
            "http_base" => Self::HttpBase,
            "profile.name" => Self::ProfileName,
            "nonce" => Self::Nonce,
            _ => return None,
        })
    }
}

/// `src` as text and `{{ var }}` of [`Var`], when it is nothing else; `None` sends it to
/// the engine (a statement, a comment, a filter, whitespace control, any other name, or a
/// delimiter out of place). Every iPXE script renders its host's cmdline, and building the
/// engine's context costs more than the rest of the script: most cmdlines only fill in an
/// address or two.
fn plain(src: &str) -> Option<Vec<Piece>> {
    // Text the engine would read as anything but text.
    let text = |t: &str| {
        (!["{{", "{%", "{#", "}}", "%}", "#}"]
            .iter()
            .any(|d| t.contains(d)))
        .then(|| Piece::Text(t.to_owned()))
    };
    let mut pieces = Vec::new();
    let mut rest = src;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            pieces.push(text(&rest[..open])?);
        }
        let after = &rest[open + 2..];
        let close = after.find("}}")?;
        let inner = &after[..close];
        if inner.starts_with(['-', '+']) || inner.ends_with(['-', '+']) {
            return None;
        }
        pieces.push(Piece::Var(Var::named(inner.trim())?));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        pieces.push(text(rest)?);
    }
    Some(pieces)
}

/// A plain template filled in for `t`, as the engine would (no escaping: see
/// [`environment`]).
fn render_plain(pieces: &[Piece], t: &Target<'_>) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(256);
    for piece in pieces {
        // Writing to a String cannot fail.
        let _ = match piece {
            Piece::Text(s) => out.write_str(s),
            Piece::Var(Var::Hostname | Var::HostName) => out.write_str(&t.host.name),
            Piece::Var(Var::HostMac) => write!(out, "{}", t.host.mac),
            Piece::Var(Var::Ip) => match t.ip {
                Some(ip) => write!(out, "{ip}"),
                None => Ok(()),
            },
            Piece::Var(Var::Server) => write!(out, "{}", t.server),
            Piece::Var(Var::HttpBase) => out.write_str(&t.image_base()),
            Piece::Var(Var::ProfileName) => out.write_str(&t.profile.name),
            Piece::Var(Var::Nonce) => out.write_str(t.nonce.unwrap_or("")),
        };
    }
    out
}

/// `t.profile.cmdline` rendered for `t`: one line, no control characters (a newline would
/// add iPXE commands after `kernel`, or kernel parameters the profile never had).
///
/// Compiled on first use in each thread and kept (see [`CMDLINE_CACHE`]); every host's
/// cmdlines are rendered at load by [`Templates::check_all`], so an error here means a
/// request-time difference (the lease address, the nonce).
pub fn render_cmdline(t: &Target<'_>) -> Result<String, TemplateError> {
    type Compiled = std::collections::HashMap<String, (String, Cmdline)>;
    thread_local! {
        static COMPILED: std::cell::RefCell<Compiled> = std::cell::RefCell::default();
    }
    const NAME: &str = "cmdline";
    let p = t.profile;
    let text = COMPILED.with(|cell| {
        let mut compiled = cell.borrow_mut();
        let fresh = compiled
            .get(p.name.as_str())
            .is_some_and(|(text, _)| *text == p.cmdline);
        if !fresh {
            let (src, _) = source_of(&p.cmdline);
            let cmdline = match plain(&src) {
                Some(pieces) => Cmdline::Plain(pieces),
                None => {
                    let mut env = environment();
                    env.add_template_owned(NAME, src)
                        .map_err(|e| TemplateError::Parse {
                            file: cmdline_file(&p.name),
                            line: e.line(),
                            reason: reason(&e),
                        })?;
                    Cmdline::Engine(Box::new(env))
                }
            };
            if compiled.len() >= CMDLINE_CACHE {
                compiled.clear();
            }
            compiled.insert(p.name.clone(), (p.cmdline.clone(), cmdline));
        }
        let tmpl = compiled.get(p.name.as_str()).map(|(_, c)| match c {
            Cmdline::Plain(pieces) => Ok(Ok(render_plain(pieces, t))),
            Cmdline::Engine(env) => env.get_template(NAME).map(|tmpl| {
                tmpl.render(context(t))
                    .map_err(|e| render_error(&e, &cmdline_file(&p.name), &t.host.name))
            }),
        });
        match tmpl {
            Some(Ok(rendered)) => rendered,
            Some(Err(e)) => Err(TemplateError::Parse {
                file: cmdline_file(&p.name),
                line: e.line(),
                reason: reason(&e),
            }),
            // Inserted just above.
            None => Err(TemplateError::Parse {
                file: cmdline_file(&p.name),
                line: None,
                reason: "the compiled cmdline is gone".to_owned(),
            }),
        }
    })?;
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(TemplateError::Render {
            file: cmdline_file(&p.name),
            line: None,
            host: t.host.name.clone(),
            reason: format!(
                "the rendered cmdline must be one line without control characters (has {c:?})"
            ),
        });
    }
    Ok(text)
}

/// A file under `http.configs`, as compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    /// A template in the engine, under `configs/<name>`; `legacy` when translated.
    Template { legacy: bool },
    /// A file that cannot be a template (not UTF-8, too large): a request gets 500, as
    /// before, and check warns.
    Unservable(String),
}

/// Every config template, compiled, and what compiling them found.
pub struct Templates {
    env: Environment<'static>,
    /// Path below `http.configs` (`node.ign`, `node07/node.ign`) → entry.
    files: BTreeMap<String, Entry>,
    /// Legacy files, unservable files, names skipped: for `check`.
    warnings: Vec<String>,
}

impl Default for Templates {
    fn default() -> Self {
        Self {
            env: environment(),
            files: BTreeMap::new(),
            warnings: Vec::new(),
        }
    }
}

impl fmt::Debug for Templates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Templates")
            .field("files", &self.files)
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

/// What a config request finds.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// No such config for this host (`404`).
    NotFound,
    /// The file exists but cannot be served (`500`; check says why).
    Unservable,
    /// The template to render: its name in messages.
    Found(String),
}

/// What [`Templates::check_all`] did.
#[derive(Debug, Default)]
pub struct Checked {
    /// Hosts rendered for.
    pub hosts: usize,
    /// Renders made (configs and cmdlines).
    pub renders: usize,
    /// What failed.
    pub errors: Vec<TemplateError>,
}

impl Templates {
    /// Reads and parses every file under `dir` (`http.configs`; none: no config
    /// templates). Files go through the confined opener (no symlink out of the folder); a
    /// syntax error is an error, a file that cannot be a template (not UTF-8, larger than
    /// [`CONFIG_MAX`]) a warning and a `500` if requested. The only I/O of this module.
    pub fn compile(dir: Option<&Path>) -> Result<Self, TemplateError> {
        let mut me = Self::default();
        let Some(dir) = dir else { return Ok(me) };
        let mut names = Vec::new();
        walk(dir, "", 0, &mut names, &mut me.warnings)?;
        for rel in names {
            let text = match read_text(dir, &rel) {
                Ok(t) => t,
                Err(why) => {
                    me.warnings.push(format!("configs/{rel}: {why}"));
                    me.files.insert(rel, Entry::Unservable(why));
                    continue;
                }
            };
            me.add(rel, &text)?;
        }
        Ok(me)
    }

    /// Templates from memory: `(path below http.configs, text)` pairs (tests, and callers
    /// that hold the texts already).
    pub fn from_texts<'a>(
        texts: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, TemplateError> {
        let mut me = Self::default();
        for (rel, text) in texts {
            me.add(rel.to_owned(), text)?;
        }
        Ok(me)
    }

    fn add(&mut self, rel: String, text: &str) -> Result<(), TemplateError> {
        let file = format!("configs/{rel}");
        let (src, legacy) = source_of(text);
        if legacy {
            self.warnings
                .push(format!("{file}: legacy {{token}} syntax, translated"));
        }
        self.env
            .add_template_owned(file.clone(), src)
            .map_err(|e| TemplateError::Parse {
                file,
                line: e.line(),
                reason: reason(&e),
            })?;
        self.files.insert(rel, Entry::Template { legacy });
        Ok(())
    }

    /// Files compiled (templates and unservable ones).
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether there are no config files.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// What compiling found worth a look: legacy files, files that cannot be served.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The config `name` for host `host`: `<host>/<name>` overrides the shared `<name>`.
    pub fn lookup(&self, host: &str, name: &str) -> Lookup {
        let own = format!("{host}/{name}");
        let (rel, entry) = match self.files.get_key_value(&own) {
            Some(e) => e,
            None => match self.files.get_key_value(name) {
                Some(e) => e,
                None => return Lookup::NotFound,
            },
        };
        match entry {
            Entry::Template { .. } => Lookup::Found(format!("configs/{rel}")),
            Entry::Unservable(_) => Lookup::Unservable,
        }
    }

    /// Renders the template [`lookup`](Self::lookup) found for `t`.
    pub fn render(&self, found: &str, t: &Target<'_>) -> Result<String, TemplateError> {
        render_in(&self.env, found, found, t)
    }

    /// The configs `host` can be served: every shared one (its own override where it has
    /// one) and the files of its own folder, as `(name, template)`.
    fn configs_of(&self, host: &str, is_host: impl Fn(&str) -> bool) -> Vec<String> {
        let prefix = format!("{host}/");
        let mut out = Vec::new();
        for (rel, entry) in &self.files {
            if !matches!(entry, Entry::Template { .. }) {
                continue;
            }
            let first = rel.split('/').next().unwrap_or(rel);
            if rel.starts_with(&prefix) {
                out.push(rel.clone());
            } else if !rel.contains('/') || !is_host(first) {
                // Shared: rendered unless the host overrides it (the override is above).
                if !self.files.contains_key(&format!("{prefix}{rel}")) {
                    out.push(rel.clone());
                }
            }
        }
        out
    }

    /// Renders every template for every host of `inv`: its configs and its profiles'
    /// cmdlines (its own and its menu's). `server` is the address a host's requests would
    /// reach (check and load pass the interface address, or `0.0.0.0`); the nonce is a
    /// stand-in of the real one's length, the address the reservation.
    pub fn check_all(
        &self,
        inv: &Inventory,
        boot: &BootSettings,
        server: impl Fn(&Host) -> std::net::Ipv4Addr,
    ) -> Checked {
        self.check_hosts(inv, boot, |_| true, server)
    }

    /// [`check_all`](Self::check_all) for the hosts `which` picks (a change of some hosts
    /// renders theirs only).
    pub fn check_hosts(
        &self,
        inv: &Inventory,
        boot: &BootSettings,
        which: impl Fn(&Host) -> bool,
        server: impl Fn(&Host) -> std::net::Ipv4Addr,
    ) -> Checked {
        let nonce = "0".repeat(32);
        let names: std::collections::BTreeSet<&str> =
            inv.hosts().iter().map(|h| h.name.as_str()).collect();
        let is_host = |n: &str| names.contains(n);
        let mut out = Checked::default();
        for host in inv.hosts().iter().filter(|h| which(h)) {
            let Some(profile) = inv.profile(&host.profile) else {
                continue;
            };
            out.hosts += 1;
            let t = Target {
                host,
                profile,
                ip: host.ip.map(Into::into),
                server: server(host).into(),
                global: boot,
                nonce: Some(&nonce),
            };
            let menu = host.menu.iter().filter_map(|p| inv.profile(p));
            for p in std::iter::once(profile).chain(menu) {
                out.renders += 1;
                if let Err(e) = render_cmdline(&Target { profile: p, ..t }) {
                    out.errors.push(e);
                }
            }
            for rel in self.configs_of(&host.name, is_host) {
                out.renders += 1;
                let file = format!("configs/{rel}");
                if let Err(e) = self.render(&file, &t) {
                    out.errors.push(e);
                }
            }
        }
        out
    }

    /// [`check_all`](Self::check_all) as a verdict: every template renders for every host.
    pub fn verify(
        &self,
        inv: &Inventory,
        boot: &BootSettings,
        server: impl Fn(&Host) -> std::net::Ipv4Addr,
    ) -> Result<Checked, TemplateErrors> {
        let mut c = self.check_all(inv, boot, server);
        if c.errors.is_empty() {
            Ok(c)
        } else {
            Err(TemplateErrors(std::mem::take(&mut c.errors)))
        }
    }
}

/// Collects the file names below `dir/rel`, sorted, into `out`: regular files only (a
/// symlink to a file is opened through the confined opener later, one to a folder is not
/// followed), names that are UTF-8 and would pass the request path's checks.
fn walk(
    dir: &Path,
    rel: &str,
    depth: usize,
    out: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Result<(), TemplateError> {
    let folder_error = |reason: String| TemplateError::Folder {
        dir: dir.to_owned(),
        reason,
    };
    let here = if rel.is_empty() {
        dir.to_owned()
    } else {
        dir.join(rel)
    };
    let entries = std::fs::read_dir(&here)
        .map_err(|e| folder_error(format!("cannot read {}: {e}", here.display())))?;
    let mut names: Vec<(String, std::fs::FileType)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| folder_error(format!("{}: {e}", here.display())))?;
        let Ok(name) = entry.file_name().into_string() else {
            warnings.push(format!(
                "{}: a name that is not UTF-8 is skipped",
                here.join(entry.file_name()).display()
            ));
            continue;
        };
        let kind = entry
            .file_type()
            .map_err(|e| folder_error(format!("{}: {e}", here.join(&name).display())))?;
        names.push((name, kind));
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, kind) in names {
        let path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        // A request path can never name these (see `configs::parse_path`): skip them
        // rather than compile what no one can fetch.
        if name.contains('%') || name.contains('\\') || name.chars().any(char::is_control) {
            warnings.push(format!(
                "configs/{path}: skipped (a request cannot name it)"
            ));
            continue;
        }
        if kind.is_dir() {
            if depth + 1 >= MAX_DEPTH {
                warnings.push(format!(
                    "configs/{path}: skipped (more than {MAX_DEPTH} folders deep)"
                ));
                continue;
            }
            walk(dir, &path, depth + 1, out, warnings)?;
        } else if kind.is_file() || kind.is_symlink() {
            if out.len() >= MAX_FILES {
                return Err(folder_error(format!(
                    "more than {MAX_FILES} files: config templates are all compiled and rendered for every host"
                )));
            }
            out.push(path);
        }
    }
    Ok(())
}

/// The text of `dir/rel`, through the confined opener; why not when it cannot be one.
fn read_text(dir: &Path, rel: &str) -> Result<String, String> {
    let src = files::open(dir, rel).map_err(|e| e.to_string())?;
    if src.size() > CONFIG_MAX {
        return Err(format!("larger than {CONFIG_MAX} bytes"));
    }
    let mut bytes = Vec::new();
    let file = src.into_file();
    (&*file)
        .take(CONFIG_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::inventory::Mac;
    use crate::model::inventory::Profile;
    use std::net::Ipv4Addr;

    fn host(name: &str) -> Host {
        let mut h = Host {
            name: name.into(),
            mac: Mac([0x52, 0x54, 0, 0xb0, 0x0f, 0x02]),
            ip: Some(Ipv4Addr::new(10, 77, 0, 12)),
            ipv6: None,
            profile: "installer".into(),
            menu: Vec::new(),
            options: Default::default(),
            model: None,
            rack: None,
            bmc: None,
            netboot: Default::default(),
            meta: BTreeMap::new(),
        };
        h.meta
            .insert("role".into(), serde_json::Value::String("worker".into()));
        h
    }

    fn profile(cmdline: &str) -> Profile {
        Profile {
            name: "installer".into(),
            image: None,
            kernel: Some("debian/linux".into()),
            initrd: vec!["debian/initrd.gz".into()],
            cmdline: cmdline.into(),
            boot: BootSettings::default(),
            sha256: Default::default(),
        }
    }

    fn target<'a>(h: &'a Host, p: &'a Profile, g: &'a BootSettings) -> Target<'a> {
        Target {
            host: h,
            profile: p,
            ip: h.ip.map(Into::into),
            server: Ipv4Addr::new(10, 77, 0, 1).into(),
            global: g,
            nonce: Some("abcd"),
        }
    }

    fn inventory(text: &str) -> Inventory {
        let wire = toml::from_str(text).expect("toml");
        Inventory::from_wire(Path::new("hosts.toml"), wire).expect("inventory")
    }

    fn render_one(text: &str, h: &Host) -> Result<String, TemplateError> {
        let (p, g) = (profile(""), BootSettings::defaults());
        let t = Templates::from_texts([("x.cfg", text)])?;
        let Lookup::Found(name) = t.lookup(&h.name, "x.cfg") else {
            panic!("not found");
        };
        t.render(&name, &target(h, &p, &g))
    }

    #[test]
    fn an_undefined_value_is_an_error_naming_file_host_and_line() {
        let h = host("node02");
        let e = render_one("a\nb\nrole={{ meta.rol }}\n", &h).expect_err("strict");
        let TemplateError::Render {
            ref file,
            line,
            ref host,
            ..
        } = e
        else {
            panic!("{e:?}");
        };
        assert_eq!(
            (file.as_str(), line, host.as_str()),
            ("configs/x.cfg", Some(3), "node02")
        );
        let shown = e.to_string();
        assert!(
            shown.starts_with("configs/x.cfg:3: host node02: undefined value"),
            "{shown}"
        );
        // An absent field is left out, so strict mode catches it too...
        assert!(render_one("{{ host.rack }}", &h).is_err());
        // ... and `is defined` guards it.
        let text = "{% if host.rack is defined %}{{ host.rack }}{% else %}none{% endif %}\n";
        assert_eq!(render_one(text, &h).expect("render"), "none\n");
    }

    #[test]
    fn meta_and_conditionals_render_and_the_newline_stays() {
        let mut h = host("node02");
        h.rack = Some("r1".into());
        h.meta
            .insert("disks".into(), serde_json::json!(["sda", "sdb"]));
        let text = "{% if meta.role == \"worker\" %}join {{ hostname }}{% endif %}\n{% for d in meta.disks %}{{ d }} {% endfor %}\n{{ host.rack }} {{ host.mac }} {{ ip }} {{ server }} {{ profile.name }} {{ nonce }} {{ http_base }} {{ host.netboot }}\n<&>\n";
        assert_eq!(
            render_one(text, &h).expect("render"),
            "join node02\nsda sdb \nr1 52:54:00:b0:0f:02 10.77.0.12 10.77.0.1 installer abcd http://10.77.0.1 allow\n<&>\n"
        );
    }

    #[test]
    fn legacy_tokens_are_translated_and_the_rest_kept() {
        let h = host("node02");
        let text = "{\"host\":\"{host}\",\"n\":\"{nonce}\"}\nx=${#arr} {mac} {ip} {server} {http_base} {profile} {other}\n";
        assert_eq!(
            render_one(text, &h).expect("render"),
            "{\"host\":\"node02\",\"n\":\"abcd\"}\nx=${#arr} 52:54:00:b0:0f:02 10.77.0.12 10.77.0.1 http://10.77.0.1 installer {other}\n"
        );
        let t =
            Templates::from_texts([("a", "{host}\n"), ("b", "{{ hostname }}\n"), ("c", "plain")])
                .expect("compile");
        assert_eq!(t.warnings().len(), 1, "{:?}", t.warnings());
        assert!(t.warnings()[0].starts_with("configs/a: legacy {token} syntax"));
        // Lines keep their numbers through the translation.
        let e = Templates::from_texts([("a", "{host}\n{% raw %}")]);
        assert!(e.is_err());
        let (src, found) = translate_legacy("{host}\n{ip}\n");
        assert!(found);
        assert_eq!(src.lines().count(), 2);
    }

    #[test]
    fn fuel_bounds_a_runaway_template() {
        let h = host("node02");
        let text = "{% for i in range(1000) %}{% for j in range(1000) %}x{% endfor %}{% endfor %}";
        let e = render_one(text, &h).expect_err("fuel");
        assert!(e.to_string().contains("fuel"), "{e}");
    }

    #[test]
    fn a_syntax_error_names_file_and_line() {
        let e = Templates::from_texts([("role.cfg", "a\n{% if %}\n")]).expect_err("parse");
        assert!(e.to_string().starts_with("configs/role.cfg:2: "), "{e}");
    }

    #[test]
    fn a_cmdline_is_one_line_and_renders_legacy_and_jinja() {
        let (h, g) = (host("node02"), BootSettings::defaults());
        let p = profile("url={http_base}/preseed/{host}.cfg");
        assert_eq!(
            render_cmdline(&target(&h, &p, &g)).expect("cmdline"),
            "url=http://10.77.0.1/preseed/node02.cfg"
        );
        // The same profile with another text (as the API changes it), in the same thread:
        // compiled again, never the kept one.
        let p = profile(
            "role={{ meta.role }}{% if host.rack is defined %} rack={{ host.rack }}{% endif %}",
        );
        assert_eq!(
            render_cmdline(&target(&h, &p, &g)).expect("cmdline"),
            "role=worker"
        );
        let mut evil = host("node02");
        evil.meta
            .insert("role".into(), serde_json::Value::String("x\nshell".into()));
        let p = profile("role={{ meta.role }}");
        let e = render_cmdline(&target(&evil, &p, &g)).expect_err("newline");
        assert!(
            e.to_string().starts_with(
                "profiles.installer.cmdline: host node02: the rendered cmdline must be one line"
            ),
            "{e}"
        );
    }

    /// `src` run by the engine, as cmdlines that are not plain are.
    fn by_engine(src: &str, t: &Target<'_>) -> Result<String, String> {
        let mut env = environment();
        env.add_template_owned("t", src.to_owned())
            .map_err(|e| e.to_string())?;
        env.get_template("t")
            .and_then(|tmpl| tmpl.render(context(t)))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn plain_cmdlines_render_as_the_engine_renders_them() {
        let plain_ones = [
            "",
            "console=ttyS0",
            "url={{ http_base }}/preseed/{{ hostname }}.cfg nonce={{nonce}} ip={{ ip }}",
            "{{ host.mac }}{{ host.name }}{{ profile.name }}{{ server }}",
            "a } b { c % d # e\n",
            "trailing newline kept\n",
            "x={{   http_base   }}",
        ];
        let engine_ones = [
            "{{ meta.role }}",
            "{{ host.rack }}",
            "{{ hostname | upper }}",
            "{{- hostname }}",
            "{{ hostname -}}",
            "{% if true %}x{% endif %}",
            "{# comment #}x",
            "stray }} close",
            "unclosed {{ hostname",
            "{{ ip ~ 'x' }}",
            "{{hostname}}{% raw %}{x}{% endraw %}",
        ];
        let g = BootSettings::defaults();
        let mut other = BootSettings::defaults();
        other.http_base = Some("https://{server}:8443/images/".into());
        let mut no_ip = host("node03");
        no_ip.ip = None;
        let h = host("node02");
        let p = profile("");
        let v6: std::net::IpAddr = "fd00::1".parse().expect("v6");
        let targets = [
            target(&h, &p, &g),
            Target {
                nonce: None,
                ip: None,
                ..target(&no_ip, &p, &other)
            },
            Target {
                server: v6.into(),
                ..target(&h, &p, &other)
            },
        ];
        for src in plain_ones {
            let pieces = plain(src).unwrap_or_else(|| panic!("{src:?} is plain"));
            for t in &targets {
                assert_eq!(Ok(render_plain(&pieces, t)), by_engine(src, t), "{src:?}");
            }
        }
        for src in engine_ones {
            assert_eq!(plain(src), None, "{src:?} goes to the engine");
        }
        // Legacy texts are translated first; those without a brace of their own are plain.
        assert!(plain(&source_of("url={http_base}/x {host}").0).is_some());
        assert!(plain(&source_of("a {b} {host}").0).is_none());
    }

    #[test]
    fn check_all_renders_every_host_with_its_own_overrides() {
        let inv = inventory(
            r#"
            [profiles.installer]
            kernel = "debian/linux"
            cmdline = "console=ttyS0 {{ hostname }}"
            [[hosts]]
            name = "node01"
            mac = "52:54:00:aa:00:01"
            profile = "installer"
            meta = { role = "worker" }
            [[hosts]]
            name = "node02"
            mac = "52:54:00:aa:00:02"
            profile = "installer"
            "#,
        );
        let g = BootSettings::defaults();
        // node02 has no meta.role: the shared template fails for it; its own override of
        // another file does not need one; node01's folder is not rendered for node02.
        let t = Templates::from_texts([
            ("role.cfg", "# role\n\nrole={{ meta.role }}\n"),
            ("node.ign", "{{ meta.role }}"),
            ("node02/node.ign", "{{ hostname }}"),
            ("node01/only.cfg", "{{ meta.role }}"),
            ("ignition/x.cfg", "{{ hostname }}"),
        ])
        .expect("compile");
        let c = t.check_all(&inv, &g, |_| Ipv4Addr::UNSPECIFIED);
        assert_eq!(c.hosts, 2);
        // node01: cmdline + role.cfg + node.ign + only.cfg + ignition/x.cfg; node02: cmdline
        // + role.cfg + its node.ign + ignition/x.cfg.
        assert_eq!(c.renders, 9);
        let shown: Vec<String> = c.errors.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert!(
            shown[0].starts_with("configs/role.cfg:3: host node02: undefined value"),
            "{shown:?}"
        );
        assert_eq!(
            t.lookup("node02", "node.ign"),
            Lookup::Found("configs/node02/node.ign".into())
        );
        assert_eq!(
            t.lookup("node01", "node.ign"),
            Lookup::Found("configs/node.ign".into())
        );
        assert_eq!(t.lookup("node01", "nope"), Lookup::NotFound);
    }

    #[test]
    fn compile_reads_the_folder_and_sets_aside_what_cannot_be_a_template() {
        let dir = tempfile::tempdir().expect("dir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("node02")).expect("dir");
        std::fs::write(d.join("a.cfg"), "{{ hostname }}\n").expect("write");
        std::fs::write(d.join("node02/a.cfg"), "{host}\n").expect("write");
        std::fs::write(d.join("bin"), [0xff, 0xfe, 0]).expect("write");
        let t = Templates::compile(Some(d)).expect("compile");
        assert_eq!(t.len(), 3);
        assert_eq!(t.lookup("node02", "bin"), Lookup::Unservable);
        assert!(t
            .warnings()
            .iter()
            .any(|w| w.starts_with("configs/bin: not UTF-8")));
        assert!(t
            .warnings()
            .iter()
            .any(|w| w.starts_with("configs/node02/a.cfg: legacy")));
        std::fs::write(d.join("bad.cfg"), "x\n{{ }}").expect("write");
        let e = Templates::compile(Some(d)).expect_err("parse");
        assert!(e.to_string().starts_with("configs/bad.cfg:2: "), "{e}");
    }
}
