//! The runner's command line: the arguments `cargo test` passes to every test
//! binary, parsed the way libtest reads them, and which tests they select.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::harness::{self, Skip, Suite};

/// What a test function may return: `()` for a test that always runs its
/// checks, `Result<(), Skip>` for one that may find it cannot.
pub trait Outcome {
    /// The reason it was skipped, if it was.
    fn skipped(self) -> Option<String>;
}

impl Outcome for () {
    fn skipped(self) -> Option<String> {
        None
    }
}

impl Outcome for Result<(), Skip> {
    fn skipped(self) -> Option<String> {
        self.err().map(|Skip(reason)| reason)
    }
}

/// How one test ended.
#[derive(Debug)]
pub enum Verdict {
    Passed,
    Skipped(String),
    Failed(String),
}

/// How long an end-to-end test may run unless [`LONG`] names it: past it
/// the test fails with what it was waiting for. Most take 10 to 60 s here;
/// one with the shipped 30 s bake takes about 40 s per upgrade.
pub const TIME_LIMIT: Duration = Duration::from_secs(300);
/// The tests with many upgrades, a swarm, or a watch, and their limit.
pub const LONG: [(&str, Duration); 4] = [
    ("swarm::", Duration::from_secs(600)),
    ("switch::eight_keep_alive_clients", Duration::from_secs(600)),
    ("retention::", Duration::from_secs(600)),
    ("_with_the_shipped_settings", Duration::from_secs(600)),
];

/// The time limit of the test `name`; `SELFUP_E2E_TIME_LIMIT_SECS` sets
/// one for every test (a slower machine, or to see what a test waits for).
pub fn time_limit(name: &str) -> Duration {
    if let Some(secs) = std::env::var("SELFUP_E2E_TIME_LIMIT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return Duration::from_secs(secs);
    }
    LONG.iter()
        .find(|(part, _)| name.contains(part))
        .map_or(TIME_LIMIT, |(_, limit)| *limit)
}

/// The tests of the quick tier (`scripts/test.sh quick`, or `--quick`): the
/// core cycle (build, start, three upgrades, one under load, a successor that
/// fails at once and one that never answers) with the bake off, in under 3
/// minutes here with the unit tests. The whole suite runs in CI.
pub const QUICK: [&str; 5] = [
    "cycle::build_refuses_a_version_that_is_not_semver",
    "cycle::three_upgrades_toggle_the_port_and_leave_one_compose_container",
    "cycle::a_successor_that_exits_at_once_is_removed_and_the_elder_keeps_serving",
    "cycle::a_successor_that_never_answers_health_is_removed_and_the_elder_keeps_serving",
    "traffic::no_request_is_lost_through_nginx_across_consecutive_upgrades",
];

/// The closing line, alone on its line: what CI reads.
pub fn summary(passed: usize, failed: usize, skipped: usize) -> String {
    format!("{passed} passed, {failed} failed, {skipped} skipped")
}

/// What the command line asks for.
#[derive(Debug, Default, PartialEq)]
pub struct Args {
    /// Run the tests whose name contains any of these (all when empty).
    pub filters: Vec<String>,
    /// Leave out the tests whose name contains any of these.
    pub skip: Vec<String>,
    /// Filters and skips match whole names, not parts.
    pub exact: bool,
    /// Print the selected names instead of running them.
    pub list: bool,
    /// Only `#[ignore]`d tests: the suite has none.
    pub ignored: bool,
    /// Stop after the first failing test.
    pub fail_fast: bool,
    /// `--test-threads N`: how many tests run at once.
    pub jobs: Option<usize>,
    /// `--quick`: the quick tier's tests ([`QUICK`]) only.
    pub quick: bool,
    /// `--repeat N`: each selected test N times (to chase a rare failure).
    pub repeat: Option<usize>,
    pub help: bool,
}

/// libtest's flags that take a value, which must not be read as a filter.
const WITH_VALUE: [&str; 8] = [
    "--test-threads",
    "--repeat",
    "--skip",
    "--format",
    "--color",
    "--logfile",
    "--shuffle-seed",
    "-Z",
];

/// libtest's flags that change nothing here: the suite prints as it goes and
/// reports its own times.
const ACCEPTED: [&str; 13] = [
    "--nocapture",
    "--no-capture",
    "--show-output",
    "--quiet",
    "-q",
    "--include-ignored",
    "--test",
    "--report-time",
    "--ensure-time",
    "--shuffle",
    "--force-run-in-process",
    "--exclude-should-panic",
    "--bench",
];

pub const USAGE: &str = "usage: e2e [OPTIONS] [FILTERS...]
    FILTER           run the tests whose name contains FILTER (any of them)
    --skip FILTER    leave out the tests whose name contains FILTER
    --exact          filters and --skip match whole names
    --list           print the selected tests' names
    --fail-fast      stop after the first failure
    --quick          only the quick tier: the core cycle (scripts/test.sh quick)
    --repeat N       run each selected test N times (to chase a rare failure)
    --test-threads N run N tests at once (default 2)
    libtest's other flags (--nocapture, --quiet, --format F, ...) are accepted
    and change nothing";

impl Args {
    /// Parses the arguments after the program name; an unknown flag, or a
    /// flag without its value, is an error.
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Args, String> {
        let mut parsed = Args::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if !arg.starts_with('-') {
                parsed.filters.push(arg);
                continue;
            }
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            if WITH_VALUE.contains(&flag.as_str()) {
                let value = match inline {
                    Some(v) => v,
                    None => args
                        .next()
                        .filter(|v| !v.starts_with("--"))
                        .ok_or_else(|| format!("{flag} needs a value"))?,
                };
                if flag == "--skip" {
                    parsed.skip.push(value);
                } else if flag == "--test-threads" {
                    match value.parse::<usize>() {
                        Ok(n) if n > 0 => parsed.jobs = Some(n),
                        _ => return Err(format!("--test-threads needs a number above 0, not {value:?}")),
                    }
                } else if flag == "--repeat" {
                    match value.parse::<usize>() {
                        Ok(n) if n > 0 => parsed.repeat = Some(n),
                        _ => return Err(format!("--repeat needs a number above 0, not {value:?}")),
                    }
                }
                continue;
            }
            if inline.is_some() && flag != "--nocapture" && flag != "--no-capture" {
                return Err(format!("{flag} takes no value"));
            }
            match flag.as_str() {
                "--exact" => parsed.exact = true,
                "--list" => parsed.list = true,
                "--ignored" => parsed.ignored = true,
                "--fail-fast" => parsed.fail_fast = true,
                "--quick" => parsed.quick = true,
                "-h" | "--help" => parsed.help = true,
                f if ACCEPTED.contains(&f) => {}
                f => return Err(format!("unknown option {f}")),
            }
        }
        Ok(parsed)
    }

    fn matches(&self, name: &str, pattern: &str) -> bool {
        if self.exact {
            name == pattern
        } else {
            name.contains(pattern)
        }
    }

    /// Whether the test `name` runs.
    pub fn selects(&self, name: &str) -> bool {
        !self.ignored
            && (!self.quick || QUICK.contains(&name))
            && (self.filters.is_empty() || self.filters.iter().any(|f| self.matches(name, f)))
            && !self.skip.iter().any(|s| self.matches(name, s))
    }

    /// Whether the command line narrows the set at all: then selecting
    /// nothing is an error (a typo must not pass as a green run).
    pub fn narrows(&self) -> bool {
        self.quick || !self.filters.is_empty() || !self.skip.is_empty()
    }
}

/// Runs this very binary with `vars` and `args`: (exit code, stdout, stderr).
fn run_self(vars: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let exe = std::env::current_exe().expect("the runner's own path");
    let out = Command::new(exe)
        .args(args)
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs this very binary with `args` and `--list`: (exit code, names listed, stderr).
fn list(args: &[&str]) -> (i32, Vec<String>, String) {
    let exe = std::env::current_exe().expect("the runner's own path");
    let out = Command::new(exe).arg("--list").args(args).output().unwrap();
    let names = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test").map(str::to_string))
        .collect();
    (
        out.status.code().unwrap_or(-1),
        names,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub async fn the_runner_reads_libtest_flags_and_fails_when_a_filter_selects_nothing(_suite: Arc<Suite>) {
    let (code, all, _) = list(&[]);
    assert_eq!(code, 0);
    assert!(all.len() > 20, "{all:?}");
    // `--skip` matches any part of a name, as a filter does.
    let companion = all.iter().filter(|n| n.contains("companion")).count();
    assert!(companion > all.iter().filter(|n| n.starts_with("companion::")).count());

    // The value of a flag is not a filter.
    let (code, names, err) = list(&[
        "--test-threads",
        "1",
        "--format",
        "pretty",
        "--color=never",
        "--nocapture",
    ]);
    assert_eq!((code, &names), (0, &all), "{err}");
    let (code, names, err) = list(&["-q", "--test-threads=2", "--show-output"]);
    assert_eq!((code, &names), (0, &all), "{err}");

    // --skip leaves out, and only out.
    let (code, names, err) = list(&["--skip", "companion"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(names.len(), all.len() - companion);
    assert!(names.iter().all(|n| !n.contains("companion")), "{names:?}");

    // Filters are substrings, any of them; --exact wants the whole name.
    let (code, names, _) = list(&["cycle::", "--skip", "semver", "input::"]);
    assert_eq!(code, 0);
    assert!(!names.is_empty());
    assert!(
        names
            .iter()
            .all(|n| (n.starts_with("cycle::") && !n.contains("semver")) || n.starts_with("input::")),
        "{names:?}"
    );
    let one = "cycle::build_refuses_a_version_that_is_not_semver";
    assert_eq!(list(&["--exact", one]).1, vec![one.to_string()]);
    let (code, names, err) = list(&["--exact", "build_refuses"]);
    assert_ne!(
        code, 0,
        "an exact filter that is only part of a name selected {names:?}"
    );
    assert!(err.contains("no e2e test matches"), "{err}");

    // A filter (or a skip) that leaves nothing fails, and says so.
    for args in [
        &["no_such_test_anywhere"][..],
        &["--test-threads", "1", "zzz"],
        &["--skip", "::"],
    ] {
        let (code, names, err) = list(args);
        assert_ne!(code, 0, "{args:?} selected {names:?} and passed");
        assert!(names.is_empty());
        assert!(err.contains("no e2e test matches"), "{args:?}: {err}");
    }

    // --test-threads sets how many tests run at once: a number above 0.
    for bad in ["0", "many"] {
        let (code, _, err) = list(&["--test-threads", bad]);
        assert_ne!(code, 0, "--test-threads {bad} was accepted");
        assert!(err.contains("--test-threads needs a number above 0"), "{err}");
    }

    // --quick: the quick tier, in the suite's order; a filter narrows it.
    let (code, names, err) = list(&["--quick"]);
    assert_eq!(code, 0, "{err}");
    let mut quick: Vec<String> = QUICK.iter().map(|n| n.to_string()).collect();
    quick.sort_by_key(|n| all.iter().position(|a| a == n));
    assert_eq!(names, quick, "every quick test is in the suite, and only they run");
    let (code, names, _) = list(&["--quick", "traffic::"]);
    assert_eq!(code, 0);
    assert_eq!(
        names,
        vec!["traffic::no_request_is_lost_through_nginx_across_consecutive_upgrades"]
    );
    let (code, _, err) = list(&["--quick", "swarm::"]);
    assert_ne!(code, 0, "a filter outside the quick tier selected something");
    assert!(err.contains("no e2e test matches"), "{err}");

    // The closing line CI reads, and each test's time limit.
    assert_eq!(summary(3, 1, 2), "3 passed, 1 failed, 2 skipped");
    assert_eq!(
        time_limit("cycle::build_refuses_a_version_that_is_not_semver"),
        TIME_LIMIT
    );
    assert!(time_limit("swarm::a_two_replica_service_upgrades_under_load") > TIME_LIMIT);
    assert_eq!(
        harness::limit_of(Command::new("docker").arg("ps")),
        Some(harness::DOCKER_LIMIT)
    );
    assert_eq!(
        harness::limit_of(Command::new("docker").args(["push", "x"])),
        Some(harness::SLOW_DOCKER_LIMIT)
    );

    // A docker command past its limit is killed, and the error says which.
    let t = std::time::Instant::now();
    let mut events = Command::new("docker");
    events.args(["events", "--filter", "type=plugin"]);
    let err = harness::output_limited(&mut events, None, Some(Duration::from_secs(1))).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(10), "killed after {:?}", t.elapsed());
    let err = err.to_string();
    assert!(
        err.contains("`docker events --filter type=plugin` did not end within its limit of 1s"),
        "{err}"
    );

    // A test past its limit fails with what it was waiting for.
    let (code, out, err) = run_self(
        &[("SELFUP_E2E_TIME_LIMIT_SECS", "5")],
        // --quick: the nested suite builds no fault image.
        &[
            "--quick",
            "--exact",
            "cycle::a_successor_that_never_answers_health_is_removed_and_the_elder_keeps_serving",
        ],
    );
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        out.contains("ran out of its time limit of 5s while waiting for: ")
            && !out.contains("waiting for: nothing the harness records"),
        "{out}{err}"
    );
    assert!(out.lines().last() == Some("0 passed, 1 failed, 0 skipped"), "{out}");

    // A flag the runner does not know is refused rather than guessed at.
    let (code, _, err) = list(&["--frobnicate"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown option --frobnicate"), "{err}");
    let (code, _, err) = list(&["--skip"]);
    assert_ne!(code, 0);
    assert!(err.contains("--skip needs a value"), "{err}");
}
