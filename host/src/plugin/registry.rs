//! Uploaded plugins and the binding of channels to compiled code.
//!
//! A plugin is a named series of versions in the store: the document (collection `plugins`, id = the
//! name) lists each version's SHA-256, size and uploader, and which version is current; the `.wasm`
//! itself is a blob keyed by its SHA-256, so identical uploads are stored once. Compiled code is
//! shared by digest and cached on disk by the engine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::bindings::{router, transformer};
use super::call::{BoundPlugin, Code};
use super::engine::{LoadError, PluginEngine, describe};
use super::guest::Language;
use super::imports::Grants;
use super::spec::{PluginSource, PluginSpec};
use crate::channel::Channel;
use crate::store::{Collection, Store, StoreError};
use crate::transaction::{PluginRun, Timestamp};

/// The names the plugin world's exports have in a component.
const ROUTER_EXPORT: &str = "mediary:plugin/router@0.1.0";
const TRANSFORMER_EXPORT: &str = "mediary:plugin/transformer@0.1.0";

/// A plugin's stored document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginDocument {
    pub name: String,
    /// The version channels get when they name no version.
    pub current: u32,
    /// Every version, oldest first.
    pub versions: Vec<PluginVersion>,
}

/// One uploaded version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginVersion {
    pub version: u32,
    /// SHA-256 of the `.wasm`, lower-case hex.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    pub uploaded_at: Timestamp,
    /// Email of the API user who uploaded it.
    pub uploaded_by: String,
    /// Whether it transforms responses (exports `transformer`) besides routing.
    pub transforms: bool,
    /// The language it was written in, from the marks its toolchain left (`javascript`, `python`, `rust`,
    /// `c`, `other`); absent in documents stored before Mediary recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

impl PluginDocument {
    pub fn version(&self, version: u32) -> Option<&PluginVersion> {
        self.versions.iter().find(|v| v.version == version)
    }

    pub fn from_value(value: serde_json::Value) -> Result<PluginDocument, StoreError> {
        serde_json::from_value(value)
            .map_err(|e| StoreError::Corrupt(format!("a plugin document: {e}")))
    }
}

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// Not a usable plugin (the reason is for the uploader).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Host(String),
}

impl From<LoadError> for UploadError {
    fn from(error: LoadError) -> Self {
        match error {
            LoadError::Host(reason) => UploadError::Host(reason),
            other => UploadError::Invalid(other.to_string()),
        }
    }
}

/// What an upload did.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub version: PluginVersion,
    /// False when the same bytes were already a version (which became current again).
    pub created: bool,
}

/// The process's plugins: the engine, compiled code by digest, and each channel's bound plugin.
pub struct Plugins {
    engine: Arc<PluginEngine>,
    store: Arc<dyn Store>,
    /// Relative `file` plugins are found from here (the config file's folder).
    base_dir: PathBuf,
    workers: usize,
    code: Mutex<HashMap<String, Weak<Code>>>,
    /// The plugin each channel (by id) has now, reused by the next table if nothing changed, so
    /// warm instances survive edits to other channels.
    bound: Mutex<HashMap<String, Arc<BoundPlugin>>>,
    /// Files of `file` plugins and how they looked when loaded.
    files: Mutex<HashMap<PathBuf, FileStamp>>,
}

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugins").finish_non_exhaustive()
    }
}

/// A file's modification time and length: a change to either means it must be read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Plugins {
    pub fn new(
        engine: Arc<PluginEngine>,
        store: Arc<dyn Store>,
        base_dir: PathBuf,
        workers: usize,
    ) -> Plugins {
        Plugins {
            engine,
            store,
            base_dir,
            workers,
            code: Mutex::default(),
            bound: Mutex::default(),
            files: Mutex::default(),
        }
    }

    pub fn engine(&self) -> &Arc<PluginEngine> {
        &self.engine
    }

    /// Compiles (or finds) the code for `wasm`, checking that it is a plugin.
    pub async fn code(&self, wasm: Bytes, sha256: &str) -> Result<Arc<Code>, LoadError> {
        if let Some(code) = self.cached_code(sha256) {
            return Ok(code);
        }
        let size = wasm.len() as u64;
        let language = Language::of(&wasm);
        let component = self.engine.compile(wasm, sha256).await?;
        let pre = self
            .engine
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Invalid(format!("it cannot be linked: {}", describe(&e))))?;
        if component.get_export_index(None, ROUTER_EXPORT).is_none() {
            return Err(LoadError::Invalid(format!(
                "it does not export `{ROUTER_EXPORT}`: build it for the `router-plugin` or `channel-plugin` world of wit/plugin.wit"
            )));
        }
        let router = router::GuestIndices::new(&pre).map_err(|e| {
            LoadError::Invalid(format!(
                "its `{ROUTER_EXPORT}` export does not match: {}",
                describe(&e)
            ))
        })?;
        let transformer = match component.get_export_index(None, TRANSFORMER_EXPORT) {
            None => None,
            Some(_) => Some(transformer::GuestIndices::new(&pre).map_err(|e| {
                LoadError::Invalid(format!(
                    "its `{TRANSFORMER_EXPORT}` export does not match: {}",
                    describe(&e)
                ))
            })?),
        };
        let code = Arc::new(Code {
            sha256: sha256.to_owned(),
            size,
            language,
            pre,
            router,
            transformer,
        });
        if let Ok(mut map) = self.code.lock() {
            map.retain(|_, weak| weak.strong_count() > 0);
            map.insert(sha256.to_owned(), Arc::downgrade(&code));
        }
        Ok(code)
    }

    fn cached_code(&self, sha256: &str) -> Option<Arc<Code>> {
        self.code.lock().ok()?.get(sha256)?.upgrade()
    }

    /// Validates and stores a new version of plugin `name` and makes it current.
    pub async fn upload(&self, name: &str, wasm: Bytes, by: &str) -> Result<Uploaded, UploadError> {
        let sha256 = sha256_hex(&wasm);
        let size = wasm.len() as u64;
        let code = self.code(wasm.clone(), &sha256).await?;
        let transforms = code.transformer.is_some();
        self.store.put_blob(&sha256, wasm).await?;
        let mut document = match self.store.get(Collection::Plugins, name).await? {
            Some(value) => PluginDocument::from_value(value)?,
            None => PluginDocument {
                name: name.to_owned(),
                current: 0,
                versions: Vec::new(),
            },
        };
        let uploaded = match document.versions.iter().find(|v| v.sha256 == sha256) {
            Some(existing) => Uploaded {
                version: existing.clone(),
                created: false,
            },
            None => {
                let number = document
                    .versions
                    .iter()
                    .map(|v| v.version)
                    .max()
                    .unwrap_or(0)
                    + 1;
                let version = PluginVersion {
                    version: number,
                    sha256,
                    size,
                    uploaded_at: Timestamp::now(),
                    uploaded_by: by.to_owned(),
                    transforms,
                    language: Some(code.language.as_str().to_owned()),
                };
                document.versions.push(version.clone());
                Uploaded {
                    version,
                    created: true,
                }
            }
        };
        document.current = uploaded.version.version;
        self.save(&document).await?;
        Ok(uploaded)
    }

    /// Makes the version before the current one current again.
    pub async fn rollback(&self, name: &str) -> Result<Option<PluginDocument>, RollbackError> {
        let Some(value) = self.store.get(Collection::Plugins, name).await? else {
            return Ok(None);
        };
        let mut document = PluginDocument::from_value(value)?;
        let previous = document
            .versions
            .iter()
            .map(|v| v.version)
            .filter(|v| *v < document.current)
            .max()
            .ok_or(RollbackError::NoEarlierVersion(document.current))?;
        document.current = previous;
        self.save(&document).await?;
        Ok(Some(document))
    }

    async fn save(&self, document: &PluginDocument) -> Result<(), StoreError> {
        let value = serde_json::to_value(document)
            .map_err(|e| StoreError::Backend(format!("encoding a plugin document: {e}")))?;
        self.store
            .put(Collection::Plugins, &document.name, value)
            .await
    }

    /// Binds a channel's plugin: finds the version, compiles or reuses its code, and sets its limits
    /// and grants. The previous binding of the channel is reused when nothing about it changed.
    pub async fn bind(
        &self,
        channel: &Channel,
        spec: &PluginSpec,
    ) -> Result<Arc<BoundPlugin>, String> {
        let settings = self.engine.settings();
        let memory_limit = spec.memory_limit.unwrap_or(settings.memory_limit);
        if memory_limit > settings.max_memory {
            return Err(format!(
                "its memoryLimit of {memory_limit} bytes is over plugins.max_memory ({} bytes)",
                settings.max_memory
            ));
        }
        let (name, version, sha256, wasm) = match &spec.source {
            PluginSource::Stored { name, version } => {
                let document = match self.store.get(Collection::Plugins, name).await {
                    Ok(Some(value)) => {
                        PluginDocument::from_value(value).map_err(|e| e.to_string())?
                    }
                    Ok(None) => return Err(format!("no plugin named `{name}` has been uploaded")),
                    Err(error) => return Err(error.to_string()),
                };
                let wanted = version.unwrap_or(document.current);
                let found = document
                    .version(wanted)
                    .ok_or_else(|| format!("plugin `{name}` has no version {wanted}"))?;
                (name.clone(), Some(wanted), found.sha256.clone(), None)
            }
            PluginSource::File(path) => {
                let path = self.base_dir.join(path);
                let before = stamp(&path);
                let wasm = tokio::fs::read(&path)
                    .await
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                if let (Some(before), Ok(mut files)) = (before, self.files.lock()) {
                    files.insert(path.clone(), before);
                }
                let name = path
                    .file_stem()
                    .map_or_else(|| "plugin".to_owned(), |s| s.to_string_lossy().into_owned());
                let sha256 = sha256_hex(&wasm);
                (name, None, sha256, Some(Bytes::from(wasm)))
            }
        };
        let isolation = spec.isolation.unwrap_or(settings.isolation);
        let run = PluginRun {
            name: name.clone(),
            version,
            sha256: sha256.clone(),
            isolation: isolation.as_str().to_owned(),
        };
        let previous = self
            .bound
            .lock()
            .ok()
            .and_then(|b| b.get(&*channel.id).cloned());
        if let Some(previous) = previous
            && previous.run == run
            && previous.grants.channel == channel.name
            && previous.spec == *spec
        {
            return Ok(previous);
        }
        let code = match self.cached_code(&sha256) {
            Some(code) => code,
            None => {
                let wasm = match wasm {
                    Some(wasm) => wasm,
                    None => self
                        .store
                        .blob(&sha256)
                        .await
                        .map_err(|e| e.to_string())?
                        .ok_or_else(|| format!("the store has no code for {name} ({sha256})"))?,
                };
                self.code(wasm, &sha256).await.map_err(|e| e.to_string())?
            }
        };
        let grants = Arc::new(Grants {
            channel: channel.name.clone(),
            plugin: name,
            config_text: spec.config.to_string(),
            config: spec.config.as_object().cloned().unwrap_or_default(),
            kv_namespace: channel.id.to_string(),
            store: Arc::clone(&self.store),
            allowed_hosts: spec.allowed_hosts.clone(),
            log_level: spec.log_level,
            outbound_max_calls: settings.outbound_max_calls,
            outbound_max_response: settings.outbound_max_response,
        });
        let deadline = spec
            .deadline
            .unwrap_or_else(|| settings.default_deadline(code.language));
        let bound = Arc::new(BoundPlugin::new(
            Arc::clone(&self.engine),
            code,
            grants,
            run,
            spec.clone(),
            isolation,
            deadline,
            usize::try_from(memory_limit).unwrap_or(usize::MAX),
            spec.max_reuse.unwrap_or(settings.max_reuse),
            self.workers,
        ));
        if let Ok(mut map) = self.bound.lock() {
            map.insert(channel.id.to_string(), Arc::clone(&bound));
        }
        Ok(bound)
    }

    /// The channel's current binding, kept when a rebind fails (a file being rewritten, the store
    /// briefly unreachable) so a channel that worked keeps working.
    pub fn previous(&self, channel_id: &str) -> Option<Arc<BoundPlugin>> {
        self.bound.lock().ok()?.get(channel_id).cloned()
    }

    /// Forgets the bindings of channels that are gone.
    pub fn retain_channels(&self, ids: &[&str]) {
        if let Ok(mut map) = self.bound.lock() {
            map.retain(|id, _| ids.contains(&id.as_str()));
        }
    }

    /// Whether any watched plugin file changed since it was loaded.
    pub fn files_changed(&self) -> bool {
        let Ok(files) = self.files.lock() else {
            return false;
        };
        files.iter().any(|(path, seen)| stamp(path) != Some(*seen))
    }
}

/// Why a rollback was refused.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("version {0} is the earliest; there is nothing to roll back to")]
    NoEarlierVersion(u32),
    #[error(transparent)]
    Store(#[from] StoreError),
}
