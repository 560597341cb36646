//! Input limits, and echoing user text back in messages without echoing all of it.
//!
//! The limits of the `ipsec` command (the README's "The `ipsec` command" section lists
//! them for users):
//!
//! * a text file it reads whole (policy, SA and cases files): [`MAX_TEXT_FILE`] bytes;
//! * a line of a `policy lookup` flows file: [`MAX_LINE`] bytes, newline excluded; a
//!   longer line is an error for that line alone and is skipped without being stored;
//! * a field of a flow line: [`MAX_FIELD`] bytes;
//! * a pcap record: 1 MiB (`pcap::MAX_RECORD`); captures are read one record at a time.
//!
//! Any user text a message repeats (a field, a name, a path, a value the library
//! quotes) is shortened to [`MAX_ECHO`] characters plus "…" by [`clip`], so that a
//! 1 MB field gives a one-line error, not a 1 MB one.

use ipsec_core::secret::Zeroizing;
use std::borrow::Cow;
use std::io::{BufRead, Read};
use std::path::Path;

/// Characters of user text a message repeats before it is cut short ("…").
pub(crate) const MAX_ECHO: usize = 64;
/// The largest policy, SA or cases file read (bytes). 64 MiB holds several hundred
/// thousand policies; anything larger is refused before it is read.
pub(crate) const MAX_TEXT_FILE: u64 = 64 << 20;
/// The longest line of a flows file (bytes, without the newline). A flow line is at
/// most ~130 bytes; the rest is room for spaces.
pub(crate) const MAX_LINE: usize = 4096;
/// The longest field of a flow line (bytes, spaces around it excluded): the longest
/// IPv6 address is 45 characters.
pub(crate) const MAX_FIELD: usize = 64;
/// The longest line of a message that comes from elsewhere (the library, the TOML
/// parser) before its middle is cut out.
const MAX_MESSAGE_LINE: usize = 1024;

/// `s`, or its first [`MAX_ECHO`] characters followed by "…" when it is longer: for
/// every piece of user text a message repeats.
pub(crate) fn clip(s: &str) -> Cow<'_, str> {
    clip_to(s, MAX_ECHO)
}

fn clip_to(s: &str, max: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => Cow::Borrowed(s),
        Some((at, _)) => Cow::Owned(format!("{}…", &s[..at])),
    }
}

/// A message made elsewhere (by the library or the TOML parser) that may quote user
/// text: every double-quoted value longer than [`MAX_ECHO`] characters is [`clip`]ped
/// (its closing quote kept), and a line still longer than 1024 characters loses its
/// middle.
pub(crate) fn clip_message(msg: &str) -> Cow<'_, str> {
    if msg.len() <= MAX_ECHO {
        return Cow::Borrowed(msg);
    }
    let mut out = String::with_capacity(msg.len().min(4 * MAX_MESSAGE_LINE));
    for (i, line) in msg.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let clipped = clip_quoted(line);
        match clipped.char_indices().nth(MAX_MESSAGE_LINE) {
            None => out.push_str(&clipped),
            Some(_) => {
                let chars: Vec<char> = clipped.chars().collect();
                let keep = MAX_MESSAGE_LINE / 2;
                out.extend(&chars[..keep]);
                out.push('…');
                out.extend(&chars[chars.len() - keep..]);
            }
        }
    }
    if out == msg {
        Cow::Borrowed(msg)
    } else {
        Cow::Owned(out)
    }
}

/// Clips each `"..."` of `line` (Rust's `{:?}` quoting: `\"` and `\\` inside).
fn clip_quoted(line: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut rest = line;
    let mut changed = false;
    while let Some(open) = rest.find('"') {
        let body = &rest[open + 1..];
        let mut end = None;
        let mut escaped = false;
        for (i, c) in body.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        // An unterminated quote: the rest of the line is the value.
        let value = &body[..end.unwrap_or(body.len())];
        let short = clip(value);
        changed |= matches!(short, Cow::Owned(_));
        out.push_str(&rest[..=open]);
        out.push_str(&short);
        match end {
            Some(e) => {
                out.push('"');
                rest = &body[e + 1..];
            }
            None => rest = "",
        }
    }
    if changed {
        out.push_str(rest);
        Cow::Owned(out)
    } else {
        Cow::Borrowed(line)
    }
}

/// Reads a whole text file of at most [`MAX_TEXT_FILE`] bytes into memory that is wiped
/// when dropped (a policy or SA file holds the keys): a larger file, one that cannot be
/// read, or one that is not UTF-8 (the message names the line) is a usage error
/// message. The buffer is sized from the file's length, so no outgrown copy of the text
/// is freed on the way; the bytes of a file refused as not UTF-8 are wiped too.
pub(crate) fn read_text_file(path: &Path) -> Result<Zeroizing<String>, String> {
    let shown = path.display().to_string();
    let shown = clip(&shown);
    let file = std::fs::File::open(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let too_large = || {
        format!(
            "{shown}: larger than {} MiB, the limit for a policy, SA or cases file",
            MAX_TEXT_FILE >> 20
        )
    };
    let len = file.metadata().map_or(0, |m| m.len());
    if len > MAX_TEXT_FILE {
        return Err(too_large());
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(len as usize + 1));
    file.take(MAX_TEXT_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{shown}: cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_TEXT_FILE {
        return Err(too_large());
    }
    String::from_utf8(std::mem::take(&mut *bytes))
        .map(Zeroizing::new)
        .map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            let bytes = Zeroizing::new(e.into_bytes());
            let line = 1 + bytes[..at].iter().filter(|&&b| b == b'\n').count();
            format!("{shown}: line {line}: not UTF-8 text (invalid byte at offset {at})")
        })
}

/// What [`read_line`] read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LineRead {
    /// The end of the input.
    End,
    /// A line (its bytes, without the newline, are in the buffer).
    Full,
    /// A line longer than the limit: its first `limit` bytes are in the buffer, the
    /// rest was read and thrown away; `len` is its whole length.
    TooLong {
        /// The line's length in bytes (without the newline).
        len: usize,
    },
}

/// Reads one line (up to `\n`, which is not kept) into `buf`, storing at most `limit`
/// bytes of it: a longer line is read to its end and reported as [`LineRead::TooLong`], so
/// that memory stays bounded whatever the input.
pub(crate) fn read_line<R: BufRead>(
    r: &mut R,
    buf: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<LineRead> {
    buf.clear();
    let mut len = 0usize;
    let mut any = false;
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        any = true;
        let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        let room = limit.saturating_sub(buf.len());
        buf.extend_from_slice(&part[..part.len().min(room)]);
        len += part.len();
        let used = done.unwrap_or(chunk.len());
        r.consume(used);
        if done.is_some() {
            break;
        }
    }
    if !any {
        return Ok(LineRead::End);
    }
    if buf.last() == Some(&b'\r') && len <= limit {
        buf.pop();
    }
    Ok(if len > limit {
        LineRead::TooLong { len }
    } else {
        LineRead::Full
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text_on_a_character_boundary() {
        assert_eq!(clip("10.0.0.1"), "10.0.0.1");
        let long = "é".repeat(100);
        let c = clip(&long);
        assert_eq!(c.chars().count(), MAX_ECHO + 1);
        assert!(c.ends_with('…'));
        assert_eq!(clip(&"a".repeat(MAX_ECHO)), "a".repeat(MAX_ECHO));
    }

    #[test]
    fn clip_message_shortens_quoted_values_and_long_lines() {
        let m = format!(
            "policy \"x\": local: {:?} is not an address",
            "a".repeat(5000)
        );
        let c = clip_message(&m);
        assert!(c.len() < 200, "{c}");
        assert!(c.starts_with("policy \"x\": local: \"aaaa"), "{c}");
        assert!(c.ends_with("…\" is not an address"), "{c}");
        let escaped = format!("v: {:?} end", format!("\"{}", "b".repeat(100)));
        let c = clip_message(&escaped);
        assert!(c.ends_with("…\" end"), "{c}");
        let unquoted = "z".repeat(100_000);
        let c = clip_message(&unquoted);
        assert_eq!(c.chars().count(), 1025);
        assert_eq!(clip_message("short"), "short");
        let two = format!("ok line\n{}", "y".repeat(3000));
        let c = clip_message(&two);
        assert!(c.starts_with("ok line\n") && c.len() < 1100, "{}", c.len());
    }

    #[test]
    fn read_line_bounds_what_it_stores() {
        let data = format!("a,b\r\n{}\nlast", "x".repeat(10_000));
        let mut r = std::io::BufReader::with_capacity(7, data.as_bytes());
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut r, &mut buf, 16).unwrap(), LineRead::Full);
        assert_eq!(buf, b"a,b");
        assert_eq!(
            read_line(&mut r, &mut buf, 16).unwrap(),
            LineRead::TooLong { len: 10_000 }
        );
        assert_eq!(buf.len(), 16);
        assert_eq!(read_line(&mut r, &mut buf, 16).unwrap(), LineRead::Full);
        assert_eq!(buf, b"last");
        assert_eq!(read_line(&mut r, &mut buf, 16).unwrap(), LineRead::End);
    }
}
