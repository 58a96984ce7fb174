//! Command line (SPEC §1).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "deskgate", version, about = "Rate-limiting reverse proxy for a helpdesk API")]
pub struct Cli {
    /// Config file [default: $DESKGATE_CONFIG, else config/deskgate.toml]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log format [default: text on a TTY, json otherwise]; level from RUST_LOG
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Worker threads [default: $DESKGATE_WORKERS, else one per CPU]; 1 runs
    /// everything on one thread (no work-stealing overhead: best for a sidecar
    /// pinned to one core)
    #[arg(long, global = true, env = "DESKGATE_WORKERS", value_name = "N")]
    pub workers: Option<usize>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default)
    Run,
    /// Load and validate the config, print a summary; exit 1 on any error
    Check,
    /// Ask the admin listener named in the config for /readyz; exit 0 when
    /// ready, 1 otherwise (a container HEALTHCHECK without shell or curl)
    Healthcheck,
    /// Start a sample helpdesk and the gateway in front of it, print curl commands
    Demo {
        /// API listener of the demo gateway (the container image sets
        /// 0.0.0.0:8080, so `-p` reaches it)
        #[arg(long, env = "DESKGATE_DEMO_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
        /// Admin listener of the demo gateway
        #[arg(long, env = "DESKGATE_DEMO_ADMIN", default_value = "127.0.0.1:9090")]
        admin: String,
    },
    /// Serve only the demo's sample helpdesk (an upstream stand-in to try the
    /// gateway against); SIGTERM or Ctrl-C stops it
    SampleHelpdesk {
        /// Where the sample helpdesk listens
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Cli {
    /// The config path: `--config`, else `$DESKGATE_CONFIG`, else `config/deskgate.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .or_else(|| std::env::var_os("DESKGATE_CONFIG").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("config/deskgate.toml"))
    }
}
