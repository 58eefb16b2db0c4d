//! The hold's own upgrade: once a handover is final, the live instance
//! replaces the hold container (`selfup hold`, see [`crate::hold`]) with a
//! copy that runs its own image, so that the hold never pins an old image
//! and runs the code of the live version.
//!
//! The new hold starts beside the old one and renames its socket over
//! `hold.sock`; only then is the old one stopped (it finishes what it holds)
//! and removed, and the new one takes its name: nginx always finds a hold.
//! The hold matters only while no instance is live, so a failure here is
//! logged and the old hold stays.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use bollard::models::ContainerInspectResponse;
use tokio::time::Instant;

use crate::config::Settings;
use crate::docker::Engine;
use crate::hold::{HOLD_LABEL, hold_socket};
use crate::recreate::clone::{COMPOSE_IMAGE, Overrides, clone_body};
use crate::recreate::watch::{self, StopFailed};

/// The compose project label, which tells this service's hold from another's.
const PROJECT: &str = "com.docker.compose.project";

/// How long a new hold may take to publish its socket.
const PUBLISH_WITHIN: Duration = Duration::from_secs(10);

/// How long the old hold may take to finish what it holds: nginx keeps an
/// idle connection to it at most 4 s once an instance is live again.
const OLD_HOLD_STOP: Duration = Duration::from_secs(10);

/// Replaces every running hold of this instance's compose project that
/// runs another image than `me`'s with one that runs `me`'s.
pub(super) async fn renew(engine: &Engine, settings: &Settings, me: &ContainerInspectResponse) {
    let Some(image) = me.image.clone() else { return };
    // Outside a compose project the hold cannot be told from another
    // service's: it is the operator's to replace.
    let Some(project) = me
        .config
        .as_ref()
        .and_then(|c| c.labels.as_ref())
        .and_then(|l| l.get(PROJECT).cloned())
    else {
        return;
    };
    let labels = [
        (HOLD_LABEL.to_string(), "true".to_string()),
        (PROJECT.to_string(), project),
    ];
    let holds = match engine.list_by_labels(&labels).await {
        Ok(holds) => holds,
        Err(e) => return tracing::warn!(error = %e, "looking for the hold"),
    };
    for hold in holds {
        let (Some(id), Some(old_image)) = (hold.id, hold.image_id) else {
            continue;
        };
        if old_image == image || hold.state.as_ref().is_some_and(|s| s.to_string() != "running") {
            continue;
        }
        match replace(engine, settings, &id, &image).await {
            Ok(new) => tracing::info!(old = %id, %new, %image, "the hold runs this version's image"),
            Err(e) => tracing::warn!(hold = %id, error = %e, "the hold keeps its image"),
        }
    }
}

async fn replace(engine: &Engine, settings: &Settings, id: &str, image: &str) -> Result<String, String> {
    let old = engine.inspect_container(id).await.map_err(|e| e.to_string())?;
    let name = old
        .name
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string();
    let overrides = Overrides {
        image: image.to_string(),
        labels: vec![(COMPOSE_IMAGE.into(), image.to_string())],
        ..Overrides::default()
    };
    let socket = hold_socket(&settings.live_socket);
    let before = inode(&socket);
    let new = engine
        .create_container(&format!("{name}-next"), clone_body(&old, None, &overrides))
        .await
        .map_err(|e| e.to_string())?;
    let started = match engine.start_container(&new).await {
        Ok(()) => published(&socket, before).await,
        Err(e) => Err(e.to_string()),
    };
    if let Err(why) = started {
        let _ = engine.remove_container(&new, true).await;
        return Err(format!("the new hold did not publish {}: {why}", socket.display()));
    }
    watch::stop_and_remove(engine, id, OLD_HOLD_STOP, StopFailed::Force)
        .await
        .map_err(|e| e.to_string())?;
    engine.rename_container(&new, &name).await.map_err(|e| e.to_string())?;
    Ok(new)
}

/// The socket file's identity, if there is one.
fn inode(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Waits until `socket` names another socket than `before`.
async fn published(socket: &Path, before: Option<(u64, u64)>) -> Result<(), String> {
    let until = Instant::now() + PUBLISH_WITHIN;
    while Instant::now() < until {
        if inode(socket).is_some_and(|now| Some(now) != before) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("not within {PUBLISH_WITHIN:?}"))
}
