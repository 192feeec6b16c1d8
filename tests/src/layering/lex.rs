//! Rust source text → tokens with their line numbers, with every comment and every string or
//! char literal gone, so that a doc mention such as [`crate::admin`] or a log message naming a
//! module never counts as an import. Pure: text in, tokens out.

/// One token of the stripped source. Only what the import scan needs is kept apart:
/// identifiers (keywords included), the path separator `::`, and single punctuation chars.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Tok {
    /// An identifier or keyword (`crate`, `use`, `mod`, `r#type` as `type`).
    Ident(String),
    /// `::`.
    PathSep,
    /// Any other non-blank char (`{`, `}`, `;`, `*`, `#`, `<`, ...).
    Punct(char),
}

/// A token and the 1-based line it starts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Token {
    pub tok: Tok,
    pub line: usize,
}

impl Token {
    /// True for the identifier or keyword `word`.
    pub fn is(&self, word: &str) -> bool {
        matches!(&self.tok, Tok::Ident(s) if s == word)
    }

    /// True for the punctuation char `c`.
    pub fn is_punct(&self, c: char) -> bool {
        self.tok == Tok::Punct(c)
    }
}

fn ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `src` with comments (`//`, `///`, `//!`, nested `/* */`) and literals (strings, byte and C
/// strings, raw strings `r#"…"#`, chars) blanked out. Newlines are kept, so every remaining
/// token stays on its line; lifetimes (`'a`) are left alone.
pub(super) fn strip(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < c.len() {
        let at = |k: usize| c.get(k).copied();
        match c[i] {
            '/' if at(i + 1) == Some('/') => {
                while i < c.len() && c[i] != '\n' {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            '/' if at(i + 1) == Some('*') => {
                // Block comments nest in Rust.
                let mut depth = 0usize;
                while i < c.len() {
                    if c[i] == '/' && at(i + 1) == Some('*') {
                        depth += 1;
                        out.push_str("  ");
                        i += 2;
                    } else if c[i] == '*' && at(i + 1) == Some('/') {
                        depth -= 1;
                        out.push_str("  ");
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        blank(&mut out, c[i]);
                        i += 1;
                    }
                }
            }
            '"' => i = skip_string(&c, i, &mut out),
            '\'' => {
                // A char literal is `'x'` or `'\…'`; anything else is a lifetime or a label.
                let end = if at(i + 1) == Some('\\') {
                    let mut k = i + 3;
                    while k < c.len() && c[k] != '\'' {
                        k += 1;
                    }
                    Some(k)
                } else if at(i + 2) == Some('\'') {
                    Some(i + 2)
                } else {
                    None
                };
                match end {
                    Some(end) => {
                        for &ch in &c[i..=end.min(c.len() - 1)] {
                            blank(&mut out, ch);
                        }
                        i = end + 1;
                    }
                    None => {
                        out.push('\'');
                        i += 1;
                    }
                }
            }
            ch if ident_char(ch) && (i == 0 || !ident_char(c[i - 1])) => {
                match raw_string_start(&c, i) {
                    Some(hashes_at) => i = skip_raw_string(&c, i, hashes_at, &mut out),
                    None => {
                        while i < c.len() && ident_char(c[i]) {
                            out.push(c[i]);
                            i += 1;
                        }
                    }
                }
            }
            ch => {
                out.push(ch);
                i += 1;
            }
        }
    }
    out
}

/// If a raw string (`r"`, `r#"`, `br#"`, `cr"`) starts at `i`, the index of the char after its
/// `r`. `r#ident` (a raw identifier) is not a string.
fn raw_string_start(c: &[char], i: usize) -> Option<usize> {
    let r = match (c.get(i), c.get(i + 1)) {
        (Some('r'), _) => i,
        (Some('b' | 'c'), Some('r')) => i + 1,
        _ => return None,
    };
    let mut k = r + 1;
    while c.get(k) == Some(&'#') {
        k += 1;
    }
    (c.get(k) == Some(&'"')).then_some(r + 1)
}

/// Blanks a raw string whose `#`s start at `hashes_at`; returns the index after it.
fn skip_raw_string(c: &[char], start: usize, hashes_at: usize, out: &mut String) -> usize {
    let mut k = hashes_at;
    while c.get(k) == Some(&'#') {
        k += 1;
    }
    let hashes = k - hashes_at;
    k += 1; // the opening quote
    let end = loop {
        if k >= c.len() {
            break c.len();
        }
        if c[k] == '"' && (1..=hashes).all(|h| c.get(k + h) == Some(&'#')) {
            break k + hashes + 1;
        }
        k += 1;
    };
    for &ch in &c[start..end] {
        out.push(if ch == '\n' { '\n' } else { ' ' });
    }
    end
}

/// Blanks a `"…"` string (escapes honoured) starting at `i`; returns the index after it.
fn skip_string(c: &[char], i: usize, out: &mut String) -> usize {
    let mut k = i + 1;
    while k < c.len() && c[k] != '"' {
        k += if c[k] == '\\' { 2 } else { 1 };
    }
    let end = (k + 1).min(c.len());
    for &ch in &c[i..end] {
        out.push(if ch == '\n' { '\n' } else { ' ' });
    }
    end
}

/// The tokens of already [`strip`]ped text.
pub(super) fn tokens(stripped: &str) -> Vec<Token> {
    let c: Vec<char> = stripped.chars().collect();
    let mut toks = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch.is_ascii_digit() {
            // A number (`0x1F`, `1_000u32`): never part of a path.
            while i < c.len() && ident_char(c[i]) {
                i += 1;
            }
        } else if ident_char(ch) {
            let start = i;
            while i < c.len() && ident_char(c[i]) {
                i += 1;
            }
            let mut word: String = c[start..i].iter().collect();
            // `r#type` is the identifier `type`.
            if word == "r" && c.get(i) == Some(&'#') && c.get(i + 1).is_some_and(|&n| ident_char(n))
            {
                let s = i + 1;
                i = s;
                while i < c.len() && ident_char(c[i]) {
                    i += 1;
                }
                word = c[s..i].iter().collect();
            }
            toks.push(Token {
                tok: Tok::Ident(word),
                line,
            });
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            toks.push(Token {
                tok: Tok::PathSep,
                line,
            });
            i += 2;
        } else {
            toks.push(Token {
                tok: Tok::Punct(ch),
                line,
            });
            i += 1;
        }
    }
    toks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idents(src: &str) -> Vec<String> {
        tokens(&strip(src))
            .into_iter()
            .filter_map(|t| match t.tok {
                Tok::Ident(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn comments_and_literals_are_blanked_and_lines_kept() {
        let src = "a // crate::x\n/* crate::y /* nested */ still */ b\n\"crate::z\\\" q\" c\n\
                   r#\"crate::w \"# d\nbr\"e\" 'x' '\\'' '\\u{1F600}' f<'a>\n/// [`crate::v`]\ng";
        let stripped = strip(src);
        assert_eq!(stripped.lines().count(), src.lines().count());
        assert_eq!(idents(src), ["a", "b", "c", "d", "f", "a", "g"]);
        let g = tokens(&stripped).into_iter().find(|t| t.is("g"));
        assert_eq!(g.map(|t| t.line), Some(7));
    }

    #[test]
    fn raw_identifiers_are_identifiers_not_strings() {
        assert_eq!(idents("r#type::x; r\"s\""), ["type", "x"]);
    }
}
