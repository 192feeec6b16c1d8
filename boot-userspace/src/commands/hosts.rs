//! `bootfabric hosts ls|show|add|set|rm`: the inventory through the running daemon's admin
//! API (`/api/v1/hosts`), so a change takes effect without a restart and is checked by the
//! very code that checks the file. `hosts` alone is `hosts ls`; when no daemon answers,
//! `ls` lists the local inventory instead, with a note on stderr (the offline `hosts` of
//! old).
//!
//! The argument → request mapping ([`list_path`], [`add_body`], [`set_patch`]) is pure and
//! unit-tested; `run` is the I/O shell. `--output json` prints the API's documents as they
//! came, every field; offline, `ls` builds them with the server's own code
//! ([`crate::admin::hosts::listing`], the overlay of `state_dir` applied), so `source`,
//! `netboot_state` and the filters mean what they mean in the API. The table reads them
//! as [`HostList`] / [`HostDoc`].
//!
//! Exit codes: 0 done, 1 the API refused or could not be reached, 2 usage or config.

use std::{collections::BTreeMap, io::Read as _, path::PathBuf};

use anyhow::{anyhow, Context as _};
use hyper::{
    body::Bytes,
    header::{HeaderName, HeaderValue, CONTENT_TYPE, IF_MATCH},
    Method,
};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::{
    admin,
    commands::client::{
        load_config, printable, problem_line, runtime, AdminClient, CallError, ClientArgs,
        SetupError,
    },
    commands::output::{self, Output},
    config::{overlay::Overlay, Config},
    model::inventory::Inventory,
};

/// Arguments of `bootfabric hosts`: a subcommand, or those of `ls`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct HostsArgs {
    /// What to do (default: ls).
    #[command(subcommand)]
    pub command: Option<HostsCommand>,
    /// `hosts` alone lists, as `hosts ls`.
    #[command(flatten)]
    pub ls: LsArgs,
}

/// `bootfabric hosts` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum HostsCommand {
    /// List hosts (from the daemon; from the local inventory when no daemon answers).
    Ls(LsArgs),
    /// Print one host.
    Show(ShowArgs),
    /// Create a host.
    Add(AddArgs),
    /// Change some fields of a host (a JSON merge patch, against the host as last read).
    Set(SetArgs),
    /// Delete a host.
    Rm(RmArgs),
}

/// `netboot` as an argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NetbootArg {
    /// Every boot is a network boot.
    Allow,
    /// The next network boot only; later ones boot from disk.
    Once,
    /// Never a network boot.
    Deny,
}

impl NetbootArg {
    fn wire(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Once => "once",
            Self::Deny => "deny",
        }
    }
}

/// `KEY=VALUE`, as `--meta` takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key (the API checks it is an identifier).
    pub key: String,
    /// The value, a string.
    pub value: String,
}

fn key_value(s: &str) -> Result<KeyValue, String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok(KeyValue {
            key: k.to_owned(),
            value: v.to_owned(),
        }),
        _ => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}

/// Arguments of `hosts ls`.
#[derive(Clone, Debug, clap::Args)]
pub struct LsArgs {
    /// How to reach the daemon.
    #[command(flatten)]
    pub api: ClientArgs,
    /// Only hosts of this profile.
    #[arg(long)]
    pub profile: Option<String>,
    /// Only hosts in this rack.
    #[arg(long)]
    pub rack: Option<String>,
    /// Only hosts of this hardware model.
    #[arg(long)]
    pub model: Option<String>,
    /// Only hosts with this netboot setting.
    #[arg(long, value_enum)]
    pub netboot: Option<NetbootArg>,
    /// Only hosts whose meta KEY is VALUE (repeat: all must match).
    #[arg(long, value_parser = key_value)]
    pub meta: Vec<KeyValue>,
    /// table or json.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

/// Arguments of `hosts show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// How to reach the daemon.
    #[command(flatten)]
    pub api: ClientArgs,
    /// The host.
    pub name: String,
    /// table or json.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

/// Arguments of `hosts add`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// How to reach the daemon.
    #[command(flatten)]
    pub api: ClientArgs,
    /// The host's name.
    pub name: String,
    /// MAC address of its boot NIC.
    #[arg(long)]
    pub mac: Option<String>,
    /// Its reserved address.
    #[arg(long)]
    pub ip: Option<String>,
    /// Its boot profile.
    #[arg(long)]
    pub profile: Option<String>,
    /// Its rack.
    #[arg(long)]
    pub rack: Option<String>,
    /// Its hardware model.
    #[arg(long)]
    pub model: Option<String>,
    /// Whether it may boot from the network.
    #[arg(long, value_enum)]
    pub netboot: Option<NetbootArg>,
    /// A metadata entry, KEY=VALUE (a string; repeat).
    #[arg(long, value_parser = key_value)]
    pub meta: Vec<KeyValue>,
    /// The host as a JSON document (the API's form) from FILE, or stdin with `-`; the
    /// options above override its fields.
    #[arg(long, value_name = "FILE|-")]
    pub from_json: Option<PathBuf>,
}

/// Arguments of `hosts set`.
#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// How to reach the daemon.
    #[command(flatten)]
    pub api: ClientArgs,
    /// The host.
    pub name: String,
    /// New boot profile.
    #[arg(long)]
    pub profile: Option<String>,
    /// New netboot setting.
    #[arg(long, value_enum)]
    pub netboot: Option<NetbootArg>,
    /// Set a metadata entry, KEY=VALUE (a string; repeat).
    #[arg(long, value_parser = key_value)]
    pub meta: Vec<KeyValue>,
    /// Remove a metadata entry (repeat).
    #[arg(long, value_name = "KEY")]
    pub unset_meta: Vec<String>,
    /// New reserved address.
    #[arg(long, conflicts_with = "no_ip")]
    pub ip: Option<String>,
    /// Drop the reserved address (the host takes one from the pool).
    #[arg(long)]
    pub no_ip: bool,
    /// New rack.
    #[arg(long)]
    pub rack: Option<String>,
    /// New hardware model.
    #[arg(long)]
    pub model: Option<String>,
}

/// Arguments of `hosts rm`.
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// How to reach the daemon.
    #[command(flatten)]
    pub api: ClientArgs,
    /// The host.
    pub name: String,
}

/// One host, as the API sends it and `--output json` prints it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostDoc {
    /// Name.
    pub name: String,
    /// MAC of its boot NIC.
    pub mac: String,
    /// Reserved address.
    #[serde(default)]
    pub ip: Option<String>,
    /// Boot profile.
    pub profile: String,
    /// Other profiles of its menu.
    #[serde(default)]
    pub menu: Vec<String>,
    /// Hardware model.
    #[serde(default)]
    pub model: Option<String>,
    /// Rack.
    #[serde(default)]
    pub rack: Option<String>,
    /// `allow`, `once` or `deny`.
    #[serde(default = "allow")]
    pub netboot: String,
    /// Free metadata.
    #[serde(default)]
    pub meta: BTreeMap<String, Value>,
    /// Its BMC, as the API describes it.
    #[serde(default)]
    pub bmc: Option<Value>,
    /// `file` or `api`: where the host is defined.
    #[serde(default)]
    pub source: Option<String>,
    /// `consumed` once a `once` host has booted.
    #[serde(default)]
    pub netboot_state: Option<String>,
}

fn allow() -> String {
    "allow".to_owned()
}

/// A listing, as the API sends it and `hosts ls --output json` prints it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostList {
    /// The configuration generation listed; `null` offline (the local file has none).
    #[serde(default)]
    pub generation: Option<u64>,
    /// The hosts.
    pub items: Vec<HostDoc>,
}

/// Characters left as they are in a query component (RFC 3986 unreserved).
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A path segment or query component, escaped.
fn esc(s: &str) -> String {
    utf8_percent_encode(s, QUERY).to_string()
}

/// The listing's filters as the API's query pairs (`profile`, `meta.role`, …): the query of
/// [`list_path`], and what the offline listing filters with (the server's own filter).
pub fn list_query(args: &LsArgs) -> Vec<(String, String)> {
    let mut query = Vec::new();
    let mut push = |k: &str, v: &str| query.push((k.to_owned(), v.to_owned()));
    if let Some(p) = &args.profile {
        push("profile", p);
    }
    if let Some(r) = &args.rack {
        push("rack", r);
    }
    if let Some(m) = &args.model {
        push("model", m);
    }
    if let Some(n) = args.netboot {
        push("netboot", n.wire());
    }
    for kv in &args.meta {
        push(&format!("meta.{}", kv.key), &kv.value);
    }
    query
}

/// The listing's path with its filters: `/api/v1/hosts?profile=p&meta.role=worker`.
pub fn list_path(args: &LsArgs) -> String {
    let query: Vec<String> = list_query(args)
        .iter()
        .map(|(k, v)| format!("{}={}", esc(k), esc(v)))
        .collect();
    if query.is_empty() {
        "/api/v1/hosts".to_owned()
    } else {
        format!("/api/v1/hosts?{}", query.join("&"))
    }
}

/// One host's path.
pub fn host_path(name: &str) -> String {
    format!("/api/v1/hosts/{}", esc(name))
}

/// The body of `hosts add`: `--from-json`'s document (if any) with the options laid over it.
pub fn add_body(args: &AddArgs, base: Option<Value>) -> Result<Value, String> {
    let mut doc = match base {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err("--from-json: expected a JSON object".to_owned()),
    };
    match doc.get("name") {
        Some(Value::String(n)) if *n != args.name => {
            return Err(format!(
                "--from-json names the host {n:?}, the command line {:?}",
                args.name
            ))
        }
        Some(Value::String(_)) | None => {}
        Some(_) => return Err("--from-json: name must be a string".to_owned()),
    }
    doc.insert("name".into(), Value::String(args.name.clone()));
    let mut set = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            doc.insert(k.into(), Value::String(v.clone()));
        }
    };
    set("mac", &args.mac);
    set("ip", &args.ip);
    set("profile", &args.profile);
    set("rack", &args.rack);
    set("model", &args.model);
    if let Some(n) = args.netboot {
        doc.insert("netboot".into(), Value::String(n.wire().into()));
    }
    if !args.meta.is_empty() {
        let meta = doc
            .entry("meta")
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(meta) = meta else {
            return Err("--from-json: meta must be an object".to_owned());
        };
        for kv in &args.meta {
            meta.insert(kv.key.clone(), Value::String(kv.value.clone()));
        }
    }
    for required in ["mac", "profile"] {
        if !doc.contains_key(required) {
            return Err(format!("--{required} is required (or in --from-json)"));
        }
    }
    Ok(Value::Object(doc))
}

/// The JSON merge patch (RFC 7396) of `hosts set`; `None` when it changes nothing.
pub fn set_patch(args: &SetArgs) -> Result<Option<Value>, String> {
    let mut patch = Map::new();
    let mut set = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            patch.insert(k.into(), Value::String(v.clone()));
        }
    };
    set("profile", &args.profile);
    set("ip", &args.ip);
    set("rack", &args.rack);
    set("model", &args.model);
    if args.no_ip {
        patch.insert("ip".into(), Value::Null);
    }
    if let Some(n) = args.netboot {
        patch.insert("netboot".into(), Value::String(n.wire().into()));
    }
    let mut meta = Map::new();
    for kv in &args.meta {
        meta.insert(kv.key.clone(), Value::String(kv.value.clone()));
    }
    for key in &args.unset_meta {
        if args.meta.iter().any(|kv| kv.key == *key) {
            return Err(format!("--meta and --unset-meta both name {key:?}"));
        }
        // null deletes the key in a merge patch.
        meta.insert(key.clone(), Value::Null);
    }
    if !meta.is_empty() {
        patch.insert("meta".into(), Value::Object(meta));
    }
    Ok((!patch.is_empty()).then_some(Value::Object(patch)))
}

/// The local inventory (with the API's overlay from `state_dir`) as the API would list it
/// under `query`, for `ls` when no daemon answers: the server's own filter and documents.
pub fn local_list(inventory: &Inventory, overlay: &Overlay, query: &[(String, String)]) -> Value {
    json!({
        "generation": null,
        "items": admin::hosts::listing(inventory, overlay, query),
    })
}

/// The listing as columns.
pub fn table(hosts: &[HostDoc]) -> String {
    let mut out = format!(
        "{:<24} {:<17} {:<15} {:<16} {:<7} META\n",
        "NAME", "MAC", "IP", "PROFILE", "NETBOOT"
    );
    for h in hosts {
        let meta = h
            .meta
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(",");
        let line = format!(
            "{:<24} {:<17} {:<15} {:<16} {:<7} {}",
            h.name,
            h.mac,
            h.ip.as_deref().unwrap_or("-"),
            h.profile,
            h.netboot,
            if meta.is_empty() { "-" } else { &meta },
        );
        out.push_str(printable(line.trim_end()).as_str());
        out.push('\n');
    }
    out
}

/// One host as `key: value` lines.
pub fn details(h: &HostDoc) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| out.push_str(&format!("{k:<14} {}\n", printable(v)));
    line("name", &h.name);
    line("mac", &h.mac);
    line("ip", h.ip.as_deref().unwrap_or("-"));
    line("profile", &h.profile);
    if !h.menu.is_empty() {
        line("menu", &h.menu.join(", "));
    }
    line("model", h.model.as_deref().unwrap_or("-"));
    line("rack", h.rack.as_deref().unwrap_or("-"));
    let state = h
        .netboot_state
        .as_deref()
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    line("netboot", &format!("{}{state}", h.netboot));
    for (k, v) in &h.meta {
        let v = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        line(&format!("meta.{k}"), &v);
    }
    if let Some(bmc) = &h.bmc {
        line("bmc", &bmc.to_string());
    }
    if let Some(source) = &h.source {
        line("source", source);
    }
    out
}

/// Runs `bootfabric hosts …`; returns the exit code.
pub fn run(args: HostsArgs) -> i32 {
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bootfabric: {e:#}");
            return 1;
        }
    };
    let command = args.command.unwrap_or(HostsCommand::Ls(args.ls));
    let api = match &command {
        HostsCommand::Ls(a) => &a.api,
        HostsCommand::Show(a) => &a.api,
        HostsCommand::Add(a) => &a.api,
        HostsCommand::Set(a) => &a.api,
        HostsCommand::Rm(a) => &a.api,
    };
    let (cfg, client) = match load_config(api)
        .and_then(|cfg| AdminClient::new(cfg.as_ref(), api).map(|c| (cfg, c)))
    {
        Ok(c) => c,
        Err(SetupError::Usage(why)) => {
            eprintln!("bootfabric: {why}");
            return 2;
        }
        Err(SetupError::Other(e)) => {
            eprintln!("bootfabric: {e:#}");
            return 1;
        }
    };
    let result = runtime.block_on(async {
        match &command {
            HostsCommand::Ls(a) => ls(&client, cfg.as_ref(), a).await,
            HostsCommand::Show(a) => show(&client, a).await,
            HostsCommand::Add(a) => add(&client, a).await,
            HostsCommand::Set(a) => set(&client, a).await,
            HostsCommand::Rm(a) => rm(&client, a).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bootfabric: {e:#}");
            1
        }
    }
}

/// Prints `reply` as a problem line; returns the exit code for it.
fn refused(status: u16, body: &[u8]) -> i32 {
    eprintln!("{}", problem_line(status, body));
    1
}

fn print_json<T: Serialize>(doc: &T) -> anyhow::Result<()> {
    print!("{}", output::json(doc).context("encoding the output")?);
    Ok(())
}

async fn ls(client: &AdminClient, cfg: Option<&Config>, args: &LsArgs) -> anyhow::Result<i32> {
    // The API's document as it came: `--output json` passes it through (every field the
    // API sends, `options` too); the table reads its columns from it.
    let doc: Value = match client.send(Method::GET, &list_path(args), &[], None).await {
        Ok(r) if r.ok() => serde_json::from_slice(&r.body).context("the admin API's host list")?,
        Ok(r) => return Ok(refused(r.status, &r.body)),
        Err(CallError::Unreachable(why)) => {
            let Some(cfg) = cfg else {
                return Err(anyhow!("{why}"));
            };
            eprintln!(
                "bootfabric: {why}; listing the local inventory of {} instead",
                cfg.path.display()
            );
            let overlay = Overlay::load(&Overlay::path_for(&cfg.state_dir, cfg.cluster.is_some()))?;
            local_list(&cfg.inventory, &overlay, &list_query(args))
        }
        Err(e) => return Err(anyhow!("{e}")),
    };
    match args.output {
        Output::Json => print_json(&doc)?,
        Output::Table => {
            let list: HostList =
                serde_json::from_value(doc).context("the admin API's host list")?;
            print!("{}", table(&list.items));
        }
    }
    Ok(0)
}

/// GETs one host: its document (as the API sent it) and ETag, or the exit code of the refusal.
async fn get(
    client: &AdminClient,
    name: &str,
) -> anyhow::Result<Result<(Value, Option<HeaderValue>), i32>> {
    let r = client
        .send(Method::GET, &host_path(name), &[], None)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    if !r.ok() {
        return Ok(Err(refused(r.status, &r.body)));
    }
    let doc = serde_json::from_slice(&r.body).context("the admin API's host")?;
    Ok(Ok((doc, r.etag)))
}

async fn show(client: &AdminClient, args: &ShowArgs) -> anyhow::Result<i32> {
    let doc = match get(client, &args.name).await? {
        Ok((doc, _)) => doc,
        Err(code) => return Ok(code),
    };
    match args.output {
        // Passed through: every field the API sends.
        Output::Json => print_json(&doc)?,
        Output::Table => {
            let host: HostDoc = serde_json::from_value(doc).context("the admin API's host")?;
            print!("{}", details(&host));
        }
    }
    Ok(0)
}

async fn add(client: &AdminClient, args: &AddArgs) -> anyhow::Result<i32> {
    let base = match &args.from_json {
        None => None,
        Some(path) => {
            let text = if path.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("reading stdin")?;
                s
            } else {
                std::fs::read_to_string(path)
                    .with_context(|| format!("--from-json {}", path.display()))?
            };
            match serde_json::from_str(&text) {
                Ok(v) => Some(v),
                Err(e) => {
                    eprintln!("bootfabric: --from-json {}: {e}", path.display());
                    return Ok(2);
                }
            }
        }
    };
    let body = match add_body(args, base) {
        Ok(b) => b,
        Err(why) => {
            eprintln!("bootfabric: {why}");
            return Ok(2);
        }
    };
    let body = Bytes::from(serde_json::to_vec(&body).context("encoding the host")?);
    let r = client
        .send(Method::POST, "/api/v1/hosts", &[], Some(body))
        .await
        .map_err(|e| anyhow!("{e}"))?;
    if !r.ok() {
        return Ok(refused(r.status, &r.body));
    }
    eprintln!("{}", written("added", &args.name, r.generation));
    Ok(0)
}

fn written(what: &str, name: &str, generation: Option<u64>) -> String {
    match generation {
        Some(g) => format!("{what} {}: generation {g}", printable(name)),
        None => format!("{what} {}", printable(name)),
    }
}

const MERGE_PATCH: &str = "application/merge-patch+json";

async fn set(client: &AdminClient, args: &SetArgs) -> anyhow::Result<i32> {
    let patch = match set_patch(args) {
        Ok(Some(p)) => p,
        Ok(None) => {
            eprintln!("bootfabric: nothing to change (see `bootfabric hosts set --help`)");
            return Ok(2);
        }
        Err(why) => {
            eprintln!("bootfabric: {why}");
            return Ok(2);
        }
    };
    let body = Bytes::from(serde_json::to_vec(&patch).context("encoding the patch")?);
    // The patch applies to the host as read: If-Match makes a change someone else made in
    // between a 412 rather than a silent overwrite. Read again and retry once; a host that
    // keeps changing is reported, not fought over.
    for attempt in 0..2 {
        let etag = match get(client, &args.name).await? {
            Ok((_, Some(etag))) => etag,
            Ok((_, None)) => return Err(anyhow!("the admin API sent no ETag for {}", args.name)),
            Err(code) => return Ok(code),
        };
        let headers: [(HeaderName, HeaderValue); 2] = [
            (CONTENT_TYPE, HeaderValue::from_static(MERGE_PATCH)),
            (IF_MATCH, etag),
        ];
        let r = client
            .send(
                Method::PATCH,
                &host_path(&args.name),
                &headers,
                Some(body.clone()),
            )
            .await
            .map_err(|e| anyhow!("{e}"))?;
        if r.status == 412 && attempt == 0 {
            continue;
        }
        if !r.ok() {
            return Ok(refused(r.status, &r.body));
        }
        eprintln!("{}", written("changed", &args.name, r.generation));
        return Ok(0);
    }
    unreachable!("the second attempt returns")
}

async fn rm(client: &AdminClient, args: &RmArgs) -> anyhow::Result<i32> {
    // `rm NAME` removes the host whatever it is now: `*` is "any current version".
    let headers = [(IF_MATCH, HeaderValue::from_static("*"))];
    let r = client
        .send(Method::DELETE, &host_path(&args.name), &headers, None)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    if !r.ok() {
        return Ok(refused(r.status, &r.body));
    }
    eprintln!("{}", written("removed", &args.name, r.generation));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use serde_json::json;

    use super::*;
    use crate::commands::{Cli, Command};

    fn parse(args: &[&str]) -> HostsArgs {
        let mut all = vec!["bootfabric", "hosts"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all).map(|c| c.command) {
            Ok(Command::Hosts(h)) => *h,
            Ok(other) => panic!("parsed as {other:?}"),
            Err(e) => panic!("{e}"),
        }
    }

    fn ls_of(args: &[&str]) -> LsArgs {
        match parse(args) {
            HostsArgs {
                command: Some(HostsCommand::Ls(a)),
                ..
            } => a,
            HostsArgs { command: None, ls } => ls,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        // clap's own checks (duplicate flags, bad `requires`/`conflicts_with` targets) over
        // every command, the flattened client arguments included.
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn hosts_alone_is_ls_and_keeps_its_config_option() {
        let a = ls_of(&["--config", "x.toml"]);
        assert_eq!(a.api.config, PathBuf::from("x.toml"));
        assert_eq!(list_path(&a), "/api/v1/hosts");
        let a = ls_of(&["ls", "--config", "y.toml", "--output", "json"]);
        assert_eq!(a.api.config, PathBuf::from("y.toml"));
        assert_eq!(a.output, Output::Json);
        // Listing options and a subcommand do not mix.
        let all = ["bootfabric", "hosts", "--profile", "p", "show", "n1"];
        assert!(Cli::try_parse_from(all).is_err());
    }

    #[test]
    fn listing_filters_become_escaped_query_parameters() {
        let a = ls_of(&[
            "ls",
            "--profile",
            "p 1",
            "--rack",
            "r/2",
            "--netboot",
            "once",
            "--meta",
            "role=worker&x",
            "--meta",
            "zone=a=b",
        ]);
        assert_eq!(
            list_path(&a),
            "/api/v1/hosts?profile=p%201&rack=r%2F2&netboot=once&meta.role=worker%26x&meta.zone=a%3Db"
        );
        assert_eq!(host_path("../x"), "/api/v1/hosts/..%2Fx");
        let all = ["bootfabric", "hosts", "ls", "--meta", "novalue"];
        assert!(Cli::try_parse_from(all).is_err());
    }

    fn add_of(args: &[&str]) -> AddArgs {
        let mut all = vec!["add"];
        all.extend_from_slice(args);
        match parse(&all).command {
            Some(HostsCommand::Add(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn add_maps_options_onto_the_host_document() {
        let a = add_of(&[
            "n1",
            "--mac",
            "52:54:00:00:00:01",
            "--ip",
            "10.0.0.5",
            "--profile",
            "p",
            "--rack",
            "r1",
            "--netboot",
            "once",
            "--meta",
            "role=worker",
            "--meta",
            "n=3",
        ]);
        assert_eq!(
            add_body(&a, None),
            Ok(
                json!({"name": "n1", "mac": "52:54:00:00:00:01", "ip": "10.0.0.5",
                      "profile": "p", "rack": "r1", "netboot": "once",
                      "meta": {"role": "worker", "n": "3"}})
            )
        );
        // Without --from-json, mac and profile are required.
        let a = add_of(&["n1", "--mac", "52:54:00:00:00:01"]);
        assert_eq!(
            add_body(&a, None),
            Err("--profile is required (or in --from-json)".to_owned())
        );
    }

    #[test]
    fn add_lays_options_over_the_json_document_and_refuses_another_name() {
        let a = add_of(&["n1", "--profile", "q", "--meta", "role=db"]);
        let base = json!({"mac": "52:54:00:00:00:01", "profile": "p",
                          "meta": {"role": "worker", "tier": 2}});
        assert_eq!(
            add_body(&a, Some(base)),
            Ok(
                json!({"name": "n1", "mac": "52:54:00:00:00:01", "profile": "q",
                      "meta": {"role": "db", "tier": 2}})
            )
        );
        let err = add_body(&a, Some(json!({"name": "n2", "mac": "m", "profile": "p"})));
        assert!(err.is_err_and(|e| e.contains("n2")));
        assert!(add_body(&a, Some(json!([1]))).is_err());
        assert!(add_body(&a, Some(json!({"mac": "m", "meta": 3}))).is_err());
    }

    fn set_of(args: &[&str]) -> SetArgs {
        let mut all = vec!["set"];
        all.extend_from_slice(args);
        match parse(&all).command {
            Some(HostsCommand::Set(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn set_builds_a_merge_patch_where_null_removes() {
        let a = set_of(&[
            "n1",
            "--profile",
            "p2",
            "--netboot",
            "deny",
            "--meta",
            "role=db",
            "--unset-meta",
            "old",
            "--no-ip",
        ]);
        assert_eq!(
            set_patch(&a),
            Ok(Some(json!({"profile": "p2", "netboot": "deny", "ip": null,
                           "meta": {"role": "db", "old": null}})))
        );
        assert_eq!(
            set_patch(&set_of(&["n1", "--ip", "10.0.0.9"])),
            Ok(Some(json!({"ip": "10.0.0.9"})))
        );
        assert_eq!(set_patch(&set_of(&["n1"])), Ok(None));
        assert!(set_patch(&set_of(&["n1", "--meta", "a=1", "--unset-meta", "a"])).is_err());
        let all = [
            "bootfabric",
            "hosts",
            "set",
            "n1",
            "--ip",
            "10.0.0.9",
            "--no-ip",
        ];
        assert!(Cli::try_parse_from(all).is_err());
    }

    /// A loopback HTTP server answering each request with the next of `answers` (status,
    /// ETag) and recording what it was sent (method, If-Match, Content-Type, body).
    async fn server(
        answers: Vec<(u16, &'static str)>,
    ) -> (
        std::net::SocketAddr,
        std::sync::Arc<std::sync::Mutex<Vec<(String, String, String, String)>>>,
    ) {
        use http_body_util::{BodyExt as _, Full};
        use hyper::{server::conn::http1, service::service_fn, Request, Response};
        use std::sync::{Arc, Mutex};
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            let mut answers = answers.into_iter();
            while let Ok((tcp, _)) = listener.accept().await {
                let Some((status, etag)) = answers.next() else {
                    return;
                };
                let log = Arc::clone(&log);
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let log = Arc::clone(&log);
                    async move {
                        let header = |n: HeaderName| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned()
                        };
                        let (method, if_match, media) = (
                            req.method().to_string(),
                            header(IF_MATCH),
                            header(CONTENT_TYPE),
                        );
                        let body = match req.into_body().collect().await {
                            Ok(b) => b.to_bytes(),
                            Err(_) => Bytes::new(),
                        };
                        if let Ok(mut l) = log.lock() {
                            l.push((
                                method,
                                if_match,
                                media,
                                String::from_utf8_lossy(&body).into(),
                            ));
                        }
                        let host = r#"{"name":"n1","mac":"52:54:00:00:00:01","profile":"p"}"#;
                        Response::builder()
                            .status(status)
                            .header("ETag", etag)
                            .header("Bootfabric-Generation", "7")
                            .body(Full::new(Bytes::from(host)))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            }
        });
        (addr, seen)
    }

    fn client_for(addr: std::net::SocketAddr) -> AdminClient {
        let args = ClientArgs {
            config: PathBuf::from("/nonexistent/bootfabric.toml"),
            admin: Some(addr),
            token_file: None,
            client_cert: None,
            client_key: None,
        };
        match AdminClient::new(None, &args) {
            Ok(c) => c,
            Err(e) => panic!("{e:?}"),
        }
    }

    #[tokio::test]
    async fn set_rereads_and_retries_once_on_412_then_gives_up() {
        let args = set_of(&["n1", "--netboot", "deny"]);
        // GET (v1), PATCH 412 (someone else wrote), GET (v2), PATCH 200.
        let (addr, seen) = server(vec![
            (200, "\"v1\""),
            (412, "\"v2\""),
            (200, "\"v2\""),
            (200, "\"v3\""),
        ])
        .await;
        match set(&client_for(addr), &args).await {
            Ok(code) => assert_eq!(code, 0),
            Err(e) => panic!("{e:#}"),
        }
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        let calls: Vec<(&str, &str, &str)> = seen
            .iter()
            .map(|(m, i, c, _)| (m.as_str(), i.as_str(), c.as_str()))
            .collect();
        assert_eq!(
            calls,
            [
                ("GET", "", ""),
                ("PATCH", "\"v1\"", MERGE_PATCH),
                ("GET", "", ""),
                ("PATCH", "\"v2\"", MERGE_PATCH),
            ]
        );
        assert_eq!(seen[1].3, r#"{"netboot":"deny"}"#);

        // Stale twice: reported (exit 1), no third attempt.
        let (addr, seen) = server(vec![
            (200, "\"v1\""),
            (412, "\"v2\""),
            (200, "\"v2\""),
            (412, "\"v3\""),
            (200, "\"v3\""),
        ])
        .await;
        match set(&client_for(addr), &args).await {
            Ok(code) => assert_eq!(code, 1),
            Err(e) => panic!("{e:#}"),
        }
        assert_eq!(seen.lock().map(|s| s.len()).unwrap_or_default(), 4);
    }

    /// The file's `n1` (`once`, consumed) and `n3` (`once`, not consumed) plus the API's
    /// `n2` (`allow`, yet marked consumed), through the overlay as the daemon loads them.
    fn local() -> (Inventory, Overlay) {
        let toml = "[profiles.p]\nkernel = \"k\"\n\
                    [[hosts]]\nname = \"n1\"\nmac = \"52:54:00:00:00:01\"\nprofile = \"p\"\n\
                    rack = \"r1\"\nnetboot = \"once\"\n\
                    meta = { role = \"worker\", u = 12, ok = true }\n\
                    options = { mtu = 9000 }\n\
                    [[hosts]]\nname = \"n3\"\nmac = \"52:54:00:00:00:03\"\nprofile = \"p\"\n\
                    netboot = \"once\"\n";
        let overlay: Overlay = match serde_json::from_value(json!({
            "hosts": {"n2": {"name": "n2", "mac": "52:54:00:00:00:02", "profile": "p",
                             "meta": {"role": "db"}}},
            "consumed": ["n1", "n2"],
        })) {
            Ok(o) => o,
            Err(e) => panic!("{e}"),
        };
        let inv = match toml::from_str(toml)
            .map_err(|e| e.to_string())
            .and_then(|w| {
                crate::config::overlay::effective(
                    std::path::Path::new("hosts.toml"),
                    w,
                    &overlay,
                    std::path::Path::new("api-inventory.json"),
                )
                .map_err(|e| e.to_string())
            }) {
            Ok(i) => i,
            Err(e) => panic!("{e}"),
        };
        (inv, overlay)
    }

    fn names(list: &Value) -> Vec<&str> {
        list["items"]
            .as_array()
            .map(|a| a.iter().filter_map(|h| h["name"].as_str()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn offline_filters_are_the_api_query() {
        let (inv, overlay) = local();
        let ls = |argv: &[&str]| local_list(&inv, &overlay, &list_query(&ls_of(argv)));
        assert_eq!(names(&ls(&["ls"])), ["n1", "n2", "n3"]);
        assert_eq!(
            names(&ls(&["ls", "--profile", "p", "--rack", "r1"])),
            ["n1"]
        );
        assert_eq!(
            names(&ls(&["ls", "--meta", "u=12", "--meta", "ok=true"])),
            ["n1"]
        );
        assert_eq!(names(&ls(&["ls", "--netboot", "allow"])), ["n2"]);
        assert_eq!(names(&ls(&["ls", "--meta", "role=db"])), ["n2"]);
        assert!(names(&ls(&["ls", "--profile", "q"])).is_empty());
        assert!(names(&ls(&["ls", "--model", "r650"])).is_empty());
        assert!(names(&ls(&["ls", "--meta", "missing=x"])).is_empty());
    }

    #[test]
    fn the_api_documents_parse_and_print_back_the_same() {
        let body = json!({"generation": 4, "items": [{
            "name": "n1", "mac": "52:54:00:00:00:01", "ip": null, "profile": "p", "menu": [],
            "model": null, "rack": "r1", "netboot": "once", "meta": {"role": "worker"},
            "bmc": null, "source": "api", "netboot_state": "consumed", "later": "ignored"}]});
        let list: HostList = match serde_json::from_value(body) {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(list.generation, Some(4));
        let again: HostList = match serde_json::to_string(&list)
            .map_err(|e| e.to_string())
            .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
        {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(again, list);
        let text = table(&list.items);
        assert!(text.contains("n1") && text.contains("role=worker") && text.contains("once"));
        let text = details(&list.items[0]);
        assert!(text.contains("netboot        once (consumed)"), "{text}");
        assert!(text.contains("meta.role      worker"), "{text}");
    }

    #[test]
    fn the_local_inventory_lists_as_the_api_would() {
        let (inv, overlay) = local();
        let list = local_list(&inv, &overlay, &[]);
        // Exactly the server's listing, document for document.
        let mut items: Vec<Value> = inv
            .hosts()
            .iter()
            .map(|h| admin::hosts::host_json(&inv, &overlay, h))
            .collect();
        items.sort_by_key(|h| h["name"].as_str().map(str::to_owned));
        assert_eq!(list, json!({"generation": null, "items": items}));
        let by = |n: &str| {
            list["items"]
                .as_array()
                .and_then(|a| a.iter().find(|h| h["name"] == n))
                .cloned()
                .unwrap_or(Value::Null)
        };
        // Where each host comes from, and `consumed` only for a consumed `once` host.
        assert_eq!(by("n1")["source"], "file");
        assert_eq!(by("n2")["source"], "api");
        assert_eq!(by("n1")["netboot_state"], "consumed");
        assert_eq!(by("n3")["netboot_state"], Value::Null);
        // Marked consumed but `allow`: nothing to report.
        assert_eq!(by("n2")["netboot_state"], Value::Null);
        // Every field the API sends is in `--output json`, `options` too.
        assert_eq!(by("n1")["options"]["mtu"], 9000);
        assert_eq!(by("n1")["meta"]["role"], "worker");
        // The table reads the same document.
        let table_list: HostList = match serde_json::from_value(list.clone()) {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        };
        assert!(table(&table_list.items).contains("role=db"));
    }
}
