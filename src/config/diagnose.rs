//! What to say when a file does not fit the schema of `config/raw.rs`.
//!
//! The serde structs stay the one schema; this module only runs after they
//! refused a file. It deserializes the file again piece by piece (each key
//! of each top-level table, each `[[tenant]]` on its own), so every
//! independent mistake is reported, not only the first, and it rewrites
//! serde's wording ("invalid type: string "20MB", expected i64") into the
//! key path and the TOML type in words.

use std::ops::Range;

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml_edit::{DocumentMut, ImDocument, Item, Table};

/// One mistake: where (a byte span of the file) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Problem {
    pub span: Option<Range<usize>>,
    pub msg: String,
}

/// Which file is being read: the main file lists tenants as `[[tenant]]`,
/// a tenant file holds one `[tenant]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileKind {
    Main,
    Tenant,
}

/// Every problem `T` has with `text`, in file order; empty when the file
/// does not even parse as TOML (the caller keeps the parser's own message).
pub(super) fn problems<T: DeserializeOwned>(text: &str, kind: FileKind) -> Vec<Problem> {
    let Ok(doc) = ImDocument::parse(text.to_owned()) else {
        return Vec::new();
    };
    let Item::Table(root) = doc.into_item() else {
        return Vec::new();
    };
    let top_level = top_level_keys::<T>();
    let mut out = Vec::new();
    for (key, item) in root.iter() {
        match (key, item) {
            ("tenant", Item::ArrayOfTables(list)) if kind == FileKind::Main => {
                for (i, t) in list.iter().enumerate() {
                    let one = single(key, Item::ArrayOfTables(std::iter::once(t.clone()).collect()));
                    let path = format!("tenant[{i}]");
                    out.extend(check::<T>(one, &top_level, Some(&path), t.span()).map(|f| f.problem));
                }
            }
            ("tenant", Item::Table(t)) if kind == FileKind::Main => out.push(Problem {
                span: t.span(),
                msg: "`tenant`: the main file lists tenants as an array of tables: write [[tenant]] \
                      (double brackets) for each one; [tenant] is for a file of tenants_dir"
                    .to_owned(),
            }),
            ("tenant", Item::ArrayOfTables(list)) => out.push(Problem {
                span: list.span().or_else(|| list.get(0).and_then(Table::span)),
                msg: "a tenant file holds exactly one tenant: use [tenant], not [[tenant]]".to_owned(),
            }),
            (_, Item::Table(t)) => {
                let Some(whole) = check::<T>(single(key, item.clone()), &top_level, None, t.span()) else {
                    continue;
                };
                if whole.missing {
                    out.push(whole.problem);
                    continue;
                }
                // Key by key, so two wrong keys of one table are both named
                // (a key alone lacks the table's required keys: not its fault).
                let before = out.len();
                for (sub, _) in t.iter() {
                    let mut part = t.clone();
                    part.retain(|k, _| k == sub);
                    let found = check::<T>(single(key, Item::Table(part)), &top_level, None, t.span());
                    out.extend(found.filter(|f| !f.missing).map(|f| f.problem));
                }
                if out.len() == before {
                    out.push(whole.problem);
                }
            }
            _ => out.extend(check::<T>(single(key, item.clone()), &top_level, None, None).map(|f| f.problem)),
        }
    }
    out.sort_by_key(|p| p.span.as_ref().map_or(0, |s| s.start));
    out.dedup();
    out
}

/// A document holding only `key = item`.
fn single(key: &str, item: Item) -> DocumentMut {
    let mut t = Table::new();
    t.insert(key, item);
    DocumentMut::from(t)
}

/// What one piece was refused for.
struct Found {
    problem: Problem,
    /// A required key is missing.
    missing: bool,
}

/// Deserializes one piece; its problem, if any, in words.
fn check<T: DeserializeOwned>(
    doc: DocumentMut,
    top_level: &[String],
    path_prefix: Option<&str>,
    table_span: Option<Range<usize>>,
) -> Option<Found> {
    let e = T::deserialize(doc.into_deserializer()).err()?;
    let message = e.message().to_owned();
    // The key path is only in the error's Display ("...\nin `a.b`"): a
    // document without its raw text prints it there.
    let shown = e.to_string();
    let keys = shown.lines().rev().find_map(|l| l.strip_prefix("in `")?.strip_suffix('`')).unwrap_or("").to_owned();
    let path = match path_prefix {
        // `tenant` is the array: the index replaces it.
        Some(prefix) => match keys.split_once('.') {
            Some((_, rest)) => format!("{prefix}.{rest}"),
            None => prefix.to_owned(),
        },
        None => keys,
    };
    let span = e.span().or(table_span);
    let missing = message.starts_with("missing field");
    Some(Found { problem: Problem { span, msg: in_words(&path, &message, top_level) }, missing })
}

/// The top-level keys of `T`, from serde's own list of expected fields.
fn top_level_keys<T: DeserializeOwned>() -> Vec<String> {
    let probe = single("\u{1}", Item::Value(toml_edit::Value::from(0)));
    match T::deserialize(probe.into_deserializer()) {
        Err(e) => expected_list(e.message()),
        Ok(_) => Vec::new(),
    }
}

/// The names of "..., expected one of `a`, `b`" (or "expected `a` or `b`").
fn expected_list(msg: &str) -> Vec<String> {
    let Some((_, list)) = msg.split_once("expected ") else {
        return Vec::new();
    };
    list.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

/// The unit a key's name promises, for the type message.
fn unit(path: &str) -> &'static str {
    let last = path.rsplit('.').next().unwrap_or(path);
    if last.ends_with("_ms") {
        " (milliseconds)"
    } else if last.ends_with("_bytes") {
        " (bytes)"
    } else if last.ends_with("_s") || last.ends_with("_seconds") {
        " (seconds)"
    } else {
        ""
    }
}

/// A TOML type named as a user writes it: serde's "expected" side.
fn expected_words(expected: &str) -> String {
    let e = expected.trim();
    if e.starts_with('i') || e.starts_with('u') && e[1..].chars().all(|c| c.is_ascii_digit()) || e == "integer" {
        return "an integer".to_owned();
    }
    match e {
        "a boolean" | "bool" => "true or false".to_owned(),
        "a string" | "string" => "a string (in quotes)".to_owned(),
        "a sequence" => "an array ([...])".to_owned(),
        "a map" => "a table".to_owned(),
        _ if e.starts_with("struct ") => "a table".to_owned(),
        _ => e.to_owned(),
    }
}

/// serde's "found" side ("string \"20MB\"", "integer `5`", "map").
fn found_words(found: &str) -> String {
    let f = found.trim();
    if let Some(s) = f.strip_prefix("string ") {
        // A URL written where it does not belong may carry a password.
        return format!("the string {}", super::redact_url(s));
    }
    for (what, name) in [("integer ", "the integer "), ("floating point ", "the number "), ("boolean ", "")] {
        if let Some(v) = f.strip_prefix(what) {
            return format!("{name}{}", v.trim_matches('`'));
        }
    }
    match f {
        "map" => "a table".to_owned(),
        "sequence" => "an array".to_owned(),
        _ => f.to_owned(),
    }
}

/// One problem, said with its key path.
fn in_words(path: &str, message: &str, top_level: &[String]) -> String {
    let at = if path.is_empty() { String::new() } else { format!("`{path}` ") };
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            return format!("{at}must be {}{}, found {}", expected_words(expected), unit(path), found_words(found));
        }
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        let table = if path.is_empty() { "this table".to_owned() } else { format!("`{path}`") };
        return format!("{table} is missing the required key `{field}`");
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        let known = expected_list(message);
        let table = match path.rsplit_once('.') {
            Some((parent, _)) => format!("in `{parent}`"),
            None if path.is_empty() || path == field => "at the top level".to_owned(),
            None => format!("in `{path}`"),
        };
        let mut msg = format!("unknown key `{field}` {table}");
        if !known.is_empty() {
            msg.push_str(&format!(" (known keys: {})", known.join(", ")));
        }
        if table != "at the top level" && top_level.iter().any(|k| k == field) {
            msg.push_str(&format!(
                "; `{field}` is a top-level key: in TOML every key after a [table] header belongs to that \
                 table, so write `{field}` above the first [table]"
            ));
        }
        return msg;
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let found = rest.split('`').next().unwrap_or(rest);
        let known: Vec<String> = expected_list(message).iter().map(|k| format!("\"{k}\"")).collect();
        return format!("{at}must be one of {}, found \"{found}\"", known.join(", "));
    }
    if let Some(rest) = message.strip_prefix("invalid value: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            return format!("{at}must be {}{}, found {}", expected_words(expected), unit(path), found_words(found));
        }
    }
    if path.is_empty() {
        message.to_owned()
    } else {
        format!("`{path}`: {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_types_are_named_in_toml_words() {
        let m = in_words("server.max_body_bytes", "invalid type: string \"20MB\", expected i64", &[]);
        assert_eq!(m, "`server.max_body_bytes` must be an integer (bytes), found the string \"20MB\"");
        let m = in_words("server.trusted_proxies", "invalid type: string \"10.0.0.0/8\", expected a sequence", &[]);
        assert_eq!(m, "`server.trusted_proxies` must be an array ([...]), found the string \"10.0.0.0/8\"");
        let m = in_words("server.fast_path", "invalid type: integer `1`, expected a boolean", &[]);
        assert_eq!(m, "`server.fast_path` must be true or false, found the integer 1");
        let m = in_words("limiter.store", "unknown variant `redis-cluster`, expected `memory` or `redis`", &[]);
        assert_eq!(m, "`limiter.store` must be one of \"memory\", \"redis\", found \"redis-cluster\"");
    }

    #[test]
    fn a_password_in_a_misplaced_url_is_not_repeated() {
        let m =
            in_words("limiter.redis_cluster", "invalid type: string \"redis://:pw@h:7000\", expected a sequence", &[]);
        assert_eq!(m, "`limiter.redis_cluster` must be an array ([...]), found the string \"redis://:***@h:7000\"");
    }

    #[test]
    fn a_top_level_key_under_a_table_gets_a_hint() {
        let top = vec!["tenants_dir".to_owned(), "server".to_owned()];
        let m = in_words("server.tenants_dir", "unknown field `tenants_dir`, expected one of `listen`, `tls`", &top);
        assert!(
            m.starts_with(
                "unknown key `tenants_dir` in `server` (known keys: listen, tls); `tenants_dir` is a top-level key"
            ),
            "{m}"
        );
    }
}
