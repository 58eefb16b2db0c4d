//! One path from a request to an image, for both roles: pick the tag a
//! requirement names, pull it, inspect it, read its version, decide.
//!
//! Each step is a function of its own, because the roles take them in a
//! different order: the self-upgrade checks the pulled image's label, companion
//! mode decides on the tag before it pulls. The errors are one enum, so the same
//! failure reads the same whichever role met it.

use bollard::auth::DockerCredentials;
use bollard::models::ImageInspect;
use semver::Version;

use crate::docker::{DockerError, Engine};
use crate::image_ref::ImageRef;
use crate::registry::credentials::RegistryAuth;
use crate::registry::signature::{Policy, SignatureError, TrustedKey};
use crate::registry::{Registry, RegistryError};
use crate::version::{self, Decision, Requirement};

/// Why no image to go to was found, or why it may not be gone to.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("listing the tags of {repository} for {requirement}: {source}")]
    Registry {
        requirement: String,
        repository: String,
        source: RegistryError,
    },
    #[error("no version in {repository} matches {requirement}")]
    NoMatch {
        requirement: String,
        repository: String,
        /// The semver tags there are, highest first.
        available: Vec<String>,
    },
    #[error("pulling {image}: {source}")]
    Pull { image: String, source: DockerError },
    #[error("inspecting the image {image}: {source}")]
    Inspect { image: String, source: DockerError },
    #[error("image {image} has no semver label {} (found {found:?})", version::VERSION_LABEL)]
    NoVersion { image: String, found: Option<String> },
    #[error("image {image} is labelled version {label}, which does not satisfy {requirement}: refused")]
    LabelMismatch {
        image: String,
        label: Version,
        requirement: String,
    },
    #[error("{target} is lower than the running {running}; name it exactly (={target}) to roll back")]
    Lower { running: Version, target: Version },
    /// The image is not signed with the operator's key (`verify`).
    #[error("{image}: {source}")]
    Signature { image: String, source: SignatureError },
}

impl ResolveError {
    /// Whether the Docker daemon itself did not answer.
    pub fn docker_unreachable(&self) -> bool {
        match self {
            ResolveError::Pull { source, .. } | ResolveError::Inspect { source, .. } => source.is_unreachable(),
            _ => false,
        }
    }

    /// Whether the registry does not know the repository.
    pub fn unknown_repository(&self) -> bool {
        matches!(
            self,
            ResolveError::Registry {
                source: RegistryError::UnknownRepository { .. },
                ..
            }
        )
    }
}

/// The digest a pulled image has in `repository` (`registry/path`), from
/// the digests the Engine recorded as it pulled: what a signature names.
pub fn digest_in(repository: &str, image: &ImageInspect) -> Option<String> {
    let prefix = format!("{repository}@");
    image
        .repo_digests
        .as_ref()?
        .iter()
        .find_map(|d| d.strip_prefix(&prefix))
        .map(str::to_string)
}

/// Passes an image about to run under `policy`: with `Policy::Signed`, one
/// of its signatures in its repository (cosign's layout) must verify with
/// the key and name exactly `digest`, the registry digest of what was
/// pulled. `key` is another key file than the policy's (a companion
/// container may name its own).
pub async fn check_signed(
    registry: &Registry,
    policy: &Policy,
    key: Option<&std::path::Path>,
    image: &ImageRef,
    digest: Option<&str>,
    auth: Option<&RegistryAuth>,
) -> Result<(), ResolveError> {
    let Policy::Signed(default) = policy else {
        return Ok(());
    };
    let refused = |source| ResolveError::Signature {
        image: image.to_string(),
        source,
    };
    let started = std::time::Instant::now();
    let key = TrustedKey::load(key.unwrap_or(default)).map_err(refused)?;
    let digest = digest.ok_or_else(|| refused(SignatureError::NoDigest("the Engine recorded none for it".into())))?;
    let signatures = registry
        .signatures(image.registry_host(), &image.path, digest, auth)
        .await
        .map_err(refused)?;
    key.check(digest, &signatures).map_err(refused)?;
    tracing::info!(image = %image, digest, ms = started.elapsed().as_millis() as u64, "signature verified");
    Ok(())
}

/// [`pick`], then what the registry says of the picked tag's image (digest,
/// creation time, version label): what a dry run or an offer reports
/// without pulling. A tag that has gone meanwhile is a 404 from the registry.
pub async fn pick_remote(
    registry: &Registry,
    repository: &ImageRef,
    requirement: &Requirement,
    auth: Option<&RegistryAuth>,
) -> Result<(ImageRef, Option<Version>, crate::registry::image::RemoteImage), ResolveError> {
    let (image, tag_version) = pick(registry, repository, requirement, auth).await?;
    let registry_error = |source| ResolveError::Registry {
        requirement: requirement.to_string(),
        repository: repository.repository(),
        source,
    };
    let remote = registry
        .remote_image(image.registry_host(), &image.path, &image.tag, auth)
        .await
        .map_err(registry_error)?
        .ok_or_else(|| {
            registry_error(RegistryError::Status {
                url: image.to_string(),
                status: 404,
            })
        })?;
    Ok((image, tag_version, remote))
}

/// The image `requirement` names in `repository` (whose tag is ignored),
/// and the version its tag says: `:latest` as it is, without asking the
/// registry; else the highest matching tag of the registry's list.
pub async fn pick(
    registry: &Registry,
    repository: &ImageRef,
    requirement: &Requirement,
    auth: Option<&RegistryAuth>,
) -> Result<(ImageRef, Option<Version>), ResolveError> {
    if *requirement == Requirement::Latest {
        return Ok((repository.with_tag("latest"), None));
    }
    let tags = registry
        .tags(repository.registry_host(), &repository.path, auth)
        .await
        .map_err(|source| ResolveError::Registry {
            requirement: requirement.to_string(),
            repository: repository.repository(),
            source,
        })?;
    match version::select(requirement, &tags) {
        Some((tag, version)) => Ok((repository.with_tag(tag), Some(version))),
        None => Err(ResolveError::NoMatch {
            requirement: requirement.to_string(),
            repository: repository.repository(),
            available: version::available(&tags),
        }),
    }
}

/// Pulls `image` and inspects what was pulled.
pub async fn pull(
    engine: &Engine,
    image: &ImageRef,
    credentials: Option<DockerCredentials>,
) -> Result<ImageInspect, ResolveError> {
    pull_observed(engine, image, credentials, |_| {}).await
}

/// [`pull`], showing `observe` each message of the Engine's progress stream.
async fn pull_observed(
    engine: &Engine,
    image: &ImageRef,
    credentials: Option<DockerCredentials>,
    observe: impl FnMut(&bollard::models::CreateImageInfo),
) -> Result<ImageInspect, ResolveError> {
    engine
        .pull_observed(image, credentials, observe)
        .await
        .map_err(|source| ResolveError::Pull {
            image: image.to_string(),
            source,
        })?;
    inspect(engine, &image.to_string()).await
}

/// [`pull`], reporting the bytes downloaded to `events` as they grow; for
/// a companion update, under its `container`.
pub async fn pull_reporting(
    engine: &Engine,
    image: &ImageRef,
    credentials: Option<DockerCredentials>,
    events: &crate::events::EventLog,
    container: Option<&str>,
) -> Result<ImageInspect, ResolveError> {
    let name = image.to_string();
    let mut progress = crate::events::PullProgress::new(crate::events::PROGRESS_EVERY);
    let observe = |info: &bollard::models::CreateImageInfo| {
        let detail = info.progress_detail.as_ref();
        let reported = progress.update(
            info.id.as_deref(),
            info.status.as_deref(),
            detail.and_then(|d| d.current),
            detail.and_then(|d| d.total),
        );
        if let Some((done, total, layers)) = reported {
            events.emit(crate::events::Event::PullProgress {
                image: name.clone(),
                done,
                total,
                layers,
                container: container.map(str::to_string),
            });
        }
    };
    pull_observed(engine, image, credentials, observe).await
}

/// Inspects a local image, by reference or id.
pub async fn inspect(engine: &Engine, image: &str) -> Result<ImageInspect, ResolveError> {
    engine
        .inspect_image(image)
        .await
        .map_err(|source| ResolveError::Inspect {
            image: image.to_string(),
            source,
        })
}

/// The version `image`'s label says, which must be what `requirement` asks
/// for: `2` is never answered by a 3.x image, whatever its tag says.
pub fn labelled_version(
    image: &str,
    inspect: &ImageInspect,
    requirement: &Requirement,
) -> Result<Version, ResolveError> {
    let label = version::version_label(inspect);
    let version = label
        .and_then(|l| Version::parse(l).ok())
        .ok_or_else(|| ResolveError::NoVersion {
            image: image.to_string(),
            found: label.map(str::to_string),
        })?;
    if !requirement.admits(&version) {
        return Err(ResolveError::LabelMismatch {
            image: image.to_string(),
            label: version,
            requirement: requirement.to_string(),
        });
    }
    Ok(version)
}

/// Where a recreate goes, once a refusal is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Go {
    /// The target is what runs: nothing happens.
    AlreadyThere,
    /// To a higher version.
    Upgrade,
    /// To a lower version, named exactly.
    Rollback,
}

/// Whether to go from `running` to `target`, as [`version::decide`] rules;
/// a lower version not named exactly is refused.
pub fn decide(running: &Version, target: &Version, requirement: &Requirement) -> Result<Go, ResolveError> {
    match version::decide(running, target, requirement) {
        Decision::AlreadyThere => Ok(Go::AlreadyThere),
        Decision::Upgrade => Ok(Go::Upgrade),
        Decision::Rollback => Ok(Go::Rollback),
        Decision::RefuseLower => Err(ResolveError::Lower {
            running: running.clone(),
            target: target.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::ImageConfig;
    use std::collections::HashMap;

    fn image(label: Option<&str>) -> ImageInspect {
        ImageInspect {
            config: Some(ImageConfig {
                labels: label.map(|l| HashMap::from([(version::VERSION_LABEL.to_string(), l.to_string())])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn the_label_must_be_semver_and_satisfy_the_requirement() {
        let two = Requirement::parse("2").unwrap();
        assert_eq!(
            labelled_version("r/a:2", &image(Some("2.1.0")), &two).unwrap(),
            v("2.1.0")
        );
        let err = labelled_version("r/a:2", &image(Some("3.0.0")), &two).unwrap_err();
        assert!(matches!(err, ResolveError::LabelMismatch { .. }), "{err}");
        let err = labelled_version("r/a:2", &image(Some("two")), &two).unwrap_err();
        assert!(
            matches!(&err, ResolveError::NoVersion { found: Some(f), .. } if f == "two"),
            "{err}"
        );
        let err = labelled_version("r/a:2", &image(None), &Requirement::Latest).unwrap_err();
        assert!(
            err.to_string()
                .contains("no semver label org.opencontainers.image.version")
        );
    }

    #[test]
    fn a_lower_version_is_refused_unless_named_exactly() {
        let latest = Requirement::Latest;
        let err = decide(&v("1.1.0"), &v("1.0.0"), &latest).unwrap_err();
        assert_eq!(
            err.to_string(),
            "1.0.0 is lower than the running 1.1.0; name it exactly (=1.0.0) to roll back"
        );
        let exact = Requirement::parse("=1.0.0").unwrap();
        assert_eq!(decide(&v("1.1.0"), &v("1.0.0"), &exact).unwrap(), Go::Rollback);
        assert_eq!(decide(&v("1.1.0"), &v("1.1.0"), &latest).unwrap(), Go::AlreadyThere);
        assert_eq!(decide(&v("1.1.0"), &v("1.2.0"), &latest).unwrap(), Go::Upgrade);
    }
}
