//! Wiring only: telemetry, settings, build, run.

use std::process::ExitCode;

use selfup::app::Application;
use selfup::config::Settings;

const USAGE: &str = "usage: selfup [serve | healthcheck | version]";

fn main() -> ExitCode {
    let command = std::env::args().nth(1).unwrap_or_else(|| "serve".into());
    match command.as_str() {
        "serve" => serve(),
        "healthcheck" => healthcheck(),
        "version" | "--version" => {
            println!("selfup {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("selfup: unknown command {other:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn settings() -> Result<Settings, ExitCode> {
    Settings::load().map_err(|e| {
        eprintln!("selfup: {e}");
        ExitCode::from(78)
    })
}

fn serve() -> ExitCode {
    selfup::telemetry::init();
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
    let url = format!("http://{}/health", selfup::handover::instance_addr(settings.port));
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
