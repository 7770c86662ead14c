//! The `gatehouse` binary: parse arguments, set up logging and the runtime, dispatch.

use std::process::ExitCode;

use clap::Parser as _;
use gatehouse::cli::{ClerkCommand, Cli, Command, LogFormatArg, check_report};
use gatehouse::config::{self, LogFormat};

/// mimalloc rather than glibc's allocator: a proxied request makes a few dozen small,
/// short-lived allocations (header maps, URIs, boxed futures), and glibc's malloc/free spent
/// ~19% of the instructions of a keep-alive request under callgrind (bench/callgrind.sh).
///
/// mimalloc replaces `malloc` and `free` themselves (the crate's `override` feature), and Rust
/// allocates through them with `System`. The crate's own `MiMalloc` sends every allocation
/// through `mi_malloc_aligned`, whose slow path over-allocates for any size that is not a power
/// of two: ~4 allocations per request went that way, 2% of a new connection's instructions.
/// `System` calls plain `malloc` unless the alignment is above 16, as in glibc. C code in the
/// process (aws-lc) allocates from mimalloc too.
#[global_allocator]
static ALLOC: std::alloc::System = std::alloc::System;
// Linked for its `malloc`: nothing in it is called by name.
use mimalloc as _;

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
        Command::Clerk(cmd) => clerk(cmd),
        Command::ImportNginx {
            file,
            output,
            prefix,
        } => match gatehouse::nginx::import(&file, prefix.as_deref()) {
            Ok((toml, report)) => {
                eprint!("{report}");
                match output {
                    Some(out) => {
                        if let Err(e) = std::fs::write(&out, toml) {
                            eprintln!("gatehouse: cannot write {}: {e}", out.display());
                            return ExitCode::from(1);
                        }
                        eprintln!(
                            "wrote {}; next: gatehouse check -c {}",
                            out.display(),
                            out.display()
                        );
                    }
                    None => print!("{toml}"),
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gatehouse: {e}");
                ExitCode::from(1)
            }
        },
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
            // nginx's model: each worker is a thread with its own single-threaded runtime that
            // accepts from the shared listeners and serves its connections start to finish; no
            // work stealing (measured: bench/README.md). One worker: the main thread is the
            // worker. The main thread's runtime also runs reloads, signals and the admin endpoint.
            let threads = match workers.or(loaded.server.workers) {
                Some(n) if n > 0 => n,
                _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
            };
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let workers = if threads > 1 {
                match gatehouse::server::worker_runtimes(threads) {
                    Ok(w) => w,
                    Err(e) => {
                        eprintln!("gatehouse: cannot start {threads} worker threads: {e}");
                        return ExitCode::from(1);
                    }
                }
            } else {
                Vec::new()
            };
            let options = gatehouse::Options {
                config_path: config.config.clone(),
                env,
                workers,
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

/// The main thread's runtime (single-threaded: see `Command::Run`), or the exit code after saying
/// why it could not start.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("gatehouse: cannot start the runtime: {e}");
            ExitCode::from(1)
        })
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

/// `gatehouse clerk ...`: exit 0 on success, 1 otherwise; every failure says what to do.
fn clerk(cmd: ClerkCommand) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    use gatehouse::clerk_setup as setup;
    let report = |v: &setup::Verdict| {
        println!("{}", v.summary);
        if let Some(ip) = &v.x_forwarded_for {
            println!("x_forwarded_for seen by Clerk: {ip}");
        }
        for h in &v.hints {
            println!("  fix: {h}");
        }
    };
    rt.block_on(async {
        match cmd {
            ClerkCommand::Verify { proxy_url, domain_id } => {
                let v = setup::verify(&proxy_url, domain_id.as_deref()).await;
                report(&v);
                if v.healthy { ExitCode::SUCCESS } else { ExitCode::from(1) }
            }
            ClerkCommand::Enable { domain_id, proxy_url, force, api } => {
                let secret = match setup::secret_key(api.secret_key_file.as_deref()) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("gatehouse: {e}");
                        return ExitCode::from(1);
                    }
                };
                let v = setup::verify(&proxy_url, Some(&domain_id)).await;
                report(&v);
                if !v.healthy && !force {
                    eprintln!("gatehouse: not enabling a proxy that does not work yet (Clerk's sign-in would break); fix it, or pass --force");
                    return ExitCode::from(1);
                }
                match setup::set_proxy_url(&api.api_url, &domain_id, &secret, Some(&proxy_url)).await {
                    Ok(msg) => {
                        println!("{msg}");
                        println!("next: set the client-side proxy URL (NEXT_PUBLIC_CLERK_PROXY_URL={proxy_url}, or proxyUrl) and redeploy the app");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("gatehouse: {e}");
                        ExitCode::from(1)
                    }
                }
            }
            ClerkCommand::Disable { domain_id, api } => {
                let secret = match setup::secret_key(api.secret_key_file.as_deref()) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("gatehouse: {e}");
                        return ExitCode::from(1);
                    }
                };
                match setup::set_proxy_url(&api.api_url, &domain_id, &secret, None).await {
                    Ok(msg) => {
                        println!("{msg}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("gatehouse: {e}");
                        ExitCode::from(1)
                    }
                }
            }
        }
    })
}
