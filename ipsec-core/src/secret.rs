//! Secrets in configuration files: which fields hold them, and the one place where text
//! that quotes a configuration file is redacted.
//!
//! The values of the fields named in [`SECRET_FIELDS`] (the keys of `[[sa]]` tables) never
//! appear in an error message or a lint finding of this crate, whatever shape the file
//! has, and never in a `Debug` output:
//!
//! * A TOML syntax error quotes the offending source line, with a caret under the
//!   problem. [`toml_error`] renders that quote from a copy of the file in which every
//!   secret value is masked ([`redact_toml`]): the line number, the column and the caret
//!   stay right, the value is gone. Every load path of the crate (policy files, SA files,
//!   cases files) reports TOML errors through it.
//! * Secret fields of `[[sa]]` tables are taken out of the table before the rest is
//!   deserialized, so serde, whose messages quote values ("invalid type: integer
//!   `1234`"), never sees them; a secret of the wrong type is reported by its type alone.
//! * Defence in depth: the errors of a load are scrubbed of any 8 consecutive hex digits
//!   of a secret value of the file before they are returned ([`Scrubber`]).
//!
//! What counts as a secret value is decided on the tokens of the toml crate's own lexer,
//! and errs on the side of masking: on any line where a secret field name appears as a
//! key (bare or quoted, in any letter case and with `-` for `_`, dotted or not, in a table
//! or an inline table, with `=` or without), everything after the name to the end of the
//! line is masked, and further when the value opens a multi-line string, array or
//! inline table; a comment that names a secret field is masked after the name.
//!
//! Memory: the secret strings of `[[sa]]` tables are moved into
//! [`Zeroizing`] storage and a secret of the wrong type is wiped (`take_secret`); hex
//! is decoded in buffers sized once and wiped; decoded keys, SA configurations, key
//! schedules and the AEAD salt are wiped when dropped (see [`crate::sa_file`],
//! [`crate::SaConfig`] and the `crypto` module); files are read with [`read_file`].
//! `tests/freed_secrets.rs` checks this with an allocator that reads every block as it
//! is freed. What this crate cannot reach: the caller's own copy of the text; on a TOML
//! error (syntax, duplicate key, a top-level value of the wrong type), the copy of the
//! whole document the toml crate keeps inside its error value; and, for a secret string
//! written with escape sequences, the toml crate's decoding buffers. Those are freed
//! without being wiped.

use crate::error::ConfigError;
use core::ops::Range;
use std::borrow::Cow;
use toml_parser::Source;
use toml_parser::lexer::{Token, TokenKind};
use zeroize::Zeroize;
/// The string type of [`read_file`]: wiped when dropped (re-exported from `zeroize`).
pub use zeroize::Zeroizing;

/// The TOML keys whose values are secret: SA keys. Every redaction and every wipe of
/// this crate uses this list; a new secret field is added here (and taken out of its
/// table before deserialization, as `sa_file` does for these two).
pub const SECRET_FIELDS: [&str; 2] = ["key", "integrity_key"];

/// The byte that replaces each byte of a masked value.
pub const MASK: u8 = b'*';

/// Whether `name` is a secret field name, loosely: in any letter case and with `-` for
/// `_`, so that misspelt variants (`Key`, `integrity-key`) are masked as well.
pub fn is_secret_field(name: &str) -> bool {
    SECRET_FIELDS.iter().any(|s| same_name(name, s))
}

fn same_name(a: &str, secret: &str) -> bool {
    a.len() == secret.len()
        && a.bytes().zip(secret.bytes()).all(|(x, y)| {
            let x = if x == b'-' {
                b'_'
            } else {
                x.to_ascii_lowercase()
            };
            x == y
        })
}

/// A character that may appear in a bare TOML key.
fn is_bare_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// If `atom` starts with a secret field name followed by something a bare key cannot
/// hold (`key:`, `key"…"`), the length of that name.
fn secret_prefix(atom: &str) -> Option<usize> {
    SECRET_FIELDS.iter().find_map(|s| {
        let head = atom.get(..s.len())?;
        let next = atom.as_bytes().get(s.len()).copied();
        (same_name(head, s) && next.is_some_and(|b| !is_bare_key_byte(b))).then_some(s.len())
    })
}

/// Where masking starts inside a comment that names a secret field: after the name.
fn secret_in_comment(comment: &str) -> Option<usize> {
    let bytes = comment.as_bytes();
    (0..bytes.len()).find_map(|at| {
        if at > 0 && is_bare_key_byte(bytes[at - 1]) {
            return None;
        }
        SECRET_FIELDS.iter().find_map(|s| {
            let end = at + s.len();
            let word = comment.get(at..end)?;
            let boundary = bytes.get(end).is_none_or(|&b| !is_bare_key_byte(b));
            (boundary && same_name(word, s)).then_some(end)
        })
    })
}

/// The lexed text, with the helpers the scan needs.
struct Scan<'t> {
    source: Source<'t>,
    tokens: Vec<Token>,
}

impl<'t> Scan<'t> {
    fn kind(&self, i: usize) -> TokenKind {
        self.tokens.get(i).map_or(TokenKind::Eof, Token::kind)
    }

    fn start(&self, i: usize) -> usize {
        self.tokens
            .get(i)
            .map_or(self.source.input().len(), |t| t.span().start())
    }

    fn end(&self, i: usize) -> usize {
        self.tokens
            .get(i)
            .map_or(self.source.input().len(), |t| t.span().end())
    }

    fn text(&self, i: usize) -> &str {
        self.source
            .input()
            .get(self.start(i)..self.end(i))
            .unwrap_or("")
    }

    /// The first token at or after `i` that is not whitespace.
    fn skip_ws(&self, mut i: usize) -> usize {
        while self.kind(i) == TokenKind::Whitespace {
            i += 1;
        }
        i
    }

    /// A quoted key's name, decoded (escapes included).
    fn quoted_name(&self, i: usize) -> Cow<'t, str> {
        let mut name = Cow::Borrowed("");
        if let Some(raw) = self.tokens.get(i).and_then(|t| self.source.get(t)) {
            raw.decode_key(&mut name, &mut ());
        }
        name
    }

    /// Where the value that starts at token `i` ends: the start of the first newline
    /// outside the brackets the value opens (or the end of the text); and the index of
    /// that newline token.
    fn value_end(&self, mut i: usize) -> (usize, usize) {
        let mut depth = 0i32;
        loop {
            match self.kind(i) {
                TokenKind::Eof => return (self.source.input().len(), i),
                TokenKind::Newline if depth <= 0 => return (self.start(i), i),
                TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => depth += 1,
                TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => depth -= 1,
                _ => {}
            }
            i += 1;
        }
    }
}

/// The byte ranges of `text` that hold secret values (see the [module docs](self)):
/// sorted, disjoint, on character boundaries.
pub fn secret_spans(text: &str) -> Vec<Range<usize>> {
    let source = Source::new(text);
    let scan = Scan {
        source,
        tokens: source.lex().collect(),
    };
    let mut spans: Vec<Range<usize>> = Vec::new();
    // A key may start here: at the start of a line, after `{` or `,`.
    let mut key_position = true;
    let mut i = 0;
    while i < scan.tokens.len() {
        match scan.kind(i) {
            TokenKind::Eof => break,
            TokenKind::Whitespace => {}
            TokenKind::Newline | TokenKind::LeftCurlyBracket | TokenKind::Comma => {
                key_position = true;
            }
            TokenKind::Comment => {
                if let Some(at) = secret_in_comment(scan.text(i)) {
                    spans.push(scan.start(i) + at..scan.end(i));
                }
            }
            TokenKind::Atom | TokenKind::BasicString | TokenKind::LiteralString => {
                // A (possibly dotted) key: its parts, and whether one is a secret name.
                let mut secret = false;
                let mut quoted_secret = false;
                let mut mask_from = None;
                let mut j = i;
                loop {
                    if scan.kind(j) == TokenKind::Atom {
                        let part = scan.text(j);
                        if is_secret_field(part) {
                            secret = true;
                        } else if let Some(len) = secret_prefix(part) {
                            secret = true;
                            mask_from = Some(scan.start(j) + len);
                        }
                    } else if is_secret_field(&scan.quoted_name(j)) {
                        quoted_secret = true;
                    }
                    let dot = scan.skip_ws(j + 1);
                    if mask_from.is_some() || scan.kind(dot) != TokenKind::Dot {
                        break;
                    }
                    let next = scan.skip_ws(dot + 1);
                    if !matches!(
                        scan.kind(next),
                        TokenKind::Atom | TokenKind::BasicString | TokenKind::LiteralString
                    ) {
                        break;
                    }
                    j = next;
                }
                let after = scan.skip_ws(j + 1);
                let assigned = scan.kind(after) == TokenKind::Equals;
                // A bare secret name is masked after wherever it stands (bare names are
                // no TOML value); a quoted one only where it is a key, not a value.
                if secret || (quoted_secret && (key_position || assigned)) {
                    let value = if assigned {
                        scan.skip_ws(after + 1)
                    } else {
                        after
                    };
                    let start = mask_from.unwrap_or_else(|| scan.start(value));
                    let (end, newline) = scan.value_end(value);
                    if end > start {
                        spans.push(start..end);
                    }
                    i = newline;
                    continue;
                }
                key_position = false;
                i = j;
            }
            _ => key_position = false,
        }
        i += 1;
    }
    spans
}

/// `text` with every byte of every secret value (see [`secret_spans`]) replaced by
/// [`MASK`], except line breaks: the result has the same length and the same lines, so
/// positions in `text` (a TOML error's span) point at the same place in it.
pub fn redact_toml(text: &str) -> String {
    let mut out = text.as_bytes().to_vec();
    for span in secret_spans(text) {
        for b in &mut out[span] {
            if *b != b'\n' && *b != b'\r' {
                *b = MASK;
            }
        }
    }
    // Only whole characters were replaced, by ASCII: still UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The [`ConfigError`] (field `toml`) of a TOML error in `text`: the toml crate's
/// message, with the source line it quotes taken from [`redact_toml`]`(text)`, on one
/// line, and scrubbed ([`Scrubber`]). Every TOML error this crate reports is made here.
pub fn toml_error(mut e: toml::de::Error, text: &str) -> ConfigError {
    let masked = redact_toml(text);
    e.set_input(Some(&masked));
    let rendered = e.to_string();
    let message = rendered.trim_end().replace('\n', " ").replace("  ", " ");
    Scrubber::new(text).error(ConfigError::new("toml", message))
}

/// Removes any piece of a secret value of one text from messages about it (defence in
/// depth behind [`redact_toml`] and the typed secret checks).
#[derive(Debug)]
pub struct Scrubber<'t> {
    /// Runs of hex digits (decimal digits included), [`SCRUB_WINDOW`] or more long, inside
    /// the text's secret values: key material. (Words of a masked comment are not.)
    words: Vec<&'t str>,
}

/// Every run of this many hex digits of a secret value is scrubbed.
const SCRUB_WINDOW: usize = 8;

impl<'t> Scrubber<'t> {
    /// The scrubber of the secret values of `text`.
    pub fn new(text: &'t str) -> Self {
        let mut words = Vec::new();
        for span in secret_spans(text) {
            let value = &text[span];
            words.extend(
                value
                    .split(|c: char| !c.is_ascii_hexdigit())
                    .filter(|w| w.len() >= SCRUB_WINDOW),
            );
        }
        Scrubber { words }
    }

    /// `message` with every occurrence of a secret piece masked.
    pub fn scrub<'m>(&self, message: &'m str) -> Cow<'m, str> {
        let mut hidden = vec![false; message.len()];
        let mut any = false;
        for word in &self.words {
            for start in 0..=word.len() - SCRUB_WINDOW {
                let piece = &word[start..start + SCRUB_WINDOW];
                for (at, _) in message.match_indices(piece) {
                    hidden[at..at + SCRUB_WINDOW].fill(true);
                    any = true;
                }
            }
        }
        if !any {
            return Cow::Borrowed(message);
        }
        // The pieces are ASCII, so masking them byte by byte keeps the text UTF-8.
        let bytes: Vec<u8> = message
            .bytes()
            .zip(hidden)
            .map(|(b, h)| if h { MASK } else { b })
            .collect();
        Cow::Owned(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// `e` with its field and message scrubbed.
    pub fn error(&self, e: ConfigError) -> ConfigError {
        if self.words.is_empty() {
            return e;
        }
        e.rewritten(
            self.scrub(e.field()).into_owned(),
            self.scrub(e.message()).into_owned(),
        )
    }
}

/// Reads a whole file that may hold secrets (a policy, SA or cases file) into memory
/// that is wiped when dropped. `std::fs::read_to_string` sizes its buffer from the
/// file's length, so no outgrown copy of the text is freed on the way.
pub fn read_file(path: &std::path::Path) -> std::io::Result<Zeroizing<String>> {
    std::fs::read_to_string(path).map(Zeroizing::new)
}

/// Overwrites every string (and number) inside `value` with zeros, recursively.
pub fn wipe_toml_value(value: &mut toml::Value) {
    match value {
        toml::Value::String(s) => s.zeroize(),
        toml::Value::Integer(n) => n.zeroize(),
        toml::Value::Float(x) => x.zeroize(),
        toml::Value::Array(items) => items.iter_mut().for_each(wipe_toml_value),
        toml::Value::Table(t) => wipe_toml_table(t),
        toml::Value::Boolean(_) | toml::Value::Datetime(_) => {}
    }
}

/// Overwrites every string (and number) value of `table` with zeros, recursively (the
/// key names stay).
pub fn wipe_toml_table(table: &mut toml::Table) {
    table.iter_mut().for_each(|(_, v)| wipe_toml_value(v));
}

/// Wipes, in place, the value of every field of `table` named like a secret field
/// ([`is_secret_field`]: `Key`, `integrity-key`, ...), in nested tables and arrays of
/// tables too. For tables that are dropped after use and whose secret-looking fields
/// are errors or ignored (policy tables, misspelt SA fields): their values go before
/// the table does, and serde never sees them.
pub fn wipe_secret_fields(table: &mut toml::Table) {
    for (name, value) in table.iter_mut() {
        if is_secret_field(name) {
            wipe_toml_value(value);
        } else {
            wipe_secret_fields_in(value);
        }
    }
}

fn wipe_secret_fields_in(value: &mut toml::Value) {
    match value {
        toml::Value::Table(t) => wipe_secret_fields(t),
        toml::Value::Array(items) => items.iter_mut().for_each(wipe_secret_fields_in),
        _ => {}
    }
}

/// Takes the secret field `name` out of `table`: a string, now in memory that is wiped
/// when dropped. Any other type is an error that names the field and the type, never
/// the value (which is wiped).
pub(crate) fn take_secret(
    table: &mut toml::Table,
    name: &str,
) -> Result<Option<Zeroizing<String>>, ConfigError> {
    match table.remove(name) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(Zeroizing::new(s))),
        Some(mut other) => {
            let kind = other.type_str();
            wipe_toml_value(&mut other);
            Err(ConfigError::new(
                name,
                format!("expected a hex string, got {kind} (the value is not shown: it is secret)"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "c0ffee1234567890deadbeefcafef00d11223344";

    fn masked(line: &str) -> String {
        redact_toml(line)
    }

    #[test]
    fn masks_values_of_secret_keys_in_every_shape() {
        let shapes = [
            format!("key = \"{K}\""),
            format!("key = \"{K}\" trailing garbage"),
            format!("key=\"{K}\"#comment"),
            format!("integrity_key = '{K}' x"),
            format!("\"key\" = \"{K}\""),
            format!("'integrity_key' = \"{K}\""),
            format!("\"k\\u0065y\" = \"{K}\""),
            format!("sa.key = \"{K}\""),
            format!("sa . \"key\" = \"{K}\""),
            format!("Key = \"{K}\""),
            format!("integrity-key = \"{K}\""),
            format!("key = {K}"),
            format!("key = 0x{K}"),
            format!("key = \"{K}"),
            format!("key \"{K}\""),
            format!("key: \"{K}\""),
            format!("key:\"{K}\""),
            format!("key=[\"{K}\"]"),
            format!("x = {{ name = \"a\", key = \"{K}\", spi = 1 }}"),
            format!("sa = [{{ key = \"{K}\" }}]"),
            format!("name = \"x\" key = \"{K}\""),
            format!("# key = \"{K}\""),
            format!("  key = \"{K}\"\r"),
        ];
        for s in shapes {
            let m = masked(&s);
            assert_eq!(m.len(), s.len(), "{s}");
            assert!(
                !m.contains("c0ffee") && !m.contains("11223344"),
                "{s} -> {m}"
            );
        }
    }

    #[test]
    fn multi_line_values_are_masked_to_their_end() {
        for s in [
            format!("key = \"\"\"{K}\n{K}\"\"\" x\nname = \"n\""),
            format!("key = '''\n{K}\n''' \nname = \"n\""),
            format!("key = [\n  \"{K}\",\n  \"{K}\",\n]\nname = \"n\""),
        ] {
            let m = masked(&s);
            assert_eq!(m.lines().count(), s.lines().count());
            assert!(!m.contains("c0ffee"), "{m}");
            assert!(m.ends_with("name = \"n\""), "{m}");
        }
    }

    #[test]
    fn leaves_other_values_alone() {
        for s in [
            "name = \"key\"",
            "sa = [\"o\", \"i\"]",
            "sa = [\"key\", \"i\"]",
            "keys = \"abc\"",
            "key_id = \"abc\"",
            "monkey = \"abc\"",
            "# the keys are below",
            "cipher = \"aes-128-gcm\" # a key is needed",
        ] {
            // Comments that name a field are masked after the name; nothing else changes.
            let m = masked(s);
            if s.contains('#') && s.contains(" key ") {
                assert!(m.starts_with("cipher = \"aes-128-gcm\" # a key"), "{m}");
            } else {
                assert_eq!(m, s);
            }
        }
    }

    #[test]
    fn toml_errors_quote_the_masked_line() {
        let text = format!("[[sa]]\nname = \"a\"\nkey = \"{K}\" garbage\n");
        let e = toml::from_str::<toml::Table>(&text).unwrap_err();
        let err = toml_error(e, &text);
        assert_eq!(err.field(), "toml");
        assert!(!err.message().contains("c0ffee"), "{err}");
        assert!(err.message().contains("line 3"), "{err}");
        assert!(err.message().contains("key = ****"), "{err}");
    }

    #[test]
    fn scrubber_masks_pieces_of_secrets() {
        let text = format!("key = \"{K}\"");
        let s = Scrubber::new(&text);
        let m = s.scrub("bad value deadbeefcafe here, and C0FFEE12 or c0ffee12 there");
        assert!(!m.contains("deadbeef") && !m.contains("c0ffee12"), "{m}");
        assert!(m.contains("bad value") && m.contains("there"), "{m}");
        // Words of a masked comment are no key material: left alone.
        let s = Scrubber::new("# the key is an integer\nkey = 5");
        assert_eq!(s.scrub("expected an integer"), "expected an integer");
        assert_eq!(s.scrub("nothing"), "nothing");
    }

    #[test]
    fn take_secret_names_the_type_not_the_value() {
        let mut t: toml::Table = toml::from_str("key = 1234567890123456").unwrap();
        let e = take_secret(&mut t, "key").unwrap_err();
        assert!(e.message().contains("integer"), "{e}");
        assert!(!e.to_string().contains("12345678"), "{e}");
        assert!(t.is_empty());
        let mut t: toml::Table = toml::from_str(&format!("key = \"{K}\"")).unwrap();
        assert_eq!(take_secret(&mut t, "key").unwrap().unwrap().as_str(), K);
        assert_eq!(take_secret(&mut t, "key").unwrap(), None);
    }
}
