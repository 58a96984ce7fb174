//! Secrets kept out of the TOML: the Redis password comes from a file (a
//! mounted Kubernetes Secret, a Docker secret) or an environment variable,
//! and is put into every Redis URL of the store. Views of the config
//! (`check`, logs, `/config`) only ever show those URLs through
//! [`super::redact_url`].

use std::path::Path;

/// Where the password was read from, for the messages and the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    File(std::path::PathBuf),
    Env(String),
}

impl std::fmt::Display for PasswordSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordSource::File(p) => write!(f, "file {}", p.display()),
            PasswordSource::Env(name) => write!(f, "environment variable {name}"),
        }
    }
}

/// Reads the password from a file: one line; a trailing newline (as
/// `echo` and most editors write) is not part of it.
pub(super) fn from_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let pw = text.trim_end_matches(['\n', '\r']);
    if pw.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    if pw.contains(['\n', '\r']) {
        return Err(format!("{} holds more than one line; it must hold only the password", path.display()));
    }
    Ok(pw.to_owned())
}

/// Reads the password from an environment variable.
pub(super) fn from_env(name: &str) -> Result<String, String> {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(format!("\"{name}\" is not an environment variable name"));
    }
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Ok(v),
        Ok(_) => Err(format!("environment variable {name} is empty")),
        Err(std::env::VarError::NotPresent) => Err(format!("environment variable {name} is not set")),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("environment variable {name} is not valid UTF-8")),
    }
}

/// `url` with `password` as its userinfo password (percent-encoded, as the
/// Redis client decodes it). A URL that already carries a password is
/// refused: two sources for one secret would leave the reader guessing.
pub(super) fn with_password(url: &str, password: &str) -> Result<String, String> {
    let mut parsed = redis::parse_redis_url(url).ok_or_else(|| "the URL did not parse".to_owned())?;
    if parsed.password().is_some() {
        return Err("the URL already holds a password; keep it in one place".to_owned());
    }
    parsed.set_password(Some(password)).map_err(|()| "this URL cannot hold a password".to_owned())?;
    Ok(parsed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_goes_into_the_url_encoded_and_comes_out_redacted() {
        let url = with_password("redis://127.0.0.1:6379/0", "p@ss:w/rd").unwrap();
        assert_eq!(url, "redis://:p%40ss%3Aw%2Frd@127.0.0.1:6379/0");
        let info = redis::IntoConnectionInfo::into_connection_info(url.as_str()).unwrap();
        assert_eq!(info.redis.password.as_deref(), Some("p@ss:w/rd"));
        assert_eq!(super::super::redact_url(&url), "redis://:***@127.0.0.1:6379/0");
        let with_user = with_password("rediss://app@10.0.0.1:6380", "s3cret").unwrap();
        assert_eq!(with_user, "rediss://app:s3cret@10.0.0.1:6380");
    }

    #[test]
    fn a_url_with_its_own_password_is_refused() {
        let e = with_password("redis://:inline@127.0.0.1:6379", "other").unwrap_err();
        assert!(e.contains("already holds a password"), "{e}");
    }

    #[test]
    fn a_password_file_loses_its_trailing_newline_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        assert_eq!(from_file(&p).unwrap(), "s3cret");
        std::fs::write(&p, "\n").unwrap();
        assert!(from_file(&p).unwrap_err().ends_with("is empty"));
        std::fs::write(&p, "a\nb\n").unwrap();
        assert!(from_file(&p).unwrap_err().contains("more than one line"));
        assert!(from_file(&dir.path().join("nope")).unwrap_err().starts_with("cannot read"));
    }
}
