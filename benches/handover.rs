//! The handover under load, next to the same handover of an app that is not
//! selfup (by the companion, `selfup.port`) and the stop-then-start recreate
//! every other updater does, on the same machine and nginx.
//!
//!   cargo bench --bench handover [-- UPGRADES CLIENTS]     (defaults: 5 upgrades, 8 clients)
//!
//! Prints, for clients that keep their connection to nginx and for clients
//! that open a new one per request (and, under keep-alive clients, for a
//! busybox web app handed over blue-green and for a stop-then-start recreate): requests sent and failed, p50 and p99 latency inside
//! the upgrade windows and outside them, and the upgrade time (from the
//! request to the answer, or from `docker stop` to the new instance's first
//! healthy answer) as median and max, with the median of each step the
//! answers' `timings` report. Then UPGRADES upgrades with no load (median,
//! min, max, and the steps' medians), and the throughput through nginx
//! (CLIENTS clients for 10 s) with public keep-alive on and off. Last, the
//! way back: `/rollback` during a bake (the warm elder takes the traffic
//! back) next to a cold `/rollback` (a new instance of the previous version),
//! UPGRADES times each. It is not a test: nothing fails.
//!
//!   cargo bench --bench handover -- rollback [UPGRADES]    (the rollbacks only)
//!   cargo bench --bench handover -- relay [SECONDS ROUNDS] (defaults: 15 s, 4 rounds)
//!   cargo bench --bench handover -- steady [SECONDS ROUNDS] (defaults: 10 s, 4 rounds)
//!   cargo bench --bench handover -- apps [UPDATES CLIENTS]  (defaults: 4 updates, 8 clients)
//!
//! `relay` prints the app path's cost: a busybox app behind one nginx,
//! reached through selfup's relay (the app's socket) and straight at its
//! address, 8 keep-alive clients, the two paths alternated in one run.
//! `steady` prints the steady p50/p99 through nginx with an instance live,
//! with the hold in nginx's upstream and without it, alternated by reloads.
//! `apps` prints how soon an app's update answers: blue-green for an app
//! that handles SIGTERM and one that ignores it, next to stop-then-start.
//!   cargo bench --bench handover -- networks [UPGRADES]   (default: 6 upgrades)
//!
//! `networks` only compares the network modes: UPGRADES unloaded upgrades to `:latest`
//! (two per environment, 1.0.0 to 1.1.0 to 1.2.0) with `docker/compose.yml`
//! (host networking) and with `docker/compose.bridge.yml` (a bridge network),
//! alternating, and prints the median, min and max answer time and the
//! steps' medians of each.
//!
//!   cargo bench --bench handover -- swarm [UPGRADES CLIENTS]   (defaults: 3 upgrades, 4 clients)
//!
//! `swarm` compares, in one run, UPGRADES host handovers (compose, host
//! networking) with UPGRADES Swarm service updates of two tasks
//! (`docker/stack.yml` on a single-node swarm made for the run and left
//! after it), each under CLIENTS keep-alive clients through its nginx: the
//! same columns as above. It is skipped, saying why, when the Engine is
//! already in a swarm.

#[path = "../tests/e2e/apps.rs"]
#[allow(dead_code)]
mod apps;
#[path = "../tests/e2e/harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "../tests/e2e/load.rs"]
#[allow(dead_code)]
mod load;
#[path = "../tests/e2e/sse.rs"]
#[allow(dead_code)]
mod sse;
#[path = "../tests/e2e/swarm.rs"]
#[allow(dead_code)]
mod swarm;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{Suite, docker, eventually};
use load::{Connections, Load, Sample};

/// The versions the upgrades cycle through, each named exactly.
const CYCLE: [&str; 3] = ["1.1.0", "1.2.0", "1.0.0"];

struct Figures {
    name: &'static str,
    samples: Vec<Sample>,
    windows: Vec<(Instant, Instant)>,
    /// Each upgrade's own timings of its steps (ms), in [`STEPS`] order.
    steps: Vec<[u64; STEPS.len()]>,
}

fn main() -> ExitCode {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let rollbacks_only = std::env::args().any(|a| a == "rollback");
    let networks = std::env::args().skip(1).any(|a| a == "networks");
    if std::env::args().skip(1).any(|a| a == "apps") {
        let updates = args.first().copied().unwrap_or(4).max(1);
        let clients = args.get(1).copied().unwrap_or(8).max(1);
        return apps_bench(updates, clients);
    }
    if std::env::args().skip(1).any(|a| a == "steady") {
        let seconds = args.first().copied().unwrap_or(10).max(1) as u64;
        let rounds = args.get(1).copied().unwrap_or(4).max(1);
        return steady_bench(seconds, rounds);
    }
    if std::env::args().skip(1).any(|a| a == "relay") {
        let seconds = args.first().copied().unwrap_or(15).max(1) as u64;
        let rounds = args.get(1).copied().unwrap_or(4).max(1);
        return relay_bench(seconds, rounds);
    }
    let swarm_too = std::env::args().skip(1).any(|a| a == "swarm");
    let upgrades = args
        .first()
        .copied()
        .unwrap_or(match (networks, swarm_too) {
            (true, _) => 6,
            (_, true) => 3,
            _ => 5,
        })
        .max(1);
    let clients = args.get(1).copied().unwrap_or(if swarm_too { 4 } else { 8 }).max(1);
    let suite = match Suite::start(true) {
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
    if rollbacks_only {
        let (warm, cold) = runtime.block_on(rollbacks(suite.clone(), upgrades));
        drop(runtime);
        drop(suite);
        print_rollbacks(&warm, &cold);
        return ExitCode::SUCCESS;
    }
    if networks {
        let (mut host, mut bridge) = (Vec::new(), Vec::new());
        while host.len() < upgrades {
            host.extend(runtime.block_on(to_latest(suite.clone(), false)));
            bridge.extend(runtime.block_on(to_latest(suite.clone(), true)));
        }
        drop(runtime);
        drop(suite);
        for (name, runs) in [("host network", &host), ("bridge network", &bridge)] {
            print!("\n{name}:");
            print_unloaded(runs);
        }
        return ExitCode::SUCCESS;
    }
    if swarm_too {
        let host = runtime.block_on(blue_green(suite.clone(), upgrades, clients, Connections::KeepAlive));
        let service = runtime.block_on(swarm_updates(suite.clone(), upgrades, clients));
        drop(runtime);
        drop(suite);
        println!(
            "\n{upgrades} upgrades each under {clients} keep-alive clients (GET / and POST /echo through nginx)\n"
        );
        print_header();
        print_row(&host);
        match &service {
            Ok(service) => {
                print_row(service);
                println!("{}: median steps: {}", host.name, step_medians(&host.steps));
                let updates: Vec<u64> = service.steps.iter().map(|s| s[0]).collect();
                println!("{}: Swarm's update_ms per upgrade: {updates:?}", service.name);
            }
            Err(reason) => println!("Swarm service update: skipped: {reason}"),
        }
        return ExitCode::SUCCESS;
    }
    let keep_alive = runtime.block_on(blue_green(suite.clone(), upgrades, clients, Connections::KeepAlive));
    let new_connections = runtime.block_on(blue_green(suite.clone(), upgrades, clients, Connections::New));
    let recreate = runtime.block_on(recreate(suite.clone(), upgrades, clients));
    let app = runtime.block_on(app(suite.clone(), upgrades, clients));
    let unloaded = runtime.block_on(unloaded(suite.clone(), upgrades));
    let throughput_on = runtime.block_on(throughput(suite.clone(), clients, true));
    let throughput_off = runtime.block_on(throughput(suite.clone(), clients, false));
    let (warm, cold) = runtime.block_on(rollbacks(suite.clone(), upgrades));
    drop(runtime);
    drop(suite);
    println!("\n{upgrades} upgrades per strategy under {clients} clients (GET / and POST /echo through nginx)\n");
    print_header();
    for f in [&keep_alive, &new_connections, &app, &recreate] {
        print_row(f);
    }
    for f in [&keep_alive, &new_connections] {
        println!("{}: median steps: {}", f.name, step_medians(&f.steps));
    }
    print_unloaded(&unloaded);
    println!(
        "\nthroughput through nginx, {clients} clients for 10 s: public keep-alive on {:.0} req/s, off {:.0} req/s",
        throughput_on, throughput_off
    );
    print_rollbacks(&warm, &cold);
    ExitCode::SUCCESS
}

/// One rollback: the time from the request to its answer and, during a
/// bake, the elder's own time from the decision to the live socket back.
struct Rollback {
    answered: Duration,
    reclaim_us: Option<u64>,
}

/// `runs` rollbacks during a bake (upgrade to 1.1.0 with a 60 s bake, then
/// `/rollback` on the elder), and `runs` cold ones (upgrade to 1.1.0 without
/// a bake, then `/rollback` on the new instance: a start of 1.0.0 and a
/// takeover), unloaded.
async fn rollbacks(suite: Arc<Suite>, runs: usize) -> (Vec<Rollback>, Vec<Rollback>) {
    // Released last, 1.0.0 is `:latest`: what compose starts.
    let baking = suite.env(&[("SELFUP_BAKE_SECS", "60")]);
    suite.release(&baking.repository, "1.1.0");
    suite.release(&baking.repository, "1.0.0");
    baking.up("1.0.0").await;
    let [a, b] = baking.ports;
    let mut warm = Vec::new();
    for _ in 0..runs {
        let upgrade = {
            let (http, url) = (baking.http.clone(), baking.direct(a, "/upgrade/=1.1.0"));
            tokio::spawn(async move { http.post(url).send().await.map(|r| r.status()) })
        };
        eventually("the successor to bake", Duration::from_secs(60), || async {
            let r = baking.http.get(baking.direct(b, "/handover")).send().await.ok()?;
            let phase: serde_json::Value = r.json().await.ok()?;
            (phase["step"] == "baking").then_some(())
        })
        .await;
        let asked = Instant::now();
        let r = baking.http.post(baking.direct(a, "/rollback")).send().await.unwrap();
        let answered = asked.elapsed();
        let body: serde_json::Value = r.json().await.unwrap();
        warm.push(Rollback {
            answered,
            reclaim_us: body["bake"]["reclaim_us"].as_u64(),
        });
        let _ = upgrade.await;
        baking.wait_single_container().await;
    }
    drop(baking);

    let cold_env = suite.env(&[]);
    suite.release(&cold_env.repository, "1.1.0");
    suite.release(&cold_env.repository, "1.0.0");
    cold_env.up("1.0.0").await;
    let mut live = cold_env.ports[0];
    let mut cold = Vec::new();
    for _ in 0..runs {
        let (status, body) = cold_env.upgrade(live, Some("=1.1.0")).await;
        assert_eq!(status, 200, "{body}");
        live = body["new_port"].as_u64().unwrap() as u16;
        cold_env.wait_takeover_done(live).await;
        let asked = Instant::now();
        let r = cold_env
            .http
            .post(cold_env.direct(live, "/rollback"))
            .send()
            .await
            .unwrap();
        let answered = asked.elapsed();
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["status"], "upgraded", "{body}");
        cold.push(Rollback {
            answered,
            reclaim_us: None,
        });
        live = body["new_port"].as_u64().unwrap() as u16;
        cold_env.wait_takeover_done(live).await;
    }
    (warm, cold)
}

fn print_rollbacks(warm: &[Rollback], cold: &[Rollback]) {
    let summary = |runs: &[Rollback]| {
        let mut answered: Vec<Duration> = runs.iter().map(|r| r.answered).collect();
        answered.sort();
        format!(
            "median {}, min {}, max {}",
            ms(percentile(&answered, 0.5)),
            ms(answered[0]),
            ms(*answered.last().unwrap())
        )
    };
    println!(
        "
/rollback, unloaded, {} runs each:",
        warm.len()
    );
    let mut reclaim: Vec<u64> = warm.iter().filter_map(|r| r.reclaim_us).collect();
    reclaim.sort();
    println!(
        "  during a bake (the warm elder): answered {}; live socket back in {} µs (median)",
        summary(warm),
        reclaim.get(reclaim.len() / 2).copied().unwrap_or(0)
    );
    println!(
        "  cold (a new instance of the previous version): answered {}",
        summary(cold)
    );
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
        runs.push(Unloaded {
            answered,
            steps: steps_of(&body),
        });
        live = body["new_port"].as_u64().unwrap() as u16;
        env.wait_takeover_done(live).await;
    }
    runs
}

/// Two unloaded upgrades to `:latest` (1.0.0 to 1.1.0 to 1.2.0), on the
/// host network or on a bridge network: on a bridge the operator's request
/// goes to the published port, and the elder health-checks its successor at
/// the successor's address on the network.
async fn to_latest(suite: Arc<Suite>, bridge: bool) -> Vec<Unloaded> {
    let env = match bridge {
        true => suite.bridge_env_with(harness::Config::Fast, &[]),
        false => suite.env(&[]),
    };
    suite.release(&env.repository, "1.0.0");
    env.up("1.0.0").await;
    let mut live = env.ports[0];
    let mut runs = Vec::new();
    for version in ["1.1.0", "1.2.0"] {
        suite.release(&env.repository, version);
        let asked = Instant::now();
        let (status, body) = env.upgrade(live, None).await;
        let answered = asked.elapsed();
        assert_eq!(status, 200, "{body}");
        runs.push(Unloaded {
            answered,
            steps: steps_of(&body),
        });
        live = body["new_port"].as_u64().unwrap() as u16;
        env.wait_takeover_done(live).await;
    }
    runs
}

/// The median of each step over `runs`, as `resolve 2 ms, pull 26 ms, ...`.
fn step_medians(runs: &[[u64; STEPS.len()]]) -> String {
    if runs.is_empty() {
        return "none".into();
    }
    let median = |mut v: Vec<u64>| {
        v.sort();
        v[v.len() / 2]
    };
    let steps: Vec<String> = STEPS
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{s} {} ms", median(runs.iter().map(|r| r[i]).collect())))
        .collect();
    steps.join(", ")
}

fn print_unloaded(runs: &[Unloaded]) {
    let mut answered: Vec<Duration> = runs.iter().map(|r| r.answered).collect();
    answered.sort();
    let steps: Vec<[u64; STEPS.len()]> = runs.iter().map(|r| r.steps).collect();
    println!(
        "\n{} upgrades without load: answered in {} median ({} to {}); median steps: {}",
        runs.len(),
        ms(percentile(&answered, 0.5)),
        ms(answered[0]),
        ms(answered[answered.len() - 1]),
        step_medians(&steps)
    );
}

/// Requests per second through nginx from `clients` keep-alive clients for
/// 10 s, with nginx's public keep-alive on (as shipped) or off
/// (`keepalive_timeout 0`: a new connection per request).
async fn throughput(suite: Arc<Suite>, clients: usize, keep_alive: bool) -> f64 {
    let env = suite.env(&[]);
    if !keep_alive {
        let conf = env.path().join("nginx.conf");
        let text = std::fs::read_to_string(&conf).unwrap();
        assert!(text.contains("keepalive_timeout 65s;"));
        std::fs::write(&conf, text.replace("keepalive_timeout 65s;", "keepalive_timeout 0;")).unwrap();
    }
    suite.release(&env.repository, "1.0.0");
    env.up("1.0.0").await;
    let load = Load::start(env.public(""), clients, usize::MAX, Duration::from_secs(60));
    steady(&load, clients).await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let to = Instant::now();
    let samples = load.finish().await;
    let done = samples
        .iter()
        .filter(|s| s.error.is_none() && s.sent >= from && s.sent + s.latency <= to)
        .count();
    done as f64 / (to - from).as_secs_f64()
}

/// The suite without the fault-switch build (the benchmarks of one thing
/// need none), and a runtime; `None` after saying why not.
fn started() -> Option<(Arc<Suite>, tokio::runtime::Runtime)> {
    let suite = match Suite::start(false) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("bench: {e}");
            return None;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    Some((suite, runtime))
}

/// The app path's cost: `rounds` rounds of 8 keep-alive clients for
/// `seconds` each through one nginx, to a busybox app through selfup's relay
/// (the app's socket) and straight to the app's address, alternated (the
/// first path of each round alternates too), in one run.
fn relay_bench(seconds: u64, rounds: usize) -> ExitCode {
    let Some((suite, runtime)) = started() else {
        return ExitCode::FAILURE;
    };
    let (relayed, straight) = runtime.block_on(async {
        let (world, _web, relayed_url, straight_url) = apps::app_on_two_paths(suite.clone()).await;
        let (mut relayed, mut straight) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let order = match round % 2 {
                0 => [(&relayed_url, true), (&straight_url, false)],
                _ => [(&straight_url, false), (&relayed_url, true)],
            };
            for (url, through_relay) in order {
                let figures = window(url, 8, Duration::from_secs(seconds)).await;
                eprintln!(
                    "round {round}: {}: {:.0} req/s, p50 {}, p99 {}",
                    if through_relay { "through selfup" } else { "straight" },
                    figures.0,
                    ms(figures.1),
                    ms(figures.2)
                );
                match through_relay {
                    true => relayed.push(figures),
                    false => straight.push(figures),
                }
            }
        }
        drop(world);
        (relayed, straight)
    });
    drop(runtime);
    drop(suite);
    let (r, s) = (median_of(&relayed), median_of(&straight));
    println!("\nbusybox app behind nginx, 8 keep-alive clients, {rounds} rounds of {seconds} s per path, alternated\n");
    print_paths(&[("through selfup (app socket)", r), ("straight to the app", s)]);
    println!(
        "\nthe relay's cost: {:.1} % of the throughput, {:.2}x the median latency",
        (1.0 - r.0 / s.0) * 100.0,
        r.1.as_secs_f64() / s.1.as_secs_f64()
    );
    ExitCode::SUCCESS
}

/// The steady state with an instance live, with the hold in nginx's
/// upstream (as shipped) and without it (as before the hold): `rounds`
/// rounds of 8 keep-alive clients for `seconds` each, the two
/// configurations alternated by a reload of the same nginx, in one run.
fn steady_bench(seconds: u64, rounds: usize) -> ExitCode {
    let Some((suite, runtime)) = started() else {
        return ExitCode::FAILURE;
    };
    let (with, without) = runtime.block_on(async {
        let env = suite.env(&[]);
        suite.release(&env.repository, "1.0.0");
        env.up("1.0.0").await;
        let conf = env.path().join("nginx.conf");
        let shipped = std::fs::read_to_string(&conf).unwrap();
        let hold_line = "        server unix:/run/selfup-public/hold.sock backup max_fails=0;\n";
        assert!(shipped.contains(hold_line), "the shipped nginx.conf names the hold");
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            for hold in [round % 2 == 0, round % 2 == 1] {
                let text = match hold {
                    true => shipped.clone(),
                    false => shipped.replace(hold_line, ""),
                };
                std::fs::write(&conf, text).unwrap();
                docker(&["exec", &env.nginx, "nginx", "-s", "reload"]);
                let figures = window(&env.public(""), 8, Duration::from_secs(seconds)).await;
                eprintln!(
                    "round {round}: {}: {:.0} req/s, p50 {}, p99 {}",
                    if hold { "with the hold" } else { "without" },
                    figures.0,
                    ms(figures.1),
                    ms(figures.2)
                );
                match hold {
                    true => with.push(figures),
                    false => without.push(figures),
                }
            }
        }
        (with, without)
    });
    drop(runtime);
    drop(suite);
    println!("\nselfup live behind nginx, 8 keep-alive clients, {rounds} rounds of {seconds} s each, alternated\n");
    print_paths(&[
        ("with the hold (shipped)", median_of(&with)),
        ("without it", median_of(&without)),
    ]);
    ExitCode::SUCCESS
}

/// An app's update answer, under `clients` keep-alive clients through nginx,
/// `updates` times each: blue-green by the companion for an app that handles
/// SIGTERM and one that ignores it (httpd as PID 1; a 5 s stop timeout), and
/// the stop-then-start replacement plain updaters do, for both, in one run.
fn apps_bench(updates: usize, clients: usize) -> ExitCode {
    let Some((suite, runtime)) = started() else {
        return ExitCode::FAILURE;
    };
    let cases = [
        ("blue-green, handles SIGTERM", apps::Flavour::Healthy, false),
        ("blue-green, ignores SIGTERM", apps::Flavour::IgnoresTerm, false),
        ("stop-then-start, handles SIGTERM", apps::Flavour::Healthy, true),
        ("stop-then-start, ignores SIGTERM", apps::Flavour::IgnoresTerm, true),
    ];
    let mut rows = Vec::new();
    for (name, flavour, stop_first) in cases {
        let (mut times, samples) =
            runtime.block_on(apps::answer_times(suite.clone(), flavour, stop_first, updates, clients));
        times.sort();
        eprintln!("{name}: {times:?}");
        rows.push((name, times, samples));
    }
    drop(runtime);
    drop(suite);
    println!(
        "\n{updates} updates of a busybox app per row under {clients} keep-alive clients through nginx (5 s stop timeout)\n"
    );
    println!(
        "{:<34} {:>14} {:>12} {:>10} {:>8} {:>10} {:>10}",
        "update", "answer median", "answer max", "requests", "failed", "p50", "p99"
    );
    for (name, times, samples) in rows {
        let failed = samples.iter().filter(|s| s.error.is_some()).count();
        let mut latencies: Vec<Duration> = samples
            .iter()
            .filter(|s| s.error.is_none())
            .map(|s| s.latency)
            .collect();
        latencies.sort();
        println!(
            "{:<34} {:>14} {:>12} {:>10} {:>8} {:>10} {:>10}",
            name,
            ms(percentile(&times, 0.5)),
            ms(*times.last().unwrap()),
            samples.len(),
            failed,
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99))
        );
    }
    ExitCode::SUCCESS
}

/// A window of load: requests per second answered right, p50, p99, failures.
type Window = (f64, Duration, Duration, usize);

/// The mean rate, the median of the p50s and of the p99s, and the failures
/// of several windows.
fn median_of(runs: &[Window]) -> Window {
    let rate = runs.iter().map(|r| r.0).sum::<f64>() / runs.len() as f64;
    let mut p50: Vec<Duration> = runs.iter().map(|r| r.1).collect();
    let mut p99: Vec<Duration> = runs.iter().map(|r| r.2).collect();
    p50.sort();
    p99.sort();
    let failed: usize = runs.iter().map(|r| r.3).sum();
    (rate, percentile(&p50, 0.5), percentile(&p99, 0.5), failed)
}

fn print_paths(rows: &[(&str, Window)]) {
    println!(
        "{:<28} {:>10} {:>12} {:>12} {:>8}",
        "path", "req/s", "median p50", "median p99", "failed"
    );
    for (name, t) in rows {
        println!("{:<28} {:>10.0} {:>12} {:>12} {:>8}", name, t.0, ms(t.1), ms(t.2), t.3);
    }
}

/// `clients` keep-alive clients against `base` for `length` after a warm-up:
/// requests per second answered right, p50, p99, and how many failed.
async fn window(base: &str, clients: usize, length: Duration) -> Window {
    let load = Load::start(
        base.to_string(),
        clients,
        usize::MAX,
        length * 2 + Duration::from_secs(30),
    );
    steady(&load, clients).await;
    let from = Instant::now();
    tokio::time::sleep(length).await;
    let to = Instant::now();
    let samples = load.finish().await;
    let inside: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent >= from && s.sent + s.latency <= to)
        .collect();
    let failed = inside.iter().filter(|s| s.error.is_some()).count();
    let mut latencies: Vec<Duration> = inside.iter().filter(|s| s.error.is_none()).map(|s| s.latency).collect();
    latencies.sort();
    let rate = (inside.len() - failed) as f64 / (to - from).as_secs_f64();
    (rate, percentile(&latencies, 0.5), percentile(&latencies, 0.99), failed)
}

/// The answer's own timings of each step (ms), in [`STEPS`] order.
fn steps_of(body: &serde_json::Value) -> [u64; STEPS.len()] {
    STEPS.map(|s| body["timings"][format!("{s}_ms")].as_u64().unwrap_or_default())
}

async fn blue_green(suite: Arc<Suite>, upgrades: usize, clients: usize, connections: Connections) -> Figures {
    let env = suite.env(&[]);
    for v in ["1.1.0", "1.2.0", "1.0.0"] {
        suite.release(&env.repository, v);
    }
    env.up("1.0.0").await;
    let load = Load::start_with(
        env.public(""),
        clients,
        usize::MAX,
        Duration::from_secs(600),
        connections,
    );
    steady(&load, clients).await;
    let mut live = env.ports[0];
    let mut windows = Vec::new();
    let mut steps = Vec::new();
    for i in 0..upgrades {
        let version = CYCLE[i % CYCLE.len()];
        let asked = Instant::now();
        let (status, body) = env.upgrade(live, Some(&format!("={version}"))).await;
        let answered = Instant::now();
        assert_eq!(status, 200, "{body}");
        windows.push((asked, answered));
        steps.push(steps_of(&body));
        live = body["new_port"].as_u64().unwrap() as u16;
        env.wait_takeover_done(live).await;
        steady(&load, clients).await;
    }
    Figures {
        name: match connections {
            Connections::KeepAlive => "selfup, keep-alive clients",
            Connections::New => "selfup, a new connection per request",
        },
        samples: load.finish().await,
        windows,
        steps,
    }
}

/// The same handover for an app that is not selfup (busybox httpd, labelled
/// `selfup.port`), by the companion, under keep-alive clients through nginx.
async fn app(suite: Arc<Suite>, upgrades: usize, clients: usize) -> Figures {
    let (samples, windows) = apps::handovers_under_load(suite, upgrades, clients).await;
    Figures {
        name: "any app (companion), keep-alive",
        samples,
        windows,
        steps: Vec::new(),
    }
}

async fn recreate(suite: Arc<Suite>, upgrades: usize, clients: usize) -> Figures {
    // The same nginx and the same image, but the container is replaced the
    // way stop-then-start updaters do it: stop, remove, run the new image.
    let env = suite.env(&[]);
    let port = env.ports[0];
    let public = env.path().join("public");
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
        &format!("{}:/run/selfup-public:ro", public.display()),
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
            "-v",
            &format!("{}:/run/selfup-public", public.display()),
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
        steps: Vec::new(),
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

fn print_header() {
    println!(
        "{:<34} {:>9} {:>7} {:>10} {:>13} {:>13} {:>13} {:>13} {:>15} {:>12}",
        "strategy",
        "requests",
        "failed",
        "errors for",
        "p50 upgrading",
        "p99 upgrading",
        "p50 steady",
        "p99 steady",
        "upgrade median",
        "upgrade max"
    );
}

/// UPGRADES Swarm service updates of two tasks under `clients` keep-alive
/// clients through the stack's nginx, each to the next version of
/// [`CYCLE`] named exactly; the steps hold each answer's `update_ms`.
async fn swarm_updates(suite: Arc<Suite>, upgrades: usize, clients: usize) -> Result<Figures, String> {
    let repository = "bench-swarm";
    for v in ["1.0.0", "1.1.0", "1.2.0"] {
        suite.release(repository, v);
    }
    let (swarm, url, mut task) = swarm::deployed(&suite, repository, "1.0.0").await?;
    let load = Load::start_with(
        url.clone(),
        clients,
        usize::MAX,
        Duration::from_secs(900),
        Connections::KeepAlive,
    );
    steady(&load, clients).await;
    let mut windows = Vec::new();
    let mut steps = Vec::new();
    for i in 0..upgrades {
        let version = CYCLE[i % CYCLE.len()];
        let asked = Instant::now();
        let (ok, body) = swarm::cli(&task, &["upgrade", &format!("={version}")]).await;
        let answered = Instant::now();
        assert!(ok && body["status"] == "completed", "{body}");
        windows.push((asked, answered));
        let mut step = [0; STEPS.len()];
        step[0] = body["timings"]["update_ms"].as_u64().unwrap_or_default();
        steps.push(step);
        task = swarm::settled(&suite, &swarm, &url, 2, version).await;
        steady(&load, clients).await;
    }
    Ok(Figures {
        name: "Swarm service update, keep-alive",
        samples: load.finish().await,
        windows,
        steps,
    })
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
        "{:<34} {:>9} {:>7} {:>10} {:>13} {:>13} {:>13} {:>13} {:>15} {:>12}",
        f.name,
        f.samples.len(),
        failed.len(),
        ms(errors_for),
        ms(percentile(&inside, 0.5)),
        ms(percentile(&inside, 0.99)),
        ms(percentile(&outside, 0.5)),
        ms(percentile(&outside, 0.99)),
        ms(percentile(&durations, 0.5)),
        ms(durations.last().copied().unwrap_or_default()),
    );
}
