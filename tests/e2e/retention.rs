//! Image retention: a clean handover leaves `image_retention` images of the
//! service's repository on the machine, the previous version's among them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::harness::{Suite, docker, eventually};

/// The distinct image ids tagged in `repository` on this machine.
fn local_images(repository: &str) -> BTreeSet<String> {
    docker(&["images", "-q", "--no-trunc", repository])
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn image_id(reference: &str) -> String {
    docker(&["image", "inspect", "-f", "{{.Id}}", reference])
        .trim()
        .to_string()
}

pub async fn five_upgrades_leave_three_images_of_the_repository_and_rollback_still_works(suite: Arc<Suite>) {
    let extra = ["1.3.0", "1.4.0", "1.5.0"];
    for version in extra {
        suite.build_extra(version);
    }
    let env = suite.live_env(&[], "1.0.0").await;
    let repository = format!("{}/{}", suite.registry, env.repository);
    let mut live = env.ports[0];
    for version in ["1.1.0", "1.2.0", "1.3.0", "1.4.0", "1.5.0"] {
        suite.release(&env.repository, version);
        let (status, body) = env.upgrade(live, None).await;
        assert_eq!(status, 200, "{body}\n{}", env.logs());
        assert_eq!(body["to"], version, "{body}");
        live = body["new_port"].as_u64().unwrap() as u16;
        env.wait_takeover_done(live).await;
    }
    // Six versions were tagged here; the last takeover leaves the three highest.
    let want: BTreeSet<String> = extra
        .iter()
        .map(|v| image_id(&suite.image(&env.repository, v)))
        .collect();
    let left = eventually(
        "three images of the repository to be left",
        Duration::from_secs(30),
        || {
            let want = want.clone();
            let repository = repository.clone();
            async move {
                let left = local_images(&repository);
                (left == want).then_some(left)
            }
        },
    )
    .await;
    assert_eq!(left.len(), 3);
    // The images of the suite's own repository are not this service's: untouched.
    for version in ["1.0.0", "1.1.0", "1.2.0"] {
        assert!(!image_id(&suite.image("selfup", version)).is_empty());
    }
    // The previous version is still there to roll back to, without a pull.
    let r = env.http.post(env.direct(live, "/rollback")).send().await.unwrap();
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["to"], "1.4.0", "{body}");
    let live = body["new_port"].as_u64().unwrap() as u16;
    env.wait_takeover_done(live).await;
    assert_eq!(
        env.version_at(&env.public("/")).await,
        Some(("1.4.0".to_string(), live))
    );
}
