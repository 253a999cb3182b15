//! The models a node serves, as agents and operators see them:
//! `list_models` over NATS request/reply on `orfeas.models.list` (every node
//! answers in the queue group `orfeas-nodes`, so one node answers each
//! request), and the reload that refreshes them.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
};

use futures::StreamExt;
use orfeas_wire::{subjects, v1::ModelList};
use tokio::task::JoinHandle;

use crate::{
    bus::BusError,
    model::{self, Manifest},
};

/// The node's current manifests (replaced after a successful reload).
#[derive(Clone, Debug)]
pub struct Catalog {
    node_id: String,
    models_dir: PathBuf,
    manifests: Arc<RwLock<Vec<Manifest>>>,
}

/// Why a reload could not even start.
#[derive(Debug, thiserror::Error)]
pub enum ReloadRefused {
    /// A manifest is missing or invalid now.
    #[error(transparent)]
    Manifest(#[from] model::ModelError),
    /// The set of models or a model's parameters changed: admission checks
    /// jobs against them, so that needs a restart.
    #[error("{0}; restart the node to change it")]
    NeedsRestart(String),
}

impl Catalog {
    /// The catalogue of `manifests`, read from `models_dir`.
    pub fn new(node_id: &str, models_dir: PathBuf, manifests: Vec<Manifest>) -> Self {
        Self {
            node_id: node_id.to_string(),
            models_dir,
            manifests: Arc::new(RwLock::new(manifests)),
        }
    }

    /// The manifests now, sorted by name.
    pub fn manifests(&self) -> Vec<Manifest> {
        self.manifests
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The manifests now with their TorchScript files (what a restarted
    /// worker loads).
    pub fn models(&self) -> Vec<(Manifest, PathBuf)> {
        self.manifests()
            .into_iter()
            .map(|m| {
                let path = self.models_dir.join(&m.name).join("model.pt");
                (m, path)
            })
            .collect()
    }

    /// The `list_models` answer.
    pub fn list(&self) -> ModelList {
        ModelList {
            node: self.node_id.clone(),
            models: self.manifests().iter().map(Manifest::info).collect(),
        }
    }

    /// Read the served models' manifests from disk again, refusing changes
    /// that need a restart (another set of models, other parameter names).
    pub fn reread(&self) -> Result<Vec<(Manifest, PathBuf)>, ReloadRefused> {
        let current = self.manifests();
        let names: Vec<String> = current.iter().map(|m| m.name.clone()).collect();
        let fresh = model::read_manifests(&self.models_dir, &names)?;
        for (new, _) in &fresh {
            let Some(old) = current.iter().find(|m| m.name == new.name) else {
                return Err(ReloadRefused::NeedsRestart(format!(
                    "model {} is new",
                    new.name
                )));
            };
            let keys = |m: &Manifest| m.params.keys().cloned().collect::<Vec<_>>();
            if keys(old) != keys(new) {
                return Err(ReloadRefused::NeedsRestart(format!(
                    "the parameters of model {} changed",
                    new.name
                )));
            }
        }
        Ok(fresh)
    }

    /// Make `manifests` the served ones.
    pub fn replace(&self, manifests: Vec<Manifest>) {
        *self.manifests.write().unwrap_or_else(|e| e.into_inner()) = manifests;
    }
}

/// Answer `list_models` requests until the task is aborted.
pub async fn serve_list_models(
    client: async_nats::Client,
    catalog: Catalog,
) -> Result<JoinHandle<()>, BusError> {
    let mut requests = client
        .queue_subscribe(
            subjects::MODELS_LIST,
            subjects::NODES_QUEUE_GROUP.to_string(),
        )
        .await
        .map_err(|e| BusError::Setup {
            what: subjects::MODELS_LIST.to_string(),
            detail: e.to_string(),
        })?;
    Ok(tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let Some(reply) = request.reply else { continue };
            let answer = orfeas_wire::to_cbor(&catalog.list());
            if let Err(e) = client.publish(reply, answer.into()).await {
                tracing::warn!(error = %e, "list_models answer not sent");
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_model(to: &std::path::Path, name: &str) {
        let src = crate::model::tests::models_dir().join(name);
        std::fs::create_dir_all(to.join(name)).unwrap();
        for f in ["model.pt", "manifest.toml"] {
            std::fs::copy(src.join(f), to.join(name).join(f)).unwrap();
        }
    }

    #[test]
    fn reread_picks_up_new_manifests_and_refuses_what_needs_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        copy_model(dir.path(), "relief");
        let start: Vec<Manifest> = model::read_manifests(dir.path(), &[])
            .unwrap()
            .into_iter()
            .map(|(m, _)| m)
            .collect();
        let catalog = Catalog::new("n1", dir.path().to_path_buf(), start);
        assert_eq!(catalog.list().models[0].version, "1.0.0");
        let manifest = dir.path().join("relief/manifest.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        std::fs::write(
            &manifest,
            text.replace("version = \"1.0.0\"", "version = \"1.1.0\"")
                .replace("max_batch = 16", "max_batch = 4"),
        )
        .unwrap();
        let fresh = catalog.reread().unwrap();
        assert_eq!(
            (fresh[0].0.version.as_str(), fresh[0].0.max_batch),
            ("1.1.0", 4)
        );
        assert_eq!(
            catalog.list().models[0].version,
            "1.0.0",
            "not served before the devices swapped"
        );
        catalog.replace(fresh.into_iter().map(|(m, _)| m).collect());
        assert_eq!(catalog.list().models[0].version, "1.1.0");
        // Renaming a parameter changes what admission accepts: refused.
        let text = std::fs::read_to_string(&manifest).unwrap();
        std::fs::write(
            &manifest,
            text.replace("invert = false", "negative = false"),
        )
        .unwrap();
        assert!(matches!(
            catalog.reread(),
            Err(ReloadRefused::NeedsRestart(_))
        ));
        std::fs::remove_dir_all(dir.path().join("relief")).unwrap();
        assert!(matches!(catalog.reread(), Err(ReloadRefused::Manifest(_))));
    }
}
