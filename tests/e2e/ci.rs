//! Companion mode from CI, as `docs/companion.md` gives the recipe: the
//! self-upgrading selfup that compose starts, with `SELFUP_COMPANION=true`;
//! a CI job on the host calling the update socket, one on another host
//! calling nginx's deploy server; and both calls, word for word from the
//! docs, still reaching the live instance after it has upgraded itself and
//! its port has flipped.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{APP, Container, Env, Suite, docker, eventually, run};

/// The first fenced `sh` block of `docs/companion.md` that contains `marker`.
fn documented_command(marker: &str) -> String {
    let docs = std::fs::read_to_string(crate::harness::repo_root().join("docs/companion.md")).unwrap();
    docs.split("```sh\n")
        .skip(1)
        .filter_map(|block| block.split_once("```").map(|(code, _)| code))
        .find(|code| code.contains(marker))
        .unwrap_or_else(|| panic!("docs/companion.md has no sh block with {marker:?}"))
        .to_string()
}

/// Runs a documented command with `sh`, the CI job's variables set: (curl's
/// exit code, its JSON answer).
fn ci_job(command: &str, vars: &[(&str, &str)]) -> (i32, Value) {
    let out = Command::new("sh")
        .args(["-c", command])
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let answer = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), answer)
}

/// The companion's key, generated at its first start, read from the data
/// volume as the docs say (`docker cp … | tar -xO`).
fn generated_key(container: &str) -> String {
    let out = run(Command::new("sh").args(["-c", &format!("docker cp {container}:/data/api_key - | tar -xO")]));
    out.trim().to_string()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The image a container runs, as it was asked for.
fn image_of(container: &str) -> String {
    docker(&["inspect", "-f", "{{.Config.Image}}", container])
        .trim()
        .to_string()
}

/// `curl` on the update socket, without a key: (status, body).
fn on_update_socket(env: &Env, method: &str, path: &str) -> (u16, String) {
    let out = run(Command::new("curl")
        .args(["-s", "--max-time", "30", "--unix-socket"])
        .arg(env.update_socket())
        .args(["-X", method, "-w", "\n%{http_code}", &format!("http://localhost{path}")]));
    let (body, status) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

pub async fn a_ci_job_updates_a_container_through_nginx_and_the_update_socket_before_and_after_selfup_upgrades_itself(
    suite: Arc<Suite>,
) {
    suite.companion_images();
    let remote = documented_command("\"$SELFUP_URL/update\"");
    let local = documented_command("--max-time 300 --unix-socket /run/selfup-public/update.sock")
        .replace("/run/selfup-public/update.sock", "\"$UPDATE_SOCKET\"");

    // selfup as the recipe starts it: compose, companion mode on.
    let env = suite.env(&[]);
    suite.release(&env.repository, "1.0.0");
    let allowed = format!("[\"{}\"]", suite.registry);
    env.compose_with(
        &[("SELFUP_COMPANION", "true"), ("SELFUP_ALLOWED_REGISTRIES", &allowed)],
        &["up", "-d"],
    );
    env.wait_public_version("1.0.0").await;
    let socket = env.update_socket();
    eventually("the update socket", Duration::from_secs(10), || async {
        socket.exists().then_some(())
    })
    .await;
    assert_eq!(mode(socket.parent().unwrap()), 0o755, "only root writes the directory");
    assert_eq!(mode(&socket), 0o666, "anyone, nginx's workers too, connects");
    let key = generated_key(&env.wait_single_container().await);
    assert_eq!(key.len(), 32, "{key:?}");

    // The CI job's container, labelled for the companion.
    let target = Container(format!("{}-web", env.project));
    docker(&[
        "run",
        "-d",
        "--name",
        &target.0,
        "--label",
        &suite.label(),
        "--label",
        "selfup.enable=true",
        &suite.image(APP, "1.0.0"),
    ]);

    let deploy_url = format!("http://127.0.0.1:{}", env.deploy_port);
    let socket_path = socket.display().to_string();
    let job = |command: &str, image: &str| {
        ci_job(
            command,
            &[
                ("SELFUP_URL", &deploy_url),
                ("SELFUP_API_KEY", &key),
                ("CONTAINER", &target.0),
                ("IMAGE", image),
                ("UPDATE_SOCKET", &socket_path),
            ],
        )
    };
    let updated = |(code, answer): (i32, Value), image: &str, how: &str| {
        assert_eq!(code, 0, "curl failed: {answer}");
        assert_eq!(answer["status"], "updated", "{answer}");
        assert_eq!(answer["new_image"], image, "{answer}");
        assert_eq!(image_of(&target.0), image);
        eprintln!("    {how}: updated in {} ms", answer["duration_ms"]);
    };

    // Another host's CI job, through nginx's deploy server.
    let image = suite.image(APP, "1.1.0");
    updated(job(&remote, &image), &image, "through nginx, selfup 1.0.0");
    // What the deploy server and the update socket refuse.
    let (code, answer) = ci_job(
        &remote,
        &[
            ("SELFUP_URL", &deploy_url),
            ("SELFUP_API_KEY", "not-the-key-0123456789"),
            ("CONTAINER", &target.0),
            ("IMAGE", &image),
        ],
    );
    assert_eq!((code, answer["error"].as_str()), (22, Some("unauthorized")), "{answer}");
    let refused = env.http.post(format!("{deploy_url}/upgrade")).send().await.unwrap();
    assert_eq!(refused.status(), 404, "the deploy server passes /update only");
    let public = env.http.post(env.public("/update")).send().await.unwrap();
    assert_eq!(public.status(), 403, "the public server still refuses /update");
    for (method, path) in [("GET", "/status"), ("POST", "/upgrade"), ("GET", "/handover")] {
        let (status, body) = on_update_socket(&env, method, path);
        assert_eq!(status, 403, "{method} {path} on the update socket: {body}");
        assert!(body.contains("update socket"), "{body}");
    }
    let (status, body) = on_update_socket(&env, "GET", "/health");
    assert_eq!((status, body.trim()), (200, r#"{"status":"ok"}"#), "no detail there");

    // selfup upgrades itself: the live port flips.
    suite.release(&env.repository, "1.1.0");
    let (status, body) = env.upgrade(env.ports[0], None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["new_port"], env.ports[1], "{body}");
    env.wait_takeover_done(env.ports[1]).await;
    assert_eq!(env.selfup_containers().len(), 1);

    // The same calls reach the new instance, and its companion.
    let image = suite.image(APP, "2.0.0");
    updated(
        job(&remote, &image),
        &image,
        "through nginx, selfup 1.1.0 on the other port",
    );
    let image = suite.image(APP, "1.0.0");
    updated(job(&local, &image), &image, "on the update socket, selfup 1.1.0");
    let (_, body) = on_update_socket(&env, "GET", "/");
    assert!(
        body.contains("1.1.0"),
        "the update socket is the new instance's: {body}"
    );

    // No container is left aside by the swaps.
    let names = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("name={}-web", env.project),
        "--format",
        "{{.Names}}",
    ]);
    assert_eq!(names.trim(), target.0, "{names}");
}
