//! The access log: one structured line per call, API call or portal page,
//! served or refused, written once by `proxy::serve_call` after the answer.
//!
//! A line is a `tracing` event with target [`TARGET`] at `info`, message
//! `served` or `refused`, so it goes wherever the process logs (JSON off a
//! TTY) and `RUST_LOG=deskgate::access=off` silences it. Served calls are
//! sampled (`[access_log] sample_served`); refusals and upstream errors are
//! always written, because they are what an on-call engineer reads.
//!
//! What never appears: the query string (it carries `?api_key=` and search
//! terms with customer data), any header value but the host, and the
//! user-info of an absolute-form target (`http://KEY:X@host/`).

use std::borrow::Cow;
use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Duration;

use http::Method;

use crate::reject::Reject;

/// The `tracing` target of every access-log line.
pub const TARGET: &str = "deskgate::access";

/// The longest path logged, in bytes; a longer one is cut and marked `…`.
const MAX_PATH: usize = 512;
/// The longest host logged, in bytes (a DNS name has at most 253).
const MAX_HOST: usize = 255;

/// What a line shows of the request, as it arrived.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub method: &'a Method,
    /// The path without the query.
    pub path: &'a str,
    /// The authority of an absolute-form or h2 target, else the `Host`
    /// field's value; `None` when neither came.
    pub host: Option<&'a [u8]>,
}

/// Why a call was refused: the refusal's code and, where the answer gives
/// one, the budget that ran out and when to retry.
#[derive(Debug, Clone, Copy)]
pub struct Refused {
    pub reason: &'static str,
    /// The policy that ran out (`account` or an endpoint), for a 429.
    pub policy: Option<&'static str>,
    /// `Retry-After` of the answer, in seconds.
    pub retry_after_s: Option<u64>,
    /// The upstream error that became this refusal (`connect`, `timeout`,
    /// `protocol`, ...).
    pub upstream_error: Option<&'static str>,
}

impl Refused {
    /// What the line says about `reject`; the caller adds the upstream
    /// error that led to it, if any.
    pub fn of(reject: &Reject) -> Refused {
        let (policy, retry_after_s) = match reject {
            Reject::RateLimited { policy, retry_after_s, .. } => (Some(*policy), Some(*retry_after_s)),
            Reject::ServiceUnavailable { retry_after_s } => (None, Some(*retry_after_s)),
            _ => (None, None),
        };
        Refused { reason: reject.code(), policy, retry_after_s, upstream_error: None }
    }
}

/// One call's line.
#[derive(Debug)]
pub struct Line<'a> {
    pub request_id: &'a str,
    /// An API call (policed, charged); `false` for the portal and for a
    /// request refused before its path was judged.
    pub api: bool,
    pub tenant: Option<&'a str>,
    pub endpoint: Option<&'static str>,
    pub target: Target<'a>,
    /// The normalised path forwarded, when it differs from the one received.
    pub forwarded_path: Option<&'a str>,
    /// The downstream peer (the TCP connection's address).
    pub client: SocketAddr,
    pub status: u16,
    /// Credits charged for the call (after any refund).
    pub cost: Option<u32>,
    /// Credits left in the tenant's account window (`X-RateLimit-Remaining`).
    pub remaining: Option<u32>,
    /// The upstream's status, when it answered.
    pub upstream_status: Option<u16>,
    /// Time until the upstream's answer head arrived (or the exchange failed).
    pub upstream: Option<Duration>,
    /// Time from the request head read to the answer's head handed to the
    /// connection.
    pub total: Duration,
    /// `None` for a served call.
    pub refused: Option<Refused>,
}

/// Whether a call gets a line: every refused one, a served one as
/// `[access_log] sample_served` says, and none while the log filter drops
/// `deskgate::access` at `info` (`RUST_LOG=warn`). A served call that is
/// not sampled costs a comparison; a filtered one, a cached callsite check.
#[inline]
pub fn wanted(refused: bool, sample_served: f64) -> bool {
    (refused || sampled(sample_served)) && tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// Whether a served call is sampled, given `[access_log] sample_served`.
/// At 1.0 and 0.0 (the usual settings) this is a comparison; in between,
/// one draw from a per-thread generator.
#[inline]
fn sampled(share: f64) -> bool {
    if share >= 1.0 {
        true
    } else if share <= 0.0 {
        false
    } else {
        draw() < share
    }
}

/// A uniform draw in [0, 1) from a per-thread xorshift generator: sampling
/// needs no cryptographic quality, and a shared one would be a contended
/// atomic on every call.
fn draw() -> f64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(rand::random::<u64>() | 1);
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// Writes `line` (for a call [`wanted`] said yes to).
pub fn write(line: &Line<'_>) {
    let path = bounded_path(line.forwarded_path.unwrap_or(line.target.path));
    let host = line.target.host.map(host_for_log);
    let host = host.as_deref();
    let method = line.target.method.as_str();
    let upstream_ms = line.upstream.map(millis);
    let total_ms = millis(line.total);
    // One field list for both messages: the fields are the line's contract
    // (docs/operations.md), whatever the outcome.
    macro_rules! event {
        ($message:literal, $refused:expr) => {
            tracing::info!(
                target: TARGET,
                request_id = line.request_id,
                api = line.api,
                tenant = line.tenant,
                endpoint = line.endpoint,
                method,
                path = &*path,
                host,
                client = %line.client,
                status = line.status,
                cost = line.cost,
                remaining = line.remaining,
                upstream_status = line.upstream_status,
                upstream_ms,
                total_ms,
                reason = $refused.map(|r: &Refused| r.reason),
                policy = $refused.and_then(|r: &Refused| r.policy),
                retry_after_s = $refused.and_then(|r: &Refused| r.retry_after_s),
                upstream_error = $refused.and_then(|r: &Refused| r.upstream_error),
                $message
            )
        };
    }
    match &line.refused {
        None => event!("served", None::<&Refused>),
        Some(r) => event!("refused", Some(r)),
    }
}

/// Milliseconds with microsecond precision.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// `path`, cut to [`MAX_PATH`] bytes on a character boundary.
fn bounded_path(path: &str) -> Cow<'_, str> {
    if path.len() <= MAX_PATH {
        return Cow::Borrowed(path);
    }
    let mut end = MAX_PATH;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &path[..end]))
}

/// The host as it arrived, fit for a log line: any user-info (`KEY:X@`, a
/// credential) dropped, cut to [`MAX_HOST`] bytes, and every byte that is
/// not visible ASCII shown as `?`. A clean host is borrowed as is.
pub fn host_for_log(raw: &[u8]) -> Cow<'_, str> {
    let host = match raw.iter().rposition(|&b| b == b'@') {
        Some(at) => &raw[at + 1..],
        None => raw,
    };
    let cut = host.len() > MAX_HOST;
    let host = &host[..host.len().min(MAX_HOST)];
    if !cut && host.iter().all(|b| b.is_ascii_graphic()) {
        if let Ok(s) = std::str::from_utf8(host) {
            return Cow::Borrowed(s);
        }
    }
    let mut s: String = host.iter().map(|&b| if b.is_ascii_graphic() { b as char } else { '?' }).collect();
    if cut {
        s.push('…');
    }
    Cow::Owned(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_host_is_shown_as_it_came() {
        assert!(matches!(host_for_log(b"acme.freshdesk.com:8080"), Cow::Borrowed("acme.freshdesk.com:8080")));
    }

    #[test]
    fn user_info_never_reaches_the_log() {
        assert_eq!(host_for_log(b"APIKEY123:X@acme.freshdesk.com"), "acme.freshdesk.com");
        assert_eq!(host_for_log(b"a@b:c@evil.example"), "evil.example");
    }

    #[test]
    fn control_characters_and_non_ascii_are_masked_and_length_is_bounded() {
        assert_eq!(host_for_log(b"evil\r\n{\"x\":1}\x1b[31m.example"), "evil??{\"x\":1}?[31m.example");
        assert_eq!(host_for_log("bücher.example".as_bytes()), "b??cher.example");
        let long = vec![b'a'; 10_000];
        let shown = host_for_log(&long);
        assert_eq!(shown.len(), MAX_HOST + '…'.len_utf8());
        assert!(shown.ends_with('…'));
    }

    #[test]
    fn a_long_path_is_cut_on_a_character_boundary() {
        assert_eq!(bounded_path("/api/v2/tickets"), "/api/v2/tickets");
        let long = format!("/{}", "é".repeat(400));
        let shown = bounded_path(&long);
        assert!(shown.len() <= MAX_PATH + '…'.len_utf8() && shown.ends_with('…'), "{shown}");
    }

    #[test]
    fn sampling_at_the_ends_is_all_or_nothing_and_in_between_near_the_share() {
        assert!((0..1000).all(|_| sampled(1.0)));
        assert!(!(0..1000).any(|_| sampled(0.0)));
        let hits = (0..100_000).filter(|_| sampled(0.1)).count();
        assert!((8_000..12_000).contains(&hits), "{hits} of 100000 at 0.1");
    }

    #[test]
    fn a_rate_limited_refusal_names_its_policy_and_retry() {
        let r = Refused::of(&Reject::RateLimited { policy: "ticket_list", quota: 3, window_s: 60, retry_after_s: 42 });
        assert_eq!((r.reason, r.policy, r.retry_after_s), ("rate_limit_exceeded", Some("ticket_list"), Some(42)));
        let r = Refused::of(&Reject::BadGateway);
        assert_eq!((r.reason, r.policy, r.retry_after_s), ("bad_gateway", None, None));
    }
}
