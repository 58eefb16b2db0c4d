//! `GET /status`: what runs, what ran before, and how the last upgrades went.

use actix_web::{HttpResponse, web};
use serde_json::{Value, json};

use crate::handover::{Orchestrator, PREVIOUS_IMAGE_LABEL, PREVIOUS_VERSION_LABEL};
use crate::routes::AppState;
use crate::routes::guard::Control;

/// `GET /status`, for the operator.
pub async fn status(_: Control, state: web::Data<AppState>) -> HttpResponse {
    let o = state.orchestrator.clone();
    let image = state
        .spawn(async move { image_details(&o).await })
        .await
        .unwrap_or_else(|e| json!({ "error": e }));
    let o = &state.orchestrator;
    let (upgrade, takeover, bake, last_bake) = {
        let status = o.shared.status();
        let upgrade = status.upgrade.as_ref().map(|u| {
            json!({ "requirement": u.requirement, "step": u.step, "running_for_ms": u.started.elapsed().as_millis() })
        });
        let now = std::time::Instant::now();
        let bake = status.bake.as_ref().map(|b| {
            json!({
                "to": b.to,
                "successor": b.successor.chars().take(12).collect::<String>(),
                "successor_port": b.successor_port,
                "elapsed_ms": now.duration_since(b.started).as_millis(),
                "left_ms": b.ends.saturating_duration_since(now).as_millis(),
                "answers": b.answers.0,
                "server_errors": b.answers.1,
            })
        });
        (upgrade, status.takeover.clone(), bake, status.last_bake.clone())
    };
    let o2 = state.orchestrator.clone();
    let backend = state
        .spawn(async move { o2.backend().await.status(&o2).await })
        .await
        .unwrap_or_default();
    let history = o.shared.history();
    let mut document = json!({
        "version": o.version.to_string(),
        "port": o.settings.port,
        "uptime_secs": o.shared.metrics.uptime_secs(),
        "container": o.self_id,
        "image": image["image"],
        "previous": image["previous"],
        "docker": image["error"],
        "upgrade_in_progress": upgrade,
        "takeover": takeover,
        "bake": bake,
        "last_bake": last_bake,
        "rolled_back_version": o.shared.rejected(),
        "paused": o.shared.pause.current().map(|p| json!({ "since_ms": p.since_ms, "ends_ms": p.ends_ms, "held": o.shared.pause.held() })),
        "history": history,
    });
    // Companion mode: the blue-green apps whose old container is being
    // stopped after their update's answer.
    if let (Some(document), Some(companion)) = (document.as_object_mut(), &state.companion) {
        document.insert("retiring".into(), json!(companion.retiring()));
        let paused: serde_json::Map<String, Value> = companion
            .paused_apps()
            .into_iter()
            .map(|(name, p, held)| {
                (
                    name,
                    json!({ "since_ms": p.since_ms, "ends_ms": p.ends_ms, "held": held }),
                )
            })
            .collect();
        document.insert("paused_apps".into(), Value::Object(paused));
    }
    // The backend's own part (`swarm`), the same keys on every backend.
    if let (Some(document), Ok(Value::Object(part))) = (document.as_object_mut(), serde_json::to_value(backend)) {
        document.extend(part);
    }
    HttpResponse::Ok().json(document)
}

/// This container's image (id, tag, digest) and the previous version, from the Engine.
async fn image_details(o: &Orchestrator) -> Value {
    let Some(me) = &o.self_id else {
        return json!({ "image": null, "previous": null, "error": "not running in a container" });
    };
    let container = match o.engine.inspect_container(me).await {
        Ok(c) => c,
        Err(e) => return json!({ "image": null, "previous": null, "error": e.to_string() }),
    };
    let config = container.config.unwrap_or_default();
    let labels = config.labels.unwrap_or_default();
    let id = container.image.unwrap_or_default();
    let digests = o
        .engine
        .inspect_image(&id)
        .await
        .ok()
        .and_then(|i| i.repo_digests)
        .unwrap_or_default();
    let previous = match (labels.get(PREVIOUS_VERSION_LABEL), labels.get(PREVIOUS_IMAGE_LABEL)) {
        (Some(version), Some(image)) => json!({ "version": version, "image": image }),
        _ => Value::Null,
    };
    json!({
        "image": { "ref": config.image, "id": id, "digest": digests.first() },
        "previous": previous,
        "error": null,
    })
}
