//! What the daemon's log lines share.

/// The `tracing` target of the one info line per exchange (a DHCP reply, a TFTP transfer or
/// HTTP download as it ends, a boot): `daemon.log = "info,bootfabric::exchange=warn"` keeps
/// the rest of the info lines without them.
pub const EXCHANGE_LOG: &str = "bootfabric::exchange";

/// A string from the network (a TFTP file name, an HTTP path) as a log field: control
/// characters are written escaped (`\n`, `\u{1b}`), so one cannot forge a log line in text
/// format or reach an operator's terminal as an escape sequence; everything else as is.
pub struct Untrusted<'a>(pub &'a str);

impl std::fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        for c in self.0.chars() {
            if c.is_control() {
                for e in c.escape_default() {
                    f.write_char(e)?;
                }
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_from_the_network_are_written_escaped() {
        let forged = "x\n2026-12-02T00:00:00Z  INFO bootfabric::exchange: DHCP ack\u{1b}[2J";
        let shown = Untrusted(forged).to_string();
        assert!(
            !shown.contains('\n') && !shown.contains('\u{1b}'),
            "{shown}"
        );
        assert_eq!(
            shown,
            forged.replace('\n', "\\n").replace('\u{1b}', "\\u{1b}")
        );
        assert_eq!(Untrusted("/débian/linux").to_string(), "/débian/linux");
    }
}
