//! The HTTP/1.1 writer both hand-written sides share: the fast path's
//! answers and refusals downstream, the raw pool's requests upstream.
//! Status line, fields and a `Date` formatted once a second.

use std::fmt::Write as _;
use std::time::SystemTime;

use http::StatusCode;

/// `HTTP/1.1 NNN Reason\r\n`.
pub fn write_status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `name: value\r\n`.
pub fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The `Date` field's value, formatted once per second rather than per
/// answer (one per connection).
#[derive(Default)]
pub struct Date {
    second: u64,
    text: String,
}

impl Date {
    pub fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text.clear();
            // Writing into a String cannot fail.
            let _ = write!(self.text, "{}", httpdate::HttpDate::from(now));
        }
        self.text.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_line_and_fields_are_plain_http_1_1() {
        let mut out = Vec::new();
        write_status_line(&mut out, StatusCode::TOO_MANY_REQUESTS);
        write_field(&mut out, b"retry-after", b"7");
        assert_eq!(out, b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\n");
        let mut date = Date::default();
        let text = String::from_utf8(date.now().to_vec()).unwrap();
        assert!(httpdate::parse_http_date(&text).is_ok(), "{text}");
    }
}
