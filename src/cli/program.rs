//! The binary's commands: `serve` (the default), `healthcheck`, `hold`, `version`,
//! and the operator's `upgrade`, `rollback`, `status`, `history`, `pause`,
//! `resume`. Parsed
//! here, in the library, so that the binary's own crate is one line.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use clap::{CommandFactory, FromArgMatches};

use crate::app::Application;
use crate::cli::{self, Client};
use crate::config::Settings;

/// A web service that upgrades itself with a blue-green handover; and its
/// operator's client.
#[derive(Parser)]
#[command(name = "selfup")]
struct Cli {
    /// Without a command: serve.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the image's entrypoint).
    Serve,
    /// The image's HEALTHCHECK: exit 0 when this instance's /health answers 200.
    Healthcheck,
    /// Hold nginx's connections while no instance is live (its own
    /// container, beside selfup): they wait for the next live instance, at
    /// most hold_secs, instead of being refused.
    Hold,
    /// Print the version.
    Version,
    /// Upgrade the live instance to :latest, or to REQ (2, 2.1, =1.4.0), showing each step.
    Upgrade {
        /// 2 = highest 2.x.y, 2.1 = highest 2.1.y, =1.4.0 = exactly that; none: :latest.
        requirement: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Go back to the version that ran before the last upgrade.
    Rollback {
        #[command(flatten)]
        target: Target,
    },
    /// What runs: version, port, uptime, the last upgrades.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// The last upgrades, with outcome and duration.
    History {
        #[command(flatten)]
        target: Target,
    },
    /// Hold new public requests (they wait, they are not refused) until
    /// `selfup resume`, or until hold_secs have passed.
    Pause {
        #[command(flatten)]
        target: Target,
    },
    /// Let the held public requests go on.
    Resume {
        #[command(flatten)]
        target: Target,
    },
}

/// Where the live instance is, and how to print.
#[derive(Args)]
struct Target {
    /// http://127.0.0.1:5800 or unix:/run/selfup/control.sock; default: the
    /// control socket if it answers, else the first of the two ports that does.
    #[arg(long)]
    url: Option<String>,
    /// Print JSON (the instance's answer) instead of text for a person.
    #[arg(long)]
    json: bool,
    /// The bearer token, when the instance has `upgrade_token` set
    /// (default: $SELFUP_UPGRADE_TOKEN); sent to the control socket, or
    /// over TCP only to the address --url names.
    #[arg(long)]
    token: Option<String>,
}

impl Target {
    fn client(self) -> Result<Client, cli::Failure> {
        // The same settings the service reads, for the socket and the ports;
        // a host without them gets the defaults.
        let settings = Settings::load().unwrap_or_default();
        Client::new(
            self.url.as_deref(),
            self.token
                .or_else(|| std::env::var("SELFUP_UPGRADE_TOKEN").ok().filter(|t| !t.is_empty())),
            self.json,
            &settings.control_socket,
            &settings.ports,
        )
    }
}

/// The whole program, for a binary that carries `version`
/// ([`crate::embedded_version`], which `build.sh` writes after the build).
pub fn main(version: &'static str) -> ExitCode {
    if let Err(e) = crate::set_build_version(version) {
        eprintln!("selfup: this binary was built as version {version:?}, which is not semver: {e}");
        return ExitCode::from(78);
    }
    let parsed = match Cli::command()
        .version(version)
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches))
    {
        Ok(parsed) => parsed,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match parsed.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(),
        Command::Healthcheck => healthcheck(),
        Command::Hold => hold(),
        Command::Version => {
            println!("selfup {version}");
            ExitCode::SUCCESS
        }
        Command::Upgrade { requirement, target } => {
            let path = match requirement {
                Some(r) => format!("/upgrade/{}", percent_encode(&r)),
                None => "/upgrade".into(),
            };
            cli::exit(target.client().and_then(|c| c.upgrade("POST", &path)))
        }
        Command::Rollback { target } => cli::exit(target.client().and_then(|c| c.upgrade("POST", "/rollback"))),
        Command::Status { target } => cli::exit(target.client().and_then(|c| c.status())),
        Command::History { target } => cli::exit(target.client().and_then(|c| c.history())),
        Command::Pause { target } => cli::exit(target.client().and_then(|c| c.pause_word("/pause"))),
        Command::Resume { target } => cli::exit(target.client().and_then(|c| c.pause_word("/resume"))),
    }
}

/// A requirement as one path segment (`=` is fine; `/`, spaces and the like are not).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'=' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn settings() -> Result<Settings, ExitCode> {
    Settings::load().map_err(|e| {
        eprintln!("selfup: {e}");
        ExitCode::from(78)
    })
}

fn serve() -> ExitCode {
    crate::telemetry::init();
    let settings = match settings() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let result = runtime.map_err(|e| e.to_string()).and_then(|rt| {
        rt.block_on(async {
            let app = Application::build(settings).map_err(|e| format!("starting: {e}"))?;
            app.run_until_stopped().await.map_err(|e| e.to_string())
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("selfup: {e}");
            ExitCode::FAILURE
        }
    }
}

fn hold() -> ExitCode {
    crate::telemetry::init();
    let settings = match settings() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    match runtime.and_then(|rt| rt.block_on(crate::hold::serve(&settings))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("selfup: holding: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The image's HEALTHCHECK: a scratch image has no curl.
fn healthcheck() -> ExitCode {
    let settings = match settings() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(_) => return ExitCode::FAILURE,
    };
    // Inside the container: its loopback, unless the port is bound to one
    // address only.
    let addr = match settings.bind.is_unspecified() {
        true => crate::handover::loopback_addr(settings.port),
        false => std::net::SocketAddr::new(settings.bind, settings.port),
    };
    let url = format!("http://{addr}/health");
    let ok = rt.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(3))
            .build()
            .ok()?;
        Some(client.get(&url).send().await.ok()?.status().is_success())
    });
    if ok == Some(true) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
