//! `deskgate`: parse the command line, set up logging, dispatch, exit codes.

use std::process::ExitCode;

use clap::Parser;
use deskgate::cli::{Cli, Command};
use deskgate::config::Config;

// jemalloc with background purging: memory freed after a reload (old and new
// snapshots briefly coexist, and parsing 10,000 tenants' TOML is transient)
// goes back to the OS within seconds instead of staying in the glibc arena of
// the blocking thread that parsed it.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    deskgate::logging::init(cli.log_format);
    let mut builder = match cli.workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("deskgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let path = cli.config_path();
    match cli.command {
        Some(Command::Check) => match Config::load(&path) {
            Ok(cfg) => {
                println!("{}", cfg.summary());
                println!("{}: OK", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Healthcheck) => match deskgate::healthcheck::run(&path) {
            Ok(ready) => {
                println!("ready: {ready}");
                ExitCode::SUCCESS
            }
            Err(why) => {
                eprintln!("deskgate healthcheck: {why}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Demo { listen, admin }) => match runtime.block_on(deskgate::demo::run(&listen, &admin)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("deskgate demo: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::SampleHelpdesk { listen }) => {
            match runtime.block_on(deskgate::demo::run_sample_helpdesk(&listen)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("deskgate sample-helpdesk: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        None | Some(Command::Run) => {
            let cfg = match Config::load(&path) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(deskgate::app::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("deskgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
