//! The process's log subscriber: text on a TTY, JSON lines otherwise, and a
//! filter that `RUST_LOG` scopes to deskgate.
//!
//! `RUST_LOG=debug` means "deskgate at debug", not "every dependency at
//! debug": at debug, h2, hyper and the Redis client log every frame and
//! pool checkout, which drowns the gateway's own lines. So a bare level in
//! `RUST_LOG` applies to the `deskgate` target; every other target stays at
//! `warn` (or quieter, when the bare level is quieter) unless `RUST_LOG`
//! names it (`RUST_LOG=debug,h2=trace`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// The level dependencies log at unless `RUST_LOG` names them.
const DEPENDENCIES: &str = "warn";
/// deskgate's level when `RUST_LOG` gives none.
const OWN: &str = "info";

/// Installs the process-wide subscriber (`format`: `--log-format`; by
/// default text on a TTY, JSON otherwise).
pub fn init(format: Option<LogFormat>) {
    let format = format.unwrap_or(if std::io::stderr().is_terminal() { LogFormat::Text } else { LogFormat::Json });
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = match EnvFilter::try_new(directives(rust_log.as_deref())) {
        Ok(f) => f,
        Err(e) => {
            // No subscriber yet: say it where the operator looks.
            eprintln!("deskgate: RUST_LOG is not a valid filter ({e}); logging deskgate at {OWN}");
            EnvFilter::new(directives(None))
        }
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
}

/// The filter directives for a `RUST_LOG` value: its bare levels become
/// `deskgate=LEVEL`, its named targets stay as given, and everything else
/// logs at `warn` (or at the bare level, if that is quieter).
pub fn directives(rust_log: Option<&str>) -> String {
    let given: Vec<&str> = rust_log.unwrap_or("").split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
    let mut own = None;
    let mut named = Vec::new();
    for d in given {
        match level_rank(d) {
            Some(_) => own = Some(d),
            None => named.push(d),
        }
    }
    let names_deskgate = named.iter().any(|d| d.split('=').next().is_some_and(|t| t.trim() == "deskgate"));
    let own_level = own.unwrap_or(OWN);
    let rest = match (level_rank(own_level), level_rank(DEPENDENCIES)) {
        (Some(o), Some(d)) if o < d => own_level,
        _ => DEPENDENCIES,
    };
    let mut out = vec![rest.to_owned()];
    // An explicit `deskgate=...` wins over a bare level.
    if !names_deskgate {
        out.push(format!("deskgate={own_level}"));
    }
    out.extend(named.iter().map(|d| (*d).to_owned()));
    out.join(",")
}

/// How much a bare level lets through (`off` least), or `None` when `d` is
/// not a bare level.
fn level_rank(d: &str) -> Option<u8> {
    Some(match d.to_ascii_lowercase().as_str() {
        "off" => 0,
        "error" => 1,
        "warn" => 2,
        "info" => 3,
        "debug" => 4,
        "trace" => 5,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_rust_log_deskgate_logs_info_and_dependencies_warn() {
        assert_eq!(directives(None), "warn,deskgate=info");
        assert_eq!(directives(Some("")), "warn,deskgate=info");
    }

    #[test]
    fn a_bare_level_applies_to_deskgate_only() {
        assert_eq!(directives(Some("debug")), "warn,deskgate=debug");
        assert_eq!(directives(Some("TRACE")), "warn,deskgate=TRACE");
    }

    #[test]
    fn a_quieter_bare_level_quiets_dependencies_too() {
        assert_eq!(directives(Some("error")), "error,deskgate=error");
        assert_eq!(directives(Some("off")), "off,deskgate=off");
    }

    #[test]
    fn named_targets_are_kept_as_given() {
        assert_eq!(directives(Some("debug,h2=trace")), "warn,deskgate=debug,h2=trace");
        assert_eq!(directives(Some("hyper=debug")), "warn,deskgate=info,hyper=debug");
        assert_eq!(directives(Some("deskgate=trace")), "warn,deskgate=trace");
        assert_eq!(directives(Some("debug,deskgate=trace")), "warn,deskgate=trace");
        assert_eq!(directives(Some("deskgate::access=off")), "warn,deskgate=info,deskgate::access=off");
    }

    #[test]
    fn every_result_is_a_filter_tracing_accepts() {
        for v in ["debug", "debug,h2=trace", "off", "deskgate::access=off", "warn,deskgate=debug"] {
            assert!(EnvFilter::try_new(directives(Some(v))).is_ok(), "{v}");
        }
    }

    #[test]
    fn the_default_filter_keeps_dependencies_quiet_at_debug() {
        use tracing_subscriber::layer::SubscriberExt;
        // An EnvFilter answers per callsite; ask it through a subscriber.
        let filter = EnvFilter::new(directives(Some("debug")));
        let subscriber = tracing_subscriber::registry().with(filter);
        tracing::subscriber::with_default(subscriber, || {
            assert!(tracing::enabled!(target: "deskgate::proxy", tracing::Level::DEBUG));
            assert!(!tracing::enabled!(target: "h2::codec", tracing::Level::DEBUG));
            assert!(!tracing::enabled!(target: "hyper_util::client::pool", tracing::Level::INFO));
            assert!(tracing::enabled!(target: "hyper_util::client::pool", tracing::Level::WARN));
        });
    }
}
