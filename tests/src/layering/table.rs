//! The layer table of docs/architecture.md: fenced blocks `layers`, `layers-allow` and
//! `anyhow`, read into a [`Table`]. Pure: text in, table or error out.

use std::collections::BTreeSet;

/// One layer: its name and the components (module paths) in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// The layer's name (`model`).
    pub name: String,
    /// Its components, as module paths (`model::ledger`).
    pub components: Vec<String>,
}

/// The layer order, lowest first, and the two rule blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// Layers, lowest first.
    pub layers: Vec<Layer>,
    /// Layers whose components may import each other (still without a circle).
    pub sideways: BTreeSet<String>,
    /// Layers whose files may use `anyhow`.
    pub anyhow: BTreeSet<String>,
}

/// Where a module belongs: its component and that component's layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place<'t> {
    /// The component (`services::dhcp`).
    pub component: &'t str,
    /// Index of its layer in [`Table::layers`] (0 is the lowest).
    pub layer: usize,
}

impl Table {
    /// The component holding `module` (a path from the crate root): the listed component
    /// with the longest matching prefix, so `services::dhcp::server` is in `services::dhcp`.
    pub fn place(&self, module: &[String]) -> Option<Place<'_>> {
        let mut best: Option<(usize, Place<'_>)> = None;
        for (layer, l) in self.layers.iter().enumerate() {
            for component in &l.components {
                let segs: Vec<&str> = component.split("::").collect();
                let matches = segs.len() <= module.len()
                    && segs.iter().zip(module).all(|(a, b)| *a == b.as_str());
                if matches && best.is_none_or(|(len, _)| segs.len() > len) {
                    best = Some((segs.len(), Place { component, layer }));
                }
            }
        }
        best.map(|(_, p)| p)
    }

    /// The name of layer `index`.
    pub fn layer_name(&self, index: usize) -> &str {
        self.layers.get(index).map_or("?", |l| l.name.as_str())
    }
}

/// Why the table could not be read. Line numbers are those of docs/architecture.md.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableError {
    /// There is no ```` ```layers ```` block.
    NoLayersBlock,
    /// A block kind appears twice.
    TwoBlocks {
        /// `layers`, `layers-allow` or `anyhow`.
        block: String,
        /// Line of the second one.
        line: usize,
    },
    /// A block is never closed.
    Unclosed {
        /// The block kind.
        block: String,
        /// Line of its opening fence.
        line: usize,
    },
    /// A line of the `layers` block is not `name: component, component`, or names something
    /// that is not a module path.
    BadLine {
        /// Line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// A layer or a component is listed twice.
    Duplicate {
        /// The name listed twice.
        name: String,
        /// Line of the second listing.
        line: usize,
    },
    /// `layers-allow` or `anyhow` names a layer the `layers` block does not have.
    UnknownLayer {
        /// The block naming it.
        block: String,
        /// The unknown name.
        name: String,
        /// Line number.
        line: usize,
    },
}

impl std::fmt::Display for TableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TableError::NoLayersBlock => write!(f, "no ```layers block (lowest layer first, `name: module::path, …` a line)"),
            TableError::TwoBlocks { block, line } => write!(f, "line {line}: a second ```{block} block; keep one"),
            TableError::Unclosed { block, line } => write!(f, "line {line}: the ```{block} block is never closed"),
            TableError::BadLine { line, text } => write!(
                f,
                "line {line}: `{text}` is not `layer: module::path, module::path` (names are Rust identifiers)"
            ),
            TableError::Duplicate { name, line } => write!(f, "line {line}: `{name}` is listed a second time"),
            TableError::UnknownLayer { block, name, line } => write!(
                f,
                "line {line}: the ```{block} block names `{name}`, which is no layer of the ```layers block"
            ),
        }
    }
}

impl std::error::Error for TableError {}

/// A fenced block of one of the three kinds.
struct Block {
    /// `layers`, `layers-allow` or `anyhow`.
    kind: String,
    /// Line of the opening fence.
    line: usize,
    /// Its non-empty lines, comments removed, with their line numbers.
    lines: Vec<(usize, String)>,
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_')
}

fn is_module_path(s: &str) -> bool {
    s.split("::").all(is_ident)
}

/// Reads the table from the text of docs/architecture.md. Blocks may sit anywhere in the
/// document; inside them, blank lines and everything from a `#` on are ignored.
pub fn parse_table(doc: &str) -> Result<Table, TableError> {
    let mut blocks: Vec<Block> = Vec::new();
    let mut open: Option<Block> = None;
    for (n, raw) in doc.lines().enumerate() {
        let n = n + 1;
        let trimmed = raw.trim();
        match &mut open {
            None => {
                if let Some(kind) = trimmed.strip_prefix("```") {
                    if ["layers", "layers-allow", "anyhow"].contains(&kind) {
                        if blocks.iter().any(|b| b.kind == kind) {
                            return Err(TableError::TwoBlocks {
                                block: kind.to_owned(),
                                line: n,
                            });
                        }
                        open = Some(Block {
                            kind: kind.to_owned(),
                            line: n,
                            lines: Vec::new(),
                        });
                    }
                }
            }
            Some(Block { lines, .. }) => {
                if trimmed.starts_with("```") {
                    blocks.extend(open.take());
                } else {
                    let text = trimmed.split('#').next().unwrap_or("").trim();
                    if !text.is_empty() {
                        lines.push((n, text.to_owned()));
                    }
                }
            }
        }
    }
    if let Some(Block { kind, line, .. }) = open {
        return Err(TableError::Unclosed { block: kind, line });
    }
    let block = |kind: &str| blocks.iter().find(|b| b.kind == kind).map(|b| &b.lines);

    let mut layers: Vec<Layer> = Vec::new();
    let mut seen = BTreeSet::new();
    for (line, text) in block("layers").ok_or(TableError::NoLayersBlock)? {
        let bad = || TableError::BadLine {
            line: *line,
            text: text.clone(),
        };
        let (name, list) = text.split_once(':').ok_or_else(bad)?;
        let name = name.trim();
        if !is_ident(name) || list.starts_with(':') {
            return Err(bad());
        }
        let components: Vec<String> = list.split(',').map(|c| c.trim().to_owned()).collect();
        if components.iter().any(|c| !is_module_path(c)) {
            return Err(bad());
        }
        for n in std::iter::once(format!("layer {name}")).chain(components.iter().cloned()) {
            if !seen.insert(n.clone()) {
                return Err(TableError::Duplicate {
                    name: n,
                    line: *line,
                });
            }
        }
        layers.push(Layer {
            name: name.to_owned(),
            components,
        });
    }
    let names = |kind: &str| -> Result<BTreeSet<String>, TableError> {
        let mut out = BTreeSet::new();
        for (line, text) in block(kind).into_iter().flatten() {
            for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if !layers.iter().any(|l| l.name == name) {
                    return Err(TableError::UnknownLayer {
                        block: kind.to_owned(),
                        name: name.to_owned(),
                        line: *line,
                    });
                }
                out.insert(name.to_owned());
            }
        }
        Ok(out)
    };
    Ok(Table {
        sideways: names("layers-allow")?,
        anyhow: names("anyhow")?,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# Architecture\n\n## Layers\n\n```layers\n# lowest first\nutil: util::xorshift, util::metrics\nmodel: model::ledger,model::boot   # shared core\n\nservices: services::dhcp, services\n```\n\n```layers-allow\nmodel\n```\n```anyhow\nservices\n```\n";

    fn module(path: &str) -> Vec<String> {
        path.split("::").map(str::to_owned).collect()
    }

    #[test]
    fn reads_layers_in_order_with_comments_and_blank_lines() {
        let t = parse_table(DOC).expect("table");
        let names: Vec<&str> = t.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["util", "model", "services"]);
        assert_eq!(t.layers[1].components, ["model::ledger", "model::boot"]);
        assert!(t.sideways.contains("model") && t.sideways.len() == 1);
        assert!(t.anyhow.contains("services"));
    }

    #[test]
    fn the_longest_listed_prefix_is_the_component() {
        let t = parse_table(DOC).expect("table");
        let p = t.place(&module("services::dhcp::server")).expect("placed");
        assert_eq!((p.component, p.layer), ("services::dhcp", 2));
        assert_eq!(
            t.place(&module("services::ra")).map(|p| p.component),
            Some("services")
        );
        assert_eq!(t.place(&module("model")), None);
        assert_eq!(t.place(&module("model::ledgers")), None);
    }

    #[test]
    fn mistakes_in_the_table_are_named_with_their_line() {
        let dup = "```layers\na: x\nb: x\n```";
        assert_eq!(
            parse_table(dup),
            Err(TableError::Duplicate {
                name: "x".into(),
                line: 3
            })
        );
        let bad = "```layers\na x\n```";
        assert!(matches!(
            parse_table(bad),
            Err(TableError::BadLine { line: 2, .. })
        ));
        let path = "```layers\na: x::-y\n```";
        assert!(matches!(
            parse_table(path),
            Err(TableError::BadLine { line: 2, .. })
        ));
        let unknown = "```layers\na: x\n```\n```anyhow\ncommands\n```";
        assert!(matches!(
            parse_table(unknown),
            Err(TableError::UnknownLayer { line: 5, .. })
        ));
        assert_eq!(parse_table("no table"), Err(TableError::NoLayersBlock));
        assert!(matches!(
            parse_table("```layers\na: x\n"),
            Err(TableError::Unclosed { line: 1, .. })
        ));
    }
}
