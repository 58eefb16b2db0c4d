//! What every end-to-end test stands on: a registry of its own, the selfup
//! images built by `build.sh`, fault images, and per-test environments that
//! remove themselves on drop: [`Env`] (a compose project, an nginx, a port
//! pair) for the self-upgrade, [`CompanionEnv`] (a companion container and
//! its targets) for companion mode. [`Suite::env`] and
//! [`Suite::companion_env`] are the one way to get either.

use std::collections::{BTreeSet, HashMap};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// How long an elder serves after its successor took the live socket (the
/// `linger_ms` default): nginx may reuse a pooled connection to it until then.
pub const LINGER: Duration = Duration::from_millis(4500);

/// The versions `build.sh` builds for the suite.
pub const VERSIONS: [&str; 3] = ["1.0.0", "1.1.0", "1.2.0"];
/// The version label the fault images carry: higher than any real build.
pub const FAULT_VERSION: &str = "9.0.0";
/// Every compose project the suite starts begins with this.
const PROJECT_PREFIX: &str = "selfupe2e";
/// The label on every container, network, volume and image a run makes; its
/// value is the run's id ([`this_run_id`]).
pub const LABEL: &str = "selfup.e2e";
/// The repository (in the suite's registry) of the images the targets run.
pub const APP: &str = "companion/app";
/// The entrypoint of the target images: runs until SIGTERM, then exits 0.
const LOOP: &str = r#"ENTRYPOINT ["/busybox", "sh", "-c", "trap 'exit 0' TERM; while :; do /busybox sleep 1; done"]"#;
const HEALTHY: &str = r#"HEALTHCHECK --interval=1s --timeout=2s --retries=2 CMD ["/busybox", "true"]"#;
const UNHEALTHY: &str =
    r#"HEALTHCHECK --interval=1s --timeout=2s --retries=2 CMD ["/busybox", "sh", "-c", "echo probe says no; exit 1"]"#;

/// Why a test did not check anything here: what it needs is missing (the
/// Swarm test on an Engine that is in someone else's swarm). The runner
/// reports it apart from the passed tests, with its reason, also in CI.
#[derive(Debug)]
pub struct Skip(pub String);

/// Which settings an environment's selfup runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    /// What the compose files ship, untouched: the 30 s bake, the default
    /// health and takeover deadlines. What users get.
    Shipped,
    /// The suite's fast variant: no bake (the elder goes at the switch) and
    /// shorter deadlines, so that a test of something else keeps its speed.
    Fast,
}

tokio::task_local! {
    /// What the test running on this task waits for now (see [`waiting_for`]).
    static WAITS: Waits;
}

/// What one test waits for at this moment, shared with the runner: when the
/// test runs out of time, the runner says what it was waiting for.
#[derive(Clone, Default)]
pub struct Waits(
    Arc<std::sync::Mutex<Vec<(u64, String, Instant)>>>,
    Arc<std::sync::atomic::AtomicBool>,
);

impl Waits {
    /// Runs `test` with its waits recorded here.
    pub async fn scope<F: std::future::Future>(&self, test: F) -> F::Output {
        WAITS.scope(self.clone(), test).await
    }

    /// Marks the test as out of time, before the runner cancels it: its
    /// environments then show their logs as they drop ([`failing`]).
    pub fn expire(&self) {
        self.1.store(true, Ordering::SeqCst);
    }

    /// What the test waits for now, each with how long it has waited;
    /// `None` when it waits for nothing the harness knows of.
    pub fn describe(&self) -> Option<String> {
        let waits = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (!waits.is_empty()).then(|| {
            waits
                .iter()
                .map(|(_, what, since)| format!("{what} (for {:.1} s)", since.elapsed().as_secs_f64()))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

/// Whether the test on this task is failing: it panics, or the runner
/// cancels it at its time limit (its guards drop within its task-local scope).
pub fn failing() -> bool {
    std::thread::panicking() || WAITS.try_with(|w| w.1.load(Ordering::SeqCst)).unwrap_or(false)
}

/// A wait in progress, recorded until it drops.
pub struct Waiting(Option<(Waits, u64)>);

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some((waits, id)) = self.0.take() {
            waits
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|(i, _, _)| *i != id);
        }
    }
}

/// Records that the current test waits for `what` until the guard drops
/// (nothing outside a test's task, e.g. in `spawn_blocking`).
pub fn waiting_for(what: impl Into<String>) -> Waiting {
    static IDS: AtomicUsize = AtomicUsize::new(0);
    let what = what.into();
    Waiting(
        WAITS
            .try_with(|w| {
                let id = IDS.fetch_add(1, Ordering::Relaxed) as u64;
                w.0.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((id, what, Instant::now()));
                (w.clone(), id)
            })
            .ok(),
    )
}

/// How long a `docker` or `docker-compose` command may run (a pull, push or
/// build gets [`SLOW_DOCKER_LIMIT`]): a hung daemon call fails its test
/// with the command line instead of holding it until the test's own limit.
pub const DOCKER_LIMIT: Duration = Duration::from_secs(120);
/// How long a `docker build`, `push` or `pull` may run.
pub const SLOW_DOCKER_LIMIT: Duration = Duration::from_secs(300);
/// How long `build.sh` may run (a release build with LTO takes ~2 min here).
pub const BUILD_LIMIT: Duration = Duration::from_secs(1200);

/// A command as a person would type it.
pub fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The time limit of `cmd`: [`DOCKER_LIMIT`] or [`SLOW_DOCKER_LIMIT`] for
/// docker and docker-compose, [`BUILD_LIMIT`] for `build.sh`, none otherwise.
pub fn limit_of(cmd: &Command) -> Option<Duration> {
    let program = Path::new(cmd.get_program())
        .file_name()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    match program.as_str() {
        "docker" | "docker-compose" => {
            let slow = cmd
                .get_args()
                .any(|a| ["build", "push", "pull"].contains(&a.to_string_lossy().as_ref()));
            Some(if slow { SLOW_DOCKER_LIMIT } else { DOCKER_LIMIT })
        }
        "build.sh" => Some(BUILD_LIMIT),
        _ => None,
    }
}

/// `cmd.output()` within the command's time limit ([`limit_of`]): past it the
/// command is killed and the error names its command line and the limit.
/// Its standard input is closed unless the caller piped it; `input` is
/// written there first.
pub fn output_within(cmd: &mut Command, input: Option<&[u8]>) -> std::io::Result<std::process::Output> {
    let limit = limit_of(cmd);
    output_limited(cmd, input, limit)
}

/// [`output_within`] with the limit given.
pub fn output_limited(
    cmd: &mut Command,
    input: Option<&[u8]>,
    limit: Option<Duration>,
) -> std::io::Result<std::process::Output> {
    let line = command_line(cmd);
    let _waiting = waiting_for(format!("`{line}`"));
    let mut child = cmd
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(bytes) = input {
        write_input(&mut child, bytes);
    }
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let stderr = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Some(limit) = limit.filter(|l| start.elapsed() > *l) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("`{line}` did not end within its limit of {limit:?}: killed"),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn write_input(child: &mut Child, bytes: &[u8]) {
    use std::io::Write;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(bytes);
    }
}

/// Runs a command within its time limit ([`limit_of`]), returning stdout;
/// panics with the command line and stderr when it fails or runs too long.
pub fn run(cmd: &mut Command) -> String {
    let out = output_within(cmd, None).unwrap_or_else(|e| panic!("running {}: {e}", command_line(cmd)));
    if !out.status.success() {
        panic!(
            "`{}` failed ({}):\n{}{}",
            command_line(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Forwards connections to a free port on the host's `host-gateway`
/// address (docker0's, which `host.docker.internal:host-gateway` names in a
/// container) to `registry` on loopback, for the suite's lifetime: a
/// container on a bridge network reads signatures there. Returns
/// `http://host.docker.internal:<port>`.
fn forward_from_networks(registry: &str) -> Result<String, String> {
    // `host-gateway` is docker0's address unless the daemon names another.
    let shown = run(Command::new("ip").args(["-4", "-o", "addr", "show", "docker0"]));
    let gateway: std::net::IpAddr = shown
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| format!("docker0 has no IPv4 address: {shown:?}"))?;
    let listener = std::net::TcpListener::bind((gateway, 0)).map_err(|e| format!("binding {gateway}: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let registry = registry.to_string();
    std::thread::spawn(move || {
        for inbound in listener.incoming().flatten() {
            let registry = registry.clone();
            std::thread::spawn(move || {
                let Ok(outbound) = std::net::TcpStream::connect(&registry) else {
                    return;
                };
                let (Ok(mut in_read), Ok(mut out_write)) = (inbound.try_clone(), outbound.try_clone()) else {
                    return;
                };
                let (mut in_write, mut out_read) = (inbound, outbound);
                let up = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut in_read, &mut out_write);
                    let _ = out_write.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut out_read, &mut in_write);
                let _ = in_write.shutdown(std::net::Shutdown::Write);
                let _ = up.join();
            });
        }
    });
    Ok(format!("http://host.docker.internal:{port}"))
}

/// The operator's signing key on this machine, which registry/start.sh
/// makes (scripts/setup.sh runs it): build.sh signs with it, and every
/// selfup a test starts verifies with its public half, as compose mounts it.
pub const SIGNING_KEY: &str = "/var/lib/selfup-registry/auth/cosign.key";
pub const VERIFY_KEY: &str = "/var/lib/selfup-registry/auth/cosign.pub";

/// `docker push` of `image`, then its signature, as build.sh does.
pub fn push(image: &str) {
    docker(&["push", "-q", image]);
    sign_with(image, None);
}

/// Signs `image` in its registry with [`SIGNING_KEY`] (registry/sign.sh);
/// `credentials`: the user, and the directory with the password, of a
/// registry that asks for them.
pub fn sign_with(image: &str, credentials: Option<(&str, &Path)>) {
    let mut sign = Command::new(repo_root().join("registry/sign.sh"));
    sign.arg(image).env("SELFUP_SIGNING_KEY", SIGNING_KEY);
    if let Some((user, dir)) = credentials {
        sign.env("SELFUP_REGISTRY_USER", user).env("SELFUP_REGISTRY_AUTH", dir);
    }
    run(&mut sign);
}

/// Runs a command within its time limit and ignores its outcome (cleanup).
pub fn run_quietly(cmd: &mut Command) {
    let _ = output_within(cmd, None);
}

/// Runs a command within its time limit ([`limit_of`]): its output, or an
/// error that names the command line.
pub trait Within {
    fn output_within(&mut self) -> std::io::Result<std::process::Output>;
}

impl Within for Command {
    fn output_within(&mut self) -> std::io::Result<std::process::Output> {
        output_within(self, None)
    }
}

/// What a finished command wrote, its standard output then its errors.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn docker(args: &[&str]) -> String {
    run(Command::new("docker").args(args))
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what`
/// after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    let _waiting = waiting_for(what);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// This run's id, `<pid>x<start>`: the runner's pid and its start time in
/// clock ticks since boot, so that a later process that reuses the pid is
/// never taken for this run. Fits compose project and image names.
pub fn this_run_id() -> String {
    let pid = std::process::id();
    format!("{pid}x{}", process_start(pid).unwrap_or(0))
}

/// Whether the run whose id is `run` (see [`this_run_id`]) is still going.
/// Anything that is not such an id is an old run's: not alive.
pub fn run_is_alive(run: &str) -> bool {
    let Some((pid, start)) = run.split_once('x') else {
        return false;
    };
    match (pid.parse::<u32>(), start.parse::<u64>()) {
        (Ok(pid), Ok(start)) => process_start(pid) == Some(start),
        _ => false,
    }
}

/// Field 22 of `/proc/<pid>/stat`, the process's start time.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from
    // the last ')', after which field 3 comes first.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// Takes the lock every run on this machine shares on the Docker Engine
/// (`selfup-e2e-engine.lock` in the temporary directory): shared by a test
/// that only uses the Engine, exclusive by one that changes it for every
/// container on it. `docker swarm init` and `leave` reconfigure the Engine's
/// networking: for a few seconds every bridge network's connections hang
/// and its DNS fails ("bad address"), which broke a bake on an app's network
/// beside another run's Swarm test (docs/networks.md). Held until the file
/// drops; blocks until it is granted.
pub fn engine_lock(exclusive: bool) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("selfup-e2e-engine.lock"))?;
    match exclusive {
        true => file.lock()?,
        false => file.lock_shared()?,
    }
    Ok(file)
}

/// The variable every process a run starts carries (set in the runner's
/// own environment before any thread starts): its run id. A run that dies
/// leaves its registries behind; the next run finds them by it.
pub const RUN_VARIABLE: &str = "SELFUP_E2E_RUN";

/// The run id (`<pid>x<start>`) in a name the suite gave something: a
/// compose project (`selfupe2e<run>t3`), a stack (`selfupe2eswarm<pid>s<start>`,
/// compose-safe), a scratch directory (`selfup-e2e-registry-<run>`).
pub fn run_id_in(name: &str) -> Option<String> {
    let b = name.as_bytes();
    let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut i = 0;
    while i < b.len() {
        let n = digits(i);
        if n > 0 && i + n < b.len() && matches!(b[i + n], b'x' | b's') {
            let m = digits(i + n + 1);
            if m > 0 {
                return Some(format!("{}x{}", &name[i..i + n], &name[i + n + 1..i + n + 1 + m]));
            }
        }
        i += n.max(1);
    }
    None
}

/// Kills the processes that carry the [`RUN_VARIABLE`] of a run that is no
/// longer alive: what a killed run started and could not stop (its
/// registries first of all).
fn kill_processes_of_dead_runs() {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let marker = format!("{RUN_VARIABLE}=");
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let run = environ
            .split(|b| *b == 0)
            .filter_map(|v| std::str::from_utf8(v).ok())
            .find_map(|v| v.strip_prefix(&marker).map(str::to_string));
        if let Some(run) = run
            && !run_is_alive(&run)
            && pid as u32 != std::process::id()
        {
            run_quietly(Command::new("kill").args(["-KILL", &pid.to_string()]));
        }
    }
}

/// The swarm a run's Swarm test made, and the run (its node's label).
/// Leaves it when that run is dead; the gateway network it made is labelled,
/// and goes with the other networks.
fn leave_a_swarm_of_a_dead_run() {
    if swarm_left_by_a_dead_run() {
        run_quietly(Command::new("docker").args(["swarm", "leave", "--force"]));
    }
}

/// Whether the swarm this Engine is in is one a run's Swarm test made and
/// could not leave (it was killed): its node carries that run's label.
pub fn swarm_left_by_a_dead_run() -> bool {
    let format = format!("{{{{index .Spec.Labels \"{LABEL}\"}}}}");
    let owner = Command::new("docker")
        .args(["node", "inspect", "self", "--format", &format])
        .output_within()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    !owner.is_empty() && owner != "<no value>" && !run_is_alive(&owner)
}

/// Removes the scratch directories (and files) of dead runs under the
/// temporary directory: every one the suite makes is named `selfup-e2e-…`
/// or `selfupe2e…` with the run id in it.
fn remove_scratch_of_dead_runs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("selfup-e2e-") || name.starts_with(PROJECT_PREFIX)) {
            continue;
        }
        if run_id_in(&name).is_some_and(|run| !run_is_alive(&run)) {
            let path = entry.path();
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }
}

/// The name of the nginx image built from the recipe in this tree (tagged by
/// its hash), building it when it is missing.
fn nginx_image() -> Result<String, String> {
    let out = Command::new(repo_root().join("nginx/build-image.sh"))
        .stderr(Stdio::inherit())
        .output_within()
        .map_err(|e| format!("running nginx/build-image.sh: {e}"))?;
    if !out.status.success() {
        return Err("nginx/build-image.sh failed (run scripts/setup.sh first)".into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The registry process and the images, shared by every test of a run.
pub struct Suite {
    /// Where a container on a network of its own calls the suite
    /// registry's API (`SELFUP_REGISTRY_API`): the host at Docker's
    /// `host-gateway` address, which forwards to the registry on loopback.
    pub registry_from_networks: String,
    pub run_id: String,
    pub registry: String,
    registry_process: Child,
    registry_dir: PathBuf,
    pub nginx_image: String,
    next_env: AtomicUsize,
    pub http: reqwest::Client,
    /// selfup 1.1.0 built with the `faults` feature.
    faults_build: std::sync::OnceLock<Result<String, String>>,
    /// The companion tests' target images, built by the first test that asks.
    companion_images: std::sync::OnceLock<Result<(), String>>,
    /// Held while `build.sh` runs.
    building: std::sync::Mutex<()>,
}

impl Suite {
    /// Starts the registry and builds every image (the fault-switch build
    /// too when `faults_now`; otherwise the first test that asks for it
    /// builds it); a missing prerequisite (Docker, docker-registry, the
    /// nginx image) is a clear error.
    pub fn start(faults_now: bool) -> Result<Suite, String> {
        let run_id = this_run_id();
        Self::remove_leftovers();
        let nginx_image = match std::env::var("SELFUP_NGINX_IMAGE") {
            Ok(image) => image,
            Err(_) => nginx_image()?,
        };
        if Command::new("docker")
            .args(["image", "inspect", &nginx_image])
            .output_within()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return Err(format!(
                "the nginx image {nginx_image} is missing: run scripts/setup.sh"
            ));
        }
        let port = free_port();
        let registry = format!("127.0.0.1:{port}");
        let registry_dir = std::env::temp_dir().join(format!("selfup-e2e-registry-{run_id}"));
        std::fs::create_dir_all(&registry_dir).map_err(|e| e.to_string())?;
        // Before the registry starts: an error here leaves no process behind.
        let registry_from_networks = forward_from_networks(&registry)?;
        let registry_process = spawn_registry(&registry, &registry_dir, None)?;
        let suite = Suite {
            run_id,
            registry_from_networks,
            registry,
            registry_process,
            registry_dir,
            nginx_image,
            next_env: AtomicUsize::new(0),
            faults_build: std::sync::OnceLock::new(),
            companion_images: std::sync::OnceLock::new(),
            building: std::sync::Mutex::new(()),
            // No idle connections kept: ports are reused from test to test, and
            // a pooled connection to a server that is gone fails the next request.
            http: reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
        };
        wait_for_registry(&suite.registry, "200")?;
        // The operator's key: registry/start.sh makes it; made here too if
        // the machine's registry was set up before keys were.
        let key = Command::new(repo_root().join("registry/sign.sh"))
            .arg("--init")
            .env("SELFUP_SIGNING_KEY", SIGNING_KEY)
            .output_within()
            .map_err(|e| e.to_string())?;
        if !key.status.success() {
            return Err(format!(
                "registry/sign.sh --init: {}",
                String::from_utf8_lossy(&key.stderr)
            ));
        }
        for version in VERSIONS {
            suite.build(version)?;
        }
        suite.build_fault_images()?;
        // Before any test: its build compiles the library once more (with
        // the feature), which must not weigh on tests that run meanwhile.
        if faults_now && let Err(e) = suite.faults_build.get_or_init(|| suite.build_faults()) {
            return Err(e.clone());
        }
        Ok(suite)
    }

    /// `build.sh VERSION` in this tree, as an operator runs it. The version
    /// is compiled into the binary alone, so every version after the first
    /// only relinks it.
    fn build(&self, version: &str) -> Result<(), String> {
        self.build_from(version, "selfup", "")
    }

    /// selfup 1.1.0 with the fault switches of `src/faults.rs` compiled in,
    /// as `selfup-faults:1.1.0`; built once per run, as the suite starts.
    pub fn faults_image(&self) -> String {
        let built = self.faults_build.get_or_init(|| self.build_faults());
        built.clone().unwrap_or_else(|e| panic!("{e}"))
    }

    fn build_faults(&self) -> Result<String, String> {
        self.build_from("1.1.0", "selfup-faults", "faults")
            .map(|()| self.image("selfup-faults", "1.1.0"))
    }

    fn build_from(&self, version: &str, repository: &str, features: &str) -> Result<(), String> {
        let root = repo_root();
        // One build at a time: build.sh copies the binary cargo just linked,
        // at a path every build shares.
        let _one = self.building.lock().unwrap_or_else(|p| p.into_inner());
        let t = Instant::now();
        let mut build = Command::new("./build.sh");
        // `cargo test` gives this process its own package's CARGO_* variables
        // (CARGO_MANIFEST_DIR and the like); an inner cargo that sees them
        // takes every crate that reads one as changed and rebuilds them all.
        // The build gets the environment an operator's shell has.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("CARGO_") && key != "CARGO_HOME" {
                build.env_remove(key);
            }
        }
        let out = build
            .arg(version)
            .current_dir(&root)
            .env("CARGO_TARGET_DIR", root.join("target"))
            .env("SELFUP_REGISTRY", &self.registry)
            .env("SELFUP_IMAGE", repository)
            .env("SELFUP_IMAGE_LABELS", self.label())
            .env("SELFUP_FEATURES", features)
            .env("SELFUP_SIGNING_KEY", SIGNING_KEY)
            .output_within()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "build.sh {version} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        eprintln!("built {repository} {version} in {:.1}s", t.elapsed().as_secs_f64());
        Ok(())
    }

    /// Builds selfup `version` beyond [`VERSIONS`], for the few tests that
    /// need more releases; a version already built here is built once.
    pub fn build_extra(&self, version: &str) {
        if let Err(e) = self.build(version) {
            panic!("{e}");
        }
    }

    /// Images that claim version 9.0.0 and misbehave: one exits at once,
    /// one never answers, one reports another version than its label.
    fn build_fault_images(&self) -> Result<(), String> {
        let dir = std::env::temp_dir().join(format!("selfup-e2e-faults-{}", self.run_id));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        std::fs::copy("/usr/bin/busybox", dir.join("busybox"))
            .map_err(|e| format!("copying /usr/bin/busybox (apt-get install busybox-static): {e}"))?;
        let faults = [
            ("crash", "FROM scratch\nCOPY busybox /busybox\nENTRYPOINT [\"/busybox\", \"sh\", \"-c\", \"echo 'fatal: cannot start' >&2; exit 3\"]\n".to_string()),
            ("hang", "FROM scratch\nCOPY busybox /busybox\nENTRYPOINT [\"/busybox\", \"sleep\", \"600\"]\n".to_string()),
            ("liar", format!("FROM {}\n", self.image("selfup", "1.1.0"))),
        ];
        for (name, dockerfile) in faults {
            let dockerfile = format!("{dockerfile}LABEL org.opencontainers.image.version={FAULT_VERSION}\n");
            std::fs::write(dir.join("Dockerfile"), dockerfile).map_err(|e| e.to_string())?;
            let out = Command::new("docker")
                .args([
                    "build",
                    "-q",
                    "--label",
                    &self.label(),
                    "-t",
                    &self.image("fixtures", name),
                ])
                .arg(&dir)
                .output_within()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!(
                    "building the {name} image: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    /// `registry/repository:tag` in the suite's registry.
    pub fn image(&self, repository: &str, tag: &str) -> String {
        format!("{}/{repository}:{tag}", self.registry)
    }

    /// Publishes a built image as `repository:tag`, as a release would:
    /// pushed and signed.
    pub fn publish(&self, source: &str, repository: &str, tag: &str) {
        let target = self.image(repository, tag);
        docker(&["tag", source, &target]);
        push(&target);
    }

    /// Publishes selfup `version` as both `:version` and `:latest` of `repository`.
    pub fn release(&self, repository: &str, version: &str) {
        let built = self.image("selfup", version);
        self.publish(&built, repository, version);
        self.publish(&built, repository, "latest");
    }

    /// `selfup.e2e=<run id>`: the label on everything this run makes.
    pub fn label(&self) -> String {
        format!("{LABEL}={}", self.run_id)
    }

    /// Removes what interrupted earlier runs left behind, in the order that
    /// frees each part: their host processes (registries, and whatever else
    /// carries their [`RUN_VARIABLE`]), the swarm a dead run's Swarm test
    /// made, the containers, networks and volumes labelled `selfup.e2e` by a
    /// dead run or belonging to one of its compose projects or stacks, their
    /// images, and their scratch directories under the temporary directory.
    /// A run going on beside this one ([`run_is_alive`]) is left alone.
    pub fn remove_leftovers() {
        kill_processes_of_dead_runs();
        leave_a_swarm_of_a_dead_run();
        let listed = |args: &[&str]| {
            Command::new("docker")
                .args(args)
                .output_within()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        // Who made each object: its `selfup.e2e` label, or the run id in its
        // compose project's or stack's name.
        let owners = format!(
            "{{{{.Label \"{LABEL}\"}}}}\t{{{{.Label \"com.docker.compose.project\"}}}}\t{{{{.Label \"com.docker.stack.namespace\"}}}}"
        );
        let dead = |line: &str| -> bool {
            let mut fields = line.split('\t');
            let (label, project, stack) = (
                fields.next().unwrap_or_default(),
                fields.next().unwrap_or_default(),
                fields.next().unwrap_or_default(),
            );
            let run = match (label, project, stack) {
                (label, _, _) if !label.is_empty() => Some(label.to_string()),
                (_, project, _) if project.starts_with(PROJECT_PREFIX) => run_id_in(project),
                (_, _, stack) if stack.starts_with(PROJECT_PREFIX) => run_id_in(stack),
                _ => None,
            };
            run.is_some_and(|run| !run_is_alive(&run))
        };
        // Containers first: they hold the rest.
        for (kind, list, remove) in [
            ("container", &["ps", "-a", "--format"][..], &["rm", "-f", "-v"][..]),
            ("network", &["network", "ls", "--format"], &["network", "rm"]),
            ("volume", &["volume", "ls", "--format"], &["volume", "rm", "-f"]),
        ] {
            let id = if kind == "volume" { "{{.Name}}" } else { "{{.ID}}" };
            let format = format!("{id}\t{owners}");
            for line in listed(&[list, &[format.as_str()]].concat()).lines() {
                let Some((id, owners)) = line.split_once('\t') else {
                    continue;
                };
                if dead(owners) {
                    run_quietly(Command::new("docker").args(remove).arg(id));
                }
            }
        }
        let images = listed(&["image", "ls", "-q", "--no-trunc", "--filter", &format!("label={LABEL}")]);
        let owner = format!("{{{{index .Config.Labels \"{LABEL}\"}}}}");
        let mut seen = std::collections::HashSet::new();
        for id in images.split_whitespace().filter(|id| seen.insert(id.to_string())) {
            let run = listed(&["image", "inspect", "-f", &owner, id]);
            if !run.trim().is_empty() && !run_is_alive(run.trim()) {
                run_quietly(Command::new("docker").args(["rmi", "-f", id]));
            }
        }
        remove_scratch_of_dead_runs();
    }

    /// A fresh environment with selfup `version` released to it and running:
    /// what most tests start from.
    pub async fn live_env(&self, extra_env: &[(&str, &str)], version: &str) -> Env {
        let env = self.env(extra_env);
        self.release(&env.repository, version);
        env.up(version).await;
        env
    }

    /// A fresh environment: its own compose project, nginx and ports; the
    /// fast settings ([`Config::Fast`]) under `extra_env`.
    pub fn env(&self, extra_env: &[(&str, &str)]) -> Env {
        self.env_with(Config::Fast, extra_env)
    }

    /// [`Suite::env`] with `config`: [`Config::Shipped`] leaves every setting
    /// of `docker/compose.yml` as it ships but the ports and nginx's name.
    pub fn env_with(&self, config: Config, extra_env: &[(&str, &str)]) -> Env {
        let n = self.next_env.fetch_add(1, Ordering::SeqCst);
        Env::new(self, n, extra_env, false, config)
    }

    /// A fresh environment from `docker/compose.bridge.yml`: selfup and
    /// nginx on a network of the project's own (labelled, removed on drop),
    /// the live port and nginx's public port published on the host's loopback.
    /// With `config`: [`Config::Shipped`] leaves the file's settings as
    /// they ship but the ports and nginx's name.
    pub fn bridge_env_with(&self, config: Config, extra_env: &[(&str, &str)]) -> Env {
        let n = self.next_env.fetch_add(1, Ordering::SeqCst);
        Env::new(self, n, extra_env, true, config)
    }

    /// A fresh companion-mode environment, with the target images built.
    pub fn companion_env(self: &Arc<Self>) -> CompanionEnv {
        CompanionEnv::new(self.clone())
    }

    /// Builds and pushes the target images once per run: `1.0.0`, `1.1.0`,
    /// `2.0.0` (healthy, each with its own `APP_MODE`), `plain-1` and `plain-2`
    /// (no HEALTHCHECK), `unhealthy`, and the suite's crash image as `crash`.
    pub fn companion_images(&self) {
        let suite = self;
        let built = self.companion_images.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("selfup-e2e-companion-images-{}", suite.run_id));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            std::fs::copy("/usr/bin/busybox", dir.join("busybox")).map_err(|e| e.to_string())?;
            let images = [
                ("1.0.0", "v1", HEALTHY),
                ("1.1.0", "v1.1", HEALTHY),
                ("2.0.0", "v2", HEALTHY),
                ("plain-1", "plain1", ""),
                ("plain-2", "plain2", ""),
                ("unhealthy", "sick", UNHEALTHY),
            ];
            for (tag, mode, healthcheck) in images {
                let version = if tag.contains('.') { tag } else { "0.0.1" };
                let dockerfile = format!(
                    "FROM scratch\nCOPY busybox /busybox\nENV APP_MODE={mode}\n\
                     LABEL org.opencontainers.image.version={version} app.flavour={mode}\n{healthcheck}\n{LOOP}\n"
                );
                std::fs::write(dir.join("Dockerfile"), dockerfile).map_err(|e| e.to_string())?;
                let image = suite.image(APP, tag);
                let out = Command::new("docker")
                    .args(["build", "-q", "--label", &suite.label(), "-t", &image])
                    .arg(&dir)
                    .output_within()
                    .map_err(|e| e.to_string())?;
                if !out.status.success() {
                    return Err(format!("building {image}: {}", String::from_utf8_lossy(&out.stderr)));
                }
                push(&image);
            }
            suite.publish(&suite.image("fixtures", "crash"), APP, "crash");
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        });
        if let Err(e) = built {
            panic!("the companion test images could not be built: {e}");
        }
    }
}

impl Drop for Suite {
    fn drop(&mut self) {
        let _ = self.registry_process.kill();
        let _ = self.registry_process.wait();
        let _ = std::fs::remove_dir_all(&self.registry_dir);
        // Every image the run tagged lives under the run's registry address.
        let images = Command::new("docker")
            .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .output_within()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let prefix = format!("{}/", self.registry);
        let ours: Vec<&str> = images.lines().filter(|l| l.starts_with(&prefix)).collect();
        if !ours.is_empty() {
            run_quietly(Command::new("docker").arg("rmi").arg("-f").args(&ours));
        }
    }
}

/// One test's world: a compose project running selfup from its own
/// repository, an nginx on its own public port, and a port pair.
pub struct Env {
    pub project: String,
    pub repository: String,
    pub ports: [u16; 2],
    pub public_port: u16,
    /// nginx's server for companion mode's `/update` (8081 in the shipped config).
    pub deploy_port: u16,
    pub nginx: String,
    dir: PathBuf,
    compose_files: [PathBuf; 2],
    /// Variables for docker-compose's environment that this kind of
    /// environment needs (the bridge file's published ports).
    vars: Vec<(String, String)>,
    registry: String,
    nginx_image: String,
    pub http: reqwest::Client,
}

impl Env {
    fn new(suite: &Suite, n: usize, extra_env: &[(&str, &str)], bridge: bool, config: Config) -> Env {
        let project = format!("{PROJECT_PREFIX}{}t{n}", suite.run_id);
        let dir = std::env::temp_dir().join(&project);
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b, public_port, deploy_port) = (free_port(), free_port(), free_port(), free_port());
        let mut nginx_conf = std::fs::read_to_string(repo_root().join("nginx/nginx.conf")).unwrap();
        // On a bridge network nginx keeps its own port 8080, which compose
        // publishes at the public port.
        if !bridge {
            nginx_conf = nginx_conf
                .replace("listen 8080;", &format!("listen 127.0.0.1:{public_port};"))
                .replace("listen 127.0.0.1:8081;", &format!("listen 127.0.0.1:{deploy_port};"));
        }
        std::fs::write(dir.join("nginx.conf"), nginx_conf).unwrap();
        // The suite's registry asks for no credentials: selfup reads an empty config.
        std::fs::write(dir.join("docker-config.json"), "{}\n").unwrap();
        std::fs::write(dir.join("hook_token"), "").unwrap();
        let nginx = format!("{project}-nginx");
        let mut env: Vec<(String, String)> = vec![
            ("SELFUP_PORT".into(), a.to_string()),
            ("SELFUP_PORTS".into(), format!("[{a},{b}]")),
            ("SELFUP_NGINX_CONTAINER".into(), nginx.clone()),
        ];
        // On a private network the host's calls arrive through the
        // network's gateway, whose caller selfup cannot tell by uid: the
        // operator presents the upgrade token (this environment's client
        // sends it with every request).
        if bridge {
            env.push(("SELFUP_UPGRADE_TOKEN".into(), BRIDGE_TOKEN.into()));
        }
        if config == Config::Fast {
            env.extend([
                ("SELFUP_HEALTH_DEADLINE_SECS".into(), "10".into()),
                ("SELFUP_TAKEOVER_DEADLINE_SECS".into(), "20".into()),
                // The bake's own tests set one; the rest keep their speed and
                // meaning (the elder goes at the switch).
                ("SELFUP_BAKE_SECS".into(), "0".into()),
            ]);
        }
        for (k, v) in extra_env {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        }
        let environment: String = env.iter().map(|(k, v)| format!("      {k}: '{v}'\n")).collect();
        let networks = match bridge {
            true => format!(
                "networks:\n  selfup:\n    labels:\n      selfup.e2e: '{}'\n",
                suite.run_id
            ),
            false => String::new(),
        };
        let override_yml = format!(
            "version: \"2.4\"\nservices:\n  selfup:\n    labels:\n      selfup.e2e: '{run}'\n    environment:\n{environment}  hold:\n    labels:\n      selfup.e2e: '{run}'\n    environment:\n{environment}  nginx:\n    container_name: {nginx}\n    labels:\n      selfup.e2e: '{run}'\n    volumes:\n      - {conf}:/etc/nginx/nginx.conf:ro\nvolumes:\n  data:\n    labels:\n      selfup.e2e: '{run}'\n{networks}",
            run = suite.run_id,
            conf = dir.join("nginx.conf").display(),
        );
        std::fs::write(dir.join("override.yml"), override_yml).unwrap();
        let repository = format!("t{n}");
        let (compose_file, vars) = match bridge {
            true => (
                "docker/compose.bridge.yml",
                vec![
                    ("SELFUP_PORT".to_string(), a.to_string()),
                    ("SELFUP_PORTS".to_string(), format!("[{a},{b}]")),
                    ("SELFUP_PUBLIC_PORT".to_string(), format!("127.0.0.1:{public_port}")),
                    ("SELFUP_REGISTRY_API".to_string(), suite.registry_from_networks.clone()),
                ],
            ),
            false => ("docker/compose.yml", Vec::new()),
        };
        Env {
            project,
            repository,
            ports: [a, b],
            public_port,
            deploy_port,
            nginx,
            compose_files: [repo_root().join(compose_file), dir.join("override.yml")],
            vars,
            dir,
            registry: suite.registry.clone(),
            nginx_image: suite.nginx_image.clone(),
            http: match bridge {
                true => operator_client(BRIDGE_TOKEN),
                false => suite.http.clone(),
            },
        }
    }

    /// Runs docker-compose on the shipped compose file plus this test's override.
    pub fn compose(&self, args: &[&str]) -> String {
        self.compose_with(&[], args)
    }

    /// [`Env::compose`] with more variables in docker-compose's environment,
    /// as an operator sets them in the shell.
    pub fn compose_with(&self, vars: &[(&str, &str)], args: &[&str]) -> String {
        let mut cmd = Command::new("docker-compose");
        for f in &self.compose_files {
            cmd.arg("-f").arg(f);
        }
        cmd.args(["-p", &self.project])
            .args(args)
            .env("SELFUP_REGISTRY", &self.registry)
            .env("SELFUP_IMAGE", &self.repository)
            .env("SELFUP_NGINX_IMAGE", &self.nginx_image)
            .env("SELFUP_REGISTRY_CONFIG", self.dir.join("docker-config.json"))
            .env("SELFUP_CONTROL_DIR", self.dir.join("control"))
            .env("SELFUP_PUBLIC_DIR", self.dir.join("public"))
            // An empty token file: the registry hook stays off unless a test turns it on.
            .env("SELFUP_HOOK_TOKEN_FILE", self.dir.join("hook_token"))
            // The suite's registry is on a port alone: no socket, and an
            // empty directory of the test's where the files mount the host's.
            .env("SELFUP_REGISTRY_SOCKET", "")
            .env("SELFUP_REGISTRY_DIR", self.dir.join("registry-socket"))
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .envs(vars.iter().copied());
        run(&mut cmd)
    }

    /// A variable in docker-compose's environment for every later call, as
    /// an operator's shell holds it.
    pub fn set_compose_var(&mut self, name: &str, value: &str) {
        self.vars.retain(|(k, _)| k != name);
        self.vars.push((name.to_string(), value.to_string()));
    }

    /// `docker-compose up -d` and waits until version `version` answers through nginx.
    pub async fn up(&self, version: &str) {
        self.compose(&["up", "-d"]);
        self.wait_public_version(version).await;
    }

    /// The ids of this project's selfup containers (any state).
    pub fn selfup_containers(&self) -> Vec<String> {
        containers_with(
            &[
                &format!("label=com.docker.compose.project={}", self.project),
                "label=com.docker.compose.service=selfup",
            ],
            "{{.ID}}",
        )
    }

    /// Waits until exactly one selfup container of this project exists.
    pub async fn wait_single_container(&self) -> String {
        eventually("exactly one selfup container", Duration::from_secs(60), || async {
            let ids = self.selfup_containers();
            (ids.len() == 1).then(|| ids[0].clone())
        })
        .await
    }

    pub fn direct(&self, port: u16, path: &str) -> String {
        format!("http://127.0.0.1:{port}{path}")
    }

    pub fn public(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.public_port)
    }

    /// `GET /` as JSON on a URL: (version, port).
    pub async fn version_at(&self, url: &str) -> Option<(String, u16)> {
        let r = self
            .http
            .get(url)
            .header("accept", "application/json")
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        let v: Value = r.json().await.ok()?;
        Some((v["version"].as_str()?.to_string(), v["port"].as_u64()? as u16))
    }

    pub async fn wait_public_version(&self, version: &str) -> u16 {
        eventually(
            &format!("version {version} through nginx"),
            Duration::from_secs(60),
            || async {
                match self.version_at(&self.public("/")).await {
                    Some((v, port)) if v == version => Some(port),
                    _ => None,
                }
            },
        )
        .await
    }

    /// Waits until the instance on `port` reports its takeover done (its
    /// elder stopped and removed): only then does it take a new upgrade.
    pub async fn wait_takeover_done(&self, port: u16) {
        eventually("the takeover to finish", Duration::from_secs(60), || async {
            let r = self.http.get(self.direct(port, "/handover")).send().await.ok()?;
            let v: Value = r.json().await.ok()?;
            (v["phase"] == "done").then_some(())
        })
        .await
    }

    /// [`Env::upgrade`] under a load of 4 clients through nginx, for upgrades
    /// that must go unnoticed: asserts that requests were in flight all
    /// through the upgrade and after its answer, and that none failed.
    pub async fn upgrade_under_load(&self, port: u16, requirement: Option<&str>) -> (u16, Value) {
        let load = crate::load::Load::start(self.public(""), 4, usize::MAX, Duration::from_secs(120));
        load.wait_for_samples_after(Instant::now(), 10, Duration::from_secs(10))
            .await;
        let asked = Instant::now();
        let answer = self.upgrade(port, requirement).await;
        let answered = Instant::now();
        load.wait_for_samples_after(answered, 10, Duration::from_secs(10)).await;
        let samples = load.finish().await;
        let during = crate::load::overlapping(&samples, asked, answered).len();
        assert!(during >= 4, "only {during} requests overlapped the upgrade");
        crate::load::assert_none_failed(&samples, "around the upgrade");
        eprintln!(
            "    {} requests around the upgrade ({during} while it ran), none failed",
            samples.len()
        );
        answer
    }

    /// `GET url` as text; panics when there is no answer.
    /// `GET path` through nginx, given 10 s: a request that may be held
    /// (a pause, nothing live). The answer, and how long it took.
    pub async fn get_public_held(&self, path: &str) -> (reqwest::Response, Duration) {
        let asked = Instant::now();
        let r = self
            .http
            .get(self.public(path))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("nginx answers within 10 s");
        (r, asked.elapsed())
    }

    pub async fn get_text(&self, url: &str) -> String {
        let _waiting = waiting_for(format!("the answer to GET {url}"));
        let r = self.http.get(url).send().await.expect("an answer");
        r.text().await.expect("a text answer")
    }

    /// `GET url` as JSON; panics when there is no JSON answer.
    pub async fn get_json(&self, url: &str) -> Value {
        let _waiting = waiting_for(format!("the answer to GET {url}"));
        let r = self.http.get(url).send().await.expect("an answer");
        r.json().await.expect("a JSON answer")
    }

    /// `GET /status` of the instance on `port`.
    pub async fn status(&self, port: u16) -> Value {
        let _waiting = waiting_for(format!("the answer to GET /status on port {port}"));
        let r = self
            .http
            .get(self.direct(port, "/status"))
            .send()
            .await
            .expect("/status answers");
        r.json().await.expect("/status is JSON")
    }

    /// Calls `/upgrade[/<req>]` on the live port and returns (status, body).
    pub async fn upgrade(&self, port: u16, requirement: Option<&str>) -> (u16, Value) {
        let path = match requirement {
            Some(r) => format!("/upgrade/{r}"),
            None => "/upgrade".to_string(),
        };
        let _waiting = waiting_for(format!("the answer to POST {path} on port {port}"));
        let r = self
            .http
            .post(self.direct(port, &path))
            .send()
            .await
            .expect("the upgrade request gets an answer");
        let status = r.status().as_u16();
        (status, r.json().await.expect("the upgrade answer is JSON"))
    }

    /// The logs of every container of this project, for a failing test.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(o) = Command::new("docker")
            .args(["logs", "--tail", "20", &self.nginx])
            .output_within()
        {
            out.push_str(&format!("--- {}\n{}\n", self.nginx, String::from_utf8_lossy(&o.stderr)));
        }
        for id in self.selfup_containers() {
            let o = Command::new("docker").args(["logs", &id]).output_within();
            if let Ok(o) = o {
                // The access log drowns the handover's own lines.
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                let lines: Vec<&str> = text.lines().filter(|l| !l.contains("middleware::logger")).collect();
                out.push_str(&format!(
                    "--- {id}\n{}\n",
                    lines[lines.len().saturating_sub(30)..].join("\n")
                ));
            }
        }
        out
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The live instance's control socket, as the host sees it.
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("control/control.sock")
    }

    /// The live instance's update socket (companion mode), as the host sees it.
    pub fn update_socket(&self) -> PathBuf {
        self.dir.join("public/update.sock")
    }

    /// The live socket nginx sends public traffic to, as the host sees it.
    pub fn live_socket(&self) -> PathBuf {
        self.dir.join("public/live.sock")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if failing() || std::env::var("TEST_LOG").is_ok() {
            eprintln!("{}", self.logs());
        }
        let ids = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=com.docker.compose.project={}", self.project),
            ])
            .output_within()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in ids.split_whitespace() {
            run_quietly(Command::new("docker").args(["rm", "-f", id]));
        }
        run_quietly(Command::new("docker").args(["rm", "-f", &self.nginx]));
        run_quietly(Command::new("docker").args(["volume", "rm", &format!("{}_data", self.project)]));
        // The bridge file's network, once its containers are gone.
        let networks = Command::new("docker")
            .args([
                "network",
                "ls",
                "-q",
                "--filter",
                &format!("label=com.docker.compose.project={}", self.project),
            ])
            .output_within()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for network in networks.split_whitespace() {
            run_quietly(Command::new("docker").args(["network", "rm", network]));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The containers, running or not, that match every filter, as `format` prints them.
fn containers_with(filters: &[&str], format: &str) -> Vec<String> {
    let mut cmd = Command::new("docker");
    cmd.args(["ps", "-a", "--format", format]);
    for filter in filters {
        cmd.args(["--filter", filter]);
    }
    run(&mut cmd).split_whitespace().map(str::to_string).collect()
}

/// Labels of a container.
/// `docker inspect` of one object.
pub fn inspect(name: &str) -> Value {
    let text = docker(&["inspect", name]);
    let mut all: Vec<Value> = serde_json::from_str(&text).unwrap();
    all.remove(0)
}

pub fn exists(name: &str) -> bool {
    Command::new("docker")
        .args(["inspect", "-f", "{{.Id}}", name])
        .output_within()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

pub fn labels(id: &str) -> HashMap<String, String> {
    let json = docker(&["inspect", "-f", "{{json .Config.Labels}}", id]);
    serde_json::from_str(json.trim()).unwrap_or_default()
}

/// A container a test started by itself, removed (with its anonymous
/// volumes) when the guard drops, even on failure.
pub struct Container(pub String);

/// The upgrade token of the environments on a private network, where the
/// host's calls arrive through the gateway and only a token admits them.
pub const BRIDGE_TOKEN: &str = "e2e-bridge-operator-token";

/// A client for an environment whose control endpoints want `token`: the
/// suite's settings, with `Authorization: Bearer <token>` on every request.
fn operator_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(120))
        .default_headers(headers)
        .build()
        .unwrap()
}

/// A process run as the unprivileged user 65534 with no groups, as a local
/// user without root would run it; killed (by its own pid) on drop.
pub struct Nobody(Child);

impl Nobody {
    /// Starts `program args` as uid and gid 65534, its output piped.
    pub fn spawn(program: &str, args: &[&str]) -> Nobody {
        let child = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program} as user 65534 with setpriv: {e}"));
        Nobody(child)
    }

    /// `python3 -c script` as user 65534 (the system's python, which that
    /// user can read).
    pub fn python(script: &str) -> Nobody {
        Nobody::spawn("/usr/bin/python3", &["-u", "-c", script])
    }

    /// Holds `127.0.0.1:port` with a listener of user 65534; returns once
    /// it listens, and panics with the reason when it cannot.
    pub fn listen(port: u16) -> Nobody {
        Nobody::serve(&format!(
            "import socket, time\ns = socket.socket()\ns.bind(('127.0.0.1', {port}))\ns.listen()\nprint('listening')\ntime.sleep(3600)"
        ))
    }

    /// `python3 -c script` as user 65534, a server: returns once it has
    /// printed `listening` (its first line, alone), and panics with its
    /// error when it printed anything else. The rest of its output is
    /// [`Nobody::finish`]'s.
    pub fn serve(script: &str) -> Nobody {
        let mut nobody = Nobody::python(script);
        // Byte by byte: what it prints after the first line stays in the pipe.
        let stdout = nobody.0.stdout.as_mut().unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while std::io::Read::read(stdout, &mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        if line != b"listening" {
            let (_, err) = nobody.finish();
            panic!("user 65534's server did not start: {err}");
        }
        nobody
    }

    /// Waits for the process to end: (stdout, stderr).
    pub fn finish(&mut self) -> (String, String) {
        let read = |pipe: Option<&mut dyn std::io::Read>| {
            let mut text = String::new();
            if let Some(pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        };
        let out = read(self.0.stdout.as_mut().map(|p| p as &mut dyn std::io::Read));
        let err = read(self.0.stderr.as_mut().map(|p| p as &mut dyn std::io::Read));
        let _ = self.0.wait();
        (out, err)
    }
}

impl Drop for Nobody {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        run_quietly(Command::new("docker").args(["rm", "-f", "-v", &self.0]));
    }
}

impl Env {
    /// The environment of a running container, as `KEY=VALUE` strings.
    pub fn container_env(&self, id: &str) -> Vec<String> {
        let json = docker(&["inspect", "-f", "{{json .Config.Env}}", id]);
        serde_json::from_str(json.trim()).unwrap_or_default()
    }

    /// The id of the running selfup container that listens on `port`.
    pub fn container_on(&self, port: u16) -> Option<String> {
        self.selfup_containers().into_iter().find(|id| {
            docker(&["inspect", "-f", "{{.State.Running}}", id]).trim() == "true"
                && self
                    .container_env(id)
                    .iter()
                    .any(|e| *e == format!("SELFUP_PORT={port}"))
        })
    }

    /// After a refused upgrade: the same containers as `before`, and the elder
    /// on the first port still serving `version` through nginx.
    pub async fn assert_elder_unchanged(&self, before: &[String], version: &str) {
        assert_eq!(self.selfup_containers(), before, "the containers changed");
        assert_eq!(
            self.version_at(&self.public("/")).await,
            Some((version.to_string(), self.ports[0]))
        );
        assert_eq!(self.live_port(), Some(self.ports[0]));
    }

    /// The port of the instance whose socket the live socket's path names
    /// now (each instance binds its own beside it, named for its port).
    pub fn live_port(&self) -> Option<u16> {
        use std::os::unix::fs::MetadataExt;
        let inode = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
        let live = inode(&self.live_socket())?;
        self.ports
            .into_iter()
            .find(|port| inode(&self.path().join(format!("public/.live.sock.{port}"))) == Some(live))
    }
}

/// Starts a `docker-registry` on `address` storing under `data`; with
/// `htpasswd`, it asks for those credentials.
fn spawn_registry(address: &str, data: &Path, htpasswd: Option<&Path>) -> Result<Child, String> {
    let mut cmd = Command::new("docker-registry");
    cmd.args(["serve", repo_root().join("registry/config.yml").to_str().unwrap()])
        .env("REGISTRY_HTTP_ADDR", address)
        .env("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", data)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(htpasswd) = htpasswd {
        cmd.env("REGISTRY_AUTH", "htpasswd")
            .env("REGISTRY_AUTH_HTPASSWD_REALM", "selfup-e2e")
            .env("REGISTRY_AUTH_HTPASSWD_PATH", htpasswd);
    }
    cmd.spawn()
        .map_err(|e| format!("starting docker-registry (apt-get install docker-registry): {e}"))
}

/// Waits until the registry on `address` answers `/v2/` with `status`
/// (`200` when it is open, `401` when it asks for credentials).
fn wait_for_registry(address: &str, status: &str) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let answered = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://{address}/v2/"),
            ])
            .output_within()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if answered == status {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("the registry on {address} did not come up"))
}

/// A companion-mode environment: a selfup container in companion mode on
/// host networking, and the target containers, networks, volumes, images, a
/// second registry and temporary files its test made, all labelled
/// `selfup.e2e=<run>` and `selfup.e2e.test=<test>` and removed on drop.
pub struct CompanionEnv {
    pub suite: Arc<Suite>,
    /// The value of `selfup.e2e.test` on everything this test creates.
    pub test: String,
    pub port: u16,
    pub key: String,
    pub companion: String,
    networks: Vec<String>,
    /// Volumes removed on drop; a test adds those its containers made.
    pub volumes: Vec<String>,
    dirs: Vec<PathBuf>,
    /// Images removed on drop; a test adds those it tags.
    pub images: Vec<String>,
    /// A second registry, with htpasswd authentication, as a host process.
    registry: Option<Child>,
    /// Its user, and the directory holding its `password` (for signing).
    private_credentials: Option<(String, PathBuf)>,
}

impl CompanionEnv {
    fn new(suite: Arc<Suite>) -> CompanionEnv {
        suite.companion_images();
        let test = format!("{}c{}", suite.run_id, suite.next_env.fetch_add(1, Ordering::SeqCst));
        CompanionEnv {
            suite,
            companion: format!("selfupe2e-{test}-companion"),
            test,
            port: free_port(),
            key: format!("e2e-key-{:032x}", random_u128()),
            networks: Vec::new(),
            volumes: Vec::new(),
            dirs: Vec::new(),
            images: Vec::new(),
            private_credentials: None,
            registry: None,
        }
    }

    /// The labels every object of this test carries, as `docker` arguments.
    pub fn labels(&self) -> Vec<String> {
        vec![
            "--label".into(),
            format!("selfup.e2e={}", self.suite.run_id),
            "--label".into(),
            format!("selfup.e2e.test={}", self.test),
        ]
    }

    pub fn name(&self, what: &str) -> String {
        format!("selfupe2e-{}-{what}", self.test)
    }

    pub fn dir(&mut self, what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(self.name(what));
        std::fs::create_dir_all(&dir).unwrap();
        self.dirs.push(dir.clone());
        dir
    }

    /// Creates a network labelled for this test, removed on drop.
    pub fn network(&mut self, what: &str) -> String {
        let name = self.create("network", what);
        self.networks.push(name.clone());
        name
    }

    /// Creates a volume labelled for this test, removed on drop.
    pub fn volume(&mut self, what: &str) -> String {
        let name = self.create("volume", what);
        self.volumes.push(name.clone());
        name
    }

    /// `docker <kind> create` with this test's labels.
    fn create(&self, kind: &str, what: &str) -> String {
        let name = self.name(what);
        run(Command::new("docker")
            .args([kind, "create"])
            .args(self.labels())
            .arg(&name));
        name
    }

    /// Starts the companion with `allowed` registries, the extra `docker
    /// run` arguments, and this world's API key unless `generated_key`.
    pub async fn start_companion(&mut self, allowed: &[&str], extra: &[String], generated_key: bool) {
        let (name, port, image) = (self.companion.clone(), self.port, self.suite.image("selfup", "1.0.0"));
        self.start_instance(&name, port, &image, allowed, extra, generated_key)
            .await;
    }

    /// Starts a companion container `name` from `image` on `port`.
    pub async fn start_instance(
        &self,
        name: &str,
        port: u16,
        image: &str,
        allowed: &[&str],
        extra: &[String],
        generated_key: bool,
    ) {
        let allowed = serde_json::to_string(allowed).unwrap();
        let mut cmd = Command::new("docker");
        cmd.args(["run", "-d", "--name", name, "--network", "host"])
            .args(self.labels())
            .args(["-v", "/var/run/docker.sock:/var/run/docker.sock"])
            .args(["-e", "SELFUP_COMPANION=true"])
            .args(["-e", &format!("SELFUP_PORT={port}")])
            .args(["-e", &format!("SELFUP_PORTS=[{port},{}]", free_port())])
            .args(["-e", "SELFUP_NGINX_CONTAINER="])
            .args(["-e", &format!("SELFUP_ALLOWED_REGISTRIES={allowed}")])
            .args(["-e", "SELFUP_UPDATE_DEADLINE_SECS=20"])
            .args(["-e", "SELFUP_UPDATE_SETTLE_SECS=2"])
            // The operator's public key, where compose mounts it.
            .args(["-v", &format!("{VERIFY_KEY}:/etc/selfup/cosign.pub:ro")]);
        if !generated_key {
            cmd.args(["-e", &format!("SELFUP_API_KEY={}", self.key)]);
        }
        cmd.args(extra).arg(image);
        run(&mut cmd);
        self.wait_instance(port).await;
    }

    pub async fn wait_companion(&self) {
        self.wait_instance(self.port).await;
    }

    /// Waits until the companion on `port` answers `/health`.
    pub async fn wait_instance(&self, port: u16) {
        let url = format!("http://127.0.0.1:{port}/health");
        eventually("the companion's /health", Duration::from_secs(30), || async {
            let r = self.suite.http.get(&url).send().await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The companion's `GET /status` (as root, over loopback).
    pub async fn status(&self) -> Value {
        let _waiting = waiting_for("the companion's /status".to_string());
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let r = http.get(self.url("/status")).send().await.expect("/status answers");
        r.json().await.expect("/status is JSON")
    }

    /// Creates (and starts, unless `start` is false) a target container:
    /// labelled for this test, with `args` before the image.
    pub fn target(&self, what: &str, args: &[&str], image: &str, start: bool) -> String {
        self.target_with_command(what, args, image, &[], start)
    }

    /// [`CompanionEnv::target`] with `command` after the image.
    pub fn target_with_command(&self, what: &str, args: &[&str], image: &str, command: &[&str], start: bool) -> String {
        let name = self.name(what);
        let mut cmd = Command::new("docker");
        cmd.args(["create", "--name", &name])
            .args(self.labels())
            .args(args)
            .arg(image)
            .args(command);
        run(&mut cmd);
        if start {
            docker(&["start", &name]);
        }
        name
    }

    /// `POST path` with a raw body and an `Authorization` header: (status, JSON body).
    pub async fn post_raw(&self, path: &str, authorization: Option<&str>, body: &str) -> (u16, Value) {
        self.post_raw_at(self.port, path, authorization, body).await
    }

    /// [`CompanionEnv::post_raw`] to the instance on `port`.
    pub async fn post_raw_at(&self, port: u16, path: &str, authorization: Option<&str>, body: &str) -> (u16, Value) {
        let _waiting = waiting_for(format!("the answer to POST {path} on port {port}"));
        let mut request = self
            .suite
            .http
            .post(format!("http://127.0.0.1:{port}{path}"))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(a) = authorization {
            request = request.header("authorization", a);
        }
        let response = request.send().await.expect("the companion answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {status} {text}"));
        (status, json)
    }

    /// `POST /update` of `container` to `image` as user 65534, with the
    /// companion's key: (status, JSON body).
    pub fn update_as_nobody(&self, container: &str, image: &str) -> (String, Value) {
        let body = json!({ "container": container, "image": image }).to_string();
        let url = self.url("/update");
        let mut curl = Nobody::spawn(
            "/usr/bin/curl",
            &[
                "-s",
                "--max-time",
                "120",
                "-w",
                "\n%{http_code}",
                "-H",
                &format!("authorization: {}", self.key),
                "-H",
                "content-type: application/json",
                "--data",
                &body,
                &url,
            ],
        );
        let (out, err) = curl.finish();
        let (answer, status) = out
            .trim()
            .rsplit_once('\n')
            .unwrap_or_else(|| panic!("curl: {out} {err}"));
        (
            status.to_string(),
            serde_json::from_str(answer).unwrap_or_else(|_| panic!("not JSON: {answer}")),
        )
    }

    /// `POST /update` with the key.
    pub async fn update(&self, container: &str, image: &str) -> (u16, Value) {
        self.update_at(self.port, container, image).await
    }

    /// `POST /update` with the key to the instance on `port`.
    pub async fn update_at(&self, port: u16, container: &str, image: &str) -> (u16, Value) {
        let body = json!({ "container": container, "image": image }).to_string();
        self.post_raw_at(port, "/update", Some(&self.key), &body).await
    }

    pub fn logs(&self) -> String {
        Command::new("docker")
            .args(["logs", &self.companion])
            .output_within()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
            .unwrap_or_default()
    }

    /// Every container this test made, by name.
    pub fn containers(&self) -> BTreeSet<String> {
        containers_with(&[&format!("label=selfup.e2e.test={}", self.test)], "{{.Names}}")
            .into_iter()
            .collect()
    }

    /// Starts a registry with htpasswd authentication (`user`/`password`), and
    /// a private `DOCKER_CONFIG` for the docker CLI with its credentials.
    pub fn private_registry(&mut self, user: &str, password: &str) -> (String, PathBuf) {
        let dir = self.dir("registry");
        let htpasswd = run(Command::new("htpasswd").args(["-Bbn", user, password]));
        std::fs::write(dir.join("htpasswd"), htpasswd).unwrap();
        // Where registry/sign.sh finds the password, as start.sh lays it out.
        std::fs::write(dir.join("password"), password).unwrap();
        self.private_credentials = Some((user.to_string(), dir.clone()));
        let address = format!("127.0.0.1:{}", free_port());
        let process = spawn_registry(&address, &dir.join("data"), Some(&dir.join("htpasswd"))).unwrap();
        self.registry = Some(process);
        let config_dir = self.dir("docker-config");
        let auth = run(Command::new("sh").args(["-c", &format!("printf %s '{user}:{password}' | base64 -w0")]));
        let config = json!({ "auths": { address.clone(): { "auth": auth.trim() } } });
        std::fs::write(config_dir.join("config.json"), config.to_string()).unwrap();
        // Up when it challenges for credentials.
        wait_for_registry(&address, "401").unwrap();
        (address, config_dir)
    }

    /// Tags a suite image into the private registry and pushes it with the
    /// private DOCKER_CONFIG; signs it with the credentials `private_registry` made.
    pub fn push_private(&mut self, source: &str, target: &str, docker_config: &PathBuf) {
        docker(&["tag", source, target]);
        self.images.push(target.to_string());
        run(Command::new("docker")
            .env("DOCKER_CONFIG", docker_config)
            .args(["push", "-q", target]));
        let (user, auth) = self.private_credentials.clone().expect("a private registry");
        sign_with(target, Some((&user, &auth)));
    }
}

impl Drop for CompanionEnv {
    fn drop(&mut self) {
        if failing() || std::env::var("TEST_LOG").is_ok() {
            let log = self.logs();
            let lines: Vec<&str> = log.lines().filter(|l| !l.contains("middleware::logger")).collect();
            eprintln!(
                "--- companion {}\n{}",
                self.companion,
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        let ids = Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("label=selfup.e2e.test={}", self.test)])
            .output_within()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in ids.split_whitespace() {
            // -v: the anonymous volumes this test's containers made go too.
            run_quietly(Command::new("docker").args(["rm", "-f", "-v", id]));
        }
        for network in &self.networks {
            run_quietly(Command::new("docker").args(["network", "rm", network]));
        }
        for volume in &self.volumes {
            run_quietly(Command::new("docker").args(["volume", "rm", "-f", volume]));
        }
        if !self.images.is_empty() {
            run_quietly(Command::new("docker").args(["rmi", "-f"]).args(&self.images));
        }
        if let Some(registry) = &mut self.registry {
            let _ = registry.kill();
            let _ = registry.wait();
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The companion on an app's private network, from
/// `docker/compose.companion.yml`: a compose project whose `app` service (a
/// busybox target image) reaches `selfup-companion` (nginx in front of the
/// update socket of the `selfup` service) by name, with nothing published
/// to the host. Its containers (the companion's successors and
/// the swaps' replacements among them, which keep the compose labels), the
/// containers a test adds, its network and volumes carry the run's label and
/// are removed on drop.
pub struct AppNetEnv {
    pub suite: Arc<Suite>,
    pub project: String,
    /// The repository the companion's own image is released to.
    pub repository: String,
    pub key: String,
    /// The value of `selfup.e2e.test` on containers a test adds.
    pub test: String,
    dir: PathBuf,
}

/// A raw HTTP/1.0 request an app container sends with busybox `nc`.
#[derive(Default)]
pub struct Request<'a> {
    pub host: &'a str,
    /// The companion's API key, as `Authorization: Bearer`.
    pub key: Option<&'a str>,
    /// More header lines, each without its line end.
    pub headers: &'a [&'a str],
    pub method: &'a str,
    pub path: &'a str,
    pub body: Option<&'a str>,
}

impl std::fmt::Display for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = self.body.unwrap_or("");
        write!(f, "{} {} HTTP/1.0\r\nHost: {}\r\n", self.method, self.path, self.host)?;
        if let Some(key) = self.key {
            write!(f, "Authorization: Bearer {key}\r\n")?;
        }
        for header in self.headers {
            write!(f, "{header}\r\n")?;
        }
        write!(
            f,
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }
}

impl AppNetEnv {
    /// Releases selfup `version` to a repository of its own and starts the
    /// project; returns once the companion answers the app by name.
    pub async fn start(suite: Arc<Suite>, version: &str) -> AppNetEnv {
        Self::start_with(suite, version, Config::Fast).await
    }

    /// [`AppNetEnv::start`] with `config`: [`Config::Shipped`] leaves every
    /// setting of `docker/compose.companion.yml` as it ships (the bake too).
    pub async fn start_with(suite: Arc<Suite>, version: &str, config: Config) -> AppNetEnv {
        suite.companion_images();
        let n = suite.next_env.fetch_add(1, Ordering::SeqCst);
        let project = format!("{PROJECT_PREFIX}{}a{n}", suite.run_id);
        let dir = std::env::temp_dir().join(&project);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("docker-config.json"), "{}\n").unwrap();
        let run = &suite.run_id;
        let labelled = format!("    labels:\n      selfup.e2e: '{run}'\n");
        // Fast: no bake, as in `Suite::env`, the elder goes at the switch
        // (the bake's own tests set one). Shipped: the file's settings.
        // The operator's calls from the host arrive through the network's
        // gateway: they present the upgrade token ([`AppNetEnv::operator`]).
        let fast = match config {
            Config::Fast => {
                "      SELFUP_UPDATE_DEADLINE_SECS: '20'\n      SELFUP_UPDATE_SETTLE_SECS: '2'\n      SELFUP_HEALTH_DEADLINE_SECS: '10'\n      SELFUP_TAKEOVER_DEADLINE_SECS: '20'\n      SELFUP_BAKE_SECS: '0'\n"
            }
            Config::Shipped => "",
        };
        let environment = format!("    environment:\n      SELFUP_UPGRADE_TOKEN: '{BRIDGE_TOKEN}'\n{fast}");
        let override_yml = format!(
            "version: \"2.4\"\nservices:\n  app:\n{labelled}  selfup-companion:\n{labelled}  selfup:\n{labelled}{environment}networks:\n  app:\n{labelled}volumes:\n  data:\n{labelled}  sockets:\n{labelled}"
        );
        std::fs::write(dir.join("override.yml"), override_yml).unwrap();
        let env = AppNetEnv {
            repository: format!("a{n}"),
            key: format!("e2e-key-{:032x}", random_u128()),
            test: format!("{run}a{n}"),
            project,
            dir,
            suite,
        };
        env.suite.release(&env.repository, version);
        env.compose(&["up", "-d"]);
        env.wait_by_name(version).await;
        env
    }

    /// docker-compose on the example file plus this test's override.
    pub fn compose(&self, args: &[&str]) -> String {
        let suite = &self.suite;
        run(Command::new("docker-compose")
            .arg("-f")
            .arg(repo_root().join("docker/compose.companion.yml"))
            .arg("-f")
            .arg(self.dir.join("override.yml"))
            .args(["-p", &self.project])
            .args(args)
            .env("APP_IMAGE", suite.image(APP, "1.0.0"))
            .env("SELFUP_NGINX_IMAGE", &suite.nginx_image)
            .env("SELFUP_API_KEY", &self.key)
            .env("SELFUP_REGISTRY", &suite.registry)
            .env("SELFUP_IMAGE", &self.repository)
            .env("SELFUP_ALLOWED_REGISTRIES", format!("[\"{}\"]", suite.registry))
            .env("SELFUP_REGISTRY_API", &suite.registry_from_networks)
            .env("SELFUP_REGISTRY_CONFIG", self.dir.join("docker-config.json"))
            // The suite's registry is on a port alone, as in `Env::compose_with`.
            .env("SELFUP_REGISTRY_SOCKET", "")
            .env("SELFUP_REGISTRY_DIR", self.dir.join("registry-socket")))
    }

    /// The network compose made for the project.
    pub fn network(&self) -> String {
        format!("{}_app", self.project)
    }

    /// The ids of the project's containers of `service`.
    pub fn containers_of(&self, service: &str) -> Vec<String> {
        containers_with(
            &[
                &format!("label=com.docker.compose.project={}", self.project),
                &format!("label=com.docker.compose.service={service}"),
            ],
            "{{.ID}}",
        )
    }

    /// The one running `app` container.
    pub fn app(&self) -> String {
        let ids = self.containers_of("app");
        assert_eq!(ids.len(), 1, "one app container: {ids:?}");
        ids[0].clone()
    }

    /// Sends a raw HTTP/1.0 request from the app container to
    /// `selfup-companion` on port 80, by name (busybox `nc` resolves it
    /// through Docker's DNS): (status, body), or `None` when no answer came.
    pub fn ask_from_app(&self, method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
        self.ask_from_app_as("selfup-companion", method, path, body)
    }

    /// [`AppNetEnv::ask_from_app`] with another `Host` header.
    pub fn ask_from_app_as(&self, host: &str, method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
        let request = Request {
            host,
            key: Some(self.key.as_str()),
            method,
            path,
            body,
            ..Request::default()
        };
        self.ask_from_app_at(("selfup-companion", 80), &request)
    }

    /// Sends `request` from the app container to `target` (a name or an
    /// address on the network) on `port`: (status, body), or `None` when no
    /// answer came within 90 s.
    pub fn ask_from_app_at(&self, (target, port): (&str, u16), request: &Request) -> Option<(u16, String)> {
        let request = request.to_string();
        let mut ask = Command::new("docker");
        ask.args([
            "exec",
            "-i",
            &self.app(),
            "/busybox",
            "nc",
            "-w",
            "90",
            target,
            &port.to_string(),
        ]);
        let out = output_within(&mut ask, Some(request.as_bytes())).ok()?;
        parse_http(&String::from_utf8_lossy(&out.stdout))
    }

    /// The companion's container: the `selfup` service's one container.
    pub fn companion(&self) -> String {
        let ids = self.containers_of("selfup");
        assert_eq!(ids.len(), 1, "one selfup container: {ids:?}");
        ids[0].clone()
    }

    /// The container that carries the name `selfup-companion`: nginx.
    pub fn door(&self) -> String {
        let ids = self.containers_of("selfup-companion");
        assert_eq!(ids.len(), 1, "one nginx container: {ids:?}");
        ids[0].clone()
    }

    /// The addresses Docker's DNS gives the app for `name`, sorted.
    pub fn resolve_from_app(&self, name: &str) -> Vec<String> {
        let out = Command::new("docker")
            .args(["exec", &self.app(), "/busybox", "nslookup", name, "127.0.0.11"])
            .output_within()
            .unwrap();
        let text = output_text(&out);
        // busybox prints the server first ("Server: 127.0.0.11", then an
        // "Address" line), then "Name: <name>" and the name's addresses
        // ("Address: 172.18.0.3", or "Address 1: 172.18.0.3 <name>").
        let mut addresses: Vec<String> = text
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("Name:"))
            .filter(|l| l.trim_start().starts_with("Address"))
            .filter_map(|l| l.split_once(':')?.1.split_whitespace().next())
            .filter(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
            .map(str::to_string)
            .collect();
        addresses.sort();
        addresses.dedup();
        addresses
    }

    /// Waits until the companion answers `GET /` by name from the app with `version`.
    pub async fn wait_by_name(&self, version: &str) {
        let want = format!("selfup version {version}");
        eventually(
            &format!("{want} at http://selfup-companion/ from the app"),
            Duration::from_secs(60),
            || async {
                let (status, body) = self.ask_from_app("GET", "/", None)?;
                (status == 200 && body.trim() == want).then_some(())
            },
        )
        .await;
    }

    /// `id`'s address on the project's network.
    pub fn address(&self, id: &str) -> String {
        let format = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.network()
        );
        docker(&["inspect", "-f", &format, id]).trim().to_string()
    }

    /// A request from the host to the companion `id` on `port` at its address
    /// on the network, as the operator's curl: `Host: localhost`.
    /// (status, body), or why no answer came.
    pub async fn operator(
        &self,
        id: &str,
        method: reqwest::Method,
        port: u16,
        path: &str,
    ) -> Result<(u16, Value), String> {
        let url = format!("http://{}:{port}{path}", self.address(id));
        let _waiting = waiting_for(format!("the answer to {method} {url}"));
        let r = self
            .suite
            .http
            .request(method, &url)
            .header("host", "localhost")
            .bearer_auth(BRIDGE_TOKEN)
            .send()
            .await
            .map_err(|e| format!("{url}: {e:?}"))?;
        let status = r.status().as_u16();
        let text = r.text().await.map_err(|e| format!("{url}: the answer's body: {e:?}"))?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or_else(|_| json!({ "text": text })),
        ))
    }

    /// Every container of the project and of this test, for the log on failure.
    fn all_containers(&self) -> Vec<String> {
        let mut ids = containers_with(
            &[&format!("label=com.docker.compose.project={}", self.project)],
            "{{.ID}}",
        );
        ids.extend(containers_with(
            &[&format!("label=selfup.e2e.test={}", self.test)],
            "{{.ID}}",
        ));
        ids
    }

    /// The labels a container a test adds carries, as `docker` arguments.
    pub fn labels(&self) -> Vec<String> {
        vec![
            "--label".into(),
            format!("{LABEL}={}", self.suite.run_id),
            "--label".into(),
            format!("selfup.e2e.test={}", self.test),
        ]
    }
}

impl Drop for AppNetEnv {
    fn drop(&mut self) {
        let ids = self.all_containers();
        if failing() || std::env::var("TEST_LOG").is_ok() {
            for id in &ids {
                if let Ok(o) = Command::new("docker")
                    .args(["logs", "--tail", "40", id])
                    .output_within()
                {
                    eprintln!("--- {id}\n{}", output_text(&o));
                }
            }
        }
        for id in &ids {
            run_quietly(Command::new("docker").args(["rm", "-f", "-v", id]));
        }
        let project = format!("label=com.docker.compose.project={}", self.project);
        for kind in ["network", "volume"] {
            let listed = Command::new("docker")
                .args([kind, "ls", "-q", "--filter", &project])
                .output_within()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for name in listed.split_whitespace() {
                run_quietly(Command::new("docker").args([kind, "rm", name]));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The status and body of a raw HTTP answer.
fn parse_http(answer: &str) -> Option<(u16, String)> {
    let status = answer.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// A number nobody guesses twice in a run, for API keys.
fn random_u128() -> u128 {
    static DRAWS: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    nanos ^ ((std::process::id() as u128) << 64) ^ (DRAWS.fetch_add(1, Ordering::SeqCst) as u128).rotate_left(32)
}
