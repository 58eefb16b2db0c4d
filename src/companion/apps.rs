//! The sockets of the blue-green apps: bound for every running app before
//! this instance takes the traffic, and kept joined to each app's address
//! as the Engine starts app containers.

use std::sync::Arc;
use std::time::Duration;

use bollard::models::ContainerInspectResponse;
use tokio::time::sleep;

use super::Companion;
use super::blue_green::{self, AppFront, AppSpec};
use super::container::{ENABLE_LABEL, name_of};
use super::outcome::UpdateError;

impl Companion {
    /// Binds a socket for every running blue-green app (labelled
    /// `selfup.enable=true` and `selfup.port`), joined to its address now:
    /// before this instance takes the traffic, so that the apps' sockets
    /// move with it.
    pub async fn front_apps(&self) {
        if self.fronts.is_none() {
            return;
        }
        let wanted = [(ENABLE_LABEL.to_string(), "true".to_string())];
        let listed = match self.engine.list_by_labels(&wanted).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for blue-green apps");
                return;
            }
        };
        for summary in listed {
            let labels = summary.labels.unwrap_or_default();
            if !labels.contains_key(blue_green::PORT_LABEL)
                || summary.state != Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
            {
                continue;
            }
            let Some(id) = summary.id else { continue };
            let Ok(app) = self.engine.inspect_container(&id).await else {
                continue;
            };
            let name = name_of(&app);
            if name.contains("-selfup-old-") {
                continue;
            }
            match self.front_of(&app) {
                Ok(_) => {}
                Err(e) => tracing::warn!(app = %name, error = %e, "not fronting a blue-green app"),
            }
        }
    }

    /// Follows the Engine's container starts, until this instance is asked
    /// to stop: an app labelled for blue-green that starts after this
    /// instance gets its socket at once, and one recreated outside selfup
    /// (`docker compose up` after a change) has its socket joined to its
    /// new address. A lost stream is opened again, and the apps that started
    /// meanwhile are fronted then.
    pub async fn follow_apps(&self) {
        if self.fronts.is_none() {
            return;
        }
        let mut shutdown = self.shared.shutdown.subscribe();
        let labels = vec![format!("{}=true", ENABLE_LABEL), blue_green::PORT_LABEL.to_string()];
        loop {
            if *shutdown.borrow_and_update() {
                return;
            }
            match self.engine.container_starts(labels.clone()).await {
                Ok(starts) => {
                    // Apps that started while no stream was open.
                    self.front_apps().await;
                    tokio::pin!(starts);
                    loop {
                        tokio::select! {
                            _ = shutdown.changed() => return,
                            next = futures_util::StreamExt::next(&mut starts) => match next {
                                Some(Ok(id)) => self.front_started(&id).await,
                                Some(Err(e)) => {
                                    tracing::warn!(error = %e, "the Engine's events stopped; following them again");
                                    break;
                                }
                                None => break,
                            },
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow the Engine's events; apps started later get their socket at their first update")
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Fronts an app container that just started, unless it is one of an
    /// update's (the update switches the socket itself).
    async fn front_started(&self, id: &str) {
        if self.self_id.as_deref() == Some(id) {
            return;
        }
        let Ok(app) = self.engine.inspect_container(id).await else {
            return;
        };
        let name = name_of(&app);
        if name.contains("-selfup-old-") || self.not_busy(&name).is_err() {
            return;
        }
        match self.front_of(&app) {
            Ok((front, spec)) => {
                let Some(addr) = blue_green::address(&app, spec.port) else {
                    return;
                };
                if front.addr() != addr {
                    tracing::info!(app = %name, from = %front.addr(), to = %addr, "the app was started anew: its socket follows it");
                    front.switch(addr, None);
                }
            }
            Err(e) => tracing::warn!(app = %name, error = %e, "not fronting a blue-green app"),
        }
    }

    /// The app's front, bound now if need be, and what its labels say.
    fn front_of(&self, app: &ContainerInspectResponse) -> Result<(Arc<AppFront>, AppSpec), UpdateError> {
        let bad = |reason: String| UpdateError::BadAppLabels {
            container: name_of(app),
            reason,
        };
        let spec = blue_green::spec(app)
            .map_err(&bad)?
            .ok_or_else(|| bad("no port label".into()))?;
        Ok((self.front(app, &spec)?, spec))
    }

    /// The front of app container `app`, whose labels say `spec`: bound
    /// now, joined to its address, if need be.
    pub(super) fn front(&self, app: &ContainerInspectResponse, spec: &AppSpec) -> Result<Arc<AppFront>, UpdateError> {
        let name = name_of(app);
        let bad = |reason: String| UpdateError::BadAppLabels {
            container: name.clone(),
            reason,
        };
        let fronts = self
            .fronts
            .as_ref()
            .ok_or_else(|| bad("app_socket_dir is empty".into()))?;
        let addr = blue_green::address(app, spec.port)
            .ok_or_else(|| bad("it has no address of its own on a network (host or no networking)".into()))?;
        fronts.ensure(&name, addr).map_err(|e| {
            bad(format!(
                "binding its socket in {}: {e}",
                self.settings.app_socket_dir.display()
            ))
        })
    }
}
