//! `bootfabric history`: past boots from the boot history on disk (`state_dir/history`),
//! read directly, so it answers with the daemon stopped and shows boots from before any
//! restart.

use std::path::PathBuf;

use crate::{
    commands::output::{self, Output},
    config::Config,
    model::ledger::{
        events::rfc3339,
        history::{boots, Boot, Ending, Line},
        unix_ms,
    },
    services::history,
    util::logs::Untrusted,
};

/// `bootfabric history` arguments.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// Config file (TOML): where the state folder is.
    #[arg(short, long, default_value = "/etc/bootfabric/bootfabric.toml")]
    pub config: PathBuf,
    /// Only this host (its name, or its MAC).
    #[arg(long)]
    pub host: Option<String>,
    /// Only boots that started since: a duration back from now (`90s`, `30m`, `2h`, `7d`)
    /// or an RFC 3339 time (`2026-12-01T08:00:00Z`).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<Since>,
    /// Print the events themselves instead of the boots they make.
    #[arg(long)]
    pub events: bool,
    /// table or json (`{"boots":[{"host","mac","started_ms","ending","seconds","phases","reason","ip"}]}`).
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

/// A `--since`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Since {
    /// This long before now, milliseconds.
    Ago(u64),
    /// From this time, unix milliseconds.
    At(u64),
}

impl Since {
    fn start_ms(self, now_ms: u64) -> u64 {
        match self {
            Self::Ago(ms) => now_ms.saturating_sub(ms),
            Self::At(ms) => ms,
        }
    }
}

/// Reads `--since`.
pub fn parse_since(s: &str) -> Result<Since, String> {
    let s = s.trim();
    let unit = |c: char| match c {
        's' => Some(1_000u64),
        'm' => Some(60_000),
        'h' => Some(3_600_000),
        'd' => Some(86_400_000),
        _ => None,
    };
    if let Some(last) = s.chars().last() {
        if let (Some(ms), Ok(n)) = (unit(last), s[..s.len() - 1].parse::<u64>()) {
            return Ok(Since::Ago(n.saturating_mul(ms)));
        }
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
        .map(Since::At)
        .ok_or_else(|| {
            format!("{s:?}: give a duration (90s, 30m, 2h, 7d) or an RFC 3339 time (2026-12-01T08:00:00Z)")
        })
}

/// `bootfabric history --output json`.
#[derive(serde::Serialize)]
struct BootList<'a> {
    boots: &'a [Boot],
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<&'a [Line]>,
    /// Damaged lines skipped.
    malformed: usize,
}

/// Runs `bootfabric history`; returns the exit code.
pub fn run(args: &HistoryArgs) -> i32 {
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bootfabric: invalid configuration: {e}");
            return 2;
        }
    };
    let dir = history::dir(&config.state_dir);
    let from = args.since.map_or(0, |s| s.start_ms(unix_ms()));
    let host = args.host.as_deref();
    let wanted_mac = host.and_then(|h| h.parse::<crate::model::inventory::Mac>().ok());
    let mut lines = Vec::new();
    let read = history::read(&dir, |line| {
        let matches = match host {
            None => true,
            Some(h) => {
                line.host == h || wanted_mac.is_some_and(|m| line.mac.parse().ok() == Some(m))
            }
        };
        // A boot that began before `--since` may have lines after it; a day's margin keeps
        // those boots whole without holding the whole history in memory.
        if matches && line.at.saturating_add(86_400_000) >= from {
            lines.push(line);
        }
    });
    let stats = match read {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "bootfabric: reading the boot history in {}: {e}",
                dir.display()
            );
            return 1;
        }
    };
    let mut all = boots(&lines);
    all.retain(|b| b.started_ms >= from);
    lines.retain(|l| l.at >= from);
    let text = match args.output {
        Output::Json => output::json(&BootList {
            boots: &all,
            events: args.events.then_some(&lines[..]),
            malformed: stats.malformed,
        })
        .unwrap_or_default(),
        Output::Table if args.events => events_table(&lines),
        Output::Table => boots_table(&all),
    };
    print!("{text}");
    for why in &stats.unreadable {
        eprintln!("bootfabric: boot history file skipped: {why}");
    }
    if stats.malformed > 0 {
        eprintln!(
            "bootfabric: {} damaged lines in {} skipped",
            stats.malformed,
            dir.display()
        );
    }
    0
}

/// The boots as aligned columns, oldest first.
pub fn boots_table(boots: &[Boot]) -> String {
    let mut rows = vec![[
        "STARTED".to_owned(),
        "HOST".to_owned(),
        "MAC".to_owned(),
        "RESULT".to_owned(),
        "SECONDS".to_owned(),
        "PHASES (seconds from start)".to_owned(),
    ]];
    for b in boots {
        let mut phases = b
            .phases
            .iter()
            .map(|(p, s)| format!("{p} {s:.1}"))
            .collect::<Vec<_>>()
            .join(", ");
        if let Some(r) = &b.reason {
            phases.push_str(&format!(" ({})", Untrusted(r)));
        }
        rows.push([
            rfc3339(b.started_ms),
            Untrusted(&b.host).to_string(),
            b.mac.clone(),
            match b.ending {
                Ending::Booted => "booted",
                Ending::Failed => "failed",
                Ending::Open => "open",
            }
            .to_owned(),
            format!("{:.1}", b.seconds),
            phases,
        ]);
    }
    if boots.is_empty() {
        return "no boots in the history\n".to_owned();
    }
    align(&rows)
}

fn events_table(lines: &[Line]) -> String {
    let mut rows = vec![[
        "TIME".to_owned(),
        "HOST".to_owned(),
        "MAC".to_owned(),
        "PHASE".to_owned(),
        "IP".to_owned(),
        "DETAIL".to_owned(),
    ]];
    for l in lines {
        let Some((_, e)) = l.event() else { continue };
        rows.push([
            rfc3339(l.at),
            l.host.clone(),
            l.mac.clone(),
            e.phase().as_str().to_owned(),
            l.ip.map(|ip| ip.to_string()).unwrap_or_default(),
            Untrusted(&e.kind.detail().unwrap_or_default()).to_string(),
        ]);
    }
    align(&rows)
}

fn align<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_reads_durations_and_times_and_says_what_it_wants_otherwise() {
        assert_eq!(parse_since("90s"), Ok(Since::Ago(90_000)));
        assert_eq!(parse_since("2h"), Ok(Since::Ago(7_200_000)));
        assert_eq!(parse_since("7d"), Ok(Since::Ago(604_800_000)));
        assert_eq!(
            parse_since("2026-12-01T08:00:00Z"),
            Ok(Since::At(1_796_112_000_000))
        );
        let e = parse_since("yesterday").expect_err("refused");
        assert!(e.contains("duration") && e.contains("RFC 3339"), "{e}");
        assert!(parse_since("h").is_err());
    }
}
