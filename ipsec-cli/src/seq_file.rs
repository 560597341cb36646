//! `pcap encrypt --save-seq`: writes the last sequence number an SA used back into its
//! SA file, so that the next run continues after it.
//!
//! Only the `seq` value of that one `[[sa]]` table changes (or a `seq = N` line is
//! added to it); comments, order, spacing and every other value stay as written
//! (`toml_edit`). Before anything is written the new text is parsed again and compared
//! with the old one: it must differ in that one value and nowhere else, or nothing is
//! written. The file is replaced atomically (a temporary file beside it, then a
//! rename), with the permissions of the old one (SA files hold keys: a 0600 file stays
//! 0600); a symbolic link is followed and its target replaced.
//!
//! Concurrent runs on one SA file are not coordinated: if the file's `seq` is no longer
//! the one this run started from when it saves, another run used the SA meanwhile, and
//! the save is refused with an error that says sequence numbers were used twice.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The `seq` value of an SA table: an integer, a `"0x..."` or decimal string, or
/// absent (0).
fn seq_of(item: Option<&toml_edit::Item>) -> Result<u64, String> {
    let Some(item) = item else { return Ok(0) };
    if let Some(n) = item.as_integer() {
        return u64::try_from(n).map_err(|_| format!("seq = {n} is negative"));
    }
    if let Some(s) = item.as_str() {
        let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => s.parse(),
        };
        return parsed.map_err(|_| format!("seq = {s:?} is not a number"));
    }
    Err("seq is not a number".into())
}

/// Sets the `seq` of the SA entry called `name` in `doc` to `seq` (replacing the value
/// in place, or adding the key), after checking that it is still `old`. Handles
/// `[[sa]]` tables and an inline `sa = [{...}, ...]` array.
fn set_seq_in(
    doc: &mut toml_edit::DocumentMut,
    name: &str,
    old: u64,
    seq: i64,
) -> Result<(), String> {
    let new_value = |decor: Option<toml_edit::Decor>| {
        let mut v = toml_edit::Value::from(seq);
        if let Some(d) = decor {
            *v.decor_mut() = d;
        }
        v
    };
    let check = |found: u64| {
        if found == old {
            Ok(())
        } else {
            Err(format!(
                "its seq is now {found}, not {old} as when this run started: another run used \
                 the SA meanwhile, so sequence numbers (AEAD nonces) after {} were used twice; \
                 retire this SA",
                old.max(found)
            ))
        }
    };
    let named = |t: Option<&str>| t == Some(name);
    let sa = doc
        .get_mut("sa")
        .ok_or_else(|| "no [[sa]] tables".to_owned())?;
    if let Some(tables) = sa.as_array_of_tables_mut() {
        let table = tables
            .iter_mut()
            .find(|t| named(t.get("name").and_then(toml_edit::Item::as_str)))
            .ok_or_else(|| format!("no [[sa]] named {name:?}"))?;
        check(seq_of(table.get("seq"))?)?;
        match table.get_mut("seq").and_then(toml_edit::Item::as_value_mut) {
            Some(v) => *v = new_value(Some(v.decor().clone())),
            None => {
                table.insert("seq", toml_edit::Item::Value(new_value(None)));
            }
        }
        return Ok(());
    }
    if let Some(array) = sa.as_array_mut() {
        let table = array
            .iter_mut()
            .filter_map(toml_edit::Value::as_inline_table_mut)
            .find(|t| named(t.get("name").and_then(toml_edit::Value::as_str)))
            .ok_or_else(|| format!("no SA named {name:?}"))?;
        let current = table.get("seq").cloned().map(toml_edit::Item::Value);
        check(seq_of(current.as_ref())?)?;
        match table.get_mut("seq") {
            Some(v) => *v = new_value(Some(v.decor().clone())),
            None => {
                table.insert("seq", new_value(None));
            }
        }
        return Ok(());
    }
    Err("`sa` is neither [[sa]] tables nor an array of tables".into())
}

/// The text of an SA file with the `seq` of the SA `name` set to `seq`, which must
/// have been `old` (see the [module docs](self)); checked to change nothing else.
pub(crate) fn with_seq(text: &str, name: &str, old: u64, seq: u64) -> Result<String, String> {
    let value = i64::try_from(seq)
        .map_err(|_| format!("seq {seq} does not fit a TOML integer (at most 2^63 - 1)"))?;
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    set_seq_in(&mut doc, name, old, value)?;
    let new_text = doc.to_string();
    // The new text must mean the old one with this one value changed.
    let mut want: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let got: toml::Table = toml::from_str(&new_text).map_err(|e| e.to_string())?;
    let entry = want
        .get_mut("sa")
        .and_then(toml::Value::as_array_mut)
        .and_then(|a| {
            a.iter_mut()
                .filter_map(toml::Value::as_table_mut)
                .find(|t| t.get("name").and_then(toml::Value::as_str) == Some(name))
        })
        .ok_or_else(|| format!("no SA named {name:?}"))?;
    entry.insert("seq".into(), toml::Value::Integer(value));
    if want != got {
        return Err("rewriting the seq value would change more than that value".into());
    }
    Ok(new_text)
}

/// Sets the `seq` of the SA `name` in the SA file at `path` to `seq` (it must still be
/// `old`), atomically and with the old file's permissions.
pub(crate) fn save(path: &Path, name: &str, old: u64, seq: u64) -> Result<(), String> {
    let target = std::fs::canonicalize(path).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(&target).map_err(|e| e.to_string())?;
    let new_text = with_seq(&text, name, old, seq)?;
    let permissions = std::fs::metadata(&target)
        .map_err(|e| e.to_string())?
        .permissions();
    let tmp = temp_beside(&target);
    let write = || -> std::io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp)?;
        f.write_all(new_text.as_bytes())?;
        f.sync_all()?;
        std::fs::set_permissions(&tmp, permissions)?;
        std::fs::rename(&tmp, &target)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        e.to_string()
    })
}

/// A fresh name in the directory of `target` for the temporary copy.
fn temp_beside(target: &Path) -> PathBuf {
    let file = target
        .file_name()
        .map_or_else(|| "sa".into(), |f| f.to_string_lossy().into_owned());
    target.with_file_name(format!(".{file}.ipsec-save-seq.{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# Branch SAs (comment kept)
[[sa]]
name = "a"   # the first
spi = 0x1000
direction = "outbound"
seq = 7      # last used

[[sa]]
name = "b"
spi = 0x1001
direction = "outbound"

# trailing comment
"#;

    #[test]
    fn only_the_seq_value_changes() {
        let t = with_seq(TEXT, "a", 7, 42).unwrap();
        assert_eq!(
            t,
            TEXT.replace("seq = 7      # last used", "seq = 42      # last used")
        );
        let t = with_seq(TEXT, "b", 0, 3).unwrap();
        assert_eq!(
            t,
            TEXT.replace(
                "direction = \"outbound\"\n\n# trailing",
                "direction = \"outbound\"\nseq = 3\n\n# trailing"
            ),
            "{t}"
        );
        let inline = "sa = [{ name = \"x\", spi = 4096, seq = 1 }, { name = \"y\", spi = 4097 }]\n";
        assert_eq!(
            with_seq(inline, "y", 0, 9).unwrap(),
            "sa = [{ name = \"x\", spi = 4096, seq = 1 }, { name = \"y\", spi = 4097 , seq = 9 }]\n"
        );
    }

    #[test]
    fn refusals() {
        assert!(
            with_seq(TEXT, "c", 0, 1)
                .unwrap_err()
                .contains("no [[sa]] named \"c\"")
        );
        let e = with_seq(TEXT, "a", 5, 9).unwrap_err();
        assert!(
            e.contains("another run used the SA") && e.contains("used twice"),
            "{e}"
        );
        assert!(
            with_seq(TEXT, "a", 7, u64::MAX)
                .unwrap_err()
                .contains("does not fit")
        );
        assert_eq!(
            with_seq(&TEXT.replace("seq = 7", "seq = \"0x7\""), "a", 7, 8).unwrap(),
            TEXT.replace("seq = 7", "seq = 8")
        );
    }
}
