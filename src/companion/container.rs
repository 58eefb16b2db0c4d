//! What the companion reads off a container it is asked to update: its
//! name, its labels, and whether it opted in. Every step below reads the
//! one inspect through these.

use std::collections::HashMap;

use bollard::models::ContainerInspectResponse;

/// Only containers with this label set to `true` may be updated.
pub const ENABLE_LABEL: &str = "selfup.enable";

/// The repositories, beside its own, that a container may be moved to by
/// an update: `registry/repository` names, comma-separated.
pub const REPOSITORIES_LABEL: &str = "selfup.repositories";

/// The key (a name in `verify_keys_dir`) the container's images must be
/// signed with, instead of the operator's `verify_key`.
pub const SIGNING_KEY_LABEL: &str = "selfup.signing-key";

/// The container's name without Docker's leading slash.
pub fn name_of(container: &ContainerInspectResponse) -> String {
    container
        .name
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string()
}

/// A container's labels, none when it has no config.
pub fn labels(container: &ContainerInspectResponse) -> HashMap<String, String> {
    container
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default()
}

/// Whether the container opted in with `selfup.enable=true`.
pub fn is_enabled(container: &ContainerInspectResponse) -> bool {
    container
        .config
        .as_ref()
        .and_then(|c| c.labels.as_ref())
        .and_then(|l| l.get(ENABLE_LABEL))
        .is_some_and(|v| v.trim() == "true")
}

#[cfg(test)]
mod tests {
    use super::*;

    use bollard::models::ContainerConfig;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    fn container() -> ContainerInspectResponse {
        ContainerInspectResponse {
            id: Some(ID.into()),
            config: Some(ContainerConfig {
                labels: Some(HashMap::from([(ENABLE_LABEL.into(), "true".into())])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_the_true_label_enables_an_update() {
        assert!(is_enabled(&container()));
        for value in ["false", "yes", "1", ""] {
            let mut c = container();
            c.config.as_mut().unwrap().labels = Some(HashMap::from([(ENABLE_LABEL.into(), value.into())]));
            assert!(!is_enabled(&c), "{value:?}");
        }
        let mut c = container();
        c.config.as_mut().unwrap().labels = None;
        assert!(!is_enabled(&c));
    }
}
