//! Only images signed with the operator's key run: a registry a local user
//! stands in with, a push by someone else, or a signature by another key
//! never starts a successor or a companion update; the operator's signature
//! (registry/sign.sh, cosign's format) does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::harness::{APP, Nobody, Suite, docker, free_port, inspect, run, run_quietly, sign_with};

/// A key of the test's own: `(private, public)` in `dir`, made with openssl
/// as an attacker (or a team) would.
fn own_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (key, public) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.pub")));
    run(Command::new("openssl")
        .args(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out"])
        .arg(&key));
    run(Command::new("openssl")
        .arg("ec")
        .arg("-in")
        .arg(&key)
        .arg("-pubout")
        .arg("-out")
        .arg(&public));
    (key, public)
}

/// `registry/sign.sh image` with another key than the operator's.
fn sign_with_key(image: &str, key: &Path) {
    run(Command::new(crate::harness::repo_root().join("registry/sign.sh"))
        .arg(image)
        .env("SELFUP_SIGNING_KEY", key));
}

/// A registry run by user 65534 on a port of its choosing, with images
/// tagged into it removed on drop (the process goes with the [`Nobody`]).
struct StandIn {
    addr: String,
    dir: PathBuf,
    images: Vec<String>,
    _process: Nobody,
}

impl StandIn {
    async fn start(run_id: &str) -> StandIn {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let dir = std::env::temp_dir().join(format!("selfup-e2e-{run_id}-standin-{port}"));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::copy(
            crate::harness::repo_root().join("registry/config.yml"),
            dir.join("config.yml"),
        )
        .unwrap();
        run(Command::new("chmod").args(["-R", "a+rwX"]).arg(&dir));
        let process = Nobody::spawn(
            "/usr/bin/env",
            &[
                &format!("REGISTRY_HTTP_ADDR={addr}"),
                &format!(
                    "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY={}",
                    dir.join("data").display()
                ),
                "docker-registry",
                "serve",
                dir.join("config.yml").to_str().unwrap(),
            ],
        );
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let url = format!("http://{addr}/v2/");
        crate::harness::eventually("the stand-in registry to answer", Duration::from_secs(10), || async {
            let answer = http.get(&url).send().await.ok()?;
            (answer.status() == 200).then_some(())
        })
        .await;
        StandIn {
            addr,
            dir,
            images: Vec::new(),
            _process: process,
        }
    }

    /// Pushes `source` as `repository:tag` here, unsigned; returns the name.
    fn push_unsigned(&mut self, source: &str, repository: &str, tag: &str) -> String {
        let target = format!("{}/{repository}:{tag}", self.addr);
        docker(&["tag", source, &target]);
        self.images.push(target.clone());
        docker(&["push", "-q", &target]);
        target
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if !self.images.is_empty() {
            run_quietly(Command::new("docker").args(["rmi", "-f"]).args(&self.images));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn a_registry_a_local_user_stands_in_with_runs_nothing_unsigned_or_signed_by_another_key(suite: Arc<Suite>) {
    // User 65534 holds a registry's port; selfup is pointed at it (as after
    // a reboot, before the real registry came back).
    let mut standin = StandIn::start(&suite.run_id).await;
    let env = suite.env(&[("SELFUP_REGISTRY", &standin.addr)]);
    suite.release(&env.repository, "1.0.0");
    env.up("1.0.0").await;
    let before = env.selfup_containers();
    let built = suite.image("selfup", "1.1.0");
    let pushed = standin.push_unsigned(&built, &env.repository, "1.1.0");
    standin.push_unsigned(&built, &env.repository, "latest");

    // Unsigned: the dry run says so, and the upgrade is refused before
    // anything starts.
    let dry = env.get_json(&env.direct(env.ports[0], "/upgrade?dry_run=true")).await;
    assert_eq!(dry["decision"], "refused", "{dry}");
    assert_eq!(dry["would_answer"], 403, "{dry}");
    assert!(
        dry["reason"].as_str().unwrap_or_default().contains("is not signed"),
        "{dry}"
    );
    let (status, body) = env.upgrade(env.ports[0], None).await;
    assert_eq!(status, 403, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("is not signed") && error.contains(".sig in its repository"),
        "{error}"
    );
    env.assert_elder_unchanged(&before, "1.0.0").await;

    // Signed by the user's own key: refused, naming the operator's key.
    let keys = std::env::temp_dir().join(format!("selfup-e2e-{}-keys-{}", suite.run_id, env.repository));
    std::fs::create_dir_all(&keys).unwrap();
    let (theirs, _) = own_key(&keys, "theirs");
    sign_with_key(&pushed, &theirs);
    let (status, body) = env.upgrade(env.ports[0], None).await;
    assert_eq!(status, 403, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("no signature of the image") && error.contains("/etc/selfup/cosign.pub"),
        "{error}"
    );
    env.assert_elder_unchanged(&before, "1.0.0").await;

    // The operator's signature beside it: the same image goes live.
    sign_with(&pushed, None);
    let dry = env.get_json(&env.direct(env.ports[0], "/upgrade?dry_run=true")).await;
    assert_eq!(dry["decision"], "upgrade", "{dry}");
    let (status, body) = env.upgrade(env.ports[0], None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["to"], "1.1.0", "{body}");
    assert_eq!(env.wait_public_version("1.1.0").await, env.ports[1]);
    let _ = std::fs::remove_dir_all(&keys);
}

pub async fn a_companion_update_runs_only_images_signed_with_the_key_the_container_names(suite: Arc<Suite>) {
    let mut w = suite.companion_env();
    let keys = w.dir("keys");
    let (team, _) = own_key(&keys, "team");
    run(Command::new("chmod").args(["-R", "a+rX"]).arg(&keys));
    let mount = format!("{}:/etc/selfup/keys:ro", keys.display());
    w.start_companion(&[&suite.registry], &["-v".into(), mount], false)
        .await;

    // An image of the app's repository that nobody signed (a leaked
    // registry password is enough to push one).
    let dir = w.dir("unsigned");
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {}\nLABEL selfup.e2e.unsigned={}\n",
            suite.image(APP, "1.1.0"),
            w.test
        ),
    )
    .unwrap();
    let unsigned = suite.image(APP, &format!("unsigned-{}", w.test));
    run(Command::new("docker")
        .args(["build", "-q", "--label", &suite.label(), "-t", &unsigned])
        .arg(&dir));
    w.images.push(unsigned.clone());
    docker(&["push", "-q", &unsigned]);

    let app = w.target(
        "app",
        &["--label", "selfup.enable=true"],
        &suite.image(APP, "plain-1"),
        true,
    );
    let id = inspect(&app)["Id"].clone();
    let (status, answer) = w.update_as_nobody(&app, &unsigned);
    assert_eq!(status, "403", "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("is not signed"), "{answer}");
    assert_eq!(inspect(&app)["Id"], id, "the container was replaced");
    assert_eq!(inspect(&app)["State"]["Running"], true);

    // A container that names the team's key: the operator's signature is
    // not enough, the team's is (sign.sh writes one signature per image,
    // the last one made).
    let teams = w.target(
        "team-app",
        &["--label", "selfup.enable=true", "--label", "selfup.signing-key=team"],
        &suite.image(APP, "plain-1"),
        true,
    );
    sign_with(&unsigned, None);
    let (status, answer) = w.update_as_nobody(&teams, &unsigned);
    assert_eq!(status, "403", "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("/etc/selfup/keys/team.pub"), "{answer}");
    assert_eq!(inspect(&teams)["Config"]["Image"], suite.image(APP, "plain-1"));
    // The operator's signature moves the container that names no key.
    let (status, body) = w.update(&app, &unsigned).await;
    assert_eq!(status, 200, "{body}");
    sign_with_key(&unsigned, &team);
    let (status, body) = w.update(&teams, &unsigned).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(inspect(&teams)["Config"]["Image"], unsigned);
    // What a check costs: two reads of the registry and one verification.
    let logs = w.logs();
    let checks: Vec<&str> = logs.lines().filter(|l| l.contains("signature verified")).collect();
    assert_eq!(checks.len(), 2, "one check per update that ran: {logs}");
    for line in checks {
        let ms = line.split("ms=").nth(1).and_then(|r| r.split_whitespace().next());
        eprintln!("    signature verified in {} ms", ms.unwrap_or("?"));
    }
    // A label that names a path, not a key, is refused as such.
    let sneaky = w.target(
        "sneaky-app",
        &[
            "--label",
            "selfup.enable=true",
            "--label",
            "selfup.signing-key=../cosign",
        ],
        &suite.image(APP, "plain-1"),
        true,
    );
    let (status, body) = w.update(&sneaky, &unsigned).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("is not a key name"), "{body}");
}
