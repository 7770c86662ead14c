//! The `gatehouse` binary: parse arguments, set up logging and the runtime, dispatch.

use std::process::ExitCode;

use clap::Parser as _;
use gatehouse::cli::{Cli, Command, LogFormatArg, check_report};
use gatehouse::config::{self, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    gatehouse::tls::install_default_provider();
    match cli.command {
        Command::Check { config } => {
            let env = config::process_env();
            match config::load(&config.config, &env) {
                Ok(c) => {
                    print!("{}", check_report(&c));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    let diags = e.diagnostics();
                    let errors = diags
                        .iter()
                        .filter(|d| d.severity == config::Severity::Error)
                        .count();
                    eprintln!("{e}");
                    eprintln!(
                        "{}: {errors} error(s); configuration NOT valid",
                        config.config.display()
                    );
                    ExitCode::from(1)
                }
            }
        }
        Command::Run {
            config,
            log_format,
            workers,
        } => {
            let env = config::process_env();
            let loaded = match config::load(&config.config, &env) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    eprintln!(
                        "gatehouse: not started: the configuration is not valid (run `gatehouse check -c {}`)",
                        config.config.display()
                    );
                    return ExitCode::from(1);
                }
            };
            let format = match log_format {
                Some(LogFormatArg::Json) => LogFormat::Json,
                Some(LogFormatArg::Text) => LogFormat::Text,
                None => loaded.log.format,
            };
            init_tracing(format, loaded.log.level.as_deref());
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            rt.enable_all();
            if let Some(n) = workers.or(loaded.server.workers) {
                rt.worker_threads(n.max(1));
            }
            let rt = match rt.build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("gatehouse: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            let options = gatehouse::Options {
                config_path: config.config.clone(),
                env,
            };
            match rt.block_on(gatehouse::gateway::run(loaded, options)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("gatehouse: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn init_tracing(format: LogFormat, level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level.unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
