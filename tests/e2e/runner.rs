//! The runner's command line: the arguments `cargo test` passes to every test
//! binary, parsed the way libtest reads them, and which tests they select.

use std::process::Command;
use std::sync::Arc;

use crate::harness::Suite;

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
    pub help: bool,
}

/// libtest's flags that take a value, which must not be read as a filter.
const WITH_VALUE: [&str; 7] = [
    "--test-threads",
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
            && (self.filters.is_empty() || self.filters.iter().any(|f| self.matches(name, f)))
            && !self.skip.iter().any(|s| self.matches(name, s))
    }

    /// Whether the command line narrows the set at all: then selecting
    /// nothing is an error (a typo must not pass as a green run).
    pub fn narrows(&self) -> bool {
        !self.filters.is_empty() || !self.skip.is_empty()
    }
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

    // A flag the runner does not know is refused rather than guessed at.
    let (code, _, err) = list(&["--frobnicate"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown option --frobnicate"), "{err}");
    let (code, _, err) = list(&["--skip"]);
    assert_ne!(code, 0);
    assert!(err.contains("--skip needs a value"), "{err}");
}
