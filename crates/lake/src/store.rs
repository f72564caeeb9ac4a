//! Object storage by URL: `file:///path` (the default, `<data-dir>/lake`), a path relative to the
//! working directory (`file:lake`, `file://./lake`), or `s3://bucket/prefix` (AWS S3 or MinIO).
//! The endpoint and options come from the standard variables (`AWS_REGION` /
//! `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` for MinIO, `AWS_ALLOW_HTTP=true` for plain HTTP).
//! Credentials: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN` when given,
//! otherwise the standard AWS chain of `aws-config` (profile files, SSO, web identity, container
//! credentials, instance metadata), refreshed before they expire.
//!
//! Manifest commits are conditional puts (`PutMode::Create`, `PutMode::Update` with the e-tag
//! read). S3 and MinIO answer them with `If-None-Match` / `If-Match`; `object_store`'s local file
//! store does `Create` but not `Update`, so a local folder is served by `FolderStore`, which adds
//! `Update` under a `flock(2)` per object: several brokers sharing a `file://` lake on one
//! machine then commit atomically too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::provider::ProvideCredentials;
use futures::stream::BoxStream;
use object_store::aws::{AmazonS3Builder, AwsCredential};
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{
    CopyOptions, CredentialProvider, GetOptions, GetResult, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, RenameOptions, UpdateVersion,
};

use crate::error::{Error, Result};

/// Opens the object store a tier URL names, with `env` as the environment (pass
/// `std::env::vars()`; tests pass their own).
pub fn open(url: &str, env: &BTreeMap<String, String>) -> Result<Arc<dyn ObjectStore>> {
    if let Some(reference) = relative_file_reference(url) {
        return open_folder(url, &relative_folder(url, reference)?);
    }
    let parsed =
        url::Url::parse(url).map_err(|e| Error::Config(format!("tier URL {url:?}: {e}")))?;
    match parsed.scheme() {
        "file" => {
            let path = parsed.to_file_path().map_err(|()| {
                Error::Config(format!(
                    "tier URL {url:?} is not a local path (it names host {:?}): write \
                     file:///absolute/path, or file:path for a folder under the working directory",
                    parsed.host_str().unwrap_or_default()
                ))
            })?;
            open_folder(url, &path)
        }
        "s3" => {
            let bucket = parsed
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| Error::Config(format!("tier URL {url:?} names no bucket")))?;
            let mut builder = AmazonS3Builder::new().with_bucket_name(bucket);
            for (key, value) in env.iter().filter(|(k, _)| k.starts_with("AWS_")) {
                if let Ok(config_key) = key.to_ascii_lowercase().parse() {
                    builder = builder.with_config(config_key, value);
                }
            }
            if let Some(endpoint) = env
                .get("AWS_ENDPOINT_URL_S3")
                .or_else(|| env.get("AWS_ENDPOINT_URL"))
            {
                builder = builder.with_endpoint(endpoint);
            }
            if let Some(region) = env
                .get("AWS_REGION")
                .or_else(|| env.get("AWS_DEFAULT_REGION"))
            {
                builder = builder.with_region(region);
            }
            if !env.contains_key("AWS_ACCESS_KEY_ID") {
                builder = builder.with_credentials(Arc::new(AwsChain::default()));
            }
            let store = builder
                .build()
                .map_err(|e| Error::Config(format!("tier URL {url:?}: {e}")))?;
            let prefix = parsed.path().trim_matches('/');
            if prefix.is_empty() {
                Ok(Arc::new(store))
            } else {
                Ok(Arc::new(PrefixStore::new(store, prefix)))
            }
        }
        other => Err(Error::Config(format!(
            "tier URL {url:?}: scheme {other:?} is not supported (use file:// or s3://)"
        ))),
    }
}

/// The local folder a `file:` tier URL names (relative forms resolved against the working
/// directory, as [`open`] does); `None` for other schemes.
pub(crate) fn local_folder(url: &str) -> Result<Option<PathBuf>> {
    if let Some(reference) = relative_file_reference(url) {
        return relative_folder(url, reference).map(Some);
    }
    let parsed =
        url::Url::parse(url).map_err(|e| Error::Config(format!("tier URL {url:?}: {e}")))?;
    if parsed.scheme() != "file" {
        return Ok(None);
    }
    parsed
        .to_file_path()
        .map(Some)
        .map_err(|()| Error::Config(format!("tier URL {url:?} is not a local path")))
}

/// The `file://` URL of an absolute local folder, percent-encoded where a URL must be, so that
/// [`open`] reads the same folder back.
pub fn file_url(folder: &Path) -> Result<String> {
    url::Url::from_file_path(folder)
        .map(String::from)
        .map_err(|()| Error::Config(format!("{} is not an absolute path", folder.display())))
}

/// The path part of a `file:` URL that names a folder relative to the working directory:
/// `file:lake`, `file:./lake`, `file://./lake`, `file://../lake`. `None` for every other URL
/// (`file:///abs`, `file://localhost/abs`, other schemes), which the URL parser reads.
///
/// A URL parser would read `file:lake` as `/lake` and `file://./lake` as the host `.`; a relative
/// `--data-dir` resolves against the working directory, and so does a relative tier folder.
fn relative_file_reference(url: &str) -> Option<&str> {
    let rest = url
        .get(.."file:".len())
        .filter(|scheme| scheme.eq_ignore_ascii_case("file:"))
        .map(|_| &url["file:".len()..])?;
    match rest.strip_prefix("//") {
        Some(path) => {
            let dotted =
                [".", ".."].contains(&path) || path.starts_with("./") || path.starts_with("../");
            dotted.then_some(path)
        }
        None => (!rest.starts_with('/')).then_some(rest),
    }
}

/// Resolves a relative folder reference against the working directory, decoding it as a URL
/// path (`my%20lake` is `my lake`).
fn relative_folder(url: &str, reference: &str) -> Result<PathBuf> {
    if reference.is_empty() {
        return Err(Error::Config(format!("tier URL {url:?} names no folder")));
    }
    let cwd = std::env::current_dir()
        .map_err(|e| Error::Config(format!("tier URL {url:?}: the working directory: {e}")))?;
    let base = url::Url::from_directory_path(&cwd).map_err(|()| {
        Error::Config(format!(
            "tier URL {url:?}: working directory {} is not absolute",
            cwd.display()
        ))
    })?;
    base.join(reference)
        .map_err(|e| Error::Config(format!("tier URL {url:?}: {e}")))?
        .to_file_path()
        .map_err(|()| Error::Config(format!("tier URL {url:?} is not a local path")))
}

/// A local folder as an object store (created if missing).
fn open_folder(url: &str, path: &Path) -> Result<Arc<dyn ObjectStore>> {
    std::fs::create_dir_all(path)
        .map_err(|e| Error::Config(format!("creating {}: {e}", path.display())))?;
    let store = LocalFileSystem::new_with_prefix(path)
        .map_err(|e| Error::Config(format!("tier URL {url:?}: {e}")))?
        .with_automatic_cleanup(true);
    Ok(Arc::new(FolderStore {
        inner: store,
        locks: path.join(LOCKS_FOLDER),
    }))
}

/// Where [`FolderStore`] keeps its lock files, under the lake's folder. Lake listings look under
/// `topic=…/` and `_strata/{manifests,topics}/` only, so the lock files are never taken for data.
const LOCKS_FOLDER: &str = "_strata/locks";
/// How long a conditional update waits for another writer's update of the same object. An update
/// holds the lock for a read of the object's metadata and one atomic rename; a writer that holds
/// it longer is stopped (SIGSTOP), and the update then fails as if the object had changed.
const UPDATE_LOCK_WAIT: Duration = Duration::from_secs(2);

/// A local folder as an object store: `object_store`'s [`LocalFileSystem`], plus
/// `PutMode::Update`: under an exclusive `flock(2)` on the object's lock file, the object's
/// current e-tag is compared with the expected one and the new content renamed into place. Every
/// writer of an object through `Update` takes the same lock, so of two writers that read the same
/// version only the first succeeds; the kernel drops the lock of a process however it dies.
#[derive(Debug)]
struct FolderStore {
    inner: LocalFileSystem,
    /// The folder of the lock files.
    locks: PathBuf,
}

impl std::fmt::Display for FolderStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FolderStore({})", self.inner)
    }
}

impl FolderStore {
    /// The lock file of `location`: one flat file per object (a name shared by two objects would
    /// only serialize their updates).
    fn lock_path(&self, location: &object_store::path::Path) -> PathBuf {
        self.locks
            .join(format!("{}.lock", location.as_ref().replace('/', "~")))
    }

    /// Takes the object's update lock, waiting at most [`UPDATE_LOCK_WAIT`].
    async fn lock(
        &self,
        location: &object_store::path::Path,
    ) -> object_store::Result<std::fs::File> {
        let path = self.lock_path(location);
        let generic = |what: &str, e: &dyn std::fmt::Display| object_store::Error::Generic {
            store: "FolderStore",
            source: format!("{what} {}: {e}", path.display()).into(),
        };
        std::fs::create_dir_all(&self.locks).map_err(|e| generic("creating the folder of", &e))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| generic("opening", &e))?;
        let started = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < UPDATE_LOCK_WAIT => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(object_store::Error::Precondition {
                        path: location.to_string(),
                        source: format!(
                            "another writer held the update lock {} for {UPDATE_LOCK_WAIT:?}",
                            path.display()
                        )
                        .into(),
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(generic("locking", &e)),
            }
        }
    }

    /// `PutMode::Update`: the put happens only if the object's e-tag is still `expected`'s.
    async fn update(
        &self,
        location: &object_store::path::Path,
        payload: PutPayload,
        expected: UpdateVersion,
    ) -> object_store::Result<PutResult> {
        let Some(expected) = expected.e_tag else {
            return Err(object_store::Error::Generic {
                store: "FolderStore",
                source: "an update needs the e-tag the object was read with".into(),
            });
        };
        let _lock = self.lock(location).await?;
        let current = match self.inner.head(location).await {
            Ok(meta) => meta.e_tag,
            Err(object_store::Error::NotFound { path, source }) => {
                return Err(object_store::Error::Precondition { path, source });
            }
            Err(e) => return Err(e),
        };
        if current.as_deref() != Some(expected.as_str()) {
            return Err(object_store::Error::Precondition {
                path: location.to_string(),
                source: format!("e-tag {current:?}, expected {expected:?}").into(),
            });
        }
        self.inner
            .put_opts(location, payload, PutMode::Overwrite.into())
            .await
    }
}

#[async_trait::async_trait]
impl ObjectStore for FolderStore {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        match opts.mode {
            PutMode::Update(expected) => self.update(location, payload, expected).await,
            _ => self.inner.put_opts(location, payload, opts).await,
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &object_store::path::Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<object_store::path::Path>>,
    ) -> BoxStream<'static, object_store::Result<object_store::path::Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&object_store::path::Path>,
        offset: &object_store::path::Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

/// Refresh credentials this long before they expire.
const CREDENTIAL_REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// Credentials from `aws-config`'s default chain, built on first use and cached until shortly
/// before they expire.
#[derive(Debug, Default)]
struct AwsChain {
    chain:
        tokio::sync::OnceCell<aws_config::default_provider::credentials::DefaultCredentialsChain>,
    cached: tokio::sync::Mutex<Option<(Arc<AwsCredential>, Option<SystemTime>)>>,
}

#[async_trait::async_trait]
impl CredentialProvider for AwsChain {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut cached = self.cached.lock().await;
        if let Some((credential, expiry)) = cached.as_ref()
            && expiry.is_none_or(|e| SystemTime::now() + CREDENTIAL_REFRESH_MARGIN < e)
        {
            return Ok(Arc::clone(credential));
        }
        let chain = self
            .chain
            .get_or_init(|| {
                aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                    .build()
            })
            .await;
        let found = chain.provide_credentials().await.map_err(|e| object_store::Error::Generic {
            store: "S3",
            source: format!("no AWS credentials from the environment, profile, web identity or instance metadata: {e}").into(),
        })?;
        let credential = Arc::new(AwsCredential {
            key_id: found.access_key_id().to_string(),
            secret_key: found.secret_access_key().to_string(),
            token: found.session_token().map(str::to_string),
        });
        *cached = Some((Arc::clone(&credential), found.expiry()));
        Ok(credential)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let env = BTreeMap::new();
        assert!(
            open("ftp://x/y", &env)
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
        assert!(
            open("s3:///prefix", &env)
                .unwrap_err()
                .to_string()
                .contains("no bucket")
        );
        assert!(open("not a url", &env).is_err());
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("lake").display());
        open(&url, &env).unwrap();
        assert!(dir.path().join("lake").is_dir());
        let err = open("file://lakehost/lake", &env).unwrap_err().to_string();
        assert!(
            err.contains("not a local path") && err.contains("lakehost"),
            "{err}"
        );
        assert!(
            open("file:", &env)
                .unwrap_err()
                .to_string()
                .contains("names no folder")
        );
    }

    #[test]
    fn file_urls_of_folders_read_back_as_the_same_folder() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("a lake #1 100%");
        let url = file_url(&folder).unwrap();
        assert!(url.starts_with("file:///"), "{url}");
        assert_eq!(relative_file_reference(&url), None);
        open(&url, &BTreeMap::new()).unwrap();
        assert!(folder.is_dir());
        assert!(file_url(Path::new("relative/lake")).is_err());
    }

    #[test]
    fn relative_file_urls_name_folders_under_the_working_directory() {
        for (url, reference) in [
            ("file:lake", Some("lake")),
            ("file:./lake", Some("./lake")),
            ("FILE:lake", Some("lake")),
            ("file://./lake", Some("./lake")),
            ("file://../lake", Some("../lake")),
            ("file://.", Some(".")),
            ("file:///abs/lake", None),
            ("file:/abs/lake", None),
            ("file://localhost/abs/lake", None),
            ("file://host/lake", None),
            ("s3://bucket/lake", None),
            ("lake", None),
        ] {
            assert_eq!(relative_file_reference(url), reference, "{url}");
        }
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            relative_folder("file:./my%20data/lake", "./my%20data/lake").unwrap(),
            cwd.join("my data").join("lake")
        );
        assert_eq!(
            relative_folder("file://../lake", "../lake").unwrap(),
            cwd.parent().unwrap().join("lake")
        );
    }
}
