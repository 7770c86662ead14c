//! Command-line interface: argument definitions and the `check` report.
//!
//! `main.rs` only dispatches; what each command prints is built here so it can be tested.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, Severity, TargetConfig, TlsSource, defaults};

#[derive(Debug, Parser)]
#[command(name = "gatehouse", version, about = "An HTTP gateway driven by one TOML routes file", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// The routes file.
    #[arg(short = 'c', long = "config", env = "GATEHOUSE_CONFIG", default_value = defaults::CONFIG_PATH)]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve: bind the listeners and proxy until SIGTERM or SIGINT (SIGHUP reloads the file).
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Log format (overrides `format` in `[log]`).
        #[arg(long)]
        log_format: Option<LogFormatArg>,
        /// Worker threads (overrides `workers` in `[server]`; default: one per core).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Validate the routes file like `nginx -t`: exit 0 with a summary, or 1 with every error.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Translate an nginx configuration into a Gatehouse routes file, with a report of what was
    /// translated, approximated or left out (on stderr).
    ImportNginx {
        /// The nginx configuration (nginx.conf or a site file).
        file: PathBuf,
        /// Write the routes file here instead of stdout.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// Resolve relative paths (include, certificates, roots) against this folder, like nginx's -p.
        /// Default: the file's folder.
        #[arg(short = 'p', long = "prefix")]
        prefix: Option<PathBuf>,
    },
    /// Set up Clerk's Frontend API proxy with Clerk: verify it, enable or disable it.
    #[command(subcommand)]
    Clerk(ClerkCommand),
}

#[derive(Debug, Subcommand)]
pub enum ClerkCommand {
    /// Ask Clerk's health endpoint through the public proxy URL, as Clerk's own check does.
    Verify {
        /// The public proxy URL, e.g. `https://app.example.com/__clerk`
        #[arg(long)]
        proxy_url: String,
        /// The domain id (dmn_...) from the Clerk Dashboard or the Backend API.
        #[arg(long)]
        domain_id: Option<String>,
    },
    /// Register the proxy URL for a domain (PATCH /v1/domains/{id}); refuses when verify fails.
    Enable {
        #[arg(long)]
        domain_id: String,
        #[arg(long)]
        proxy_url: String,
        /// Enable even when verify fails.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Switch the domain back to Clerk's own hosts (proxy_url = null).
    Disable {
        #[arg(long)]
        domain_id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// The Backend API (for tests and staging).
    #[arg(long, default_value = crate::clerk_setup::DEFAULT_API_URL)]
    pub api_url: String,
    /// Read the secret key from this file instead of CLERK_SECRET_KEY.
    #[arg(long)]
    pub secret_key_file: Option<PathBuf>,
}

/// The one-screen summary `gatehouse check` prints for a valid config.
pub fn check_report(c: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: configuration OK", c.path.display());
    let s = &c.server;
    let list = |v: &[std::net::SocketAddr]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let _ = writeln!(
        out,
        "listeners: http {}; https {}; admin {}",
        list(&s.http),
        list(&s.https),
        s.admin.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
    );
    let routes: usize = c.sites.iter().map(|x| x.routes.len()).sum();
    let _ = writeln!(out, "{} sites, {} routes", c.sites.len(), routes);
    for site in &c.sites {
        let hosts = site
            .hosts
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut flags = Vec::new();
        if site.default {
            flags.push("default".to_string());
        }
        match &site.tls {
            Some(TlsSource::Files {
                cert_path, loaded, ..
            }) => flags.push(format!(
                "tls {} (expires {})",
                cert_path.display(),
                loaded.not_after_text()
            )),
            Some(TlsSource::SelfSigned) => flags.push("tls self-signed".into()),
            None => {}
        }
        if let Some(status) = site.redirect_https {
            flags.push(format!("redirect_https {}", status.as_u16()));
        }
        let flags = if flags.is_empty() {
            String::new()
        } else {
            format!(" [{}]", flags.join(", "))
        };
        let _ = writeln!(
            out,
            "site {}: {}{}",
            site.name,
            if hosts.is_empty() {
                "(any host)".into()
            } else {
                hosts
            },
            flags
        );
        for r in &site.routes {
            let target = match &r.target {
                TargetConfig::Upstream(u) => format!(
                    "upstream {}",
                    u.backends
                        .iter()
                        .map(|b| b.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                TargetConfig::Redirect(rd) => {
                    format!("redirect {} {}", rd.status.as_u16(), rd.to.as_str())
                }
                TargetConfig::Respond(rs) => format!("respond {}", rs.status.as_u16()),
                TargetConfig::Clerk(cl) => format!("clerk -> {}", cl.fapi.origin()),
                TargetConfig::Static(st) => format!("static {}", st.root.display()),
            };
            let strip = if r.options.strip_prefix {
                " (strip prefix)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  {:<24} -> {}{}   [{}]",
                r.matcher.to_string(),
                target,
                strip,
                r.id
            );
        }
    }
    let warnings: Vec<_> = c
        .warnings
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .collect();
    if !warnings.is_empty() {
        let _ = writeln!(out, "{} warning(s):", warnings.len());
        for w in warnings {
            let _ = writeln!(out, "{w}");
        }
    }
    out
}
