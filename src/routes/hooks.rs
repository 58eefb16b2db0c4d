//! `POST /hooks/registry`: the registry's notification that a tag was pushed.
//!
//! The distribution registry posts an envelope, `{"events": [...]}`, each
//! event with an `action` and a `target` (`repository`, `tag`, `digest`,
//! `mediaType`). A push of a tag of this service's repository wakes the watch
//! policy, which then looks at the registry itself and resolves the highest
//! matching tag: the envelope is a nudge, never the word on what to run. So
//! a duplicate, a late or an out-of-order notification is one more look at
//! the registry, and changes nothing the registry does not say.
//!
//! In companion mode, a tag push to any repository also wakes the watch of
//! companion containers ([`crate::watch::containers`]), which looks at the
//! containers labelled `selfup.watch` that run an image of that repository.
//!
//! The answer is a 202 at once; the upgrade, if any, runs in the background.
//! The registry reaches this endpoint through nginx's deploy server and the
//! update socket (addresses other local users cannot take); the bearer token
//! `hook_token` guards it ([`Hook`]).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use crate::routes::guard::{GuardError, Hook};
use crate::routes::{AppState, json_error};

/// The largest envelope accepted: the registry batches a few events at most.
pub const HOOK_LIMIT: usize = 256 * 1024;

#[derive(Debug, Deserialize)]
struct Envelope {
    events: Vec<Event>,
}

#[derive(Debug, Deserialize)]
struct Event {
    #[serde(default)]
    action: String,
    #[serde(default)]
    target: Target,
}

#[derive(Debug, Default, Deserialize)]
struct Target {
    #[serde(default)]
    repository: String,
    tag: Option<String>,
}

/// How many events of an envelope are tag pushes to `repository`.
fn pushes_to(envelope: &Envelope, repository: &str) -> usize {
    envelope
        .events
        .iter()
        .filter(|e| e.action == "push" && e.target.repository == repository && e.target.tag.is_some())
        .count()
}

/// The repositories an envelope says tags were pushed to.
fn pushed_repositories(envelope: &Envelope) -> std::collections::HashSet<String> {
    envelope
        .events
        .iter()
        .filter(|e| e.action == "push" && e.target.tag.is_some() && !e.target.repository.is_empty())
        .map(|e| e.target.repository.clone())
        .collect()
}

/// `POST /hooks/registry`. The whole body is read before the guard's
/// verdict is answered, as it always was: an oversized envelope is a 413 for
/// anyone, and a refused caller's connection stays open.
pub async fn registry(
    body: web::Bytes,
    hook: Result<Hook, GuardError>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GuardError> {
    let Hook = hook?;
    let settings = &state.orchestrator.settings;
    let envelope: Envelope = match serde_json::from_slice(&body) {
        Ok(envelope) => envelope,
        Err(e) => {
            return Ok(json_error(
                StatusCode::BAD_REQUEST,
                format!(r#"expected a registry notification envelope {{"events": [...]}}: {e}"#),
            ));
        }
    };
    let pushes = pushes_to(&envelope, &settings.image);
    let checking = pushes > 0 && settings.watch.is_some();
    let shared = &state.orchestrator.shared;
    if checking {
        // Several notifications before the watch looks are one look.
        shared.check_now.notify_one();
    }
    // Companion containers follow their own repositories (`selfup.watch`):
    // the container watch looks at the ones that run an image of these.
    let repositories = match state.companion.is_some() {
        true => pushed_repositories(&envelope),
        false => Default::default(),
    };
    let checking_containers = !repositories.is_empty();
    if checking_containers {
        shared
            .pushed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(repositories.iter().cloned());
        shared.check_containers.notify_one();
    }
    tracing::info!(
        events = envelope.events.len(),
        pushes,
        checking,
        ?repositories,
        "registry notification"
    );
    Ok(HttpResponse::Accepted().json(json!({
        "events": envelope.events.len(),
        "pushes": pushes,
        "checking": checking,
        "checking_containers": checking_containers,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tag_pushes_to_this_repository_count() {
        let envelope: Envelope = serde_json::from_value(json!({"events": [
            {"action": "push", "target": {"repository": "selfup", "tag": "1.5.0", "mediaType": "application/vnd.docker.distribution.manifest.v2+json"}},
            {"action": "push", "target": {"repository": "selfup", "mediaType": "application/octet-stream"}},
            {"action": "pull", "target": {"repository": "selfup", "tag": "1.5.0"}},
            {"action": "push", "target": {"repository": "other", "tag": "1.5.0"}},
            {"action": "push"},
            {"id": "no action at all"},
        ]}))
        .unwrap();
        assert_eq!(pushes_to(&envelope, "selfup"), 1);
        assert_eq!(pushes_to(&envelope, "other"), 1);
        assert_eq!(pushes_to(&envelope, "absent"), 0);
        let mut pushed: Vec<String> = pushed_repositories(&envelope).into_iter().collect();
        pushed.sort();
        assert_eq!(pushed, vec!["other".to_string(), "selfup".to_string()]);
        assert!(serde_json::from_value::<Envelope>(json!({"event": []})).is_err());
    }
}
