//! Object storage by URL: `file:///path` (the default, `<data-dir>/lake`) or `s3://bucket/prefix`
//! (AWS S3 or MinIO). S3 settings come from the standard variables: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` / `AWS_DEFAULT_REGION`,
//! `AWS_ENDPOINT_URL` (MinIO, s3s), `AWS_ALLOW_HTTP=true` for plain-HTTP endpoints, web identity and
//! container credentials, and the instance metadata service.

use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;

use crate::error::{Error, Result};

/// Opens the object store a tier URL names, with `env` as the environment (pass
/// `std::env::vars()`; tests pass their own).
pub fn open(url: &str, env: &BTreeMap<String, String>) -> Result<Arc<dyn ObjectStore>> {
    let parsed =
        url::Url::parse(url).map_err(|e| Error::Config(format!("tier URL {url:?}: {e}")))?;
    match parsed.scheme() {
        "file" => {
            let path = parsed
                .to_file_path()
                .map_err(|()| Error::Config(format!("tier URL {url:?} is not a local path")))?;
            std::fs::create_dir_all(&path)
                .map_err(|e| Error::Config(format!("creating {}: {e}", path.display())))?;
            let store = LocalFileSystem::new_with_prefix(&path)
                .map_err(|e| Error::Config(format!("tier URL {url:?}: {e}")))?
                .with_automatic_cleanup(true);
            Ok(Arc::new(store))
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
    }
}
