//! The handover under load, next to the stop-then-start recreate every
//! other updater does, on the same machine, image and nginx.
//!
//!   cargo bench --bench handover [-- UPGRADES CLIENTS]     (defaults: 5 upgrades, 8 clients)
//!
//! Prints, for each strategy: requests sent and failed, p99 and max latency
//! inside the upgrade windows and outside them, and the upgrade time (from
//! the request to the answer, or from `docker stop` to the new instance's
//! first healthy answer) as median and max. Then UPGRADES upgrades with no
//! load: the time from the request to the answer (median, min, max) and the
//! median of each step the answer's `timings` report. It is not a test:
//! nothing fails.

#[path = "../tests/e2e/harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "../tests/e2e/load.rs"]
#[allow(dead_code)]
mod load;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{Suite, docker, eventually};
use load::{Load, Sample};

/// The versions the upgrades cycle through, each named exactly.
const CYCLE: [&str; 3] = ["1.1.0", "1.2.0", "1.0.0"];

struct Figures {
    name: &'static str,
    samples: Vec<Sample>,
    windows: Vec<(Instant, Instant)>,
}

fn main() -> ExitCode {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let upgrades = args.first().copied().unwrap_or(5).max(1);
    let clients = args.get(1).copied().unwrap_or(8).max(1);
    let suite = match Suite::start() {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let blue_green = runtime.block_on(blue_green(suite.clone(), upgrades, clients));
    let recreate = runtime.block_on(recreate(suite.clone(), upgrades, clients));
    let unloaded = runtime.block_on(unloaded(suite.clone(), upgrades));
    drop(runtime);
    drop(suite);
    println!("\n{upgrades} upgrades per strategy under {clients} clients (GET / and POST /echo through nginx)\n");
    println!(
        "{:<22} {:>9} {:>7} {:>10} {:>13} {:>13} {:>13} {:>13} {:>15} {:>12}",
        "strategy",
        "requests",
        "failed",
        "errors for",
        "p99 upgrading",
        "max upgrading",
        "p99 steady",
        "max steady",
        "upgrade median",
        "upgrade max"
    );
    for f in [blue_green, recreate] {
        print_row(&f);
    }
    print_unloaded(&unloaded);
    ExitCode::SUCCESS
}

/// Waits until the clients have sent 100 requests each from now: a stretch of
/// steady load between the upgrades.
async fn steady(load: &Load, clients: usize) {
    load.wait_for_samples_after(Instant::now(), 100 * clients, Duration::from_secs(60))
        .await;
}

/// The steps of an upgrade answer's `timings`, in the order they run.
const STEPS: [&str; 5] = ["resolve", "pull", "start", "health", "takeover"];

/// One unloaded upgrade: the time from the request to the answer, and the
/// answer's own timings of each step (ms), in [`STEPS`] order.
struct Unloaded {
    answered: Duration,
    steps: [u64; STEPS.len()],
}

async fn unloaded(suite: Arc<Suite>, upgrades: usize) -> Vec<Unloaded> {
    let env = suite.env(&[]);
    for v in ["1.1.0", "1.2.0", "1.0.0"] {
        suite.release(&env.repository, v);
    }
    env.up("1.0.0").await;
    let mut live = env.ports[0];
    let mut runs = Vec::new();
    for i in 0..upgrades {
        let version = CYCLE[i % CYCLE.len()];
        let asked = Instant::now();
        let (status, body) = env.upgrade(live, Some(&format!("={version}"))).await;
        let answered = asked.elapsed();
        assert_eq!(status, 200, "{body}");
        let steps = STEPS.map(|s| body["timings"][format!("{s}_ms")].as_u64().unwrap_or_default());
        runs.push(Unloaded { answered, steps });
        live = body["new_port"].as_u64().unwrap() as u16;
        env.wait_takeover_done(live).await;
    }
    runs
}

fn print_unloaded(runs: &[Unloaded]) {
    let mut answered: Vec<Duration> = runs.iter().map(|r| r.answered).collect();
    answered.sort();
    let median = |mut v: Vec<u64>| {
        v.sort();
        v[v.len() / 2]
    };
    let steps: Vec<String> = STEPS
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{s} {} ms", median(runs.iter().map(|r| r.steps[i]).collect())))
        .collect();
    println!(
        "\n{} upgrades without load: answered in {} median ({} to {}); median steps: {}",
        runs.len(),
        ms(percentile(&answered, 0.5)),
        ms(answered[0]),
        ms(answered[answered.len() - 1]),
        steps.join(", ")
    );
}

async fn blue_green(suite: Arc<Suite>, upgrades: usize, clients: usize) -> Figures {
    let env = suite.env(&[]);
    for v in ["1.1.0", "1.2.0", "1.0.0"] {
        suite.release(&env.repository, v);
    }
    env.up("1.0.0").await;
    let load = Load::start(env.public(""), clients, usize::MAX, Duration::from_secs(600));
    steady(&load, clients).await;
    let mut live = env.ports[0];
    let mut windows = Vec::new();
    for i in 0..upgrades {
        let version = CYCLE[i % CYCLE.len()];
        let asked = Instant::now();
        let (status, body) = env.upgrade(live, Some(&format!("={version}"))).await;
        let answered = Instant::now();
        assert_eq!(status, 200, "{body}");
        windows.push((asked, answered));
        live = body["new_port"].as_u64().unwrap() as u16;
        env.wait_takeover_done(live).await;
        steady(&load, clients).await;
    }
    Figures {
        name: "blue-green (selfup)",
        samples: load.finish().await,
        windows,
    }
}

async fn recreate(suite: Arc<Suite>, upgrades: usize, clients: usize) -> Figures {
    // The same nginx and the same image, but the container is replaced the
    // way stop-then-start updaters do it: stop, remove, run the new image.
    let env = suite.env(&[]);
    let port = env.ports[0];
    let nginx = docker(&[
        "run",
        "-d",
        "--label",
        &suite.label(),
        "--name",
        &env.nginx,
        "--network",
        "host",
        "-v",
        &format!("{}:/etc/nginx/nginx.conf:ro", env.path().join("nginx.conf").display()),
        "-v",
        &format!("{}:/etc/nginx/selfup:ro", env.path().join("live").display()),
        &suite.nginx_image,
    ]);
    let _nginx = harness::Container(nginx.trim().to_string());
    let run = |version: &str| {
        docker(&[
            "run",
            "-d",
            "--network",
            "host",
            "--label",
            &suite.label(),
            "--label",
            &format!("com.docker.compose.project={}", env.project),
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-e",
            &format!("SELFUP_PORT={port}"),
            "-e",
            &format!("SELFUP_PORTS=[{port},{}]", env.ports[1]),
            "-e",
            "SELFUP_NGINX_CONTAINER=",
            &suite.image("selfup", version),
        ])
        .trim()
        .to_string()
    };
    let mut current = run("1.0.0");
    env.wait_public_version("1.0.0").await;
    let load = Load::start(env.public(""), clients, usize::MAX, Duration::from_secs(600));
    steady(&load, clients).await;
    let mut windows = Vec::new();
    for i in 0..upgrades {
        let version = CYCLE[i % CYCLE.len()];
        let asked = Instant::now();
        docker(&["stop", "-t", "30", &current]);
        docker(&["rm", &current]);
        current = run(version);
        eventually("the recreated instance to answer", Duration::from_secs(60), || async {
            let r = env
                .http
                .get(env.direct(port, "/health"))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        windows.push((asked, Instant::now()));
        steady(&load, clients).await;
    }
    let samples = load.finish().await;
    docker(&["rm", "-f", &current]);
    Figures {
        name: "stop-then-start",
        samples,
        windows,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn print_row(f: &Figures) {
    let in_window = |s: &Sample| f.windows.iter().any(|(a, b)| s.sent + s.latency >= *a && s.sent <= *b);
    let (mut inside, mut outside): (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
    for s in &f.samples {
        if in_window(s) {
            inside.push(s.latency)
        } else {
            outside.push(s.latency)
        }
    }
    inside.sort();
    outside.sort();
    let mut durations: Vec<Duration> = f.windows.iter().map(|(a, b)| *b - *a).collect();
    durations.sort();
    let failed: Vec<&Sample> = f.samples.iter().filter(|s| s.error.is_some()).collect();
    // How long clients saw errors: per upgrade, from the first failed request
    // sent to the last one answered (a failure comes back in well under a
    // millisecond, so a client in a loop counts many in a short outage).
    let errors_for: Duration = f
        .windows
        .iter()
        .filter_map(|(a, b)| {
            let inside: Vec<&&Sample> = failed
                .iter()
                .filter(|s| s.sent + s.latency >= *a && s.sent <= *b)
                .collect();
            let first = inside.iter().map(|s| s.sent).min()?;
            let last = inside.iter().map(|s| s.sent + s.latency).max()?;
            Some(last - first)
        })
        .sum();
    println!(
        "{:<22} {:>9} {:>7} {:>10} {:>13} {:>13} {:>13} {:>13} {:>15} {:>12}",
        f.name,
        f.samples.len(),
        failed.len(),
        ms(errors_for),
        ms(percentile(&inside, 0.99)),
        ms(inside.last().copied().unwrap_or_default()),
        ms(percentile(&outside, 0.99)),
        ms(outside.last().copied().unwrap_or_default()),
        ms(percentile(&durations, 0.5)),
        ms(durations.last().copied().unwrap_or_default()),
    );
}
